"""Nothing left behind to pay for: a run that no `doit backup` will ever resume has its
multipart upload aborted (or remembered in pending-aborts.json and aborted by the next
upload) before its plaintext dump and partial archive are removed, whatever made it
unreachable: its site was removed, renamed or disabled, its run.json is damaged, or its
folder and run.json no longer name each other. A complete archive it wrote stays."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest

from wpbackup.backup import runs

from .test_resume import _count, _setup_upload


def _uploads(s3) -> list[dict]:
    return s3.s3.list_multipart_uploads(Bucket=s3.bucket).get("Uploads", [])


def _refused_upload(install, s3, proxy, wordpress, tmp_path) -> tuple[Path, str]:
    """A backup of site `big` whose upload S3 refused after one part: its archive and stamp,
    with the multipart upload left open and the dump waiting for a resume. S3 works again after."""
    _setup_upload(install, s3, proxy, wordpress, tmp_path)
    proxy.mode, proxy.after_parts = "refuse", 1
    assert install.doit("backup").returncode != 0
    [archive] = install.archives()
    stamp = archive.name.split("-backup-")[1][:-len(".tar.zst")]
    assert len(_uploads(s3)) == 1
    assert (install.backup_dir / ".work" / "big" / stamp / "database.sql").exists()
    proxy.mode = "pass"
    return archive, stamp


@pytest.mark.parametrize("change", ["removed", "renamed", "disabled"])
def test_open_run_of_a_retired_site_is_cleaned(install, wordpress, s3, s3_proxy, tmp_path, change):
    archive, stamp = _refused_upload(install, s3, s3_proxy, wordpress, tmp_path)
    big = install.sites[0]
    if change == "removed":
        install.sites.remove(big)
    elif change == "renamed":
        big["name"] = "big2"
    else:
        big["enabled"] = False
    install.add_site("blog", wordpress)  # the run goes on for the sites still enabled
    result = install.doit("backup")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert _uploads(s3) == []
    assert not (install.backup_dir / ".work" / "big").exists()
    assert archive.exists()  # complete: kept, and said so
    assert _count(install, "INFO", f"site big is no longer enabled%its unfinished run {stamp} is abandoned") == 1
    assert _count(install, "INFO", f"{archive.name} of the abandoned run stays in %it was never uploaded") == 1
    assert "SUMMARY blog: OK" in output


def test_abort_refused_by_s3_is_remembered_and_done_by_the_next_upload(install, wordpress, s3, s3_proxy,
                                                                       tmp_path):
    archive, stamp = _refused_upload(install, s3, s3_proxy, wordpress, tmp_path)
    [open_upload] = _uploads(s3)
    install.sites[0]["enabled"] = False
    install.add_site("blog", wordpress)
    s3_proxy.refuse_delete = True  # S3 answers every abort with 503 now
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    pending = install.backup_dir / ".work" / "pending-aborts.json"
    assert [open_upload["Key"], open_upload["UploadId"]] in json.loads(pending.read_text())
    assert not (install.backup_dir / ".work" / "big").exists()  # only once the abort was remembered
    assert len(_uploads(s3)) == 1

    s3_proxy.refuse_delete = False
    result = install.doit("backup")  # blog's next upload aborts what is pending
    assert result.returncode == 0, result.stdout + result.stderr
    assert _uploads(s3) == []
    assert not pending.exists()


def test_folder_kept_while_its_upload_can_be_neither_aborted_nor_remembered(install, wordpress, s3, s3_proxy,
                                                                            tmp_path):
    archive, stamp = _refused_upload(install, s3, s3_proxy, wordpress, tmp_path)
    install.sites[0]["enabled"] = False
    install.add_site("blog", wordpress)
    s3_proxy.refuse_delete = True
    pending = install.backup_dir / ".work" / "pending-aborts.json"
    pending.mkdir()  # cannot be written: the abort can be recorded nowhere
    result = install.doit("backup")
    assert "Traceback" not in result.stdout + result.stderr
    assert (install.backup_dir / ".work" / "big" / stamp / "upload-state.json").exists()
    assert len(_uploads(s3)) == 1
    pending.rmdir()
    s3_proxy.refuse_delete = False
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (install.backup_dir / ".work" / "big").exists()
    assert _uploads(s3) == []


@pytest.mark.parametrize("damage", ['{"stamp": "2026', "[]", '{"stamp": 7, "closed": false}', None])
def test_damaged_run_state_still_aborts_the_open_upload(install, wordpress, s3, s3_proxy, tmp_path, damage):
    archive, stamp = _refused_upload(install, s3, s3_proxy, wordpress, tmp_path)
    state = install.backup_dir / ".work" / "big" / "run.json"
    if damage is None:
        state.unlink()
    else:
        state.write_text(damage)
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _uploads(s3) == []
    assert not (install.backup_dir / ".work" / "big" / stamp).exists()
    assert archive.exists() and len(install.archives()) == 2
    assert _count(install, "INFO", f"run {stamp} was named by no readable run.json%abandoned%") == 1
    assert _count(install, "INFO", f"{archive.name} of the abandoned run stays in %it was never uploaded") == 1


def test_run_state_and_folder_that_no_longer_match_are_both_cleaned(install, wordpress, s3, s3_proxy, tmp_path):
    """run.json names a folder that is gone, and a folder holds an upload no run.json names
    (as after a crash while a run was starting, or a folder moved by hand)."""
    archive, stamp = _refused_upload(install, s3, s3_proxy, wordpress, tmp_path)
    work = install.backup_dir / ".work" / "big"
    other = runs.make_stamp(runs.parse_stamp(stamp) - timedelta(minutes=30))  # a folder no run.json names
    (work / stamp).rename(work / other)
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _uploads(s3) == []
    current = json.loads((work / "run.json").read_text())["stamp"]
    assert sorted(p.name for p in work.iterdir() if p.is_dir()) == [current]
    assert _count(install, "INFO", f"run {stamp} has no run folder%abandoned%") == 1
    assert _count(install, "INFO", f"run {other} was named by no readable run.json%abandoned%") == 1
    assert archive.exists()
    assert _count(install, "INFO", f"{archive.name} of the abandoned run stays in %it was never uploaded") == 1


def test_verify_scratch_and_closed_runs_of_a_retired_site(install, wordpress, tmp_path):
    """What the sweep must leave alone (a folder of another tool under .work) and what it
    removes without a word (a retired site's closed run: its receipts only)."""
    install.add_site("blog", wordpress)
    install.add_site("shop", wordpress)
    assert install.doit("backup").returncode == 0
    scratch = install.backup_dir / ".work" / "wpbackup-verify-x1y2"
    scratch.mkdir()
    (scratch / "some.tar.zst").write_bytes(b"x")
    install.sites.pop()  # shop retired after a clean run
    result = install.doit("backup")
    assert result.returncode == 0, result.stdout + result.stderr
    assert not (install.backup_dir / ".work" / "shop").exists()
    assert (scratch / "some.tar.zst").exists()
    assert _count(install, "INFO", "site shop is no longer enabled%") == 0


def test_a_new_run_never_takes_the_stamp_of_a_folder_no_run_json_names(tmp_path):
    """run.json gone, and the abandoned run's folder is of this very second (a fast first run):
    the new run must not take that folder for its own."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc).replace(microsecond=0)
    (tmp_path / "big" / runs.make_stamp(now)).mkdir(parents=True)
    run = runs.plan_run(tmp_path, "big", now, 20)
    assert run.stamp != runs.make_stamp(now) and run.stamp > runs.make_stamp(now)
    assert runs.make_stamp(now) in [p.name for p in runs.leftovers(run)]
