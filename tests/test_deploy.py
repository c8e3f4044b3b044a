"""`doit deploy` against a real sshd on 127.0.0.1 (tests/sshd.py), into a temporary
DEPLOY_PATH: the deployed install runs `doit list` and a real `doit backup` (MariaDB,
WordPress, S3) there; a second deploy sends nothing; hosts fail alone; host keys are checked;
no secret of the host's .env reaches the output, an argument or the bundle.

The controller deploys from a snapshot of the bundle (so edits to this tree during a run
cannot change what a test means) and runs with ssh and rsync wrappers that log their argv.
One full deploy (with the pip install there) is shared by the session; the others find
nothing or little to do.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from wpbackup.ops import deploy

from .conftest import REPO, Install
from .servers import free_port
from .sshd import SSHD, sshd  # noqa: F401 (the session's sshd fixture)

S3_SECRET = "deploy-test-s3-secret-Zq81x"
SMTP_SECRET = "deploy-test-smtp-secret-Wk44p"
WRAPPER = "#!/bin/sh\nprintf '%s\\n' \"{name} $*\" >> {log}\nexec {real} \"$@\"\n"


class Controller(Install):
    """A controller: a .env with the DEPLOY_* keys and deploy/HOST/ folders, no sites.json
    (a controller need not back anything up), and doit run from the bundle snapshot."""

    def __init__(self, root: Path, code: Path, bindir: Path):
        root.mkdir(parents=True)
        super().__init__(root)
        self.code, self.bindir = code, bindir
        self.env = {"SERVER_ID": "ctl-1"}

    def write(self) -> None:
        self.env_path.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "doit", "-f", str(self.code / "dodo.py"), *args]

    def host_config(self, name: str, env: dict[str, str], sites: dict) -> Path:
        folder = self.root / "deploy" / name
        folder.mkdir(parents=True)
        (folder / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        (folder / "sites.json").write_text(json.dumps(sites, indent=2))
        for path in folder.iterdir():
            path.chmod(0o600)
        return folder

    def deploy(self, *args: str) -> subprocess.CompletedProcess:
        return self.doit(*(args or ("deploy",)), env={"PATH": f"{self.bindir}:{os.environ['PATH']}"}, timeout=900)


@dataclass
class Fleet:
    sshd: SSHD
    base: Path
    code: Path  # the bundle snapshot the controllers deploy
    remote: Path  # DEPLOY_PATH
    bindir: Path
    argv_log: Path
    main: Controller | None = None
    first: subprocess.CompletedProcess | None = None
    outputs: list[str] = field(default_factory=list)

    @property
    def host(self) -> str:
        return f"127.0.0.1_{self.sshd.port}"

    def controller(self, name: str, hosts: str | None = None, path: Path | None = None,
                   known_hosts: Path | None = None) -> Controller:
        ctl = Controller(self.base / name, self.code, self.bindir)
        ctl.env.update(DEPLOY_HOSTS=hosts or self.sshd.entry, DEPLOY_PATH=str(path or self.remote),
                       DEPLOY_SSH_KEY=str(self.sshd.key),
                       DEPLOY_KNOWN_HOSTS=str(known_hosts or self.sshd.known_hosts))
        return ctl

    def deploy(self, ctl: Controller, *args: str) -> subprocess.CompletedProcess:
        result = ctl.deploy(*args)
        self.outputs.append(result.stdout + result.stderr)
        return result

    def info_lines(self) -> list[str]:
        conn = sqlite3.connect(self.remote / "backups.db")
        try:
            return [row[0] for row in conn.execute(
                "SELECT details FROM backup_log WHERE status = 'INFO' AND details LIKE 'deployed %' ORDER BY id")]
        finally:
            conn.close()


def _out(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def _summary(output: str, host: str) -> str:
    return next((line for line in output.splitlines() if line.startswith(f"SUMMARY deploy {host}: ")), "")


def _wrappers(bindir: Path, log: Path) -> None:
    """ssh and rsync that log their argv, then run the real ones (rsync's -e finds this ssh)."""
    bindir.mkdir()
    for name in ("ssh", "rsync"):
        (bindir / name).write_text(WRAPPER.format(name=name, log=log, real=shutil.which(name)))
        (bindir / name).chmod(0o755)


def _snapshot(target: Path) -> None:
    for name in deploy.bundle_files(REPO):
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, target / name)


