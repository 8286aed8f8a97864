//! `-display curses`: the VGA's text screen drawn on the terminal with ANSI escape sequences,
//! and the terminal's keystrokes typed on the PS/2 keyboard — QEMU's curses display without
//! the curses library (every terminal we care about speaks these sequences).
//!
//! Only rows that changed since the last frame are sent, so an idle screen costs nothing.
//! Graphics modes are named on one line instead of drawn.

use std::time::{Duration, Instant};

use devices::chardev::CharSink;
use devices::display::text::{DisplayMode, TextScreen};
use devices::display::vga::Vga;
use devices::input::ps2_keyboard::KeyCode;

/// How often the screen is compared with what the terminal shows (QEMU refreshes its text
/// consoles at 30 Hz).
pub const REFRESH: Duration = Duration::from_millis(33);

/// VGA colour index (blue in bit 0, green 1, red 2) to the ANSI index (red in bit 0).
const VGA_TO_ANSI: [u8; 8] = [0, 4, 2, 6, 1, 5, 3, 7];

#[derive(Clone, PartialEq)]
enum Frame {
    Text(TextScreen),
    /// A mode this display does not draw, as the line shown instead.
    Notice(String),
}

pub struct CursesDisplay {
    out: Box<dyn CharSink>,
    shown: Option<Frame>,
    next_refresh: Instant,
}

impl CursesDisplay {
    /// Takes over the terminal behind `out` (the alternate screen, so the user's scrollback
    /// is untouched and restored when Vireo exits).
    pub fn new(mut out: Box<dyn CharSink>) -> CursesDisplay {
        out.write(b"\x1b[?1049h\x1b[2J\x1b[H");
        CursesDisplay {
            out,
            shown: None,
            next_refresh: Instant::now(),
        }
    }

    /// Redraws what changed if a refresh is due.
    pub fn tick(&mut self, vga: &Vga) {
        let now = Instant::now();
        if now < self.next_refresh {
            return;
        }
        self.next_refresh = now + REFRESH;
        let frame = match vga.mode() {
            DisplayMode::Text { .. } => match vga.text_screen() {
                Some(screen) => Frame::Text(screen),
                None => Frame::Notice("[text mode with no screen]".into()),
            },
            DisplayMode::Graphics { width, height, bpp } => Frame::Notice(format!(
                "[VGA graphics {width}x{height}, {bpp} bpp: not shown by -display curses]"
            )),
            DisplayMode::Vbe { width, height, bpp } => Frame::Notice(format!(
                "[VBE graphics {width}x{height}, {bpp} bpp: not shown by -display curses]"
            )),
            #[allow(unreachable_patterns)] // modes added later fall back to a notice
            other => Frame::Notice(format!("[{other:?}]")),
        };
        if self.shown.as_ref() == Some(&frame) {
            return;
        }
        let bytes = render(self.shown.as_ref(), &frame);
        self.out.write(&bytes);
        self.shown = Some(frame);
    }
}

impl Drop for CursesDisplay {
    fn drop(&mut self) {
        // Attributes off, cursor visible, back to the user's screen.
        self.out.write(b"\x1b[0m\x1b[?25h\x1b[?1049l");
    }
}

/// The escape sequences that turn the terminal from `old` into `new`.
fn render(old: Option<&Frame>, new: &Frame) -> Vec<u8> {
    let mut out = Vec::new();
    match new {
        Frame::Notice(text) => {
            out.extend_from_slice(b"\x1b[0m\x1b[2J\x1b[H\x1b[?25l");
            out.extend_from_slice(text.as_bytes());
        }
        Frame::Text(screen) => {
            let old = match old {
                Some(Frame::Text(o)) if o.cols == screen.cols && o.rows == screen.rows => Some(o),
                _ => {
                    out.extend_from_slice(b"\x1b[0m\x1b[2J");
                    None
                }
            };
            let cols = usize::from(screen.cols);
            out.extend_from_slice(b"\x1b[?25l");
            for (row, cells) in screen.cells.chunks(cols.max(1)).enumerate() {
                let unchanged =
                    old.is_some_and(|o| o.cells.get(row * cols..(row + 1) * cols) == Some(cells));
                if unchanged {
                    continue;
                }
                out.extend_from_slice(format!("\x1b[{};1H", row + 1).as_bytes());
                let mut attr = None;
                for cell in cells {
                    if attr != Some(cell.attr) {
                        attr = Some(cell.attr);
                        out.extend_from_slice(sgr(cell.attr).as_bytes());
                    }
                    let mut utf8 = [0u8; 4];
                    out.extend_from_slice(cell.ch.encode_utf8(&mut utf8).as_bytes());
                }
                out.extend_from_slice(b"\x1b[0m");
            }
            if let Some(c) = screen.cursor {
                out.extend_from_slice(
                    format!("\x1b[{};{}H\x1b[?25h", c.row + 1, c.col + 1).as_bytes(),
                );
            }
        }
    }
    out
}

