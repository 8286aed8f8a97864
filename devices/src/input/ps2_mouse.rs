//! A PS/2 mouse with the IntelliMouse wheel extension, as it sits on the 8042's second port.
//!
//! Like the keyboard it has two bounded queues: command replies (sent first) and movement
//! packets (16 bytes). The host injects motion with [`Ps2Mouse::move_by`]; in stream mode with
//! reporting enabled that becomes a packet at once, in remote mode it accumulates until the
//! host polls with 0xEB. A packet is queued only whole; if the queue has no room the motion
//! stays accumulated and goes out when the controller drains the queue.
//!
//! Packets are the standard ones: byte 0 = Y overflow, X overflow, Y sign, X sign, 1, middle,
//! right, left; bytes 1 and 2 = the low 8 bits of the 9-bit X and Y counts; after the
//! IntelliMouse knock (sample rates 200, 100, 80) the ID becomes 3 and a fourth byte carries
//! the wheel. Motion beyond the 9-bit range saturates and sets the overflow bit, as the
//! mouse's counters do.

use std::collections::VecDeque;

use log::debug;

use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

/// Packet bytes the mouse buffers.
pub const DATA_QUEUE_SIZE: usize = 16;
/// Reply bytes it can hold (the longest reply, status request, is 4 bytes).
pub const REPLY_QUEUE_SIZE: usize = 8;

const ACK: u8 = 0xFA;
const RESEND: u8 = 0xFE;
const BAT_OK: u8 = 0xAA;

const CMD_SCALING_1_1: u8 = 0xE6;
const CMD_SCALING_2_1: u8 = 0xE7;
const CMD_SET_RESOLUTION: u8 = 0xE8;
const CMD_STATUS: u8 = 0xE9;
const CMD_STREAM_MODE: u8 = 0xEA;
const CMD_READ_DATA: u8 = 0xEB;
const CMD_RESET_WRAP: u8 = 0xEC;
const CMD_WRAP_MODE: u8 = 0xEE;
const CMD_REMOTE_MODE: u8 = 0xF0;
const CMD_GET_ID: u8 = 0xF2;
const CMD_SET_SAMPLE_RATE: u8 = 0xF3;
const CMD_ENABLE: u8 = 0xF4;
const CMD_DISABLE: u8 = 0xF5;
const CMD_DEFAULTS: u8 = 0xF6;
const CMD_RESEND: u8 = 0xFE;
const CMD_RESET: u8 = 0xFF;

const DEFAULT_SAMPLE_RATE: u8 = 100;
/// Resolution code 2: 4 counts/mm.
const DEFAULT_RESOLUTION: u8 = 2;

/// Plain PS/2 mouse.
pub const ID_STANDARD: u8 = 0x00;
/// IntelliMouse (wheel), after sample rates 200, 100, 80.
pub const ID_INTELLIMOUSE: u8 = 0x03;
const INTELLIMOUSE_KNOCK: [u8; 3] = [200, 100, 80];

/// Button bits as packet byte 0 and [`Ps2Mouse::move_by`] carry them.
pub const BUTTON_LEFT: u8 = 0x01;
pub const BUTTON_RIGHT: u8 = 0x02;
pub const BUTTON_MIDDLE: u8 = 0x04;
const BUTTONS: u8 = BUTTON_LEFT | BUTTON_RIGHT | BUTTON_MIDDLE;

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ps2Mouse {
    replies: VecDeque<u8>,
    data: VecDeque<u8>,
    /// The command whose parameter byte comes next (0xE8 or 0xF3).
    awaiting: Option<u8>,
    sample_rate: u8,
    resolution: u8,
    scaling_2_1: bool,
    reporting: bool,
    remote: bool,
    wrap: bool,
    id: u8,
    /// The last three sample rates set, oldest first (for the IntelliMouse knock).
    rates: [u8; 3],
    buttons: u8,
    dx: i32,
    dy: i32,
    dz: i32,
    /// Motion or a button change not yet sent in stream mode.
    unreported: bool,
    last_sent: u8,
}

impl Default for Ps2Mouse {
    fn default() -> Self {
        Ps2Mouse::new()
    }
}