def _tree(root: Path, skip: tuple[str, ...] = ()) -> dict[str, tuple]:
    """Every file under ``root``: content, mode and mtime (what a deploy could change)."""
    found = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root).as_posix()
        if path.is_file() and not path.is_symlink() and not rel.startswith(skip):
            info = path.stat()
            found[rel] = (hashlib.sha256(path.read_bytes()).hexdigest(), info.st_mode, info.st_mtime_ns)
    return found


@pytest.fixture(scope="session")
def fleet(sshd, wordpress, moto_server, tmp_path_factory):  # noqa: F811
    base = tmp_path_factory.mktemp("fleet")
    (base / "code").mkdir()
    _snapshot(base / "code")
    fleet = Fleet(sshd, base, base / "code", base / "remote" / "wordpress-backup", base / "bin", base / "argv.log")
    _wrappers(fleet.bindir, fleet.argv_log)
    fleet.main = fleet.controller("ctl")
    fleet.main.host_config(fleet.host, {
        "SERVER_ID": "remote-1", "S3_ENDPOINT_URL": moto_server.url, "S3_BUCKET": "wp-backups",
        "S3_ACCESS_KEY_ID": "testing", "S3_SECRET_ACCESS_KEY": S3_SECRET, "S3_MAX_ATTEMPTS": "2",
        "SMTP_HOST": "127.0.0.1", "SMTP_PORT": "1", "REPORT_TO": "ops@example.test",
        "SMTP_USERNAME": "ops", "SMTP_PASSWORD": SMTP_SECRET,
    }, {"sites": [{"name": "blog", "path": str(wordpress.path), "db": {"password": wordpress.db_password}}]})
    fleet.first = fleet.deploy(fleet.main)
    return fleet


def _secrets(wordpress) -> tuple[str, ...]:
    return (S3_SECRET, SMTP_SECRET, wordpress.db_password)


# -- without a server -------------------------------------------------------------------------

def test_host_names_and_twins():
    hosts, problems = deploy.parse_hosts(("root@web1.example.com", "ops@web2:2222", "root@[2001:db8::7]:22"))
    assert [host.name for host in hosts] == ["web1.example.com", "web2_2222", "2001:db8::7_22"]
    assert hosts[2].rsync_target("/opt/wb") == "root@[2001:db8::7]:/opt/wb/"
    assert problems == []
    _, problems = deploy.parse_hosts(("root@web1", "deploy@web1"))
    assert len(problems) == 1 and "root@web1 and deploy@web1 both name host web1" in problems[0]


def test_bundle_is_what_rsync_sends_and_nothing_of_the_controller(tmp_path):
    project = tmp_path / "project"
    code = ["dodo.py", "run.sh", "requirements.txt", ".env.sample", "wpbackup/__init__.py",
            "wpbackup/ops/deploy.py", "tasks/deploy.py", "templates/systemd/service.j2", "docs/deployment.md"]
    state = [".env", "sites.json", "backups.db", "backups/blog-backup-1.tar.zst", ".venv/bin/python", ".doit.db",
             "deploy/web1/.env", "deploy/web1/sites.json", "tests/test_x.py", ".git/config", "systemd/x.service",
             "wpbackup/__pycache__/x.cpython-311.pyc", "wpbackup/.deploy.py.swp", "docs/notes.md~",
             "wpbackup/.env", "requirements-dev.txt", "bench/run.py"]
    for name in code + state:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(f"content of {name}\n")
    assert deploy.bundle_files(project) == sorted(code)
    target = tmp_path / "target"
    target.mkdir()
    listed = subprocess.run(["rsync", "-rlpt", "--dry-run", "--out-format=%n",
                             *[f"--filter={rule}" for rule in deploy.filter_rules()], f"{project}/", f"{target}/"],
                            capture_output=True, text=True, check=True)
    assert sorted(line for line in listed.stdout.splitlines() if not line.endswith("/")) == sorted(code)


