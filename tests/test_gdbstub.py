"""The gdb stub: the protocol's framing, the target description, sessions
with the test OS over the remote protocol (breakpoints in translated code,
watchpoints, Ctrl-C, monitor commands, kill, detach, exit), and Debian's gdb
itself debugging the test OS: a kernel breakpoint by address, steps across
sensitive instructions, a user process's memory, continue to the end."""

from __future__ import annotations

import re
import socket
import subprocess
import time
import xml.etree.ElementTree as ET

import pytest
from capstone import CS_ARCH_X86, CS_MODE_32, Cs

from bt_vmm.errors import EXIT_BAD_INPUT, EXIT_DEBUGGER
from bt_vmm.gdbstub import registers as R
from bt_vmm.gdbstub.packets import INTERRUPT, Packet, PacketReader, checksum, frame, unescape
from rsp import RspClient, debugged, guest_symbols, wait_exit
from test_guests import run_cli


# --- the protocol, without a guest ------------------------------------------------------------
def test_framing_checksums_and_escapes():
    assert frame(b"OK") == b"$OK#9a"
    assert checksum(b"qSupported") == sum(b"qSupported") & 0xFF
    escaped = b"a}\x03b}\x04c}]d}\x0a"              # each of # $ } * as } and the byte XOR 0x20
    assert frame(b"a#b$c}d*") == b"$" + escaped + b"#" + b"%02x" % checksum(escaped)
    assert unescape(b"a}\x03b}]") == b"a#b}"


def test_reader_handles_split_packets_acks_interrupts_and_bad_checksums():
    r = PacketReader()
    assert r.feed(b"+$qC#") == [b"+"]
    assert r.feed(b"b4") == [Packet(b"qC", True)]
    events = r.feed(b"\x03noise$m0,4#00-")
    assert events[0] == bytes((INTERRUPT,))
    assert events[1] == Packet(b"m0,4", False) and events[2] == b"-"


def test_target_description_numbers_the_i386_registers_as_gdb_does():
    root = ET.fromstring(R.target_xml())
    assert root.find("architecture").text == "i386"
    features = {f.get("name"): f for f in root.findall("feature")}
    assert set(features) == {"org.gnu.gdb.i386.core", "org.gnu.gdb.i386.sse"}
    regs = [(int(r.get("regnum")), r.get("name"), int(r.get("bitsize"))) for f in features.values()
            for r in f.findall("reg")]
    assert [n for n, _, _ in regs] == list(range(41))
    names = [name for _, name, _ in regs]
    assert names[:16] == ["eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "eip", "eflags",
                          "cs", "ss", "ds", "es", "fs", "gs"]
    assert names[16:24] == [f"st{i}" for i in range(8)]
    assert names[32:] == [f"xmm{i}" for i in range(8)] + ["mxcsr"]
    # the g packet is every register in that order: 16 x 4 + 8 x 10 + 8 x 4 + 8 x 16 + 4 bytes
    assert sum(bits for _, _, bits in regs) // 8 == 308


# --- sessions with the test OS over the protocol --------------------------------------------
@pytest.fixture(scope="module")
def testos(built_guests):
    return str(built_guests / "testos.elf")


@pytest.fixture(scope="module")
def kernel_syms(built_guests):
    return guest_symbols(built_guests / "testos.sym.elf")


@pytest.fixture(scope="module")
def user_syms(built_guests):
    return guest_symbols(built_guests / "testos" / "user.sym.elf")


def _stop_pc(c: RspClient) -> int:
    return c.reg(R.BY_NAME["eip"])


