//! The Bochs VBE "DISPI" interface of QEMU's standard VGA: a small register file that sets a
//! linear (or banked) graphics mode directly, bypassing the VGA CRTC timing registers.
//!
//! Registers are 16 bits, reached through an index port (0x1CE) and a data port (0x1CF), or
//! flat in the MMIO BAR at `0x500 + 2 * index`. The values are sanitised on every write the way
//! QEMU does it (the interface has no way to report an error, so impossible settings are
//! adjusted to the nearest valid one), which also guarantees that the visible area
//! `start + YRES * line length` always lies inside the video memory.
//!
//! This file holds the register file and its rules; the effects on the VGA registers (graphics
//! mode, memory map 1, chain-4) and on video memory are applied by [`super::vga::Vga`].

use crate::snapshot::{SnapshotError, StateReader, StateWriter};

/// The index port; the data port follows it.
pub const DISPI_INDEX_PORT: u16 = 0x1CE;
pub const DISPI_DATA_PORT: u16 = 0x1CF;

pub const INDEX_ID: u16 = 0x0;
pub const INDEX_XRES: u16 = 0x1;
pub const INDEX_YRES: u16 = 0x2;
pub const INDEX_BPP: u16 = 0x3;
pub const INDEX_ENABLE: u16 = 0x4;
pub const INDEX_BANK: u16 = 0x5;
pub const INDEX_VIRT_WIDTH: u16 = 0x6;
pub const INDEX_VIRT_HEIGHT: u16 = 0x7;
pub const INDEX_X_OFFSET: u16 = 0x8;
pub const INDEX_Y_OFFSET: u16 = 0x9;
/// Read-only: the video memory size in 64 KiB units. Also the number of stored registers.
pub const INDEX_VIDEO_MEMORY_64K: u16 = 0xA;
const NUM_REGS: usize = INDEX_VIDEO_MEMORY_64K as usize;

/// The interface versions a guest may select by writing ID; reads return the one selected.
pub const ID0: u16 = 0xB0C0;
pub const ID5: u16 = 0xB0C5;

/// ENABLE register bits.
pub const ENABLED: u16 = 0x01;
/// While set, XRES/YRES/BPP read back the maxima instead of the programmed values.
pub const GETCAPS: u16 = 0x02;
/// The DAC takes 8-bit colour components instead of 6-bit ones.
pub const DAC_8BIT: u16 = 0x20;
/// Informational for the guest (the linear framebuffer is always decoded through BAR 0).
pub const LFB_ENABLED: u16 = 0x40;
/// Do not clear the visible area when the mode is enabled.
pub const NOCLEARMEM: u16 = 0x80;

/// The limits QEMU reports through GETCAPS.
pub const MAX_XRES: u16 = 16000;
pub const MAX_YRES: u16 = 12000;
pub const MAX_BPP: u16 = 32;

/// The DISPI register file and the framebuffer geometry derived from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Dispi {
    pub(super) index: u16,
    pub(super) regs: [u16; NUM_REGS],
    /// Where the 64 KiB window at 0xA0000 starts in video memory (memory map mode 1).
    pub(super) bank_offset: u32,
    /// Bytes per scan line of the virtual screen.
    pub(super) line_offset: u32,
    /// Byte offset of the first visible pixel (dword aligned).
    pub(super) start: u32,
    vram_size: u32,
}

impl Dispi {
    pub(super) fn new(vram_size: u32) -> Dispi {
        let mut d = Dispi {
            index: 0,
            regs: [0; NUM_REGS],
            bank_offset: 0,
            line_offset: 0,
            start: 0,
            vram_size,
        };
        d.reset();
        d
    }

    /// QEMU's reset: everything zero (disabled) except the ID, which reports the newest version.
    pub(super) fn reset(&mut self) {
        self.index = 0;
        self.regs = [0; NUM_REGS];
        self.regs[usize::from(INDEX_ID)] = ID5;
        self.bank_offset = 0;
        self.line_offset = 0;
        self.start = 0;
    }

    pub(super) fn reg(&self, index: u16) -> u16 {
        self.regs.get(usize::from(index)).copied().unwrap_or(0)
    }

    fn set_reg(&mut self, index: u16, value: u16) {
        if let Some(r) = self.regs.get_mut(usize::from(index)) {
            *r = value;
        }
    }

    pub fn enabled(&self) -> bool {
        self.reg(INDEX_ENABLE) & ENABLED != 0
    }

