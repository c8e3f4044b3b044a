"""The stages of one site's backup, as plain functions (doit knows them as tasks):

    dump     mariadb-dump -> work/database.sql                 (beside tar, in parallel)
    tar      wp-config.php + files -> work/files.part.zst
    compress files part + database.sql + manifest -> BACKUP_DIR/{site}-backup-{stamp}.tar.zst
    upload   archive -> S3 (resumable multipart), verified
    catalog  s3_archives + SUCCESS in backups.db, LOCAL_KEEP applied, run closed

Each stage first looks for its own receipt: a stage that already finished (even in a
killed process whose doit state was lost) is not done again. A failure is written to the
catalog as ERROR and raised as BackupError, with a message meant for the operator.
"""

from __future__ import annotations

import json
import os
import shutil
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path

from wpbackup import __version__
from wpbackup.atomic import write_atomic
from wpbackup.backup import archive, frames, runs
from wpbackup.backup.frames import INDEX_SUFFIX
from wpbackup.backup.runs import STAGES, Run  # noqa: F401 (steps.STAGES)
from wpbackup.config.settings import Settings
from wpbackup.config.sites import SITE_NAME_RE, Site
from wpbackup.config.wpconfig import wordpress_version
from wpbackup.console import Progress, human_bytes, log
from wpbackup.database.mysql import dump_database, summarize
from wpbackup.errors import BackupError, Incomplete
from wpbackup.fleet import catalog
from wpbackup.retention.local import apply_local_keep, archive_pattern, waiting_uploads
from wpbackup.storage.reader import file_sha256
from wpbackup.storage.s3 import (
    abort_upload,
    describe,
    make_client,
    object_key,
    part_size_for,
    remember_abort,
    retry_aborts,
    server_prefix,
    sweep_uploads,
)
from wpbackup.storage.upload import CopySource, recorded_upload, upload_archive


def guarded(stage: str, settings: Settings, site: Site, run: Run, work: Callable[[], dict]) -> dict:
    """Run one stage; on failure record ERROR in the catalog and re-raise for doit."""
    try:
        return work()
    except Incomplete:  # recorded by the stage itself, with the archive it kept
        raise
    except BackupError as exc:
        message = f"{stage} failed: {exc}"
        log.error("%s %s", site.name, message)
        record_error(settings, site, run, message)
        raise BackupError(message) from None
    except Exception as exc:  # unexpected: keep the traceback for doit, but log it first
        log.error("%s %s failed: %s: %s", site.name, stage, type(exc).__name__, exc)
        record_error(settings, site, run, f"{stage} failed: {type(exc).__name__}: {exc}")
        raise


def record_error(settings: Settings, site: Site, run: Run, message: str) -> None:
    """ERROR line in the catalog; if even that fails (disk full), say so and go on."""
    try:
        catalog.log_event(settings.db_path, "ERROR", message, site=site.name,
                          server_id=settings.server_id, stamp=run.stamp)
    except Exception as exc:
        log.error("%s: could not record the error in %s: %s", site.name, settings.db_path, exc)


def prepare_backup_dir(settings: Settings) -> None:
    """BACKUP_DIR exists and is 0700 (archives inside hold wp-config.php, so the DB password)."""
    settings.backup_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(settings.backup_dir, 0o700)
    settings.work_dir.mkdir(exist_ok=True, mode=0o700)


_start_lock = threading.Lock()


def start(settings: Settings, site: Site, run: Run) -> None:
    """Open the run (START line once, before any other line), cleaning older runs first."""
    with _start_lock:
        _start(settings, site, run)


def _start(settings: Settings, site: Site, run: Run) -> None:
    prepare_backup_dir(settings)
    if run.refused:  # the clock is behind the site's last run: no stamp now would be true and later
        raise BackupError(run.refused)
    if not runs.open_run(run):
        return
    if run.abandoned:
        cleanup_abandoned(settings, site, run)
    for folder in runs.leftovers(run):
        if folder.name != run.abandoned:  # one whose upload could not be released stays, said once
            clear_leftover(settings, site, run, folder)
    catalog.log_event(settings.db_path, "START", f"backup run {run.stamp} started", site=site.name,
                      server_id=settings.server_id, stamp=run.stamp,
                      uid=f"{settings.server_id}:{site.name}:{run.stamp}:start")
    log.info("%s: run %s started", site.name, run.stamp)


