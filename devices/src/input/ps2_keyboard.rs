//! A PS/2 (MF2) keyboard, as it sits on the 8042's first port.
//!
//! The keyboard talks in bytes: the host (through the controller) writes command bytes, the
//! keyboard answers and sends scan codes. It keeps two bounded queues: command replies, which
//! go out first, and scan codes (16 bytes, as QEMU and the PS/2 protocol size it). Like QEMU,
//! a new byte from the host discards replies the host has not read yet, so a confused driver
//! cannot pile replies up; scan codes wait behind replies and are never reordered.
//!
//! Scan codes are generated in the set the host selected (2 by default). The 8042's
//! translation to set 1 is the controller's business (see [`translate_to_set1`]), applied as
//! bytes leave the keyboard, as on the real board. Auto-repeat (typematic) is the host's: each
//! `key_event(key, true)` sends one make code.

use std::collections::VecDeque;

use log::debug;

use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

/// Scan codes the keyboard buffers (QEMU's `PS2_QUEUE_SIZE`, the PS/2 keyboard's own buffer).
pub const SCANCODE_QUEUE_SIZE: usize = 16;
/// Command replies it can hold: the longest reply is 3 bytes (identify), and unread replies
/// are discarded when the next command arrives, so this is never reached by a sane host.
pub const REPLY_QUEUE_SIZE: usize = 8;

const ACK: u8 = 0xFA;
const RESEND: u8 = 0xFE;
const BAT_OK: u8 = 0xAA;
const ECHO: u8 = 0xEE;
/// Identify answers "MF2 keyboard": 0xAB 0x83 (the controller's translation makes it 0x41).
const ID: [u8; 2] = [0xAB, 0x83];

const CMD_SET_LEDS: u8 = 0xED;
const CMD_ECHO: u8 = 0xEE;
const CMD_SCANCODE_SET: u8 = 0xF0;
const CMD_IDENTIFY: u8 = 0xF2;
const CMD_TYPEMATIC: u8 = 0xF3;
const CMD_ENABLE: u8 = 0xF4;
const CMD_DEFAULT_DISABLE: u8 = 0xF5;
const CMD_DEFAULTS: u8 = 0xF6;
const CMD_RESEND: u8 = 0xFE;
const CMD_RESET: u8 = 0xFF;

/// Typematic byte after reset: 10.9 characters/s, 500 ms delay (IBM default).
const DEFAULT_TYPEMATIC: u8 = 0x2B;
const DEFAULT_SCAN_SET: u8 = 2;

/// The 8042's set 2 → set 1 translation for bytes 0x00-0x7F, from the IBM PC AT keyboard
/// controller's table. Bytes from 0x80 up pass unchanged except 0x83 (F7) and 0x84 (SysRq),
/// which sit above 0x7F in set 2; see [`translate_to_set1`].
const SET2_TO_SET1: [u8; 128] = [
    0xFF, 0x43, 0x41, 0x3F, 0x3D, 0x3B, 0x3C, 0x58, // 0x00
    0x64, 0x44, 0x42, 0x40, 0x3E, 0x0F, 0x29, 0x59, // 0x08
    0x65, 0x38, 0x2A, 0x70, 0x1D, 0x10, 0x02, 0x5A, // 0x10
    0x66, 0x71, 0x2C, 0x1F, 0x1E, 0x11, 0x03, 0x5B, // 0x18
    0x67, 0x2E, 0x2D, 0x20, 0x12, 0x05, 0x04, 0x5C, // 0x20
    0x68, 0x39, 0x2F, 0x21, 0x14, 0x13, 0x06, 0x5D, // 0x28
    0x69, 0x31, 0x30, 0x23, 0x22, 0x15, 0x07, 0x5E, // 0x30
    0x6A, 0x72, 0x32, 0x24, 0x16, 0x08, 0x09, 0x5F, // 0x38
    0x6B, 0x33, 0x25, 0x17, 0x18, 0x0B, 0x0A, 0x60, // 0x40
    0x6C, 0x34, 0x35, 0x26, 0x27, 0x19, 0x0C, 0x61, // 0x48
    0x6D, 0x73, 0x28, 0x74, 0x1A, 0x0D, 0x62, 0x6E, // 0x50
    0x3A, 0x36, 0x1C, 0x1B, 0x75, 0x2B, 0x63, 0x76, // 0x58
    0x55, 0x56, 0x77, 0x78, 0x79, 0x7A, 0x0E, 0x7B, // 0x60
    0x7C, 0x4F, 0x7D, 0x4B, 0x47, 0x7E, 0x7F, 0x6F, // 0x68
    0x52, 0x53, 0x50, 0x4C, 0x4D, 0x48, 0x01, 0x45, // 0x70
    0x57, 0x4E, 0x51, 0x4A, 0x37, 0x49, 0x46, 0x54, // 0x78
];

