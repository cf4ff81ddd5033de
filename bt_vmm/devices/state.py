"""Device state as plain JSON values, for snapshots.

Each device names the attributes that make up its state -- registers,
latches, queues, timer origins; never its wiring (IRQ callbacks, the clock,
the sink) or its statistics counters -- and saves and restores them with
`capture` and `apply`. Timer origins are guest-clock times (machine/clock.py),
so they stay valid when the clock is restored with the snapshot.

Values are encoded so that JSON keeps their type: bytes and bytearrays,
deques, tuples and dicts (whose keys may be integers or tuples) are tagged.
"""

from __future__ import annotations

from collections import Counter, deque
from typing import Any, Iterable


def encode(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, (bytes, bytearray)):
        return {"bytes": v.hex()}
    if isinstance(v, deque):
        return {"deque": [encode(x) for x in v]}
    if isinstance(v, tuple):
        return {"tuple": [encode(x) for x in v]}
    if isinstance(v, list):
        return [encode(x) for x in v]
    if isinstance(v, dict) and not isinstance(v, Counter):
        return {"dict": [[encode(k), encode(x)] for k, x in v.items()]}
    raise TypeError(f"cannot save a {type(v).__name__} in a snapshot")


def decode(v: Any, like: Any = None) -> Any:
    """The value `v` encodes; `like` (the attribute's current value) says
    whether bytes come back as a bytearray."""
    if isinstance(v, list):
        return [decode(x) for x in v]
    if not isinstance(v, dict):
        return v
    if "bytes" in v:
        raw = bytes.fromhex(v["bytes"])
        return bytearray(raw) if isinstance(like, bytearray) else raw
    if "deque" in v:
        return deque(decode(x) for x in v["deque"])
    if "tuple" in v:
        return tuple(decode(x) for x in v["tuple"])
    if "dict" in v:
        return {decode(k): decode(x) for k, x in v["dict"]}
    raise ValueError(f"unknown value in a device state: {v!r}")


def capture(obj: object, names: Iterable[str]) -> dict[str, Any]:
    return {name: encode(getattr(obj, name)) for name in names}


def apply(obj: object, names: Iterable[str], state: dict[str, Any]) -> None:
    for name in names:
        setattr(obj, name, decode(state[name], getattr(obj, name)))


class DeviceState:
    """`state()` and `restore()` for a device (or a part of one) whose state is
    the attributes its class names in STATE."""

    STATE: tuple[str, ...] = ()

    def state(self) -> dict[str, Any]:
        return capture(self, self.STATE)

    def restore(self, state: dict[str, Any]) -> None:
        apply(self, self.STATE, state)