def cleanup_abandoned(settings: Settings, site: Site, run: Run) -> None:
    """Remove what an abandoned run left: its multipart upload first (aborted, or kept in
    pending-aborts.json for a later run), then its work folder; a complete archive it wrote
    stays in BACKUP_DIR, and an INFO line says it was never uploaded."""
    discard_run(settings, site.name, run.site_dir / run.abandoned, run.stamp)
    why = run.why_abandoned or f"was older than STALE_RUN_HOURS={settings.stale_run_hours:g}"
    message = f"run {run.abandoned} {why} and is abandoned; run {run.stamp} replaces it"
    catalog.log_event(settings.db_path, "INFO", message, site=site.name, server_id=settings.server_id,
                      stamp=run.stamp)
    log.info("%s: %s", site.name, message)


def clear_leftover(settings: Settings, site: Site, run: Run, folder: Path) -> None:
    """Another folder of this site's runs: a closed run's receipts go quietly. Any other one
    belonged to a run no run.json names any more (run.json was damaged, or the process was
    killed while the run was starting): abandoned like a stale run, upload aborted first."""
    if _closed(site.name, folder):
        discard_run(settings, site.name, folder, run.stamp, closed=True)
    elif discard_run(settings, site.name, folder, run.stamp):
        _note(settings, site.name, run.stamp, f"run {folder.name} was named by no readable run.json (damaged, "
                                              "or the process was killed while the run was starting) and is "
                                              f"abandoned; run {run.stamp} replaces it")


def _closed(site_name: str, folder: Path) -> bool:
    """A folder holding a run's catalog receipt: that run recorded its result."""
    return Run(site_name, folder.name, folder.parent).receipt("catalog") is not None


def discard_run(settings: Settings, site_name: str, folder: Path, stamp: str, closed: bool = False) -> bool:
    """Delete a run folder no run will use again (dump, files part, receipts), but only once
    the multipart upload it records was aborted or remembered in pending-aborts.json: nothing
    under .work goes before that. The complete archive of an unfinished run stays in
    BACKUP_DIR and is named in an INFO line (logged under ``stamp``). False: the folder stays."""
    if not closed and (left := _left_archive(settings, site_name, folder)):
        _note(settings, site_name, stamp, left)
    if not folder.is_dir():
        return True
    if not release_upload(settings, site_name, folder):
        return False
    shutil.rmtree(folder, ignore_errors=True)
    return True


def _left_archive(settings: Settings, site_name: str, folder: Path) -> str | None:
    """What became of the archive an unfinished run wrote, if it wrote one (before its folder goes)."""
    name = archive.archive_name(site_name, folder.name)
    if not (settings.backup_dir / name).exists():
        return None
    sent = Run(site_name, folder.name, folder.parent).receipt("upload")
    if sent and sent.get("key"):
        return (f"{name} of the abandoned run stays in {settings.backup_dir}; it was uploaded to "
                f"s3://{sent.get('bucket')}/{sent['key']} but never recorded in the catalog")
    return f"{name} of the abandoned run stays in {settings.backup_dir}; it was never uploaded"


def release_upload(settings: Settings, site_name: str, folder: Path) -> bool:
    """Abort the multipart upload a run folder records (upload-state.json: key, UploadId and,
    when recorded, bucket), or remember it in pending-aborts.json, which the next upload
    retries: parts left open are billed until aborted. False when neither worked."""
    state = folder / "upload-state.json"
    try:
        upload = recorded_upload(state)
        bucket = json.loads(state.read_text()).get("bucket") if upload else None
    except (OSError, ValueError, AttributeError, TypeError):  # damaged: no UploadId to abort
        upload = bucket = None
    if not upload:
        return True
    bucket = bucket if isinstance(bucket, str) and bucket else settings.s3_bucket
    problem = "S3 is not configured now"
    if settings.s3_enabled and bucket:
        try:
            abort_upload(make_client(settings), bucket, *upload)
            log.info("%s: multipart upload of %s aborted", site_name, upload[0])
            return True
        except Exception as exc:  # S3 down or refusing: a later upload retries the abort
            problem = type(exc).__name__
    try:  # in the configured bucket, or naming the one it was left in
        remember_abort(pending_aborts(settings), *upload, bucket=bucket if bucket != settings.s3_bucket else None)
    except OSError as exc:
        log.warning("%s: could not abort the multipart upload of %s (%s) nor record it in %s (%s); "
                    "%s stays until a later run can", site_name, upload[0], problem, pending_aborts(settings),
                    exc.strerror, folder)
        return False
    log.warning("%s: could not abort the multipart upload of %s (%s); it is kept in %s and the next "
                "upload aborts it", site_name, upload[0], problem, pending_aborts(settings))
    return True


