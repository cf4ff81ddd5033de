#!/usr/bin/env python3
"""What a world switch costs: the round trip from the VMM world to the host
world and back, measured the way bt-vmm makes it.

    python benchmarks/world_switch.py                      # 7 rounds x 20000 switches per column
    python benchmarks/world_switch.py --rounds 11 --switches 50000 --json ws.json

This process plays the VMM world (bt_vmm.hosted.switch.WorldSwitch); a host
world is a separate Python process started with subprocess (as bt-vmm starts
its VMM world) that serves requests with the same HostServices loop and the
same handlers bt-vmm registers. Columns, interleaved round by round:

  function call   the handler called directly in this process: what
                  --hosted inproc pays instead of a switch
  os floor        os.write + os.read of a 2-byte message over the same kind
                  of socket pair to a process that echoes it with os.read +
                  os.write: the kernel's part, with the least Python around it
  ping            WorldSwitch.call("ping"): the null world switch
  console-write   an 80-byte line to the host world's console sink (discarded)
  disk-read       one sector preadv'd by the host world into shared memory
                  (the image is in the page cache)
  ping after 1 ms ping after the caller has computed for 1 ms, as the
                  monitor does between switches while the guest runs: the
                  host world has gone to sleep and the caches have cooled

Then the test OS runs with `--stats-json` and a 4 MiB disk, RUNS times in
each --hosted mode, interleaved: the world switches by reason of the first
two-process run are printed (the costs inside a real run), and the median
time of the guest's run (engine.run) and of the whole command in each mode.

Times are per round trip, in microseconds: the median of each round's median
(and the spread of the round medians), and p10/p90/p99 over all samples of
all rounds. The machine is named at the top, with the load average before and
after: other jobs on the machine show up as long tails.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bt_vmm.hosted.shared_memory import SharedMemory          # noqa: E402
from bt_vmm.hosted.switch import Channel, WorldSwitch, percentile   # noqa: E402
from bt_vmm.hosted.vmm_world import HostDisk                   # noqa: E402

MEM = 1 << 20
LINE = b"x" * 79 + b"\n"

# The host world for the benchmark: the real services loop and handlers.
HOST = r"""
import os, socket, sys
from bt_vmm.hosted.disk import DiskImage
from bt_vmm.hosted.shared_memory import SECTOR_SIZE, SharedMemory
from bt_vmm.hosted.switch import Channel, ChannelClosed, HostServices
from bt_vmm.hosted.vmm_world import decode_disk_request, encode_count
sock_fd, memory_fd, image, echo_fd = (sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]))
memory = SharedMemory(1 << 20, 1, fd=memory_fd)
disk = DiskImage(image)
services = HostServices()
sink = open(os.devnull, "wb", buffering=0)
services.register("console-write", lambda payload: sink.write(payload) and None)
def read(payload):
    drive, lba, count, offset = decode_disk_request(payload)
    return encode_count(disk.read_into(lba, count, memory.view(offset, count * SECTOR_SIZE)))
services.register("disk-read", read)
if os.fork() == 0:                      # the os floor's echo process
    while True:
        m = os.read(echo_fd, 64)
        if not m:
            os._exit(0)
        os.write(echo_fd, m)
os.close(echo_fd)
try:
    services.serve(Channel(socket.socket(fileno=int(sock_fd))))
except ChannelClosed:
    pass
