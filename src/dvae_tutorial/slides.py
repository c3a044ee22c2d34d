"""Chapters as slides: slide boundaries in cell metadata, offline reveal.js decks.

Backs the lecturer's kit (appendix *Syllabus*). Two steps:

``python -m dvae_tutorial.slides tag book/*.ipynb`` (or ``dvae slides tag``)
    writes ``metadata.slideshow.slide_type`` — the convention of nbconvert and
    RISE — into each cell, from the cells alone, so a second run changes
    nothing (it overwrites earlier tags, hand-set ones too):

    * the first cell, and a markdown cell with a ``#`` or ``##`` heading:
      ``slide`` (a new section, left to right);
    * a markdown cell whose highest heading is ``###`` or deeper: ``subslide``
      (downwards in the same section);
    * the Colab set-up cell, and a code cell of more than
      :data:`LONG_CODE` lines that shows nothing: ``skip`` (the notebook keeps
      it; a room needs its outputs, not its plumbing);
    * any other cell: ``-`` (continues the slide), or ``subslide`` when the
      slide would no longer fit (an estimate of :data:`SLIDE_LINES` lines,
      a figure counted by its height). A slide still too tall scrolls.

``dvae slides build --out _build/slides [NOTEBOOK …]``
    writes one deck per chapter, ``<stem>.slides.html``, with nbconvert's
    SlidesExporter and the template in ``slides_template/`` beside this
    module, and copies reveal.js (from the ``sphinx-revealjs`` package) and
    MathJax 3 (from ``django-static-mathjax``) into the same folder: the
    folder opens offline, from disk. A notebook without tags is tagged in
    memory first. Links to book pages point to the published book; links to a
    chapter that has a deck in the same run, to that deck.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import re
import shutil
import struct
import sys
from collections.abc import Sequence
from importlib.util import find_spec
from pathlib import Path

from .errors import DVAEError

#: A code cell longer than this that shows nothing is skipped in the deck.
LONG_CODE = 15
#: What fits on one 960×700 slide, in lines of text (a figure: height / 28 px).
SLIDE_LINES = 24
#: Where the book is published (links to its pages from a deck).
BOOK_URL = "https://dvae-tutorial.github.io/dvae-tutorial"
TEMPLATE_DIR = Path(__file__).resolve().parent / "slides_template"
SETUP_MARK = "# Setup: in Colab this installs the book's package"


def _source(cell: dict) -> str:
    src = cell.get("source", "")
    return src if isinstance(src, str) else "".join(src)


def _heading_level(text: str) -> int | None:
    """The highest heading level of a markdown cell (outside code fences)."""
    levels, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith(("```", "~~~")):
            fenced = not fenced
        elif not fenced and (m := re.match(r"(#{1,6})\s", line)):
            levels.append(len(m.group(1)))
    return min(levels) if levels else None


def _png_height(data: str) -> int:
    raw = base64.b64decode(data[:64])  # the IHDR chunk is in the first 33 bytes
    return struct.unpack(">I", raw[20:24])[0] if raw[:8] == b"\x89PNG\r\n\x1a\n" else 400


def _lines(cell: dict) -> int:
    """How many lines of a slide the cell fills, roughly (code, text, figures)."""
    text = _source(cell)
    n = sum(max(1, math.ceil(len(line) / 90)) for line in text.splitlines())
    for out in cell.get("outputs", []):
        data = out.get("data", {})
        if "image/png" in data:
            n += math.ceil(min(_png_height(data["image/png"]), 560) / 28)
        elif out.get("output_type") == "stream":
            n += min("".join(out.get("text", "")).count("\n") + 1, 20)
        elif "text/markdown" in data or "text/plain" in data:
            shown = data.get("text/markdown", data.get("text/plain", ""))
            n += min("".join(shown).count("\n") + 1, 20)
    return n


def slide_types(cells: Sequence[dict]) -> list[str]:
    """The ``slide_type`` of each cell by the rules of the module docstring."""
    types, used = [], 0
    for i, cell in enumerate(cells):
        code = cell.get("cell_type") == "code"
        level = None if code else _heading_level(_source(cell))
        n = _lines(cell)
        if i == 0 or (level is not None and level <= 2):
            kind, used = "slide", n
        elif level is not None:
            kind, used = "subslide", n
        elif code and (_source(cell).startswith(SETUP_MARK) or (
                len(_source(cell).splitlines()) > LONG_CODE
                and not cell.get("outputs"))):
            kind = "skip"
        elif used and used + n > SLIDE_LINES:
            kind, used = "subslide", n
        else:
            kind, used = "-", used + n
        types.append(kind)
    return types


def tag(nb: dict) -> bool:
    """Write the slide types into ``nb``'s cells; True when something changed."""
    changed = False
    for cell, kind in zip(nb["cells"], slide_types(nb["cells"]), strict=True):
        meta = cell.setdefault("metadata", {})
        if meta.get("slideshow", {}).get("slide_type") != kind:
            meta["slideshow"] = {**meta.get("slideshow", {}), "slide_type": kind}
            cell["metadata"] = dict(sorted(meta.items()))
            changed = True
    return changed


def tag_files(paths: Sequence[Path]) -> list[Path]:
    """Tag notebooks in place (outputs untouched); return those that changed."""
    changed = []
    for path in map(Path, paths):
        nb = json.loads(path.read_text(encoding="utf-8"))
        if tag(nb):
            text = json.dumps(nb, indent=1, ensure_ascii=False) + "\n"
            path.write_text(text, encoding="utf-8")
            changed.append(path)
    return changed


