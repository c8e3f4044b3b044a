"""Uploading one archive to S3 and proving it arrived, in four steps:

    plan      one PUT (small), plain parts, or parts copied inside S3 from last night's
              object where tonight's bytes are the same (partplan.py, from the frame index)
    resume    the parts the server already holds for this very plan (state file + ListParts)
    send      parts side by side: read from disk with their checksum, or UploadPartCopy
              of a byte range of last night's object, its ETag checked against the MD5 of
              tonight's bytes on disk
    complete  CompleteMultipartUpload, then the object checked (size, sha256 metadata, and
              the multipart ETag from the local part MD5s, or S3's composite CRC32)

Only then is anything recorded. A provider that refuses part copies, or a copy source that is
gone or holds other bytes, turns the upload into a plain one (said once). The state file keeps
the UploadId, the plan's digest and the finished parts, so an upload cut off half-way (copied or
not) continues on the next run; an upload of ours that is no longer wanted is aborted.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError

from wpbackup.backup.children import stopping
from wpbackup.console import log
from wpbackup.errors import BackupError
from wpbackup.storage.partplan import Part, copy_runs, plain_parts, plan_parts, valid
from wpbackup.storage.reader import file_sha256
from wpbackup.storage.s3 import (
    _MD5_ETAG,
    CHECKSUMS,
    CONCURRENCY,
    MIB,
    _b64,
    _code,
    _md5,
    abort_upload,
    part_size_for,
    remember_abort,
    verify_object,
)


class ArchiveChanged(BackupError):
    """A part's bytes on disk differ from the archive as written: the upload cannot succeed."""


class CopyRefused(BackupError):
    """The provider does not copy parts (UploadPartCopy) for us: upload everything instead."""


class CopyMismatch(BackupError):
    """A copied part is not the bytes tonight's archive holds there: last night's object changed."""


@dataclass
class Uploaded:
    key: str
    size: int
    etag: str
    verified_by: str
    parts: int
    resumed_parts: int = 0
    assembly_seconds: float = 0.0  # CompleteMultipartUpload: the provider joining the parts
    moved: str = ""  # what became of an unfinished upload left where S3_BUCKET/S3_PREFIX pointed before
    copied_parts: int = 0
    sent: int = 0  # bytes that went over the wire (the rest was copied inside S3)
    note: str = ""  # why copies were planned but not used


@dataclass
class CopySource:
    """Last night's object, which tonight's upload copies ``runs`` (start, length, source
    offset) of, as the frame index of tonight's archive says."""

    key: str
    size: int
    sha256: str
    archive: str
    frames: list[tuple[int, int, int | None]] = field(default_factory=list)


class PartReader:
    """One part of the archive as a seekable, read-only file, read straight from disk: the
    upload never holds a whole part in memory (botocore seeks back to 0 on a retry)."""

    def __init__(self, fd: int, offset: int, length: int):
        self.fd, self.offset, self.length, self.position = fd, offset, length, 0

    def read(self, size: int = -1) -> bytes:
        left = self.length - self.position
        size = left if size is None or size < 0 else min(size, left)
        data = os.pread(self.fd, size, self.offset + self.position) if size > 0 else b""
        self.position += len(data)
        return data

    def seek(self, position: int, whence: int = 0) -> int:
        base = {0: 0, 1: self.position, 2: self.length}[whence]
        self.position = max(0, min(self.length, base + position))
        return self.position

    def tell(self) -> int:
        return self.position

    def __len__(self) -> int:
        return self.length

    def digests(self, crc: bool = False) -> tuple[bytes | None, bytes | None]:
        """The part's MD5 (for Content-MD5) or, in CRC32 mode, its CRC32 (4 bytes), in one read:
        with CRC32 the provider checks the part itself and MD5, the slowest pass, is skipped."""
        digest, crc32 = (None, 0) if crc else (hashlib.md5(usedforsecurity=False), None)
        for start in range(0, self.length, MIB):
            chunk = os.pread(self.fd, min(MIB, self.length - start), self.offset + start)
            if crc:
                crc32 = binascii.crc32(chunk, crc32)
            else:
                digest.update(chunk)
        return (None, crc32.to_bytes(4, "big")) if crc else (digest.digest(), None)


