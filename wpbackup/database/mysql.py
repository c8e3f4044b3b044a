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
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from wpbackup.backup.children import left_by_the_dead, spawn, tracked
from wpbackup.backup.writeback import Pacer
from wpbackup.config.sites import DbSettings
from wpbackup.errors import BackupError, disk_error

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


_OPTION_ESCAPES = {"\\": "\\\\", '"': '\\"', "\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b"}


def _option_value(value: str) -> str:
    """A value for a client option file, quoted with the escapes it understands, so no
    character of a password can end the line or the quotes early."""
    return '"' + "".join(_OPTION_ESCAPES.get(char, char) for char in value) + '"'


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
    fd, path = tempfile.mkstemp(prefix=f"client-{os.getpid()}-", suffix=".cnf", dir=directory)
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
    # permission errors first: 1044 also reads "Access denied", but the login itself worked
    if re.search(r"\b(1044|1142|1143|1227|1370)\b|command denied|insufficient privileges", text):
        denied = re.search(r"to database '((?:[^'\\]|\\.)*)'", text)
        account = re.search(r"user ('[^']*'@'[^']*')", text)
        who = account.group(1) if account else f"'{db.user}'"
        if denied:
            name = denied.group(1)
            hint = (f"user {who} may not use database '{name}' on {where(db)} (needed to {action}); as the "
                    f"database admin, run: GRANT ALL ON {quote_identifier(name)}.* TO {who}")
        else:
            hint = f"user {who} lacks a privilege needed to {action}"
    elif re.search(r"\b1045\b|Access denied", text):
        hint = f"login refused for user '{db.user}' on {where(db)} (wrong password?)"
    elif re.search(r"\b200[2-6]\b|Can't connect|Unknown (MySQL|MariaDB) server host", text):
        hint = f"database server unreachable at {where(db)}"
    elif re.search(r"\b1049\b|Unknown database", text):
        hint = f"database '{db.name}' does not exist on {where(db)}"
    else:
        hint = f"{action} failed"
    return BackupError(f"{hint}: {first}" if first else hint)


def quote_identifier(name: str) -> str:
    return "`" + name.replace("`", "``") + "`"


def run_query(db: DbSettings, sql: str, options: str | None = None) -> list[list[str]]:
    """Run SQL with the mariadb/mysql client; rows as lists of strings."""
    # one argv string may not exceed 128 KiB (a row count over thousands of multisite tables
    # does): such SQL goes through stdin instead
    piped = len(sql) > 64 * 1024

    def run(path: str) -> list[list[str]]:
        argv = [client_binary(), f"--defaults-file={path}", "--batch", "--skip-column-names",
                "--raw", *([] if piped else ["-e", sql]), "--", db.name]  # a name is never an option
        result = subprocess.run(argv, input=sql if piped else None, capture_output=True, text=True,
                                timeout=3600)
        if result.returncode != 0:
            raise explain(result.stderr, db, "query the database")
        return [line.split("\t") for line in result.stdout.splitlines() if line]

    if options:
        return run(options)
    with option_file(db) as path:
        return run(path)


def _sql_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


def network_of(prefix: str, names: Collection[str]) -> str | None:
    """The network prefix Q when ``prefix`` is `{Q}{N}_` and `{Q}blogs` exists: a multisite
    subsite's tables (wp_2_posts) belong to the network's install, not to an install of
    their own, even though the subsite has its own `{Q}{N}_options`."""
    if not prefix.endswith("_"):
        return None
    body = prefix[:-1]
    for cut in range(len(body.rstrip("0123456789")), len(body)):  # at least one digit after Q
        if body[:cut] + "blogs" in names:
            return body[:cut]
    return None


def install_prefixes(names: Collection[str], options_tables: Collection[str]) -> set[str]:
    """The prefixes of the WordPress installs in a database: P for each options table
    `{P}options` (as checked by the caller), less the subsites of a multisite network."""
    found = set()
    for table in options_tables:
        if table.endswith("options"):
            prefix = table[: -len("options")]
            if network_of(prefix, names) is None:
                found.add(prefix)
    return found


def owner(table: str, installs: Collection[str]) -> str | None:
    """The install a table belongs to: the LONGEST install prefix it starts with, so `wp_`
    does not own `wp_shop_orders` when `wp_shop_` is an install of its own."""
    return max((p for p in installs if table.startswith(p)), key=len, default=None)


