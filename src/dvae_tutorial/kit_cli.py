"""``dvae slides``, ``dvae figures``, ``dvae handout``, ``dvae syllabus``: the
lecturer's kit.

Thin layers over :mod:`dvae_tutorial.slides` and :mod:`dvae_tutorial.kit`;
run from the repository root (the default notebooks are ``book/*.ipynb``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from . import kit, slides
from .errors import DVAEError


def add_kit_parsers(sub) -> None:
    slides.add_slides_parser(sub)

    f = sub.add_parser(
        "figures", help="every figure of the book as SVG and PDF",
        description="Run the chapters (CI mode unless --full) with DVAE_FIGURES_DIR "
                    "set: each figure is written as <out>/chNN-<label>.svg and .pdf. "
                    "The notebooks are not changed.")
    f.add_argument("notebooks", nargs="*", type=Path, help="default: book/*.ipynb")
    f.add_argument("--out", type=Path, default=Path("_build/figures"),
                   help="default: %(default)s")
    f.add_argument("--full", action="store_true",
                   help="the full run (the committed outputs' mode), not CI mode")
    f.set_defaults(func=_cmd_figures)

    h = sub.add_parser(
        "handout", help="copies of the chapters without the exercises' solutions",
        description="Write each notebook to --out with its exercises' solutions "
                    "(the <details> blocks) left out, for homework. The chapters "
                    "are not changed.")
    h.add_argument("notebooks", nargs="*", type=Path,
                   help="default: the chapters, book/[0-9]*.ipynb")
    h.add_argument("--out", type=Path, default=Path("_build/handout"),
                   help="default: %(default)s")
    h.set_defaults(func=_cmd_handout)

    s = sub.add_parser(
        "syllabus", help="the syllabus's timing table, from the executed chapters",
        description="Render how long each chapter takes (from the timestamps in the "
                    "committed notebooks, and CI-mode runs in "
                    f"book/{kit.CI_TIMINGS}) into book/syllabus.md.")
    s.add_argument("notebooks", nargs="*", type=Path,
                   help="chapters of the table (default: book/[0-9]*.ipynb)")
    s.add_argument("--page", type=Path, default=Path("book/syllabus.md"),
                   help="default: %(default)s")
    what = s.add_mutually_exclusive_group()
    what.add_argument("--write", action="store_true", help="update the page's table")
    what.add_argument("--check", action="store_true",
                      help="exit 2 when the page's table is stale")
    s.add_argument("--measure-ci", nargs="+", type=Path, metavar="NOTEBOOK",
                   help=f"first run these in CI mode and record them in {kit.CI_TIMINGS}")
    s.set_defaults(func=_cmd_syllabus)


def _cmd_figures(args: argparse.Namespace) -> int:
    notebooks = args.notebooks or slides.default_notebooks()
    files = kit.export_chapter_figures(notebooks, args.out, full=args.full)
    for path in files:
        print(path)
    print(f"{len(files)} files from {len(notebooks)} notebooks in {args.out}")
    return 0


def _cmd_handout(args: argparse.Namespace) -> int:
    notebooks = args.notebooks or kit.chapters()
    for notebook in notebooks:
        if not Path(notebook).is_file():
            raise DVAEError(f"{notebook}: no such notebook")
        target, removed = kit.handout(notebook, args.out)
        print(f"{target}: {removed} solution{'s' if removed != 1 else ''} left out")
    return 0


def _cmd_syllabus(args: argparse.Namespace) -> int:
    notebooks = args.notebooks or kit.chapters()
    if args.measure_ci:
        kit.measure_ci(args.measure_ci, args.page.parent / kit.CI_TIMINGS)
    if args.write or args.check:
        changed = kit.update_syllabus(args.page, notebooks, check=args.check)
        print(f"{args.page}: {'updated' if changed else 'up to date'}")
    else:
        print(kit.syllabus_table(notebooks, args.page.parent / kit.CI_TIMINGS))
    return 0
