"""Text for messages: values and error texts cut to a length, so a long one never floods a line."""

from __future__ import annotations

from typing import Any


def clip(text: str, limit: int = 400) -> str:
    """``text`` cut to ``limit`` characters, ending in ``...`` when cut."""
    return text if len(text) <= limit else text[: limit - 3] + "..."


def short(value: Any, limit: int = 80) -> str:
    """``repr(value)`` cut to ``limit`` characters."""
    return clip(repr(value), limit)
