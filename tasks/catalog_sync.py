"""`sync`: the catalog's D1 sync, at the end of every `doit backup` whatever the sites did.

doit skips every task whose dependency failed, and a site that failed is exactly what the
fleet must hear about (its ERROR line). doit's teardowns do not help either: with worker
threads, each worker runs them as soon as it has nothing left, while the other may still be
busy. So the `sync` task depends on nothing and has no action of its own: selecting it (`doit
sync`, or `doit backup`, whose group holds it) marks the run, and the SummaryReporter calls
`run_sync` from its `complete_run`, which doit calls once, in the main thread, after every
task of the run has finished or failed. The reporter prints the `SUMMARY sync:` line and
turns a failed sync into a non-zero exit status.
"""

from __future__ import annotations

from wpbackup.backup import children
from wpbackup.errors import BackupError

from .context import CONTEXT


def run_sync() -> dict[str, str]:
    """Push this server's new and changed catalog rows to D1 and pull the fleet's; what
    happened as {"state": "off" | "ok" | "failed", "message": ...}."""
    settings = CONTEXT.settings
    if not settings.d1_enabled:
        print("D1 sync is off (D1_ACCOUNT_ID, D1_DATABASE_ID and D1_API_TOKEN are not set)")
        return {"state": "off", "message": ""}
    if children.stopping.is_set():  # SIGTERM: leave promptly, the next run catches up
        return {"state": "failed", "message": "not run: the run was stopped"}
    from wpbackup.fleet import sync as fleet_sync  # with requests: only for a sync that runs
    from wpbackup.fleet.d1 import D1Client

    client = D1Client.from_settings(settings, stopping=children.stopping)
    try:
        report = fleet_sync.sync(settings.db_path, settings.server_id, client)
    except BackupError as exc:  # one line, in the summary
        return {"state": "failed", "message": str(exc)}
    finally:
        client.close()
    return {"state": "ok", "message": report.summary()}


def task_sync():
    """Sync the catalog with Cloudflare D1: push local rows, pull the fleet's."""
    return {
        "actions": None,  # the work runs at the very end of the run (see the module docstring)
        "uptodate": [False],
    }
