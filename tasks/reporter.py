"""doit's console output plus one summary line per site at the end of a run, and the D1
sync: run from here, after every task, when the run selected it (see tasks/catalog_sync.py);
a failed sync makes the exit status non-zero even when every site succeeded.

A backup run also tells the outside world, from here: the health check gets ``/start`` when
the run begins and success or ``/fail`` with the run's one-line summary when it ends (the
same run id on both), and every failed or incomplete site is an alert to NOTIFY_URLS (with
NOTIFY_ON=all every site is). Both are bounded in time and never change the exit status."""

from __future__ import annotations

import sys
import traceback
from dataclasses import dataclass

from doit.exceptions import UnmetDependency
from doit.reporter import ConsoleReporter

from wpbackup.console import human_bytes
from wpbackup.fleet.healthcheck import new_run_id, ping
from wpbackup.fleet.notify import Alert, redact, secret_values, send_alerts

from .backup import STAGES  # the graph's stage names (not the steps: no backup code for `doit status`)
from .catalog_sync import run_sync
from .context import CONTEXT


@dataclass
class Outcome:
    """How one site's run ended: OK, FAILED or INCOMPLETE, and the rest of its SUMMARY line."""

    site: str
    verdict: str
    detail: str
    stage: str | None = None
    message: str = ""

    @property
    def line(self) -> str:
        return f"SUMMARY {self.site}: {self.verdict} {self.detail}"

    def alert(self, server: str) -> Alert:
        if self.verdict == "FAILED":
            return Alert("failed", server, self.site, f"backup failed at {self.stage}: {self.message}")
        if self.verdict == "INCOMPLETE":
            return Alert("incomplete", server, self.site, self.detail)
        return Alert("ok", server, self.site, f"backed up: {self.detail}")


def outcome(site: str, info: dict) -> Outcome | None:
    """The outcome of a site from what its tasks reported (None: none of them ran)."""
    if "failed" in info:
        stage, message = info["failed"]
        if message[-1:] and message[-1].startswith("incomplete:"):
            return Outcome(site, "INCOMPLETE", message[-1])
        text = " ".join(message)
        return Outcome(site, "FAILED", f"at {stage}: {text}", stage, text)
    if "done" in info:
        done = info["done"]
        return Outcome(site, "OK", f"{done.get('archive')} {human_bytes(done.get('size', 0))}, "
                                   f"{done.get('where')}, {done.get('seconds')}s")
    return None


def one_line_summary(server: str, outcomes: list[Outcome], sync: dict[str, str], errors: int = 0) -> str:
    """'web-1: 3 sites, 2 OK, 1 FAILED (shop); sync OK': the health check's body."""
    parts = [f"{len(outcomes)} site{'s' if len(outcomes) != 1 else ''}"]
    for verdict in ("OK", "FAILED", "INCOMPLETE"):
        names = [o.site for o in outcomes if o.verdict == verdict]
        if names:
            parts.append(f"{len(names)} {verdict}" + (f" ({', '.join(names)})" if verdict != "OK" else ""))
    line = f"{server}: {', '.join(parts)}"
    if errors:
        line += f"; {errors} task error(s)"
    if sync.get("state") in ("ok", "failed"):
        line += f"; sync {sync['state'].upper()}"
    return line


