"""A disk whose writes stay in the monitor: `--disk PATH,overlay`.

The image file is opened read-only and never changes; sectors the guest
writes are kept in memory, in front of it, for the rest of the run (QEMU's
-snapshot). This is the disk a snapshot can pair with: the snapshot records
the image's identity (size and SHA-256) and holds the written sectors
(bt_vmm/snapshot), so the restored guest sees exactly the disk it saw, and
the image can be shared by any number of snapshots and runs.
"""

from __future__ import annotations

from bt_vmm.hosted.disk import SECTOR_SIZE, DiskImage


class OverlayDisk:
    """Sectors written by the guest, over a read-only image (same interface as DiskImage)."""

    read_only = False
    overlay = True

    def __init__(self, base: DiskImage) -> None:
        self.base = base
        self.path = base.path
        self.size = base.size
        self.sectors = base.sectors
        self.written: dict[int, bytes] = {}     # LBA -> the sector the guest wrote

        # Counters.
        self.sectors_read = 0
        self.sectors_written = 0
        self.flushes = 0

    def __repr__(self) -> str:
        return f"OverlayDisk({self.path!r}, {self.sectors} sectors, {len(self.written)} written)"

    @property
    def closed(self) -> bool:
        return self.base.closed

    def read(self, lba: int, count: int) -> bytes:
        self._check(lba, count)
        if not any(lba + i in self.written for i in range(count)):
            data = self.base.read(lba, count)
        else:
            data = b"".join(self.written.get(lba + i) or self.base.read(lba + i, 1) for i in range(count))
        self.sectors_read += count
        return data

    def write(self, lba: int, data: bytes) -> None:
        if len(data) % SECTOR_SIZE:
            raise ValueError(f"{self.path}: write of {len(data)} bytes is not whole sectors")
        count = len(data) // SECTOR_SIZE
        self._check(lba, count)
        for i in range(count):
            self.written[lba + i] = bytes(data[i * SECTOR_SIZE:(i + 1) * SECTOR_SIZE])
        self.sectors_written += count

    def read_into(self, lba: int, count: int, dest: memoryview) -> int:
        """DiskImage.read_into, through the overlay."""
        self._check(lba, count)
        i = 0
        while i < count:
            sector = self.written.get(lba + i)
            if sector is not None:
                dest[i * SECTOR_SIZE:(i + 1) * SECTOR_SIZE] = sector
                i += 1
                continue
            j = i + 1                  # a run of sectors the guest never wrote: one read
            while j < count and lba + j not in self.written:
                j += 1
            got = self.base.read_into(lba + i, j - i, dest[i * SECTOR_SIZE:j * SECTOR_SIZE])
            if got < j - i:            # the host failed part way
                i += got
                break
            i = j
        self.sectors_read += i
        return i

    def write_from(self, lba: int, src: memoryview) -> int:
        """DiskImage.write_from, into the overlay (the image is never written)."""
        self.write(lba, bytes(src))
        return len(src) // SECTOR_SIZE

    def read_to_buffer(self, lba: int, count: int) -> int:
        return self.read_into(lba, count, self.buffer)

    def write_from_buffer(self, lba: int, count: int) -> int:
        return self.write_from(lba, self.buffer[:count * SECTOR_SIZE])

    @property
    def buffer(self) -> memoryview:
        """The drive's data buffer (the image's)."""
        return self.base.buffer

    def flush(self) -> None:
        self.flushes += 1          # nothing reaches the image: there is nothing to make durable

    def close(self) -> None:
        self.base.close()

    def _check(self, lba: int, count: int) -> None:
        if lba < 0 or count < 0 or lba + count > self.sectors:
            raise ValueError(f"{self.path}: sectors {lba}..{lba + count - 1} outside the image "
                             f"(0..{self.sectors - 1})")
