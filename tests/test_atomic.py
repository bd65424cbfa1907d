"""featgs.atomic: a write either lands whole or leaves the old file (and no temporary) behind."""

from __future__ import annotations

import os
import stat

import pytest

from featgs.atomic import atomic_open, atomic_write_bytes, atomic_write_text


def _leftovers(folder, name: str) -> list:
    """Temporaries of ``name`` in ``folder`` (atomic_open names them ``.NAME.*.tmp``)."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.") or p.name.endswith(".tmp"))


@pytest.fixture
def umask():
    """Set the process umask for one test, then put the old one back."""
    old = os.umask(0o022)
    os.umask(old)
    yield os.umask
    os.umask(old)


def test_writes_new_and_replaces_old_files(tmp_path):
    path = tmp_path / "a.bin"
    atomic_write_bytes(path, b"\x00\x01first")
    assert path.read_bytes() == b"\x00\x01first"
    atomic_write_text(path, "zweite Fassung \u00e9")
    assert path.read_bytes() == "zweite Fassung \u00e9".encode("utf-8")
    assert _leftovers(tmp_path, "a.bin") == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin"]


def test_missing_parent_folders_are_made(tmp_path):
    path = tmp_path / "x" / "y" / "z.txt"
    atomic_write_text(path, "deep")
    assert path.read_text() == "deep"


def test_the_file_appears_whole_only_when_the_block_ends(tmp_path):
    path = tmp_path / "data.bin"
    path.write_bytes(b"old")
    with atomic_open(path) as f:
        f.write(b"new part one, ")
        f.flush()
        # mid-write a reader still sees the old file, and the partial data sits in a sibling
        assert path.read_bytes() == b"old"
        tmp = [p for p in tmp_path.iterdir() if p != path]
        assert len(tmp) == 1 and tmp[0].parent == path.parent and tmp[0].read_bytes() == b"new part one, "
        f.write(b"part two")
    assert path.read_bytes() == b"new part one, part two"
    assert _leftovers(tmp_path, "data.bin") == []


@pytest.mark.parametrize("error", [RuntimeError("boom"), KeyboardInterrupt()])
def test_an_exception_inside_the_write_keeps_the_old_file_and_no_temporary(tmp_path, error):
    path = tmp_path / "keep.json"
    path.write_text('{"old": true}')
    with pytest.raises(type(error)):
        with atomic_open(path, "w") as f:
            f.write('{"new": ')
            raise error
    assert path.read_text() == '{"old": true}'
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.json"]


def test_an_exception_leaves_nothing_where_there_was_nothing(tmp_path):
    path = tmp_path / "never.bin"
    with pytest.raises(ValueError, match="half"):
        with atomic_open(path) as f:
            f.write(b"half")
            raise ValueError("half written")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("mode", ["r", "rb", "a", "ab", "r+b"])
def test_read_and_append_modes_are_refused(tmp_path, mode):
    path = tmp_path / "f.txt"
    path.write_text("untouched")
    with pytest.raises(ValueError, match="write mode"):
        with atomic_open(path, mode):
            pass
    assert path.read_text() == "untouched"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.txt"]


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002, 0o027])
def test_permissions_are_those_of_a_plain_open(tmp_path, umask, mask):
    umask(mask)
    plain = tmp_path / "plain.txt"
    with open(plain, "w") as f:
        f.write("x")
    atomic_write_text(tmp_path / "atomic.txt", "x")
    expected = 0o666 & ~mask
    assert stat.S_IMODE((tmp_path / "plain.txt").stat().st_mode) == expected
    assert stat.S_IMODE((tmp_path / "atomic.txt").stat().st_mode) == expected


def test_replacing_keeps_no_trace_of_the_old_files_mode(tmp_path, umask):
    """The result gets the umask's permissions, not the temporary's 0600 nor the old file's."""
    umask(0o022)
    path = tmp_path / "m.txt"
    path.write_text("old")
    path.chmod(0o600)
    atomic_write_text(path, "new")
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_symlink_is_replaced_itself_and_its_target_is_left_alone(tmp_path):
    """The rename lands on the path given: a symlink there becomes a regular file; the file
    it pointed to keeps its content."""
    target = tmp_path / "target.txt"
    target.write_text("target content")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    atomic_write_text(link, "written through the link path")
    assert not link.is_symlink() and link.is_file()
    assert link.read_text() == "written through the link path"
    assert target.read_text() == "target content"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.txt", "target.txt"]


def test_a_dangling_symlink_is_replaced_too(tmp_path):
    link = tmp_path / "dangling.txt"
    link.symlink_to(tmp_path / "nowhere" / "x.txt")
    atomic_write_bytes(link, b"ok")
    assert not link.is_symlink() and link.read_bytes() == b"ok"
    assert not (tmp_path / "nowhere").exists()
