"""Restoring a backup, without touching the live site until everything checked out:

    catalog -> archive (local copy, or downloaded from S3 when missing or damaged)
      -> at once: [scan]    sha256 + every member checked (absolute paths, '..', links leaving
                            the target, devices: the restore stops) + database.sql set aside
                  [extract] zstd -> GNU tar -> temporary folder beside the target
      -> database.sql loaded with the mariadb/mysql client into --database (after both)
      -> the restored files swapped in; the old ones removed

A failed or refused restore leaves the files as they were and removes its temporary folder.
"""

from __future__ import annotations

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
from dataclasses import dataclass, replace
from pathlib import Path

import zstandard

from . import catalog
from .children import spawn, tracked
from .console import Progress, human_bytes, log
from .errors import BackupError, disk_error
from .members import MemberCheck
from .mysql import client_binary, explain, option_file, quote_identifier, run_query
from .reader import CHUNK, open_members, sidecar_sha256
from .s3 import make_client
from .settings import Settings
from .sites import DbSettings, Site

DB_NAME_RE = re.compile(r"^[A-Za-z0-9_$-]{1,64}$")
SANDBOX_PREFIX = b"/*M!999999\\- enable the sandbox mode"


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
    rows = [r for r in rows if ARCHIVE_NAME_RE.match(r["archive_name"] or "")]
    if not rows:
        raise BackupError(f"the catalog's archive names for site {site.name} are not valid archive names")
    mine = [r for r in rows if r["server_id"] == settings.server_id]
    row = (mine or rows)[0]
    return Source(row["archive_name"], row["archive_sha256"], row["archive_size"], row["server_id"],
                  row["run_stamp"], row["s3_key"], row["s3_bucket"])


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


def database_state(db: DbSettings) -> tuple[bool, int]:
    """(exists, number of tables) of db.name, asked through information_schema."""
    probe = replace(db, name="information_schema")
    quoted = db.name.replace("'", "''")
    rows = run_query(probe, f"SELECT COUNT(*) FROM SCHEMATA WHERE SCHEMA_NAME = '{quoted}'; "
                            f"SELECT COUNT(*) FROM TABLES WHERE TABLE_SCHEMA = '{quoted}'")
    return int(rows[0][0]) > 0, int(rows[1][0])


def scan(archive: Path, dump_to: Path | None, expected: str | None = None,
         setid: list[str] | None = None) -> tuple[str, dict, int]:
    """Read the whole archive once: its sha256, every member checked as extraction would check
    it (plus: nothing may go through a symbolic link), database.sql copied to ``dump_to``, and
    the regular files carrying set-user/group-ID bits listed in ``setid``.
    Returns (sha256, manifest, number of site files). Raises BackupError on a refused member
    or a broken stream."""
    manifest: dict = {}
    with open(archive, "rb") as raw:
        hashed, tar = open_members(raw)
        try:
            files = _scan_members(tar, dump_to, manifest, setid if setid is not None else [])
            if not manifest:
                raise BackupError(f"{archive.name} has no manifest.json: not an archive of this tool")
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


