"""The doit task graph of wordpress-backup, one module per task family.

    settings -> tasks (this package: which stages exist, their order, when one is done)
             -> steps (wpbackup: the work) -> catalog

Only `task_*` creators and DOIT_CONFIG are exported, so dodo.py stays a single import.

Every doit command (`doit list` as much as `doit backup`) imports every module here and calls
every task creator, so a task module imports its work (wpbackup's steps, report, restore,
deploy... and with them boto3, jinja2, requests, smtplib) inside the actions that use it: a
start then loads only doit, the settings, the sites and the run plans.
"""

from __future__ import annotations

from .backup import task_backup, task_catalog, task_compress, task_dump, task_tar, task_upload
from .catalog_sync import task_sync
from .configure import task_configure
from .context import CONTEXT
from .deploy import task_deploy
from .migrate import task_migrate
from .prune import task_prune
from .report import task_report
from .reporter import SummaryReporter
from .restore import task_restore, task_verify
from .status import task_status
from .systemd import task_systemd

_state = CONTEXT.settings.state_dir

DOIT_CONFIG = {
    "minversion": "0.36.0",
    "backend": "sqlite3",
    # read-only runs (status, ...) keep their own state file, so they never wait on a backup's
    "dep_file": str(_state / (".doit-readonly.db" if CONTEXT.readonly_run else ".doit.db")),
    "continue": True,
    "num_process": 2,
    "par_type": "thread",
    "default_tasks": ["status"],
    "forget_disable_default": True,
    "reporter": SummaryReporter,
}

__all__ = [
    "DOIT_CONFIG", "task_backup", "task_catalog", "task_compress", "task_dump", "task_status",
    "task_sync", "task_tar", "task_upload", "task_restore", "task_verify", "task_prune", "task_report",
    "task_systemd", "task_deploy", "task_configure", "task_migrate",
]