/// Translate one byte as the 8042 does with command-byte bit 6 set. The break prefix 0xF0 is
/// not a translation: the controller swallows it and sets bit 7 of the next byte.
pub fn translate_to_set1(byte: u8) -> u8 {
    match byte {
        0x00..=0x7F => SET2_TO_SET1[usize::from(byte)],
        0x83 => 0x41,
        0x84 => 0x54,
        _ => byte,
    }
}

/// Declares [`KeyCode`] and its [`KeyCode::ALL`] table from one list, so the two cannot drift.
macro_rules! key_codes {
    ($($key:ident),* $(,)?) => {
        /// The keys a host can press: a full-size US keyboard without Print Screen and Pause
        /// (whose multi-byte sequences depend on modifiers and are not needed for a shell).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum KeyCode {
            $($key),*
        }

        impl KeyCode {
            /// Every key, for hosts that map by table and for tests.
            pub const ALL: &'static [KeyCode] = &[$(KeyCode::$key),*];
        }
    };
}

key_codes! {
    A,
    B,
    C,
    D,
    E,
    F,
    G,
    H,
    I,
    J,
    K,
    L,
    M,
    N,
    O,
    P,
    Q,
    R,
    S,
    T,
    U,
    V,
    W,
    X,
    Y,
    Z,
    Digit0,
    Digit1,
    Digit2,
    Digit3,
    Digit4,
    Digit5,
    Digit6,
    Digit7,
    Digit8,
    Digit9,
    Minus,
    Equal,
    LeftBracket,
    RightBracket,
    Backslash,
    Semicolon,
    Apostrophe,
    Grave,
    Comma,
    Period,
    Slash,
    Enter,
    Escape,
    Backspace,
    Tab,
    Space,
    CapsLock,
    LeftShift,
    RightShift,
    LeftCtrl,
    RightCtrl,
    LeftAlt,
    RightAlt,
    LeftMeta,
    RightMeta,
    Menu,
    F1,
    F2,
    F3,
    F4,
    F5,
    F6,
    F7,
    F8,
    F9,
    F10,
    F11,
    F12,
    Up,
    Down,
    Left,
    Right,
    Insert,
    Delete,
    Home,
    End,
    PageUp,
    PageDown,
    NumLock,
    ScrollLock,
    Keypad0,
    Keypad1,
    Keypad2,
    Keypad3,
    Keypad4,
    Keypad5,
    Keypad6,
    Keypad7,
    Keypad8,
    Keypad9,
    KeypadDecimal,
    KeypadPlus,
    KeypadMinus,
    KeypadMultiply,
    KeypadDivide,
    KeypadEnter,
}

