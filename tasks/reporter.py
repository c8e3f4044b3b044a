"""doit's console output plus one summary line per site at the end of a run."""

from __future__ import annotations

from doit.reporter import ConsoleReporter

from wpbackup.console import human_bytes

STAGES = ("dump", "tar", "compress", "upload", "catalog")


class SummaryReporter(ConsoleReporter):
    """Adds `SUMMARY site: OK|FAILED ...` lines, easy to grep in the journal."""

    def __init__(self, outstream, options):
        super().__init__(outstream, options)
        self.sites: dict[str, dict] = {}

    def _site(self, task):
        stage, _, site = task.name.partition(":")
        return (stage, site) if stage in STAGES and site else (None, None)

    def add_success(self, task):
        super().add_success(task)
        stage, site = self._site(task)
        if stage == "catalog":
            self.sites.setdefault(site, {})["done"] = task.values or {}

    def skip_uptodate(self, task):
        super().skip_uptodate(task)

    def add_failure(self, task, fail):
        super().add_failure(task, fail)
        stage, site = self._site(task)
        if stage:
            message = fail.message if hasattr(fail, "message") else str(fail)
            self.sites.setdefault(site, {}).setdefault("failed", (stage, message.strip().splitlines()[-1:]))

    def complete_run(self):
        super().complete_run()
        for site, info in sorted(self.sites.items()):
            if "failed" in info:
                stage, message = info["failed"]
                self.write(f"SUMMARY {site}: FAILED at {stage}: {' '.join(message)}\n")
            elif "done" in info:
                done = info["done"]
                self.write(f"SUMMARY {site}: OK {done.get('archive')} {human_bytes(done.get('size', 0))}, "
                           f"{done.get('where')}, {done.get('seconds')}s\n")
