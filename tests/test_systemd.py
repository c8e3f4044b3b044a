"""`doit systemd`: the units it renders pass `systemd-analyze verify`, a bad schedule is
refused, rendering happens only on change, --install works without a running systemd, and
the rendered services, run with their sandbox, complete a real backup, verify and report.

This machine has no systemd as PID 1, so `systemd-run` cannot start a unit here. The sandbox
is emulated instead, directive by directive, from the rendered unit (see ``_sandbox_main``):
a mount namespace gives ProtectSystem=strict (every mount read-only) with the unit's
ReadWritePaths/ReadOnlyPaths bound back, PrivateTmp (fresh /tmp and /var/tmp), ProtectHome,
PrivateDevices (a /dev of null, zero, full, random, urandom, tty), ProtectKernelTunables,
ProtectControlGroups, ProtectKernelModules/Logs; a UTS namespace gives ProtectHostname; a
seccomp filter built with libseccomp from `systemd-analyze syscall-filter @system-service`
gives SystemCallFilter, SystemCallErrorNumber, SystemCallArchitectures,
RestrictAddressFamilies, RestrictNamespaces, RestrictRealtime, RestrictSUIDSGID and
LockPersonality; NoNewPrivileges, the capabilities those directives drop, Nice,
CPUSchedulingPolicy, IOSchedulingClass, OOMScoreAdjust and UMask are set as systemd sets
them; the environment is systemd's (PATH and Environment=, nothing inherited). Where that
cannot be built (not root), the exact ExecStart, Environment and WorkingDirectory run without
it, and the test still checks that nothing outside ReadWritePaths changed.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import re
import shlex
import shutil
import stat
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
#: this checkout lies under /tmp (CI clones there): the units then keep /tmp shared, on purpose
INSTALL_IN_TMP = REPO.is_relative_to("/tmp")
UNIT_NAMES = [f"wordpress-{name}.{kind}" for kind in ("service", "timer") for name in ("backup", "report", "verify")]
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"  # what systemd gives a service


def _out(result) -> str:
    return result.stdout + result.stderr


# --- reading a rendered unit the way systemd does ---------------------------------------

def parse_unit(path: Path) -> dict[str, dict[str, list[str]]]:
    """{section: {key: [values, in order]}}; comments and blank lines skipped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def words(value: str) -> list[str]:
    """A space-separated value as its words: quotes removed, %% and $$ unescaped."""
    return [word.replace("%%", "%").replace("$$", "$") for word in shlex.split(value)]


def one(service: dict[str, list[str]], key: str) -> str:
    [value] = service[key]
    return value


def service_environment(service: dict[str, list[str]]) -> dict[str, str]:
    """What systemd hands the service: its default PATH plus Environment=, nothing else."""
    env = {"PATH": SYSTEMD_PATH, "INVOCATION_ID": uuid.uuid4().hex}
    for value in service.get("Environment", []):
        for word in words(value):
            name, _, text = word.partition("=")
            env[name] = text
    return env


def paths_of(service: dict[str, list[str]], key: str) -> list[Path]:
    return [Path(word.lstrip("-")) for value in service.get(key, []) for word in words(value)]


def systemd_verify(folder: Path) -> subprocess.CompletedProcess:
    """`systemd-analyze verify` of every unit in ``folder`` together (a timer's service is
    only checked beside it). Good means exit 0 and nothing on stderr: warnings keep 0."""
    from .conftest import need

    need("systemd-analyze")
    return subprocess.run(["systemd-analyze", "verify", "--man=no", *[str(folder / name) for name in UNIT_NAMES]],
                          capture_output=True, text=True, timeout=120)


# --- the sandbox, emulated -----------------------------------------------------------

PR_SET_NO_NEW_PRIVS, PR_CAPBSET_DROP = 38, 24
CAP = {"sys_module": 16, "sys_rawio": 17, "sys_time": 25, "mknod": 27, "syslog": 34, "wake_alarm": 35}
DROPPED_CAPS = {"ProtectKernelModules": ["sys_module"], "ProtectKernelLogs": ["syslog"],
                "ProtectClock": ["sys_time", "wake_alarm"], "PrivateDevices": ["mknod", "sys_rawio"]}
#: Directives this file emulates, or that need nothing here (they act on systemd's side).
EMULATED = {"Type", "User", "ExecStart", "WorkingDirectory", "Environment", "UMask", "ProtectSystem",
            "ReadWritePaths", "ReadOnlyPaths", "PrivateTmp", "ProtectHome", "PrivateDevices", "NoNewPrivileges",
            "ProtectKernelTunables", "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups",
            "ProtectClock", "ProtectHostname", "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime",
            "RestrictSUIDSGID", "LockPersonality", "SystemCallArchitectures", "SystemCallFilter",
            "SystemCallErrorNumber", "Nice", "CPUSchedulingPolicy", "IOSchedulingClass", "OOMScoreAdjust"}
