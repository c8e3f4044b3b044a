"""The database side of a restore: the dump is loaded where it cannot hurt the site, and the
tables move into place in one step, only once the files are ready too.

    login may create databases (scratch):
      scan: database.sql --> mariadb --> SCRATCH           (beside GNU tar writing the files)
      ready: SCRATCH's views and triggers read back and dropped; the replaced tables' live
      triggers and views kept and dropped -> ONE statement:
          RENAME TABLE live.t TO ASIDE.t, ..., SCRATCH.t TO live.t, ...
      -> views (qualifier rewritten), triggers, routines, events created in live
      -> [files swapped] -> ASIDE and SCRATCH dropped
    login has rights on its own database only (aside):
      scan: database.sql --> file
      ready: the replaced tables' triggers kept and dropped (their names are per schema)
      -> RENAME TABLE t TO wpb_old_TOKEN_t, ... -> the dump loaded into live
      -> [files swapped] -> wpb_old_TOKEN_* dropped
    the database does not exist (new): created, database.sql streamed straight into it

Only what the archive holds is replaced: tables and views its manifest lists, routines and
events of the same name. Everything else in the database stays untouched (and is reported as
kept). Every change is journaled; a failure at any point before the end (a load error, a
refused member found late, the files swap, SIGTERM) undoes the journal backwards and drops
what this restore created.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import shutil
import subprocess
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

from wpbackup.backup.children import pid_gone, spawn, stopping, tracked
from wpbackup.config.sites import DbSettings
from wpbackup.console import log
from wpbackup.database.dblogin import DatabaseState, Grants, grant_pattern, survey, what_to_run
from wpbackup.database.dbobjects import (
    Definition,
    DumpObjects,
    Inventory,
    ViewDefiners,
    dump_objects,
    in_dependency_order,
    inventory,
    literal,
    q,
    read_definitions,
)
from wpbackup.database.mysql import CHUNK, ServerError, Session, client_binary, drain_stderr, explain, where
from wpbackup.errors import BackupError, disk_error

SANDBOX_PREFIX = b"/*M!999999\\- enable the sandbox mode"
LOCK_WAIT_SECONDS = 30  # how long one swap statement waits for a site's query to let go of a table
BASE_PRIVILEGES = frozenset({"SELECT", "INSERT", "CREATE", "DROP", "ALTER"})
NO_PRIVILEGE = (1044, 1142, 1227)  # no right on the database / on the statement / SUPER needed


class Stopped(BackupError):
    """A SIGTERM or SIGHUP arrived while the restore ran."""


def check_stop() -> None:
    if stopping.is_set():
        raise Stopped("stopped by a signal")


def check_definers(definitions: list[Definition], grants: Grants, schema: str) -> None:
    """Each definition may have to be created again by this login on undo."""
    for d in definitions:
        if d.definer and d.definer != grants.definer and not grants.may_set_definer:
            raise BackupError(f"{d.kind.lower()} {d.name} in database {schema} belongs to {d.definer}: user "
                              f"{grants.account} could not create it again if the restore had to be undone; run "
                              "the restore as root on the database server with --admin")


def needed_privileges(kinds: set[str], extra: set[str] = frozenset()) -> set[str]:
    """What creating (and dropping) objects of these kinds takes, beyond the tables."""
    needed = set(BASE_PRIVILEGES) | set(extra)
    if "TRIGGER" in kinds:
        needed.add("TRIGGER")
    if "VIEW" in kinds:
        needed |= {"CREATE VIEW", "SHOW VIEW"}
    if kinds & {"PROCEDURE", "FUNCTION"}:
        needed |= {"CREATE ROUTINE", "ALTER ROUTINE"}
    if "EVENT" in kinds:
        needed.add("EVENT")
    return needed


def compare_with_manifest(manifest: dict, found: set[str]) -> None:
    """The manifest lists exactly what was dumped: a restore that went on after a mismatch
    would leave tables of the old site next to the archive's."""
    listed = manifest.get("database", {}).get("tables")
    if listed is None:
        return
    missing, extra = sorted(set(listed) - found), sorted(found - set(listed))
    problems = []
    if missing:
        problems.append("manifest.json lists " + ", ".join(f"table {t}" for t in missing[:10])
                        + " that database.sql does not create")
    if extra:
        problems.append("database.sql creates " + ", ".join(f"table {t}" for t in extra[:10])
                        + " that manifest.json does not list")
    if problems:
        raise BackupError(f"database.sql and manifest.json disagree: {'; '.join(problems)}")


