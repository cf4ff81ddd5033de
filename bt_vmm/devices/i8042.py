"""The PS/2 keyboard controller (Intel 8042) at 0x60/0x64, with a keyboard and a mouse on it.

Port 0x64 reads the status register and takes controller commands; port 0x60
reads the output buffer and writes either a controller command's parameter or
a byte for the keyboard. The module goes from the status register and the
controller's command set to the two PS/2 devices behind it.

Bytes reach the guest through one output buffer, as on the chip. Three sources
fill it, in this order of priority: the controller's own replies, the keyboard,
and the mouse (aux); a device's bytes wait in its queue while its interface is
disabled (command byte bits 4 and 5). Each byte read from 0x60 drops the IRQ
line before the next byte is loaded and raises it again, so an edge-triggered
PIC sees one edge per byte. There is no input buffer to wait for: the guest's
writes are taken at once, so IBF always reads 0.

Host keyboard input (`feed_scancodes`) is passed through as given: the host
supplies the scancode set the guest expects (set 1 while the command byte's
translate bit is on, as PC guests leave it). It waits in a backlog until the
keyboard is scanning and its interface is enabled, and enters the keyboard's
16-byte buffer from there, so typing is never lost to a guest that is not yet
listening. Command byte bit 6 (translation) is stored but bytes are never
translated; the keyboard's identify reply is therefore the untranslated 0xAB 0x83.
"""

from __future__ import annotations

from collections import deque
from typing import Callable

from bt_vmm.devices.bus import BytePorts
from bt_vmm.devices.state import DeviceState

# --- Ports. ---
DATA_PORT = 0x60  # read: output buffer; write: a command's parameter, or a byte for the keyboard
STATUS_PORT = 0x64  # read: status register
COMMAND_PORT = 0x64  # write: controller command
PORTS = ((DATA_PORT, 1), (STATUS_PORT, 1))

# --- Status register. ---
STS_OBF = 0x01  # output buffer full: a byte waits at 0x60
STS_IBF = 0x02  # input buffer full (never: writes are taken at once)
STS_SYS = 0x04  # system flag: command byte bit 2 (set by a passing self test)
STS_CMD = 0x08  # the last write went to 0x64 (command), not 0x60 (data)
STS_UNLOCKED = 0x10  # keyboard not inhibited by the keylock switch
STS_AUX_OBF = 0x20  # the byte in the output buffer comes from the aux device
STS_TIMEOUT = 0x40  # general timeout (never)
STS_PARITY = 0x80  # parity error (never)

# --- Command byte (controller RAM byte 0). ---
CTR_KBDINT = 0x01  # IRQ1 when a keyboard byte is in the output buffer
CTR_AUXINT = 0x02  # IRQ12 when an aux byte is in the output buffer
CTR_SYS = 0x04  # the system flag, mirrored in the status register
CTR_IGNKEYLOCK = 0x08  # ignore the keylock (no keylock here)
CTR_KBDDIS = 0x10  # keyboard interface disabled (clock held low)
CTR_AUXDIS = 0x20  # aux interface disabled
CTR_XLATE = 0x40  # translate set 2 to set 1 (stored, not performed)
POWER_ON_CTR = CTR_XLATE | CTR_AUXDIS | CTR_SYS | CTR_KBDINT  # as firmware hands over
RAM_SIZE = 32  # controller RAM bytes reachable by commands 0x20-0x3F and 0x60-0x7F

# --- Output port (commands 0xD0/0xD1). ---
OUT_RESET = 0x01  # system reset line, active low: writing 0 resets the machine
OUT_A20 = 0x02  # the A20 gate
OUT_IRQ1 = 0x10  # keyboard output buffer full (reads only)
OUT_IRQ12 = 0x20  # aux output buffer full (reads only)
OUT_COMPUTED = OUT_IRQ1 | OUT_IRQ12
POWER_ON_OUTPUT = 0xCF  # running, A20 on (the loader enabled it), unused lines high
INPUT_PORT = 0xA0  # command 0xC0: keyboard not inhibited, no manufacturing jumper

