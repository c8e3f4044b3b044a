"""`doit prune`: apply retention on S3 (KEEP_DAILY/WEEKLY/MONTHLY) and locally (LOCAL_KEEP).

    catalog (this server's live s3_archives) -> GFS plan per site -> DeleteObjects (1000/batch)
      -> deleted_at in the catalog, INFO lines (both synced to D1)

Never touched: another server's objects, objects the catalog does not know (reported), the
newest archive of a site. An archive whose S3 copy failed its latest `doit verify --remote`
fills no daily/weekly/monthly slot, so the policy still keeps as many intact archives as it
promises; the damaged one itself goes only where the plain policy would drop it anyway.

The two parts fail apart: S3 unreachable, or refusing a listing or a delete, stops the S3 part
(S3PartFailed) while LOCAL_KEEP, decided from the catalog alone, is still applied.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field

from botocore.exceptions import ClientError

from wpbackup.config.settings import Settings
from wpbackup.errors import BackupError
from wpbackup.fleet import catalog
from wpbackup.retention.retention import keep_reasons
from wpbackup.storage import s3
from wpbackup.storage.s3 import describe

BATCH = 1000


@dataclass
class SitePlan:
    site: str
    keep: dict[str, list[str]] = field(default_factory=dict)   # key -> reasons
    delete: list[str] = field(default_factory=list)            # keys
    local_delete: list[str] = field(default_factory=list)      # archive names


@dataclass
class Plan:
    sites: dict[str, SitePlan]
    unknown: list[str]
    unlisted: str = ""  # why the bucket could not be listed for unknown objects (e.g. AccessDenied)


class S3PartFailed(BackupError):
    """The S3 part of a prune stopped or was refused in part; ``deleted`` counts per site what
    went before that, so the local part can still be applied and the summary stays true."""

    def __init__(self, message: str, deleted: dict[str, int]):
        super().__init__(message)
        self.deleted = deleted


def local_only(local_excess: dict[str, list[str]]) -> Plan:
    """The local part of retention alone (LOCAL_KEEP), for when the S3 part cannot be planned:
    which local archives may go is read from the catalog, not from S3."""
    return Plan({site: SitePlan(site, local_delete=names) for site, names in local_excess.items()}, [])


def _live_rows(settings: Settings) -> list[sqlite3.Row]:
    with closing(catalog.connect(settings.db_path)) as conn:
        return conn.execute(
            "SELECT * FROM s3_archives WHERE server_id = ? AND deleted_at IS NULL AND s3_bucket = ? "
            "ORDER BY run_stamp", (settings.server_id, settings.s3_bucket)).fetchall()


def server_prefix(settings: Settings) -> str:
    return s3.server_prefix(settings.s3_prefix, settings.server_id)


def _reasons(stamps: dict[str, sqlite3.Row], damaged: set[str], *keep: int) -> dict[str, list[str]]:
    """GFS over the intact archives, plus the damaged ones the plain policy would keep."""
    intact = [stamp for stamp, row in stamps.items() if row["archive_name"] not in damaged]
    reasons = keep_reasons(intact, *keep)
    if len(intact) < len(stamps):
        for stamp, why in keep_reasons(stamps, *keep).items():
            if stamp not in reasons:
                reasons[stamp] = [*why, "S3 copy failed verify"]
    return reasons


def plan(settings: Settings, keep_daily: int, keep_weekly: int, keep_monthly: int, client=None,
         local_excess=None) -> Plan:
    """Decide what goes, without changing anything."""
    sites: dict[str, SitePlan] = {}
    known: set[str] = set()
    if settings.s3_enabled:
        damaged = catalog.failed_s3_verifications(settings.db_path, settings.server_id)
        by_site: dict[str, list[sqlite3.Row]] = {}
        for row in _live_rows(settings):
            by_site.setdefault(row["site_name"], []).append(row)
            known.add(row["filename"])
        for site, rows in by_site.items():
            stamps = {row["run_stamp"] or row["archive_name"].rsplit("-backup-", 1)[1][:15]: row for row in rows}
            reasons = _reasons(stamps, damaged, keep_daily, keep_weekly, keep_monthly)
            entry = sites.setdefault(site, SitePlan(site))
            for stamp, row in sorted(stamps.items()):
                if stamp in reasons:
                    entry.keep[row["filename"]] = reasons[stamp]
                else:
                    entry.delete.append(row["filename"])
    unknown, unlisted = [], ""
    if settings.s3_enabled and client is not None:
        unknown, unlisted = _unknown_objects(settings, client, known)
    for site, names in (local_excess or {}).items():
        sites.setdefault(site, SitePlan(site)).local_delete = names
    return Plan(sites, unknown, unlisted)


def _unknown_objects(settings: Settings, client, known: set[str]) -> tuple[list[str], str]:
    """Objects under this server's prefix the catalog does not know (only reported). A key
    without s3:ListBucket cannot list them: that costs the report, not the retention, which
    deletes by the catalog's keys (returned: why, e.g. "AccessDenied")."""
    unknown: list[str] = []
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=settings.s3_bucket,
                                                                      Prefix=server_prefix(settings)):
            unknown += [o["Key"] for o in page.get("Contents", []) if o["Key"] not in known]
    except ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        if code not in ("AccessDenied", "403"):
            raise
        return [], code
    return unknown, ""


