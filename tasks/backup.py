"""The backup graph, per enabled site (stable names; the run stamp lives only in paths):

    dump:SITE ----\
                   >-- compress:SITE -- upload:SITE -- catalog:SITE
    tar:SITE -----/

`backup:SITE` runs one site's chain, `backup` every site's and then `sync` (after all of them,
failed or not: tasks/catalog_sync.py). `dump` and
`tar` run side by side (two worker threads). Each stage's target is a receipt in the run
folder; a stage whose receipt exists is up to date even when doit's own state was lost.
"""

from __future__ import annotations

from wpbackup.backup.runs import STAGES

from .actions import run_stage, stage_done
from .context import CONTEXT

DOCS = {
    "dump": "Dump the site's database (single transaction) into the run folder",
    "tar": "Stream wp-config.php and the site files into compressed tar members",
    "compress": "Append database and manifest; write {site}-backup-{stamp}.tar.zst + .sha256",
    "upload": "Upload the archive to S3 (resumable multipart) and verify size and checksum",
    "catalog": "Record the verified backup in backups.db, apply LOCAL_KEEP, close the run",
}
AFTER = {"compress": ("dump", "tar"), "upload": ("compress",), "catalog": ("upload",)}
assert tuple(DOCS) == STAGES, "the graph and the steps must name the same stages"


def _stage_tasks(stage: str):
    yield {"name": None, "doc": DOCS[stage] + " (every site)"}
    for site in CONTEXT.enabled:
        run = CONTEXT.runs[site.name]
        yield {
            "name": site.name,
            "doc": f"{DOCS[stage]}: {site.name}",
            "actions": [(run_stage, [stage, site.name])],
            "file_dep": [run.receipt_path(before) for before in AFTER.get(stage, ())],
            "targets": [run.receipt_path(stage)],
            "uptodate": [(stage_done, [site.name, stage])],
            "io": {"capture": False},  # two tasks run at once: doit's capture would swap sys.stdout
        }


def task_dump():
    """Dump each site's database into its run folder."""
    yield from _stage_tasks("dump")


def task_tar():
    """Archive each site's files as compressed tar members."""
    yield from _stage_tasks("tar")


def task_compress():
    """Finish each site's archive."""
    yield from _stage_tasks("compress")


def task_upload():
    """Upload each site's archive to S3."""
    yield from _stage_tasks("upload")


def task_catalog():
    """Record each site's backup in the catalog."""
    yield from _stage_tasks("catalog")


def task_backup():
    """Back up every enabled site (dump, tar, compress, upload, catalog), then sync."""
    yield {"name": None, "doc": "Back up every enabled site, then sync the catalog", "task_dep": ["sync"]}
    for site in CONTEXT.enabled:
        yield {
            "name": site.name,
            "doc": f"Back up {site.name}: dump, tar, compress, upload, catalog",
            "actions": None,
            "task_dep": [f"{stage}:{site.name}" for stage in DOCS],
        }