@dataclass
class Selection:
    """Which tables and views one dump takes, and why."""

    mode: str                 # "all": the whole database; "prefix": the tables this site owns
    why: str                  # what decided it (db.tables, or what the database holds)
    tables: list[str]         # dumped, in the server's name order
    left_out: dict[str, str]  # table -> why it is not dumped
    others: list[str]         # the prefixes of the other installs in the database
    owned: int                # how many tables this site's prefix owns


def select_tables(names: list[str], options_tables: Collection[str], prefix: str,
                  setting: str | None) -> Selection:
    """The whole database unless it also holds another WordPress install (or db.tables says
    so): then only the tables this site's prefix owns, so a restore of one site never
    rewinds another's. Tables no install owns (no WordPress prefix) go with the whole
    database only."""
    installs = install_prefixes(names, options_tables) | {prefix}
    others = sorted(installs - {prefix})
    owners = {name: owner(name, installs) for name in names}
    owned = sum(1 for found in owners.values() if found == prefix)
    if setting:
        mode, why = setting, f'db.tables is "{setting}" in sites.json'
    elif others:
        mode = "prefix"
        why = (f"the database also holds the WordPress install{'s' if len(others) > 1 else ''} "
               f"with prefix {', '.join(others)}")
    else:
        mode, why = "all", "no other WordPress install in the database"
    if mode == "all":
        return Selection(mode, why, list(names), {}, others, owned)
    left_out = {name: (f"belongs to the install with prefix {found}" if found else
                       "belongs to no WordPress install (starts with no install's prefix)")
                for name, found in owners.items() if found != prefix}
    return Selection(mode, why, [n for n in names if n not in left_out], left_out, others, owned)


#: Why the routines and events stay out of a dump of this site's tables only.
OBJECTS_LEFT_OUT = ("routines and events belong to the whole database, not to one install "
                    '(db.tables "all" dumps them)')


@dataclass
class TableInfo:
    """What one dump takes from the database, decided before it starts: the tables and views
    with their row counts in one snapshot (None for a view), what it leaves out and why, and
    whether it carries the database's routines and events."""

    tables: dict[str, int | None]
    left_out: dict[str, str]
    server_version: str
    selection: str = "all"
    why: str = ""
    routines: bool = True
    events: bool = True
    objects: list[str] = field(default_factory=list)             # "PROCEDURE p", "EVENT e" dumped
    objects_left_out: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


_CATALOG_SQL = (
    "SELECT 'v', VERSION(); "
    "SELECT 't', TABLE_NAME, TABLE_TYPE FROM information_schema.TABLES "
    "WHERE TABLE_SCHEMA = DATABASE() ORDER BY TABLE_NAME; "
    "SELECT 'r', ROUTINE_TYPE, ROUTINE_NAME FROM information_schema.ROUTINES "
    "WHERE ROUTINE_SCHEMA = DATABASE() ORDER BY ROUTINE_TYPE, ROUTINE_NAME; "
    "SELECT 'e', 'EVENT', EVENT_NAME FROM information_schema.EVENTS "
    "WHERE EVENT_SCHEMA = DATABASE() ORDER BY EVENT_NAME"
)


def _catalog(db: DbSettings, options: str) -> tuple[str, dict[str, str], list[str]]:
    """Server version, tables and views (name -> TABLE_TYPE), and the routines and events
    this user can see ("PROCEDURE name", "EVENT name"), in one call."""
    version, tables, objects = "unknown", {}, []
    for row in run_query(db, _CATALOG_SQL, options):
        if row[0] == "v" and len(row) >= 2:
            version = row[1]
        elif row[0] == "t" and len(row) >= 3:
            tables[row[1]] = row[2]
        elif row[0] in ("r", "e") and len(row) >= 3:
            objects.append(f"{row[1]} {row[2]}")
    return version, tables, objects