def sweep_retired(settings: Settings, enabled: set[str]) -> None:
    """At the start of `doit backup`: no run ever visits again the work folder of a site that
    is no longer enabled (removed from sites.json, renamed or disabled while its run was
    open), so clean it now: uploads aborted (or remembered) first, then dump, files part and
    receipts removed; a complete archive stays in BACKUP_DIR. One bad folder stops nothing."""
    if not settings.work_dir.is_dir():
        return
    for site_dir in sorted(settings.work_dir.iterdir()):
        if site_dir.name in enabled or not _is_site_work(site_dir):
            continue
        try:
            _sweep_site(settings, site_dir)
        except Exception as exc:  # the enabled sites' backups matter more than this cleanup
            log.warning("%s: could not clean %s: %s: %s", site_dir.name, site_dir, type(exc).__name__, exc)


def _is_site_work(path: Path) -> bool:
    """A site's run folder (run.json or stamp folders), not another tool's (verify's scratch)."""
    if path.is_symlink() or not path.is_dir() or not SITE_NAME_RE.fullmatch(path.name):
        return False
    return (path / "run.json").exists() or any(runs.valid_stamp(p.name) for p in path.iterdir() if p.is_dir())


def _sweep_site(settings: Settings, site_dir: Path) -> None:
    name, kept = site_dir.name, False
    state = runs.read_state(site_dir) or {}
    stamps = {p.name for p in site_dir.iterdir() if p.is_dir()}
    if not state.get("closed") and (named := runs.valid_stamp(state.get("stamp"))):
        stamps.add(named)  # an open run whose folder is gone may still have left its archive
    for stamp in sorted(stamps):
        folder = site_dir / stamp
        closed = _closed(name, folder)
        if not closed:
            _note(settings, name, stamp, f"site {name} is no longer enabled in {settings.sites_file} (removed, "
                                         f"renamed or disabled): its unfinished run {stamp} is abandoned")
        kept |= not discard_run(settings, name, folder, stamp, closed=closed)
    if not kept:
        shutil.rmtree(site_dir, ignore_errors=True)


def _note(settings: Settings, site_name: str, stamp: str, message: str) -> None:
    """An INFO line for a site that may have no run now (a retired site's leftovers)."""
    catalog.log_event(settings.db_path, "INFO", message, site=site_name, server_id=settings.server_id,
                      stamp=stamp)
    log.info("%s: %s", site_name, message)


def archive_fingerprint(site: Site) -> str:
    """What shapes a site's archive, digested: an open run started under other settings must
    not be resumed (its files part would hold the old tree under a manifest of the new one).
    The database is identified by where it is and which tables it gives, never its password."""
    explicit = {key: value for key, value in site.db.items() if key != "password"}
    try:
        db = site.database()
        resolved = {"name": db.name, "host": db.host.host, "port": db.host.port, "socket": db.host.socket,
                    "user": db.user, "prefix": db.table_prefix}
    except BackupError as exc:  # the run itself will fail and say why; the digest stays stable
        resolved = {"unresolved": str(exc)}
    return runs.fingerprint({"path": str(site.path), "files": site.files, "exclude": list(site.excludes),
                             "db": explicit, "database": resolved})


def pending_aborts(settings: Settings) -> Path:
    """Multipart uploads an abandoned run left that could not be aborted yet."""
    return settings.work_dir / "pending-aborts.json"


def _info(settings: Settings, site: Site, run: Run, message: str) -> None:
    catalog.log_event(settings.db_path, "INFO", message, site=site.name, server_id=settings.server_id,
                      stamp=run.stamp)
    log.info("%s: %s", site.name, message)


