"""Talking to MySQL/MariaDB through its own command-line clients.

    option file (0600, deleted after) -> mariadb-dump | mysqldump -> database.sql
                                      -> mariadb | mysql           -> table list, row counts

The password only ever sits in a 0600 option file passed with --defaults-file, never in argv
or the environment. Errors are turned into one line an operator can act on.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from .children import spawn, tracked
from .errors import BackupError, disk_error
from .sites import DbSettings
from .writeback import Pacer

DUMP_TRAILER = b"-- Dump completed"
CHUNK = 1 << 20


def _find(*names: str) -> str:
    for name in names:
        found = shutil.which(name)
        if found:
            return found
    raise BackupError(f"none of {', '.join(names)} is installed (apt-get install mariadb-client)")


def dump_binary() -> str:
    return _find("mariadb-dump", "mysqldump")


def client_binary() -> str:
    return _find("mariadb", "mysql")


def _option_value(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@contextmanager
def option_file(db: DbSettings, directory: Path | None = None) -> Iterator[str]:
    """A 0600 [client] option file with the credentials, in ``directory`` (a 0700 folder of
    ours, where a file left by a killed process is found and removed), deleted afterwards."""
    lines = ["[client]", f"user={_option_value(db.user)}", f"password={_option_value(db.password)}"]
    if db.host.socket:
        lines += [f"socket={_option_value(db.host.socket)}", "protocol=socket"]
    else:
        lines.append(f"host={_option_value(db.host.host)}")
        if db.host.port:
            lines += [f"port={db.host.port}", "protocol=tcp"]
    lines.append("default-character-set=utf8mb4")
    fd, path = tempfile.mkstemp(prefix="client-", suffix=".cnf", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")
        yield path
    finally:
        os.unlink(path)


def where(db: DbSettings) -> str:
    """Human description of the server, for messages (no secrets)."""
    if db.host.socket:
        return f"socket {db.host.socket}"
    return f"{db.host.host}:{db.host.port or 3306}"


def explain(stderr: str, db: DbSettings, action: str) -> BackupError:
    """Turn a client's stderr into one clear message."""
    text = stderr.strip()
    first = next((line for line in text.splitlines() if "error" in line.lower()), text.splitlines()[0] if text else "")
    if db.password:
        first = first.replace(db.password, "***")
    if re.search(r"\b1045\b|Access denied", text):
        hint = f"login refused for user '{db.user}' on {where(db)} (wrong password?)"
    elif re.search(r"\b200[2-6]\b|Can't connect|Unknown (MySQL|MariaDB) server host", text):
        hint = f"database server unreachable at {where(db)}"
    elif re.search(r"\b1049\b|Unknown database", text):
        hint = f"database '{db.name}' does not exist on {where(db)}"
    elif re.search(r"\b1044\b|\b1142\b|\b1227\b|insufficient privileges", text):
        hint = f"user '{db.user}' lacks a privilege needed to {action}"
    else:
        hint = f"{action} failed"
    return BackupError(f"{hint}: {first}" if first else hint)


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def run_query(db: DbSettings, sql: str, options: str | None = None) -> list[list[str]]:
    """Run SQL with the mariadb/mysql client; rows as lists of strings."""
    def run(path: str) -> list[list[str]]:
        argv = [client_binary(), f"--defaults-file={path}", "--batch", "--skip-column-names",
                "--raw", "-e", sql, db.name]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=3600)
        if result.returncode != 0:
            raise explain(result.stderr, db, "query the database")
        return [line.split("\t") for line in result.stdout.splitlines() if line]

    if options:
        return run(options)
    with option_file(db) as path:
        return run(path)


@dataclass
class TableInfo:
    """The tables of one site (its prefix) and their row counts at dump time."""

    tables: dict[str, int | None]
    skipped: list[str]
    server_version: str


