"""Exceptions that end a run, and the exit status each one maps to.

Exit statuses are even so that they never collide with the odd statuses a guest
produces through the debug-exit port ((V << 1) | 1, QEMU's isa-debug-exit rule).
"""

from __future__ import annotations

EXIT_OK = 0            # guest powered off, or halted with interrupts disabled
EXIT_BAD_INPUT = 2     # bad command line, missing or malformed kernel image
EXIT_TRIPLE_FAULT = 4  # the guest triple-faulted (a real CPU would reset)
EXIT_MONITOR = 6       # the guest did something this monitor does not virtualize
EXIT_INSN_LIMIT = 8    # --max-insns reached
EXIT_RESET = 10        # the guest asked for a reset (keyboard controller, port 0x92)
EXIT_HOST_LOST = 12    # the host world died: the VMM world stopped the guest
EXIT_VMM_LOST = 14     # the VMM world died: the host world closed the disks and the terminal
EXIT_DEBUGGER = 16     # the debugger ended the run (gdb `kill`)
EXIT_TIMEOUT = 124     # --timeout reached (the status coreutils' timeout uses)
EXIT_INTERRUPTED = 130 # Ctrl-C (SIGINT) or SIGTERM at the host world: the guest was stopped


class BtVmmError(Exception):
    """Base of the errors that end a run with a one-line message."""

    status = EXIT_MONITOR


class BadInput(BtVmmError):
    """Bad command line or an image file the loaders cannot use."""

    status = EXIT_BAD_INPUT


class Unsupported(BtVmmError):
    """The guest used a feature the monitor does not (yet) virtualize."""

    status = EXIT_MONITOR


class GuestExit(Exception):
    """The guest asked to end the run (debug-exit port, power-off, final hlt).

    Raised from device handlers inside unicorn hooks; the engine's run loop
    turns it into the run's exit status.
    """

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


def read_input(path: str, noun: str) -> bytes:
    """The bytes of a file the user named, or BadInput with a one-line reason
    (`noun` says what the file should have been: "kernel file", "TC profile")."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadInput(f"{path}: no such file") from None
    except IsADirectoryError:
        raise BadInput(f"{path}: is a directory, not a {noun}") from None
    except OSError as e:
        raise BadInput(f"{path}: cannot read {noun}: {e.strerror}") from None
