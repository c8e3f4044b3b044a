"""The member check restore and verify share refuses what tarfile's 'data' filter refuses, on
interpreters that lack that filter (Debian 12's 3.11.2, Ubuntu 22.04's 3.10) as on those that
have it; `.ci/run` runs this file under every other Python on the machine too."""

from __future__ import annotations

import tarfile

import pytest

from wpbackup.errors import BackupError
from wpbackup.restore.members import MemberCheck, check_member

# (name, type, linkname, refused by the 'data' filter with a fresh destination folder)
CASES = [
    ("wp-content/uploads/a.jpg", tarfile.REGTYPE, "", False),
    ("wp-content/./uploads/../b.txt", tarfile.REGTYPE, "", False),
    ("wp-content", tarfile.DIRTYPE, "", False),
    ("wp-content/../../evil.txt", tarfile.REGTYPE, "", True),
    ("../evil.txt", tarfile.REGTYPE, "", True),
    ("wp-content/link", tarfile.SYMTYPE, "../wp-config.php", False),
    ("wp-content/up", tarfile.SYMTYPE, "..", False),
    ("wp-content/out", tarfile.SYMTYPE, "../../outside", True),
    ("wp-content/abs", tarfile.SYMTYPE, "/mnt/efs/uploads", True),
    ("wp-content/hard", tarfile.LNKTYPE, "wp-content/uploads/a.jpg", False),
    ("wp-content/hard-out", tarfile.LNKTYPE, "../secret.txt", True),
    ("wp-content/hard-abs", tarfile.LNKTYPE, "/etc/passwd", True),
    ("wp-content/disk", tarfile.CHRTYPE, "", True),
    ("wp-content/block", tarfile.BLKTYPE, "", True),
    ("wp-content/pipe", tarfile.FIFOTYPE, "", True),
    ("wp-content/old-style", tarfile.AREGTYPE, "", False),
    ("wp-content/contiguous", tarfile.CONTTYPE, "", False),
]


def _member(name: str, kind: bytes, linkname: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, linkname
    return info


def _refused_by_us(member: tarfile.TarInfo) -> bool:
    try:
        check_member(member)
    except BackupError as exc:
        assert "refused archive member" in str(exc) and "nothing was changed" in str(exc)
        return True
    return False


@pytest.mark.parametrize("name, kind, linkname, refused", CASES, ids=[c[0] for c in CASES])
def test_refuses_what_the_data_filter_refuses(name, kind, linkname, refused, tmp_path):
    member = _member(name, kind, linkname)
    assert _refused_by_us(member) == refused
    data_filter = getattr(tarfile, "data_filter", None)
    if data_filter is not None:  # where this interpreter has the filter, it agrees case by case
        try:
            data_filter(member, str(tmp_path))
            filtered = False
        except tarfile.FilterError:
            filtered = True
        assert filtered == refused


@pytest.mark.parametrize("name", ["/etc/cron.d/evil", "\\windows\\evil", "C:/evil"])
def test_absolute_names_are_refused_not_made_relative(name):
    assert _refused_by_us(_member(name, tarfile.REGTYPE, ""))


def test_nothing_may_go_through_a_link_of_the_archive():
    check = MemberCheck()
    for member in (_member("wp-content/t", tarfile.SYMTYPE, "s/.."), _member("wp-content/s", tarfile.SYMTYPE, ".."),
                   _member("wp-content/ok", tarfile.REGTYPE, "")):
        check.check(member)
    with pytest.raises(BackupError, match="goes through another link"):
        check.finish()
    through = MemberCheck()
    through.check(_member("wp-content/link", tarfile.SYMTYPE, "uploads"))
    through.check(_member("wp-content/link/evil.php", tarfile.REGTYPE, ""))
    with pytest.raises(BackupError, match="goes through a symbolic link"):
        through.finish()


@pytest.mark.parametrize("members, why", [
    ([("wp-content", tarfile.SYMTYPE, "x"), ("./wp-content/evil.php", tarfile.REGTYPE, "")],
     "goes through a symbolic link"),
    ([("./wp-content/", tarfile.SYMTYPE, "x"), ("wp-content/evil.php", tarfile.REGTYPE, "")],
     "goes through a symbolic link"),
    ([("./a", tarfile.SYMTYPE, "wp-content/.."), ("b", tarfile.SYMTYPE, "a/..")], "leaves the restored tree"),
])
def test_a_leading_dot_slash_names_the_same_path_to_the_link_checks(members, why):
    """Names written ./NAME (a files: all root's own database.sql) are the path NAME: the
    checks across members see through the spelling."""
    check = MemberCheck()
    for name, kind, linkname in members:
        check.check(_member(name, kind, linkname))
    with pytest.raises(BackupError, match=why):
        check.finish()