/// The SGR sequence for a VGA attribute byte: foreground in bits 3:0 (bit 3 bright),
/// background in 6:4; bit 7 (blink) is shown as is by neither.
fn sgr(attr: u8) -> String {
    let fg = VGA_TO_ANSI[usize::from(attr & 7)];
    let bg = VGA_TO_ANSI[usize::from((attr >> 4) & 7)];
    let fg_base = if attr & 8 != 0 { 90 } else { 30 };
    format!("\x1b[0;{};{}m", fg_base + fg, 40 + bg)
}

/// One key stroke for the guest's keyboard: the key and the modifiers held around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Keystroke {
    pub key: KeyCode,
    pub shift: bool,
    pub ctrl: bool,
}

impl Keystroke {
    fn plain(key: KeyCode) -> Self {
        Keystroke {
            key,
            shift: false,
            ctrl: false,
        }
    }
    fn shifted(key: KeyCode) -> Self {
        Keystroke {
            key,
            shift: true,
            ctrl: false,
        }
    }

    /// The make/break sequence a typist produces, modifiers first and released last.
    pub fn events(&self) -> Vec<(KeyCode, bool)> {
        let mut ev = Vec::with_capacity(6);
        if self.ctrl {
            ev.push((KeyCode::LeftCtrl, true));
        }
        if self.shift {
            ev.push((KeyCode::LeftShift, true));
        }
        ev.push((self.key, true));
        ev.push((self.key, false));
        if self.shift {
            ev.push((KeyCode::LeftShift, false));
        }
        if self.ctrl {
            ev.push((KeyCode::LeftCtrl, false));
        }
        ev
    }
}

/// Turns the bytes a terminal sends (US layout, xterm/VT100 escape sequences) into
/// keystrokes.
#[derive(Default)]
pub struct KeyDecoder {
    pending: Vec<u8>,
}

impl KeyDecoder {
    /// Feeds one byte; returns the keystrokes it completes (none while inside an escape
    /// sequence). Bytes that map to no key are dropped.
    pub fn feed(&mut self, byte: u8) -> Vec<Keystroke> {
        if self.pending.is_empty() {
            if byte == 0x1B {
                self.pending.push(byte);
                return Vec::new();
            }
            return ascii_key(byte).into_iter().collect();
        }
        self.pending.push(byte);
        let seq = self.pending.clone();
        match escape_key(&seq) {
            EscapeSeq::Key(k) => {
                self.pending.clear();
                vec![Keystroke::plain(k)]
            }
            EscapeSeq::More if seq.len() < 8 => Vec::new(),
            _ => {
                // Not a sequence we know: the Escape key, then the bytes as typed.
                self.pending.clear();
                let mut keys = vec![Keystroke::plain(KeyCode::Escape)];
                for &b in &seq[1..] {
                    keys.extend(self.feed(b));
                }
                keys
            }
        }
    }

    /// A lone Escape that no sequence followed (called when input goes quiet).
    pub fn flush(&mut self) -> Vec<Keystroke> {
        let seq = std::mem::take(&mut self.pending);
        if seq.is_empty() {
            return Vec::new();
        }
        let mut keys = vec![Keystroke::plain(KeyCode::Escape)];
        for &b in &seq[1..] {
            keys.extend(self.feed(b));
        }
        keys
    }
}

enum EscapeSeq {
    Key(KeyCode),
    More,
    Unknown,
}

