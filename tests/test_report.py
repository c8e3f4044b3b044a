"""The daily report's content: what needs action comes first and leads the subject, every
server and site appears, a day without backups is a failure, and the HTML is what a mail
client can show (parsed here, and rendered by a real browser: headless Chromium)."""

from __future__ import annotations

import shutil
import subprocess
from contextlib import closing
from datetime import datetime, timedelta, timezone
from html.parser import HTMLParser
from pathlib import Path

import pytest

from wpbackup.config.settings import load_settings
from wpbackup.errors import BackupError
from wpbackup.fleet import catalog
from wpbackup.fleet.report import build_report, render, window_for

from .conftest import need
from .fleet_sample import backup, render_png, sample_install

NOW = datetime(2026, 11, 30, 8, 0, 0, tzinfo=timezone.utc)
SITES = ["blog", "shop", "news"]


def _settings(env: Path, **extra):
    return load_settings({"WPBACKUP_ENV": str(env), **extra})


@pytest.fixture
def sample(tmp_path):
    return _settings(sample_install(tmp_path / "install", NOW))


class Page(HTMLParser):
    """Collects the tags and text of a page, and checks that it nests as written."""

    VOID = {"meta", "br", "wbr", "img", "hr", "input", "link"}

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self.errors: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"</{tag}> closes {self.stack[-1:] or 'nothing'}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    assert page.errors == [] and page.stack == [], (page.errors, page.stack)
    return page


def test_what_needs_action_leads_the_subject_and_the_body(sample):
    report = build_report(sample, SITES, now=NOW)
    assert report.verdict == "FAILED"
    assert report.subject.startswith("[FAILED] 1 of 6 sites: web-1/shop")
    for part in ("stale: web-3/portfolio", "silent: web-3", "shrunk: web-2/wiki"):
        assert part in report.subject
    kinds = [(a.kind, a.server, a.site) for a in report.actions]
    assert kinds == [("failed", "web-1", "shop"), ("silent", "web-3", None), ("stale", "web-3", "portfolio"),
                     ("shrunk", "web-2", "wiki")]
    shrunk = report.actions[-1].text
    assert "65% smaller" in shrunk and "690.0 MiB -> 241.0 MiB" in shrunk
    assert "AccessDenied (403)" in report.actions[0].text
    text, html = render(report)
    top = text.index("NEEDS ACTION")
    assert top < text.index("SERVER web-1") and text.index("[FAILED] web-1/shop") < text.index("SERVER web-1")
    page = _parse(html)
    words = " ".join(page.text)
    for site in ("blog", "shop", "news", "forum", "wiki", "portfolio"):
        assert site in words
    assert words.index("Needs action") < words.index("Server web-1")
    assert "s3://fleet-backups/web-1/" in text and "SILENT since" in text
    assert report.totals == {"servers": 3, "sites": 6, "s3_archives": 17, "s3_bytes": report.totals["s3_bytes"],
                             "local_archives": 0, "local_bytes": 0}


def test_the_html_is_safe_for_mail_clients(sample):
    _text, html = render(build_report(sample, SITES, now=NOW))
    page = _parse(html)
    names = {tag for tag, _ in page.tags}
    assert not names & {"script", "style", "img", "link", "iframe", "object", "form"}
    assert all(not name.startswith("on") for _, attrs in page.tags for name in attrs)
    assert "http://" not in html and "https://" not in html.replace("https://s3.example.com", "")
    assert any("style" in attrs for tag, attrs in page.tags if tag == "td")


def test_a_site_name_cannot_inject_markup(tmp_path):
    env = tmp_path / "install" / ".env"
    env.parent.mkdir()
    env.write_text("SERVER_ID=web-1\n")
    with closing(catalog.connect(env.parent / "backups.db")) as conn, conn:
        backup(conn, "web-9", "<b>x</b>", NOW - timedelta(hours=3), 1000)
    _text, html = render(build_report(_settings(env), [], now=NOW))
    assert "<b>x</b>" not in html and "&lt;b&gt;x&lt;/b&gt;" in html


