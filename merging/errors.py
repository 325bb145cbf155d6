"""Exceptions with messages meant for people: the CLI prints ``str(err)`` as its one line,
the app shows it in an error box."""

from __future__ import annotations


class IsoscopeError(Exception):
    """Base class: something the user can fix (bad input, bad parameter, missing file)."""


class CheckpointError(IsoscopeError):
    """A checkpoint file or folder cannot be read, or is not what it claims to be."""


class UntrustedPickleError(CheckpointError):
    """Loading this file would execute code from it; the user has not said they trust it."""


class MismatchError(IsoscopeError):
    """Checkpoints that should share keys, shapes and dtypes do not."""


class NonFiniteError(IsoscopeError):
    """A tensor holds NaN or Inf values."""


class MethodError(IsoscopeError):
    """Unknown method or a parameter outside its schema."""


class PathNotAllowedError(IsoscopeError):
    """Served mode: the path lies outside the folders this server may read (merging.paths)."""


def printable(text: object, limit: int = 60) -> str:
    """Text from a file or a user made safe for a one-line message: unprintable characters become
    '?', and it is cut at ``limit`` characters."""
    s = "".join(c if c.isprintable() else "?" for c in str(text))
    return s if len(s) <= limit else s[:limit] + "…"


TRUST_PICKLE_HELP = ("allow loading pickles the code-free reader cannot interpret "
                     "(loading them runs code stored in the files)")
