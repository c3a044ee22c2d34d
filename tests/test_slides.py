"""Slides: the tagger's rules, its idempotence, an offline deck, and its check.

The tagger (``dvae_tutorial.slides``) is run on notebooks made here; the
deck builder on one of them; the browser check (.ci/check_browser.py
``--require``) opens that deck in headless Chromium, offline, and must pass,
and must fail on a page with no slides.
"""

from __future__ import annotations

import base64
import itertools
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from dvae_tutorial import slides

ROOT = Path(__file__).resolve().parents[1]
CHECK = ROOT / ".ci" / "check_browser.py"
CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser",
                                            "google-chrome") if shutil.which(n)), None)
TYPES = {"slide", "subslide", "fragment", "-", "skip", "notes"}


_ids = itertools.count()


def _md(text: str) -> dict:
    return {"cell_type": "markdown", "id": f"c{next(_ids)}", "metadata": {},
            "source": text}


def _code(text: str, outputs=()) -> dict:
    return {"cell_type": "code", "id": f"c{next(_ids)}", "metadata": {},
            "source": text, "execution_count": 1, "outputs": list(outputs)}


def _png(height: int) -> dict:
    header = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + (100).to_bytes(4, "big") \
        + height.to_bytes(4, "big") + b"\x08\x02\x00\x00\x00"
    return {"output_type": "display_data", "metadata": {},
            "data": {"image/png": base64.b64encode(header + b"\x00" * 32).decode()}}


def _notebook(cells: list[dict]) -> dict:
    return {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}


CELLS = [
    _md("# Chapter 9 — A test\n\nIntro with $x^2$."),
    _code(slides.SETUP_MARK + " locally it does nothing.\nimport sys"),
    _md("## First section\n\nText."),
    _code("print(1)", [{"output_type": "stream", "name": "stdout", "text": "1\n"}]),
    _md("### A detail"),
    _code("\n".join(f"a{i} = {i}" for i in range(slides.LONG_CODE + 5))),  # shows nothing
    _code("x = 1\ny = 2\nz = 3\nw = 4\nv = 5"),
    _code("plot()", [_png(560)]),  # a tall figure: past what fits
    _md("Closing words; a `## heading` in code does not count.\n```\n## not one\n```"),
]
EXPECTED = ["slide", "skip", "slide", "-", "subslide", "skip", "-", "subslide",
            "subslide"]  # the figure filled the slide


def test_the_rules():
    assert slides.slide_types(CELLS) == EXPECTED


def test_tagging_is_idempotent_and_touches_only_the_slide_metadata(tmp_path):
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(_notebook(CELLS), indent=1) + "\n")
    assert slides.tag_files([path]) == [path]
    first = path.read_text()
    assert slides.tag_files([path]) == []  # a second run changes nothing
    assert path.read_text() == first
    nb = json.loads(first)
    assert [c["metadata"]["slideshow"]["slide_type"] for c in nb["cells"]] == EXPECTED
    for before, after in zip(CELLS, nb["cells"], strict=True):
        assert {k: v for k, v in after.items() if k != "metadata"} == \
            {k: v for k, v in before.items() if k != "metadata"}


@pytest.mark.parametrize("nb", sorted((ROOT / "book").glob("*.ipynb")),
                         ids=lambda p: p.name)
def test_tagged_chapters_start_a_slide_at_every_section(nb: Path):
    cells = json.loads(nb.read_text())["cells"]
    tagged = [c for c in cells if "slideshow" in c.get("metadata", {})]
    # the committed notebooks are tagged, so `slides tag` on a checkout changes
    # nothing (the deck builder would tag an untagged one in memory)
    assert len(tagged) == len(cells), ("some cells have no slide type: run "
                                       "python -m dvae_tutorial.slides tag book/*.ipynb")
    for cell in cells:
        kind = cell["metadata"]["slideshow"]["slide_type"]
        assert kind in TYPES
        level = None if cell["cell_type"] == "code" else \
            slides._heading_level("".join(cell["source"]))
        if level is not None and level <= 2:
            assert kind == "slide", "".join(cell["source"])[:60]
    assert cells[0]["metadata"]["slideshow"]["slide_type"] == "slide"


@pytest.fixture(scope="module")
def deck(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("slides")
    src = out / "src"
    src.mkdir()
    untagged = [c for c in CELLS if c["cell_type"] == "markdown"] + [
        _md("Display math:\n\n$$\\hat y = \\mathrm{round}(y - \\mu) + \\mu$$\n\n"
            "and a [citation](bibliography.md), a [chapter](other.ipynb).")]
    (src / "09_test.ipynb").write_text(json.dumps(_notebook(untagged), indent=1))
    (src / "other.ipynb").write_text(json.dumps(_notebook([_md("# Other")]), indent=1))
    slides.build_decks([src / "09_test.ipynb", src / "other.ipynb"], out)
    return out


def test_the_deck_is_self_contained(deck: Path):
    html = (deck / "09_test.slides.html").read_text()
    remote = re.findall(r"<(?:script|link|img)\b[^>]*(?:src|href)=\"(https?:[^\"]+)", html)
    assert not remote, f"the deck loads from the network: {remote}"
    for asset in ("reveal.js/dist/reveal.js", "reveal.js/plugin/notes/notes.js",
                  "reveal.js/dist/theme/white.css", "mathjax/tex-mml-chtml.js"):
        assert f'"{asset}"' in html and (deck / asset).is_file(), asset
    # untagged: tagged in memory. A slide is a <section> holding one <section>
    # per sub-slide: 2 slides (# and ##), 3 sub-slides (one per slide, ###)
    assert html.count("<section") == 2 + 3
    assert 'href="other.slides.html"' in html  # a chapter with a deck: the deck
    assert f'href="{slides.BOOK_URL}/book/bibliography.html"' in html


def _check(html: Path, *pages: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(CHECK), "--html", str(html), "--screenshots",
         str(html / "shots"), "--require", ".reveal.ready",
         "--require", ".reveal .slides section", *pages],
        capture_output=True, text=True, timeout=300)


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (.ci/run installs it)")
def test_the_deck_opens_offline_in_chromium(deck: Path):
    result = _check(deck, "09_test.slides.html")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 problems" in result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium (.ci/run installs it)")
def test_the_check_fails_on_a_page_with_no_slides(tmp_path: Path):
    (tmp_path / "empty.html").write_text(
        "<!DOCTYPE html><html><body><div class='reveal'><div class='slides'>"
        "</div></div></body></html>")
    result = _check(tmp_path, "empty.html")
    assert result.returncode == 1
    assert "nothing on the page matches '.reveal.ready'" in result.stdout
    assert "nothing on the page matches '.reveal .slides section'" in result.stdout
