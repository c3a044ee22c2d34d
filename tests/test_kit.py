"""The lecturer's kit: figure files with stable names, chapter timings, syllabus.

* ``export_figures`` writes SVG and PDF under ``<prefix>-<label>``, numbers a
  repeated label, writes no date, and (in a kernel) catches panels a cell
  adds after the plotting helper returned;
* ``dvae figures`` on chapter 4 (CI mode, about half a minute) writes one
  SVG and one PDF per figure the committed chapter shows, under the names of
  the functions that drew them;
* ``dvae handout`` leaves out exactly the solution blocks;
* timings are read from nbclient's cell metadata, and the syllabus's table
  is the one those timings give (``dvae syllabus --write`` regenerates it).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from dvae_tutorial import kit, plotting, plotting_foundations  # noqa: E402
from dvae_tutorial.cli import main  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_figures_get_stable_names_and_the_same_bytes(tmp_path, monkeypatch):
    monkeypatch.setenv(plotting.FIGURES_DIR_ENV, str(tmp_path / "a"))
    draw = lambda: plotting_foundations.plot_water_filling(  # noqa: E731
        np.array([1.0, 0.5, 0.1]), 0.3).figure
    figs = [draw(), draw()]
    assert [f.get_label() for f in figs] == ["water-filling"] * 2
    files = plotting.export_figures(figs, prefix="ch01")
    assert [f.name for f in files] == [
        "ch01-water-filling.svg", "ch01-water-filling.pdf",
        "ch01-water-filling-2.svg", "ch01-water-filling-2.pdf"]
    assert plotting.export_figures(figs, prefix="ch01") == []  # each figure once
    svg = [f.read_bytes() for f in files if f.suffix == ".svg"]
    assert svg[0] == svg[1]  # the same drawing, the same bytes
    assert b"<dc:date>" not in svg[0]
    assert files[1].read_bytes().startswith(b"%PDF")
    for fig in figs:
        plt.close(fig)


def test_without_the_variable_nothing_is_written(tmp_path, monkeypatch):
    monkeypatch.delenv(plotting.FIGURES_DIR_ENV, raising=False)
    fig = plotting_foundations.plot_water_filling(np.array([1.0]), 0.5).figure
    assert plotting.export_figures([fig]) == []
    assert not any(tmp_path.iterdir())
    plt.close(fig)


def _notebook(sources: list[str]) -> dict:
    cells = [{"cell_type": "code", "id": f"c{i}", "metadata": {}, "source": s,
              "execution_count": None, "outputs": []} for i, s in enumerate(sources)]
    return {"cells": cells, "metadata": {"kernelspec": {"name": "python3",
            "display_name": "Python 3", "language": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def test_in_a_kernel_a_figure_is_written_when_its_cell_ends(tmp_path):
    """Two panels: the helper draws the left one, the cell then draws the right
    one; the file holds both (it is written after the cell, not by the helper)."""
    nb = tmp_path / "07_demo.ipynb"
    nb.write_text(json.dumps(_notebook([
        "import matplotlib.pyplot as plt, numpy as np\n"
        "from dvae_tutorial import plotting_foundations as pf\n"
        "fig, (a, b) = plt.subplots(1, 2)\n"
        "pf.plot_water_filling(np.array([1.0, 0.2]), 0.5, ax=a)\n"
        "b.set_title('PANEL-ADDED-LATER')\nplt.show()",
        "pf.plot_water_filling(np.array([1.0, 0.2]), 0.1)",
    ])))
    files = kit.export_chapter_figures([nb], tmp_path / "figs")
    assert [f.name for f in files] == [
        "ch07-water-filling-2.pdf", "ch07-water-filling-2.svg",
        "ch07-water-filling.pdf", "ch07-water-filling.svg"]
    assert "PANEL-ADDED-LATER" in (tmp_path / "figs" / "ch07-water-filling.svg").read_text()
    assert "PANEL-ADDED-LATER" not in (tmp_path / "figs" /
                                       "ch07-water-filling-2.svg").read_text()


@pytest.mark.skipif(not os.environ.get("DVAE_DATA") and not (ROOT / "data").is_dir(),
                    reason="chapter 4 reads Kodak: set DVAE_DATA")
def test_dvae_figures_on_chapter_4(tmp_path, capsys):
    chapter = ROOT / "book" / "04_emission_distortion.ipynb"
    assert main(["figures", "--out", str(tmp_path), str(chapter)]) == 0
    shown = sum("image/png" in o.get("data", {})
                for c in json.loads(chapter.read_text())["cells"]
                if c["cell_type"] == "code" for o in c["outputs"])
    svg = sorted(p.stem for p in tmp_path.glob("*.svg"))
    assert len(svg) == shown, (svg, shown)
    assert sorted(p.stem for p in tmp_path.glob("*.pdf")) == svg
    assert svg == ["ch04-degradations", "ch04-iso-loss", "ch04-residual-histogram"]
    assert "6 files from 1 notebooks" in capsys.readouterr().out


def _timed(stamps: list[tuple[str, str]]) -> dict:
    return {"cells": [{"cell_type": "code", "metadata": {"execution": {
        "iopub.execute_input": a, "shell.execute_reply": b}}} for a, b in stamps]
        + [{"cell_type": "markdown", "metadata": {}, "source": "# Chapter 9 — T"}]}


def test_timing_is_first_start_to_last_reply():
    nb = _timed([("2026-12-03T10:00:00.000Z", "2026-12-03T10:00:01.500Z"),
                 ("2026-12-03T10:00:02.000Z", "2026-12-03T10:01:32.000Z")])
    t = kit.chapter_timing(nb)
    assert (t.seconds, t.slowest, t.date) == (92.0, 90.0, "2026-12-03")
    assert kit.chapter_timing({"cells": [{"cell_type": "code", "metadata": {}}]}) is None


def test_what_runs_live_follows_the_timings(tmp_path):
    quick = _timed([("2026-12-03T10:00:00Z", "2026-12-03T10:00:30Z")])
    slow = _timed([("2026-12-03T10:00:00Z", "2026-12-03T10:20:00Z")])
    for name, nb in [("01_quick.ipynb", quick), ("02_slow.ipynb", slow),
                     ("03_slow.ipynb", slow)]:
        (tmp_path / name).write_text(json.dumps(nb))
    record = tmp_path / kit.CI_TIMINGS
    record.write_text(json.dumps({"02_slow.ipynb": {"seconds": 100.0, "slowest": 50,
                                                    "date": "2026-12-03"}}))
    rows = kit.syllabus_table(sorted(tmp_path.glob("*.ipynb")), record).splitlines()
    assert rows[2].endswith("| 30 s (2026-12-03) | 30 s | not measured | all of it |")
    assert rows[3].endswith("| 20.0 min (2026-12-03) | 20.0 min | 1.7 min (2026-12-03) "
                            "| CI mode (`CI=true`) |")
    assert rows[4].endswith("| not measured | no: show the deck, run it before class |")


def test_the_syllabus_table_is_the_one_the_chapters_give():
    page = ROOT / "book" / "syllabus.md"
    try:
        kit.update_syllabus(page, kit.chapters(ROOT / "book"), check=True)
    except Exception as err:  # a stale table: say how to fix it
        pytest.fail(f"{err} (from the repository root)")


def test_a_handout_leaves_out_every_solution_and_nothing_else(tmp_path, capsys):
    """``dvae handout``: each chapter's copy has its exercises but none of the
    solution blocks; the chapter is unchanged; the book's own folder and a
    broken block are refused in one line."""
    chapter = ROOT / "book" / "07_results.ipynb"
    before = chapter.read_bytes()
    assert main(["handout", str(chapter), "--out", str(tmp_path / "h")]) == 0
    assert chapter.read_bytes() == before
    text = lambda nb: "".join(  # noqa: E731
        "".join(c["source"]) for c in json.loads(nb.read_text())["cells"]
        if c["cell_type"] == "markdown")
    solutions = text(chapter).count("<details><summary>Solution</summary>")
    copy = text(tmp_path / "h" / chapter.name)
    assert solutions >= 3 and "<details>" not in copy and "</details>" not in copy
    assert copy.count(kit.SOLUTION_REMOVED.strip()) == solutions
    assert "## Exercises" in copy
    assert f"{solutions} solutions left out" in capsys.readouterr().out
    # everything but the solutions is kept: put them back and compare
    blocks = kit.SOLUTION.findall(text(chapter))
    restored = copy
    for block in blocks:
        restored = restored.replace(kit.SOLUTION_REMOVED, block, 1)
    assert restored == text(chapter)
    assert main(["handout", str(chapter), "--out", str(chapter.parent)]) == 2
    assert "would overwrite" in capsys.readouterr().err
    broken = tmp_path / "broken.ipynb"
    broken.write_text(json.dumps({"cells": [{"cell_type": "markdown", "source":
                                             "<details><summary>Solution</summary>x"}]}))
    assert main(["handout", str(broken), "--out", str(tmp_path / "h")]) == 2
    assert "without </details>" in capsys.readouterr().err
