"""The world switch: the one way the VMM world reaches the host world.

The VMM world (CPU, translator, TC, shadow MMU, the devices the guest hits
often) and the host world (terminal, disk image files, the clock that paces
timers, output files) are two processes. They share guest memory
(shared_memory.py) and two sockets (SOCK_SEQPACKET, so every message arrives
whole and alone):

* the switch socket carries **requests** from the VMM world: a kind (a name in
  REQUESTS) and a small payload; the VMM world waits for the host world's
  **reply** (OK and a payload, or an error). One request and its reply is one
  world switch, counted by reason with its round-trip time;
* the event socket carries **events** from the host world (a name in
  EVENTS): a timer deadline passed, console input arrived, stop the guest, or
  a question the VMM world answers on the same socket (the live panel's
  counters). A thread of the VMM world reads them, so the monitor thread is
  never interrupted by the host world except through the preemption flag.

Requests are batched where the guest allows: a line of console output, a
whole data block (or a 256-sector read batch) per disk request, with the data
itself in shared memory. A payload larger than one datagram is sent in
fragments and reassembled.

A service any host-side component offers (the gdb stub's socket, say) is a new
name in REQUESTS, a handler registered with `HostServices.register` in the
host world, and `WorldSwitch.call(name, payload)` in the VMM world.
"""

from __future__ import annotations

import json
import random
import socket
import struct
import time
from array import array
from collections import Counter
from typing import Callable

from bt_vmm.errors import EXIT_HOST_LOST, EXIT_MONITOR, BtVmmError

# Request kinds (VMM world -> host world), each answered by a reply.
REQUESTS = (
    "ping",            # nothing: the round trip itself (benchmarks/world_switch.py)
    "plan",            # -> the run's configuration (vmm_world.RunPlan as JSON)
    "console-write",   # bytes for the serial console, a line at a time
    "disk-read",       # disk, LBA, count, shared-memory offset -> sectors read
    "disk-write",      # disk, LBA, count, shared-memory offset -> sectors written
    "disk-flush",      # disk -> fsync done
    "alarm",           # the timer deadline in the control page moved earlier: look again
    "output",          # an output file the command line named (stats JSON, TC profile), whole
    "done",            # the run's outcome; the host world answers, then the VMM world exits
)
# Event kinds (host world -> VMM world).
EVENTS = (
    "alarm",           # a deadline passed (repeated every millisecond until the VMM re-arms)
    "input",           # bytes typed at (or piped into) the console
    "stop",            # stop the guest and report (Ctrl-C at the host world)
    "snapshot",        # the live panel asks for the counters; answered with a "snapshot" event
)
REQUEST = {name: i for i, name in enumerate(REQUESTS)}
EVENT = {name: i for i, name in enumerate(EVENTS)}

OK, ERROR = 0, 1              # reply kinds
_HEADER = struct.Struct("<BB")   # kind, flags
_MORE = 1                     # flag: a fragment, more of the same message follows
MAX_FRAGMENT = 60 << 10       # payload bytes per datagram: under every default socket buffer
SAMPLE_LIMIT = 1 << 18        # round-trip times kept per reason; past it, a uniform sample


class ChannelClosed(Exception):
    """The other world closed its end (it exited, crashed or was killed)."""


HOST_LOST_MESSAGE = "the host world died: the guest was stopped"


class HostWorldLost(BtVmmError):
    """The host world is gone: the VMM world stops the guest."""

    status = EXIT_HOST_LOST

    def __init__(self, message: str = HOST_LOST_MESSAGE) -> None:
        super().__init__(message)


