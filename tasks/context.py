"""What every task module shares, computed once when doit loads dodo.py:

    .env + environment -> Settings;  sites.json -> Sites;  run state -> one Run per site
    + the lock (backup and sync only) and a SIGTERM handler that lets doit save its state.

A configuration error stops here, before any task exists, with one line per problem.
"""

from __future__ import annotations

import os
import re
import signal
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from wpbackup.backup import children, lock, runs
from wpbackup.backup.runs import Run
from wpbackup.config.settings import Settings, load_settings
from wpbackup.config.sites import Site, load_sites
from wpbackup.console import log, setup_logging
from wpbackup.errors import BackupError, ConfigError
from wpbackup.fleet import catalog

DOIT_COMMANDS = {"list", "info", "forget", "clean", "ignore", "help", "strace", "dumpdb",
                 "reset-dep", "tabcompletion", "auto"}
MUTATING = re.compile(r"^(backup|dump|tar|compress|upload|catalog|sync|restore|prune)(:|$)")


#: doit's own options that take a value as the next word (`doit -f dodo.py backup`)
VALUE_OPTIONS = ("-f", "--file", "-d", "--dir", "--db-file", "--backend", "--reporter", "-n", "--process",
                 "-P", "--parallel-type")


def words(argv: list[str]) -> list[str]:
    """The command and task words of a doit command line, without options and their values."""
    return [arg for before, arg in zip(argv, argv[1:], strict=False)
            if not arg.startswith("-") and before not in VALUE_OPTIONS]


def readonly_run(argv: list[str]) -> bool:
    """Runs (and `doit info`) of tasks that change no backup state: status, report, systemd...
    They keep their own doit state file, so they never wait on a backup's."""
    return doit_command(argv) in ("run", "info") and not any(MUTATING.match(word) for word in words(argv))


def doit_command(argv: list[str]) -> str:
    """The doit command of this invocation ('run' when only task names are given)."""
    given = words(argv)
    return given[0] if given and given[0] in DOIT_COMMANDS else "run"


def wants_lock(argv: list[str]) -> bool:
    """True when this doit invocation runs backup or sync tasks (which must not overlap)."""
    return doit_command(argv) == "run" and any(MUTATING.match(word) for word in words(argv))


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


def fail(problems: list[str], settings: Settings | None, mutating: bool, warnings: tuple[str, ...] = ()) -> None:
    """Every configuration problem on stderr (after the warnings that may explain one, such as
    a misspelt key), a FATAL line in the catalog when it can be written, exit 3."""
    for warning in warnings:
        print(f"wordpress-backup: warning: {warning}", file=sys.stderr)
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
    """Now, but never a second a site's last run already took (its archive has that name):
    back-to-back runs wait for the next second instead of reusing or faking a stamp. A last
    stamp further ahead than a moment means the clock was stepped back: nothing to wait for,
    the run planning refuses those sites (runs.plan_run)."""
    now = datetime.now(timezone.utc)
    stamps = [stamp for site in sites
              if (stamp := runs.valid_stamp((runs.read_state(settings.work_dir / site.name) or {}).get("stamp")))]
    ahead = [(runs.parse_stamp(stamp) + timedelta(seconds=1) - now).total_seconds() for stamp in stamps]
    if waits := [wait for wait in ahead if 0 < wait <= 3]:  # this second, or one an older version added
        time.sleep(max(waits) + 0.05)
        now = datetime.now(timezone.utc)
    return now


def _steps():
    """The backup's work (wpbackup.backup.steps), imported when a mutating run first asks:
    status, list and the other read-only commands never load it nor what it imports."""
    from wpbackup.backup import steps

    return steps


def _backs_up(argv: list[str]) -> bool:
    """True when this invocation runs backup stages (not only sync, restore or prune)."""
    return doit_command(argv) == "run" and any(word.split(":")[0] in ("backup", *runs.STAGES)
                                               for word in words(argv))


