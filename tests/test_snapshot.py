"""Snapshots: a machine saved mid-run and restored goes on as if it had never
stopped (the test OS's remaining output), halted guests and timers included;
disks pair with the snapshot; files from another image, memory size, engine
or format version are refused with one line and status 2."""

from __future__ import annotations

import json
import os
import re
import threading
import zipfile

import pytest

from asmkernel import DATA, POWEROFF, ListSink, build_kernel, read_u32
from bt_vmm import snapshot
from bt_vmm.engines.bt import BTEngine, EngineOptions
from bt_vmm.errors import EXIT_BAD_INPUT, EXIT_INSN_LIMIT, EXIT_OK, EXIT_TIMEOUT
from bt_vmm.hosted.console import SerialSink
from bt_vmm.loaders import load_multiboot
from bt_vmm.machine.pc import Machine
from rsp import RspClient, debugged, guest_symbols, wait_exit
from test_guests import run_cli

# Lines the test OS prints whose content follows the host clock: ticks, the
# TSC frequency, the date.
_TIMED = re.compile(r"ticks|TSC|testos: rtc ")


def _untimed(out: str) -> list[str]:
    return [line for line in out.splitlines() if not _TIMED.search(line)]


@pytest.fixture(scope="module")
def testos(built_guests):
    return str(built_guests / "testos.elf")


@pytest.fixture(scope="module")
def uninterrupted(testos):
    """What a run that is never stopped prints, by engine."""
    runs: dict[str, str] = {}

    def output(engine: str = "bt") -> str:
        if engine not in runs:
            proc = run_cli("run", testos, "--engine", engine, "--timeout", "100")
            assert proc.returncode in (0, 3), proc.stdout[-2000:] + proc.stderr
            runs[engine] = proc.stdout
        return runs[engine]
    return output


@pytest.mark.parametrize("engine", ["bt", "trap"])
def test_restored_test_os_prints_the_rest_of_the_uninterrupted_run(testos, uninterrupted, tmp_path, engine):
    """The acceptance test: stop the test OS mid-run (--max-insns), save it,
    restore it in a new process; what the restored run prints is what the
    uninterrupted run printed after that point."""
    snap = tmp_path / "mid.snap"
    if engine == "bt":
        first = run_cli("run", testos, "--max-insns", "1500000", "--snapshot-on-exit", str(snap))
        assert first.returncode == EXIT_INSN_LIMIT, first.stderr
    else:   # the trap engine has no instruction budget: stop it by time
        first = run_cli("run", testos, "--engine", "trap", "--timeout", "2", "--snapshot-on-exit", str(snap))
        assert first.returncode == EXIT_TIMEOUT, first.stderr
    assert f"snapshot written to {snap}" in first.stderr
    before = first.stdout
    assert "ok   page_alloc" in before and " tests, " not in before     # stopped mid-run
    second = run_cli("run", testos, "--engine", engine, "--restore", str(snap), "--timeout", "100")
    expected_status = EXIT_OK if engine == "bt" else 3                  # trap fails gdt_tss (README)
    assert second.returncode == expected_status, second.stdout[-2000:] + second.stderr
    after = second.stdout
    assert "ok   forkwait" in after                                        # plenty left to do
    assert _untimed(before + after) == _untimed(uninterrupted(engine))


def test_snapshot_taken_from_gdb_in_a_user_process(testos, built_guests, uninterrupted, tmp_path):
    """gdb's `monitor snapshot` at a breakpoint in ring-3 code: the restored
    run goes on in that process and prints the rest of the run."""
    report = guest_symbols(built_guests / "testos" / "user.sym.elf")["report"]
    serial, snap = tmp_path / "serial.txt", tmp_path / "user.snap"
    with debugged(testos, "--serial", f"file:{serial}") as (proc, port):
        c = RspClient(port)
        assert c.cmd(f"Z0,{report:x},1") == "OK"
        for _ in range(3):                                   # the third report(): demand_heap
            assert c.cmd("c").startswith("T05")
        assert c.monitor(f"snapshot {snap}").startswith(f"snapshot written to {snap}")
        c.send("k")
        wait_exit(proc)
    restored = run_cli("run", testos, "--restore", str(snap), "--timeout", "100")
    assert restored.returncode == 0, restored.stderr
    doc = json.loads(zipfile.ZipFile(snap).read("snapshot.json"))
    assert doc["vcpu"]["cpl"] == 3 and doc["position"]["pc"] == report
    assert _untimed(serial.read_text() + restored.stdout) == _untimed(uninterrupted("bt"))