def dump_stage(settings: Settings, site: Site, run: Run) -> dict:
    """Dump the site's database to the run folder (skipped if this run already has it)."""
    def work() -> dict:
        start(settings, site, run)
        done = run.receipt("dump")
        if done and (run.folder / "database.sql").exists():
            return done
        db = site.database()
        progress = Progress(f"{site.name} dump")
        result = dump_database(db, run.folder / "database.sql", progress.set)
        held = result.contents
        receipt = run.write_receipt("dump", {
            "sha256": result.sha256, "size": result.size, "selection": held.selection,
            "selected_because": held.why, "tables": held.tables, "left_out": held.left_out,
            "routines_and_events": held.objects, "routines_and_events_left_out": held.objects_left_out,
            "notes": held.notes, "server_version": held.server_version,
            "tool": result.tool, "database": db.name, "table_prefix": db.table_prefix,
            "seconds": round(progress.elapsed, 2),
        })
        scope = ("the whole database" if held.selection == "all" else
                 f"only the tables of prefix {db.table_prefix}") + f" ({held.why})"
        _info(settings, site, run, f"database {db.name} dumped, {scope}: {len(held.tables)} tables and views, "
                                   f"{len(held.objects)} routines and events, "
                                   f"{human_bytes(result.size)} in {progress.elapsed:.1f}s")
        if held.left_out:
            _info(settings, site, run, f"{len(held.left_out)} tables left out of the dump: "
                                       f"{summarize(held.left_out)}")
        if held.objects_left_out:
            _info(settings, site, run, f"{len(held.objects_left_out)} routines and events left out of the "
                                       f"dump: {summarize(held.objects_left_out)}")
        for note in held.notes:
            _info(settings, site, run, note)
        return receipt
    return guarded("dump", settings, site, run, work)


def _skip_set(settings: Settings) -> set[tuple[int, int]]:
    """Our own files never go into an archive, even when they sit inside a site."""
    skip = set()
    state = settings.state_dir
    for path in (settings.backup_dir, settings.env_path, settings.sites_file, settings.db_path,
                 state / ".env.legacy", state / ".doit.db", state / ".doit-readonly.db", state / ".wpbackup.lock"):
        try:
            st = path.stat()
        except OSError:
            continue
        skip.add((st.st_dev, st.st_ino))
    return skip


def part_algorithm(checksum: str) -> str:
    """The part checksum an upload in this S3_CHECKSUM mode sends: CRC32, or MD5 (Content-MD5)."""
    return "crc32" if checksum == "crc32" else "md5"


def part_plan(settings: Settings) -> archive.PartDigests | None:
    """Checksums of the upload's parts, to compute while the archive is written (S3 on): MD5
    for Content-MD5, or CRC32 with S3_CHECKSUM=crc32, at the part size the upload will use for
    any archive under 10,000 parts of S3_PART_SIZE_MB (larger ones compute them at upload)."""
    if not settings.s3_enabled:
        return None
    return archive.PartDigests(part_size_for(0, settings.s3_part_size_mb),
                               part_algorithm(settings.s3_checksum))


def tar_stage(settings: Settings, site: Site, run: Run) -> dict:
    """Stream wp-config.php and the site files into compressed tar members."""
    def work() -> dict:
        start(settings, site, run)
        done = run.receipt("tar")
        if done and ((run.folder / "files.part.zst").exists() or run.receipt("compress")):
            return done
        wp_config = site.wp_config()
        if site.files == "wp-content" and not (site.path / "wp-content").is_dir():
            raise BackupError(f"site {site.name}: {site.path / 'wp-content'} does not exist")
        progress = Progress(f"{site.name} tar")
        previous = previous_archive(settings, site, run)
        # with a previous archive the upload plans its own parts (copies) and checksums them
        sums = None if previous else part_plan(settings)
        part = archive.write_files_part(
            site.path, site.files, wp_config, site.excludes, _skip_set(settings),
            run.folder / "files.part.zst", settings.zstd_level, settings.zstd_threads, progress.add,
            sums, previous)
        stats, reuse = part.stats, part.reuse
        receipt = run.write_receipt("tar", {
            "size": part.size, "written": stats.written, "files": stats.files, "bytes": stats.bytes,
            "dirs": stats.dirs, "links": stats.links, "warnings": stats.warnings,
            "unreadable": stats.unreadable, "unreadable_count": stats.unreadable_count,
            "followed": stats.followed, "followed_count": stats.followed_count,
            "left_out": stats.left_out, "left_out_count": stats.left_out_count,
            "wordpress_version": wordpress_version(site.path), "seconds": round(progress.elapsed, 2),
            "reused_from": part.source, "reused_files": reuse.files, "reused_bytes": reuse.bytes,
            "reused_frames": reuse.frames, "matched_frames": reuse.matched, "part_sums": sums is not None,
        })
        reused = (f"; {reuse.files} unchanged files ({human_bytes(reuse.bytes)}) copied from {part.source}"
                  if reuse.files else "")
        _info(settings, site, run, f"{stats.files} files ({human_bytes(stats.bytes)}) archived "
                                   f"in {progress.elapsed:.1f}s{reused}")
        for line in _tree_notes(stats):
            _info(settings, site, run, line)
        return receipt
    return guarded("tar", settings, site, run, work)