def test_breakpoint_in_translated_code_watchpoint_and_monitor(testos, kernel_syms, tmp_path):
    pic_eoi, ticks = kernel_syms["pic_eoi"], kernel_syms["ticks"]
    serial = tmp_path / "serial.txt"
    with debugged(testos, "--serial", f"file:{serial}") as (proc, port):
        c = RspClient(port)
        assert "qXfer:features:read+" in c.cmd("qSupported:multiprocess+;swbreak+")
        assert c.cmd("?").startswith("T05")
        xml = c.cmd("qXfer:features:read:target.xml:0,3fff")
        assert xml[0] == "l" and "<architecture>i386</architecture>" in xml
        # Let the kernel run (pic_eoi is translated and runs at every timer tick), then Ctrl-C.
        c.send("c")
        time.sleep(1.5)
        c.interrupt()
        assert c.receive().startswith("T02")
        assert c.cmd(f"Z0,{pic_eoi:x},1") == "OK"
        assert c.cmd("c") == "T05thread:1;swbreak:;"
        assert _stop_pc(c) == pic_eoi
        shown = c.monitor(f"tc show {pic_eoi:#x}")
        assert "breakpoint" in shown and f"{pic_eoi:08x}" in shown
        assert "breakpoint" in c.monitor("tc stats")           # invalidations by reason
        assert c.cmd(f"z0,{pic_eoi:x},1") == "OK"
        # A write watchpoint on the tick counter: reported after the store, once per tick.
        assert c.cmd(f"Z2,{ticks:x},4") == "OK"
        values = []
        for _ in range(2):
            reply = c.cmd("c")
            assert reply == f"T05thread:1;watch:{ticks:x};", reply
            values.append(int.from_bytes(c.mem(ticks, 4), "little"))
            pc = _stop_pc(c)
            store = next(Cs(CS_ARCH_X86, CS_MODE_32).disasm(c.mem(pc - 5, 5), pc - 5))
            assert store.mnemonic == "mov" and store.op_str.startswith(f"dword ptr [{ticks:#x}]")
        assert values[1] == values[0] + 1
        assert c.cmd(f"z2,{ticks:x},4") == "OK"
        c.send("k")
        status, _, err = wait_exit(proc)
    assert status == EXIT_DEBUGGER
    assert "the debugger ended the run" in err


def test_detach_lets_the_guest_finish_and_an_exit_is_reported(testos, tmp_path):
    serial = tmp_path / "serial.txt"
    with debugged(testos, "--serial", f"file:{serial}") as (proc, port):
        c = RspClient(port)
        assert c.cmd("D") == "OK"
        status, _, _ = wait_exit(proc)
    assert status == 0 and "testos: 25 tests, 0 failed" in serial.read_text()
    with debugged(testos, "--serial", "none") as (proc, port):
        c = RspClient(port)
        assert c.cmd("vCont?").startswith("vCont;c")
        assert c.cmd("vCont;c:1") == "W00"        # the guest powered off: exit status 0
        status, _, _ = wait_exit(proc)
    assert status == 0


def test_a_client_that_vanishes_leaves_no_breakpoints_behind(testos, kernel_syms, tmp_path):
    serial = tmp_path / "serial.txt"
    with debugged(testos, "--serial", f"file:{serial}") as (proc, port):
        c = RspClient(port)
        assert c.cmd(f"Z0,{kernel_syms['tests_summary']:x},1") == "OK"      # hit near the end
        assert c.cmd(f"Z2,{kernel_syms['ticks']:x},4") == "OK"
        c.send("c")
        c.close()                                  # gone while the guest runs
        status, _, _ = wait_exit(proc)
    assert status == 0 and "testos: 25 tests, 0 failed" in serial.read_text()


def test_trap_engine_breakpoint_and_steps(testos, kernel_syms, tmp_path):
    pic_eoi = kernel_syms["pic_eoi"]
    with debugged(testos, "--engine", "trap", "--serial", "none") as (proc, port):
        c = RspClient(port)
        assert c.cmd(f"Z0,{pic_eoi:x},1") == "OK"
        assert c.cmd("c").startswith("T05")
        pcs = [_stop_pc(c)]
        for _ in range(4):
            assert c.cmd("s") == "T05thread:1;"
            pcs.append(_stop_pc(c))
        assert pcs[0] == pic_eoi and len(set(pcs)) == 5
        assert c.cmd(f"z0,{pic_eoi:x},1") == "OK"
        assert c.cmd("c") == "W03"                # trap fails gdt_tss: debug-exit 1 (README)
        wait_exit(proc)


