"""`doit deploy`: this install, put on every server of DEPLOY_HOSTS over SSH and set up there.

    plan (DEPLOY_* of the controller's .env) -> per host, each on its own:
      check    deploy/HOST/.env and sites.json on the controller are valid (else nothing is sent)
      connect  ssh, batch mode, host key checked against DEPLOY_KNOWN_HOSTS only: the remote's
               Python, tools, configuration, last deploy, and whether a backup runs there
      code     rsync of the bundle; a second deploy sends only what changed, deletions stay
               inside the bundle (the remote's .env, sites.json, backups.db, backups/ and .venv
               are never touched)
      config   deploy/HOST/.env and sites.json installed 0600; never a remote file otherwise
      reset    when anything changed: the remote's doit state files go (remote.py)
      setup    run.sh systemd --install: the venv (rebuilt for another Python), the units
      smoke    run.sh list must succeed there
      record   when anything changed: an INFO line in the remote's backup_log and the marker
               (.deployed) that tells a finished deploy of this bundle from a half-done one

No secret travels in an argument: the configuration goes over the ssh channel as files, and
whatever the remote prints is redacted with the host's secrets before it is shown.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from wpbackup import __version__
from wpbackup.config.settings import PROJECT_DIR, Settings, load_settings
from wpbackup.config.sites import load_sites
from wpbackup.errors import BackupError, ConfigError
from wpbackup.storage.reader import file_sha256

#: What a server needs to run the tool, relative to the install (tests/, bench/, .ci/, the
#: dev requirements and the controller's own state stay home).
BUNDLE_FILES = ("dodo.py", "run.sh", "requirements.txt", "pyproject.toml", "README.md",
                "sites.json.sample", ".env.sample")
BUNDLE_DIRS = ("wpbackup", "tasks", "templates", "docs")
CONFIG_FILES = (".env", "sites.json")
MARKER = ".deployed"
MIN_PYTHON = (3, 10)
Say = Callable[[str], None]


class DeployError(BackupError):
    """One host's deploy stopped at ``step``; the message says why and what to do."""

    def __init__(self, step: str, message: str):
        super().__init__(message)
        self.step = step


# -- hosts ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Host:
    """One entry of DEPLOY_HOSTS (user@host[:port], validated by settings)."""

    entry: str
    user: str
    address: str  # without the brackets of an IPv6 address
    port: int | None

    @property
    def name(self) -> str:
        """The task's and the deploy/ folder's name: the host, with _PORT when a port is given."""
        return self.address if self.port is None else f"{self.address}_{self.port}"

    @property
    def login(self) -> str:
        return f"{self.user}@{self.address}"

    def rsync_target(self, path: str) -> str:
        address = f"[{self.address}]" if ":" in self.address else self.address
        return f"{self.user}@{address}:{path.rstrip('/')}/"


def parse_host(entry: str) -> Host:
    user, _, rest = entry.partition("@")
    if rest.startswith("["):
        address, _, tail = rest[1:].partition("]")
        port = tail[1:] if tail.startswith(":") else ""
    else:
        address, _, port = rest.partition(":")
    return Host(entry, user, address, int(port) if port else None)


def parse_hosts(entries: tuple[str, ...] | None) -> tuple[list[Host], list[str]]:
    """The hosts, and a problem for each name two entries share (their deploy/ folder)."""
    hosts = [parse_host(entry) for entry in entries or ()]
    problems = []
    for host in hosts:
        twins = [other.entry for other in hosts if other.name == host.name]
        if len(twins) > 1 and twins[0] == host.entry:
            problems.append(f"DEPLOY_HOSTS: {' and '.join(twins)} both name host {host.name} (one deploy/ "
                            "folder and one task each): list each server once")
    return hosts, problems


# -- the plan ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What every host of this run gets, and how to reach them."""

    project: Path
    path: str  # DEPLOY_PATH on the servers
    known_hosts: Path
    key: Path | None
    config_root: Path  # deploy/ beside the controller's .env
    controller: str
    files: tuple[str, ...] = ()
    digest: str = ""