# --- Controller commands (written to 0x64). ---
CMD_READ_RAM = 0x20  # 0x20-0x3F: read controller RAM byte (0x20: the command byte)
CMD_WRITE_RAM = 0x60  # 0x60-0x7F: write controller RAM byte (0x60: the command byte)
CMD_RAM_MASK = 0x1F
CMD_PASSWORD_TEST = 0xA4  # is a password installed? (0xF1: no)
CMD_AUX_DISABLE = 0xA7
CMD_AUX_ENABLE = 0xA8
CMD_AUX_TEST = 0xA9  # test the aux interface: 0x00 = no error
CMD_SELF_TEST = 0xAA  # controller self test: 0x55 = passed
CMD_KBD_TEST = 0xAB  # test the keyboard interface: 0x00 = no error
CMD_KBD_DISABLE = 0xAD
CMD_KBD_ENABLE = 0xAE
CMD_READ_INPUT = 0xC0  # read the input port
CMD_READ_OUTPUT = 0xD0  # read the output port
CMD_WRITE_OUTPUT = 0xD1  # write the output port (A20 and reset)
CMD_WRITE_KBD_OBUF = 0xD2  # put the parameter in the output buffer as keyboard data
CMD_WRITE_AUX_OBUF = 0xD3  # put the parameter in the output buffer as aux data (loopback)
CMD_WRITE_AUX = 0xD4  # send the parameter to the aux device
CMD_PULSE_FIRST = 0xF0  # 0xF0-0xFF: pulse output port bits 0-3 whose command bit is 0
PASSWORD_NOT_INSTALLED = 0xF1
SELF_TEST_PASSED = 0x55
INTERFACE_OK = 0x00
PARAMETER_COMMANDS = (CMD_WRITE_OUTPUT, CMD_WRITE_KBD_OBUF, CMD_WRITE_AUX_OBUF, CMD_WRITE_AUX)

# --- PS/2 device replies. ---
ACK = 0xFA
RESEND = 0xFE
BAT_PASSED = 0xAA  # basic assurance test passed (after reset)
ECHO = 0xEE

# --- Keyboard commands (written to 0x60). ---
KBD_SET_LEDS = 0xED  # parameter: LED bits
KBD_ECHO = 0xEE
KBD_SCANCODE_SET = 0xF0  # parameter: 0 = query, 1-3 = select
KBD_IDENTIFY = 0xF2
KBD_TYPEMATIC = 0xF3  # parameter: rate and delay
KBD_ENABLE = 0xF4
KBD_DISABLE = 0xF5  # disable scanning, restore defaults
KBD_DEFAULTS = 0xF6
KBD_SET3_FIRST = 0xF7  # 0xF7-0xFD: set-3 key behaviour commands (acknowledged)
KBD_SET3_LAST = 0xFD
KBD_RESEND = 0xFE
KBD_RESET = 0xFF
KBD_ID = (0xAB, 0x83)  # an MF2 keyboard
KBD_BUFFER = 16  # bytes the keyboard holds for the controller
DEFAULT_SCANCODE_SET = 2
DEFAULT_TYPEMATIC = 0x2B  # 10.9 characters/s, 500 ms delay

# --- Aux (mouse) commands (written through 0xD4). ---
AUX_SCALING_1_1 = 0xE6
AUX_SCALING_2_1 = 0xE7
AUX_SET_RESOLUTION = 0xE8  # parameter: 0-3
AUX_STATUS_REQUEST = 0xE9  # three status bytes follow the ACK
AUX_STREAM_MODE = 0xEA
AUX_READ_DATA = 0xEB  # one movement packet follows the ACK
AUX_RESET_WRAP = 0xEC
AUX_WRAP_MODE = 0xEE
AUX_REMOTE_MODE = 0xF0
AUX_GET_ID = 0xF2
AUX_SAMPLE_RATE = 0xF3  # parameter: samples/s
AUX_ENABLE = 0xF4  # enable data reporting
AUX_DISABLE = 0xF5
AUX_DEFAULTS = 0xF6
AUX_RESEND = 0xFE
AUX_RESET = 0xFF
AUX_ID = 0x00  # a standard PS/2 mouse
AUX_STATUS_REMOTE = 0x40  # status byte 1 bits
AUX_STATUS_ENABLED = 0x20
AUX_STATUS_SCALING = 0x10
AUX_EMPTY_PACKET = (0x08, 0x00, 0x00)  # bit 3 always set, no buttons, no movement
DEFAULT_SAMPLE_RATE = 100
DEFAULT_RESOLUTION = 2  # 4 counts/mm

