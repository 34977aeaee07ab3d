"""Packages are written atomically, never clobber a user's path unless forced, and carry
hashes that detect tampering."""

from __future__ import annotations

import pytest

from optc.artifact import PackageWriter, file_table, read_package, write_json, FORMAT, MANIFEST
from optc.errors import InvalidModelError, UsageError


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if p.name.startswith(".")]


def test_failure_leaves_nothing(tmp_path):
    dest = tmp_path / "a" / "b" / "pkg"
    with pytest.raises(RuntimeError):
        with PackageWriter(dest) as tmp:
            (tmp / "model.so").write_bytes(b"x")
            raise RuntimeError("boom")
    assert not dest.exists() and not (tmp_path / "a").exists()
    assert _leftovers(tmp_path) == []


def test_keyboard_interrupt_leaves_nothing(tmp_path):
    dest = tmp_path / "pkg"
    with pytest.raises(KeyboardInterrupt):
        with PackageWriter(dest) as tmp:
            (tmp / "f").write_text("x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_existing_destination_needs_force(tmp_path):
    dest = tmp_path / "pkg"
    dest.mkdir()
    (dest / "mine.txt").write_text("user data")
    with pytest.raises(UsageError, match="exists; pass --force"):
        PackageWriter(dest)
    assert (dest / "mine.txt").read_text() == "user data"
    with PackageWriter(dest, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert sorted(p.name for p in dest.iterdir()) == ["new.txt"]
    assert _leftovers(tmp_path) == []


def test_existing_file_is_not_overwritten(tmp_path):
    f = tmp_path / "file"
    f.write_text("keep")
    with pytest.raises(UsageError, match="file exists"):
        PackageWriter(f)
    assert f.read_text() == "keep"


def test_unwritable_parent(tmp_path):
    parent = tmp_path / "ro"
    parent.mkdir()
    parent.chmod(0o500)
    try:
        import os

        if os.access(parent, os.W_OK):  # running as root: permissions do not bind
            pytest.skip("permission bits not enforced for this user")
        with pytest.raises(UsageError, match="permission denied"):
            PackageWriter(parent / "pkg")
    finally:
        parent.chmod(0o700)


def test_not_a_directory_parent(tmp_path):
    (tmp_path / "plain").write_text("x")
    with pytest.raises(UsageError, match="not a directory"):
        PackageWriter(tmp_path / "plain" / "pkg")


def test_manifest_hashes_detect_changes(tmp_path):
    pkg = tmp_path / "pkg"
    with PackageWriter(pkg) as tmp:
        (tmp / "model.so").write_bytes(b"library")
        write_json(tmp / MANIFEST, {"format": FORMAT, "files": file_table(tmp)})
    assert read_package(pkg)["files"]["model.so"]["bytes"] == 7
    (pkg / "model.so").write_bytes(b"librarX")
    with pytest.raises(InvalidModelError, match="model.so modified"):
        read_package(pkg)
    (pkg / "model.so").unlink()
    with pytest.raises(InvalidModelError, match="model.so missing"):
        read_package(pkg)
    with pytest.raises(InvalidModelError, match="not an optc package"):
        read_package(tmp_path)
