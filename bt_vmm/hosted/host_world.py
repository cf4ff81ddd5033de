"""The host world: the process the user starts, owner of every host resource.

`bt-vmm run` checks its command line, reads the kernel and modules, opens the
disk images and output files, and then runs the guest here in one of two ways:

* `--hosted process` (the default): it creates the shared guest memory, puts
  the kernel and modules in it (the boot loader's job), spawns the VMM world
  (vmm_world.py) with the two world-switch sockets and the memory, and serves
  its requests (switch.py) until it reports the outcome. Its threads read the
  console (a terminal in raw mode for the run) and run the alarm that paces
  the guest's timers; both send events to the VMM world.
* `--hosted inproc`: everything in this process, the same run code
  (`vmm_world.run_guest`) with the host's objects in place of the proxies.
  For debugging and tests that need to look inside.

Failures:

* the VMM world dies (killed, crashed): the serve loop sees its socket close;
  the alarm and the console reader stop, the terminal is restored, the disk
  images are fsynced and closed, and `bt-vmm` ends with EXIT_VMM_LOST (14) and
  one line naming the signal or status. Every disk write the guest saw
  complete was pwritten before its completion (disk.py), so it is in the image.
* the host world dies: the VMM world's event thread sees its socket close and
  stops the guest at the next instruction boundary; it exits with
  EXIT_HOST_LOST (12) and one line on the standard error it inherited.
* Ctrl-C (SIGINT) or SIGTERM here: the VMM world is asked to stop the guest
  ("stop" event) and reports as usual, with status 130 and statistics if asked
  for; a second one kills the VMM world. (In raw mode a typed Ctrl-C is the
  guest's, as on a serial line.)
"""

from __future__ import annotations

import io
import json
import os
import select
import signal
import site
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import bt_vmm
from bt_vmm.errors import EXIT_INTERRUPTED, EXIT_VMM_LOST, BadInput
from bt_vmm.hosted.alarm import Alarm
from bt_vmm.hosted.disk import DiskImage
from bt_vmm.hosted.shared_memory import SECTOR_SIZE, SharedMemory
from bt_vmm.hosted.switch import EVENT, Channel, ChannelClosed, HostServices
from bt_vmm.hosted.vmm_world import Outcome, RunPlan, decode_disk_request, encode_count

MODES = ("process", "inproc")
VMM_EXIT_GRACE = 5.0          # seconds the VMM world gets to exit after reporting
SNAPSHOT_WAIT = 0.5           # seconds the live panel waits for the VMM world's counters


@dataclass
class HostResources:
    """What the host world holds for a run, opened and checked by the command line."""

    sink: Any                                    # hosted.console.SerialSink
    disks: Sequence[DiskImage] = ()
    console_fd: int | None = None                # read for COM1 (with --serial stdio)
    panel: Any = None                            # tcprofile.live.LivePanel (--stats live)
    stats_table: bool = False                    # --stats
    stats_json: str | None = None                # --stats-json FILE
    tc_profile: str | None = None                # --tc-profile FILE
    session: Any = None                          # cli.debugging.Session (--hosted inproc only)
    kernel: bytes = b""                          # the kernel file's bytes (the session's identity)
    outputs: dict[str, bytes] = field(default_factory=dict)   # what the VMM world produced


def run(plan: RunPlan, chunks, res: HostResources, mode: str = "process") -> int:
    """Run the guest that `plan` describes; the exit status."""
    memory = SharedMemory(plan.mem, len(res.disks) if mode == "process" else 0)
    for addr, data in chunks:           # the kernel, modules and boot information
        memory.ram[addr:addr + len(data)] = data
    if mode == "inproc":
        outcome = _run_inproc(plan, memory, res)
    else:
        outcome = _run_process(plan, memory, res)
    return present(outcome, res)


def present(outcome: Outcome, res: HostResources) -> int:
    """The end of a run, as the user sees it (both modes): the console output
    closed, the reason, --check's verdict, the profile and statistics files."""
    if outcome.completed:
        res.sink.finish()
    else:
        res.sink.close()
    if outcome.message is not None:
        print(f"bt-vmm: {outcome.message}", file=sys.stderr)
        if outcome.dump:
            print(outcome.dump, file=sys.stderr)
    for note in outcome.notes:
        print(f"bt-vmm: {note}", file=sys.stderr)
    if res.tc_profile is not None and "tc-profile" in res.outputs:
        write_output("--tc-profile", res.tc_profile, res.outputs["tc-profile"])
    if outcome.stats is not None:
        from bt_vmm import stats as stats_mod
        if res.stats_table:
            stats_mod.print_table(outcome.stats)
        if res.stats_json:
            try:
                stats_mod.write_json(outcome.stats, res.stats_json)
            except OSError as e:
                raise BadInput(f"--stats-json: cannot write {res.stats_json}: {e.strerror}") from None
    return outcome.status


