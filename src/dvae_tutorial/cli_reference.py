"""The ``dvae`` command's reference, written from its parser.

Backs the appendix *The dvae command* (``book/appendix_cli_reference.ipynb``):
the page renders :func:`sections` — one Markdown section per command and
subcommand, with its usage line, its options and its epilog — from
:func:`dvae_tutorial.cli.build_parser` itself, so the reference cannot drift
from the command: a new option, subcommand or help text appears there the next
time the page is executed, and ``tests/test_appendices.py`` fails while the
committed page differs from the parser. Plain Markdown (tables and code
blocks, no MyST directives): it reads the same in Colab and in the HTML.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass

#: Width of the usage lines and epilogs (the book's code width).
WIDTH = 88


@dataclass(frozen=True)
class Command:
    """One command of the ``dvae`` tree: ``dvae``, ``dvae data``, ``dvae data kodak``…

    Attributes:
        prog: the command as typed (``"dvae data kodak"``).
        parser: its :class:`argparse.ArgumentParser`.
        summary: the one-line help its parent lists ("" for ``dvae`` itself).
        depth: 0 for ``dvae``, 1 for its subcommands, 2 for theirs.
    """

    prog: str
    parser: argparse.ArgumentParser
    summary: str
    depth: int


def commands(parser: argparse.ArgumentParser | None = None) -> list[Command]:
    """Every command of ``parser`` (default: the ``dvae`` parser), depth first in
    the order the subcommands were added (the order ``--help`` lists them)."""
    if parser is None:
        from .cli import build_parser

        parser = build_parser()
    found: list[Command] = []

    def walk(p: argparse.ArgumentParser, summary: str, depth: int) -> None:
        found.append(Command(p.prog, p, summary, depth))
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                helps = {a.dest: a.help or "" for a in action._choices_actions}
                for name, child in action.choices.items():
                    walk(child, helps.get(name, ""), depth + 1)

    walk(parser, "", 0)
    return found


def _prose(text: str) -> str:
    """Help text as one Markdown paragraph that renders alike in Colab and in the
    HTML: ``<stem>`` is not taken for an HTML tag, ``$DVAE_DATA`` not for the
    start of a formula (it becomes code), ``*`` not for emphasis."""
    parts = " ".join(str(text).split()).split("`")
    for i in range(0, len(parts), 2):  # outside `code spans`
        part = parts[i].replace("<", "&lt;").replace(">", "&gt;").replace("*", "\\*")
        part = re.sub(r"\$(?![A-Z_]+\b)", r"\\$", part)
        parts[i] = re.sub(r"\$([A-Z_]+)\b", r"`$\1`", part)
    return "`".join(parts)


def _cell(text: str) -> str:
    """Text safe in one Markdown table cell."""
    return _prose(text).replace("|", "\\|")


def _help(action: argparse.Action, prog: str) -> str:
    """An action's help with argparse's ``%(default)s``-style fields filled in."""
    text = action.help or ""
    if "%" in text:
        params = {**vars(action), "prog": prog}
        params = {k: (v.__name__ if hasattr(v, "__name__") else v)
                  for k, v in params.items()}
        text = text % params
    return text


def _value(action: argparse.Action, prog: str) -> str:
    """The value an option takes, as ``--help`` writes it (``{a,b}``, ``N``,
    ``START END``); empty for flags."""
    if action.nargs == 0:
        return ""
    formatter = argparse.HelpFormatter(prog, width=WIDTH)
    default = action.dest.upper() if action.option_strings else action.dest
    return formatter._format_args(action, default)


def _default(action: argparse.Action) -> str:
    if action.required and action.nargs not in ("*", "?"):
        return "required"  # (argparse marks a positional of nargs "*" required)
    if action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
        return ""
    if isinstance(action.default, list) and not action.default:
        return ""
    return f"`{action.default}`"


def _usage(parser: argparse.ArgumentParser) -> str:
    formatter = argparse.HelpFormatter(parser.prog, width=WIDTH)
    formatter.add_usage(parser.usage, parser._actions,
                        parser._mutually_exclusive_groups)
    return formatter.format_help().strip()


def section(command: Command) -> str:
    """The Markdown of one command: heading, summary, description, usage,
    subcommands, options (``-h``/``--help`` left out: every command has it)
    and epilog."""
    p = command.parser
    out = [f"{'#' * (command.depth + 2)} `{command.prog}`", ""]
    if command.summary:
        out += [f"*{_cell(command.summary)}.*", ""]
    if p.description:
        out += [_prose(p.description), ""]
    out += ["```text", _usage(p), "```", ""]
    rows, subcommands = [], []
    for action in p._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            subcommands += [f"| `{p.prog} {name}` | {_cell(helps.get(name, ''))} |"
                            for name in action.choices]
            continue
        names = ", ".join(f"`{s}`" for s in action.option_strings) or (
            f"`{action.metavar or action.dest}` (positional)")
        value = _value(action, p.prog)
        rows.append(f"| {names} | {f'`{value}`' if value else ''} | "
                    f"{_default(action)} | {_cell(_help(action, p.prog))} |")
    if subcommands:
        out += ["| subcommand | what it does |", "|---|---|", *subcommands, ""]
    if rows:
        out += ["| option | value | default | what it does |", "|---|---|---|---|",
                *rows, ""]
    if p.epilog:
        out += ["```text", p.epilog.strip("\n"), "```", ""]
    return "\n".join(out).rstrip() + "\n"


def sections(parser: argparse.ArgumentParser | None = None) -> list[str]:
    """One Markdown section per command (:func:`section`), in :func:`commands` order."""
    return [section(c) for c in commands(parser)]


def reference_markdown(parser: argparse.ArgumentParser | None = None) -> str:
    """The whole reference as one Markdown string (the appendix shows
    :func:`sections` one by one; this is their concatenation)."""
    return "\n".join(sections(parser))
