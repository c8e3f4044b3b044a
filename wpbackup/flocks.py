"""Process locks as flocks on a file: taken without waiting, dying with their process (a
killed run never leaves a stale lock), the holder's pid written inside so that whoever is
turned away can be told who holds it. The backup lock and the report's once-a-day lock
both use this, so it sits beside the rooms."""

from __future__ import annotations

import fcntl
import os
from datetime import datetime, timezone
from pathlib import Path


class Held(Exception):
    """Another process holds the lock; ``holder`` says which ("pid 123, since ...")."""

    def __init__(self, holder: str):
        super().__init__(holder)
        self.holder = holder


def take(path: Path) -> int:
    """Lock ``path`` (created 0600) and return the descriptor that holds the lock; closing
    it releases the lock. Raises Held when another process (or descriptor) has it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        raise Held(holder) from None
    os.ftruncate(fd, 0)
    since = datetime.now(timezone.utc).isoformat(timespec="seconds")
    os.pwrite(fd, f"pid {os.getpid()}, started {since}\n".encode(), 0)
    return fd