impl KeyCode {
    /// The key's set 2 make code, and whether it carries the 0xE0 prefix.
    pub const fn set2(self) -> (bool, u8) {
        use KeyCode::*;
        match self {
            A => (false, 0x1C),
            B => (false, 0x32),
            C => (false, 0x21),
            D => (false, 0x23),
            E => (false, 0x24),
            F => (false, 0x2B),
            G => (false, 0x34),
            H => (false, 0x33),
            I => (false, 0x43),
            J => (false, 0x3B),
            K => (false, 0x42),
            L => (false, 0x4B),
            M => (false, 0x3A),
            N => (false, 0x31),
            O => (false, 0x44),
            P => (false, 0x4D),
            Q => (false, 0x15),
            R => (false, 0x2D),
            S => (false, 0x1B),
            T => (false, 0x2C),
            U => (false, 0x3C),
            V => (false, 0x2A),
            W => (false, 0x1D),
            X => (false, 0x22),
            Y => (false, 0x35),
            Z => (false, 0x1A),
            Digit0 => (false, 0x45),
            Digit1 => (false, 0x16),
            Digit2 => (false, 0x1E),
            Digit3 => (false, 0x26),
            Digit4 => (false, 0x25),
            Digit5 => (false, 0x2E),
            Digit6 => (false, 0x36),
            Digit7 => (false, 0x3D),
            Digit8 => (false, 0x3E),
            Digit9 => (false, 0x46),
            Minus => (false, 0x4E),
            Equal => (false, 0x55),
            LeftBracket => (false, 0x54),
            RightBracket => (false, 0x5B),
            Backslash => (false, 0x5D),
            Semicolon => (false, 0x4C),
            Apostrophe => (false, 0x52),
            Grave => (false, 0x0E),
            Comma => (false, 0x41),
            Period => (false, 0x49),
            Slash => (false, 0x4A),
            Enter => (false, 0x5A),
            Escape => (false, 0x76),
            Backspace => (false, 0x66),
            Tab => (false, 0x0D),
            Space => (false, 0x29),
            CapsLock => (false, 0x58),
            LeftShift => (false, 0x12),
            RightShift => (false, 0x59),
            LeftCtrl => (false, 0x14),
            RightCtrl => (true, 0x14),
            LeftAlt => (false, 0x11),
            RightAlt => (true, 0x11),
            LeftMeta => (true, 0x1F),
            RightMeta => (true, 0x27),
            Menu => (true, 0x2F),
            F1 => (false, 0x05),
            F2 => (false, 0x06),
            F3 => (false, 0x04),
            F4 => (false, 0x0C),
            F5 => (false, 0x03),
            F6 => (false, 0x0B),
            F7 => (false, 0x83),
            F8 => (false, 0x0A),
            F9 => (false, 0x01),
            F10 => (false, 0x09),
            F11 => (false, 0x78),
            F12 => (false, 0x07),
            Up => (true, 0x75),
            Down => (true, 0x72),
            Left => (true, 0x6B),
            Right => (true, 0x74),
            Insert => (true, 0x70),
            Delete => (true, 0x71),
            Home => (true, 0x6C),
            End => (true, 0x69),
            PageUp => (true, 0x7D),
            PageDown => (true, 0x7A),
            NumLock => (false, 0x77),
            ScrollLock => (false, 0x7E),
            Keypad0 => (false, 0x70),
            Keypad1 => (false, 0x69),
            Keypad2 => (false, 0x72),
            Keypad3 => (false, 0x7A),
            Keypad4 => (false, 0x6B),
            Keypad5 => (false, 0x73),
            Keypad6 => (false, 0x74),
            Keypad7 => (false, 0x6C),
            Keypad8 => (false, 0x75),
            Keypad9 => (false, 0x7D),
            KeypadDecimal => (false, 0x71),
            KeypadPlus => (false, 0x79),
            KeypadMinus => (false, 0x7B),
            KeypadMultiply => (false, 0x7C),
            KeypadDivide => (true, 0x4A),
            KeypadEnter => (true, 0x5A),
        }
    }

    /// The key's set 1 make code: the 8042 translation of its set 2 code (that is what the
    /// translation was designed to produce), keeping the 0xE0 prefix.
    pub const fn set1(self) -> (bool, u8) {
        let (extended, code) = self.set2();
        let set1 = match code {
            0x83 => 0x41,
            0x84 => 0x54,
            _ => SET2_TO_SET1[(code & 0x7F) as usize],
        };
        (extended, set1)
    }

    /// The key's set 3 code (set 3 has no prefixes: every key has a code of its own).
    pub const fn set3(self) -> u8 {
        use KeyCode::*;
        match self {
            Escape => 0x08,
            F1 => 0x07,
            F2 => 0x0F,
            F3 => 0x17,
            F4 => 0x1F,
            F5 => 0x27,
            F6 => 0x2F,
            F7 => 0x37,
            F8 => 0x3F,
            F9 => 0x47,
            F10 => 0x4F,
            F11 => 0x56,
            F12 => 0x5E,
            Backslash => 0x5C,
            CapsLock => 0x14,
            LeftCtrl => 0x11,
            RightCtrl => 0x58,
            LeftAlt => 0x19,
            RightAlt => 0x39,
            LeftMeta => 0x8B,
            RightMeta => 0x8C,
            Menu => 0x8D,
            Up => 0x63,
            Down => 0x60,
            Left => 0x61,
            Right => 0x6A,
            Insert => 0x67,
            Delete => 0x64,
            Home => 0x6E,
            End => 0x65,
            PageUp => 0x6F,
            PageDown => 0x6D,
            NumLock => 0x76,
            ScrollLock => 0x5F,
            KeypadMinus => 0x84,
            KeypadMultiply => 0x7E,
            KeypadPlus => 0x7C,
            KeypadDivide => 0x77,
            KeypadEnter => 0x79,
            // Letters, digits, punctuation, shifts and the numeric keypad keep their set 2 codes.
            _ => self.set2().1,
        }
    }
}