impl Ps2Mouse {
    /// A mouse as at power-on: stream mode, reporting disabled, 100 samples/s, ID 0.
    pub fn new() -> Ps2Mouse {
        Ps2Mouse {
            replies: VecDeque::with_capacity(REPLY_QUEUE_SIZE),
            data: VecDeque::with_capacity(DATA_QUEUE_SIZE),
            awaiting: None,
            sample_rate: DEFAULT_SAMPLE_RATE,
            resolution: DEFAULT_RESOLUTION,
            scaling_2_1: false,
            reporting: false,
            remote: false,
            wrap: false,
            id: ID_STANDARD,
            rates: [0; 3],
            buttons: 0,
            dx: 0,
            dy: 0,
            dz: 0,
            unreported: false,
            last_sent: BAT_OK,
        }
    }

    /// Power-on reset (the board's reset; no BAT bytes are sent).
    pub fn reset(&mut self) {
        *self = Ps2Mouse::new();
    }

    /// The device ID: [`ID_STANDARD`] or [`ID_INTELLIMOUSE`].
    pub fn id(&self) -> u8 {
        self.id
    }

    pub fn reporting(&self) -> bool {
        self.reporting
    }

    pub fn remote_mode(&self) -> bool {
        self.remote
    }

    pub fn wrap_mode(&self) -> bool {
        self.wrap
    }

    pub fn sample_rate(&self) -> u8 {
        self.sample_rate
    }

    pub fn resolution(&self) -> u8 {
        self.resolution
    }

    pub fn scaling_2_1(&self) -> bool {
        self.scaling_2_1
    }

    pub fn has_data(&self) -> bool {
        !self.replies.is_empty() || !self.data.is_empty()
    }

    /// Bytes waiting (replies and packets).
    pub fn pending(&self) -> usize {
        self.replies.len() + self.data.len()
    }

    fn packet_len(&self) -> usize {
        if self.id == ID_INTELLIMOUSE { 4 } else { 3 }
    }

    /// Take the next byte for the controller: replies first, then packet bytes.
    pub fn read(&mut self) -> Option<u8> {
        let byte = self.replies.pop_front().or_else(|| self.data.pop_front())?;
        self.last_sent = byte;
        self.flush();
        Some(byte)
    }

    /// Host motion: `dx` right, `dy` up (the PS/2 convention, opposite to screen Y), `dz` the
    /// wheel as the IntelliMouse counts it (negative = away from the user, "scroll up"), and
    /// the buttons held ([`BUTTON_LEFT`], [`BUTTON_RIGHT`], [`BUTTON_MIDDLE`]). Resolution
    /// does not scale host motion: the host's deltas are already counts.
    pub fn move_by(&mut self, dx: i32, dy: i32, dz: i32, buttons: u8) {
        let buttons = buttons & BUTTONS;
        let changed = dx != 0 || dy != 0 || dz != 0 || buttons != self.buttons;
        self.buttons = buttons;
        if !self.remote && !self.reporting {
            // A stream-mode mouse that may not report drops motion (it clears its counters
            // when reporting is enabled anyway).
            return;
        }
        self.dx = self.dx.saturating_add(dx);
        self.dy = self.dy.saturating_add(dy);
        self.dz = self.dz.saturating_add(dz);
        if !self.remote {
            self.unreported |= changed;
            self.flush();
        }
    }

    /// In stream mode, send accumulated motion if a whole packet fits.
    fn flush(&mut self) {
        if self.remote || !self.reporting || !self.unreported {
            return;
        }
        if DATA_QUEUE_SIZE - self.data.len() < self.packet_len() {
            debug!("ps2-mouse: queue full, motion held back");
            return;
        }
        let (packet, len) = self.packet(self.scaling_2_1);
        self.data.extend(&packet[..len]);
        self.unreported = false;
    }

    /// Build a packet from the counters and clear them.
    fn packet(&mut self, scaled: bool) -> ([u8; 4], usize) {
        let scale = |v: i32| if scaled { scale_2_1(v) } else { v };
        let (dx, x_overflow) = saturate_9bit(scale(self.dx));
        let (dy, y_overflow) = saturate_9bit(scale(self.dy));
        let dz = self.dz.clamp(-128, 127);
        let b0 = 0x08
            | self.buttons
            | (u8::from(dx < 0) << 4)
            | (u8::from(dy < 0) << 5)
            | (u8::from(x_overflow) << 6)
            | (u8::from(y_overflow) << 7);
        self.dx = 0;
        self.dy = 0;
        self.dz = 0;
        // Two's complement low bytes: the sign bits above carry bit 8.
        let packet = [b0, dx as u8, dy as u8, dz as u8];
        (packet, self.packet_len())
    }

