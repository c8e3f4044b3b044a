"""`doit configure`: the real wizard in a pseudo-terminal, typed into as a person would (pexpect),
against the test MariaDB, moto S3 and aiosmtpd; `--from answers.json`; `--discover`; and the
pieces underneath (the `.env` editor, the checks)."""

from __future__ import annotations

import io
import json
import re
import stat
import subprocess
import sys

import pexpect
import pytest

from wpbackup.config.settings import load_settings
from wpbackup.config.sites import load_sites, parse_sites
from wpbackup.errors import ConfigError
from wpbackup.ops import checks
from wpbackup.ops.envfile import EnvFile, encode, lenient_settings, save

from .conftest import REPO, make_site
from .smtp import PASSWORD as SMTP_PASSWORD
from .smtp import USERNAME as SMTP_USERNAME

S3_SECRET = "s3-Secret-Key-77af31"
NOTIFY_SECRET = "json://127.0.0.1:9/hook-Token-5521"


class Wizard:
    """`doit configure` in a pseudo-terminal; ``transcript`` is everything the terminal showed
    (what the program printed and what the terminal echoed of the typing)."""

    def __init__(self, install, roots, *args: str):
        env = install.process_env({"WPBACKUP_DISCOVER_ROOTS": str(roots)})
        self.transcript = io.StringIO()
        self.child = pexpect.spawn(sys.executable, ["-m", "doit", "-f", str(REPO / "dodo.py"), "configure", *args],
                                   env=env, cwd=str(install.root), encoding="utf-8", timeout=90,
                                   dimensions=(60, 200))
        self.child.logfile_read = self.transcript

    def expect(self, pattern: str) -> None:
        self.child.expect(pattern)

    def type(self, pattern: str, text: str) -> None:
        """Wait for the question, then type the answer and Enter."""
        self.child.expect(pattern)
        self.child.sendline(text)

    def key(self, name: str, text: str) -> None:
        self.type(rf"  {re.escape(name)} \[[^\]\r\n]*\]: ", text)

    def section(self, title: str, edit: bool) -> None:
        self.type(rf"Edit {re.escape(title)}\? \[y/N\] ", "y" if edit else "")

    def skip(self, *titles: str) -> None:
        for title in titles:
            self.section(title, False)

    def end(self) -> int:
        self.child.expect(pexpect.EOF)
        self.child.close()
        return self.child.exitstatus if self.child.exitstatus is not None else 128 + self.child.signalstatus

    @property
    def text(self) -> str:
        return self.transcript.getvalue()


def _mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _doit(install, *args: str, roots=None) -> subprocess.CompletedProcess:
    """doit on the install as it is on disk (Install.doit would write its own files first)."""
    extra = {"WPBACKUP_DISCOVER_ROOTS": str(roots)} if roots else {}
    return subprocess.run(install.command(*args), capture_output=True, text=True, timeout=300,
                          env=install.process_env(extra), cwd=install.root)


@pytest.fixture
def roots(tmp_path, wordpress):
    """A folder to discover, holding one WordPress site ("blog") on the test database."""
    folder = tmp_path / "www"
    folder.mkdir()
    make_site(folder, wordpress, name="blog")
    return folder


