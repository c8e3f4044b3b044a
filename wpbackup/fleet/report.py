"""The daily fleet report: what needs action first, then every server and site.

    window (the 24 hours to now, or --date's UTC day) + catalog --> Report --> subject, text, HTML

Built from the local catalog, which holds every server's rows once the D1 sync is on. The
verdicts are wpbackup/fleet/health.py's, as of the window's end, so the email and
`doit status` never disagree. A day without any backup run is a failure with its own line:
silence must never read as a quiet night. The text and HTML parts come from the Jinja2
templates in templates/ (inline styles, no scripts, no remote images).
"""

from __future__ import annotations

import socket
import sqlite3
from contextlib import closing
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from markupsafe import Markup, escape

from wpbackup import __version__
from wpbackup.config.settings import PROJECT_DIR, Settings
from wpbackup.console import human_bytes
from wpbackup.errors import BackupError
from wpbackup.fleet import catalog
from wpbackup.fleet.health import TIME, FleetHealth, SiteHealth, fleet_health, parse_time

TEMPLATES = PROJECT_DIR / "templates"
SUBJECT_NAMES = 4  # site names spelled out in the subject before "+N more"
EARLIEST_YEAR = 2000  # --date before this is a typo, not a report


@dataclass
class Window:
    """The stretch of time a report covers, and the date it counts as (once per date)."""

    start: datetime
    end: datetime
    date: str
    day: bool = False  # --date: a UTC calendar day, not the 24 hours to now

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    def described(self) -> str:
        """'in the 24 hours to 2026-12-01 08:00 UTC' or 'on 2026-11-28 (UTC)'."""
        if self.day:
            return f"on {self.date} (UTC{', up to now' if self.hours < 24 else ''})"
        return f"in the {self.hours:.0f} hours to {self.end:%Y-%m-%d %H:%M} UTC"


def window_for(date: str | None, now: datetime | None = None) -> Window:
    """No date: the 24 hours to now, counted as today's (UTC) report. A date: that UTC day,
    up to now when it is today; a day still to come is refused."""
    now = now or datetime.now(timezone.utc)
    if not date:
        return Window(now - timedelta(hours=24), now, now.strftime("%Y-%m-%d"))
    try:
        day = datetime.strptime(date, "%Y-%m-%d").replace(tzinfo=timezone.utc)
    except ValueError:
        day = None
    if day is None or f"{day.year:04d}-{day.month:02d}-{day.day:02d}" != date:  # strptime takes 2026-2-3 too
        raise BackupError(f"--date {date!r}: expected a date as YYYY-MM-DD, e.g. {now:%Y-%m-%d}")
    if day > now:
        raise BackupError(f"--date {date}: that day has not begun yet (now {now:%Y-%m-%d %H:%M} UTC)")
    if day.year < EARLIEST_YEAR:
        raise BackupError(f"--date {date}: before {EARLIEST_YEAR}, no backup of this tool can exist")
    return Window(day, min(day + timedelta(days=1), now), date, day=True)


@dataclass
class Action:
    """One line of "needs action": what, where, and how bad."""

    kind: str        # failed, incomplete, stale, clock, silent, verify, shrunk, no-backup
    server: str
    site: str | None
    text: str


@dataclass
class Report:
    window: Window
    built_by: str
    health: FleetHealth
    actions: list[Action]
    verdict: str                                  # OK, FAILED, STALE or WARNING
    subject: str
    backups_in_window: int                        # successful backups (daily_emails.backup_count)
    attempts_in_window: int
    totals: dict[str, object] = field(default_factory=dict)


def _in_window(db_path, window: Window) -> tuple[int, int, list[sqlite3.Row]]:
    """Successful backups and backup-run rows in the window, and its failed verifications that
    no later check of the same archive passed."""
    if not db_path.exists():
        return 0, 0, []
    start, end = window.start.strftime(TIME), window.end.strftime(TIME)
    with closing(catalog.connect(db_path)) as conn:
        done = conn.execute("SELECT COUNT(*) FROM backup_log WHERE status = 'SUCCESS' AND archive_name IS NOT NULL "
                            "AND timestamp > ? AND timestamp <= ?", (start, end)).fetchone()[0]
        tried = conn.execute("SELECT COUNT(*) FROM backup_log WHERE run_stamp IS NOT NULL "
                             "AND timestamp > ? AND timestamp <= ?", (start, end)).fetchone()[0]
        failed = conn.execute(
            "SELECT b.* FROM backup_log b WHERE b.timestamp > ? AND b.timestamp <= ? AND b.archive_name IS NOT NULL "
            "AND 0 IN (COALESCE(b.verified_local, 1), COALESCE(b.verified_s3, 1), COALESCE(b.restore_tested, 1)) "
            "AND NOT EXISTS (SELECT 1 FROM backup_log x WHERE x.archive_name = b.archive_name "
            "  AND x.server_id = b.server_id AND x.timestamp <= ? AND (x.timestamp, x.id) > (b.timestamp, b.id) "
            "  AND (x.verified_local = 1 OR x.verified_s3 = 1) "
            "  AND 0 NOT IN (COALESCE(x.verified_local, 1), COALESCE(x.verified_s3, 1))) "
            "ORDER BY b.timestamp", (start, end, end)).fetchall()
    return done, tried, failed


