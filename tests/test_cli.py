"""The ``dvae`` console script: help, version, and error behaviour."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from dvae_tutorial import __version__
from dvae_tutorial.cli import main


def test_console_script_help_lists_subcommands():
    exe = shutil.which("dvae")
    cmd = [exe] if exe else [sys.executable, "-m", "dvae_tutorial.cli"]
    out = subprocess.run([*cmd, "--help"], capture_output=True, text=True, check=True)
    assert "usage: dvae" in out.stdout
    assert "data" in out.stdout


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert __version__ in capsys.readouterr().out


def test_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["no-such-command"])
    assert exc.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


@pytest.mark.parametrize("args", [["--help"], ["models"]])
def test_closed_stdout_ends_quietly(args):
    """``dvae … | head -1``: once the reader has gone, no traceback and no
    "Exception ignored" on stderr; a command's status is then 141 (128 +
    SIGPIPE, as other tools'). (argparse's help ignores the error itself.)"""
    child = subprocess.Popen([sys.executable, "-m", "dvae_tutorial.cli", *args],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # before the child has written anything
    _, err = child.communicate(timeout=300)
    assert err.decode() == ""
    assert child.returncode == (0 if args == ["--help"] else 141)