def make_plan(settings: Settings, project: Path = PROJECT_DIR) -> Plan:
    known = settings.value("DEPLOY_KNOWN_HOSTS")
    key = settings.value("DEPLOY_SSH_KEY")
    files = tuple(bundle_files(project))
    return Plan(
        project=project,
        path=str(settings.value("DEPLOY_PATH")).rstrip("/") or "/",
        known_hosts=Path(str(known)).expanduser() if known else Path.home() / ".ssh" / "known_hosts",
        key=Path(str(key)).expanduser() if key else None,
        config_root=settings.state_dir / "deploy",
        controller=settings.server_id,
        files=files,
        digest=bundle_digest(project, files),
    )


def check_plan(plan: Plan) -> None:
    """The controller's side of the connection exists, before any host is tried."""
    if missing := [tool for tool in ("ssh", "rsync") if shutil.which(tool) is None]:
        raise DeployError("connect", f"{' and '.join(missing)} not installed on this controller "
                          "(Debian: apt-get install openssh-client rsync)")
    if not plan.known_hosts.is_file():
        raise DeployError("connect", f"DEPLOY_KNOWN_HOSTS: {plan.known_hosts} does not exist: host keys are always "
                          "checked, so add each server's key first (docs/deployment.md: ssh-keyscan, then compare "
                          "the fingerprint with the server's own)")
    if plan.key is not None and not plan.key.is_file():
        raise DeployError("connect", f"DEPLOY_SSH_KEY: {plan.key} does not exist (a private key file)")
    for value in (str(plan.known_hosts), str(plan.key or "")):
        if "'" in value or "\n" in value:
            raise DeployError("connect", f"{value!r}: a path with a quote or line break cannot be given to rsync")


# -- the bundle -------------------------------------------------------------------------------

def _skipped(name: str) -> bool:
    """Caches, editor leftovers and hidden files (a stray .env copy) never leave the controller."""
    return name == "__pycache__" or name.startswith(".") or name.endswith(("~", ".pyc", ".pyo"))


def bundle_files(project: Path) -> list[str]:
    """Every file the servers get, relative to the install, sorted (what rsync's filter sends)."""
    found = [name for name in BUNDLE_FILES if (project / name).is_file()]
    for folder in BUNDLE_DIRS:
        for root, dirs, names in os.walk(project / folder):
            base = Path(root).relative_to(project)
            links = [d for d in dirs if (Path(root) / d).is_symlink()]  # sent as links, not followed
            dirs[:] = sorted(d for d in dirs if not _skipped(d) and d not in links)
            found += [(base / name).as_posix() for name in names + links if not _skipped(name)]
    return sorted(found)


def bundle_digest(project: Path, files: tuple[str, ...] | list[str]) -> str:
    """One checksum of the bundle (names, contents, executable bits) and the version: the
    marker a finished deploy leaves, so a retried half-done one is still recorded."""
    total = hashlib.sha256(__version__.encode())
    for name in files:
        path = project / name
        if path.is_symlink():
            content = hashlib.sha256(os.readlink(path).encode()).hexdigest()
        else:
            content = file_sha256(path)
        total.update(f"{name}\0{os.access(path, os.X_OK)}\0{content}\n".encode())
    return total.hexdigest()


def filter_rules() -> list[str]:
    """rsync's filter for the bundle, the same choice as bundle_files: the bundle's top-level
    files and folders, nothing else at the top (so the remote's .env, sites.json, backups.db,
    backups/, .venv, systemd/ are excluded, which also protects them from --delete), and the
    skipped names inside the folders (perishable: they do not keep a deleted folder alive)."""
    rules = [f"+ /{name}" for name in BUNDLE_FILES] + [f"+ /{name}/" for name in BUNDLE_DIRS]
    rules.append("- /*")
    rules += ["-p __pycache__/", "-p .*", "-p *~", "-p *.pyc", "-p *.pyo"]
    return rules


# -- ssh and rsync argv -----------------------------------------------------------------------

def ssh_options(plan: Plan, host: Host) -> list[str]:
    """Batch mode (never a prompt), the host key checked against DEPLOY_KNOWN_HOSTS alone and
    never written to it, DEPLOY_SSH_KEY alone when set, dead links noticed."""
    options = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes",
               "-o", f"UserKnownHostsFile={plan.known_hosts}", "-o", "GlobalKnownHostsFile=/dev/null",
               "-o", "UpdateHostKeys=no", "-o", "ConnectTimeout=20",
               "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]
    if host.port is not None:
        options += ["-p", str(host.port)]
    if plan.key is not None:
        options += ["-i", str(plan.key), "-o", "IdentitiesOnly=yes"]
    return options


