"""The reference appendices: generated from the code, so they cannot drift.

- ``cli_reference``: every command and option of the ``dvae`` parser is in
  the reference, a changed parser changes it, and the committed appendix
  shows what the parser says now;
- the package reference: the Sphinx extension lists every public module,
  the book's config loads it with autodoc and napoleon, and every module
  imports without side effects (autodoc imports them all);
- ``recipes``: the commands that would reproduce the shipped models.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dvae_tutorial import cli, cli_reference

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "dvae_tutorial"


# --- the dvae command ---------------------------------------------------------


def _all_actions(parser: argparse.ArgumentParser):
    """(parser, action) for every action of every (sub)parser, found
    independently of cli_reference.commands."""
    for action in parser._actions:
        yield parser, action
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from _all_actions(child)


def test_every_command_option_and_choice_is_in_the_reference():
    parser = cli.build_parser()
    text = cli_reference.reference_markdown(parser)
    commands = [c.prog for c in cli_reference.commands(parser)]
    assert commands[0] == "dvae" and {"dvae train", "dvae data kodak",
                                      "dvae compress"} <= set(commands)
    for prog in commands:
        assert f"# `{prog}`\n" in text, prog
    count = 0
    for owner, action in _all_actions(parser):
        if isinstance(action, argparse._HelpAction | argparse._SubParsersAction):
            continue
        count += 1
        names = action.option_strings or [action.metavar or action.dest]
        for name in names:
            assert f"`{name}`" in text, f"{owner.prog} {name}"
        for choice in action.choices or ():
            assert str(choice) in text, f"{owner.prog} {names[0]} {choice}"
        if action.help:
            first = action.help.split()[0].replace("*", "\\*")
            assert first in text, f"{owner.prog} {names[0]}: help missing"
    assert count >= 30


def test_a_changed_parser_changes_the_reference():
    """A new option, a new subcommand and a changed help text all show."""
    before = cli_reference.reference_markdown(cli.build_parser())
    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    sub.choices["train"].add_argument("--new-knob", type=int, metavar="K",
                                      default=3, help="a knob | with <angles>")
    new = sub.add_parser("frobnicate", help="do a new thing")
    new.add_argument("inputs", nargs="+", metavar="IN")
    after = cli_reference.reference_markdown(parser)
    assert after != before
    assert "| `--new-knob` | `K` | `3` | a knob \\| with &lt;angles&gt; |" in after
    assert "### `dvae frobnicate`" in after and "`IN` (positional)" in after
    assert "| `dvae frobnicate` | do a new thing |" in after
    for action in sub.choices["models"]._actions:
        if action.option_strings == ["--cost"]:
            action.help = "something else entirely"
    assert "something else entirely" in cli_reference.reference_markdown(parser)


def test_markdown_reads_the_same_in_colab_and_html():
    """No MyST syntax, no HTML-looking text, no dollar signs taken for math."""
    text = cli_reference.reference_markdown()
    outside_code = "".join(part for i, part in enumerate(text.split("```"))
                           if i % 2 == 0)
    assert "{" not in outside_code.replace("`{", "").split("`")[0]
    assert "<stem>" not in outside_code and "&lt;stem&gt;" in outside_code
    assert "$DVAE" not in outside_code.replace("`$DVAE", "")
    assert "```{" not in text and ":::" not in text


def _markdown_outputs(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return "".join("".join(o.get("data", {}).get("text/markdown", ""))
                   for c in cells if c["cell_type"] == "code"
                   for o in c.get("outputs", []))


def test_the_committed_cli_appendix_matches_the_parser():
    """Execute book/appendix_cli_reference.ipynb again when this fails: the
    parser changed since its outputs were committed."""
    shown = _markdown_outputs(ROOT / "book" / "appendix_cli_reference.ipynb")
    for section in cli_reference.sections():
        assert section in shown, ("the committed CLI appendix is stale; re-execute "
                                  "it: " + section.splitlines()[0])


# --- the package reference ------------------------------------------------------


def _extension():
    spec = importlib.util.spec_from_file_location(
        "package_reference", ROOT / "book" / "_ext" / "package_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_extension_lists_every_public_module():
    ext = _extension()
    on_disk = sorted(f"dvae_tutorial.{p.stem}" for p in PACKAGE.glob("*.py")
                     if not p.stem.startswith("_"))
    assert ext.public_modules("dvae_tutorial") == on_disk
    text = ext.module_markdown("dvae_tutorial")
    for name in on_disk:
        assert f".. automodule:: {name}\n   :members:" in text
        assert f"| `{name.rsplit('.', 1)[1]}` |" in text
    page = (ROOT / "book" / "appendix_package_reference.md").read_text()
    [marker] = ext.MARKER.findall(page)
    assert marker == "dvae_tutorial"
    source = [page]
    ext._source_read(type("App", (), {"env": type("Env", (), {})()})(), "p", source)
    assert "% package-modules" not in source[0] and "automodule" in source[0]


def test_the_book_config_loads_autodoc_napoleon_and_the_extension():
    config = yaml.safe_load((ROOT / "_config.yml").read_text())["sphinx"]
    assert {"sphinx.ext.autodoc", "sphinx.ext.napoleon"} <= set(
        config["extra_extensions"])
    assert config["local_extensions"]["package_reference"] == "book/_ext"
    toc = (ROOT / "_toc.yml").read_text()
    for page in ("appendix_cli_reference", "appendix_package_reference",
                 "appendix_training_at_scale"):
        assert f"book/{page}\n" in toc


def test_every_module_imports_without_side_effects(tmp_path):
    """autodoc imports every module: importing must print nothing, write no
    file, start no download and leave torch's and matplotlib's global state
    as it was."""
    names = _extension().public_modules("dvae_tutorial")
    script = f"""