def previous_archive(settings: Settings, site: Site, run: Run) -> Path | None:
    """The newest archive of the site before this run's that has a frame index (the archive
    itself may be gone: its frames can then still be matched, see frames.py)."""
    current = archive.archive_name(site.name, run.stamp)
    pattern = archive_pattern(site.name)
    names = sorted(p.name[:-len(INDEX_SUFFIX)] for p in settings.backup_dir.glob(f"{site.name}-backup-*{INDEX_SUFFIX}"))
    older = [name for name in names if pattern.fullmatch(name) and name < current]
    return settings.backup_dir / older[-1] if older else None


def _tree_notes(stats: archive.TreeStats) -> list[str]:
    """The INFO lines of a tar stage beyond the count: which links were followed out of the
    site or left out (so nobody has to read the manifest to learn it), what could not be read,
    and the warnings; each names the first few and counts the rest."""
    def first(items: list[str], count: int) -> str:
        more = f" and {count - 5} more" if count > 5 else ""
        return "; ".join(items[:5]) + more

    notes = []
    if stats.followed_count:
        notes.append(f"{stats.followed_count} links followed, their targets archived in their place: " + first(
            [f"{f['name']} -> {f['target']}" for f in stats.followed], stats.followed_count))
    if stats.left_out_count:
        notes.append(f"{stats.left_out_count} links left out (they cannot be restored): " + first(
            [f"{f['name']} -> {f['target']} ({f['reason']})" for f in stats.left_out], stats.left_out_count))
    if stats.unreadable_count:
        notes.append(f"{stats.unreadable_count} files or folders could not be read: "
                     + first(stats.unreadable, stats.unreadable_count))
    if stats.warnings:
        notes.append(f"{len(stats.warnings)} file warnings, first: " + "; ".join(stats.warnings[:5]))
    return notes


def manifest(settings: Settings, site: Site, run: Run, dump: dict, tar: dict) -> dict:
    """manifest.json: what the archive holds, so verify and restore can check it."""
    return {
        "format": 1,
        "site": site.name,
        "server_id": settings.server_id,
        "created_at": runs.parse_stamp(run.stamp).isoformat(),
        "stamp": run.stamp,
        "tool_version": __version__,
        "wordpress_version": tar.get("wordpress_version"),
        "table_prefix": dump["table_prefix"],
        # restore replaces or drops only the tables listed here: exactly the ones dumped
        "database": {"name": dump["database"], "sha256": dump["sha256"], "bytes": dump["size"],
                     "selection": dump.get("selection", "prefix" if dump.get("skipped_tables") else "all"),
                     "selected_because": dump.get("selected_because", ""),
                     "tables": dump["tables"],
                     "left_out": dump.get("left_out", dict.fromkeys(dump.get("skipped_tables", []),
                                                                    "does not start with the table prefix")),
                     "routines_and_events": dump.get("routines_and_events", []),
                     "routines_and_events_left_out": dump.get("routines_and_events_left_out", {}),
                     "server_version": dump["server_version"], "dump_tool": dump["tool"]},
        "files": {"mode": site.files, "count": tar["files"], "bytes": tar["bytes"],
                  "folders": tar["dirs"], "links": tar["links"], "warnings": tar["warnings"],
                  "unreadable": tar.get("unreadable", []), "unreadable_count": tar.get("unreadable_count", 0),
                  "followed": tar.get("followed", []), "left_out": tar.get("left_out", []),
                  "excluded": list(site.excludes)},
    }


def archive_path(settings: Settings, site: Site, run: Run) -> Path:
    return settings.backup_dir / archive.archive_name(site.name, run.stamp)


