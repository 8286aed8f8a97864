//! The text screen as a human or a test reads it: characters (code page 437 mapped to Unicode),
//! attributes and the cursor, as the CRTC lays them out; and a one-line summary of the mode.

use std::fmt;

/// Code page 437, the VGA's ROM font, as Unicode. The control range 0x00-0x1F shows the glyphs
/// the font draws for it (smileys, card suits, arrows), as a real screen does; 0x00 and 0xFF
/// are blank cells.
const CP437_LOW: [char; 32] = [
    ' ', '☺', '☻', '♥', '♦', '♣', '♠', '•', '◘', '○', '◙', '♂', '♀', '♪', '♫', '☼', //
    '►', '◄', '↕', '‼', '¶', '§', '▬', '↨', '↑', '↓', '→', '←', '∟', '↔', '▲', '▼',
];

const CP437_HIGH: [char; 128] = [
    'Ç', 'ü', 'é', 'â', 'ä', 'à', 'å', 'ç', 'ê', 'ë', 'è', 'ï', 'î', 'ì', 'Ä', 'Å', //
    'É', 'æ', 'Æ', 'ô', 'ö', 'ò', 'û', 'ù', 'ÿ', 'Ö', 'Ü', '¢', '£', '¥', '₧', 'ƒ', //
    'á', 'í', 'ó', 'ú', 'ñ', 'Ñ', 'ª', 'º', '¿', '⌐', '¬', '½', '¼', '¡', '«', '»', //
    '░', '▒', '▓', '│', '┤', '╡', '╢', '╖', '╕', '╣', '║', '╗', '╝', '╜', '╛', '┐', //
    '└', '┴', '┬', '├', '─', '┼', '╞', '╟', '╚', '╔', '╩', '╦', '╠', '═', '╬', '╧', //
    '╨', '╤', '╥', '╙', '╘', '╒', '╓', '╫', '╪', '┘', '┌', '█', '▄', '▌', '▐', '▀', //
    'α', 'ß', 'Γ', 'π', 'Σ', 'σ', 'µ', 'τ', 'Φ', 'Θ', 'Ω', 'δ', '∞', 'φ', 'ε', '∩', //
    '≡', '±', '≥', '≤', '⌠', '⌡', '÷', '≈', '°', '∙', '·', '√', 'ⁿ', '²', '■', '\u{A0}',
];

/// The Unicode character the VGA's default font shows for byte `code`.
pub fn cp437_to_char(code: u8) -> char {
    match code {
        0x00..=0x1F => CP437_LOW[usize::from(code)],
        0x7F => '⌂',
        0x20..=0x7E => char::from(code),
        _ => CP437_HIGH[usize::from(code - 0x80)],
    }
}

/// One character cell.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TextCell {
    /// The byte in plane 0 (the character code).
    pub code: u8,
    /// `code` through code page 437.
    pub ch: char,
    /// The byte in plane 1: foreground in bits 3:0, background in 6:4, blink (or bright
    /// background) in bit 7.
    pub attr: u8,
}

/// The hardware cursor, when it is enabled and on the screen.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cursor {
    pub col: u16,
    pub row: u16,
    /// First and last scan line of the cursor within the cell (CRTC 0x0A, 0x0B).
    pub start_line: u8,
    pub end_line: u8,
}

/// The visible text screen, row-major.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TextScreen {
    pub cols: u16,
    pub rows: u16,
    pub cells: Vec<TextCell>,
    pub cursor: Option<Cursor>,
}

impl TextScreen {
    pub fn cell(&self, col: u16, row: u16) -> Option<&TextCell> {
        if col >= self.cols || row >= self.rows {
            return None;
        }
        self.cells
            .get(usize::from(row) * usize::from(self.cols) + usize::from(col))
    }

    /// Row `row` as a string, trailing blanks removed.
    pub fn row_text(&self, row: u16) -> String {
        if row >= self.rows {
            return String::new();
        }
        let cols = usize::from(self.cols);
        let start = usize::from(row) * cols;
        let line: String = self
            .cells
            .get(start..start + cols)
            .unwrap_or_default()
            .iter()
            .map(|c| c.ch)
            .collect();
        line.trim_end_matches([' ', '\u{A0}']).to_string()
    }

    /// Every row, trailing blanks removed.
    pub fn lines(&self) -> Vec<String> {
        (0..self.rows).map(|r| self.row_text(r)).collect()
    }
}

impl fmt::Display for TextScreen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for line in self.lines() {
            writeln!(f, "{line}")?;
        }
        Ok(())
    }
}

/// What the adapter displays, in a word.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DisplayMode {
    /// Alphanumeric mode: `cols` x `rows` cells of `char_width` x `char_height` pixels.
    Text {
        cols: u16,
        rows: u16,
        char_width: u8,
        char_height: u8,
    },
    /// A VGA graphics mode: `bpp` 2 (CGA-style 4 colours), 4 (planar, 16 colours) or
    /// 8 (256 colours).
    Graphics { width: u16, height: u16, bpp: u8 },
    /// A Bochs VBE mode set through the DISPI registers.
    Vbe { width: u16, height: u16, bpp: u16 },
}

