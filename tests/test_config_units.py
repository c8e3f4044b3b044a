"""Settings, wp-config.php parsing and small pure helpers, one behaviour per test."""

from __future__ import annotations

from pathlib import Path

import pytest

from wpbackup.errors import BackupError, ConfigError
from wpbackup.settings import default_server_id, load_settings
from wpbackup.sites import Site
from wpbackup.tarstream import is_excluded
from wpbackup.wpconfig import DbHost, find_wp_config, parse_db_host, parse_wp_config


def test_env_file_next_to_wpbackup_env_and_process_env_wins(tmp_path):
    env = tmp_path / "conf" / ".env"
    env.parent.mkdir()
    env.write_text("SERVER_ID=from-file\nBACKUP_DIR=archives\nZSTD_LEVEL=5\nS3_BUCKET=\n")
    settings = load_settings({"WPBACKUP_ENV": str(env), "ZSTD_LEVEL": "7"})
    assert settings.server_id == "from-file"
    assert settings.zstd_level == 7
    assert settings.backup_dir == env.parent / "archives"
    assert settings.sites_file == env.parent / "sites.json"
    assert settings.db_path == env.parent / "backups.db"
    assert not settings.s3_enabled


def test_explicit_env_file_must_exist(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_settings({"WPBACKUP_ENV": str(tmp_path / "missing.env")})


def test_every_bad_value_is_reported_at_once(tmp_path):
    env = tmp_path / ".env"
    env.write_text("SERVER_ID=-bad\nZSTD_LEVEL=99\nSTALE_RUN_HOURS=soon\nS3_CHECKSUM=sha1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"WPBACKUP_ENV": str(env)})
    assert len(caught.value.problems) == 4
    assert any("S3_CHECKSUM" in p and "'sha1'" in p and str(env) in p for p in caught.value.problems)


@pytest.mark.parametrize("hostname, expected", [
    ("Web01.example.com", "web01"), ("My_Server", "my-server"), ("__", "server"), ("a" * 80, "a" * 63),
])
def test_default_server_id_is_valid(hostname, expected):
    assert default_server_id(hostname) == expected


@pytest.mark.parametrize("value, expected", [
    ("localhost", DbHost("localhost", None, None)),
    ("db.example.com:3307", DbHost("db.example.com", 3307, None)),
    ("localhost:/run/mysqld/mysqld.sock", DbHost("localhost", None, "/run/mysqld/mysqld.sock")),
    (":/tmp/my.sock", DbHost("localhost", None, "/tmp/my.sock")),
    ("[::1]:3306", DbHost("::1", 3306, None)),
    ("/var/run/mysql.sock", DbHost("localhost", None, "/var/run/mysql.sock")),
])
def test_db_host_forms(value, expected):
    assert parse_db_host(value) == expected


def test_db_host_with_bad_port():
    with pytest.raises(BackupError, match="not a number"):
        parse_db_host("db:abc")


WP_CONFIG = r"""<?php
// define('DB_NAME', 'commented_out');
/* define('DB_USER', 'also_commented'); */
define( 'DB_NAME', 'wp_blog' );
define("DB_USER", "blog\"user");
define('DB_PASSWORD', 'it\'s a $ecret');
define('DB_HOST', 'localhost:/run/mysqld/mysqld.sock'); // the socket
define('WP_HOME', 'https://example.com/#/*x'); # odd but valid
$table_prefix  = 'blog_';
"""


def test_wp_config_values_and_prefix(tmp_path):
    path = tmp_path / "wp-config.php"
    path.write_text(WP_CONFIG)
    assert parse_wp_config(path) == {
        "DB_NAME": "wp_blog", "DB_USER": 'blog"user', "DB_PASSWORD": "it's a $ecret",
        "DB_HOST": "localhost:/run/mysqld/mysqld.sock", "table_prefix": "blog_",
    }


def test_wp_config_found_in_parent_like_wordpress(tmp_path):
    root = tmp_path / "public"
    root.mkdir()
    (tmp_path / "wp-config.php").write_text(WP_CONFIG)
    assert find_wp_config(root) == tmp_path / "wp-config.php"
    (tmp_path / "wp-settings.php").write_text("")  # the parent is another WordPress: not ours
    assert find_wp_config(root) is None


def test_site_db_mixes_explicit_values_and_wp_config(tmp_path):
    (tmp_path / "wp-config.php").write_text(WP_CONFIG)
    site = Site(name="blog", path=tmp_path, db={"user": "backup", "host": "10.0.0.5", "port": 3307})
    db = site.database()
    assert (db.name, db.user, db.password) == ("wp_blog", "backup", "it's a $ecret")
    assert db.host == DbHost("10.0.0.5", 3307, None)
    assert db.table_prefix == "blog_"
    assert "secret" not in repr(db)


@pytest.mark.parametrize("path, excluded", [
    ("wp-content/cache", True), ("wp-content/cache/page/index.html", True),
    ("wp-content/uploads/backwpup-abc-logs/x.log", True), ("wp-content/uploads/2026/a.jpg", False),
    ("wp-content/cachet/x", False),
])
def test_default_excludes(path, excluded):
    assert is_excluded(path, Site(name="s", path=Path("/x")).excludes) is excluded