def test_first_install_through_the_wizard_then_backup_succeeds(install, roots, wordpress, s3, smtp):
    wizard = Wizard(install, roots)
    wizard.section("Server", True)
    wizard.key("SERVER_ID", "Web 7")
    wizard.expect("SERVER_ID: 'Web 7' is not valid")
    wizard.key("SERVER_ID", "web-7")
    wizard.section("Storage (S3-compatible)", True)
    for name, text in [("S3_BUCKET", "no-such-bucket"), ("S3_ENDPOINT_URL", s3.url), ("S3_REGION", ""),
                       ("S3_ACCESS_KEY_ID", "testing"), ("S3_SECRET_ACCESS_KEY", S3_SECRET), ("S3_PREFIX", ""),
                       ("S3_STORAGE_CLASS", "")]:
        wizard.key(name, text)
    wizard.skip("Fleet catalog (Cloudflare D1)")
    wizard.section("Daily report (SMTP)", True)
    for name, text in [("SMTP_HOST", "127.0.0.1"), ("SMTP_PORT", str(smtp.starttls.port)),
                       ("SMTP_SECURITY", "starttls"), ("SMTP_USERNAME", SMTP_USERNAME),
                       ("SMTP_PASSWORD", SMTP_PASSWORD), ("REPORT_FROM", "backups@example.test"),
                       ("REPORT_TO", "ops@example.test")]:
        wizard.key(name, text)
    wizard.section("Alerts", True)
    wizard.key("NOTIFY_URLS", NOTIFY_SECRET)
    wizard.key("NOTIFY_ON", "")
    wizard.key("HEALTHCHECK_URL", "")
    wizard.section("Schedules (systemd timers)", True)
    wizard.key("BACKUP_ON_CALENDAR", "every night")
    wizard.expect("BACKUP_ON_CALENDAR: 'every night' is not a calendar expression systemd accepts")
    wizard.key("BACKUP_ON_CALENDAR", "*-*-* 02:30:00")
    wizard.key("REPORT_ON_CALENDAR", "")
    wizard.key("VERIFY_ON_CALENDAR", "")
    wizard.section("Retention", True)
    wizard.key("KEEP_DAILY", "lots")
    wizard.expect("KEEP_DAILY: expected a number")
    wizard.key("KEEP_DAILY", "5")
    for name in ("KEEP_WEEKLY", "KEEP_MONTHLY", "LOCAL_KEEP"):
        wizard.key(name, "")
    wizard.skip("Deploy (SSH)")
    wizard.expect("found, not in sites.json: blog: ")
    wizard.type("sites> ", "a all")
    wizard.expect("added blog")
    wizard.type("sites> ", "")
    wizard.expect(r"ok      database of site blog: login works")
    wizard.expect(r"FAILED  S3 bucket no-such-bucket: S3 bucket no-such-bucket does not exist")
    wizard.type(r"S3 bucket no-such-bucket failed: f to fix it, k to keep it as it is \[f\]: ", "f")
    wizard.key("S3_BUCKET", s3.bucket)
    for name in ("S3_ENDPOINT_URL", "S3_REGION", "S3_ACCESS_KEY_ID", "S3_SECRET_ACCESS_KEY", "S3_PREFIX",
                 "S3_STORAGE_CLASS"):
        wizard.key(name, "")  # Enter keeps each, the secret too
    wizard.expect(rf"ok      S3 bucket {s3.bucket}: bucket {s3.bucket} answers")
    wizard.expect(r"ok      SMTP server 127.0.0.1: logged in to 127.0.0.1")
    wizard.expect(r"ok      BACKUP_ON_CALENDAR")
    wizard.type(r"Write .*\? \[Y/n\] ", "")
    wizard.expect("next: doit backup")
    assert wizard.end() == 0, wizard.text

    text = wizard.text
    for secret in (S3_SECRET, SMTP_PASSWORD, NOTIFY_SECRET, "hook-Token"):
        assert secret not in text
    assert "S3_SECRET_ACCESS_KEY [(set)]" in text and "Traceback" not in text
    env_path, sites_path = install.env_path, install.root / "sites.json"
    assert _mode(env_path) == 0o600 and _mode(sites_path) == 0o600
    assert not (install.root / ".env.bak").exists()  # there was no .env before
    settings = load_settings({"WPBACKUP_ENV": str(env_path)})
    assert (settings.server_id, settings.s3_bucket, settings.s3_secret_access_key) == ("web-7", "wp-backups", S3_SECRET)
    assert settings.value("SMTP_PASSWORD") == SMTP_PASSWORD and settings.keep_daily == 5
    assert settings.value("BACKUP_ON_CALENDAR") == "*-*-* 02:30:00"
    assert settings.value("NOTIFY_URLS") == (NOTIFY_SECRET,)
    [site] = load_sites(settings.sites_file)
    assert (site.name, site.path, site.db) == ("blog", roots / "blog", {})
    assert [o["Key"] for o in s3.s3.list_objects_v2(Bucket=s3.bucket).get("Contents", [])] == []  # probe gone

    backup = _doit(install, "backup")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert "SUMMARY blog: OK" in backup.stdout
    [stored] = [o["Key"] for o in s3.s3.list_objects_v2(Bucket=s3.bucket)["Contents"]]
    assert stored.startswith("web-7/") and "/blog-backup-" in stored