fn escape_key(seq: &[u8]) -> EscapeSeq {
    use KeyCode::*;
    match seq {
        [0x1B] | [0x1B, b'['] | [0x1B, b'O'] => EscapeSeq::More,
        [0x1B, b'[' | b'O', b'A'] => EscapeSeq::Key(Up),
        [0x1B, b'[' | b'O', b'B'] => EscapeSeq::Key(Down),
        [0x1B, b'[' | b'O', b'C'] => EscapeSeq::Key(Right),
        [0x1B, b'[' | b'O', b'D'] => EscapeSeq::Key(Left),
        [0x1B, b'[' | b'O', b'H'] => EscapeSeq::Key(Home),
        [0x1B, b'[' | b'O', b'F'] => EscapeSeq::Key(End),
        [0x1B, b'O', b'P'] => EscapeSeq::Key(F1),
        [0x1B, b'O', b'Q'] => EscapeSeq::Key(F2),
        [0x1B, b'O', b'R'] => EscapeSeq::Key(F3),
        [0x1B, b'O', b'S'] => EscapeSeq::Key(F4),
        [0x1B, b'[', rest @ ..] => match rest.split_last() {
            Some((b'~', digits)) => match digits {
                b"1" | b"7" => EscapeSeq::Key(Home),
                b"2" => EscapeSeq::Key(Insert),
                b"3" => EscapeSeq::Key(Delete),
                b"4" | b"8" => EscapeSeq::Key(End),
                b"5" => EscapeSeq::Key(PageUp),
                b"6" => EscapeSeq::Key(PageDown),
                b"15" => EscapeSeq::Key(F5),
                b"17" => EscapeSeq::Key(F6),
                b"18" => EscapeSeq::Key(F7),
                b"19" => EscapeSeq::Key(F8),
                b"20" => EscapeSeq::Key(F9),
                b"21" => EscapeSeq::Key(F10),
                b"23" => EscapeSeq::Key(F11),
                b"24" => EscapeSeq::Key(F12),
                _ => EscapeSeq::Unknown,
            },
            Some((last, _)) if last.is_ascii_digit() || *last == b';' => EscapeSeq::More,
            _ => EscapeSeq::Unknown,
        },
        _ => EscapeSeq::Unknown,
    }
}

