"""The one exception users see: a one-line message, printed by the CLI with exit code 2.

Where an error happened is added by the callers, not threaded through signatures: a function raises
`AblateError("... is out of range", key="reduction")` (the key relative to what it was given); a caller
that knows the section wraps the call in `with at("model.attention.knobs"):` (the key becomes
`model.attention.knobs.reduction`), and the one that knows the file in `with within("trial.yaml"):`
(-> `trial.yaml: model.attention.knobs.reduction: ... is out of range`).
"""
from __future__ import annotations

import errno
import os
import stat
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


# what the system's terse words mean here ('File name too long': of a name, or of the whole path?)
_OS_HINTS = {errno.ENAMETOOLONG: "at most 255 bytes a name, 4096 a path", errno.ELOOP: "a loop of symbolic links",
             errno.ENOTDIR: "a part of the path is a file, not a folder"}


def os_reason(e: OSError) -> str:
    """An OSError on a path as a few words: 'File name too long (at most 255 bytes a name, 4096 a path)'."""
    hint = _OS_HINTS.get(e.errno)
    return f"{e.strerror or type(e).__name__}{f' ({hint})' if hint else ''}"


def shown(path: str | Path) -> str:
    """A path as an error line quotes it: a 5000-character path is its two ends."""
    text = str(path)
    return text if len(text) <= 160 else f"{text[:60]}...{text[-60:]} ({len(text)} characters)"


def path_kind(path: str | Path) -> str | None:
    """'file', 'folder' or 'other' (a FIFO, a device, a socket) at `path`, None where nothing is; a path the system
    cannot look up (a name too long, a loop of links, no rights) is an AblateError saying why."""
    try:
        mode = os.stat(path).st_mode
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        raise AblateError(f"{shown(path)}: {os_reason(e)}") from None
    return "file" if stat.S_ISREG(mode) else "folder" if stat.S_ISDIR(mode) else "other"


def missing_reason(path: str | Path) -> str:
    """Why nothing is at `path`: 'no such file', or which of its folders is a file."""
    for parent in Path(path).parents:
        with suppress(OSError):
            if parent.exists() and not parent.is_dir():
                return f"no such file ({shown(parent)} is a file, not a folder)"
    return "no such file"


def check_output(path: str | Path, flag: str, folder: bool = False) -> Path:
    """An output the user named (`--out FILE`, `--plots FOLDER`): refuse a folder for a file and a file for a
    folder, before any work; missing parent folders are created when it is written."""
    path = Path(path)
    try:
        kind = path_kind(path)
    except AblateError as e:  # a name too long for the file system, a loop of links
        raise AblateError(f"{flag}: cannot write {e}") from None
    if not folder and kind == "folder":
        raise AblateError(f"{flag}: {shown(path)} is a folder; give a file name")
    if folder and kind not in (None, "folder"):
        raise AblateError(f"{flag}: {shown(path)} is a file; give a folder for the plots")
    missing = missing_reason(path) if kind is None else ""
    if missing.startswith("no such file ("):  # a/b.md where a is a file: no folder can be made for it
        raise AblateError(f"{flag}: cannot write {shown(path)}: {missing.removeprefix('no such file (')[:-1]}")
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
        raise AblateError(f"{flag}: cannot write {shown(path)} ({type(e).__name__}: {e.strerror or e})") from None


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