def _options_tables(db: DbSettings, options: str, names: list[str]) -> set[str]:
    """The tables named `*options` with WordPress's option_name column: a plugin's
    differently shaped `wp_foo_options` does not make `wp_foo_` an install of its own."""
    candidates = [n for n in names if n.endswith("options") and n != db.table_prefix + "options"]
    if not candidates:
        return {db.table_prefix + "options"}
    rows = run_query(db, "SELECT TABLE_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() "
                         "AND COLUMN_NAME = 'option_name' AND TABLE_NAME IN ("
                         + ", ".join(_sql_string(n) for n in candidates) + ")", options)
    return {row[0] for row in rows} | {db.table_prefix + "options"}


def may_list_events(db: DbSettings, options: str) -> bool:
    """Whether this user may run SHOW EVENTS, which `--events` does first: a WordPress user
    without the EVENT privilege would otherwise fail every dump."""
    result = subprocess.run([client_binary(), f"--defaults-file={options}", "--batch", "-e", "SHOW EVENTS",
                             "--", db.name], capture_output=True, text=True, timeout=600)
    if result.returncode == 0:
        return True
    if re.search(r"\b1044\b", result.stderr):
        return False
    raise explain(result.stderr, db, "list the database's events")


def _refuse_empty(db: DbSettings, chosen: Selection, count: int) -> None:
    """A dump without one table of the site is a wrong prefix or database: never an OK backup."""
    if chosen.owned or (db.tables == "all" and count):
        return
    theirs = f"; they belong to the install with prefix {', '.join(chosen.others)}" if chosen.others else ""
    raise BackupError(
        f"database '{db.name}' on {where(db)} has no table with prefix '{db.table_prefix}' of this "
        f"site ({count} other tables{theirs}): refusing to store an empty dump"
    )


def _row_counts(db: DbSettings, options: str, tables: list[str]) -> dict[str, int]:
    """COUNT(*) of base tables, all in one consistent snapshot."""
    if not tables:
        return {}
    union = " UNION ALL ".join(f"SELECT {_sql_string(t)}, COUNT(*) FROM {quote_identifier(t)}" for t in tables)
    rows = run_query(db, "START TRANSACTION WITH CONSISTENT SNAPSHOT; " + union + "; COMMIT", options)
    return {row[0]: int(row[1]) for row in rows}


def inspect_tables(db: DbSettings, options: str) -> TableInfo:
    """Decide what the dump takes (select_tables) and count the rows of its tables."""
    version, kinds, objects = _catalog(db, options)
    names = list(kinds)
    chosen = select_tables(names, _options_tables(db, options, names), db.table_prefix, db.tables)
    _refuse_empty(db, chosen, len(names))
    counts: dict[str, int | None] = {name: None for name in chosen.tables}
    counted = [n for n in chosen.tables if kinds[n] in ("BASE TABLE", "SYSTEM VERSIONED")]  # not views
    counts.update(_row_counts(db, options, counted))
    info = TableInfo(counts, chosen.left_out, version, chosen.mode, chosen.why)
    if chosen.mode == "prefix":
        info.routines = info.events = False
        info.objects_left_out = {obj: OBJECTS_LEFT_OUT for obj in objects}
        return info
    info.events = may_list_events(db, options)
    info.objects = [obj for obj in objects if info.events or not obj.startswith("EVENT ")]
    if not info.events:
        info.notes.append(f"events not dumped: user '{db.user}' lacks the EVENT privilege on '{db.name}' "
                          f"(GRANT EVENT ON {quote_identifier(db.name)}.* TO the user to dump them)")
    return info


@functools.cache
def tool_version(binary: str) -> str:
    """`BINARY --version`, asked once per process."""
    return subprocess.run([binary, "--version"], capture_output=True, text=True).stdout.strip()


def dump_arguments(binary: str, options: str, db: DbSettings, tables: list[str],
                   routines: bool = True, events: bool = True) -> list[str]:
    """The dump's argv: consistent, restorable anywhere, no CREATE DATABASE/USE, no secret.

    The tables are always named, so the dump holds exactly the tables the manifest lists (one
    created meanwhile waits for the next run). With names, mariadb-dump still writes every
    routine and event of the database for --routines/--events, and the triggers of the named
    tables only."""
    argv = [binary, f"--defaults-file={options}", "--single-transaction", "--quick",
            *(["--routines"] if routines else []), *(["--events"] if events else []),
            "--triggers", "--hex-blob", "--default-character-set=utf8mb4",
            "--no-tablespaces", "--skip-lock-tables", "--max-allowed-packet=1G"]
    version = tool_version(binary)
    if "mariadb" not in version.lower():
        argv.append("--set-gtid-purged=OFF")
        if re.search(r"Ver 8\.", version):
            argv.append("--column-statistics=0")
    return argv + ["--", db.name] + tables


