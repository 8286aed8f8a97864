//! The 8042 keyboard controller, with its PS/2 keyboard and mouse.
//!
//! Register it on the port bus twice, as one device: at [`DATA_PORT`] (0x60, length 1) and at
//! [`STATUS_PORT`] (0x64, length 1). Accesses are told apart by `BusAddress.base`; both are
//! byte-wide (the bus splits wider ones). Reads of 0x60 return the output buffer, reads of
//! 0x64 the status register; writes to 0x64 are controller commands, writes to 0x60 are the
//! data byte of the last command or, with none pending, a byte for the keyboard.
//!
//! One output buffer serves both ports, as on the real chip. Each device queues its bytes;
//! whenever the buffer is empty the controller moves one byte in (its own command replies
//! first, then the keyboard, then the mouse; a port disabled in the command byte holds its
//! bytes back), sets OBF and, for mouse bytes, AUX OBF, and drives IRQ 1 or IRQ 12 when the
//! command byte enables it. The line stays high until the guest reads port 0x60; the next
//! byte then goes in and raises it again, so every byte is a fresh edge for the 8259, which
//! is what QEMU does and what Linux's one-byte-per-interrupt handler expects.
//!
//! With command-byte bit 6 set, keyboard bytes are translated from scan code set 2 to set 1
//! as they enter the output buffer; the 0xF0 break prefix is swallowed and sets bit 7 of the
//! byte after it.
//!
//! Reset and A20 go to the board through [`SystemControl`]: output-port bit 0 low (0xD1) or a
//! pulse of it (0xF0-0xFE with bit 0 clear, 0xFE being the usual one) requests a reset;
//! output-port bit 1 (0xD1) and the 0xDD/0xDF commands drive A20.

use std::sync::Arc;

use log::debug;

pub use super::ps2_keyboard::KeyCode;
use super::ps2_keyboard::{Ps2Keyboard, translate_to_set1};
pub use super::ps2_mouse::{BUTTON_LEFT, BUTTON_MIDDLE, BUTTON_RIGHT, Ps2Mouse};
use crate::bus::{AccessSizes, BusAddress, BusDevice};
use crate::irq::IrqLine;
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};
use crate::system::SystemControl;

/// The data port: output buffer (read), command data or keyboard byte (write).
pub const DATA_PORT: u64 = 0x60;
/// The status register (read) and command port (write).
pub const STATUS_PORT: u64 = 0x64;
/// The ISA interrupts the board wires: keyboard and mouse.
pub const KEYBOARD_IRQ: u8 = 1;
pub const MOUSE_IRQ: u8 = 12;

/// Status register bits.
pub const STATUS_OBF: u8 = 0x01;
/// Input buffer full: never set, commands and data are taken at once.
pub const STATUS_IBF: u8 = 0x02;
/// System flag: 0 after power-on, 1 after a self-test, or as the command byte sets it.
pub const STATUS_SYS: u8 = 0x04;
/// A2: the last write went to the command port.
pub const STATUS_A2: u8 = 0x08;
/// Keyboard not inhibited (there is no keylock).
pub const STATUS_UNLOCKED: u8 = 0x10;
pub const STATUS_AUX_OBF: u8 = 0x20;
/// Timeout and parity errors: never set, the emulated devices always answer cleanly.
pub const STATUS_TIMEOUT: u8 = 0x40;
pub const STATUS_PARITY: u8 = 0x80;

/// Command byte (controller RAM byte 0) bits.
pub const CTR_KBD_INT: u8 = 0x01;
pub const CTR_AUX_INT: u8 = 0x02;
pub const CTR_SYS: u8 = 0x04;
pub const CTR_IGNORE_KEYLOCK: u8 = 0x08;
pub const CTR_KBD_DISABLE: u8 = 0x10;
pub const CTR_AUX_DISABLE: u8 = 0x20;
pub const CTR_TRANSLATE: u8 = 0x40;
/// The command byte at power-on (as QEMU): both interrupts enabled, no translation until
/// firmware asks for it.
pub const CTR_POWER_ON: u8 = CTR_KBD_INT | CTR_AUX_INT;

/// Output port bits.
pub const OUT_RESET: u8 = 0x01;
pub const OUT_A20: u8 = 0x02;
pub const OUT_KBD_OBF: u8 = 0x10;
pub const OUT_AUX_OBF: u8 = 0x20;
/// Output port at power-on: not in reset, A20 on, unused bits and the clock/data lines high
/// (QEMU's value, so reading it back and writing it with only A20 changed is harmless).
pub const OUT_POWER_ON: u8 = 0xCF;

/// Input port as 0xC0 reads it (QEMU's value): bit 7, keyboard not inhibited.
const INPUT_PORT: u8 = 0x80;
/// Test inputs as 0xE0 reads them: both clock lines idle high.
const TEST_INPUTS: u8 = 0x03;
const SELF_TEST_OK: u8 = 0x55;
const INTERFACE_OK: u8 = 0x00;
const BREAK_PREFIX: u8 = 0xF0;
const RAM_SIZE: usize = 32;

