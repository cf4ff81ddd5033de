"""A gdb remote-protocol stub for debugging guests (`bt-vmm run --gdb`).

packets.py frames the protocol over a byte stream, registers.py describes
the i386 registers to gdb, stub.py serves gdb's commands against the engine's
debug target (engines/debug.py), monitor.py answers `monitor` commands, and
tcp.py -- the only module with sockets -- carries the bytes.
"""

from bt_vmm.gdbstub.monitor import Monitor
from bt_vmm.gdbstub.stub import GdbStub
from bt_vmm.gdbstub.tcp import TcpServer, parse_address

__all__ = ["GdbStub", "Monitor", "TcpServer", "parse_address"]
