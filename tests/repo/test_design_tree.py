"""The repository tree on the design page (docs/design.md) matches the code: every module of both
packages is named there, and every module named there exists."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {"topozarr_core": ROOT / "topozarr_core", "topozarr_flows": ROOT / "flows" / "topozarr_flows"}


def tree_block() -> str:
    text = (ROOT / "docs" / "design.md").read_text()
    start = text.index("```\ntopozarr_core/")
    return text[start:text.index("```", start + 3)]


def named_modules(block: str) -> dict[str, set[str]]:
    """Module paths (relative to their package) named in the tree, by package."""
    out: dict[str, set[str]] = {name: set() for name in PACKAGES}
    package, folder = None, ""
    for line in block.splitlines()[1:]:
        indent = len(line) - len(line.lstrip())
        words = line.split()
        if not words:
            continue
        head = words[0]
        if head in ("topozarr_core/", "topozarr_flows/"):
            package, folder = head.rstrip("/"), ""
            continue
        if indent == 0:
            package = None if head != "flows/" else package
            continue
        if package is None:
            continue
        if head.endswith("/") and indent <= (2 if package == "topozarr_core" else 4):
            folder = head
            names = words[1:]
        else:
            names = words
        if package == "topozarr_core" and indent == 2 and head.endswith(".py"):
            folder = ""
        if package == "topozarr_flows" and indent == 4 and head.endswith(".py"):
            folder = ""
        for word in names:
            for name in re.findall(r"^([a-z_]+\.py)\b", word):
                out[package].add(folder + name)
    return out


def modules(root: Path) -> set[str]:
    """The package's modules, relative to it (the page bundle's build tools under preview/web excluded)."""
    found = {str(p.relative_to(root)) for p in root.rglob("*.py") if "web" not in p.relative_to(root).parts}
    return {m for m in found if m == "__init__.py" or not m.endswith("__init__.py")}


def tree_problems(block: str, packages: dict[str, Path]) -> list[str]:
    """What differs between the tree and the packages, one line each."""
    named = named_modules(block)
    problems = []
    for package, root in packages.items():
        actual = modules(root)
        problems += [f"{package}/{m}: on the design page, not in the code" for m in sorted(named[package] - actual)]
        problems += [f"{package}/{m}: in the code, not on the design page" for m in sorted(actual - named[package])]
    return problems


def test_every_module_is_on_the_design_page_and_every_named_module_exists():
    problems = tree_problems(tree_block(), PACKAGES)
    assert not problems, "docs/design.md's tree differs from the code:\n" + "\n".join(problems)


def test_the_check_sees_a_missing_and_a_stale_module():
    """The check itself: a module the tree leaves out and one it names that is gone are both reported."""
    block = tree_block().replace("grid.py", "gridding.py")
    problems = tree_problems(block, PACKAGES)
    assert problems == ["topozarr_core/spec/gridding.py: on the design page, not in the code",
                        "topozarr_core/spec/grid.py: in the code, not on the design page"], problems