def write_output(option: str, path: str, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
    except OSError as e:
        raise BadInput(f"{option}: cannot write {path}: {e.strerror}") from None


# --- everything in this process ----------------------------------------------------------
def _run_inproc(plan: RunPlan, memory: SharedMemory, res: HostResources) -> Outcome:
    from bt_vmm.hosted.vmm_world import VmmSide, run_guest

    session, panel = res.session, res.panel

    def on_engine(engine) -> None:
        if engine is not None:
            if session is not None:
                session.attach(engine.m, engine)
            if panel is not None:
                panel.start(engine)
        else:
            if panel is not None:
                panel.stop()
            if session is not None:
                session.close()

    side = VmmSide(
        memory=memory, sink=res.sink, disks=res.disks, make_alarm=Alarm,
        attach_input=(lambda machine: machine.attach_console_input(res.console_fd))
        if plan.console_input else (lambda machine: None),
        output=res.outputs.__setitem__, on_engine=on_engine)
    if session is not None:
        side.start_machine = lambda machine, boot: session.start_machine(
            machine, res.disks, plan.guest, res.kernel, boot)
        side.finish = session.finish
    try:
        return run_guest(plan, side)        # closes the disks and the console input
    except BaseException:
        res.sink.close()
        raise


# --- the VMM world in its own process ----------------------------------------------------
class _Host:
    """The host world's services for one VMM world."""

    def __init__(self, plan: RunPlan, memory: SharedMemory, res: HostResources,
                 events: Channel) -> None:
        self.plan = plan
        self.memory = memory
        self.res = res
        self.events = events
        self.outcome: Outcome | None = None
        self.interrupts = 0
        self.console = None
        self.proc: subprocess.Popen | None = None
        self._snapshots = 0          # live-panel questions asked
        self.alarm = Alarm(lambda: self._event("alarm"), source=memory.deadline.load)
        s = self.services = HostServices()
        s.register("plan", lambda payload: json.dumps(asdict(plan)).encode())
        s.register("console-write", self._console_write)
        s.register("disk-read", self._disk_read)
        s.register("disk-write", self._disk_write)
        s.register("disk-flush", lambda payload: self._disk(payload[0]).flush())
        s.register("alarm", lambda payload: self.alarm.poke())
        s.register("output", self._output)
        s.register("done", self._done)

    def _event(self, kind: str, payload: bytes = b"") -> None:
        try:
            self.events.send(EVENT[kind], payload)
        except (ChannelClosed, OSError):
            pass             # the VMM world is gone: the serve loop finds out

    # requests
    def _console_write(self, payload: bytes) -> None:
        self.res.sink.write(payload)

    def _disk(self, drive: int) -> DiskImage:
        if not 0 <= drive < len(self.res.disks):
            raise ValueError(f"no disk {drive}")
        return self.res.disks[drive]

    def _disk_read(self, payload: bytes) -> bytes:
        drive, lba, count, offset = decode_disk_request(payload)
        dest = self.memory.view(offset, count * SECTOR_SIZE)
        return encode_count(self._disk(drive).read_into(lba, count, dest))

    def _disk_write(self, payload: bytes) -> bytes:
        drive, lba, count, offset = decode_disk_request(payload)
        src = self.memory.view(offset, count * SECTOR_SIZE)
        return encode_count(self._disk(drive).write_from(lba, src))

    def _output(self, payload: bytes) -> None:
        name, _, data = payload.partition(b"\0")
        if name != b"tc-profile":
            raise ValueError(f"unknown output {name!r}")
        self.res.outputs[name.decode()] = data

    def _done(self, payload: bytes) -> None:
        self.outcome = Outcome(**json.loads(payload))
        if self.res.panel is not None:
            self.res.panel.stop()       # its last refresh: the final counters, still answered
        self.services.finish()

    # the console and the live panel
    def start_console(self) -> None:
        from bt_vmm.hosted.console import ConsoleInput
        self._input_lock = threading.Lock()
        self.console = ConsoleInput(self.res.console_fd, self._forward_input)
        self._forward_input()      # what arrived before `self.console` was set

    def _forward_input(self) -> None:
        """Console input to the VMM world, in the order it was typed."""
        with self._input_lock:
            if self.console is not None:
                data = self.console.drain()
                if data:
                    self._event("input", data)

    def snapshot(self) -> dict:
        """The VMM world's counters for the live panel ({} if it does not
        answer in time). Questions are numbered: an answer that comes too late
        for its question is dropped, not taken for the next one's."""
        self._snapshots += 1
        tag = self._snapshots.to_bytes(4, "little")
        self._event("snapshot", tag)
        end = time.monotonic() + SNAPSHOT_WAIT
        while True:
            ready, _, _ = select.select([self.events.fileno()], [], [], max(0.0, end - time.monotonic()))
            if not ready:
                return {}
            try:
                kind, payload = self.events.recv()
            except (ChannelClosed, OSError):
                return {}
            if kind == EVENT["snapshot"] and payload[:4] == tag:
                return json.loads(payload[4:])

    # signals
    def on_signal(self, signum: int, _frame) -> None:
        self.interrupts += 1
        if self.interrupts == 1:
            self._event("stop", b"interrupted")
        else:
            self.kill()

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()

    def close(self) -> None:
        """Stop the threads, restore the terminal, close the disks (fsync)."""
        self.alarm.close()
        if self.console is not None:
            self.console.close()
        for disk in self.res.disks:
            disk.close()


def _run_process(plan: RunPlan, memory: SharedMemory, res: HostResources) -> Outcome:
    switch_host, switch_vmm = Channel.pair()
    events_host, events_vmm = Channel.pair()
    host = _Host(plan, memory, res, events_host)
    # Signal handlers belong to the main thread (bt-vmm's; a caller of main()
    # on another thread keeps its own).
    on_main = threading.current_thread() is threading.main_thread()
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)} if on_main else {}
    try:
        for sig in handlers:
            signal.signal(sig, host.on_signal)
        host.proc = _spawn(switch_vmm, events_vmm, memory)
        switch_vmm.close()          # the VMM world's ends now live there only
        events_vmm.close()
        memory.close_fd()
        if plan.console_input:
            host.start_console()
        if res.panel is not None:
            res.panel.start(host.snapshot)
        try:
            host.services.serve(switch_host)
        except ChannelClosed:
            pass
        outcome = host.outcome or _vmm_lost(host)
    except BaseException:
        host.kill()
        raise
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        if res.panel is not None:
            res.panel.stop()
        host.close()
        _reap(host.proc)
        switch_host.close()
        events_host.close()
    return outcome