class _State:
    """The multipart upload's progress on disk, rewritten atomically: after each part while
    there are few, then at most once a second (each rewrite holds every part, and an upload
    may have 10,000), and once more when the parts are all sent or one failed. A part sent
    but not yet recorded when the process dies is simply sent again."""

    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.saved_at = 0.0
        try:
            self.data = json.loads(path.read_text())
        except (OSError, ValueError):
            self.data = {}

    def save(self, soon: bool = False) -> None:
        with self.lock:
            now = time.monotonic()
            if soon and len(self.data.get("parts", ())) > 64 and now - self.saved_at < 1.0:
                return
            self.saved_at = now
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(self.data))
            os.replace(tmp, self.path)


def recorded_upload(state_path: Path) -> tuple[str, str] | None:
    """(key, UploadId) of the multipart upload a state file records, if any."""
    data = _State(state_path).data
    return (data["key"], data["upload_id"]) if data.get("upload_id") and data.get("key") else None


@dataclass
class _Job:
    """One archive's upload: where it goes and how its parts are checked."""

    client: object
    bucket: str
    key: str
    path: Path
    size: int
    sha256: str
    extra: dict
    state: _State
    crc: bool
    pending: Path | None
    progress: Callable[[int], None] | None


# --- plan -------------------------------------------------------------------------------------

_refused: set[str] = set()  # endpoints that refused a part copy: said once, not tried again


def _copy_plan(job: _Job, copy: CopySource, part_size: int) -> tuple[list[Part] | None, str, str | None]:
    """The copy-built plan, the sentence saying why there is none, and the source's ETag."""
    where = f"s3://{job.bucket}/{copy.key}"
    if _endpoint(job.client) in _refused:
        return None, "", None
    try:
        head = job.client.head_object(Bucket=job.bucket, Key=copy.key)
    except ClientError as exc:
        if _code(exc) not in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied", "Forbidden"):
            raise
        return None, f"{copy.archive} is no longer at {where}: the whole archive is uploaded", None
    if head["ContentLength"] != copy.size or head.get("Metadata", {}).get("sha256") != copy.sha256:
        return None, f"{where} differs from {copy.archive} as indexed: the whole archive is uploaded", None
    if head.get("StorageClass") in ("GLACIER", "DEEP_ARCHIVE"):  # archived: no part can be copied from it
        return None, "", None
    runs = [run for run in copy_runs(copy.frames) if run[2] + run[1] <= copy.size]
    try:
        parts = plan_parts(job.size, runs, part_size)
    except ValueError:  # an index that does not describe this archive: nothing to copy
        return None, "", None
    if not valid(parts, job.size) or not any(p.source is not None for p in parts):
        return None, "", None
    return parts, "", head.get("ETag")


def _plan_digest(parts: list[Part], copy: CopySource | None) -> str | None:
    if copy is None:
        return None
    body = json.dumps({"source": copy.key, "parts": [p.row() for p in parts]}).encode()
    return hashlib.sha256(body).hexdigest()


def _endpoint(client) -> str:
    return str(getattr(getattr(client, "meta", None), "endpoint_url", ""))


# --- the entry point ----------------------------------------------------------------------------

