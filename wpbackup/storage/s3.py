"""Uploading an archive to S3-compatible storage and proving it arrived.

    archive -> put_object (small) | multipart (parts, Content-MD5 each, resumable) -> head
            -> size, sha256 metadata and ETag checked -> only then recorded anywhere

A multipart upload's UploadId and finished parts live in a small state file, so an upload
cut off half-way continues from the parts the server already holds (ListParts) on the next
run. Uploads of ours that are no longer wanted are aborted, never left to bill forever: the
one a state file names when the bucket or key moved, and (``sweep_uploads``) any upload under
this server's prefix older than STALE_RUN_HOURS that no open run will resume.

Providers as they are: part ETags that are no MD5s (SSE-KMS, SSE-C) are accepted once the
part read back from disk still matches the checksum the provider checked, and the object is
then verified by streaming it back; DeleteObjects always carries Content-MD5; a 403 on the
"is it there already?" HEAD (a key without s3:ListBucket) means "cannot tell".
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import math
import os
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from wpbackup.backup.children import stopping
from wpbackup.errors import BackupError

MIB = 1 << 20
DEFAULT_PART = 8 * MIB
MAX_PARTS = 10000
CONCURRENCY = 8  # parts are streamed from the file, so this costs sockets, not memory
_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})(?:-(\d+))?"?$')


def _https_crc32(settings) -> bool:
    endpoint = settings.s3_endpoint_url or "https://"
    return settings.s3_checksum == "crc32" and endpoint.lower().startswith("https://")


_clients: dict[tuple, object] = {}
_clients_lock = threading.Lock()


def make_client(settings):
    """A boto3 S3 client that works with S3-compatible providers (checksums when required).

    One per configuration and process: building a client parses botocore's S3 model (0.4 s
    of CPU here, per site otherwise), and a client is safe to share between threads."""
    key = (settings.s3_endpoint_url, settings.s3_region, settings.s3_max_attempts, settings.s3_checksum,
           settings.s3_access_key_id, settings.s3_secret_access_key)
    with _clients_lock:
        if key not in _clients:
            _clients[key] = _new_client(settings)
        return _clients[key]


def _new_client(settings):
    config = Config(
        region_name=settings.s3_region,
        retries={"max_attempts": settings.s3_max_attempts, "mode": "standard"},
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        s3={"addressing_style": "path" if settings.s3_endpoint_url else "auto",
            # botocore leaves the payload unsigned over HTTPS only when Content-MD5 is sent; with
            # S3_CHECKSUM=crc32 the signed CRC32 header covers the body, so skip that SHA-256 pass.
            **({"payload_signing_enabled": False} if _https_crc32(settings) else {})},
        connect_timeout=10,
        read_timeout=120,
        max_pool_connections=2 * CONCURRENCY,  # two sites may upload at once (doit's two workers)
    )
    kwargs = {}
    if settings.s3_access_key_id and settings.s3_secret_access_key:
        kwargs = {"aws_access_key_id": settings.s3_access_key_id,
                  "aws_secret_access_key": settings.s3_secret_access_key}
    client = boto3.session.Session().client("s3", endpoint_url=settings.s3_endpoint_url, config=config, **kwargs)
    client.meta.events.register("before-call.s3.DeleteObjects", _delete_content_md5)
    return client


def _delete_content_md5(params: dict, **_) -> None:
    """Content-MD5 on every DeleteObjects: older MinIO, Ceph RGW and others refuse the request
    without it, and botocore (since 1.36, even with ``when_required``) sends only a CRC32."""
    body = params.get("body")
    headers = params.setdefault("headers", {})
    if isinstance(body, str):
        body = body.encode()
    if isinstance(body, bytes) and not any(name.lower() == "content-md5" for name in headers):
        headers["Content-MD5"] = _b64(_md5(body))


def object_key(prefix: str | None, server_id: str, stamp: str, name: str) -> str:
    """[S3_PREFIX/]SERVER_ID/YYYY/MM/DD/NAME, dated by the archive's UTC stamp."""
    date = f"{stamp[0:4]}/{stamp[4:6]}/{stamp[6:8]}"
    return "/".join(part for part in (prefix, server_id, date, name) if part)


def server_prefix(prefix: str | None, server_id: str) -> str:
    """[S3_PREFIX/]SERVER_ID/: everything of this server's under the bucket, and nothing of
    another's (the closing "/" keeps web-1 out of web-10)."""
    return "/".join(part for part in (prefix, server_id) if part) + "/"