def _stored_totals(settings: Settings, health: FleetHealth) -> dict[str, object]:
    """Servers, sites, archives and bytes stored (S3 copies the catalog knows, and this
    server's local archives)."""
    totals: dict[str, object] = {"servers": len(health.servers), "sites": len(health.sites)}
    s3_count = s3_bytes = 0
    if settings.db_path.exists():
        with closing(catalog.connect(settings.db_path)) as conn:
            s3_count, s3_bytes = conn.execute("SELECT COUNT(*), COALESCE(SUM(file_size), 0) FROM s3_archives "
                                              "WHERE deleted_at IS NULL").fetchone()
    local = [p.stat().st_size for p in settings.backup_dir.glob("*.tar.zst")] if settings.backup_dir.is_dir() else []
    totals.update(s3_archives=s3_count, s3_bytes=s3_bytes, local_archives=len(local), local_bytes=sum(local))
    return totals


def _site_label(site: SiteHealth, many_servers: bool) -> str:
    return f"{site.server}/{site.site}" if many_servers else site.site


def _actions(health: FleetHealth, window: Window, attempts: int, verify_failures: list[sqlite3.Row]) -> list[Action]:
    """What needs action, worst first."""
    actions: list[Action] = []
    if attempts == 0:
        actions.append(Action("no-backup", "", None, f"no backup ran {window.described()}, on any server"))
    kinds = {"FAILED": "failed", "INCOMPLETE": "incomplete", "CLOCK": "clock"}
    for verdict in ("FAILED", "INCOMPLETE", "CLOCK"):
        for site in health.sites:
            if site.verdict == verdict:
                actions.append(Action(kinds[verdict], site.server, site.site, site.reason))
    for server in health.servers:
        if server.silent:
            last = f"last activity {server.last_activity[:16]} UTC" if server.last_activity else "never active"
            actions.append(Action("silent", server.server, None, f"server went silent: no backup run for more "
                                                                  f"than {health.max_age_hours:g}h ({last})"))
    actions += [Action("stale", site.server, site.site, site.reason) for site in health.sites
                if site.verdict == "STALE"]
    # a site FAILED by its verify already says so; one FAILED by its last attempt does not
    flagged = {(s.server, s.site) for s in health.sites if s.verdict == "FAILED" and not s.last_failure}
    for row in verify_failures:
        if (row["server_id"], row["site_name"]) not in flagged:
            details = " ".join((row["details"] or "").split())
            actions.append(Action("verify", row["server_id"], row["site_name"],
                                  f"verify failed at {row['timestamp']} UTC: {details}"))
    for site in health.sites:
        if site.shrunk:
            actions.append(Action("shrunk", site.server, site.site,
                                  f"archive {-site.change:.0%} smaller than the previous one "
                                  f"({human_bytes(site.previous_size)} -> {human_bytes(site.size)})"))
    return actions


def _names(labels: list[str]) -> str:
    shown = labels[:SUBJECT_NAMES]
    more = f" +{len(labels) - len(shown)} more" if len(labels) > len(shown) else ""
    return ", ".join(shown) + more


