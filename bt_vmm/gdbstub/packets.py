"""The gdb remote serial protocol's framing, over any byte stream.

A packet is `$payload#cc` with `cc` the payload's byte sum mod 256 in hex;
the receiver answers `+` (or `-`: send again) unless both sides agreed on
no-acknowledgment mode. `}` escapes `#`, `$`, `}` and `*` (the byte XOR 0x20)
in binary data; a lone 0x03 outside a packet is the client's interrupt
(Ctrl-C). Nothing here knows about sockets: bytes go in through `feed` and
come out of `frame`.
"""

from __future__ import annotations

from dataclasses import dataclass

INTERRUPT = 0x03
_ESCAPED = b"#$}*"


def checksum(payload: bytes) -> int:
    return sum(payload) & 0xFF


def escape(payload: bytes) -> bytes:
    out = bytearray()
    for b in payload:
        if b in _ESCAPED:
            out += bytes((ord("}"), b ^ 0x20))
        else:
            out.append(b)
    return bytes(out)


def unescape(data: bytes) -> bytes:
    """Binary data from an `X` packet."""
    out = bytearray()
    it = iter(data)
    for b in it:
        if b == ord("}"):
            out.append(next(it, 0) ^ 0x20)
        else:
            out.append(b)
    return bytes(out)


def frame(payload: bytes) -> bytes:
    """A packet ready to send (the payload escaped)."""
    body = escape(payload)
    return b"$" + body + b"#" + f"{checksum(body):02x}".encode()


@dataclass
class Packet:
    payload: bytes       # unescaped only where the command says so (X, vFile)
    ok: bool             # the checksum matched


class PacketReader:
    """Turns a byte stream into packets, acknowledgments and interrupts.
    `feed` returns what the bytes completed, in order: Packet objects, and the
    bytes b"+", b"-" and b"\\x03"."""

    def __init__(self) -> None:
        self._buf = bytearray()
        self._in_packet = False
        self._checksum_left = -1

    def feed(self, data: bytes) -> list[Packet | bytes]:
        events: list[Packet | bytes] = []
        for b in data:
            if not self._in_packet:
                if b == ord("$"):
                    self._in_packet = True
                    self._buf.clear()
                    self._checksum_left = -1
                elif b in (ord("+"), ord("-"), INTERRUPT):
                    events.append(bytes((b,)))
                continue                       # noise between packets is dropped
            if self._checksum_left < 0:
                if b == ord("#"):
                    self._checksum_left = 2
                    self._sum = bytearray()
                else:
                    self._buf.append(b)
                continue
            self._sum.append(b)
            self._checksum_left -= 1
            if self._checksum_left == 0:
                payload = bytes(self._buf)
                try:
                    ok = int(self._sum.decode("ascii"), 16) == checksum(payload)
                except ValueError:
                    ok = False
                events.append(Packet(payload, ok))
                self._in_packet = False
        return events
