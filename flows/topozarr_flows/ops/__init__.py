"""Operator commands: the CLI, retries from the command line, the demo, fault injection for drills."""
