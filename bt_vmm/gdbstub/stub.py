"""The gdb stub: gdb's remote protocol on one side, the engine's debug target
(engines/debug.py) on the other.

It is the engine's debugger front end: when the guest stops, the engine calls
`stopped` from its run loop and the stub serves gdb's requests -- registers,
memory, breakpoints, watchpoints, `monitor` commands -- until gdb resumes,
detaches or kills. Bytes reach it through `feed` from whatever carries them
(tcp.py reads a socket on a thread of its own) and leave through the sender
the transport registered with `connected`; so the stub never touches a
socket, and the transport can change without it.

A Ctrl-C from gdb while the guest runs asks the target to stop (from the
transport's thread); a client that connects while the guest runs stops it
the same way; one that goes away detaches (the guest runs on, with no
breakpoints or watchpoints left behind).
"""

from __future__ import annotations

import queue
import threading
from typing import Callable

from bt_vmm.engines.debug import DebugError, StopEvent
from bt_vmm.gdbstub import registers as R
from bt_vmm.gdbstub.packets import INTERRUPT, Packet, PacketReader, frame, unescape

PACKET_SIZE = 0x4000
SIGINT, SIGTRAP = 2, 5
_WATCH_KIND = {2: "write", 3: "read", 4: "access"}
_WATCH_REPLY = {"write": "watch", "read": "rwatch", "access": "awatch"}
_DISCONNECTED = object()


