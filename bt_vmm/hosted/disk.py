"""The host world's side of a guest hard disk: a raw image file.

`--disk` takes `PATH` or `PATH,ro`. The image is the disk, sector for sector:
sector N is bytes 512*N .. 512*N+511 of the file, with no header and no holes
the guest cannot see. Its size must be a non-zero multiple of 512 bytes; the
disk has exactly that many sectors and never grows or shrinks.

Transfers. A drive moves data through its data buffer: `read_into` and
`write_from` move sectors between the image and any buffer, in place
(`preadv`, `pwrite`). With the host world in its own process the drive's
buffer is in the memory the two worlds share (shared_memory.py), so a world
switch carries only the disk, the LBA, the count and the buffer's offset; with
--hosted inproc the device uses `buffer` here (`read_to_buffer`,
`write_from_buffer`).

Durability. Writes go straight to the file with `os.pwrite` on a descriptor
opened O_RDWR; nothing is buffered in this process. The IDE device stores a
data block before it reports the block done, so every write the guest has
seen acknowledged is in the host file -- visible to any other reader and safe
if either world crashes or is killed. It is in the host kernel's page cache,
though, not necessarily on stable storage: `flush()` (os.fsync) puts it there,
and runs when the guest issues FLUSH CACHE and when the disk is closed. A host
power failure can lose only writes the guest never flushed, which is what an
ATA disk with its write cache enabled promises.

`PATH,ro` opens the file O_RDONLY: writes are refused here, and the IDE device
refuses them earlier still (ABRT), so the file stays byte-identical.

`PATH,overlay` opens the file O_RDONLY too, but the guest's writes succeed:
they are kept in the monitor, in front of the image, for the run
(hosted/overlay.py). Snapshots need ,ro or ,overlay disks.

An image open read-write holds an exclusive flock(2) lock, a read-only one a
shared lock, so two monitors cannot write one disk behind each other's backs
(and a reader cannot watch one change underneath it).
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat

from ..errors import BadInput
from .shared_memory import DRIVE_BUFFER_BYTES

SECTOR_SIZE = 512  # bytes per sector: the unit of every read, write and size check
READ_ONLY_OPTION = "ro"  # options after the comma in a --disk spec
OVERLAY_OPTION = "overlay"


class DiskImage:
    """A raw disk image file, addressed in 512-byte sectors."""

    def __init__(self, path: str, read_only: bool = False) -> None:
        self.path = path
        self.read_only = read_only
        self._fd: int | None = None
        # The drive's data buffer when the device uses the image directly
        # (--hosted inproc); across worlds the device's buffer is in shared
        # memory and the host world calls read_into/write_from on it.
        self.buffer = memoryview(bytearray(DRIVE_BUFFER_BYTES))

        # Counters.
        self.sectors_read = 0  # sectors returned by read()
        self.sectors_written = 0  # sectors stored by write()
        self.flushes = 0  # fsyncs: FLUSH CACHE from the guest, and close()
        self.host_errors = 0  # reads and writes the host failed part way (read_into, write_from)

        self._fd, size = _open_image(path, read_only)
        self.size = size  # bytes
        self.sectors = size // SECTOR_SIZE  # sector count: the disk's capacity

    def __repr__(self) -> str:
        mode = "ro" if self.read_only else "rw"
        return f"DiskImage({self.path!r}, {self.sectors} sectors, {mode})"

    def __enter__(self) -> DiskImage:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def closed(self) -> bool:
        return self._fd is None

    def read(self, lba: int, count: int) -> bytes:
        """Sectors lba .. lba+count-1; ValueError if any lies outside the image."""
        fd = self._check(lba, count)
        want = count * SECTOR_SIZE
        offset = lba * SECTOR_SIZE
        chunks = []
        while want:
            chunk = os.pread(fd, want, offset)
            if not chunk:
                # The file shrank under us (someone else truncated it).
                raise OSError(errno.EIO, f"{self.path}: unexpected end of file at byte {offset}")
            chunks.append(chunk)
            want -= len(chunk)
            offset += len(chunk)
        self.sectors_read += count
        return b"".join(chunks)

    def write(self, lba: int, data: bytes) -> None:
        """Store whole sectors at lba; refused (nothing written) if read-only or out of range."""
        if len(data) % SECTOR_SIZE:
            raise ValueError(f"{self.path}: write of {len(data)} bytes is not whole sectors")
        count = len(data) // SECTOR_SIZE
        fd = self._check(lba, count)  # range first: never write outside the image
        if self.read_only:
            raise PermissionError(f"{self.path}: disk is read-only")
        view = memoryview(data)
        offset = lba * SECTOR_SIZE
        while view:
            done = os.pwrite(fd, view, offset)
            view = view[done:]
            offset += done
        self.sectors_written += count

    def read_into(self, lba: int, count: int, dest: memoryview) -> int:
        """Sectors lba .. lba+count-1 into `dest`; the number of sectors read,
        fewer than `count` only if the host failed on the next one (counted in
        host_errors). ValueError if any lies outside the image."""
        fd = self._check(lba, count)
        want = count * SECTOR_SIZE
        done = 0
        try:
            while done < want:
                n = os.preadv(fd, [dest[done:want]], lba * SECTOR_SIZE + done)
                if n == 0:     # the file shrank under us (someone else truncated it)
                    raise OSError(errno.EIO, "unexpected end of file")
                done += n
        except OSError:
            self.host_errors += 1
        self.sectors_read += done // SECTOR_SIZE
        return done // SECTOR_SIZE

    def write_from(self, lba: int, src: memoryview) -> int:
        """Store `src` (whole sectors) at lba; the number of sectors written,
        fewer than asked only if the host failed on the next one. Refused
        (PermissionError, nothing written) if read-only; ValueError out of range."""
        if len(src) % SECTOR_SIZE:
            raise ValueError(f"{self.path}: write of {len(src)} bytes is not whole sectors")
        fd = self._check(lba, len(src) // SECTOR_SIZE)
        if self.read_only:
            raise PermissionError(f"{self.path}: disk is read-only")
        done = 0
        try:
            while done < len(src):
                done += os.pwrite(fd, src[done:], lba * SECTOR_SIZE + done)
        except OSError:
            self.host_errors += 1
        self.sectors_written += done // SECTOR_SIZE
        return done // SECTOR_SIZE

    def read_to_buffer(self, lba: int, count: int) -> int:
        """`read_into` the start of the drive's buffer."""
        return self.read_into(lba, count, self.buffer)

    def write_from_buffer(self, lba: int, count: int) -> int:
        """`write_from` the first `count` sectors of the drive's buffer."""
        return self.write_from(lba, self.buffer[:count * SECTOR_SIZE])

    def flush(self) -> None:
        """Put every write so far on the host's stable storage (os.fsync)."""
        fd = self._live()
        if not self.read_only:
            os.fsync(fd)
        self.flushes += 1

    def close(self) -> None:
        """Flush (if writable) and release the file; closing twice is harmless."""
        if self._fd is None:
            return
        fd = self._fd
        try:
            if not self.read_only:
                os.fsync(fd)
                self.flushes += 1
        finally:
            self._fd = None
            os.close(fd)  # also drops the flock

    def _live(self) -> int:
        if self._fd is None:
            raise ValueError(f"{self.path}: disk image is closed")
        return self._fd

    def _check(self, lba: int, count: int) -> int:
        fd = self._live()
        if lba < 0 or count < 0 or lba + count > self.sectors:
            raise ValueError(
                f"{self.path}: sectors {lba}..{lba + count - 1} outside the image "
                f"(0..{self.sectors - 1})"
            )
        return fd