    /// A byte from the host (the controller passes on what follows a 0xD4 command).
    pub fn write(&mut self, byte: u8) {
        if self.wrap && byte != CMD_RESET_WRAP && byte != CMD_RESET {
            self.reply(&[byte]);
            return;
        }
        if let Some(cmd) = self.awaiting.take() {
            self.parameter(cmd, byte);
            return;
        }
        self.command(byte);
    }

    fn parameter(&mut self, cmd: u8, byte: u8) {
        match cmd {
            CMD_SET_SAMPLE_RATE => {
                // Any rate is taken (as QEMU): probes of other mouse protocols send odd ones.
                self.sample_rate = byte;
                self.rates = [self.rates[1], self.rates[2], byte];
                if self.rates == INTELLIMOUSE_KNOCK {
                    self.id = ID_INTELLIMOUSE;
                }
                self.reply(&[ACK]);
            }
            CMD_SET_RESOLUTION if byte <= 3 => {
                self.resolution = byte;
                self.reply(&[ACK]);
            }
            _ => {
                debug!("ps2-mouse: bad parameter {byte:#04x} for {cmd:#04x}");
                self.reply(&[RESEND]);
            }
        }
    }

    fn command(&mut self, byte: u8) {
        match byte {
            CMD_SCALING_1_1 => {
                self.scaling_2_1 = false;
                self.reply(&[ACK]);
            }
            CMD_SCALING_2_1 => {
                self.scaling_2_1 = true;
                self.reply(&[ACK]);
            }
            CMD_SET_RESOLUTION | CMD_SET_SAMPLE_RATE => {
                self.awaiting = Some(byte);
                self.reply(&[ACK]);
            }
            CMD_STATUS => {
                // Bit 2 left, bit 1 middle, bit 0 right: not the packet's order.
                let buttons = (self.buttons & BUTTON_LEFT) << 2
                    | (self.buttons & BUTTON_MIDDLE) >> 1
                    | (self.buttons & BUTTON_RIGHT) >> 1;
                let status = u8::from(self.remote) << 6
                    | u8::from(self.reporting) << 5
                    | u8::from(self.scaling_2_1) << 4
                    | buttons;
                self.reply(&[ACK, status, self.resolution, self.sample_rate]);
            }
            CMD_STREAM_MODE => {
                self.remote = false;
                self.clear_motion();
                self.reply(&[ACK]);
            }
            CMD_REMOTE_MODE => {
                self.remote = true;
                self.clear_motion();
                self.reply(&[ACK]);
            }
            CMD_READ_DATA => {
                // Remote-mode reads are not scaled.
                let (packet, len) = self.packet(false);
                let mut reply = [ACK, 0, 0, 0, 0];
                reply[1..=len].copy_from_slice(&packet[..len]);
                self.reply(&reply[..=len]);
                self.unreported = false;
            }
            CMD_RESET_WRAP => {
                self.wrap = false;
                self.clear_motion();
                self.reply(&[ACK]);
            }
            CMD_WRAP_MODE => {
                self.wrap = true;
                self.clear_motion();
                self.reply(&[ACK]);
            }
            CMD_GET_ID => {
                self.clear_motion();
                let id = self.id;
                self.reply(&[ACK, id]);
            }
            CMD_ENABLE => {
                self.reporting = true;
                self.clear_motion();
                self.reply(&[ACK]);
            }
            CMD_DISABLE => {
                self.reporting = false;
                self.clear_motion();
                self.reply(&[ACK]);
            }
            CMD_DEFAULTS => {
                self.defaults();
                self.reply(&[ACK]);
            }
            CMD_RESEND => {
                let last = self.last_sent;
                self.reply(&[last]);
            }
            CMD_RESET => {
                self.defaults();
                self.replies.clear();
                self.id = ID_STANDARD;
                self.wrap = false;
                self.reply(&[ACK, BAT_OK, ID_STANDARD]);
            }
            _ => {
                debug!("ps2-mouse: unknown command {byte:#04x}");
                self.reply(&[RESEND]);
            }
        }
    }

    /// What 0xF6 restores (and reset, which also forgets the ID): stream mode, reporting
    /// off, 100 samples/s, 4 counts/mm, 1:1, nothing queued.
    fn defaults(&mut self) {
        self.sample_rate = DEFAULT_SAMPLE_RATE;
        self.resolution = DEFAULT_RESOLUTION;
        self.scaling_2_1 = false;
        self.reporting = false;
        self.remote = false;
        self.data.clear();
        self.clear_motion();
    }

