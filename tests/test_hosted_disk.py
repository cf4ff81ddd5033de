"""Disk images: the host file behind the guest's IDE disk."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bt_vmm.errors import BadInput
from bt_vmm.hosted.disk import SECTOR_SIZE, DiskImage, open_disk


def make_image(path: Path, sectors: int = 16) -> bytes:
    data = bytes((i * 7 + i // SECTOR_SIZE) & 0xFF for i in range(sectors * SECTOR_SIZE))
    path.write_bytes(data)
    return data


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


# --- Bad specs: one line naming the file. ---


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.img"
    with pytest.raises(BadInput) as info:
        open_disk(str(path))
    assert str(info.value) == f"--disk: cannot use {path}: no such file"


def test_directory(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as info:
        open_disk(str(tmp_path))
    assert str(info.value) == f"--disk: cannot use {tmp_path}: is a directory"


def test_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.img"
    path.write_bytes(b"")
    with pytest.raises(BadInput) as info:
        open_disk(str(path))
    message = str(info.value)
    assert str(path) in message and "empty" in message and "\n" not in message


@pytest.mark.parametrize("size", [1, 511, 513, 1000])
def test_size_not_a_multiple_of_512(tmp_path: Path, size: int) -> None:
    path = tmp_path / "odd.img"
    path.write_bytes(b"\0" * size)
    with pytest.raises(BadInput) as info:
        open_disk(f"{path},ro")
    assert str(info.value) == f"--disk: cannot use {path}: size {size} bytes is not a multiple of 512"


def test_empty_spec_and_unknown_option(tmp_path: Path) -> None:
    with pytest.raises(BadInput, match="empty file name"):
        open_disk("")
    with pytest.raises(BadInput, match="empty file name"):
        open_disk(",ro")
    path = tmp_path / "d.img"
    make_image(path)
    with pytest.raises(BadInput) as info:
        open_disk(f"{path},rw")
    assert str(info.value) == (f"--disk: unknown option 'rw' in '{path},rw' "
                               "(expected PATH, PATH,ro or PATH,overlay)")


def test_comma_in_a_file_name(tmp_path: Path) -> None:
    path = tmp_path / "a,b.img"
    make_image(path, 2)
    with open_disk(str(path)) as disk:
        assert disk.sectors == 2 and not disk.read_only
    with open_disk(f"{path},ro") as disk:
        assert disk.read_only


@pytest.mark.skipif(os.geteuid() == 0, reason="root can open any file")
def test_not_writable_suggests_ro(tmp_path: Path) -> None:
    path = tmp_path / "locked.img"
    make_image(path)
    path.chmod(0o444)
    with pytest.raises(BadInput) as info:
        open_disk(str(path))
    assert str(path) in str(info.value) and "not writable" in str(info.value) and ",ro" in str(info.value)
    with open_disk(f"{path},ro") as disk:
        assert disk.read_only


@pytest.mark.skipif(os.geteuid() == 0, reason="root can open any file")
def test_unreadable(tmp_path: Path) -> None:
    path = tmp_path / "secret.img"
    make_image(path)
    path.chmod(0o000)
    with pytest.raises(BadInput) as info:
        open_disk(f"{path},ro")
    assert str(info.value) == f"--disk: cannot use {path}: not readable (permission denied)"


def test_not_a_regular_file(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    fd = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a peer, so opening it does not block
    try:
        with pytest.raises(BadInput, match="not a regular file"):
            open_disk(str(fifo))
    finally:
        os.close(fd)


# --- A good image. ---


def test_geometry_and_reads(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    data = make_image(path, 16)
    disk = open_disk(str(path))
    assert isinstance(disk, DiskImage)
    assert disk.sectors == 16 and disk.size == 16 * 512 and not disk.read_only
    assert disk.read(0, 1) == data[:512]
    assert disk.read(3, 5) == data[3 * 512 : 8 * 512]
    assert disk.read(15, 1) == data[-512:]
    assert disk.read(16, 0) == b""
    assert disk.sectors_read == 7
    disk.close()


def test_reads_outside_the_image_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    make_image(path, 4)
    with open_disk(str(path)) as disk:
        for lba, count in ((4, 1), (3, 2), (-1, 1), (0, 5)):
            with pytest.raises(ValueError):
                disk.read(lba, count)
        assert disk.sectors_read == 0


def test_write_changes_exactly_those_sectors_and_is_visible_at_once(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    before = make_image(path, 8)
    disk = open_disk(str(path))
    new = bytes([0xAB]) * 512 + bytes([0xCD]) * 512
    disk.write(2, new)
    # Written through: another reader sees it before any flush.
    after = path.read_bytes()
    assert after == before[:1024] + new + before[2048:]
    assert disk.sectors_written == 2 and disk.flushes == 0
    assert disk.read(2, 2) == new
    disk.close()


def test_writes_beyond_the_end_are_refused_and_write_nothing(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    before = make_image(path, 4)
    with open_disk(str(path)) as disk:
        with pytest.raises(ValueError):
            disk.write(4, b"\1" * 512)
        with pytest.raises(ValueError):
            disk.write(3, b"\1" * 1024)  # starts inside, ends outside
        with pytest.raises(ValueError):
            disk.write(-1, b"\1" * 512)
        with pytest.raises(ValueError):
            disk.write(0, b"\1" * 100)  # not whole sectors
        assert disk.sectors_written == 0
    assert path.read_bytes() == before
    assert path.stat().st_size == 4 * 512


def test_read_only_leaves_the_file_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    make_image(path, 4)
    before = snapshot(path)
    disk = open_disk(f"{path},ro")
    assert disk.read_only
    assert disk.read(0, 4) == before[0]
    with pytest.raises(PermissionError):
        disk.write(0, b"\0" * 512)
    disk.flush()
    disk.close()
    assert snapshot(path) == before


def test_flush_and_close_fsync(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "disk.img"
    make_image(path, 2)
    synced: list[int] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    disk = open_disk(str(path))
    disk.write(0, b"\x11" * 512)
    disk.flush()
    assert disk.flushes == 1 and len(synced) == 1
    disk.close()
    assert disk.flushes == 2 and len(synced) == 2
    assert disk.closed
    disk.close()  # twice is harmless
    assert len(synced) == 2
    with pytest.raises(ValueError):
        disk.read(0, 1)
    with pytest.raises(ValueError):
        disk.flush()


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    path = tmp_path / "disk.img"
    make_image(path, 2)
    with open_disk(str(path)):
        with pytest.raises(BadInput, match="in use by another process"):
            open_disk(str(path))
        with pytest.raises(BadInput, match="in use"):
            open_disk(f"{path},ro")
    with open_disk(f"{path},ro"), open_disk(f"{path},ro"):
        pass  # readers share
    with open_disk(str(path)):
        pass  # and the lock went away with the last close


def test_permission_messages_without_being_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same two messages as above, provoked by a fake os.open so they are
    checked even when the tests run as root."""
    import errno

    import bt_vmm.hosted.disk as disk_module

    path = tmp_path / "d.img"
    make_image(path)
    real_open = os.open
    readable = True

    def fake_open(name: str, flags: int, *args: int) -> int:
        if flags & os.O_RDWR or not readable:
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(name, flags, *args)

    monkeypatch.setattr(disk_module.os, "open", fake_open)
    monkeypatch.setattr(disk_module.os, "access", lambda p, mode: readable)
    with pytest.raises(BadInput) as info:
        open_disk(str(path))
    assert str(info.value) == (
        f"--disk: cannot use {path}: not writable (Permission denied); add ,ro to use it read-only")
    with open_disk(f"{path},ro") as disk:
        assert disk.sectors == 16
    readable = False
    with pytest.raises(BadInput) as info:
        open_disk(f"{path},ro")
    assert str(info.value) == f"--disk: cannot use {path}: not readable (permission denied)"


