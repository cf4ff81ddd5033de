"""The world switch (hosted/switch.py), the host alarm's protocol, and the
disk requests, each end exercised against the other in this process."""

from __future__ import annotations

import os
import threading
import time

import pytest

from bt_vmm.errors import EXIT_BAD_INPUT, EXIT_HOST_LOST, EXIT_MONITOR, BadInput, BtVmmError
from bt_vmm.hosted.alarm import Alarm, HostAlarm
from bt_vmm.hosted.disk import DiskImage
from bt_vmm.hosted.shared_memory import DRIVE_BUFFER_BYTES, SharedMemory
from bt_vmm.hosted.switch import (EVENT, MAX_FRAGMENT, Channel, ChannelClosed, HostServices,
                                  HostWorldLost, WorldSwitch, percentile)


@pytest.fixture
def host():
    """A WorldSwitch whose host end is served by a thread of this process."""
    vmm_end, host_end = Channel.pair()
    services = HostServices()
    errors: list[BaseException] = []

    def serve() -> None:
        try:
            services.serve(host_end)
        except ChannelClosed:
            pass
        except BaseException as e:     # pragma: no cover - reported by the test
            errors.append(e)
    thread = threading.Thread(target=serve, daemon=True)
    yield WorldSwitch(vmm_end), services, host_end, thread
    vmm_end.close()
    thread.join(5)
    host_end.close()
    assert not errors


def test_a_request_crosses_and_its_reply_comes_back(host):
    switch, services, _, thread = host
    seen = []
    services.register("console-write", lambda payload: seen.append(payload))
    services.register("disk-flush", lambda payload: payload[::-1])
    thread.start()
    assert switch.call("console-write", b"hello\n") == b""
    assert switch.call("disk-flush", b"abc") == b"cba"
    assert switch.call("ping") == b""
    assert seen == [b"hello\n"]
    assert switch.counts == {"console-write": 1, "disk-flush": 1, "ping": 1}
    stats = switch.stats()
    assert stats["ping"]["count"] == 1 and stats["ping"]["median_us"] > 0


def test_payloads_larger_than_a_datagram_cross_in_fragments(host):
    switch, services, _, thread = host
    services.register("output", lambda payload: len(payload).to_bytes(8, "little") + payload[-3:])
    thread.start()
    big = os.urandom(3 * MAX_FRAGMENT + 17)
    reply = switch.call("output", big)
    assert int.from_bytes(reply[:8], "little") == len(big) and reply[8:] == big[-3:]
    services.register("plan", lambda payload: big)          # and a large reply
    assert switch.call("plan") == big


def test_host_errors_come_back_as_the_vmm_worlds_exceptions(host):
    switch, services, _, thread = host

    def fail_os(payload):
        raise OSError(28, "No space left on device")

    def fail_bad(payload):
        raise BadInput("--serial: cannot write out.txt: is a directory")

    def fail_bug(payload):
        raise KeyError("oops")
    services.register("disk-write", fail_os)
    services.register("console-write", fail_bad)
    services.register("alarm", fail_bug)
    thread.start()
    with pytest.raises(OSError) as e:
        switch.call("disk-write", b"")
    assert e.value.errno == 28 and "No space" in str(e.value)
    with pytest.raises(BtVmmError) as e:
        switch.call("console-write", b"x")
    assert e.value.status == EXIT_BAD_INPUT and "is a directory" in str(e.value)
    with pytest.raises(BtVmmError) as e:
        switch.call("alarm", b"")
    assert e.value.status == EXIT_MONITOR and "host world: internal error: KeyError" in str(e.value)
    assert switch.call("ping") == b""           # the host world keeps serving


def test_a_vanished_host_world_is_host_world_lost():
    vmm_end, host_end = Channel.pair()
    host_end.close()
    switch = WorldSwitch(vmm_end)
    with pytest.raises(HostWorldLost) as e:
        switch.call("ping")
    assert e.value.status == EXIT_HOST_LOST and "host world died" in str(e.value)


def test_serving_ends_after_the_request_that_finishes_it(host):
    switch, services, _, thread = host
    services.register("done", lambda payload: services.finish())
    thread.start()
    switch.call("done", b"{}")
    thread.join(5)
    assert not thread.is_alive()


def test_percentile_is_nearest_rank():
    values = list(range(1, 101))
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99
    assert percentile([7], 99) == 7


def test_host_alarm_publishes_in_shared_memory_and_crosses_only_when_earlier(host):
    switch, services, _, thread = host
    memory = SharedMemory(1 << 20)
    reader = SharedMemory(1 << 20, fd=os.dup(memory.fd)).deadline   # the host world's mapping
    pokes = []
    services.register("alarm", lambda payload: pokes.append(reader.load()))
    thread.start()
    fired = []
    alarm = HostAlarm(switch, memory.deadline, lambda: fired.append(1))
    assert reader.load() is None
    for deadline, crossings in ((5.0, 1), (5.0, 1), (15.0, 1), (25.0, 1), (12.0, 2), (None, 2), (30.0, 3)):
        alarm.arm(deadline)
        assert reader.load() == deadline and switch.counts["alarm"] == crossings
    assert pokes == [5.0, 12.0, 30.0]    # each crossing found the new deadline already published
    alarm.wake()                         # host input: the request is raised here, no crossing
    assert fired == [1] and switch.counts["alarm"] == 3