# --- database.sql on its way out of the scan ---------------------------------------------------

def _strip_sandbox(chunk: bytes) -> bytes:
    """mariadb-dump's first line, which older MariaDB and MySQL clients refuse."""
    if chunk.startswith(SANDBOX_PREFIX) and b"\n" in chunk:
        return chunk[chunk.index(b"\n") + 1:]
    return chunk


def load_argv(options: str, database: str) -> list[str]:
    """The client's argv for a load; ``--`` first, so no database name is read as an option."""
    return [client_binary(), f"--defaults-file={options}", "--batch", "--max-allowed-packet=1G", "--", database]


class StreamLoad:
    """database.sql straight into the client, into a database nobody uses yet: from the scan,
    or read from its own zstd frame at once (restore.py). A load error is kept, not raised:
    the scan goes on, since damaged bytes (another copy of the archive may be fine) explain a
    load error too. The bytes loaded are hashed, to be checked against the manifest."""

    def __init__(self, db: DbSettings, options: str, views: ViewDefiners | None = None):
        self.db, self.options, self.views = db, options, views
        self.received = False
        self.error: str | None = None
        self.sha256 = ""
        self.cancel = threading.Event()

    def consume(self, stream) -> None:
        self.received, self.error = True, None
        if self.views is not None:
            self.views.definers.clear()
        digest = hashlib.sha256()
        errors: list[bytes] = []
        with tracked(spawn(load_argv(self.options, self.db.name), stdin=subprocess.PIPE,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)) as proc:
            drain = threading.Thread(target=drain_stderr, args=(proc.stderr, errors), daemon=True)
            drain.start()
            views = self.views
            try:
                chunk = stream.read(CHUNK)
                digest.update(chunk)
                chunk = _strip_sandbox(chunk)
                while chunk and not stopping.is_set() and not self.cancel.is_set():
                    proc.stdin.write(views.feed(chunk) if views else chunk)
                    chunk = stream.read(CHUNK)
                    digest.update(chunk)
                if views:
                    proc.stdin.write(views.close())
            except BrokenPipeError:
                pass  # the client stopped at an error: its stderr says which
            finally:
                try:
                    proc.stdin.close()
                except BrokenPipeError:
                    pass
            code = proc.wait()
            drain.join(timeout=5)
        self.sha256 = digest.hexdigest()
        if code != 0 or stopping.is_set() or self.cancel.is_set():
            self.error = b"".join(errors).decode("utf-8", "replace") or f"the client exited with {code}"

    def raise_error(self, manifest: dict | None = None) -> None:
        check_stop()
        if self.error is not None:
            raise explain(self.error, self.db, "load database.sql")
        expected = (manifest or {}).get("database", {}).get("sha256")
        if expected and expected != self.sha256:
            raise BackupError("the database.sql loaded does not match the sha256 in manifest.json")


class DumpFile:
    """database.sql copied from the scan to a 0600 file, to be loaded later."""

    def __init__(self, path: Path):
        self.path = path
        self.received = False
        self.error: str | None = None

    def consume(self, stream) -> None:
        self.received = True
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(stream, out, CHUNK)
        except OSError as exc:
            raise disk_error(self.path, exc) from None

    def raise_error(self, manifest: dict | None = None) -> None:
        check_stop()


def _base36(number: int) -> str:
    digits = ""
    while True:
        number, digit = divmod(number, 36)
        digits = "0123456789abcdefghijklmnopqrstuvwxyz"[digit] + digits
        if not number:
            return digits


def new_token() -> str:
    """What names this restore's scratch databases and set-aside tables: its PID (base 36, at
    most 5 characters) first, so a later restore tells what a killed one left from what a
    running one uses, then a random byte (a PID used again after a reboot names new ones)."""
    return f"{_base36(os.getpid())}x{secrets.token_hex(1)}"


TOKEN_WIDTH = 8  # the longest token: names are cut to leave room for it, the same cut for every PID
_KILLED_TOKEN = r"(?P<token>(?P<pid>[0-9a-z]{1,5})x[0-9a-f]{2})"


def scratch_base(live: str) -> str:
    """The start of the scratch databases' names: the live name, cut so any token fits in 64."""
    return live[:64 - len("_wpb_new_") - TOKEN_WIDTH]


