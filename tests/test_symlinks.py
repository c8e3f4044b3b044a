"""Symbolic links the way sites use them: a linked root or wp-content (Capistrano, Docker
volumes, Bedrock), uploads on a network mount, links inside the site of every kind, dangling
links. Each backup is extracted by stock tar (no error, no message), verified, and restored
into a new folder, where the tree must be what the site showed: links as links, folders
outside the site as folders with their files' bytes.

The unreadable-file recording runs the walker without root's permission bypass.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from wpbackup.backup import tarstream
from wpbackup.config.wpconfig import find_wp_config
from wpbackup.restore.members import MemberCheck

from .conftest import REPO, make_site


def _out(result) -> str:
    return result.stdout + result.stderr


def _backup(install, path: Path, files: str = "wp-content") -> str:
    install.sites.append({"name": "blog", "path": str(path), "files": files})
    result = install.doit("backup")
    assert result.returncode == 0, _out(result)
    assert "SUMMARY blog: OK" in _out(result)
    return _out(result)


def _extract(archive: Path, into: Path) -> dict:
    """Stock GNU tar extracts it with exit 0 and not a word on stderr; returns the manifest."""
    into.mkdir()
    result = subprocess.run(["tar", "--zstd", "-xf", str(archive)], cwd=into, capture_output=True, text=True)
    assert (result.returncode, result.stderr) == (0, "")
    names = subprocess.run(["tar", "--zstd", "-tf", str(archive)], capture_output=True, text=True,
                           check=True).stdout.splitlines()
    assert len(names) == len(set(names)), "a member is archived twice"
    return json.loads((into / "manifest.json").read_text())


def _verify_and_restore(install, target: Path) -> None:
    verified = install.doit("verify")
    assert verified.returncode == 0, _out(verified)
    restored = install.doit("restore", "--site", "blog", "--files-only", "--target", str(target))
    assert restored.returncode == 0, _out(restored)


def _files(folder: Path) -> dict[str, bytes]:
    """Every regular file below a folder (not through links), by relative name."""
    found = {}
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            path = Path(dirpath) / name
            if not path.is_symlink():
                found[str(path.relative_to(folder))] = path.read_bytes()
    return found


@pytest.mark.parametrize("files", ["wp-content", "all"])
def test_linked_root_and_linked_wp_content_are_archived_through_them(install, wordpress, tmp_path, files):
    # /releases/r1 is the real root, `app/current` links to it; its wp-config.php sits beside
    # the real root (where WordPress finds it), a broken one beside the link (where it does not)
    real = make_site(tmp_path / "releases", wordpress, name="r1")
    config = tmp_path / "releases" / "wp-config.php"
    os.rename(real / "wp-config.php", config)
    (real / "wp-config.php").symlink_to("wp-config.php.moved")  # dangling: it must not shadow the real one
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "wp-config.php").write_text("<?php define('DB_NAME', 'not_this_one');\n")
    (tmp_path / "app" / "current").symlink_to("../releases/r1")
    data = tmp_path / "volume" / "wp-content"
    data.parent.mkdir()
    shutil.move(real / "wp-content", data)
    (real / "wp-content").symlink_to(data)
    content = _files(data)

    output = _backup(install, tmp_path / "app" / "current", files)
    [archive] = install.archives()
    manifest = _extract(archive, tmp_path / "x")
    extracted = tmp_path / "x"
    assert (extracted / "wp-content").is_dir() and not (extracted / "wp-content").is_symlink()
    assert _files(extracted / "wp-content") == content
    assert (extracted / "wp-config.php").read_bytes() == config.read_bytes()
    followed = {(f["name"], f["target"]) for f in manifest["files"]["followed"]}
    if files == "all":
        assert (extracted / "wp-includes" / "version.php").exists()
        assert followed == {(".", str(real)), ("wp-content", str(data))}
    else:
        assert followed == {("wp-content", str(data))}
    assert f"wp-content -> {data}" in output

    target = tmp_path / "restored" / "site"
    _verify_and_restore(install, target)
    assert not (target / "wp-content").is_symlink()
    assert _files(target / "wp-content") == content
    assert (target / "wp-config.php").read_bytes() == config.read_bytes()


def test_uploads_on_a_mount_outside_the_site_are_archived_and_named(install, wordpress, tmp_path):
    root = make_site(tmp_path, wordpress)
    efs = tmp_path / "mnt" / "efs" / "uploads"
    efs.parent.mkdir(parents=True)
    shutil.move(root / "wp-content" / "uploads", efs)
    (root / "wp-content" / "uploads").symlink_to(efs)  # absolute, outside the site
    uploads = _files(efs)
    assert uploads

    output = _backup(install, root)
    assert "1 links followed" in output and f"wp-content/uploads -> {efs}" in output
    [archive] = install.archives()
    manifest = _extract(archive, tmp_path / "x")
    assert manifest["files"]["followed"] == [{"name": "wp-content/uploads", "target": str(efs)}]
    assert manifest["files"]["left_out"] == [] and manifest["files"]["unreadable"] == []
    extracted = tmp_path / "x" / "wp-content" / "uploads"
    assert extracted.is_dir() and not extracted.is_symlink()
    assert _files(extracted) == uploads

    target = tmp_path / "restored"
    _verify_and_restore(install, target)
    restored = target / "wp-content" / "uploads"
    assert restored.is_dir() and not restored.is_symlink()
    assert _files(restored) == uploads


def _internal_links(root: Path, tmp_path: Path) -> tuple[dict[str, str], Path]:
    """Links of every kind inside a site, and what each must read after a round trip."""
    content = root / "wp-content"
    photo = next(p for p in (content / "uploads").rglob("*") if p.is_file())
    photo_rel = str(photo.relative_to(content))
    shared = tmp_path / "shared"
    (shared / "fonts").mkdir(parents=True)
    (shared / "fonts" / "f.woff").write_bytes(b"woff" * 100)
    (shared / "self").symlink_to(".")
    (shared / "back").symlink_to(content / "uploads")  # absolute, back into the site
    theme = tmp_path / "usr-share" / "themes" / "t"  # Debian's theme links into /usr/share
    (theme / "img").mkdir(parents=True)
    (theme / "img" / "s.png").write_bytes(b"png" * 50)
    (theme / "screenshot.png").symlink_to("img/s.png")
    (content / "themes").mkdir()
    links = {
        "file-link": (photo_rel, photo_rel),  # relative, to a file: kept byte for byte
        "dir-link": ("uploads", "uploads"),  # relative, to a folder
        "abs-link": (str(content / "uploads"), "uploads"),  # absolute inside: made relative
        "abs-file": (str(root / "wp-includes" / "version.php"), "../wp-includes/version.php"),
        "loop": ("..", ".."),  # an ancestor: no loop
        "chain": ("dir-link", "dir-link"),  # a link to a link
        "shared-a": (str(shared), None),  # outside: followed once...
        "shared-b": (str(shared), "shared-a"),  # ...the second link to it points at the first
        "themes/t": (str(theme), None),
    }
    for name, (text, _) in links.items():
        (content / name).symlink_to(text)
    expected = {f"wp-content/{name}": kept for name, (_, kept) in links.items() if kept is not None}
    expected.update({"wp-content/shared-a/self": ".", "wp-content/shared-a/back": "../uploads"})
    return expected, photo


def test_links_inside_the_site_stay_links_and_outside_folders_are_archived_once(install, wordpress, tmp_path):
    root = make_site(tmp_path, wordpress)
    expected, photo = _internal_links(root, tmp_path)

    _backup(install, root, files="all")
    [archive] = install.archives()
    manifest = _extract(archive, tmp_path / "x")
    extracted = tmp_path / "x"
    for name, text in expected.items():
        assert os.readlink(extracted / name) == text, name
    assert (extracted / "wp-content" / "shared-a" / "fonts" / "f.woff").read_bytes() == b"woff" * 100
    theme = extracted / "wp-content" / "themes" / "t"
    assert theme.is_dir() and not theme.is_symlink()
    assert (theme / "screenshot.png").read_bytes() == b"png" * 50 and not (theme / "screenshot.png").is_symlink()
    followed = {f["name"] for f in manifest["files"]["followed"]}
    assert followed == {"wp-content/shared-a", "wp-content/themes/t", "wp-content/themes/t/screenshot.png"}
    assert manifest["files"]["links"] == len(expected)

    target = tmp_path / "restored" / "site"
    _verify_and_restore(install, target)
    content = target / "wp-content"
    for name, text in expected.items():
        assert os.readlink(target / name) == text, name
    assert (content / "file-link").read_bytes() == photo.read_bytes()  # they work in the new place
    assert (content / "abs-link").resolve() == (content / "uploads").resolve()
    assert (content / "abs-file").read_bytes() == (root / "wp-includes" / "version.php").read_bytes()
    assert (content / "loop").resolve() == target.resolve()
    assert (content / "shared-b" / "fonts" / "f.woff").read_bytes() == b"woff" * 100
    assert (content / "shared-a" / "back").resolve() == (content / "uploads").resolve()


def test_dangling_links_inside_are_kept_and_outside_left_out_by_name(install, wordpress, tmp_path):
    root = make_site(tmp_path, wordpress)
    content = root / "wp-content"
    (content / "gone").symlink_to("missing.txt")
    (content / "gone-deep").symlink_to("uploads/none/x.jpg")
    (content / "nowhere").symlink_to("/nonexistent-wpbackup/x")
    (content / "up").symlink_to("../../nope")

    output = _backup(install, root)
    assert "2 links left out" in output and "wp-content/nowhere -> /nonexistent-wpbackup/x" in output
    [archive] = install.archives()
    manifest = _extract(archive, tmp_path / "x")
    left = {(f["name"], f["target"]) for f in manifest["files"]["left_out"]}
    assert left == {("wp-content/nowhere", "/nonexistent-wpbackup/x"), ("wp-content/up", "../../nope")}
    extracted = tmp_path / "x" / "wp-content"
    assert os.readlink(extracted / "gone") == "missing.txt"
    assert os.readlink(extracted / "gone-deep") == "uploads/none/x.jpg"
    assert not os.path.lexists(extracted / "nowhere") and not os.path.lexists(extracted / "up")

    target = tmp_path / "restored"
    _verify_and_restore(install, target)
    assert os.readlink(target / "wp-content" / "gone") == "missing.txt"
    assert not os.path.lexists(target / "wp-content" / "nowhere")


def _members(root: Path, start: str) -> tuple[list[tarfile.TarInfo], tarstream.TreeStats, bytes]:
    """The files part of a tree as restore's member check and a tar listing see it."""
    stats = tarstream.TreeStats()
    out = io.BytesIO()
    tarstream.write_tree(out, root, start, [], set(), stats)
    out.write(tarstream.end_of_archive(stats.written))
    data = out.getvalue()
    members = tarfile.open(fileobj=io.BytesIO(data)).getmembers()
    check = MemberCheck()
    for member in members:
        check.check(member)
    check.finish()
    return members, stats, data