def compress_stage(settings: Settings, site: Site, run: Run) -> dict:
    """Append the dump and the manifest to the files part; give the archive its final name."""
    def work() -> dict:
        done = run.receipt("compress")
        target = archive_path(settings, site, run)
        if done and target.exists():
            return done
        dump, tar = run.receipt("dump"), run.receipt("tar")
        if not dump or not tar:
            raise BackupError("the dump and tar stages of this run have not finished")
        files_part = run.folder / "files.part.zst"
        progress = Progress(f"{site.name} compress")
        # the part checksums go on only where the tar stage began them (receipts from before: always)
        plan = part_plan(settings) if tar.get("part_sums", True) else None
        part_sums, copied = None, 0
        if files_part.exists():
            try:
                finished = archive.finish_archive(
                    files_part, tar["size"], tar["written"], run.folder / "database.sql",
                    manifest(settings, site, run, dump, tar), target,
                    settings.zstd_level, settings.zstd_threads, progress.add, plan,
                    settings.backup_dir / tar["reused_from"] if tar.get("reused_from") else None)
                sha256, size, part_sums = finished.sha256, finished.size, finished.part_sums
                copied = finished.dump_pieces_copied
            except archive.PartLost as exc:
                run.receipt_path("tar").unlink(missing_ok=True)
                files_part.unlink(missing_ok=True)
                raise BackupError(f"{exc}; the next run archives the files again") from None
        elif target.exists():  # renamed before a crash: complete, only the receipt is missing
            sha256, size = file_sha256(target), target.stat().st_size
        else:
            raise BackupError(f"{files_part} is missing: the run's intermediates were removed")
        archive.write_sidecar(target, sha256)
        if plan and part_sums:  # the upload's part checksums, computed while the archive was written
            write_atomic(run.folder / PART_SUMS, json.dumps(
                {"sha256": sha256, "size": size, "part_size": plan.part_size, "algorithm": plan.algorithm,
                 "sums": part_sums}).encode())
        receipt = run.write_receipt("compress", {"archive": target.name, "sha256": sha256, "size": size})
        unchanged = f"; {copied} unchanged pieces of the dump copied from {tar['reused_from']}" if copied else ""
        _info(settings, site, run, f"archive {target.name} written: {human_bytes(size)}{unchanged}")
        keep_local(settings, site, run, target.name)  # counting this archive, before its upload
        return receipt
    return guarded("compress", settings, site, run, work)


PART_SUMS = "part-sums.json"


def written_sums(run: Run, made: dict, part_size: int, checksum: str) -> list[str] | None:
    """The part checksums the compress stage computed for this archive, if they fit the
    upload about to start (same part size, the algorithm of its S3_CHECKSUM mode)."""
    try:
        data = json.loads((run.folder / PART_SUMS).read_text())
    except (OSError, ValueError):
        return None
    wanted = (made["sha256"], made["size"], part_size, part_algorithm(checksum))
    same = (data.get("sha256"), data.get("size"), data.get("part_size"), data.get("algorithm")) == wanted
    sums = data.get("sums") if same else None
    try:
        return sums if isinstance(sums, list) and all(bytes.fromhex(h) for h in sums) else None
    except (TypeError, ValueError):  # a damaged file: the upload computes them itself
        return None


_swept: set[tuple] = set()
_sweep_lock = threading.Lock()


def sweep_old_uploads(settings: Settings, client) -> None:
    """Abort this server's multipart uploads older than STALE_RUN_HOURS that no open run will
    resume: once per process and place, before its first upload (the other site's upload waits
    on the lock, so nothing of this process is in flight yet). They are what runs leave that no
    run cleans up: a site removed, renamed or disabled while its run was open, a damaged
    run.json, a process killed while its run was starting. Only ``[S3_PREFIX/]SERVER_ID/`` is
    looked at. Whatever goes wrong here is a warning: the backup itself goes on."""
    prefix = server_prefix(settings.s3_prefix, settings.server_id)
    where = f"s3://{settings.s3_bucket}/{prefix}"
    with _sweep_lock:
        if (settings.s3_endpoint_url, settings.s3_bucket, prefix, str(settings.work_dir)) in _swept:
            return
        _swept.add((settings.s3_endpoint_url, settings.s3_bucket, prefix, str(settings.work_dir)))
        before = datetime.now(timezone.utc) - timedelta(hours=settings.stale_run_hours)
        try:
            swept = sweep_uploads(client, settings.s3_bucket, prefix, before, resumable_uploads(settings))
        except Exception as exc:
            log.warning("S3: could not sweep old multipart uploads under %s: %s", where,
                        describe(exc, settings.s3_endpoint_url, settings.s3_bucket))
            return
    if swept.denied:
        log.warning("S3: cannot list the unfinished multipart uploads under %s (%s: the key lacks "
                    "s3:ListBucketMultipartUploads), so old ones are not swept; a lifecycle rule that aborts "
                    "incomplete uploads is the safety net (docs/s3-storage.md)", where, swept.denied)
        return
    if swept.aborted:
        message = (f"aborted {swept.aborted} unfinished multipart uploads under {where} older than "
                   f"STALE_RUN_HOURS={settings.stale_run_hours:g} that no open run resumes")
        catalog.log_event(settings.db_path, "INFO", message, site=None, server_id=settings.server_id)
        log.info("S3: %s", message)
    if swept.failed:
        log.warning("S3: could not abort %d old multipart uploads under %s (first: %s); the next backup "
                    "tries again", len(swept.failed), where, swept.failed[0])


