"""The two worlds as processes: `bt-vmm run` (the host world) and the VMM world
it spawns. What the guest sees must not depend on it; the VMM world must touch
no host resource; either world dying must end the run cleanly."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest

from asmkernel import POWEROFF, build_kernel

ROOT = Path(__file__).resolve().parent.parent
GUESTS = ["bench", "demo", "hello", "sensitive", "smc", "testos"]
EXIT_HOST_LOST, EXIT_VMM_LOST, EXIT_INTERRUPTED = 12, 14, 130


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("BT_VMM_DEBUG", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def _cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "bt_vmm", "run", *args]


def _children(pid: int) -> list[str]:
    """The pids of a process's children (none once it is gone)."""
    try:
        return Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except FileNotFoundError:
        return []


def _children_until_exit(proc: subprocess.Popen) -> set[str]:
    """Every child a process is seen to have while it runs."""
    children: set[str] = set()
    while proc.poll() is None:
        children.update(_children(proc.pid))
        time.sleep(0.05)
    return children


def _vmm_world(host_pid: int, timeout: float = 30) -> int:
    """The VMM world's pid: the host world's child."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        kids = _children(host_pid)
        if kids:
            return int(kids[0])
        time.sleep(0.02)
    raise AssertionError("the host world started no VMM world")


def _fds(pid: int) -> dict[int, str]:
    out = {}
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            out[int(fd)] = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:     # closed between the listing and the readlink
            pass
    return out


class Lines:
    """Reads a subprocess's output line by line with a deadline."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""

    def until(self, pattern: bytes, timeout: float = 60) -> bytes:
        end = time.monotonic() + timeout
        while pattern not in self.buf:
            left = end - time.monotonic()
            assert left > 0, f"timed out waiting for {pattern!r}; got {self.buf[-300:]!r}"
            ready, _, _ = select.select([self.fd], [], [], left)
            if ready:
                try:
                    chunk = os.read(self.fd, 65536)
                except OSError:       # a pty whose other end is closed
                    chunk = b""
                assert chunk, f"end of output before {pattern!r}; got {self.buf[-300:]!r}"
                self.buf += chunk
        return self.buf

    def rest(self) -> bytes:
        while True:
            try:
                chunk = os.read(self.fd, 65536)
            except OSError:
                chunk = b""
            if not chunk:
                return self.buf
            self.buf += chunk


# --------------------------------------------------------- the same guest results

def _verdicts(out: str) -> list[str]:
    return [line for line in out.splitlines()
            if line.startswith(("ok ", "FAIL", "skip")) or (line.startswith("testos: ") and " tests, " in line)]


@pytest.mark.parametrize("guest", GUESTS)
def test_every_guest_gives_the_same_results_in_both_modes(guest, tmp_path):
    runs = {}
    for mode in ("process", "inproc"):
        disk = tmp_path / f"{mode}.img"
        disk.write_bytes(bytes(4 << 20))
        args = ["--guest", guest, "--hosted", mode, "--stats-json", str(tmp_path / f"{mode}.json")]
        if guest == "testos":
            args += ["--disk", str(disk)]    # its disk test then runs, through the switch or not
        proc = subprocess.run(_cmd(*args), env=_env(), capture_output=True, text=True, timeout=300,
                              stdin=subprocess.DEVNULL)
        assert "Traceback" not in proc.stderr
        stats = json.loads((tmp_path / f"{mode}.json").read_text())
        runs[mode] = proc, stats, disk.read_bytes()
    (p, ps, pdisk), (i, istats, idisk) = runs["process"], runs["inproc"]
    assert p.returncode == i.returncode == 0, p.stderr + i.stderr
    if guest == "testos":       # it prints tick and fault counts: compare every verdict
        assert _verdicts(p.stdout) == _verdicts(i.stdout)
        assert "ok   disk_rw" in p.stdout and "testos: 26 tests, 0 failed" in p.stdout
        assert pdisk == idisk   # written, verified and restored the same way
        assert ps["world_switches_by_reason"]["disk-write"]["count"] > 0
    else:
        assert p.stdout == i.stdout
    assert ps["hosted"] == "process" and istats["hosted"] == "inproc"
    assert ps["world_switches"] > 0 and istats["world_switches"] == 0
    assert ps["world_switches_by_reason"]["console-write"]["count"] == p.stdout.count("\n")


