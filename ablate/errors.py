"""The one exception users see: a one-line message, printed by the CLI with exit code 2.

Where an error happened is added by the callers, not threaded through signatures: a function raises
`AblateError("... is out of range", key="reduction")` (the key relative to what it was given); a caller
that knows the section wraps the call in `with at("model.attention.knobs"):` (the key becomes
`model.attention.knobs.reduction`), and the one that knows the file in `with within("trial.yaml"):`
(-> `trial.yaml: model.attention.knobs.reduction: ... is out of range`).
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator


class AblateError(ValueError):
    """Bad input: the message names the file or flag, the key, and what is allowed.

    `key` is the dotted location of the bad value relative to the raiser's input; `at()` prefixes it."""

    def __init__(self, message: str, key: str | None = None):
        self.message, self.key = message, key
        super().__init__(f"{key}: {message}" if key else message)


@contextmanager
def at(section: str) -> Iterator[None]:
    """AblateErrors raised inside are located under the dotted `section`: a keyed error's key is joined to
    it with a dot, an unkeyed error gets `section` as its key."""
    try:
        yield
    except AblateError as e:
        raise AblateError(e.message, key=f"{section}.{e.key}" if e.key else section) from None


@contextmanager
def within(source: str) -> Iterator[None]:
    """AblateErrors raised inside name `source` first (a file, a flag, 'file: base'): 'source: key: message'."""
    try:
        yield
    except AblateError as e:
        raise AblateError(f"{source}: {e}") from None


class Preempted(KeyboardInterrupt):
    """SIGTERM or SIGUSR1 stopped the trial (interrupt.py): its text is the reason, 'preempted (SIGTERM)'."""

    def __init__(self, reason: str = "preempted", signum: int | None = None):
        super().__init__(reason)
        self.signum = signum  # a launched task asks its scheduler for a requeue on Slurm's warning signal


def one_line(e: BaseException, limit: int | None = None) -> str:
    """An exception's text on one line (drivers and libraries print several), cut at `limit` characters."""
    return " ".join(str(e).split())[:limit]


def describe(e: BaseException) -> str:
    """'Type: text' on one line: a failed trial's reason, an import that went wrong."""
    text = one_line(e)
    if isinstance(e, Preempted):
        return text  # 'preempted (SIGUSR1)' says it all
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
