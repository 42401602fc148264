/**
 * Ports, bits, commands and codes of the i8042 keyboard controller and of a PS/2 (AT) keyboard,
 * named as Linux's `drivers/input/serio/i8042.h` and `atkbd.c` name them where they do.
 * @module
 */

/** Offset of the data port (0x60) in the device window. */
export const I8042_DATA_OFFSET = 0;
/** Offset of port 0x61 ("port B", the PIT/speaker control on a PC). */
export const I8042_PORT_B_OFFSET = 1;
/** Offset of the status (read) / command (write) port (0x64). */
export const I8042_STATUS_OFFSET = 4;
/** Base port of the device window. */
export const I8042_BASE_PORT = 0x60;
/** Length of the device window (ports 0x60..0x64). */
export const I8042_WINDOW_LEN = 5;

/**
 * What port 0x61 reads as if it reaches this device. KVM's in-kernel PIT normally answers 0x61
 * itself (`KVM_PIT_SPEAKER_DUMMY`); if it does not, bit 5 (PIT channel 2 output) reads as set so
 * that polling loops such as Linux's `pit_calibrate_tsc` (which waits for bit 5) end at once and
 * fall back instead of spinning forever.
 */
export const PORT_B_VALUE = 0x20;

/** Status: output buffer full (data waits at port 0x60). */
export const STR_OBF = 0x01;
/** Status: input buffer full (never set: commands are processed at once). */
export const STR_IBF = 0x02;
/** Status: system flag (POST / self test passed); mirrors CTR bit 2. */
export const STR_SYS = 0x04;
/** Status: the last write went to the command port (1) rather than the data port (0). */
export const STR_CMDDAT = 0x08;
/** Status: keyboard not inhibited by the keylock (always set). */
export const STR_KEYLOCK = 0x10;
/** Status: the byte in the output buffer comes from the AUX (mouse) side. */
export const STR_AUXDATA = 0x20;
/** Status: timeout error. */
export const STR_TIMEOUT = 0x40;
/** Status: parity error. */
export const STR_PARITY = 0x80;

/** CTR (controller configuration byte): keyboard interrupt (IRQ 1) enable. */
export const CTR_KBDINT = 0x01;
/** CTR: AUX interrupt (IRQ 12) enable. */
export const CTR_AUXINT = 0x02;
/** CTR: system flag. */
export const CTR_SYS = 0x04;
/** CTR: ignore keylock. */
export const CTR_IGNKEYLOCK = 0x08;
/** CTR: keyboard interface disabled. */
export const CTR_KBDDIS = 0x10;
/** CTR: AUX interface disabled. */
export const CTR_AUXDIS = 0x20;
/** CTR: translate keyboard scan codes from set 2 to set 1. */
export const CTR_XLATE = 0x40;
/**
 * CTR at power-on as firmware leaves it: keyboard interrupt on, POST passed, no translation
 * (as Firecracker does; Linux then runs the keyboard in untranslated set 2).
 */
export const CTR_INITIAL = CTR_KBDINT | CTR_SYS;

/** Command: read CTR. */
export const CMD_READ_CTR = 0x20;
/** Command: write CTR (parameter follows at port 0x60). */
export const CMD_WRITE_CTR = 0x60;
/** Command: disable the AUX interface. */
export const CMD_AUX_DISABLE = 0xa7;
/** Command: enable the AUX interface. */
export const CMD_AUX_ENABLE = 0xa8;
/** Command: AUX interface test (answers 0x00 = no error). */
export const CMD_AUX_TEST = 0xa9;
/** Command: controller self test (answers 0x55). */
export const CMD_SELF_TEST = 0xaa;
/** Command: keyboard interface test (answers 0x00 = no error). */
export const CMD_KBD_TEST = 0xab;
/** Command: disable the keyboard interface. */
export const CMD_KBD_DISABLE = 0xad;
/** Command: enable the keyboard interface. */
export const CMD_KBD_ENABLE = 0xae;
/** Command: read the output port. */
export const CMD_READ_OUTPUT_PORT = 0xd0;
/** Command: write the output port (parameter follows). Bit 0 low resets the CPU. */
export const CMD_WRITE_OUTPUT_PORT = 0xd1;
/** Command: put the parameter in the output buffer as if the keyboard sent it (Linux KBD_LOOP). */
export const CMD_WRITE_KBD_BUFFER = 0xd2;
/** Command: put the parameter in the output buffer as if the AUX device sent it (Linux AUX_LOOP). */
export const CMD_WRITE_AUX_BUFFER = 0xd3;
/** Command: send the parameter to the AUX device (Linux AUX_SEND). */
export const CMD_WRITE_AUX_DEVICE = 0xd4;
/** Commands 0xF0..0xFF pulse the output-port lines whose bit is 0 in the low nibble. */
export const CMD_PULSE_OUTPUT_BASE = 0xf0;
/** Command: pulse output line 0, the CPU reset line (what Linux's `reboot=k` writes). */
export const CMD_RESET_CPU = 0xfe;