# ---------------------------------------------- the VMM world touches no host resource

AUDIT_HOOK = '''
import os, sys
def _hook(event, args):
    # Only the VMM world reports, on the standard error it shares with the host world.
    if event == "open" and sys.argv and sys.argv[0].endswith("vmm_world.py"):
        os.write(2, ("VMM-OPEN %r\\n" % (args[0],)).encode())
sys.addaudithook(_hook)
'''


def test_the_vmm_world_opens_no_host_file_and_no_terminal(tmp_path):
    """While the test OS runs its self-test and then its shell on a terminal,
    with a disk, a statistics file and a TC profile, the VMM world's open
    descriptors are only sockets, pipes and the shared memory; every file it
    ever opens (an audit hook sees each open) is its own Python code. The host
    world holds the disk and the terminal, which shows the method sees them."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(AUDIT_HOOK)
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4 << 20))
    outputs = [tmp_path / "stats.json", tmp_path / "run.tcprof"]
    master, slave = pty.openpty()
    env = _env(PYTHONPATH=os.pathsep.join([str(site), str(ROOT)]))
    proc = subprocess.Popen(
        _cmd("--guest", "testos", "--append", "shell", "--disk", str(disk),
             "--stats-json", str(outputs[0]), "--tc-profile", str(outputs[1])),
        stdin=slave, stdout=slave, stderr=subprocess.PIPE, env=env)
    os.close(slave)
    try:
        vmm = _vmm_world(proc.pid)
        out = Lines(master)
        # From the guest's first line on (before it, the VMM world is still
        # loading its own code, which the audit hook below checks).
        out.until(b"testos: booting")
        seen: dict[int, str] = {}
        host_fds: dict[int, str] = {}
        end = time.monotonic() + 120
        while b"testos> " not in out.buf:        # sample throughout the self-test
            assert time.monotonic() < end, out.buf[-300:]
            seen.update(_fds(vmm))
            host_fds.update(_fds(proc.pid))
            ready, _, _ = select.select([master], [], [], 0.05)
            if ready:
                out.buf += os.read(master, 65536)
        os.write(master, b"disk\r")
        out.until(b"BT_VMM HARDDISK")
        seen.update(_fds(vmm))
        os.write(master, b"exit\r")
        assert proc.wait(60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(master)
    err = proc.stderr.read().decode()
    # The host world: the disk image and the terminal.
    assert str(disk) in host_fds.values()
    assert any(t.startswith("/dev/pts/") for t in host_fds.values()), host_fds
    # The VMM world: nothing but sockets, pipes (its standard streams) and guest memory.
    for fd, target in seen.items():
        assert re.fullmatch(r"socket:\[\d+\]|pipe:\[\d+\]|anon_inode:.*|/memfd:bt-vmm-guest-memory \(deleted\)",
                            target), f"the VMM world had fd {fd} open on {target}"
    opened = re.findall(r"VMM-OPEN '(.*)'", err)
    assert opened, "the audit hook saw no open at all (it did not run)"
    assert all(p.endswith((".py", ".pyc", ".so")) for p in opened), \
        [p for p in opened if not p.endswith((".py", ".pyc", ".so"))]
    assert not {str(disk), *map(str, outputs)} & set(opened)
    assert all(f.exists() for f in outputs)          # written, by the host world


def test_inproc_is_one_process(tmp_path):
    # the test OS's shell waits for input that never comes: the run lasts until --timeout
    proc = subprocess.Popen(_cmd("--guest", "testos", "--append", "shell", "--hosted", "inproc",
                                 "--timeout", "3",
                                 "--serial", "none"), env=_env(), stdin=subprocess.DEVNULL)
    try:
        children = _children_until_exit(proc)
    finally:
        proc.wait(60)
    assert proc.returncode == 124 and not children


# ------------------------------------------------------------ either world dying

KILL_HOST = r'''
import ctypes, json, os, subprocess, sys, time
ctypes.CDLL(None).prctl(36, 1, 0, 0, 0)       # PR_SET_CHILD_SUBREAPER: orphans come to us
host = subprocess.Popen(sys.argv[2:], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                        stderr=subprocess.PIPE)
out = b""
while sys.argv[1].encode() not in out:
    chunk = os.read(host.stdout.fileno(), 65536)
    if not chunk:
        break
    out += chunk
vmm = int(open(f"/proc/{host.pid}/task/{host.pid}/children").read().split()[0])
host.kill()
host.wait()
t = time.monotonic()
_, status = os.waitpid(vmm, 0)
print(json.dumps({"vmm_status": os.waitstatus_to_exitcode(status), "seconds": time.monotonic() - t,
                  "stderr": host.stderr.read().decode(errors="replace")}))
'''


@pytest.mark.parametrize("state,args,marker", [
    ("busy", ["--guest", "testos"], "ok   user_mode"),              # mid self-test
    ("halted", ["--guest", "testos", "--append", "shell"], "testos> "),   # idle at its prompt
])
def test_killing_the_host_world_stops_the_guest_cleanly(state, args, marker):
    proc = subprocess.run([sys.executable, "-c", KILL_HOST, marker, *_cmd(*args)],
                          env=_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr
    r = json.loads(proc.stdout)
    assert r["vmm_status"] == EXIT_HOST_LOST
    assert r["stderr"].strip().splitlines()[-1] == "bt-vmm: the host world died: the guest was stopped"
    assert "Traceback" not in r["stderr"]
    assert r["seconds"] < 10


WRITER_SECTORS = 2048


def disk_writer() -> bytes:
    """A guest that writes sector after sector (each filled with 0xD15C0000 + its
    number), polls until the drive reports the write done, and only then says
    so on COM1 with a line; forever, until the disk is full."""
    return build_kernel(f"""
        xor ebp, ebp
    next_sector:
        mov edi, 0x300000; mov ecx, 128; mov eax, 0xD15C0000; or eax, ebp; rep stosd
        mov dx, 0x1f6; mov eax, ebp; shr eax, 24; and al, 0x0f; or al, 0xE0; out dx, al
        mov dx, 0x1f2; mov al, 1; out dx, al
        mov dx, 0x1f3; mov eax, ebp; out dx, al
        mov dx, 0x1f4; mov eax, ebp; shr eax, 8; out dx, al
        mov dx, 0x1f5; mov eax, ebp; shr eax, 16; out dx, al
        mov dx, 0x1f7; mov al, 0x30; out dx, al
    wait_drq:
        in al, dx; test al, 0x80; jnz wait_drq
        test al, 0x08; jz failed
        mov esi, 0x300000; mov dx, 0x1f0; mov ecx, 256; rep outsw
        mov dx, 0x1f7
    wait_done:
        in al, dx; test al, 0x80; jnz wait_done
        test al, 0x09; jnz failed
        mov dx, 0x3f8; mov al, 0x6f; out dx, al; mov al, 0x6b; out dx, al; mov al, 10; out dx, al
        mov ecx, 300000
    pause:
        dec ecx; jnz pause
        inc ebp; cmp ebp, {WRITER_SECTORS}; jne next_sector
        {POWEROFF}
    failed:
        mov al, 1; out 0xf4, al
    fault_handler:
        hlt
    """)


def test_killing_the_vmm_world_keeps_acknowledged_writes_and_restores_the_terminal(tmp_path):
    kernel = tmp_path / "writer.bin"
    kernel.write_bytes(disk_writer())
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(WRITER_SECTORS * 512))
    master, slave = pty.openpty()
    before = termios.tcgetattr(slave)
    stdout_r, stdout_w = os.pipe()
    proc = subprocess.Popen(_cmd(str(kernel), "--disk", str(disk)), stdin=slave, stdout=stdout_w,
                            stderr=subprocess.PIPE, env=_env())
    os.close(stdout_w)
    try:
        vmm = _vmm_world(proc.pid)
        out = Lines(stdout_r)
        while out.buf.count(b"ok\n") < 40:
            out.until(b"ok\n" * (out.buf.count(b"ok\n") + 1))
        assert termios.tcgetattr(slave) != before      # raw mode for the run
        os.kill(vmm, signal.SIGKILL)
        status = proc.wait(60)
        acknowledged = out.rest().count(b"ok\n")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(stdout_r)
    err = proc.stderr.read().decode()
    assert status == EXIT_VMM_LOST, err
    assert err.strip() == ("bt-vmm: the VMM world died (killed by SIGKILL); "
                           "the disk images were flushed and closed")
    assert termios.tcgetattr(slave) == before           # the host world restored the terminal
    os.close(slave)
    os.close(master)
    image = disk.read_bytes()
    assert 40 <= acknowledged < WRITER_SECTORS
    for n in range(acknowledged):     # every write the guest saw complete is in the image
        assert image[512 * n:512 * (n + 1)] == (0xD15C0000 + n).to_bytes(4, "little") * 128, n
    # The image is not locked any more: a new run can use it.
    again = subprocess.run(_cmd("--guest", "hello", "--disk", str(disk)), env=_env(),
                           capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    assert again.returncode == 0, again.stderr


def test_ctrl_c_stops_the_guest_and_reports(tmp_path):
    """SIGINT to the process group (Ctrl-C at a terminal not in raw mode): the
    host world asks the VMM world to stop, which reports as usual."""
    stats = tmp_path / "s.json"
    proc = subprocess.Popen(_cmd("--guest", "testos", "--stats-json", str(stats)), env=_env(),
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            start_new_session=True)
    Lines(proc.stdout.fileno()).until(b"ok   user_mode")
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_INTERRUPTED
    assert err.decode().strip() == "bt-vmm: interrupted"
    data = json.loads(stats.read_text())
    assert data["exit_status"] == EXIT_INTERRUPTED and data["reason"] == "interrupted"


# ----------------------------------------------------------------- the counters

def test_stats_show_world_switches_by_reason_with_their_cost(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(4 << 20))
    proc = subprocess.run(_cmd("--guest", "testos", "--disk", str(disk), "--stats"), env=_env(),
                          capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, proc.stderr
    rows = {m[0]: m[1:] for m in re.findall(
        r"│ (\S+) +│ +([\d,]+) │ +([\d.]+) │ +([\d.]+) │ +([\d.]+) │", proc.stderr)}
    assert {"alarm", "console-write", "disk-read", "disk-write", "disk-flush", "plan"} <= set(rows), rows
    assert "world switches: VMM world -> host world and back" in proc.stderr
    assert all(float(median) > 0 and float(p99) >= float(median) for _, median, p99, _ in rows.values())
    assert re.search(r"│ world switches +│ +[\d,]+ │", proc.stderr)
    assert re.search(r"│   alarm +│ +[\d,]+ │", proc.stderr)        # host events: the alarm firing


def test_debugging_options_keep_one_process_and_refuse_two(tmp_path):
    """--gdb, --restore and --snapshot-on-exit use files and a socket that do
    not cross the world switch yet: they run with --hosted inproc, and ask
    for --hosted process in vain (one line, status 2)."""
    snap = tmp_path / "t.snap"
    proc = subprocess.run(_cmd("--guest", "hello", "--snapshot-on-exit", str(snap), "--hosted", "process"),
                          env=_env(), capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stderr.strip() == ("bt-vmm: --snapshot-on-exit runs with --hosted inproc (the debugger's "
                                   "socket and snapshot files do not go through the world switch yet)")
    proc = subprocess.Popen(_cmd("--guest", "testos", "--append", "shell", "--timeout", "2",
                                 "--snapshot-on-exit", str(snap),
                                 "--serial", "none"), env=_env(), stdin=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    children = _children_until_exit(proc)
    assert proc.returncode == 124 and not children
    assert f"snapshot written to {snap}" in proc.stderr.read() and snap.exists()