def test_all_good_says_ok_with_the_count(tmp_path):
    env = tmp_path / "install" / ".env"
    env.parent.mkdir()
    env.write_text("SERVER_ID=web-1\n")
    with closing(catalog.connect(env.parent / "backups.db")) as conn, conn:
        for name in ("blog", "shop"):
            for days in (1, 0):
                backup(conn, "web-1", name, NOW - timedelta(days=days, hours=5), 50 << 20)
    report = build_report(_settings(env), ["blog", "shop"], now=NOW)
    assert (report.verdict, report.subject) == ("OK", "[OK] 2 of 2 sites backed up")
    assert report.actions == [] and report.backups_in_window == 2
    text, _html = render(report)
    assert "Nothing needs action" in text


def test_a_day_without_any_backup_is_a_failure_not_silence(tmp_path):
    env = tmp_path / "install" / ".env"
    env.parent.mkdir()
    env.write_text("SERVER_ID=web-1\nBACKUP_MAX_AGE_HOURS=48\n")
    with closing(catalog.connect(env.parent / "backups.db")) as conn, conn:
        backup(conn, "web-1", "blog", NOW - timedelta(hours=30), 50 << 20)  # fresh by the 48h rule
    report = build_report(_settings(env), ["blog"], now=NOW)
    assert report.verdict == "FAILED"
    assert report.subject == "[FAILED] no backup ran in the 24 hours to 2026-11-30 08:00 UTC"
    assert report.actions[0].kind == "no-backup"
    empty = tmp_path / "empty" / ".env"  # a new install whose timer never ran
    empty.parent.mkdir()
    empty.write_text("SERVER_ID=web-1\n")
    report = build_report(_settings(empty), ["blog"], now=NOW)
    assert report.verdict == "FAILED" and "no backup ran" in report.subject
    assert [a.kind for a in report.actions] == ["no-backup", "stale"]


def test_a_past_date_is_reported_as_the_catalog_was_then(sample):
    day = (NOW - timedelta(days=1)).strftime("%Y-%m-%d")
    report = build_report(sample, SITES, date=day, now=NOW)
    assert report.window.date == day
    start = datetime.fromisoformat(day + "T00:00:00+00:00")
    assert (report.window.start, report.window.end) == (start, start + timedelta(days=1))
    verdicts = {(s.server, s.site): (s.verdict, s.shrunk) for s in report.health.sites}
    assert verdicts[("web-1", "shop")] == ("OK", False)  # its failure came the next night
    assert verdicts[("web-2", "wiki")] == ("OK", False)  # so did the small archive
    assert verdicts[("web-3", "portfolio")][0] == "STALE"  # web-3 had stopped already
    assert report.subject.startswith("[STALE] 1 of 6 sites: web-3/portfolio")


@pytest.mark.parametrize("date, message", [
    ("2026-13-01", "expected a date as YYYY-MM-DD"),
    ("yesterday", "expected a date as YYYY-MM-DD"),
    ("2026-12-25", "has not begun yet"),
])
def test_a_bad_date_is_refused_clearly(date, message):
    with pytest.raises(BackupError, match=message):
        window_for(date, NOW)


def test_times_are_utc_with_the_local_time_beside(sample, monkeypatch):
    monkeypatch.setenv("TZ", "Europe/Berlin")
    import time

    time.tzset()
    try:
        text, html = render(build_report(sample, SITES, now=NOW))
    finally:
        monkeypatch.delenv("TZ")
        time.tzset()
    assert "2026-11-30 03:06 UTC (04:06 CET)" in text
    assert "(04:06 CET)" in html


