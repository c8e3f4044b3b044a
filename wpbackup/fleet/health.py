"""The fleet's health at one moment: a verdict per (server, site), read from the catalog.

`doit status` (table and ``--json``), `doit report` and the stale alerts all ask this one
module, so that a site called STALE in the morning email is STALE in the monitoring check too.

    catalog rows up to ``at`` --> SiteHealth per (server, site) --> verdicts
                                  ServerHealth per server (silent when it stopped writing)

Which sites are expected: this server's enabled sites (sites.json), and every site another
server attempted within ``FORGOTTEN_AFTER`` (its rows arrive through the D1 sync). A site that
was removed from another server drops out after that time. A server is flagged silent once it
wrote nothing for longer than BACKUP_MAX_AGE_HOURS, so a whole server going quiet cannot look
like a quiet night; after FORGOTTEN_AFTER of silence (two weeks of daily FAILED/STALE reports
and an alert) it is taken as retired and drops out too.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

from wpbackup.config.settings import Settings
from wpbackup.fleet import catalog

#: verdicts, worst first: FAILED (the latest attempt failed, or the latest archive failed its
#: verify), INCOMPLETE (the newest archive lacks files it could not read), STALE (no success
#: newer than BACKUP_MAX_AGE_HOURS, or never one), CLOCK (a last stamp in the future), OK
VERDICTS = ("FAILED", "INCOMPLETE", "STALE", "CLOCK", "OK")
#: an archive at least this much smaller than the site's previous one is flagged ...
SHRINK_FRACTION = 0.30
#: ... unless it lost less than this (a few deleted drafts in a tiny site are no alarm)
SHRINK_MIN_BYTES = 256 * 1024
#: a site another server stopped attempting this long ago is taken as removed there
FORGOTTEN_AFTER = timedelta(days=14)
#: a last stamp further ahead of this server's clock than this means a clock is wrong
FUTURE_SLACK = timedelta(minutes=5)

TIME = "%Y-%m-%d %H:%M:%S"
STAMP = "%Y%m%d-%H%M%S"


def parse_time(text: str | None) -> datetime | None:
    """A catalog timestamp ('YYYY-MM-DD HH:MM:SS') or run stamp ('YYYYMMDD-HHMMSS'), UTC."""
    if not text:
        return None
    try:
        return datetime.strptime(text, TIME if ":" in text else STAMP).replace(tzinfo=timezone.utc)
    except ValueError:
        return None


@dataclass
class SiteHealth:
    """One site of one server, as of ``at``: its verdict, why, and what an operator asks next."""

    server: str
    site: str
    verdict: str = "OK"
    reason: str = ""                   # one line; empty when OK
    last_success: str | None = None    # catalog time of the newest complete backup (UTC)
    age_hours: float | None = None     # since that backup's data was taken (its run stamp)
    archive: str | None = None         # the newest stored archive (complete or incomplete)
    archive_time: str | None = None
    size: int | None = None
    previous_size: int | None = None   # the archive before it
    change: float | None = None        # size / previous_size - 1
    shrunk: bool = False               # much smaller than the previous one
    duration_seconds: float | None = None
    stored: list[str] = field(default_factory=list)   # s3://bucket/key, local:/path
    incomplete: int = 0                # files the newest archive lacks
    last_verified: str | None = None   # newest verify that passed (local or S3 copy)
    last_restore_test: str | None = None
    verify_failed: str | None = None   # the newest verify of the newest archive failed: its line
    last_failure: str | None = None    # time of the newest failed attempt, when it is the latest
    not_uploaded: int | None = None    # this server's local archives waiting for S3 (S3 mode)
    last_attempt: str | None = None    # newest row of a backup run, whatever its outcome

    @property
    def needs_action(self) -> bool:
        return self.verdict != "OK" or self.shrunk

    def as_dict(self) -> dict:
        return {**asdict(self), "needs_action": self.needs_action}


@dataclass
class ServerHealth:
    server: str
    last_activity: str | None          # newest backup-run row from this server
    silent: bool                       # nothing for longer than BACKUP_MAX_AGE_HOURS
    sites: list[SiteHealth] = field(default_factory=list)


@dataclass
class FleetHealth:
    at: datetime
    max_age_hours: float
    servers: list[ServerHealth]

    @property
    def sites(self) -> list[SiteHealth]:
        return [site for server in self.servers for site in server.sites]

    @property
    def healthy(self) -> bool:
        """What `doit status` exits 0 on: every site's verdict is OK (a shrunk archive is
        reported, but is no failure: a site may have been cleaned up on purpose)."""
        return all(site.verdict == "OK" for site in self.sites) and not any(s.silent for s in self.servers)


def _query(conn: sqlite3.Connection, sql: str, params: tuple) -> dict[tuple[str, str], list[sqlite3.Row]]:
    out: dict[tuple[str, str], list[sqlite3.Row]] = {}
    for row in conn.execute(sql, params):
        out.setdefault((row["server_id"], row["site_name"]), []).append(row)
    return out


def _newest(condition: str, limit: int = 1) -> str:
    """Rows matching ``condition`` up to the moment ?, the newest ``limit`` per (server, site)."""
    return ("SELECT * FROM (SELECT b.*, ROW_NUMBER() OVER (PARTITION BY b.server_id, b.site_name "
            "ORDER BY b.run_stamp DESC, b.timestamp DESC, b.id DESC) AS nth FROM backup_log b "
            f"WHERE {condition} AND b.site_name IS NOT NULL AND b.timestamp <= ?) WHERE nth <= {limit}")


def read_catalog(db_path: Path, at: datetime | None) -> dict[str, dict]:
    """What the verdicts need, in a few queries bounded by ``at`` (a report of a past day
    sees the catalog as it was then). ``at`` None: everything, also rows stamped ahead of this
    server's clock (a server whose clock runs fast must show its failures, and CLOCK)."""
    until = at.strftime(TIME) if at else "9999-12-31 23:59:59"
    if not db_path.exists():
        return {"stored": {}, "complete": {}, "failed": {}, "verified": {}, "tested": {}, "checks": {},
                "attempts": {}, "s3": {}}
    with closing(catalog.connect(db_path)) as conn:
        verify = "b.archive_name IS NOT NULL AND (b.verified_local IS NOT NULL OR b.verified_s3 IS NOT NULL)"
        data = {
            "stored": _query(conn, _newest(catalog.STORED, 2), (until,)),
            "complete": _query(conn, _newest("b.status = 'SUCCESS' AND b.archive_name IS NOT NULL"), (until,)),
            "failed": _query(conn, _newest(catalog.FAILED), (until,)),
            "verified": _query(conn, _newest("(b.verified_local = 1 OR b.verified_s3 = 1)"), (until,)),
            "tested": _query(conn, _newest("b.restore_tested = 1"), (until,)),
            "checks": _query(conn, _newest(verify).replace("b.run_stamp DESC, ", ""), (until,)),
            "attempts": _query(conn, _newest("b.run_stamp IS NOT NULL"), (until,)),
        }
        s3 = conn.execute("SELECT server_id, archive_name, s3_bucket, filename FROM s3_archives "
                          "WHERE deleted_at IS NULL AND upload_timestamp <= ? ORDER BY id", (until,)).fetchall()
    data["s3"] = {(r["server_id"], r["archive_name"]): f"s3://{r['s3_bucket']}/{r['filename']}" for r in s3}
    return data