def _existing_install(install, wordpress, roots) -> tuple[str, str]:
    """An install with a commented .env holding a bad value and a key of someone else's, and a
    sites.json whose only site has the wrong database password: (.env text, sites.json text)."""
    env_text = ("# notes of the person who set this up\nSERVER_ID=web-1\n\n# retention\nKEEP_DAILY=lots\n"
                "MY_OWN_SETTING='kept as it is'\n")
    sites_text = json.dumps({"sites": [{"name": "blog", "path": str(roots / "blog"),
                                        "db": {"password": "Wrong-pass-1234"}}]}, indent=2)
    install.env_path.write_text(env_text)
    (install.root / "sites.json").write_text(sites_text)
    return env_text, sites_text


def test_broken_install_is_fixed_and_a_failing_database_login_is_fixable(install, wordpress, roots):
    env_text, sites_text = _existing_install(install, wordpress, roots)
    broken = _doit(install, "status")
    assert broken.returncode == 3 and "KEEP_DAILY" in broken.stderr  # no run takes it as it is

    wizard = Wizard(install, roots)
    wizard.skip("Server", "Storage (S3-compatible)", "Fleet catalog (Cloudflare D1)", "Daily report (SMTP)",
                "Alerts", "Schedules (systemd timers)")
    wizard.expect("now: KEEP_DAILY=lots")
    wizard.skip("Retention", "Deploy (SSH)")
    wizard.expect(r"1\. blog  ")
    wizard.type("sites> ", "")
    wizard.expect(r"problem: .*\.env: KEEP_DAILY: expected a number")
    wizard.type(r"Fix Retention now\? \[Y/n\] ", "")
    wizard.key("KEEP_DAILY", "")  # Enter cannot keep a value no run accepts
    wizard.expect("KEEP_DAILY: the current value is refused")
    wizard.key("KEEP_DAILY", "9")
    for name in ("KEEP_WEEKLY", "KEEP_MONTHLY", "LOCAL_KEEP"):
        wizard.key(name, "")
    wizard.expect(r"FAILED  database of site blog: login refused for user 'u_wordpress'")
    wizard.type(r"failed: f to fix it, k to keep it as it is \[f\]: ", "f")
    for name in ("name", "path", "files", "exclude"):
        wizard.key(name, "")
    wizard.type(r"Edit its database settings .*\? \[Y/n\] ", "")
    wizard.key("db.name", "")
    wizard.key("db.user", "")
    wizard.key("db.password", wordpress.db_password)
    for name in ("db.host", "db.port", "db.socket", "db.tables"):
        wizard.key(name, "")
    wizard.expect(r"ok      database of site blog: login works")
    wizard.type(r"Write .*\? \[Y/n\] ", "y")
    wizard.expect("next: doit backup")
    assert wizard.end() == 0, wizard.text

    assert wordpress.db_password not in wizard.text and "Wrong-pass-1234" not in wizard.text
    env_path, sites_path = install.env_path, install.root / "sites.json"
    assert (install.root / ".env.bak").read_text() == env_text
    assert (install.root / "sites.json.bak").read_text() == sites_text
    assert {_mode(p) for p in (env_path, sites_path, install.root / ".env.bak", install.root / "sites.json.bak")} \
        == {0o600}
    assert env_path.read_text() == env_text.replace("KEEP_DAILY=lots", "KEEP_DAILY=9")  # the rest as it was
    settings = load_settings({"WPBACKUP_ENV": str(env_path)})
    [site] = load_sites(settings.sites_file)
    assert site.db == {"password": wordpress.db_password} and settings.keep_daily == 9
    assert _doit(install, "status").returncode != 3  # loads now (no backup yet: not healthy)