# --- Overlay disks: writes stay in memory, the image never changes. ---


def test_overlay_reads_through_keeps_writes_and_leaves_the_image(tmp_path: Path) -> None:
    path = tmp_path / "base.img"
    data = make_image(path)
    before = snapshot(path)
    disk = open_disk(f"{path},overlay")
    assert disk.overlay and not disk.read_only and disk.sectors == 16
    new = bytes([0xA5]) * SECTOR_SIZE
    disk.write(3, new)
    assert disk.read(2, 3) == data[2 * SECTOR_SIZE:3 * SECTOR_SIZE] + new + data[4 * SECTOR_SIZE:5 * SECTOR_SIZE]
    assert set(disk.written) == {3}
    disk.flush()
    with pytest.raises(ValueError):
        disk.write(16, new)                        # past the end: refused, nothing kept
    assert set(disk.written) == {3}
    disk.close()
    assert snapshot(path) == before


def test_overlay_moves_sectors_through_a_buffer_like_an_image(tmp_path):
    """read_into/write_from (what the IDE device and the host world use) see
    the guest's writes in front of the image, in runs, and never touch the file."""
    from bt_vmm.hosted.overlay import OverlayDisk
    path = tmp_path / "base.img"
    original = os.urandom(64 * 512)
    path.write_bytes(original)
    disk = OverlayDisk(open_disk(f"{path},ro"))
    disk.write(5, b"\xAA" * 512)
    disk.write(7, b"\xBB" * 1024)
    buf = memoryview(bytearray(64 * 512))
    assert disk.read_into(0, 64, buf) == 64
    assert bytes(buf) == disk.read(0, 64)
    assert bytes(buf[5 * 512:9 * 512]) == b"\xAA" * 512 + original[6 * 512:7 * 512] + b"\xBB" * 1024
    disk.buffer[:512] = b"\xCC" * 512
    assert disk.write_from_buffer(10, 1) == 1 and disk.read(10, 1) == b"\xCC" * 512
    assert disk.read_to_buffer(4, 5) == 5 and bytes(disk.buffer[:5 * 512]) == disk.read(4, 5)
    disk.close()
    assert path.read_bytes() == original
