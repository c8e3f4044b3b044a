"""Time: a clock stepped back behind a site's last run refuses that site's run (an ERROR
line, non-zero exit, the other sites go on) instead of making a stamp that pretends to be
later; back-to-back runs in one second still wait for the next second; `doit status` does
not call a site fresh because its last stamp lies in the future. The future is written into
run.json and the catalog, the system clock is left alone."""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

from wpbackup.backup import runs

from .test_resume import _count


def _stamp(delta: timedelta) -> str:
    return runs.make_stamp(datetime.now(timezone.utc) + delta)


def test_clock_behind_the_last_run_refuses_that_site_only(install, wordpress):
    install.add_site("blog", wordpress)
    install.add_site("shop", wordpress)
    work = install.backup_dir / ".work" / "blog"
    work.mkdir(parents=True)
    future = _stamp(timedelta(days=400))
    state = json.dumps({"stamp": future, "closed": True})
    (work / "run.json").write_text(state)
    result = install.doit("backup")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in output
    assert "SUMMARY shop: OK" in output
    assert "SUMMARY blog: FAILED" in output and f"but run {future} exists" in output
    errors = install.rows("SELECT details, run_stamp FROM backup_log WHERE status = 'ERROR' AND site_name = 'blog'")
    assert errors and all("the clock is behind this site's last run" in e["details"] for e in errors)
    assert all(e["run_stamp"] < future for e in errors)  # the true time, not one made up after it
    assert [a.name.split("-backup-")[0] for a in install.archives()] == ["shop"]
    assert (work / "run.json").read_text() == state
    assert [p for p in work.iterdir() if p.is_dir()] == []
    assert _count(install, "START", "%") == 1  # shop's only


def test_back_to_back_runs_in_one_second_wait_for_the_next(install, wordpress):
    install.add_site("blog", wordpress)
    work = install.backup_dir / ".work" / "blog"
    work.mkdir(parents=True)
    last = _stamp(timedelta(seconds=1))  # a run that took this very second (or the next)
    (work / "run.json").write_text(json.dumps({"stamp": last, "closed": True}))
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    [archive] = install.archives()
    assert archive.name > f"blog-backup-{last}.tar.zst"


def test_run_plans_around_the_last_stamp(tmp_path):
    now = datetime(2026, 12, 1, 3, 0, tzinfo=timezone.utc)
    site_dir = tmp_path / "blog"
    site_dir.mkdir()

    def plan_after(stamp: str, closed: bool = True) -> runs.Run:
        (site_dir / "run.json").write_text(json.dumps({"stamp": stamp, "closed": closed, "fingerprint": "fp"}))
        return runs.plan_run(tmp_path, "blog", now, 20, "fp")

    same = plan_after(runs.make_stamp(now))
    assert not same.refused and same.stamp == runs.make_stamp(now + timedelta(seconds=1))
    behind = plan_after(runs.make_stamp(now + timedelta(hours=5)))
    assert behind.refused and behind.stamp == runs.make_stamp(now) and "clock" in behind.refused
    assert not plan_after(runs.make_stamp(now - timedelta(days=1))).refused
    # an open run, started before the clock went back, is resumed as it is
    ahead = runs.make_stamp(now + timedelta(hours=5))
    (site_dir / ahead).mkdir()
    resumed = plan_after(ahead, closed=False)
    assert resumed.resumed and resumed.stamp == ahead and not resumed.refused
    # ...but one that must be replaced cannot be, while the clock is behind it
    (site_dir / "run.json").write_text(json.dumps({"stamp": ahead, "closed": False, "fingerprint": "other"}))
    assert runs.plan_run(tmp_path, "blog", now, 20, "fp").refused


def test_status_flags_a_last_stamp_in_the_future(install, wordpress):
    install.add_site("blog", wordpress)
    assert install.doit("backup").returncode == 0

    def status_with(stamp: str):
        conn = sqlite3.connect(install.db_path)
        with conn:
            conn.execute("UPDATE backup_log SET run_stamp = ? WHERE status = 'SUCCESS'", (stamp,))
        conn.close()
        result = install.doit("status")
        return result, next(line for line in result.stdout.splitlines() if " blog " in f" {line} ")

    result, line = status_with(_stamp(timedelta(days=2)))
    assert result.returncode != 0 and "CLOCK?" in line and " OK" not in line
    result, line = status_with(_stamp(timedelta(minutes=1)))  # a little skew is not a wrong clock
    assert result.returncode == 0 and line.endswith("OK")
