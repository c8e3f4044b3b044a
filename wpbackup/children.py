"""Child processes in flight, so a SIGTERM can stop them before doit saves its state."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_running: set[subprocess.Popen] = set()


@contextmanager
def tracked(proc: subprocess.Popen) -> Iterator[subprocess.Popen]:
    """Register ``proc`` while the block runs; kill it if the block is left early."""
    with _lock:
        _running.add(proc)
    try:
        yield proc
    finally:
        with _lock:
            _running.discard(proc)
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def terminate_all() -> None:
    """Ask every tracked child to stop (called from the SIGTERM handler)."""
    with _lock:
        procs = list(_running)
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