/// A PS/2 keyboard's state. Bytes leave through [`Ps2Keyboard::read`] when the controller
/// has room for them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ps2Keyboard {
    replies: VecDeque<u8>,
    scancodes: VecDeque<u8>,
    /// The command whose parameter byte comes next (0xED, 0xF0 or 0xF3).
    awaiting: Option<u8>,
    scan_set: u8,
    scanning: bool,
    leds: u8,
    typematic: u8,
    /// The last byte sent to the host, for the resend command.
    last_sent: u8,
}

impl Default for Ps2Keyboard {
    fn default() -> Self {
        Ps2Keyboard::new()
    }
}

impl Ps2Keyboard {
    /// A keyboard as at power-on: scan code set 2, scanning, LEDs off, queues empty.
    pub fn new() -> Ps2Keyboard {
        Ps2Keyboard {
            replies: VecDeque::with_capacity(REPLY_QUEUE_SIZE),
            scancodes: VecDeque::with_capacity(SCANCODE_QUEUE_SIZE),
            awaiting: None,
            scan_set: DEFAULT_SCAN_SET,
            scanning: true,
            leds: 0,
            typematic: DEFAULT_TYPEMATIC,
            last_sent: BAT_OK,
        }
    }

    /// Power-on reset (the board's reset, not the 0xFF command: no BAT code is sent).
    pub fn reset(&mut self) {
        *self = Ps2Keyboard::new();
    }

    /// The LEDs the host last set: bit 0 Scroll Lock, bit 1 Num Lock, bit 2 Caps Lock.
    pub fn leds(&self) -> u8 {
        self.leds
    }

    /// The scan code set in use (1, 2 or 3).
    pub fn scan_set(&self) -> u8 {
        self.scan_set
    }

    pub fn scanning(&self) -> bool {
        self.scanning
    }

    /// The typematic rate/delay byte last set (not emulated: the host repeats keys itself).
    pub fn typematic(&self) -> u8 {
        self.typematic
    }

    /// True when a byte is waiting to go to the controller.
    pub fn has_data(&self) -> bool {
        !self.replies.is_empty() || !self.scancodes.is_empty()
    }

    /// Bytes waiting (replies and scan codes).
    pub fn pending(&self) -> usize {
        self.replies.len() + self.scancodes.len()
    }

    /// Take the next byte for the controller: replies first, then scan codes.
    pub fn read(&mut self) -> Option<u8> {
        let byte = self
            .replies
            .pop_front()
            .or_else(|| self.scancodes.pop_front())?;
        self.last_sent = byte;
        Some(byte)
    }

    /// A key went down (`pressed`) or up. Dropped while scanning is disabled (as QEMU, so a
    /// half-sent sequence cannot corrupt the stream) or when the queue cannot hold the
    /// key's whole sequence.
    pub fn key_event(&mut self, key: KeyCode, pressed: bool) {
        if !self.scanning {
            debug!("ps2-kbd: scanning disabled, {key:?} dropped");
            return;
        }
        let mut seq = [0u8; 3];
        let mut n = 0;
        let mut push = |b: u8| {
            seq[n] = b;
            n += 1;
        };
        match self.scan_set {
            1 => {
                let (extended, code) = key.set1();
                if extended {
                    push(0xE0);
                }
                push(if pressed { code } else { code | 0x80 });
            }
            3 => {
                if !pressed {
                    push(0xF0);
                }
                push(key.set3());
            }
            _ => {
                let (extended, code) = key.set2();
                if extended {
                    push(0xE0);
                }
                if !pressed {
                    push(0xF0);
                }
                push(code);
            }
        }
        if SCANCODE_QUEUE_SIZE - self.scancodes.len() < n {
            debug!("ps2-kbd: buffer full, {key:?} (pressed {pressed}) dropped");
            return;
        }
        self.scancodes.extend(&seq[..n]);
    }