def test_a_restored_run_can_be_saved_and_restored_again(testos, tmp_path):
    """A snapshot of a restored run restores too (the format round-trips)."""
    a, b = tmp_path / "a.snap", tmp_path / "b.snap"
    assert run_cli("run", testos, "--max-insns", "800000", "--snapshot-on-exit", str(a)).returncode == 8
    mid = run_cli("run", testos, "--restore", str(a), "--max-insns", "800000", "--snapshot-on-exit", str(b))
    assert mid.returncode == EXIT_INSN_LIMIT and b.exists(), mid.stderr
    end = run_cli("run", testos, "--restore", str(b), "--timeout", "100")
    assert end.returncode == 0
    assert "testos: 25 tests, 0 failed" in end.stdout


def _kernel_and_machine(asm: str):
    image = build_kernel(asm)
    boot = load_multiboot("halt.bin", image, 16 << 20)
    sink = ListSink()
    machine = Machine(16 << 20, sink)
    return image, boot, machine, sink


HALTING = f"""
    mov dword ptr [0xFEE000F0], 0x1FF       /* local APIC on */
    mov dword ptr [0xFEE003E0], 0x3         /* divide by 16 */
    mov dword ptr [0xFEE00320], 0x20040     /* periodic, vector 0x40 */
    mov dword ptr [0xFEE00380], 3125000     /* 100 MHz / 16 / 3125000: every 500 ms */
    xor esi, esi
    sti
wait:
    hlt
    cmp esi, 2
    jb wait
    cli
    mov [{DATA}], esi
    {POWEROFF}
fault_handler:
    inc esi
    mov dword ptr [0xFEE000B0], 0           /* EOI */
    iretd
"""


class _SnapshotWhenHalted:
    """A debugger front end that saves the machine at the first stop and ends the run."""

    def __init__(self, path, machine, engine, ident) -> None:
        self.path, self.machine, self.engine, self.ident = path, machine, engine, ident
        self.halted = None

    def stopped(self, event) -> str:
        self.halted = self.engine.halted
        snapshot.save(self.path, self.machine, self.engine, self.ident, event.pc, self.engine.halted)
        return "kill"

    def exited(self, status, reason) -> None:
        pass


def test_a_halted_guest_restores_halted_and_its_timer_wakes_it(tmp_path):
    """Saved while it waits in hlt for its APIC timer: restored, it waits
    again and the timer (whose schedule is in guest time) wakes it."""
    path = str(tmp_path / "halted.snap")
    image, boot, machine, _ = _kernel_and_machine(HALTING)
    machine.load(boot)
    engine = BTEngine(machine, EngineOptions(timeout=20))
    ident = snapshot.identity("halt.bin", image, 16 << 20, "bt", [])
    front = _SnapshotWhenHalted(path, machine, engine, ident)
    control = engine.attach_debugger(front, wait=False)
    threading.Timer(0.15, control.interrupt).start()    # the first timer interrupt is due at 500 ms
    result = engine.run(boot.entry)
    assert front.halted is True
    assert read_u32(engine, DATA) == 0                    # it had not finished

    snap = snapshot.Snapshot(path)
    assert snap.halted
    _, _, machine2, _ = _kernel_and_machine(HALTING)
    snap.check(ident)
    snap.restore(machine2)
    engine2 = BTEngine(machine2, EngineOptions(timeout=20))
    snap.restore_engine(engine2)
    result = engine2.run(snap.pc)
    assert result.status == EXIT_OK, result
    assert read_u32(engine2, DATA) == 2
    assert engine2.vectors[0x40] == 2                      # every wake-up came after the restore


def test_device_states_survive_json(tmp_path):
    machine = Machine(16 << 20, SerialSink())
    machine.devices.uart.feed(b"typed")                   # a queue, a bytearray, dicts and tuples
    machine.bus.write(0x43, 1, 0x34)                      # PIT channel 0 in mode 2
    machine.bus.write(0x40, 1, 0x9C)
    saved = json.loads(json.dumps(machine.devices_state()))
    other = Machine(16 << 20, SerialSink())
    other.restore_devices(saved)
    assert json.loads(json.dumps(other.devices_state())) == saved
    assert bytes(other.devices.uart.rx) + bytes(other.devices.uart.backlog) == b"typed"