def _scan_members(tar, dump_to: Path | None, manifest: dict, setid: list[str]) -> int:
    """Check every member, fill ``manifest``, copy database.sql out; the site file count."""
    checker = MemberCheck()
    files = 0
    for member in tar:
        checker.check(member)
        if member.isfile() and member.mode & SETID:
            setid.append(member.name)
        files += member.isfile() and member.name not in ("manifest.json", "database.sql")
        if member.name == "manifest.json" and member.isfile():
            manifest.update(json.loads(tar.extractfile(member).read(16 << 20)))
        elif member.name == "database.sql" and member.isfile() and dump_to is not None:
            fd = os.open(dump_to, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as out:
                shutil.copyfileobj(tar.extractfile(member), out, CHUNK)
    tar.close()
    checker.finish()
    return files


def extract_files(archive: Path, tmp: Path, stop: threading.Event) -> None:
    """Extract the site's members into ``tmp`` with GNU tar, fed by our zstd decompression.

    This runs while ``scan`` checks every member, so nothing here is trusted yet: GNU tar's
    own defaults keep it inside ``tmp`` (it strips leading '/', skips names with '..', and
    creates links that point out of the tree only as placeholders), and ``tmp`` is swapped in
    only when the scan passed, else removed. Stops early when ``stop`` is set."""
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
            while not stop.is_set() and (chunk := reader.read(CHUNK)):
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
    if stop.is_set():
        return
    if unreadable is not None:
        raise BackupError(f"{archive.name} is not a readable zstd stream ({unreadable})")
    if code != 0:
        message = b"".join(errors).decode("utf-8", "replace").strip().splitlines()
        raise BackupError(f"tar could not extract the files: {message[-1] if message else code}")


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


def load_database(db: DbSettings, dump: Path, options_dir: Path) -> None:
    """Load database.sql with the mariadb/mysql client (the MariaDB sandbox line stripped,
    so older MariaDB and MySQL clients accept it too)."""
    fd = os.open(dump, os.O_RDONLY)
    try:
        head = os.pread(fd, 256, 0)
        if head.startswith(SANDBOX_PREFIX):
            os.lseek(fd, head.index(b"\n") + 1, os.SEEK_SET)
        with option_file(db, options_dir) as options:
            argv = [client_binary(), f"--defaults-file={options}", "--batch", "--max-allowed-packet=1G", db.name]
            result = subprocess.run(argv, stdin=fd, capture_output=True, text=True)
    finally:
        os.close(fd)
    if result.returncode != 0:
        raise explain(result.stderr, db, "load database.sql")


def drop_tables_not_in(db: DbSettings, keep: set[str], options_dir: Path) -> list[str]:
    """After a --force load: drop the site's (prefixed) tables that the backup did not have.
    Nothing is dropped without a table list to compare with, or without a prefix."""
    if not keep or not db.table_prefix:
        return []
    with option_file(db, options_dir) as options:
        rows = run_query(db, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()",
                         options)
        extra = [r[0] for r in rows if r[0].startswith(db.table_prefix) and r[0] not in keep]
        if extra:
            run_query(db, "SET FOREIGN_KEY_CHECKS=0; DROP TABLE " + ", ".join(quote_identifier(t) for t in extra),
                      options)
    return extra


def swap_in(tmp: Path, target: Path, mode: str) -> None:
    """Replace the live files by the restored ones (renames on one filesystem)."""
    stamp = f"{os.getpid()}-{int(time.time())}"
    if mode == "all":
        old = target.with_name(f".{target.name}.old-{stamp}")
        if target.exists():
            os.rename(target, old)
        os.rename(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    target.mkdir(parents=True, exist_ok=True)
    live, restored = target / "wp-content", tmp / "wp-content"
    if restored.exists():
        old = target / f".wp-content.old-{stamp}"
        if live.exists():
            os.rename(live, old)
        os.rename(restored, live)
        shutil.rmtree(old, ignore_errors=True)
    config = tmp / "wp-config.php"
    if config.exists() and not (target / "wp-config.php").exists():
        os.rename(config, target / "wp-config.php")
    elif config.exists():
        log.info("kept the existing %s (the archived one holds the old credentials)", target / "wp-config.php")
    shutil.rmtree(tmp, ignore_errors=True)


@dataclass
class Request:
    site: Site
    archive: str | None = None
    target: Path | None = None
    database: str | None = None
    files: bool = True
    db: bool = True
    force: bool = False


def restore(settings: Settings, request: Request) -> dict:
    """Restore one archive of a site; returns a summary. Raises BackupError for every
    refusal (missing archive, bad checksum, unsafe member, non-empty target), before the
    live files or the database are touched.

    Two readers run at once: one extracts the files into the temporary folder, the other
    checks the checksum and every member and copies database.sql out. Only when both have
    succeeded is the database loaded, then the files swapped in.
    """
    started = time.monotonic()
    site = request.site
    source = find_archive(settings, site, request.archive)
    target = (request.target or site.path).absolute()
    live = target if site.files == "all" else target / "wp-content"
    if request.files and not request.force and not _is_empty(live):
        raise BackupError(f"{target} is not empty: add --force to replace its files "
                          "(they stay untouched until the restore has succeeded)")
    db = None
    exists = False
    if request.db:
        db = site.database()
        if request.database:
            if not DB_NAME_RE.match(request.database):
                raise BackupError(f"--database {request.database!r}: use letters, digits, '_', '$' or '-'")
            db = replace(db, name=request.database)
        exists, tables = database_state(db)
        if tables and not request.force:
            raise BackupError(f"database {db.name} has {tables} tables: add --force to replace them")
    scratch = settings.backup_dir / ".restore"
    scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
    local = settings.backup_dir / source.name
    expected = source.sha256 or (sidecar_sha256(local) if local.exists() else None)
    downloaded = not local.exists()
    archive = download(settings, source, scratch) if downloaded else local
    tmp = None
    dump = scratch / f"database-{os.getpid()}.sql" if request.db else None
    stop = threading.Event()
    extraction: dict = {}
    setid: list[str] = []
    stripped = 0

    def extract_in_background() -> None:
        try:
            extract_files(archive, tmp, stop)
        except BaseException as exc:  # re-raised in the main thread
            extraction["error"] = exc

    worker = None
    try:
        while True:
            if request.files:  # beside the target: same filesystem, so the swap is a rename
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.parent / f".{target.name}.restore-{os.getpid()}"
                shutil.rmtree(tmp, ignore_errors=True)
                tmp.mkdir(mode=0o700)
                worker = threading.Thread(target=extract_in_background, daemon=True)
                worker.start()
            try:
                setid.clear()
                sha256, manifest, files = scan(archive, dump, expected, setid)
                damaged = expected is not None and sha256 != expected
            except UnreadableArchive:
                damaged = True
            except BackupError:
                stop.set()
                raise
            if not damaged:
                break
            stop.set()
            if worker:
                worker.join()
                shutil.rmtree(tmp, ignore_errors=True)
                stop.clear()
                extraction.clear()
            if downloaded or not (source.s3_key and settings.s3_enabled):
                raise BackupError(f"{source.name} does not match its recorded sha256 and no intact copy is "
                                  "available: nothing was changed")
            log.warning("local copy %s does not match its recorded sha256; trying the S3 copy", local)
            archive, downloaded = download(settings, source, scratch), True
        mode = manifest.get("files", {}).get("mode", "wp-content")
        if request.files and mode == "all" and site.files != "all" and not request.force and not _is_empty(target):
            raise BackupError(f"{source.name} holds a whole WordPress root and {target} is not empty: "
                              "add --force to replace it")
        dropped: list[str] = []
        if worker:  # the files must be complete before the database is touched
            worker.join()
            if "error" in extraction:
                error = extraction["error"]
                raise error if isinstance(error, BackupError) else BackupError(f"extraction failed: {error}")
            stripped = strip_setid(tmp, setid)  # before the database is touched: it may fail
            if stripped:
                log.warning("%s: cleared set-user/group-ID bits on %d restored file(s), e.g. %s",
                            site.name, stripped, setid[0])
        if db is not None and dump is not None:
            if not dump.exists():
                raise BackupError(f"{source.name} holds no database.sql: nothing was changed")
            if not exists:
                run_query(replace(db, name="information_schema"), f"CREATE DATABASE {quote_identifier(db.name)} "
                                                                  "CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci")
            load_database(db, dump, scratch)
            if request.force:
                dropped = drop_tables_not_in(db, set(manifest.get("database", {}).get("tables", {})), scratch)
        if worker:
            os.chmod(tmp, 0o755)
            swap_in(tmp, target, mode)
            tmp = None
    except OSError as exc:
        raise disk_error(Path(exc.filename or scratch), exc) from None
    finally:
        stop.set()
        if worker:
            worker.join()
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        if dump is not None:
            dump.unlink(missing_ok=True)
        size = archive.stat().st_size if archive.exists() else 0
        if downloaded:
            archive.unlink(missing_ok=True)
    return {
        "site": site.name, "archive": source.name, "from": "s3" if downloaded else "local",
        "files": files if request.files else None,
        "target": str(target) if request.files else None,
        "database": db.name if db else None, "tables": len(manifest.get("database", {}).get("tables", {})),
        "dropped_tables": dropped, "setid_cleared": stripped,
        "seconds": round(time.monotonic() - started, 1), "size": human_bytes(size),
    }
