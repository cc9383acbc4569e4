"""The one exception users see: a one-line message, printed by the CLI with exit code 2.

Where an error happened is added by the callers, not threaded through signatures: a function raises
`AblateError("... is out of range", key="reduction")` (the key relative to what it was given); a caller
that knows the section wraps the call in `with at("model.attention.knobs"):` (the key becomes
`model.attention.knobs.reduction`), and the one that knows the file in `with within("trial.yaml"):`
(-> `trial.yaml: model.attention.knobs.reduction: ... is out of range`).
"""
from __future__ import annotations

from contextlib import contextmanager, suppress
from pathlib import Path
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


def check_output(path: str | Path, flag: str, folder: bool = False) -> Path:
    """An output the user named (`--out FILE`, `--plots FOLDER`): refuse a folder for a file and a file for a
    folder, before any work; missing parent folders are created when it is written."""
    path = Path(path)
    try:
        is_dir, exists = path.is_dir(), path.exists()
    except OSError as e:  # a name too long for the file system
        raise AblateError(f"{flag}: cannot write {path} ({type(e).__name__}: {e.strerror or e})") from None
    if not folder and is_dir:
        raise AblateError(f"{flag}: {path} is a folder; give a file name")
    if folder and exists and not is_dir:
        raise AblateError(f"{flag}: {path} is a file; give a folder for the plots")
    return path


@contextmanager
def writing(path: str | Path, flag: str) -> Iterator[None]:
    """An OSError while writing `path` (a full disk, a name too long for the file system, no rights) as one
    line naming the flag; a partly written regular file is removed, so no half report is left behind."""
    try:
        yield
    except OSError as e:
        with suppress(OSError):
            if Path(path).is_file():
                Path(path).unlink()
        raise AblateError(f"{flag}: cannot write {path} ({type(e).__name__}: {e.strerror or e})") from None


def write_output(path: str | Path, data: str | bytes, flag: str) -> None:
    """Write a report, a figure's bytes ... to `path` (parent folders created) with writing()'s one-line errors.

    Whole bytes in one write: a full disk shows at close, where a library writing piecemeal may not notice it."""
    path = Path(path)
    with writing(path, flag):
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)


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
