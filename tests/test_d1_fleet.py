"""The fleet through `doit`, as operators run it: two installs (two SERVER_IDs, two catalogs)
syncing with one D1 (the local imitation, tests/d1server.py), real backups to one S3."""

from __future__ import annotations

import sqlite3

import pytest

from wpbackup.fleet import catalog

from .conftest import Install


def _out(result) -> str:
    return result.stdout + result.stderr


def _setup(install: Install, server_id: str, d1, s3=None) -> Install:
    install.root.mkdir(parents=True, exist_ok=True)
    install.env["SERVER_ID"] = server_id
    if s3 is not None:
        install.use_s3(s3)
    install.env.update(d1.env())
    return install


def _status(install: Install) -> tuple[int, dict[tuple[str, str], str]]:
    result = install.doit("status")
    rows = {}
    for line in result.stdout.splitlines():
        words = line.split()
        if len(words) >= 2 and words[0].startswith("web-"):
            rows[(words[0], words[1])] = line
    return result.returncode, rows


def _tables(query_rows) -> dict[str, list[tuple]]:
    return {table: [tuple(row) for row in query_rows(f"SELECT * FROM {table} ORDER BY uid")]
            for table in ("backup_log", "s3_archives", "daily_emails")}


def _catalog(install: Install) -> dict[str, list[tuple]]:
    return _tables(install.rows)


def test_two_servers_see_each_other_and_a_second_sync_changes_nothing(install, tmp_path, wordpress, s3, d1):
    web1 = _setup(install, "web-1", d1, s3)
    web2 = _setup(Install(tmp_path / "server2"), "web-2", d1, s3)
    web1.add_site("blog", wordpress)
    web2.add_site("shop", wordpress)
    for server in (web1, web2):
        result = server.doit("backup")
        assert result.returncode == 0, _out(result)
        assert "SUMMARY sync: OK pushed" in result.stdout
    assert web1.doit("sync").returncode == 0  # web-1 synced before web-2 had backed up

    for server in (web1, web2):
        code, rows = _status(server)
        assert code == 0, rows
        assert set(rows) == {("web-1", "blog"), ("web-2", "shop")}
        assert all(line.endswith(" OK") for line in rows.values()), rows
        assert f"s3://{s3.bucket}/web-1/" in rows[("web-1", "blog")]
        assert f"s3://{s3.bucket}/web-2/" in rows[("web-2", "shop")]
    in_d1 = d1.sql("SELECT server_id, site_name FROM backup_log WHERE status = 'SUCCESS'")
    assert sorted(tuple(r) for r in in_d1) == [("web-1", "blog"), ("web-2", "shop")]
    assert not d1.sql("SELECT uid FROM backup_log GROUP BY uid HAVING COUNT(*) > 1")

    fleet, catalogs = _tables(d1.sql), [_catalog(web1), _catalog(web2)]
    for server in (web1, web2):
        again = server.doit("sync")
        assert again.returncode == 0, _out(again)
        assert "SUMMARY sync: OK pushed 0 rows, pulled 0 (1 D1 requests)" in again.stdout
    assert _tables(d1.sql) == fleet
    assert [_catalog(web1), _catalog(web2)] == catalogs
    # the token went in the Authorization header and nowhere else
    token = d1.token.encode()
    assert all(token not in seen.body and d1.token not in seen.path for seen in d1.seen)
    assert all(seen.headers.get("authorization") == f"Bearer {d1.token}" for seen in d1.seen)
    assert token not in d1.path.read_bytes()
    assert all(token not in path.read_bytes() for path in web1.root.glob("backups.db*"))


def test_a_failing_site_still_syncs_and_reaches_the_other_server(install, tmp_path, wordpress, d1):
    web1 = _setup(install, "web-1", d1)
    web2 = _setup(Install(tmp_path / "server2"), "web-2", d1)
    web1.add_site("good", wordpress)
    web1.add_site("bad", wordpress, db={"password": "not-the-password-42"})
    web2.add_site("shop", wordpress)
    result = web1.doit("backup")
    output = _out(result)
    assert result.returncode != 0, output  # the failed site still fails the run
    assert "SUMMARY bad: FAILED at dump" in output and "SUMMARY good: OK" in output
    assert "SUMMARY sync: OK pushed" in output  # the sync ran although a site had failed
    assert result.stdout.index("SUMMARY sync") > result.stdout.index("SUMMARY good")
    [error] = d1.sql("SELECT * FROM backup_log WHERE status = 'ERROR'")
    assert error["server_id"] == "web-1" and error["site_name"] == "bad" and "login refused" in error["details"]
    assert b"not-the-password-42" not in d1.path.read_bytes()

    assert web2.doit("sync").returncode == 0
    code, rows = _status(web2)
    assert code != 0  # a site of the fleet failed
    assert "FAILED" in rows[("web-1", "bad")] and "login refused" in rows[("web-1", "bad")]
    assert rows[("web-1", "good")].endswith(" OK")


def test_d1_refusing_costs_no_backup_and_the_next_sync_catches_up(install, wordpress, d1):
    _setup(install, "web-1", d1)
    install.add_site("blog", wordpress)
    d1.inject("overloaded", retry_after=3600)  # longer than a sync waits: it gives up at once
    result = install.doit("backup")
    output = _out(result)
    assert result.returncode != 0, output
    assert "SUMMARY blog: OK" in output
    [line] = [line for line in output.splitlines() if "sync" in line and "FAIL" in line]
    assert line.startswith("SUMMARY sync: FAILED D1 is throttling requests (HTTP 429")
    assert "the backups of this run are recorded locally" in line and "Traceback" not in output
    assert install.rows("SELECT * FROM backup_log WHERE status = 'SUCCESS'")

    catch_up = install.doit("sync")
    assert catch_up.returncode == 0, _out(catch_up)
    local = {r["uid"] for r in install.rows("SELECT uid FROM backup_log UNION SELECT uid FROM s3_archives")}
    remote = {r["uid"] for r in d1.sql("SELECT uid FROM backup_log UNION SELECT uid FROM s3_archives")}
    assert local == remote and local