def upload_archive(client, bucket: str, key: str, path: Path, sha256: str, metadata: dict[str, str],
                   state_path: Path, *, storage_class: str | None = None, part_size: int | None = None,
                   checksum: str = "none", part_sums: list[str] | None = None, pending: Path | None = None,
                   progress: Callable[[int], None] | None = None, copy: CopySource | None = None) -> Uploaded:
    """Upload ``path`` to ``key`` (resuming a cut-off multipart upload) and verify it.

    The default (``checksum="none"``) sends each part with Content-MD5, which every
    S3-compatible provider checks, and verifies the ETag (MD5 of the part MD5s). With
    ``checksum="crc32"`` each part carries S3's additional checksum instead, and the provider's
    composite CRC32 of the object is verified.

    ``part_sums`` (hex, one per plain part of ``part_size``) are the parts' checksums as computed
    while the archive was written: the provider checks what it receives against the archive as
    written. An archive no longer as written is refused (ArchiveChanged) and its upload aborted.

    ``copy``: last night's object and which of tonight's bytes it holds: those parts are
    copied inside S3 (UploadPartCopy) and only the rest is sent. A part whose ETag is not its
    MD5 (SSE-KMS, SSE-C) is accepted when the bytes on disk still match what the provider
    checked; the object is then verified by download. A recorded upload this one will not
    resume (other archive, part size, plan or mode, or another bucket or key) is aborted where
    it was started, and ``moved`` says so."""
    if checksum not in CHECKSUMS:
        raise BackupError(f"unknown S3 checksum mode {checksum!r} (one of {', '.join(CHECKSUMS)})")
    size = path.stat().st_size
    part_size = part_size or part_size_for(size)
    extra = {"Metadata": {**metadata, "sha256": sha256}, "ContentType": "application/zstd"}
    if storage_class:
        extra["StorageClass"] = storage_class
    job = _Job(client, bucket, key, path, size, sha256, extra, _State(state_path), checksum == "crc32",
               pending, progress)
    parts, note, source_etag = _copy_plan(job, copy, part_size) if copy and size > part_size else (None, "", None)
    head = _existing(client, bucket, key)
    if head and head.get("Metadata", {}).get("sha256") == sha256 and head["ContentLength"] == size:
        moved = _forget_other(job, _wanted(job, part_size, checksum, None))
        how = verify_object(client, bucket, key, size, sha256, None)
        return Uploaded(key, size, head["ETag"].strip('"'), how, 0, moved=moved)
    if parts:
        wanted = _wanted(job, part_size, checksum, _plan_digest(parts, copy))
        moved = _forget_other(job, wanted)
        try:
            done = _multipart(job, parts, wanted, None, copy.key, source_etag)
            done.moved, done.note = moved, note
            return done
        except (CopyRefused, CopyMismatch) as exc:
            note = str(exc)
            log.warning("%s", note)
            _drop_recorded(job.client, job.state, job.bucket, job.key, job.pending)
    written = [bytes.fromhex(h) for h in part_sums] if part_sums else None
    if written is not None and len(written) != math.ceil(size / part_size):
        raise ArchiveChanged(f"{path} is {size} bytes, not the size it was written with "
                             f"(check it with sha256sum -c {path.name}.sha256)")
    wanted = _wanted(job, part_size, checksum, None)
    moved = _forget_other(job, wanted)
    if size <= part_size:
        done = _put_whole(job, written)
    else:
        done = _multipart(job, plain_parts(size, part_size), wanted, written)
    done.moved, done.note = moved, note
    return done


def _wanted(job: _Job, part_size: int, checksum: str, plan: str | None) -> dict:
    wanted = {"bucket": job.bucket, "key": job.key, "size": job.size, "sha256": job.sha256,
              "part_size": part_size, "checksum": checksum}
    return {**wanted, "plan": plan} if plan else wanted


def _recorded(state: _State, bucket: str, wanted: dict) -> dict:
    """What the state file's upload was for, in the shape of ``wanted`` (files from before the
    bucket was recorded meant the bucket configured now)."""
    data = state.data
    recorded = {name: data.get(name) for name in wanted}
    recorded["bucket"] = data.get("bucket") or bucket
    recorded["checksum"] = data.get("checksum", "none")
    if "plan" not in wanted and data.get("plan"):
        recorded["plan"] = data["plan"]
    return recorded


def _forget_other(job: _Job, wanted: dict) -> str:
    """Abort the upload the state file records unless it is this very one (then resumed)."""
    if job.size > wanted["part_size"] and _recorded(job.state, job.bucket, wanted) == wanted:
        return ""
    return _drop_recorded(job.client, job.state, job.bucket, job.key, job.pending)


