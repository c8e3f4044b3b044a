"""Settings, wp-config.php parsing and small pure helpers, one behaviour per test."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from wpbackup.backup.tarstream import is_excluded
from wpbackup.config.settings import KEYS, default_server_id, env_file_path, load_settings
from wpbackup.config.sites import Site, load_sites
from wpbackup.config.wpconfig import DbHost, find_wp_config, parse_db_host, parse_wp_config
from wpbackup.errors import BackupError, ConfigError

REPO = Path(__file__).resolve().parent.parent


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
    assert parse_wp_config(path).values == {
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
    assert db.password not in repr(db) and "$ecret" not in repr(db)


@pytest.mark.parametrize("path, excluded", [
    ("wp-content/cache", True), ("wp-content/cache/page/index.html", True),
    ("wp-content/uploads/backwpup-abc-logs/x.log", True), ("wp-content/uploads/2026/a.jpg", False),
    ("wp-content/cachet/x", False),
])
def test_default_excludes(path, excluded):
    assert is_excluded(path, Site(name="s", path=Path("/x")).excludes) is excluded


# --- .env: bounds, key combinations, typos ---------------------------------------------------

def _settings(tmp_path, text: str, **environ):
    env = tmp_path / ".env"
    env.write_text(text)
    return load_settings({"WPBACKUP_ENV": str(env), **environ})


def _problems(tmp_path, text: str, **environ) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        _settings(tmp_path, text, **environ)
    return caught.value.problems


@pytest.mark.parametrize("key, value, expected", [
    ("S3_PART_SIZE_MB", "4", "between 5 and 5120 (or 0: automatic)"),
    ("S3_PART_SIZE_MB", "5121", "between 5 and 5120"),
    ("S3_MAX_ATTEMPTS", "0", "between 1 and 20"),
    ("S3_MAX_ATTEMPTS", "21", "between 1 and 20"),
    ("LOCAL_KEEP", "0", "between 1 and 10000"),
    ("KEEP_DAILY", "-1", "between 0 and 10000"),
    ("KEEP_MONTHLY", "99999999999999999999999", "between 0 and 10000"),
    ("ZSTD_LEVEL", "23", "between 1 and 22"),
    ("ZSTD_THREADS", "257", "between 0 and 256"),
    ("SMTP_PORT", "65536", "between 1 and 65535"),
    ("STALE_RUN_HOURS", "0", "between more than 0 and 8760"),
    ("STALE_RUN_HOURS", "nan", "expected a number of hours"),
    ("BACKUP_MAX_AGE_HOURS", "inf", "expected a number of hours"),
    ("BACKUP_MAX_AGE_HOURS", "1" + "0" * 400, "expected a number of hours"),
    ("ZSTD_LEVEL", "1_0", "expected a number"),
    ("ZSTD_LEVEL", "\u0663", "expected a number"),  # an Arabic-Indic digit int() would take
])
def test_number_out_of_its_bounds_is_named(tmp_path, key, value, expected):
    [problem] = _problems(tmp_path, f"{key}={value}\n")
    assert problem.startswith(f"{tmp_path / '.env'}: {key}: ") and expected in problem


@pytest.mark.parametrize("text, attribute, expected", [
    ("S3_PART_SIZE_MB=0\n", "s3_part_size_mb", 0),
    ("S3_PART_SIZE_MB=5\n", "s3_part_size_mb", 5),
    ("S3_PART_SIZE_MB=5120\n", "s3_part_size_mb", 5120),
    ("KEEP_WEEKLY=0\n", "keep_weekly", 0),
    ("STALE_RUN_HOURS=0.5\n", "stale_run_hours", 0.5),
    ("ZSTD_LEVEL=22\n", "zstd_level", 22),
])
def test_numbers_at_their_bounds_are_taken(tmp_path, text, attribute, expected):
    assert getattr(_settings(tmp_path, text), attribute) == expected


@pytest.mark.parametrize("key", ["S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID", "S3_REGION", "S3_PREFIX",
                                 "S3_STORAGE_CLASS"])
def test_s3_settings_without_bucket_are_an_error(tmp_path, key):
    value = {"S3_ENDPOINT_URL": "https://s3.example.com", "S3_REGION": "eu-west-1",
             "S3_STORAGE_CLASS": "STANDARD_IA"}.get(key, "value1")
    extra = "S3_SECRET_ACCESS_KEY=the-secret-1\n" if key == "S3_ACCESS_KEY_ID" else ""
    [problem] = _problems(tmp_path, f"{key}={value}\n{extra}")
    assert f"S3_BUCKET: not set, while {key}" in problem and "local-only" in problem


def test_s3_tuning_keys_alone_keep_local_only_mode(tmp_path):
    settings = _settings(tmp_path, "S3_MAX_ATTEMPTS=3\nS3_CHECKSUM=crc32\nS3_PART_SIZE_MB=16\nS3_BUCKET=\n")
    assert not settings.s3_enabled


@pytest.mark.parametrize("given, missing", [("S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY"),
                                            ("S3_SECRET_ACCESS_KEY", "S3_ACCESS_KEY_ID")])
def test_one_s3_key_without_the_other_names_the_missing_one(tmp_path, given, missing):
    [problem] = _problems(tmp_path, f"S3_BUCKET=wp-backups\n{given}=Sup3rSecretValue\n")
    assert problem.startswith(f"{tmp_path / '.env'}: {missing}: not set, while {given} is")
    assert "Sup3rSecretValue" not in problem


def test_part_of_the_d1_settings_names_the_missing_ones(tmp_path):
    [problem] = _problems(tmp_path, "D1_ACCOUNT_ID=abc\nD1_API_TOKEN=tok-value-9\n")
    assert "D1_DATABASE_ID: not set, while D1_ACCOUNT_ID, D1_API_TOKEN are" in problem
    assert "tok-value-9" not in problem


@pytest.mark.parametrize("text, expected", [
    ("SMTP_HOST=mail.example.com\n", "REPORT_TO: not set, while SMTP_HOST is"),
    ("SMTP_USERNAME=me@example.com\nSMTP_PASSWORD=Mail-pw-77\n", "SMTP_HOST: not set, while SMTP_USERNAME is"),
    ("SMTP_PASSWORD=Mail-pw-77\n", "SMTP_HOST: not set, while SMTP_PASSWORD is"),
])
def test_mail_settings_that_cannot_send_a_report_are_refused(tmp_path, text, expected):
    [problem] = _problems(tmp_path, text)
    assert expected in problem and "Mail-pw-77" not in problem


@pytest.mark.parametrize("key, value, expected", [
    ("SMTP_SECURITY", "tls", "expected starttls or ssl or none"),
    ("NOTIFY_ON", "success", "expected failure or all"),
    ("S3_ENDPOINT_URL", "s3.example.com", "expected an http:// or https:// URL"),
    ("HEALTHCHECK_URL", "http://[::1", "expected an http:// or https:// URL"),
    ("DEPLOY_HOSTS", "root@web1, web2", "got 'web2'"),
    ("DEPLOY_HOSTS", "-oProxyCommand=x@web1", "expected comma-separated user@host"),
    ("DEPLOY_HOSTS", "root@web1:70000", "got 'root@web1:70000'"),
    ("DEPLOY_PATH", "opt/wpb", "expected an absolute path"),
    ("REPORT_TO", "ops@example.com, nobody", "expected one e-mail address, got 'nobody'"),
    ("S3_BUCKET", "my bucket", "'my bucket' is not valid (a bucket name"),
    ("S3_REGION", "eu west", "is not valid (a region name"),
    ("S3_PREFIX", "team/../other", "must be a key prefix"),
])
def test_contract_rules_for_each_kind_of_value(tmp_path, key, value, expected):
    problems = _problems(tmp_path, f"{key}={value}\n")
    assert any(p.startswith(f"{tmp_path / '.env'}: {key}: ") and expected in p for p in problems), problems


def test_contract_values_are_typed(tmp_path):
    settings = _settings(tmp_path, "SMTP_SECURITY=SSL\nSMTP_PORT=465\nNOTIFY_ON=all\n"
                                   "DEPLOY_HOSTS=root@web1, deploy@[::1]:2222\nREPORT_TO=a@x.org, Ops <b@x.org>\n")
    assert settings.value("SMTP_SECURITY") == "ssl" and settings.value("SMTP_PORT") == 465
    assert settings.value("DEPLOY_HOSTS") == ("root@web1", "deploy@[::1]:2222")
    assert settings.value("REPORT_TO") == ("a@x.org", "Ops <b@x.org>")
    assert settings.value("NOTIFY_ON") == "all" and settings.value("DEPLOY_PATH") == "/opt/wordpress-backup"


def test_value_with_a_line_break_is_refused_not_trimmed(tmp_path):
    [problem] = _problems(tmp_path, 'SERVER_ID="web-1\\n"\n')
    assert "SERVER_ID: holds a control character" in problem and "'web-1\\n'" in problem


def test_bad_value_from_the_environment_says_so(tmp_path):
    [problem] = _problems(tmp_path, "ZSTD_LEVEL=3\n", ZSTD_LEVEL="fast")
    assert problem.startswith("environment: ZSTD_LEVEL: expected a number")


def test_bad_secret_is_never_echoed(tmp_path):
    problems = _problems(tmp_path, 'S3_BUCKET=wp-backups\nS3_ACCESS_KEY_ID=AKIA1\n'
                                   'S3_SECRET_ACCESS_KEY="my secret\\tvalue"\nSMTP_PASSWORD="pw\\nline"\n'
                                   'SMTP_HOST=mail.example.com\nREPORT_TO=ops@example.com\n')
    assert len(problems) == 2
    assert not any("my secret" in p or "pw" in p.split(": ", 2)[-1] for p in problems)


@pytest.mark.parametrize("typo, real", [("S3_BUKET", "S3_BUCKET"), ("SMTP_PASWORD", "SMTP_PASSWORD"),
                                        ("KEEP_DAYLY", "KEEP_DAILY"), ("s3_bucket", "S3_BUCKET"),
                                        ("AWS_ACCESS_KEY_ID", "S3_ACCESS_KEY_ID")])
def test_misspelt_key_warns_with_the_closest_real_key(tmp_path, typo, real):
    settings = _settings(tmp_path, f"{typo}=x\n")
    [warning] = settings.warnings
    assert warning.startswith(f"{tmp_path / '.env'}: {typo}: ") and f"did you mean {real}?" in warning


def test_unknown_key_with_our_prefix_warns_without_a_guess(tmp_path):
    [warning] = _settings(tmp_path, "S3_SERVER_1_BUCKET=old\n").warnings
    assert "S3_SERVER_1_BUCKET: not a key this tool reads" in warning and "did you mean" not in warning


def test_unrelated_keys_do_not_warn(tmp_path):
    settings = _settings(tmp_path, "MY_OWN_VARIABLE=1\n", S3_BUCKET_NAME="other-tool", HOME="/root")
    assert settings.warnings == ()


def test_misspelt_key_in_the_environment_warns(tmp_path):
    [warning] = _settings(tmp_path, "", S3_BUKET="x").warnings
    assert warning == "environment: S3_BUKET: not a key this tool reads; did you mean S3_BUCKET?"


def test_env_file_that_is_not_utf8_is_a_config_error(tmp_path):
    (tmp_path / ".env").write_bytes(b"SERVER_ID=caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_settings({"WPBACKUP_ENV": str(tmp_path / ".env")})
    assert caught.value.problems == [f"{tmp_path / '.env'}: not UTF-8 text (byte 0xe9 at offset 13)"]


def test_env_line_that_is_no_key_value_is_an_error(tmp_path):
    [problem] = _problems(tmp_path, "SERVER_ID=web-1\nS3 BUCKET=typo\n")
    assert problem.startswith(f"{tmp_path / '.env'}: line 2: not KEY=value")


def test_env_sample_documents_exactly_the_keys_read(tmp_path):
    import re

    sample = (REPO / ".env.sample").read_text()
    documented = set(re.findall(r"^#?([A-Z][A-Z0-9_]+)=", sample, re.M))
    assert documented == {key.name for key in KEYS}


def test_env_sample_defaults_load(tmp_path):
    """The sample with every key uncommented (S3 and D1 ones given) is a valid configuration."""
    import re

    text = re.sub(r"^#([A-Z][A-Z0-9_]+=)", r"\1", (REPO / ".env.sample").read_text(), flags=re.M)
    filled = {"S3_ACCESS_KEY_ID": "AKIA1", "S3_SECRET_ACCESS_KEY": "secret1", "D1_ACCOUNT_ID": "a1",
              "D1_DATABASE_ID": "d1", "D1_API_TOKEN": "t1", "SERVER_ID": "web-1"}
    text = re.sub(r"^([A-Z][A-Z0-9_]+)=$", lambda m: f"{m[1]}={filled.get(m[1], '')}", text, flags=re.M)
    settings = _settings(tmp_path, text)
    assert settings.s3_enabled and settings.d1_enabled and settings.warnings == ()


# --- sites.json: whole-value checks and files that are no sites.json -------------------------

def _site_problems(tmp_path, content) -> list[str]:
    import json

    path = tmp_path / "sites.json"
    path.write_bytes(content if isinstance(content, bytes) else json.dumps(content).encode())
    with pytest.raises(ConfigError) as caught:
        load_sites(path)
    assert all(p.startswith(f"{path}: ") for p in caught.value.problems)
    return caught.value.problems


def _one_site(**fields) -> dict:
    return {"sites": [{"name": "blog", "path": "/srv/blog", **fields}]}


def test_site_name_with_a_trailing_newline_is_refused(tmp_path):
    [problem] = _site_problems(tmp_path, _one_site(name="blog\n"))
    assert "site 'blog\\n': name: 'blog\\n' must match" in problem


def test_sites_json_that_is_not_utf8(tmp_path):
    [problem] = _site_problems(tmp_path, b'{"sites": [{"name": "caf\xe9", "path": "/x"}]}')
    assert problem.endswith("not UTF-8 text (byte 0xe9 at offset 24): save it as UTF-8")


def test_sites_json_nested_100000_deep(tmp_path):
    [problem] = _site_problems(tmp_path, b"[" * 100_000)
    assert problem.endswith("nested too deeply to be a sites.json")


def test_sites_json_with_a_100000_digit_number(tmp_path):
    [problem] = _site_problems(tmp_path, b'{"sites": [{"name": "blog", "path": "/x", "db": {"port": 1'
                                         + b"0" * 100_000 + b"}}]}")
    assert problem.endswith("holds a number too long to read")


def test_path_of_100000_characters_is_named_briefly(tmp_path):
    [problem] = _site_problems(tmp_path, _one_site(path="/" + "a" * 100_000))
    assert "site 'blog': path: is 100001 bytes long; a path has at most 4095" in problem
    assert len(problem) < 400


def test_name_of_100000_characters_is_named_briefly(tmp_path):
    [problem] = _site_problems(tmp_path, _one_site(name="a" * 100_000))
    assert "name: 'aaaa" in problem and "(100000 characters)" in problem and len(problem) < 400


@pytest.mark.parametrize("path, expected", [
    ("/srv/\x00blog", "holds a NUL byte"),
    ("/srv/blog\n", "holds a control character"),
    ("/srv/../etc", "must not go through '..'"),
    ("srv/blog", "must be an absolute path"),
    ("/srv/" + "n" * 256, "has a component longer than 255 bytes"),
    ("/srv/\udc80", "is not valid UTF-8 text"),
])
def test_bad_site_path_is_named(tmp_path, path, expected):
    [problem] = _site_problems(tmp_path, _one_site(path=path))
    assert f"site 'blog': path: {expected}" in problem


@pytest.mark.parametrize("item", ["../x", "/etc", "wp-content/\nuploads", ""])
def test_bad_exclude_is_named(tmp_path, item):
    [problem] = _site_problems(tmp_path, _one_site(exclude=["wp-content/cache", item]))
    assert "site 'blog': exclude: " in problem and "must be a pattern relative to path" in problem


def test_key_given_twice_is_an_error(tmp_path):
    problems = _site_problems(tmp_path, b'{"sites": [{"name": "blog", "path": "/a", "db": {"name": "x",'
                                        b' "name": "y"}, "path": "/b"}]}')
    assert sorted(problems) == sorted([f"{tmp_path / 'sites.json'}: site 'blog': path: given more than once",
                                       f"{tmp_path / 'sites.json'}: site 'blog': db: name: given more than once"])


@pytest.mark.parametrize("db, expected", [
    ({"port": 0}, "db: port: must be between 1 and 65535, got 0"),
    ({"port": 70000}, "db: port: must be between 1 and 65535, got 70000"),
    ({"socket": "mysql.sock"}, "db: socket: 'mysql.sock' must be an absolute path"),
    ({"socket": "/run/" + "s" * 120}, "db: socket: '/run/sss"),
    ({"name": "wp\n"}, "db: name: 'wp\\n' holds a control character"),
    ({"user": ""}, "db: user: is empty (leave the key out, or null"),
    ({"host": "db" * 200}, "db: host: is 400 characters long; at most 255"),
    ({"table_prefix": "wp-"}, "db: table_prefix: 'wp-' is not valid"),
])
def test_bad_db_value_is_named(tmp_path, db, expected):
    [problem] = _site_problems(tmp_path, _one_site(db=db))
    assert f"site 'blog': {expected}" in problem


def test_password_with_a_line_break_is_refused_unseen(tmp_path):
    [problem] = _site_problems(tmp_path, _one_site(db={"password": "hunter2\nplugin-dir=/tmp"}))
    assert "db: password: holds a NUL byte or a line break" in problem and "hunter2" not in problem


# --- wp-config.php read as PHP reads it ------------------------------------------------------

def _wp_config(tmp_path, code: str):
    path = tmp_path / "wp-config.php"
    path.write_text("<?php\n" + code)
    return parse_wp_config(path)


@pytest.mark.parametrize("literal, value", [
    (r"'a\\b'", "a\\b"), (r"'it\'s'", "it's"), (r"'a\qb\n'", "a\\qb\\n"), (r"'\\\\'", "\\\\"),
])
def test_single_quoted_strings_unescape_only_backslash_and_quote(tmp_path, literal, value):
    assert _wp_config(tmp_path, f"define('DB_PASSWORD', {literal});").values["DB_PASSWORD"] == value


@pytest.mark.parametrize("literal, value", [
    (r'"a\qb"', "a\\qb"), (r'"\e"', "\x1b"), (r'"\t\v\f\r"', "\t\v\f\r"), (r'"\$x"', "$x"),
    (r'"\\"', "\\"), (r'"q\"q"', 'q"q'), (r'"\101\x42\u{43}"', "ABC"), (r'"\400"', "\x00"),
    (r'"\xc3\xa9"', "é"), (r'"\u{1F600}"', "😀"), (r'"\x"', "\\x"), (r'"\8"', "\\8"), (r'"$"', "$"),
    (r'"{x}"', "{x}"),
])
def test_double_quoted_strings_unescape_like_php(tmp_path, literal, value):
    assert _wp_config(tmp_path, f"define('DB_PASSWORD', {literal});").values["DB_PASSWORD"] == value


def test_definitions_in_strings_heredocs_and_html_are_not_definitions(tmp_path):
    config = _wp_config(tmp_path, "$a = \"define('DB_NAME', 'in_string')\";\n"
                                  "$b = <<<EOT\ndefine('DB_NAME', 'in_heredoc');\nEOT;\n"
                                  "?>define('DB_NAME', 'in_html')<?php\ndefine('DB_NAME', 'real');\n")
    assert config.values == {"DB_NAME": "real"} and config.unclear == {}


def _unclear_site(tmp_path, code: str, **db) -> Site:
    (tmp_path / "wp-config.php").write_text(
        "<?php\ndefine('DB_NAME', 'wp');\ndefine('DB_USER', 'wp');\ndefine('DB_PASSWORD', 'pw');\n"
        "define('DB_HOST', 'localhost');\n$table_prefix = 'wp_';\n" + code)
    return Site(name="blog", path=tmp_path, db=db)


@pytest.mark.parametrize("code, constant, key", [
    ("if (getenv('STAGE')) { define('DB_HOST', 'stage-db'); } else { define('DB_HOST', 'prod-db'); }",
     "DB_HOST", "host"),
    ("define('DB_PASSWORD', getenv('WP_DB_PASSWORD'));", "DB_PASSWORD", "password"),
    ("define('DB_USER', 'wp' . '_user');", "DB_USER", "user"),
    ("define('DB_NAME', WP_ENV_NAME);", "DB_NAME", "name"),
    ("define('DB_NAME', $name);", "DB_NAME", "name"),
    ("define('DB_NAME', \"site_$suffix\");", "DB_NAME", "name"),
    ("const DB_USER = PREFIX . 'u';", "DB_USER", "user"),
    ("$table_prefix = getenv('PREFIX') ?: 'wp_';", "$table_prefix", "table_prefix"),
    ("$table_prefix .= 'x_';", "$table_prefix", "table_prefix"),
])
def test_value_php_would_compute_is_never_guessed(tmp_path, code, constant, key):
    with pytest.raises(BackupError) as caught:
        _unclear_site(tmp_path, code).database()
    message = str(caught.value)
    assert message.startswith(f"site blog: {tmp_path / 'wp-config.php'}: {constant} ")
    assert f'give "{key}" in the site\'s "db" settings in sites.json' in message
    assert "prod-db" not in message and "WP_DB_PASSWORD" not in message


@pytest.mark.parametrize("code, db", [
    ("if (getenv('STAGE')) { define('DB_HOST', 'a'); } else { define('DB_HOST', 'b'); }", {"host": "db1"}),
    ("if (getenv('STAGE')) { define('DB_HOST', 'a'); } else { define('DB_HOST', 'b'); }", {"port": 3307}),
    ("define('DB_PASSWORD', getenv('X'));", {"password": ""}),
    ("$table_prefix = PREFIX;", {"table_prefix": "blog_"}),
])
def test_explicit_db_value_makes_the_unclear_one_irrelevant(tmp_path, code, db):
    resolved = _unclear_site(tmp_path, code, **db).database()
    assert (resolved.name, resolved.user) == ("wp", "wp")
    assert resolved.table_prefix == db.get("table_prefix", "wp_")


def test_unclear_prefix_fails_even_when_db_gives_everything_else(tmp_path):
    site = _unclear_site(tmp_path, "$table_prefix = getenv('PREFIX');", name="wp", user="wp", password="pw",
                         host="localhost")
    with pytest.raises(BackupError, match=r"\$table_prefix is set through an expression .* give \"table_prefix\""):
        site.database()


def test_same_value_in_two_places_is_no_guess(tmp_path):
    code = "if (getenv('STAGE')) { define('DB_HOST', 'localhost'); } else { define('DB_HOST', 'localhost'); }"
    assert _unclear_site(tmp_path, code).database().host == DbHost("localhost", None, None)


def test_define_with_a_computed_name_makes_db_constants_unclear(tmp_path):
    with pytest.raises(BackupError, match=r"DB_NAME may be set by a define\(\) whose constant name is computed"):
        _unclear_site(tmp_path, "foreach ($env as $k => $v) { define($k, $v); }").database()


def test_wp_config_password_with_a_line_break_fails_the_site(tmp_path):
    (tmp_path / "wp-config.php").write_text("<?php define('DB_NAME','wp'); define('DB_USER','wp');"
                                            " define('DB_PASSWORD', \"pw\\nplugin-dir=/tmp\");")
    with pytest.raises(BackupError, match="DB_PASSWORD holds a NUL byte or a line break") as caught:
        Site(name="blog", path=tmp_path).database()
    assert "plugin-dir" not in str(caught.value)


def test_wp_config_table_prefix_wordpress_refuses_fails_the_site(tmp_path):
    (tmp_path / "wp-config.php").write_text("<?php define('DB_NAME','wp'); define('DB_USER','wp');"
                                            " $table_prefix = 'wp-1';")
    with pytest.raises(BackupError, match=r"\$table_prefix 'wp-1' is not valid"):
        Site(name="blog", path=tmp_path).database()


def test_missing_value_mentions_an_included_file(tmp_path):
    (tmp_path / "wp-config.php").write_text("<?php require __DIR__ . '/db-settings.php';\n")
    with pytest.raises(BackupError, match="db.name, db.user not set in sites.json and not found in .* "
                                          r"\(it includes other files, line 1"):
        Site(name="blog", path=tmp_path).database()


def test_without_wpbackup_env_the_env_file_is_the_one_beside_dodo_py(tmp_path):
    """The contract's default: `.env` next to dodo.py, whatever the current folder is."""
    repo = Path(__file__).resolve().parent.parent
    assert (repo / "dodo.py").exists()
    assert env_file_path({}) == repo / ".env"
    assert env_file_path({"WPBACKUP_ENV": str(tmp_path / "x.env")}) == tmp_path / "x.env"