    pub fn dac_8bit(&self) -> bool {
        self.reg(INDEX_ENABLE) & DAC_8BIT != 0
    }

    pub fn xres(&self) -> u16 {
        self.reg(INDEX_XRES)
    }

    pub fn yres(&self) -> u16 {
        self.reg(INDEX_YRES)
    }

    pub fn bpp(&self) -> u16 {
        self.reg(INDEX_BPP)
    }

    /// The mask a BANK write goes through: one bank per 64 KiB of video memory.
    fn bank_mask(&self) -> u16 {
        u16::try_from((self.vram_size >> 16).saturating_sub(1)).unwrap_or(u16::MAX)
    }

    /// A read of the data register at the current index.
    pub(super) fn read_data(&self) -> u16 {
        self.read_index(self.index)
    }

    pub(super) fn read_index(&self, index: u16) -> u16 {
        if index < INDEX_VIDEO_MEMORY_64K {
            if self.reg(INDEX_ENABLE) & GETCAPS != 0 {
                match index {
                    INDEX_XRES => return MAX_XRES,
                    INDEX_YRES => return MAX_YRES,
                    INDEX_BPP => return MAX_BPP,
                    _ => {}
                }
            }
            self.reg(index)
        } else if index == INDEX_VIDEO_MEMORY_64K {
            u16::try_from(self.vram_size >> 16).unwrap_or(u16::MAX)
        } else {
            0
        }
    }

    /// A write of the data register at `index`. Returns what the VGA side must do.
    pub(super) fn write_index(&mut self, index: u16, value: u16) -> DispiEffect {
        match index {
            INDEX_ID => {
                if (ID0..=ID5).contains(&value) {
                    self.set_reg(INDEX_ID, value);
                }
                DispiEffect::None
            }
            INDEX_XRES | INDEX_YRES | INDEX_BPP | INDEX_VIRT_WIDTH | INDEX_X_OFFSET
            | INDEX_Y_OFFSET => {
                self.set_reg(index, value);
                self.fixup();
                DispiEffect::Geometry
            }
            INDEX_BANK => {
                let bank = value & self.bank_mask();
                self.set_reg(INDEX_BANK, bank);
                self.bank_offset = u32::from(bank) << 16;
                DispiEffect::None
            }
            INDEX_ENABLE => {
                let mut effect = DispiEffect::None;
                if value & ENABLED != 0 && !self.enabled() {
                    // Enabling starts from an unpanned screen as wide as the mode.
                    self.set_reg(INDEX_VIRT_WIDTH, 0);
                    self.set_reg(INDEX_X_OFFSET, 0);
                    self.set_reg(INDEX_Y_OFFSET, 0);
                    let enable = self.reg(INDEX_ENABLE) | ENABLED;
                    self.set_reg(INDEX_ENABLE, enable);
                    self.fixup();
                    effect = DispiEffect::Enabled {
                        clear_bytes: if value & NOCLEARMEM == 0 {
                            u32::from(self.yres()).saturating_mul(self.line_offset)
                        } else {
                            0
                        },
                    };
                } else {
                    // QEMU drops the bank on any other ENABLE write (the BANK register keeps
                    // its value), so a guest re-selects its bank after touching ENABLE.
                    self.bank_offset = 0;
                }
                self.set_reg(INDEX_ENABLE, value);
                effect
            }
            _ => {
                log::debug!(
                    "vga: DISPI write {value:#06x} to read-only or unknown index {index:#x}"
                );
                DispiEffect::None
            }
        }
    }

    /// The depth in bits per pixel that memory is laid out with (15 bpp takes 16 bits).
    pub fn bits_per_pixel(&self) -> u32 {
        match self.bpp() {
            15 => 16,
            b => u32::from(b),
        }
    }

