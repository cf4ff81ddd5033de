"""`bt-vmm run`'s options for debugging guests and saving machine state:
--gdb [HOST:]PORT, --wait-gdb (QEMU's -s -S), --snapshot-on-exit FILE and
--restore FILE. A Session carries them through the run: checked and bound
before the machine is built, wired to the engine before it runs, finished
after it (bt_vmm/gdbstub, bt_vmm/snapshot)."""

from __future__ import annotations

import sys

from bt_vmm.errors import BadInput

DEFAULT_MEM = 64 << 20


def add_options(r) -> None:
    r.add_argument("--gdb", metavar="[HOST:]PORT",
                   help="serve gdb's remote protocol on a TCP port (HOST defaults to 127.0.0.1; "
                        "QEMU's -s is --gdb 1234)")
    r.add_argument("--wait-gdb", action="store_true",
                   help="with --gdb: stop before the guest's first instruction until gdb "
                        "connects and continues (QEMU's -S)")
    r.add_argument("--snapshot-on-exit", metavar="FILE",
                   help="when the run stops where the guest can go on (--timeout, --max-insns, "
                        "gdb's kill), save the whole machine to FILE")
    r.add_argument("--restore", metavar="FILE",
                   help="go on from a snapshot instead of booting (same kernel, -m, --engine "
                        "and disks as when it was taken)")


class Session:
    def __init__(self, args) -> None:
        """Check the options and bind the gdb port, before anything is built."""
        from bt_vmm.hosted.console import check_writable
        self.args = args
        if args.wait_gdb and not args.gdb:
            raise BadInput("--wait-gdb needs --gdb [HOST:]PORT")
        self.snapshot = None
        if args.restore is not None:
            from bt_vmm.snapshot import Snapshot
            if args.append or args.module or args.initrd:
                raise BadInput("--restore: the guest's memory comes from the snapshot; "
                               "--append, --module and --initrd do not apply")
            self.snapshot = Snapshot(args.restore)
        if args.snapshot_on_exit is not None:
            check_writable("--snapshot-on-exit", args.snapshot_on_exit)
        self.stub = self.server = None
        if args.gdb is not None:
            from bt_vmm.gdbstub import GdbStub, TcpServer, parse_address
            host, port = parse_address(args.gdb)
            self.stub = GdbStub()
            self.server = TcpServer(host, port, self.stub)
        self.identity = None

    @property
    def mem_size(self) -> int:
        """-m, or the snapshot's memory size, or the default."""
        if self.args.mem is not None:
            return self.args.mem
        return self.snapshot.mem_size if self.snapshot is not None else DEFAULT_MEM

    def start_machine(self, machine, disks, kernel_name: str, kernel: bytes, boot) -> int:
        """Boot (`boot`, the loaded image) or restore the machine; returns the
        guest PC the run starts at."""
        from bt_vmm import snapshot
        if self.args.snapshot_on_exit is not None:
            snapshot.check_disks(disks)
        self.identity = snapshot.identity(kernel_name, kernel, self.mem_size, self.args.engine, disks)
        if self.snapshot is None:
            machine.load(boot)
            return boot.entry
        self.snapshot.check(self.identity)
        self.snapshot.restore(machine)
        return self.snapshot.pc

    def attach(self, machine, engine) -> None:
        """The engine takes the snapshot's registers and the debugger."""
        if self.snapshot is not None:
            self.snapshot.restore_engine(engine)
        if self.stub is not None:
            from bt_vmm import snapshot
            from bt_vmm.gdbstub import Monitor

            def take(path: str) -> str:
                return snapshot.take(path, machine, engine, self.identity, engine.debug.pc, engine.halted)
            self.stub.monitor = Monitor(engine, take)
            self.stub.attach(engine.attach_debugger(self.stub, self.args.wait_gdb))
            where = f"{self.server.host}:{self.server.port}"
            print(f"bt-vmm: waiting for gdb on {where} before the guest starts" if self.args.wait_gdb
                  else f"bt-vmm: gdb can connect on {where}", file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.server is not None:
            self.server.close()

    def finish(self, machine, engine, result) -> str | None:
        """--snapshot-on-exit, if the run stopped where the guest can go on;
        the line to report (the host world prints it after the run's own)."""
        path = self.args.snapshot_on_exit
        if path is None:
            return None
        from bt_vmm import snapshot
        if engine.resume_point is None:
            return f"no snapshot written: the run ended ({result.reason}) where the guest cannot go on"
        pc, halted = engine.resume_point
        try:
            snapshot.save(path, machine, engine, self.identity, pc, halted)
        except OSError as e:
            raise BadInput(f"--snapshot-on-exit: cannot write {path}: {e.strerror}") from None
        return f"snapshot written to {path} (guest at {pc:#x})"