def test_a_prune_on_one_server_shows_on_the_other(install, tmp_path, wordpress, s3, d1):
    web1 = _setup(install, "web-1", d1, s3)
    web2 = _setup(Install(tmp_path / "server2"), "web-2", d1, s3)
    web1.add_site("blog", wordpress)
    web1.env.update(KEEP_DAILY="1", KEEP_WEEKLY="0", KEEP_MONTHLY="0")  # two backups today: one goes
    for _ in range(2):
        assert web1.doit("backup").returncode == 0
    assert web2.doit("sync").returncode == 0
    older, newer = (r["archive_name"] for r in web1.rows("SELECT archive_name FROM s3_archives ORDER BY run_stamp"))
    assert {r["s3_key"] is not None for r in catalog.successes(web2.db_path, "blog")} == {True}

    pruned = web1.doit("prune")
    assert pruned.returncode == 0, _out(pruned)
    [deleted] = web1.rows("SELECT archive_name FROM s3_archives WHERE deleted_at IS NOT NULL")
    assert deleted["archive_name"] == older
    assert web1.doit("sync").returncode == 0 and web2.doit("sync").returncode == 0
    seen = {r["archive_name"]: r["deleted_at"] for r in web2.rows("SELECT * FROM s3_archives")}
    assert seen[older] is not None and seen[newer] is None
    stored = {r["archive_name"]: r["s3_key"] for r in catalog.successes(web2.db_path, "blog")}
    assert stored[older] is None and stored[newer] is not None  # a restore there no longer picks it


def test_a_lost_catalog_comes_back_and_restore_finds_its_archives(install, tmp_path, wordpress, s3, d1):
    _setup(install, "web-1", d1, s3)
    install.add_site("blog", wordpress)
    assert install.doit("backup").returncode == 0
    [first] = install.archives()
    history = {r["uid"] for r in install.rows("SELECT uid FROM backup_log UNION SELECT uid FROM s3_archives")}
    for path in install.root.glob("backups.db*"):
        path.unlink()

    result = install.doit("backup")  # a new disk, the same SERVER_ID: the sync of this run brings it back
    assert result.returncode == 0, _out(result)
    assert "of this server's own rows restored from D1" in result.stdout
    now = {r["uid"] for r in install.rows("SELECT uid FROM backup_log UNION SELECT uid FROM s3_archives")}
    assert history < now
    assert not install.rows("SELECT uid FROM backup_log GROUP BY uid HAVING COUNT(*) > 1")
    code, rows = _status(install)
    newest = install.archives()[-1].name
    assert code == 0 and newest in rows[("web-1", "blog")]  # the newest, not a recovered older one

    target = tmp_path / "restored"
    restored = install.doit("restore", "--site", "blog", "--archive", first.name, "--files-only",
                            "--target", str(target))
    assert restored.returncode == 0, _out(restored)
    assert (target / "wp-config.php").exists()
    waiting = install.rows("SELECT uid FROM backup_log WHERE change_seq > "
                           "(SELECT value FROM sync_state WHERE key = 'push:backup_log')")
    again = install.doit("sync")  # what the restore recorded, and none of the rows that came from D1
    assert f"SUMMARY sync: OK pushed {len(waiting)} rows, pulled 0" in again.stdout
    local = {r["uid"] for r in install.rows("SELECT uid FROM backup_log UNION SELECT uid FROM s3_archives")}
    assert local == {r["uid"] for r in d1.sql("SELECT uid FROM backup_log UNION SELECT uid FROM s3_archives")}


@pytest.mark.parametrize("case", ["wrong token", "read-only token", "other account", "unknown database"])
def test_refusals_are_readable_and_never_show_the_token(install, wordpress, d1, case):
    _setup(install, "web-1", d1)
    install.add_site("blog", wordpress)
    token = {"wrong token": "d1-made-up-token-0123456789", "read-only token": d1.read_only_token,
             "other account": d1.other_account_token}.get(case, d1.token)
    install.env["D1_API_TOKEN"] = token
    if case == "unknown database":
        install.env["D1_DATABASE_ID"] = "00000000-1111-4222-8333-444444444444"
    expected = {
        "wrong token": "D1 refused the API token (code 10000",
        "read-only token": "the API token may not use D1 in D1_ACCOUNT_ID=",
        "other account": "the API token may not use D1 in D1_ACCOUNT_ID=",
        "unknown database": "no D1 database D1_DATABASE_ID=00000000-1111-4222-8333-444444444444",
    }[case]
    result = install.doit("sync")
    output = _out(result)
    assert result.returncode != 0
    assert f"SUMMARY sync: FAILED {expected}" in output and "Traceback" not in output
    assert token not in output
    assert all(token.encode() not in path.read_bytes() for path in install.root.glob("backups.db*"))
    assert d1.seen and all(token.encode() not in seen.body and token not in seen.path for seen in d1.seen)
    assert len(d1.seen) == 1  # refusals are not retried
    if d1.path.exists():
        assert token.encode() not in d1.path.read_bytes()


def test_sync_off_says_so_once_and_is_no_error(install, wordpress):
    install.add_site("blog", wordpress)
    result = install.doit("backup")
    assert result.returncode == 0, _out(result)
    assert _out(result).count("D1 sync is off") == 1 and "SUMMARY sync" not in result.stdout
    assert sqlite3.connect(install.db_path).execute("SELECT COUNT(*) FROM backup_log").fetchone()[0] > 0
