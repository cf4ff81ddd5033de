"""The memory the two worlds share: guest RAM, then the drives' data buffers.

One memfd (anonymous shared memory: no host file, nothing in the file system)
holds, at these offsets,

    0 .. mem_size                         guest-physical RAM (unicorn maps it by pointer)
    mem_size .. + 4 KiB                   the control page: the VMM world's next timer
                                          deadline, which the host world's alarm reads
    mem_size + 4 KiB + i * DRIVE_BUFFER_BYTES   drive i's data buffer (one per --disk)

The host world creates it and hands the descriptor to the VMM world when it
spawns it; both map it MAP_SHARED. So the host world moves disk data without
copying it through a world switch: a disk request names a range of this memory
by offset and the host world preads into it or pwrites from it directly
(DMA-style). The IDE drives' PIO buffers live here; an offset below mem_size is
guest RAM itself, which is where a bus-master DMA engine would point.
The host world also writes the kernel image and modules straight into RAM
before the VMM world starts (it plays the boot loader).
"""

from __future__ import annotations

import math
import mmap
import os
import struct

SECTOR_SIZE = 512
DRIVE_BUFFER_SECTORS = 256          # sectors one disk request moves at most (the largest READ batch)
DRIVE_BUFFER_BYTES = DRIVE_BUFFER_SECTORS * SECTOR_SIZE   # 128 KiB, a multiple of the page size
CONTROL_BYTES = 4096


class SharedMemory:
    """Guest RAM and the drive buffers in one memfd; `fd` is what crosses to the other world."""

    def __init__(self, mem_size: int, drives: int = 0, fd: int | None = None) -> None:
        self.mem_size = mem_size
        self.drives = drives
        self.size = mem_size + CONTROL_BYTES + drives * DRIVE_BUFFER_BYTES
        created = fd is None
        if created:
            # Not inherited by accident: the host world passes it on explicitly.
            fd = os.memfd_create("bt-vmm-guest-memory", os.MFD_CLOEXEC)
            os.ftruncate(fd, self.size)
        elif os.fstat(fd).st_size != self.size:
            raise ValueError(f"shared memory is {os.fstat(fd).st_size} bytes, expected {self.size}")
        self.fd = fd
        self.ram = mmap.mmap(fd, mem_size, mmap.MAP_SHARED)
        # The rest as a mapping of its own (mem_size is page-aligned), so code
        # holding `ram` can never index past the end of guest RAM.
        self._io = mmap.mmap(fd, self.size - mem_size, mmap.MAP_SHARED, offset=mem_size)
        self.deadline = SharedDeadline(memoryview(self._io)[:SharedDeadline.SIZE])
        if created:
            self.deadline.store(None)

    def drive_buffer(self, drive: int) -> memoryview:
        """Drive `drive`'s data buffer (DRIVE_BUFFER_BYTES bytes)."""
        if not 0 <= drive < self.drives:
            raise IndexError(f"no drive buffer {drive} (have {self.drives})")
        start = CONTROL_BYTES + drive * DRIVE_BUFFER_BYTES
        return memoryview(self._io)[start:start + DRIVE_BUFFER_BYTES]

    def drive_buffer_offset(self, drive: int) -> int:
        """Where drive `drive`'s buffer starts, as an offset into the whole memory."""
        return self.mem_size + CONTROL_BYTES + drive * DRIVE_BUFFER_BYTES

    def view(self, offset: int, length: int) -> memoryview:
        """[offset, offset+length) of the shared memory; ValueError if it is not inside."""
        if offset < 0 or length < 0 or offset + length > self.size:
            raise ValueError(f"range {offset:#x}+{length:#x} is outside the shared memory "
                             f"({self.size:#x} bytes)")
        if offset + length <= self.mem_size:
            return memoryview(self.ram)[offset:offset + length]
        if offset >= self.mem_size + CONTROL_BYTES:
            start = offset - self.mem_size
            return memoryview(self._io)[start:start + length]
        raise ValueError(f"range {offset:#x}+{length:#x} is not all guest RAM or all drive buffers")

    def close_fd(self) -> None:
        """Drop the descriptor (the mappings stay): nothing more to hand over."""
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class SharedDeadline:
    """One deadline (host monotonic seconds, or None) written by one process
    and read by another without a lock: a sequence count before the value,
    odd while a write is in progress, so a reader never takes half a write.
    (Each field is one aligned 8-byte store, and x86 keeps stores in order.)"""

    SIZE = 16
    _SEQ = struct.Struct("<Q")
    _VALUE = struct.Struct("<d")          # inf: no deadline

    def __init__(self, view: memoryview) -> None:
        self._view = view
        (self._seq,) = self._SEQ.unpack_from(view, 0)

    def store(self, deadline: float | None) -> None:
        """The writer (the VMM world): there is only one."""
        self._seq += 1
        self._SEQ.pack_into(self._view, 0, self._seq)           # odd: writing
        self._VALUE.pack_into(self._view, 8, math.inf if deadline is None else deadline)
        self._seq += 1
        self._SEQ.pack_into(self._view, 0, self._seq)           # even: done

    def load(self) -> float | None:
        while True:
            (seq,) = self._SEQ.unpack_from(self._view, 0)
            if seq & 1:
                continue
            (value,) = self._VALUE.unpack_from(self._view, 8)
            if self._SEQ.unpack_from(self._view, 0)[0] == seq:
                return None if value == math.inf else value
