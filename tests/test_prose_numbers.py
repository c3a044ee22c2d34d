"""Numbers come from code: a measured number in a chapter's prose must appear
in that chapter's committed outputs.

The test reads the committed ``.ipynb`` JSON; it executes nothing. A number in
a markdown cell is *measured* when the authors mark it as a measurement:

* it carries a unit of measurement — ``dB``, ``bpp``, ``%``, ``×`` (a ratio),
  ``s``/``ms``/``h``/``min``, ``bytes``/``kB``/``MB``/``GB``, ``bits``, ``M``
  (million parameters), ``Msym/s`` — or counts something a run produces
  or consumes ("970 training photos", "27 channels": steps, photos, images,
  channels, layers, parameters, symbols, elements, streams, runs), or shares
  a unit with a range or list ("13–21 %", "+0.2 and +0.3 dB", "0.7 to 1.7
  bpp"), or
* it is a decimal fraction (``0.45``, ``1.33``): a fraction is never a count,
  so it is a measurement or a constant.

A measured number passes when some number printed by the chapter's code
cells (``stream``, ``text/plain``, ``text/markdown``, ``text/html``) rounds to
it at the precision it is written with: "0.52 %" matches a printed
``0.5214`` or ``0.52``, "about 33 dB" matches anything in [32.5, 33.5].
Signs are ignored ("42.1 % fewer bits" is a printed ``-42.1 %``). The units
must agree: the unit printed right after the number, or none (a table cell),
so "5.4 dB" is not backed by a printed "5.4 h".

It is exempt, and not checked, when it is

* inside math (``$…$``, ``$$…$$``) or code (inline, fenced): formulas,
  derivations and commands are not measurements;
* in a sentence that cites (``[Author Year](link to the work)``, or a
  ``{cite}`…``` role): a published figure, quoted;
* a parameter being set, "σ = 0.6" / "λ = 845" (the value the code is given,
  not one it measures) — the shipped λ values 100, 300, 845, 2500 and 5000
  are only ever such parameters;
* an integer that is a year, a chapter, section, cell, exercise, row, step
  or quality number, or has neither a unit nor a counted noun;
* listed in :data:`ALLOWED` for its chapter, with the reason.

What the rule does not see: numbers written as words ("a hundred steps"),
qualitative comparisons ("rises", "closest" — the cells ``assert`` those),
and a low-precision claim that an unrelated unitless output happens to
round to. ``python tests/test_prose_numbers.py [NOTEBOOK ...]`` prints the
report without pytest.
"""

from __future__ import annotations

import copy
import json
import re
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Every notebook of the book: the chapters and the appendices.
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))

#: Numbers a chapter may type although no output prints them: values the
#: reader, not the chapter, computes or chooses. Key: the file name up to its
#: first "_" ("03", "appendix"); value: {the number as written, with its
#: unit: the reason}. Keep it small; a stale entry fails
#: test_every_allowed_number_is_still_in_its_chapter.
ALLOWED: dict[str, dict[str, str]] = {
    "03": {"0.43 bits": "exercise 2's answer, the KL divergence between two fixed "
                        "discretized Gaussians that the reader computes with the "
                        "solution's one-liner; printing it would give the exercise "
                        "away"},
    "05": {"20 channels": "exercise 3's instruction (how many channels the reader "
                          "switches off): a choice, not a result"},
}

# --- tokenising -------------------------------------------------------------

_SPACE = "[ \u00a0\u2009\u202f]"  # space, no-break space, thin spaces
_NUMBER = (rf"(?<![\w.,/^_\-−])[+±−-]?"
           rf"(?:\d{{1,3}}(?:(?:,|{_SPACE})\d{{3}})+(?!\d)|\d+)(?:\.\d+)?(?!\d)")
_UNIT = (r"(?:dB|bpp|bits?(?![-\w])|bytes?(?![-\w])|kB|MB|GB|KiB|MiB|Msym/s|%|×"
         r"|ms|s|h|min|minutes|hours|M(?=\s+param)|M\b)")
