"""Every public function, method and class of the packages has a docstring that names its parameters.

Public means: no leading underscore, at module level or inside a public class (dunder methods are skipped;
an explicit ``__init__``'s parameters are the class's, named in the class's docstring or the ``__init__``'s;
dataclass fields are not checked).
A parameter counts as named when the docstring has ``:param name:``, ``name`` in double backticks, or the
name as a word of the text. ``self``/``cls`` are skipped; properties need a docstring but no parameters,
their setters none.
ruff's D101-D103 check presence too; this test also checks the parameters, which ruff cannot.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = [ROOT / "topozarr_core", ROOT / "flows" / "topozarr_flows"]


def _is_setter(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any(isinstance(d, ast.Attribute) and d.attr in ("setter", "deleter") for d in node.decorator_list)


def _is_property(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    for d in node.decorator_list:
        name = d.id if isinstance(d, ast.Name) else d.attr if isinstance(d, ast.Attribute) else ""
        if name in ("property", "cached_property", "computed_field"):
            return True
    return False


def _named(doc: str, param: str) -> bool:
    return (
        f":param {param}:" in doc
        or f"``{param}``" in doc
        or re.search(rf"(?<![\w.]){re.escape(param)}(?!\w)", doc) is not None
    )


def _params(node: ast.FunctionDef | ast.AsyncFunctionDef) -> list[str]:
    a = node.args
    names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs]
    return [n for n in names if n not in ("self", "cls")]


def _problems(source: str, rel: str) -> list[str]:
    found: list[str] = []

    def visit(body: list[ast.stmt], prefix: str) -> None:
        for node in body:
            if not isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            if node.name.startswith("_") or (not isinstance(node, ast.ClassDef) and _is_setter(node)):
                continue  # private, or a property's setter (the property's docstring covers it)
            where = f"{rel}:{node.lineno} {prefix}{node.name}"
            doc = ast.get_docstring(node)
            if isinstance(node, ast.ClassDef):
                if not doc:
                    found.append(f"{where}: no docstring")
                init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
                if init is not None:  # a class's parameters: in its docstring or its __init__'s
                    both = f"{doc or ''}\n{ast.get_docstring(init) or ''}"
                    missing = [p for p in _params(init) if not _named(both, p)]
                    if missing:
                        found.append(f"{where}: constructor parameters not described: {', '.join(missing)}")
                visit(node.body, f"{prefix}{node.name}.")
                continue
            if not doc:
                found.append(f"{where}: no docstring")
                continue
            if _is_property(node):
                continue
            missing = [p for p in _params(node) if not _named(doc, p)]
            if missing:
                found.append(f"{where}: parameters not described: {', '.join(missing)}")

    visit(ast.parse(source, filename=rel).body, "")
    return found


def test_public_api_docstrings_name_their_parameters() -> None:
    paths = sorted(p for pkg in PACKAGES for p in pkg.rglob("*.py"))
    assert len(paths) > 50, "the packages were not found"
    problems = [line for path in paths for line in _problems(path.read_text(), str(path.relative_to(ROOT)))]
    assert not problems, "docstrings missing or incomplete:\n" + "\n".join(problems)


def test_the_check_sees_a_missing_parameter() -> None:
    """The check itself: a function whose docstring skips a parameter is reported, one that names it is not."""
    source = '''
def f(a, b):
    """Add.

    :param a: the first.
    """

def g(a, *, bee):
    """Use ``a`` and bee."""

class C:
    """A class."""

    def m(self, x):
        """No parameters here."""

    @property
    def p(self):
        """A property."""

    @p.setter
    def p(self, value):
        pass

class D:
    """Made from ``a``."""

    def __init__(self, a, b):
        pass
'''
    problems = _problems(source, "probe.py")
    assert [p.split(" ", 1)[1] for p in problems] == [
        "f: parameters not described: b",
        "C.m: parameters not described: x",
        "D: constructor parameters not described: b",
    ]
