"""doit actions and up-to-date checks: thin adapters from task to step function.

They turn an operator-facing BackupError into doit's TaskFailed (a clear line, no
traceback) and leave anything unexpected to raise, so a bug still shows its traceback.
"""

from __future__ import annotations

from doit.exceptions import TaskFailed

from wpbackup.errors import BackupError

from .context import CONTEXT


def run_stage(stage: str, site_name: str):
    """Run one stage of one site's run; doit keeps the returned receipt as the task's values.
    The steps are imported here, by the first stage that runs: `doit list` and `doit status`
    create these tasks too, and need none of what the steps import."""
    from wpbackup.backup import steps

    work = {"dump": steps.dump_stage, "tar": steps.tar_stage, "compress": steps.compress_stage,
            "upload": steps.upload_stage, "catalog": steps.catalog_stage}[stage]
    run = CONTEXT.runs[site_name]
    try:
        return work(CONTEXT.settings, CONTEXT.site(site_name), run)
    except BackupError as exc:
        return TaskFailed(str(exc))


def stage_done(task, values, site_name: str, stage: str) -> bool:
    """Up to date when this run already holds the stage's receipt (doit's DB not needed)."""
    return CONTEXT.runs[site_name].receipt(stage) is not None
