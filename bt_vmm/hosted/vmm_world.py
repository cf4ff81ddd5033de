"""The VMM world: the process that runs the guest.

It holds the CPU (unicorn), the translator and TC, the shadow MMU and the
devices, and nothing of the host's: its file descriptors are the two sockets
to the host world, the shared guest memory, an empty pipe for standard input
and the host world's standard error for standard output and error (for its
last words if the host world dies, and BT_VMM_DEBUG tracebacks; never the
guest's console). Everything else crosses a world switch (switch.py):

* its configuration (`RunPlan`), asked for with the "plan" request; the kernel
  image and modules are already in guest RAM, put there by the host world;
* console output ("console-write", a line at a time: `HostSink`);
* disk I/O ("disk-read", "disk-write", "disk-flush": `HostDisk`, data in the
  shared drive buffers);
* the timer deadline, in the shared control page, and an "alarm" switch when
  it moved earlier (hosted/alarm.py's `HostAlarm`);
* the TC profile ("output"), and the run's outcome ("done").

The host world's events (alarm, console input, stop, counters for the live
panel) arrive on a second socket, read by `EventThread`.

`run_guest` is the run itself, the same code in both --hosted modes; `main` is
this process's entry point (`python -m bt_vmm.hosted.vmm_world SWITCH_FD
EVENT_FD MEMORY_FD`, started by host_world.py).
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import socket
import struct
import sys
import threading
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from bt_vmm.errors import EXIT_HOST_LOST, EXIT_INTERRUPTED, EXIT_MONITOR, BtVmmError
from bt_vmm.hosted.alarm import HostAlarm
from bt_vmm.hosted.shared_memory import SharedMemory
from bt_vmm.hosted.switch import (EVENT, EVENTS, HOST_LOST_MESSAGE, Channel, ChannelClosed,
                                  HostWorldLost, WorldSwitch)

# What run_guest may import, loaded before the run (see main).
PRELOAD = ("bt_vmm.engines.bt", "bt_vmm.engines.trap", "bt_vmm.loaders", "bt_vmm.machine.pc",
           "bt_vmm.stats", "bt_vmm.tcprofile.cli", "bt_vmm.tcprofile.format",
           "bt_vmm.tcprofile.live", "bt_vmm.tcprofile.recorder")


@dataclass
class RunPlan:
    """What the VMM world needs to know about a run: plain data (it crosses as JSON)."""

    guest: str                   # the kernel's name (for the profile and messages)
    mem: int                     # guest RAM, bytes
    boot: dict[str, Any] | None  # the loader's BootImage, but for the chunks the host
                                 # world has already put in guest RAM (boot_fields)
    engine: str = "bt"
    audit: bool = False
    check: bool = False
    count: bool = False          # CCF execution counters (--stats, --stats-json, --tc-profile, --max-insns)
    max_insns: int | None = None
    timeout: float | None = None
    tc_size: int | None = None
    disks: list[tuple[int, bool]] = field(default_factory=list)   # (sectors, read-only) per drive
    console_input: bool = False  # the host world reads console input for COM1
    stats: bool = False          # collect the statistics (--stats, --stats-json)
    tc_profile: bool = False     # record a TC profile


@dataclass
class Outcome:
    """How a run ended, as the host world reports it (plain data: crosses as JSON)."""

    status: int
    message: str | None = None   # printed as "bt-vmm: MESSAGE" on stderr
    dump: str = ""               # register dump after the message
    notes: list[str] = field(default_factory=list)    # further stderr lines (--check's verdict)
    stats: dict[str, Any] | None = None
    completed: bool = True       # the guest ran to a result (False: the run itself failed)


def boot_fields(boot) -> dict[str, Any]:
    """A BootImage as RunPlan carries it: everything but the RAM contents."""
    return {k: v for k, v in asdict(boot).items() if k != "chunks"}


# --- the run, in either mode ----------------------------------------------------------
@dataclass
class VmmSide:
    """The host's resources as the VMM world reaches them: direct objects with
    --hosted inproc, world-switch proxies in the VMM world's process."""

    memory: SharedMemory
    sink: Any                                  # .write(bytes)
    disks: Sequence[Any]                       # ide.DiskBackend
    make_alarm: Callable                       # request -> alarm (arm/wake/close)
    attach_input: Callable[[Any], None] = lambda machine: None
    world_switch: WorldSwitch | None = None
    output: Callable[[str, bytes], None] = lambda name, data: None
    on_engine: Callable[[Any], None] = lambda engine: None     # the engine exists / is done (None)
    # How the machine starts (returns the guest PC): the boot image, or with
    # --hosted inproc a debugging session's snapshot; and its last word.
    start_machine: Callable[[Any, Any], int] = lambda machine, boot: _boot(machine, boot)
    finish: Callable[[Any, Any, Any], str | None] = lambda machine, engine, result: None


def _boot(machine, boot) -> int:
    machine.load(boot)
    return boot.entry


