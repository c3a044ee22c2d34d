"""The package's exceptions.

Every error a reader can trigger with bad input (a missing dataset offline, a
wrong checksum, a corrupt bitstream, an odd image) is one of these, raised
with a message that says what is wrong and what to do. The ``dvae`` command
prints that message on one line (:func:`one_line`) and exits with status 2.
"""

from __future__ import annotations


class DVAEError(Exception):
    """Base class of every error the package raises on purpose."""


class DataError(DVAEError):
    """A dataset is missing, unreadable or cannot be downloaded."""


class ChecksumError(DataError):
    """A file's (or its decoded pixels') sha256 differs from the manifest."""


class CodingError(DVAEError):
    """A bitstream is empty, truncated, corrupt or was written by something else."""


def one_line(err: BaseException) -> str:
    """An error's message on one line: a newline (in a file name, say) becomes
    a space, so a message is always one line of stderr."""
    return " ".join(str(err).splitlines())