# --- Output buffer sources. ---
SRC_KBD = 0  # keyboard data (and the controller's replies): IRQ1
SRC_AUX = 1  # aux data: IRQ12, STS_AUX_OBF


class I8042(BytePorts, DeviceState):
    """The keyboard controller, the keyboard and the mouse, as the guest's drivers see them."""

    # Snapshot state (devices/state.py): the controller, the keyboard and the mouse.
    STATE = ("ram", "output_port", "last_write_was_command", "pending_command", "obuf",
             "last_read", "ctrl_queue", "kbd_replies", "kbd_queue", "backlog", "kbd_scanning",
             "kbd_expect", "kbd_last_sent", "leds", "scancode_set", "typematic", "aux_queue",
             "aux_expect", "aux_last_sent", "aux_reporting", "aux_remote", "aux_scaling_2_1",
             "aux_resolution", "aux_sample_rate", "irq1_level", "irq12_level")

    def __init__(
        self,
        irq1: Callable[[bool], None] | None = None,
        irq12: Callable[[bool], None] | None = None,
        on_reset: Callable[[], None] | None = None,
    ) -> None:
        self._irq1 = irq1
        self._irq12 = irq12
        self._on_reset = on_reset

        # Controller.
        self.ram = bytearray(RAM_SIZE)  # byte 0 is the command byte
        self.output_port = POWER_ON_OUTPUT
        self.last_write_was_command = False  # STS_CMD
        self.pending_command: int | None = None  # a command waiting for its parameter at 0x60
        self.obuf: tuple[int, int] | None = None  # (byte, source) in the output buffer
        self.last_read = 0  # what 0x60 returns when the buffer is empty
        self.ctrl_queue: deque[tuple[int, int]] = deque()  # controller replies

        # Keyboard.
        self.kbd_replies: deque[int] = deque()  # the keyboard's answers to commands
        self.kbd_queue: deque[int] = deque()  # the keyboard's buffer of typed scancodes
        self.backlog: deque[int] = deque()  # host input not yet in the keyboard
        self.kbd_scanning = True
        self.kbd_expect: int | None = None  # a keyboard command waiting for its parameter
        self.kbd_last_sent = 0  # for the resend command
        self.leds = 0
        self.scancode_set = DEFAULT_SCANCODE_SET
        self.typematic = DEFAULT_TYPEMATIC

        # Mouse.
        self.aux_queue: deque[int] = deque()
        self.aux_expect: int | None = None
        self.aux_last_sent = 0
        self.aux_reporting = False
        self.aux_remote = False
        self.aux_scaling_2_1 = False
        self.aux_resolution = DEFAULT_RESOLUTION
        self.aux_sample_rate = DEFAULT_SAMPLE_RATE

        # IRQ lines as last reported.
        self.irq1_level = False
        self.irq12_level = False

        # Counters.
        self.unknown_commands = 0  # controller commands this model does not know
        self.unknown_kbd_commands = 0  # keyboard commands answered with RESEND
        self.unknown_aux_commands = 0  # mouse commands answered with RESEND
        self.resets = 0  # system resets requested (output port bit 0, pulse commands)
        self.wide_accesses = 0  # 16/32-bit accesses, split into byte accesses

        self.reset()

    @property
    def command_byte(self) -> int:
        return self.ram[0]

    @property
    def a20(self) -> bool:
        """The output port's A20 gate bit."""
        return bool(self.output_port & OUT_A20)

    # --- Host side. ---

    def feed_scancodes(self, data: bytes) -> None:
        """Queue host keyboard input; it reaches the guest as the keyboard may send it."""
        self.backlog.extend(data)
        self._pump()

    # --- Guest side. ---

    def reset(self) -> None:
        """Power-on state: command byte and output port as firmware leaves them, buffers empty."""
        self.ram = bytearray(RAM_SIZE)
        self.ram[0] = POWER_ON_CTR
        self.output_port = POWER_ON_OUTPUT
        self.last_write_was_command = False
        self.pending_command = None
        self.obuf = None
        self.ctrl_queue.clear()
        self.kbd_replies.clear()
        self.kbd_queue.clear()
        self.aux_queue.clear()
        self._kbd_defaults()
        self.kbd_scanning = True
        self._aux_defaults()
        # The host backlog survives: a machine reset does not erase what the user typed.
        self._pump()

    def _read_byte(self, port: int) -> int:
        if port == STATUS_PORT:
            # Drivers poll here: OBF before reading 0x60, IBF before writing.
            return self._status()
        if port == DATA_PORT:
            # A scancode for the IRQ1 handler, or a reply the driver waits for.
            return self._read_data()
        return 0xFF  # a wide access ran past the registers: nothing decodes it

    def _write_byte(self, port: int, value: int) -> None:
        if port == COMMAND_PORT:
            self.last_write_was_command = True
            self._controller_command(value)
        elif port == DATA_PORT:
            self.last_write_was_command = False
            self._write_data(value)
        else:
            return
        self._pump()

    # --- Status and output buffer. ---

    def _status(self) -> int:
        value = STS_UNLOCKED
        if self.obuf is not None:
            value |= STS_OBF
            if self.obuf[1] == SRC_AUX:
                value |= STS_AUX_OBF
        if self.ram[0] & CTR_SYS:
            value |= STS_SYS
        if self.last_write_was_command:
            value |= STS_CMD
        return value

    def _read_data(self) -> int:
        if self.obuf is None:
            return self.last_read  # the buffer keeps its last byte
        self.last_read = self.obuf[0]
        self.obuf = None
        self._update_irq()  # the line drops as the buffer empties...
        self._pump()  # ...and rises again if another byte comes in
        return self.last_read

    def _pump(self) -> None:
        """Move host input into the keyboard and the next byte into the output buffer."""
        if self.kbd_scanning and not self.ram[0] & CTR_KBDDIS:
            while self.backlog and len(self.kbd_queue) < KBD_BUFFER:
                self.kbd_queue.append(self.backlog.popleft())
        if self.obuf is None:
            kbd_enabled = not self.ram[0] & CTR_KBDDIS
            if self.ctrl_queue:
                self.obuf = self.ctrl_queue.popleft()
            elif self.kbd_replies and kbd_enabled:
                self.obuf = (self.kbd_replies.popleft(), SRC_KBD)
            elif self.kbd_queue and kbd_enabled:
                self.obuf = (self.kbd_queue.popleft(), SRC_KBD)
            elif self.aux_queue and not self.ram[0] & CTR_AUXDIS:
                self.obuf = (self.aux_queue.popleft(), SRC_AUX)
        self._update_irq()

    def _update_irq(self) -> None:
        kbd = aux = False
        if self.obuf is not None:
            if self.obuf[1] == SRC_AUX:
                aux = bool(self.ram[0] & CTR_AUXINT)
            else:
                kbd = bool(self.ram[0] & CTR_KBDINT)
        if kbd != self.irq1_level:
            self.irq1_level = kbd
            if self._irq1 is not None:
                self._irq1(kbd)
        if aux != self.irq12_level:
            self.irq12_level = aux
            if self._irq12 is not None:
                self._irq12(aux)

    def _reply(self, value: int, source: int = SRC_KBD) -> None:
        self.ctrl_queue.append((value, source))

    # --- Controller commands. ---

    def _controller_command(self, command: int) -> None:
        self.pending_command = None
        if CMD_READ_RAM <= command <= CMD_READ_RAM | CMD_RAM_MASK:
            # 0x20: the driver reads the command byte (Linux saves and restores it).
            self._reply(self.ram[command & CMD_RAM_MASK])
        elif CMD_WRITE_RAM <= command <= CMD_WRITE_RAM | CMD_RAM_MASK or command in PARAMETER_COMMANDS:
            # The parameter follows at 0x60.
            self.pending_command = command
        elif command == CMD_PASSWORD_TEST:
            self._reply(PASSWORD_NOT_INSTALLED)
        elif command == CMD_AUX_DISABLE:
            self.ram[0] |= CTR_AUXDIS
        elif command == CMD_AUX_ENABLE:
            self.ram[0] &= ~CTR_AUXDIS
        elif command == CMD_AUX_TEST:
            self._reply(INTERFACE_OK)
        elif command == CMD_SELF_TEST:
            # The probe's first question: is there a working controller?
            self.ram[0] |= CTR_SYS
            self._reply(SELF_TEST_PASSED)
        elif command == CMD_KBD_TEST:
            self._reply(INTERFACE_OK)
        elif command == CMD_KBD_DISABLE:
            self.ram[0] |= CTR_KBDDIS
        elif command == CMD_KBD_ENABLE:
            self.ram[0] &= ~CTR_KBDDIS
        elif command == CMD_READ_INPUT:
            self._reply(INPUT_PORT)
        elif command == CMD_READ_OUTPUT:
            self._reply(self._output_port_value())
        elif command >= CMD_PULSE_FIRST:
            # Pulse output lines low; 0xFE pulses the reset line (the classic reboot).
            if not command & OUT_RESET:
                self._system_reset()
        else:
            self.unknown_commands += 1

    def _write_data(self, value: int) -> None:
        command = self.pending_command
        self.pending_command = None
        if command is None:
            self._kbd_write(value)
        elif command == CMD_WRITE_OUTPUT:
            # A20 gate (0xDF on, 0xDD off), or a reset with bit 0 clear.
            self.output_port = value & ~OUT_COMPUTED
            if not value & OUT_RESET:
                self._system_reset()
        elif command == CMD_WRITE_KBD_OBUF:
            self._reply(value, SRC_KBD)
        elif command == CMD_WRITE_AUX_OBUF:
            # Loopback: Linux checks for an aux port by reading this back as aux data.
            self._reply(value, SRC_AUX)
        elif command == CMD_WRITE_AUX:
            self._aux_write(value)
        else:
            # 0x60-0x7F: a RAM byte; 0x60 sets the command byte (interrupts, disables).
            self.ram[command & CMD_RAM_MASK] = value

    def _output_port_value(self) -> int:
        value = self.output_port & ~OUT_COMPUTED
        if self.obuf is not None:
            value |= OUT_IRQ12 if self.obuf[1] == SRC_AUX else OUT_IRQ1
        return value

    def _system_reset(self) -> None:
        self.resets += 1
        if self._on_reset is not None:
            self._on_reset()

    # --- The keyboard. ---

    def _kbd_write(self, value: int) -> None:
        command = self.kbd_expect
        if command is not None and value < 0x80:
            self.kbd_expect = None
            self._kbd_parameter(command, value)
            return
        self.kbd_expect = None
        if value == KBD_SET_LEDS or value == KBD_SCANCODE_SET or value == KBD_TYPEMATIC:
            self.kbd_expect = value
            self._kbd_send(ACK)
        elif value == KBD_ECHO:
            self._kbd_send(ECHO)
        elif value == KBD_IDENTIFY:
            self._kbd_send(ACK, *KBD_ID)
        elif value == KBD_ENABLE:
            self.kbd_scanning = True
            self._kbd_send(ACK)
        elif value == KBD_DISABLE:
            self._kbd_defaults()
            self.kbd_scanning = False
            self._kbd_send(ACK)
        elif value == KBD_DEFAULTS:
            self._kbd_defaults()
            self._kbd_send(ACK)
        elif KBD_SET3_FIRST <= value <= KBD_SET3_LAST:
            self._kbd_send(ACK)
        elif value == KBD_RESEND:
            self._kbd_send(self.kbd_last_sent)
        elif value == KBD_RESET:
            # atkbd's reset: ACK, then the result of the basic assurance test.
            self._kbd_defaults()
            self.kbd_scanning = True
            self._kbd_send(ACK, BAT_PASSED)
        else:
            self.unknown_kbd_commands += 1
            self._kbd_send(RESEND)

    def _kbd_parameter(self, command: int, value: int) -> None:
        if command == KBD_SET_LEDS:
            self.leds = value & 0x07
            self._kbd_send(ACK)
        elif command == KBD_TYPEMATIC:
            self.typematic = value
            self._kbd_send(ACK)
        elif value == 0:
            # KBD_SCANCODE_SET with 0: which set is in use?
            self._kbd_send(ACK, self.scancode_set)
        elif value <= 3:
            self.scancode_set = value
            self._kbd_send(ACK)
        else:
            self.unknown_kbd_commands += 1
            self._kbd_send(RESEND)

    def _kbd_send(self, *data: int) -> None:
        # Replies go ahead of typed keys still in the keyboard's buffer.
        self.kbd_replies.extend(data)
        self.kbd_last_sent = data[-1]

    def _kbd_defaults(self) -> None:
        self.kbd_expect = None
        self.leds = 0
        self.scancode_set = DEFAULT_SCANCODE_SET
        self.typematic = DEFAULT_TYPEMATIC

    # --- The mouse. ---

    def _aux_write(self, value: int) -> None:
        command = self.aux_expect
        if command is not None:
            # Sample rate and resolution take any byte as their parameter.
            self.aux_expect = None
            if command == AUX_SAMPLE_RATE:
                self.aux_sample_rate = value
            else:
                self.aux_resolution = value & 0x03
            self._aux_send(ACK)
            return
        if value in (AUX_SAMPLE_RATE, AUX_SET_RESOLUTION):
            self.aux_expect = value
            self._aux_send(ACK)
        elif value == AUX_RESET:
            # psmouse's reset: ACK, BAT passed, then the device ID.
            self._aux_defaults()
            self._aux_send(ACK, BAT_PASSED, AUX_ID)
        elif value == AUX_GET_ID:
            self._aux_send(ACK, AUX_ID)
        elif value == AUX_STATUS_REQUEST:
            self._aux_send(ACK, self._aux_status(), self.aux_resolution, self.aux_sample_rate)
        elif value == AUX_READ_DATA:
            self._aux_send(ACK, *AUX_EMPTY_PACKET)
        elif value == AUX_RESEND:
            self._aux_send(self.aux_last_sent)
        elif value == AUX_ENABLE:
            self.aux_reporting = True
            self._aux_send(ACK)
        elif value == AUX_DISABLE:
            self.aux_reporting = False
            self._aux_send(ACK)
        elif value == AUX_DEFAULTS:
            self._aux_defaults()
            self._aux_send(ACK)
        elif value == AUX_REMOTE_MODE:
            self.aux_remote = True
            self._aux_send(ACK)
        elif value == AUX_STREAM_MODE:
            self.aux_remote = False
            self._aux_send(ACK)
        elif value in (AUX_SCALING_1_1, AUX_SCALING_2_1):
            self.aux_scaling_2_1 = value == AUX_SCALING_2_1
            self._aux_send(ACK)
        elif value in (AUX_WRAP_MODE, AUX_RESET_WRAP):
            self._aux_send(ACK)  # wrap (echo) mode is acknowledged but not entered
        else:
            self.unknown_aux_commands += 1
            self._aux_send(RESEND)

    def _aux_status(self) -> int:
        value = 0
        if self.aux_remote:
            value |= AUX_STATUS_REMOTE
        if self.aux_reporting:
            value |= AUX_STATUS_ENABLED
        if self.aux_scaling_2_1:
            value |= AUX_STATUS_SCALING
        return value

    def _aux_send(self, *data: int) -> None:
        self.aux_queue.extend(data)
        self.aux_last_sent = data[-1]

    def _aux_defaults(self) -> None:
        self.aux_expect = None
        self.aux_reporting = False
        self.aux_remote = False
        self.aux_scaling_2_1 = False
        self.aux_resolution = DEFAULT_RESOLUTION
        self.aux_sample_rate = DEFAULT_SAMPLE_RATE
