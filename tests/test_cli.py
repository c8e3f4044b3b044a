"""The operator's view: exit codes, messages and files for failures, bad config, the lock,
local-only mode, `doit status` and `doit list`."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from .conftest import kill_group, make_site, stalling_dump, wait_for
from .servers import IS_ROOT


def _out(result) -> str:
    return result.stdout + result.stderr


def test_one_site_with_wrong_password_fails_alone(install, wordpress, s3):
    install.use_s3(s3)
    install.add_site("good", wordpress)
    install.add_site("bad", wordpress, db={"password": "not-the-password-42"})
    result = install.doit("backup")
    output = _out(result)
    assert result.returncode != 0
    assert "SUMMARY good: OK" in output
    assert "SUMMARY bad: FAILED at dump" in output
    assert "login refused for user 'u_wordpress'" in output and "wrong password" in output
    assert "Traceback" not in output
    assert [r["site_name"] for r in install.rows("SELECT site_name FROM s3_archives")] == ["good"]
    [error] = install.rows("SELECT * FROM backup_log WHERE status = 'ERROR'")
    assert error["site_name"] == "bad" and error["server_id"] == "web-1" and "login refused" in error["details"]
    assert "not-the-password-42" not in output
    assert b"not-the-password-42" not in install.db_path.read_bytes()
    assert [a.name.split("-backup-")[0] for a in install.archives()] == ["good"]


def test_local_only_mode_keeps_local_keep_archives_and_status_reports(install, wordpress):
    install.add_site("blog", wordpress)
    install.env["LOCAL_KEEP"] = "2"
    before = install.doit("status")
    assert before.returncode != 0 and "NO BACKUP" in before.stdout
    for _ in range(3):
        result = install.doit("backup")
        assert result.returncode == 0, _out(result)
    assert "local-only mode" in _out(result)
    archives = install.archives()
    assert len(archives) == 2
    assert all(a.with_name(a.name + ".sha256").exists() for a in archives)
    assert install.rows("SELECT * FROM s3_archives") == []
    status = install.doit("status")
    assert status.returncode == 0, _out(status)
    line = next(line for line in status.stdout.splitlines() if " blog " in f" {line} ")
    assert "OK" in line and archives[-1].name in line and "local:" in line
    install.env["BACKUP_MAX_AGE_HOURS"] = "0.00001"
    stale = install.doit("status")
    assert stale.returncode != 0 and "STALE" in stale.stdout
    install.sites[0]["enabled"] = False  # a retired site is no longer expected to back up
    install.env["BACKUP_MAX_AGE_HOURS"] = "26"
    retired = install.doit("status")
    assert retired.returncode == 0 and " blog " not in retired.stdout


def test_list_shows_every_stage_per_site(install, wordpress):
    install.add_site("blog", wordpress)
    install.add_site("shop", wordpress, enabled=False)
    result = install.doit("list", "--all")
    assert result.returncode == 0, _out(result)
    names = {line.split()[0] for line in result.stdout.splitlines() if line.strip()}
    for stage in ("dump", "tar", "compress", "upload", "catalog", "backup"):
        assert f"{stage}:blog" in names and stage in names
        assert f"{stage}:shop" not in names
    assert {"sync", "status"} <= names
    assert all(len(line.split(None, 1)) == 2 for line in result.stdout.splitlines() if line.strip())


@pytest.mark.parametrize("sites, expected", [
    ({"sites": [{"name": "blog", "path": "/srv/x", "colour": "red"}]}, "site 'blog': colour: unknown key"),
    ({"sites": [{"name": "blog", "path": "/srv/x", "enabled": "yes"}]}, "site 'blog': enabled: expected true or false"),
    ({"sites": [{"name": "Blog!", "path": "/srv/x"}]}, "site 'Blog!': name: 'Blog!' must match"),
    ({"sites": [{"name": "blog", "path": "/a"}, {"name": "blog", "path": "/b"}]}, "site 'blog': name: duplicate"),
    ({"sites": [{"name": "blog"}]}, "site 'blog': path: required"),
    ({"sites": [{"name": "blog", "path": "/srv/x", "db": {"port": "1"}}]},
     "site 'blog': db: port: expected an integer"),
    ({"sites": [{"name": "blog", "path": "/srv/x", "files": "everything"}]}, "site 'blog': files: must be"),
    ({"sites": [{"name": "blog", "path": "/srv/x", "db": {"password": 98765432}}]},
     "site 'blog': db: password: expected a string, got a int"),
    ("{not json", "invalid JSON"),
])
def test_bad_sites_json_stops_before_any_task(install, sites, expected):
    install.write()
    (install.root / "sites.json").write_text(sites if isinstance(sites, str) else json.dumps(sites))
    result = subprocess.run(install.command("backup"), capture_output=True, text=True,
                            env=install.process_env(), cwd=install.root)
    assert result.returncode == 3
    assert expected in result.stderr and str(install.root / "sites.json") in result.stderr
    assert "Traceback" not in _out(result) and "98765432" not in _out(result)
    assert not install.backup_dir.exists()


@pytest.mark.parametrize("key, value, expected", [
    ("SERVER_ID", "Web_1", "SERVER_ID: 'Web_1' is not valid"),
    ("ZSTD_LEVEL", "fast", "ZSTD_LEVEL: expected a number"),
    ("LOCAL_KEEP", "0", "LOCAL_KEEP: must be between 1 and 10000, got '0'"),
])
def test_bad_env_value_is_named(install, wordpress, key, value, expected):
    install.add_site("blog", wordpress)
    install.env[key] = value
    result = install.doit("backup")
    assert result.returncode == 3
    assert expected in result.stderr and str(install.env_path) in result.stderr
    assert "Traceback" not in _out(result)


def test_site_name_with_a_trailing_newline_stops_before_any_task(install, wordpress):
    install.add_site("blog\n", wordpress)
    result = install.doit("backup")
    assert result.returncode == 3
    assert "site 'blog\\n': name: 'blog\\n' must match" in result.stderr
    assert not install.backup_dir.exists() and "Traceback" not in _out(result)


@pytest.mark.parametrize("content, expected", [
    (b'{"sites": [{"name": "caf\xe9", "path": "/srv/x"}]}', "not UTF-8 text (byte 0xe9 at offset 24)"),
    (b"[" * 100_000, "nested too deeply to be a sites.json"),
    (json.dumps({"sites": [{"name": "blog", "path": "/" + "a" * 100_000}]}).encode(),
     "site 'blog': path: is 100001 bytes long"),
    (b'{"sites": [{"name": "blog", "path": "/srv/\\u0000x"}]}', "site 'blog': path: holds a NUL byte"),
])
def test_sites_json_that_is_no_sites_json_is_a_config_error(install, content, expected):
    install.write()
    (install.root / "sites.json").write_bytes(content)
    result = subprocess.run(install.command("backup"), capture_output=True, text=True,
                            env=install.process_env(), cwd=install.root)
    assert result.returncode == 3, _out(result)
    assert f"{install.root / 'sites.json'}: {expected}" in result.stderr
    assert "Traceback" not in _out(result) and len(result.stderr) < 2000
    assert not install.backup_dir.exists()


def test_s3_settings_without_bucket_stop_the_run(install, wordpress):
    install.add_site("blog", wordpress)
    install.env.update(S3_ENDPOINT_URL="http://127.0.0.1:9", S3_ACCESS_KEY_ID="testing",
                       S3_SECRET_ACCESS_KEY="testing-secret-key-123", S3_BUKET="wp-backups")
    result = install.doit("backup")
    assert result.returncode == 3
    assert "S3_BUCKET: not set, while S3_ENDPOINT_URL, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY are" in result.stderr
    assert "warning: " + str(install.env_path) + ": S3_BUKET: not a key this tool reads; did you mean S3_BUCKET?" \
        in result.stderr
    assert "testing-secret-key-123" not in _out(result)
    assert not install.backup_dir.exists()


def test_misspelt_key_is_a_warning_and_the_run_goes_on(install, wordpress):
    install.add_site("blog", wordpress)
    install.env["KEEP_DAYLY"] = "3"
    result = install.doit("list")
    assert result.returncode == 0, _out(result)
    assert f"wordpress-backup: warning: {install.env_path}: KEEP_DAYLY: not a key this tool reads; " \
           "did you mean KEEP_DAILY?" in result.stderr.splitlines()


def test_inherited_environment_cannot_change_what_a_test_runs(install, wordpress, monkeypatch):
    from wpbackup.config.settings import ENVIRONMENT_KEYS

    for key in ENVIRONMENT_KEYS:
        monkeypatch.setenv(key, "from-the-shell\n")
    install.add_site("blog", wordpress)
    result = install.doit("list")
    assert result.returncode == 0, _out(result)
    assert "configuration error" not in result.stderr and "warning" not in result.stderr


def test_value_wp_config_computes_fails_that_site_until_sites_json_gives_it(install, wordpress, tmp_path):
    computed = make_site(tmp_path, wordpress, name="computed")
    config = computed / "wp-config.php"
    config.write_text(config.read_text().replace(f"define('DB_PASSWORD', '{wordpress.db_password}');",
                                                 "define('DB_PASSWORD', getenv('WP_DB_PASSWORD'));"))
    install.add_site("good", wordpress)
    site = install.add_site("computed", wordpress, path=str(computed))
    result = install.doit("backup")
    output = _out(result)
    assert result.returncode != 0 and "SUMMARY good: OK" in output
    assert (f"site computed: {config}: DB_PASSWORD is set through an expression (line " in output
            and 'give "password" in the site\'s "db" settings in sites.json' in output)
    assert "Traceback" not in output
    errors = install.rows("SELECT site_name FROM backup_log WHERE status = 'ERROR'")
    assert [row["site_name"] for row in errors] == ["computed"]
    site["db"] = {"password": wordpress.db_password}
    again = install.doit("backup:computed")
    assert again.returncode == 0, _out(again)
    assert "SUMMARY computed: OK" in _out(again)


def test_missing_sites_file_says_what_to_do(install):
    install.env_path.write_text("SERVER_ID=web-1\n")
    result = subprocess.run(install.command("backup"), capture_output=True, text=True,
                            env=install.process_env(), cwd=install.root)
    assert result.returncode == 3 and "sites.json.sample" in result.stderr


def test_missing_site_path_or_wp_config_fails_that_site_only(install, wordpress, tmp_path):
    no_config = make_site(tmp_path, wordpress, name="noconfig")
    (no_config / "wp-config.php").unlink()
    install.add_site("good", wordpress)
    install.sites.append({"name": "gone", "path": str(tmp_path / "does-not-exist")})
    install.sites.append({"name": "noconfig", "path": str(no_config)})
    result = install.doit("backup")
    output = _out(result)
    assert result.returncode != 0
    assert "SUMMARY good: OK" in output
    assert f"path {tmp_path / 'does-not-exist'} does not exist" in output
    assert f"no wp-config.php in {no_config} or its parent folder" in output
    assert "Traceback" not in output
    errors = {r["site_name"] for r in install.rows("SELECT site_name FROM backup_log WHERE status='ERROR'")}
    assert errors == {"gone", "noconfig"}


def test_unreachable_database_is_reported(install, wordpress):
    from .servers import free_port

    install.add_site("blog", wordpress, db={"host": "127.0.0.1", "port": free_port()})
    result = install.doit("backup")
    assert result.returncode != 0
    assert "database server unreachable at 127.0.0.1:" in _out(result)


@pytest.mark.parametrize("change, expected", [
    ({"S3_BUCKET": "no-such-bucket"}, "S3 bucket does not exist"),
    ({"S3_ENDPOINT_URL": "http://127.0.0.1:9"}, "S3 unreachable at http://127.0.0.1:9"),
])
def test_s3_problems_are_reported_and_nothing_recorded(install, wordpress, s3, change, expected):
    install.use_s3(s3)
    install.env.update(S3_MAX_ATTEMPTS="1", **change)
    install.add_site("blog", wordpress)
    result = install.doit("backup")
    assert result.returncode != 0
    assert expected in _out(result)
    assert "testing-secret-key-123" not in _out(result)
    assert install.rows("SELECT * FROM s3_archives") == []
    assert install.rows("SELECT * FROM backup_log WHERE status = 'SUCCESS'") == []
    assert len(install.archives()) == 1  # kept locally for the next run to upload


def test_second_backup_while_one_runs_exits_at_once(install, wordpress, tmp_path):
    """A real backup holds the lock while its dump stalls; a second one exits 4 naming it,
    changes nothing, and read-only commands still work."""
    bindir, started = stalling_dump(tmp_path)
    install.add_site("blog", wordpress)
    first = install.start("backup", env={"PATH": f"{bindir}:{os.environ['PATH']}"})
    try:
        wait_for(started.exists, first)
        work = sorted((install.backup_dir / ".work" / "blog").iterdir())
        second = install.doit("backup", timeout=120)
        assert second.returncode == 4, second.stdout + second.stderr
        assert f"already in progress (pid {first.pid}" in second.stderr
        assert sorted((install.backup_dir / ".work" / "blog").iterdir()) == work
        status = install.doit("status")
        assert status.returncode != 0 and "NO BACKUP" in status.stdout  # read-only commands still work
    finally:
        kill_group(first)
    assert install.archives() == []
    assert install.doit("backup").returncode == 0


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small tmpfs needs root")
@pytest.mark.parametrize("catalog_too", [False, True])
def test_disk_full_removes_partial_file_and_records_no_success(install, wordpress, tmp_path, catalog_too):
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], check=True)
    try:
        install.env["BACKUP_DIR"] = str(mount / "backups")
        if catalog_too:  # the catalog sits on the full disk too: the message must still come through
            install.env["DB_PATH"] = str(mount / "backups.db")
        install.sites.append({"name": "big", "path": str(make_site(tmp_path, wordpress, big_mb=6))})
        result = install.doit("backup")
        assert result.returncode != 0
        assert "disk full" in _out(result) and "Traceback" not in _out(result)
        leftovers = [p for p in (mount / "backups").rglob("*") if p.is_file() and p.stat().st_size > 100_000]
        assert leftovers == []
        assert not list((mount / "backups").glob("*.tar.zst"))
        db = mount / "backups.db" if catalog_too else install.db_path
        import sqlite3
        from contextlib import closing

        with closing(sqlite3.connect(db)) as conn:
            assert conn.execute("SELECT COUNT(*) FROM backup_log WHERE status = 'SUCCESS'").fetchone()[0] == 0
            if not catalog_too:
                assert conn.execute("SELECT COUNT(*) FROM backup_log WHERE status = 'ERROR'").fetchone()[0] == 1
    finally:
        subprocess.run(["umount", str(mount)], check=True)


def test_secrets_stay_out_of_argv(install, wordpress, tmp_path):
    """mariadb-dump gets the password through a 0600 option file, never on its command line."""
    spy = tmp_path / "bin"
    spy.mkdir()
    log = tmp_path / "argv.log"
    real = subprocess.run(["sh", "-c", "command -v mariadb-dump"], capture_output=True, text=True).stdout.strip()
    (spy / "mariadb-dump").write_text(
        f'#!/bin/sh\necho "$@" >> {log}\nfor a in "$@"; do case "$a" in --defaults-file=*) '
        f'stat -c %a "${{a#--defaults-file=}}" >> {log};; esac; done\nexec {real} "$@"\n')
    (spy / "mariadb-dump").chmod(0o755)
    install.add_site("blog", wordpress)
    result = install.doit("backup", env={"PATH": f"{spy}:{os.environ['PATH']}"})
    assert result.returncode == 0, _out(result)
    recorded = log.read_text()
    assert f"--defaults-file={install.backup_dir}/.work/blog/" in recorded and "\n600\n" in recorded
    assert wordpress.db_password not in recorded


def test_backup_of_one_site_leaves_the_others(install, wordpress):
    install.add_site("blog", wordpress)
    install.add_site("shop", wordpress)
    result = install.doit("backup:shop")
    assert result.returncode == 0, _out(result)
    assert [a.name.split("-backup-")[0] for a in install.archives()] == ["shop"]


def test_healthcheck_pings_start_then_success_or_fail(install, wordpress, pings):
    install.env["HEALTHCHECK_URL"] = pings.url
    install.add_site("blog", wordpress)
    assert install.doit("backup").returncode == 0
    assert pings.seen == ["/ping/abc/start", "/ping/abc"]
    install.add_site("bad", wordpress, db={"password": "wrong-one"})
    assert install.doit("backup").returncode != 0
    assert pings.seen[2:] == ["/ping/abc/start", "/ping/abc/fail"]
    install.doit("status")
    assert len(pings.seen) == 4  # read-only commands do not ping