def test_enter_everywhere_keeps_everything_and_writes_nothing(install, roots):
    install.env_path.write_text("# mine\nSERVER_ID=web-1\n")
    (install.root / "sites.json").write_text(json.dumps({"sites": [{"name": "blog", "path": str(roots / "blog")}]}))
    wizard = Wizard(install, roots)
    wizard.skip("Server", "Storage (S3-compatible)", "Fleet catalog (Cloudflare D1)", "Daily report (SMTP)",
                "Alerts", "Schedules (systemd timers)", "Retention", "Deploy (SSH)")
    wizard.type("sites> ", "")
    wizard.expect(r"ok      database of site blog: login works")
    wizard.expect("nothing changed: nothing written")
    assert wizard.end() == 0
    assert sorted(p.name for p in install.root.iterdir() if not p.name.startswith(".doit")) == [".env", "sites.json"]


def test_ctrl_c_stops_at_once_with_the_terminal_as_it_was(install, roots):
    wizard = Wizard(install, roots)
    wizard.skip("Server")
    wizard.section("Storage (S3-compatible)", True)
    for name in ("S3_BUCKET", "S3_ENDPOINT_URL", "S3_REGION", "S3_ACCESS_KEY_ID"):
        wizard.key(name, "x-bucket" if name == "S3_BUCKET" else "")
    wizard.expect(r"S3_SECRET_ACCESS_KEY \[not set\]: ")  # getpass has turned the echo off
    assert not wizard.child.getecho()
    wizard.child.sendintr()
    wizard.expect("stopped: nothing was written")
    wizard.expect(pexpect.EOF)
    assert wizard.child.getecho()  # back on, as the person's terminal was
    assert wizard.end() == 130
    assert "Traceback" not in wizard.text
    assert not install.env_path.exists() and not (install.root / "sites.json").exists()


def test_without_a_terminal_it_says_how_to_run_it(install):
    result = _doit(install, "configure")
    assert result.returncode != 0 and "run it in a terminal" in result.stdout + result.stderr


def _answers(install, tmp_path, answers: dict):
    path = tmp_path / "answers.json"
    path.write_text(json.dumps(answers))
    return path


def test_from_answers_writes_a_configuration_that_loads(install, roots, s3, tmp_path):
    path = _answers(install, tmp_path, {
        "env": {"SERVER_ID": "web-3", "S3_BUCKET": s3.bucket, "S3_ENDPOINT_URL": s3.url,
                "S3_ACCESS_KEY_ID": "testing", "S3_SECRET_ACCESS_KEY": S3_SECRET, "KEEP_DAILY": 3},
        "discover": True})
    result = _doit(install, "configure", "--from", str(path), roots=roots)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "ok      database of site blog" in output and f"ok      S3 bucket {s3.bucket}" in output
    assert S3_SECRET not in output
    settings = load_settings({"WPBACKUP_ENV": str(install.env_path)})
    assert (settings.server_id, settings.keep_daily, settings.s3_secret_access_key) == ("web-3", 3, S3_SECRET)
    assert [site.name for site in load_sites(settings.sites_file)] == ["blog"]
    assert _mode(install.env_path) == 0o600 and _mode(settings.sites_file) == 0o600


def test_from_answers_with_failing_checks_writes_nothing(install, roots, s3, tmp_path):
    path = _answers(install, tmp_path, {
        "env": {"S3_BUCKET": "no-such-bucket", "S3_ENDPOINT_URL": s3.url, "S3_ACCESS_KEY_ID": "testing",
                "S3_SECRET_ACCESS_KEY": S3_SECRET},
        "sites": [{"name": "blog", "path": str(roots / "blog"), "db": {"password": "Wrong-pass-1234"}}]})
    result = _doit(install, "configure", "--from", str(path), roots=roots)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "2 checks failed, nothing was written" in output
    assert "database of site blog (login refused for user 'u_wordpress'" in output
    assert "S3 bucket no-such-bucket (S3 bucket no-such-bucket does not exist" in output
    assert S3_SECRET not in output and "Wrong-pass-1234" not in output
    assert not install.env_path.exists() and not (install.root / "sites.json").exists()

    skipped = _answers(install, tmp_path, {**json.loads(path.read_text()), "skip_checks": ["database", "s3"]})
    result = _doit(install, "configure", "--from", str(skipped), roots=roots)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "skipped database of site blog" in result.stdout and install.env_path.exists()