def _server_is_here(login: DbSettings) -> bool:
    """Whether the PID in a leftover's name tells anything: only on a server of this machine
    (its socket or loopback) are all the restores using it this machine's processes."""
    return bool(login.host.socket) or login.host.host in ("localhost", "127.0.0.1", "::1")


def _pid_gone(pid36: str) -> bool:
    return pid_gone(str(int(pid36, 36)))


def _tables(count: int | str) -> str:
    return "1 table" if str(count) == "1" else f"{count} tables"


def aside_name(name: str, token: str) -> str:
    """The name a replaced table waits under in its own database (64 characters at most)."""
    full = f"wpb_old_{token}_{name}"
    if len(full) <= 64:
        return full
    return f"wpb_old_{token}_{name[:30]}_{hashlib.sha1(name.encode()).hexdigest()[:12]}"


# --- the journal ----------------------------------------------------------------------------

@dataclass
class Undo:
    """How to take one done step back: statements, or a function of a session."""

    what: str
    statements: list[str] = field(default_factory=list)
    action: Callable[[Session], None] | None = None

    def run(self, session: Session) -> None:
        if self.statements:
            session.query(*self.statements)
        if self.action is not None:
            self.action(session)


class DatabaseSide:
    """What every way of restoring the database shares: the journal and its undo."""

    path = ""

    def __init__(self, login: DbSettings, options: str, grants: Grants):
        self.login, self.options, self.grants = login, options, grants
        self.live = login.name
        self.journal: list[Undo] = []
        self.undo_failed = False
        self.kept: list[str] = []
        self.sink: StreamLoad | DumpFile

    def name_killed_tables(self) -> None:
        """Tables a restore killed outright had set aside in this database (wpb_old_TOKEN_*):
        kept, since they may be the only copy of those tables as they were, and named."""
        try:
            tables = [row[0] for row in self.run("SHOW TABLES LIKE 'wpb_old_%'")]  # the regex below is exact
        except BackupError:
            return
        killed: dict[str, int] = {}
        for table in tables:
            found = re.match(rf"wpb_old_{_KILLED_TOKEN}_", table)
            if found and (not _server_is_here(self.login) or _pid_gone(found["pid"])):
                killed[found["token"]] = killed.get(found["token"], 0) + 1
        for token, count in sorted(killed.items()):
            log.warning("%s wpb_old_%s_* in database %s: set aside by a restore that was killed (as they were "
                        "before that restore), or by one running on another machine; kept: drop them once you no "
                        "longer need them",
                        _tables(count), token, self.live)

    def session(self, action: str = "replace the tables") -> Session:
        return Session(self.login, self.options, action)

    def run(self, *statements: str, database: str | None = None) -> list[list[str]]:
        login = replace(self.login, name=database) if database else self.login
        with Session(login, self.options, "prepare the restore") as session:
            return session.query(*statements)

    def undo(self) -> None:
        """Take every journaled step back, newest first; one failure does not stop the rest."""
        failures = []
        session = None
        for step in reversed(self.journal):
            for attempt in (1, 2):
                try:
                    if session is None:
                        session = self.session("undo the restore")
                        session.query("SET SESSION foreign_key_checks = 0")
                    step.run(session)
                    break
                except BackupError as exc:
                    if session is not None:
                        session.close()
                    session = None
                    if attempt == 2:
                        failures.append(f"{step.what}: {exc}")
        if session is not None:
            session.close()
        self.journal.clear()
        if failures:
            self.undo_failed = True
            raise BackupError("the database could not be put back completely: " + "; ".join(failures))

    def reset(self) -> None:
        """Before the archive is read again (its local copy was damaged)."""

    def verify(self, manifest: dict) -> None:
        raise NotImplementedError

    def apply(self) -> None:
        raise NotImplementedError

    def finish(self) -> None:
        """After the files were swapped too: drop what was kept for an undo."""

    def close(self, succeeded: bool) -> None:
        """Remove what this restore made for itself (and, on failure, what it created)."""