def run_guest(plan: RunPlan, side: VmmSide) -> Outcome:
    """Build the machine, run the guest, collect what the host world reports."""
    from bt_vmm.engines.bt import BTEngine, EngineOptions
    from bt_vmm.loaders import BootImage
    from bt_vmm.machine.pc import Machine
    from bt_vmm import stats as stats_mod

    machine = Machine(plan.mem, side.sink, side.disks, memory=side.memory)
    machine.make_alarm = side.make_alarm
    machine.world_switch = side.world_switch
    boot = None if plan.boot is None else BootImage(
        chunks=[], **{k: tuple(v) if isinstance(v, list) else v for k, v in plan.boot.items()})
    try:
        entry = side.start_machine(machine, boot)
    except BaseException:
        machine.close()
        raise
    side.attach_input(machine)
    options = EngineOptions(check=plan.check, count=plan.count, max_insns=plan.max_insns,
                            timeout=plan.timeout)
    if plan.tc_profile:
        from bt_vmm.tcprofile.cli import start_recording
        options.recorder = start_recording()
    if plan.tc_size is not None:
        options.tc_size = plan.tc_size
    if plan.engine == "trap":
        from bt_vmm.engines.trap import TrapEngine
        engine = TrapEngine(machine, options, audit=plan.audit)
    else:
        engine = BTEngine(machine, options)
    side.on_engine(engine)
    try:
        result = engine.run(entry)
    finally:
        side.on_engine(None)
        machine.close()
    out = Outcome(result.status)
    if result.status != 0 and not result.status & 1:
        out.message, out.dump = result.reason, result.dump
    if plan.check and engine.check_violations == 0 and result.status != EXIT_MONITOR:
        out.notes.append(f"check passed: no guest kernel instruction ran outside the TC "
                         f"({engine.tcache.stats['translated']} TUs translated)")
    note = side.finish(machine, engine, result)
    if note is not None:
        out.notes.append(note)
    if plan.tc_profile:
        from bt_vmm.tcprofile.cli import recorded_profile
        side.output("tc-profile", recorded_profile(options.recorder, engine, result, plan.guest))
    if plan.stats:
        out.stats = stats_mod.collect(engine, result, plan.count)
    return out


# --- world-switch proxies -------------------------------------------------------------
class HostSink:
    """COM1's output: each line (the UART batches them) crosses to the host world."""

    def __init__(self, switch: WorldSwitch) -> None:
        self._switch = switch
        self.bytes_written = 0

    def write(self, data: bytes) -> None:
        self._switch.call("console-write", data)
        self.bytes_written += len(data)


_DISK_REQUEST = struct.Struct("<BQIQ")     # drive, LBA, sector count, shared-memory offset
_COUNT = struct.Struct("<I")


class HostDisk:
    """A disk image the host world holds open: the drive's buffer is in shared
    memory, and a request names the drive, the sectors and the buffer's offset
    there; the host world preads or pwrites the data in place."""

    def __init__(self, switch: WorldSwitch, drive: int, memory: SharedMemory, sectors: int,
                 read_only: bool) -> None:
        self._switch = switch
        self.drive = drive
        self.sectors = sectors
        self.read_only = read_only
        self.buffer = memory.drive_buffer(drive)
        self._offset = memory.drive_buffer_offset(drive)

    def read_to_buffer(self, lba: int, count: int) -> int:
        return self._transfer("disk-read", lba, count)

    def write_from_buffer(self, lba: int, count: int) -> int:
        return self._transfer("disk-write", lba, count)

    def _transfer(self, reason: str, lba: int, count: int) -> int:
        reply = self._switch.call(reason, _DISK_REQUEST.pack(self.drive, lba, count, self._offset))
        return _COUNT.unpack(reply)[0]

    def flush(self) -> None:
        self._switch.call("disk-flush", bytes([self.drive]))

    def close(self) -> None:
        """The host world closes the image (it owns the file)."""


def decode_disk_request(payload: bytes) -> tuple[int, int, int, int]:
    return _DISK_REQUEST.unpack(payload)


def encode_count(n: int) -> bytes:
    return _COUNT.pack(n)