class GdbStub:
    def __init__(self, monitor: Callable[[str], str] | None = None) -> None:
        self.target = None                     # the engine's DebugControl (attach)
        self.monitor = monitor                 # `monitor CMD` -> its output
        self._reader = PacketReader()
        self._inbox: queue.Queue = queue.Queue()
        self._send: Callable[[bytes], None] | None = None
        self._send_lock = threading.Lock()
        self._connected = threading.Condition()
        self._acks = True
        self._last: bytes = b""                # the last packet sent (resent on '-')
        self._running = False                  # the client resumed the guest and waits for a stop
        self._ctrl_c = False                   # it asked for the stop (0x03)
        self._gone = False                     # a client left without detaching
        self._stop_text = "S05"                # the reply to `?`: why the guest stands

    def attach(self, target) -> None:
        self.target = target
        if self._send is not None:             # a client came before the engine existed
            target.interrupt()

    # --- the transport's side (any thread) --------------------------------------------------
    def connected(self, send: Callable[[bytes], None]) -> None:
        """A client arrived: the guest stops for it (if it runs)."""
        with self._connected:
            self._reader = PacketReader()
            self._acks = True
            self._running = False              # it has resumed nothing yet: it asks with `?`
            self._send = send
            self._inbox = queue.Queue()
            self._connected.notify_all()
        if self.target is not None:
            self.target.interrupt()

    def disconnected(self) -> None:
        """The client went: if the guest runs, it stops once more so that the
        client's breakpoints and watchpoints go too."""
        with self._connected:
            self._send = None
            self._gone = True
            self._inbox.put(_DISCONNECTED)
        if self._running and self.target is not None:
            self.target.interrupt()

    def feed(self, data: bytes) -> None:
        for item in self._reader.feed(data):
            if isinstance(item, Packet):
                if self._acks:
                    self._write(b"+" if item.ok else b"-")
                if item.ok:
                    self._inbox.put(item.payload)
            elif item == bytes((INTERRUPT,)):
                if self._running and self.target is not None:
                    self._ctrl_c = True
                    self.target.interrupt()
            elif item == b"-" and self._last:
                self._write(self._last)

    def _write(self, data: bytes) -> None:
        with self._send_lock:
            if self._send is not None:
                try:
                    self._send(data)
                except OSError:
                    pass                       # the reader sees the connection go

    def _reply(self, payload: bytes | str) -> None:
        if isinstance(payload, str):
            payload = payload.encode()
        self._last = frame(payload)
        self._write(self._last)

    # --- the engine's side (its run loop's thread) -----------------------------------------
    def stopped(self, event: StopEvent) -> str:
        """The guest stopped: serve gdb until it resumes; returns continue,
        step, detach or kill."""
        if self._gone:
            self._gone = False
            if self._send is None:             # and no other came: the guest runs on
                self._running = False
                return "detach"
            self.target.detach()               # another came: the first one's breakpoints go
        with self._connected:
            while self._send is None:
                self._connected.wait(0.5)      # --wait-gdb: wait for the first client
        self._stop_text = self._stop_reply(event)
        self._ctrl_c = False
        if self._running:
            self._running = False
            self._reply(self._stop_text)
        while True:
            payload = self._next_packet()
            if payload is _DISCONNECTED:
                self._gone = False
                return "detach"
            action = self._handle(payload)
            if action is not None:
                if action in ("continue", "step"):
                    self._running = True
                return action

    def exited(self, status: int, reason: str) -> None:
        """The run ended: tell a client that waits for the guest."""
        if self._send is not None and self._running:
            self._reply(f"W{status & 0xFF:02x}")
        self._running = False

    def _next_packet(self):
        while True:
            try:
                return self._inbox.get(timeout=0.5)
            except queue.Empty:
                continue

    def _stop_reply(self, event: StopEvent) -> str:
        # SIGINT for gdb's own Ctrl-C; a client that connects finds the guest
        # stopped with SIGTRAP, as after an attach.
        signal = SIGINT if event.reason == "interrupt" and self._ctrl_c else SIGTRAP
        extra = ""
        if event.reason == "breakpoint":
            extra = "swbreak:;"
        elif event.reason == "watch" and event.watch is not None:
            extra = f"{_WATCH_REPLY[event.watch.kind]}:{event.watch.addr:x};"
        return f"T{signal:02x}thread:1;{extra}"

    # --- commands ---------------------------------------------------------------------------
    def _handle(self, payload: bytes) -> str | None:
        """Serve one packet; returns an action when it resumes or ends the session."""
        text = payload.decode("latin-1")
        cmd = text[:1]
        try:
            if cmd == "?":
                self._reply(self._stop_text)
            elif cmd == "g":
                self._reply(R.encode_all(self.target).hex())
            elif cmd == "G":
                self._write_registers(bytes.fromhex(text[1:]))
                self._reply("OK")
            elif cmd == "p":
                n = int(text[1:], 16)
                if not 0 <= n < len(R.REGISTERS):
                    self._reply("E01")
                else:
                    self._reply(R.encode(R.REGISTERS[n], R.values(self.target)[n]).hex())
            elif cmd == "P":
                n, value = text[1:].split("=")
                self._set_register(int(n, 16), bytes.fromhex(value))
                self._reply("OK")
            elif cmd == "m":
                addr, length = (int(x, 16) for x in text[1:].split(","))
                self._reply(self.target.read_memory(addr, min(length, PACKET_SIZE // 2)).hex())
            elif cmd == "M":
                where, data = text[1:].split(":", 1)
                addr, _ = (int(x, 16) for x in where.split(","))
                self.target.write_memory(addr, bytes.fromhex(data))
                self._reply("OK")
            elif cmd == "X":
                where, _, data = payload[1:].partition(b":")
                addr, length = (int(x, 16) for x in where.decode().split(","))
                if length:
                    self.target.write_memory(addr, unescape(data)[:length])
                self._reply("OK")
            elif cmd in "Zz":
                self._breakpoint(cmd == "Z", text[1:])
            elif cmd in "cCsS":
                return self._resume_legacy(cmd, text[1:])
            elif text.startswith("vCont"):
                return self._vcont(text)
            elif cmd == "D":
                self._reply("OK")
                return "detach"
            elif cmd == "k" or text.startswith("vKill"):
                if text.startswith("vKill"):
                    self._reply("OK")
                return "kill"
            elif cmd == "H" or cmd == "T":
                self._reply("OK")
            elif text.startswith("q") or text.startswith("Q"):
                self._query(text)
            else:
                self._reply("")                # not supported: gdb falls back or says so
        except DebugError:
            self._reply("E01")
        except (ValueError, IndexError):
            self._reply("E02")                 # a malformed packet
        return None

    def _query(self, text: str) -> None:
        if text.startswith("qSupported"):
            self._reply(f"PacketSize={PACKET_SIZE:x};qXfer:features:read+;swbreak+;hwbreak+;"
                        "QStartNoAckMode+")
        elif text == "QStartNoAckMode":
            self._reply("OK")
            self._acks = False
        elif text.startswith("qXfer:features:read:"):
            annex, _, span = text[len("qXfer:features:read:"):].partition(":")
            if annex != "target.xml":
                self._reply("E00")
                return
            offset, length = (int(x, 16) for x in span.split(","))
            xml = R.target_xml().encode()
            chunk = xml[offset:offset + length]
            self._reply((b"l" if offset + length >= len(xml) else b"m") + chunk)
        elif text == "qC":
            self._reply("QC1")
        elif text == "qfThreadInfo":
            self._reply("m1")
        elif text == "qsThreadInfo":
            self._reply("l")
        elif text.startswith("qAttached"):
            self._reply("1")
        elif text.startswith("qSymbol"):
            self._reply("OK")
        elif text.startswith("qRcmd,"):
            self._monitor_command(bytes.fromhex(text[6:]).decode("utf-8", "replace"))
        else:
            self._reply("")

    def _monitor_command(self, command: str) -> None:
        out = "no monitor commands here\n" if self.monitor is None else self.monitor(command)
        data = out.encode()
        for i in range(0, len(data), PACKET_SIZE // 4):
            self._reply(b"O" + data[i:i + PACKET_SIZE // 4].hex().encode())
        self._reply("OK")

    def _breakpoint(self, insert: bool, args: str) -> None:
        kind, addr, length = args.split(",")[:3]
        kind, addr, length = int(kind), int(addr, 16), int(length, 16)
        t = self.target
        if kind in (0, 1):           # software and hardware breakpoints are the same thing here
            (t.insert_breakpoint if insert else t.remove_breakpoint)(addr)
        elif kind in _WATCH_KIND:
            (t.insert_watchpoint if insert else t.remove_watchpoint)(_WATCH_KIND[kind], addr, length)
        else:
            self._reply("")
            return
        self._reply("OK")

    def _resume_legacy(self, cmd: str, args: str) -> str:
        """c [addr], s [addr], C sig[;addr], S sig[;addr] (signals are not delivered)."""
        if cmd in "CS":
            args = args.partition(";")[2]
        if args:
            self.target.set_register("eip", int(args, 16))
        return "step" if cmd in "sS" else "continue"

    def _vcont(self, text: str) -> str | None:
        if text == "vCont?":
            self._reply("vCont;c;C;s;S")
            return None
        # One thread: the first action that applies to it (no thread id, all
        # threads, thread 1) decides; signals are not delivered.
        for action in text[len("vCont;"):].split(";"):
            verb, _, thread = action.partition(":")
            if verb[:1] in ("c", "C", "s", "S") and thread in ("", "-1", "1", "p1.1", "p1.-1"):
                return "step" if verb[:1] in "sS" else "continue"
        self._reply("E01")
        return None

    # --- registers ----------------------------------------------------------------------------
    def _set_register(self, n: int, raw: bytes) -> None:
        reg = R.REGISTERS[n]
        value = R.decode(reg, raw)
        if n < R.BY_NAME["cs"]:
            self.target.set_register(reg.name, value)
        elif value != R.values(self.target)[n]:
            raise DebugError(f"register {reg.name} cannot be changed here")

    def _write_registers(self, raw: bytes) -> None:
        current = R.values(self.target)
        off = 0
        for n, reg in enumerate(R.REGISTERS):
            size = reg.bits // 8
            if off + size > len(raw):
                break
            chunk = raw[off:off + size]
            if R.decode(reg, chunk) != current[n]:
                self._set_register(n, chunk)
            off += size