def _package_dir(name: str, *parts: str) -> Path:
    spec = find_spec(name)
    for root in (spec.submodule_search_locations or []) if spec else []:
        if (Path(root).joinpath(*parts)).exists():
            return Path(root).joinpath(*parts)
    extra = {"mathjax": "django-static-mathjax", "sphinx_revealjs": "sphinx-revealjs"}
    raise DVAEError(f"slides need the {extra[name]} package (the book extra: "
                    'python -m pip install -e ".[book]")')


def copy_assets(out: Path) -> None:
    """Copy reveal.js (dist, notes plugin) and MathJax 3 (es5) into ``out``."""
    reveal = _package_dir("sphinx_revealjs", "_static", "revealjs")
    mathjax = _package_dir("mathjax", "static", "mathjax", "es5")
    no_maps = shutil.ignore_patterns("*.map", "*.esm.js")
    for sub in ("dist", "plugin/notes"):
        shutil.copytree(reveal / sub, out / "reveal.js" / sub, dirs_exist_ok=True,
                        ignore=no_maps)
    shutil.copy2(reveal / "LICENSE", out / "reveal.js" / "LICENSE")
    shutil.copytree(mathjax, out / "mathjax", dirs_exist_ok=True)


def _relink(text: str, decks: set[str]) -> str:
    """Links to book pages → the published book; to a chapter with a deck → it."""
    def repl(m: re.Match) -> str:
        stem, ext, frag = m.group(2), m.group(3), m.group(4) or ""
        if ext == ".ipynb" and stem in decks:
            return f"]({stem}.slides.html)"
        return f"]({BOOK_URL}/book/{stem}.html{frag})"
    return re.sub(r"\]\((\./)?([\w.-]+?)(\.md|\.ipynb)(#[\w-]+)?\)", repl, text)


def build_deck(notebook: Path, out: Path, decks: set[str] | None = None) -> Path:
    """Write ``out/<stem>.slides.html`` for ``notebook`` (assets: copy_assets)."""
    try:
        import nbformat
        from nbconvert import SlidesExporter
    except ImportError as err:
        raise DVAEError("slides need nbconvert (the book extra: "
                        'python -m pip install -e ".[book]")') from err
    notebook = Path(notebook)
    if not notebook.is_file():
        raise DVAEError(f"no such notebook: {notebook}")
    nb = nbformat.read(notebook, as_version=4)
    if not any("slideshow" in c.get("metadata", {}) for c in nb.cells):
        tag(nb)  # untagged: the same rules, in memory
    for cell in nb.cells:
        if cell.cell_type == "markdown":
            cell.source = _relink(cell.source, decks or set())
    exporter = SlidesExporter(
        extra_template_basedirs=[str(TEMPLATE_DIR)], template_name="dvae_reveal",
        reveal_url_prefix="reveal.js", mathjax_url="mathjax/tex-mml-chtml.js",
        reveal_theme="white", reveal_transition="none", exclude_anchor_links=True)
    html, _ = exporter.from_notebook_node(
        nb, resources={"metadata": {"name": _title(nb) or notebook.stem}})
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{notebook.stem}.slides.html"
    path.write_text(html, encoding="utf-8")
    return path


def _title(nb) -> str | None:
    for cell in nb.cells:
        if cell.cell_type == "markdown" and cell.source.lstrip().startswith("# "):
            return cell.source.lstrip()[2:].split("\n", 1)[0].strip()
    return None


def build_decks(notebooks: Sequence[Path], out: Path) -> list[Path]:
    """One deck per notebook in ``out``, and the assets they share."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    copy_assets(out)
    decks = {Path(n).stem for n in notebooks}
    return [build_deck(Path(n), out, decks) for n in notebooks]


def default_notebooks() -> list[Path]:
    """The book's notebooks (``book/*.ipynb`` under the working directory)."""
    found = sorted(Path("book").glob("*.ipynb"))
    if not found:
        raise DVAEError("no notebooks given and none in ./book (run from the "
                        "repository root or name the notebooks)")
    return found


def add_slides_parser(sub) -> None:
    """``dvae slides tag|build``."""
    p = sub.add_parser("slides", help="chapters as offline reveal.js slide decks",
                       description=__doc__.split("\n\n")[0])
    actions = p.add_subparsers(dest="action", metavar="ACTION")
    actions.required = True
    t = actions.add_parser("tag", help="write slide boundaries into cell metadata")
    t.add_argument("notebooks", nargs="*", type=Path, help="default: book/*.ipynb")
    t.set_defaults(func=_cmd_tag)
    b = actions.add_parser("build", help="one reveal.js deck per chapter, offline")
    b.add_argument("notebooks", nargs="*", type=Path, help="default: book/*.ipynb")
    b.add_argument("--out", type=Path, default=Path("_build/slides"),
                   help="folder of the decks and their assets (default: %(default)s)")
    b.set_defaults(func=_cmd_build)


def _cmd_tag(args) -> int:
    for path in tag_files(args.notebooks or default_notebooks()):
        print(f"tagged {path}")
    return 0


def _cmd_build(args) -> int:
    for path in build_decks(args.notebooks or default_notebooks(), args.out):
        print(path)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dvae_tutorial.slides")
    add_slides_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["slides", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except DVAEError as err:
        print(f"slides: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