def test_the_alarm_fires_at_the_deadline_and_repeats_until_it_moves():
    fired = []
    alarm = Alarm(lambda: fired.append(time.monotonic()))
    try:
        start = time.monotonic()
        alarm.arm(start + 0.05)
        time.sleep(0.2)
        assert fired and fired[0] >= start + 0.05
        assert len(fired) > 10                      # repeated about every REQUEST_REPEAT
        alarm.arm(time.monotonic() + 10)            # moved: quiet until then
        time.sleep(0.02)
        count = len(fired)
        time.sleep(0.1)
        assert len(fired) == count
    finally:
        alarm.close()


def test_an_alarm_reading_shared_memory_sees_later_deadlines_without_a_poke():
    memory = SharedMemory(1 << 20)
    fired = []
    alarm = Alarm(lambda: fired.append(time.monotonic()), source=memory.deadline.load)
    try:
        start = time.monotonic()
        memory.deadline.store(start + 0.05)
        alarm.poke()
        memory.deadline.store(start + 0.15)         # later: no poke needed
        time.sleep(0.1)
        assert not fired                            # woke at 0.05, read 0.15, slept again
        time.sleep(0.15)
        assert fired and fired[0] >= start + 0.15
    finally:
        alarm.close()


def test_events_flow_the_other_way():
    host_end, vmm_end = Channel.pair()
    host_end.send(EVENT["input"], b"ls\r")
    host_end.send(EVENT["alarm"])
    assert vmm_end.recv() == (EVENT["input"], b"ls\r")
    assert vmm_end.recv() == (EVENT["alarm"], b"")
    host_end.close()
    with pytest.raises(ChannelClosed):
        vmm_end.recv()


def test_disk_data_moves_in_shared_memory_not_through_the_switch(host, tmp_path):
    """The host world preads into (and pwrites from) the memory the VMM world
    maps: a second mapping of the same memfd sees the data, the request is 21 bytes."""
    from bt_vmm.hosted.vmm_world import HostDisk, decode_disk_request, encode_count
    switch, services, _, thread = host
    image = tmp_path / "d.img"
    data = os.urandom(64 * 512)
    image.write_bytes(data)
    host_memory = SharedMemory(1 << 20, drives=2)
    vmm_memory = SharedMemory(1 << 20, drives=2, fd=os.dup(host_memory.fd))
    disk = DiskImage(str(image))
    sizes = []

    def read(payload):
        sizes.append(len(payload))
        drive, lba, count, offset = decode_disk_request(payload)
        return encode_count(disk.read_into(lba, count, host_memory.view(offset, count * 512)))

    def write(payload):
        drive, lba, count, offset = decode_disk_request(payload)
        return encode_count(disk.write_from(lba, host_memory.view(offset, count * 512)))
    services.register("disk-read", read)
    services.register("disk-write", write)
    thread.start()
    proxy = HostDisk(switch, 1, vmm_memory, 64, False)
    assert len(proxy.buffer) == DRIVE_BUFFER_BYTES
    assert proxy.read_to_buffer(3, 5) == 5
    assert bytes(proxy.buffer[:5 * 512]) == data[3 * 512:8 * 512]
    assert sizes == [21]
    proxy.buffer[:512] = b"\xAB" * 512
    assert proxy.write_from_buffer(60, 1) == 1
    assert image.read_bytes()[60 * 512:61 * 512] == b"\xAB" * 512
    with pytest.raises(BtVmmError, match="outside the image"):    # a range the device never asks for
        proxy.read_to_buffer(62, 4)
    disk.close()


def test_a_disk_request_outside_the_shared_memory_is_refused():
    memory = SharedMemory(1 << 20, drives=1)
    with pytest.raises(ValueError):
        memory.view(memory.size - 512, 1024)
    with pytest.raises(ValueError):
        memory.view((1 << 20) - 512, 1024)      # straddles the end of guest RAM
    assert len(memory.view(memory.drive_buffer_offset(0), DRIVE_BUFFER_BYTES)) == DRIVE_BUFFER_BYTES
    with pytest.raises(ValueError):
        memory.view(1 << 20, 16)                # the control page is not for disk data
    assert len(memory.view(0x1000, 512)) == 512     # guest RAM itself: where bus-master DMA would go


def test_a_machine_of_its_own_leaves_no_descriptor_behind():
    # its shared memory's descriptor was never closed: one leaked per Machine
    # (the self-check, making a machine per case, ran out of descriptors)
    import gc
    from bt_vmm.hosted.console import SerialSink
    from bt_vmm.machine.pc import Machine
    gc.collect()
    before = len(os.listdir("/proc/self/fd"))
    machine = Machine(1 << 20, SerialSink())
    machine.ram[0x1000] = 0x5A
    assert machine.uc.mem_read(0x1000, 1) == b"\x5a"      # RAM is still mapped
    del machine
    gc.collect()
    assert len(os.listdir("/proc/self/fd")) == before
