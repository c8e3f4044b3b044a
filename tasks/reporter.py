"""doit's console output plus one summary line per site at the end of a run."""

from __future__ import annotations

from doit.reporter import ConsoleReporter

from wpbackup.console import human_bytes
from wpbackup.healthcheck import ping
from wpbackup.steps import STAGES

from .context import CONTEXT


class SummaryReporter(ConsoleReporter):
    """Adds `SUMMARY site: OK|FAILED ...` lines, easy to grep in the journal."""

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.sites: dict[str, dict] = {}
        self.url = CONTEXT.settings.raw.get("HEALTHCHECK_URL") if CONTEXT.mutating else None

    def initialize(self, tasks, selected_tasks):
        super().initialize(tasks, selected_tasks)
        ping(self.url, "start")

    def _site(self, task):
        stage, _, site = task.name.partition(":")
        return (stage, site) if stage in STAGES and site else (None, None)

    def add_success(self, task):
        super().add_success(task)
        stage, site = self._site(task)
        if stage == "catalog":
            self.sites.setdefault(site, {})["done"] = task.values or {}

    def add_failure(self, task, fail):
        super().add_failure(task, fail)
        stage, site = self._site(task)
        if stage:
            message = fail.message if hasattr(fail, "message") else str(fail)
            self.sites.setdefault(site, {}).setdefault("failed", (stage, message.strip().splitlines()[-1:]))

    def complete_run(self):
        super().complete_run()
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
        if lines:
            self.write("\n".join(lines) + "\n")
        ping(self.url, "fail" if self.failures or self.runtime_errors else "", "\n".join(lines))
