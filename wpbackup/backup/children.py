"""Child processes in flight, so a SIGTERM can stop them before doit saves its state.

Children run in their own process group (``spawn``), so stopping one also stops anything
it started, and none outlives the run.
"""

from __future__ import annotations

import atexit
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager

_lock = threading.Lock()
_running: set[subprocess.Popen] = set()
#: Set when the process is asked to stop: long loops (upload parts) check it and give up.
stopping = threading.Event()


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
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()


def spawn(argv: list[str], **kwargs) -> subprocess.Popen:
    """Popen in a process group of its own (see terminate_all)."""
    return subprocess.Popen(argv, start_new_session=True, **kwargs)  # its own group (3.10 lacks process_group=)


def terminate_all() -> None:
    """Stop every tracked child and its process group (SIGTERM handler, exit)."""
    stopping.set()
    with _lock:
        procs = list(_running)
    for proc in procs:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass


atexit.register(terminate_all)
