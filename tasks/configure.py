"""`configure`: the wizard that writes `.env` and `sites.json` (wpbackup/ops/configure.py).

    doit configure                    questions at the terminal (output not captured)
    doit configure --discover         add the sites found since, report vanished ones; no questions
    doit configure --from FILE.json   a scripted install: the same validation and checks, non-zero
                                      exit naming the failed checks, nothing written then

It loads even when `.env` or `sites.json` does not (tasks/context.py loads leniently for
this command): it is how a broken install gets fixed. Never part of what a timer runs.
"""

from __future__ import annotations

import os
import signal
import sys
import termios
from pathlib import Path

from doit.exceptions import TaskFailed

from wpbackup.errors import BackupError

from .context import CONTEXT, configuring


def _stop_quietly_on_ctrl_c() -> None:
    """Ctrl-C ends the wizard with one line and the terminal as it was (echo back on, should
    it come during a secret). doit runs the action in a worker thread, and the interrupt
    reaches only the main thread, which would show doit's traceback and leave the terminal
    without echo. While files are written it waits for them to be complete (or removed)."""
    from wpbackup.ops import configure  # the wizard and what it imports: for `doit configure` only

    saved = termios.tcgetattr(sys.stdin.fileno()) if sys.stdin.isatty() else None

    def stop(signum, frame):  # pragma: no cover - exercised through a pseudo-terminal
        if configure.WRITING.is_set():  # files are being written: let them land (or go), then stop
            configure.STOP.set()
            return
        if saved is not None:
            termios.tcsetattr(sys.stdin.fileno(), termios.TCSADRAIN, saved)
        os.write(sys.stderr.fileno(), b"\nstopped: nothing was written\n")
        os._exit(130)

    signal.signal(signal.SIGINT, stop)


def configure_action(discover: bool, answers: str):
    """Run the wizard, the refresh or the answers file; a clear line when it fails."""
    from wpbackup.ops import configure

    settings = CONTEXT.settings
    try:
        if discover and answers:
            raise BackupError("--discover and --from exclude each other")
        if discover:
            configure.refresh_sites(settings)
            return True
        if answers:
            lines = configure.from_answers(settings, Path(answers))
        elif not configure.interactive():
            raise BackupError("doit configure asks questions: run it in a terminal, or give the answers with "
                              "--from answers.json (docs/configure.md), or use --discover")
        else:
            lines = configure.wizard(settings)
    except configure.Abort:
        return TaskFailed("stopped: nothing was written")
    except BackupError as exc:
        return TaskFailed(f"configure: {exc}")
    print("\n".join(lines))
    print("next: doit backup")
    return True


def task_configure():
    """Write .env and sites.json by answering questions (--discover: add new sites; --from FILE)."""
    if configuring(sys.argv):  # task creators run in the main thread, where signals are handled
        _stop_quietly_on_ctrl_c()
    return {
        "actions": [configure_action],
        "params": [
            {"name": "discover", "long": "discover", "type": bool, "default": False,
             "help": "add the WordPress sites found since (enabled) and report vanished ones; no questions"},
            {"name": "answers", "long": "from", "type": str, "default": "",
             "help": "a JSON answers file for a scripted install (docs/configure.md); nothing is written "
                     "unless every check passes"},
        ],
        "uptodate": [False],
        "verbosity": 2,  # no output capture: a person reads the questions and types the answers
    }