/// Controller commands that take a data byte through port 0x60.
fn takes_data(cmd: u8) -> bool {
    matches!(cmd, 0x60..=0x7F | 0xD1..=0xD4)
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct State {
    /// Controller RAM: byte 0 is the command byte, 0x20-0x3F/0x60-0x7F read and write it.
    ram: [u8; RAM_SIZE],
    sys_flag: bool,
    /// The last write went to port 0x64 (status bit A2).
    last_was_command: bool,
    /// Output port, without the OBF bits (4 and 5), which follow the output buffer.
    output_port: u8,
    /// The command whose data byte the next port 0x60 write is.
    awaiting: Option<u8>,
    obf: bool,
    ob_aux: bool,
    ob_data: u8,
    /// A controller reply waiting for the output buffer, and whether it poses as mouse data.
    reply: Option<(u8, bool)>,
    /// Translation swallowed a 0xF0: the next keyboard byte gets bit 7.
    break_prefix: bool,
    kbd: Ps2Keyboard,
    mouse: Ps2Mouse,
}

impl State {
    fn power_on() -> State {
        let mut ram = [0u8; RAM_SIZE];
        ram[0] = CTR_POWER_ON;
        State {
            ram,
            sys_flag: false,
            last_was_command: true,
            output_port: OUT_POWER_ON,
            awaiting: None,
            obf: false,
            ob_aux: false,
            ob_data: 0,
            reply: None,
            break_prefix: false,
            kbd: Ps2Keyboard::new(),
            mouse: Ps2Mouse::new(),
        }
    }

    fn ctr(&self) -> u8 {
        self.ram[0]
    }

    fn irq_levels(&self) -> (bool, bool) {
        let ctr = self.ctr();
        (
            self.obf && !self.ob_aux && ctr & CTR_KBD_INT != 0,
            self.obf && self.ob_aux && ctr & CTR_AUX_INT != 0,
        )
    }

    fn status(&self) -> u8 {
        let mut status = STATUS_UNLOCKED;
        if self.obf {
            status |= STATUS_OBF;
            if self.ob_aux {
                status |= STATUS_AUX_OBF;
            }
        }
        if self.sys_flag {
            status |= STATUS_SYS;
        }
        if self.last_was_command {
            status |= STATUS_A2;
        }
        status
    }

    fn output_port_value(&self) -> u8 {
        let mut value = self.output_port;
        if self.obf {
            value |= if self.ob_aux {
                OUT_AUX_OBF
            } else {
                OUT_KBD_OBF
            };
        }
        value
    }

    fn queue_reply(&mut self, byte: u8, aux: bool) {
        if let Some((old, _)) = self.reply.replace((byte, aux)) {
            debug!("i8042: reply {old:#04x} overwritten by {byte:#04x} before it was read");
        }
    }

    fn place(&mut self, byte: u8, aux: bool) {
        self.obf = true;
        self.ob_aux = aux;
        self.ob_data = byte;
    }

    /// Move the next byte into the output buffer, if it is empty and a byte may come.
    fn fill(&mut self) {
        if self.obf {
            return;
        }
        if let Some((byte, aux)) = self.reply.take() {
            self.place(byte, aux);
            return;
        }
        if self.ctr() & CTR_KBD_DISABLE == 0 {
            while let Some(byte) = self.kbd.read() {
                if self.ctr() & CTR_TRANSLATE == 0 {
                    self.place(byte, false);
                    return;
                }
                if byte == BREAK_PREFIX {
                    self.break_prefix = true;
                    continue;
                }
                let high = if std::mem::take(&mut self.break_prefix) {
                    0x80
                } else {
                    0
                };
                self.place(translate_to_set1(byte) | high, false);
                return;
            }
        }
        if self.ctr() & CTR_AUX_DISABLE == 0
            && let Some(byte) = self.mouse.read()
        {
            self.place(byte, true);
        }
    }
}

/// The 8042 and the devices on its two ports.
pub struct I8042 {
    irq1: Arc<dyn IrqLine>,
    irq12: Arc<dyn IrqLine>,
    system: Arc<dyn SystemControl>,
    state: State,
    /// The levels last driven on IRQ 1 and IRQ 12.
    irq_levels: (bool, bool),
}

impl I8042 {
    /// A controller at power-on, driving `irq1` (keyboard) and `irq12` (mouse) and asking
    /// `system` for resets and A20 changes. Register it at [`DATA_PORT`] and [`STATUS_PORT`]
    /// (one byte each).
    pub fn new(
        irq1: Arc<dyn IrqLine>,
        irq12: Arc<dyn IrqLine>,
        system: Arc<dyn SystemControl>,
    ) -> I8042 {
        I8042 {
            irq1,
            irq12,
            system,
            state: State::power_on(),
            irq_levels: (false, false),
        }
    }

    /// Machine reset: controller, keyboard and mouse back to power-on, both lines low. A20 is
    /// the board's to restore with the rest of its reset.
    pub fn reset(&mut self) {
        self.state = State::power_on();
        self.drive_irqs(true);
    }

    /// Read port 0x60: the output buffer. Reading takes the byte (OBF and the interrupt
    /// drop) and lets the next one in; with nothing new, the last byte reads again.
    pub fn read_data(&mut self) -> u8 {
        let byte = self.state.ob_data;
        if self.state.obf {
            self.state.obf = false;
            // Drop the line before the next byte raises it, so the 8259 sees a new edge.
            self.drive_irqs(false);
            self.service();
        }
        byte
    }

    /// Read port 0x64: the status register (no side effects).
    pub fn read_status(&self) -> u8 {
        self.state.status()
    }

    /// Write port 0x60.
    pub fn write_data(&mut self, byte: u8) {
        let s = &mut self.state;
        s.last_was_command = false;
        match s.awaiting.take() {
            Some(cmd @ 0x60..=0x7F) => {
                let index = usize::from(cmd & 0x1F);
                if index == 0 {
                    self.write_command_byte(byte);
                } else {
                    s.ram[index] = byte;
                }
            }
            Some(0xD1) => self.write_output_port(byte),
            Some(0xD2) => s.queue_reply(byte, false),
            Some(0xD3) => s.queue_reply(byte, true),
            Some(0xD4) => {
                s.mouse.write(byte);
                // Sending to a device re-enables its port (as QEMU and AMI controllers).
                s.ram[0] &= !CTR_AUX_DISABLE;
            }
            Some(cmd) => debug!("i8042: data {byte:#04x} for command {cmd:#04x} ignored"),
            None => {
                s.kbd.write(byte);
                s.ram[0] &= !CTR_KBD_DISABLE;
            }
        }
        self.service();
    }

    /// Write port 0x64: a controller command. A command replaces one still waiting for its
    /// data byte.
    pub fn write_command(&mut self, cmd: u8) {
        let s = &mut self.state;
        s.last_was_command = true;
        if let Some(old) = s.awaiting.take() {
            debug!("i8042: command {cmd:#04x} aborts {old:#04x}, which awaited data");
        }
        match cmd {
            0x20..=0x3F => {
                let value = s.ram[usize::from(cmd & 0x1F)];
                s.queue_reply(value, false);
            }
            _ if takes_data(cmd) => s.awaiting = Some(cmd),
            0xA7 => s.ram[0] |= CTR_AUX_DISABLE,
            0xA8 => s.ram[0] &= !CTR_AUX_DISABLE,
            0xA9 | 0xAB => s.queue_reply(INTERFACE_OK, false),
            0xAA => {
                s.sys_flag = true;
                s.queue_reply(SELF_TEST_OK, false);
            }
            0xAD => s.ram[0] |= CTR_KBD_DISABLE,
            0xAE => s.ram[0] &= !CTR_KBD_DISABLE,
            0xC0 => s.queue_reply(INPUT_PORT, false),
            0xD0 => {
                let value = s.output_port_value();
                s.queue_reply(value, false);
            }
            0xDD => self.set_a20(false),
            0xDF => self.set_a20(true),
            0xE0 => s.queue_reply(TEST_INPUTS, false),
            0xF0..=0xFF => {
                // Pulse the output-port bits that are 0 in the command's low nibble; only
                // bit 0 (reset) matters.
                if cmd & OUT_RESET == 0 {
                    debug!("i8042: reset pulse (command {cmd:#04x})");
                    self.system.request_reset();
                }
            }
            _ => debug!("i8042: unsupported command {cmd:#04x} ignored"),
        }
        self.service();
    }

    /// The host pressed (`pressed`) or released a key.
    pub fn key_event(&mut self, key: KeyCode, pressed: bool) {
        self.state.kbd.key_event(key, pressed);
        self.service();
    }

    pub fn press_key(&mut self, key: KeyCode) {
        self.key_event(key, true);
    }

    pub fn release_key(&mut self, key: KeyCode) {
        self.key_event(key, false);
    }

    /// The host moved the mouse; see [`Ps2Mouse::move_by`] for the conventions.
    pub fn move_mouse(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        self.state.mouse.move_by(dx, dy, dz, buttons);
        self.service();
    }

    pub fn keyboard(&self) -> &Ps2Keyboard {
        &self.state.kbd
    }

    pub fn mouse(&self) -> &Ps2Mouse {
        &self.state.mouse
    }

    pub fn command_byte(&self) -> u8 {
        self.state.ctr()
    }

    /// The output port as 0xD0 would read it.
    pub fn output_port(&self) -> u8 {
        self.state.output_port_value()
    }

    fn write_command_byte(&mut self, value: u8) {
        let s = &mut self.state;
        if (s.ram[0] ^ value) & CTR_TRANSLATE != 0 {
            s.break_prefix = false;
        }
        s.ram[0] = value;
        // The command byte's system flag is the status register's.
        s.sys_flag = value & CTR_SYS != 0;
    }

    fn write_output_port(&mut self, value: u8) {
        self.state.output_port = value & !(OUT_KBD_OBF | OUT_AUX_OBF);
        self.system.set_a20(value & OUT_A20 != 0);
        if value & OUT_RESET == 0 {
            debug!("i8042: reset through the output port ({value:#04x})");
            self.system.request_reset();
        }
    }

    fn set_a20(&mut self, enabled: bool) {
        if enabled {
            self.state.output_port |= OUT_A20;
        } else {
            self.state.output_port &= !OUT_A20;
        }
        self.system.set_a20(enabled);
    }

    /// Refill the output buffer and bring the lines up to date.
    fn service(&mut self) {
        self.state.fill();
        self.drive_irqs(false);
    }

    fn drive_irqs(&mut self, force: bool) {
        let (irq1, irq12) = self.state.irq_levels();
        if force || irq1 != self.irq_levels.0 {
            self.irq1.set_level(irq1);
        }
        if force || irq12 != self.irq_levels.1 {
            self.irq12.set_level(irq12);
        }
        self.irq_levels = (irq1, irq12);
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        let Some(byte) = data.first_mut() else {
            return;
        };
        match (at.base, at.offset) {
            (DATA_PORT, 0) => *byte = self.read_data(),
            (STATUS_PORT, 0) => *byte = self.read_status(),
            _ => debug!("i8042: read at {:#x}+{:#x} ignored", at.base, at.offset),
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        let Some(&byte) = data.first() else {
            return;
        };
        match (at.base, at.offset) {
            (DATA_PORT, 0) => self.write_data(byte),
            (STATUS_PORT, 0) => self.write_command(byte),
            _ => debug!("i8042: write at {:#x}+{:#x} ignored", at.base, at.offset),
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::BYTE
    }
}

impl Snapshot for I8042 {
    fn snapshot_id(&self) -> &'static str {
        "i8042"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        let s = &self.state;
        w.bytes(&s.ram);
        w.bool(s.sys_flag);
        w.bool(s.last_was_command);
        w.u8(s.output_port);
        w.opt_u8(s.awaiting);
        w.bool(s.obf);
        w.bool(s.ob_aux);
        w.u8(s.ob_data);
        w.bool(s.reply.is_some());
        let (reply, reply_aux) = s.reply.unwrap_or((0, false));
        w.u8(reply);
        w.bool(reply_aux);
        w.bool(s.break_prefix);
        s.kbd.save_state(w);
        s.mouse.save_state(w);
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let mut ram = [0u8; RAM_SIZE];
        r.bytes(&mut ram)?;
        let sys_flag = r.bool()?;
        let last_was_command = r.bool()?;
        let output_port = r.u8()?;
        if output_port & (OUT_KBD_OBF | OUT_AUX_OBF) != 0 {
            return Err(SnapshotError::Invalid(format!(
                "i8042 output port {output_port:#04x} stores OBF bits"
            )));
        }
        let awaiting = r.opt_u8()?;
        if let Some(awaiting) = awaiting
            && !takes_data(awaiting)
        {
            return Err(SnapshotError::Invalid(format!(
                "i8042 command {awaiting:#04x} takes no data"
            )));
        }
        let obf = r.bool()?;
        let ob_aux = r.bool()?;
        let ob_data = r.u8()?;
        let has_reply = r.bool()?;
        let reply = r.u8()?;
        let reply_aux = r.bool()?;
        let break_prefix = r.bool()?;
        let mut kbd = Ps2Keyboard::new();
        kbd.restore_state(r, kbd.snapshot_version())?;
        let mut mouse = Ps2Mouse::new();
        mouse.restore_state(r, mouse.snapshot_version())?;
        self.state = State {
            ram,
            sys_flag,
            last_was_command,
            output_port,
            awaiting,
            obf,
            ob_aux,
            ob_data,
            reply: has_reply.then_some((reply, reply_aux)),
            break_prefix,
            kbd,
            mouse,
        };
        self.drive_irqs(true);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::bus::{Bus, BusKind};
    use crate::irq::LatchedLine;
    use crate::snapshot::{check_round_trip, restore, save};
    use crate::system::SystemSignals;

    struct Rig {
        kbc: I8042,
        irq1: Arc<LatchedLine>,
        irq12: Arc<LatchedLine>,
        sys: Arc<SystemSignals>,
    }

    fn rig() -> Rig {
        let irq1 = Arc::new(LatchedLine::new());
        let irq12 = Arc::new(LatchedLine::new());
        let sys = Arc::new(SystemSignals::new());
        let kbc = I8042::new(irq1.clone(), irq12.clone(), sys.clone());
        Rig {
            kbc,
            irq1,
            irq12,
            sys,
        }
    }

    impl Rig {
        fn cmd(&mut self, cmd: u8) {
            self.kbc.write_command(cmd);
        }

        fn cmd_data(&mut self, cmd: u8, data: u8) {
            self.kbc.write_command(cmd);
            self.kbc.write_data(data);
        }

        fn status(&self) -> u8 {
            self.kbc.read_status()
        }

        /// Read one byte as a polling driver does: it must be there.
        fn read(&mut self) -> u8 {
            assert_ne!(self.status() & STATUS_OBF, 0, "output buffer empty");
            self.kbc.read_data()
        }

        /// A controller command with one reply byte.
        fn query(&mut self, cmd: u8) -> u8 {
            self.cmd(cmd);
            self.read()
        }

        /// Read while OBF is set: (status, byte) pairs.
        fn drain(&mut self) -> Vec<(u8, u8)> {
            let mut out = Vec::new();
            while self.status() & STATUS_OBF != 0 {
                let status = self.status();
                out.push((status, self.kbc.read_data()));
                assert!(out.len() < 100, "output never empties");
            }
            out
        }

        fn drain_bytes(&mut self) -> Vec<u8> {
            self.drain().into_iter().map(|(_, b)| b).collect()
        }

        fn ctr(&mut self) -> u8 {
            self.query(0x20)
        }

        fn set_ctr(&mut self, value: u8) {
            self.cmd_data(0x60, value);
        }
    }

    #[test]
    fn self_test_and_interface_tests() {
        let mut r = rig();
        assert_eq!(r.status() & STATUS_SYS, 0, "power-on: system flag clear");
        assert_eq!(r.query(0xAA), 0x55);
        assert_ne!(r.status() & STATUS_SYS, 0, "a passed self-test sets it");
        assert_eq!(r.query(0xAB), 0x00);
        assert_eq!(r.query(0xA9), 0x00);
        assert_eq!(r.status() & STATUS_OBF, 0);
    }

    #[test]
    fn command_byte_read_write_and_status_bits() {
        let mut r = rig();
        assert_eq!(r.ctr(), CTR_POWER_ON);
        r.set_ctr(0x65);
        assert_eq!(r.status() & STATUS_A2, 0, "last write was data");
        assert_ne!(
            r.status() & STATUS_SYS,
            0,
            "system flag follows the command byte"
        );
        assert_eq!(r.ctr(), 0x65);
        assert_ne!(r.status() & STATUS_A2, 0, "last write was a command");
        r.set_ctr(0x41);
        assert_eq!(r.status() & STATUS_SYS, 0);
        assert_eq!(r.status() & STATUS_UNLOCKED, STATUS_UNLOCKED);
        // Disable/enable commands change the command byte.
        r.cmd(0xAD);
        r.cmd(0xA7);
        assert_eq!(r.ctr(), 0x41 | CTR_KBD_DISABLE | CTR_AUX_DISABLE);
        r.cmd(0xAE);
        r.cmd(0xA8);
        assert_eq!(r.ctr(), 0x41);
        // The rest of the controller RAM.
        r.cmd_data(0x7F, 0x99);
        assert_eq!(r.query(0x3F), 0x99);
        assert_eq!(r.query(0x21), 0x00);
    }

    #[test]
    fn a_new_command_aborts_one_awaiting_data() {
        let mut r = rig();
        r.cmd(0x60);
        r.cmd(0xAA);
        r.kbc.write_data(0xF2);
        // 0xF2 went to the keyboard, not into the command byte.
        assert_eq!(r.drain_bytes(), [0x55, 0xFA, 0xAB, 0x83]);
        assert_eq!(r.ctr(), CTR_POWER_ON);
    }

    /// The probe of Linux's drivers/input/serio/i8042.c, after SeaBIOS left the controller
    /// with the keyboard translated and the mouse port disabled.
    #[test]
    fn linux_probe_sequence() {
        let mut r = rig();
        r.set_ctr(CTR_AUX_DISABLE | CTR_TRANSLATE | CTR_KBD_INT);
        // i8042_controller_check: flush.
        r.drain();
        // i8042_controller_init: read CTR until stable, disable the keyboard and its IRQ.
        assert_eq!(r.ctr(), 0x61);
        assert_eq!(r.ctr(), 0x61);
        let mut ctr = (0x61 | CTR_KBD_DISABLE) & !CTR_KBD_INT;
        r.set_ctr(ctr);
        assert!(r.drain().is_empty());
        // i8042_controller_selftest.
        assert_eq!(r.query(0xAA), 0x55);
        // i8042_check_mux: three loopbacks; an echoed third byte means no multiplexer.
        for b in [0xF0, 0x56, 0xA4] {
            r.cmd_data(0xD3, b);
            assert_ne!(r.status() & STATUS_AUX_OBF, 0, "loopback comes as AUX data");
            assert_eq!(r.read(), b);
        }
        // i8042_check_aux: loopback, then the AUX disable bit must toggle.
        r.cmd_data(0xD3, 0x5A);
        assert_eq!(r.status() & (STATUS_OBF | STATUS_AUX_OBF), 0x21);
        assert_eq!(r.read(), 0x5A);
        assert_eq!(r.irq12.take_rising_edges(), 0, "AUX interrupt still off");
        r.cmd(0xA7);
        assert_ne!(r.ctr() & CTR_AUX_DISABLE, 0);
        r.cmd(0xA8);
        assert_eq!(r.ctr() & CTR_AUX_DISABLE, 0);
        // AUX IRQ delivery test: enable the port with its interrupt, loop 0xA5 back and
        // expect IRQ 12 with AUX data.
        ctr = (ctr & !CTR_AUX_DISABLE) | CTR_AUX_INT;
        r.set_ctr(ctr);
        r.cmd_data(0xD3, 0xA5);
        assert!(r.irq12.level());
        assert_eq!(r.irq12.take_rising_edges(), 1);
        assert!(!r.irq1.level());
        assert_eq!(r.status() & STATUS_AUX_OBF, STATUS_AUX_OBF);
        assert_eq!(r.kbc.read_data(), 0xA5);
        assert!(!r.irq12.level());
        // ...then disable AUX again until the mouse driver binds.
        ctr = (ctr | CTR_AUX_DISABLE) & !CTR_AUX_INT;
        r.set_ctr(ctr);
        // i8042_enable_kbd_port, then atkbd's GETID arrives by IRQ 1, translated.
        ctr = (ctr & !CTR_KBD_DISABLE) | CTR_KBD_INT;
        r.set_ctr(ctr);
        r.irq1.take_rising_edges();
        r.kbc.write_data(0xF2);
        let mut got = Vec::new();
        while r.irq1.level() {
            assert_eq!(r.status() & STATUS_AUX_OBF, 0);
            got.push(r.kbc.read_data());
        }
        assert_eq!(got, [0xFA, 0xAB, 0x41]);
        assert_eq!(r.irq1.take_rising_edges(), 3, "one edge per byte");
        // The mouse port: psmouse resets the mouse through 0xD4.
        ctr = (ctr & !CTR_AUX_DISABLE) | CTR_AUX_INT;
        r.set_ctr(ctr);
        r.cmd_data(0xD4, 0xFF);
        let got = r.drain();
        assert_eq!(got, [(0x31, 0xFA), (0x31, 0xAA), (0x31, 0x00)]);
        assert_eq!(r.irq12.take_rising_edges(), 3);
    }

    #[test]
    fn a20_through_the_output_port_and_dd_df() {
        let mut r = rig();
        assert_eq!(r.query(0xD0), OUT_POWER_ON);
        assert!(r.sys.a20());
        r.cmd_data(0xD1, 0xDD);
        assert!(!r.sys.a20());
        assert_eq!(
            r.query(0xD0),
            0xCD,
            "bit 4 follows the output buffer, empty here"
        );
        r.cmd_data(0xD1, 0xDF);
        assert!(r.sys.a20());
        r.cmd(0xDD);
        assert!(!r.sys.a20());
        assert_eq!(r.query(0xD0) & OUT_A20, 0);
        r.cmd(0xDF);
        assert!(r.sys.a20());
        assert_eq!(r.query(0xD0) & OUT_A20, OUT_A20);
        assert!(!r.sys.take_reset(), "none of this resets");
    }

    #[test]
    fn output_port_shows_the_output_buffer_bits() {
        let mut r = rig();
        r.cmd(0xAD);
        r.press_and_hold_a();
        r.cmd(0xAE);
        // A keyboard byte is in the buffer when 0xD0 is issued; the reply waits behind it.
        r.cmd(0xD0);
        assert_eq!(r.read(), 0x1C);
        assert_eq!(r.read(), OUT_POWER_ON | OUT_KBD_OBF);
    }

    impl Rig {
        fn press_and_hold_a(&mut self) {
            self.kbc.press_key(KeyCode::A);
        }
    }

    #[test]
    fn reset_through_fe_pulses_and_the_output_port() {
        let mut r = rig();
        r.cmd(0xFE);
        assert!(r.sys.take_reset());
        r.cmd(0xFF);
        assert!(!r.sys.take_reset(), "0xFF pulses nothing");
        r.cmd(0xF0);
        assert!(r.sys.take_reset(), "any pulse with bit 0 clear resets");
        r.cmd(0xF3);
        assert!(!r.sys.take_reset());
        r.cmd_data(0xD1, 0x02);
        assert!(
            r.sys.take_reset(),
            "output-port bit 0 low holds the CPU in reset"
        );
        assert!(r.sys.a20());
        r.cmd_data(0xD1, 0x03);
        assert!(!r.sys.take_reset());
    }

    #[test]
    fn keyboard_commands_through_the_controller() {
        let mut r = rig();
        r.kbc.write_data(0xFF);
        assert_eq!(r.drain_bytes(), [0xFA, 0xAA]);
        r.kbc.write_data(0xF2);
        assert_eq!(r.drain_bytes(), [0xFA, 0xAB, 0x83], "untranslated ID");
        r.kbc.write_data(0xF0);
        r.kbc.write_data(0x00);
        assert_eq!(r.drain_bytes(), [0xFA, 0xFA, 0x02]);
        r.kbc.write_data(0xF0);
        r.kbc.write_data(0x03);
        assert_eq!(r.drain_bytes(), [0xFA, 0xFA]);
        assert_eq!(r.kbc.keyboard().scan_set(), 3);
        r.set_ctr(CTR_POWER_ON | CTR_TRANSLATE);
        r.kbc.write_data(0xF0);
        r.kbc.write_data(0x00);
        assert_eq!(
            r.drain_bytes(),
            [0xFA, 0xFA, 0x3F],
            "set 3 reads back translated"
        );
        r.kbc.write_data(0xF2);
        assert_eq!(r.drain_bytes(), [0xFA, 0xAB, 0x41]);
        r.kbc.write_data(0xED);
        r.kbc.write_data(0x04);
        assert_eq!(r.drain_bytes(), [0xFA, 0xFA]);
        assert_eq!(r.kbc.keyboard().leds(), 0x04);
    }

    #[test]
    fn translation_of_set2_make_and_break() {
        let mut r = rig();
        r.kbc.press_key(KeyCode::A);
        r.kbc.release_key(KeyCode::A);
        assert_eq!(r.drain_bytes(), [0x1C, 0xF0, 0x1C], "raw set 2");
        r.set_ctr(CTR_POWER_ON | CTR_TRANSLATE);
        r.kbc.press_key(KeyCode::A);
        r.kbc.release_key(KeyCode::A);
        assert_eq!(r.drain_bytes(), [0x1E, 0x9E]);
        r.kbc.press_key(KeyCode::Right);
        r.kbc.release_key(KeyCode::Right);
        assert_eq!(r.drain_bytes(), [0xE0, 0x4D, 0xE0, 0xCD]);
        r.kbc.press_key(KeyCode::F7);
        r.kbc.release_key(KeyCode::F7);
        assert_eq!(r.drain_bytes(), [0x41, 0xC1]);
        // Every key: translated set 2 is the key's set 1 sequence.
        for &key in KeyCode::ALL {
            r.kbc.press_key(key);
            r.kbc.release_key(key);
            let (extended, code) = key.set1();
            let expected: Vec<u8> = if extended {
                vec![0xE0, code, 0xE0, code | 0x80]
            } else {
                vec![code, code | 0x80]
            };
            assert_eq!(r.drain_bytes(), expected, "{key:?}");
        }
    }

    #[test]
    fn irq_routing_and_command_byte_enables() {
        let mut r = rig();
        // Keyboard data: IRQ 1 only.
        r.kbc.press_key(KeyCode::B);
        assert!(r.irq1.level() && !r.irq12.level());
        assert_eq!(r.status() & (STATUS_OBF | STATUS_AUX_OBF), STATUS_OBF);
        r.kbc.read_data();
        assert!(!r.irq1.level(), "reading lowers the line");
        // Mouse data: IRQ 12 only.
        r.cmd_data(0xD4, 0xF4);
        assert!(r.irq12.level() && !r.irq1.level());
        assert_eq!(r.status() & STATUS_AUX_OBF, STATUS_AUX_OBF);
        r.kbc.read_data();
        assert!(!r.irq12.level());
        r.irq1.take_rising_edges();
        r.irq12.take_rising_edges();
        // Interrupts off: data still arrives, no line moves.
        r.set_ctr(0);
        r.kbc.press_key(KeyCode::C);
        r.kbc.move_mouse(1, 1, 0, 0);
        assert_ne!(r.status() & STATUS_OBF, 0);
        assert!(!r.irq1.level() && !r.irq12.level());
        // Enabling the interrupt with a byte waiting raises the line at once.
        r.set_ctr(CTR_KBD_INT);
        assert!(r.irq1.level());
        r.kbc.read_data();
        assert!(!r.irq1.level());
        // Next come the mouse packet bytes, with IRQ 12 still off.
        assert_eq!(r.status() & STATUS_AUX_OBF, STATUS_AUX_OBF);
        assert!(!r.irq12.level());
        r.set_ctr(CTR_KBD_INT | CTR_AUX_INT);
        assert!(r.irq12.level());
        assert_eq!(r.drain_bytes(), [0x08, 1, 1]);
        assert_eq!(r.irq12.take_rising_edges(), 3);
        assert_eq!(r.irq1.take_rising_edges(), 1);
    }

    #[test]
    fn controller_can_pose_as_either_device() {
        let mut r = rig();
        r.cmd_data(0xD2, 0x1C);
        assert!(r.irq1.level());
        assert_eq!(r.status() & STATUS_AUX_OBF, 0);
        assert_eq!(r.kbc.read_data(), 0x1C);
        r.set_ctr(CTR_POWER_ON | CTR_TRANSLATE);
        r.cmd_data(0xD2, 0x1C);
        assert_eq!(r.read(), 0x1C, "0xD2 bytes are not translated");
        r.cmd_data(0xD3, 0x77);
        assert!(r.irq12.level());
        assert_eq!(r.status() & STATUS_AUX_OBF, STATUS_AUX_OBF);
        assert_eq!(r.kbc.read_data(), 0x77);
    }

    #[test]
    fn other_queries_and_unknown_commands() {
        let mut r = rig();
        assert_eq!(r.query(0xC0), 0x80);
        assert_eq!(r.query(0xE0), 0x03);
        r.cmd(0xA1);
        r.cmd(0x00);
        assert_eq!(
            r.status() & STATUS_OBF,
            0,
            "unknown commands answer nothing"
        );
        // With nothing new the data port repeats the last byte, without side effects.
        assert_eq!(r.kbc.read_data(), 0x03);
        assert_eq!(r.kbc.read_data(), 0x03);
    }

    #[test]
    fn disabled_ports_hold_their_bytes_back() {
        let mut r = rig();
        r.cmd(0xAD);
        r.kbc.press_key(KeyCode::D);
        assert_eq!(r.status() & STATUS_OBF, 0);
        r.cmd_data(0xD4, 0xF4);
        assert_eq!(r.drain_bytes(), [0xFA], "the mouse still gets through");
        r.cmd(0xA7);
        r.kbc.move_mouse(2, 0, 0, 0);
        assert_eq!(r.status() & STATUS_OBF, 0);
        r.cmd(0xAE);
        r.cmd(0xA8);
        assert_eq!(r.drain_bytes(), [0x23, 0x08, 2, 0]);
        // Writing to the keyboard re-enables its port.
        r.cmd(0xAD);
        r.kbc.write_data(0xEE);
        assert_eq!(r.drain_bytes(), [0xEE]);
        assert_eq!(r.ctr() & CTR_KBD_DISABLE, 0);
    }

    #[test]
    fn queues_are_bounded() {
        let mut r = rig();
        r.cmd(0xAD);
        for _ in 0..40 {
            r.kbc.press_key(KeyCode::A);
        }
        r.cmd_data(0xD4, 0xF4);
        r.drain();
        r.cmd(0xA7);
        for _ in 0..40 {
            r.kbc.move_mouse(1, 0, 0, 0);
        }
        r.cmd(0xAE);
        r.cmd(0xA8);
        let bytes = r.drain();
        let kbd = bytes
            .iter()
            .filter(|(s, _)| s & STATUS_AUX_OBF == 0)
            .count();
        let aux = bytes.len() - kbd;
        assert_eq!(kbd, 16, "keyboard buffer holds 16 bytes");
        // Five whole packets fit the mouse queue; the held-back motion follows as one more.
        assert_eq!(aux, 18);
        let tail: Vec<u8> = bytes[kbd + 15..].iter().map(|&(_, b)| b).collect();
        assert_eq!(tail, [0x08, 35, 0]);
    }

    #[test]
    fn mouse_packets_and_intellimouse_id() {
        let mut r = rig();
        fn send(r: &mut Rig, b: u8) -> Vec<u8> {
            r.cmd_data(0xD4, b);
            r.drain_bytes()
        }
        assert_eq!(send(&mut r, 0xF2), [0xFA, 0x00]);
        for rate in [200, 100, 80] {
            assert_eq!(send(&mut r, 0xF3), [0xFA]);
            assert_eq!(send(&mut r, rate), [0xFA]);
        }
        assert_eq!(send(&mut r, 0xF2), [0xFA, 0x03]);
        assert_eq!(r.kbc.mouse().id(), 3);
        assert_eq!(send(&mut r, 0xF4), [0xFA]);
        r.kbc.move_mouse(-2, 300, 1, BUTTON_LEFT | BUTTON_RIGHT);
        let got = r.drain();
        assert!(got.iter().all(|(s, _)| s & STATUS_AUX_OBF != 0));
        let bytes: Vec<u8> = got.into_iter().map(|(_, b)| b).collect();
        assert_eq!(bytes, [0x08 | 0x03 | 0x10 | 0x80, 0xFE, 0xFF, 0x01]);
    }

    #[test]
    fn controller_reset_returns_to_power_on() {
        let mut r = rig();
        r.set_ctr(0x47);
        r.kbc.press_key(KeyCode::A);
        assert!(r.irq1.level());
        r.kbc.reset();
        assert!(!r.irq1.level());
        assert_eq!(r.status(), STATUS_UNLOCKED | STATUS_A2);
        assert_eq!(r.ctr(), CTR_POWER_ON);
    }

    #[test]
    fn snapshot_round_trip_and_behaviour_continues() {
        let mut r = rig();
        r.set_ctr(CTR_KBD_INT | CTR_AUX_INT | CTR_TRANSLATE | CTR_SYS);
        r.cmd_data(0xD4, 0xF4);
        r.drain();
        r.kbc.press_key(KeyCode::Up);
        r.kbc.release_key(KeyCode::Up);
        r.kbc.move_mouse(3, -3, 0, 0);
        r.cmd(0xD0); // a reply waiting behind the full output buffer
        r.cmd(0xD1); // a command waiting for its data byte
        // The output buffer holds 0xE0; the rest waits in the queues.
        assert!(r.irq1.level());

        let mut fresh = rig();
        check_round_trip(&r.kbc, &mut fresh.kbc).unwrap();
        assert!(fresh.irq1.level(), "restore drives the line to match");
        assert!(!fresh.irq12.level());

        // The restored controller carries on where the original was.
        let mut copy = rig();
        restore(&mut copy.kbc, &save(&r.kbc)).unwrap();
        copy.kbc.write_data(0xDD);
        assert!(!copy.sys.a20(), "the pending 0xD1 took its data byte");
        assert_eq!(
            copy.drain_bytes(),
            [0xE0, 0xCF | OUT_KBD_OBF, 0x48, 0xE0, 0xC8, 0x28, 3, 0xFD]
        );
        copy.kbc.press_key(KeyCode::A);
        assert_eq!(copy.drain_bytes(), [0x1E]);
    }

    #[test]
    fn snapshot_rejects_inconsistent_state_without_changing_the_device() {
        let mut r = rig();
        r.kbc.press_key(KeyCode::A);
        let before = save(&r.kbc);
        // Awaiting data for a command that takes none (0xAA).
        let mut state = vec![0u8; RAM_SIZE];
        state.extend([0, 0, OUT_POWER_ON, 1, 0xAA]);
        state.extend([0u8; 16]);
        let mut reader = StateReader::new(&state);
        assert!(matches!(
            r.kbc.restore_state(&mut reader, 1),
            Err(SnapshotError::Invalid(_))
        ));
        // Output-port OBF bits are derived, never stored.
        let mut state = vec![0u8; RAM_SIZE];
        state.extend([0, 0, 0xFF]);
        let mut reader = StateReader::new(&state);
        assert!(r.kbc.restore_state(&mut reader, 1).is_err());
        assert_eq!(save(&r.kbc), before);
        assert!(r.irq1.level());
    }

    #[test]
    fn on_a_bus_at_two_ranges() {
        let r = rig();
        let irq1 = r.irq1.clone();
        let bus = Bus::new(BusKind::Pio);
        let kbc: Arc<Mutex<I8042>> = Arc::new(Mutex::new(r.kbc));
        bus.insert("i8042-data", DATA_PORT, 1, kbc.clone()).unwrap();
        bus.insert("i8042-cmd", STATUS_PORT, 1, kbc.clone())
            .unwrap();
        bus.write_value(0x64, 1, 0xAA);
        assert_eq!(bus.read_value(0x64, 1) & 0x01, 0x01);
        assert_eq!(bus.read_value(0x60, 1), 0x55);
        kbc.lock().unwrap().press_key(KeyCode::Escape);
        assert!(irq1.level());
        // A word read at 0x60 takes the data byte; port 0x61 is not ours.
        assert_eq!(bus.read_value(0x60, 2), 0xFF76);
        assert!(!irq1.level());
        // A word write at 0x63 writes the command port with its high byte.
        bus.write_value(0x63, 2, 0xAB00);
        assert_eq!(bus.read_value(0x60, 1), 0x00);
    }

    #[test]
    fn no_panic_on_any_command_and_data() {
        let mut r = rig();
        for cmd in 0..=255u8 {
            for data in 0..=255u8 {
                r.kbc.write_command(cmd);
                r.kbc.write_data(data);
                r.kbc.write_data(data);
                let _ = r.kbc.read_status();
                let _ = r.kbc.read_data();
                if data % 64 == 0 {
                    r.kbc
                        .press_key(KeyCode::ALL[usize::from(data) % KeyCode::ALL.len()]);
                    r.kbc.move_mouse(i32::MAX, i32::MIN, i32::MAX, data);
                }
                assert!(r.kbc.keyboard().pending() <= 16 + 8);
                assert!(r.kbc.mouse().pending() <= 16 + 8);
            }
            // Keep the command byte sane for the next round: some commands disable ports.
            r.kbc.reset();
        }
        // Every port and width through a bus, including ports next to ours.
        let bus = Bus::new(BusKind::Pio);
        let kbc: Arc<Mutex<I8042>> = Arc::new(Mutex::new(r.kbc));
        bus.insert("i8042-data", DATA_PORT, 1, kbc.clone()).unwrap();
        bus.insert("i8042-cmd", STATUS_PORT, 1, kbc.clone())
            .unwrap();
        for port in 0x5E..0x68u64 {
            for size in [1, 2, 4, 8] {
                for value in [0u64, 0xFF, 0xD1D4, u64::MAX] {
                    bus.write_value(port, size, value);
                    let _ = bus.read_value(port, size);
                }
            }
        }
        // A device registered with an unexpected base or length ignores what it cannot map.
        let mut kbc = kbc.lock().unwrap();
        let mut buf = [0xFFu8; 4];
        kbc.read(
            BusAddress {
                base: 0x1234,
                offset: 3,
            },
            &mut buf,
        );
        assert_eq!(buf, [0xFF; 4]);
        kbc.write(
            BusAddress {
                base: DATA_PORT,
                offset: 1,
            },
            &[0xFF],
        );
        kbc.read(
            BusAddress {
                base: DATA_PORT,
                offset: 0,
            },
            &mut [],
        );
        let _ = (r.irq1, r.irq12, r.sys);
    }
}