def resumable_uploads(settings: Settings) -> set[str]:
    """UploadIds an open run of this server still resumes: named by the upload-state.json of a
    site's current run (run.json open, naming that folder) younger than STALE_RUN_HOURS, the
    runs `runs.plan_run` would resume rather than abandon."""
    keep = set()
    oldest = datetime.now(timezone.utc) - timedelta(hours=settings.stale_run_hours)
    for state_path in settings.work_dir.glob("*/*/upload-state.json"):
        folder = state_path.parent
        state = runs.read_state(folder.parent)
        if not isinstance(state, dict) or state.get("closed") or state.get("stamp") != folder.name:
            continue
        try:
            if runs.parse_stamp(folder.name) <= oldest:
                continue
        except ValueError:
            continue
        upload = recorded_upload(state_path)
        if upload:
            keep.add(upload[1])
    return keep


def upload_stage(settings: Settings, site: Site, run: Run) -> dict:
    """Upload the archive to S3 and verify it (local-only mode: say so and move on). The first
    upload of a process sweeps this server's old multipart uploads first."""
    def work() -> dict:
        done = run.receipt("upload")
        if done:
            return done
        made = run.receipt("compress")
        if not made:
            raise BackupError("the archive of this run has not been written yet")
        if not settings.s3_enabled:
            _info(settings, site, run, "S3_BUCKET not set: local-only mode, archive kept in "
                                       f"{settings.backup_dir}")
            return run.write_receipt("upload", {"local_only": True})
        path = settings.backup_dir / made["archive"]
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            raise BackupError(f"{path} is missing: it was removed after it was written") from None
        if size != made["size"]:
            raise BackupError(f"{path} is {size} bytes, not the {made['size']} it was written with: it changed on "
                              f"disk (check it with sha256sum -c {path.name}.sha256)")
        part_size = part_size_for(made["size"], settings.s3_part_size_mb)
        key = object_key(settings.s3_prefix, settings.server_id, run.stamp, made["archive"])
        progress = Progress(f"{site.name} upload", made["size"])
        try:
            client = make_client(settings)
            sweep_old_uploads(settings, client)
            retry_aborts(client, settings.s3_bucket, pending_aborts(settings))
            result = upload_archive(
                client, settings.s3_bucket, key, path, made["sha256"],
                {"site": site.name, "server-id": settings.server_id}, run.folder / "upload-state.json",
                storage_class=settings.s3_storage_class, checksum=settings.s3_checksum,
                part_size=part_size, part_sums=written_sums(run, made, part_size, settings.s3_checksum),
                pending=pending_aborts(settings), progress=progress.add,
                copy=copy_source(settings, site, path, made["sha256"]))
        except BackupError:
            raise
        except Exception as exc:
            raise describe(exc, settings.s3_endpoint_url, settings.s3_bucket) from None
        for line in (result.moved, result.note):
            if line:
                _info(settings, site, run, line)
        uploaded_at = catalog.now_utc()
        receipt = run.write_receipt("upload", {
            "key": result.key, "bucket": settings.s3_bucket, "endpoint": settings.s3_endpoint_url,
            "size": result.size, "sha256": made["sha256"], "etag": result.etag,
            "verified_by": result.verified_by, "parts": result.parts, "resumed_parts": result.resumed_parts,
            "uploaded_at": uploaded_at, "seconds": round(progress.elapsed, 2),
            "assembly_seconds": result.assembly_seconds, "copied_parts": result.copied_parts, "sent": result.sent,
        })
        resumed = f", {result.resumed_parts} parts resumed" if result.resumed_parts else ""
        if result.copied_parts:
            resumed += (f", {human_bytes(result.sent)} sent and {result.copied_parts} parts copied inside S3 "
                        "from the previous archive")
        slow = (f" ({result.assembly_seconds:.1f}s of it the provider joining the parts)"
                if result.assembly_seconds >= 1 else "")
        _info(settings, site, run, f"uploaded to s3://{settings.s3_bucket}/{key} and verified "
                                   f"({result.verified_by}){resumed} in {progress.elapsed:.1f}s{slow}")
        return receipt
    return guarded("upload", settings, site, run, work)


