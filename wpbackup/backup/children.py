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
from pathlib import Path

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


def pid_gone(pid: str) -> bool:
    """No process of that PID runs (and it is not this one): what it named after itself in a
    shared folder is a leftover. Another user's process counts as running."""
    if not (pid.isascii() and pid.isdigit()) or int(pid) == os.getpid():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except (OSError, OverflowError):  # another user's, or no PID at all
        return False
    return False


def left_by_the_dead(folder: Path, pattern: str) -> list[Path]:
    """Files in ``folder`` matching ``pattern`` (``PREFIX-*``, named PREFIX-PID-... or
    PREFIX-PID.EXT) whose PID no longer runs, and those from before names carried a PID: what
    killed processes left there."""
    found = []
    for path in folder.glob(pattern):
        pid = path.name.split("-", 2)[1].split(".", 1)[0]
        if not (pid.isascii() and pid.isdigit()) or pid_gone(pid):
            found.append(path)
    return found
