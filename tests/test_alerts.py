"""Alerts (NOTIFY_URLS through Apprise) and the health check pings, seen from outside: real
`doit` runs, Apprise's generic json:// target posting to an HTTP server on 127.0.0.1, and
the healthchecks.io protocol (/start, then success or /fail, one run id) on the `pings` one."""

from __future__ import annotations

import json
import re
import socket
import sqlite3
import threading
from contextlib import closing
from datetime import datetime, timedelta, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from wpbackup.config.settings import load_settings
from wpbackup.fleet import catalog, notify
from wpbackup.fleet.health import fleet_health
from wpbackup.fleet.notify import Alert, send_alerts, stale_alerts

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}")


def _out(result) -> str:
    return result.stdout + result.stderr


class Hooks:
    """What the local webhook server received: (path, JSON payload) per POST. A path under
    /broken/ answers 500, one under /hang/ never answers (until the test ends)."""

    def __init__(self):
        self.posts: list[tuple[str, dict]] = []
        self.release = threading.Event()
        hooks = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if self.path.startswith("/hang/"):
                    hooks.release.wait(60)
                    return
                hooks.posts.append((self.path, json.loads(body)))
                self.send_response(500 if self.path.startswith("/broken/") else 200)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def url(self, path: str = "hook/tok-3f9a7c1e55") -> str:
        return f"json://127.0.0.1:{self.port}/{path}"

    def titles(self) -> list[str]:
        return [payload["title"] for path, payload in self.posts if not path.startswith("/broken/")]

    def stop(self) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hooks():
    server = Hooks()
    yield server
    server.stop()


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_failing_site_alerts_naming_server_site_and_reason(install, wordpress, hooks):
    install.env["NOTIFY_URLS"] = hooks.url()
    install.add_site("good", wordpress)
    install.add_site("bad", wordpress, db={"password": "not-the-password-42"})
    result = install.doit("backup")
    assert result.returncode != 0 and "SUMMARY bad: FAILED at dump" in _out(result), _out(result)
    [(path, alert)] = hooks.posts
    assert path == "/hook/tok-3f9a7c1e55"
    assert alert["title"] == "[FAILED] web-1/bad: backup failed"
    assert alert["type"] == "failure"
    reason, where = alert["message"].splitlines()
    assert reason.startswith("backup failed at dump: ") and "login refused" in reason
    assert where.startswith("server web-1, site bad, ") and where.endswith(" UTC")
    assert "not-the-password-42" not in json.dumps(alert)


def test_a_passing_site_alerts_nothing_unless_notify_on_is_all(install, wordpress, hooks):
    install.env["NOTIFY_URLS"] = hooks.url()
    install.add_site("blog", wordpress)
    result = install.doit("backup")
    assert result.returncode == 0, _out(result)
    assert hooks.posts == []
    install.env["NOTIFY_ON"] = "all"
    result = install.doit("backup")
    assert result.returncode == 0, _out(result)
    [(_, alert)] = hooks.posts
    assert alert["title"] == "[OK] web-1/blog: backed up" and alert["type"] == "success"
    assert "blog-backup-" in alert["message"] and ".tar.zst" in alert["message"]


def test_dead_refusing_or_silent_alert_targets_never_fail_the_backup(install, wordpress, hooks):
    install.env["NOTIFY_URLS"] = ",".join([
        f"json://127.0.0.1:{_closed_port()}/dead/tok-dead-8d1e2f",
        hooks.url("broken/tok-broken-5a6b7c"),
        hooks.url("hang/tok-hang-0c9d8e"),
        hooks.url(),
    ])
    install.env["NOTIFY_ON"] = "all"
    install.add_site("blog", wordpress)
    result = install.doit("backup")
    out = _out(result)
    assert result.returncode == 0, out
    assert "SUMMARY blog: OK" in out
    assert hooks.titles() == ["[OK] web-1/blog: backed up"]  # the working target still got it
    warnings = [line for line in out.splitlines() if "not delivered" in line or "not confirmed" in line]
    assert len(warnings) == 3, out
    assert all("json://127.0.0.1:" in line for line in warnings)
    assert any("error=500" in line for line in warnings), warnings
    for secret in ("tok-dead-8d1e2f", "tok-broken-5a6b7c", "tok-hang-0c9d8e", "tok-3f9a7c1e55", "/dead", "/broken"):
        assert secret not in out