/** Self-test pass code. */
export const RET_SELF_TEST_OK = 0x55;
/** Interface-test pass code. */
export const RET_INTERFACE_OK = 0x00;

/** Output port bit 0: CPU reset line, active low. */
export const OUTPUT_PORT_RESET = 0x01;
/** Output port bit 1: A20 gate. */
export const OUTPUT_PORT_A20 = 0x02;
/** Output port at power-on: not in reset, A20 enabled. */
export const OUTPUT_PORT_INITIAL = OUTPUT_PORT_RESET | OUTPUT_PORT_A20;

/** Keyboard command: set LEDs (parameter follows). */
export const KBD_CMD_SET_LEDS = 0xed;
/** Keyboard command: echo (answers 0xEE, no ACK). */
export const KBD_CMD_ECHO = 0xee;
/** Keyboard command: get/set scan code set (parameter follows; 0 = get). */
export const KBD_CMD_SCANCODE_SET = 0xf0;
/** Keyboard command: identify (answers ACK, 0xAB, 0x83). */
export const KBD_CMD_GET_ID = 0xf2;
/** Keyboard command: set typematic rate (parameter follows). */
export const KBD_CMD_SET_REPEAT = 0xf3;
/** Keyboard command: enable scanning. */
export const KBD_CMD_ENABLE = 0xf4;
/** Keyboard command: disable scanning and restore defaults. */
export const KBD_CMD_RESET_DIS = 0xf5;
/** Keyboard command: restore defaults. */
export const KBD_CMD_SET_DEFAULT = 0xf6;
/** Keyboard command: resend the last byte. */
export const KBD_CMD_RESEND = 0xfe;
/** Keyboard command: reset and self test (answers ACK, 0xAA). */
export const KBD_CMD_RESET = 0xff;

/** Keyboard reply: acknowledge. */
export const KBD_RET_ACK = 0xfa;
/** Keyboard reply: self test (BAT) passed. */
export const KBD_RET_BAT_OK = 0xaa;
/** Keyboard reply: resend / not acknowledged. */
export const KBD_RET_NAK = 0xfe;
/** Keyboard reply: echo. */
export const KBD_RET_ECHO = 0xee;
/** First ID byte of an MF2 keyboard. */
export const KBD_ID_1 = 0xab;
/** Second ID byte of an MF2 keyboard (set 2). */
export const KBD_ID_2 = 0x83;
/** Second ID byte as the controller passes it on with CTR_XLATE set (0x83 translates to 0x41). */
export const KBD_ID_2_XLATE = 0x41;
/** The only scan code set this keyboard implements. */
export const KBD_SCANCODE_SET = 2;
/** Set-number reply to "get scan code set" with translation on (2 translates to 0x41). */
export const KBD_SCANCODE_SET_XLATE = 0x41;

/** Set 2: left Ctrl make code. */
export const SC2_LCTRL = 0x14;
/** Set 2: left Alt make code. */
export const SC2_LALT = 0x11;
/** Set 2: prefix of extended keys. */
export const SC2_EXTENDED = 0xe0;
/** Set 2: Delete make code (after SC2_EXTENDED). */
export const SC2_DELETE = 0x71;
/** Set 2: prefix of break (release) codes. */
export const SC2_BREAK = 0xf0;

/** Ctrl-Alt-Del press then release, scan code set 2 (untranslated). */
export const CTRL_ALT_DEL_SET2: readonly number[] = [
  SC2_LCTRL, SC2_LALT, SC2_EXTENDED, SC2_DELETE,
  SC2_EXTENDED, SC2_BREAK, SC2_DELETE, SC2_BREAK, SC2_LALT, SC2_BREAK, SC2_LCTRL,
];
/**
 * The same keys as the controller delivers them with CTR_XLATE set (scan code set 1: Ctrl
 * 0x1D, Alt 0x38, Delete E0 53; a release is the make code with bit 7 set).
 */
export const CTRL_ALT_DEL_SET1: readonly number[] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];

/** Bytes the keyboard can hold for the controller (Linux flushes up to 16). */
export const KBD_QUEUE_CAPACITY = 16;
/** Controller replies that can wait behind a full output buffer. */
export const CTL_QUEUE_CAPACITY = 16;
