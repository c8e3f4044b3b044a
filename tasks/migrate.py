"""`migrate`: bring a predecessor install (run.sh + lib/*.py, one site) to this layout
(wpbackup/ops/migrate.py; docs/migration.md).

    doit migrate --site NAME [--server-id ID] [--dry-run]

It loads on a legacy install whose `.env` holds only the old keys and that has no
sites.json (tasks/context.py loads leniently for this command, as for configure), and holds
the run lock while it works, so that no backup runs meanwhile.
"""

from __future__ import annotations

from doit.exceptions import TaskFailed

from wpbackup.backup import lock
from wpbackup.errors import BackupError, ConfigError

from .context import CONTEXT


def migrate_action(site: str, server_id: str, dry_run: bool):
    """Run (or with ``dry_run`` only print) the migration; one clear line when it fails."""
    from wpbackup.ops import migrate  # with boto3 and the archive code: for `doit migrate` only

    settings = CONTEXT.settings
    try:
        if not site:
            raise BackupError("--site NAME is required: the name the one site of the legacy install gets")
        if not dry_run:  # a dry run only reads: it leaves no file behind, not even the lock's
            lock.acquire(settings.state_dir / ".wpbackup.lock")
        lines = migrate.migrate(settings, site, server_id, dry_run)
    except BackupError as exc:
        return TaskFailed(f"migrate: {exc}")
    except ConfigError as exc:  # the site entry or .env the legacy values give would not load
        return TaskFailed("migrate: " + "; ".join(exc.problems))
    print("\n".join(lines))
    return True


def task_migrate():
    """Move a legacy single-site install to this layout (--site NAME, --server-id ID, --dry-run)."""
    return {
        "actions": [migrate_action],
        "params": [
            {"name": "site", "long": "site", "type": str, "default": "",
             "help": "the name of the legacy install's one site (part of archive names and S3 keys)"},
            {"name": "server_id", "long": "server-id", "type": str, "default": "",
             "help": "this server's SERVER_ID (default: the old SERVER_ID, else the host name made valid)"},
            {"name": "dry_run", "long": "dry-run", "type": bool, "default": False,
             "help": "print the whole plan and change nothing"},
        ],
        "uptodate": [False],
        "verbosity": 2,  # no output capture: the operator reads the plan as it goes
    }
