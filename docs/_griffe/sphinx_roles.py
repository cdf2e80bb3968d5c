"""Griffe extension of the docs build: Sphinx cross-reference roles in docstrings become inline code.

The code's docstrings use Sphinx style (``:param x:``, which mkdocstrings parses) and Sphinx roles such as
``:mod:`.tiles``` or ``:class:`~.report.WriteReport```, which mkdocstrings would print as they are. They
are shown as code (``.tiles``, ``WriteReport``) instead: the names they point at are mostly internal
modules, which the site does not document, so a link would have nowhere to go.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

#: ``:mod:`x```, ``:py:class:`~a.b.C```, ...: the role, an optional ``~`` (show the last name only), the target
ROLE = re.compile(r":(?:py:)?(?:mod|class|meth|func|data|attr|exc|obj):`(~?)([^`]+)`")


def _code(match: re.Match[str]) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite Sphinx roles in every docstring once the object tree is loaded."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_code, obj.docstring.value)