def _open_image(path: str, read_only: bool) -> tuple[int, int]:
    """Open and vet the image; (fd, size in bytes), or BadInput naming the file."""

    def bad(reason: str) -> BadInput:
        return BadInput(f"--disk: cannot use {path}: {reason}")

    if not path:
        raise BadInput("--disk: empty file name")
    if not os.path.lexists(path):
        raise bad("no such file")
    if os.path.isdir(path):
        raise bad("is a directory")
    flags = (os.O_RDONLY if read_only else os.O_RDWR) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS) and not read_only:
            if os.access(path, os.R_OK):
                raise bad(f"not writable ({exc.strerror}); add ,ro to use it read-only") from exc
        if exc.errno in (errno.EACCES, errno.EPERM):
            raise bad("not readable (permission denied)") from exc
        raise bad(exc.strerror or str(exc)) from exc
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or stat.S_ISBLK(mode)):
            raise bad("not a regular file or block device")
        size = os.lseek(fd, 0, os.SEEK_END)  # st_size is 0 for block devices
        if size == 0:
            raise bad("empty (a disk image needs at least one 512-byte sector)")
        if size % SECTOR_SIZE:
            raise bad(f"size {size} bytes is not a multiple of {SECTOR_SIZE}")
        try:
            fcntl.flock(fd, (fcntl.LOCK_SH if read_only else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise bad("in use by another process (locked)") from exc
            # No locking on this file system (ENOLCK, EOPNOTSUPP): go on unlocked.
    except BaseException:
        os.close(fd)
        raise
    return fd, size


def open_disk(spec: str):
    """Turn a `--disk` argument (PATH, PATH,ro or PATH,overlay) into an open
    image; BadInput otherwise."""
    path, option = spec, None
    if "," in spec:
        head, tail = spec.rsplit(",", 1)
        if tail in (READ_ONLY_OPTION, OVERLAY_OPTION):
            path, option = head, tail
        elif not os.path.lexists(os.path.expanduser(spec)):
            # A comma in a file name is allowed; an unknown option is not.
            raise BadInput(f"--disk: unknown option {tail!r} in {spec!r} "
                           "(expected PATH, PATH,ro or PATH,overlay)")
    image = DiskImage(os.path.expanduser(path) if path else path, read_only=option is not None)
    if option == OVERLAY_OPTION:
        from bt_vmm.hosted.overlay import OverlayDisk
        return OverlayDisk(image)
    return image