def test_chromium_renders_the_report_with_every_site(sample, tmp_path):
    """What a person looks at: the HTML as a real browser lays it out."""
    if shutil.which("chromium") is None:
        need("chromium")
    _text, html = render(build_report(sample, SITES, now=NOW))
    page = tmp_path / "report.html"
    page.write_text(html)
    dom = subprocess.run(["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                          "--no-first-run", "--disable-background-networking", "--disable-component-update",
                          "--disable-sync", f"--user-data-dir={tmp_path}/profile", "--dump-dom", page.as_uri()],
                         capture_output=True, text=True, timeout=120, check=True).stdout
    for site in ("blog", "shop", "news", "forum", "wiki", "portfolio"):
        assert f">{site}<" in dom
    png = tmp_path / "report.png"
    render_png(html, png)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000  # a page, not a blank


def _install(tmp_path, text: str = "SERVER_ID=web-1\n"):
    env = tmp_path / "install" / ".env"
    env.parent.mkdir(parents=True, exist_ok=True)
    env.write_text(text)
    return env, catalog.connect(env.parent / "backups.db")


def test_a_server_whose_clock_runs_ahead_still_shows_its_failure_and_clock(tmp_path):
    from .fleet_sample import failure

    env, conn = _install(tmp_path)
    now = datetime.now(timezone.utc)
    with closing(conn), conn:
        backup(conn, "web-4", "ahead", now - timedelta(hours=20), 1 << 20)
        failure(conn, "web-4", "ahead", now + timedelta(hours=3), "dump failed: disk full")
        backup(conn, "web-5", "future", now + timedelta(hours=2), 1 << 20)
    health = {(s.server, s.site): s for s in build_report(_settings(env), [], now=None).health.sites}
    assert health[("web-4", "ahead")].verdict == "FAILED" and "disk full" in health[("web-4", "ahead")].reason
    assert health[("web-5", "future")].verdict == "CLOCK"


def test_a_failed_attempt_and_a_failed_verify_of_the_fallback_archive_are_both_told(tmp_path):
    from .fleet_sample import _row, failure

    env, conn = _install(tmp_path)
    with closing(conn), conn:
        name = backup(conn, "web-1", "blog", NOW - timedelta(days=1, hours=5), 5 << 20)
        _row(conn, "web-1", "blog", NOW - timedelta(hours=10), "ERROR", f"verify failed: {name}: zstd: corrupt",
             archive_name=name, verified_local=0)
        failure(conn, "web-1", "blog", NOW - timedelta(hours=5), "dump failed: login refused")
    report = build_report(_settings(env), ["blog"], now=NOW)
    blog = report.health.sites[0]
    assert blog.verdict == "FAILED" and "login refused" in blog.reason and "failed its verify" in blog.reason
    assert [a.kind for a in report.actions] == ["failed", "verify"]


def test_an_old_incomplete_backup_is_stale_and_says_how_old(tmp_path):
    env, conn = _install(tmp_path)
    with closing(conn), conn:
        backup(conn, "web-1", "blog", NOW - timedelta(days=5), 5 << 20)
        conn.execute("UPDATE backup_log SET status = 'ERROR', incomplete = 3 WHERE status = 'SUCCESS'")
    blog = build_report(_settings(env), ["blog"], now=NOW).health.sites[0]
    assert blog.verdict == "STALE" and "no backup for 120h" in blog.reason and "incomplete" in blog.reason


def test_a_server_silent_for_two_weeks_is_taken_as_retired(tmp_path):
    env, conn = _install(tmp_path)
    with closing(conn), conn:
        backup(conn, "web-1", "blog", NOW - timedelta(hours=5), 5 << 20)
        backup(conn, "web-old", "legacy", NOW - timedelta(days=40), 5 << 20)
        backup(conn, "web-2", "quiet", NOW - timedelta(days=3), 5 << 20)
        conn.execute("DELETE FROM backup_log WHERE site_name = 'quiet' AND status = 'SUCCESS'")
    report = build_report(_settings(env), ["blog"], now=NOW)
    assert [s.server for s in report.health.servers] == ["web-1", "web-2"]  # web-old: 40 days
    assert report.subject == "[STALE] 1 of 2 sites: web-2/quiet; silent: web-2"