def test_a_bad_healthcheck_url_is_refused_without_showing_its_key(tmp_path):
    [problem] = _problems(tmp_path, "HEALTHCHECK_URL=hc-ping.com/5f1c0c9e-secret-uuid\n")
    assert "HEALTHCHECK_URL: expected an http:// or https:// URL" in problem and "secret-uuid" not in problem


@pytest.fixture
def calendar_checks():
    """The calendar check's memory emptied before and after (a test may change its tools)."""
    from wpbackup.config.settings import calendar_problem

    calendar_problem.cache_clear()
    yield calendar_problem
    calendar_problem.cache_clear()


@pytest.mark.parametrize("key", ["BACKUP_ON_CALENDAR", "REPORT_ON_CALENDAR", "VERIFY_ON_CALENDAR"])
@pytest.mark.parametrize("value, expected", [
    ("every night at 3", "is not a calendar expression systemd accepts (systemd-analyze calendar: "),
    ("*-*-* 25:00:00", "is not a calendar expression systemd accepts (systemd-analyze calendar: "),
    ("2001-01-01 03:00:00", "never elapses, so the timer would never fire"),
])
def test_bad_on_calendar_is_refused_with_the_key_and_an_example(tmp_path, calendar_checks, key, value, expected):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed (the light check has its own test)")
    [problem] = _problems(tmp_path, f"{key}={value}\n")
    assert problem.startswith(f"{tmp_path / '.env'}: {key}: {value!r} {expected}"), problem
    assert "e.g. '*-*-* 03:00:00'" in problem


