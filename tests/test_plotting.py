"""The figure modules: one per part of the book, over one shared style module.

Static checks (nothing is drawn): every plotting call in a chapter names a
function its module defines, each chapter draws with the module of its own
part, and the shared base imports none of the modules above it.
"""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "dvae_tutorial"

#: Which plotting module draws which chapters (two-digit prefix of the file).
PART_OF_CHAPTER = {
    "01": "plotting_foundations", "02": "plotting_foundations",
    "03": "plotting_foundations", "04": "plotting_foundations",
    "05": "plotting_codecs", "06": "plotting_codecs",
}


def _functions(module: str) -> set[str]:
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}


def _code(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("prefix", sorted(PART_OF_CHAPTER))
def test_each_chapter_draws_with_its_parts_module(prefix: str):
    [nb] = (ROOT / "book").glob(f"{prefix}_*.ipynb")
    code = _code(nb)
    module = PART_OF_CHAPTER[prefix]
    calls = re.findall(rf"\b{module}\.(\w+)\(", code)
    assert calls, f"{nb.name} draws nothing through {module}"
    missing = set(calls) - _functions(module)
    assert not missing, f"{nb.name} calls {sorted(missing)}, not in {module}.py"
    # the old one-room module is gone from the chapters
    assert not re.search(r"\bplotting\.plot_", code)
    assert not re.search(r"import .*\bplotting\b(?!_)", code)


def test_the_base_module_imports_no_module_above_it():
    tree = ast.parse((PACKAGE / "plotting.py").read_text())
    imported = [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert not [m for m in imported if m.startswith("plotting_") or m.startswith(".")]


def test_no_function_is_defined_twice():
    modules = [p.stem for p in PACKAGE.glob("plotting*.py")]
    seen: dict[str, str] = {}
    for module in modules:
        for name in _functions(module):
            assert name not in seen, f"{name} in {seen.get(name)} and {module}"
            seen[name] = module


@pytest.mark.parametrize("module", sorted(p.stem for p in PACKAGE.glob("plotting_*.py")))
def test_every_figure_helper_has_a_stable_name(module: str):
    """``@labelled`` names the figure (``dvae figures`` writes chNN-<label>)."""
    tree = ast.parse((PACKAGE / f"{module}.py").read_text())
    helpers = [n for n in tree.body if isinstance(n, ast.FunctionDef)
               and n.name.startswith("plot_")]
    assert helpers
    unnamed = [n.name for n in helpers
               if not any(getattr(d, "id", None) == "labelled" for d in n.decorator_list)]
    assert not unnamed, f"{module}: decorate with @labelled: {unnamed}"
