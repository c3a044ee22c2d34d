"""Check the built HTML: an index, one page per _toc.yml entry, figures in chapters."""

from __future__ import annotations

import sys
from pathlib import Path

import yaml

root = Path(__file__).resolve().parents[1]
html = root / "_build" / "html"
toc = yaml.safe_load((root / "_toc.yml").read_text())
entries = [toc["root"]] + [c["file"] for p in toc["parts"] for c in p["chapters"]]
problems = []
if not (html / "index.html").exists():
    problems.append("no _build/html/index.html")
for entry in entries:
    page = html / f"{entry}.html"
    if not page.exists():
        problems.append(f"missing page {page.relative_to(root)}")
        continue
    text = page.read_text(encoding="utf-8")
    if (root / f"{entry}.ipynb").exists() and "<img" not in text:
        problems.append(f"{page.name}: no figure in the executed chapter")
    if "Traceback (most recent call last)" in text:
        problems.append(f"{page.name}: an error output is shown")
for p in problems:
    print("check_book:", p, file=sys.stderr)
print(f"check_book: {len(entries)} pages checked, {len(problems)} problems")
sys.exit(1 if problems else 0)