class NewDatabase(DatabaseSide):
    """The database does not exist yet: it is created and the dump streams straight into it.
    Nobody uses it, so undoing the restore is dropping it."""

    path = "new"

    def __init__(self, login: DbSettings, options: str, grants: Grants):
        super().__init__(login, options, grants)
        self.create()
        self.sink = StreamLoad(login, options)

    def create(self) -> None:
        try:
            self.run(f"CREATE DATABASE {q(self.live)} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci",
                     database="information_schema")
        except ServerError as exc:
            if exc.code in NO_PRIVILEGE:
                raise BackupError(f"user {self.grants.account} may not create database {q(self.live)} on "
                                  f"{where(self.login)}; {what_to_run(self.grants, self.live, True)}") from None
            raise

    def reset(self) -> None:
        self.run(f"DROP DATABASE IF EXISTS {q(self.live)}", database="information_schema")
        self.create()

    def verify(self, manifest: dict) -> None:
        self.sink.raise_error(manifest)
        with self.session("check the loaded database") as session:
            compare_with_manifest(manifest, set(inventory(session, self.live).tables))

    def apply(self) -> None:
        """Nothing to move: the dump is where it belongs."""

    def close(self, succeeded: bool) -> None:
        if not succeeded:
            self.run(f"DROP DATABASE IF EXISTS {q(self.live)}", database="information_schema")


class NoScratch(Exception):
    """The login may not create the scratch databases."""


@dataclass
class _Plan:
    """What the swap does, all read before anything changes."""

    new: Inventory
    live: Inventory
    new_views: list[Definition] = field(default_factory=list)
    new_triggers: list[Definition] = field(default_factory=list)
    new_objects: list[Definition] = field(default_factory=list)
    old_views: list[Definition] = field(default_factory=list)
    old_triggers: list[Definition] = field(default_factory=list)
    old_objects: list[Definition] = field(default_factory=list)


