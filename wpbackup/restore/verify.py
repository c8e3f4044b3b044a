"""Checking archives without trusting them: sha256 against the catalog and the sidecar, the
zstd stream and the tar read to the very end, and the manifest against what is really inside.

    local file | S3 object (streamed, never stored) -> sha256 + zstd + tar -> manifest check
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import tarfile
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import zstandard

from wpbackup.database.mysql import quote_identifier, run_query
from wpbackup.errors import BackupError
from wpbackup.restore.members import MemberCheck
from wpbackup.restore.restore import Request, restore
from wpbackup.storage.reader import CHUNK, is_site_file, open_members, sidecar_sha256


@dataclass
class ArchiveCheck:
    """What one archive holds and what is wrong with it (nothing, when ``ok``)."""

    name: str
    where: str
    problems: list[str] = field(default_factory=list)
    sha256: str | None = None
    files: int = 0
    bytes: int = 0
    manifest: dict | None = None

    @property
    def ok(self) -> bool:
        return not self.problems


def check_stream(raw: BinaryIO, name: str, where: str, expected_sha256: str | None) -> ArchiveCheck:
    """Read an archive stream to its end and compare it with its manifest and checksum."""
    check = ArchiveCheck(name, where)
    db_digest = None
    db_size = 0
    members_check = MemberCheck()
    refused = None
    try:
        hashed, tar = open_members(raw)
        members = []
        for member in tar:
            members.append(member)
            if refused is None:
                try:  # the very check restore makes: what verify calls good, restore accepts
                    members_check.check(member)
                except BackupError as exc:
                    refused = str(exc)
            if member.name == "database.sql" and member.isfile():
                digest = hashlib.sha256()
                source = tar.extractfile(member)
                while chunk := source.read(CHUNK):
                    digest.update(chunk)
                    db_size += len(chunk)
                db_digest = digest.hexdigest()
            elif member.name == "manifest.json" and member.isfile():
                check.manifest = json.loads(tar.extractfile(member).read(16 << 20))
        tar.close()
        hashed.drain()
        check.sha256 = hashed.digest.hexdigest()
    except (zstandard.ZstdError, tarfile.TarError, EOFError, OSError, ValueError) as exc:
        check.problems.append(f"not a readable zstd/tar stream: {type(exc).__name__}: {exc}")
        return check
    if expected_sha256 and check.sha256 != expected_sha256:
        check.problems.append(f"sha256 {check.sha256} differs from the recorded {expected_sha256}")
    if refused is None:
        try:
            members_check.finish()
        except BackupError as exc:
            refused = str(exc)
    if refused is not None:
        check.problems.append(f"restore would refuse it: {refused.removesuffix('; nothing was changed')}")
    manifest = check.manifest
    if manifest is None:
        check.problems.append("manifest.json is missing")
        return check
    mode = manifest.get("files", {}).get("mode", "wp-content")
    for member in members:
        if is_site_file(member, mode):
            check.files += 1
            check.bytes += member.size
    files = manifest.get("files", {})
    if (files.get("count"), files.get("bytes")) != (check.files, check.bytes):
        check.problems.append(f"manifest says {files.get('count')} files / {files.get('bytes')} bytes, "
                              f"the archive holds {check.files} / {check.bytes}")
    database = manifest.get("database", {})
    if db_digest is None:
        check.problems.append("database.sql is missing")
    elif database.get("sha256") != db_digest or database.get("bytes", db_size) != db_size:
        check.problems.append("database.sql does not match the sha256 in manifest.json")
    if not any(m.name == "wp-config.php" for m in members):
        check.problems.append("wp-config.php is missing")
    return check


def check_local(archive: Path, expected_sha256: str | None) -> ArchiveCheck:
    """Check a local archive against the catalog's sha256 and its .sha256 sidecar."""
    with open(archive, "rb") as raw:
        check = check_stream(raw, archive.name, f"local:{archive}", expected_sha256)
    sidecar = sidecar_sha256(archive)
    if sidecar is None:
        check.problems.append(f"{archive.name}.sha256 is missing")
    elif check.sha256 and sidecar != check.sha256:
        check.problems.append(f"sha256 differs from {archive.name}.sha256")
    return check


def check_remote(client, bucket: str, key: str, expected_sha256: str | None) -> ArchiveCheck:
    """Stream the S3 copy through the same checks (nothing is written to disk)."""
    name = key.rsplit("/", 1)[-1]
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    try:
        return check_stream(body, name, f"s3://{bucket}/{key}", expected_sha256)
    finally:
        body.close()


