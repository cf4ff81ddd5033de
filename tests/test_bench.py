"""`bt-vmm bench` and its guest (guests/bench/): tiny configurations, checked
for structure and sanity, not for speed."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from bt_vmm.bench import BenchConfig, run_bench
from bt_vmm.bench import catalog
from bt_vmm.bench.engines import available_engines
from bt_vmm.bench.guest import cmdline, run_guest
from bt_vmm.bench.native import NativeCPU
from bt_vmm.bench.report import build_table, fmt_time
from bt_vmm.cli.main import main as cli_main
from bt_vmm.engines.bt import BTEngine

# Few iterations, sized so that each loop still clearly outlasts the markers
# (compute stays well under the 4 ms after which the BT engine stops directly
# executed user code: see test_long_user_loop_survives_preemption_under_bt).
SMALL = {"syscall": 60, "in": 1500, "callret": 20000, "pgfault": 40,
         "empty": 20000, "uempty": 20000}


@pytest.fixture(scope="module")
def bench_elf(built_guests):
    return (built_guests / "bench.elf").read_bytes()


@pytest.fixture(scope="module")
def small_report(bench_elf):
    return run_bench(BenchConfig(engines=["bt"], only="syscall,in,call/ret,pgfault",
                                 repeat=3, iterations=SMALL, bench_kernel=bench_elf))


def _row(report, op_id):
    return next(r for r in report["operations"] if r["id"] == op_id)


def test_operation_names_resolve_by_id_or_label():
    assert [op.id for op in catalog.resolve("call/ret,SYSCALL, pushfpopf")] == \
        ["syscall", "pushfpopf", "callret"]          # catalog order
    assert len(catalog.resolve(None)) == len(catalog.OPS) == 14
    with pytest.raises(ValueError, match="unknown operation 'bogus'"):
        catalog.resolve("syscall,bogus")


def test_bt_is_always_available_and_trap_when_it_imports():
    engines, missing = available_engines()
    assert "bt" in engines
    try:
        from bt_vmm.engines.trap import TrapEngine   # noqa: F401
    except Exception:
        assert "trap" in missing and "trap" not in engines
    else:
        assert "trap" in engines


def test_guest_brackets_each_loop_with_markers(bench_elf):
    ops = ["null", "empty", "divzero", "ptemod", "cr3", "sysheavy"]
    run = run_guest(BTEngine, bench_elf,
                    cmdline(ops, {"null": 0, "empty": 100, "divzero": 20, "ptemod": 30, "cr3": 10,
                                  "sysheavy": 5}, rounds=2), timeout=60)
    assert run.error is None and run.status == 0
    by = run.by_op()
    assert sorted(by) == sorted(ops) and all(len(v) == 2 for v in by.values())
    assert [s.result for s in by["divzero"]] == [20, 20]      # faults the guest handled
    assert [s.result for s in by["ptemod"]] == [0x41, 0x41]   # frame A mapped again at the end
    assert [s.result for s in by["cr3"]] == [10, 10]
    assert by["sysheavy"][0].result == by["sysheavy"][1].result
    for s in run.samples:
        assert s.t1 > s.t0 and s.exits >= 0
    # exits the loops must cause under BT: one per #DE delivery and per traced PTE store
    assert by["divzero"][0].exits - by["null"][0].exits >= 20
    assert by["ptemod"][0].exits - by["null"][0].exits >= 30


def test_native_runs_the_guests_own_loops(bench_elf):
    cpu = NativeCPU(bench_elf)
    assert set(cpu.loops) == {"empty", "callret", "pushfpopf", "clisti", "compute"}
    assert cpu.call("callret", 1000)[1] == 1000
    t, v = cpu.call("compute", 300)
    assert t > 0
    # the checksum the guest computes in ring 3 under BT is the native one
    run = run_guest(BTEngine, bench_elf, cmdline(["compute"], {"compute": 300}, rounds=1),
                    timeout=60)
    assert run.error is None and run.samples[0].result == v


def test_small_run_structure_and_sanity(small_report):
    r = small_report
    assert r["config"]["engines"] == ["bt"] and r["config"]["repeat"] == 3
    assert r["machine"]["cpu_count"] >= 1 and r["machine"]["date"]
    assert [row["id"] for row in r["operations"]] == ["syscall", "in", "callret", "pgfault"]
    assert r["errors"] == []
    for row in r["operations"]:
        bt = row["engines"]["bt"]
        assert bt["error"] is None, bt["error"]
        ns = bt["ns_per_op"]
        assert len(ns["samples"]) == 3 and ns["min"] <= ns["median"] <= ns["max"]
        assert ns["median"] > 0, row["id"]
        assert bt["iterations"] == SMALL[row["id"]]
    cost = {row["id"]: row["engines"]["bt"]["ns_per_op"]["median"] for row in r["operations"]}
    exits = {row["id"]: row["engines"]["bt"]["exits_per_op"]["median"] for row in r["operations"]}
    assert cost["syscall"] > 10 * cost["callret"]
    assert cost["pgfault"] > cost["callret"]
    assert abs(exits["callret"]) < 0.01            # call/ret stays in the TC
    # (exits/op are differences of counts that include a few asynchronous
    # timer exits, hence the tolerance)
    assert exits["in"] > 0.99                      # every `in` is a callout
    assert exits["syscall"] > 1.99                 # into the kernel and back out
    assert exits["pgfault"] > 0.99
    # native column only where no monitor is needed
    assert _row(r, "syscall")["native"] is None and _row(r, "in")["native"] is None
    row = _row(r, "callret")
    assert row["native"]["ns_per_op"]["median"] > 0
    assert row["ratios"]["bt/native"] > 0
    assert "trap/bt" not in _row(r, "syscall")["ratios"]
    json.dumps(r)                                  # JSON-ready as it is


def test_table_has_the_promised_columns(small_report):
    from rich.console import Console
    console = Console(width=200, record=True)
    console.print(build_table(small_report))
    text = console.export_text()
    for col in ("operation", "bt /op", "native /op", "bt/native", "exits/op bt"):
        assert col in text
    assert "call/ret" in text and "n/a" in text
    assert fmt_time(1234.0) == "1.23 µs" and fmt_time(2.5e9) == "2.50 s"


def test_cli_writes_json_and_table(bench_elf, built_guests, tmp_path, capsys):
    out = tmp_path / "bench.json"
    status = cli_main(["bench", "--engine", "bt", "--only", "divzero,cli/sti", "--repeat", "1",
                       "--iterations", "300", "--kernel", str(built_guests / "bench.elf"),
                       "--json", str(out), "--quiet"])
    captured = capsys.readouterr()
    assert status == 0, captured.out + captured.err
    assert "divzero" in captured.out and "cli/sti" in captured.out
    data = json.loads(out.read_text())
    assert data["benchmark"] == "bt-vmm bench"
    assert [row["id"] for row in data["operations"]] == ["clisti", "divzero"]
    assert _row(data, "divzero")["engines"]["bt"]["exits_per_op"]["median"] >= 1
    assert abs(_row(data, "clisti")["engines"]["bt"]["exits_per_op"]["median"]) < 0.01


@pytest.mark.parametrize("args, message", [
    (["--engine", "nosuch"], "engine 'nosuch' is not available"),
    (["--only", "bogus"], "unknown operation 'bogus'"),
    (["--repeat", "0"], "expected a positive integer"),
])
def test_cli_rejects_bad_input(args, message, capsys):
    try:
        status = cli_main(["bench", *args])
    except SystemExit as e:          # argparse's own checks
        status = e.code
    assert status == 2
    assert message in capsys.readouterr().err


def test_testos_boot_and_forkwait(built_guests):
    r = run_bench(BenchConfig(engines=["bt"], only="forkwait,boot", repeat=1, forkwait=4,
                              testos_kernel=(built_guests / "testos.elf").read_bytes()))
    assert r["errors"] == []
    boot, fw = _row(r, "boot")["engines"]["bt"], _row(r, "forkwait")["engines"]["bt"]
    assert 0 < fw["ns_per_op"]["median"] < boot["ns_per_op"]["median"]
    assert boot["exits_per_op"]["median"] > 100 and fw["exits_per_op"]["median"] > 10
    assert fw["iterations"] == 4


def test_both_engines_give_ratios_when_trap_exists(bench_elf):
    engines, _ = available_engines()
    if "trap" not in engines:
        pytest.skip("bt_vmm.engines.trap does not import (yet)")
    r = run_bench(BenchConfig(engines=["bt", "trap"], only="syscall,call/ret", repeat=1,
                              iterations={"syscall": 30, "callret": 5000}, bench_kernel=bench_elf))
    for row in r["operations"]:
        assert set(row["engines"]) == {"bt", "trap"}
        assert "trap/bt" in row["ratios"]
        assert "trap/native" in row["ratios"] if row["native"] else True


@pytest.mark.skipif(shutil.which("qemu-system-i386") is None, reason="qemu-system-i386 not installed")
def test_guest_runs_under_qemu(built_guests):
    proc = subprocess.run(
        ["qemu-system-i386", "-M", "pc", "-m", "64", "-nographic", "-no-reboot", "-net", "none",
         "-kernel", str(built_guests / "bench.elf"),
         "-append", "bench=null,empty,unull,uempty,syscall,in,tprwr,clisti,pushfpopf,callret,"
                    "pgfault,divzero,ptemod,cr3,compute,sysheavy iters=200 rounds=1",
         "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04", "-serial", "stdio", "-monitor", "none"],
        capture_output=True, text=True, timeout=60)
    out = proc.stdout
    assert proc.returncode == 0, out[-2000:]
    assert "bench: done" in out
    results = {line.split()[1]: int(line.split()[3], 16)
               for line in out.splitlines() if line.startswith("RESULT ")}
    for op in catalog.RETURNS_N:
        assert results[op] == 200, op
    assert results["ptemod"] == catalog.PTEMOD_RESULT
    # the ring-3 program computes the same checksum on QEMU as in bare unicorn
    assert results["compute"] == NativeCPU((built_guests / "bench.elf").read_bytes()).call("compute", 200)[1]
    assert out.count("\nBEGIN ") == out.count("\nWARM ") == 16 and out.count("\nEND\n") == 32


def test_long_user_loop_survives_preemption_under_bt(bench_elf):
    # compute runs ~60 ms in ring 3 without an exit: the timer interrupts it at
    # stop points (engines/stop_points.py); a stale EIP after such a stop
    # would run a block twice and change the checksum
    run = run_guest(BTEngine, bench_elf, cmdline(["compute"], {"compute": 30000}, rounds=2),
                    timeout=60)
    assert run.error is None
    assert len({s.result for s in run.samples}) == 1


def test_plot_of_a_recorded_run(tmp_path):
    """--plot draws the recorded run in benchmarks/ (no measuring needed)."""
    import json
    from pathlib import Path
    from bt_vmm.bench.report import write_plot
    report = json.loads((Path(__file__).resolve().parent.parent / "benchmarks" / "bench-results.json").read_text())
    out = tmp_path / "bench.png"
    write_plot(report, str(out))
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 5000
