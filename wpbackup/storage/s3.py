"""The S3 client and what every S3 operation of ours shares: keys, one-line errors, aborting
and sweeping unfinished multipart uploads, and checking a stored object.

    client (one per process) -> keys [S3_PREFIX/]SERVER_ID/YYYY/MM/DD/NAME
    verify_object: size, sha256 metadata, then the ETag, the provider's CRC32, or a download

The upload itself (plan, resume, send or copy parts, complete) is upload.py. Uploads of ours
that are no longer wanted are aborted, never left to bill forever: the one a state file names
when the bucket or key moved, and (``sweep_uploads``) any upload under this server's prefix
older than STALE_RUN_HOURS that no open run will resume.

Providers as they are: part ETags that are no MD5s (SSE-KMS, SSE-C) are accepted once the
part read back from disk still matches the checksum the provider checked, and the object is
then verified by streaming it back; DeleteObjects always carries Content-MD5; a 403 on the
"is it there already?" HEAD (a key without s3:ListBucket) means "cannot tell".
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import os
import re
import threading
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

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
    import boto3  # 80 ms: only a command that talks to S3 pays it
    from botocore.config import Config

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