NOT_EMULATED = {"IOWeight": "needs a cgroup of its own", "SyslogIdentifier": "the journal's",
                "TimeoutStartSec": "the test's timeout stands in", "KillMode": "systemd's stop",
                "TimeoutStopSec": "systemd's stop"}
AF = {"AF_UNIX": 1, "AF_INET": 2, "AF_INET6": 10}
CLONE_NEW_ANY = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000 | 0x10000000 | 0x20000000 | 0x40000000 | 0x80


def syscall_sets() -> dict[str, list[str]]:
    """systemd's own syscall groups (`systemd-analyze syscall-filter`), as group -> items."""
    out = subprocess.run(["systemd-analyze", "syscall-filter"], capture_output=True, text=True, check=True).stdout
    groups: dict[str, list[str]] = {}
    current = None
    for line in out.splitlines():
        if line.startswith("@"):
            current = groups.setdefault(line.strip(), [])
        elif line.startswith("    ") and current is not None:
            if not line.strip().startswith("#"):
                current.append(line.strip())
        elif line.strip():  # the list of calls in no group: not a group's items
            current = None
    return groups


def expand(items: list[str], groups: dict[str, list[str]]) -> set[str]:
    names: set[str] = set()
    for item in items:
        names |= expand(groups[item], groups) if item.startswith("@") else {item}
    return names


def sandbox_problem() -> str | None:
    """Why the sandbox cannot be emulated on this machine (None: it can)."""
    if os.geteuid() != 0:
        return "mount namespaces need root"
    if not shutil.which("unshare") or not shutil.which("systemd-analyze"):
        return "unshare or systemd-analyze is missing"
    try:
        ctypes.CDLL("libseccomp.so.2")
    except OSError:
        return "libseccomp2 is missing"
    probe = tempfile.mkdtemp(prefix="wpb-probe-")
    try:
        result = subprocess.run(["unshare", "--mount", "--uts", "--propagation", "private", "--", "sh", "-c",
                                 f"mount --bind {probe} {probe} && mount -o remount,bind,ro {probe} && "
                                 f"! touch {probe}/x 2>/dev/null"], capture_output=True, timeout=30)
        return None if result.returncode == 0 and not os.listdir(probe) else "read-only bind mounts do not work here"
    finally:
        shutil.rmtree(probe, ignore_errors=True)


def run_service(unit: Path, staging: Path, argv: list[str] | None = None,
                timeout: float = 600) -> subprocess.CompletedProcess:
    """Run a rendered service's ExecStart (or ``argv`` in its place) as systemd would: with
    its sandbox emulated where this machine allows it, else with its exact environment and
    working directory alone."""
    service = parse_unit(unit)["Service"]
    unknown = set(service) - EMULATED - set(NOT_EMULATED)
    assert not unknown, f"directives the emulation does not know yet: {unknown}"
    spec = {"exec": argv or words(one(service, "ExecStart")), "cwd": one(service, "WorkingDirectory"),
            "env": service_environment(service), "service": service, "staging": str(staging)}
    if sandbox_problem() is None:
        spec["syscalls"] = sorted(expand(words(one(service, "SystemCallFilter")), syscall_sets()))
        assert len(spec["syscalls"]) > 100, "systemd-analyze syscall-filter gave no @system-service"
        spec_file = staging / "spec.json"
        spec_file.write_text(json.dumps(spec))
        command = ["unshare", "--mount", "--uts", "--propagation", "private", "--",
                   sys.executable, "-m", "tests.test_systemd", str(spec_file)]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout, cwd=REPO,
                              env={"PATH": SYSTEMD_PATH})
    return subprocess.run(spec["exec"], capture_output=True, text=True, timeout=timeout, cwd=spec["cwd"],
                          env=spec["env"])


def _mount(*args: str) -> None:
    subprocess.run(["mount", "--no-mtab", *args], check=True, capture_output=True)


def _mount_points() -> list[str]:
    with open("/proc/self/mountinfo") as info:
        points = [line.split()[4].replace("\\040", " ") for line in info]
    return sorted(set(points), key=lambda p: (p.count("/"), p))


