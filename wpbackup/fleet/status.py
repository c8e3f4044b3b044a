"""`doit status`: the fleet's health (wpbackup/fleet/health.py) as a table for people or as
JSON for machines (Nagios-style checks, cron), with the same verdicts as the daily report.

Per server and site: the last successful backup, its age, size, where it is stored, how many
of this server's local archives still wait for their upload (S3 mode), and the state: OK,
FAILED (with the error), INCOMPLETE, STALE / NO BACKUP, CLOCK?. With the D1 sync on, the other
servers' sites are listed too (their rows are pulled into the local catalog).
"""

from __future__ import annotations

import json
from datetime import datetime

from wpbackup.config.settings import Settings
from wpbackup.config.sites import Site
from wpbackup.console import human_bytes
from wpbackup.fleet.health import FleetHealth, SiteHealth, fleet_health, parse_time
from wpbackup.retention.local import waiting_uploads

#: SiteHealth fields holding catalog times, given to machines as ISO 8601 UTC
TIME_FIELDS = ("last_success", "archive_time", "last_verified", "last_restore_test", "last_failure",
               "last_attempt")


def current_health(settings: Settings, sites: list[Site], at: datetime | None = None) -> FleetHealth:
    """The fleet as of ``at`` (default now), with this server's uploads still waiting."""
    waiting = (lambda name: len(waiting_uploads(settings, name))) if settings.s3_enabled else None
    return fleet_health(settings, [site.name for site in sites if site.enabled], at, waiting)


def state_text(site: SiteHealth, max_age: float) -> str:
    """The STATE column: the verdict and, when not OK, the one thing to know about it."""
    if site.verdict == "FAILED":
        when = f" {site.last_failure}" if site.last_failure else ""
        return f"FAILED{when}: {site.reason}"
    if site.verdict == "INCOMPLETE":
        return f"INCOMPLETE ({site.incomplete} unreadable) in {site.archive}"
    if site.verdict == "STALE":
        if site.last_success is None:  # never complete: none at all, or only an old incomplete one
            return f"STALE: {site.reason}" if site.archive else "NO BACKUP"
        return f"STALE (>{max_age:g}h)"
    if site.verdict == "CLOCK":
        return "CLOCK? (last stamp in the future)"
    if site.shrunk:
        return f"OK, but {-site.change:.0%} smaller than the previous archive"
    return "OK"


def status_lines(settings: Settings, sites: list[Site], now: datetime | None = None) -> tuple[list[str], bool]:
    """The status table and whether every site is OK (what the exit status says)."""
    health = current_health(settings, sites, now)
    rows = [("SERVER", "SITE", "LAST SUCCESS (UTC)", "AGE", "SIZE", "STORED", "NOT UPLOADED", "STATE")]
    for server in health.servers:
        if server.silent:
            rows.append((server.server, "*", server.last_activity or "never", "-", "-", "-", "-",
                         f"SILENT: no backup run for more than {health.max_age_hours:g}h"))
        for site in server.sites:
            age = f"{site.age_hours:.1f}h" if site.age_hours is not None else "-"
            size = human_bytes(site.size) if site.size is not None and site.last_success else "-"
            stored = " + ".join(site.stored) or ("nowhere (deleted?)" if site.last_success else "-")
            waiting = str(site.not_uploaded) if site.not_uploaded is not None else "-"
            rows.append((site.server, site.site, site.last_success or "never", age, size, stored, waiting,
                         state_text(site, health.max_age_hours)))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
    return lines, health.healthy


def _iso(text: str | None) -> str | None:
    moment = parse_time(text)
    return moment.strftime("%Y-%m-%dT%H:%M:%SZ") if moment else None


def status_json(settings: Settings, sites: list[Site], now: datetime | None = None) -> tuple[str, bool]:
    """One JSON document: one object per server and one per (server, site), verdicts included."""
    health = current_health(settings, sites, now)
    site_objects = []
    for site in health.sites:
        data = site.as_dict()
        data.update({name: _iso(data[name]) for name in TIME_FIELDS})
        data["state"] = state_text(site, health.max_age_hours)
        if site.age_hours is not None:
            data["age_hours"] = round(site.age_hours, 3)
        if site.change is not None:
            data["change"] = round(site.change, 4)
        site_objects.append(data)
    document = {
        "server_id": settings.server_id,
        "at": health.at.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "max_age_hours": health.max_age_hours,
        "healthy": health.healthy,
        "servers": [{"server": s.server, "last_activity": _iso(s.last_activity), "silent": s.silent,
                     "sites": len(s.sites), "failing": sum(site.verdict != "OK" for site in s.sites)}
                    for s in health.servers],
        "sites": site_objects,
    }
    return json.dumps(document, indent=2), health.healthy