def inspect_tables(db: DbSettings, options: str) -> TableInfo:
    """List the site's tables (those with its prefix) and count their rows in one snapshot."""
    rows = run_query(db, "SELECT VERSION(); SELECT TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
                         "WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME", options)
    version = rows[0][0] if rows else "unknown"
    listed = [(r[0], r[1]) for r in rows[1:] if len(r) >= 2]
    mine = [(name, kind) for name, kind in listed if name.startswith(db.table_prefix)]
    skipped = [name for name, _ in listed if not name.startswith(db.table_prefix)]
    if not mine:
        raise BackupError(
            f"database '{db.name}' on {where(db)} has no table with prefix '{db.table_prefix}' "
            f"({len(listed)} other tables): refusing to store an empty dump"
        )
    base = [name for name, kind in mine if kind == "BASE TABLE"]
    counts: dict[str, int | None] = {name: None for name, _ in mine}
    if base:
        union = " UNION ALL ".join(
            f"SELECT '{name}', COUNT(*) FROM {quote_identifier(name)}" for name in base
        )
        for row in run_query(db, "START TRANSACTION WITH CONSISTENT SNAPSHOT; " + union + "; COMMIT", options):
            counts[row[0]] = int(row[1])
    return TableInfo(counts, skipped, version)


@functools.cache
def tool_version(binary: str) -> str:
    """`BINARY --version`, asked once per process."""
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()


def dump_arguments(binary: str, options: str, db: DbSettings, tables: list[str]) -> list[str]:
    """The dump's argv: consistent, restorable anywhere, no CREATE DATABASE/USE, no secret."""
    argv = [binary, f"--defaults-file={options}", "--single-transaction", "--quick",
            "--routines", "--triggers", "--hex-blob", "--default-character-set=utf8mb4",
            "--no-tablespaces", "--skip-lock-tables", "--max-allowed-packet=1G"]
    version = tool_version(binary)
    if "mariadb" not in version.lower():
        argv.append("--set-gtid-purged=OFF")
        if re.search(r"Ver 8\.", version):
            argv.append("--column-statistics=0")
    return argv + ["--", db.name] + tables


def _drain(stream, keep: list[bytes]) -> None:
    """Read a child's stderr to the end (so it never blocks), keeping the first 64 KiB."""
    kept = 0
    while chunk := stream.read(8192):
        if kept < 1 << 16:
            keep.append(chunk)
            kept += len(chunk)


@dataclass
class DumpResult:
    sha256: str
    size: int
    tables: dict[str, int | None]
    skipped_tables: list[str]
    server_version: str
    tool: str


def dump_database(db: DbSettings, target: Path, progress: Callable[[int], None] | None = None) -> DumpResult:
    """Dump the site's tables to ``target`` (written as target.part, renamed when complete).

    Fails, leaving nothing behind, when the dump exits non-zero or lacks its completion line:
    a partial dump must never end up in an archive.
    """
    binary = dump_binary()
    partial = target.with_name(target.name + ".part")
    digest = hashlib.sha256()
    size = 0
    tail = b""
    for stale in target.parent.glob("client-*.cnf"):  # left by a killed run
        stale.unlink()
    with option_file(db, target.parent) as options:
        info = inspect_tables(db, options)
        # the whole database when every table is the site's; else the site's tables by name
        argv = dump_arguments(binary, options, db, list(info.tables) if info.skipped else [])
        errors: list[bytes] = []
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            pacer = Pacer(fd)
            with os.fdopen(fd, "wb") as out, tracked(spawn(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )) as proc:
                reader = threading.Thread(target=_drain, args=(proc.stderr, errors), daemon=True)
                reader.start()
                while chunk := proc.stdout.read(CHUNK):
                    out.write(chunk)
                    pacer.wrote(len(chunk))
                    digest.update(chunk)
                    size += len(chunk)
                    tail = (tail + chunk)[-512:]
                    if progress:
                        progress(size)
                code = proc.wait()
                reader.join(timeout=5)
                out.flush()
                os.fsync(out.fileno())
            if code != 0:
                raise explain(b"".join(errors).decode("utf-8", "replace"), db, "dump the database")
            if DUMP_TRAILER not in tail:
                raise BackupError(
                    f"{os.path.basename(binary)} ended without '-- Dump completed': the dump is incomplete"
                )
            os.replace(partial, target)
        except OSError as exc:
            if exc.filename == binary or exc.errno == errno.E2BIG:
                raise BackupError(f"cannot run {binary}: {exc.strerror}") from None
            raise disk_error(partial, exc) from None
        finally:
            if partial.exists():
                partial.unlink()
    return DumpResult(digest.hexdigest(), size, info.tables, info.skipped, info.server_version,
                      tool_version(binary))