def delete_objects(client, bucket: str, keys: list[str]) -> tuple[list[str], list[dict]]:
    """DeleteObjects in batches of 1000: (keys deleted, errors reported by S3)."""
    done: list[str] = []
    errors: list[dict] = []
    for start in range(0, len(keys), BATCH):
        batch = keys[start:start + BATCH]
        response = client.delete_objects(Bucket=bucket, Delete={"Objects": [{"Key": k} for k in batch],
                                                                "Quiet": True})
        failed = response.get("Errors", [])
        errors += failed
        done += [k for k in batch if k not in {e["Key"] for e in failed}]
    return done, errors


def mark_deleted(settings: Settings, keys: list[str]) -> None:
    with closing(catalog.connect(settings.db_path)) as conn, conn:
        conn.executemany(
            "UPDATE s3_archives SET deleted_at = ? WHERE server_id = ? AND s3_bucket = ? AND filename = ?",
            [(catalog.now_utc(), settings.server_id, settings.s3_bucket, key) for key in keys])


def apply(settings: Settings, the_plan: Plan, client) -> dict[str, int]:
    """Delete what the plan says on S3 and record it; returns deleted counts per site.

    A request that fails stops the S3 part (S3PartFailed); objects S3 refuses one by one are
    reported once every site had its turn."""
    deleted: dict[str, int] = {}
    refused: list[str] = []
    ours = server_prefix(settings)
    for site, entry in the_plan.sites.items():
        keys = [key for key in entry.delete if key.startswith(ours)]  # never another server's
        if not keys:
            continue
        try:
            gone, errors = delete_objects(client, settings.s3_bucket, keys)
        except Exception as exc:
            raise S3PartFailed(str(describe(exc, settings.s3_endpoint_url, settings.s3_bucket)), deleted) from None
        mark_deleted(settings, gone)
        deleted[site] = len(gone)
        catalog.log_event(settings.db_path, "INFO",
                          f"prune: deleted {len(gone)} archives from s3://{settings.s3_bucket} "
                          f"(KEEP_DAILY/WEEKLY/MONTHLY), kept {len(entry.keep)}",
                          site=site, server_id=settings.server_id)
        if errors:
            first = errors[0]
            refused.append(f"S3 refused to delete {len(errors)} objects of {site}, e.g. {first['Key']}: "
                           f"{first.get('Code')} {first.get('Message', '')}")
    if refused:
        raise S3PartFailed("; ".join(refused), deleted)
    return deleted
