"""`doit status`: per site, the last successful backup, its age, size, where it is, and how
many of this server's local archives are still waiting for their upload (S3 mode); a site
whose latest attempt failed shows FAILED with the error. With the D1 sync on, the other
servers' sites are listed too (their rows are pulled into the local catalog)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from wpbackup.config.settings import Settings
from wpbackup.config.sites import Site
from wpbackup.console import human_bytes
from wpbackup.fleet import catalog
from wpbackup.retention.local import waiting_uploads

#: A last stamp further ahead of this server's clock than this is not "fresh" but a sign that
#: a clock is wrong (this one now, or the one that took the backup); a little skew between
#: servers of a fleet is normal.
FUTURE_SLACK = timedelta(minutes=5)


def _age_hours(when: str, now: datetime) -> float:
    """Age of a backup: from its run stamp (when the data was taken) or a catalog timestamp."""
    fmt = "%Y%m%d-%H%M%S" if ":" not in when else "%Y-%m-%d %H:%M:%S"
    moment = datetime.strptime(when, fmt).replace(tzinfo=timezone.utc)
    return (now - moment).total_seconds() / 3600


def _newer(one, other) -> bool:
    return (one["run_stamp"] or "", one["id"]) > (other["run_stamp"] or "", other["id"])


def _failed_after(failure, row) -> bool:
    """The failure was recorded after the backup ``row`` (or there is none): by the
    catalog's timestamps, which come from one server's clock for one (server, site)."""
    return failure is not None and (row is None or (failure["timestamp"] or "", failure["id"])
                                    > (row["timestamp"] or "", row["id"]))


def _failed_state(failure) -> str:
    details = " ".join((failure["details"] or "").split())
    return f"FAILED {failure['timestamp']}: {details[:100]}{'...' if len(details) > 100 else ''}"


def status_lines(settings: Settings, sites: list[Site], now: datetime | None = None) -> tuple[list[str], bool]:
    """The status table and whether every site has a recent enough success, no newer
    backup that had to leave files out (INCOMPLETE), and no last stamp in the future (CLOCK?)."""
    now = now or datetime.now(timezone.utc)
    last = catalog.last_successes(settings.db_path)
    newest = catalog.last_successes(settings.db_path, include_incomplete=True)
    failures = catalog.last_failures(settings.db_path)
    # AGE counts from the run's stamp: when the data was taken, not when the upload ended
    rows = [("SERVER", "SITE", "LAST SUCCESS (UTC)", "AGE", "SIZE", "STORED", "NOT UPLOADED", "STATE")]
    healthy = True
    keys = [(settings.server_id, s.name) for s in sites if s.enabled]
    # the fleet's other servers (their rows arrive through the D1 sync); this server's
    # disabled or removed sites are not expected to back up any more
    keys += sorted(k for k in {*last, *failures} if k not in keys and k[0] != settings.server_id)
    for server, name in keys:
        row = last.get((server, name))
        waiting = str(len(waiting_uploads(settings, name))) if server == settings.server_id and settings.s3_enabled \
            else "-"
        if row is None:
            latest = newest.get((server, name))
            state = f"INCOMPLETE ({latest['incomplete']} unreadable)" if latest is not None else "NO BACKUP"
            if _failed_after(failures.get((server, name)), latest):
                state = _failed_state(failures[(server, name)])
            rows.append((server, name, "never", "-", "-", "-", waiting, state))
            healthy = False
            continue
        age = _age_hours(row["run_stamp"], now) if row["run_stamp"] else _age_hours(row["timestamp"], now)
        stored = []
        if row["s3_key"]:
            stored.append(f"s3://{row['s3_bucket']}/{row['s3_key']}")
        if server == settings.server_id and (settings.backup_dir / row["archive_name"]).exists():
            stored.append(f"local:{settings.backup_dir / row['archive_name']}")
        state = "OK" if age <= settings.backup_max_age_hours else f"STALE (>{settings.backup_max_age_hours:g}h)"
        latest = newest.get((server, name))
        if latest is not None and latest["incomplete"] and _newer(latest, row):
            state = f"INCOMPLETE ({latest['incomplete']} unreadable in {latest['archive_name']})"
        if _failed_after(failures.get((server, name)), latest if latest is not None and _newer(latest, row) else row):
            state = _failed_state(failures[(server, name)])
        if age < -FUTURE_SLACK.total_seconds() / 3600:  # "fresh" only because a clock is wrong
            state = "CLOCK? (last stamp in the future)"
        healthy = healthy and state == "OK"
        rows.append((server, name, row["timestamp"], f"{age:.1f}h", human_bytes(row["archive_size"] or 0),
                     " + ".join(stored) or "nowhere (deleted?)", waiting, state))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines, healthy
