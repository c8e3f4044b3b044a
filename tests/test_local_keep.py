"""LOCAL_KEEP counts every local archive, uploaded or not: a week of S3 outage leaves the
newest LOCAL_KEEP archives on the disk, not one per night. An archive whose S3 copy failed
the latest `verify --remote` stays anyway (it may be the only good copy). `doit status` and
the backup's log say how many local archives are waiting for their upload."""

from __future__ import annotations

import re

from .test_resume import _count


def _not_uploaded(install, site: str) -> str:
    """The NOT UPLOADED column of `doit status` for one site."""
    lines = install.doit("status").stdout.splitlines()
    header = next(line for line in lines if line.startswith("SERVER"))
    columns = re.split(r"\s{2,}", header)
    row = next(re.split(r"\s{2,}", line) for line in lines if re.split(r"\s{2,}", line)[1:2] == [site])
    return row[columns.index("NOT UPLOADED")]


def test_s3_outage_cannot_fill_the_disk(install, wordpress, s3, s3_proxy):
    install.use_s3(s3)
    # every night's run is a new one: the open run of the night before has gone stale
    install.env.update(S3_ENDPOINT_URL=s3_proxy.url, LOCAL_KEEP="2", STALE_RUN_HOURS="0.0001")
    install.add_site("blog", wordpress)
    first = install.doit("backup")
    assert first.returncode == 0, first.stdout + first.stderr
    [damaged] = install.archives()
    [obj] = s3.s3.list_objects_v2(Bucket=s3.bucket)["Contents"]
    s3.s3.put_object(Bucket=s3.bucket, Key=obj["Key"], Body=b"not the archive")
    assert install.doit("verify", "--remote", "--site", "blog").returncode != 0
    assert _not_uploaded(install, "blog") == "0"

    s3_proxy.mode, s3_proxy.after_parts = "refuse", -1  # S3 down for three nights
    for _ in range(3):
        night = install.doit("backup")
        assert night.returncode != 0 and "SUMMARY blog: FAILED at upload" in night.stdout + night.stderr
    archives = [a.name for a in install.archives()]
    assert len(archives) == 3 and archives[0] == damaged.name  # two newest + the damaged S3 copy's
    assert _not_uploaded(install, "blog") == "2"
    assert _count(install, "INFO", "LOCAL_KEEP=2: removed 1 older local archives (1 of them never uploaded)%") == 1
    assert _count(install, "INFO", f"2 local archives are waiting for their upload (this one and 1 older%"
                                   f"{archives[1]}%") == 1

    s3_proxy.mode = "pass"
    back = install.doit("backup")
    assert back.returncode == 0, back.stdout + back.stderr
    now = [a.name for a in install.archives()]
    assert now[0] == damaged.name and now[1] == archives[2] and len(now) == 3
    assert _not_uploaded(install, "blog") == "1"  # the last night of the outage never reached S3
    assert len(install.rows("SELECT * FROM s3_archives")) == 2


def test_local_only_mode_shows_no_upload_count(install, wordpress):
    install.add_site("blog", wordpress)
    assert install.doit("backup").returncode == 0
    assert _not_uploaded(install, "blog") == "-"