"""


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "load_average": os.getloadavg()}


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--switches", type=int, default=20000, help="round trips per column per round")
    ap.add_argument("--gap-switches", type=int, default=500,
                    help="round trips per round for 'ping after 1 ms'")
    ap.add_argument("--json", metavar="FILE")
    ap.add_argument("--runs", type=int, default=5,
                    help="test OS runs per --hosted mode (0: none)")
    args = ap.parse_args()

    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, Linux {info['kernel']}, "
          f"Python {info['python']}; load average {info['load_average'][0]:.2f}")
    tmp = tempfile.TemporaryDirectory()
    image = Path(tmp.name) / "disk.img"
    image.write_bytes(os.urandom(64 * 512))
    memory = SharedMemory(MEM, 1)
    vmm_end, host_end = Channel.pair()
    echo_here, echo_there = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    fds = (host_end.fileno(), memory.fd, echo_there.fileno())
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    host = subprocess.Popen([sys.executable, "-c", HOST, str(fds[0]), str(fds[1]), str(image), str(fds[2])],
                            pass_fds=fds, env=env)
    host_end.close()
    echo_there.close()
    switch = WorldSwitch(vmm_end)
    disk = HostDisk(switch, 0, memory, 64, True)
    def handler(payload: bytes) -> bytes:    # what --hosted inproc pays: a call, no crossing
        return b""
    echo = echo_here.fileno()

    def timed(fn, n: int, gap: float = 0.0) -> list[int]:
        out = []
        perf = time.perf_counter_ns
        for _ in range(n):
            if gap:
                spin(gap)
            t = perf()
            fn()
            out.append(perf() - t)
        return out

    def os_floor() -> None:
        os.write(echo, b"\0\0")
        os.read(echo, 64)

    columns = {
        "function call": (lambda: handler(b""), args.switches, 0.0),
        "os floor": (os_floor, args.switches, 0.0),
        "ping": (lambda: switch.call("ping"), args.switches, 0.0),
        "console-write": (lambda: switch.call("console-write", LINE), args.switches, 0.0),
        "disk-read": (lambda: disk.read_to_buffer(7, 1), args.switches, 0.0),
        "ping after 1 ms": (lambda: switch.call("ping"), args.gap_switches, 1e-3),
    }
    for fn, _, _ in columns.values():          # warm up
        timed(fn, 200)
    samples: dict[str, list[list[int]]] = {name: [] for name in columns}
    for _ in range(args.rounds):
        for name, (fn, n, gap) in columns.items():
            samples[name].append(timed(fn, n, gap))
    vmm_end.close()
    echo_here.close()
    host.wait(10)

    results = {}
    print(f"\n{args.rounds} rounds; round trips per round: {args.switches:,} "
          f"({args.gap_switches:,} for 'ping after 1 ms'); microseconds")
    print(f"{'':<16} {'median':>8} {'rounds min-max':>16} {'p10':>7} {'p90':>7} {'p99':>8}")
    for name, rounds in samples.items():
        medians = [statistics.median(r) / 1e3 for r in rounds]
        pooled = sorted(x for r in rounds for x in r)
        row = {"median_us": statistics.median(medians), "round_medians_us": medians,
               "p10_us": percentile(pooled, 10) / 1e3, "p90_us": percentile(pooled, 90) / 1e3,
               "p99_us": percentile(pooled, 99) / 1e3}
        results[name] = row
        print(f"{name:<16} {row['median_us']:8.2f} {min(medians):7.2f}-{max(medians):<8.2f} "
              f"{row['p10_us']:7.2f} {row['p90_us']:7.2f} {row['p99_us']:8.2f}")

    runs: dict[str, list[dict]] = {"process": [], "inproc": []}
    for _ in range(args.runs):
        for mode in runs:
            runs[mode].append(testos_run(Path(tmp.name), env, mode))
    if args.runs:
        run = runs["process"][0]
        print(f"\nthe test OS, two processes, a 4 MiB disk: guest run {run['wall_seconds']:.2f} s, "
              f"{run['world_switches']:,} world switches taking {run['switch_ms']:.1f} ms "
              f"({run['switch_share']:.2%} of the run); host events {run['host_events']}")
        print(f"{'reason':<16} {'count':>7} {'median':>8} {'p99':>9} {'total ms':>9}")
        for reason, v in run["by_reason"].items():
            print(f"{reason:<16} {v['count']:>7,} {v['median_us']:8.1f} {v['p99_us']:9.1f} {v['total_ms']:9.1f}")
        print(f"\n{args.runs} runs per mode, interleaved: median (min-max) seconds")
        for mode, rs in runs.items():
            guest = [r["wall_seconds"] for r in rs]
            whole = [r["command_seconds"] for r in rs]
            print(f"--hosted {mode:<8} guest run {statistics.median(guest):5.2f} ({min(guest):.2f}-{max(guest):.2f})"
                  f"   whole command {statistics.median(whole):5.2f} ({min(whole):.2f}-{max(whole):.2f})")
    info["load_average_after"] = os.getloadavg()
    print(f"\nload average after: {info['load_average_after'][0]:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"machine": info, "rounds": args.rounds, "switches": args.switches,
                       "columns": results, "testos": runs}, f, indent=2)
            f.write("\n")
    tmp.cleanup()
    return 0


def testos_run(tmp: Path, env: dict, mode: str) -> dict:
    disk = tmp / "testos.img"
    disk.write_bytes(bytes(4 << 20))
    stats = tmp / "testos.json"
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "bt_vmm", "run", "--guest", "testos", "--disk", str(disk),
                    "--serial", "none", "--stats-json", str(stats), "--hosted", mode], env=env,
                   check=True, stdin=subprocess.DEVNULL)
    command = time.perf_counter() - t
    data = json.loads(stats.read_text())
    by_reason = data["world_switches_by_reason"]
    switch_ms = sum(v["total_ms"] for v in by_reason.values())
    return {"wall_seconds": data["wall_seconds"], "command_seconds": command,
            "world_switches": data["world_switches"],
            "switch_ms": switch_ms, "switch_share": switch_ms / 1e3 / data["wall_seconds"],
            "by_reason": by_reason, "host_events": data["host_events_by_kind"]}


if __name__ == "__main__":
    sys.exit(main())