@pytest.mark.parametrize("value", ["daily", "Mon..Fri *-*-* 02:30:00", "*-*-* 03:00:00 Europe/Berlin",
                                   "Sat,Sun *-*-* 04:15", "*-*-1,15 01:00:00"])
def test_good_on_calendar_values_are_taken_as_written(tmp_path, calendar_checks, value):
    assert _settings(tmp_path, f"BACKUP_ON_CALENDAR={value}\n").value("BACKUP_ON_CALENDAR") == value


def test_default_calendars_cost_no_subprocess(tmp_path, calendar_checks, monkeypatch):
    """Loading the settings runs before every doit command: the defaults are known good."""
    import wpbackup.config.settings as settings_module

    def refuse(*args, **kwargs):
        raise AssertionError(f"a subprocess ran: {args}")

    monkeypatch.setattr(settings_module.subprocess, "run", refuse)
    settings = _settings(tmp_path, "BACKUP_ON_CALENDAR=*-*-* 03:00:00\n")
    assert settings.value("VERIFY_ON_CALENDAR") == "Sun *-*-* 05:00:00"


def test_systemd_analyze_decides_where_it_is_installed(tmp_path, calendar_checks):
    from wpbackup.config.settings import _calendar_words

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    assert _calendar_words("*-*-* 25:00:00") is None  # the light check would let this through
    assert "systemd-analyze calendar" in calendar_checks("*-*-* 25:00:00")


