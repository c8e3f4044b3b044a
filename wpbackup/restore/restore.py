"""Restoring a backup so that it succeeds whole or changes nothing: plan, check, read, apply.

    plan   which archive (catalog: the local copy, else S3), target folder, database, login
    check  the files: the folder can be swapped (fileswap.plan_files: mount points, links,
           rights);  the database: the login may use it, --force where it has tables, and
           where the dump will go (dbswap.open_database: scratch, set aside, or new)
    read   at once: [scan]    sha256 + every member checked (members.py) + database.sql
                              streamed into the scratch (or new) database, or to a file
                    [extract] zstd -> GNU tar -> the temporary folder
           a damaged local copy: everything read again, from the S3 copy
    apply  the tables move into place (dbswap) -> the files are swapped in (fileswap)
           -> what was kept for an undo is dropped; a failure at any point, SIGTERM
           included, undoes what was applied, newest first

A refused or failed restore leaves the site's files and database as they were, and nothing of
its own behind (temporary folder, scratch databases, set-aside tables).
"""

from __future__ import annotations

import atexit
import hashlib
import json
import os
import re
import shutil
import stat
import subprocess
import tarfile
import threading
import time
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import zstandard

from wpbackup.backup.children import left_by_the_dead, spawn, stopping, tracked
from wpbackup.config.settings import Settings
from wpbackup.config.sites import DbSettings, Site
from wpbackup.console import Progress, human_bytes, log
from wpbackup.database.dblogin import admin_login
from wpbackup.database.mysql import option_file
from wpbackup.errors import BackupError, disk_error
from wpbackup.fleet import catalog
from wpbackup.restore.dbswap import DatabaseSide, Stopped, StreamLoad, check_stop, open_database
from wpbackup.restore.fileswap import FilesPlan, FilesSwap, plan_files
from wpbackup.restore.members import MemberCheck
from wpbackup.storage.reader import CHUNK, SPECIAL, HashingReader, sidecar_sha256
from wpbackup.storage.s3 import make_client
from wpbackup.storage.zstdframes import member_frame, open_member_at

DB_NAME_RE = re.compile(r"[A-Za-z0-9_$][A-Za-z0-9_$-]{0,63}")  # fullmatch; no leading "-"
UNDO_SECONDS = 120  # how long a SIGTERMed process waits for a restore to undo its changes


class UnreadableArchive(BackupError):
    """The archive's bytes are damaged (another copy may be fine)."""


@dataclass
class Source:
    """One archive of the catalog and where its copies are."""

    name: str
    sha256: str | None
    size: int | None
    server_id: str
    stamp: str | None
    s3_key: str | None
    s3_bucket: str | None
    incomplete: int = 0  # files the backup could not read: the archive lacks them


SETID = stat.S_ISUID | stat.S_ISGID
ARCHIVE_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{0,62}-backup-\d{8}-\d{6}\.tar\.zst$")


def find_archive(settings: Settings, site: Site, name: str | None) -> Source:
    """The archive named, or the newest successful one of the site (this server's first).
    Names come from the fleet's catalog: only well-formed archive names are used as paths."""
    rows = catalog.successes(settings.db_path, site.name)
    if name and name != "latest":
        rows = [r for r in rows if r["archive_name"] == name]
        if not rows:
            raise BackupError(f"no successful backup named {name} for site {site.name} in {settings.db_path}")
    elif not rows:
        raise BackupError(f"no successful backup of site {site.name} in {settings.db_path}")
    rows = [r for r in rows if ARCHIVE_NAME_RE.fullmatch(r["archive_name"] or "")]
    if not rows:
        raise BackupError(f"the catalog's archive names for site {site.name} are not valid archive names")
    mine = [r for r in rows if r["server_id"] == settings.server_id]
    row = (mine or rows)[0]
    if row["incomplete"]:  # still the newest copy of everything else it holds: used, but said
        log.warning("%s is incomplete: %d files or folders could not be read when it was made (its "
                    "manifest's files.unreadable lists them)", row["archive_name"], row["incomplete"])
    return Source(row["archive_name"], row["archive_sha256"], row["archive_size"], row["server_id"],
                  row["run_stamp"], row["s3_key"], row["s3_bucket"], row["incomplete"] or 0)