    /// Adjust the registers to the nearest valid mode (QEMU's rules) and derive the geometry.
    fn fixup(&mut self) {
        if !self.enabled() {
            return;
        }
        let bits: u32 = match self.bpp() {
            4 | 8 | 16 | 24 | 32 => u32::from(self.bpp()),
            15 => 16,
            _ => {
                self.set_reg(INDEX_BPP, 8);
                8
            }
        };
        let mut xres = self.xres() & !7;
        if xres == 0 {
            xres = 8;
        }
        xres = xres.min(MAX_XRES);
        self.set_reg(INDEX_XRES, xres);
        let mut virt_width = (self.reg(INDEX_VIRT_WIDTH) & !7).min(MAX_XRES);
        if virt_width < xres {
            virt_width = xres;
        }
        self.set_reg(INDEX_VIRT_WIDTH, virt_width);

        let line = u64::from(virt_width) * u64::from(bits) / 8;
        let vram = u64::from(self.vram_size);
        let max_y = vram / line.max(1);
        let yres = u64::from(self.yres().clamp(1, MAX_YRES)).min(max_y);
        self.set_reg(INDEX_YRES, yres as u16);

        let x_offset = self.reg(INDEX_X_OFFSET).min(MAX_XRES);
        let y_offset = self.reg(INDEX_Y_OFFSET).min(MAX_YRES);
        self.set_reg(INDEX_X_OFFSET, x_offset);
        self.set_reg(INDEX_Y_OFFSET, y_offset);
        let x_bytes = u64::from(x_offset) * u64::from(bits) / 8;
        let visible = yres * line;
        let mut offset = x_bytes + u64::from(y_offset) * line;
        if offset + visible > vram {
            self.set_reg(INDEX_Y_OFFSET, 0);
            offset = x_bytes;
            if offset + visible > vram {
                self.set_reg(INDEX_X_OFFSET, 0);
                offset = 0;
            }
        }
        // QEMU stores the quotient in a 16-bit register and lets it wrap for tiny modes on
        // big memories; saturating keeps the reported height meaningful instead.
        self.set_reg(INDEX_VIRT_HEIGHT, u16::try_from(max_y).unwrap_or(u16::MAX));
        self.line_offset = line as u32;
        self.start = (offset as u32) & !3;
    }

    /// Registers, then the bank offset; the geometry is re-derived on restore.
    pub(super) fn save(&self, w: &mut StateWriter) {
        w.u16(self.index);
        for r in self.regs {
            w.u16(r);
        }
        w.u32(self.bank_offset);
    }

    pub(super) fn load(&self, r: &mut StateReader<'_>) -> Result<Dispi, SnapshotError> {
        let mut d = Dispi::new(self.vram_size);
        d.index = r.u16()?;
        for reg in d.regs.iter_mut() {
            *reg = r.u16()?;
        }
        d.bank_offset = r.u32()?;
        if d.bank_offset & 0xFFFF != 0 || d.bank_offset >> 16 > u32::from(d.bank_mask()) {
            return Err(SnapshotError::Invalid(format!(
                "VBE bank offset {:#x} is not a bank of {} KiB of video memory",
                d.bank_offset,
                d.vram_size >> 10
            )));
        }
        // The registers were sanitised when written; fixing them up again only derives the
        // geometry (and tames a hand-made blob).
        d.fixup();
        Ok(d)
    }
}

/// What a DISPI write asks of the VGA around it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum DispiEffect {
    None,
    /// The mode geometry changed: re-derive the VGA registers.
    Geometry,
    /// The mode was just enabled: set up the VGA registers and clear this many bytes.
    Enabled {
        clear_bytes: u32,
    },
}

/// A captured picture: `width * height` pixels, row-major, each `0x00RRGGBB`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Framebuffer {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u32>,
}

impl Framebuffer {
    pub fn pixel(&self, x: u32, y: u32) -> Option<u32> {
        if x >= self.width || y >= self.height {
            return None;
        }
        self.pixels
            .get(y as usize * self.width as usize + x as usize)
            .copied()
    }
}

/// A 6-bit DAC component widened to 8 bits, replicating the top bits into the bottom.
pub(super) fn dac6_to_8(v: u8) -> u8 {
    let v = v & 0x3F;
    (v << 2) | (v >> 4)
}

