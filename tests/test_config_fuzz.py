"""Property-based tests of the configuration: whatever sites.json or .env holds (wrong types,
unknown keys, unicode, huge and deep values, '../', quotes, spaces, control characters, bytes
that are no UTF-8), loading it gives valid settings or a clean ConfigError whose problems are
one short line each, never another exception. A few generated bad configurations then go
through a real `doit backup`: exit 3, no traceback, no archive.

The in-process properties are cheap (a few hundred examples); the subprocess ones are the
slow part and are kept to a handful of examples.
"""

from __future__ import annotations

import json
import math
import re
import subprocess

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from wpbackup.config.settings import BY_NAME, KEYS, S3_SETTINGS, load_settings
from wpbackup.config.sites import SITE_NAME_RE, load_sites, parse_sites
from wpbackup.errors import BackupError, ConfigError

IN_PROCESS = settings(max_examples=200, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
THROUGH_DOIT = settings(max_examples=3, deadline=None, database=None,
                        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])

NASTY = ["blog", "blog\n", "shop", "../etc", "a/../b", "/srv/blog", "/srv/../etc", "/srv/blog\n", "", " ",
         "'", '"', "\\", "\x00", "a\x00b", "\u202eevil", "café", "\udc80", "\ud800", "😀", "wp-content", "all",
         "prefix", "a b", "\t", "x" * 5000, "/" + "a" * 5000, "9" * 40, "NaN", "-1", "0", "1e400", "inf",
         "${HOME}", "$(id)", "`id`", "C:\\x", "/", "//", "wp_", "wp-", "null", "true"]
texts = st.one_of(st.sampled_from(NASTY), st.text(max_size=20),
                  st.text(alphabet=st.characters(max_codepoint=0x7F), max_size=12))
scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2 ** 70), max_value=2 ** 70),
                    st.floats(), texts)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                      max_leaves=8)
DB_KEYS = ["name", "user", "password", "host", "port", "socket", "tables", "table_prefix", "pass"]
dbs = st.one_of(st.dictionaries(st.one_of(st.sampled_from(DB_KEYS), texts),
                                st.one_of(values, st.integers(0, 70000)), max_size=4), values)
sites_entries = st.builds(
    lambda known, unknown: {**unknown, **known},
    st.fixed_dictionaries(
        {"name": st.one_of(st.sampled_from(["blog", "shop", "a.b-c_d"]), texts),
         "path": st.one_of(st.sampled_from(["/srv/blog", "/", "/tmp"]), texts)},
        optional={"enabled": values, "files": st.one_of(st.sampled_from(["wp-content", "all"]), values),
                  "exclude": st.one_of(st.lists(texts, max_size=3), values), "db": dbs}),
    st.dictionaries(texts, values, max_size=2),
)
documents = st.one_of(
    values,
    st.fixed_dictionaries({"sites": st.lists(st.one_of(sites_entries, values), max_size=3)},
                          optional={"extra": values}),
)