def _drop_recorded(client, state: _State, bucket: str, key: str, pending: Path | None) -> str:
    """Abort the upload a state file records that this upload will not resume, where it is:
    in the bucket and under the key it was started with, which differ from today's when the
    operator changed S3_BUCKET or S3_PREFIX while the run was open. One that cannot be aborted
    now goes to ``pending`` for a later run. Returns a sentence for the log when it had moved."""
    data = state.data
    if not data.get("upload_id") or not data.get("key"):
        return ""
    old_bucket, old_key, upload_id = data.get("bucket") or bucket, data["key"], data["upload_id"]
    try:
        abort_upload(client, old_bucket, old_key, upload_id)
        outcome = "was aborted"
    except (ClientError, BotoCoreError):
        if pending is None:
            raise
        remember_abort(pending, old_key, upload_id, old_bucket if old_bucket != bucket else None)
        outcome = f"could not be aborted now; a later run retries ({pending.name})"
    state.data = {}
    state.path.unlink(missing_ok=True)
    if (old_bucket, old_key) == (bucket, key):  # same place, another archive, part size, plan or mode
        return ""
    return (f"the unfinished upload at s3://{old_bucket}/{old_key} (the bucket or key prefix changed "
            f"since) {outcome}; uploading afresh")


def _existing(client, bucket: str, key: str) -> dict | None:
    """The object already at ``key`` (a run that died between upload and receipt), or None.

    Without s3:ListBucket, AWS answers the HEAD of a missing key with 403, not 404: that only
    means "cannot tell", so the upload goes ahead (credentials that are really refused fail on
    the upload itself, with its own message)."""
    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        if _code(exc) in ("404", "NoSuchKey", "NotFound", "403", "AccessDenied", "Forbidden"):
            return None
        raise


