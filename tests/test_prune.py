"""Retention: GFS on S3 over a synthetic calendar, LOCAL_KEEP locally, other servers untouched."""

from __future__ import annotations

from datetime import date, timedelta

import pytest

from wpbackup.config.settings import load_settings
from wpbackup.fleet import catalog
from wpbackup.retention import local
from wpbackup.retention.retention import keep_reasons

from .conftest import Install

END = date(2026, 11, 25)  # a Wednesday
EXPECTED = {  # KEEP_DAILY=7, KEEP_WEEKLY=4, KEEP_MONTHLY=6, worked out by hand
    "2026-11-25", "2026-11-24", "2026-11-23", "2026-11-22", "2026-11-21", "2026-11-20", "2026-11-19",  # daily
    "2026-11-15", "2026-11-08",  # newest of the 3rd and 4th ISO week (22nd is already kept)
    "2026-10-31", "2026-09-30", "2026-08-31", "2026-07-31", "2026-06-30",  # newest of months 2-6
}


def _stamp(day: date) -> str:
    return day.strftime("%Y%m%d") + "-030000"


def test_gfs_rule_matches_the_hand_worked_calendar():
    stamps = [_stamp(END - timedelta(days=n)) for n in range(400)]
    kept = keep_reasons(stamps, 7, 4, 6)
    assert {f"{s[:4]}-{s[4:6]}-{s[6:8]}" for s in kept} == EXPECTED
    assert kept[_stamp(END)][0] == "newest"
    assert keep_reasons(stamps[-1:], 0, 0, 0) == {stamps[-1]: ["newest"]}  # never the last one


