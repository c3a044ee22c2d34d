"""The ``dvae`` command.

``dvae --help`` lists the subcommands. Each subcommand is a thin layer over a
package function; errors the package raises on purpose (:class:`DVAEError`)
become one line on stderr and exit status 2, never a traceback. A closed
standard output (``dvae … | head -1``) ends the command quietly with status
141, as SIGPIPE ends other Unix tools.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from . import __version__
from .errors import DVAEError, one_line

#: Exit status when standard output is closed: 128 + SIGPIPE.
BROKEN_PIPE_STATUS = 141
#: Exit status after Ctrl-C: 128 + SIGINT, as shells report it.
INTERRUPTED_STATUS = 130


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dvae",
        description=(
            "Discretized VAEs for lossy image compression: datasets, training, "
            "and a codec that writes real files."
        ),
    )
    parser.add_argument("--version", action="version", version=f"dvae {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    _add_data_parser(sub)
    _add_train_parser(sub)
    _add_codec_parsers(sub)
    _add_kit_parsers(sub)
    return parser


def _add_data_parser(sub) -> None:
    from . import data_cli

    data_cli.add_data_parser(sub)


def _add_train_parser(sub) -> None:
    from . import train_cli

    train_cli.add_train_parser(sub)


def _add_codec_parsers(sub) -> None:
    from . import codec_cli

    codec_cli.add_codec_parsers(sub)


def _add_kit_parsers(sub) -> None:
    from . import kit_cli

    kit_cli.add_kit_parsers(sub)


def main(argv: Sequence[str] | None = None) -> int:
    try:
        try:
            return _run(argv)
        finally:
            sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
    except BrokenPipeError:
        _silence_stdout()
        return BROKEN_PIPE_STATUS


def _run(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # the words as given: `dvae train` records them in the recipe
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(args.func(args) or 0)
    except DVAEError as err:
        print(f"dvae {args.command}: error: {one_line(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dvae: interrupted", file=sys.stderr)
        return INTERRUPTED_STATUS


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so that Python's final flush of what is
    still buffered does not report the closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (pytest)
        pass


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