@pytest.mark.parametrize("answers, expected", [
    ({"env": {"S3_BUKET": "x"}}, "S3_BUKET: not a key this tool reads; did you mean S3_BUCKET?"),
    ({"env": {"KEEP_DAILY": "lots"}}, "KEEP_DAILY: expected a number"),
    ({"env": {"S3_PREFIX": "backups"}}, "S3_BUCKET: not set, while S3_PREFIX is"),
    ({"sites": [{"name": "Blog", "path": "/srv/x"}]}, "name: 'Blog' must match"),
    ({"env": {}, "colour": "red"}, "unknown key 'colour'"),
])
def test_from_answers_that_are_not_valid_are_named(install, tmp_path, answers, expected):
    result = _doit(install, "configure", "--from", str(_answers(install, tmp_path, answers)))
    output = result.stdout + result.stderr
    assert result.returncode != 0 and expected in output and "Traceback" not in output
    assert not install.env_path.exists()


def test_discover_adds_new_sites_and_reports_vanished_ones(install, roots, wordpress, tmp_path):
    install.env_path.write_text("SERVER_ID=web-1\n")
    sites = {"sites": [{"name": "old", "path": str(tmp_path / "gone"), "enabled": True}]}
    (install.root / "sites.json").write_text(json.dumps(sites))
    result = _doit(install, "configure", "--discover", roots=roots)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "added blog: " in output and "login works" in output
    assert "vanished: old" in output
    data = json.loads((install.root / "sites.json").read_text())
    assert data["sites"][0] == sites["sites"][0]  # left as it was
    assert data["sites"][1] == {"name": "blog", "path": str(roots / "blog")}
    assert json.loads((install.root / "sites.json.bak").read_text()) == sites
    again = _doit(install, "configure", "--discover", roots=roots)
    assert again.returncode == 0 and "no new site" in again.stdout and "vanished: old" in again.stdout


# --- the pieces underneath -----------------------------------------------------------------


@pytest.mark.parametrize("value", ["plain-value", "two words", "has#hash", "it's", 'say "hi"', "back\\slash",
                                   "end\\", "$HOME and $1", "ünïcode", "*-*-* 03:00:00", "a'b\\'c", "=x=",
                                   "pa${HOME}ss"])
def test_env_values_read_back_exactly(tmp_path, value):
    document = EnvFile.parse(tmp_path / ".env", "# comment\nOTHER=1\n")
    document.set("SMTP_PASSWORD", value)
    path = tmp_path / ".env"
    path.write_text(document.text())
    assert EnvFile.read(path).values() == {"OTHER": "1", "SMTP_PASSWORD": value}
    settings = load_settings({"WPBACKUP_ENV": str(path), "SMTP_HOST": "mail.example", "REPORT_TO": "a@b.example"})
    assert settings.value("SMTP_PASSWORD") == value


def test_env_value_that_env_cannot_carry_is_refused():
    with pytest.raises(ValueError, match="line break"):
        encode("pa\nss")


def test_env_edits_keep_comments_order_and_unknown_lines(tmp_path):
    text = "# top\nSERVER_ID=web-1  # inline\n\nexport KEEP_DAILY=7\nS3 BUCKET=broken line\nTHEIRS=x\n"
    document = EnvFile.parse(tmp_path / ".env", text)
    assert document.broken_lines == [5]
    document.set("KEEP_DAILY", "5")
    document.set("KEEP_WEEKLY", "2", after=("KEEP_DAILY", "KEEP_WEEKLY"))
    document.set("SERVER_ID", None)
    document.set("S3_BUCKET", "b", title="Storage")
    assert document.text() == ("# top\n\nKEEP_DAILY=5\nKEEP_WEEKLY=2\n"
                               "# doit configure: not KEY=value, kept as a comment:\n# S3 BUCKET=broken line\n"
                               "THEIRS=x\n\n# Storage\nS3_BUCKET=b\n")