#: what a count counts; one word may stand between ("970 training photos")
_COUNTED = (r"(?:steps|photos|images|channels|layers|parameters|symbols|elements"
            r"|streams|runs)")
_GAP = r"[ \u00a0\u2009\u202f\n]"  # between a number and its unit: a line may break
_UNIT_AFTER = (rf"(?:{_GAP}?(?P<unit>{_UNIT})(?![\w])"
               rf"|{_GAP}(?:[A-Za-z]+{_GAP})?(?P<counted>{_COUNTED})\b)")
_JOIN = rf"{_SPACE}*(?:–|—|-|to|and|or|/|,){_SPACE}*"
# a chain of numbers that share the unit after the last one
_CHAIN = re.compile(
    rf"(?P<chain>{_NUMBER}(?:{_JOIN}{_NUMBER})*)(?:{_UNIT_AFTER})?")
_ONE = re.compile(_NUMBER)
_PARAMETER = re.compile(r"(?:[λσμΔNMκ]|lambda|sigma|quality|q|seed)\s*[=≈]\s*$")
_ORDINAL = re.compile(
    r"(?:chapter|chapters|section|sections|cell|cells|exercise|exercises|row|rows|"
    r"step|steps|quality|part|figure|table|layer|layers|version|edition|z|"
    r"hier|single)[\s-]*$", re.I)


def _text(cell: dict) -> str:
    src = cell["source"]
    return src if isinstance(src, str) else "".join(src)


def _strip_markup(text: str) -> str:
    """Prose only: math, code, roles' targets, HTML tags and link targets go."""
    text = re.sub(r"```.*?```", " ", text, flags=re.S)
    text = re.sub(r"\$\$.*?\$\$", " ", text, flags=re.S)
    text = re.sub(r"(?<!\\)\$[^$]+?(?<!\\)\$", " ", text, flags=re.S)
    text = re.sub(r"\{cite(?::\w+)?\}`[^`]*`", "{cite}", text)
    # a citation as the chapters write it (readable in Colab): [Author Year](link
    # to the work); the pages read only in the HTML link to bibliography.md
    text = re.sub(r"\[[^\]]*\b(?:1[89]|20)\d\d\]\((?:https?:|(?:\.\./)?(?:book/)?"
                  r"bibliography\.md)[^)]*\)", "{cite}", text)
    text = re.sub(r"\{\w+\}`[^`]*`", " ", text)
    text = re.sub(r"`[^`]*`", " ", text)
    text = re.sub(r"\]\([^)]*\)", "]", text)
    text = re.sub(r"<[^>]+>", " ", text)
    return text


def _sentences(text: str) -> list[str]:
    # a sentence ends at . ! ? or a blank line (list items, headings)
    return re.split(r"(?<=[.!?])\s+(?=[A-Z(*\[])|\n\s*\n|\n\s*[-*] |\n#+ ", text)


def _value(token: str) -> tuple[float, int]:
    """|number| and its number of decimals."""
    digits = re.sub(rf"[,+±−\-]|{_SPACE}", "", token)
    decimals = len(digits.split(".", 1)[1]) if "." in digits else 0
    return abs(float(digits)), decimals


@dataclass(frozen=True)
class Claim:
    cell: int
    text: str  # the number as written, with its unit
    unit: str | None
    value: float
    decimals: int
    context: str

    def __str__(self) -> str:
        return f"cell {self.cell}: {self.text!r} in “…{self.context}…”"


def measured_numbers(cells: list[dict]) -> list[Claim]:
    """The measured numbers of the markdown cells (see the module docstring)."""
    claims = []
    for index, cell in enumerate(cells):
        if cell["cell_type"] != "markdown":
            continue
        for sentence in _sentences(_strip_markup(_text(cell))):
            if "{cite}" in sentence:
                continue
            for chain in _CHAIN.finditer(sentence):
                unit = chain.group("unit") or chain.group("counted")
                for number in _ONE.finditer(chain.group("chain")):
                    token = number.group(0)
                    start = chain.start() + number.start()
                    before = sentence[max(0, start - 24):start]
                    value, decimals = _value(token)
                    if _PARAMETER.search(before):
                        continue
                    if not decimals and (unit is None or _ORDINAL.search(before)):
                        continue
                    written = f"{token} {unit}" if unit else token
                    context = re.sub(r"\s+", " ", sentence[max(0, start - 40):
                                                           start + len(token) + 30])
                    claims.append(Claim(index, written.strip(), _unit(unit), value, decimals,
                                        context.strip()))
    return claims


