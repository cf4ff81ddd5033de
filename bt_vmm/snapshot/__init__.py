"""Snapshots: the whole machine in one file, and runs that go on from one.

Taken by `bt-vmm run ... --snapshot-on-exit FILE` (when the run stops where
the guest can go on: --timeout, --max-insns, gdb's `kill`) or gdb's `monitor
snapshot FILE` (the stopped guest); restored by `bt-vmm run --restore FILE`.
The restored guest goes on as if it had never stopped: same registers,
memory, devices and disks, and a clock that skips the gap (machine/clock.py).

The file is a zip archive (`unzip -l` lists it):

    snapshot.json   "format": "bt-vmm-snapshot", "version", what it pairs with
                    (kernel image SHA-256, memory size, engine, each disk's mode,
                    size and SHA-256), where the guest stands (PC, halted), the
                    guest's registers (general, EFLAGS with the virtual IF and
                    IOPL, x87, SSE), the vCPU (CPL, segments with the descriptors
                    they hold, CR0-4, DR0-7, GDTR/IDTR/LDTR/TR, MSRs), every
                    device's state and the clock
    ram.bin         guest RAM, byte for byte
    disk<N>.overlay the sectors the guest wrote to disk N, when it is an overlay:
                    records of a 64-bit little-endian LBA and the 512-byte sector

Not in it: what the monitor rebuilds as the guest runs (the TC, shadow page
tables, traces, where the monitor region sits: it moves out of the guest's
way again if need be), statistics, and host input the guest had not read.

Disks. A snapshot must pair with the disks' contents, so it is only taken
with disks attached `,ro` (never written) or `,overlay` (written in memory;
the written sectors go into the snapshot); a disk written straight through
to its file would move on from the snapshot. A restore needs the same disks,
in the same places and modes, with the same contents (their SHA-256 is
checked). A file from another kernel image, memory size, engine or format
version is refused with one line, status 2.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import struct
import zipfile
from dataclasses import asdict, dataclass

from bt_vmm.errors import BadInput, BtVmmError

FORMAT = "bt-vmm-snapshot"
VERSION = 1
SECTOR = 512
_CHUNK = 1 << 20


@dataclass
class Identity:
    """What a snapshot pairs with: a restore must bring the same."""
    kernel: str               # the kernel's file name (for messages)
    kernel_sha256: str
    mem_size: int
    engine: str
    disks: list[dict]         # per disk, in IDE order: {"path" (file name), "mode", "size"}


def identity(kernel_name: str, kernel: bytes, mem_size: int, engine: str, disks) -> Identity:
    return Identity(os.path.basename(kernel_name), hashlib.sha256(kernel).hexdigest(), mem_size,
                    engine, [_disk_identity(d) for d in disks])


def _disk_identity(disk) -> dict:
    mode = "overlay" if getattr(disk, "overlay", False) else "ro" if disk.read_only else "rw"
    return {"path": os.path.basename(disk.path), "mode": mode, "size": disk.size}


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def check_disks(disks) -> None:
    """Snapshots pair with ,ro and ,overlay disks only (see above)."""
    for d in disks:
        if not d.read_only and not getattr(d, "overlay", False):
            raise BadInput(f"snapshots need ,ro or ,overlay disks: {d.path} is written straight "
                           f"through (attach it as {d.path},overlay)")


def save(path: str, machine, engine, ident: Identity, pc: int, halted: bool) -> None:
    """Write the machine, standing at guest PC `pc`, to `path` (atomically)."""
    disks = _disks(machine)
    check_disks(disks)
    machine.devices.uart.flush()     # a partial line belongs to the run that printed it
    doc = {
        "format": FORMAT,
        "version": VERSION,
        "bt_vmm_version": _version(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "identity": asdict(ident) | {"disks": [dict(d, sha256=_file_sha256(disk.path))
                                                for d, disk in zip(ident.disks, disks)]},
        "position": {"pc": pc, "halted": halted},
        "cpu": engine.cpu_state(),
        "vcpu": machine.vcpu.state(),
        "devices": machine.devices_state(),
        "clock": machine.clock.state(),
    }
    # Written beside the destination and renamed over it: an existing file is
    # never left half-written. (Created like any file: the umask applies.)
    tmp = os.path.join(os.path.dirname(os.path.abspath(path)),
                       f".{os.path.basename(path)}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f, zipfile.ZipFile(f, "w", zipfile.ZIP_DEFLATED, compresslevel=1) as z:
            z.writestr("snapshot.json", json.dumps(doc, indent=1))
            with z.open("ram.bin", "w", force_zip64=True) as ram:
                view = memoryview(machine.ram)
                for off in range(0, len(view), _CHUNK):
                    ram.write(view[off:off + _CHUNK])
            for i, disk in enumerate(disks):
                if getattr(disk, "overlay", False):
                    z.writestr(f"disk{i}.overlay", b"".join(
                        struct.pack("<Q", lba) + data for lba, data in sorted(disk.written.items())))
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def _disks(machine) -> list:
    return [dev.disk for channel in machine.devices.ide for dev in channel.devices if dev.disk is not None]


def _version() -> str:
    from bt_vmm import __version__
    return __version__


class Snapshot:
    """A snapshot file, read and checked for its format."""

    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
            doc = json.loads(self._zip.read("snapshot.json"))
        except FileNotFoundError:
            raise BadInput(f"--restore: {path}: no such file") from None
        except IsADirectoryError:
            raise BadInput(f"--restore: {path}: is a directory, not a snapshot") from None
        except OSError as e:
            raise BadInput(f"--restore: {path}: cannot read: {e.strerror}") from None
        except (zipfile.BadZipFile, KeyError, ValueError, UnicodeDecodeError):
            raise BadInput(f"--restore: {path}: not a bt-vmm snapshot") from None
        if not isinstance(doc, dict) or doc.get("format") != FORMAT:
            raise BadInput(f"--restore: {path}: not a bt-vmm snapshot")
        if doc.get("version") != VERSION:
            raise BadInput(f"--restore: {path}: snapshot format version {doc.get('version')}, "
                           f"this bt-vmm reads version {VERSION}")
        self.doc = doc
        try:
            ident = doc["identity"]
            for key in ("kernel", "kernel_sha256", "mem_size", "engine", "disks"):
                ident[key]
            for key in ("cpu", "vcpu", "devices", "clock"):
                doc[key]
            self.mem_size: int = int(ident["mem_size"])
            self.pc: int = int(doc["position"]["pc"])
            self.halted: bool = bool(doc["position"]["halted"])
        except (KeyError, TypeError, ValueError) as e:
            raise BadInput(f"--restore: {path}: corrupt snapshot (missing or bad {e})") from None

    def check(self, ident: Identity) -> None:
        """The run restoring it must bring what it was taken with."""
        saved = self.doc["identity"]
        where = f"--restore: {self.path}"
        if saved["kernel_sha256"] != ident.kernel_sha256:
            raise BadInput(f"{where}: taken with kernel {saved['kernel']}, not {ident.kernel} "
                           "(a different image)")
        if saved["mem_size"] != ident.mem_size:
            raise BadInput(f"{where}: taken with -m {saved['mem_size'] >> 20}M, not "
                           f"{ident.mem_size >> 20}M")
        if saved["engine"] != ident.engine:
            raise BadInput(f"{where}: taken under --engine {saved['engine']}, not {ident.engine}")
        if len(saved["disks"]) != len(ident.disks):
            raise BadInput(f"{where}: taken with {len(saved['disks'])} disk(s), not {len(ident.disks)}")
        for n, (s, d) in enumerate(zip(saved["disks"], ident.disks), 1):
            if s["mode"] != d["mode"] or s["size"] != d["size"]:
                raise BadInput(f"{where}: disk {n} was {s['path']},{s['mode']} ({s['size']} bytes), "
                               f"not {d['path']},{d['mode']} ({d['size']} bytes)")

    def restore(self, machine) -> None:
        """Put the machine in the snapshot's state (before the engine is made);
        the engine takes the registers with restore_engine()."""
        disks = _disks(machine)
        for n, (saved, disk) in enumerate(zip(self.doc["identity"]["disks"], disks)):
            if _file_sha256(disk.path) != saved["sha256"]:
                raise BadInput(f"--restore: {self.path}: disk {n + 1} ({disk.path}) does not hold "
                               "the contents the snapshot was taken with")
            if getattr(disk, "overlay", False):
                raw = self._zip.read(f"disk{n}.overlay")
                rec = 8 + SECTOR
                disk.written = {struct.unpack_from("<Q", raw, i)[0]: raw[i + 8:i + rec]
                                for i in range(0, len(raw), rec)}
        try:
            with self._zip.open("ram.bin") as ram:
                view = memoryview(machine.ram)
                for off in range(0, len(view), _CHUNK):
                    n = ram.readinto(view[off:off + _CHUNK])
                    if n != min(_CHUNK, len(view) - off):
                        raise BadInput(f"--restore: {self.path}: RAM image is cut short")
            machine.restore_cpu(self.doc["vcpu"])
            machine.restore_devices(self.doc["devices"])
            machine.clock.restore(self.doc["clock"])
        except (KeyError, TypeError, ValueError, zipfile.BadZipFile) as e:
            raise BadInput(f"--restore: {self.path}: corrupt snapshot ({type(e).__name__}: {e})") from None

    def restore_engine(self, engine) -> None:
        engine.restore_cpu(self.doc["cpu"], self.halted)


def take(path: str, machine, engine, ident: Identity, pc: int, halted: bool) -> str:
    """save() for a request made while the guest runs (gdb's monitor): a line to show."""
    try:
        save(path, machine, engine, ident, pc, halted)
    except OSError as e:
        raise BtVmmError(f"cannot write {path}: {e.strerror}") from None
    return f"snapshot written to {path} (guest at {pc:#x})"
