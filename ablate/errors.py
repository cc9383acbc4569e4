"""The one exception users see: a one-line message, printed by the CLI with exit code 2."""
from __future__ import annotations


class AblateError(ValueError):
    """Bad input: the message names the file or flag, the key, and what is allowed."""


def one_line(e: BaseException, limit: int | None = None) -> str:
    """An exception's text on one line (drivers and libraries print several), cut at `limit` characters."""
    return " ".join(str(e).split())[:limit]


def describe(e: BaseException) -> str:
    """'Type: text' on one line: a failed trial's reason, an import that went wrong."""
    text = one_line(e)
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