_OUT_NUMBER = re.compile(
    r"(?<![\w.])[+−-]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?(?:e[+-]?\d+)?(?!\d)"
    rf"(?:{_SPACE}?(?P<unit>{_UNIT}|x)(?!\w))?", re.I)


def _unit(unit: str | None) -> str | None:
    """One spelling per unit: bit/bits, byte/bytes, x/×, hours/h, …"""
    if unit is None:
        return None
    return {"bit": "bits", "byte": "bytes", "x": "×", "X": "×", "hours": "h",
            "minutes": "min"}.get(unit, unit)


def printed_numbers(cells: list[dict]) -> list[tuple[float, str | None]]:
    """Every number the code cells' outputs print or render: (|value|, unit),
    the unit written right after it or None (a table cell, a bare number)."""
    values = []
    for cell in cells:
        for output in cell.get("outputs", []):
            if output["output_type"] == "stream":
                texts = [output["text"]]
            else:
                data = output.get("data", {})
                texts = [data[k] for k in ("text/plain", "text/markdown", "text/html")
                         if k in data]
            for text in texts:
                text = text if isinstance(text, str) else "".join(text)
                text = re.sub(r"<[^>]+>", " ", text)
                for match in _OUT_NUMBER.finditer(text):
                    token = re.sub(rf"[,]|{_SPACE}.*", "", match.group(0))
                    token = re.sub(r"[^\d.e+−-].*$", "", token, flags=re.I)
                    values.append((abs(float(token.replace("−", "-"))),
                                   _unit(match.group("unit"))))
    return values


def unbacked_numbers(cells: list[dict], allowed: dict[str, str] | None = None
                     ) -> list[Claim]:
    """The measured numbers of the prose that no output prints.

    A printed number backs a claim when it rounds to the claim at the claim's
    precision and its unit is the claim's or none (a table cell): "2.4 dB"
    is not backed by a printed "2.4 h"."""
    allowed = allowed or {}
    printed = printed_numbers(cells)
    missing = []
    for claim in measured_numbers(cells):
        if claim.text in allowed:
            continue
        tolerance = 0.5 * 10 ** -claim.decimals + 1e-9
        if not any(abs(value - claim.value) <= tolerance
                   and (unit is None or unit == claim.unit)
                   for value, unit in printed):
            missing.append(claim)
    return missing


def _chapter_key(path: Path) -> str:
    return path.name.split("_", 1)[0]


def _load(path: Path) -> list[dict]:
    return json.loads(path.read_text())["cells"]


# --- the test ---------------------------------------------------------------


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_every_measured_number_in_the_prose_is_printed(nb: Path):
    missing = unbacked_numbers(_load(nb), ALLOWED.get(_chapter_key(nb)))
    assert not missing, (
        f"{nb.name}: prose states numbers that no output prints (print them "
        "beside the claim, render the sentence from the values, or drop them):\n"
        + "\n".join(f"  {c}" for c in missing))


def test_every_allowed_number_is_still_in_its_chapter():
    """An allow-list entry whose number left the prose is stale: remove it."""
    for key, entries in ALLOWED.items():
        [nb] = [p for p in CHAPTERS if _chapter_key(p) == key]
        written = {c.text for c in measured_numbers(_load(nb))}
        for text, reason in entries.items():
            assert reason.strip(), f"{key}: {text!r} has no reason"
            assert text in written, f"{nb.name}: allowed {text!r} is not in the prose"


# --- tests of the test ------------------------------------------------------

STALE = "The model reaches 31.4719 dB on Kodak."  # printed by no chapter