def restore_test(settings, site, archive_name: str, manifest: dict) -> list[str]:
    """Restore an archive into a scratch database and folder, compare row counts and the file
    count with its manifest, then drop both. Returns the problems found."""
    scratch_db = f"wpbackup_verify_{secrets.token_hex(4)}"
    (settings.backup_dir / ".work").mkdir(parents=True, exist_ok=True, mode=0o700)
    folder = Path(tempfile.mkdtemp(prefix="wpbackup-verify-", dir=settings.backup_dir / ".work"))
    problems: list[str] = []
    db = replace(site.database(), name=scratch_db)
    try:
        restore(settings, Request(site=site, archive=archive_name, target=folder / "site",
                                  database=scratch_db, force=True))
        tables = manifest.get("database", {}).get("tables", {})
        present = {row[0] for row in run_query(
            db, "SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = DATABASE()")}
        problems += [f"table {t}: missing from the restored database" for t in tables if t not in present]
        counted_tables = [t for t, rows in tables.items() if t in present and rows is not None]
        if counted_tables:
            union = " UNION ALL ".join(f"SELECT '{t}', COUNT(*) FROM {quote_identifier(t)}" for t in counted_tables)
            counted = {row[0]: int(row[1]) for row in run_query(db, union)}
            for table in counted_tables:
                if counted.get(table) != tables[table]:
                    problems.append(f"table {table}: {counted.get(table)} rows restored, "
                                    f"manifest says {tables[table]}")
        root = folder / "site"
        mode = manifest.get("files", {}).get("mode", "wp-content")
        base = root if mode == "all" else root / "wp-content"
        found = sum(1 for p in base.rglob("*") if p.is_file() and not p.is_symlink())
        if found != manifest.get("files", {}).get("count"):
            problems.append(f"{found} files restored, manifest says {manifest.get('files', {}).get('count')}")
    except BackupError as exc:
        problems.append(f"restore failed: {exc}")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        try:
            run_query(replace(db, name="information_schema"), f"DROP DATABASE IF EXISTS {quote_identifier(scratch_db)}")
        except BackupError as exc:
            problems.append(f"could not drop the scratch database {scratch_db}: {exc}")
    return problems


@dataclass
class Verdict:
    """What one `doit verify` pass found for one archive, as data: each copy's result is True
    (passed), False (damaged) or None (not checked, or an S3 copy that could not be read at all,
    which proves nothing about its bytes). Prune and status decide from these, never from the
    wording of ``message``."""

    archive_name: str
    problems: list[str]
    message: str
    local: bool | None = None
    s3: bool | None = None
    restore_tested: bool | None = None

    @property
    def ok(self) -> bool:
        return not self.problems

    def results(self) -> dict[str, int | None]:
        """The catalog columns of this verdict (1 passed, 0 failed, NULL not checked)."""
        def flag(value: bool | None) -> int | None:
            return None if value is None else int(value)
        return {"verified_local": flag(self.local), "verified_s3": flag(self.s3),
                "restore_tested": flag(self.restore_tested)}


def _copies(settings, row, remote: bool) -> tuple[list[ArchiveCheck], bool | None, str]:
    """Check the local copy and, with ``remote``, the S3 copy of one catalog row: (checks,
    the S3 copy's result, a note when no S3 copy is recorded)."""
    from wpbackup.storage.s3 import describe, make_client

    checks, s3_result, note = [], None, ""
    local = settings.backup_dir / row["archive_name"]
    if local.exists():
        checks.append(check_local(local, row["archive_sha256"]))
    if remote and row["s3_key"] and settings.s3_enabled:
        bucket = row["s3_bucket"] or settings.s3_bucket
        try:
            remote_check = check_remote(make_client(settings), bucket, row["s3_key"], row["archive_sha256"])
            s3_result = remote_check.ok
        except Exception as exc:  # unreadable is no evidence of damage: s3_result stays None
            failure = describe(exc, settings.s3_endpoint_url, bucket)
            remote_check = ArchiveCheck(row["archive_name"], f"s3://{bucket}/{row['s3_key']}",
                                        [f"cannot read the S3 copy: {failure}"])
        checks.append(remote_check)
    elif remote:
        note = "no S3 copy recorded"
    return checks, s3_result, note


def verify_archive(settings, site, row, remote: bool, with_restore_test: bool) -> Verdict:
    """Verify one archive of the catalog (a row of catalog.successes): its local copy, its S3
    copy with ``remote``, and with ``with_restore_test`` a restore into scratch space."""
    name = row["archive_name"]
    checks, s3_result, note = _copies(settings, row, remote)
    local = next((c.ok for c in checks if c.where.startswith("local:")), None)
    if not checks:
        hint = "" if remote else "; --remote checks the S3 copy"
        return Verdict(name, ["no copy to check"], f"verify failed: {name}: no copy to check (none on this "
                       f"disk{hint})", local, s3_result)
    problems = [f"{c.where}: {p}" for c in checks for p in c.problems]
    manifest = next((c.manifest for c in checks if c.manifest), None)
    tested = None
    if with_restore_test and not problems and manifest:
        found = restore_test(settings, site, name, manifest)
        problems += [f"restore test: {p}" for p in found]
        tested = not found
    if problems:
        message = f"verify failed: {name}: " + "; ".join(problems)
    else:
        what = ", ".join(c.where.split(":")[0] for c in checks)
        extra = ", restore test" if tested else ""
        tables = len((manifest or {}).get("database", {}).get("tables", {}))
        message = (f"verify OK: {name} ({what}: sha256, zstd+tar, manifest{extra}; "
                   f"{checks[0].files} files, {tables} tables)")
    if note:
        message += f" ({note})"
    return Verdict(name, problems, message, local, s3_result, tested)