def _later(one: sqlite3.Row | None, other: sqlite3.Row | None) -> bool:
    """``one`` was written after ``other`` (by one server's clock, for one site)."""
    if one is None:
        return False
    return other is None or (one["timestamp"] or "", one["id"]) > (other["timestamp"] or "", other["id"])


def _flat(text: str | None, limit: int = 160) -> str:
    words = " ".join((text or "").split())
    return words if len(words) <= limit else words[: limit - 3] + "..."


def site_health(settings: Settings, data: dict, server: str, site: str, at: datetime) -> SiteHealth:
    """The verdict of one (server, site), and the facts behind it."""
    key = (server, site)
    health = SiteHealth(server, site)
    stored = data["stored"].get(key, [])
    complete = (data["complete"].get(key) or [None])[0]
    failure = (data["failed"].get(key) or [None])[0]
    attempt = (data["attempts"].get(key) or [None])[0]
    health.last_attempt = attempt["timestamp"] if attempt else None
    newest = stored[0] if stored else None
    if newest is not None:
        health.archive, health.archive_time = newest["archive_name"], newest["timestamp"]
        health.size, health.incomplete = newest["archive_size"], newest["incomplete"] or 0
        start = parse_time(newest["run_stamp"])
        end = parse_time(newest["timestamp"])
        if start and end and end >= start:
            health.duration_seconds = round((end - start).total_seconds(), 1)
        if s3 := data["s3"].get((server, newest["archive_name"])):
            health.stored.append(s3)
        local = settings.backup_dir / newest["archive_name"]
        if server == settings.server_id and local.exists():
            health.stored.append(f"local:{local}")
        if len(stored) > 1 and stored[1]["archive_size"] and newest["archive_size"] is not None:
            previous = stored[1]["archive_size"]
            health.previous_size = previous
            health.change = newest["archive_size"] / previous - 1
            lost = previous - newest["archive_size"]
            health.shrunk = health.change <= -SHRINK_FRACTION and lost >= SHRINK_MIN_BYTES
    if verified := (data["verified"].get(key) or [None])[0]:
        health.last_verified = verified["timestamp"]
    if tested := (data["tested"].get(key) or [None])[0]:
        health.last_restore_test = tested["timestamp"]
    check = (data["checks"].get(key) or [None])[0]
    if check is not None and newest is not None and check["archive_name"] == newest["archive_name"] \
            and 0 in (check["verified_local"], check["verified_s3"], check["restore_tested"]):
        health.verify_failed = _flat(check["details"])
    if complete is not None:
        health.last_success = complete["timestamp"]
        taken = parse_time(complete["run_stamp"]) or parse_time(complete["timestamp"])
        health.age_hours = (at - taken).total_seconds() / 3600 if taken else None
    _judge(health, settings.backup_max_age_hours, at, newest, complete, failure)
    return health


