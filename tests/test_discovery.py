"""Site discovery (wpbackup/config/discovery.py) on real folder trees, its database check
against the test MariaDB, the first run of `doit backup` without a sites.json, and the one
line per stage that a failed site's later stages print instead of doit's blocks."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from wpbackup.config import discovery
from wpbackup.config.discovery import Found, discover, looked_in, refresh, site_entry
from wpbackup.config.sites import load_sites
from wpbackup.errors import ConfigError

from .conftest import REPO, make_site
from .servers import free_port
from .test_cli import _out

CONFIG = """<?php
define('DB_NAME', '{name}');
define('DB_USER', 'someone');
define('DB_PASSWORD', 'Not-Shown-Pa55');
define('DB_HOST', 'localhost');
$table_prefix = 'wp_';
{extra}
"""


def wp(root: Path, db: str = "wp", config: str = "here", extra: str = "") -> Path:
    """A WordPress layout at ``root``: wp-includes/, wp-content/, wp-load.php, and its
    wp-config.php in the root (``here``), in its parent (``parent``) or nowhere (``none``)."""
    (root / "wp-includes").mkdir(parents=True)
    (root / "wp-content" / "uploads").mkdir(parents=True)
    (root / "wp-load.php").write_text("<?php\n")
    (root / "wp-settings.php").write_text("<?php\n")
    text = CONFIG.format(name=db, extra=extra)
    if config == "here":
        (root / "wp-config.php").write_text(text)
    elif config == "parent":
        (root.parent / "wp-config.php").write_text(text)
    return root


def found(roots, **options) -> list[tuple[str, Path]]:
    return [(f.name, f.path) for f in discover(roots, check_db=False, **options)]


def test_plain_site_and_wp_config_in_the_parent(tmp_path):
    www = tmp_path / "www"
    blog = wp(www / "blog", db="wp_blog")
    public = wp(www / "example.com" / "public", db="wp_example", config="parent")
    (www / "notes").mkdir()
    (www / "notes" / "index.html").write_text("hello")
    result = discover([www], check_db=False)
    assert [(f.name, f.path, f.db_name, f.db_ok) for f in result] == [
        ("blog", blog, "wp_blog", None), ("example.com", public, "wp_example", None)]
    assert all(f.problem == "" for f in result)
    assert "Not-Shown-Pa55" not in repr(result)


def test_a_core_without_wp_config_is_no_site(tmp_path):
    wp(tmp_path / "www" / "unconfigured", config="none")
    assert found([tmp_path / "www"]) == []


def test_a_site_that_is_the_root_itself_and_files_all_layout(tmp_path):
    shop = wp(tmp_path / "shop")
    (shop / "wp-admin").mkdir()
    (shop / "private" / "exports").mkdir(parents=True)
    wp(shop / "private" / "exports" / "staging-copy")  # inside the site: not a site of its own
    assert found([shop]) == [("shop", shop)]


def test_a_site_inside_another_sites_folder_is_not_searched(tmp_path):
    main = wp(tmp_path / "www" / "main")
    wp(main / "blog")
    other = wp(tmp_path / "www" / "other")
    assert found([tmp_path / "www"]) == [("main", main), ("other", other)]


def test_wp_content_is_never_searched(tmp_path):
    blog = wp(tmp_path / "www" / "blog")
    wp(blog / "wp-content" / "backups" / "copy-of-blog")
    loose = tmp_path / "www" / "loose" / "wp-content" / "old"  # a wp-content with no site around it
    wp(loose)
    assert found([tmp_path / "www"]) == [("blog", blog)]


def test_links_out_of_the_root_are_not_followed(tmp_path):
    outside = wp(tmp_path / "elsewhere" / "secret")
    www = tmp_path / "www"
    release = wp(www / "app" / "releases" / "5")
    www.joinpath("escape").symlink_to(outside.parent)
    www.joinpath("app", "current").symlink_to(release)  # inside the root: followed, counted once
    assert found([www]) == [("app", www / "app" / "current")]


def test_a_root_that_is_a_link_is_searched(tmp_path):
    blog = wp(tmp_path / "data" / "www" / "blog")
    tmp_path.joinpath("www").symlink_to(tmp_path / "data" / "www")
    assert found([tmp_path / "www"]) == [("blog", tmp_path / "www" / "blog")]
    assert blog.exists()


def test_nested_roots_and_the_same_name_in_two_roots(tmp_path):
    first = wp(tmp_path / "srv" / "www" / "blog")
    second = wp(tmp_path / "var" / "www" / "blog")
    roots = [tmp_path / "srv" / "www", tmp_path / "var" / "www", tmp_path / "srv"]  # /srv holds /srv/www
    assert found(roots) == [("blog", first), ("blog-2", second)]
    assert found(roots, taken=["blog"]) == [("blog-2", first), ("blog-3", second)]


def test_depth_is_limited(tmp_path):
    deep = wp(tmp_path / "www" / "a" / "b" / "c" / "d" / "site")
    assert found([tmp_path / "www"]) == []
    assert found([tmp_path / "www"], max_depth=5) == [("site", deep)]


def test_odd_folder_names_are_made_valid_and_unique(tmp_path):
    www = tmp_path / "www"
    for folder in ("My Blog!", "Café", "-dash-", "www.Example.COM", "my blog", "x" * 80):
        wp(www / folder)
    names = [name for name, _ in found([www])]
    assert names == ["dash", "cafe", "my-blog", "my-blog-2", "www.example.com", "x" * 63]
    assert all(discovery.SITE_NAME_RE.fullmatch(name) for name in names)


def test_generic_folders_take_the_name_above_or_the_configured_url(tmp_path):
    alice = wp(tmp_path / "home" / "alice" / "public_html")
    news = wp(tmp_path / "var" / "www" / "html",
              extra="define( 'WP_HOME', 'https://www.Example.org/news/' );\ndefine('WP_SITEURL', 'https://x.test');")
    plain = wp(tmp_path / "usr" / "share" / "nginx" / "htdocs")
    roots = [str(tmp_path / "home" / "*" / "public_html"), tmp_path / "var" / "www", tmp_path / "usr"]
    assert found(roots) == [("alice", alice), ("example.org-news", news), ("htdocs", plain)]


def test_the_roots_come_from_the_environment_when_set(tmp_path, monkeypatch):
    one = wp(tmp_path / "one" / "blog")
    two = wp(tmp_path / "two" / "shop")
    monkeypatch.setenv(discovery.ROOTS_VARIABLE, f"{tmp_path / 'one'}:{tmp_path / 'two'}")
    assert found(None) == [("blog", one), ("shop", two)]
    monkeypatch.delenv(discovery.ROOTS_VARIABLE)
    assert discovery.default_roots() == discovery.DEFAULT_ROOTS


def test_looked_in_says_what_exists(tmp_path):
    (tmp_path / "www").mkdir()
    (tmp_path / "file").write_text("")
    text = looked_in([tmp_path / "www", tmp_path / "nope", str(tmp_path / "h" / "*" / "x"), tmp_path / "file"])
    assert text == (f"looked in {tmp_path / 'www'}, {tmp_path / 'nope'} (missing), "
                    f"{tmp_path / 'h' / '*' / 'x'} (no match), {tmp_path / 'file'} (not a folder)")


def test_a_wp_config_this_tool_cannot_read_is_a_problem_not_an_error(tmp_path):
    wp(tmp_path / "www" / "computed", extra="")
    config = tmp_path / "www" / "computed" / "wp-config.php"
    config.write_text(config.read_text().replace("'Not-Shown-Pa55'", "getenv('DB_PASS')"))
    [site] = discover([tmp_path / "www"])
    assert site.db_name == "wp" and site.db_ok is None
    assert "DB_PASSWORD is set through an expression" in site.problem and "site found" not in site.problem


def test_site_entry_is_name_and_path_only():
    entry = site_entry(Found("blog", Path("/var/www/blog"), "wp_blog", True))
    assert entry == {"name": "blog", "path": "/var/www/blog"}


def test_the_sample_starts_minimal_and_holds_no_credentials():
    sample = REPO / "sites.json.sample"
    load_sites(sample)  # it is a valid sites.json
    entries = json.loads(sample.read_text())["sites"]
    assert set(entries[0]) == {"name", "path"}
    for entry in entries:
        assert not {"name", "user", "password", "host", "port", "socket"} & set(entry.get("db", {}))


# --- the database check, against the real test MariaDB ------------------------------------


def test_the_login_of_a_working_site_is_checked(wordpress):
    [site] = discover([wordpress.path])
    assert (site.name, site.db_name, site.db_ok, site.problem) == ("site", "wordpress", True, "")


def _copy_with(tmp_path: Path, wordpress, name: str, old: str, new: str) -> Path:
    site = make_site(tmp_path / "www", wordpress, name=name)
    config = site / "wp-config.php"
    config.write_text(config.read_text().replace(old, new))
    return site


def test_a_wrong_password_unknown_database_or_server_down_says_why(tmp_path, wordpress):
    _copy_with(tmp_path, wordpress, "badpass", wordpress.db_password, "Wr0ng-Pa55word-77")
    _copy_with(tmp_path, wordpress, "nodb", "'DB_NAME', 'wordpress'", "'DB_NAME', 'no_such_db'")
    _copy_with(tmp_path, wordpress, "down", f"127.0.0.1:{wordpress.mariadb.port}", f"127.0.0.1:{free_port()}")
    by_name = {f.name: f for f in discover([tmp_path / "www"])}
    assert sorted(by_name) == ["badpass", "down", "nodb"]
    assert by_name["badpass"].db_ok is False and "login refused for user 'u_wordpress'" in by_name["badpass"].problem
    assert by_name["nodb"].db_ok is False and "no_such_db" in by_name["nodb"].problem
    assert by_name["down"].db_ok is False and "unreachable" in by_name["down"].problem
    for site in by_name.values():
        assert "\n" not in site.problem
        for secret in ("Wr0ng-Pa55word-77", wordpress.db_password):
            assert secret not in site.problem and secret not in discovery.describe(site)


def test_a_generic_folder_takes_its_name_from_the_siteurl_option(tmp_path, wordpress):
    html = make_site(tmp_path / "var" / "www", wordpress, name="html")
    [site] = discover([tmp_path / "var" / "www"])
    assert (site.name, site.path, site.db_ok) == ("wp.test", html, True)  # the fixture's siteurl


# --- refresh (`doit configure --discover`) -----------------------------------------------


def test_refresh_adds_new_sites_reports_vanished_ones_and_keeps_the_rest(tmp_path):
    www = tmp_path / "www"
    blog = wp(www / "blog")
    gone = wp(www / "gone")
    sites_file = tmp_path / "sites.json"
    before = {"sites": [
        {"name": "blog", "path": str(blog), "exclude": ["wp-content/big"], "db": {"tables": "prefix"}},
        {"name": "gone", "path": str(gone), "enabled": False},
    ]}
    sites_file.write_text(json.dumps(before, indent=1))
    shutil.rmtree(gone / "wp-includes")
    shutil.rmtree(gone / "wp-content")
    wp(www / "shop")
    wp(tmp_path / "other" / "blog")  # the same folder name again: a name not taken yet
    added, vanished = refresh(sites_file, discover([www, tmp_path / "other"], check_db=False))
    assert (added, vanished) == (["shop", "blog-2"], ["gone"])
    after = json.loads(sites_file.read_text())
    assert after["sites"][:2] == before["sites"]
    assert after["sites"][2:] == [{"name": "shop", "path": str(www / "shop")},
                                  {"name": "blog-2", "path": str(tmp_path / "other" / "blog")}]
    assert stat.S_IMODE(sites_file.stat().st_mode) == 0o600
    backup = tmp_path / "sites.json.bak"
    assert json.loads(backup.read_text()) == before and stat.S_IMODE(backup.stat().st_mode) == 0o600
    assert [s.name for s in load_sites(sites_file)] == ["blog", "gone", "shop", "blog-2"]


def test_refresh_with_nothing_new_writes_nothing_and_names_stay_unique(tmp_path):
    blog = wp(tmp_path / "www" / "blog")
    sites_file = tmp_path / "sites.json"
    sites_file.write_text(json.dumps({"sites": [{"name": "blog", "path": str(tmp_path / "www" / "." / "blog")}]}))
    text = sites_file.read_text()
    assert refresh(sites_file, discover([tmp_path / "www"], check_db=False)) == ([], [])
    assert sites_file.read_text() == text and not (tmp_path / "sites.json.bak").exists()
    # a found site proposing a name that is configured for another path gets a free one
    assert refresh(sites_file, [Found("blog", blog.parent / "new", None, None)]) == (["blog-2"], [])


def test_refresh_refuses_an_invalid_sites_file(tmp_path):
    sites_file = tmp_path / "sites.json"
    sites_file.write_text('{"sites": [{"name": "Bad Name", "path": "/x"}]}')
    with pytest.raises(ConfigError, match="name"):
        refresh(sites_file, [])
    assert not (tmp_path / "sites.json.bak").exists()


def test_refresh_creates_a_missing_sites_file(tmp_path):
    blog = wp(tmp_path / "www" / "blog")
    sites_file = tmp_path / "sites.json"
    assert refresh(sites_file, discover([tmp_path / "www"], check_db=False)) == (["blog"], [])
    assert json.loads(sites_file.read_text()) == {"sites": [{"name": "blog", "path": str(blog)}]}
    assert stat.S_IMODE(sites_file.stat().st_mode) == 0o600


# --- the first run, end to end --------------------------------------------------------------


def _first_run(install, roots: str, *args: str) -> subprocess.CompletedProcess:
    install.env_path.write_text("SERVER_ID=web-1\n")
    return subprocess.run(install.command(*args), capture_output=True, text=True, timeout=300,
                          env=install.process_env({discovery.ROOTS_VARIABLE: roots}), cwd=install.root)


def test_first_run_discovers_writes_sites_json_and_backs_up(install, wordpress):
    sites_file = install.root / "sites.json"
    result = _first_run(install, str(wordpress.path.parent), "backup")
    output = _out(result)
    assert result.returncode == 0, output
    assert f"found 1 WordPress site and wrote {sites_file}" in output
    assert f"site: {wordpress.path} (database wordpress: login works)" in output
    assert json.loads(sites_file.read_text()) == {"sites": [{"name": "site", "path": str(wordpress.path)}]}
    assert stat.S_IMODE(sites_file.stat().st_mode) == 0o600
    assert "SUMMARY site: OK" in output and "local only" in output
    [archive] = install.archives()
    assert archive.name.startswith("site-backup-")
    verify = _first_run(install, "/nonexistent", "verify", "--site", "site")
    assert verify.returncode == 0, _out(verify)
    assert "Traceback" not in output and wordpress.db_password not in output
    again = _first_run(install, "/nonexistent", "backup")  # sites.json exists now: no discovery
    assert again.returncode == 0, _out(again)
    assert "no sites.json yet" not in _out(again)


def test_first_run_that_finds_nothing_says_where_it_looked(install, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    result = _first_run(install, f"{empty}:{tmp_path / 'missing'}", "backup")
    assert result.returncode == 3
    assert f"looked in {empty}, {tmp_path / 'missing'} (missing)" in result.stderr
    assert discovery.ROOTS_VARIABLE in result.stderr and "sites.json.sample" in result.stderr
    assert "Traceback" not in _out(result)
    assert not (install.root / "sites.json").exists() and not (install.root / "sites.json.bak").exists()


def test_only_a_backup_discovers(install, wordpress):
    result = _first_run(install, str(wordpress.path.parent), "status")
    assert result.returncode == 3 and "sites.json.sample" in result.stderr
    assert not (install.root / "sites.json").exists()


# --- a failed site's output -------------------------------------------------------------------


def test_a_failed_site_prints_one_line_per_stage_not_run(install, wordpress):
    install.add_site("good", wordpress)
    install.add_site("bad", wordpress, db={"password": "not-the-password-42"})
    result = install.doit("backup")
    output = _out(result)
    assert result.returncode != 0
    assert "UnmetDependency" not in output
    not_run = [line for line in output.splitlines() if "not run" in line]
    stages = ("compress", "upload", "catalog")
    assert not_run == [f"x  {stage}:bad: not run, because dump:bad failed" for stage in stages]
    assert output.count("TaskFailed - taskid:dump:bad") == 1
    assert output.count("SUMMARY bad: FAILED at dump") == 1 and "SUMMARY good: OK" in output
    assert "not-the-password-42" not in output
    assert os.path.exists(install.root / "sites.json")