@pytest.mark.parametrize("value, expected", [
    ("every night", "'every' is neither a weekday nor a shorthand such as daily"),
    ("daily at 3", "a shorthand such as daily stands alone"),
    ("03:00; reboot", "holds characters no calendar expression has"),
    ("daily", None), ("Mon..Fri *-*-* 02:30:00 Europe/Berlin", None), ("*-*-* 03:00:00 UTC", None),
])
def test_without_systemd_analyze_a_light_check_of_the_words(tmp_path, calendar_checks, monkeypatch, value, expected):
    import wpbackup.config.settings as settings_module

    monkeypatch.setattr(settings_module.shutil, "which", lambda name: None)
    if expected is None:
        assert _settings(tmp_path, f"REPORT_ON_CALENDAR={value}\n").value("REPORT_ON_CALENDAR") == value
        return
    [problem] = _problems(tmp_path, f"REPORT_ON_CALENDAR={value}\n")
    assert problem.startswith(f"{tmp_path / '.env'}: REPORT_ON_CALENDAR: {value!r} is not a calendar expression")
    assert expected in problem and "checked without systemd-analyze" in problem


def test_a_value_holding_a_dollar_brace_is_taken_as_written(tmp_path):
    settings = _settings(tmp_path, "SMTP_HOST=mail.example.com\nREPORT_TO=ops@example.com\n"
                                   "SMTP_PASSWORD='pa${HOME}ss'\nSMTP_USERNAME=${USER}\n")
    assert settings.value("SMTP_PASSWORD") == "pa${HOME}ss" and settings.value("SMTP_USERNAME") == "${USER}"