def download(settings: Settings, source: Source, scratch: Path) -> Path:
    """Stream the S3 copy into the scratch folder, checking its sha256 on the way."""
    if not (source.s3_key and settings.s3_enabled):
        raise BackupError(f"{source.name} has no usable local copy and no S3 copy is recorded: "
                          "nothing was changed")
    bucket = source.s3_bucket or settings.s3_bucket
    partial = scratch / (source.name + ".part")
    progress = Progress(f"download {source.name}", source.size)
    digest = hashlib.sha256()
    try:
        body = make_client(settings).get_object(Bucket=bucket, Key=source.s3_key)["Body"]
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            for chunk in body.iter_chunks(CHUNK):
                out.write(chunk)
                digest.update(chunk)
                progress.add(len(chunk))
    except OSError as exc:
        partial.unlink(missing_ok=True)
        raise disk_error(partial, exc) from None
    except Exception as exc:
        partial.unlink(missing_ok=True)
        raise BackupError(f"cannot download s3://{bucket}/{source.s3_key}: {exc}") from None
    if source.sha256 and digest.hexdigest() != source.sha256:
        partial.unlink()
        raise BackupError(f"the S3 copy of {source.name} does not match its recorded sha256: nothing was changed")
    path = partial.with_name(source.name)
    os.replace(partial, path)
    return path


def _is_empty(folder: Path) -> bool:
    return not folder.exists() or not any(folder.iterdir())


def scan(archive: Path, sink=None, expected: str | None = None,
         setid: list[str] | None = None) -> tuple[str, dict, int]:
    """Read the whole archive once: its sha256, every member checked as extraction would check
    it (plus: nothing may go through a symbolic link), database.sql handed to ``sink`` (its
    ``consume(stream)`` reads it: into a database, or to a file), and the regular files
    carrying set-user/group-ID bits listed in ``setid``.
    Returns (sha256, manifest, number of site files). Raises BackupError on a refused member
    or a broken stream."""
    manifest: dict = {}
    with open(archive, "rb") as raw:
        hashed = HashingReader(raw)
        try:  # damage in the first member already fails the opening
            files = _scan_members(_open_for_scan(hashed), sink, manifest, setid if setid is not None else [])
            if not manifest:
                raise BackupError(f"{archive.name} has no manifest.json: not an archive of this tool")
        except Stopped:
            raise
        except (zstandard.ZstdError, tarfile.TarError, EOFError, ValueError, BackupError) as exc:
            hashed.drain()  # damaged bytes explain any error: say so, so another copy can be tried
            if expected and hashed.digest.hexdigest() != expected:
                raise UnreadableArchive(f"{archive.name} does not match its recorded sha256") from None
            if isinstance(exc, BackupError):
                raise
            raise UnreadableArchive(f"{archive.name} is not a readable zstd/tar archive ({exc}): "
                                    "nothing was changed") from None
        hashed.drain()
    return hashed.digest.hexdigest(), manifest, files


def _open_for_scan(hashed: HashingReader) -> tarfile.TarFile:
    """Like reader.open_members, but tarfile reads the zstd stream as a file it may seek
    forward in (python-zstandard decompresses and drops what is skipped) instead of through
    its stream buffer, which copies every byte of the site's files twice more: the scan reads
    a 1 GiB archive in 1.3 s instead of 2."""
    stream = zstandard.ZstdDecompressor().stream_reader(hashed, read_across_frames=True, read_size=CHUNK)
    return tarfile.open(fileobj=stream, mode="r:")


def _scan_members(tar, sink, manifest: dict, setid: list[str]) -> int:
    """Check every member, fill ``manifest``, hand database.sql to ``sink``; the site file count."""
    checker = MemberCheck()
    files = 0
    for member in tar:
        check_stop()
        checker.check(member)
        if member.isfile() and member.mode & SETID:
            setid.append(member.name)
        files += member.isfile() and member.name not in SPECIAL
        if member.name == "manifest.json" and member.isfile():
            manifest.update(json.loads(tar.extractfile(member).read(16 << 20)))
        elif member.name == "database.sql" and member.isfile() and sink is not None:
            sink.consume(tar.extractfile(member))
    tar.close()
    checker.finish()
    return files


