"""`report`: the daily fleet report, by email (or into BACKUP_DIR/reports/ without SMTP_HOST).

    doit report [--date YYYY-MM-DD] [--force]

    D1 sync (fresh rows of the whole fleet) -> build (wpbackup/fleet/report.py) -> claim the
    date (wpbackup/fleet/daily.py: once per day, once per fleet with D1) -> send -> mark sent
    -> alerts for sites that went stale (NOTIFY_URLS)

Sending is marked only after the mail server accepted the message: a mail server that is down
or refuses the login leaves the date unclaimed, so the next run (or another server) sends it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from doit.exceptions import TaskFailed

from wpbackup.backup import lock
from wpbackup.errors import BackupError
from wpbackup.fleet import notify

from .catalog_sync import run_sync
from .context import CONTEXT

if TYPE_CHECKING:  # the report's code (jinja2, smtplib) is imported by the actions that use it
    from wpbackup.fleet import daily
    from wpbackup.fleet.report import Report


def _fresh_rows() -> str | None:
    """Sync with D1 first so that the report sees every server's latest rows; a backup run
    holding the lock is left alone (the report then says what it could not refresh)."""
    settings = CONTEXT.settings
    if not settings.d1_enabled:
        return None
    path = settings.state_dir / ".wpbackup.lock"
    try:
        lock.acquire(path)
    except BackupError:
        return "a backup run is in progress on this server: the catalog was not synced with D1 first"
    try:
        outcome = run_sync()
    finally:
        lock.release(path)
    if outcome["state"] == "failed":
        return f"D1 sync before the report failed ({outcome['message']}): other servers' rows may be missing"
    return None


@dataclass
class Sending:
    """What became of the report: whether this run holds the day (then the day's stale alerts
    are its to send, also when the mail server failed), what to print, and whether it failed."""

    owner: bool
    message: str
    failed: bool = False


def _deliver(report: Report, mail_message, claim: daily.Claim) -> Sending:
    """Hand the message to the mail server; mark the date sent once it took it."""
    from wpbackup.fleet import mail

    date = report.window.date
    try:
        how = mail.deliver(CONTEXT.settings, mail_message)
    except mail.PartlySent as exc:  # out to some: the day's report counts as sent
        _mark_sent(report, claim)
        return Sending(True, f"report for {date} sent only in part: {exc}; it is marked sent", failed=True)
    except BackupError as exc:
        claim.release()
        also = f" ({claim.warning})" if claim.warning else ""
        return Sending(True, f"report for {date} not sent: {exc}; nothing was marked sent, the next "
                             f"`doit report` sends it{also}", failed=True)
    _mark_sent(report, claim)
    done = f"report for {date} {how}"
    return Sending(True, f"{done}\nwarning: {claim.warning}" if claim.warning else done)


def _mark_sent(report: Report, claim: daily.Claim) -> None:
    try:
        claim.sent(report.backups_in_window)
    except BackupError as exc:  # the mail is out: say what could not be recorded, do not fail
        claim.warning = f"{claim.warning}; {exc}" if claim.warning else str(exc)


def _send(report: Report, force: bool) -> Sending:
    """Claim the date, deliver, mark it sent; or write the files without SMTP_HOST."""
    from wpbackup.fleet import daily, mail
    from wpbackup.fleet.report import message, render

    settings = CONTEXT.settings
    text, html = render(report)
    mail_message = message(settings, report, text, html)
    if not settings.value("SMTP_HOST"):
        eml, page = mail.save(settings, mail_message, html, report.window.date)
        return Sending(True, f"report for {report.window.date} written (SMTP_HOST is not set): {eml} and {page}")
    claim = daily.claim(settings, report.window.date, force)
    if isinstance(claim, str):  # sent already (or being sent by another server)
        return Sending(False, claim)
    return _deliver(report, mail_message, claim)


def report_action(date: str, force: bool):
    """Build and send the report; alert on sites that went stale."""
    from wpbackup.fleet.report import build_report

    settings = CONTEXT.settings
    note = _fresh_rows()
    if note:
        print(f"warning: {note}")
    try:
        report = build_report(settings, [site.name for site in CONTEXT.enabled], date or None)
        print(report.subject)
        outcome = _send(report, force)
    except BackupError as exc:
        return TaskFailed(str(exc))
    if not outcome.failed:
        print(outcome.message)
    # the run that holds the day also sends its stale alerts (about now: not for a past --date)
    if outcome.owner and not date:
        notify.send_alerts(settings, notify.stale_alerts(settings, report.health))
    return TaskFailed(outcome.message) if outcome.failed else True


def task_report():
    """Build and send the daily fleet report (once a day; --force resends, --date YYYY-MM-DD)."""
    return {
        "actions": [report_action],
        "params": [
            {"name": "date", "long": "date", "type": str, "default": "",
             "help": "the UTC day to report on, YYYY-MM-DD (default: the 24 hours to now)"},
            {"name": "force", "long": "force", "type": bool, "default": False,
             "help": "send again even when the report for this date was already sent"},
        ],
        "uptodate": [False],
        "verbosity": 2,
    }