def describe(exc: Exception, endpoint: str | None, bucket: str) -> BackupError:
    """One line for an S3 failure (boto's messages carry no secret)."""
    where = f"{endpoint or 'AWS S3'} bucket {bucket}"
    if isinstance(exc, NoCredentialsError):
        return BackupError(f"no S3 credentials: set S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY ({where})")
    if isinstance(exc, ClientError):
        err = exc.response.get("Error", {})
        code = err.get("Code", "?")
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied", "403"):
            return BackupError(f"S3 refused the credentials or access ({code}) at {where}")
        if code in ("NoSuchBucket", "404") and "bucket" in str(err.get("Message", "")).lower():
            return BackupError(f"S3 bucket does not exist: {where}")
        if code in ("BadDigest", "InvalidDigest"):
            return BackupError(f"S3 received a part that does not match its checksum ({code}) at {where}: altered on "
                               "the way, or the local archive changed after it was written (check it with "
                               "sha256sum -c on its .sha256 file)")
        return BackupError(f"S3 error {code} at {where}: {err.get('Message', exc)}")
    return BackupError(f"S3 unreachable at {where}: {exc}")


def part_size_for(size: int, configured_mb: int = 0) -> int:
    """Parts of at least 8 MiB (or S3_PART_SIZE_MB), growing so no upload needs >10,000."""
    base = configured_mb * MIB if configured_mb else DEFAULT_PART
    needed = math.ceil(size / (MAX_PARTS - 1)) if size else base
    return max(base, math.ceil(needed / MIB) * MIB)


def _md5(data: bytes) -> bytes:
    return hashlib.md5(data, usedforsecurity=False).digest()


CHECKSUMS = ("none", "crc32")


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


class ArchiveChanged(BackupError):
    """A part's bytes on disk differ from the archive as written: the upload cannot succeed."""


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


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def abort_upload(client, bucket: str, key: str, upload_id: str) -> None:
    """Abort one multipart upload; an already finished or aborted one is fine, and so is one
    in a bucket that no longer exists (nothing left there to bill)."""
    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as exc:
        if _code(exc) not in ("NoSuchUpload", "404", "NoSuchBucket"):
            raise


def recorded_upload(state_path: Path) -> tuple[str, str] | None:
    """(key, UploadId) of the multipart upload a state file records, if any."""
    data = _State(state_path).data
    return (data["key"], data["upload_id"]) if data.get("upload_id") and data.get("key") else None


#: pending-aborts.json is rewritten by one site's start and another site's upload thread
_pending_lock = threading.Lock()


def remember_abort(pending: Path, key: str, upload_id: str, bucket: str | None = None) -> None:
    """Keep an upload that could not be aborted now, so a later run aborts it: [key, id] in
    the current bucket, or [key, id, bucket] for one left in a bucket no longer configured."""
    with _pending_lock:
        _remember(pending, [key, upload_id, bucket] if bucket else [key, upload_id])


def _remember(pending: Path, item: list) -> None:
    try:
        items = json.loads(pending.read_text())
    except (OSError, ValueError):
        items = []
    if item not in items:
        items.append(item)
    tmp = pending.with_name(pending.name + ".tmp")
    tmp.write_text(json.dumps(items))
    os.replace(tmp, pending)


def retry_aborts(client, bucket: str, pending: Path) -> int:
    """Abort the uploads left pending by earlier runs; returns how many are still pending."""
    with _pending_lock:
        return _retry(client, bucket, pending)


def _retry(client, bucket: str, pending: Path) -> int:
    try:
        items = json.loads(pending.read_text())
    except (OSError, ValueError):
        return 0
    left = []
    for item in items:
        key, upload_id, where = (*item, bucket)[:3]
        try:
            abort_upload(client, where, key, upload_id)
        except (ClientError, BotoCoreError):
            left.append(item)
    if left:
        pending.write_text(json.dumps(left))
    else:
        pending.unlink(missing_ok=True)
    return len(left)


@dataclass
class Swept:
    """What a sweep of old multipart uploads did: how many it aborted, the keys it could not
    abort, and why it could not list them at all (``denied``, e.g. AccessDenied)."""
    aborted: int = 0
    failed: list[str] = field(default_factory=list)
    denied: str = ""