def _put_whole(job: _Job, written: list[bytes] | None) -> Uploaded:
    """An archive of one part: a single PUT with its checksum, then verified."""
    with open(job.path, "rb") as handle:
        data = handle.read()
    if written is None and hashlib.sha256(data).hexdigest() != job.sha256:
        raise ArchiveChanged(f"{job.path} no longer holds the bytes it was written with (check it with "
                             f"sha256sum -c {job.path.name}.sha256)")
    if job.crc:
        md5, crc32 = None, _b64(written[0] if written else binascii.crc32(data).to_bytes(4, "big"))
        more = {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": crc32}
    else:
        md5, crc32 = written[0] if written else _md5(data), None
        more = {"ContentMD5": _b64(md5)}
    response = job.client.put_object(Bucket=job.bucket, Key=job.key, Body=data, **more, **job.extra)
    del data
    if job.progress:
        job.progress(job.size)
    how = verify_object(job.client, job.bucket, job.key, job.size, job.sha256, md5.hex() if md5 else None, crc32)
    return Uploaded(job.key, job.size, response.get("ETag", "").strip('"'), how, 1, sent=job.size)


# --- resume, send, complete -------------------------------------------------------------------

def _multipart(job: _Job, parts: list[Part], wanted: dict, written: list[bytes] | None,
               source_key: str | None = None, source_etag: str | None = None) -> Uploaded:
    upload_id, done = _resume(job, parts, wanted)
    resumed = len(done)
    if job.progress and done:
        job.progress(sum(p.length for p in parts if p.number in done))
    check = None if written else _WholeCheck(job.path, job.sha256)  # no checksums from the writing
    try:
        _send_all(job, parts, upload_id, done, written, source_key, source_etag)
    finally:
        same = check.same() if check else True
    if not same:
        _abandon(job, upload_id)
        raise ArchiveChanged(f"{job.path} no longer holds the bytes it was written with (its sha256 differs; check "
                             f"it with sha256sum -c {job.path.name}.sha256); the upload was aborted")
    sent = sum(p.length for p in parts if p.source is None and p.number not in done)
    return _complete(job, parts, upload_id, resumed, sent)


def _resume(job: _Job, parts: list[Part], wanted: dict) -> tuple[str, set[int]]:
    """The UploadId to send into and the parts the server already holds for this plan (the
    state file's ETag, size and, in CRC32 mode, checksum must all agree); a new upload when
    there is none."""
    state, done = job.state, set()
    upload_id = state.data.get("upload_id") if state.data.get("key") == job.key else None
    if upload_id:
        try:
            server = _server_parts(job.client, job.bucket, job.key, upload_id)
        except ClientError as exc:
            if _code(exc) not in ("NoSuchUpload", "404"):
                raise
            upload_id = None
        else:
            mine, sums = state.data.get("parts", {}), state.data.get("crc32", {})
            lengths = {p.number: p.length for p in parts}
            for number, (etag, stored) in server.items():
                if mine.get(str(number)) == etag and stored == lengths.get(number) and (
                        not job.crc or str(number) in sums):
                    done.add(number)
    _abort_others(job.client, job.bucket, job.key, upload_id)
    if not upload_id:
        algorithm = {"ChecksumAlgorithm": "CRC32", "ChecksumType": "COMPOSITE"} if job.crc else {}
        upload_id = job.client.create_multipart_upload(Bucket=job.bucket, Key=job.key, **algorithm,
                                                       **job.extra)["UploadId"]
        done = set()
    sums = state.data.get("crc32", {}) if job.crc else {}
    etags, md5s = state.data.get("parts", {}), state.data.get("md5", {})
    state.data = {**wanted, "upload_id": upload_id, "parts": {str(n): etags[str(n)] for n in done},
                  "crc32": {str(n): sums[str(n)] for n in done if str(n) in sums},
                  "md5": {str(n): md5s[str(n)] for n in done if str(n) in md5s},
                  "etags_not_md5": bool(done and state.data.get("etags_not_md5"))}
    state.save()
    return upload_id, done


def _server_parts(client, bucket: str, key: str, upload_id: str) -> dict[int, tuple[str, int]]:
    parts: dict[int, tuple[str, int]] = {}
    marker = 0
    while True:
        page = client.list_parts(Bucket=bucket, Key=key, UploadId=upload_id, PartNumberMarker=marker)
        for part in page.get("Parts", []):
            parts[part["PartNumber"]] = (part["ETag"].strip('"'), part["Size"])
        if not page.get("IsTruncated"):
            return parts
        marker = page["NextPartNumberMarker"]


def _abort_others(client, bucket: str, key: str, upload_id: str | None) -> None:
    """Abort other unfinished uploads of this very key (a run killed before it saved its
    state). A key not allowed to list uploads skips this: the sweep says so, and the
    lifecycle rule (docs/s3-storage.md) is the safety net."""
    try:
        others = client.list_multipart_uploads(Bucket=bucket, Prefix=key).get("Uploads", [])
    except ClientError as exc:
        if _code(exc) in ("AccessDenied", "403", "NotImplemented", "MethodNotAllowed"):
            return
        raise
    for other in others:
        if other["Key"] == key and other["UploadId"] != upload_id:
            abort_upload(client, bucket, key, other["UploadId"])


#: answers that say "try again later" or "who are you", not "this copy cannot be done"
_RETRYABLE = ("SlowDown", "RequestTimeout", "TooManyRequests", "Throttling", "RequestTimeTooSkewed",
              "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "TokenRefreshRequired")


class _Sender:
    """Sends (or copies) the parts not yet done, CONCURRENCY at a time, each recorded in the
    state file as it is acknowledged."""

    def __init__(self, job: _Job, upload_id: str, written: list[bytes] | None, source_key: str | None,
                 source_etag: str | None, fd: int):
        self.job, self.upload_id, self.written, self.fd = job, upload_id, written, fd
        self.source_key, self.source_etag = source_key, source_etag
        self.failed = threading.Event()

    def run(self, part: Part) -> None:
        if self.failed.is_set() or stopping.is_set():
            return
        try:
            if part.source is None:
                self.upload(part)
            else:
                self.copy(part)
        except BaseException:
            self.failed.set()  # the parts still queued are not sent; the next run resumes
            raise

    def upload(self, part: Part) -> None:
        job = self.job
        body = PartReader(self.fd, part.start, part.length)
        if self.written:
            md5, crc32 = (None, self.written[part.number - 1]) if job.crc else (self.written[part.number - 1], None)
        else:
            md5, crc32 = body.digests(job.crc)
        more = {"ChecksumCRC32": _b64(crc32)} if crc32 else {"ContentMD5": _b64(md5)}
        try:
            response = job.client.upload_part(Bucket=job.bucket, Key=job.key, UploadId=self.upload_id,
                                              PartNumber=part.number, Body=body, ContentLength=part.length, **more)
        except ClientError as exc:
            code = _code(exc)
            if self.written and code in ("BadDigest", "InvalidDigest"):
                raise ArchiveChanged(
                    f"S3 refused part {part.number} of {job.key} ({code}): its bytes do not match the checksum "
                    f"taken when the archive was written; {job.path} has changed since, or the bytes were "
                    f"altered on the way (check it with sha256sum -c {job.path.name}.sha256); the upload was "
                    "aborted") from None
            raise
        etag = response["ETag"].strip('"')
        plain = not md5 or etag == md5.hex()
        if not plain and self.written and body.digests()[0] != md5:
            raise ArchiveChanged(f"S3 stored part {part.number} of {job.key} with another checksum: {job.path} "
                                 f"no longer holds the bytes written (check it with sha256sum -c "
                                 f"{job.path.name}.sha256); the upload was aborted")
        # Otherwise the provider took the part after checking its Content-MD5, and its ETag is
        # simply no MD5 (SSE-KMS, SSE-C): the finished object is then verified by reading it back.
        self.record(part, etag, plain, md5, crc32)

    def copy(self, part: Part) -> None:
        """UploadPartCopy of last night's bytes; the answer's ETag must be the MD5 of tonight's
        bytes there (or, in CRC32 mode, its CRC32 when the provider gives one)."""
        job = self.job
        # the local checksum is computed while the provider copies (a big part: seconds each)
        local: dict = {}
        hashing = threading.Thread(target=lambda: local.update(
            sums=PartReader(self.fd, part.start, part.length).digests(job.crc)), daemon=True)
        hashing.start()
        try:
            response = self._copy_request(part)
        finally:
            hashing.join()
        md5, crc32 = local["sums"]
        where = f"s3://{job.bucket}/{self.source_key}"
        result = response.get("CopyPartResult", {})
        etag = str(result.get("ETag", "")).strip('"')
        given = result.get("ChecksumCRC32")
        if crc32 is not None and given and given != _b64(crc32):
            raise CopyMismatch(f"part {part.number} copied from {where} does not hold tonight's bytes (CRC32): "
                               "uploading the whole archive")
        plain = md5 is None or etag == md5.hex()
        if not plain and _MD5_ETAG.match(etag):
            raise CopyMismatch(f"part {part.number} copied from {where} does not hold tonight's bytes (MD5): "
                               "uploading the whole archive")
        self.record(part, etag, plain, md5, crc32)

    def _copy_request(self, part: Part) -> dict:
        """UploadPartCopy of the part's range of the source; refusals and a source that changed
        are CopyRefused and CopyMismatch (the caller uploads the whole archive instead)."""
        job = self.job
        where = f"s3://{job.bucket}/{self.source_key}"
        condition = {"CopySourceIfMatch": self.source_etag} if self.source_etag else {}
        try:
            response = job.client.upload_part_copy(
                Bucket=job.bucket, Key=job.key, UploadId=self.upload_id, PartNumber=part.number,
                CopySource={"Bucket": job.bucket, "Key": self.source_key},
                CopySourceRange=f"bytes={part.source}-{part.source + part.length - 1}", **condition)
        except ClientError as exc:
            code = _code(exc)
            if code in ("NotImplemented", "501", "MethodNotAllowed", "405", "InvalidRequest", "AccessDenied",
                        "403", "InvalidArgument"):
                _refused.add(_endpoint(job.client))
                raise CopyRefused(f"S3 refused to copy parts of {where} ({code}): uploading the whole archive; "
                                  "later backups of this run do not try again") from None
            if code in ("PreconditionFailed", "412", "NoSuchKey", "404"):
                raise CopyMismatch(f"{where} changed or went away during the upload ({code}): uploading the "
                                   "whole archive") from None
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
            if 400 <= status < 500 and code not in _RETRYABLE:  # e.g. InvalidObjectState: do without
                raise CopyMismatch(f"S3 could not copy part {part.number} from {where} ({code}): uploading the "
                                   "whole archive") from None
            raise
        return response

    def record(self, part: Part, etag: str, plain: bool, md5: bytes | None, crc32: bytes | None) -> None:
        state = self.job.state
        with state.lock:
            if not plain:
                state.data["etags_not_md5"] = True
            state.data["parts"][str(part.number)] = etag
            if md5 is not None:
                state.data["md5"][str(part.number)] = md5.hex()
            if crc32:
                state.data["crc32"][str(part.number)] = _b64(crc32)
        state.save(soon=True)
        if self.job.progress:
            self.job.progress(part.length)


def _send_all(job: _Job, parts: list[Part], upload_id: str, done: set[int], written: list[bytes] | None,
              source_key: str | None, source_etag: str | None) -> None:
    fd = os.open(job.path, os.O_RDONLY)
    sender = _Sender(job, upload_id, written, source_key, source_etag, fd)
    pool = ThreadPoolExecutor(max_workers=CONCURRENCY)
    changed = False
    try:
        futures = [pool.submit(sender.run, part) for part in parts if part.number not in done]
        for future in futures:
            try:
                future.result()
            except ArchiveChanged:
                changed = True
                raise
            except BaseException:
                sender.failed.set()
                raise
        if stopping.is_set():
            raise BackupError("stopped by a signal; the next run resumes the upload")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        os.close(fd)
        if changed:  # no resuming this one: its parts came from a damaged archive
            _abandon(job, upload_id)
        else:
            job.state.save()


class _WholeCheck:
    """The archive's sha256 read again beside the upload, for uploads whose part checksums are
    computed from the disk now (copy-built ones, or after a restart): what S3 checked must be
    the archive as it was written, not as it reads back."""

    def __init__(self, path: Path, sha256: str):
        self.path, self.sha256, self.digest = path, sha256, None
        self.thread = threading.Thread(target=self._run, name="sha256-check", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            self.digest = file_sha256(self.path)
        except OSError:  # unreadable: not the archive as written
            pass

    def same(self) -> bool:
        self.thread.join()
        return self.digest == self.sha256


def _abandon(job: _Job, upload_id: str) -> None:
    """Abort an upload that must not be completed (or keep it for a later run to abort)."""
    try:
        abort_upload(job.client, job.bucket, job.key, upload_id)
    except (ClientError, BotoCoreError):
        if job.pending is None:
            raise
        remember_abort(job.pending, job.key, upload_id)
    job.state.path.unlink(missing_ok=True)


def _complete(job: _Job, parts: list[Part], upload_id: str, resumed: int, sent: int) -> Uploaded:
    """Join the parts, then check the object against the checksums computed here."""
    data = job.state.data
    listed = [{"PartNumber": p.number, "ETag": f'"{data["parts"][str(p.number)]}"',
               **({"ChecksumCRC32": data["crc32"][str(p.number)]} if job.crc else {})} for p in parts]
    assembling = time.monotonic()
    response = job.client.complete_multipart_upload(Bucket=job.bucket, Key=job.key, UploadId=upload_id,
                                                    MultipartUpload={"Parts": listed})
    assembled = time.monotonic() - assembling
    count = len(parts)
    if job.crc:  # S3's composite: the CRC32 of the parts' CRC32s, in order
        expected, crc_expected = None, _b64(binascii.crc32(b"".join(
            base64.b64decode(data["crc32"][str(p.number)]) for p in parts)).to_bytes(4, "big"))
    else:
        md5s = [_local_md5(data, p.number) for p in parts]
        plain = all(md5s) and not data.get("etags_not_md5")  # else: verified by download
        expected, crc_expected = (f"{_md5(b''.join(md5s)).hex()}-{count}" if plain else None), None
    how = verify_object(job.client, job.bucket, job.key, job.size, job.sha256, expected, crc_expected,
                        composite=job.crc)
    job.state.path.unlink(missing_ok=True)
    return Uploaded(job.key, job.size, response.get("ETag", "").strip('"'), how, count, resumed,
                    round(assembled, 2), copied_parts=sum(1 for p in parts if p.source is not None), sent=sent)


def _local_md5(data: dict, number: int) -> bytes:
    """A part's MD5 as computed here (state files from before kept only the ETag, which is
    the MD5 the provider checked); empty when neither is known."""
    known = data.get("md5", {}).get(str(number))
    if known:
        return bytes.fromhex(known)
    etag = data["parts"][str(number)]
    match = _MD5_ETAG.match(etag)
    return bytes.fromhex(match.group(1)) if match and not match.group(2) else b""