def test_ssh_always_checks_host_keys_in_batch_mode(tmp_path):
    plan = deploy.Plan(project=REPO, path="/opt/wordpress-backup", known_hosts=tmp_path / "known",
                       key=tmp_path / "id_ed25519", config_root=tmp_path / "deploy", controller="ctl-1")
    host = deploy.parse_host("root@web1:2222")
    argv = deploy.ssh_argv(plan, host, "true")
    pairs = {argv[i + 1] for i, word in enumerate(argv[:-1]) if word == "-o"}
    assert {"BatchMode=yes", "StrictHostKeyChecking=yes", f"UserKnownHostsFile={tmp_path / 'known'}",
            "GlobalKnownHostsFile=/dev/null", "IdentitiesOnly=yes"} <= pairs
    assert argv[argv.index("-p") + 1] == "2222" and argv[argv.index("-i") + 1] == str(tmp_path / "id_ed25519")
    assert argv[-3:] == ["--", "root@web1", "true"]
    rsync = deploy.code_rsync_argv(plan, host)
    assert rsync[rsync.index("-e") + 1].startswith("ssh -o BatchMode=yes -o StrictHostKeyChecking=yes")
    assert rsync[-1] == "root@web1:/opt/wordpress-backup/"


def test_no_hosts_is_a_clear_failure(tmp_path):
    ctl = Controller(tmp_path / "ctl", REPO, tmp_path)
    result = ctl.doit("deploy")
    assert result.returncode != 0
    assert "DEPLOY_HOSTS is not set: nothing to deploy to" in _out(result)
    assert "Traceback" not in _out(result)


