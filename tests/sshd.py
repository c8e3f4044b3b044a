"""A second sshd on 127.0.0.1 for the deploy tests (test-infra.md section 5), as root.

Its own host key, client key, authorized_keys and known_hosts in a folder of the test run;
the system's sshd configuration is never read or touched (only /run/sshd, which sshd insists
on, is created). The daemon runs in a mount namespace of its own where /etc/systemd/system
is a scratch folder and, on a machine where systemd runs, systemd is hidden: a deploy under
test can then never install or enable timers on the machine running the tests.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import IN_CI, need
from .servers import free_port

SSHD_BIN = "/usr/sbin/sshd"
SYSTEMD_RUNNING = Path("/run/systemd/system").is_dir()

CONFIG = """\
Port {port}
ListenAddress 127.0.0.1
HostKey {base}/host_ed25519
PidFile {base}/sshd.pid
AuthorizedKeysFile {base}/authorized_keys
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PermitUserEnvironment no
"""

# run by sh inside the new mount namespace, then exec sshd: $1 scratch unit folder, $2 base
NAMESPACE = """\
set -e
mount --bind "$1" /etc/systemd/system
if [ -d /run/systemd/system ]; then
    mkdir -p "$2/run-systemd" && mount --bind /run/systemd "$2/run-systemd"
    mount -t tmpfs -o mode=0755 tmpfs /run/systemd
    if [ -d "$2/run-systemd/resolve" ]; then
        mkdir /run/systemd/resolve && mount --bind "$2/run-systemd/resolve" /run/systemd/resolve
    fi
fi
shift 2
exec "$@"
"""


def _keygen(path: Path) -> None:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True)


def _can_unshare() -> bool:
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


class SSHD:
    """One sshd: ``entry`` for DEPLOY_HOSTS, ``key`` and ``known_hosts`` for the controller."""

    user = "root"

    def __init__(self, base: Path):
        self.base = base
        self.port = free_port()
        self.key = base / "client_ed25519"
        self.known_hosts = base / "known_hosts"
        self.units = base / "etc-systemd-system"  # the daemon's /etc/systemd/system
        self.units.mkdir()
        _keygen(base / "host_ed25519")
        _keygen(self.key)
        (base / "authorized_keys").write_bytes(self.key.with_suffix(".pub").read_bytes())
        (base / "authorized_keys").chmod(0o600)
        config = base / "sshd_config"
        config.write_text(CONFIG.format(port=self.port, base=base))
        os.makedirs("/run/sshd", 0o755, exist_ok=True)
        subprocess.run([SSHD_BIN, "-t", "-f", str(config)], check=True)
        argv = [SSHD_BIN, "-D", "-e", "-f", str(config)]
        if _can_unshare():
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", NAMESPACE, "sh",
                    str(self.units), str(base), *argv]
        self.log = open(base / "sshd.log", "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT)
        self._wait_ready()

    def _wait_ready(self) -> None:
        """Poll with ssh-keyscan (a plain TCP probe makes sshd log protocol errors); its
        output is the known_hosts line as it is ("[127.0.0.1]:PORT ssh-ed25519 ...")."""
        deadline = time.monotonic() + 30
        while True:
            scan = subprocess.run(["ssh-keyscan", "-T", "1", "-p", str(self.port), "-t", "ed25519", "127.0.0.1"],
                                  capture_output=True, text=True)
            if scan.returncode == 0 and scan.stdout.strip():
                self.known_hosts.write_text(scan.stdout)
                return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not start:\n{(self.base / 'sshd.log').read_text()}")
            time.sleep(0.05)

    @property
    def entry(self) -> str:
        return f"{self.user}@127.0.0.1:{self.port}"

    def ssh_argv(self, command: str) -> list[str]:
        return ["ssh", "-p", str(self.port), "-i", str(self.key), "-o", "IdentitiesOnly=yes",
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", "BatchMode=yes", f"{self.user}@127.0.0.1", command]

    def run(self, command: str, cwd: str | Path | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
        """``command`` on the server (in ``cwd`` there), over a real ssh login."""
        if cwd is not None:
            command = f"cd {shlex.quote(str(cwd))} && {command}"
        return subprocess.run(self.ssh_argv(command), capture_output=True, text=True, timeout=timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)
        self.log.close()


@pytest.fixture(scope="session")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1, logging in as root with a key of its own."""
    if os.geteuid() != 0:
        (pytest.fail if IN_CI else pytest.skip)("the sshd tests log in as root: run them as root (tests/run.sh)")
    need("ssh", "ssh-keygen", "ssh-keyscan", "rsync", "unshare")
    if not Path(SSHD_BIN).exists():
        (pytest.fail if IN_CI else pytest.skip)("openssh-server is not installed: run tests/run.sh as root")
    if SYSTEMD_RUNNING and not _can_unshare():
        (pytest.fail if IN_CI else pytest.skip)(
            "systemd runs here and no mount namespace can hide it: a deploy under test would install timers")
    server = SSHD(tmp_path_factory.mktemp("ssh"))
    yield server
    server.stop()