def sweep_uploads(client, bucket: str, prefix: str, before: datetime, keep: set[str]) -> Swept:
    """Abort the multipart uploads under ``prefix`` initiated before ``before`` whose UploadId
    is not in ``keep`` (the ones an open run will resume).

    ``prefix`` ends with "/", so "web-1/" never reaches "web-10/". The uploads are listed first
    and aborted after, so the listing's markers do not move under it. A key not allowed to
    list uploads (s3:ListBucketMultipartUploads) is reported in ``denied``; the caller goes on."""
    found = []
    try:
        for page in client.get_paginator("list_multipart_uploads").paginate(Bucket=bucket, Prefix=prefix):
            found += page.get("Uploads", [])
    except ClientError as exc:
        if _code(exc) in ("AccessDenied", "403", "NotImplemented", "MethodNotAllowed"):
            return Swept(denied=_code(exc))
        raise
    swept = Swept()
    for upload in found:
        key, upload_id, initiated = upload.get("Key", ""), upload.get("UploadId"), upload.get("Initiated")
        if not key.startswith(prefix) or not upload_id or upload_id in keep or not initiated or initiated >= before:
            continue
        try:
            abort_upload(client, bucket, key, upload_id)
            swept.aborted += 1
        except (ClientError, BotoCoreError):
            swept.failed.append(key)
    return swept


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


def _recorded(state: _State, bucket: str) -> dict:
    """Where and what the state file's upload was for (files from before the bucket was
    recorded meant the bucket configured now)."""
    data = state.data
    return {"bucket": data.get("bucket") or bucket, "key": data.get("key"), "size": data.get("size"),
            "sha256": data.get("sha256"), "part_size": data.get("part_size"),
            "checksum": data.get("checksum", "none")}


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
    if (old_bucket, old_key) == (bucket, key):  # same place, another archive, part size or mode
        return ""
    return (f"the unfinished upload at s3://{old_bucket}/{old_key} (the bucket or key prefix changed "
            f"since) {outcome}; uploading afresh")


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


def verify_object(client, bucket: str, key: str, size: int, sha256: str, etag: str | None,
                  crc32: str | None = None, composite: bool = False) -> str:
    """Check the stored object: size, our sha256 metadata, and the content itself: through its
    ETag (an MD5), or the provider's CRC32 of it (``crc32``, base64; S3's composite for a
    multipart upload), or else by streaming it back and hashing it."""
    head = client.head_object(Bucket=bucket, Key=key, **({"ChecksumMode": "ENABLED"} if crc32 else {}))
    if head["ContentLength"] != size:
        raise BackupError(f"S3 object {key} has {head['ContentLength']} bytes, expected {size}")
    if head.get("Metadata", {}).get("sha256") != sha256:
        raise BackupError(f"S3 object {key} carries another sha256 than the local archive")
    stored = head.get("ETag", "").strip('"')
    if etag and stored == etag:
        return "etag"
    stored_crc = head.get("ChecksumCRC32")
    if composite and head.get("ChecksumType") == "FULL_OBJECT":
        stored_crc = None  # not the composite we can compute from the parts: check by download
    if crc32 and stored_crc:  # AWS writes a multipart composite as "VALUE-N"
        if stored_crc.split("-")[0] != crc32:
            raise BackupError(f"S3 object {key}: the provider's CRC32 does not match the local archive")
        return "crc32"
    digest = hashlib.sha256()
    body = client.get_object(Bucket=bucket, Key=key)["Body"]
    for chunk in body.iter_chunks(MIB):
        digest.update(chunk)
    if digest.hexdigest() != sha256:
        raise BackupError(f"S3 object {key}: content does not match the local archive (sha256)")
    return "download"