/// The key (and Shift/Ctrl) that types `byte` on a US keyboard.
fn ascii_key(byte: u8) -> Option<Keystroke> {
    use KeyCode::*;
    const LETTERS: [KeyCode; 26] = [
        A, B, C, D, E, F, G, H, I, J, K, L, M, N, O, P, Q, R, S, T, U, V, W, X, Y, Z,
    ];
    const DIGITS: [KeyCode; 10] = [
        Digit0, Digit1, Digit2, Digit3, Digit4, Digit5, Digit6, Digit7, Digit8, Digit9,
    ];
    // The shifted row above the digits, in digit order 0..9.
    const SHIFTED_DIGITS: &[u8; 10] = b")!@#$%^&*(";
    let plain = Keystroke::plain;
    let shifted = Keystroke::shifted;
    Some(match byte {
        b'a'..=b'z' => plain(LETTERS[usize::from(byte - b'a')]),
        b'A'..=b'Z' => shifted(LETTERS[usize::from(byte - b'A')]),
        b'0'..=b'9' => plain(DIGITS[usize::from(byte - b'0')]),
        b'\r' | b'\n' => plain(Enter),
        b'\t' => plain(Tab),
        0x7F | 0x08 => plain(Backspace),
        b' ' => plain(Space),
        b'-' => plain(Minus),
        b'_' => shifted(Minus),
        b'=' => plain(Equal),
        b'+' => shifted(Equal),
        b'[' => plain(LeftBracket),
        b'{' => shifted(LeftBracket),
        b']' => plain(RightBracket),
        b'}' => shifted(RightBracket),
        b'\\' => plain(Backslash),
        b'|' => shifted(Backslash),
        b';' => plain(Semicolon),
        b':' => shifted(Semicolon),
        b'\'' => plain(Apostrophe),
        b'"' => shifted(Apostrophe),
        b'`' => plain(Grave),
        b'~' => shifted(Grave),
        b',' => plain(Comma),
        b'<' => shifted(Comma),
        b'.' => plain(Period),
        b'>' => shifted(Period),
        b'/' => plain(Slash),
        b'?' => shifted(Slash),
        0x01..=0x1A => Keystroke {
            key: LETTERS[usize::from(byte - 1)],
            shift: false,
            ctrl: true,
        },
        _ => match SHIFTED_DIGITS.iter().position(|&c| c == byte) {
            Some(d) => shifted(DIGITS[d]),
            None => return None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use devices::display::text::TextCell;

    fn typed(bytes: &[u8]) -> Vec<Keystroke> {
        let mut d = KeyDecoder::default();
        let mut keys: Vec<Keystroke> = bytes.iter().flat_map(|&b| d.feed(b)).collect();
        keys.extend(d.flush());
        keys
    }

    #[test]
    fn printable_ascii_maps_to_us_keys_with_shift() {
        let keys = typed(b"aZ5%_\"\n");
        let want = [
            (KeyCode::A, false),
            (KeyCode::Z, true),
            (KeyCode::Digit5, false),
            (KeyCode::Digit5, true),
            (KeyCode::Minus, true),
            (KeyCode::Apostrophe, true),
            (KeyCode::Enter, false),
        ];
        assert_eq!(keys.len(), want.len());
        for (k, (key, shift)) in keys.iter().zip(want) {
            assert_eq!((k.key, k.shift, k.ctrl), (key, shift, false));
        }
        // Every printable ASCII character types something.
        assert!(
            (0x20u8..0x7F).all(|b| ascii_key(b).is_some()),
            "a printable byte has no key"
        );
    }

    #[test]
    fn control_bytes_and_escape_sequences() {
        let keys = typed(b"\x03\x1b[A\x1b[3~\x1bOP\x1b[15~");
        let got: Vec<(KeyCode, bool)> = keys.iter().map(|k| (k.key, k.ctrl)).collect();
        assert_eq!(
            got,
            [
                (KeyCode::C, true),
                (KeyCode::Up, false),
                (KeyCode::Delete, false),
                (KeyCode::F1, false),
                (KeyCode::F5, false),
            ]
        );
        // A lone Escape, and an unknown sequence, still reach the guest as typed.
        let keys = typed(b"\x1b");
        assert_eq!(keys, [Keystroke::plain(KeyCode::Escape)]);
        let keys: Vec<KeyCode> = typed(b"\x1bx").iter().map(|k| k.key).collect();
        assert_eq!(keys, [KeyCode::Escape, KeyCode::X]);
    }

    #[test]
    fn keystroke_holds_modifiers_around_the_key() {
        let k = Keystroke {
            key: KeyCode::C,
            shift: true,
            ctrl: true,
        };
        assert_eq!(
            k.events(),
            [
                (KeyCode::LeftCtrl, true),
                (KeyCode::LeftShift, true),
                (KeyCode::C, true),
                (KeyCode::C, false),
                (KeyCode::LeftShift, false),
                (KeyCode::LeftCtrl, false),
            ]
        );
    }

    fn screen(text: &str, attr: u8) -> TextScreen {
        let cells = text
            .bytes()
            .map(|b| TextCell {
                code: b,
                ch: char::from(b),
                attr,
            })
            .collect();
        TextScreen {
            cols: 4,
            rows: 2,
            cells,
            cursor: None,
        }
    }

    #[test]
    fn only_changed_rows_are_redrawn_in_vga_colours() {
        let first = Frame::Text(screen("ab  cd  ", 0x1F)); // bright white on blue
        let bytes = String::from_utf8(render(None, &first)).unwrap();
        assert!(bytes.contains("\x1b[2J"), "{bytes:?}");
        assert!(bytes.contains("\x1b[0;97;44mab  "), "{bytes:?}");
        assert!(bytes.contains("\x1b[2;1H"), "{bytes:?}");

        let second = Frame::Text(screen("ab  xy  ", 0x1F));
        let bytes = String::from_utf8(render(Some(&first), &second)).unwrap();
        assert!(
            !bytes.contains("\x1b[2J") && !bytes.contains("\x1b[1;1H"),
            "{bytes:?}"
        );
        assert!(
            bytes.contains("\x1b[2;1H") && bytes.contains("xy  "),
            "{bytes:?}"
        );
    }
}