class ScratchSwap(DatabaseSide):
    """The dump goes into SCRATCH while the files are written; then one atomic RENAME TABLE
    moves the replaced live tables to ASIDE and SCRATCH's into live. ASIDE is kept until the
    files are in place too, so the whole swap can go back."""

    path = "scratch"

    def __init__(self, login: DbSettings, options: str, grants: Grants, state: DatabaseState):
        super().__init__(login, options, grants)
        token = new_token()
        base = scratch_base(self.live)
        self.scratch, self.aside = f"{base}_wpb_new_{token}", f"{base}_wpb_old_{token}"
        self._clear_killed()
        self.charset = f"CHARACTER SET {literal(state.charset)} COLLATE {literal(state.collation)}"
        self.created: list[str] = []
        for name in (self.scratch, self.aside):
            try:
                self.run(f"CREATE DATABASE {q(name)} {self.charset}", database="information_schema")
            except ServerError as exc:
                self.close(False)
                if exc.code in NO_PRIVILEGE:
                    raise NoScratch() from None
                raise
            self.created.append(name)
        self.name_killed_tables()  # here, once the scratch path is sure (else AsideSwap says it)
        self.views = ViewDefiners()
        self.sink = StreamLoad(replace(login, name=self.scratch), options, self.views)
        self.plan: _Plan | None = None

    def _clear_killed(self) -> None:
        """Scratch databases of this database that restores killed outright (SIGKILL, a crash)
        left. On a server of this machine, where their PID tells, a loaded copy (``_wpb_new_``,
        never live) and an empty ``_wpb_old_`` are dropped, and a ``_wpb_old_`` holding tables
        (maybe the only copy of the database as it was) is kept and named; those of a restore
        still running are left alone. On another server (a restore on another machine may be
        using them) they are only named. Best effort: the restore goes on regardless."""
        try:
            names = [row[0] for row in self.run("SHOW DATABASES", database="information_schema")]
        except BackupError:
            return
        here = _server_is_here(self.login)
        base = scratch_base(self.live)
        for name in names:
            found = re.fullmatch(rf"{re.escape(base)}_wpb_(?P<kind>new|old)_{_KILLED_TOKEN}", name)
            if not found or (here and not _pid_gone(found["pid"])):
                continue
            if not here:
                log.warning("database %s was left by a restore that did not finish, or belongs to one running on "
                            "another machine: drop it once no restore of %s is running", name, self.live)
                continue
            try:
                tables = self.run("SELECT COUNT(*) FROM information_schema.TABLES WHERE TABLE_SCHEMA = "
                                  + literal(name), database="information_schema")[0][0]
            except BackupError as exc:
                log.warning("database %s was left by a restore that was killed (its tables could not be counted: "
                            "%s)", name, exc)
                continue
            if found["kind"] == "old" and tables != "0":
                log.warning("database %s holds the %s a restore that was killed had set aside (the database as it "
                            "was before that restore); it is kept: drop it once you no longer need it",
                            name, _tables(tables))
                continue
            try:
                self.run("SET SESSION foreign_key_checks = 0", f"DROP DATABASE IF EXISTS {q(name)}",
                         database="information_schema")
                log.info("dropped database %s, left by a restore that was killed", name)
            except BackupError as exc:
                log.warning("database %s, left by a restore that was killed, could not be dropped: %s", name, exc)

    def reset(self) -> None:
        self.run(f"DROP DATABASE IF EXISTS {q(self.scratch)}", f"CREATE DATABASE {q(self.scratch)} {self.charset}",
                 database="information_schema")

    def verify(self, manifest: dict) -> None:
        """The scratch database against the manifest; every definition the swap recreates or
        might have to put back read now; the privileges and definers that takes checked."""
        self.sink.raise_error(manifest)
        with self.session("read the restored database") as session:
            new, live = inventory(session, self.scratch), inventory(session, self.live)
            compare_with_manifest(manifest, set(new.tables))
            names = set(new.tables)
            replaced = [t for t in live.base if t in names]
            plan = _Plan(new, live)
            views = read_definitions(session, self.scratch, [("VIEW", v) for v in new.views])
            for view in views:  # SHOW CREATE VIEW names the scratch database: the view must name live
                view.create = view.create.replace(q(self.scratch) + ".", q(self.live) + ".")
                self.views.put_back(view)
            plan.new_views = in_dependency_order(views, self.live)
            plan.new_triggers = read_definitions(session, self.scratch, [("TRIGGER", n) for n, _ in new.triggers])
            plan.new_objects = read_definitions(session, self.scratch, new.objects)
            plan.old_views = in_dependency_order(
                read_definitions(session, self.live, [("VIEW", v) for v in live.views if v in names]), self.live)
            plan.old_triggers = read_definitions(
                session, self.live, [("TRIGGER", n) for n, t in live.triggers if t in replaced],
                dict(live.triggers))
            plan.old_objects = read_definitions(session, self.live, [o for o in live.objects if o in new.objects])
        old = plan.old_views + plan.old_triggers + plan.old_objects
        check_definers(old, self.grants, self.live)
        every = old + plan.new_views + plan.new_triggers + plan.new_objects
        missing = self.grants.missing(needed_privileges({d.kind for d in every}))
        if missing:
            raise BackupError(f"user {self.grants.account} may not replace everything this archive holds in "
                              f"database {q(self.live)}: it lacks {', '.join(missing)} there; "
                              f"{what_to_run(self.grants, self.live)}")
        self.kept = sorted(set(live.tables) - names)
        self.plan = plan

    def apply(self) -> None:
        plan = self.plan
        assert plan is not None
        with self.session() as s:
            s.query(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}", "SET SESSION foreign_key_checks = 0")
            # scratch only, so nothing live changes: RENAME TABLE carries neither (1435, 1450)
            out_of_the_way = [d.drop(self.scratch) for d in plan.new_triggers + plan.new_views]
            if out_of_the_way:
                s.query(*out_of_the_way)
            for d in plan.old_triggers + plan.old_views:
                self._step(s, [d.drop()], Undo(f"re-create {d.kind.lower()} {d.name}", d.statements()))
            self._rename(s, plan)
            for d in plan.new_views + plan.new_triggers:
                self._step(s, d.statements(), Undo(f"drop {d.kind.lower()} {d.name}", [d.drop()]))
            old = {(d.kind, d.name): d for d in plan.old_objects}
            for d in plan.new_objects:
                if (d.kind, d.name) in old:
                    before = old[(d.kind, d.name)]
                    self._step(s, [d.drop()], Undo(f"re-create {d.kind.lower()} {d.name}", before.statements()))
                self._step(s, d.statements(), Undo(f"drop {d.kind.lower()} {d.name}", [d.drop()]))

    def _step(self, session: Session, statements: list[str], undo: Undo) -> None:
        """One forward step, interrupted by a SIGTERM if it waits on a lock, then journaled."""
        check_stop()
        session.query(*statements, stop=stopping)
        self.journal.append(undo)

    def _rename(self, session: Session, plan: _Plan) -> None:
        names = set(plan.new.tables)
        out = [(f"{q(self.live)}.{q(t)}", f"{q(self.aside)}.{q(t)}") for t in plan.live.base if t in names]
        into = [(f"{q(self.scratch)}.{q(t)}", f"{q(self.live)}.{q(t)}") for t in plan.new.base]
        pairs = out + into
        if not pairs:
            return
        back = [(b, a) for a, b in into] + [(b, a) for a, b in out]  # new ones out first, then the old ones in
        self._step(session, ["RENAME TABLE " + ", ".join(f"{a} TO {b}" for a, b in pairs)],
                   Undo("move the replaced tables back", ["RENAME TABLE " + ", ".join(f"{a} TO {b}" for a, b in back)]))

    def finish(self) -> None:
        self.journal.clear()

    def close(self, succeeded: bool) -> None:
        """Drop the scratch databases; ASIDE stays when an undo failed (it holds the old tables)."""
        keep = [] if succeeded or not self.undo_failed else [self.aside]
        dropped = [name for name in self.created if name not in keep]
        try:
            if dropped:
                self.run("SET SESSION foreign_key_checks = 0", *[f"DROP DATABASE IF EXISTS {q(n)}" for n in dropped],
                         database="information_schema")
        except BackupError as exc:
            log.warning("could not drop the scratch database(s) %s: %s", ", ".join(dropped), exc)
        if keep:
            log.error("the tables this restore replaced are kept in database %s", self.aside)