def test_prune_over_400_days_two_sites_two_servers(install, s3):
    install.use_s3(s3)
    install.env.update(KEEP_DAILY="7", KEEP_WEEKLY="4", KEEP_MONTHLY="6")
    install.sites = []
    install.write()
    for server in ("web-1", "web-2"):
        for site in ("blog", "shop"):
            for n in range(400):
                stamp = _stamp(END - timedelta(days=n))
                name = f"{site}-backup-{stamp}.tar.zst"
                key = f"{server}/{stamp[:4]}/{stamp[4:6]}/{stamp[6:8]}/{name}"
                s3.s3.put_object(Bucket=s3.bucket, Key=key, Body=b"x")
                catalog.record_upload(install.db_path, key=key, endpoint=s3.url, bucket=s3.bucket, size=1,
                                      sha256="0" * 64, site=site, server_id=server, stamp=stamp,
                                      archive_name=name, uploaded_at="2026-11-25 04:00:00")
    stray = "web-1/2026/11/25/handmade-upload.tar.zst"
    s3.s3.put_object(Bucket=s3.bucket, Key=stray, Body=b"x")

    def keys() -> set[str]:
        pages = s3.s3.get_paginator("list_objects_v2").paginate(Bucket=s3.bucket)
        return {o["Key"] for page in pages for o in page.get("Contents", [])}

    before = keys()
    dry = install.doit("prune", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "blog: S3 keep 14, would delete 386" in dry.stdout
    assert f"not in the catalog, left alone: s3://{s3.bucket}/{stray}" in dry.stdout
    assert "(newest, daily 1, weekly 1, monthly 1)" in dry.stdout
    assert keys() == before
    assert install.rows("SELECT * FROM s3_archives WHERE deleted_at IS NOT NULL") == []

    result = install.doit("prune")
    assert result.returncode == 0, result.stdout + result.stderr
    after = keys()
    for site in ("blog", "shop"):
        survivors = {k.rsplit("-backup-", 1)[1][:8] for k in after if k.startswith("web-1/") and f"/{site}-" in k}
        assert survivors == {d.replace("-", "") for d in EXPECTED}
        assert sum(1 for k in after if k.startswith("web-2/") and f"/{site}-" in k) == 400
    assert stray in after
    deleted = install.rows("SELECT server_id, COUNT(*) AS n FROM s3_archives WHERE deleted_at IS NOT NULL "
                           "GROUP BY server_id")
    assert [(r["server_id"], r["n"]) for r in deleted] == [("web-1", 2 * 386)]
    assert len(install.rows("SELECT * FROM backup_log WHERE details LIKE 'prune: deleted 386 %'")) == 2
    again = install.doit("prune")
    assert again.returncode == 0 and "blog: S3 keep 14, deleting 0" in again.stdout


def _local_archives(install, s3, days: int, uploaded: int) -> list[str]:
    """LOCAL_KEEP=1, a local archive for each of the first ``days`` days of November, the
    oldest ``uploaded`` of them with a verified S3 copy in the catalog."""
    install.use_s3(s3)
    install.env["LOCAL_KEEP"] = "1"
    install.write()
    install.backup_dir.mkdir()
    names = [f"blog-backup-2026110{d}-030000.tar.zst" for d in range(1, days + 1)]
    for name in names:
        (install.backup_dir / name).write_bytes(b"x")
    for name in names[:uploaded]:
        catalog.record_upload(install.db_path, key=f"web-1/x/{name}", endpoint=None, bucket=s3.bucket, size=1,
                              sha256="0" * 64, site="blog", server_id="web-1", stamp=name[12:27], archive_name=name,
                              uploaded_at="2026-11-05 00:00:00")
    return names


def test_local_keep_counts_archives_whose_upload_never_succeeded(install, s3):
    """Four local archives, only the two oldest uploaded: LOCAL_KEEP=1 keeps the newest alone,
    uploaded or not, so an S3 outage cannot fill the disk one archive a night."""
    names = _local_archives(install, s3, days=4, uploaded=2)
    result = install.doit("prune")
    assert result.returncode == 0, result.stdout + result.stderr
    assert sorted(p.name for p in install.backup_dir.glob("*.tar.zst")) == names[3:]


def _real_archive(wordpress, tmp_path) -> tuple[bytes, str]:
    """The bytes and sha256 of a real archive of the shared WordPress (another install)."""
    other = Install(tmp_path / "maker")
    other.root.mkdir()
    other.add_site("blog", wordpress)
    made = other.doit("backup")
    assert made.returncode == 0, made.stdout + made.stderr
    [archive] = other.archives()
    return archive.read_bytes(), archive.with_name(archive.name + ".sha256").read_text().split()[0]


def test_an_s3_copy_that_failed_verify_fills_no_retention_slot(install, s3, wordpress, tmp_path):
    """KEEP_DAILY=3 over six days, with real `doit verify --remote` passes: the copies of day 6
    and day 3 are damaged, so the policy keeps three intact ones (5, 4, 2) and the damaged
    newest, and drops 3 and 1. A damaged local copy (day 4), a failure since passed again
    (day 5), another server's verdict (day 2) and an S3 copy that could not be read at all
    (day 1) are no evidence against these S3 copies."""
    data, sha256 = _real_archive(wordpress, tmp_path)
    damaged = bytearray(data)
    damaged[len(damaged) // 2] ^= 0xFF
    install.use_s3(s3)
    install.env.update(KEEP_DAILY="3", KEEP_WEEKLY="0", KEEP_MONTHLY="0")
    install.add_site("blog", wordpress)
    install.write()
    install.backup_dir.mkdir(mode=0o700)
    names = {d: f"blog-backup-2026110{d}-030000.tar.zst" for d in range(1, 7)}
    keys = {d: f"web-1/2026/11/0{d}/{name}" for d, name in names.items()}
    for day, name in names.items():
        s3.s3.put_object(Bucket=s3.bucket, Key=keys[day], Body=bytes(damaged) if day in (6, 5, 3) else data)
        catalog.record_upload(install.db_path, key=keys[day], endpoint=s3.url, bucket=s3.bucket, size=len(data),
                              sha256=sha256, site="blog", server_id="web-1", stamp=name[12:27],
                              archive_name=name, uploaded_at="2026-11-07 00:00:00")
        catalog.log_event(install.db_path, "SUCCESS", f"backup {name} complete", site="blog", server_id="web-1",
                          stamp=name[12:27], archive_name=name, archive_size=len(data), archive_sha256=sha256)
    (install.backup_dir / names[4]).write_bytes(bytes(damaged))  # a damaged local copy beside an intact S3 one
    (install.backup_dir / f"{names[4]}.sha256").write_text(f"{sha256}  {names[4]}\n")
    s3.s3.delete_object(Bucket=s3.bucket, Key=keys[1])  # unreadable: proves nothing about the copy
    catalog.log_event(install.db_path, "ERROR", "verify failed (web-2's own copy)", site="blog", server_id="web-2",
                      archive_name=names[2], checks={"verified_s3": 0})

    assert install.doit("verify", "--remote", "--all").returncode != 0
    s3.s3.put_object(Bucket=s3.bucket, Key=keys[5], Body=data)  # day 5 repaired, and verified again
    assert install.doit("verify", "--remote", "--all").returncode != 0
    assert catalog.failed_s3_verifications(install.db_path, "web-1") == {names[6], names[3]}

    dry = install.doit("prune", "--dry-run")
    assert dry.returncode == 0, dry.stdout + dry.stderr
    assert "S3 copy failed verify" in dry.stdout
    result = install.doit("prune")
    assert result.returncode == 0, result.stdout + result.stderr
    left = {o["Key"].rsplit("/", 1)[1] for o in s3.s3.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert left == {names[6], names[5], names[4], names[2]}


def test_verify_lines_of_older_versions_keep_their_verdict(tmp_path):
    """A catalog from before verify results were data: its verify lines get their columns
    filled once from the wording of that time, so a known-damaged S3 copy stays known."""
    import sqlite3

    path = tmp_path / "backups.db"
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE backup_log (id INTEGER PRIMARY KEY AUTOINCREMENT, timestamp DATETIME, status TEXT, "
                 "details TEXT, site_name TEXT, server_id TEXT, archive_name TEXT)")
    rows = [("ERROR", "verify failed: a.tar.zst: s3://b/web-1/a.tar.zst: sha256 differs from the recorded", "a"),
            ("ERROR", "verify failed: b.tar.zst: s3://b/web-1/b.tar.zst: cannot read the S3 copy: timed out", "b"),
            ("ERROR", "verify failed: c.tar.zst: s3://b/web-1/c.tar.zst: sha256 differs from the recorded", "c"),
            ("INFO", "verify OK: c.tar.zst (local, s3: sha256, zstd+tar, manifest; 3 files, 12 tables)", "c")]
    for status, details, name in rows:
        conn.execute("INSERT INTO backup_log (timestamp, status, details, site_name, server_id, archive_name) "
                     "VALUES ('2026-11-01 00:00:00', ?, ?, 'blog', 'web-1', ?)", (status, details, f"{name}.tar.zst"))
    conn.commit()
    conn.close()
    assert catalog.failed_s3_verifications(path, "web-1") == {"a.tar.zst"}


def test_local_keep_keeps_the_local_copy_when_the_s3_copy_failed_verify(install, s3):
    names = _local_archives(install, s3, days=3, uploaded=3)
    catalog.log_event(install.db_path, "ERROR", f"verify failed: {names[0]}: its S3 copy is damaged", site="blog",
                      server_id="web-1", archive_name=names[0], checks={"verified_s3": 0})
    result = install.doit("prune", "--dry-run")
    assert result.returncode == 0, result.stdout + result.stderr
    result = install.doit("prune")
    assert result.returncode == 0, result.stdout + result.stderr
    # names[1] had an intact S3 copy and goes; names[0] may be the only good copy left
    assert sorted(p.name for p in install.backup_dir.glob("*.tar.zst")) == [names[0], names[2]]


@pytest.mark.parametrize("failure", ["listing", "delete"])
def test_a_prune_that_meets_an_s3_error_still_applies_local_keep(install, s3, s3_proxy, failure):
    """S3 is down from the start (the listing fails) or refuses the DeleteObjects: the local
    part of retention, decided from the catalog, is applied all the same, nothing is deleted
    on S3, and prune fails naming the part that failed."""
    names = _local_archives(install, s3, days=4, uploaded=2)
    install.env.update(S3_ENDPOINT_URL=s3_proxy.url, S3_MAX_ATTEMPTS="1", KEEP_DAILY="1", KEEP_WEEKLY="0",
                       KEEP_MONTHLY="0")
    for name in names[:2]:
        s3.s3.put_object(Bucket=s3.bucket, Key=f"web-1/x/{name}", Body=b"x")
    if failure == "listing":
        s3_proxy.unavailable = True
    else:
        s3_proxy.refuse_delete = True
    expected = "S3 error ServiceUnavailable"
    install.write()
    going = local.local_excess(load_settings({"WPBACKUP_ENV": str(install.env_path)}), "blog")
    assert going  # LOCAL_KEEP=1 has something to remove
    if failure == "listing":  # the S3 part cannot even be planned: a dry run says so, and fails
        dry = install.doit("prune", "--dry-run")
        assert dry.returncode != 0 and "Traceback" not in dry.stdout + dry.stderr
        assert f"the S3 part failed: {expected}" in dry.stderr and "planned only (dry run)" in dry.stderr
        assert len(install.archives()) == 4

    result = install.doit("prune")
    out = result.stdout + result.stderr
    assert result.returncode != 0 and "Traceback" not in out
    assert f"prune: the S3 part failed: {expected}" in out and "the local part (LOCAL_KEEP) was applied" in out
    assert [p.name for p in install.archives()] == [n for n in names if n not in going]
    keys = {o["Key"] for o in s3.s3.list_objects_v2(Bucket=s3.bucket)["Contents"]}
    assert keys == {f"web-1/x/{n}" for n in names[:2]}  # KEEP_DAILY=1 would have deleted one
    assert install.rows("SELECT * FROM s3_archives WHERE deleted_at IS NOT NULL") == []


def test_a_key_without_list_bucket_still_prunes_by_the_catalog(install, s3, s3_proxy):
    """The listing only reports objects the catalog does not know: without s3:ListBucket that
    report is left out with a warning, and the deletes the catalog decides go ahead."""
    names = _local_archives(install, s3, days=3, uploaded=3)
    install.env.update(S3_ENDPOINT_URL=s3_proxy.url, KEEP_DAILY="1", KEEP_WEEKLY="0", KEEP_MONTHLY="0")
    for name in names:
        s3.s3.put_object(Bucket=s3.bucket, Key=f"web-1/x/{name}", Body=b"x")
    s3_proxy.deny_list_objects = s3_proxy.require_delete_md5 = True
    result = install.doit("prune")
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    assert "cannot list s3://wp-backups/web-1/ (AccessDenied: the key lacks s3:ListBucket)" in out
    assert {o["Key"] for o in s3.s3.list_objects_v2(Bucket=s3.bucket)["Contents"]} == {f"web-1/x/{names[-1]}"}
    assert len(install.rows("SELECT * FROM s3_archives WHERE deleted_at IS NOT NULL")) == 2
