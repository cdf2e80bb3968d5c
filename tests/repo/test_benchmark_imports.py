"""The benchmark scripts import only what exists: every ``from X import Y`` of ours in benchmarks/
(also inside functions, where a run would fail only after minutes of work) names a real module and
attribute."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
OURS = ("topozarr_core", "topozarr_flows", "tests")


def our_imports(source: str) -> list[tuple[str, str]]:
    """``(module, name)`` of every ``from <ours> import name`` in ``source``."""
    return [(node.module, alias.name) for node in ast.walk(ast.parse(source))
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] in OURS
            for alias in node.names]


def missing(imports: list[tuple[str, str]]) -> list[str]:
    out = []
    for module, name in imports:
        try:
            found = hasattr(importlib.import_module(module), name)
        except ImportError:
            found = False
        if not found:  # ``from package import submodule`` imports the submodule, as Python does
            try:
                importlib.import_module(f"{module}.{name}")
                found = True
            except ImportError:
                pass
        if not found:
            out.append(f"from {module} import {name}")
    return out


def test_benchmarks_import_what_exists():
    scripts = sorted((ROOT / "benchmarks").glob("*.py"))
    assert len(scripts) >= 5
    problems = [f"{path.name}: {line}" for path in scripts for line in missing(our_imports(path.read_text()))]
    assert not problems, problems


def test_the_check_sees_a_moved_module():
    assert missing(our_imports("def f():\n    from tests.compare import assert_same_pyramid\n")) == [
        "from tests.compare import assert_same_pyramid"]
    assert missing(our_imports("from tests.helpers.compare import assert_same_pyramid\n")) == []