def test_a_failed_verify_alerts(install, wordpress, hooks):
    install.env["NOTIFY_URLS"] = hooks.url()
    install.add_site("blog", wordpress)
    assert install.doit("backup").returncode == 0
    assert install.doit("verify").returncode == 0
    assert hooks.posts == []
    [archive] = install.archives()
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    result = install.doit("verify")
    assert result.returncode != 0 and "verify failed" in _out(result)
    [(_, alert)] = hooks.posts
    assert alert["title"] == "[VERIFY FAILED] web-1/blog: verify failed"
    assert archive.name in alert["message"] and "verify failed" in alert["message"]


def test_health_pings_pair_up_by_run_id_and_carry_the_one_line_summary(install, wordpress, pings):
    install.env["HEALTHCHECK_URL"] = pings.url + "?create=1"  # a slug URL's own query is kept
    install.add_site("good", wordpress)
    install.add_site("bad", wordpress, db={"password": "not-the-password-42"})
    assert install.doit("backup").returncode != 0
    (start, _, start_body), (end, end_query, body) = pings.requests
    assert (start, end) == ("/ping/abc/start", "/ping/abc/fail")
    rid = pings.requests[0][1]["rid"]
    assert end_query == pings.requests[0][1] == {"rid": rid, "create": ["1"]} and UUID_RE.fullmatch(rid[0])
    assert body == "web-1: 2 sites, 1 OK, 1 FAILED (bad)"
    assert start_body == ""
    install.sites.pop()
    assert install.doit("backup").returncode == 0
    (start, query, _), (end, end_query, body) = pings.requests[2:]
    assert (start, end) == ("/ping/abc/start", "/ping/abc")
    assert query["rid"] == end_query["rid"] != rid  # every run its own id
    assert body == "web-1: 1 site, 1 OK"
    for command in (["status"], ["sync"], ["verify"]):  # only backups ping the check
        install.doit(*command)
    assert len(pings.requests) == 4


def test_no_secret_reaches_an_alert_a_ping_the_output_or_the_catalog(install, wordpress, s3, d1, hooks, pings):
    install.use_s3(s3)
    install.env.update(d1.env())
    token = "tok-7e5d4c3b2a19"
    install.env.update(
        NOTIFY_URLS=hooks.url(f"hook/{token}?auth={token}-q") + f",json://127.0.0.1:{_closed_port()}/x/{token}",
        NOTIFY_ON="all", HEALTHCHECK_URL=pings.url,
        SMTP_HOST="127.0.0.1", SMTP_USERNAME="mailer", SMTP_PASSWORD="smtp-Pa55-word-61",
        REPORT_FROM="backup@example.org", REPORT_TO="ops@example.org")
    install.add_site("good", wordpress)
    install.add_site("bad", wordpress, db={"password": "not-the-password-42"})
    result = install.doit("backup")
    assert result.returncode != 0
    assert len(hooks.posts) == 2 and len(pings.requests) == 2
    secrets = [token, "smtp-Pa55-word-61", "testing-secret-key-123", d1.token, wordpress.db_password,
               "not-the-password-42", "/ping/abc", "ping/abc"]
    texts = [_out(result), *(json.dumps(payload) for _, payload in hooks.posts),
             *(body for _, _, body in pings.requests)]
    conn = sqlite3.connect(install.db_path)
    try:
        texts.append("\n".join(conn.iterdump()))
    finally:
        conn.close()
    for text in texts:
        for secret in secrets:
            assert secret not in text, (secret, text[:2000])


def _settings(install):
    install.write()
    return load_settings({"WPBACKUP_ENV": str(install.env_path)})


def _success(settings, server: str, site: str, when: datetime, monkeypatch) -> None:
    """A complete backup of ``site`` recorded as if written at ``when``."""
    monkeypatch.setattr(catalog, "now_utc", lambda: when.strftime("%Y-%m-%d %H:%M:%S"))
    stamp = when.strftime("%Y%m%d-%H%M%S")
    catalog.log_event(settings.db_path, "SUCCESS", f"backup OK {site}", site=site, server_id=server,
                      stamp=stamp, archive_name=f"{site}-backup-{stamp}.tar.zst", archive_size=1000)
    monkeypatch.undo()