def copy_source(settings: Settings, site: Site, path: Path, sha256: str) -> CopySource | None:
    """Last night's S3 object, when tonight's archive reused its frames (its index names it)
    and the catalog knows its copy in this bucket: the upload copies those bytes inside S3."""
    index = frames.load_index(frames.index_path(path))
    if not index or not index.source or (index.size, index.sha256) != (path.stat().st_size, sha256):
        return None
    row = catalog.s3_copy(settings.db_path, settings.server_id, site.name, index.source, settings.s3_bucket,
                          settings.s3_endpoint_url)
    if row is None:
        return None
    return CopySource(row["filename"], row["file_size"], row["sha256"], index.source,
                      [(f.offset, f.length, f.source) for f in index.frames])


def keep_local(settings: Settings, site: Site, run: Run, current: str) -> None:
    """LOCAL_KEEP right after a new archive is written, and how many local archives still wait
    for their upload: the catalog stage, which also applies it, never runs while S3 is down."""
    never_sent = set(waiting_uploads(settings, site.name))
    removed = apply_local_keep(settings, site, current)
    lost = [name for name in removed if name in never_sent]
    if lost:
        log.warning("%s: LOCAL_KEEP removes %d archives that were never uploaded", site.name, len(lost))
    if removed:
        unsent = f" ({len(lost)} of them never uploaded)" if lost else ""
        _info(settings, site, run, f"LOCAL_KEEP={settings.local_keep}: removed {len(removed)} older local "
                                   f"archives{unsent}: {', '.join(removed)}")
    if older := [name for name in waiting_uploads(settings, site.name) if name != current]:
        _info(settings, site, run, f"{len(older) + 1} local archives are waiting for their upload (this one "
                                   f"and {len(older)} older whose upload never succeeded: {', '.join(older)}); "
                                   f"LOCAL_KEEP={settings.local_keep} bounds how many stay")


def catalog_stage(settings: Settings, site: Site, run: Run) -> dict:
    """Record the verified backup (s3_archives, SUCCESS), apply LOCAL_KEEP, close the run.

    A backup that had to leave out files it could not read is recorded the same way, but as
    an ERROR line `incomplete: N unreadable (first: ...)`, and the stage then fails: the
    archive is kept and restorable, yet nobody may be told it is OK."""
    def work() -> dict:
        made, sent, dump, tar = (run.receipt(s) for s in ("compress", "upload", "dump", "tar"))
        if not made or not sent:
            raise BackupError("the archive of this run has not been written and uploaded yet")
        if not sent.get("local_only"):
            catalog.record_upload(
                settings.db_path, key=sent["key"], endpoint=sent["endpoint"], bucket=sent["bucket"],
                size=sent["size"], sha256=sent["sha256"], site=site.name, server_id=settings.server_id,
                stamp=run.stamp, archive_name=made["archive"], uploaded_at=sent["uploaded_at"])
        where = "local only" if sent.get("local_only") else f"s3://{sent['bucket']}/{sent['key']}"
        elapsed = (datetime.now(timezone.utc) - runs.parse_stamp(run.stamp)).total_seconds()
        unreadable = (tar or {}).get("unreadable") or []
        missing = (tar or {}).get("unreadable_count", len(unreadable))
        contents = (f"{human_bytes(made['size'])}, {len(dump['tables']) if dump else '?'} tables, "
                    f"{tar['files'] if tar else '?'} files, {where}")
        if missing:  # archived around what could not be read: kept and uploaded, but not OK
            status, outcome = "ERROR", "incomplete"
            details = (f"incomplete: {missing} unreadable (first: {unreadable[0] if unreadable else '?'}); "
                       f"backup {made['archive']} kept: {contents}")
        else:
            status, outcome = "SUCCESS", "success"
            details = f"backup {made['archive']} complete: {contents}"
        catalog.log_event(settings.db_path, status, details, site=site.name, server_id=settings.server_id,
                          stamp=run.stamp, uid=f"{settings.server_id}:{site.name}:{run.stamp}:{outcome}",
                          archive_name=made["archive"], archive_size=made["size"], archive_sha256=made["sha256"],
                          incomplete=missing)
        summary = {"archive": made["archive"], "size": made["size"], "where": where,
                   "seconds": round(elapsed, 1), "unreadable": missing}
        removed = apply_local_keep(settings, site, made["archive"])
        if removed:
            _info(settings, site, run, f"LOCAL_KEEP={settings.local_keep}: removed {len(removed)} older "
                                       f"local archives: {', '.join(removed)}")
        receipt = run.write_receipt("catalog", summary)
        runs.close_run(run)
        if missing:
            log.error("%s: %s", site.name, details)
            raise Incomplete(details)
        log.info("%s: %s", site.name, details)
        return receipt
    return guarded("catalog", settings, site, run, work)