class DatabaseNameFilter:
    """Takes the database's name out of the dump's `ALTER DATABASE `name` CHARACTER SET ...`
    lines, which mariadb-dump writes around a routine or event created under another default
    collation: unchanged, loading the dump elsewhere would fail (no such database) or alter
    the live database. Without a name they apply to the database being loaded.

    Works on a stream: holds back only the last bytes of a chunk that could start the line."""

    def __init__(self, name: str):
        self.needle = b"\nALTER DATABASE " + quote_identifier(name).encode("utf-8") + b" "
        self.held = b""

    def feed(self, chunk: bytes) -> bytes:
        data = self.held + chunk
        if self.needle in data:
            data = data.replace(self.needle, b"\nALTER DATABASE ")
        cut = max(len(data) - (len(self.needle) - 1), 0)
        self.held = data[cut:]
        return data[:cut]

    def close(self) -> bytes:
        held, self.held = self.held, b""
        return held


def drain_stderr(stream, keep: list[bytes]) -> None:
    """Read a child's stderr to the end (so it never blocks), keeping the first 64 KiB."""
    kept = 0
    while chunk := stream.read(8192):
        if kept < 1 << 16:
            keep.append(chunk)
            kept += len(chunk)


@dataclass
class DumpResult:
    """The dump written (checksum and size of the file) and what it holds."""

    sha256: str
    size: int
    contents: TableInfo
    tool: str

    @property
    def tables(self) -> dict[str, int | None]:
        return self.contents.tables

    @property
    def server_version(self) -> str:
        return self.contents.server_version


@dataclass
class _Copied:
    sha256: str
    size: int
    tail: bytes


def _copy_dump(source, out, db: DbSettings, progress: Callable[[int], None] | None) -> _Copied:
    """Copy the dump from the child to ``out`` through DatabaseNameFilter, hashing as it goes
    and keeping the last bytes for the completion check."""
    digest, size, tail = hashlib.sha256(), 0, b""
    pacer = Pacer(out.fileno())
    names = DatabaseNameFilter(db.name)

    def write(data: bytes) -> None:
        nonlocal size, tail
        out.write(data)
        pacer.wrote(len(data))
        digest.update(data)
        size += len(data)
        tail = (tail + data)[-512:]
        if progress:
            progress(size)

    while chunk := source.read(CHUNK):
        write(names.feed(chunk))
    write(names.close())
    return _Copied(digest.hexdigest(), size, tail)


def dump_database(db: DbSettings, target: Path, progress: Callable[[int], None] | None = None) -> DumpResult:
    """Dump the tables inspect_tables chose to ``target`` (written as target.part, renamed
    when complete).

    Fails, leaving nothing behind, when the dump exits non-zero or lacks its completion line:
    a partial dump must never end up in an archive.
    """
    binary = dump_binary()
    partial = target.with_name(target.name + ".part")
    for stale in left_by_the_dead(target.parent, "client-*.cnf"):  # left by a killed run
        stale.unlink(missing_ok=True)
    with option_file(db, target.parent) as options:
        info = inspect_tables(db, options)
        argv = dump_arguments(binary, options, db, list(info.tables), info.routines, info.events)
        errors: list[bytes] = []
        try:
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out, tracked(spawn(
                argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE
            )) as proc:
                reader = threading.Thread(target=drain_stderr, args=(proc.stderr, errors), daemon=True)
                reader.start()
                copied = _copy_dump(proc.stdout, out, db, progress)
                code = proc.wait()
                reader.join(timeout=5)
                out.flush()
                os.fsync(out.fileno())
            if code != 0:
                raise explain(b"".join(errors).decode("utf-8", "replace"), db, "dump the database")
            if DUMP_TRAILER not in copied.tail:
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
    return DumpResult(copied.sha256, copied.size, info, tool_version(binary))


def summarize(reasons: dict[str, str], limit: int = 10) -> str:
    """`name: why; ...` for a log line, at most ``limit`` names, then how many more: a
    multisite network can leave thousands of tables out."""
    shown = "; ".join(f"{name}: {why}" for name, why in list(reasons.items())[:limit])
    more = len(reasons) - limit
    return shown + (f"; and {more} more" if more > 0 else "")