def test_wp_content_mode_link_to_the_root_follows_it_without_looping(tmp_path):
    root = tmp_path / "site"
    (root / "wp-content" / "uploads").mkdir(parents=True)
    (root / "wp-includes").mkdir()
    (root / "wp-includes" / "version.php").write_text("<?php $wp_version = '6.1';\n")
    (root / "wp-config.php").write_text("<?php\n")
    (root / "wp-content" / "loop").symlink_to("..")  # outside wp-content: followed
    (root / "wp-content" / "a").symlink_to("b")  # a loop of two links: kept as they are
    (root / "wp-content" / "b").symlink_to("a")
    members, stats, data = _members(root, "wp-content")
    kinds = {m.name: (m.type, m.linkname) for m in members}
    assert kinds["wp-content/loop"][0] == tarfile.DIRTYPE
    assert kinds["wp-content/loop/wp-content"] == (tarfile.SYMTYPE, "..")  # the archived tree itself
    assert kinds["wp-content/loop/wp-includes/version.php"][0] == tarfile.REGTYPE
    assert kinds["wp-content/a"] == (tarfile.SYMTYPE, "b") and kinds["wp-content/b"] == (tarfile.SYMTYPE, "a")
    assert stats.followed == [{"name": "wp-content/loop", "target": str(root)}]
    into = tmp_path / "x"
    into.mkdir()
    result = subprocess.run(["tar", "-xf", "-"], input=data, cwd=into, capture_output=True)
    assert (result.returncode, result.stderr) == (0, b"")