def _inside(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _rebind(path: str, mode: str) -> None:
    """Bind ``path`` onto itself with ``mode`` (ro or rw), as ReadWritePaths/ReadOnlyPaths do."""
    _mount("--bind", path, path)
    _mount("-o", f"remount,bind,{mode}", path)


def _inaccessible(path: str, staging: Path) -> None:
    if os.path.isdir(path):
        _mount("-t", "tmpfs", "-o", "ro,mode=000,size=4k", "tmpfs", path)
    elif os.path.exists(path):
        blank = staging / f"blank-{len(os.listdir(staging))}"
        blank.touch(mode=0)
        _mount("--bind", str(blank), path)


def _private_dev(staging: Path) -> None:
    """PrivateDevices=yes: a /dev of its own with the harmless nodes only."""
    dev = staging / "dev"
    dev.mkdir()
    _mount("-t", "tmpfs", "-o", "mode=755,nosuid", "tmpfs", str(dev))
    for name, minor in (("null", 3), ("zero", 5), ("full", 7), ("random", 8), ("urandom", 9)):
        os.mknod(dev / name, stat.S_IFCHR | 0o666, os.makedev(1, minor))
    os.mknod(dev / "tty", stat.S_IFCHR | 0o666, os.makedev(5, 0))
    (dev / "shm").mkdir()
    _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", str(dev / "shm"))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1"),
                         ("stderr", "/proc/self/fd/2")):
        os.symlink(target, dev / name)
    _mount("--move", str(dev), "/dev")


def _yes(service: dict, key: str) -> bool:
    return service.get(key, ["no"])[-1] in ("yes", "true", "1", "on", "strict")


def _apply_mounts(service: dict, staging: Path) -> None:
    """The file system as the unit's directives leave it, in systemd's order: read-only
    everything, then the private and hidden places, then the writable paths bound back."""
    assert one(service, "ProtectSystem") == "strict"
    _mount("-t", "tmpfs", "-o", "mode=700", "tmpfs", str(staging))  # the emulation's own scratch space
    for point in _mount_points():
        if not _inside(point, ("/proc", "/sys", "/dev", str(staging))):
            _mount("-o", "remount,bind,ro", point)
    if _yes(service, "ProtectKernelTunables") or _yes(service, "ProtectControlGroups"):
        for point in _mount_points():
            if _inside(point, ("/sys",)):
                _mount("-o", "remount,bind,ro", point)
    if _yes(service, "ProtectKernelTunables"):
        _rebind("/proc/sys", "ro")
    if _yes(service, "ProtectKernelModules"):
        for path in ("/usr/lib/modules", "/lib/modules"):
            _inaccessible(path, staging)
    if _yes(service, "ProtectKernelLogs"):
        _inaccessible("/proc/kmsg", staging)
    if _yes(service, "PrivateDevices"):
        _private_dev(staging)
    if _yes(service, "PrivateTmp"):
        for path in ("/tmp", "/var/tmp"):
            _mount("-t", "tmpfs", "-o", "mode=1777,nosuid,nodev", "tmpfs", path)
    if one(service, "ProtectHome") == "yes":
        for path in ("/home", "/root", "/run/user"):
            _inaccessible(path, staging)
    for key, mode in (("ReadWritePaths", "rw"), ("ReadOnlyPaths", "ro")):
        for value in service.get(key, []):
            for word in sorted(words(value), key=lambda w: w.count("/")):
                path = word.lstrip("-")
                if os.path.exists(path) or not word.startswith("-"):
                    _rebind(path, mode)


def _apply_process(service: dict) -> None:
    """Priority, umask, OOM score, capabilities and no-new-privileges, as systemd sets them."""
    libc = ctypes.CDLL(None, use_errno=True)
    assert "User" not in service, "the emulation runs as root only"
    os.umask(int(one(service, "UMask"), 8))
    os.setpriority(os.PRIO_PROCESS, 0, int(one(service, "Nice")))
    assert one(service, "CPUSchedulingPolicy") == "batch"
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    assert one(service, "IOSchedulingClass") == "idle"
    subprocess.run(["ionice", "-c", "3", "-p", str(os.getpid())], check=True)
    Path("/proc/self/oom_score_adj").write_text(one(service, "OOMScoreAdjust"))
    for directive, caps in DROPPED_CAPS.items():
        for cap in caps if _yes(service, directive) else ():
            assert libc.prctl(PR_CAPBSET_DROP, CAP[cap], 0, 0, 0) == 0
    if _yes(service, "NoNewPrivileges"):
        assert libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) == 0


class _ArgCmp(ctypes.Structure):
    _fields_ = [("arg", ctypes.c_uint), ("op", ctypes.c_int), ("datum_a", ctypes.c_uint64),
                ("datum_b", ctypes.c_uint64)]


SCMP_ACT_ALLOW, SCMP_ACT_KILL_PROCESS, SCMP_CMP_EQ, SCMP_CMP_MASKED_EQ = 0x7FFF0000, 0x80000000, 4, 7


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


