"""One mutating run at a time per install: an flock held for the whole process.

A second `doit backup` fails at once with a message naming the running one; the lock dies
with its process, so a killed run never leaves a stale lock behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from wpbackup import flocks
from wpbackup.errors import BackupError

_held: dict[str, int] = {}


def acquire(path: Path) -> None:
    """Take the lock or raise BackupError saying who holds it."""
    if str(path) in _held:
        return
    try:
        _held[str(path)] = flocks.take(path)
    except flocks.Held as busy:
        raise BackupError(f"a backup run is already in progress ({busy.holder}); not starting another") from None


def release(path: Path) -> None:
    """Give the lock back before the process ends (`doit report` holds it only for its sync,
    so that a backup starting meanwhile is not turned away while the mail goes out)."""
    fd = _held.pop(str(path), None)
    if fd is not None:
        os.close(fd)