def _judge(health: SiteHealth, max_age: float, at: datetime, newest, complete, failure) -> None:
    """Set verdict and reason, the worst condition winning."""
    latest = newest if _later(newest, complete) or complete is None else complete
    if _later(failure, latest):
        health.verdict, health.last_failure = "FAILED", failure["timestamp"]
        health.reason = _flat(failure["details"])
        if health.verify_failed:  # and the archive to fall back on does not restore either
            health.reason += f"; and the newest archive {health.archive} failed its verify"
    elif health.verify_failed:
        health.verdict, health.reason = "FAILED", f"verify of {health.archive} failed: {health.verify_failed}"
    elif newest is not None and newest["incomplete"] and _later(newest, complete):
        health.verdict = "INCOMPLETE"
        health.reason = f"{newest['incomplete']} unreadable file(s) left out of {newest['archive_name']}"
        taken = parse_time(newest["run_stamp"]) or parse_time(newest["timestamp"])
        hours = (at - taken).total_seconds() / 3600 if taken else 0
        if hours > max_age:  # an old incomplete archive is no fresher than none
            health.verdict = "STALE"
            health.reason = (f"no backup for {hours:.0f}h (BACKUP_MAX_AGE_HOURS={max_age:g}); the newest, "
                             f"{newest['archive_name']}, is incomplete")
    elif complete is None:
        health.verdict, health.reason = "STALE", "no successful backup yet"
    elif health.age_hours is not None and health.age_hours > max_age:
        health.verdict = "STALE"
        health.reason = f"last success {health.age_hours:.0f}h ago (BACKUP_MAX_AGE_HOURS={max_age:g})"
    elif health.age_hours is not None and health.age_hours < -FUTURE_SLACK.total_seconds() / 3600:
        health.verdict, health.reason = "CLOCK", "the last backup's stamp lies in the future (a clock is wrong)"
    if health.verdict == "STALE" and complete is None and newest is None and health.last_attempt is None:
        health.reason = "never backed up"


def fleet_health(settings: Settings, enabled_sites: list[str], at: datetime | None = None,
                 not_uploaded=None, *, as_of: bool = False) -> FleetHealth:
    """Every expected (server, site) at ``at`` (default: now), grouped by server, this
    server first. Judged on every row the catalog holds, also rows stamped later by a clock
    that runs ahead; ``as_of``: only on the rows written up to ``at`` (a past day's report).
    ``not_uploaded(site) -> int`` counts this server's archives waiting for S3."""
    at = at or datetime.now(timezone.utc)
    data = read_catalog(settings.db_path, at if as_of else None)
    keys = [(settings.server_id, name) for name in enabled_sites]
    forgotten = (at - FORGOTTEN_AFTER).strftime(TIME)
    for key, rows in sorted(data["attempts"].items()):
        if key[0] != settings.server_id and key not in keys and (rows[0]["timestamp"] or "") >= forgotten:
            keys.append(key)
    servers: dict[str, ServerHealth] = {}
    activity: dict[str, str] = {}
    for (server, _site), rows in data["attempts"].items():
        activity[server] = max(activity.get(server, ""), rows[0]["timestamp"] or "")
    limit = (at - timedelta(hours=settings.backup_max_age_hours)).strftime(TIME)
    for server in [settings.server_id, *sorted(set(activity) - {settings.server_id})]:
        last = activity.get(server)
        if server != settings.server_id and (last or "") < forgotten:
            continue  # silent for longer than FORGOTTEN_AFTER: taken as retired (it was flagged all that time)
        servers[server] = ServerHealth(server, last, silent=server != settings.server_id and (last or "") < limit)
    for server, site in keys:
        health = site_health(settings, data, server, site, at)
        if server == settings.server_id and not_uploaded is not None:
            health.not_uploaded = not_uploaded(site)
        servers[server].sites.append(health)
    if not servers[settings.server_id].sites and settings.server_id not in activity:
        del servers[settings.server_id]  # nothing configured and nothing recorded here
    return FleetHealth(at, settings.backup_max_age_hours, list(servers.values()))