/// Convert one pixel of `bits` depth from its little-endian bytes to `0x00RRGGBB`.
pub(super) fn decode_pixel(bits: u32, bytes: &[u8], palette: impl Fn(u8) -> u32) -> u32 {
    let byte = |i: usize| u32::from(bytes.get(i).copied().unwrap_or(0));
    match bits {
        8 => palette(bytes.first().copied().unwrap_or(0)),
        15 => {
            let v = byte(0) | byte(1) << 8;
            let (r, g, b) = ((v >> 10) & 0x1F, (v >> 5) & 0x1F, v & 0x1F);
            (r << 3 | r >> 2) << 16 | (g << 3 | g >> 2) << 8 | (b << 3 | b >> 2)
        }
        16 => {
            let v = byte(0) | byte(1) << 8;
            let (r, g, b) = ((v >> 11) & 0x1F, (v >> 5) & 0x3F, v & 0x1F);
            (r << 3 | r >> 2) << 16 | (g << 2 | g >> 4) << 8 | (b << 3 | b >> 2)
        }
        24 | 32 => byte(2) << 16 | byte(1) << 8 | byte(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn enabled(d: &mut Dispi, x: u16, y: u16, bpp: u16) {
        d.write_index(INDEX_XRES, x);
        d.write_index(INDEX_YRES, y);
        d.write_index(INDEX_BPP, bpp);
        d.write_index(INDEX_ENABLE, ENABLED | LFB_ENABLED);
    }

    #[test]
    fn reset_reports_id5_and_memory_size() {
        let d = Dispi::new(16 << 20);
        assert_eq!(d.read_index(INDEX_ID), ID5);
        assert_eq!(d.read_index(INDEX_VIDEO_MEMORY_64K), 256);
        assert_eq!(d.read_index(0x0B), 0);
        assert!(!d.enabled());
    }

    #[test]
    fn id_accepts_only_known_versions() {
        let mut d = Dispi::new(1 << 20);
        d.write_index(INDEX_ID, 0xB0C2);
        assert_eq!(d.read_index(INDEX_ID), 0xB0C2);
        d.write_index(INDEX_ID, 0xB0C6);
        d.write_index(INDEX_ID, 0x1234);
        assert_eq!(d.read_index(INDEX_ID), 0xB0C2);
    }

    #[test]
    fn fixup_rounds_width_and_limits_height_to_memory() {
        let mut d = Dispi::new(1 << 20);
        enabled(&mut d, 1027, 2000, 32);
        assert_eq!(d.xres(), 1024);
        // 1 MiB holds 256 lines of 4096 bytes.
        assert_eq!(d.yres(), 256);
        assert_eq!(d.reg(INDEX_VIRT_HEIGHT), 256);
        assert_eq!(d.line_offset, 4096);
        d.write_index(INDEX_BPP, 7);
        assert_eq!(d.bpp(), 8, "unsupported depths become 8 bpp");
    }

    #[test]
    fn offsets_that_would_leave_memory_are_dropped() {
        let mut d = Dispi::new(4 << 20);
        enabled(&mut d, 1024, 768, 32);
        d.write_index(INDEX_Y_OFFSET, 100);
        assert_eq!(d.reg(INDEX_Y_OFFSET), 100);
        assert_eq!(d.start, 100 * 4096);
        d.write_index(INDEX_Y_OFFSET, 300);
        assert_eq!(d.reg(INDEX_Y_OFFSET), 0, "300 + 768 lines exceed 4 MiB");
        d.write_index(INDEX_X_OFFSET, 8);
        assert_eq!(d.start, 32);
    }

    #[test]
    fn getcaps_reports_maxima() {
        let mut d = Dispi::new(16 << 20);
        d.write_index(INDEX_XRES, 640);
        d.write_index(INDEX_ENABLE, GETCAPS);
        assert_eq!(d.read_index(INDEX_XRES), MAX_XRES);
        assert_eq!(d.read_index(INDEX_YRES), MAX_YRES);
        assert_eq!(d.read_index(INDEX_BPP), MAX_BPP);
        d.write_index(INDEX_ENABLE, 0);
        assert_eq!(d.read_index(INDEX_XRES), 640);
    }

    #[test]
    fn bank_is_masked_to_memory() {
        let mut d = Dispi::new(1 << 20);
        d.write_index(INDEX_BANK, 0x13);
        assert_eq!(d.reg(INDEX_BANK), 0x03);
        assert_eq!(d.bank_offset, 0x3_0000);
    }

    #[test]
    fn pixel_formats() {
        assert_eq!(decode_pixel(32, &[0x11, 0x22, 0x33, 0x44], |_| 0), 0x332211);
        assert_eq!(decode_pixel(24, &[0x11, 0x22, 0x33], |_| 0), 0x332211);
        assert_eq!(decode_pixel(16, &0xF800u16.to_le_bytes(), |_| 0), 0xFF0000);
        assert_eq!(decode_pixel(16, &0x07E0u16.to_le_bytes(), |_| 0), 0x00FF00);
        assert_eq!(decode_pixel(15, &0x7C00u16.to_le_bytes(), |_| 0), 0xFF0000);
        assert_eq!(decode_pixel(8, &[7], |i| u32::from(i) * 2), 14);
        assert_eq!(dac6_to_8(0x3F), 0xFF);
        assert_eq!(dac6_to_8(0), 0);
    }
}
