"""doit's console output plus one summary line per site at the end of a run, and the D1
sync: run from here, after every task, when the run selected it (see tasks/catalog_sync.py);
a failed sync makes the exit status non-zero even when every site succeeded."""

from __future__ import annotations

import traceback

from doit.reporter import ConsoleReporter

from wpbackup.backup.steps import STAGES
from wpbackup.console import human_bytes
from wpbackup.fleet.healthcheck import ping

from .catalog_sync import run_sync
from .context import CONTEXT


class SummaryReporter(ConsoleReporter):
    """Adds `SUMMARY site: OK|FAILED ...` lines, easy to grep in the journal."""

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.sites: dict[str, dict] = {}
        self.sync_wanted = False
        self.sync: dict[str, str] = {}
        self.url = CONTEXT.settings.raw.get("HEALTHCHECK_URL") if CONTEXT.mutating else None

    def initialize(self, tasks, selected_tasks):
        super().initialize(tasks, selected_tasks)
        ping(self.url, "start")

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
        lines = []
        for site, info in sorted(self.sites.items()):
            if "failed" in info and info["failed"][1][-1:] and info["failed"][1][-1].startswith("incomplete:"):
                lines.append(f"SUMMARY {site}: INCOMPLETE {info['failed'][1][-1]}")
            elif "failed" in info:
                stage, message = info["failed"]
                lines.append(f"SUMMARY {site}: FAILED at {stage}: {' '.join(message)}")
            elif "done" in info:
                done = info["done"]
                lines.append(f"SUMMARY {site}: OK {done.get('archive')} {human_bytes(done.get('size', 0))}, "
                             f"{done.get('where')}, {done.get('seconds')}s")
        if sync_line := self._sync_line():
            lines.append(sync_line)
        if lines:
            self.write("\n".join(lines) + "\n")
        sync_failed = self.sync.get("state") == "failed"
        ping(self.url, "fail" if self.failures or self.runtime_errors or sync_failed else "", "\n".join(lines))
        if sync_failed and not (self.failures or self.runtime_errors):
            raise SystemExit(1)  # doit's status knows only tasks: the sync's failure must show too
