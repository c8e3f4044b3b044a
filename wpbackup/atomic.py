"""Small files written whole or not at all: a temporary name, fsync, then rename. Every room
uses it (receipts, run state, sidecars), so it sits beside console and errors."""

from __future__ import annotations

import os
from pathlib import Path

from wpbackup.errors import disk_error


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write a small file under a temporary name and rename it into place."""
    partial = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        os.fchmod(fd, mode)  # a leftover temporary file keeps its own mode through O_CREAT
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(partial, path)
    except OSError as exc:
        if partial.exists():
            partial.unlink()
        raise disk_error(path, exc) from None