import importlib, json, matplotlib, torch
before = (torch.get_default_dtype(), torch.get_num_threads(),
          torch.is_grad_enabled(), matplotlib.get_backend(),
          json.dumps(dict(matplotlib.rcParams), default=str, sort_keys=True))
for name in {names!r}:
    importlib.import_module(name)
after = (torch.get_default_dtype(), torch.get_num_threads(),
         torch.is_grad_enabled(), matplotlib.get_backend(),
         json.dumps(dict(matplotlib.rcParams), default=str, sort_keys=True))
assert before == after, [(a, b) for a, b in zip(before, after) if a != b]
"""
    home = tmp_path / "home"
    home.mkdir()
    env = {**os.environ, "HOME": str(home), "DVAE_OFFLINE": "1",
           "XDG_CACHE_HOME": str(home / ".cache"), "MPLBACKEND": "Agg",
           "MPLCONFIGDIR": str(tmp_path / "mpl")}
    env.pop("DVAE_CACHE", None)
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout == "" and done.stderr == "", (done.stdout, done.stderr[-2000:])
    written = [p for p in tmp_path.rglob("*") if p.is_file()
               and not p.is_relative_to(tmp_path / "mpl")]
    assert written == [], written


# --- the commands that would reproduce the shipped models -------------------------


@pytest.fixture(scope="module")
def plan():
    from dvae_tutorial import recipes

    return recipes.reproduction_plan()


def test_the_plan_has_every_shipped_model_and_parents_first(plan):
    from dvae_tutorial import codec
    from dvae_tutorial.checkpoints import PACKAGE_WEIGHTS

    files = sorted(PACKAGE_WEIGHTS.glob("*.pt")) + sorted(PACKAGE_WEIGHTS.glob("*/*.pt"))
    exports = [r.argv[r.argv.index("--export") + 1] for r in plan if "--export" in r.argv]
    assert sorted(Path(e).name for e in exports) == sorted(f.name for f in files)
    shipped = {i.name for i in codec.shipped_models()}
    assert shipped <= {m for r in plan for m in r.models}
    outs = {r.index: r.out for r in plan}
    for run in plan:
        assert len(set(run.argv)) > 5 and run.argv[:2] in (["dvae", "train"],
                                                           ["torchrun", "--nproc_per_node"])
        if run.parent is not None:
            assert run.parent < run.index
            assert run.argv[run.argv.index("--init") + 1] == outs[run.parent]
    assert len(outs) == len(set(outs.values()))  # each run once, own file


def test_the_commands_parse_and_say_what_the_recipes_say(plan):
    """Every command is accepted by the real parser, and its options are the
    recorded values."""
    parser = cli.build_parser()
    for run in plan:
        args = parser.parse_args(run.argv[1:])
        assert args.preset == run.preset
        assert (args.lmbda, args.steps, args.batch, args.patch) == (
            run.lmbda, run.steps, run.batch_size, run.patch_size)
        assert args.amp == ("bf16" if run.precision == "bf16-autocast" else "off")
        assert args.freeze_transforms == (run.preset in ("hier3", "hier12"))
        # a run recorded as stopped early stops there, its lr over the planned length
        assert args.stop_at == (run.step if run.step < run.steps else None)
    by_name = {r.saved_as: r for r in plan}
    # single-845's last run: the wide preset, its recorded lr and seed
    last = [r for r in plan if "single-845" in r.models][-1]
    args = parser.parse_args(last.argv[1:])
    assert (args.preset, args.lr, args.seed) == ("factorized-wide", 1e-4, 7)
    # the narrow run it was widened from is the narrow file kept in the package
    assert by_name["single-845-narrow.pt"].preset == "factorized"


def test_architecture_is_derived_across_an_exact_init(tmp_path):
    """A parent run with no file of its own takes the architecture of the run
    it was copied into exactly; a widened parent gets the narrower preset."""
    import dataclasses

    from conftest import tiny_model

    from dvae_tutorial.checkpoints import save_checkpoint
    from dvae_tutorial.configs import FACTORIZED_WIDE
    from dvae_tutorial.recipes import reproduction_plan

    def recipe(lmbda, steps, secs, commit, parent=None):
        return {"lmbda": lmbda, "steps": steps, "batch_size": 4, "patch_size": 64,
                "device": "cpu test", "wall_time_s": secs, "git_commit": commit,
                "parent": parent}

    root = {"file": "a.pt", "step": 10, "widened": [], **recipe(845.0, 10, 5.0, "a")}
    mid = {"file": "b.pt", "step": 20, "widened": ["g_a.0.weight"],
           **recipe(845.0, 20, 6.0, "b", root)}
    ckpt = {"version": 1, "family": "single", "config_type": "ModelConfig",
            "model_config": dataclasses.asdict(FACTORIZED_WIDE.model),
            "train_config": dataclasses.asdict(FACTORIZED_WIDE.train), "step": 30,
            "recipe": {**recipe(845.0, 30, 7.0, "c", mid), "precision": "fp32"},
            "ema": tiny_model().state_dict()}
    path = save_checkpoint(tmp_path / "c.pt", ckpt)
    [a, b, c] = reproduction_plan([path], out_dir="out")
    assert (a.preset, b.preset, c.preset) == ("factorized", "factorized",
                                              "factorized-wide")
    assert c.argv[c.argv.index("--init") + 1] == "out/02-b.pt"
    assert any("narrower preset" in n for n in b.notes)
    assert any("not recorded" in n for n in a.notes)
    assert "--export" in c.argv and a.pixels == 10 * 4 * 64 ** 2
