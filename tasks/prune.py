"""`prune`: retention on S3 (KEEP_DAILY/WEEKLY/MONTHLY) and on local disk (LOCAL_KEEP).

    doit prune [--dry-run]
"""

from __future__ import annotations

from doit.exceptions import TaskFailed

from wpbackup.console import log
from wpbackup.errors import BackupError

from .context import CONTEXT


def _plan(settings, excess: dict[str, list[str]]):
    """(client, plan, S3 failure): when the S3 part cannot even be planned (S3 unreachable, a
    listing refused), the plan holds only the local part and the failure says why."""
    from wpbackup.retention import prune
    from wpbackup.storage.s3 import describe, make_client

    try:
        client = make_client(settings) if settings.s3_enabled else None
        return client, prune.plan(settings, settings.keep_daily, settings.keep_weekly, settings.keep_monthly,
                                  client, excess), ""
    except BackupError as exc:
        return None, prune.local_only(excess), str(exc)
    except Exception as exc:
        return None, prune.local_only(excess), str(describe(exc, settings.s3_endpoint_url, settings.s3_bucket))


def _print_plan(settings, the_plan, dry_run: bool, s3_failed: str) -> None:
    from wpbackup.retention import prune

    verb = "would delete" if dry_run else "deleting"
    for site, entry in sorted(the_plan.sites.items()):
        s3_part = "S3 part not planned" if s3_failed else f"S3 keep {len(entry.keep)}, {verb} {len(entry.delete)}"
        print(f"{site}: {s3_part}; local {verb} {len(entry.local_delete)} (LOCAL_KEEP={settings.local_keep})")
        for key, reasons in entry.keep.items():
            print(f"  keep   {key}  ({', '.join(reasons)})")
        for key in entry.delete:
            print(f"  delete {key}")
        for name in entry.local_delete:
            print(f"  delete local {name}")
    for key in the_plan.unknown:
        print(f"not in the catalog, left alone: s3://{settings.s3_bucket}/{key}")
    if the_plan.unlisted:
        log.warning("prune: cannot list s3://%s/%s (%s: the key lacks s3:ListBucket), so objects the catalog "
                    "does not know are not reported; retention goes by the catalog", settings.s3_bucket,
                    prune.server_prefix(settings), the_plan.unlisted)


def prune_action(dry_run):
    """Print the plan (what is kept and why, what goes); without --dry-run, carry it out.

    The S3 part and the local part fail apart: an S3 error (unreachable, a listing or a delete
    refused) stops the S3 part, the local part (LOCAL_KEEP) is still applied, and the task
    fails naming the part that failed. Retention and S3 are imported here: every doit command
    creates this task, only `doit prune` needs them."""
    from wpbackup.retention import local, prune

    settings = CONTEXT.settings
    names = sorted({site.name for site in CONTEXT.sites} | {
        p.name.split("-backup-")[0] for p in settings.backup_dir.glob("*-backup-*.tar.zst")})
    excess = {name: local.local_excess(settings, name) for name in names}
    client, the_plan, s3_failed = _plan(settings, excess)
    _print_plan(settings, the_plan, dry_run, s3_failed)
    deleted: dict[str, int] = {}
    if dry_run:
        print("dry run: nothing was deleted")
    else:
        try:
            deleted = prune.apply(settings, the_plan, client) if client else {}
        except prune.S3PartFailed as exc:
            s3_failed, deleted = str(exc), exc.deleted
        for entry in the_plan.sites.values():
            local.remove_local(settings, entry.local_delete)
        print(f"pruned: {sum(deleted.values())} S3 objects, "
              f"{sum(len(e.local_delete) for e in the_plan.sites.values())} local archives")
    if s3_failed:
        local_part = "planned only (dry run)" if dry_run else "applied"
        message = f"prune: the S3 part failed: {s3_failed}; the local part (LOCAL_KEEP) was {local_part}"
        log.error("%s", message)
        return TaskFailed(message)
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
