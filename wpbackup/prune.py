"""`doit prune`: apply retention on S3 (KEEP_DAILY/WEEKLY/MONTHLY) and locally (LOCAL_KEEP).

    catalog (this server's live s3_archives) -> GFS plan per site -> DeleteObjects (1000/batch)
      -> deleted_at in the catalog, INFO lines (both synced to D1)

Never touched: another server's objects, objects the catalog does not know (reported), the
newest archive of a site. An archive whose S3 copy failed its latest `doit verify --remote`
fills no daily/weekly/monthly slot, so the policy still keeps as many intact archives as it
promises; the damaged one itself goes only where the plain policy would drop it anyway.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import dataclass, field

from . import catalog
from .errors import BackupError
from .retention import keep_reasons
from .s3 import describe
from .settings import Settings

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


def _live_rows(settings: Settings) -> list[sqlite3.Row]:
    with closing(catalog.connect(settings.db_path)) as conn:
        return conn.execute(
            "SELECT * FROM s3_archives WHERE server_id = ? AND deleted_at IS NULL AND s3_bucket = ? "
            "ORDER BY run_stamp", (settings.server_id, settings.s3_bucket)).fetchall()


def server_prefix(settings: Settings) -> str:
    return "/".join(p for p in (settings.s3_prefix, settings.server_id) if p) + "/"


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
    unknown: list[str] = []
    if settings.s3_enabled and client is not None:
        paginator = client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=settings.s3_bucket, Prefix=server_prefix(settings)):
            unknown += [o["Key"] for o in page.get("Contents", []) if o["Key"] not in known]
    for site, names in (local_excess or {}).items():
        sites.setdefault(site, SitePlan(site)).local_delete = names
    return Plan(sites, unknown)


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
    """Delete what the plan says on S3 and record it; returns deleted counts per site."""
    deleted: dict[str, int] = {}
    ours = server_prefix(settings)
    for site, entry in the_plan.sites.items():
        keys = [key for key in entry.delete if key.startswith(ours)]  # never another server's
        if not keys:
            continue
        try:
            gone, errors = delete_objects(client, settings.s3_bucket, keys)
        except Exception as exc:
            raise describe(exc, settings.s3_endpoint_url, settings.s3_bucket) from None
        mark_deleted(settings, gone)
        deleted[site] = len(gone)
        catalog.log_event(settings.db_path, "INFO",
                          f"prune: deleted {len(gone)} archives from s3://{settings.s3_bucket} "
                          f"(KEEP_DAILY/WEEKLY/MONTHLY), kept {len(entry.keep)}",
                          site=site, server_id=settings.server_id)
        if errors:
            first = errors[0]
            raise BackupError(f"S3 refused to delete {len(errors)} objects of {site}, e.g. {first['Key']}: "
                              f"{first.get('Code')} {first.get('Message', '')}")
    return deleted