impl fmt::Display for DisplayMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            DisplayMode::Text { cols, rows, .. } => write!(f, "text {cols}x{rows}"),
            DisplayMode::Graphics { width, height, bpp } => {
                write!(f, "VGA graphics {width}x{height}x{bpp}")
            }
            DisplayMode::Vbe { width, height, bpp } => write!(f, "VBE {width}x{height}x{bpp}"),
        }
    }
}

/// QEMU draws nothing for text screens larger than this (a transient mid-mode-set state).
pub(super) const MAX_TEXT_CELLS: usize = 160 * 100;

/// The CRTC's view of a text screen, from the registers.
pub(super) struct TextLayout {
    pub cols: u16,
    pub rows: u16,
    pub char_width: u8,
    pub char_height: u8,
    /// Cells from the start of one row to the next.
    pub stride: u32,
    /// The cell shown at the top left.
    pub start: u32,
}

/// Decode the text geometry from the CRTC registers and sequencer clocking mode.
pub(super) fn layout(cr: &[u8; 256], clocking_mode: u8) -> TextLayout {
    let char_height = (cr[0x09] & 0x1F) + 1;
    let char_width = if clocking_mode & 0x08 != 0 {
        // Half dot clock: every dot is doubled (QEMU draws 16, not 18).
        16
    } else if clocking_mode & 0x01 != 0 {
        8
    } else {
        9
    };
    let cols = u16::from(cr[0x01]) + 1;
    let rows = (vertical_display_end(cr) + 1) / u16::from(char_height);
    TextLayout {
        cols,
        rows,
        char_width,
        char_height,
        stride: u32::from(cr[0x13]) * 2,
        start: u32::from(cr[0x0C]) << 8 | u32::from(cr[0x0D]),
    }
}

/// The last displayed scan line (CRTC 0x12 with bits 8 and 9 from the overflow register).
pub(super) fn vertical_display_end(cr: &[u8; 256]) -> u16 {
    u16::from(cr[0x12]) | u16::from(cr[0x07] & 0x02) << 7 | u16::from(cr[0x07] & 0x40) << 3
}

/// The text screen for `layout`, reading cell `n` (counted from video memory address 0)
/// through `cell`.
pub(super) fn screen(
    layout: &TextLayout,
    cr: &[u8; 256],
    cell: impl Fn(u32) -> (u8, u8),
) -> Option<TextScreen> {
    let count = usize::from(layout.cols) * usize::from(layout.rows);
    if count <= 1 || count > MAX_TEXT_CELLS {
        return None;
    }
    let mut cells = Vec::with_capacity(count);
    for row in 0..u32::from(layout.rows) {
        let line = layout.start.wrapping_add(row.wrapping_mul(layout.stride));
        for col in 0..u32::from(layout.cols) {
            let (code, attr) = cell(line.wrapping_add(col));
            cells.push(TextCell {
                code,
                ch: cp437_to_char(code),
                attr,
            });
        }
    }
    let location = u32::from(cr[0x0E]) << 8 | u32::from(cr[0x0F]);
    let cursor_disabled = cr[0x0A] & 0x20 != 0;
    let cursor = location
        .checked_sub(layout.start)
        .filter(|_| !cursor_disabled && layout.stride > 0)
        .and_then(|rel| {
            let row = rel / layout.stride;
            let col = rel % layout.stride;
            (row < u32::from(layout.rows) && col < u32::from(layout.cols)).then(|| Cursor {
                col: col as u16,
                row: row as u16,
                start_line: cr[0x0A] & 0x1F,
                end_line: cr[0x0B] & 0x1F,
            })
        });
    Some(TextScreen {
        cols: layout.cols,
        rows: layout.rows,
        cells,
        cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_page_437_mapping() {
        assert_eq!(cp437_to_char(b'A'), 'A');
        assert_eq!(cp437_to_char(0x01), '☺');
        assert_eq!(cp437_to_char(0x7F), '⌂');
        assert_eq!(cp437_to_char(0x80), 'Ç');
        assert_eq!(cp437_to_char(0xB3), '│');
        assert_eq!(cp437_to_char(0xC9), '╔');
        assert_eq!(cp437_to_char(0xDB), '█');
        assert_eq!(cp437_to_char(0xE1), 'ß');
        assert_eq!(cp437_to_char(0xFE), '■');
        let all: std::collections::HashSet<char> = (0..=255u8).map(cp437_to_char).collect();
        assert_eq!(all.len(), 255, "only 0x00 and 0x20 share a glyph (blank)");
    }

    #[test]
    fn mode_summaries_read_well() {
        let t = DisplayMode::Text {
            cols: 80,
            rows: 25,
            char_width: 9,
            char_height: 16,
        };
        assert_eq!(t.to_string(), "text 80x25");
        let v = DisplayMode::Vbe {
            width: 1024,
            height: 768,
            bpp: 32,
        };
        assert_eq!(v.to_string(), "VBE 1024x768x32");
    }
}