    /// A byte from the host (the controller passes on port 0x60 writes).
    pub fn write(&mut self, byte: u8) {
        // The host has moved on: answers to its previous byte it has not read are stale.
        self.replies.clear();
        if let Some(cmd) = self.awaiting.take() {
            // A command byte in place of a parameter aborts the pending command.
            if byte < CMD_SET_LEDS {
                self.parameter(cmd, byte);
                return;
            }
            debug!("ps2-kbd: command {byte:#04x} replaces the parameter of {cmd:#04x}");
        }
        self.command(byte);
    }

    fn parameter(&mut self, cmd: u8, byte: u8) {
        match cmd {
            CMD_SET_LEDS => {
                self.leds = byte & 0x07;
                self.reply(&[ACK]);
            }
            CMD_TYPEMATIC if byte < 0x80 => {
                self.typematic = byte;
                self.reply(&[ACK]);
            }
            CMD_SCANCODE_SET => match byte {
                0 => self.reply(&[ACK, self.scan_set]),
                1..=3 => {
                    self.scan_set = byte;
                    self.reply(&[ACK]);
                }
                _ => self.reply(&[RESEND]),
            },
            _ => {
                debug!("ps2-kbd: bad parameter {byte:#04x} for {cmd:#04x}");
                self.reply(&[RESEND]);
            }
        }
    }

    fn command(&mut self, byte: u8) {
        match byte {
            CMD_SET_LEDS | CMD_SCANCODE_SET | CMD_TYPEMATIC => {
                self.awaiting = Some(byte);
                self.reply(&[ACK]);
            }
            CMD_ECHO => self.reply(&[ECHO]),
            CMD_IDENTIFY => self.reply(&[ACK, ID[0], ID[1]]),
            CMD_ENABLE => {
                // IBM: enable clears the output buffer, then scanning starts.
                self.scancodes.clear();
                self.scanning = true;
                self.reply(&[ACK]);
            }
            CMD_DEFAULT_DISABLE => {
                self.defaults();
                self.scanning = false;
                self.reply(&[ACK]);
            }
            CMD_DEFAULTS => {
                self.defaults();
                self.scanning = true;
                self.reply(&[ACK]);
            }
            // Set 3 key-type commands for all keys: accepted, key types are not modelled.
            0xF7..=0xFA => self.reply(&[ACK]),
            CMD_RESEND => {
                let last = self.last_sent;
                self.reply(&[last]);
            }
            CMD_RESET => {
                self.defaults();
                self.leds = 0;
                self.scanning = true;
                self.reply(&[ACK, BAT_OK]);
            }
            _ => {
                debug!("ps2-kbd: unknown command {byte:#04x}");
                self.reply(&[RESEND]);
            }
        }
    }

    /// What 0xF5/0xF6 restore ("set default": typematic rate and delay, scan code set 2)
    /// and the buffer they clear. The LEDs are not part of it; only reset turns them off.
    fn defaults(&mut self) {
        self.scancodes.clear();
        self.typematic = DEFAULT_TYPEMATIC;
        self.scan_set = DEFAULT_SCAN_SET;
    }

    fn reply(&mut self, bytes: &[u8]) {
        if REPLY_QUEUE_SIZE - self.replies.len() < bytes.len() {
            debug!("ps2-kbd: reply queue full, {bytes:02x?} dropped");
            return;
        }
        self.replies.extend(bytes);
    }
}

const PARAM_COMMANDS: [u8; 3] = [CMD_SET_LEDS, CMD_SCANCODE_SET, CMD_TYPEMATIC];

