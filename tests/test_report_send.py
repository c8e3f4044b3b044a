"""`doit report` end to end, as the report timer runs it: real backups of a real WordPress,
real SMTP servers (plain, STARTTLS with login, implicit TLS), the D1 test server for a fleet.
Once a day, resent with --force, nothing marked sent when the mail server is down or refuses
the login, one email for a fleet whose servers all fire, and no secret anywhere."""

from __future__ import annotations

import sqlite3
import subprocess
from datetime import datetime, timedelta
from html.parser import HTMLParser

import pytest

from .conftest import Install
from .smtp import PASSWORD

RECIPIENTS = "ops@example.test, owner@example.test"


def _out(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def _mailing(install: Install, server, **extra) -> Install:
    install.env.update(server.env(), REPORT_TO=RECIPIENTS, REPORT_FROM="backups@example.test", **extra)
    return install


def _aged(install: Install, hours: int = 2) -> Install:
    """Every catalog row moved ``hours`` into the past, so BACKUP_MAX_AGE_HOURS=1 makes the
    backups stale whatever the speed of the machine (or a step of its clock)."""
    conn = sqlite3.connect(install.db_path)
    with conn:
        rows = conn.execute("SELECT id, timestamp, run_stamp FROM backup_log").fetchall()
        for row_id, timestamp, stamp in rows:
            moved = [datetime.strptime(value, form) - timedelta(hours=hours) if value else None
                     for value, form in ((timestamp, "%Y-%m-%d %H:%M:%S"), (stamp, "%Y%m%d-%H%M%S"))]
            conn.execute("UPDATE backup_log SET timestamp = ?, run_stamp = ? WHERE id = ?",
                         (moved[0].strftime("%Y-%m-%d %H:%M:%S") if moved[0] else None,
                          moved[1].strftime("%Y%m%d-%H%M%S") if moved[1] else None, row_id))
    conn.close()
    return install


def _sent_rows(install: Install) -> list[sqlite3.Row]:
    return install.rows("SELECT * FROM daily_emails WHERE email_sent = 1")


def _parts(message) -> dict[str, str]:
    return {part.get_content_type(): part.get_content() for part in message.walk()
            if part.get_content_type() in ("text/plain", "text/html")}


class _Text(HTMLParser):
    def __init__(self):
        super().__init__()
        self.words: list[str] = []

    def handle_data(self, data):
        self.words.append(data)


@pytest.fixture
def backed_up(install, wordpress):
    """An install whose two sites were backed up once (local-only)."""
    install.add_site("blog", wordpress)
    install.add_site("shop", wordpress)
    result = install.doit("backup")
    assert result.returncode == 0, _out(result)
    return install


@pytest.mark.parametrize("security", ["starttls", "ssl", "none"])
def test_the_report_reaches_every_recipient_with_both_parts(backed_up, smtp, security):
    server = smtp.by_security(security)
    _mailing(backed_up, server)
    result = backed_up.doit("report")
    assert result.returncode == 0, _out(result)
    [received] = server.messages
    assert sorted(received.rcpt_tos) == ["ops@example.test", "owner@example.test"]
    assert received.tls == (security != "none") and received.authenticated == (security != "none")
    message = received.parsed()
    assert message["Subject"] == "[OK] 2 of 2 sites backed up"
    parts = _parts(message)
    assert set(parts) == {"text/plain", "text/html"}
    page = _Text()
    page.feed(parts["text/html"])
    words = " ".join(page.words)
    assert "blog" in words and "shop" in words and "web-1" in words
    assert "blog" in parts["text/plain"] and "Nothing needs action" in parts["text/plain"]
    assert len(_sent_rows(backed_up)) == 1 and _sent_rows(backed_up)[0]["backup_count"] == 2
    assert PASSWORD not in _out(result) + received.raw.decode(errors="replace")


def test_once_a_day_and_force_sends_again(backed_up, smtp):
    _mailing(backed_up, smtp.plain)
    assert backed_up.doit("report").returncode == 0
    again = backed_up.doit("report")
    assert again.returncode == 0, _out(again)
    assert "already sent" in _out(again) and len(smtp.plain.messages) == 1
    forced = backed_up.doit("report", "--force")
    assert forced.returncode == 0, _out(forced)
    assert len(smtp.plain.messages) == 2


def test_a_down_mail_server_or_a_refused_login_marks_nothing_sent(backed_up, smtp):
    from .servers import free_port

    _mailing(backed_up, smtp.plain, SMTP_PORT=str(free_port()))  # nothing listens there
    down = backed_up.doit("report")
    assert down.returncode != 0 and "not sent" in _out(down) and "nothing was marked sent" in _out(down)
    assert _sent_rows(backed_up) == []

    _mailing(backed_up, smtp.starttls, SMTP_PASSWORD="wrong-" + PASSWORD)
    refused = backed_up.doit("report")
    assert refused.returncode != 0 and "login" in _out(refused).lower(), _out(refused)
    assert PASSWORD not in _out(refused) and _sent_rows(backed_up) == []
    assert smtp.messages() == []

    _mailing(backed_up, smtp.starttls)  # fixed: the next run sends
    fixed = backed_up.doit("report")
    assert fixed.returncode == 0, _out(fixed)
    assert len(smtp.starttls.messages) == 1 and len(_sent_rows(backed_up)) == 1


def test_a_day_without_any_backup_sends_a_failure_report(install, wordpress, smtp):
    install.add_site("blog", wordpress)
    _mailing(install, smtp.plain)
    result = install.doit("report")  # the backup timer never ran
    assert result.returncode == 0, _out(result)
    [received] = smtp.plain.messages
    subject = received.parsed()["Subject"]
    assert subject.startswith("[FAILED] no backup ran in the 24 hours"), subject
    assert "blog" in _parts(received.parsed())["text/plain"]


def test_a_failed_site_leads_the_subject_and_no_secret_is_anywhere(backed_up, smtp):
    backed_up.sites[1]["db"] = {"password": "not-the-password-42"}  # shop's password was changed
    failed = backed_up.doit("backup")
    assert failed.returncode != 0
    _mailing(backed_up, smtp.plain)
    assert backed_up.doit("report").returncode == 0
    message = smtp.plain.messages[0].parsed()
    assert message["Subject"].startswith("[FAILED] 1 of 2 sites: shop")
    text = _parts(message)["text/plain"]
    assert text.index("[FAILED] web-1/shop") < text.index("SERVER web-1") and "login refused" in text
    raw = smtp.plain.messages[0].raw
    for secret in (b"not-the-password-42", PASSWORD.encode(), b"S3cr3t-Pa55word!xyz"):
        assert secret not in raw and secret not in backed_up.db_path.read_bytes()


def test_without_smtp_host_the_report_is_written_under_backup_dir(backed_up):
    result = backed_up.doit("report")
    assert result.returncode == 0, _out(result)
    reports = backed_up.backup_dir / "reports"
    eml, html = sorted(reports.glob("*.eml")), sorted(reports.glob("*.html"))
    assert len(eml) == 1 and len(html) == 1
    assert str(eml[0]) in result.stdout and str(html[0]) in result.stdout
    assert "[OK] 2 of 2 sites backed up" in eml[0].read_text()
    assert (eml[0].stat().st_mode & 0o777) == 0o600


def test_two_servers_sharing_d1_send_one_email_covering_both(install, tmp_path, wordpress, smtp, d1):
    servers = []
    for name, site, root in (("web-1", "blog", install.root), ("web-2", "shop", tmp_path / "server2")):
        server = install if name == "web-1" else Install(root)
        server.root.mkdir(parents=True, exist_ok=True)
        server.env.update(SERVER_ID=name, **d1.env())
        server.add_site(site, wordpress)
        result = server.doit("backup")
        assert result.returncode == 0, _out(result)
        servers.append(_mailing(server, smtp.plain))
    for server in servers:  # both timers fire at once
        server.write()
    running = [subprocess.Popen(s.command("report"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                env=s.process_env(), cwd=s.root) for s in servers]
    outputs = [proc.communicate(timeout=120)[0] for proc in running]
    assert [proc.returncode for proc in running] == [0, 0], outputs
    [received] = smtp.plain.messages
    text = _parts(received.parsed())["text/plain"]
    assert "SERVER web-1" in text and "SERVER web-2" in text and "blog" in text and "shop" in text
    assert received.parsed()["Subject"] == "[OK] 2 of 2 sites backed up"
    assert sum("already sent" in out or "being sent" in out for out in outputs) == 1, outputs
    token = d1.env()["D1_API_TOKEN"]
    assert all(token not in out for out in outputs) and token not in received.raw.decode(errors="replace")


def test_the_report_sends_the_stale_alerts_once(backed_up, smtp):
    from .test_alerts import Hooks

    hooks = Hooks()
    try:
        _mailing(_aged(backed_up), smtp.plain, NOTIFY_URLS=hooks.url(), BACKUP_MAX_AGE_HOURS="1")
        result = backed_up.doit("report")
        assert result.returncode == 0, _out(result)
        assert smtp.plain.messages[0].parsed()["Subject"].startswith("[STALE] 2 of 2 sites: blog, shop")
        assert sorted(hooks.titles()) == ["[STALE] web-1/blog: no recent backup",
                                          "[STALE] web-1/shop: no recent backup"]
        forced = backed_up.doit("report", "--force")  # the same episode: no second alert
        assert forced.returncode == 0 and len(smtp.plain.messages) == 2 and len(hooks.titles()) == 2
    finally:
        hooks.stop()


def test_stale_alerts_go_out_even_when_the_mail_server_is_down_but_not_for_a_past_date(backed_up, smtp):
    from .servers import free_port
    from .test_alerts import Hooks

    hooks = Hooks()
    try:
        _mailing(_aged(backed_up), smtp.plain, NOTIFY_URLS=hooks.url(), BACKUP_MAX_AGE_HOURS="1")
        yesterday = backed_up.doit("report", "--date", "2020-01-01")
        assert yesterday.returncode == 0, _out(yesterday)
        assert hooks.titles() == []  # a past day's report says nothing about now
        backed_up.env["SMTP_PORT"] = str(free_port())  # the mail server is down
        down = backed_up.doit("report")
        assert down.returncode != 0 and "nothing was marked sent" in _out(down)
        assert len(hooks.titles()) == 2  # when mail is broken, the alerts matter most
    finally:
        hooks.stop()


def test_a_refused_recipient_among_accepted_ones_marks_the_day_sent_and_fails(backed_up, smtp):
    _mailing(backed_up, smtp.plain)
    smtp.plain.refuse.add("owner@example.test")
    result = backed_up.doit("report")
    assert result.returncode != 0 and "owner@example.test" in _out(result) and "marked sent" in _out(result)
    assert [m.rcpt_tos for m in smtp.plain.messages] == [["ops@example.test"]]
    again = backed_up.doit("report")  # ops is not mailed again and again
    assert again.returncode == 0 and "already sent" in _out(again) and len(smtp.plain.messages) == 1


@pytest.mark.parametrize("setup, args, expected", [
    (None, ("--date", "2026-2-3"), "expected a date as YYYY-MM-DD"),
    (None, ("--date", "0001-01-01"), "no backup of this tool can exist"),
    ("reports-is-a-file", (), "reports"),
    ("corrupt-catalog", (), "cannot be read as the catalog"),
])
def test_report_errors_are_one_clear_line(install, wordpress, setup, args, expected):
    install.add_site("blog", wordpress)
    install.write()
    if setup == "reports-is-a-file":
        install.backup_dir.mkdir()
        (install.backup_dir / "reports").write_text("not a folder")
    if setup == "corrupt-catalog":
        install.db_path.write_text("garbage, not SQLite")
    result = install.doit("report", *args)
    assert result.returncode != 0 and expected in _out(result), _out(result)
    assert "Traceback" not in _out(result)
    if setup == "corrupt-catalog":
        status = install.doit("status", "--json")
        assert status.returncode != 0 and status.stdout == "" and "cannot be read as the catalog" in status.stderr
        assert "Traceback" not in status.stderr
