"""Incremental updates of a published pyramid."""