def ssh_argv(plan: Plan, host: Host, command: str) -> list[str]:
    return ["ssh", *ssh_options(plan, host), "--", host.login, command]


def rsync_shell(plan: Plan, host: Host) -> str:
    """The ssh command for rsync's -e, quoted the way rsync splits it (single quotes)."""
    words = ["ssh", *ssh_options(plan, host)]
    return " ".join(word if re.fullmatch(r"[\w./=:@%+,-]+", word) else f"'{word}'" for word in words)


def code_rsync_argv(plan: Plan, host: Host) -> list[str]:
    """The bundle, compared by checksum (so mtimes of another checkout cost nothing), with
    --delete confined by the filter to the bundle itself."""
    return ["rsync", "-rlpt", "--checksum", "--delete", "--protect-args", "--itemize-changes", "--stats",
            "--chmod=Dgo-w,Fgo-w", *[f"--filter={rule}" for rule in filter_rules()],
            "-e", rsync_shell(plan, host), f"{plan.project}/", host.rsync_target(plan.path)]


def config_rsync_argv(plan: Plan, host: Host, sources: list[Path]) -> list[str]:
    """The host's .env and sites.json as files over the channel, 0600 (rsync writes each
    under a temporary owner-only name and renames it: never half a file, never readable)."""
    # the copy it replaces stays beside it as .bak (a configuration made on the server is not lost)
    return ["rsync", "-pt", "--checksum", "--protect-args", "--itemize-changes", "--chmod=F600",
            "--backup", "--suffix=.bak",
            "-e", rsync_shell(plan, host), *[str(source.absolute()) for source in sources],
            host.rsync_target(plan.path)]


# -- running things ---------------------------------------------------------------------------

