"""`status`: read-only view of the fleet's health; exits non-zero when a site failed, is
stale or incomplete, so that cron and Nagios-style checks can run it as it is.

    doit status            the table
    doit status --json     one JSON document (servers, and one object per server and site)
"""

from __future__ import annotations

from doit.exceptions import TaskFailed

from wpbackup.errors import BackupError

from .context import CONTEXT


def show_status(json: bool = False):
    """Print the table (or the JSON); fail when a site needs attention."""
    from wpbackup.fleet.status import status_json, status_lines  # not for `doit list` or a backup

    try:
        if json:
            text, healthy = status_json(CONTEXT.settings, CONTEXT.sites)
        else:
            lines, healthy = status_lines(CONTEXT.settings, CONTEXT.sites)
            text = "\n".join(lines)
    except BackupError as exc:  # an unreadable catalog: one line on stderr, stdout stays empty
        return TaskFailed(str(exc))
    print(text)
    if not healthy:
        return TaskFailed(
            f"a site failed, has no successful backup newer than BACKUP_MAX_AGE_HOURS="
            f"{CONTEXT.settings.backup_max_age_hours:g}, its latest backup is incomplete, its last stamp lies "
            "in the future (clock?), or a server went silent"
        )
    return True


def task_status():
    """Show every site of the fleet: last success, age, size, where stored, state (--json)."""
    return {
        "actions": [show_status],
        "params": [{"name": "json", "long": "json", "type": bool, "default": False,
                    "help": "print one JSON document for machines instead of the table"}],
        "uptodate": [False],
        "verbosity": 2,
    }