def _apply_seccomp(service: dict, allowed: set[str]) -> None:
    """SystemCallFilter and the Restrict*/LockPersonality directives as one seccomp filter
    (native architecture only, as SystemCallArchitectures=native asks), loaded last."""
    lib = ctypes.CDLL("libseccomp.so.2", use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_rule_add_array.argtypes = [ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint,
                                           ctypes.POINTER(_ArgCmp)]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_load.argtypes = [ctypes.c_void_p]
    assert one(service, "SystemCallArchitectures") == "native"
    default = _errno_action(errno.EPERM) if one(service, "SystemCallErrorNumber") == "EPERM" else SCMP_ACT_KILL_PROCESS
    ctx = lib.seccomp_init(default)
    conditional: dict[str, list[tuple[int, list[tuple[int, int, int, int]]]]] = {}
    if "RestrictAddressFamilies" in service:
        families = words(one(service, "RestrictAddressFamilies"))
        conditional["socket"] = [(SCMP_ACT_ALLOW, [(0, SCMP_CMP_EQ, AF[f], 0)]) for f in families]
    if _yes(service, "RestrictNamespaces"):
        free = [(SCMP_ACT_ALLOW, [(0, SCMP_CMP_MASKED_EQ, CLONE_NEW_ANY, 0)])]
        conditional.update(unshare=free, clone=free, setns=[], clone3=[(_errno_action(errno.ENOSYS), [])])
    if _yes(service, "RestrictRealtime"):
        conditional["sched_setscheduler"] = [(SCMP_ACT_ALLOW, [(1, SCMP_CMP_EQ, p, 0)]) for p in (0, 3, 5)]
    if _yes(service, "RestrictSUIDSGID"):
        for name, arg in (("chmod", 1), ("fchmod", 1), ("fchmodat", 2)):
            conditional[name] = [(SCMP_ACT_ALLOW, [(arg, SCMP_CMP_MASKED_EQ, 0o6000, 0)])]
    if _yes(service, "LockPersonality"):
        conditional["personality"] = [(SCMP_ACT_ALLOW, [(0, SCMP_CMP_EQ, v, 0)]) for v in (0, 0xFFFFFFFF)]
    for name in sorted(allowed - set(conditional)):
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number >= 0:
            assert lib.seccomp_rule_add_array(ctx, SCMP_ACT_ALLOW, number, 0, None) == 0, name
    for name, rules in conditional.items():
        number = lib.seccomp_syscall_resolve_name(name.encode())
        if number < 0 or (name not in allowed and name != "clone3"):
            continue
        for action, comparisons in rules:
            array = (_ArgCmp * max(1, len(comparisons)))(*[_ArgCmp(*c) for c in comparisons])
            assert lib.seccomp_rule_add_array(ctx, action, number, len(comparisons), array) == 0, name
    assert lib.seccomp_load(ctx) == 0


def _sandbox_main(spec_file: str) -> None:
    """Inside `unshare --mount --uts`: set the sandbox up, then become the service's command."""
    spec = json.loads(Path(spec_file).read_text())
    service, staging = spec["service"], Path(spec["staging"])
    _apply_mounts(service, staging)
    _apply_process(service)
    os.chdir(spec["cwd"])
    _apply_seccomp(service, set(spec["syscalls"]))
    os.execve(spec["exec"][0], spec["exec"], spec["env"])


# --- fixtures --------------------------------------------------------------------------

@pytest.fixture
def system_layout(mariadb, tmp_path):
    """An install laid out as on a server, outside /tmp and /home (under /var/lib when this
    runs as root), with a WordPress of its own that may be restore-tested."""
    from .conftest import Install
    from .servers import WordPress

    base = Path(tempfile.mkdtemp(prefix="wpbackup-systemd-test-", dir="/var/lib")) if os.geteuid() == 0 \
        else tmp_path / "server"
    base.mkdir(exist_ok=True)
    try:
        name = f"wps{uuid.uuid4().hex[:8]}"
        site = WordPress(mariadb, base / "www", name=name)
        mariadb.sql(f"GRANT ALL ON `wpbackup\\_verify\\_%`.* TO '{site.db_user}'@'127.0.0.1'")
        site.read()  # WordPress's first page load writes options: done before the dump
        (base / "install").mkdir()
        staging = tmp_path / "staging"
        staging.mkdir()
        yield Install(base / "install"), site, base, staging
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _snapshot(root: Path, skip: list[Path]) -> dict[str, tuple[int, int, int]]:
    """Every file and folder under ``root`` outside ``skip``: (mode, size, mtime)."""
    seen = {}
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if Path(folder, d) not in skip]
        for name in [*dirs, *files]:
            path = Path(folder, name)
            info = path.lstat()
            seen[str(path)] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return seen


def _rendered(install) -> Path:
    result = install.doit("systemd")
    assert result.returncode == 0, _out(result)
    return install.root / "systemd"


# --- the units -------------------------------------------------------------------------

