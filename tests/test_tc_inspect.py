"""Translation-cache inspection: recording a profile (`run --tc-profile`), the
`bt-vmm tc stats|top|show|timeline` commands, the Python API, the profile
file's checks, and the `--stats live` panel."""

from __future__ import annotations

import gzip
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from asmkernel import DATA, POWEROFF, run_kernel
from bt_vmm.cli.main import main
from bt_vmm.tcache import region as R
from bt_vmm.tcprofile import FORMAT, VERSION, TCRecorder, load_profile, write_profile
from bt_vmm.tcprofile.live import LivePanel

ROOT = Path(__file__).resolve().parent.parent

# One TU holding cli, pushf, popf, a privileged instruction (wbinvd), a control
# register read, ending in a call; the callee returns; the TU after the call ends
# in an indirect jump. (A call and an indirect jump each end a TU, so one TU
# cannot hold both: `tc show` takes a guest range and shows every TU in it.)
SHOW_ASM = f"""
    mov eax, 0
    jmp tu
tu:
    cli
    pushfd
    popfd
    mov ebx, cr0
    wbinvd
    mov esi, tbl
    call f
    jmp dword ptr [esi]
target:
    {POWEROFF}
f:  ret
tbl: .long target
fault_handler: hlt
"""

FUNCS = "".join(f"f{i}: add eax, {i}; ret;\n" for i in range(150))
CALLS = "".join(f"call f{i};\n" for i in range(150))
FLUSH_ASM = f"""
    xor eax, eax
    mov esi, 3
again:
    {CALLS}
    dec esi
    jnz again
    mov [{DATA}], eax
    {POWEROFF}
{FUNCS}
fault_handler: hlt
"""

SMC_ASM = f"""
    xor ebx, ebx
    mov esi, 5
again:
    call target
    add ebx, eax
    inc dword ptr [imm]     /* patch the immediate of target's mov */
    dec esi
    jnz again
    mov [{DATA}], ebx
    {POWEROFF}
target:
    .byte 0xb8
imm:
    .long 10
    ret
fault_handler: hlt
"""


def record(asm: str, path: Path | None = None, **options):
    rec = TCRecorder()
    result, engine, _ = run_kernel(asm, **vars(rec.options(**options)))
    doc = rec.profile(engine, result, guest="asm")
    if path is not None:
        write_profile(doc, str(path))
    return result, engine, doc


