"""`prune`: retention on S3 (KEEP_DAILY/WEEKLY/MONTHLY) and on local disk (LOCAL_KEEP).

    doit prune [--dry-run]
"""

from __future__ import annotations

from doit.exceptions import TaskFailed

from wpbackup import prune, steps
from wpbackup.console import log
from wpbackup.errors import BackupError
from wpbackup.s3 import describe, make_client

from .context import CONTEXT


def prune_action(dry_run):
    """Print the plan (what is kept and why, what goes); without --dry-run, carry it out."""
    settings = CONTEXT.settings
    names = sorted({site.name for site in CONTEXT.sites} | {
        p.name.split("-backup-")[0] for p in settings.backup_dir.glob("*-backup-*.tar.zst")})
    excess = {name: steps.local_excess(settings, name) for name in names}
    try:
        client = make_client(settings) if settings.s3_enabled else None
        the_plan = prune.plan(settings, settings.keep_daily, settings.keep_weekly, settings.keep_monthly,
                              client, excess)
    except BackupError as exc:
        return TaskFailed(str(exc))
    except Exception as exc:
        return TaskFailed(str(describe(exc, settings.s3_endpoint_url, settings.s3_bucket)))
    verb = "would delete" if dry_run else "deleting"
    for site, entry in sorted(the_plan.sites.items()):
        print(f"{site}: S3 keep {len(entry.keep)}, {verb} {len(entry.delete)}; "
              f"local {verb} {len(entry.local_delete)} (LOCAL_KEEP={settings.local_keep})")
        for key, reasons in entry.keep.items():
            print(f"  keep   {key}  ({', '.join(reasons)})")
        for key in entry.delete:
            print(f"  delete {key}")
        for name in entry.local_delete:
            print(f"  delete local {name}")
    for key in the_plan.unknown:
        print(f"not in the catalog, left alone: s3://{settings.s3_bucket}/{key}")
    if dry_run:
        print("dry run: nothing was deleted")
        return True
    try:
        deleted = prune.apply(settings, the_plan, client) if client else {}
    except BackupError as exc:
        log.error("prune: %s", exc)
        return TaskFailed(f"prune: {exc}")
    for entry in the_plan.sites.values():
        steps.remove_local(settings, entry.local_delete)
    print(f"pruned: {sum(deleted.values())} S3 objects, "
          f"{sum(len(e.local_delete) for e in the_plan.sites.values())} local archives")
    return True


def task_prune():
    """Apply retention on S3 (KEEP_DAILY/WEEKLY/MONTHLY) and locally (LOCAL_KEEP); --dry-run."""
    return {
        "actions": [prune_action],
        "params": [{"name": "dry_run", "long": "dry-run", "type": bool, "default": False,
                    "help": "print what would be kept and deleted, and why; change nothing"}],
        "uptodate": [False],
        "verbosity": 2,
        "io": {"capture": False},
    }