def test_wp_config_is_looked_for_beside_the_real_root(tmp_path):
    (tmp_path / "releases" / "r1").mkdir(parents=True)
    (tmp_path / "releases" / "wp-config.php").write_text("<?php\n")
    (tmp_path / "app").mkdir()
    (tmp_path / "app" / "wp-config.php").write_text("<?php\n")
    (tmp_path / "app" / "current").symlink_to(tmp_path / "releases" / "r1")
    assert find_wp_config(tmp_path / "app" / "current") == tmp_path / "releases" / "wp-config.php"
    (tmp_path / "releases" / "wp-settings.php").write_text("")  # another site's root: not ours
    assert find_wp_config(tmp_path / "app" / "current") is None


WALK = """
import json, sys
from dataclasses import asdict
from pathlib import Path
from wpbackup.backup import tarstream
stats = tarstream.TreeStats()
with open(sys.argv[2], "wb") as out:
    tarstream.write_tree(out, Path(sys.argv[1]), "wp-content", [], set(), stats)
    out.write(tarstream.end_of_archive(stats.written))
print(json.dumps(asdict(stats)))
"""


def test_unreadable_files_and_folders_are_recorded_and_archived_around(tmp_path):
    root = tmp_path / "site"
    content = root / "wp-content"
    (content / "private").mkdir(parents=True)
    (content / "private" / "contract.pdf").write_bytes(b"%PDF")
    (content / "locked.bin").write_bytes(b"locked")
    (content / "fine.txt").write_text("readable")
    os.mkfifo(content / "pipe")
    outside = tmp_path / "closed"
    (outside / "inner").mkdir(parents=True)
    (content / "closed-link").symlink_to(outside / "inner")  # its target cannot even be looked at
    part = tmp_path / "part.tar"
    # root reads everything: drop the two capabilities that bypass file permissions
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
    os.chmod(content / "private", 0)
    os.chmod(content / "locked.bin", 0)
    os.chmod(outside, 0)
    try:
        result = subprocess.run([*prefix, sys.executable, "-c", WALK, str(root), str(part)],
                                capture_output=True, text=True, cwd=REPO, timeout=60)
    finally:
        os.chmod(content / "private", 0o755)
        os.chmod(content / "locked.bin", 0o644)
        os.chmod(outside, 0o755)
    assert result.returncode == 0, result.stderr
    stats = json.loads(result.stdout)
    assert stats["unreadable"] == [
        f"wp-content/closed-link: cannot read its target {outside / 'inner'}: Permission denied",
        "wp-content/locked.bin: cannot read: Permission denied",
        "wp-content/private: cannot list: Permission denied",
    ]
    assert stats["unreadable_count"] == 3
    assert stats["warnings"] == ["wp-content/pipe: skipped (not a regular file, folder or link)"]
    assert stats["left_out"][0]["name"] == "wp-content/closed-link"
    into = tmp_path / "x"
    into.mkdir()
    extracted = subprocess.run(["tar", "-xf", str(part)], cwd=into, capture_output=True, text=True)
    assert (extracted.returncode, extracted.stderr) == (0, "")
    assert (into / "wp-content" / "fine.txt").read_text() == "readable"
    assert (into / "wp-content" / "private").is_dir() and not (into / "wp-content" / "locked.bin").exists()