def _subject(health: FleetHealth, actions: list[Action], window: Window) -> tuple[str, str]:
    """The verdict and a subject that leads with it, so that mail filters can act on it."""
    many = len(health.servers) > 1
    total = len(health.sites)

    def labels(*kinds: str) -> list[str]:
        out = []
        for a in actions:
            label = f"{a.server}/{a.site}" if many and a.site else (a.site or a.server)
            if a.kind in kinds and label not in out:
                out.append(label)
        return out

    failed, stale = labels("failed", "incomplete", "clock", "verify"), labels("stale")
    silent, shrunk = labels("silent"), labels("shrunk")
    extra = [f"stale: {_names(stale)}" if stale and failed else "",
             f"silent: {_names(silent)}" if silent else "", f"shrunk: {_names(shrunk)}" if shrunk else ""]
    tail = "".join(f"; {part}" for part in extra if part)
    if any(a.kind == "no-backup" for a in actions):
        return "FAILED", f"[FAILED] no backup ran {window.described()}"
    if failed:
        return "FAILED", f"[FAILED] {len(failed)} of {total} sites: {_names(failed)}{tail}"
    ok = sum(site.verdict == "OK" for site in health.sites)
    if stale:
        return "STALE", f"[STALE] {len(stale)} of {total} sites: {_names(stale)}{tail}"
    if silent:
        others = "".join(f"; {part}" for part in extra[2:] if part)
        return "STALE", f"[STALE] silent: {_names(silent)}; {ok} of {total} sites backed up{others}"
    if shrunk:
        return "WARNING", f"[WARNING] {ok} of {total} sites backed up{tail}"
    return "OK", f"[OK] {ok} of {total} sites backed up"


def build_report(settings: Settings, enabled_sites: list[str], date: str | None = None,
                 now: datetime | None = None) -> Report:
    """The report for ``date`` (default: the 24 hours to now), the fleet as of its end."""
    window = window_for(date, now)
    health = fleet_health(settings, enabled_sites, window.end, as_of=window.day)
    done, tried, verify_failures = _in_window(settings.db_path, window)
    actions = _actions(health, window, tried, verify_failures)
    verdict, subject = _subject(health, actions, window)
    return Report(window, settings.server_id, health, actions, verdict, subject, done, tried,
                  _stored_totals(settings, health))


# --- rendering ---------------------------------------------------------------------------

def _when(text: str | datetime | None) -> str:
    """UTC, with this install's local time beside it when that differs."""
    moment = parse_time(text) if isinstance(text, str) or text is None else text
    if moment is None:
        return "never"
    local = moment.astimezone()
    utc = f"{moment:%Y-%m-%d %H:%M} UTC"
    if local.utcoffset() == timedelta(0):
        return utc
    return f"{utc} ({local:%H:%M} {local.tzname() or local.strftime('%z')})" if local.date() == moment.date() \
        else f"{utc} ({local:%Y-%m-%d %H:%M} {local.tzname() or local.strftime('%z')})"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, seconds = divmod(seconds, 60)
    return f"{minutes}m {seconds:02d}s" if minutes < 60 else f"{minutes // 60}h {minutes % 60:02d}m"


def _change(site: SiteHealth) -> str:
    if site.change is None:
        return ""
    return f"{site.change:+.0%}" if abs(site.change) >= 0.005 else "±0%"


def _breakable(text: str) -> Markup:
    """A long key that may wrap after each '/', never inside a name."""
    return Markup(str(escape(text)).replace("/", "/<wbr>"))


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(str(TEMPLATES)), undefined=StrictUndefined,
                      autoescape=select_autoescape(["html", "html.j2"]), trim_blocks=True, lstrip_blocks=True,
                      keep_trailing_newline=True)
    env.filters.update(when=_when, size=lambda n: "-" if n is None else human_bytes(n), duration=_duration,
                       breakable=_breakable)
    return env


def render(report: Report) -> tuple[str, str]:
    """The plain-text and HTML parts."""
    env = _environment()
    many = len(report.health.servers) > 1
    context = {"report": report, "many_servers": many, "version": __version__, "change": _change,
               "label": lambda site: _site_label(site, many)}
    return (env.get_template("report.txt.j2").render(**context),
            env.get_template("report.html.j2").render(**context))


def message(settings: Settings, report: Report, text: str, html: str) -> EmailMessage:
    """The email: text and HTML alternatives, to every REPORT_TO recipient."""
    mail = EmailMessage()
    mail["Subject"] = report.subject
    login = str(settings.value("SMTP_USERNAME") or "")
    sender = settings.value("REPORT_FROM") or (login if "@" in login else f"wordpress-backup@{socket.getfqdn()}")
    mail["From"] = sender
    mail["To"] = ", ".join(settings.value("REPORT_TO") or ())
    mail["Date"] = formatdate(usegmt=True)
    mail["Message-ID"] = make_msgid(domain=sender.rsplit("@", 1)[-1].strip(">"))
    mail["X-Wordpress-Backup-Verdict"] = report.verdict
    mail.set_content(text)
    mail.add_alternative(html, subtype="html")
    return mail
