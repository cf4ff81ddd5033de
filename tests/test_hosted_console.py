"""Serial console sinks: where the guest's output goes on the host."""

from __future__ import annotations

import io
import os
import sys
from pathlib import Path

import pytest

from bt_vmm.devices.uart16550 import Uart16550
from bt_vmm.errors import BadInput
from bt_vmm.hosted.console import FileSink, SerialSink, StdioSink, open_serial_sink


def test_unknown_spec_is_bad_input() -> None:
    with pytest.raises(BadInput) as info:
        open_serial_sink("tty")
    assert str(info.value) == "--serial: expected stdio, none or file:PATH, got 'tty'"
    with pytest.raises(BadInput):
        open_serial_sink("file:")


def test_none_discards_but_counts() -> None:
    sink = open_serial_sink("none")
    assert type(sink) is SerialSink
    sink.write(b"abc")
    sink.finish()
    assert sink.bytes_written == 3


def test_stdio_writes_bytes_and_flushes(monkeypatch: pytest.MonkeyPatch) -> None:
    raw = io.BytesIO()
    fake = io.TextIOWrapper(raw, encoding="utf-8")
    monkeypatch.setattr(sys, "stdout", fake)
    sink = open_serial_sink("stdio")
    assert isinstance(sink, StdioSink)
    print("before", end="\n")  # text printed first keeps its place
    sink.write(b"guest \xff line\n")
    assert raw.getvalue() == b"before\nguest \xff line\n"  # flushed: visible at once
    sink.finish()
    assert sink.bytes_written == 13
    assert not fake.closed  # stdout belongs to the process


def test_file_is_created_lazily(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    sink = open_serial_sink(f"file:{path}")
    assert isinstance(sink, FileSink)
    assert not path.exists()
    sink.write(b"")
    assert not path.exists()
    sink.write(b"hello\n")
    assert path.exists()
    sink.write(b"world\n")
    sink.finish()
    assert path.read_bytes() == b"hello\nworld\n"
    assert sink.bytes_written == 12


def test_failed_run_leaves_no_file(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    sink = open_serial_sink(f"file:{path}")
    sink.close()
    assert not path.exists()


def test_finish_creates_an_empty_file(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    path.write_bytes(b"stale output from an earlier run")
    sink = open_serial_sink(f"file:{path}")
    assert path.read_bytes().startswith(b"stale")  # untouched until the run writes or completes
    sink.finish()
    assert path.read_bytes() == b""


def test_missing_directory_is_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "no" / "such" / "dir" / "serial.log"
    with pytest.raises(BadInput) as info:
        open_serial_sink(f"file:{path}")
    message = str(info.value)
    assert str(path) in message and "\n" not in message


def test_directory_path_is_bad_input(tmp_path: Path) -> None:
    with pytest.raises(BadInput) as info:
        open_serial_sink(f"file:{tmp_path}")
    assert str(tmp_path) in str(info.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores permissions")
def test_unwritable_directory_is_bad_input(tmp_path: Path) -> None:
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        with pytest.raises(BadInput) as info:
            open_serial_sink(f"file:{locked / 'serial.log'}")
        assert str(locked / "serial.log") in str(info.value)
    finally:
        locked.chmod(0o700)


def test_directory_removed_mid_run_is_bad_input(tmp_path: Path) -> None:
    sub = tmp_path / "out"
    sub.mkdir()
    path = sub / "serial.log"
    sink = open_serial_sink(f"file:{path}")
    sub.rmdir()
    with pytest.raises(BadInput) as info:
        sink.write(b"x\n")
    assert str(path) in str(info.value)


def test_write_after_close_is_an_error() -> None:
    sink = open_serial_sink("none")
    sink.close()
    with pytest.raises(ValueError):
        sink.write(b"late")


def test_uart_output_reaches_the_file_one_line_per_write(tmp_path: Path) -> None:
    path = tmp_path / "serial.log"
    sink = open_serial_sink(f"file:{path}")
    writes: list[bytes] = []

    def record(data: bytes) -> None:
        writes.append(data)
        sink.write(data)

    uart = Uart16550(0x3F8, sink=record)
    for byte in b"Linux version 0.0\nbooting":
        uart.io_write(0x3F8, 1, byte)
    uart.flush()
    sink.finish()
    assert writes == [b"Linux version 0.0\n", b"booting"]
    assert path.read_bytes() == b"Linux version 0.0\nbooting"
