"""The TC profile file: one gzip-compressed JSON document.

    {
      "format":  "bt-vmm-tc-profile",      # anything else is not a profile
      "version": 1,                         # readers refuse newer versions
      "meta": {
        "bt_vmm_version", "created" (UTC, ISO 8601), "guest" (name or path),
        "engine", "counted" (CCF execution counters were on),
        "time_unit" ("wall seconds since the engine was created"),
        "tc_base", "tc_capacity_bytes", "lookup_routine" (TC addresses),
        "generations" (flushes + 1), "wall_seconds", "exit_status", "reason"
      },
      "totals": {                           # the engine's own counters at the end of the
        "tus_translated", "guest_bytes_translated", "ccf_bytes",   # run, named as in
        "guest_insns_translated", "ident_insns", "chained_exits",  # --stats-json
        "exits_total", "exits_by_reason": {reason: n},
        "tc_lookups" (in-TC lookups, null if not counted), "tc_lookup_misses",
        "invalidations_by_reason": {reason: n}, "flushes_by_reason": {reason: n},
        "tc_occupancy_peak_bytes", "guest_insns_executed_from_tc"
      },
      "ccfs": [ {                           # every CCF of every generation, by id
        "id", "generation", "pc" (guest), "end_reason" (why the TU ends),
        "guest": hex of the TU's guest bytes, "code": hex of the CCF as translated
                 (chaining later patches exits in the TC; see the chain events),
        "tc", "entry", "body" (TC addresses: start, indirect entry, body),
        "insns":   [[guest addr, size, kind, tc start, tc end], ...]   kind: ident,
                   jmp, jcc, call, ret, jmp-indirect, cli, popf, callout, ...
        "regions": [[tc start, tc end, what, guest addr|null], ...]    the rest of the
                   CCF: entry-check, counter, irq-check, fallthrough-exit, exit-stubs
        "exits":   [[kind, guest target, tc of the rel32 field, tc of the stub], ...]
        "callouts":[[tc addr, kind, guest eip, times it fired, reason], ...]   every int3
                   callout, and every preemption check (a `bound` that raises #BR)
        "pcmap":   [[tc addr, guest eip, register to restore|null], ...]
        "executions" (the CCF's counter), "lookup_collisions" (lookup misses at
        its entry check: another PC in the same table slot),
        "born", "died" (times; died null while live), "death" (reason|null:
        smc-write, remap, flush:tc-full, ...)
      } ],
      "shared_callouts": [[tc addr, kind, times it fired], ...]   # lookup miss stub, ...
      "lookup_misses": [[guest target pc, n], ...]                # in-TC lookups that missed
      "events": [                            # in time order
        [t, "translate", ccf id, tc occupancy after it],
        [t, "chain", from ccf id, its exit index, to ccf id],
        [t, "invalidate", ccf id, reason],
        [t, "flush", reason, live ccfs dropped],
        [t, "lookup-miss", guest target pc, ccf id whose entry check missed|null]
      ]
    }

All addresses are integers. Version 1 is what this module writes.
"""

from __future__ import annotations

import gzip
import json
import zlib
from typing import Any

from bt_vmm.errors import BadInput, read_input

FORMAT = "bt-vmm-tc-profile"
VERSION = 1

_TOP_KEYS = {"meta": dict, "totals": dict, "ccfs": list, "events": list}
_CCF_KEYS = {"id": int, "generation": int, "pc": int, "guest": str, "code": str, "tc": int,
             "entry": int, "body": int, "insns": list, "regions": list, "exits": list,
             "callouts": list, "executions": int}


def encode_profile(doc: dict[str, Any]) -> bytes:
    """A profile document as the file holds it (gzip'd compact JSON)."""
    return gzip.compress(json.dumps(doc, separators=(",", ":")).encode(), mtime=0)


def write_profile(doc: dict[str, Any], path: str) -> None:
    """Write a profile document to `path`."""
    with open(path, "wb") as f:
        f.write(encode_profile(doc))


def read_profile(path: str) -> dict[str, Any]:
    """Read and check a profile; BadInput (exit status 2) with a one-line
    reason for a missing, corrupt, foreign or too new file."""
    raw = read_input(path, "TC profile")
    if raw[:2] != b"\x1f\x8b":
        raise BadInput(f"{path}: not a bt-vmm TC profile (not gzip data; "
                       f"write one with bt-vmm run --tc-profile)")
    try:
        text = gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise BadInput(f"{path}: corrupt TC profile (bad gzip data: {e})") from None
    try:
        doc = json.loads(text)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadInput(f"{path}: corrupt TC profile (bad JSON: {str(e).splitlines()[0]})") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BadInput(f"{path}: not a bt-vmm TC profile (no '{FORMAT}' format tag)")
    version = doc.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise BadInput(f"{path}: corrupt TC profile (bad version {version!r})")
    if version > VERSION:
        raise BadInput(f"{path}: TC profile version {version} is newer than this bt-vmm "
                       f"reads (version {VERSION})")
    _check(doc, path)
    return doc


def _check(doc: dict[str, Any], path: str) -> None:
    def bad(what: str):
        return BadInput(f"{path}: corrupt TC profile ({what})")
    for key, typ in _TOP_KEYS.items():
        if not isinstance(doc.get(key), typ):
            raise bad(f"'{key}' missing or not a {typ.__name__}")
    for i, c in enumerate(doc["ccfs"]):
        if not isinstance(c, dict):
            raise bad(f"ccfs[{i}] is not an object")
        for key, typ in _CCF_KEYS.items():
            if not isinstance(c.get(key), typ):
                raise bad(f"ccfs[{i}].{key} missing or not a{'n' if typ is int else ''} "
                          f"{typ.__name__}")
        try:
            bytes.fromhex(c["guest"]), bytes.fromhex(c["code"])
        except ValueError:
            raise bad(f"ccfs[{i}] has bytes that are not hex") from None
        for j, row in enumerate(c["insns"]):
            if not (isinstance(row, list) and len(row) == 5):
                raise bad(f"ccfs[{i}].insns[{j}] is not [addr, size, kind, tc start, tc end]")
    for i, e in enumerate(doc["events"]):
        if not (isinstance(e, list) and len(e) >= 2 and isinstance(e[0], (int, float))
                and isinstance(e[1], str)):
            raise bad(f"events[{i}] is not [time, kind, ...]")