def _lock(settings: Settings) -> None:
    """One mutating run at a time (exit 4 when another holds the lock); taken once."""
    try:
        lock.acquire(settings.state_dir / ".wpbackup.lock")
    except BackupError as exc:
        print(f"wordpress-backup: {exc}", file=sys.stderr)
        raise SystemExit(4) from None


def _first_run(settings: Settings) -> None:
    """No sites.json at all: find the WordPress sites on this machine, write a sites.json
    listing them and say so; the run then backs them up like any other. Found nothing: a
    ConfigError saying where it looked and how to go on (nothing written)."""
    _lock(settings)  # two first runs at once must not both write the file
    if os.path.lexists(settings.sites_file):
        return
    from wpbackup.config import discovery  # once per install: not worth loading on every start

    try:
        found = discovery.first_run(settings.sites_file)
    except BackupError as exc:  # the file could not be written
        raise ConfigError([str(exc)]) from None
    count = f"{len(found)} WordPress site{'s' if len(found) != 1 else ''}"
    print(f"wordpress-backup: no sites.json yet: found {count} and wrote {settings.sites_file} "
          "(edit it to rename, disable or change a site):")
    for site in found:
        print(f"  {discovery.describe(site)}")
    sys.stdout.flush()


def _deploys_only(argv: list[str]) -> bool:
    """True when this invocation only deploys: a controller need not back anything up
    itself, so its sites.json is not read (nor needed)."""
    given = words(argv)
    return doit_command(argv) == "run" and bool(given) and all(word.split(":")[0] == "deploy" for word in given)


def configuring(argv: list[str]) -> bool:
    """True when this invocation runs `doit configure`."""
    return doit_command(argv) == "run" and "configure" in words(argv)


def migrating(argv: list[str]) -> bool:
    """True when this invocation runs `doit migrate` (a legacy .env, no sites.json yet)."""
    return doit_command(argv) == "run" and "migrate" in words(argv)


def _configure_anyway(argv: list[str], exc: ConfigError, settings: Settings | None,
                      mutating: bool) -> tuple[Settings, list[Site]]:
    """`doit configure` is how a broken or missing .env or sites.json gets fixed, so it loads
    anyway: settings from what parses (wpbackup.ops.envfile.lenient_settings), no sites (the
    wizard reads sites.json itself). Any other command stops here (exit 3)."""
    if not (configuring(argv) or migrating(argv)):
        fail(exc.problems, settings, mutating, tuple(getattr(exc, "warnings", ())))
    from wpbackup.ops.envfile import lenient_settings

    try:
        return settings or lenient_settings(), []
    except ConfigError as again:
        fail(again.problems, None, mutating)
        raise  # fail() exits; this only tells the reader


def load(argv: list[str] | None = None) -> Context:
    """Settings, sites, lock and run plans for this invocation (exits 3 on config errors)."""
    argv = sys.argv if argv is None else argv
    setup_logging()
    mutating = wants_lock(argv)
    settings = None
    try:
        settings = load_settings()
        for warning in settings.warnings:  # a key that looks like ours but is not one
            print(f"wordpress-backup: warning: {warning}", file=sys.stderr)
        if mutating and _backs_up(argv) and not os.path.lexists(settings.sites_file):
            _first_run(settings)
        sites = [] if _deploys_only(argv) else load_sites(settings.sites_file)
    except ConfigError as exc:
        settings, sites = _configure_anyway(argv, exc, settings, mutating)
    if mutating:
        _lock(settings)
        signal.signal(signal.SIGTERM, _on_sigterm)
        signal.signal(signal.SIGHUP, _on_sigterm)
    now = _fresh_second(settings, sites) if mutating else datetime.now(timezone.utc)
    plans = {site.name: runs.plan_run(settings.work_dir, site.name, now, settings.stale_run_hours,
                                      _steps().archive_fingerprint(site) if mutating else None)
             for site in sites if site.enabled}
    if mutating and _backs_up(argv):  # the work folders of sites no run will visit again
        _steps().sweep_retired(settings, {site.name for site in sites if site.enabled})
    return Context(settings, sites, plans, mutating, readonly_run(argv))


CONTEXT = load()
