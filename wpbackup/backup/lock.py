"""One mutating run at a time per install: an flock held for the whole process.

A second `doit backup` fails at once with a message naming the running one; the lock dies
with its process, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import fcntl
import os
from datetime import datetime, timezone
from pathlib import Path

from wpbackup.errors import BackupError

_held: dict[str, int] = {}


def acquire(path: Path) -> None:
    """Take the lock or raise BackupError saying who holds it."""
    if str(path) in _held:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise BackupError(f"a backup run is already in progress ({holder}); not starting another") from None
    os.ftruncate(fd, 0)
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    os.pwrite(fd, f"pid {os.getpid()}, started {started}\n".encode(), 0)
    _held[str(path)] = fd


def release(path: Path) -> None:
    """Give the lock back before the process ends (`doit report` holds it only for its sync,
    so that a backup starting meanwhile is not turned away while the mail goes out)."""
    fd = _held.pop(str(path), None)
    if fd is not None:
        os.close(fd)