def extract_files(archive: Path, tmp: Path, stop: threading.Event) -> None:
    """Extract the site's members into ``tmp`` with GNU tar, fed by our zstd decompression.

    This runs while ``scan`` checks every member, so nothing here is trusted yet: GNU tar's
    own defaults keep it inside ``tmp`` (it strips leading '/', skips names with '..', and
    creates links that point out of the tree only as placeholders), and ``tmp`` is swapped in
    only when the scan passed, else removed. Stops early when ``stop`` is set (or a signal)."""
    argv = ["tar", "-x", "-f", "-", "-C", str(tmp), "--numeric-owner", "--delay-directory-restore",
            "--anchored", "--exclude=database.sql", "--exclude=manifest.json"]
    if os.geteuid() == 0:
        argv += ["--same-owner", "--same-permissions"]
    with open(archive, "rb") as raw, tracked(spawn(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE)) as proc:
        errors: list[bytes] = []
        drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)
        drain.start()
        reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True, read_size=CHUNK)
        unreadable = None
        try:
            while not stop.is_set() and not stopping.is_set() and (chunk := reader.read(CHUNK)):
                proc.stdin.write(chunk)
        except BrokenPipeError:
            pass  # tar stopped reading: its exit status says why
        except zstandard.ZstdError as exc:
            unreadable = exc
        finally:
            try:
                proc.stdin.close()  # tar must see the end of its input, whatever happened
            except BrokenPipeError:
                pass
        code = proc.wait()
        drain.join(timeout=5)
    if stop.is_set() or stopping.is_set():
        return
    if unreadable is not None:
        raise BackupError(f"{archive.name} is not a readable zstd stream ({unreadable})")
    if code != 0:
        message = b"".join(errors).decode("utf-8", "replace").strip().splitlines()
        raise BackupError(f"tar could not extract the files: {message[-1] if message else code}")


class Extraction:
    """extract_files in a thread of its own, beside the scan."""

    def __init__(self, archive: Path, tmp: Path):
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(archive, tmp), daemon=True)
        self.thread.start()

    def _run(self, archive: Path, tmp: Path) -> None:
        try:
            extract_files(archive, tmp, self.stop)
        except BaseException as exc:  # re-raised in the restoring thread by wait()
            self.error = exc

    def cancel(self) -> None:
        self.stop.set()
        self.thread.join()

    def wait(self) -> None:
        self.thread.join()
        check_stop()
        if isinstance(self.error, OSError):
            raise disk_error(Path(self.error.filename or "."), self.error)
        if self.error is not None:
            raise self.error if isinstance(self.error, BackupError) else BackupError(f"extraction failed: {self.error}")


def strip_setid(tmp: Path, names: list[str]) -> int:
    """Clear set-user/group-ID bits on the extracted regular files the scan listed.

    Running as root, GNU tar restores modes as archived, and a set-user-ID program in a site's
    files (planted there by whoever broke into it) would come back as root's. WordPress needs
    no such file. Folders keep their set-group-ID bit, which some hosts use to share a group.
    The scan has shown that no name goes through a symbolic link, and lstat checks again."""
    stripped = 0
    for name in names:
        path = tmp / name
        try:
            st = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # excluded from extraction (database.sql, manifest.json)
        if stat.S_ISREG(st.st_mode) and st.st_mode & SETID:
            os.chmod(path, stat.S_IMODE(st.st_mode) & ~SETID)
            stripped += 1
    return stripped


class EarlyLoad:
    """database.sql read from its own zstd frame into the scratch (or new) database, beside the
    extraction, instead of once the scan reaches it at the archive's end. Nothing is trusted
    yet: the scan still reads and checks every byte, the loaded bytes are checked against the
    manifest's sha256, and the scratch database is dropped if anything fails."""

    def __init__(self, archive: Path, offset: int, sink: StreamLoad):
        self.sink = sink
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(archive, offset), daemon=True)
        self.thread.start()

    def _run(self, archive: Path, offset: int) -> None:
        try:
            with open(archive, "rb") as raw:
                found = open_member_at(raw, offset, "database.sql")
                if found is None:
                    raise BackupError(f"{archive.name}: database.sql is not where its frame was")
                tar, member = found
                self.sink.consume(tar.extractfile(member))
        except BaseException as exc:  # re-raised in the restoring thread by wait()
            self.error = exc

    def cancel(self) -> None:
        self.sink.cancel.set()
        self.thread.join()
        self.sink.cancel.clear()

    def wait(self) -> None:
        self.thread.join()
        check_stop()
        if self.error is not None:
            raise self.error if isinstance(self.error, BackupError) else BackupError(
                f"cannot read database.sql: {self.error}")


def in_the_background(work, *args):
    """``work(*args)`` in a thread of lower priority (nice 10), its result or error passed on.
    With the database loading from its own frame, the scan is not what the restore waits for,
    while the load and GNU tar are: on 2 cores, giving them the CPU first shortens the whole."""
    outcome: dict = {}

    def run() -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)  # this thread only (Linux)
        except (OSError, AttributeError):
            pass
        try:
            outcome["result"] = work(*args)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _start_early_load(archive: Path, db: DatabaseSide | None) -> EarlyLoad | None:
    if db is None or not isinstance(db.sink, StreamLoad):
        return None
    offset = member_frame(archive, "database.sql")
    return EarlyLoad(archive, offset, db.sink) if offset is not None else None


