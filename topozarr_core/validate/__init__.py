"""Checks of a written pyramid against its plan and the convention schemas."""