def test_stale_sites_and_a_silent_server_alert_once_per_episode(install, hooks, monkeypatch):
    install.env["NOTIFY_URLS"] = hooks.url()
    settings = _settings(install)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    for server, site in (("web-1", "blog"), ("web-1", "shop"), ("web-2", "news")):
        _success(settings, server, site, now - timedelta(hours=60), monkeypatch)

    def alerts(at):
        return stale_alerts(settings, fleet_health(settings, ["blog", "shop"], at=at))

    first = alerts(now)
    assert sorted((a.server, a.site) for a in first) == [("web-1", "blog"), ("web-1", "shop"), ("web-2", "")]
    assert all(a.kind == "stale" for a in first)
    silent = next(a for a in first if a.server == "web-2")
    assert "no backup activity for 60h" in silent.reason
    assert send_alerts(settings, first) == 3
    assert sorted(hooks.titles()) == ["[STALE] web-1/blog: no recent backup", "[STALE] web-1/shop: no recent backup",
                                      "[STALE] web-2: server silent"]
    assert alerts(now + timedelta(hours=1)) == []  # the same episode: said once
    _success(settings, "web-1", "blog", now - timedelta(hours=1), monkeypatch)
    assert alerts(now) == []  # blog is fresh again, shop and web-2 were alerted already
    again = alerts(now + timedelta(hours=30))  # blog's new success grew old: a new episode
    assert [(a.server, a.site) for a in again] == [("web-1", "blog")]
    with closing(catalog.connect(settings.db_path)) as conn:
        keys = [row[0] for row in conn.execute("SELECT key FROM alerts_sent ORDER BY key")]
    assert len(keys) == 5 and "web-2:news:" + (now - timedelta(hours=60)).strftime("%Y-%m-%d %H:%M:%S") in keys


def test_many_alerts_at_once_become_at_most_max_alerts_messages(install, hooks):
    install.env["NOTIFY_URLS"] = hooks.url()
    settings = _settings(install)
    alerts = [Alert("failed", "web-1", f"site{i:02}", "backup failed at dump: database down") for i in range(14)]
    assert send_alerts(settings, alerts) == 14
    titles = hooks.titles()
    assert len(titles) == notify.MAX_ALERTS
    assert titles[-1] == "[FAILED] web-1: 5 more sites need action"
    rest = hooks.posts[-1][1]["message"]
    assert all(f"web-1/site{i:02} (failed)" in rest for i in range(9, 14))


def test_urls_are_shown_as_scheme_and_host_only_and_their_tokens_scrubbed():
    telegram = "tgram://123456789:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw/987654321"
    pieces = notify.url_pieces(telegram)
    assert "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw" in pieces and "987654321" in pieces
    text = notify.redact("bot AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw refused chat 987654321", pieces)
    assert "AAHdq" not in text and "987654321" not in text
    assert notify.shown_target(telegram, None) == "tgram://***"
    assert notify.shown_target(telegram, "tgram://1...w/987654321/?image=False") == "tgram://***"  # Apprise's mask
    assert notify.shown_target("ntfy://secret-topic", "ntfys://secret-topic?priority=default") == "ntfy://***"
    assert notify.shown_target("json://u:p@hooks.example.com/t/tok", "json://u:****@hooks.example.com/t/tok") \
        == "json://hooks.example.com"
    assert "hooks.example.com" not in notify.url_pieces("json://hooks.example.com/t/token-123456")


def test_a_malformed_notify_url_is_refused_without_showing_it(install, wordpress):
    install.env["NOTIFY_URLS"] = "hooks.slack.com/services/T000/B000/tok-9b8a7f6e5d"
    install.add_site("blog", wordpress)
    result = install.doit("backup")
    assert result.returncode == 3 and "NOTIFY_URLS: expected comma-separated URLs" in result.stderr
    assert "tok-9b8a7f6e5d" not in _out(result)
    assert not install.db_path.exists() or b"tok-9b8a7f6e5d" not in install.db_path.read_bytes()