def run(argv: list[str], stdin: str | None = None, echo: Say | None = None) -> tuple[int, list[str]]:
    """Run one local command (ssh, rsync) with stdout and stderr merged: its exit status and
    lines; with ``echo``, each line is shown as it comes (pip and the unit install take time)."""
    proc = subprocess.Popen(argv, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace")
    if stdin is not None:
        try:
            proc.stdin.write(stdin)
            proc.stdin.close()
        except BrokenPipeError:  # ssh gave up before reading: its exit status says why
            pass
    lines = []
    for line in proc.stdout:
        lines.append(line.rstrip("\n"))
        if echo:
            echo(lines[-1])
    return proc.wait(), lines


def connection_problem(plan: Plan, host: Host, lines: list[str]) -> str:
    """What ssh's exit 255 means, in the operator's terms."""
    text = "\n".join(lines)
    where = f"{host.address}:{host.port or 22}"
    if "REMOTE HOST IDENTIFICATION HAS CHANGED" in text or "has changed and you have requested strict" in text:
        return (f"the host key of {where} does not match the one in {plan.known_hosts}: refused (a reinstalled "
                "server, or someone in between: compare the fingerprint with the server's own before you "
                "replace the line)")
    if "host key is known for" in text or "Host key verification failed" in text:
        return (f"no host key for {where} in {plan.known_hosts}: refused (add it with ssh-keyscan, after "
                "comparing the fingerprint with the server's own: docs/deployment.md)")
    if "Permission denied" in text:
        key = f" {plan.key}" if plan.key else ""
        return f"login refused for {host.user} on {where}: is the public half of the key{key} in its authorized_keys?"
    last = next((line.strip() for line in reversed(lines) if line.strip()), "ssh failed without a message")
    return f"cannot connect to {host.entry}: {last}"


def tail(lines: list[str], count: int = 6) -> str:
    shown = [line.strip() for line in lines if line.strip()][-count:]
    return " | ".join(shown) if shown else "no output"


# -- one host ---------------------------------------------------------------------------------

@dataclass
class Facts:
    """What the connect step found on the host."""

    python: str = ""
    python_version: str = ""
    tools: set[str] = field(default_factory=set)
    config: set[str] = field(default_factory=set)
    deployed: dict = field(default_factory=dict)
    busy: str = ""
    error: str = ""


@dataclass
class Outcome:
    host: Host
    verdict: str  # OK, NOT CONFIGURED or FAILED
    detail: str

    @property
    def ok(self) -> bool:
        return self.verdict == "OK"

    @property
    def line(self) -> str:
        return f"SUMMARY deploy {self.host.name}: {self.verdict} {self.detail}"


def parse_facts(lines: list[str]) -> Facts:
    facts = Facts()
    for line in lines:
        key, _, value = line.partition("=")
        if key == "tool":
            facts.tools.add(value)
        elif key == "config":
            facts.config.add(value)
        elif key == "deployed":
            try:
                facts.deployed = json.loads(value)
            except ValueError:
                facts.deployed = {}
        elif key in ("python", "python_version", "busy", "error"):
            setattr(facts, key, value)
    return facts


def missing_tools(facts: Facts) -> list[str]:
    """What the host lacks to run the tool: rsync (this deploy), zstd, a dump client, Python."""
    missing = [tool for tool in ("rsync", "zstd") if tool not in facts.tools]
    if not {"mariadb-dump", "mysqldump"} & facts.tools:
        missing.append("mariadb-dump or mysqldump (mariadb-client)")
    try:
        version = tuple(int(part) for part in facts.python_version.split(".")[:2])
    except ValueError:
        version = ()
    if not facts.python or len(version) < 2 or version < MIN_PYTHON:
        found = f" (found {facts.python} {facts.python_version})" if facts.python else ""
        missing.append(f"python3 {MIN_PYTHON[0]}.{MIN_PYTHON[1]} or newer{found}")
    return missing


def parse_rsync(lines: list[str]) -> dict:
    """rsync's --itemize-changes and --stats output: what it sent, deleted and counted."""
    itemized = [line for line in lines if re.match(r"^([<>ch.*][fdLDS][^ ]{9}|\*deleting) ", line)]
    stats = {}
    for line in lines:
        if match := re.match(r"^(Number of regular files transferred|Total transferred file size|"
                             r"Number of deleted files): ([\d,]+)", line):
            stats[match[1]] = int(match[2].replace(",", ""))
        elif match := re.match(r"^Number of files: [\d,]+ \(reg: ([\d,]+)", line):
            stats["regular files"] = int(match[1].replace(",", ""))
    return {
        # "<": sent to the remote host ("> " is what a local copy shows), "c": a link created
        "sent": [line.split(" ", 1)[1] for line in itemized if line.startswith(("<f", ">f", "cL", "hf"))],
        "deleted": [line.split(" ", 1)[1].strip() for line in itemized if line.startswith("*deleting")
                    and not line.endswith("/")],  # files; their emptied folders go with them
        "created": [line.split(" ", 1)[1] for line in itemized if line.startswith("cd+")],
        "attributes": [line.split(" ", 1)[1] for line in itemized if line.startswith(".")],
        "stats": stats,
    }


# -- one host ---------------------------------------------------------------------------------

#: The connect step, run by the remote's sh with DEPLOY_PATH as $1: plain KEY=value lines.
PREFLIGHT = r"""
path=$1
if [ -x /usr/bin/python3 ]; then py=/usr/bin/python3; else py=$(command -v python3 2>/dev/null || true); fi
echo "python=$py"
if [ -n "$py" ]; then
    echo "python_version=$("$py" -c 'import sys; print("%d.%d.%d" % sys.version_info[:3])' 2>/dev/null)"
fi
for tool in rsync zstd mariadb-dump mysqldump; do
    if command -v "$tool" >/dev/null 2>&1; then echo "tool=$tool"; fi
done
if ! mkdir -p -- "$path" 2>/dev/null || [ ! -w "$path" ]; then
    echo "error=cannot create or write $path as user $(id -un) there"
    exit 0
fi
for name in .env sites.json; do
    if [ -e "$path/$name" ]; then echo "config=$name"; fi
done
if [ -f "$path/.deployed" ]; then echo "deployed=$(head -c 2000 "$path/.deployed" | tr -d '\n')"; fi
if [ -e "$path/.wpbackup.lock" ] && command -v flock >/dev/null 2>&1; then
    flock -n "$path/.wpbackup.lock" true || echo "busy=$(head -c 200 "$path/.wpbackup.lock" | tr -d '\n')"
fi
echo "connected=yes"
"""


class HostDeploy:
    """The steps for one host, in order; any of them may stop it with a DeployError."""

    def __init__(self, plan: Plan, host: Host, say: Say):
        self.plan, self.host, self.say = plan, host, say
        self.secrets: list[str] = []
        self.summary: list[str] = []
        self.folder = plan.config_root / host.name

    # -- helpers

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text

    def note(self, text: str) -> None:
        self.say(f"deploy {self.host.name}: {self.redact(text)}")

    def remote(self, command: str, step: str, stdin: str | None = None,
               echo: bool = False) -> tuple[int, list[str]]:
        """One command on the host (its shell parses ``command``); exit 255 is ssh's own."""
        show = (lambda line: self.note(f"| {line}")) if echo else None
        rc, lines = run(ssh_argv(self.plan, self.host, command), stdin, show)
        lines = [self.redact(line) for line in lines]
        if rc == 255:
            raise DeployError(step, connection_problem(self.plan, self.host, lines))
        return rc, lines

    def in_install(self, command: str) -> str:
        return f"cd {shlex.quote(self.plan.path)} && {command}"

    def rsync(self, argv: list[str], step: str) -> dict:
        rc, lines = run(argv)
        lines = [self.redact(line) for line in lines]
        if rc == 255 or (rc != 0 and any("connection unexpectedly closed" in line for line in lines)):
            raise DeployError(step, connection_problem(self.plan, self.host, lines))
        if rc != 0:
            raise DeployError(step, f"rsync failed (exit {rc}): {tail(lines)}")
        return parse_rsync(lines)

    # -- the steps

    def check_config(self) -> list[Path]:
        """The controller's deploy/HOST/ files, each valid as the remote will read it."""
        sources = [self.folder / name for name in CONFIG_FILES if (self.folder / name).is_file()]
        for source in sources:
            if source.stat().st_mode & 0o077:
                self.note(f"warning: {source} can be read by other users here: chmod 600 it")
            if source.name == ".env":
                self._check_env(source)
            else:
                self._check_sites(source)
        return sources

    def _check_env(self, source: Path) -> None:
        from wpbackup.fleet.notify import secret_values

        try:
            settings = load_settings({"WPBACKUP_ENV": str(source)})
        except ConfigError as exc:
            raise DeployError("check", f"{source} is not valid, nothing was sent: {'; '.join(exc.problems)}") from None
        self.secrets += secret_values(settings)
        for warning in settings.warnings:
            self.note(f"warning: {warning}")

    def _check_sites(self, source: Path) -> None:
        try:
            sites = load_sites(source)
        except ConfigError as exc:
            raise DeployError("check", f"{source} is not valid, nothing was sent: {'; '.join(exc.problems)}") from None
        self.secrets += [str(site.db["password"]) for site in sites if site.db.get("password")]
        self.secrets.sort(key=len, reverse=True)

    def connect(self) -> Facts:
        rc, lines = self.remote(f"sh -s -- {shlex.quote(self.plan.path)}", "connect", stdin=PREFLIGHT)
        facts = parse_facts(lines)
        if "connected=yes" not in lines and not facts.error:
            raise DeployError("connect", f"the remote shell failed (exit {rc}): {tail(lines)}")
        if facts.error:
            raise DeployError("connect", facts.error)
        if missing := missing_tools(facts):
            raise DeployError("connect", f"missing there: {', '.join(missing)} (Debian: apt-get install rsync "
                                         "zstd mariadb-client python3-venv); nothing was changed")
        if facts.busy:
            raise DeployError("connect", f"a backup run is in progress there ({facts.busy}): nothing was changed; "
                                         "deploy again when it has finished")
        self.note(f"connected as {self.host.user}: Python {facts.python_version}, install in {self.plan.path}")
        return facts

    def upload_code(self) -> bool:
        result = self.rsync(code_rsync_argv(self.plan, self.host), "code")
        stats = result["stats"]
        sent, deleted = result["sent"], result["deleted"]
        self.note(f"code: {stats.get('Number of regular files transferred', len(sent))} of "
                  f"{stats.get('regular files', len(self.plan.files))} files sent "
                  f"({stats.get('Total transferred file size', 0)} bytes), {len(deleted)} deleted")
        for name in deleted:
            self.note(f"code: deleted {name} (no longer in the bundle)")
        changed = bool(sent or deleted or result["created"])
        self.summary.append(f"code: {len(sent)} files sent, {len(deleted)} deleted" if changed else "code unchanged")
        return changed

    def install_config(self, sources: list[Path]) -> bool:
        result = self.rsync(config_rsync_argv(self.plan, self.host, sources), "config")
        if result["sent"]:
            self.note(f"config: {', '.join(result['sent'])} installed from {self.folder} (0600)")
            self.summary.append(f"config installed ({', '.join(result['sent'])})")
        else:
            self.note(f"config: {', '.join(s.name for s in sources)} already as in {self.folder}")
            self.summary.append("config unchanged")
        if result["attributes"]:
            self.note(f"config: mode set to 0600 on {', '.join(result['attributes'])}")
        return bool(result["sent"])

    def reset(self, python: str) -> None:
        rc, lines = self.remote(self.in_install(f"{shlex.quote(python)} -m wpbackup.ops.remote reset"), "reset")
        if rc != 0:
            raise DeployError("reset", tail(lines))
        for line in lines:
            self.note(line)

    def setup(self) -> None:
        self.note("setup: ./run.sh systemd --install (the venv first: pip may take a while)")
        rc, lines = self.remote(self.in_install("./run.sh systemd --install"), "setup", echo=True)
        if rc != 0:
            raise DeployError("setup", f"./run.sh systemd --install failed there (exit {rc}): {tail(lines)}")
        last = next((line.strip() for line in reversed(lines) if line.strip()), "")
        first_clause = re.split(r"[:;] ", last)[0][:100]  # `doit systemd`'s closing line: installed or why not
        self.summary.append(f"units: {first_clause}" if first_clause else "units installed")

    def smoke(self) -> None:
        rc, lines = self.remote(self.in_install("./run.sh list"), "smoke")
        commands = [line.split()[0] for line in lines if line[:1].isalpha()]
        if rc != 0 or "backup" not in commands:
            raise DeployError("smoke", f"`doit list` failed there (exit {rc}): {tail(lines)}")
        self.note(f"smoke check: doit list OK ({len(commands)} commands)")
        self.summary.append("doit list OK")

    def record(self) -> None:
        command = (f".venv/bin/python -m wpbackup.ops.remote record --controller "
                   f"{shlex.quote(self.plan.controller)} --digest {self.plan.digest}")
        rc, lines = self.remote(self.in_install(command), "record")
        if rc != 0:
            raise DeployError("record", tail(lines))
        for line in lines:
            self.note(line)

    def unconfigured(self) -> Outcome:
        return Outcome(self.host, "NOT CONFIGURED", (
            f"the code is in {self.plan.path} there, but it has no .env or sites.json and {self.folder} holds none "
            f"here: run `doit configure` there ({self.ssh_hint()}, then cd {self.plan.path} && ./run.sh "
            f"configure) or put .env and sites.json into {self.folder}/ here, then deploy again; no units "
            "were installed"))

    def ssh_hint(self) -> str:
        port = f"-p {self.host.port} " if self.host.port is not None else ""
        return f"ssh {port}{self.host.login}"

    def run(self) -> Outcome:
        try:
            check_plan(self.plan)
            sources = self.check_config()
            facts = self.connect()
            code_changed = self.upload_code()
            if not sources and not facts.config:
                return self.unconfigured()
            config_changed = self.install_config(sources) if sources else False
            if not sources:
                self.note(f"config: none in {self.folder}; the remote's own kept ({', '.join(sorted(facts.config))})")
                self.summary.append("remote config kept")
            changed = code_changed or config_changed or facts.deployed.get("digest") != self.plan.digest
            if changed:
                self.reset(facts.python)
            self.setup()
            self.smoke()
            if changed:
                self.record()
        except DeployError as exc:
            return Outcome(self.host, "FAILED", f"at {exc.step}: {self.redact(str(exc))}")
        what = "deployed" if changed else "already there, nothing changed"
        return Outcome(self.host, "OK", f"wordpress-backup {__version__} {what}; {'; '.join(self.summary)}")


def deploy_host(plan: Plan, host: Host, say: Say) -> Outcome:
    """Deploy to one host; every failure is this host's Outcome, never an exception."""
    return HostDeploy(plan, host, say).run()