def test_every_rendered_unit_passes_systemd_analyze_verify(install, wordpress):
    install.add_site("blog", wordpress)
    folder = _rendered(install)
    assert sorted(p.name for p in folder.iterdir()) == sorted(UNIT_NAMES)
    checked = systemd_verify(folder)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr

    backup = parse_unit(folder / "wordpress-backup.service")
    service = backup["Service"]
    exec_words = words(one(service, "ExecStart"))
    assert exec_words[1:] == ["-m", "doit", "-f", str(REPO / "dodo.py"), "backup"]
    assert os.access(exec_words[0], os.X_OK) and exec_words[0] == str(REPO / ".venv" / "bin" / "python")
    assert service_environment(service)["WPBACKUP_ENV"] == str(install.env_path)
    assert one(service, "Type") == "oneshot" and one(service, "WorkingDirectory") == str(REPO)
    assert paths_of(service, "ReadWritePaths") == [install.root]  # .env, doit's state, catalog, backups
    assert backup["Unit"]["Wants"] == ["network-online.target"]
    assert words(one(backup["Unit"], "After"))[0] == "network-online.target"
    for key, value in {"Nice": "19", "CPUSchedulingPolicy": "batch", "IOSchedulingClass": "idle",
                       "ProtectSystem": "strict", "SystemCallFilter": "@system-service",
                       "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6", "NoNewPrivileges": "yes"}.items():
        assert one(service, key) == value
    verify = parse_unit(folder / "wordpress-verify.service")["Service"]
    assert words(one(verify, "ExecStart"))[-4:] == ["verify", "--all", "--remote", "--restore-test"]
    timer = parse_unit(folder / "wordpress-verify.timer")
    assert timer["Timer"] == {"OnCalendar": ["Sun *-*-* 05:00:00"], "Persistent": ["true"],
                              "RandomizedDelaySec": ["30min"], "FixedRandomDelay": ["true"]}
    assert timer["Install"]["WantedBy"] == ["timers.target"]


def test_paths_with_spaces_and_percent_signs_survive_into_the_units(wordpress, tmp_path):
    from .conftest import Install

    install = Install(tmp_path / "odd %h place")
    install.root.mkdir()
    install.env["BACKUP_DIR"] = str(tmp_path / "archives 100%")
    install.add_site("blog", wordpress)
    folder = _rendered(install)
    checked = systemd_verify(folder)
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    service = parse_unit(folder / "wordpress-backup.service")["Service"]
    assert service_environment(service)["WPBACKUP_ENV"] == str(install.env_path)
    assert paths_of(service, "ReadWritePaths") == [install.root, tmp_path / "archives 100%"]
    assert (tmp_path / "archives 100%").is_dir()  # a ReadWritePaths entry must exist when the unit starts


def test_bad_backup_on_calendar_is_refused_and_nothing_runs(install, wordpress):
    install.add_site("blog", wordpress)
    install.env["BACKUP_ON_CALENDAR"] = "every night at 3"
    result = install.doit("systemd")
    assert result.returncode == 3, _out(result)
    assert "configuration error, nothing was run" in result.stderr
    assert f"{install.env_path}: BACKUP_ON_CALENDAR: 'every night at 3' is not a calendar expression" in result.stderr
    assert "Traceback" not in _out(result)
    assert not (install.root / "systemd").exists()


def test_units_are_rendered_again_only_when_what_they_use_changes(install, wordpress):
    install.add_site("blog", wordpress)
    first = install.doit("systemd")
    assert first.returncode == 0 and first.stdout.count("wrote ") == 6, _out(first)
    folder = install.root / "systemd"
    stamps = {name: (folder / name).stat().st_mtime_ns for name in UNIT_NAMES}

    again = install.doit("systemd")
    assert again.returncode == 0 and "-- systemd" in again.stdout and "wrote" not in again.stdout, _out(again)
    assert {name: (folder / name).stat().st_mtime_ns for name in UNIT_NAMES} == stamps

    install.env["REPORT_ON_CALENDAR"] = "Mon..Fri *-*-* 07:30:00"
    changed = install.doit("systemd")
    assert changed.returncode == 0, _out(changed)
    assert f"wrote {folder / 'wordpress-report.timer'}" in changed.stdout
    assert changed.stdout.count("wrote ") == 1 and changed.stdout.count("unchanged ") == 5
    assert parse_unit(folder / "wordpress-report.timer")["Timer"]["OnCalendar"] == ["Mon..Fri *-*-* 07:30:00"]
    assert install.doit("systemd").stdout.count("wrote ") == 0
    info = install.doit("info", "systemd")  # a changed template re-renders too: they are its file_dep
    assert info.returncode == 0, _out(info)
    for template in ("service.j2", "timer.j2"):
        assert str(REPO / "templates" / "systemd" / template) in info.stdout