def _plant(cells: list[dict], sentence: str) -> list[dict]:
    """The cells with ``sentence`` added to the Summary's markdown cell."""
    planted = copy.deepcopy(cells)
    index = next(i for i, c in enumerate(planted) if c["cell_type"] == "markdown"
                 and ("## Summary" in _text(c) or i == len(planted) - 1))
    planted[index]["source"] = _text(planted[index]) + "\n\n" + sentence + "\n"
    return planted


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.name)
def test_the_test_fails_on_a_planted_stale_number(nb: Path, tmp_path):
    """Each real notebook passes; the same notebook with one stale measured
    sentence planted in its prose fails the test above, naming the number."""
    test_every_measured_number_in_the_prose_is_printed(nb)
    notebook = json.loads(nb.read_text())
    notebook["cells"] = _plant(notebook["cells"], STALE)
    planted = tmp_path / nb.name
    planted.write_text(json.dumps(notebook))
    with pytest.raises(AssertionError, match=r"'31\.4719 dB'"):
        test_every_measured_number_in_the_prose_is_printed(planted)


@pytest.mark.parametrize("stale, reported", [
    ("The model reaches 31.47 dB on Kodak.", ["31.47 dB"]),
    ("Its files are 2.3 % larger than the information content.", ["2.3 %"]),
    ("The wide model is 3.9× faster.", ["3.9 ×"]),
    ("The rate then falls (0.45 → 0.6113).", ["0.6113"]),
    ("Within 13–83.5 % fewer bits.", ["83.5 %"]),  # 13 % is printed
    ("It trained on 971 photos.", ["971 photos"]),
    ("Each stream costs 5.4 dB.", ["5.4 dB"]),  # a printed "5.4 h" is no match
])
def test_a_planted_stale_number_is_reported(stale, reported):
    assert [c.text for c in _planted_in_chapter_5(stale)] == reported


def _planted_in_chapter_5(sentence: str) -> list[Claim]:
    """What planting ``sentence`` in chapter 5's prose adds to the report."""
    cells = _load(ROOT / "book" / "05_discretized_vae_codec.ipynb")
    before = set(unbacked_numbers(cells, ALLOWED.get("05")))
    return [c for c in unbacked_numbers(_plant(cells, sentence), ALLOWED.get("05"))
            if c not in before]


@pytest.mark.parametrize("fine", [
    "Ballé et al. report 31.47 dB at 0.5 bpp {cite}`balle2018variational`.",
    "Ballé et al. report 31.47 dB at 0.5 bpp [Ballé et al. 2018](bibliography.md).",
    "Ballé et al. report 31.47 dB at 0.5 bpp "
    "[Ballé et al. 2018](https://arxiv.org/abs/1802.01436).",
    "With $D = 0.0913$ the rate is $R = 1.17$ bits.",
    "Run `dvae train --steps 31471 --lr 3.7e-4`.",
    "The model at λ = 845 and σ = 0.73 is in chapter 4, section 3.",
    "Published in 2024, with a batch of 17 and a 64-bit state.",
])
def test_exempt_numbers_are_not_reported(fine):
    assert not _planted_in_chapter_5(fine)


def test_a_number_matches_at_its_printed_precision():
    cells = [{"cell_type": "markdown", "source": "A 0.52 % overhead, about 33 dB, "
              "1,234 bytes and 0.5 % more."},
             {"cell_type": "code", "source": "", "outputs": [
                 {"output_type": "stream", "text": "overhead 0.5214 %; 32.6 dB\n"},
                 {"output_type": "execute_result", "data": {"text/plain": "1234"}}]}]
    assert not unbacked_numbers(cells)
    cells[0]["source"] = "A 0.53 % overhead and 34 dB."
    assert [c.text for c in unbacked_numbers(cells)] == ["0.53 %", "34 dB"]


if __name__ == "__main__":  # a report: python tests/test_prose_numbers.py [NB ...]
    for path in map(Path, sys.argv[1:]) if sys.argv[1:] else CHAPTERS:
        for claim in unbacked_numbers(_load(path), ALLOWED.get(_chapter_key(path))):
            print(f"{path.name} {claim}")