@st.composite
def sites_files(draw) -> bytes:
    """sites.json bytes: a generated document, or damaged, deep or arbitrary bytes."""
    raw = json.dumps(draw(documents), ensure_ascii=draw(st.booleans())).encode("utf-8", "surrogatepass")
    kind = draw(st.sampled_from(["json", "json", "json", "cut", "deep", "bytes", "duplicate"]))
    if kind == "cut":
        return raw[:draw(st.integers(0, len(raw)))]
    if kind == "deep":
        depth = draw(st.sampled_from([10, 999, 1000, 5000, 100_000]))
        return b'{"sites": ' + b"[" * depth + b"]" * draw(st.sampled_from([0, depth]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "duplicate":
        return b'{"sites": [{"name": "blog", "path": "/a", "path": ' + raw + b"}]}"
    return raw


SECRET_MARK = "SeKr1t"
env_names = st.one_of(st.sampled_from([key.name for key in KEYS] + ["S3_BUKET", "KEEP_DAYLY", "s3_bucket",
                                                                       "WPBACKUP_ENV", "MY_VAR", "export X"]),
                      st.text(max_size=10))
env_values = st.one_of(st.sampled_from(NASTY + ["http://x", "https://s3.example.com", "5", "5121", "crc32",
                                                "starttls", "root@h:22", "a@b.c", "wp-backups", "STANDARD",
                                                "a\\nb", "a\x01b", "\x1b[31m", "x\x7f"]),
                       st.text(max_size=30))


@st.composite
def env_files(draw) -> bytes:
    """.env bytes: KEY=value lines (quoted or not, secrets marked so a leak shows), stray
    text, or arbitrary bytes."""
    if draw(st.integers(0, 9)) == 0:
        return draw(st.binary(max_size=200))
    lines = []
    for _ in range(draw(st.integers(0, 6))):
        name = draw(env_names)
        value = draw(env_values)
        if name in BY_NAME and BY_NAME[name].secret:
            value = SECRET_MARK + value
        quote = draw(st.sampled_from(["", "'", '"']))
        lines.append(draw(st.one_of(st.just(f"{name}={quote}{value}{quote}"), st.text(max_size=20))))
    return "\n".join(lines).encode("utf-8", "surrogatepass")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


def _clean(problems: list[str], source: str) -> None:
    """What every configuration error must be: lines that name their file, short, one each."""
    assert problems
    for problem in problems:
        assert isinstance(problem, str) and "\n" not in problem and len(problem) < 2000, problem
        assert problem.startswith((source, "environment: ")), problem


@IN_PROCESS
@given(raw=sites_files())
def test_any_sites_json_loads_cleanly_or_is_a_config_error(folder, raw):
    from wpbackup.backup import steps

    path = folder / "sites.json"
    path.write_bytes(raw)
    try:
        sites = load_sites(path)
    except ConfigError as exc:
        _clean(exc.problems, str(path))
        return
    for site in sites:
        assert SITE_NAME_RE.fullmatch(site.name) and site.path.is_absolute() and ".." not in site.path.parts
        assert all(isinstance(pattern, str) and ".." not in pattern.split("/") for pattern in site.exclude)
        try:
            site.database()
        except BackupError:
            pass
        steps.archive_fingerprint(site)  # what doit's load computes for every site


@IN_PROCESS
@given(raw=env_files())
def test_any_env_file_loads_cleanly_or_is_a_config_error(folder, raw):
    path = folder / ".env"
    path.write_bytes(raw)
    try:
        loaded = load_settings({"WPBACKUP_ENV": str(path)})
    except ConfigError as exc:
        _clean(exc.problems, str(path))
        assert not any(SECRET_MARK in problem for problem in exc.problems)
        return
    assert 1 <= loaded.zstd_level <= 22 and 0 <= loaded.zstd_threads <= 256 and loaded.local_keep >= 1
    assert loaded.s3_part_size_mb == 0 or 5 <= loaded.s3_part_size_mb <= 5120
    assert 1 <= loaded.s3_max_attempts <= 20 and min(loaded.keep_daily, loaded.keep_weekly, loaded.keep_monthly) >= 0
    for hours in (loaded.stale_run_hours, loaded.backup_max_age_hours):
        assert math.isfinite(hours) and 0 < hours <= 8760
    assert loaded.s3_enabled or not any(loaded.raw.get(name) for name in S3_SETTINGS)
    assert not any(SECRET_MARK in warning or "\n" in warning for warning in loaded.warnings)
    for value in loaded.values.values():  # every value taken is a whole one: no stray line break
        for item in value if isinstance(value, tuple) else (value,):
            assert not (isinstance(item, str) and re.search(r"[\x00-\x1f\x7f]", item)), item


# --- through a real `doit backup`: a valid site next to one bad setting ---------------------

bad_site_fields = st.one_of(
    st.fixed_dictionaries({"name": st.sampled_from(["blog\n", "Blog", "../blog", "blog/x", "b log", "", "é"])}),
    st.fixed_dictionaries({"path": st.sampled_from(["relative/site", "/srv/../site", "/srv/site\n", "/a\x00b",
                                                    "/" + "p" * 5000])}),
    st.fixed_dictionaries({"exclude": st.lists(st.sampled_from(["../x", "/etc", "a\nb"]), min_size=1, max_size=2)}),
    st.fixed_dictionaries({"db": st.fixed_dictionaries({}, optional={
        "port": st.sampled_from([0, 65536, "3306", True]), "socket": st.sampled_from(["rel.sock", "/s\n"]),
        "name": st.sampled_from(["", "wp\n"]), "password": st.sampled_from(["pw\nx", 42]),
        "table_prefix": st.sampled_from(["wp-", ""]), "colour": st.just("red")})}),
    st.dictionaries(st.sampled_from(["colour", "enabled", "files"]), values, min_size=1, max_size=2),
)


def _run_backup(install) -> subprocess.CompletedProcess:
    return subprocess.run(install.command("backup"), capture_output=True, text=True, timeout=120,
                          env=install.process_env(), cwd=install.root)


def _refused(install, result, source) -> None:
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert f"configuration error, nothing was run:\n  {source}" in result.stderr
    assert not install.backup_dir.exists() or not list(install.backup_dir.rglob("*.tar.zst"))


@THROUGH_DOIT
@given(fields=bad_site_fields)
def test_doit_backup_refuses_a_generated_bad_sites_json(install, wordpress, fields):
    document = {"sites": [{"name": "good", "path": str(wordpress.path)},
                          {"name": "blog", "path": str(wordpress.path), **fields}]}
    try:
        parse_sites(document, "sites.json")
        rejected = False
    except ConfigError:
        rejected = True
    assume(rejected)
    install.env_path.write_text("SERVER_ID=web-1\n")
    (install.root / "sites.json").write_text(json.dumps(document))
    _refused(install, _run_backup(install), str(install.root / "sites.json"))


bad_env_lines = st.one_of(
    st.tuples(st.sampled_from(["ZSTD_LEVEL", "S3_PART_SIZE_MB", "STALE_RUN_HOURS", "LOCAL_KEEP", "SERVER_ID",
                               "SMTP_PORT", "S3_CHECKSUM", "DEPLOY_HOSTS"]),
              st.sampled_from(["0", "-1", "nan", "inf", "1e400", "4", "99999", "x y", "Web_1", "@h"])),
    st.tuples(st.sampled_from(["S3_ENDPOINT_URL", "S3_ACCESS_KEY_ID", "S3_PREFIX", "S3_REGION"]),
              st.sampled_from(["http://127.0.0.1:9", "AKIAEXAMPLE", "team", "eu-west-1"])),
)


@THROUGH_DOIT
@given(line=bad_env_lines)
def test_doit_backup_refuses_a_generated_bad_env(install, wordpress, line):
    key, value = line
    text = f"SERVER_ID=web-1\n{key}={value}\n"
    install.env_path.write_text(text)
    try:
        load_settings({"WPBACKUP_ENV": str(install.env_path)})
        rejected = False
    except ConfigError:
        rejected = True
    assume(rejected)
    (install.root / "sites.json").write_text(json.dumps({"sites": [{"name": "good", "path": str(wordpress.path)}]}))
    _refused(install, _run_backup(install), str(install.env_path))