def test_run_sh_rebuilds_the_venv_for_another_python(tmp_path):
    install = tmp_path / "install"
    (install / ".venv" / "bin").mkdir(parents=True)
    shutil.copy2(REPO / "run.sh", install / "run.sh")
    (install / "requirements.txt").write_text("# nothing to install\n")
    (install / "dodo.py").write_text("")
    stale = install / ".venv" / "bin" / "python"
    stale.write_text("#!/bin/sh\necho 3.9\n")  # a venv of Python 3.9: the distribution moved on
    stale.chmod(0o755)
    (install / ".venv" / "left-over").write_text("")
    env = {k: v for k, v in os.environ.items() if k != "WPBACKUP_PYTHON"}
    first = subprocess.run(["bash", str(install / "run.sh"), "--version"], capture_output=True, text=True, env=env)
    want = subprocess.run(["/usr/bin/python3", "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert f"rebuilding .venv for Python {want} (it was built for 3.9)" in first.stderr
    assert not (install / ".venv" / "left-over").exists()
    rebuilt = subprocess.run([str(stale), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True)
    assert rebuilt.stdout.strip() == want
    again = subprocess.run(["bash", str(install / "run.sh"), "--version"], capture_output=True, text=True, env=env)
    assert "rebuilding" not in again.stderr  # the same Python: the venv stays


# -- against the sshd -------------------------------------------------------------------------

def test_first_deploy_sets_the_host_up(fleet, wordpress):
    output = _out(fleet.first)
    assert fleet.first.returncode == 0, output
    assert _summary(output, fleet.host).startswith(f"SUMMARY deploy {fleet.host}: OK wordpress-backup ")
    assert "Traceback" not in output
    remote, folder = fleet.remote, fleet.main.root / "deploy" / fleet.host
    bundle = deploy.bundle_files(fleet.code)
    assert set(deploy.bundle_files(remote)) == set(bundle)
    for name in bundle:
        assert (remote / name).read_bytes() == (fleet.code / name).read_bytes(), name
    assert not (remote / "tests").exists() and not (remote / "deploy").exists()
    for name in (".env", "sites.json"):
        assert (remote / name).read_bytes() == (folder / name).read_bytes()
        assert stat.S_IMODE((remote / name).stat().st_mode) == 0o600
    assert (remote / ".venv" / "bin" / "python").exists()
    assert fleet.info_lines() == ["deployed wordpress-backup 0.1.0 from ctl-1"]
    listed = fleet.sshd.run("./run.sh list", cwd=remote)
    assert listed.returncode == 0, _out(listed)
    assert any(line.startswith("backup ") for line in listed.stdout.splitlines())
    assert sorted(p.name for p in (remote / "systemd").glob("*.timer"))  # `doit systemd --install` ran there


def test_second_deploy_changes_nothing(fleet):
    before = _tree(fleet.remote, skip=(".venv/", "backups/"))
    again = fleet.deploy(fleet.main)
    output = _out(again)
    assert again.returncode == 0, output
    assert f"code: 0 of {len(deploy.bundle_files(fleet.code))} files sent (0 bytes), 0 deleted" in output
    assert "nothing changed" in _summary(output, fleet.host)
    assert "doit state reset" not in output and "recorded in the catalog" not in output
    after = _tree(fleet.remote, skip=(".venv/", "backups/"))
    changed = {name for name in set(before) | set(after) if before.get(name) != after.get(name)}
    # doit's own state files are doit's (a `doit list` opens them); everything else is as it was
    assert {name for name in changed if not name.startswith(".doit")} == set()
    assert len(fleet.info_lines()) == 1


def test_backup_runs_on_the_deployed_host(fleet, s3):
    result = fleet.sshd.run("./run.sh backup", cwd=fleet.remote, timeout=600)
    assert result.returncode == 0, _out(result)
    assert "SUMMARY blog: OK" in _out(result)
    keys = [obj["Key"] for obj in s3.s3.list_objects_v2(Bucket="wp-backups").get("Contents", [])]
    assert any(key.startswith("remote-1/") and "/blog-backup-" in key for key in keys), keys
    status = fleet.sshd.run("./run.sh status", cwd=fleet.remote)
    assert status.returncode == 0 and "blog" in status.stdout, _out(status)


def test_changed_code_is_sent_stray_files_deleted_state_reset_and_recorded(fleet):
    remote = fleet.remote
    with open(fleet.code / "docs" / "backup.md", "a") as handle:
        handle.write("\nA line added on the controller.\n")
    (remote / "wpbackup" / "stray_module.py").write_text("left from an older version\n")
    (remote / "docs" / "old").mkdir()
    (remote / "docs" / "old" / "page.md").write_text("gone from the bundle\n")
    for name in (".doit.db", ".doit-readonly.db"):
        (remote / name).write_bytes(b"the old version's doit state, not a database")
    kept = {".venv/keep-me": b"the venv is the remote's", "backups/.work/blog/keep.json": b"{}",
            "systemd/keep-me": b"rendered there"}
    for name, data in kept.items():
        (remote / name).parent.mkdir(parents=True, exist_ok=True)
        (remote / name).write_bytes(data)
    env_before = (remote / ".env").read_bytes()
    result = fleet.deploy(fleet.main)
    output = _out(result)
    assert result.returncode == 0, output
    assert "code: 1 of " in output and ", 2 deleted" in output
    assert not (remote / "wpbackup" / "stray_module.py").exists() and not (remote / "docs" / "old").exists()
    assert (remote / "docs" / "backup.md").read_bytes() == (fleet.code / "docs" / "backup.md").read_bytes()
    assert "doit state reset: removed .doit-readonly.db, .doit.db" in output
    for name in (".doit.db", ".doit-readonly.db"):
        assert not (remote / name).exists() or b"not a database" not in (remote / name).read_bytes()
    for name, data in kept.items():
        assert (remote / name).read_bytes() == data, name
    assert (remote / ".env").read_bytes() == env_before
    assert len(fleet.info_lines()) == 2
    assert json.loads((remote / ".deployed").read_text())["digest"] == deploy.make_plan(
        _settings(fleet.main), fleet.code).digest


def _settings(ctl: Controller):
    from wpbackup.config.settings import load_settings

    ctl.write()
    return load_settings({"WPBACKUP_ENV": str(ctl.env_path)})


def test_unreachable_host_fails_alone_and_a_remote_config_is_kept(fleet):
    closed = free_port()
    ctl = fleet.controller("ctl-two", hosts=f"root@127.0.0.1:{closed},{fleet.sshd.entry}")  # no deploy/ folder
    env_before = (fleet.remote / ".env").read_bytes()
    result = fleet.deploy(ctl)
    output = _out(result)
    assert result.returncode != 0
    failed = _summary(output, f"127.0.0.1_{closed}")
    assert failed.startswith(f"SUMMARY deploy 127.0.0.1_{closed}: FAILED at connect: cannot connect to "
                             f"root@127.0.0.1:{closed}: "), output
    assert "Connection refused" in failed
    assert _summary(output, fleet.host).startswith(f"SUMMARY deploy {fleet.host}: OK"), output
    assert "the remote's own kept (.env, sites.json)" in output
    assert (fleet.remote / ".env").read_bytes() == env_before
    assert "Traceback" not in output
    one = fleet.deploy(ctl, f"deploy:127.0.0.1_{closed}")  # deploy:HOST runs that host alone
    assert one.returncode != 0 and _summary(_out(one), f"127.0.0.1_{closed}")
    assert not _summary(_out(one), fleet.host)


def test_host_key_mismatch_or_unknown_is_refused(fleet, tmp_path):
    other = tmp_path / "other_ed25519"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    wrong = tmp_path / "known_hosts_wrong"
    wrong.write_text(f"[127.0.0.1]:{fleet.sshd.port} {other.with_suffix('.pub').read_text().split(' ')[0]} "
                     f"{other.with_suffix('.pub').read_text().split(' ')[1]}\n")
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    marker = (fleet.remote / ".deployed").read_bytes()
    infos = fleet.info_lines()
    for known, why in ((wrong, "does not match the one in"), (empty, "no host key for"),
                       (tmp_path / "missing", "does not exist: host keys are always checked")):
        ctl = fleet.controller(f"ctl-{known.name}", known_hosts=known)
        result = fleet.deploy(ctl)
        line = _summary(_out(result), fleet.host)
        assert result.returncode != 0 and " FAILED at connect: " in line and why in line, _out(result)
        assert "refused" in line or "does not exist" in line
    assert (fleet.remote / ".deployed").read_bytes() == marker and fleet.info_lines() == infos
    assert wrong.read_text().count("\n") == 1 and empty.read_text() == ""  # ssh never adds a key


def test_a_running_backup_is_not_deployed_under(fleet):
    from wpbackup.backup import lock

    marker = (fleet.remote / ".deployed").read_bytes()
    lock.acquire(fleet.remote / ".wpbackup.lock")  # what a running `doit backup` there holds
    try:
        result = fleet.deploy(fleet.main)
    finally:
        lock.release(fleet.remote / ".wpbackup.lock")
    line = _summary(_out(result), fleet.host)
    assert result.returncode != 0
    assert f"FAILED at connect: a backup run is in progress there (pid {os.getpid()}, started " in line
    assert "nothing was changed" in line and (fleet.remote / ".deployed").read_bytes() == marker


def test_host_without_any_configuration_is_told_to_configure(fleet, tmp_path):
    bare = tmp_path / "bare" / "wordpress-backup"
    ctl = fleet.controller("ctl-bare", path=bare)
    result = fleet.deploy(ctl)
    line = _summary(_out(result), fleet.host)
    assert result.returncode != 0
    assert line.startswith(f"SUMMARY deploy {fleet.host}: NOT CONFIGURED ") and "run `doit configure` there" in line
    assert (bare / "dodo.py").exists() and not (bare / ".venv").exists() and not (bare / ".deployed").exists()


def test_secrets_never_in_output_argv_or_bundle(fleet, wordpress):
    assert fleet.first is not None and fleet.argv_log.exists()
    texts = {"output": "\n".join(fleet.outputs), "argv": fleet.argv_log.read_text()}
    assert "--filter=- /*" in texts["argv"] and "StrictHostKeyChecking=yes" in texts["argv"]
    for name in deploy.bundle_files(fleet.code):
        texts[f"bundle {name}"] = (fleet.code / name).read_text(errors="replace")
    for name in deploy.bundle_files(fleet.remote):
        texts[f"remote {name}"] = (fleet.remote / name).read_text(errors="replace")
    assert ".env" not in deploy.bundle_files(fleet.code)
    for secret in _secrets(wordpress):
        assert secret in (fleet.remote / ".env").read_text() + (fleet.remote / "sites.json").read_text()
        leaks = [where for where, text in texts.items() if secret in text]
        assert leaks == [], f"{secret[:6]}... found in {leaks}"