def test_save_keeps_the_previous_file_as_bak_0600(tmp_path):
    path = tmp_path / "install" / ".env"
    assert save(path, b"A=1\n") is None and _mode(path) == 0o600 and _mode(path.parent) == 0o700
    path.chmod(0o644)
    assert save(path, b"A=2\n") == path.with_name(".env.bak")
    assert path.read_bytes() == b"A=2\n" and path.with_name(".env.bak").read_bytes() == b"A=1\n"
    assert _mode(path) == 0o600 and _mode(path.with_name(".env.bak")) == 0o600


def test_lenient_settings_take_what_parses(tmp_path):
    path = tmp_path / ".env"
    path.write_text("SERVER_ID=web-9\nKEEP_DAILY=lots\nSITES_FILE=mine.json\nS3_PREFIX=x\nnot a line\n")
    with pytest.raises(ConfigError):
        load_settings({"WPBACKUP_ENV": str(path)})
    settings = lenient_settings({"WPBACKUP_ENV": str(path)})
    assert (settings.server_id, settings.keep_daily, settings.sites_file) == ("web-9", 7, tmp_path / "mine.json")


def _settings(tmp_path, **values):
    path = tmp_path / ".env"
    path.write_text("".join(f"{k}={v}\n" for k, v in {"SERVER_ID": "web-1", **values}.items()))
    return load_settings({"WPBACKUP_ENV": str(path)})


def test_smtp_check_logs_in_and_names_a_refused_login_without_the_password(tmp_path, smtp):
    good = checks.smtp(_settings(tmp_path, REPORT_TO="a@example.test", **smtp.starttls.env()))
    assert good == (True, f"logged in to 127.0.0.1:{smtp.starttls.port} (starttls, logged in as {SMTP_USERNAME})")
    wrong = {**smtp.starttls.env(), "SMTP_PASSWORD": "Not-the-smtp-pw-99"}
    ok, reason = checks.smtp(_settings(tmp_path, REPORT_TO="a@example.test", **wrong))
    assert not ok and "refused the login" in reason and "Not-the-smtp-pw-99" not in reason
    assert smtp.messages() == []  # a check sends nothing


def test_s3_check_probes_and_leaves_nothing(tmp_path, s3):
    env = {"S3_ENDPOINT_URL": s3.url, "S3_ACCESS_KEY_ID": "testing", "S3_SECRET_ACCESS_KEY": S3_SECRET,
           "S3_PREFIX": "team"}
    ok, reason = checks.s3_bucket(_settings(tmp_path, S3_BUCKET=s3.bucket, **env))
    assert ok and "team/web-1/" in reason
    assert s3.s3.list_objects_v2(Bucket=s3.bucket).get("Contents", []) == []
    assert checks.s3_bucket(_settings(tmp_path, S3_BUCKET="nope-bucket", **env)) == (
        False, f"S3 bucket nope-bucket does not exist at {s3.url}")


def test_d1_check_selects_1_and_names_a_wrong_token(tmp_path, d1):
    assert checks.d1(_settings(tmp_path, **d1.env()))[0]
    ok, reason = checks.d1(_settings(tmp_path, **d1.env(token="d1tok-wrong-token-value")))
    assert not ok and "refused the API token" in reason and "d1tok-wrong" not in reason


def test_calendar_check():
    assert checks.calendar("BACKUP_ON_CALENDAR", "Mon..Fri 02:30")[0]
    ok, reason = checks.calendar("BACKUP_ON_CALENDAR", "every night")
    assert not ok and "BACKUP_ON_CALENDAR" in reason


def test_no_secret_reaches_the_checks_argv(tmp_path, wordpress, monkeypatch):
    """The database check's client gets the password through an option file only."""
    seen = []
    real = subprocess.run

    def spy(argv, *args, **kwargs):
        seen.append(" ".join(map(str, argv)))
        return real(argv, *args, **kwargs)

    monkeypatch.setattr(subprocess, "run", spy)
    site = _one_site(tmp_path, wordpress)
    assert checks.database(site)[0]
    assert seen and all(wordpress.db_password not in line for line in seen)


def _one_site(tmp_path, wordpress):
    root = make_site(tmp_path, wordpress, name="one")
    [site] = parse_sites({"sites": [{"name": "one", "path": str(root)}]}, "sites.json")
    return site

