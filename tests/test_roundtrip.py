"""The operator's whole cycle on this interpreter: back up, check, lose everything, restore.

`.ci/run` runs this file again under every other Python from 3.10 up that the machine has
(the main suite runs on the distribution's python3), so it must stay short and touch every
part a supported interpreter might lack: tar members, zstd frames, S3, the catalog, doit.
"""

from __future__ import annotations

import platform
import shutil
import uuid

import pytest

from .servers import WordPress


@pytest.fixture
def doomed_wordpress(mariadb, tmp_path):
    """A WordPress of this test alone: its database and files get destroyed."""
    return WordPress(mariadb, tmp_path / "doomed", name=f"rt{uuid.uuid4().hex[:8]}")


def test_backup_verify_lose_everything_restore(install, doomed_wordpress, mariadb, s3):
    site = doomed_wordpress
    install.use_s3(s3)
    install.add_site("blog", site)
    backup = install.doit("backup")
    assert backup.returncode == 0, backup.stdout + backup.stderr
    assert "SUMMARY blog: OK" in backup.stdout + backup.stderr
    assert install.doit("status").returncode == 0
    verified = install.doit("verify", "--remote")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    before = site.read()
    assert before["titles"], "the WordPress under test shows no posts"
    upload = site.upload.read_bytes()

    for archive in install.backup_dir.glob("*.tar.zst*"):
        archive.unlink()
    mariadb.sql(f"DROP DATABASE {site.db_name}")
    shutil.rmtree(site.path / "wp-content")
    assert site.read() == {}

    restored = install.doit("restore", "--site", "blog")
    out = restored.stdout + restored.stderr
    assert restored.returncode == 0, f"Python {platform.python_version()}: {out}"
    assert "from s3" in out
    assert site.read() == before
    assert site.upload.read_bytes() == upload