class Channel:
    """Messages (kind, payload) over one SOCK_SEQPACKET socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buf = bytearray(_HEADER.size + MAX_FRAGMENT)
        self._view = memoryview(self._buf)

    @staticmethod
    def pair() -> tuple[Channel, Channel]:
        a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        return Channel(a), Channel(b)

    def fileno(self) -> int:
        return self.sock.fileno()

    def send(self, kind: int, payload: bytes | memoryview = b"") -> None:
        try:
            if len(payload) <= MAX_FRAGMENT:
                self.sock.send(_HEADER.pack(kind, 0) + payload)
                return
            view = memoryview(payload)
            for start in range(0, len(view), MAX_FRAGMENT):
                last = start + MAX_FRAGMENT >= len(view)
                self.sock.send(_HEADER.pack(kind, 0 if last else _MORE)
                               + view[start:start + MAX_FRAGMENT])
        except (BrokenPipeError, ConnectionResetError) as e:
            raise ChannelClosed(str(e)) from None

    def recv(self) -> tuple[int, bytes]:
        parts = []
        while True:
            try:
                n = self.sock.recv_into(self._buf)
            except ConnectionResetError as e:
                raise ChannelClosed(str(e)) from None
            if n < _HEADER.size:
                raise ChannelClosed("end of file")
            kind, flags = self._buf[0], self._buf[1]
            data = bytes(self._view[_HEADER.size:n])
            if not flags & _MORE and not parts:
                return kind, data
            parts.append(data)
            if not flags & _MORE:
                return kind, b"".join(parts)

    def close(self) -> None:
        self.sock.close()


# --- errors cross as JSON -------------------------------------------------------------
def encode_error(exc: BaseException) -> bytes:
    if isinstance(exc, OSError):
        doc = {"type": "os", "errno": exc.errno, "message": exc.strerror or str(exc)}
    elif isinstance(exc, BtVmmError):
        doc = {"type": "bt-vmm", "status": exc.status, "message": str(exc)}
    else:
        doc = {"type": "internal", "message": f"{type(exc).__name__}: {exc}"}
    return json.dumps(doc).encode()


def decode_error(payload: bytes) -> BaseException:
    doc = json.loads(payload)
    if doc["type"] == "os":
        return OSError(doc["errno"], doc["message"])
    if doc["type"] == "bt-vmm":
        exc = BtVmmError(doc["message"])
        exc.status = doc["status"]
        return exc
    exc = BtVmmError(f"host world: internal error: {doc['message']}")
    exc.status = EXIT_MONITOR
    return exc


# --- the VMM world's end --------------------------------------------------------------
class WorldSwitch:
    """Crossings to the host world, counted by reason with their round-trip times."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.counts: Counter[str] = Counter()
        self.events: Counter[str] = Counter()     # the host world's events, by kind (EventThread)
        self.total_ns: Counter[str] = Counter()
        self._samples: dict[str, array] = {}
        self._perf = time.perf_counter_ns

    def call(self, reason: str, payload: bytes | memoryview = b"") -> bytes:
        """Cross to the host world with `reason` and `payload`; its reply's payload.
        The host world's OSError comes back as an OSError, its one-line errors as
        BtVmmError with their status; HostWorldLost if it is gone."""
        t0 = self._perf()
        try:
            self.channel.send(REQUEST[reason], payload)
            status, reply = self.channel.recv()
        except ChannelClosed:
            raise HostWorldLost() from None
        self._record(reason, self._perf() - t0)
        if status != OK:
            raise decode_error(reply)
        return reply

    def _record(self, reason: str, ns: int) -> None:
        n = self.counts[reason] = self.counts[reason] + 1
        self.total_ns[reason] += ns
        samples = self._samples.get(reason)
        if samples is None:
            samples = self._samples[reason] = array("Q")
        if n <= SAMPLE_LIMIT:
            samples.append(ns)
        else:      # reservoir sampling: every crossing equally likely to be kept
            slot = random.randrange(n)
            if slot < SAMPLE_LIMIT:
                samples[slot] = ns

    def stats(self) -> dict[str, dict[str, float]]:
        """reason -> count, median and p99 round-trip time (microseconds), total time (ms)."""
        out = {}
        for reason in sorted(self.counts):
            s = sorted(self._samples[reason])
            out[reason] = {"count": self.counts[reason],
                           "median_us": round(percentile(s, 50) / 1e3, 1),
                           "p99_us": round(percentile(s, 99) / 1e3, 1),
                           "total_ms": round(self.total_ns[reason] / 1e6, 3)}
        return out


def percentile(sorted_values, p: float) -> float:
    """The p-th percentile of sorted values (nearest rank)."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * p // 100))
    return float(sorted_values[int(rank) - 1])


# --- the host world's end -------------------------------------------------------------
Handler = Callable[[bytes], bytes | None]


class HostServices:
    """The host world's request handlers; `serve` answers requests until a
    handler calls `finish()` (the "done" request) or the VMM world goes away
    (ChannelClosed)."""

    def __init__(self) -> None:
        self._handlers: dict[int, Handler] = {}
        self._finished = False
        self.register("ping", lambda payload: b"")

    def register(self, reason: str, handler: Handler) -> None:
        self._handlers[REQUEST[reason]] = handler

    def finish(self) -> None:
        """Stop serving after the reply to the request being handled."""
        self._finished = True

    def serve(self, channel: Channel) -> None:
        handlers = self._handlers
        while not self._finished:
            kind, payload = channel.recv()
            handler = handlers.get(kind)
            try:
                if handler is None:
                    raise ValueError(f"unknown request kind {kind}")
                reply = handler(payload)
            except Exception as e:   # the VMM world decides what an error means to the guest
                channel.send(ERROR, encode_error(e))
                continue
            channel.send(OK, reply or b"")