class SummaryReporter(ConsoleReporter):
    """Adds `SUMMARY site: OK|FAILED ...` lines, easy to grep in the journal."""

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.sites: dict[str, dict] = {}
        self.sync_wanted = False
        self.sync: dict[str, str] = {}
        self.url = CONTEXT.settings.value("HEALTHCHECK_URL") if CONTEXT.mutating else None
        self.rid = new_run_id()

    def initialize(self, tasks, selected_tasks):
        super().initialize(tasks, selected_tasks)
        # the health check watches the backups: a restore, prune or sync alone must not
        # ping it (its success would hide a backup timer that stopped)
        if not any(str(name).split(":")[0] in ("backup", *STAGES) for name in selected_tasks or ()):
            self.url = None
        ping(self.url, "start", rid=self.rid)

    def execute_task(self, task):
        if task.name != "status":  # status prints a document of its own (with --json, for machines)
            super().execute_task(task)

    def _write_failure(self, result, write_exception=True):
        if isinstance(result["exception"], UnmetDependency):
            return self._write_not_run(result["task"], result["exception"])
        if result["task"].name != "status":
            return super()._write_failure(result, write_exception)
        # stdout holds status's document alone (a script parses it); why it failed goes to stderr
        sys.stderr.write(f"{result['exception'].get_msg().strip()}\n")

    def _write_not_run(self, task, fail) -> None:
        """One line for a stage that could not run because an earlier one failed (doit's own
        is a block per stage); nothing for a group such as backup:SITE, whose failed stage
        already said why, and the SUMMARY line says it again."""
        if not task.actions or task.name.startswith("_"):
            return
        stage, site = self._site(task)
        failed = self.sites.get(site, {}).get("failed") if stage else None
        cause = f"{failed[0]}:{site}" if failed else fail.message.strip()
        self.write(f"x  {task.name}: not run, because {cause} failed\n")

    def _site(self, task):
        stage, _, site = task.name.partition(":")
        return (stage, site) if stage in STAGES and site else (None, None)

    def add_success(self, task):
        super().add_success(task)
        if task.name == "sync":
            self.sync_wanted = True
        stage, site = self._site(task)
        if stage == "catalog":
            self.sites.setdefault(site, {})["done"] = task.values or {}

    def add_failure(self, task, fail):
        super().add_failure(task, fail)
        stage, site = self._site(task)
        if stage:
            message = fail.message if hasattr(fail, "message") else str(fail)
            self.sites.setdefault(site, {}).setdefault("failed", (stage, message.strip().splitlines()[-1:]))

    def _run_sync(self) -> None:
        """The D1 sync, after everything else; a bug shows its traceback and fails the run."""
        self.write(".  sync\n")
        self.outstream.flush()
        try:
            self.sync = run_sync()
        except Exception:
            traceback.print_exc()
            self.sync = {"state": "failed", "message": "unexpected error (traceback above)"}

    def _sync_line(self) -> str | None:
        if self.sync.get("state") == "ok":
            return f"SUMMARY sync: OK {self.sync['message']}"
        if self.sync.get("state") == "failed":
            backups = " the backups of this run are recorded locally;" if self.sites else ""
            return f"SUMMARY sync: FAILED {self.sync['message']};{backups} the next sync sends what was missed"
        return None

    def complete_run(self):
        super().complete_run()
        if self.sync_wanted:
            self._run_sync()
        outcomes = [o for site, info in sorted(self.sites.items()) if (o := outcome(site, info))]
        lines = [o.line for o in outcomes]
        if sync_line := self._sync_line():
            lines.append(sync_line)
        if lines:
            self.write("\n".join(lines) + "\n")
        self.outstream.flush()
        sync_failed = self.sync.get("state") == "failed"
        self._tell(outcomes, failed=bool(self.failures or self.runtime_errors or sync_failed))
        if sync_failed and not (self.failures or self.runtime_errors):
            raise SystemExit(1)  # doit's status knows only tasks: the sync's failure must show too

    def _tell(self, outcomes: list[Outcome], failed: bool) -> None:
        """Alerts for this run's sites, then the health check's end ping: both bounded in
        time, neither able to fail the run."""
        if not CONTEXT.mutating:
            return
        server = CONTEXT.settings.server_id
        if outcomes:
            send_alerts(CONTEXT.settings, [o.alert(server) for o in outcomes])
        if self.url:
            summary = one_line_summary(server, outcomes, self.sync, len(self.runtime_errors))
            ping(self.url, "fail" if failed else "", redact(summary, secret_values(CONTEXT.settings)), rid=self.rid)
