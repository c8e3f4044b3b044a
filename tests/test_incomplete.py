"""Incomplete is not OK: files the backup could not read are archived around, the archive is
kept and uploaded, and yet every place that reports on the backup says it is not a success.

Root reads everything, so the backup runs here as root without the two capabilities that let
it bypass file permissions (or as the unprivileged user the tests run as).
"""

from __future__ import annotations

import json
import os
import subprocess

from .conftest import make_site


def _backup_without_read_override(install) -> subprocess.CompletedProcess:
    install.write()
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *install.command("backup")], capture_output=True, text=True, timeout=300,
                          env=install.process_env(), cwd=install.root)


def test_unreadable_files_make_the_backup_incomplete_yet_kept(install, wordpress, s3, pings, tmp_path):
    root = make_site(tmp_path, wordpress)
    uploads = root / "wp-content" / "uploads"
    (uploads / "private").mkdir()
    (uploads / "private" / "contract.pdf").write_bytes(b"%PDF secret")
    (uploads / "locked.bin").write_bytes(b"locked")
    (uploads / "fine.txt").write_text("readable")
    os.chmod(uploads / "private", 0)
    os.chmod(uploads / "locked.bin", 0)
    install.use_s3(s3)
    install.env["HEALTHCHECK_URL"] = pings.url
    install.sites.append({"name": "blog", "path": str(root)})
    try:
        result = _backup_without_read_override(install)
    finally:
        os.chmod(uploads / "private", 0o755)
        os.chmod(uploads / "locked.bin", 0o644)
    out = result.stdout + result.stderr
    assert result.returncode != 0, out
    assert "Traceback" not in out
    assert "SUMMARY blog: INCOMPLETE incomplete: 2 unreadable (first: wp-content/uploads/" in out
    assert pings.seen == ["/ping/abc/start", "/ping/abc/fail"]

    [line] = install.rows("SELECT * FROM backup_log WHERE site_name = 'blog' AND archive_name IS NOT NULL")
    assert line["status"] == "ERROR" and line["incomplete"] == 2
    assert line["details"].startswith("incomplete: 2 unreadable (first: wp-content/uploads/")
    assert not install.rows("SELECT * FROM backup_log WHERE status = 'SUCCESS'")
    [archive] = install.archives()
    [stored] = install.rows("SELECT * FROM s3_archives")
    assert stored["archive_name"] == archive.name  # kept and uploaded all the same

    listing = subprocess.run(["tar", "--zstd", "-tf", str(archive)], capture_output=True, text=True, check=True)
    names = listing.stdout.splitlines()
    assert "wp-content/uploads/fine.txt" in names and "wp-content/uploads/locked.bin" not in names
    manifest = json.loads(subprocess.run(["tar", "--zstd", "-xOf", str(archive), "manifest.json"],
                                         capture_output=True, check=True).stdout)
    assert manifest["files"]["unreadable_count"] == 2

    status = install.doit("status")
    assert status.returncode != 0
    assert "INCOMPLETE (2 unreadable)" in status.stdout + status.stderr
    assert install.doit("verify").returncode == 0  # what it holds is intact and restorable
    restored = install.doit("restore", "--site", "blog", "--files-only", "--target", str(tmp_path / "back"))
    assert restored.returncode == 0, restored.stdout + restored.stderr
    assert "is incomplete: 2 files or folders could not be read" in restored.stdout + restored.stderr
    assert (tmp_path / "back" / "wp-content" / "uploads" / "fine.txt").read_text() == "readable"

    again = install.doit("backup")  # readable now: a new run, a complete backup
    assert again.returncode == 0, again.stdout + again.stderr
    assert "SUMMARY blog: OK" in again.stdout + again.stderr
    assert install.doit("status").returncode == 0