impl Snapshot for Ps2Keyboard {
    fn snapshot_id(&self) -> &'static str {
        "ps2-keyboard"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        let replies: Vec<u8> = self.replies.iter().copied().collect();
        let scancodes: Vec<u8> = self.scancodes.iter().copied().collect();
        w.var_bytes(&replies);
        w.var_bytes(&scancodes);
        w.opt_u8(self.awaiting);
        w.u8(self.scan_set);
        w.bool(self.scanning);
        w.u8(self.leds);
        w.u8(self.typematic);
        w.u8(self.last_sent);
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let replies = r.var_bytes(REPLY_QUEUE_SIZE)?;
        let scancodes = r.var_bytes(SCANCODE_QUEUE_SIZE)?;
        let awaiting = r.opt_u8()?;
        if let Some(awaiting) = awaiting
            && !PARAM_COMMANDS.contains(&awaiting)
        {
            return Err(SnapshotError::Invalid(format!(
                "ps2-keyboard awaits a parameter for {awaiting:#04x}"
            )));
        }
        let scan_set = r.u8()?;
        if !(1..=3).contains(&scan_set) {
            return Err(SnapshotError::Invalid(format!(
                "ps2-keyboard scan code set {scan_set}"
            )));
        }
        let scanning = r.bool()?;
        let leds = r.u8_below(8)?;
        let typematic = r.u8_below(0x80)?;
        let last_sent = r.u8()?;
        *self = Ps2Keyboard {
            replies: replies.into(),
            scancodes: scancodes.into(),
            awaiting,
            scan_set,
            scanning,
            leds,
            typematic,
            last_sent,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::snapshot::{check_round_trip, restore, save};

    fn drain(kbd: &mut Ps2Keyboard) -> Vec<u8> {
        std::iter::from_fn(|| kbd.read()).collect()
    }

    #[test]
    fn reset_acks_then_passes_bat_and_restores_defaults() {
        let mut kbd = Ps2Keyboard::new();
        kbd.write(0xF0);
        kbd.write(3);
        kbd.write(0xED);
        kbd.write(0x07);
        drain(&mut kbd);
        kbd.key_event(KeyCode::A, true);
        kbd.write(0xFF);
        assert_eq!(
            drain(&mut kbd),
            [0xFA, 0xAA],
            "reset clears queued scan codes"
        );
        assert_eq!(kbd.scan_set(), 2);
        assert_eq!(kbd.leds(), 0);
        assert!(kbd.scanning());
    }

    #[test]
    fn identify_answers_mf2() {
        let mut kbd = Ps2Keyboard::new();
        kbd.write(0xF2);
        assert_eq!(drain(&mut kbd), [0xFA, 0xAB, 0x83]);
    }

    /// Send bytes one at a time, reading the answers in between as a driver does.
    fn send(kbd: &mut Ps2Keyboard, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        for &b in bytes {
            kbd.write(b);
            out.extend(drain(kbd));
        }
        out
    }

    #[test]
    fn scan_code_set_get_and_set() {
        let mut kbd = Ps2Keyboard::new();
        assert_eq!(send(&mut kbd, &[0xF0, 0x00]), [0xFA, 0xFA, 2]);
        assert_eq!(send(&mut kbd, &[0xF0, 0x01]), [0xFA, 0xFA]);
        assert_eq!(kbd.scan_set(), 1);
        assert_eq!(
            send(&mut kbd, &[0xF0, 0x04]),
            [0xFA, 0xFE],
            "set 4 does not exist"
        );
        assert_eq!(kbd.scan_set(), 1);
    }

    #[test]
    fn leds_typematic_echo_and_unknown() {
        let mut kbd = Ps2Keyboard::new();
        assert_eq!(send(&mut kbd, &[0xED, 0x05]), [0xFA, 0xFA]);
        assert_eq!(kbd.leds(), 0x05);
        assert_eq!(send(&mut kbd, &[0xF3, 0x20]), [0xFA, 0xFA]);
        assert_eq!(kbd.typematic(), 0x20);
        assert_eq!(
            send(&mut kbd, &[0xF3, 0x80]),
            [0xFA, 0xFE],
            "typematic bit 7 must be 0"
        );
        assert_eq!(send(&mut kbd, &[0xEE]), [0xEE]);
        assert_eq!(send(&mut kbd, &[0x42]), [0xFE]);
    }

    #[test]
    fn a_new_byte_discards_unread_replies() {
        // As QEMU: the host has moved on, stale answers would only confuse it.
        let mut kbd = Ps2Keyboard::new();
        kbd.key_event(KeyCode::A, true);
        kbd.write(0xF2);
        kbd.write(0xEE);
        assert_eq!(drain(&mut kbd), [0xEE, 0x1C], "scan codes are kept");
    }

    #[test]
    fn a_command_in_place_of_a_parameter_runs_as_a_command() {
        let mut kbd = Ps2Keyboard::new();
        kbd.write(0xED);
        assert_eq!(drain(&mut kbd), [0xFA]);
        kbd.write(0xF2);
        assert_eq!(drain(&mut kbd), [0xFA, 0xAB, 0x83]);
        assert_eq!(kbd.leds(), 0);
    }

    #[test]
    fn resend_repeats_the_last_byte_sent() {
        let mut kbd = Ps2Keyboard::new();
        kbd.write(0xF2);
        drain(&mut kbd);
        kbd.write(0xFE);
        assert_eq!(drain(&mut kbd), [0x83]);
    }

    #[test]
    fn enable_disable_scanning() {
        let mut kbd = Ps2Keyboard::new();
        kbd.write(0xF5);
        assert_eq!(drain(&mut kbd), [0xFA]);
        kbd.key_event(KeyCode::A, true);
        assert!(!kbd.has_data(), "no scan codes while disabled");
        kbd.write(0xF4);
        assert_eq!(drain(&mut kbd), [0xFA]);
        kbd.key_event(KeyCode::A, true);
        assert_eq!(drain(&mut kbd), [0x1C]);
        assert_eq!(send(&mut kbd, &[0xF0, 3, 0xF3, 0x00, 0xED, 0x01]).len(), 6);
        kbd.key_event(KeyCode::B, true);
        kbd.write(0xF6);
        assert_eq!(drain(&mut kbd), [0xFA], "defaults clear the buffer");
        assert!(kbd.scanning());
        assert_eq!(kbd.scan_set(), 2);
        assert_eq!(kbd.typematic(), DEFAULT_TYPEMATIC);
        assert_eq!(kbd.leds(), 0x01, "LEDs are not a default");
        send(&mut kbd, &[0xF0, 1, 0xF5]);
        assert_eq!(kbd.scan_set(), 2);
        assert!(!kbd.scanning());
    }

    #[test]
    fn set2_make_break_with_prefixes() {
        let mut kbd = Ps2Keyboard::new();
        kbd.key_event(KeyCode::A, true);
        kbd.key_event(KeyCode::A, false);
        kbd.key_event(KeyCode::Right, true);
        kbd.key_event(KeyCode::Right, false);
        assert_eq!(
            drain(&mut kbd),
            [0x1C, 0xF0, 0x1C, 0xE0, 0x74, 0xE0, 0xF0, 0x74]
        );
    }

    #[test]
    fn set1_and_set3_codes() {
        let mut kbd = Ps2Keyboard::new();
        kbd.write(0xF0);
        kbd.write(1);
        drain(&mut kbd);
        kbd.key_event(KeyCode::A, true);
        kbd.key_event(KeyCode::A, false);
        kbd.key_event(KeyCode::Right, true);
        kbd.key_event(KeyCode::Right, false);
        assert_eq!(drain(&mut kbd), [0x1E, 0x9E, 0xE0, 0x4D, 0xE0, 0xCD]);
        kbd.write(0xF0);
        kbd.write(3);
        drain(&mut kbd);
        kbd.key_event(KeyCode::Right, true);
        kbd.key_event(KeyCode::Right, false);
        kbd.key_event(KeyCode::F1, true);
        assert_eq!(drain(&mut kbd), [0x6A, 0xF0, 0x6A, 0x07]);
    }

    #[test]
    fn set1_codes_of_well_known_keys() {
        // From the IBM PC/XT scan code chart.
        let known = [
            (KeyCode::Escape, (false, 0x01)),
            (KeyCode::Digit1, (false, 0x02)),
            (KeyCode::Digit0, (false, 0x0B)),
            (KeyCode::Backspace, (false, 0x0E)),
            (KeyCode::Tab, (false, 0x0F)),
            (KeyCode::Q, (false, 0x10)),
            (KeyCode::Enter, (false, 0x1C)),
            (KeyCode::LeftCtrl, (false, 0x1D)),
            (KeyCode::A, (false, 0x1E)),
            (KeyCode::LeftShift, (false, 0x2A)),
            (KeyCode::Z, (false, 0x2C)),
            (KeyCode::RightShift, (false, 0x36)),
            (KeyCode::LeftAlt, (false, 0x38)),
            (KeyCode::Space, (false, 0x39)),
            (KeyCode::CapsLock, (false, 0x3A)),
            (KeyCode::F1, (false, 0x3B)),
            (KeyCode::F7, (false, 0x41)),
            (KeyCode::F10, (false, 0x44)),
            (KeyCode::F11, (false, 0x57)),
            (KeyCode::F12, (false, 0x58)),
            (KeyCode::KeypadMultiply, (false, 0x37)),
            (KeyCode::Up, (true, 0x48)),
            (KeyCode::Left, (true, 0x4B)),
            (KeyCode::Right, (true, 0x4D)),
            (KeyCode::Down, (true, 0x50)),
            (KeyCode::RightCtrl, (true, 0x1D)),
            (KeyCode::RightAlt, (true, 0x38)),
            (KeyCode::Delete, (true, 0x53)),
            (KeyCode::KeypadDivide, (true, 0x35)),
            (KeyCode::KeypadEnter, (true, 0x1C)),
            (KeyCode::LeftMeta, (true, 0x5B)),
        ];
        for (key, set1) in known {
            assert_eq!(key.set1(), set1, "{key:?}");
        }
    }

    #[test]
    fn codes_are_unique_within_each_set() {
        let mut set2: Vec<_> = KeyCode::ALL.iter().map(|k| k.set2()).collect();
        let mut set3: Vec<_> = KeyCode::ALL.iter().map(|k| k.set3()).collect();
        set2.sort_unstable();
        set2.dedup();
        set3.sort_unstable();
        set3.dedup();
        assert_eq!(set2.len(), KeyCode::ALL.len());
        assert_eq!(set3.len(), KeyCode::ALL.len());
    }

    #[test]
    fn translation_table_spot_checks() {
        assert_eq!(translate_to_set1(0x1C), 0x1E);
        assert_eq!(translate_to_set1(0x76), 0x01);
        assert_eq!(translate_to_set1(0x83), 0x41);
        assert_eq!(
            translate_to_set1(0x00),
            0xFF,
            "overrun becomes set 1 overrun"
        );
        assert_eq!(translate_to_set1(0xFA), 0xFA);
        assert_eq!(translate_to_set1(0xE0), 0xE0);
        // The translation of 0x00-0x7F is one-to-one.
        let mut seen: Vec<u8> = (0..0x80).map(translate_to_set1).collect();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(seen.len(), 0x80);
    }

    #[test]
    fn queue_is_bounded_and_keeps_sequences_whole() {
        let mut kbd = Ps2Keyboard::new();
        for _ in 0..20 {
            kbd.key_event(KeyCode::A, true);
        }
        assert_eq!(kbd.pending(), SCANCODE_QUEUE_SIZE);
        let mut kbd = Ps2Keyboard::new();
        for _ in 0..5 {
            kbd.key_event(KeyCode::Right, false); // 3 bytes each
        }
        kbd.key_event(KeyCode::Right, false);
        assert_eq!(
            kbd.pending(),
            15,
            "a sequence that does not fit is dropped whole"
        );
        kbd.key_event(KeyCode::A, true);
        assert_eq!(kbd.pending(), 16);
    }

    #[test]
    fn replies_go_ahead_of_scan_codes() {
        let mut kbd = Ps2Keyboard::new();
        kbd.key_event(KeyCode::A, true);
        kbd.write(0xEE);
        assert_eq!(drain(&mut kbd), [0xEE, 0x1C]);
    }

    #[test]
    fn any_byte_sequence_keeps_queues_bounded() {
        let mut kbd = Ps2Keyboard::new();
        for a in 0..=255u8 {
            for b in [0x00, 0x01, 0x03, 0x7F, 0x80, 0xED, 0xF0, 0xFE, 0xFF] {
                kbd.write(a);
                kbd.write(b);
                kbd.key_event(KeyCode::Up, true);
                assert!(kbd.replies.len() <= REPLY_QUEUE_SIZE);
                assert!(kbd.scancodes.len() <= SCANCODE_QUEUE_SIZE);
            }
        }
    }

    #[test]
    fn snapshot_round_trip() {
        let mut kbd = Ps2Keyboard::new();
        send(&mut kbd, &[0xF0, 3]);
        kbd.key_event(KeyCode::Right, true);
        kbd.write(0xED); // ACK unread, waiting for the LED byte
        check_round_trip(&kbd, &mut Ps2Keyboard::new()).unwrap();
        let mut copy = Ps2Keyboard::new();
        restore(&mut copy, &save(&kbd)).unwrap();
        assert_eq!(drain(&mut copy), [0xFA, 0x6A]);
        assert_eq!(send(&mut copy, &[0x02]), [0xFA]);
        assert_eq!(copy.leds(), 0x02);
        assert_eq!(copy.scan_set(), 3);
    }
}