    fn clear_motion(&mut self) {
        self.dx = 0;
        self.dy = 0;
        self.dz = 0;
        self.unreported = false;
    }

    fn reply(&mut self, bytes: &[u8]) {
        if REPLY_QUEUE_SIZE - self.replies.len() < bytes.len() {
            debug!("ps2-mouse: reply queue full, {bytes:02x?} dropped");
            return;
        }
        self.replies.extend(bytes);
    }
}

/// Clamp to the 9-bit two's complement range a packet can carry; true when clamped.
fn saturate_9bit(v: i32) -> (i32, bool) {
    let clamped = v.clamp(-256, 255);
    (clamped, clamped != v)
}

/// The PS/2 2:1 scaling curve: small motions are damped, larger ones doubled.
fn scale_2_1(v: i32) -> i32 {
    let magnitude = match v.unsigned_abs() {
        0 => 0,
        1 | 2 => 1,
        3 => 3,
        4 => 6,
        5 => 9,
        m => m.saturating_mul(2).min(i32::MAX as u32),
    } as i32;
    if v < 0 { -magnitude } else { magnitude }
}

const PARAM_COMMANDS: [u8; 2] = [CMD_SET_RESOLUTION, CMD_SET_SAMPLE_RATE];

impl Snapshot for Ps2Mouse {
    fn snapshot_id(&self) -> &'static str {
        "ps2-mouse"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        let replies: Vec<u8> = self.replies.iter().copied().collect();
        let data: Vec<u8> = self.data.iter().copied().collect();
        w.var_bytes(&replies);
        w.var_bytes(&data);
        w.opt_u8(self.awaiting);
        w.u8(self.sample_rate);
        w.u8(self.resolution);
        w.bool(self.scaling_2_1);
        w.bool(self.reporting);
        w.bool(self.remote);
        w.bool(self.wrap);
        w.u8(self.id);
        w.bytes(&self.rates);
        w.u8(self.buttons);
        w.i64(i64::from(self.dx));
        w.i64(i64::from(self.dy));
        w.i64(i64::from(self.dz));
        w.bool(self.unreported);
        w.u8(self.last_sent);
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let replies = r.var_bytes(REPLY_QUEUE_SIZE)?;
        let data = r.var_bytes(DATA_QUEUE_SIZE)?;
        let awaiting = r.opt_u8()?;
        if let Some(awaiting) = awaiting
            && !PARAM_COMMANDS.contains(&awaiting)
        {
            return Err(SnapshotError::Invalid(format!(
                "ps2-mouse awaits a parameter for {awaiting:#04x}"
            )));
        }
        let sample_rate = r.u8()?;
        let resolution = r.u8_below(4)?;
        let scaling_2_1 = r.bool()?;
        let reporting = r.bool()?;
        let remote = r.bool()?;
        let wrap = r.bool()?;
        let id = r.u8()?;
        if id != ID_STANDARD && id != ID_INTELLIMOUSE {
            return Err(SnapshotError::Invalid(format!("ps2-mouse ID {id:#04x}")));
        }
        let mut rates = [0u8; 3];
        r.bytes(&mut rates)?;
        let buttons = r.u8()?;
        if buttons & !BUTTONS != 0 {
            return Err(SnapshotError::Invalid(format!(
                "ps2-mouse buttons {buttons:#04x}"
            )));
        }
        let mut counter = || -> Result<i32, SnapshotError> {
            let v = r.i64()?;
            i32::try_from(v)
                .map_err(|_| SnapshotError::Invalid(format!("ps2-mouse motion count {v}")))
        };
        let dx = counter()?;
        let dy = counter()?;
        let dz = counter()?;
        let unreported = r.bool()?;
        let last_sent = r.u8()?;
        *self = Ps2Mouse {
            replies: replies.into(),
            data: data.into(),
            awaiting,
            sample_rate,
            resolution,
            scaling_2_1,
            reporting,
            remote,
            wrap,
            id,
            rates,
            buttons,
            dx,
            dy,
            dz,
            unreported,
            last_sent,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{check_round_trip, restore, save};

    fn drain(m: &mut Ps2Mouse) -> Vec<u8> {
        std::iter::from_fn(|| m.read()).collect()
    }

    fn cmd(m: &mut Ps2Mouse, bytes: &[u8]) -> Vec<u8> {
        for &b in bytes {
            m.write(b);
        }
        drain(m)
    }

    fn enabled() -> Ps2Mouse {
        let mut m = Ps2Mouse::new();
        assert_eq!(cmd(&mut m, &[0xF4]), [0xFA]);
        m
    }

    #[test]
    fn reset_answers_ack_bat_id() {
        let mut m = Ps2Mouse::new();
        cmd(&mut m, &[0xF4, 0xF0]);
        assert_eq!(cmd(&mut m, &[0xFF]), [0xFA, 0xAA, 0x00]);
        assert!(!m.reporting());
        assert!(!m.remote_mode());
    }

    #[test]
    fn intellimouse_knock_changes_the_id() {
        let mut m = Ps2Mouse::new();
        assert_eq!(cmd(&mut m, &[0xF2]), [0xFA, 0x00]);
        // Explorer's knock (200, 200, 80) is not supported: the ID stays 0.
        cmd(&mut m, &[0xF3, 200, 0xF3, 200, 0xF3, 80]);
        assert_eq!(cmd(&mut m, &[0xF2]), [0xFA, 0x00]);
        assert_eq!(
            cmd(&mut m, &[0xF3, 200, 0xF3, 100, 0xF3, 80]),
            [0xFA, 0xFA, 0xFA, 0xFA, 0xFA, 0xFA]
        );
        assert_eq!(cmd(&mut m, &[0xF2]), [0xFA, 0x03]);
        assert_eq!(m.sample_rate(), 80);
        cmd(&mut m, &[0xFF]);
        assert_eq!(
            cmd(&mut m, &[0xF2]),
            [0xFA, 0x00],
            "reset forgets the knock"
        );
    }

    #[test]
    fn status_request_reports_mode_and_settings() {
        let mut m = Ps2Mouse::new();
        cmd(&mut m, &[0xE8, 3, 0xF3, 40, 0xE7, 0xF0]);
        m.move_by(0, 0, 0, BUTTON_LEFT | BUTTON_RIGHT);
        assert_eq!(cmd(&mut m, &[0xE9]), [0xFA, 0x40 | 0x10 | 0x05, 3, 40]);
        assert_eq!(cmd(&mut m, &[0xE6, 0xEA, 0xF4, 0xE9])[4..], [0x25, 3, 40]);
        assert_eq!(cmd(&mut m, &[0xE8, 4]), [0xFA, 0xFE], "resolution is 0-3");
    }

    #[test]
    fn stream_packets_carry_signs_and_overflow() {
        let mut m = enabled();
        m.move_by(5, -3, 0, BUTTON_LEFT);
        assert_eq!(drain(&mut m), [0x08 | 0x20 | 0x01, 5, 0xFD]);
        m.move_by(-1, 1, 0, 0);
        assert_eq!(drain(&mut m), [0x08 | 0x10, 0xFF, 1]);
        m.move_by(300, -400, 0, 0);
        assert_eq!(
            drain(&mut m),
            [0x08 | 0x40 | 0x80 | 0x20, 0xFF, 0x00],
            "+255 and -256 with both overflow bits"
        );
        m.move_by(0, 0, 0, 0);
        assert!(!m.has_data(), "no change, no packet");
    }

    #[test]
    fn intellimouse_packets_have_a_wheel_byte() {
        let mut m = Ps2Mouse::new();
        cmd(&mut m, &[0xF3, 200, 0xF3, 100, 0xF3, 80, 0xF4]);
        m.move_by(0, 0, -1, 0);
        assert_eq!(drain(&mut m), [0x08, 0, 0, 0xFF]);
        m.move_by(1, 0, 500, BUTTON_MIDDLE);
        assert_eq!(drain(&mut m), [0x0C, 1, 0, 0x7F]);
    }

    #[test]
    fn disabled_stream_mouse_sends_nothing() {
        let mut m = Ps2Mouse::new();
        m.move_by(3, 3, 0, 0);
        assert!(!m.has_data());
        cmd(&mut m, &[0xF4]);
        assert!(!m.has_data(), "old motion is not replayed");
    }

    #[test]
    fn remote_mode_accumulates_until_read_data() {
        let mut m = enabled();
        cmd(&mut m, &[0xF0]);
        m.move_by(2, 3, 0, 0);
        m.move_by(2, 3, 0, BUTTON_RIGHT);
        assert!(!m.has_data());
        assert_eq!(cmd(&mut m, &[0xEB]), [0xFA, 0x0A, 4, 6]);
        assert_eq!(cmd(&mut m, &[0xEB]), [0xFA, 0x0A, 0, 0], "counters cleared");
    }

    #[test]
    fn scaling_2_1_applies_to_stream_reports() {
        let mut m = enabled();
        cmd(&mut m, &[0xE7]);
        for (input, output) in [(1, 1), (2, 1), (3, 3), (4, 6), (5, 9), (6, 12), (-4, -6)] {
            m.move_by(input, 0, 0, 0);
            let p = drain(&mut m);
            assert_eq!(p[1] as i8 as i32, output, "{input}");
        }
    }

    #[test]
    fn wrap_mode_echoes_until_reset_wrap() {
        let mut m = Ps2Mouse::new();
        assert_eq!(cmd(&mut m, &[0xEE]), [0xFA]);
        assert_eq!(cmd(&mut m, &[0x12, 0xF2, 0xE9]), [0x12, 0xF2, 0xE9]);
        assert_eq!(cmd(&mut m, &[0xEC]), [0xFA]);
        assert_eq!(cmd(&mut m, &[0xF2]), [0xFA, 0x00]);
        cmd(&mut m, &[0xEE]);
        assert_eq!(
            cmd(&mut m, &[0xFF]),
            [0xFA, 0xAA, 0x00],
            "reset leaves wrap mode"
        );
        assert!(!m.wrap_mode());
    }

    #[test]
    fn defaults_and_unknown_commands() {
        let mut m = enabled();
        cmd(&mut m, &[0xF3, 20, 0xE7, 0xF0]);
        assert_eq!(cmd(&mut m, &[0xF6]), [0xFA]);
        assert_eq!(m.sample_rate(), 100);
        assert!(!m.scaling_2_1() && !m.reporting() && !m.remote_mode());
        assert_eq!(cmd(&mut m, &[0x33]), [0xFE]);
        assert_eq!(
            cmd(&mut m, &[0xFE]),
            [0xFE],
            "resend repeats the last byte sent"
        );
    }

    #[test]
    fn full_queue_holds_motion_back_until_drained() {
        let mut m = enabled();
        for i in 0..5 {
            m.move_by(1, 0, 0, 0);
            assert_eq!(m.pending(), (3 * (i + 1)).min(15));
        }
        // Five packets (15 bytes) queued; the sixth waits as accumulated motion.
        m.move_by(1, 0, 0, 0);
        assert_eq!(m.pending(), 15);
        m.read();
        m.read();
        m.read();
        assert_eq!(
            m.pending(),
            15,
            "the held-back packet follows once there is room"
        );
        let bytes = drain(&mut m);
        assert_eq!(bytes.len(), 15);
        assert_eq!(&bytes[12..], [0x08, 1, 0]);
    }

    #[test]
    fn any_byte_sequence_keeps_queues_bounded() {
        let mut m = Ps2Mouse::new();
        for a in 0..=255u8 {
            for b in [0x00, 0x03, 0x50, 0xC8, 0xE8, 0xEB, 0xEE, 0xF3, 0xFF] {
                m.write(a);
                m.write(b);
                m.move_by(i32::MAX, i32::MIN, i32::MAX, 0xFF);
                assert!(m.replies.len() <= REPLY_QUEUE_SIZE);
                assert!(m.data.len() <= DATA_QUEUE_SIZE);
            }
        }
    }

    #[test]
    fn snapshot_round_trip() {
        let mut m = Ps2Mouse::new();
        cmd(&mut m, &[0xF3, 200, 0xF3, 100, 0xF3, 80, 0xF4]);
        m.move_by(-7, 9, 1, BUTTON_RIGHT);
        m.write(0xF3);
        check_round_trip(&m, &mut Ps2Mouse::new()).unwrap();
        let mut copy = Ps2Mouse::new();
        restore(&mut copy, &save(&m)).unwrap();
        assert_eq!(drain(&mut copy), [0xFA, 0x08 | 0x10 | 0x02, 0xF9, 9, 1]);
        assert_eq!(
            cmd(&mut copy, &[60]),
            [0xFA],
            "the pending 0xF3 takes its parameter"
        );
        assert_eq!(copy.sample_rate(), 60);
    }
}
