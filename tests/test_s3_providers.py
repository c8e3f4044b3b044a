"""S3-compatible providers as they are, each imitated by the test proxy in front of moto:
ETags that are no MD5s (SSE-KMS, SSE-C), DeleteObjects refused without Content-MD5, a 403 for
the HEAD of a missing key (no s3:ListBucket), no right to list multipart uploads; and what a
backup leaves on S3: the sweep of this server's old multipart uploads, and an upload whose
bucket or prefix changed while its run was open."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import datetime, timedelta, timezone
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import boto3
import pytest
from botocore.config import Config
from botocore.exceptions import ClientError

from wpbackup.backup import steps
from wpbackup.config.settings import Settings
from wpbackup.retention.prune import delete_objects
from wpbackup.storage.s3 import make_client, remember_abort, retry_aborts
from wpbackup.storage.upload import upload_archive

from .conftest import make_site

PART = 5 << 20
OLD = timedelta(hours=30)  # older than the default STALE_RUN_HOURS=20


def _big_site(install, s3, proxy, wordpress, tmp_path, big_mb: int = 22) -> None:
    install.use_s3(s3)
    install.env.update(S3_ENDPOINT_URL=proxy.url, S3_PART_SIZE_MB="5")
    install.sites.append({"name": "big", "path": str(make_site(tmp_path, wordpress, big_mb=big_mb))})


def _uploads(s3, bucket: str | None = None) -> list[dict]:
    return s3.s3.list_multipart_uploads(Bucket=bucket or s3.bucket).get("Uploads", [])


def _count(install, status: str, like: str) -> int:
    return len(install.rows("SELECT id FROM backup_log WHERE status = ? AND details LIKE ?", status, like))


def _settings(tmp_path: Path, url: str, **more) -> Settings:
    return Settings(**{"env_path": tmp_path / ".env", "server_id": "web-1", "sites_file": tmp_path / "sites.json",
                       "db_path": tmp_path / "backups.db", "backup_dir": tmp_path / "backups", "s3_endpoint_url": url,
                       "s3_bucket": "wp-backups", "s3_access_key_id": "testing",
                       "s3_secret_access_key": "testing-secret-key-123", **more})


def _plain_client(url: str):
    """A client as botocore makes it (CRC32 only on DeleteObjects), without our handler."""
    return boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id="testing",
                        aws_secret_access_key="testing",
                        config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required"))


def _start_upload(proxy, key: str, age: timedelta = OLD) -> str:
    """An unfinished multipart upload created through the proxy, dated ``age`` ago."""
    upload_id = _plain_client(proxy.url).create_multipart_upload(Bucket="wp-backups", Key=key)["UploadId"]
    proxy.initiated[upload_id] = datetime.now(timezone.utc) - age
    return upload_id


# --- part ETags that are no MD5s (SSE-KMS, SSE-C) ---------------------------------------------

@pytest.mark.parametrize("provider_checks", [False, True])
def test_sse_kms_multipart_is_accepted_and_verified_by_reading_it_back(install, wordpress, s3, s3_proxy, tmp_path,
                                                                      provider_checks):
    s3_proxy.etag_not_md5, s3_proxy.check_sums = True, provider_checks
    _big_site(install, s3, s3_proxy, wordpress, tmp_path)
    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "with another checksum" not in out and _count(install, "INFO", "%verified (download)%") == 1
    [archive] = install.archives()
    [row] = install.rows("SELECT filename FROM s3_archives")
    body = s3.s3.get_object(Bucket=s3.bucket, Key=row["filename"])["Body"].read()
    assert hashlib.sha256(body).digest() == hashlib.sha256(archive.read_bytes()).digest()
    assert len({n for n, _ in s3_proxy.part_headers}) >= 4  # a real multipart upload
    reads = [path for method, path, _ in s3_proxy.requests if method == "GET" and path.endswith(archive.name)]
    assert reads  # the object itself was streamed back through the provider
    seen = make_client(_settings(tmp_path, s3_proxy.url)).head_object(Bucket=s3.bucket, Key=row["filename"])
    assert seen["ETag"] != s3.s3.head_object(Bucket=s3.bucket, Key=row["filename"])["ETag"]  # imitated indeed
    assert _uploads(s3) == []


def test_sse_kms_upload_cut_off_resumes_from_the_stored_parts(install, wordpress, s3, s3_proxy, tmp_path):
    """ListParts shows the same (non-MD5) ETags UploadPart answered: the parts are kept."""
    s3_proxy.etag_not_md5 = True
    _big_site(install, s3, s3_proxy, wordpress, tmp_path)
    s3_proxy.mode, s3_proxy.after_parts = "refuse", 2
    assert install.doit("backup").returncode != 0
    [state] = (install.backup_dir / ".work").glob("big/*/upload-state.json")
    assert json.loads(state.read_text())["etags_not_md5"] is True
    s3_proxy.mode = "pass"
    second = install.doit("backup")
    assert second.returncode == 0, second.stdout + second.stderr
    assert _count(install, "INFO", "%verified (download), 2 parts resumed%") == 1
    assert len(install.rows("SELECT * FROM s3_archives")) == 1 and _uploads(s3) == []


@pytest.mark.parametrize("provider_checks", [False, True])
def test_sse_kms_still_refuses_an_archive_changed_on_disk(install, wordpress, s3, s3_proxy, tmp_path,
                                                          provider_checks):
    from .conftest import dumped_and_tarred

    s3_proxy.etag_not_md5, s3_proxy.check_sums = True, provider_checks
    _big_site(install, s3, s3_proxy, wordpress, tmp_path)
    settings, site, run = dumped_and_tarred(install, "big")
    path = settings.backup_dir / steps.compress_stage(settings, site, run)["archive"]
    with open(path, "r+b") as handle:  # a bit flipped on disk in the third part
        handle.seek(2 * PART + 77)
        byte = handle.read(1)
        handle.seek(2 * PART + 77)
        handle.write(bytes([byte[0] ^ 0x01]))
    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert ("BadDigest): its bytes do not match" if provider_checks else "no longer holds the bytes written") in out
    assert install.rows("SELECT * FROM s3_archives") == []
    assert s3.s3.list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0 and _uploads(s3) == []


def test_sse_kms_single_put_is_verified_by_download(s3, s3_proxy, tmp_path):
    s3_proxy.etag_not_md5 = True
    path = tmp_path / "a.tar.zst"
    path.write_bytes(bytes(range(256)) * 40)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    client = make_client(_settings(tmp_path, s3_proxy.url))
    done = upload_archive(client, s3.bucket, "web-1/a.tar.zst", path, sha, {}, tmp_path / "state.json")
    assert (done.parts, done.verified_by) == (1, "download")


# --- DeleteObjects with Content-MD5 --------------------------------------------------------

def test_delete_objects_carries_content_md5(s3, s3_proxy, tmp_path):
    s3_proxy.require_delete_md5 = True
    keys = [f"web-1/2026/11/0{d}/blog-backup-2026110{d}-030000.tar.zst" for d in range(1, 4)]
    for key in keys:
        s3.s3.put_object(Bucket=s3.bucket, Key=key, Body=b"x")
    with pytest.raises(ClientError, match="MissingContentMD5"):  # what botocore alone sends is refused
        _plain_client(s3_proxy.url).delete_objects(Bucket=s3.bucket, Delete={"Objects": [{"Key": keys[0]}]})
    done, errors = delete_objects(make_client(_settings(tmp_path, s3_proxy.url)), s3.bucket, keys)
    assert (sorted(done), errors) == (sorted(keys), [])
    assert s3.s3.list_objects_v2(Bucket=s3.bucket).get("KeyCount") == 0
    [(_, _, headers)] = [r for r in s3_proxy.requests if r[0] == "POST" and "delete" in r[1] and
                         "content-md5" in r[2]]
    assert base64.b64decode(headers["content-md5"])  # and the proxy found it matching the body


def test_prune_deletes_through_a_provider_that_wants_content_md5(install, s3, s3_proxy):
    from wpbackup.fleet import catalog

    s3_proxy.require_delete_md5 = s3_proxy.check_sums = True
    install.use_s3(s3)
    install.env.update(S3_ENDPOINT_URL=s3_proxy.url, KEEP_DAILY="2", KEEP_WEEKLY="0", KEEP_MONTHLY="0")
    names = [f"blog-backup-2026110{d}-030000.tar.zst" for d in range(1, 6)]
    for name in names:
        key = f"web-1/2026/11/{name[18:20]}/{name}"
        s3.s3.put_object(Bucket=s3.bucket, Key=key, Body=b"x")
        catalog.record_upload(install.db_path, key=key, endpoint=s3_proxy.url, bucket=s3.bucket, size=1,
                              sha256="0" * 64, site="blog", server_id="web-1", stamp=name[12:27],
                              archive_name=name, uploaded_at="2026-11-06 00:00:00")
    result = install.doit("prune")
    assert result.returncode == 0, result.stdout + result.stderr
    left = {o["Key"].rsplit("/", 1)[1] for o in s3.s3.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert left == set(names[3:])
    assert any(m == "POST" and "delete" in p and "content-md5" in h for m, p, h in s3_proxy.requests)


# --- keys without s3:ListBucket: HEAD of a missing key answers 403 ---------------------------

@pytest.mark.parametrize("big_mb", [0, 22])
def test_a_403_on_the_first_head_means_cannot_tell(install, wordpress, s3, s3_proxy, tmp_path, big_mb):
    s3_proxy.head_missing_403 = True
    _big_site(install, s3, s3_proxy, wordpress, tmp_path, big_mb)
    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "refused the credentials" not in out and len(install.rows("SELECT * FROM s3_archives")) == 1
    with pytest.raises(ClientError) as missing:  # the proxy answers a missing key's HEAD with 403 indeed
        _plain_client(s3_proxy.url).head_object(Bucket=s3.bucket, Key="web-1/none")
    assert missing.value.response["Error"]["Code"] == "403"


def test_credentials_really_refused_still_fail_on_the_upload(install, wordpress, s3, s3_proxy, tmp_path):
    s3_proxy.head_missing_403 = s3_proxy.deny_writes = True
    _big_site(install, s3, s3_proxy, wordpress, tmp_path, 0)
    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert "S3 refused the credentials or access (AccessDenied)" in out
    assert install.rows("SELECT * FROM s3_archives") == []


# --- the sweep of this server's old multipart uploads ----------------------------------------

def test_the_sweep_aborts_only_this_servers_old_uploads_no_open_run_resumes(install, wordpress, s3, s3_proxy,
                                                                             tmp_path):
    _big_site(install, s3, s3_proxy, wordpress, tmp_path)
    s3_proxy.mode, s3_proxy.after_parts = "refuse", 2
    assert install.doit("backup").returncode != 0  # an open run, its upload recorded
    [resumable] = _uploads(s3)
    s3_proxy.mode = "pass"
    gone = _start_upload(s3_proxy, "web-1/2026/11/01/gone-backup-20261101-030000.tar.zst")  # no state left
    killed = _start_upload(s3_proxy, "web-1/2026/11/02/big-backup-20261102-030000.tar.zst")  # before its state
    young = _start_upload(s3_proxy, "web-1/2026/11/30/new-backup-20261130-030000.tar.zst", timedelta(hours=1))
    other = _start_upload(s3_proxy, "web-2/2026/11/01/blog-backup-20261101-030000.tar.zst")
    sibling = _start_upload(s3_proxy, "web-10/2026/11/01/blog-backup-20261101-030000.tar.zst")
    for upload_id in list(s3_proxy.initiated):
        if upload_id != young:
            s3_proxy.initiated[upload_id] = datetime.now(timezone.utc) - OLD  # the open run's too

    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert {u["UploadId"] for u in _uploads(s3)} == {young, other, sibling}
    assert _count(install, "INFO", "%2 parts resumed%") == 1  # the open run's upload was kept
    [line] = install.rows("SELECT * FROM backup_log WHERE details LIKE 'aborted % unfinished multipart%'")
    assert line["details"].startswith(f"aborted 2 unfinished multipart uploads under s3://{s3.bucket}/web-1/ "
                                      "older than STALE_RUN_HOURS=20")
    assert line["site_name"] is None and line["status"] == "INFO"
    assert resumable["UploadId"] not in {gone, killed}


def test_the_sweep_keeps_to_the_configured_prefix(s3, s3_proxy, tmp_path):
    ours = _start_upload(s3_proxy, "nightly/web-1/2026/11/01/blog-backup-20261101-030000.tar.zst")
    unprefixed = _start_upload(s3_proxy, "web-1/2026/11/01/blog-backup-20261101-030000.tar.zst")
    elsewhere = _start_upload(s3_proxy, "nightly/web-2/2026/11/01/blog-backup-20261101-030000.tar.zst")
    settings = _settings(tmp_path, s3_proxy.url, s3_prefix="nightly")
    steps.sweep_old_uploads(settings, make_client(settings))
    assert {u["UploadId"] for u in _uploads(s3)} == {unprefixed, elsewhere}
    steps.sweep_old_uploads(settings, make_client(settings))  # once per process: no second listing
    listings = [parse_qs(urlsplit(p).query) for m, p, _ in s3_proxy.requests if m == "GET" and "uploads" in p]
    assert len(listings) == 1 and listings[0]["prefix"] == ["nightly/web-1/"]
    assert ours not in {u["UploadId"] for u in _uploads(s3)}


def test_without_list_multipart_uploads_the_sweep_is_one_warning(install, wordpress, s3, s3_proxy, tmp_path):
    s3_proxy.deny_list_uploads = True
    _big_site(install, s3, s3_proxy, wordpress, tmp_path)
    stale = _start_upload(s3_proxy, "web-1/2026/11/01/gone-backup-20261101-030000.tar.zst")
    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert out.count("cannot list the unfinished multipart uploads under") == 1
    assert "AccessDenied" in out and "docs/s3-storage.md" in out
    assert len(install.rows("SELECT * FROM s3_archives")) == 1
    assert [u["UploadId"] for u in _uploads(s3)] == [stale]  # nothing could be swept


# --- an open run's upload when S3_BUCKET or S3_PREFIX changed ---------------------------------

@pytest.mark.parametrize("setting, value", [("S3_PREFIX", "moved"), ("S3_BUCKET", "wp-backups-new")])
def test_an_upload_left_where_the_settings_pointed_before_is_aborted_there(install, wordpress, s3, s3_proxy,
                                                                         tmp_path, setting, value):
    s3.s3.create_bucket(Bucket="wp-backups-new")
    _big_site(install, s3, s3_proxy, wordpress, tmp_path)
    s3_proxy.mode, s3_proxy.after_parts = "refuse", 2
    assert install.doit("backup").returncode != 0
    [old] = _uploads(s3)
    s3_proxy.mode = "pass"
    install.env[setting] = value
    result = install.doit("backup")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert _uploads(s3) == [] and _uploads(s3, "wp-backups-new") == []
    assert _count(install, "INFO", f"the unfinished upload at s3://wp-backups/{old['Key']} (the bucket or key "
                                   "prefix changed since) was aborted; uploading afresh") == 1
    assert _count(install, "INFO", "%parts resumed%") == 0
    [row] = install.rows("SELECT s3_bucket, filename FROM s3_archives")
    bucket = value if setting == "S3_BUCKET" else s3.bucket
    assert row["s3_bucket"] == bucket and row["filename"] == (f"moved/{old['Key']}" if setting == "S3_PREFIX"
                                                               else old["Key"])
    s3.s3.head_object(Bucket=bucket, Key=row["filename"])


def test_an_old_bucket_unreachable_now_is_remembered_and_aborted_later(install, wordpress, s3, s3_proxy, tmp_path):
    s3.s3.create_bucket(Bucket="wp-backups-new")
    _big_site(install, s3, s3_proxy, wordpress, tmp_path)
    install.env["S3_MAX_ATTEMPTS"] = "1"
    s3_proxy.mode, s3_proxy.after_parts = "refuse", 2
    assert install.doit("backup").returncode != 0
    [old] = _uploads(s3)
    s3_proxy.mode, s3_proxy.refuse_delete = "pass", True
    install.env["S3_BUCKET"] = "wp-backups-new"
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _count(install, "INFO", "%the bucket or key prefix changed since) could not be aborted now%") == 1
    pending = install.backup_dir / ".work" / "pending-aborts.json"
    assert json.loads(pending.read_text()) == [[old["Key"], old["UploadId"], "wp-backups"]]
    assert [u["UploadId"] for u in _uploads(s3)] == [old["UploadId"]]
    s3_proxy.refuse_delete = False  # the provider answers again: the next upload aborts it there
    settings = _settings(tmp_path, s3_proxy.url, s3_bucket="wp-backups-new")
    assert retry_aborts(make_client(settings), "wp-backups-new", pending) == 0
    assert _uploads(s3) == [] and not pending.exists()


def test_pending_aborts_of_two_forms_are_retried_in_their_buckets(s3, tmp_path):
    s3.s3.create_bucket(Bucket="wp-backups-old")
    here = s3.s3.create_multipart_upload(Bucket=s3.bucket, Key="web-1/a")["UploadId"]
    there = s3.s3.create_multipart_upload(Bucket="wp-backups-old", Key="web-1/b")["UploadId"]
    pending = tmp_path / "pending-aborts.json"
    remember_abort(pending, "web-1/a", here)
    remember_abort(pending, "web-1/b", there, "wp-backups-old")
    remember_abort(pending, "web-1/b", there, "wp-backups-old")  # once only
    assert json.loads(pending.read_text()) == [["web-1/a", here], ["web-1/b", there, "wp-backups-old"]]
    assert retry_aborts(s3.s3, s3.bucket, pending) == 0
    assert _uploads(s3) == [] and _uploads(s3, "wp-backups-old") == []


def test_only_uploads_of_runs_that_will_resume_are_spared(tmp_path):
    """An open run younger than STALE_RUN_HOURS, named by its run.json, keeps its upload; a
    stale one, a closed one, a folder run.json does not name, and one beside a damaged run.json
    do not (their runs are abandoned, never resumed)."""
    settings = _settings(tmp_path, "http://127.0.0.1:9")
    now = datetime.now(timezone.utc)

    def run(site: str, age: timedelta, state: object, named: bool = True) -> str:
        stamp = (now - age).strftime("%Y%m%d-%H%M%S")
        folder = settings.work_dir / site / stamp
        folder.mkdir(parents=True)
        upload_id = f"upload-of-{site}"
        (folder / "upload-state.json").write_text(json.dumps({"key": f"web-1/{site}", "upload_id": upload_id}))
        if isinstance(state, dict):
            state = json.dumps({"stamp": stamp if named else "20200101-000000", **state})
        (folder.parent / "run.json").write_text(state)
        return upload_id

    young = run("young", timedelta(hours=2), {"closed": False})
    run("stale", timedelta(hours=21), {"closed": False})
    run("closed", timedelta(hours=2), {"closed": True})
    run("unnamed", timedelta(hours=2), {"closed": False}, named=False)
    run("damaged", timedelta(hours=2), "{not json")
    assert steps.resumable_uploads(settings) == {young}


def test_the_documented_lifecycle_rule_is_accepted_as_written(s3, tmp_path):
    """The JSON and the aws CLI command in docs/s3-storage.md are what an operator pastes: the
    real CLI applies them to the S3 server as they stand."""
    import os
    import re
    import shlex
    import subprocess

    from .conftest import need

    need("aws")
    text = (Path(__file__).resolve().parent.parent / "docs" / "s3-storage.md").read_text()
    [block] = [b for b in re.findall(r"```json\n(.*?)```", text, re.S) if "AbortIncompleteMultipartUpload" in b]
    (tmp_path / "lifecycle.json").write_text(block)
    [shell] = [b for b in re.findall(r"```sh\n(.*?)```", text, re.S) if "put-bucket-lifecycle-configuration" in b]
    [put] = [line for line in shell.replace("\\\n", " ").splitlines() if "put-bucket-lifecycle" in line]
    command = [word.replace("BUCKET", s3.bucket) for word in shlex.split(put)] + ["--endpoint-url", s3.url]
    env = {**os.environ, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": "/dev/null",
           "AWS_SHARED_CREDENTIALS_FILE": "/dev/null"}
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    [rule] = s3.s3.get_bucket_lifecycle_configuration(Bucket=s3.bucket)["Rules"]
    assert rule["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7 and rule["Status"] == "Enabled"
    assert json.loads(block)["Rules"][0]["Filter"] == {"Prefix": ""}
