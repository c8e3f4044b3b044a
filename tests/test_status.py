"""`doit status --json`: one document for machines, the report's verdicts, and an exit status
that a cron job or a Nagios-style check can use as it is."""

from __future__ import annotations

import json
import subprocess
from contextlib import closing
from datetime import datetime, timedelta, timezone

from wpbackup.config.settings import load_settings
from wpbackup.fleet import catalog
from wpbackup.fleet.report import build_report

from .conftest import Install
from .fleet_sample import backup, sample_install


def _doit(install: Install, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(install.command(*args), capture_output=True, text=True, timeout=120,
                          env=install.process_env(), cwd=install.root)


def test_json_has_one_object_per_server_and_site_with_the_reports_verdicts(tmp_path):
    now = datetime.now(timezone.utc)
    env = sample_install(tmp_path / "install", now)
    install = Install(env.parent)
    result = _doit(install, "status", "--json")
    assert result.returncode != 0  # shop failed, web-3 went silent
    document = json.loads(result.stdout)  # nothing but the document on stdout
    assert document["healthy"] is False and document["server_id"] == "web-1"
    assert [s["server"] for s in document["servers"]] == ["web-1", "web-2", "web-3"]
    assert [s["silent"] for s in document["servers"]] == [False, False, True]
    verdicts = {(s["server"], s["site"]): s["verdict"] for s in document["sites"]}
    report = build_report(load_settings({"WPBACKUP_ENV": str(env)}), ["blog", "shop", "news"], now=now)
    assert verdicts == {(s.server, s.site): s.verdict for s in report.health.sites}
    assert verdicts[("web-1", "shop")] == "FAILED" and verdicts[("web-3", "portfolio")] == "STALE"
    wiki = next(s for s in document["sites"] if s["site"] == "wiki")
    assert wiki["shrunk"] is True and wiki["needs_action"] is True and wiki["change"] < -0.6
    shop = next(s for s in document["sites"] if s["site"] == "shop")
    assert "AccessDenied" in shop["reason"] and shop["last_failure"].endswith("Z")
    blog = next(s for s in document["sites"] if s["site"] == "blog")
    assert blog["stored"][0].startswith("s3://fleet-backups/web-1/") and blog["last_restore_test"]


def test_a_healthy_fleet_exits_zero_and_says_so(tmp_path):
    install = Install(tmp_path / "install")
    install.root.mkdir()
    install.sites = [{"name": "blog", "path": str(tmp_path)}]
    install.write()
    with closing(catalog.connect(install.db_path)) as conn, conn:
        backup(conn, "web-1", "blog", datetime.now(timezone.utc) - timedelta(hours=2), 10 << 20, bucket=None)
    result = _doit(install, "status", "--json")
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["healthy"] is True and [s["verdict"] for s in document["sites"]] == ["OK"]
    install.env["BACKUP_MAX_AGE_HOURS"] = "1"
    install.write()
    stale = _doit(install, "status", "--json")
    assert stale.returncode != 0 and json.loads(stale.stdout)["sites"][0]["verdict"] == "STALE"
    table = _doit(install, "status")
    assert stale.returncode != 0 and "STALE (>1h)" in table.stdout