def test_install_without_a_running_systemd_writes_the_units_and_says_so(install, wordpress, tmp_path):
    from wpbackup.ops.units import SYSTEMD_RUNNING

    if SYSTEMD_RUNNING.exists():
        pytest.skip("systemd runs on this machine: --install would enable units on it")
    install.add_site("blog", wordpress)
    unit_dir = tmp_path / "etc-systemd-system"
    result = install.doit("systemd", "--install", "--unit-dir", str(unit_dir))
    assert result.returncode == 0, _out(result)
    assert sorted(p.name for p in unit_dir.iterdir()) == sorted(UNIT_NAMES)
    assert "systemd is not running on this host" in result.stdout and "not enabled" in result.stdout
    timers = "wordpress-backup.timer wordpress-report.timer wordpress-verify.timer"
    assert f"systemctl enable --now {timers}" in result.stdout
    for name in UNIT_NAMES:
        assert (unit_dir / name).read_bytes() == (install.root / "systemd" / name).read_bytes()
    second = install.doit("systemd", "--install", "--unit-dir", str(unit_dir))
    assert second.returncode == 0 and second.stdout.count("unchanged ") == 12, _out(second)


FAKE_SYSTEMCTL = """#!/bin/sh
echo "$@" >> {log}
case "$1" in enable) [ -n "{fail}" ] && {{ echo "Failed to enable unit: Access denied" >&2; exit 1; }};; esac
exit 0
"""


@pytest.mark.parametrize("fail", [False, True])
def test_install_with_systemd_running_reloads_then_enables_the_timers(wordpress, tmp_path, monkeypatch, fail):
    """systemd does not run here: a stand-in systemctl records what a running one is asked."""
    from wpbackup.config.settings import load_settings
    from wpbackup.config.sites import Site
    from wpbackup.errors import BackupError
    from wpbackup.ops import units

    (tmp_path / ".env").write_text("SERVER_ID=web-1\n")
    settings = load_settings({"WPBACKUP_ENV": str(tmp_path / ".env")})
    folder = tmp_path / "systemd"
    units.write_units(units.render(units.unit_context(settings, [Site("blog", wordpress.path)])), folder)
    bindir, log = tmp_path / "bin", tmp_path / "systemctl.log"
    bindir.mkdir()
    (bindir / "systemctl").write_text(FAKE_SYSTEMCTL.format(log=log, fail="yes" if fail else ""))
    (bindir / "systemctl").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    timers = "wordpress-backup.timer wordpress-report.timer wordpress-verify.timer"
    if fail:
        with pytest.raises(BackupError, match=f"systemctl enable --now {timers} failed: Failed to enable unit"):
            units.install(folder, tmp_path / "units", running=True)
    else:
        lines = units.install(folder, tmp_path / "units", running=True)
        assert lines[-1].startswith("enabled and started wordpress-backup.timer")
    assert log.read_text().splitlines() == ["daemon-reload", f"enable --now {timers}"]


def test_a_broken_unit_is_never_installed(wordpress, tmp_path):
    from wpbackup.errors import BackupError
    from wpbackup.ops import units

    folder = tmp_path / "systemd"
    folder.mkdir()
    for name in UNIT_NAMES:
        (folder / name).write_text("[Service]\nType=oneshott\nExecStart=relative/backup\n" if name.endswith(".service")
                                   else "[Timer]\nOnCalendar=*-*-* 03:00:00\n[Install]\nWantedBy=timers.target\n")
    with pytest.raises(BackupError, match="systemd-analyze verify refuses the rendered units, nothing was installed"):
        units.install(folder, tmp_path / "units", running=False)
    assert not (tmp_path / "units").exists()


@pytest.mark.parametrize("where, expected_home, expected_tmp, note", [
    ("site-home", "read-only", True, "site blog is under /home"),
    ("socket-tmp", "yes", False, "the database socket of blog is under /tmp"),
    ("s3-chain", "read-only", True, "boto3's chain, which reads ~/.aws"),
    ("plain", "yes", True, None),
])
def test_protect_home_and_private_tmp_follow_what_the_sites_need(where, expected_home, expected_tmp, note):
    from wpbackup.config.settings import Settings
    from wpbackup.config.sites import Site
    from wpbackup.ops import units

    state = Path("/srv/wordpress-backup")
    settings = Settings(env_path=state / ".env", server_id="web-1", sites_file=state / "sites.json",
                        db_path=state / "backups.db", backup_dir=Path("/srv/backups"),
                        s3_bucket="wp-backups" if where == "s3-chain" else None)
    db = {"name": "wp", "user": "wp", "password": "x", "table_prefix": "wp_", "host": "127.0.0.1"}
    path = Path("/home/alice/www") if where == "site-home" else Path("/var/www/blog")
    if where == "socket-tmp":
        db = {**db, "host": None, "socket": "/tmp/mysql.sock"}
    box = units.sandbox(settings, [Site("blog", path, db=db)], Path("/usr/bin/python3"))
    assert box.protect_home == expected_home and box.private_tmp is (expected_tmp and not INSTALL_IN_TMP)
    assert box.writable == [state, Path("/srv/backups")]
    notes = [n for n in box.notes if "the install is under /tmp" not in n]  # a checkout under /tmp (CI)
    assert (note is None and notes == []) or any(note in n for n in notes), box.notes