def test_gdb_options_are_checked_before_the_guest_runs(testos):
    proc = run_cli("run", testos, "--wait-gdb")
    assert proc.returncode == EXIT_BAD_INPUT and "--wait-gdb needs --gdb" in proc.stderr
    proc = run_cli("run", testos, "--gdb", "nonsense")
    assert proc.returncode == EXIT_BAD_INPUT and "expected [HOST:]PORT" in proc.stderr
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = run_cli("run", testos, "--gdb", str(port))
    assert proc.returncode == EXIT_BAD_INPUT
    assert proc.stderr.count("\n") == 1 and f"cannot listen on 127.0.0.1:{port}" in proc.stderr


# --- Debian's gdb --------------------------------------------------------------------------------
def _find(elf_bytes_at, start: int, n: int, mnemonic: str, then: str | None = None) -> tuple[int, int]:
    """The address of the first `mnemonic` (followed by `then`) in
    [start, start+n), and of the instruction after it."""
    code = elf_bytes_at(start, n)
    insns = list(Cs(CS_ARCH_X86, CS_MODE_32).disasm(code, start))
    for a, b in zip(insns, insns[1:]):
        if a.mnemonic == mnemonic and then in (None, b.mnemonic):
            return a.address, b.address
    raise AssertionError(f"no {mnemonic} at {start:#x}")


def test_gdb_debugs_the_test_os(gdb_binary, built_guests, testos, kernel_syms, user_syms, tmp_path):
    from bt_vmm.loaders.elf import parse_elf32
    path = built_guests / "testos.sym.elf"
    data = path.read_bytes()
    segments = parse_elf32(str(path), data).load_segments()

    def code_at(addr: int, n: int) -> bytes:
        ph = next(p for p in segments if p.vaddr <= addr < p.vaddr + p.filesz)
        return data[ph.offset + addr - ph.vaddr:][:n]

    popf, after_popf = _find(code_at, kernel_syms["_start"], 32, "popfd")
    out, after_out = _find(code_at, kernel_syms["pic_eoi"], 32, "out", then="ret")   # the master's EOI
    report = user_syms["report"]
    serial = tmp_path / "serial.txt"
    script = tmp_path / "session.gdb"
    with debugged(testos, "--serial", f"file:{serial}") as (proc, port):
        script.write_text(f"""
set pagination off
set confirm off
target remote 127.0.0.1:{port}
echo @entry\\n
print/x $pc
while $pc != {popf:#x}
  stepi
end
stepi
echo @after-popf\\n
print/x $pc
print/x $eflags
break *{kernel_syms['pic_eoi']:#x}
continue
echo @pic_eoi\\n
print/x $pc
while $pc != {out:#x}
  stepi
end
stepi
echo @after-out\\n
print/x $pc
delete
break *{report:#x}
continue
echo @user\\n
print/x $cs
x/s *(char **)($esp + 4)
stepi
print/x $pc
delete
continue
""")
        gdb = subprocess.run([gdb_binary, "-nx", "-batch", "-x", str(script)], capture_output=True,
                             text=True, timeout=180, stdin=subprocess.DEVNULL)
        status, _, err = wait_exit(proc)
    log = gdb.stdout + gdb.stderr
    sections = dict(re.findall(r"@([\w-]+)\n(.*?)(?=@|\Z)", log, re.S))
    assert f"$1 = {kernel_syms['_start']:#x}" in sections["entry"], log
    assert f"= {after_popf:#x}" in sections["after-popf"], log
    assert "= 0x2\n" in sections["after-popf"], log                  # popf's EFLAGS: IF clear
    assert f"= {kernel_syms['pic_eoi']:#x}" in sections["pic_eoi"], log
    assert f"= {after_out:#x}" in sections["after-out"], log
    assert "= 0x1b" in sections["user"] and '"user_mode"' in sections["user"], log
    assert f"= {report + 1:#x}" in sections["user"], log              # report begins with a push
    assert "exited normally" in log, log
    assert status == 0, err
    assert "testos: 25 tests, 0 failed" in serial.read_text()