class AsideSwap(DatabaseSide):
    """The login may not create databases (WordPress's usual user): the replaced tables wait
    in their own database under wpb_old_TOKEN_ names, their triggers kept and dropped, while
    the dump is loaded into live; an undo drops what the dump made and renames them back."""

    path = "aside"

    def __init__(self, login: DbSettings, options: str, grants: Grants, dump: Path):
        super().__init__(login, options, grants)
        self.token = new_token()
        self.name_killed_tables()
        self.sink = DumpFile(dump)
        self.dump = dump
        self.found = DumpObjects()
        self.live_inventory = Inventory()
        self.old_triggers: list[Definition] = []
        self.old_objects: list[Definition] = []
        self.set_aside: dict[str, str] = {}

    def verify(self, manifest: dict) -> None:
        self.sink.raise_error()
        if not self.sink.received:
            return
        self.found = dump_objects(self.dump)
        compare_with_manifest(manifest, self.found.tables)
        with self.session("read the live database") as session:
            live = self.live_inventory = inventory(session, self.live)
            replaced = [t for t in live.tables if t in self.found.tables]
            self.old_triggers = read_definitions(
                session, self.live, [("TRIGGER", n) for n, t in live.triggers if t in replaced], dict(live.triggers))
            self.old_objects = read_definitions(session, self.live,
                                                [o for o in live.objects if o in self.found.objects])
        check_definers(self.old_triggers + self.old_objects, self.grants, self.live)
        kinds = {kind for kind, _ in self.found.objects} | {d.kind for d in self.old_triggers + self.old_objects}
        missing = self.grants.missing(needed_privileges(kinds, {"LOCK TABLES"}))
        if missing:
            raise BackupError(f"user {self.grants.account} may not replace the tables of database {q(self.live)}: "
                              f"it lacks {', '.join(missing)} there; {what_to_run(self.grants, self.live)}")
        self.set_aside = {t: aside_name(t, self.token) for t in replaced}
        self.kept = sorted(set(live.tables) - self.found.tables)

    def apply(self) -> None:
        with self.session() as s:
            s.query(f"SET SESSION lock_wait_timeout = {LOCK_WAIT_SECONDS}", "SET SESSION foreign_key_checks = 0")
            for d in self.old_triggers:
                check_stop()
                s.query(d.drop(), stop=stopping)
                self.journal.append(Undo(f"re-create trigger {d.name}", d.statements()))
            if self.set_aside:
                check_stop()
                s.query("RENAME TABLE " + ", ".join(f"{q(t)} TO {q(a)}" for t, a in self.set_aside.items()),
                        stop=stopping)
                self.journal.append(Undo("move the replaced tables back", ["RENAME TABLE " + ", ".join(
                    f"{q(a)} TO {q(t)}" for t, a in self.set_aside.items())]))
        self.journal.append(Undo("put the routines and events back", action=self._objects_back))
        self.journal.append(Undo("drop the loaded tables", action=self._drop_loaded))
        check_stop()
        self._load()

    def _load(self) -> None:
        fd = os.open(self.dump, os.O_RDONLY)  # a raw descriptor: the client reads from its offset
        try:
            head = os.pread(fd, 256, 0)
            os.lseek(fd, len(head) - len(_strip_sandbox(head)), os.SEEK_SET)
            errors: list[bytes] = []
            with tracked(spawn(load_argv(self.options, self.live), stdin=fd, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE)) as proc:
                drain = threading.Thread(target=drain_stderr, args=(proc.stderr, errors), daemon=True)
                drain.start()
                code = proc.wait()
                drain.join(timeout=5)
        finally:
            os.close(fd)
        check_stop()
        if code != 0:
            raise explain(b"".join(errors).decode("utf-8", "replace"), self.login, "load database.sql")

    def _drop_loaded(self, session: Session) -> None:
        now = inventory(session, self.live).tables
        loaded = [t for t in self.found.tables if t in now and t not in self.set_aside.values()]
        views = [t for t in loaded if now[t] == "VIEW"]
        tables = [t for t in loaded if now[t] != "VIEW"]
        if views:
            session.query("DROP VIEW IF EXISTS " + ", ".join(q(t) for t in views))
        if tables:
            session.query("DROP TABLE IF EXISTS " + ", ".join(q(t) for t in tables))

    def _objects_back(self, session: Session) -> None:
        drops = [f"DROP {kind} IF EXISTS {q(name)}" for kind, name in sorted(self.found.objects)]
        if drops:
            session.query(*drops)
        for d in self.old_objects:
            session.query(*d.statements())

    def finish(self) -> None:
        self.journal.clear()
        if not self.set_aside:
            return
        kinds = self.live_inventory.tables
        views = [a for t, a in self.set_aside.items() if kinds.get(t) == "VIEW"]
        tables = [a for t, a in self.set_aside.items() if kinds.get(t) != "VIEW"]
        statements = ["SET SESSION foreign_key_checks = 0"]
        statements += ["DROP VIEW IF EXISTS " + ", ".join(q(v) for v in views)] if views else []
        statements += ["DROP TABLE IF EXISTS " + ", ".join(q(t) for t in tables)] if tables else []
        try:
            self.run(*statements)
        except BackupError as exc:
            log.warning("restored, but the replaced tables could not be dropped (%s): %s",
                        ", ".join(self.set_aside.values()), exc)

    def close(self, succeeded: bool) -> None:
        self.dump.unlink(missing_ok=True)
        if not succeeded and self.undo_failed and self.set_aside:
            log.error("the tables this restore replaced are kept in database %s as %s", self.live,
                      ", ".join(self.set_aside.values()))