_BATCH_ESCAPES = {"n": "\n", "t": "\t", "0": "\0", "\\": "\\"}


def unescape_batch(value: str) -> str:
    """A value as the client's --batch output escapes it (newline, tab, NUL, backslash):
    definitions of triggers and routines span lines, so --raw would break the rows apart."""
    return re.sub(r"\\(.)", lambda m: _BATCH_ESCAPES.get(m.group(1), m.group(0)), value)


class ServerError(BackupError):
    """A statement the server refused, with its error number (1044: no privilege on a database)."""

    def __init__(self, message: str, code: int | None):
        super().__init__(message)
        self.code = code


class Session:
    """One client connection kept open for a sequence of statements (a restore's swap).

    Session settings (lock_wait_timeout, foreign_key_checks) hold across statements, bodies of
    triggers and routines pass whole (a delimiter no definition uses), and a statement stuck
    waiting for a lock can be interrupted from outside by its connection id. The client is not
    ``tracked``: a SIGTERM must not cut a swap or its undo short; the caller decides when to
    stop. The first error ends the session (the client stops there), so a caller that needs
    to go on opens a new one."""

    DELIMITER = "$$wpbackup$$"

    def __init__(self, db: DbSettings, options: str, action: str = "change the database"):
        self.db, self.options, self.action = db, options, action
        argv = [client_binary(), f"--defaults-file={options}", "--batch", "--skip-column-names", "--unbuffered",
                "--max-allowed-packet=1G", "--", db.name]
        # bytes, split on b"\n" only: a carriage return inside a definition must survive
        self.proc = spawn(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.count = 0
        self.connection_id = ""
        self.proc.stdin.write(f"DELIMITER {self.DELIMITER}\n".encode())
        self.connection_id = self.query("SELECT CONNECTION_ID()")[0][0]

    def query(self, *statements: str, stop: threading.Event | None = None) -> list[list[str]]:
        """Run the statements in order; every result row, values unescaped. When ``stop`` is
        set while they run, the running statement is interrupted (KILL QUERY) and this
        raises: for statements that may wait on a site's locks."""
        self.count += 1
        marker = f"wpbackup-done-{self.count}"
        text = "".join(f"{s}\n{self.DELIMITER}\n" for s in statements) + f"SELECT '{marker}'\n{self.DELIMITER}\n"
        done = threading.Event()
        watcher = None
        if stop is not None and self.connection_id:
            watcher = threading.Thread(target=self._interrupt_on, args=(stop, done), daemon=True)
            watcher.start()
        rows: list[list[str]] = []
        try:
            self.proc.stdin.write(text.encode("utf-8", "surrogateescape"))
            self.proc.stdin.flush()
            while raw := self.proc.stdout.readline():
                line = raw.decode("utf-8", "surrogateescape").removesuffix("\n")
                if line == marker:
                    return rows
                rows.append([unescape_batch(v) for v in line.split("\t")])
        except (BrokenPipeError, OSError):
            pass  # the client stopped at an error: its stderr says which
        finally:
            done.set()
            if watcher is not None:
                watcher.join()
        raise self._failure()

    def _interrupt_on(self, stop: threading.Event, done: threading.Event) -> None:
        while not done.wait(0.1):
            if stop.is_set():
                try:
                    run_query(self.db, f"KILL QUERY {int(self.connection_id)}", self.options)
                except BackupError:
                    pass  # the statement may have ended meanwhile
                return

    def _failure(self) -> ServerError:
        try:
            self.proc.stdin.close()
        except OSError:
            pass
        errors = self.proc.stderr.read().decode("utf-8", "replace")
        self.proc.wait()
        # the client echoes the failing statement around its ERROR line: keep the ERROR lines
        lines = [line for line in errors.splitlines() if line.startswith("ERROR")] or errors.splitlines()[-1:]
        code = re.match(r"ERROR (\d+)", lines[0]) if lines else None
        return ServerError(str(explain("\n".join(lines), self.db, self.action)), int(code.group(1)) if code else None)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for stream in (self.proc.stdout, self.proc.stderr):
            stream.close()

    def __enter__(self) -> Session:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