def _spawn(switch: Channel, events: Channel, memory: SharedMemory) -> subprocess.Popen:
    """Start the VMM world. Its descriptors: the two sockets and the memory;
    standard input an empty pipe, standard output and error this process's
    standard error (for its last words, never for the guest's console)."""
    read_end, write_end = os.pipe()
    os.close(write_end)
    fds = (switch.fileno(), events.fileno(), memory.fd)
    try:
        stderr = sys.stderr.fileno()
    except (AttributeError, ValueError, io.UnsupportedOperation):
        stderr = 2           # sys.stderr is not a file (main() called with it redirected)
    # The VMM world must run this very bt_vmm (the two ends of the switch are
    # one protocol): from a source tree, put that tree first on its path; an
    # installed package is where the VMM world's interpreter looks anyway.
    env = dict(os.environ)
    here = str(Path(bt_vmm.__file__).resolve().parent.parent)
    if here not in site.getsitepackages() + [site.getusersitepackages()]:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [here, os.environ.get("PYTHONPATH")]))
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "bt_vmm.hosted.vmm_world", *(str(fd) for fd in fds)],
            stdin=read_end, stdout=stderr, stderr=stderr, pass_fds=fds, close_fds=True, env=env)
    finally:
        os.close(read_end)


def _vmm_lost(host: _Host) -> Outcome:
    """The VMM world closed its socket without reporting: how it ended."""
    proc = host.proc
    try:
        code = proc.wait(VMM_EXIT_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    how = f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"
    if host.interrupts > 1:
        return Outcome(EXIT_INTERRUPTED, "interrupted: the VMM world was killed", completed=False)
    disks = "; the disk images were flushed and closed" if host.res.disks else ""
    return Outcome(EXIT_VMM_LOST, f"the VMM world died ({how}){disks}", completed=False)


def _reap(proc: subprocess.Popen | None) -> None:
    if proc is None:
        return
    try:
        proc.wait(VMM_EXIT_GRACE)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
