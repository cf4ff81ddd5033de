"""The host world's terminal and file I/O for the guest's serial console.

The VMM world only hands bytes over (the UART calls `write` once per line);
where they end up -- the terminal, a file, nowhere -- and the operating-system
errors that come with that live here. `--serial` takes one of:

    stdio        the monitor's standard output, flushed after every write
    none         discard (bytes are still counted)
    file:PATH    a file, created only once the guest prints (or the run completes)
"""

from __future__ import annotations

import os
import queue
import sys
import threading
from typing import Callable
from typing import BinaryIO

from ..errors import BadInput


class SerialSink:
    """Base sink, and the `none` spec: accepts and counts bytes, sends them nowhere."""

    def __init__(self) -> None:
        self.bytes_written = 0
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ValueError("write to a closed serial sink")
        self.bytes_written += len(data)

    def close(self) -> None:
        """Release the destination; a run that failed ends here."""
        self.closed = True

    def finish(self) -> None:
        """End of a completed run: make sure the output exists, then close."""
        self.close()


class StdioSink(SerialSink):
    """The monitor's stdout; one flush per write since the UART already batches lines."""

    def write(self, data: bytes) -> None:
        super().write(data)
        out = sys.stdout  # looked up each time so redirection (and test capture) applies
        out.flush()  # anything printed as text first stays in order
        out.buffer.write(data)
        out.buffer.flush()

    def close(self) -> None:
        if not self.closed:
            sys.stdout.flush()  # stdout belongs to the process: flush, never close
        super().close()


class FileSink(SerialSink):
    """A file opened on the first write, so a run that dies early leaves no empty file."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path
        self._file: BinaryIO | None = None
        check_writable("--serial", path)  # fail on the command line, not mid-run

    def write(self, data: bytes) -> None:
        super().write(data)
        if not data:
            return
        if self._file is None:
            self._file = self._open()
        self._file.write(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        super().close()

    def finish(self) -> None:
        if self._file is None and not self.closed:
            self._file = self._open()  # the guest printed nothing: that is still the output
        self.close()

    def _open(self) -> BinaryIO:
        try:
            return open(self.path, "wb")
        except OSError as exc:
            raise BadInput(f"--serial: cannot write {self.path}: {exc.strerror}") from exc


def check_writable(option: str, path: str) -> None:
    """Raise BadInput now if the output file `path` (named by `option`) could
    not be created or written later: a run must not fail after the guest ran."""
    if not path:
        raise BadInput(f"{option}: empty file name")
    if os.path.isdir(path):
        raise BadInput(f"{option}: cannot write {path}: is a directory")
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise BadInput(f"{option}: cannot write {path}: directory {parent} does not exist")
    if os.path.exists(path):
        if not os.access(path, os.W_OK):
            raise BadInput(f"{option}: cannot write {path}: permission denied")
    elif not os.access(parent, os.W_OK | os.X_OK):
        raise BadInput(f"{option}: cannot write {path}: permission denied in {parent}")


def open_serial_sink(spec: str) -> SerialSink:
    """Turn a `--serial` argument into a sink; BadInput for anything unusable."""
    if spec == "stdio":
        return StdioSink()
    if spec == "none":
        return SerialSink()
    if spec.startswith("file:") and len(spec) > len("file:"):
        return FileSink(os.path.expanduser(spec[len("file:"):]))
    raise BadInput(f"--serial: expected stdio, none or file:PATH, got {spec!r}")


class ConsoleInput:
    """Host keyboard (or pipe) input for the guest's serial console.

    A thread reads the host's standard input and queues the bytes; the VMM
    world drains the queue into the UART when it has control, and `on_input`
    tells it that there is something to drain. A terminal is put in raw mode
    for the run (so each key reaches the guest as typed, Ctrl-C included) and
    restored at the end.
    """

    def __init__(self, fd: int, on_input: Callable[[], None]) -> None:
        self._fd = fd
        self._on_input = on_input
        self._queue: queue.SimpleQueue[bytes] = queue.SimpleQueue()
        self._saved_tty = None
        self.bytes_read = 0
        if os.isatty(fd):
            import termios
            import tty
            self._saved_tty = termios.tcgetattr(fd)
            tty.setraw(fd)
        self._thread = threading.Thread(target=self._read_loop, name="bt-vmm-console", daemon=True)
        self._thread.start()

    def _read_loop(self) -> None:
        while True:
            try:
                data = os.read(self._fd, 1024)
            except OSError:
                return
            if not data:
                return
            self.bytes_read += len(data)
            self._queue.put(data)
            self._on_input()

    def drain(self) -> bytes:
        out = b""
        while True:
            try:
                out += self._queue.get_nowait()
            except queue.Empty:
                return out

    def close(self) -> None:
        if self._saved_tty is not None:
            import termios
            termios.tcsetattr(self._fd, termios.TCSADRAIN, self._saved_tty)
            self._saved_tty = None