def test_every_folder_a_run_writes_is_writable_once():
    from wpbackup.config.settings import Settings
    from wpbackup.ops import units

    state = Path("/opt/wordpress-backup")
    settings = Settings(env_path=state / ".env", server_id="web-1", sites_file=Path("/etc/wpbackup/sites.json"),
                        db_path=Path("/var/lib/wpbackup/backups.db"), backup_dir=Path("/var/lib/wpbackup/archives"))
    box = units.sandbox(settings, [], Path("/usr/bin/python3"))
    assert box.writable == [state, Path("/etc/wpbackup"), Path("/var/lib/wpbackup")]


def test_code_beside_the_state_stays_read_only(tmp_path, monkeypatch):
    """The contract's default: .env beside dodo.py, so the install folder itself is writable;
    its code is then listed in ReadOnlyPaths."""
    from wpbackup.config.settings import load_settings
    from wpbackup.ops import units

    for name in ("dodo.py", "tasks", "wpbackup", "templates"):
        (tmp_path / name).mkdir() if name != "dodo.py" else (tmp_path / name).write_text("")
    (tmp_path / ".env").write_text("SERVER_ID=web-1\n")
    monkeypatch.setattr(units, "PROJECT_DIR", tmp_path)
    monkeypatch.setattr(units, "service_user", lambda settings: "www-data")
    context = units.unit_context(load_settings({"WPBACKUP_ENV": str(tmp_path / ".env")}), [])
    assert context["writable"] == [str(tmp_path)]
    assert context["read_only"] == [str(tmp_path / name) for name in ("dodo.py", "tasks", "wpbackup", "templates")]
    units.write_units(units.render(context), tmp_path / "systemd")
    checked = systemd_verify(tmp_path / "systemd")
    assert checked.returncode == 0 and checked.stderr == "", checked.stderr
    service = parse_unit(tmp_path / "systemd" / "wordpress-backup.service")["Service"]
    assert paths_of(service, "ReadOnlyPaths") == [tmp_path / name for name in ("dodo.py", "tasks", "wpbackup",
                                                                               "templates")]
    assert one(service, "User") == "www-data"


def test_services_run_as_the_owner_of_the_install_state(tmp_path):
    """Never a hard-coded user: root's install runs as root (no User=), another owner's as them."""
    from wpbackup.config.settings import load_settings
    from wpbackup.ops import units

    if os.geteuid() != 0:
        pytest.skip("giving a file to another user needs root")
    env = tmp_path / ".env"
    env.write_text("SERVER_ID=web-1\n")
    settings = load_settings({"WPBACKUP_ENV": str(env)})
    assert units.service_user(settings) is None
    os.chown(env, 65534, 65534)
    assert units.service_user(settings) == "nobody"


def test_a_path_that_would_break_a_unit_file_is_refused(tmp_path):
    from wpbackup.config.settings import load_settings
    from wpbackup.errors import BackupError
    from wpbackup.ops import units

    (tmp_path / ".env").write_text('SERVER_ID=web-1\nBACKUP_DIR="/srv/it\'s"\n')
    with pytest.raises(BackupError, match="a unit file cannot name it safely"):
        units.unit_context(load_settings({"WPBACKUP_ENV": str(tmp_path / ".env")}), [])


# --- the services, run with their sandbox ---------------------------------------------------

def test_rendered_services_complete_a_real_backup_verify_and_report_in_their_sandbox(system_layout, s3):
    install, site, base, staging = system_layout
    install.use_s3(s3)
    install.add_site("blog", site)
    folder = _rendered(install)
    service = parse_unit(folder / "wordpress-backup.service")["Service"]
    writable = paths_of(service, "ReadWritePaths")
    assert writable == [install.root]
    if base.parent == Path("/var/lib"):  # laid out like a server: nothing under /tmp or /home
        # (but the code itself: a checkout under /tmp, as CI's, keeps /tmp shared)
        assert one(service, "PrivateTmp") == ("no" if INSTALL_IN_TMP else "yes")
        assert one(service, "ProtectHome") == "yes"
    before = _snapshot(base, writable)

    backup = run_service(folder / "wordpress-backup.service", staging)
    assert backup.returncode == 0, _out(backup)
    assert "SUMMARY blog: OK" in _out(backup)
    [archive] = install.archives()
    [stored] = install.rows("SELECT filename FROM s3_archives")
    assert stored["filename"].endswith(archive.name)
    assert s3.s3.head_object(Bucket=s3.bucket, Key=stored["filename"])["ContentLength"] == archive.stat().st_size

    verify = run_service(folder / "wordpress-verify.service", staging)
    assert verify.returncode == 0, _out(verify)
    assert "restore test" in _out(verify)
    [tested] = install.rows("SELECT * FROM backup_log WHERE restore_tested IS NOT NULL")
    assert tested["restore_tested"] == 1 and tested["verified_s3"] == 1 and tested["verified_local"] == 1
    assert not list((install.backup_dir / ".work").glob("wpbackup-verify-*"))  # scratch space cleaned up

    report = run_service(folder / "wordpress-report.service", staging)
    assert report.returncode == 0, _out(report)
    assert {p.suffix for p in (install.backup_dir / "reports").iterdir()} == {".eml", ".html"}
    assert _snapshot(base, writable) == before  # nothing outside ReadWritePaths changed