def cli(*args: str, env: dict | None = None, timeout: float = 180) -> subprocess.CompletedProcess:
    e = dict(os.environ)
    e.pop("BT_VMM_DEBUG", None)
    e["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), e.get("PYTHONPATH")]))
    e.update(env or {})
    return subprocess.run([sys.executable, "-m", "bt_vmm", *args], capture_output=True, text=True,
                          timeout=timeout, env=e, stdin=subprocess.DEVNULL)


# ---------------------------------------------------------------- recording

def test_every_ccf_is_laid_out_exactly(tmp_path):
    """Instructions and regions (entry check, counter, irq check, exits, stubs)
    tile each CCF's TC bytes with no gap and no overlap."""
    for asm, opts in ((SHOW_ASM, {}), (FLUSH_ASM, {"tc_size": 16 << 10}), (SMC_ASM, {})):
        _, _, doc = record(asm, **opts)
        p = load_profile_doc(doc, tmp_path)
        for c in p:
            tiles = sorted([(s, e) for *_, s, e in c.raw["insns"]] + [(s, e) for s, e, _, _ in c.regions])
            pos = c.tc
            for s, e in tiles:
                assert s == pos and e > s, (c, tiles)
                pos = e
            assert pos == c.tc_end
            assert all(r[2] != "gap" for r in c.regions)
            assert [i.addr for i in c.insns] == sorted(i.addr for i in c.insns)
            assert sum(i.size for i in c.insns) == len(c.guest_bytes)


def load_profile_doc(doc, tmp_path: Path):
    path = tmp_path / "p.tcprof"
    write_profile(doc, str(path))
    return load_profile(str(path))


def test_profile_totals_agree_with_the_engine_through_flushes(tmp_path):
    result, engine, doc = record(FLUSH_ASM, tc_size=16 << 10)
    assert result.status == 0
    p = load_profile_doc(doc, tmp_path)
    assert p.check() == []
    s = p.stats()
    tc = engine.tcache
    assert s["tus_translated"] == tc.stats["translated"] == len(p)
    assert s["chained_exits"] == tc.stats["chained"]
    assert s["flushes_by_reason"] == dict(tc.flushes) and s["flushes_by_reason"]["tc-full"] >= 1
    assert s["invalidations_by_reason"] == dict(tc.invalidations)
    assert s["tc_occupancy_peak_bytes"] == tc.occupancy_peak <= s["tc_capacity_bytes"]
    assert s["generations"] == tc.generation + 1
    assert s["tc_lookup_misses"] == engine.exits["lookup-miss"]
    # flushed CCFs keep their execution counts (their counter slots are reused)
    _, plain, _ = record(FLUSH_ASM)
    assert s["guest_insns_executed_from_tc"] == plain.tcache.guest_insns_executed()
    assert [e[1] for e in p.events].count("flush") == sum(tc.flushes.values())


def test_invalidations_are_recorded_with_reason_and_time(tmp_path):
    result, engine, doc = record(SMC_ASM)
    assert result.status == 0
    p = load_profile_doc(doc, tmp_path)
    dead = [c for c in p if c.death == "smc-write"]
    assert len(dead) == engine.tcache.invalidations["smc-write"] >= 4
    assert all(c.died is not None and c.died >= c.born for c in dead)
    assert all(c.executions == 1 for c in dead)      # counts harvested before the CCF died
    assert p.stats()["invalidations_by_reason"]["smc-write"] == len(dead)
    assert p.check() == []
    series = p.timeline()
    assert len(series["invalidations"]) == len(dead)
    # the re-enter int3 planted into a dead CCF is one of its callouts
    assert any(s.kind == "reenter" for c in dead for s in c.callouts)


def test_a_loop_to_its_own_tu_is_chained_once():
    """A TU whose exit targets itself is chained when that exit first fires,
    not counted as chained at birth too."""
    result, engine, _ = record("mov ecx, 1000; l: dec ecx; jnz l;" + POWEROFF + "fault_handler: hlt;")
    assert result.status == 0
    for ccf in engine.tcache.all_ccfs():
        assert len({id(s) for s in ccf.incoming}) == len(ccf.incoming)


def test_exits_are_attributed_to_the_ccf_that_took_them(tmp_path):
    _, engine, doc = record(SHOW_ASM)
    p = load_profile_doc(doc, tmp_path)
    [tu] = [c for c in p if any(i.mnemonic == "wbinvd" for i in c.insns)]
    assert tu.exits_by_reason["emulate:wbinvd"] == 1
    assert tu.exits_by_reason["emulate:mov"] == 1
    assert sum(tu.exits_by_reason.values()) == tu.exits_total
    callouts = p.stats()["callouts_by_reason"]
    for reason, n in callouts.items():
        assert n <= engine.exits[reason]
    assert callouts["emulate:wbinvd"] == engine.exits["emulate:wbinvd"] == 1


def test_python_api(tmp_path):
    _, _, doc = record(SHOW_ASM)
    p = load_profile_doc(doc, tmp_path)
    assert p.meta["counted"] and p.doc["format"] == FORMAT and p.doc["version"] == VERSION
    ccfs = list(p.ccfs())
    assert len(ccfs) == len(p) == p.stats()["tus_translated"]
    hot = p.top(3, by="executions")
    assert hot[0].executions == max(c.executions for c in ccfs)
    assert p.top(1, by="size")[0].size == max(c.size for c in ccfs)
    c = ccfs[-1]
    assert p.find(c.pc)[0] is c and p.ccf(c.id) is c
    assert p.find(c.tc + 3) == [c]                       # a TC address
    assert all(lo.pc <= hi.pc for lo, hi in zip(p.in_range(0, 1 << 32), p.in_range(0, 1 << 32)[1:]))
    call = next(c for c in ccfs if c.insns[-1].kind == "call")
    assert call.exits[0].kind == "call" and call.exits[0].chained_to
    assert any(i.mnemonic == "cli" and i.kind == "cli" for i in call.insns)


# ---------------------------------------------------------------- tc show

def test_tc_show_marks_every_rewrite(tmp_path, capsys):
    path = tmp_path / "show.tcprof"
    record(SHOW_ASM, path)
    p = load_profile(str(path))
    tu = next(c for c in p if any(i.mnemonic == "cli" for i in c.insns))
    ind = next(c for c in p if c.insns[-1].kind == "jmp-indirect")
    assert main(["tc", "show", str(path), f"{tu.pc:#x}-{ind.end:#x}"]) == 0
    out = capsys.readouterr().out
    for mark in ("▶ cli", "▶ pushf", "▶ popf", "▶ callout", "▶ call", "▶ jmp-indirect"):
        assert mark in out, mark
    assert "callout emulate:wbinvd ×1" in out and "callout emulate:mov ×1" in out
    assert "exit call → guest" in out and "chained to CCF #" in out
    assert "→ in-TC lookup" in out
    assert "irq-check" in out and "entry-check" in out and "counter" in out
    assert "; VIF" in out                                # the monitor word cli/popf use
    assert "wbinvd" in out and "popfd" in out
    # JSON: the same rows
    assert main(["tc", "show", str(path), f"{tu.pc:x}", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    [d] = data["ccfs"]
    kinds = [r["kind"] for r in d["rows"] if r["guest"] is not None]
    assert kinds == ["cli", "pushf", "popf", "callout", "callout", "ident", "call"]
    assert d["exits_by_reason"]["emulate:wbinvd"] == 1
    notes = [t["note"] for r in d["rows"] for t in r["tc"]]
    assert any(n.startswith("callout emulate:wbinvd") for n in notes)


def test_tc_show_is_syntax_coloured(tmp_path):
    path = tmp_path / "show.tcprof"
    record(SHOW_ASM, path)
    proc = cli("tc", "show", str(path), "#3", env={"FORCE_COLOR": "1", "COLUMNS": "200"})
    assert proc.returncode == 0, proc.stderr
    assert "\x1b[" in proc.stdout


def test_tc_show_unknown_address_is_status_2(tmp_path, capsys):
    path = tmp_path / "show.tcprof"
    record(SHOW_ASM, path)
    assert main(["tc", "show", str(path), "0x12345678"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("bt-vmm: tc show: no TU") and "\n" not in err
    assert main(["tc", "show", str(path), "zz"]) == 2
    assert main(["tc", "show", str(path), "#99999"]) == 2


# ---------------------------------------------------------------- bad files

def _gz(data: bytes) -> bytes:
    return gzip.compress(data)


@pytest.mark.parametrize("content, words", [
    (b"", "not a bt-vmm TC profile"),
    (b"hello world\n", "not a bt-vmm TC profile"),
    (b"\x1f\x8b\x08\x00garbage", "corrupt TC profile"),
    (_gz(b"{not json"), "corrupt TC profile"),
    (_gz(json.dumps({"format": "something-else", "version": 1}).encode()), "not a bt-vmm TC profile"),
    (_gz(json.dumps([1, 2]).encode()), "not a bt-vmm TC profile"),
    (_gz(json.dumps({"format": FORMAT, "version": VERSION + 1}).encode()), "newer"),
    (_gz(json.dumps({"format": FORMAT, "version": 1, "meta": {}, "totals": {},
                     "ccfs": [{"id": 0}], "events": []}).encode()), "corrupt TC profile"),
])
def test_bad_profile_files_are_status_2_with_one_line(tmp_path, capsys, content, words):
    path = tmp_path / "bad.tcprof"
    path.write_bytes(content)
    for cmd in ("stats", "top", "timeline"):
        assert main(["tc", cmd, str(path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and words in err and str(path) in err, err
    assert main(["tc", "show", str(path), "0x100000"]) == 2
    capsys.readouterr()


def test_truncated_profile_is_status_2(tmp_path):
    good = tmp_path / "good.tcprof"
    record(SHOW_ASM, good)
    bad = tmp_path / "cut.tcprof"
    bad.write_bytes(good.read_bytes()[:200])
    proc = cli("tc", "stats", str(bad))
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "corrupt TC profile" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = cli("tc", "stats", str(tmp_path / "missing.tcprof"))
    assert proc.returncode == 2 and "no such file" in proc.stderr


def test_tc_without_a_subcommand_is_status_2():
    proc = cli("tc")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "tc command" in proc.stderr


# ---------------------------------------------------------------- the test OS, end to end

@pytest.fixture(scope="module")
def testos_run(tmp_path_factory):
    d = tmp_path_factory.mktemp("tcprof")
    prof, stats = d / "testos.tcprof", d / "stats.json"
    proc = cli("run", "--guest", "testos", "--serial", "none", "--timeout", "150",
               "--tc-profile", str(prof), "--stats-json", str(stats))
    assert proc.returncode == 0, proc.stderr
    return prof, json.loads(stats.read_text())


def test_testos_profile_agrees_with_stats_of_the_same_run(testos_run, capsys):
    prof, stats = testos_run
    assert main(["tc", "stats", str(prof), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["consistency_problems"] == []
    for key in ("tus_translated", "guest_bytes_translated", "ccf_bytes", "expansion_ratio",
                "guest_insns_translated", "ident_insns", "ident_share", "chained_exits",
                "exits_total", "exits_by_reason", "tc_lookups", "tc_lookup_misses",
                "invalidations_by_reason", "flushes_by_reason", "tc_occupancy_peak_bytes",
                "guest_insns_executed_from_tc", "exit_status"):
        assert data[key] == stats[key], key
    assert 0 < data["tc_lookup_hit_rate"] <= 1
    assert 0 < data["chained_exit_share"] <= 1
    assert sum(data["callouts_by_reason"].values()) == data["callouts_total"] > 0
    assert sum(data["insns_by_kind"].values()) == data["guest_insns_translated"]


def test_tc_stats_table(testos_run):
    prof, stats = testos_run
    proc = cli("tc", "stats", str(prof))
    assert proc.returncode == 0, proc.stderr
    for label in ("expansion ratio", "IDENT share", "chained-exit share", "callouts by reason",
                  "lookup hit rate", "invalidations by reason", "flushes by reason",
                  "TC occupancy peak", f"{stats['tus_translated']:,}"):
        assert label in proc.stdout, label
    assert "disagrees" not in proc.stdout


@pytest.mark.parametrize("by", ["executions", "exits", "size", "insns"])
def test_tc_top(testos_run, capsys, by):
    prof, _ = testos_run
    assert main(["tc", "top", str(prof), "-n", "7", "--by", by, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rows = data["top"]
    assert len(rows) == 7 and data["by"] == by
    key = {"executions": "executions", "exits": "exits", "size": "ccf_bytes",
           "insns": "guest_insns_executed"}[by]
    values = [r[key] for r in rows]
    assert values == sorted(values, reverse=True) and values[0] > 0
    assert main(["tc", "top", str(prof), "-n", "5", "--by", by]) == 0
    out = capsys.readouterr().out
    assert f"hottest CCFs by {by}" in out and f"#{rows[0]['id']}" in out


def test_tc_top_rejects_a_bad_ranking(testos_run):
    proc = cli("tc", "top", str(testos_run[0]), "--by", "colour")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1


def test_tc_show_on_the_hottest_testos_tu(testos_run, capsys):
    prof, _ = testos_run
    p = load_profile(str(prof))
    hot = p.top(1, by="exits")[0]
    assert main(["tc", "show", str(prof), f"{hot.pc:#x}"]) == 0
    out = capsys.readouterr().out
    assert f"CCF #{hot.id}" in out and f"executions {hot.executions:,}" in out
    reason, n = next(iter(hot.exits_by_reason.items()))
    assert f"callout {reason} ×" in out


def test_tc_timeline(testos_run, tmp_path, capsys):
    prof, stats = testos_run
    png = tmp_path / "t.png"
    assert main(["tc", "timeline", str(prof), "--png", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    capsys.readouterr()
    assert main(["tc", "timeline", str(prof), "--json"]) == 0
    series = json.loads(capsys.readouterr().out)
    assert len(series["translations"]) == stats["tus_translated"]
    assert max(b for _, b in series["occupancy"]) == stats["tc_occupancy_peak_bytes"]
    assert sum(b["translations"] for b in series["buckets"]) == stats["tus_translated"]
    times = [t for t, _ in series["translations"]]
    assert times == sorted(times) and times[-1] <= series["end"] + 1
    assert main(["tc", "timeline", str(prof)]) == 0
    assert "TC occupancy" in capsys.readouterr().out


def test_timeline_png_to_a_bad_place_is_status_2(testos_run, tmp_path, capsys):
    assert main(["tc", "timeline", str(testos_run[0]), "--png", str(tmp_path / "no" / "t.png")]) == 2
    assert "--png" in capsys.readouterr().err


# ---------------------------------------------------------------- run options

def test_tc_profile_needs_the_bt_engine_and_a_writable_file(tmp_path):
    proc = cli("run", "--guest", "hello", "--engine", "trap", "--tc-profile", str(tmp_path / "p"))
    assert proc.returncode == 2 and "--engine bt" in proc.stderr
    proc = cli("run", "--guest", "hello", "--tc-profile", str(tmp_path / "no" / "p"))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "--tc-profile" in proc.stderr
    assert not (tmp_path / "p").exists()


def test_stats_live_prints_the_panel_and_the_table():
    proc = cli("run", "--guest", "hello", "--stats", "live")
    assert proc.returncode == 0, proc.stderr
    assert "Hello" in proc.stdout
    assert "CCFs translated" in proc.stderr and "top exit reasons" in proc.stderr   # the panel
    assert "bt_vmm statistics" in proc.stderr                                      # the table


def test_stats_still_takes_a_kernel_right_after_it():
    kernel = ROOT / "bt_vmm" / "guests" / "hello.elf"
    proc = cli("run", "--stats", str(kernel))
    assert proc.returncode == 0, proc.stderr
    assert "bt_vmm statistics" in proc.stderr and "CCFs translated" not in proc.stderr


def test_live_panel_reads_counters_from_its_own_thread():
    out = io.StringIO()
    panel = LivePanel(console=Console(file=out, force_terminal=True, width=100),
                      refresh_per_second=20)
    from asmkernel import build_kernel
    from bt_vmm.engines.bt import BTEngine, EngineOptions
    from bt_vmm.loaders import load_multiboot
    from bt_vmm.machine.pc import Machine
    from asmkernel import ListSink
    loop = "mov ecx, 3000000; l: dec ecx; jnz l;"
    boot = load_multiboot("t.bin", build_kernel(loop + POWEROFF + "fault_handler: hlt;"), 16 << 20)
    machine = Machine(16 << 20, ListSink())
    machine.load(boot)
    engine = BTEngine(machine, EngineOptions(count=True))
    panel.start(engine)
    try:
        result = engine.run(boot.entry)
    finally:
        panel.stop()
    try:
        assert result.status == 0
        assert panel.refreshes >= 2
        snap = panel.snapshot()
        assert snap["translated"] == engine.tcache.stats["translated"]
        assert snap["insns"] == engine.tcache.guest_insns_executed() + engine.insns_direct
        lookups = struct.unpack("<Q", machine.uc.mem_read(R.phys(R.N_LOOKUPS), 8))[0]
        assert snap["lookups"] == lookups
        assert "CCFs translated" in out.getvalue()
    finally:
        machine.close()