def test_overlay_disk_pairs_with_the_snapshot(testos, tmp_path):
    """The guest writes its test pattern after the snapshot point; the image
    underneath never changes, and the restored run sees the disk it saw."""
    image = tmp_path / "disk.img"
    image.write_bytes(os.urandom(1 << 20))
    before = image.read_bytes()
    snap = tmp_path / "disk.snap"
    first = run_cli("run", testos, "--disk", f"{image},overlay", "--max-insns", "1500000",
                    "--snapshot-on-exit", str(snap))
    assert first.returncode == EXIT_INSN_LIMIT, first.stderr
    second = run_cli("run", testos, "--disk", f"{image},overlay", "--restore", str(snap), "--timeout", "100")
    assert second.returncode == 0, second.stdout[-2000:] + second.stderr
    assert "ok   disk_rw" in second.stdout and "testos: 26 tests, 0 failed" in second.stdout
    assert image.read_bytes() == before
    # restoring against another image is refused, in one line
    other = tmp_path / "other.img"
    other.write_bytes(os.urandom(1 << 20))
    bad = run_cli("run", testos, "--disk", f"{other},overlay", "--restore", str(snap))
    assert bad.returncode == EXIT_BAD_INPUT
    assert bad.stderr.count("\n") == 1 and "does not hold the contents" in bad.stderr


def test_snapshots_refuse_disks_written_straight_through(testos, tmp_path):
    image = tmp_path / "rw.img"
    image.write_bytes(bytes(1 << 20))
    proc = run_cli("run", testos, "--disk", str(image), "--snapshot-on-exit", str(tmp_path / "x.snap"))
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.count("\n") == 1 and ",overlay" in proc.stderr


def test_no_snapshot_when_the_guest_powered_off(testos, built_guests, tmp_path):
    snap = tmp_path / "off.snap"
    proc = run_cli("run", str(built_guests / "hello.elf"), "--snapshot-on-exit", str(snap))
    assert proc.returncode == 0
    assert "no snapshot written" in proc.stderr and not snap.exists()


@pytest.fixture(scope="module")
def early_snapshot(testos, tmp_path_factory):
    path = tmp_path_factory.mktemp("snap") / "early.snap"
    proc = run_cli("run", testos, "--max-insns", "300000", "--snapshot-on-exit", str(path))
    assert proc.returncode == EXIT_INSN_LIMIT, proc.stderr
    return path


def _one_line_refusal(proc, *words: str) -> None:
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    for w in words:
        assert w in proc.stderr, proc.stderr


def test_restore_refuses_another_kernel(early_snapshot, built_guests):
    _one_line_refusal(run_cli("run", str(built_guests / "hello.elf"), "--restore", str(early_snapshot)),
                      "taken with kernel testos.elf, not hello.elf")


def test_restore_refuses_another_memory_size_or_engine(testos, early_snapshot):
    _one_line_refusal(run_cli("run", testos, "-m", "32M", "--restore", str(early_snapshot)), "-m 64M")
    _one_line_refusal(run_cli("run", testos, "--engine", "trap", "--restore", str(early_snapshot)),
                      "--engine bt")


def _edited(original, path, edit):
    """A copy of the snapshot `original` with its snapshot.json changed by `edit`."""
    with zipfile.ZipFile(original) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            if item.filename == "snapshot.json":
                doc = json.loads(data)
                edit(doc)
                data = json.dumps(doc).encode()
            dst.writestr(item, data)
    return str(path)


def test_restore_refuses_another_format_version(testos, early_snapshot, tmp_path):
    newer = _edited(early_snapshot, tmp_path / "newer.snap", lambda d: d.update(version=snapshot.VERSION + 1))
    _one_line_refusal(run_cli("run", testos, "--restore", newer),
                      f"format version {snapshot.VERSION + 1}", f"reads version {snapshot.VERSION}")


def test_restore_refuses_a_corrupt_snapshot(testos, early_snapshot, tmp_path):
    broken = _edited(early_snapshot, tmp_path / "broken.snap", lambda d: d["identity"].pop("engine"))
    _one_line_refusal(run_cli("run", testos, "--restore", broken), "corrupt snapshot")


@pytest.mark.parametrize("content", [b"", b"not a zip at all", b"PK\x03\x04garbage"])
def test_restore_refuses_what_is_not_a_snapshot(testos, tmp_path, content):
    bogus = tmp_path / "bogus.snap"
    bogus.write_bytes(content)
    _one_line_refusal(run_cli("run", testos, "--restore", str(bogus)), "not a bt-vmm snapshot")
    _one_line_refusal(run_cli("run", testos, "--restore", str(tmp_path / "missing.snap")), "no such file")