@dataclass
class Request:
    site: Site
    archive: str | None = None
    target: Path | None = None
    database: str | None = None
    files: bool = True
    db: bool = True
    force: bool = False
    admin: bool = False


@dataclass
class Plan:
    """What a restore is about, decided before anything is read or checked."""

    request: Request
    source: Source
    target: Path
    login: DbSettings | None  # who loads the database (the site's user, or root with --admin)
    port: int | None          # --admin: the site's database port, to make sure it is one server
    work: Path                # BACKUP_DIR/.restore: option files, a downloaded archive, a dump


def plan_restore(settings: Settings, request: Request) -> Plan:
    site = request.site
    source = find_archive(settings, site, request.archive)
    target = (request.target or site.path).absolute()
    login, port = None, None
    if request.db:
        db = site.database()
        if request.database:
            if not DB_NAME_RE.fullmatch(request.database):
                raise BackupError(f"--database {request.database!r}: use letters, digits, '_', '$' or '-'")
            db = replace(db, name=request.database)
        login = db
        if request.admin:
            login = admin_login(db)
            by_tcp = not db.host.socket and (db.host.port or db.host.host != "localhost")  # localhost: a socket
            port = (db.host.port or 3306) if by_tcp else None
    work = settings.backup_dir / ".restore"
    work.mkdir(parents=True, exist_ok=True, mode=0o700)
    # left by a killed restore; those of a restore still running (another site's) stay
    for stale in [*left_by_the_dead(work, "client-*.cnf"), *left_by_the_dead(work, "database-*.sql")]:
        stale.unlink(missing_ok=True)
    return Plan(request, source, target, login, port, work)


def check_files(plan: Plan) -> FilesPlan | None:
    """The --force rule, then the folder to replace and where the files are extracted."""
    request = plan.request
    if not request.files:
        return None
    live = plan.target if request.site.files == "all" else plan.target / "wp-content"
    if not request.force and not _is_empty(live):
        raise BackupError(f"{plan.target} is not empty: add --force to replace its files "
                          "(they stay untouched until the restore has succeeded)")
    try:
        return plan_files(plan.target, request.site.files)
    except OSError as exc:
        raise disk_error(Path(exc.filename or plan.target), exc) from None


@dataclass
class Read:
    """The archive, read: where from, its manifest, what the scan found."""

    archive: Path
    downloaded: bool
    manifest: dict
    files: int
    size: int
    setid: list[str]


def read_archive(settings: Settings, plan: Plan, files: FilesPlan | None, db: DatabaseSide | None) -> Read:
    """Scan (with the database load) beside the extraction; a local copy that turns out
    damaged is replaced by the S3 copy and everything read again."""
    source = plan.source
    local = settings.backup_dir / source.name
    expected = source.sha256 or (sidecar_sha256(local) if local.exists() else None)
    downloaded = not local.exists()
    archive = download(settings, source, plan.work) if downloaded else local
    read = Read(archive, downloaded, {}, 0, archive.stat().st_size, [])
    while True:
        extraction = Extraction(archive, files.tmp) if files else None
        early = _start_early_load(archive, db)
        try:
            read.setid = []
            if early:
                sha256, read.manifest, read.files = in_the_background(scan, archive, None, expected, read.setid)
            else:  # the scan feeds the load itself: no lower priority for it
                sha256, read.manifest, read.files = scan(archive, db.sink if db else None, expected, read.setid)
            damaged = expected is not None and sha256 != expected
        except UnreadableArchive:
            damaged = True
        except BaseException:
            for reader in (extraction, early):
                if reader:
                    reader.cancel()
            raise
        if not damaged:
            break
        for reader in (extraction, early):
            if reader:
                reader.cancel()
        if extraction:
            shutil.rmtree(files.tmp, ignore_errors=True)
            files.tmp.mkdir(mode=0o700)
        if db:
            db.reset()
        if downloaded or not (source.s3_key and settings.s3_enabled):
            raise BackupError(f"{source.name} does not match its recorded sha256 and no intact copy is "
                              "available: nothing was changed")
        log.warning("local copy %s does not match its recorded sha256; trying the S3 copy", local)
        archive, downloaded = download(settings, source, plan.work), True
        read.archive, read.downloaded, read.size = archive, True, archive.stat().st_size
    if extraction:  # the files must be complete before anything is swapped in
        extraction.wait()
    if early:
        early.wait()
    if db and not db.sink.received:
        raise BackupError(f"{source.name} holds no database.sql: nothing was changed")
    return read