PROBE = r"""
import ctypes, json, os, socket, sys
state, site, project = sys.argv[1:4]
found = {}
def attempt(name, action):
    try:
        action()
        found[name] = "ok"
    except OSError as exc:
        found[name] = exc.errno
attempt("write_state", lambda: open(os.path.join(state, "probe"), "w").close())
attempt("write_site", lambda: open(os.path.join(site, "probe"), "w").close())
attempt("write_code", lambda: open(os.path.join(project, "wpbackup", "probe"), "w").close())
attempt("write_etc", lambda: open("/etc/wpbackup-probe", "w").close())
attempt("netlink", lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW).close())
attempt("inet", lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM).close())
attempt("resolve", lambda: socket.getaddrinfo("localhost", 443, 0, socket.SOCK_STREAM, 0, socket.AI_ADDRCONFIG))
libc = ctypes.CDLL(None, use_errno=True)
found["unshare"] = 0 if libc.unshare(0x00020000) == 0 else ctypes.get_errno()
found["sethostname"] = 0 if libc.sethostname(b"x", 1) == 0 else ctypes.get_errno()
found["tmp_marker"] = os.path.exists(sys.argv[4])
found["dev"] = sorted(os.listdir("/dev"))
found["nice"] = os.getpriority(os.PRIO_PROCESS, 0)
found["policy"] = os.sched_getscheduler(0) == os.SCHED_BATCH
found["umask"] = os.umask(0)
found["env"] = sorted(os.environ)
print(json.dumps(found))
"""


def test_the_emulated_sandbox_has_the_units_properties(system_layout):
    """The emulation is no pretence: the rendered backup service's sandbox refuses what it must."""
    problem = sandbox_problem()
    if problem:
        pytest.skip(f"the sandbox cannot be emulated here: {problem}")
    install, site, base, staging = system_layout
    install.add_site("blog", site)
    folder = _rendered(install)
    service = parse_unit(folder / "wordpress-backup.service")["Service"]
    marker = Path(tempfile.mkstemp(prefix="wpb-host-tmp-")[1])
    try:
        python = words(one(service, "ExecStart"))[0]
        result = run_service(folder / "wordpress-backup.service", staging,
                             [python, "-c", PROBE, str(install.root), str(site.path), str(REPO), str(marker)])
    finally:
        marker.unlink()
    assert result.returncode == 0, _out(result)
    found = json.loads(result.stdout)
    assert found["write_state"] == "ok" and found["inet"] == "ok"
    assert found["resolve"] == "ok"  # glibc copes without AF_NETLINK (AI_ADDRCONFIG asks it first)
    assert found["write_site"] == found["write_code"] == found["write_etc"] == errno.EROFS
    assert found["netlink"] in (errno.EPERM, errno.EAFNOSUPPORT) and found["unshare"] == errno.EPERM
    assert found["sethostname"] == errno.EPERM
    assert found["tmp_marker"] is (one(service, "PrivateTmp") == "no")
    assert set(found["dev"]) <= {"null", "zero", "full", "random", "urandom", "tty", "shm", "fd", "stdin", "stdout",
                                 "stderr"}
    assert found["nice"] == 19 and found["policy"] and found["umask"] == 0o077
    assert set(found["env"]) - {"LC_CTYPE"} == set(service_environment(service))  # Python sets LC_CTYPE itself
    assert not (site.path / "probe").exists() and (install.root / "probe").exists()


def test_backup_over_a_read_only_database_socket_in_tmp(install, wordpress, mariadb, tmp_path):
    """A site on a socket under /tmp: the unit turns PrivateTmp off (and says why), and the
    backup connects through the read-only socket folder."""
    install.add_site("blog", wordpress, db={"user": "root", "password": "", "socket": mariadb.socket})
    folder = _rendered(install)
    text = (folder / "wordpress-backup.service").read_text()
    service = parse_unit(folder / "wordpress-backup.service")["Service"]
    assert one(service, "PrivateTmp") == "no"
    assert re.search(r"# PrivateTmp=no: .* is under /tmp", text)
    staging = tmp_path / "staging"
    staging.mkdir()
    before = _snapshot(wordpress.path, [])
    result = run_service(folder / "wordpress-backup.service", staging)
    assert result.returncode == 0, _out(result)
    assert "SUMMARY blog: OK" in _out(result) and len(install.archives()) == 1
    assert _snapshot(wordpress.path, []) == before


if __name__ == "__main__":  # the emulated sandbox's entry point (see run_service)
    _sandbox_main(sys.argv[1])