def open_database(login: DbSettings, options: str, force: bool, dump: Path, port: int | None = None) -> DatabaseSide:
    """Everything about the database that can be known before anything changes: the login
    works, may use (or create) the database, --force where it has tables. Then the way it
    will be restored, with what that needs created: the scratch databases, or the database.
    ``port``: the port the site's database listens on, when --admin reaches it by a socket."""
    grants, state, server_port = survey(login, options)
    if port and server_port and server_port != port:
        raise BackupError(f"--admin: the server at {where(login)} listens on port {server_port}, the site's "
                          f"database on port {port}: they are not the same server")
    name = login.name
    if state is None:  # missing, or this login has no privilege on it at all
        if grants.missing({"CREATE"}):
            raise BackupError(f"user {grants.account} may not use database {q(name)} on {where(login)}: it has no "
                              "privilege on it (or it does not exist and the user may not create it); "
                              f"{what_to_run(grants, name, True)}")
        return NewDatabase(login, options, grants)
    missing = grants.missing(BASE_PRIVILEGES)
    if missing:
        raise BackupError(f"user {grants.account} may not replace the tables of database {q(name)} on "
                          f"{where(login)}: it lacks {', '.join(missing)} there; {what_to_run(grants, name)}")
    if state.tables and not force:
        raise BackupError(f"database {name} has {state.tables} tables: add --force to replace them")
    try:
        return ScratchSwap(login, options, grants, state)
    except NoScratch:
        log.info("user %s may not create databases: the tables being replaced wait beside the new ones in %s "
                 "until the restore is done (a grant on `%s\\_wpb\\_%%` gives it a scratch database instead)",
                 grants.account, name, grant_pattern(scratch_base(name)))
        return AsideSwap(login, options, grants, dump)