class EventThread:
    """Reads the host world's events and hands each to its handler (`on`):
    alarm firings and stop requests go to the engine, console input to COM1's
    queue, counter requests are answered on the same socket. The end of the
    socket means the host world died, and the guest is stopped."""

    def __init__(self, channel: Channel, switch: WorldSwitch) -> None:
        self._channel = channel
        self._switch = switch
        self._lock = threading.Lock()
        self._engine = None
        self._counters = None
        self._stop: tuple[int, str] | None = None
        self._input: list[bytes] = []
        self.machine = None
        self._handlers: dict[int, Callable[[bytes], None]] = {}
        self.on("alarm", self._alarm)
        self.on("input", self._console_input)
        self.on("stop", lambda payload: self._request_stop(EXIT_INTERRUPTED, payload.decode() or "interrupted"))
        self.on("snapshot", self._snapshot)
        self._thread = threading.Thread(target=self._loop, name="bt-vmm-events", daemon=True)

    def on(self, kind: str, handler: Callable[[bytes], None]) -> None:
        """Call `handler(payload)` on this thread for each event of `kind` (a name in EVENTS)."""
        self._handlers[EVENT[kind]] = handler

    def start(self) -> None:
        self._thread.start()

    def on_engine(self, engine) -> None:
        from bt_vmm.tcprofile.live import CounterReader
        with self._lock:
            self._engine = engine
            if engine is not None:      # after the run the reader stays: the panel's last refresh
                self._counters = CounterReader(engine)
            stop = self._stop
        if engine is not None and stop is not None:
            engine.request_stop(*stop)

    def _loop(self) -> None:
        while True:
            try:
                kind, payload = self._channel.recv()
            except (ChannelClosed, OSError):
                self._request_stop(EXIT_HOST_LOST, HOST_LOST_MESSAGE)
                return
            self._switch.events[EVENTS[kind]] += 1
            try:
                self._handlers[kind](payload)
            except Exception as e:     # a monitor bug: stop the guest, say so in one line
                if os.environ.get("BT_VMM_DEBUG"):
                    import traceback
                    traceback.print_exc()
                self._request_stop(EXIT_MONITOR, f"internal error in the event thread: "
                                                 f"{type(e).__name__}: {e}")

    # the handlers
    def _alarm(self, payload: bytes) -> None:
        engine = self._engine
        if engine is not None:
            engine.alarm.request()

    def _request_stop(self, status: int, reason: str) -> None:
        with self._lock:
            if self._stop is None:
                self._stop = (status, reason)
            engine = self._engine
        if engine is not None:
            engine.request_stop(status, reason)

    def _snapshot(self, payload: bytes) -> None:
        """The answer carries the question's sequence number (its payload)."""
        counters = self._counters
        doc = counters.snapshot() if counters is not None else {}
        try:
            self._channel.send(EVENT["snapshot"], payload + json.dumps(doc).encode())
        except ChannelClosed:
            pass

    # COM1's input, as the machine's console_input
    def attach_input(self, machine) -> None:
        """Console input is queued here and drained into COM1 by the machine's tick."""
        self.machine = machine
        machine.console_input = self

    def _console_input(self, payload: bytes) -> None:
        with self._lock:
            self._input.append(payload)
        if self.machine is not None:
            self.machine.on_host_input()

    def drain(self) -> bytes:
        with self._lock:
            data, self._input = b"".join(self._input), []
        return data

    def close(self) -> None:
        """The host world restores its terminal itself."""


# --- the process ------------------------------------------------------------------------
def main(argv: list[str]) -> int:
    """The VMM world's process: ask for the plan, run the guest, report, exit."""
    # Ctrl-C at a terminal reaches the whole process group: the host world
    # decides what it means (a clean stop, see host_world.py).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # Everything a run may need is imported now: once the guest runs, this
    # process opens no file at all, not even its own code.
    for module in PRELOAD:
        importlib.import_module(module)
    switch_fd, event_fd, memory_fd = (int(a) for a in argv)
    switch = WorldSwitch(Channel(socket.socket(fileno=switch_fd)))
    events = EventThread(Channel(socket.socket(fileno=event_fd)), switch)
    events.start()
    try:
        plan = RunPlan(**json.loads(switch.call("plan")))
        memory = SharedMemory(plan.mem, len(plan.disks), fd=memory_fd)
        memory.close_fd()            # mapped: the descriptor is no longer needed
        side = VmmSide(
            memory=memory,
            sink=HostSink(switch),
            disks=[HostDisk(switch, i, memory, sectors, ro) for i, (sectors, ro) in enumerate(plan.disks)],
            make_alarm=lambda request: HostAlarm(switch, memory.deadline, request),
            attach_input=events.attach_input if plan.console_input else (lambda machine: None),
            world_switch=switch,
            output=lambda name, data: switch.call("output", name.encode() + b"\0" + data),
            on_engine=events.on_engine,
        )
        try:
            outcome = run_guest(plan, side)
        except HostWorldLost:
            raise
        except BtVmmError as e:
            outcome = Outcome(e.status, str(e), completed=False)
        except Exception as e:
            if os.environ.get("BT_VMM_DEBUG"):
                import traceback
                traceback.print_exc()
            outcome = Outcome(EXIT_MONITOR, f"internal error: {type(e).__name__}: {e} "
                                            f"(set BT_VMM_DEBUG=1 for a traceback)", completed=False)
        if outcome.status == EXIT_HOST_LOST:
            raise HostWorldLost()
        switch.call("done", json.dumps(asdict(outcome)).encode())
    except HostWorldLost:
        # Nobody is left to report to but the standard error we inherited.
        try:
            print(f"bt-vmm: {HOST_LOST_MESSAGE}", file=sys.stderr, flush=True)
        except OSError:
            pass
        return EXIT_HOST_LOST
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
