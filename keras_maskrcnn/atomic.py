"""Atomic file writes and a directory lock: every file the package writes appears complete or
not at all.

A file is written to a temporary name in its own folder (same filesystem), flushed to disk and
renamed over the final name (`os.replace`, atomic on POSIX): a reader, or a process killed at
any instant, sees either the previous complete file or the new one, never a truncated one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".tmp-"


def temporary_sibling(path: str | Path, suffix: str = "") -> Path:
    """A hidden temporary name beside `path`, unique to this process: `.NAME.tmp-PID<suffix>`."""
    path = Path(path)
    return path.with_name(f".{path.name}{TMP_MARK}{os.getpid()}{suffix}")


def fsync_path(path: str | Path) -> None:
    """Flushes a file (or a folder's entries) to disk."""
    flags = os.O_RDONLY | (os.O_DIRECTORY if Path(path).is_dir() else 0)
    fd = os.open(path, flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yields a temporary path beside `path`; on success it is synced and renamed to `path`, on
    error it is removed and `path` is left as it was. `suffix` ends the temporary name (e.g.
    ".weights.h5", which Keras requires of weight files)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, suffix)
    try:
        yield tmp
        if tmp.is_dir():
            for child in tmp.rglob("*"):
                if child.is_file():
                    fsync_path(child)
        else:
            fsync_path(tmp)
        replace(tmp, path)
    except BaseException:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            tmp.unlink(missing_ok=True)
        raise


def require_file_target(path: str | Path, what: str) -> None:
    """ValueError if `path`, where one file (`what`: its name or flag) is written, is a folder."""
    if Path(path).is_dir():
        raise ValueError(f"{what} {path} is a folder, not a file: give a file path")


def require_replaceable_folder(path: str | Path, marker: str, what: str) -> None:
    """ValueError unless the folder `what` may be written at `path`: nothing there, an empty
    folder, or an earlier `what` (a folder holding `marker`), which it then replaces. Never a
    file, nor a folder of other files (replacing it would delete them)."""
    path = Path(path)
    if not path.exists():
        return
    if not path.is_dir():
        raise ValueError(f"{path} is a file: a {what} is a folder; give a folder path")
    if any(path.iterdir()) and not (path / marker).exists():
        raise ValueError(f"{path} is a folder of other files, not a {what}: writing there "
                         "would replace them; give a new or empty folder")


def replace(tmp: Path, path: Path) -> None:
    """Renames `tmp` over `path` (a folder over a folder via an aside name) and syncs the folder."""
    if tmp.is_dir() and path.exists():
        aside = temporary_sibling(path, ".old")
        os.replace(path, aside)
        os.replace(tmp, path)
        shutil.rmtree(aside, ignore_errors=True)
    else:
        os.replace(tmp, path)
    fsync_path(path.parent)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Writes `text` to `path` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def strict_json(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, so that `json.dumps(...,
    allow_nan=False)` succeeds (strict JSON has no NaN / Infinity)."""
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [strict_json(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def atomic_write_json(path: str | Path, value: Any, indent: int | None = 2) -> Path:
    """Writes `value` as strict JSON (non-finite floats as null) to `path` atomically."""
    text = json.dumps(strict_json(value), indent=indent, allow_nan=False)
    return atomic_write_text(path, text + "\n")


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Deletes temporaries left in `folder` by writers that were killed; returns them."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    stale = [p for p in folder.iterdir() if p.name.startswith(".") and TMP_MARK in p.name]
    for p in stale:
        if p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
    return stale


class DirectoryLock:
    """An exclusive advisory lock on a folder (`flock` on `FOLDER/.lock`), released when the
    holder exits or is killed; a second holder fails at once with a clear message."""

    def __init__(self, folder: str | Path, purpose: str = "training") -> None:
        self.folder = Path(folder)
        self.purpose = purpose
        self._fd: int | None = None

    def acquire(self) -> DirectoryLock:
        self.folder.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.folder / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RuntimeError(
                f"{self.folder} is in use by {holder} ({self.purpose}); wait for it to finish, "
                "or choose another `output_dir`") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()}".encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
