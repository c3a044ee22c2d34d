"""Structure of the book: table of contents, chapter conventions, citations.

These tests read the files (they do not execute notebooks; nbval does that).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

#: The first code cell of every chapter, verbatim: installs the package in Colab,
#: does nothing where it is already importable.
SETUP_CELL = """\
# Setup: in Colab this installs the book's package; locally it does nothing.
import importlib.util
import subprocess
import sys

if importlib.util.find_spec("dvae_tutorial") is None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q",
         "dvae-tutorial @ git+https://github.com/dvae-tutorial/dvae-tutorial"],
        check=True,
    )"""


def _toc_files() -> list[str]:
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    files = [toc["root"]]
    for part in toc.get("parts", [{"chapters": toc.get("chapters", [])}]):
        files += [c["file"] for c in part["chapters"]]
    return files


def _resolve(entry: str) -> Path:
    for suffix in (".ipynb", ".md"):
        path = ROOT / f"{entry}{suffix}"
        if path.exists():
            return path
    raise FileNotFoundError(entry)


NOTEBOOKS = sorted((ROOT / "book").glob("*.ipynb"))
#: The numbered chapters; the other notebooks are appendices.
CHAPTERS = [nb for nb in NOTEBOOKS if nb.name[:2].isdigit()]
APPENDICES = [nb for nb in NOTEBOOKS if nb not in CHAPTERS]


def _cells(nb: Path) -> list[dict]:
    return json.loads(nb.read_text())["cells"]


def _text(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def test_every_toc_entry_exists_and_every_chapter_is_listed():
    files = [_resolve(entry) for entry in _toc_files()]
    assert len(set(files)) == len(files), "a page is listed twice in _toc.yml"
    for nb in NOTEBOOKS:
        assert nb in files, f"{nb.name} is not in _toc.yml"


def test_config_has_colab_button_math_bibliography_and_no_intersphinx():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())
    assert config["launch_buttons"]["colab_url"].startswith("https://colab")
    assert config["repository"]["branch"] == "main"
    assert "path_to_book" in config["repository"]
    assert {"amsmath", "dollarmath"} <= set(config["parse"]["myst_enable_extensions"])
    for bib in config["bibtex_bibfiles"]:
        assert (ROOT / bib).exists()
    assert "intersphinx" not in (ROOT / "_config.yml").read_text()
    assert config["execute"]["execute_notebooks"] in {"force", "cache"}


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_chapter_conventions(nb: Path):
    cells = _cells(nb)
    first = _text(cells[0])
    assert cells[0]["cell_type"] == "markdown" and first.startswith("# Chapter")
    assert "## Learning objectives" in first
    code = [c for c in cells if c["cell_type"] == "code"]
    assert _text(code[0]).strip() == SETUP_CELL, "first code cell is not the setup cell"
    markdown = "\n".join(_text(c) for c in cells if c["cell_type"] == "markdown")
    assert "## Summary" in markdown and "## Exercises" in markdown
    exercises = markdown.split("## Exercises", 1)[1]
    # HTML <details> is collapsed in the built book *and* in Colab; a MyST
    # dropdown admonition is raw, open text in Colab
    assert exercises.count("<details>") >= 2, "exercise solutions must be hidden"
    assert ":class: dropdown" not in markdown, "a dropdown shows its text in Colab"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=lambda p: p.name)
def test_chapter_is_committed_executed_without_errors(nb: Path):
    code = [c for c in _cells(nb) if c["cell_type"] == "code" and _text(c).strip()]
    assert all(c.get("execution_count") for c in code), "not every cell was executed"
    outputs = [o for c in code for o in c.get("outputs", [])]
    assert not [o for o in outputs if o["output_type"] == "error"]
    if nb in CHAPTERS:
        assert any("image/png" in o.get("data", {}) for o in outputs), "no figure"


@pytest.mark.parametrize("nb", APPENDICES, ids=lambda p: p.name)
def test_appendix_conventions(nb: Path):
    """An appendix notebook opens with its title and the setup cell (it runs
    in Colab too) and is listed under the "Appendices" caption."""
    cells = _cells(nb)
    assert cells[0]["cell_type"] == "markdown"
    assert _text(cells[0]).startswith("# Appendix")
    code = [c for c in cells if c["cell_type"] == "code"]
    assert _text(code[0]).strip() == SETUP_CELL, "first code cell is not the setup cell"
    toc = yaml.safe_load((ROOT / "_toc.yml").read_text())
    [appendices] = [p for p in toc["parts"] if p.get("caption") == "Appendices"]
    entries = [c["file"] for c in appendices["chapters"]]
    assert f"book/{nb.stem}" in entries
    assert entries[-1] == "book/bibliography", "the bibliography comes last"


def test_training_history_appendix_is_generated_not_typed():
    """The appendix's tables are rendered by its code from the checkpoints:
    its markdown cells hold no table, its outputs name every shipped model."""
    from dvae_tutorial import codec

    cells = _cells(ROOT / "book" / "appendix_training_history.ipynb")
    prose = "\n".join(_text(c) for c in cells if c["cell_type"] == "markdown")
    assert "|---" not in prose, "a typed table"
    rendered = "\n".join(
        "".join(o.get("data", {}).get("text/markdown", ""))
        for c in cells if c["cell_type"] == "code" for o in c.get("outputs", []))
    for info in codec.shipped_models():
        assert f"`{info.name}`" in rendered, f"{info.name} is not in the appendix"


def _bib_entries() -> dict[str, tuple[str, str | None]]:
    """Each entry of references.bib: key → (its author–year label as the
    chapters cite it, "Ballé et al. 2017" / "Kingma & Welling 2014" /
    "Duan 2022"; its link: the url, else https://doi.org/ + the doi, else
    None). Accents as TeX writes them become letters."""
    accents = {"\\'e": "é", "\\'a": "á", "\\o": "ø", '\\"o': "ö", '\\"u': "ü"}
    entries = {}
    for entry in re.split(r"\n@", (ROOT / "references.bib").read_text()):
        key = re.match(r"@?\w+\{([^,]+),", entry.strip())
        author = re.search(r"author\s*=\s*\{(.+?)\},?\s*\n", entry, re.S)
        year = re.search(r"year\s*=\s*\{?(\d{4})", entry)
        if not (key and author and year):
            continue
        names = []
        for name in re.split(r"\s+and\s+", author.group(1)):
            name = name.replace("{", "").replace("}", "")
            for tex, letter in accents.items():
                name = name.replace(tex, letter)
            names.append((name.split(",")[0] if "," in name else name.split()[-1]).strip())
        who = (names[0] if len(names) == 1 else " & ".join(names) if len(names) == 2
               else f"{names[0]} et al.")
        url = re.search(r"\burl\s*=\s*\{([^}]+)\}", entry)
        doi = re.search(r"\bdoi\s*=\s*\{([^}]+)\}", entry)
        link = url.group(1) if url else f"https://doi.org/{doi.group(1)}" if doi else None
        entries[key.group(1)] = (f"{who} {year.group(1)}", link)
    return entries


#: A citation's text: surnames and a year ("Ballé et al. 2017").
_CITATION = re.compile(r"\[([^\]\[$]*?\b(?:1[89]|20)\d\d)\]\(([^)\s]+)\)")


def test_every_citation_is_readable_and_in_the_bibliography():
    """Chapters cite as ``[Surname et al. Year](link to the work)`` — plain
    Markdown that Colab renders too (a ``{cite}`` role shows as raw text
    there, and a link to bibliography.md leads nowhere in Colab): the text
    is the label of an entry of references.bib and the link is that
    entry's url or doi; a work with neither (a talk) is cited in plain
    text. The bibliography page lists every entry."""
    entries = _bib_entries()
    by_link = {link: label for label, link in entries.values() if link}
    labels = {label for label, _ in entries.values()}
    cited = set()
    for page in NOTEBOOKS:
        text = "\n".join("".join(c["source"]) for c in json.loads(page.read_text())["cells"]
                         if c["cell_type"] == "markdown")
        assert "{cite" not in text, f"{page.name}: a Sphinx-only {{cite}} role"
        assert "](bibliography.md" not in text, f"{page.name}: a link dead in Colab"
        for label, link in _CITATION.findall(text):
            if not link.startswith("http"):
                continue  # "[chapter 5 (2026)](05_….ipynb)" and the like
            assert by_link.get(link) == label, f"{page.name}: [{label}]({link})"
            cited.add(label)
    for page in (ROOT / "book").glob("*.md"):  # pages read in the HTML only
        for group in re.findall(r"\[([^\]\[$]+)\]\(bibliography\.md\)", page.read_text()):
            assert set(group.split("; ")) <= labels, f"{page.name}: {group}"
    assert len(cited) > 30, "citations not found"
    assert ":all:" in (ROOT / "book" / "bibliography.md").read_text()


def test_preface_has_the_notation_table():
    preface = (ROOT / "book" / "preface.md").read_text()
    assert "## Notation" in preface
    for seed, book in [("$Y$", "$x$"), ("$X$", "$y$")]:
        assert re.search(rf"\| {re.escape(seed)} \| {re.escape(book)} \|", preface)


@pytest.mark.parametrize("which", ["test-command", "book-command"])
def test_ci_script_runs_the_readme_commands(which: str):
    readme = (ROOT / "README.md").read_text()
    command = re.search(rf"<!-- {which} -->\s*```(?:bash)?\n(.+?)\n```", readme, re.S)
    assert command, f"README must mark its {which}"
    assert command.group(1).strip() in (ROOT / ".ci" / "run").read_text()


def test_the_prefaces_lambda_table_says_what_the_package_computes():
    """The preface's conversion table is prose; its numbers must be the
    functions' (a retuned convention or a typo fails here)."""
    from dvae_tutorial.losses import (
        lmbda_per_sample,
        lmbda_to_8bit,
        lmbda_to_qres,
        lmbda_to_sigma,
    )

    text = (ROOT / "book" / "preface.md").read_text()
    rows = {line.split("|")[1].strip(): line.split("|")[3].strip()
            for line in text.splitlines() if line.startswith("| ") and "845" not in
            line.split("|")[1]}
    lmbda = 845.0
    assert rows["This book, chapters 4–6"] == "845"
    assert rows["Chapter 1 (per sample)"] == f"{lmbda_per_sample(lmbda):.1f}"
    assert rows["CompressAI, Ballé et al. 2018, Minnen et al. 2018"] \
        == f"{lmbda_to_8bit(lmbda):.4f}"
    assert rows["QRes-VAE (Duan et al. 2023)"] == f"{lmbda_to_qres(lmbda):.1f}"
    sigma = lmbda_to_sigma(lmbda)
    assert rows["Gaussian emission (chapters 1, 4)"] \
        == f"σ = {sigma:.4f} ({255 * sigma:.1f} on 0–255)"
