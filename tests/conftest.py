"""Fixtures: real MariaDB, WordPress and S3 (moto over HTTP), and an install folder whose
`doit` runs in a subprocess, the way an operator runs it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .servers import MariaDB, MotoS3, WordPress
from .smtp import smtp, smtp_servers  # noqa: F401 (fixtures for every test module)

REPO = Path(__file__).resolve().parent.parent
IN_CI = os.environ.get("CI") == "true"


def need(*tools: str) -> None:
    """Outside CI a missing system tool skips with a hint; in CI it is a failure."""
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        message = f"missing {', '.join(missing)}: run tests/run.sh (as root it installs them with apt)"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture(scope="session")
def mariadb():
    need("mariadbd", "mariadb-install-db", "mariadb-dump", "mariadb")
    server = MariaDB()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def wordpress(mariadb, tmp_path_factory):
    need("php")
    if not Path("/usr/share/wordpress/wp-load.php").exists():
        (pytest.fail if IN_CI else pytest.skip)("Debian's wordpress package is not installed")
    return WordPress(mariadb, tmp_path_factory.mktemp("wp"))


@pytest.fixture(scope="session")
def moto_server():
    server = MotoS3()
    yield server
    server.stop()


@pytest.fixture
def s3(moto_server):
    moto_server.reset()
    client = moto_server.client()
    client.create_bucket(Bucket="wp-backups")
    moto_server.bucket = "wp-backups"
    moto_server.s3 = client
    return moto_server


class Install:
    """One install folder: .env, sites.json, and `doit` run as a subprocess."""

    def __init__(self, root: Path):
        self.root = root
        self.env_path = root / ".env"
        self.env: dict[str, str] = {"SERVER_ID": "web-1"}
        self.sites: list[dict] = []

    @property
    def backup_dir(self) -> Path:
        return self.root / "backups"

    @property
    def db_path(self) -> Path:
        return self.root / "backups.db"

    def write(self) -> None:
        self.env_path.write_text("".join(f"{k}={v}\n" for k, v in self.env.items()))
        (self.root / "sites.json").write_text(json.dumps({"sites": self.sites}, indent=2))

    def add_site(self, name: str, wordpress: WordPress, **extra) -> dict:
        site = {"name": name, "path": str(wordpress.path), **extra}
        self.sites.append(site)
        return site

    def use_s3(self, s3: MotoS3) -> None:
        self.env.update(S3_ENDPOINT_URL=s3.url, S3_BUCKET=s3.bucket, S3_ACCESS_KEY_ID="testing",
                        S3_SECRET_ACCESS_KEY="testing-secret-key-123", S3_MAX_ATTEMPTS="2")

    def command(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "doit", "-f", str(REPO / "dodo.py"), *args]

    def process_env(self, extra: dict | None = None) -> dict:
        """The inherited environment without anything this tool (or boto3) would read, so a
        developer's shell cannot change what a test means; then this install's .env."""
        from wpbackup.config.settings import ENVIRONMENT_KEYS

        env = {k: v for k, v in os.environ.items()
               if k not in ENVIRONMENT_KEYS and not k.startswith(("S3_", "D1_", "AWS_", "MYSQL_", "MARIADB_"))}
        # a first run discovers sites: never on this machine's own /var/www unless a test says so
        env.update({"WPBACKUP_ENV": str(self.env_path), "PYTHONUNBUFFERED": "1",
                    "WPBACKUP_DISCOVER_ROOTS": str(self.root / "no-sites-here"), **(extra or {})})
        return env

    def doit(self, *args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        self.write()
        return subprocess.run(self.command(*args), capture_output=True, text=True, timeout=timeout,
                              env=self.process_env(env), cwd=self.root)

    def start(self, *args: str, env: dict | None = None) -> subprocess.Popen:
        self.write()
        return subprocess.Popen(self.command(*args), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, env=self.process_env(env), cwd=self.root, start_new_session=True)

    def rows(self, query: str, *params) -> list[sqlite3.Row]:
        conn = sqlite3.connect(self.db_path)
        conn.row_factory = sqlite3.Row
        try:
            return conn.execute(query, params).fetchall()
        finally:
            conn.close()

    def archives(self) -> list[Path]:
        return sorted(self.backup_dir.glob("*.tar.zst"))


@pytest.fixture
def install(tmp_path):
    root = tmp_path / "install"
    root.mkdir()
    return Install(root)


@pytest.fixture
def pings():
    """A healthcheck endpoint on 127.0.0.1: ``.url`` to configure, ``.seen`` the paths pinged
    (without their query), ``.requests`` each ping as (path, query as a dict, body text)."""
    import threading
    from http.server import BaseHTTPRequestHandler, HTTPServer
    from urllib.parse import parse_qs, urlsplit

    seen: list[str] = []
    requests: list[tuple[str, dict[str, list[str]], str]] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            parts = urlsplit(self.path)
            requests.append((parts.path, parse_qs(parts.query), body.decode("utf-8", "replace")))
            seen.append(parts.path)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    server.url, server.seen = f"http://127.0.0.1:{server.server_address[1]}/ping/abc", seen
    server.requests = requests
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture
def s3_proxy(s3):
    from .faults import S3Proxy

    proxy = S3Proxy(s3.url)
    yield proxy
    proxy.stop()


def make_site(base: Path, wordpress: WordPress, big_mb: int = 0, name: str = "site") -> Path:
    """A light site folder sharing the WordPress database: wp-config.php, version.php and a
    wp-content with the real uploads, plus an optional large incompressible file."""
    root = base / name
    (root / "wp-includes").mkdir(parents=True)
    shutil.copy(wordpress.path / "wp-config.php", root / "wp-config.php")
    shutil.copy(wordpress.path / "wp-includes" / "version.php", root / "wp-includes" / "version.php")
    shutil.copytree(wordpress.path / "wp-content" / "uploads", root / "wp-content" / "uploads")
    if big_mb:
        with open(root / "wp-content" / "uploads" / "video.mp4", "wb") as handle:
            for _ in range(big_mb):
                handle.write(os.urandom(1 << 20))
    return root


def dumped_and_tarred(install: Install, name: str):
    """Write the install, plan a run of site ``name`` and do its dump and tar stages in this
    process (the compress stage is the caller's): (settings, site, run)."""
    from datetime import datetime, timezone

    from wpbackup.backup import runs, steps
    from wpbackup.config.settings import load_settings
    from wpbackup.config.sites import load_sites

    install.write()
    settings = load_settings({"WPBACKUP_ENV": str(install.env_path)})
    site = next(s for s in load_sites(settings.sites_file) if s.name == name)
    run = runs.plan_run(settings.work_dir, name, datetime.now(timezone.utc), 20, steps.archive_fingerprint(site))
    steps.dump_stage(settings, site, run)
    steps.tar_stage(settings, site, run)
    return settings, site, run


def wait_for(predicate, proc: subprocess.Popen, timeout: float = 90) -> None:
    """Poll until ``predicate()`` holds (an event the test waits for, not a duration); fail if
    the process ended first. ``timeout`` only stops a hung test."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if proc.poll() is not None:
            raise AssertionError(f"doit ended early ({proc.returncode}):\n{proc.stdout.read()}")
        if time.monotonic() > deadline:
            raise AssertionError("timed out waiting for the run to reach the point to kill it")
        time.sleep(0.02)


def kill_group(proc: subprocess.Popen) -> None:
    """kill -9 the process and everything it started (it runs in a session of its own)."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


STALLING_DUMP = """#!/bin/sh
# Test double around the real mariadb-dump: passes its first bytes, then stalls.
case "$1" in --version) exec {real} "$@";; esac
{real} "$@" | {{ dd bs=2000 count=1 2>/dev/null; touch {marker}; sleep 120; cat; }}
"""


def stalling_dump(tmp_path: Path) -> tuple[Path, Path]:
    """A bin folder whose mariadb-dump stalls; the marker file appears once it started."""
    real = subprocess.run(["sh", "-c", "command -v mariadb-dump"], capture_output=True, text=True).stdout.strip()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    marker = tmp_path / "dump-started"
    (bindir / "mariadb-dump").write_text(STALLING_DUMP.format(real=real, marker=marker))
    (bindir / "mariadb-dump").chmod(0o755)
    return bindir, marker


@pytest.fixture
def d1(tmp_path):
    """A local imitation of Cloudflare D1's HTTP API (tests/d1server.py): ``.env()`` gives
    an install's D1_* settings, ``.inject(fault)`` misbehaves, ``.seen`` every request."""
    from .d1server import D1Server

    server = D1Server(tmp_path / "d1")
    yield server
    server.stop()