def check_read(plan: Plan, files: FilesPlan | None, db: DatabaseSide | None, read: Read) -> FilesSwap | None:
    """The last checks, with the archive read: its files mode against the target, the dump
    against the manifest and the privileges its objects need."""
    request, mode = plan.request, read.manifest.get("files", {}).get("mode", "wp-content")
    swap = None
    if files:
        if mode == "all" and request.site.files != "all" and not request.force and not _is_empty(plan.target):
            raise BackupError(f"{plan.source.name} holds a whole WordPress root and {plan.target} is not empty: "
                              "add --force to replace it")
        swap = FilesSwap(files, mode)
    if db:
        db.verify(read.manifest)
    return swap


def apply_restore(db: DatabaseSide | None, swap: FilesSwap | None) -> None:
    """Tables first, then files; either failing (or a signal) undoes both."""
    try:
        check_stop()
        if db:
            db.apply()
        check_stop()
        if swap:
            try:
                swap.apply()
            except OSError as exc:
                raise BackupError(f"cannot swap the restored files into place: {exc.filename}: "
                                  f"{exc.strerror}") from None
    except BaseException as exc:
        changed = bool((db and db.journal) or (swap and swap.done))
        reason = "stopped by a signal" if stopping.is_set() else str(exc)
        problems = []
        for side in (swap, db):
            if side is not None:
                try:
                    side.undo()
                except BackupError as failure:
                    problems.append(str(failure))
        if problems:
            raise BackupError(f"{reason}; UNDO INCOMPLETE: {'; '.join(problems)}") from None
        if changed and isinstance(exc, BackupError):
            raise BackupError(f"{reason}; the site's files and database were put back as they were") from None
        if isinstance(exc, BackupError):
            raise BackupError(f"{reason}: nothing was changed" if stopping.is_set() else reason) from None
        raise
    if db:
        db.finish()
    if swap:
        swap.finish()


_active = 0
_settled = threading.Condition()


@contextmanager
def finish_before_exit():
    """doit runs the restore in a worker thread; on SIGTERM its main thread exits at once.
    The process then waits (atexit) until the restore has undone its changes and the task
    has said so (tasks/restore.py holds this around its report too)."""
    global _active
    with _settled:
        _active += 1
    try:
        yield
    finally:
        with _settled:
            _active -= 1
            _settled.notify_all()


def _wait_for_restores() -> None:
    with _settled:
        _settled.wait_for(lambda: _active == 0, timeout=UNDO_SECONDS)


atexit.register(_wait_for_restores)


def restore(settings: Settings, request: Request) -> dict:
    """Restore one archive of a site; returns a summary. Raises BackupError for every
    refusal (missing archive, bad checksum, unsafe member, non-empty target, a database the
    login may not use) before the live files or database change, and for every failure
    after, once what was changed has been put back."""
    started = time.monotonic()
    with finish_before_exit(), ExitStack() as stack:
        plan = plan_restore(settings, request)
        files = check_files(plan)
        db, read, swap, stripped, succeeded = None, None, None, 0, False
        try:
            if plan.login is not None:
                options = stack.enter_context(option_file(plan.login, plan.work))
                db = open_database(plan.login, options, request.force,
                                   plan.work / f"database-{os.getpid()}.sql", plan.port)
            read = read_archive(settings, plan, files, db)
            if files and read.setid:  # before anything is swapped in: it may fail
                stripped = strip_setid(files.tmp, read.setid)
                if stripped:
                    log.warning("%s: cleared set-user/group-ID bits on %d restored file(s), e.g. %s",
                                request.site.name, stripped, read.setid[0])
            swap = check_read(plan, files, db, read)
            apply_restore(db, swap)
            succeeded = True
        except OSError as exc:
            raise disk_error(Path(exc.filename or plan.work), exc) from None
        finally:
            if db is not None:
                db.close(succeeded)
            if files is not None and not succeeded:
                files.discard()
            if read is not None and read.downloaded:
                read.archive.unlink(missing_ok=True)
    tables = read.manifest.get("database", {}).get("tables", {})
    return {
        "site": request.site.name, "archive": plan.source.name, "from": "s3" if read.downloaded else "local",
        "files": read.files if request.files else None,
        "target": str(plan.target) if request.files else None,
        "contents_replaced": bool(swap and swap.contents),
        "database": plan.login.name if db else None, "tables": len(tables),
        "database_path": db.path if db else None, "kept_tables": db.kept if db else [],
        "setid_cleared": stripped,
        "seconds": round(time.monotonic() - started, 1), "size": human_bytes(read.size),
    }