def upload_archive(client, bucket: str, key: str, path: Path, sha256: str, metadata: dict[str, str],
                   state_path: Path, *, storage_class: str | None = None, part_size: int | None = None,
                   checksum: str = "none", part_sums: list[str] | None = None, pending: Path | None = None,
                   progress: Callable[[int], None] | None = None) -> Uploaded:
    """Upload ``path`` to ``key`` (resuming a cut-off multipart upload) and verify it.

    The default (``checksum="none"``) sends each part with Content-MD5, which every
    S3-compatible provider checks, and verifies the ETag (MD5 of the part MD5s). With
    ``checksum="crc32"`` each part carries S3's additional checksum (``x-amz-checksum-crc32``)
    instead, and the provider's composite CRC32 of the object is verified: for providers that
    accept these headers (AWS S3), it saves the MD5 pass, the slowest of the hashes.

    ``part_sums`` (hex, one per part of ``part_size``: MD5s, or CRC32s in CRC32 mode) are the
    parts' checksums as computed while the archive was written: sent as they are, so the
    provider checks what it receives against the archive as written, and no part is read
    twice. An archive no longer as written is refused (ArchiveChanged) and its multipart upload
    aborted; one that cannot be aborted now is kept in ``pending`` for a later run.

    A part whose ETag is not its MD5 (SSE-KMS, SSE-C) is accepted when its bytes on disk still
    match the MD5 the provider checked; the object is then verified by download. A recorded
    upload this one will not resume (other archive, part size or mode, or another bucket or
    key: S3_BUCKET/S3_PREFIX changed) is aborted where it was started, and ``moved`` says so."""
    if checksum not in CHECKSUMS:
        raise BackupError(f"unknown S3 checksum mode {checksum!r} (one of {', '.join(CHECKSUMS)})")
    crc = checksum == "crc32"
    size = path.stat().st_size
    part_size = part_size or part_size_for(size)
    count = math.ceil(size / part_size)
    if part_sums is not None and len(part_sums) != count:
        raise ArchiveChanged(f"{path} is {size} bytes, not the size it was written with "
                             f"(check it with sha256sum -c {path.name}.sha256)")
    written = [bytes.fromhex(h) for h in part_sums] if part_sums else None
    extra = {"Metadata": {**metadata, "sha256": sha256}, "ContentType": "application/zstd"}
    if storage_class:
        extra["StorageClass"] = storage_class

    state = _State(state_path)
    wanted = {"bucket": bucket, "key": key, "size": size, "sha256": sha256, "part_size": part_size,
              "checksum": checksum}
    same = size > part_size and _recorded(state, bucket) == wanted
    moved = "" if same else _drop_recorded(client, state, bucket, key, pending)

    head = _existing(client, bucket, key)
    if head and head.get("Metadata", {}).get("sha256") == sha256 and head["ContentLength"] == size:
        how = verify_object(client, bucket, key, size, sha256, None)
        return Uploaded(key, size, head["ETag"].strip('"'), how, 0, moved=moved)

    if size <= part_size:
        with open(path, "rb") as handle:
            data = handle.read()
        if crc:
            md5, crc32 = None, _b64(written[0] if written else binascii.crc32(data).to_bytes(4, "big"))
            more = {"ChecksumAlgorithm": "CRC32", "ChecksumCRC32": crc32}
        else:
            md5, crc32 = written[0] if written else _md5(data), None
            more = {"ContentMD5": _b64(md5)}
        response = client.put_object(Bucket=bucket, Key=key, Body=data, **more, **extra)
        del data
        if progress:
            progress(size)
        how = verify_object(client, bucket, key, size, sha256, md5.hex() if md5 else None, crc32)
        return Uploaded(key, size, response.get("ETag", "").strip('"'), how, 1, moved=moved)

    done: dict[int, str] = {}
    upload_id = state.data.get("upload_id") if same else None
    if upload_id:
        try:
            server = _server_parts(client, bucket, key, upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") not in ("NoSuchUpload", "404"):
                raise
            upload_id = None
        else:
            mine, sums = state.data.get("parts", {}), state.data.get("crc32", {})
            for number, (etag, stored) in server.items():
                expected = min(part_size, size - (number - 1) * part_size)
                if mine.get(str(number)) == etag and stored == expected and (not crc or str(number) in sums):
                    done[number] = etag
    _abort_others(client, bucket, key, upload_id)
    if not upload_id:
        algorithm = {"ChecksumAlgorithm": "CRC32", "ChecksumType": "COMPOSITE"} if crc else {}
        upload_id = client.create_multipart_upload(Bucket=bucket, Key=key, **algorithm, **extra)["UploadId"]
        done = {}
    sums = state.data.get("crc32", {}) if crc else {}
    state.data = {**wanted, "upload_id": upload_id, "parts": {str(n): e for n, e in done.items()},
                  "crc32": {str(n): sums[str(n)] for n in done if str(n) in sums},
                  "etags_not_md5": bool(done and state.data.get("etags_not_md5"))}
    state.save()
    resumed = len(done)
    if progress and done:
        progress(sum(min(part_size, size - (n - 1) * part_size) for n in done))

    fd = os.open(path, os.O_RDONLY)

    failed, changed = threading.Event(), threading.Event()

    def send(number: int) -> None:
        if failed.is_set() or stopping.is_set():
            return
        try:
            _send(number)
        except BaseException as exc:
            failed.set()  # the parts still queued are not sent; the next run resumes
            if isinstance(exc, ArchiveChanged):
                changed.set()
            raise

    def _send(number: int) -> None:
        length = min(part_size, size - (number - 1) * part_size)
        body = PartReader(fd, (number - 1) * part_size, length)
        if written:
            md5, crc32 = (None, written[number - 1]) if crc else (written[number - 1], None)
        else:
            md5, crc32 = body.digests(crc)
        more = {"ChecksumCRC32": _b64(crc32)} if crc32 else {"ContentMD5": _b64(md5)}
        try:
            response = client.upload_part(Bucket=bucket, Key=key, UploadId=upload_id, PartNumber=number,
                                          Body=body, ContentLength=length, **more)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if written and code in ("BadDigest", "InvalidDigest"):
                raise ArchiveChanged(f"S3 refused part {number} of {key} ({code}): its bytes do not match the checksum "
                                     f"taken when the archive was written; {path} has changed since, or the bytes "
                                     f"were altered on the way (check it with sha256sum -c {path.name}.sha256); "
                                     "the upload was aborted") from None
            raise
        etag = response["ETag"].strip('"')
        plain = not md5 or etag == md5.hex()
        if not plain and written and body.digests()[0] != md5:
            raise ArchiveChanged(f"S3 stored part {number} of {key} with another checksum: {path} no longer "
                                 f"holds the bytes written (check it with sha256sum -c {path.name}.sha256); "
                                 "the upload was aborted")
        # Otherwise the provider took the part after checking its Content-MD5, and its ETag is
        # simply no MD5 (SSE-KMS, SSE-C): the finished object is then verified by reading it back.
        with state.lock:
            if not plain:
                state.data["etags_not_md5"] = True
            state.data["parts"][str(number)] = etag
            if crc32:
                state.data["crc32"][str(number)] = _b64(crc32)
        state.save(soon=True)
        if progress:
            progress(length)

    pool = ThreadPoolExecutor(max_workers=CONCURRENCY)
    try:
        futures = [pool.submit(send, n) for n in range(1, count + 1) if n not in done]
        for future in futures:
            try:
                future.result()
            except BaseException:
                failed.set()
                raise
        if stopping.is_set():
            raise BackupError("stopped by a signal; the next run resumes the upload")
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        os.close(fd)
        if changed.is_set():  # no resuming this one: its parts came from a damaged archive
            try:
                abort_upload(client, bucket, key, upload_id)
            except (ClientError, BotoCoreError):
                if pending is None:
                    raise
                remember_abort(pending, key, upload_id)  # a later run aborts it
            state_path.unlink(missing_ok=True)
        else:
            state.save()
    parts = [{"PartNumber": n, "ETag": f'"{state.data["parts"][str(n)]}"',
              **({"ChecksumCRC32": state.data["crc32"][str(n)]} if crc else {})} for n in range(1, count + 1)]
    assembling = time.monotonic()
    response = client.complete_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id,
                                                MultipartUpload={"Parts": parts})
    assembled = time.monotonic() - assembling
    if crc:  # S3's composite: the CRC32 of the parts' CRC32s, in order
        expected, crc_expected = None, _b64(binascii.crc32(b"".join(
            base64.b64decode(state.data["crc32"][str(n)]) for n in range(1, count + 1))).to_bytes(4, "big"))
    else:
        md5s = [bytes.fromhex(p["ETag"].strip('"')) if _MD5_ETAG.match(p["ETag"]) else b"" for p in parts]
        plain = all(md5s) and not state.data.get("etags_not_md5")  # else: verified by download
        expected, crc_expected = (f"{_md5(b''.join(md5s)).hex()}-{count}" if plain else None), None
    how = verify_object(client, bucket, key, size, sha256, expected, crc_expected, composite=crc)
    state_path.unlink(missing_ok=True)
    return Uploaded(key, size, response.get("ETag", "").strip('"'), how, count, resumed, round(assembled, 2),
                    moved)