def test_a_file_that_shrinks_while_read_is_unreadable_and_padded(tmp_path):
    stats = tarstream.TreeStats()
    out = io.BytesIO()
    tarstream._copy_body(out, io.BytesIO(b"abc"), "wp-content/x.log", 10, stats, None)
    assert out.getvalue() == b"abc" + b"\0" * 7
    assert stats.unreadable == ["wp-content/x.log: shrank while being read; padded with zeros"]
    assert stats.unreadable_count == 1 and stats.warnings == []


def test_root_entries_named_like_the_archives_own_members_get_a_name_of_their_own(tmp_path):
    """With `files: all`, a folder called database.sql and a link called manifest.json at the
    root are the site's: written as ./NAME, they survive the exclusions restore gives GNU tar
    for the archive's own members, and nothing else of the tree is renamed."""
    root = tmp_path / "site"
    (root / "database.sql").mkdir(parents=True)
    (root / "database.sql" / "2025.sql").write_text("-- old")
    (root / "real.json").write_text("{}")
    (root / "manifest.json").symlink_to("real.json")
    (root / "wp-content" / "database.sql").mkdir(parents=True)  # deeper down: its own name
    members, _, data = _members(root, "")
    names = {m.name for m in members}
    assert {"./database.sql", "./database.sql/2025.sql", "./manifest.json", "wp-content/database.sql"} <= names
    assert not names & {"database.sql", "manifest.json", "database.sql/2025.sql"}
    into = tmp_path / "x"
    into.mkdir()
    result = subprocess.run(["tar", "-xf", "-", "--anchored", "--exclude=database.sql", "--exclude=manifest.json"],
                            input=data, cwd=into, capture_output=True)
    assert (result.returncode, result.stderr) == (0, b"")
    assert (into / "database.sql" / "2025.sql").read_text() == "-- old"
    assert os.readlink(into / "manifest.json") == "real.json"
