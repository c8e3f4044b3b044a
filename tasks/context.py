"""What every task module shares, computed once when doit loads dodo.py:

    .env + environment -> Settings;  sites.json -> Sites;  run state -> one Run per site
    + the lock (backup and sync only) and a SIGTERM handler that lets doit save its state.

A configuration error stops here, before any task exists, with one line per problem.
"""

from __future__ import annotations

import re
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone

from wpbackup import catalog, children, lock, runs, steps
from wpbackup.console import log, setup_logging
from wpbackup.errors import BackupError, ConfigError
from wpbackup.runs import Run
from wpbackup.settings import Settings, load_settings
from wpbackup.sites import Site, load_sites

DOIT_COMMANDS = {"list", "info", "forget", "clean", "ignore", "help", "strace", "dumpdb",
                 "reset-dep", "tabcompletion", "auto"}
MUTATING = re.compile(r"^(backup|dump|tar|compress|upload|catalog|sync|restore|prune)(:|$)")


def doit_command(argv: list[str]) -> str:
    """The doit command of this invocation ('run' when only task names are given)."""
    words = [arg for arg in argv[1:] if not arg.startswith("-")]
    return words[0] if words and words[0] in DOIT_COMMANDS else "run"


def wants_lock(argv: list[str]) -> bool:
    """True when this doit invocation runs backup or sync tasks (which must not overlap)."""
    words = [arg for arg in argv[1:] if not arg.startswith("-")]
    return doit_command(argv) == "run" and any(MUTATING.match(word) for word in words)


@dataclass
class Context:
    settings: Settings
    sites: list[Site]
    runs: dict[str, Run]
    mutating: bool
    readonly_run: bool  # `doit status` and the like: their own doit state file

    @property
    def enabled(self) -> list[Site]:
        return [site for site in self.sites if site.enabled]

    def site(self, name: str) -> Site:
        return next(site for site in self.sites if site.name == name)


def _on_sigterm(signum, frame):  # pragma: no cover - exercised through a subprocess
    """Stop children, then unwind through doit's `finally` so it saves what finished."""
    log.error("terminated by signal %d: stopping; the next run resumes where this one stopped", signum)
    children.terminate_all()
    raise SystemExit(128 + signum)


def fail(problems: list[str], settings: Settings | None, mutating: bool) -> None:
    print("wordpress-backup: configuration error, nothing was run:", file=sys.stderr)
    for problem in problems:
        print(f"  {problem}", file=sys.stderr)
    if settings and mutating:
        try:
            catalog.log_event(settings.db_path, "FATAL", "configuration error: " + "; ".join(problems),
                              site=None, server_id=settings.server_id)
        except Exception:  # the report on stderr is what matters here
            pass
    raise SystemExit(3)


def _fresh_second(settings: Settings, sites: list[Site]) -> datetime:
    """Now, but never the second of a run that already closed (its archive has that name):
    back-to-back runs wait for the next second instead of reusing or faking a stamp."""
    now = datetime.now(timezone.utc)
    closed = [state.get("stamp", "") for site in sites
              if (state := runs.read_state(settings.work_dir / site.name)) and state.get("closed")]
    if closed and max(closed) >= runs.make_stamp(now):
        time.sleep(1.05 - now.microsecond / 1e6)
        now = datetime.now(timezone.utc)
    return now


def load(argv: list[str] | None = None) -> Context:
    """Settings, sites, lock and run plans for this invocation (exits 3 on config errors)."""
    argv = sys.argv if argv is None else argv
    setup_logging()
    mutating = wants_lock(argv)
    settings = None
    try:
        settings = load_settings()
        sites = load_sites(settings.sites_file)
    except ConfigError as exc:
        fail(exc.problems, settings, mutating)
    if mutating:
        try:
            lock.acquire(settings.state_dir / ".wpbackup.lock")
        except BackupError as exc:
            print(f"wordpress-backup: {exc}", file=sys.stderr)
            raise SystemExit(4) from None
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGHUP, _on_sigterm)
    now = _fresh_second(settings, sites) if mutating else datetime.now(timezone.utc)
    plans = {site.name: runs.plan_run(settings.work_dir, site.name, now, settings.stale_run_hours,
                                      steps.archive_fingerprint(site) if mutating else None)
             for site in sites if site.enabled}
    return Context(settings, sites, plans, mutating, doit_command(argv) == "run" and not mutating)


CONTEXT = load()
