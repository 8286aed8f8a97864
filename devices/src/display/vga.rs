//! QEMU's "standard VGA" (`-device VGA`): an IBM VGA register set with Bochs VBE extensions,
//! as a PCI function.
//!
//! **PCI.** 1234:1111, class 0x0300 (VGA), revision 2 (the QEMU extended registers are
//! present), subsystem 1af4:1100 as QEMU gives every device. BAR 0 is the video memory
//! (prefetchable 32-bit memory, the VRAM size); BAR 2 is 4 KiB of MMIO: the VGA ports
//! 0x3C0-0x3DF at 0x400-0x41F, the DISPI registers flat at `0x500 + 2 * index`, QEMU's extended
//! registers at 0x600 (region size, framebuffer byte order); 0x000-0x3FF (EDID in QEMU) reads as
//! zeros. The expansion ROM BAR holds the VGA BIOS image the board passes in
//! (`vgabios-stdvga.bin`). No interrupt pin.
//!
//! **Legacy decode**, registered by the board with [`Vga::register_legacy`] (one device at
//! several ranges, told apart by `BusAddress.base`):
//!
//! | bus | base | length | what |
//! |---|---|---|---|
//! | ports | 0x3B4 | 2 | CRTC index/data, monochrome address |
//! | ports | 0x3BA | 1 | input status 1 / feature control, monochrome |
//! | ports | 0x3C0 | 16 | attribute, misc, sequencer, DAC, graphics controller |
//! | ports | 0x3D4 | 2 | CRTC index/data, colour address |
//! | ports | 0x3DA | 1 | input status 1 / feature control, colour |
//! | ports | 0x1CE | 3 | DISPI index (0x1CE) and data (0x1CF, 16-bit, so `outw 0x1CF` spans 0x1D0) |
//! | memory | 0xA0000 | 0x20000 | the legacy window, mapped by graphics controller register 6 |
//!
//! As on real hardware (and in QEMU), the 0x3Bx ports only answer while the misc output
//! register selects the monochrome address (bit 0 clear) and the 0x3Dx ports only while it
//! selects colour; the other set reads as ones and ignores writes.
//!
//! **Video memory layout** (QEMU's): the four planes are interleaved, byte `4 * a + p` being byte
//! `a` of plane `p`, so a planar address `a` is one little-endian dword holding all four
//! planes (what the latches load). In chain-4 mode (mode 13h, VBE) the window maps bytes
//! linearly, which in this layout puts pixel `n` in plane `n & 3` (as the hardware does) at
//! planar address `n / 4` (the hardware keeps `n` and has the CRTC skip in doubleword mode).
//! Text mode (odd/even) puts the character of cell `n` at byte `4n` (plane 0) and its attribute
//! at `4n + 1` (plane 1); the font lives in plane 2, 32 bytes per glyph. Following current
//! QEMU, CPU addresses are converted to planar addresses with the word/doubleword mode of the
//! CRTC applied on the CPU side (CRTC 0x14 bit 6, 0x17 bit 6), so the display side reads cells
//! and pixels at consecutive planar addresses.
//!
//! **Input status 1** must change for BIOS and driver wait loops to end. [`Retrace::Toggle`]
//! (QEMU's default "dumb" retrace) flips the vertical retrace and display-disabled bits on every
//! read; [`Retrace::Clock`] derives them from virtual time as a 640x480 60 Hz monitor would
//! (525 lines of 31.78 µs, vertical retrace in lines 490-491, blanking from line 480 and in the
//! last fifth of every line), for guests that time themselves off the vertical retrace.
//!
//! **Choices** (logged at debug level where a guest can trigger them): the misc output RAM
//! enable bit and odd/even page bit are stored but not applied (as QEMU); DAC entries keep the
//! full byte written (as QEMU; the display uses the low 6 bits unless the VBE 8-bit DAC is on);
//! a byte write to a 16-bit DISPI register changes that byte only; QEMU extended registers take
//! only aligned 32-bit writes. Xen: under a Xen device model the VRAM is guest memory the DM
//! maps; [`VramBacking`] is the seam for that (see [`Vga::with_vram`]).

use std::sync::{Arc, Mutex};

use log::debug;
use thiserror::Error;

use super::text::{self, DisplayMode, TextScreen};
use super::vbe::{self, Dispi, DispiEffect, Framebuffer};
use crate::bus::{AccessSizes, Bus, BusAddress, BusDevice, BusError};
use crate::clock::{Clock, Nanos};
use crate::pci::PciFunction;
use crate::pci::config_space::{BarKind, ConfigSpace, PciIds, ROM_BAR};
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

pub const VGA_VENDOR_ID: u16 = 0x1234;
pub const VGA_DEVICE_ID: u16 = 0x1111;
/// Revision 2 announces the QEMU extended registers in the MMIO BAR.
pub const VGA_REVISION: u8 = 2;
pub const VGA_CLASS: u32 = 0x03_00_00;

pub const VRAM_BAR: usize = 0;
pub const MMIO_BAR: usize = 2;
pub const MMIO_BAR_SIZE: u64 = 0x1000;

/// The legacy memory window.
pub const LEGACY_WINDOW_BASE: u64 = 0xA_0000;
pub const LEGACY_WINDOW_LEN: u64 = 0x2_0000;
/// The VGA port ranges (base, length) as QEMU decodes them.
pub const VGA_PORT_RANGES: [(u64, u64); 5] =
    [(0x3B4, 2), (0x3BA, 1), (0x3C0, 16), (0x3D4, 2), (0x3DA, 1)];
/// The DISPI index and data ports; three ports so a 16-bit access to the data port at 0x1CF
/// reaches the device whole.
pub const DISPI_PORT_BASE: u64 = vbe::DISPI_INDEX_PORT as u64;
pub const DISPI_PORT_LEN: u64 = 3;

pub const DEFAULT_VRAM_SIZE: usize = 16 << 20;
/// Classic VGA memory: the four 64 KiB planes.
pub const MIN_VRAM_SIZE: usize = 256 << 10;
pub const MAX_VRAM_SIZE: usize = 256 << 20;
/// A VGA BIOS is tens of KiB; this only refuses nonsense.
pub const MAX_ROM_SIZE: usize = 16 << 20;

// MMIO BAR layout.
const MMIO_PORTS: u64 = 0x400;
const MMIO_PORTS_END: u64 = 0x420;
const MMIO_DISPI: u64 = 0x500;
const MMIO_DISPI_END: u64 = 0x500 + 2 * vbe::INDEX_VIDEO_MEMORY_64K as u64 + 2;
const MMIO_QEXT: u64 = 0x600;
const MMIO_QEXT_END: u64 = 0x608;
const QEXT_SIZE: u32 = 8;
const QEXT_LITTLE_ENDIAN: u32 = 0x1E1E_1E1E;
const QEXT_BIG_ENDIAN: u32 = 0xBEBE_BEBE;

// Register counts.
const NUM_SR: usize = 8;
const NUM_GR: usize = 16;
const NUM_AR: usize = 21;
const NUM_CR: usize = 256;
const PALETTE_BYTES: usize = 256 * 3;

/// The bits each sequencer / graphics register stores (the others read as zero), as QEMU.
const SR_MASK: [u8; NUM_SR] = [0x03, 0x3D, 0x0F, 0x3F, 0x0E, 0x00, 0x00, 0xFF];
const GR_MASK: [u8; NUM_GR] = [
    0x0F, 0x0F, 0x0F, 0x1F, 0x03, 0x7B, 0x0F, 0x0F, 0xFF, 0, 0, 0, 0, 0, 0, 0,
];

// Register numbers used by the logic.
const SR_CLOCKING: usize = 1;
const SR_MAP_MASK: usize = 2;
const SR_MEMORY_MODE: usize = 4;
const GR_SET_RESET: usize = 0;
const GR_ENABLE_SET_RESET: usize = 1;
const GR_COLOR_COMPARE: usize = 2;
const GR_ROTATE: usize = 3;
const GR_READ_MAP: usize = 4;
const GR_MODE: usize = 5;
const GR_MISC: usize = 6;
const GR_DONT_CARE: usize = 7;
const GR_BIT_MASK: usize = 8;
const AR_MODE: usize = 0x10;
const CR_UNDERLINE: usize = 0x14;
const CR_MODE: usize = 0x17;
const CR_VSYNC_END: usize = 0x11;

const SR4_ODD_EVEN_DISABLE: u8 = 0x04;
const SR4_CHAIN4: u8 = 0x08;
const GR5_READ_MODE_1: u8 = 0x08;
const GR5_HOST_ODD_EVEN: u8 = 0x10;
const GR6_GRAPHICS: u8 = 0x01;
const GR6_CHAIN_ODD_EVEN: u8 = 0x02;
const CR11_PROTECT: u8 = 0x80;
const CR14_DOUBLEWORD: u8 = 0x40;
const CR17_BYTE_MODE: u8 = 0x40;
const MSR_COLOR: u8 = 0x01;
const ST01_DISPLAY_DISABLED: u8 = 0x01;
const ST01_VRETRACE: u8 = 0x08;

// Clock-driven retrace: 640x480 at 60 Hz.
const LINE_NS: Nanos = 31_778;
const LINES_PER_FRAME: Nanos = 525;
const VISIBLE_LINES: Nanos = 480;
const VRETRACE_LINES: std::ops::Range<Nanos> = 490..492;
const HBLANK_FROM_NS: Nanos = LINE_NS * 4 / 5;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum VgaError {
    #[error(
        "VGA memory of {0} bytes: must be a power of two from 256 KiB to 256 MiB (QEMU's vgamem_mb)"
    )]
    BadVramSize(usize),
    #[error("VGA memory backing holds {found} bytes, {expected} were configured")]
    VramBackingSize { expected: usize, found: usize },
    #[error("VGA BIOS image of {0} bytes is empty or larger than 16 MiB")]
    BadRomSize(usize),
}

/// How input status 1 reports the retrace. See the module documentation.
#[derive(Clone, Default)]
pub enum Retrace {
    /// Flip on every read (QEMU's default).
    #[default]
    Toggle,
    /// Follow a 60 Hz frame in this clock's virtual time.
    Clock(Clock),
}

/// How a board builds the adapter.
#[derive(Clone)]
pub struct VgaConfig {
    /// A power of two, 256 KiB to 256 MiB; 16 MiB as QEMU.
    pub vram_size: usize,
    /// The VGA BIOS image for the expansion ROM BAR (Debian's `vgabios-stdvga.bin`); `None` for
    /// no ROM BAR.
    pub rom: Option<Vec<u8>>,
    pub retrace: Retrace,
}

impl Default for VgaConfig {
    fn default() -> Self {
        VgaConfig {
            vram_size: DEFAULT_VRAM_SIZE,
            rom: None,
            retrace: Retrace::Toggle,
        }
    }
}

/// Where the video memory lives. The adapter keeps its VRAM on the heap ([`HeapVram`]); a Xen
/// board will put it in guest-physical memory the device model maps, behind this interface.
/// Callers keep `offset + len` within [`VramBacking::len`]; implementations must not panic if a
/// bug makes them not.
pub trait VramBacking: Send {
    fn len(&self) -> usize;
    fn read(&self, offset: usize, buf: &mut [u8]);
    fn write(&mut self, offset: usize, data: &[u8]);
    fn fill(&mut self, offset: usize, len: usize, value: u8);
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Video memory in this process.
pub struct HeapVram(Vec<u8>);

impl HeapVram {
    pub fn new(size: usize) -> HeapVram {
        HeapVram(vec![0; size])
    }

    fn range(&self, offset: usize, len: usize) -> Option<std::ops::Range<usize>> {
        let end = offset.checked_add(len)?;
        (end <= self.0.len()).then_some(offset..end)
    }
}

impl VramBacking for HeapVram {
    fn len(&self) -> usize {
        self.0.len()
    }
    fn read(&self, offset: usize, buf: &mut [u8]) {
        match self.range(offset, buf.len()) {
            Some(r) => buf.copy_from_slice(&self.0[r]),
            None => buf.fill(0xFF),
        }
    }
    fn write(&mut self, offset: usize, data: &[u8]) {
        if let Some(r) = self.range(offset, data.len()) {
            self.0[r].copy_from_slice(data);
        }
    }
    fn fill(&mut self, offset: usize, len: usize, value: u8) {
        if let Some(r) = self.range(offset, len) {
            self.0[r].fill(value);
        }
    }
}

/// The VGA register file.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Regs {
    msr: u8,
    fcr: u8,
    st01: u8,
    sr_index: u8,
    sr: [u8; NUM_SR],
    gr_index: u8,
    gr: [u8; NUM_GR],
    ar_index: u8,
    ar: [u8; NUM_AR],
    /// false: the next 0x3C0 write is an index; true: it is data.
    ar_flip_flop: bool,
    cr_index: u8,
    cr: [u8; NUM_CR],
    /// 0 after a write-index set, 3 after a read-index set (port 0x3C7).
    dac_state: u8,
    dac_sub_index: u8,
    dac_read_index: u8,
    dac_write_index: u8,
    dac_cache: [u8; 3],
    pel_mask: u8,
    palette: [u8; PALETTE_BYTES],
    /// The four plane latches, plane `p` in byte `p`.
    latch: u32,
}

impl Regs {
    /// QEMU's reset: every register zero (the VGA BIOS programs a mode), the PEL mask open.
    fn power_on() -> Regs {
        Regs {
            msr: 0,
            fcr: 0,
            st01: 0,
            sr_index: 0,
            sr: [0; NUM_SR],
            gr_index: 0,
            gr: [0; NUM_GR],
            ar_index: 0,
            ar: [0; NUM_AR],
            ar_flip_flop: false,
            cr_index: 0,
            cr: [0; NUM_CR],
            dac_state: 0,
            dac_sub_index: 0,
            dac_read_index: 0,
            dac_write_index: 0,
            dac_cache: [0; 3],
            pel_mask: 0xFF,
            palette: [0; PALETTE_BYTES],
            latch: 0,
        }
    }
}

/// Each plane's byte set to all ones where `planes` has its bit.
fn plane_mask(planes: u8) -> u32 {
    (0..4).fold(0, |m, p| {
        if planes & (1 << p) != 0 {
            m | 0xFF << (8 * p)
        } else {
            m
        }
    })
}

fn splat(byte: u8) -> u32 {
    u32::from(byte) * 0x0101_0101
}

/// The standard VGA adapter. See the module documentation.
pub struct Vga {
    config: ConfigSpace,
    regs: Regs,
    dispi: Dispi,
    vram: Box<dyn VramBacking>,
    /// The ROM image padded with zeros to the ROM BAR size (empty: no ROM BAR).
    rom: Vec<u8>,
    retrace: Retrace,
    big_endian_fb: bool,
}

impl Vga {
    /// An adapter with its video memory on the heap.
    pub fn new(config: VgaConfig) -> Result<Vga, VgaError> {
        let vram = Box::new(HeapVram::new(checked_vram_size(config.vram_size)?));
        Vga::with_vram(config, vram)
    }

    /// An adapter whose video memory is `vram` (of `config.vram_size` bytes), for a board that
    /// keeps it elsewhere (a Xen device model: guest memory it maps).
    pub fn with_vram(config: VgaConfig, vram: Box<dyn VramBacking>) -> Result<Vga, VgaError> {
        let size = checked_vram_size(config.vram_size)?;
        if vram.len() != size {
            return Err(VgaError::VramBackingSize {
                expected: size,
                found: vram.len(),
            });
        }
        let mut space = ConfigSpace::new(PciIds {
            vendor_id: VGA_VENDOR_ID,
            device_id: VGA_DEVICE_ID,
            revision_id: VGA_REVISION,
            class_code: VGA_CLASS,
            subsystem_vendor_id: 0x1AF4,
            subsystem_id: 0x1100,
        });
        let bar_error = |_| VgaError::BadVramSize(size);
        space
            .add_bar(
                VRAM_BAR,
                BarKind::Memory32 { prefetchable: true },
                size as u64,
            )
            .map_err(bar_error)?;
        space
            .add_bar(
                MMIO_BAR,
                BarKind::Memory32 {
                    prefetchable: false,
                },
                MMIO_BAR_SIZE,
            )
            .map_err(bar_error)?;
        let mut rom = Vec::new();
        if let Some(image) = config.rom {
            if image.is_empty() || image.len() > MAX_ROM_SIZE {
                return Err(VgaError::BadRomSize(image.len()));
            }
            let rom_size = image.len().next_power_of_two().max(0x800);
            space
                .set_rom_bar(rom_size as u64)
                .map_err(|_| VgaError::BadRomSize(image.len()))?;
            rom = image;
            rom.resize(rom_size, 0);
        }
        space.capture_power_on();
        Ok(Vga {
            config: space,
            regs: Regs::power_on(),
            dispi: Dispi::new(size as u32),
            vram,
            rom,
            retrace: config.retrace,
            big_endian_fb: false,
        })
    }

    pub fn new_shared(config: VgaConfig) -> Result<Arc<Mutex<Vga>>, VgaError> {
        Ok(Arc::new(Mutex::new(Vga::new(config)?)))
    }

    /// Map the legacy ports and the 0xA0000 window (see the module documentation). The PCI
    /// BARs are the root's business: add the same handle with `PciRoot::add_function`.
    pub fn register_legacy(vga: &Arc<Mutex<Vga>>, pio: &Bus, mmio: &Bus) -> Result<(), BusError> {
        for (base, len) in VGA_PORT_RANGES {
            pio.insert(&format!("vga-{base:x}"), base, len, vga.clone())?;
        }
        pio.insert("vga-dispi", DISPI_PORT_BASE, DISPI_PORT_LEN, vga.clone())?;
        mmio.insert(
            "vga-window",
            LEGACY_WINDOW_BASE,
            LEGACY_WINDOW_LEN,
            vga.clone(),
        )?;
        Ok(())
    }

    /// Return the registers to their power-on values (all zero until the VGA BIOS runs). Video
    /// memory keeps its contents, as on a real card.
    pub fn reset_registers(&mut self) {
        self.regs = Regs::power_on();
        self.dispi.reset();
        self.big_endian_fb = false;
    }

    pub fn vram_size(&self) -> usize {
        self.vram.len()
    }

    // ----- Views for humans and tests -----

    /// What is displayed, in a word.
    pub fn mode(&self) -> DisplayMode {
        if self.dispi.enabled() {
            return DisplayMode::Vbe {
                width: self.dispi.xres(),
                height: self.dispi.yres(),
                bpp: self.dispi.bpp(),
            };
        }
        let cr = &self.regs.cr;
        if self.regs.gr[GR_MISC] & GR6_GRAPHICS == 0 {
            let l = text::layout(cr, self.sr(SR_CLOCKING));
            return DisplayMode::Text {
                cols: l.cols,
                rows: l.rows,
                char_width: l.char_width,
                char_height: l.char_height,
            };
        }
        let shift = (self.regs.gr[GR_MODE] >> 5) & 3;
        let dots = (u16::from(cr[0x01]) + 1) * 8;
        let (width, bpp) = match shift {
            0 => (dots, 4),
            1 => (dots, 2),
            // 256 colours: two dot clocks per pixel.
            _ => (dots / 2, 8),
        };
        let scan_lines = u16::from(cr[0x09] & 0x1F) + 1;
        let double = if cr[0x09] & 0x80 != 0 { 2 } else { 1 };
        let height = (text::vertical_display_end(cr) + 1) / scan_lines / double;
        DisplayMode::Graphics { width, height, bpp }
    }

    /// The text screen, when a text mode is displayed (the split screen of the line compare
    /// register is not applied).
    pub fn text_screen(&self) -> Option<TextScreen> {
        if self.dispi.enabled() || self.regs.gr[GR_MISC] & GR6_GRAPHICS != 0 {
            return None;
        }
        let layout = text::layout(&self.regs.cr, self.sr(SR_CLOCKING));
        let words = (self.vram.len() / 4) as u32;
        text::screen(&layout, &self.regs.cr, |n| {
            let mut b = [0u8; 2];
            self.vram.read((n % words) as usize * 4, &mut b);
            (b[0], b[1])
        })
    }

    /// The visible picture, in a VBE mode of 8, 15, 16, 24 or 32 bpp or a VGA 16- or
    /// 256-colour graphics mode (`None` in text, CGA 4-colour and VBE 4 bpp modes). The split
    /// screen and horizontal panning are not applied.
    pub fn framebuffer_snapshot(&self) -> Option<Framebuffer> {
        if !self.dispi.enabled() {
            return self.vga_graphics_snapshot();
        }
        let bits = match self.dispi.bpp() {
            15 => 15,
            _ => self.dispi.bits_per_pixel(),
        };
        if !matches!(bits, 8 | 15 | 16 | 24 | 32) {
            return None;
        }
        let (width, height) = (u32::from(self.dispi.xres()), u32::from(self.dispi.yres()));
        let bytes_pp = bits.div_ceil(8) as usize;
        let mut row = vec![0u8; width as usize * bytes_pp];
        let mut pixels = Vec::with_capacity(width as usize * height as usize);
        let palette = |i: u8| self.palette_rgb(i & self.regs.pel_mask);
        for y in 0..height {
            let at = u64::from(self.dispi.start) + u64::from(y) * u64::from(self.dispi.line_offset);
            self.read_vram_clamped(at, &mut row);
            for px in row.chunks_exact(bytes_pp) {
                let mut b = [0u8; 4];
                b[..bytes_pp].copy_from_slice(px);
                if self.big_endian_fb && bytes_pp > 1 {
                    b[..bytes_pp].reverse();
                }
                pixels.push(vbe::decode_pixel(bits, &b, palette));
            }
        }
        Some(Framebuffer {
            width,
            height,
            pixels,
        })
    }

    /// A VGA graphics mode, read the way QEMU's display side does: the CRTC start address and
    /// offset count planar addresses (dwords), 256-colour pixels are consecutive bytes, 16-colour
    /// pixels take one bit from each plane and go through the attribute palette.
    fn vga_graphics_snapshot(&self) -> Option<Framebuffer> {
        let DisplayMode::Graphics { width, height, bpp } = self.mode() else {
            return None;
        };
        if bpp == 2 {
            return None;
        }
        let cr = &self.regs.cr;
        let start = (u64::from(cr[0x0C]) << 8 | u64::from(cr[0x0D])) * 4;
        let line = u64::from(cr[0x13]) * 8;
        let (width, height) = (u32::from(width), u32::from(height));
        let ar = &self.regs.ar;
        let ar_to_dac = |v: u8| {
            let entry = ar[usize::from(v & 0x0F)];
            if ar[AR_MODE] & 0x80 != 0 {
                (ar[0x14] & 0x0F) << 4 | (entry & 0x0F)
            } else {
                (ar[0x14] & 0x0C) << 4 | (entry & 0x3F)
            }
        };
        let mut pixels = Vec::with_capacity(width as usize * height as usize);
        let mut row = vec![0u8; width as usize * if bpp == 8 { 1 } else { 4 }];
        for y in 0..u64::from(height) {
            let at = start + y * line;
            if bpp == 8 {
                self.read_vram_clamped(at, &mut row);
                pixels.extend(
                    row.iter()
                        .map(|&i| self.palette_rgb(i & self.regs.pel_mask)),
                );
            } else {
                // Eight pixels per planar address: one dword, a byte per plane.
                self.read_vram_clamped(at, &mut row[..width as usize / 2]);
                for x in 0..width as usize {
                    let dword = &row[(x / 8) * 4..(x / 8) * 4 + 4];
                    let bit = 7 - (x % 8);
                    let v = (0..4).fold(0u8, |v, p| v | ((dword[p] >> bit) & 1) << p);
                    let v = v & ar[0x12] & 0x0F;
                    pixels.push(self.palette_rgb(ar_to_dac(v) & self.regs.pel_mask));
                }
            }
        }
        Some(Framebuffer {
            width,
            height,
            pixels,
        })
    }

    /// The 256 DAC entries as `0x00RRGGBB` (6-bit components widened unless the 8-bit DAC is on).
    pub fn palette_rgb(&self, index: u8) -> u32 {
        let at = usize::from(index) * 3;
        let dac8 = self.dispi.dac_8bit();
        let c = |k: usize| {
            let v = self.regs.palette[at + k];
            u32::from(if dac8 { v } else { vbe::dac6_to_8(v) })
        };
        c(0) << 16 | c(1) << 8 | c(2)
    }

    fn read_vram_clamped(&self, at: u64, buf: &mut [u8]) {
        let len = self.vram.len() as u64;
        if at.saturating_add(buf.len() as u64) <= len {
            self.vram.read(at as usize, buf);
        } else {
            buf.fill(0);
        }
    }

    // ----- Register helpers -----

    /// A sequencer register as the memory logic sees it: VBE modes force chain-4 and all planes
    /// (or, for 4 bpp, a full dot clock), whatever the guest left in the registers.
    fn sr(&self, index: usize) -> u8 {
        let v = self.regs.sr.get(index).copied().unwrap_or(0);
        if !self.dispi.enabled() {
            return v;
        }
        match (index, self.dispi.bpp() == 4) {
            (SR_CLOCKING, true) => v & !0x08,
            (SR_MAP_MASK, false) => v | 0x0F,
            (SR_MEMORY_MODE, false) => v | SR4_CHAIN4,
            _ => v,
        }
    }

    /// Keep the VGA registers consistent with an enabled VBE mode (QEMU re-applies this after
    /// every graphics-controller and CRTC write so a guest cannot mix VGA timings into it).
    fn apply_vbe_to_vga(&mut self) {
        if !self.dispi.enabled() {
            return;
        }
        let r = &mut self.regs;
        // Graphics mode, memory map 1 (A0000, 64 KiB banked).
        r.gr[GR_MISC] = (r.gr[GR_MISC] & !0x0C) | 0x04 | GR6_GRAPHICS;
        r.cr[CR_MODE] |= 3;
        r.cr[0x13] = (self.dispi.line_offset >> 3) as u8;
        r.cr[0x01] = ((self.dispi.xres() >> 3).wrapping_sub(1)) as u8;
        let h = self.dispi.yres().wrapping_sub(1);
        r.cr[0x12] = h as u8;
        r.cr[0x07] = (r.cr[0x07] & !0x42) | ((h >> 7) & 0x02) as u8 | ((h >> 3) & 0x40) as u8;
        // Line compare at its maximum: no split screen.
        r.cr[0x18] = 0xFF;
        r.cr[0x07] |= 0x10;
        r.cr[0x09] |= 0x40;
        let shift: u8 = if self.dispi.bpp() == 4 { 0 } else { 2 };
        r.gr[GR_MODE] = (r.gr[GR_MODE] & !0x60) | shift << 5;
        r.cr[0x09] &= !0x9F;
    }

    // ----- Legacy window -----

    /// The offset in video memory (before plane addressing) that window offset `addr` selects.
    fn window_offset(&self, addr: u64) -> Option<u64> {
        let a = addr & 0x1_FFFF;
        match (self.regs.gr[GR_MISC] >> 2) & 3 {
            0 => Some(a),
            1 => (a < 0x1_0000).then(|| a + u64::from(self.dispi.bank_offset)),
            2 => a.checked_sub(0x1_0000).filter(|&o| o < 0x8000),
            _ => a.checked_sub(0x1_8000).filter(|&o| o < 0x8000),
        }
    }

    fn vram_byte(&self, at: u64) -> Option<u8> {
        (at < self.vram.len() as u64).then(|| {
            let mut b = [0u8];
            self.vram.read(at as usize, &mut b);
            b[0]
        })
    }

    /// Planar address `a` → the CPU/CRTC word or doubleword shift, as QEMU applies it.
    fn shifted(&self, a: u64, odd_even: bool) -> u64 {
        if self.regs.cr[CR_UNDERLINE] & CR14_DOUBLEWORD != 0 {
            a >> 2
        } else if odd_even && self.regs.cr[CR_MODE] & CR17_BYTE_MODE == 0 {
            a >> 1
        } else {
            a
        }
    }

    fn planes_at(&self, planar: u64) -> Option<u32> {
        let at = planar.checked_mul(4)?;
        (at + 4 <= self.vram.len() as u64).then(|| {
            let mut b = [0u8; 4];
            self.vram.read(at as usize, &mut b);
            u32::from_le_bytes(b)
        })
    }

    fn mem_read(&mut self, offset: u64) -> u8 {
        let Some(mut a) = self.window_offset(offset) else {
            return 0xFF;
        };
        if self.sr(SR_MEMORY_MODE) & SR4_CHAIN4 != 0 {
            return self.vram_byte(a).unwrap_or(0xFF);
        }
        let gr = self.regs.gr;
        let host_odd_even = gr[GR_MODE] & GR5_HOST_ODD_EVEN != 0;
        let plane = if host_odd_even {
            (gr[GR_READ_MAP] & 2) | (a & 1) as u8
        } else {
            gr[GR_READ_MAP] & 3
        };
        if gr[GR_MISC] & GR6_CHAIN_ODD_EVEN != 0 {
            a &= !1;
        }
        let Some(latch) = self.planes_at(self.shifted(a, host_odd_even)) else {
            return 0xFF;
        };
        self.regs.latch = latch;
        if gr[GR_MODE] & GR5_READ_MODE_1 == 0 {
            latch.to_le_bytes()[usize::from(plane)]
        } else {
            // Color compare: a bit is set where every plane not "don't care" matches.
            let diff = (latch ^ plane_mask(gr[GR_COLOR_COMPARE])) & plane_mask(gr[GR_DONT_CARE]);
            !diff.to_le_bytes().iter().fold(0, |acc, b| acc | b)
        }
    }

    fn mem_write(&mut self, offset: u64, value: u8) {
        let Some(mut a) = self.window_offset(offset) else {
            return;
        };
        let map_mask = self.sr(SR_MAP_MASK) & 0x0F;
        let memory_mode = self.sr(SR_MEMORY_MODE);
        if memory_mode & SR4_CHAIN4 != 0 {
            if map_mask & (1 << (a & 3)) != 0 && a < self.vram.len() as u64 {
                self.vram.write(a as usize, &[value]);
            }
            return;
        }
        let odd_even = memory_mode & SR4_ODD_EVEN_DISABLE == 0;
        let mut planes = map_mask;
        if odd_even {
            planes &= if a & 1 != 0 { 0x0A } else { 0x05 };
        }
        let gr = self.regs.gr;
        if gr[GR_MISC] & GR6_CHAIN_ODD_EVEN != 0 {
            a &= !1;
        }
        let planar = self.shifted(a, odd_even);
        let Some(old) = self.planes_at(planar) else {
            return;
        };
        let latch = self.regs.latch;
        let rotate = u32::from(gr[GR_ROTATE] & 7);
        let data = match gr[GR_MODE] & 3 {
            1 => latch,
            mode => {
                let (v, bit_mask) = match mode {
                    0 => {
                        let v = splat(value.rotate_right(rotate));
                        let enable = plane_mask(gr[GR_ENABLE_SET_RESET]);
                        let v = (v & !enable) | (plane_mask(gr[GR_SET_RESET]) & enable);
                        (v, gr[GR_BIT_MASK])
                    }
                    2 => (plane_mask(value & 0x0F), gr[GR_BIT_MASK]),
                    _ => (
                        plane_mask(gr[GR_SET_RESET]),
                        gr[GR_BIT_MASK] & value.rotate_right(rotate),
                    ),
                };
                let v = match (gr[GR_ROTATE] >> 3) & 3 {
                    0 => v,
                    1 => v & latch,
                    2 => v | latch,
                    _ => v ^ latch,
                };
                let bits = splat(bit_mask);
                (v & bits) | (latch & !bits)
            }
        };
        let write = plane_mask(planes);
        let new = (old & !write) | (data & write);
        self.vram.write(planar as usize * 4, &new.to_le_bytes());
    }

    // ----- Ports -----

    /// The 0x3Bx ports answer only in monochrome addressing, the 0x3Dx ones only in colour.
    fn port_decoded(&self, port: u16) -> bool {
        match port {
            0x3B0..=0x3BF => self.regs.msr & MSR_COLOR == 0,
            0x3D0..=0x3DF => self.regs.msr & MSR_COLOR != 0,
            _ => true,
        }
    }

    fn input_status_1(&mut self) -> u8 {
        let bits = ST01_DISPLAY_DISABLED | ST01_VRETRACE;
        let v = match &self.retrace {
            Retrace::Toggle => self.regs.st01 ^ bits,
            Retrace::Clock(clock) => {
                let now = clock.now();
                let line = (now / LINE_NS) % LINES_PER_FRAME;
                let in_line = now % LINE_NS;
                let mut v = self.regs.st01 & !bits;
                if VRETRACE_LINES.contains(&line) {
                    v |= ST01_VRETRACE;
                }
                if line >= VISIBLE_LINES || in_line >= HBLANK_FROM_NS {
                    v |= ST01_DISPLAY_DISABLED;
                }
                v
            }
        };
        self.regs.st01 = v;
        self.regs.ar_flip_flop = false;
        v
    }

    /// A guest read of VGA port `port` (0x3B0-0x3DF).
    pub fn port_read(&mut self, port: u16) -> u8 {
        if !self.port_decoded(port) {
            return 0xFF;
        }
        let r = &mut self.regs;
        match port {
            0x3C0 => {
                if r.ar_flip_flop {
                    0
                } else {
                    r.ar_index
                }
            }
            0x3C1 => {
                r.ar.get(usize::from(r.ar_index & 0x1F))
                    .copied()
                    .unwrap_or(0)
            }
            // Input status 0: no switch sense, no CRT interrupt (as QEMU).
            0x3C2 => 0,
            0x3C4 => r.sr_index,
            0x3C5 => r.sr[usize::from(r.sr_index) & (NUM_SR - 1)],
            0x3C6 => r.pel_mask,
            0x3C7 => r.dac_state,
            0x3C8 => r.dac_write_index,
            0x3C9 => {
                let v = r.palette[usize::from(r.dac_read_index) * 3 + usize::from(r.dac_sub_index)];
                r.dac_sub_index += 1;
                if r.dac_sub_index == 3 {
                    r.dac_sub_index = 0;
                    r.dac_read_index = r.dac_read_index.wrapping_add(1);
                }
                v
            }
            0x3CA => r.fcr,
            0x3CC => r.msr,
            0x3CE => r.gr_index,
            0x3CF => r.gr[usize::from(r.gr_index) & (NUM_GR - 1)],
            0x3B4 | 0x3D4 => r.cr_index,
            0x3B5 | 0x3D5 => r.cr[usize::from(r.cr_index)],
            0x3BA | 0x3DA => self.input_status_1(),
            _ => 0,
        }
    }

    /// A guest write of `value` to VGA port `port` (0x3B0-0x3DF).
    pub fn port_write(&mut self, port: u16, value: u8) {
        if !self.port_decoded(port) {
            debug!("vga: write {value:#04x} to port {port:#x} outside the selected I/O address");
            return;
        }
        let r = &mut self.regs;
        match port {
            0x3C0 => {
                if !r.ar_flip_flop {
                    r.ar_index = value & 0x3F;
                } else {
                    let index = usize::from(r.ar_index & 0x1F);
                    let stored = match index {
                        0x00..=0x0F => Some(value & 0x3F),
                        AR_MODE => Some(value & !0x10),
                        0x11 => Some(value),
                        0x12 => Some(value & 0x3F),
                        0x13 | 0x14 => Some(value & 0x0F),
                        _ => None,
                    };
                    if let Some(v) = stored {
                        r.ar[index] = v;
                    }
                }
                r.ar_flip_flop = !r.ar_flip_flop;
            }
            0x3C2 => r.msr = value & !0x10,
            0x3C4 => r.sr_index = value & (NUM_SR as u8 - 1),
            0x3C5 => {
                let i = usize::from(r.sr_index) & (NUM_SR - 1);
                r.sr[i] = value & SR_MASK[i];
            }
            0x3C6 => r.pel_mask = value,
            0x3C7 => {
                r.dac_read_index = value;
                r.dac_sub_index = 0;
                r.dac_state = 3;
            }
            0x3C8 => {
                r.dac_write_index = value;
                r.dac_sub_index = 0;
                r.dac_state = 0;
            }
            0x3C9 => {
                r.dac_cache[usize::from(r.dac_sub_index)] = value;
                r.dac_sub_index += 1;
                if r.dac_sub_index == 3 {
                    let at = usize::from(r.dac_write_index) * 3;
                    r.palette[at..at + 3].copy_from_slice(&r.dac_cache);
                    r.dac_sub_index = 0;
                    r.dac_write_index = r.dac_write_index.wrapping_add(1);
                }
            }
            0x3CE => r.gr_index = value & (NUM_GR as u8 - 1),
            0x3CF => {
                let i = usize::from(r.gr_index) & (NUM_GR - 1);
                r.gr[i] = value & GR_MASK[i];
                self.apply_vbe_to_vga();
            }
            0x3B4 | 0x3D4 => r.cr_index = value,
            0x3B5 | 0x3D5 => {
                let i = usize::from(r.cr_index);
                if r.cr[CR_VSYNC_END] & CR11_PROTECT != 0 && i <= 7 {
                    // CR0-7 are locked, except the line compare bit 8 in the overflow register.
                    if i == 7 {
                        r.cr[7] = (r.cr[7] & !0x10) | (value & 0x10);
                        self.apply_vbe_to_vga();
                    }
                    return;
                }
                r.cr[i] = value;
                self.apply_vbe_to_vga();
            }
            0x3BA | 0x3DA => r.fcr = value & 0x10,
            _ => debug!("vga: write {value:#04x} to unused port {port:#x}"),
        }
    }

    // ----- DISPI -----

    fn dispi_write(&mut self, index: u16, value: u16) {
        match self.dispi.write_index(index, value) {
            DispiEffect::None => {}
            DispiEffect::Geometry => self.apply_vbe_to_vga(),
            DispiEffect::Enabled { clear_bytes } => {
                self.apply_vbe_to_vga();
                let len = (clear_bytes as usize).min(self.vram.len());
                self.vram.fill(0, len, 0);
            }
        }
    }

    /// A 16-bit DISPI register written `data.len()` bytes at byte `byte` (0 or 1) of it.
    fn dispi_partial_write(&mut self, index: u16, byte: usize, data: &[u8]) {
        let mut v = self.dispi.reg(index).to_le_bytes();
        for (i, &b) in data.iter().enumerate() {
            if let Some(slot) = v.get_mut(byte + i) {
                *slot = b;
            }
        }
        self.dispi_write(index, u16::from_le_bytes(v));
    }

    fn dispi_port_read(&mut self, offset: u64, data: &mut [u8]) {
        // Offset 0 is the index register; offsets 1 and 2 are the two bytes of the data port.
        let (value, first) = match offset {
            0 => (self.dispi.index, 0),
            _ => (self.dispi.read_data(), (offset - 1) as usize),
        };
        let bytes = value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(first + i).copied().unwrap_or(0xFF);
        }
    }

    fn dispi_port_write(&mut self, offset: u64, data: &[u8]) {
        if offset == 0 {
            let mut v = self.dispi.index.to_le_bytes();
            for (slot, &b) in v.iter_mut().zip(data) {
                *slot = b;
            }
            self.dispi.index = u16::from_le_bytes(v);
        } else {
            let byte = (offset - 1) as usize;
            if byte == 0 && data.len() >= 2 {
                self.dispi_write(self.dispi.index, u16::from_le_bytes([data[0], data[1]]));
            } else {
                debug!("vga: {}-byte DISPI data write at byte {byte}", data.len());
                self.dispi_partial_write(self.dispi.index, byte, data);
            }
        }
    }

    // ----- MMIO BAR -----

    fn mmio_read(&mut self, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset + i as u64;
            *b = match off {
                MMIO_PORTS..MMIO_PORTS_END => self.port_read(0x3C0 + (off - MMIO_PORTS) as u16),
                MMIO_DISPI..MMIO_DISPI_END => {
                    let index = ((off - MMIO_DISPI) / 2) as u16;
                    // QEMU selects the register through the index, visibly to the port side.
                    self.dispi.index = index;
                    self.dispi.read_index(index).to_le_bytes()[(off & 1) as usize]
                }
                MMIO_QEXT..MMIO_QEXT_END => {
                    let reg = if off < MMIO_QEXT + 4 {
                        QEXT_SIZE
                    } else if self.big_endian_fb {
                        QEXT_BIG_ENDIAN
                    } else {
                        QEXT_LITTLE_ENDIAN
                    };
                    reg.to_le_bytes()[(off & 3) as usize]
                }
                _ => 0,
            };
        }
    }

    fn mmio_write(&mut self, offset: u64, data: &[u8]) {
        let end = offset + data.len() as u64;
        if (MMIO_QEXT..MMIO_QEXT_END).contains(&offset) {
            if offset == MMIO_QEXT + 4 && data.len() == 4 {
                match u32::from_le_bytes([data[0], data[1], data[2], data[3]]) {
                    QEXT_BIG_ENDIAN => self.big_endian_fb = true,
                    QEXT_LITTLE_ENDIAN => self.big_endian_fb = false,
                    v => debug!("vga: framebuffer byte order {v:#x} ignored"),
                }
            } else {
                debug!(
                    "vga: {}-byte write at {offset:#x} of the QEMU extended registers ignored",
                    data.len()
                );
            }
            return;
        }
        let mut off = offset;
        while off < end {
            let i = (off - offset) as usize;
            match off {
                MMIO_PORTS..MMIO_PORTS_END => {
                    self.port_write(0x3C0 + (off - MMIO_PORTS) as u16, data[i]);
                    off += 1;
                }
                MMIO_DISPI..MMIO_DISPI_END => {
                    let index = ((off - MMIO_DISPI) / 2) as u16;
                    let byte = ((off - MMIO_DISPI) & 1) as usize;
                    let take = (2 - byte).min((end - off) as usize);
                    self.dispi.index = index;
                    if byte == 0 && take == 2 {
                        self.dispi_write(index, u16::from_le_bytes([data[i], data[i + 1]]));
                    } else {
                        self.dispi_partial_write(index, byte, &data[i..i + take]);
                    }
                    off += take as u64;
                }
                _ => {
                    debug!("vga: MMIO write at unused offset {off:#x}");
                    off += 1;
                }
            }
        }
    }

    // ----- Standard modes -----

    /// Program mode 3 (80x25 colour text at 0xB8000) as the VGA BIOS's INT 10h would, with the
    /// standard 16-colour attribute palette and the EGA colours in the DAC (no font is loaded).
    /// For boards that start a guest without running the VGA BIOS.
    pub fn set_text_mode_3(&mut self) {
        self.reset_registers();
        for (port, value) in standard_mode_3_accesses() {
            match value {
                Some(v) => self.port_write(port, v),
                None => {
                    self.port_read(port);
                }
            }
        }
    }
}

/// Port accesses (a write of the value, or a read for `None`) that set up mode 3: misc,
/// sequencer, CRTC (unlocked first), graphics controller, attribute controller (after a read
/// of input status 1 puts its flip-flop in the index phase), then the DAC (EGA palette in
/// entries 0-63).
fn standard_mode_3_accesses() -> Vec<(u16, Option<u8>)> {
    const SEQ: [u8; 5] = [0x03, 0x00, 0x03, 0x00, 0x02];
    const CRTC: [u8; 25] = [
        0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00, 0x00, 0x00,
        0x00, 0x9C, 0x0E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF,
    ];
    const GC: [u8; 9] = [0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x00, 0xFF];
    const AC: [u8; 21] = [
        0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B, 0x3C, 0x3D, 0x3E,
        0x3F, 0x0C, 0x00, 0x0F, 0x08, 0x00,
    ];
    let mut w = vec![(0x3C2, Some(0x67))];
    for (i, v) in SEQ.iter().enumerate() {
        w.extend([(0x3C4, Some(i as u8)), (0x3C5, Some(*v))]);
    }
    w.extend([(0x3D4, Some(0x11)), (0x3D5, Some(0x0E))]);
    for (i, v) in CRTC.iter().enumerate() {
        w.extend([(0x3D4, Some(i as u8)), (0x3D5, Some(*v))]);
    }
    for (i, v) in GC.iter().enumerate() {
        w.extend([(0x3CE, Some(i as u8)), (0x3CF, Some(*v))]);
    }
    w.push((0x3DA, None));
    for (i, v) in AC.iter().enumerate() {
        w.extend([(0x3C0, Some(i as u8)), (0x3C0, Some(*v))]);
    }
    // Re-enable the display (palette address source).
    w.push((0x3C0, Some(0x20)));
    w.push((0x3C8, Some(0)));
    for i in 0..64u8 {
        // EGA colour i: bits 5:0 = r'g'b'RGB, each primary 2/3 bright, each secondary 1/3.
        let c = |hi: u8, lo: u8| ((i >> hi) & 1) * 0x2A + ((i >> lo) & 1) * 0x15;
        w.extend([
            (0x3C9, Some(c(2, 5))),
            (0x3C9, Some(c(1, 4))),
            (0x3C9, Some(c(0, 3))),
        ]);
    }
    w
}

fn checked_vram_size(size: usize) -> Result<usize, VgaError> {
    if size.is_power_of_two() && (MIN_VRAM_SIZE..=MAX_VRAM_SIZE).contains(&size) {
        Ok(size)
    } else {
        Err(VgaError::BadVramSize(size))
    }
}

impl BusDevice for Vga {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        match at.base {
            LEGACY_WINDOW_BASE => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self.mem_read(at.offset + i as u64);
                }
            }
            DISPI_PORT_BASE => self.dispi_port_read(at.offset, data),
            base if VGA_PORT_RANGES.iter().any(|&(b, _)| b == base) => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = self.port_read(at.absolute().wrapping_add(i as u64) as u16);
                }
            }
            base => debug!("vga: read at unexpected base {base:#x}"),
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        match at.base {
            LEGACY_WINDOW_BASE => {
                for (i, &b) in data.iter().enumerate() {
                    self.mem_write(at.offset + i as u64, b);
                }
            }
            DISPI_PORT_BASE => self.dispi_port_write(at.offset, data),
            base if VGA_PORT_RANGES.iter().any(|&(b, _)| b == base) => {
                // A 16-bit access is two byte cycles, low (the index) first.
                for (i, &b) in data.iter().enumerate() {
                    self.port_write(at.absolute().wrapping_add(i as u64) as u16, b);
                }
            }
            base => debug!("vga: write at unexpected base {base:#x}"),
        }
    }

    /// Byte and word accesses: the VGA ports are 8-bit (a word access writes index then data),
    /// the DISPI registers 16-bit.
    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::new(1, 2)
    }
}

impl PciFunction for Vga {
    fn name(&self) -> &str {
        "vga"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            VRAM_BAR => self.read_vram_clamped(offset, data),
            MMIO_BAR => self.mmio_read(offset, data),
            ROM_BAR => {
                for (i, b) in data.iter_mut().enumerate() {
                    *b = usize::try_from(offset + i as u64)
                        .ok()
                        .and_then(|o| self.rom.get(o))
                        .copied()
                        .unwrap_or(0xFF);
                }
            }
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            VRAM_BAR => {
                if offset.saturating_add(data.len() as u64) <= self.vram.len() as u64 {
                    self.vram.write(offset as usize, data);
                }
            }
            MMIO_BAR => self.mmio_write(offset, data),
            _ => debug!("vga: write to read-only BAR {bar} at {offset:#x} ignored"),
        }
    }

    fn bar_access_sizes(&self, bar: usize) -> AccessSizes {
        match bar {
            // Registers of 8, 16 and 32 bits side by side: each region decodes its own width.
            MMIO_BAR => AccessSizes::new(1, 4),
            _ => AccessSizes::ANY,
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        self.reset_registers();
    }

    fn save_device_state(&self) -> Vec<u8> {
        crate::snapshot::save(self)
    }

    fn restore_device_state(&mut self, blob: &[u8]) -> Result<(), SnapshotError> {
        crate::snapshot::restore(self, blob)
    }
}

impl Snapshot for Vga {
    fn snapshot_id(&self) -> &'static str {
        "vga"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    /// The VGA registers, the DISPI registers, the framebuffer byte order, then the video memory
    /// up to its last non-zero byte (the rest is zero). The PCI configuration space is the
    /// root's to save.
    fn save_state(&self, w: &mut StateWriter) {
        let r = &self.regs;
        w.u8(r.msr);
        w.u8(r.fcr);
        w.u8(r.st01);
        w.u8(r.sr_index);
        w.bytes(&r.sr);
        w.u8(r.gr_index);
        w.bytes(&r.gr);
        w.u8(r.ar_index);
        w.bytes(&r.ar);
        w.bool(r.ar_flip_flop);
        w.u8(r.cr_index);
        w.bytes(&r.cr);
        w.u8(r.dac_state);
        w.u8(r.dac_sub_index);
        w.u8(r.dac_read_index);
        w.u8(r.dac_write_index);
        w.bytes(&r.dac_cache);
        w.u8(r.pel_mask);
        w.bytes(&r.palette);
        w.u32(r.latch);
        self.dispi.save(w);
        w.bool(self.big_endian_fb);
        w.u32(self.vram.len() as u32);
        let used = self.used_vram();
        let mut bytes = vec![0u8; used];
        self.vram.read(0, &mut bytes);
        w.var_bytes(&bytes);
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let mut regs = Regs::power_on();
        regs.msr = r.u8()?;
        regs.fcr = r.u8()?;
        regs.st01 = r.u8()?;
        regs.sr_index = r.u8_below(NUM_SR as u8)?;
        r.bytes(&mut regs.sr)?;
        regs.gr_index = r.u8_below(NUM_GR as u8)?;
        r.bytes(&mut regs.gr)?;
        regs.ar_index = r.u8_below(0x40)?;
        r.bytes(&mut regs.ar)?;
        regs.ar_flip_flop = r.bool()?;
        regs.cr_index = r.u8()?;
        r.bytes(&mut regs.cr)?;
        regs.dac_state = r.u8()?;
        if regs.dac_state != 0 && regs.dac_state != 3 {
            return Err(SnapshotError::Invalid(format!(
                "DAC state {} is neither 0 nor 3",
                regs.dac_state
            )));
        }
        regs.dac_sub_index = r.u8_below(3)?;
        regs.dac_read_index = r.u8()?;
        regs.dac_write_index = r.u8()?;
        r.bytes(&mut regs.dac_cache)?;
        regs.pel_mask = r.u8()?;
        r.bytes(&mut regs.palette)?;
        regs.latch = r.u32()?;
        let dispi = self.dispi.load(r)?;
        let big_endian_fb = r.bool()?;
        let size = r.u32()? as usize;
        if size != self.vram.len() {
            return Err(SnapshotError::Invalid(format!(
                "{} KiB of video memory saved, this adapter has {} KiB",
                size >> 10,
                self.vram.len() >> 10
            )));
        }
        let vram = r.var_bytes(self.vram.len())?;
        self.regs = regs;
        self.dispi = dispi;
        self.big_endian_fb = big_endian_fb;
        self.vram.write(0, &vram);
        let rest = self.vram.len() - vram.len();
        self.vram.fill(vram.len(), rest, 0);
        Ok(())
    }
}

impl Vga {
    /// Bytes up to and including the last non-zero one.
    fn used_vram(&self) -> usize {
        const CHUNK: usize = 64 << 10;
        let mut buf = vec![0u8; CHUNK];
        let mut end = self.vram.len();
        while end > 0 {
            let start = end.saturating_sub(CHUNK);
            let chunk = &mut buf[..end - start];
            self.vram.read(start, chunk);
            if let Some(last) = chunk.iter().rposition(|&b| b != 0) {
                return start + last + 1;
            }
            end = start;
        }
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusKind;
    use crate::pci::piix3::PirqRouter;
    use crate::pci::root::PciRoot;
    use crate::pci::{Bdf, config_space::command};
    use crate::snapshot::{self, check_round_trip};

    struct Rig {
        vga: Arc<Mutex<Vga>>,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
    }

    fn rig_with(config: VgaConfig) -> Rig {
        let vga = Vga::new_shared(config).unwrap();
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        Vga::register_legacy(&vga, &pio, &mmio).unwrap();
        Rig { vga, pio, mmio }
    }

    fn rig() -> Rig {
        rig_with(VgaConfig::default())
    }

    impl Rig {
        fn outb(&self, port: u16, v: u8) {
            self.pio.write_value(u64::from(port), 1, u64::from(v));
        }
        fn outw(&self, port: u16, v: u16) {
            self.pio.write_value(u64::from(port), 2, u64::from(v));
        }
        fn inb(&self, port: u16) -> u8 {
            self.pio.read_value(u64::from(port), 1) as u8
        }
        fn inw(&self, port: u16) -> u16 {
            self.pio.read_value(u64::from(port), 2) as u16
        }
        fn sr(&self, i: u8, v: u8) {
            self.outb(0x3C4, i);
            self.outb(0x3C5, v);
        }
        fn gr(&self, i: u8, v: u8) {
            self.outb(0x3CE, i);
            self.outb(0x3CF, v);
        }
        fn cr(&self, i: u8, v: u8) {
            self.outb(0x3D4, i);
            self.outb(0x3D5, v);
        }
        fn read_cr(&self, i: u8) -> u8 {
            self.outb(0x3D4, i);
            self.inb(0x3D5)
        }
        fn dispi(&self, index: u16, v: u16) {
            self.outw(0x1CE, index);
            self.outw(0x1CF, v);
        }
        fn read_dispi(&self, index: u16) -> u16 {
            self.outw(0x1CE, index);
            self.inw(0x1CF)
        }
        fn mem_w(&self, addr: u64, v: u8) {
            self.mmio.write_value(addr, 1, u64::from(v));
        }
        fn mem_r(&self, addr: u64) -> u8 {
            self.mmio.read_value(addr, 1) as u8
        }
        fn vram(&self, at: usize) -> u8 {
            let mut b = [0u8];
            self.vga.lock().unwrap().vram.read(at, &mut b);
            b[0]
        }
        fn mode3(&self) {
            for (port, value) in standard_mode_3_accesses() {
                match value {
                    Some(v) => self.outb(port, v),
                    None => {
                        self.inb(port);
                    }
                }
            }
        }
        /// Mode 12h (640x480, 16 colours, planar) register values.
        fn mode12(&self) {
            self.outb(0x3C2, 0xE3);
            for (i, v) in [0x03, 0x01, 0x0F, 0x00, 0x06].into_iter().enumerate() {
                self.sr(i as u8, v);
            }
            self.cr(0x11, 0x0E);
            let crtc = [
                0x5F, 0x4F, 0x50, 0x82, 0x54, 0x80, 0x0B, 0x3E, 0x00, 0x40, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0xEA, 0x0C, 0xDF, 0x28, 0x00, 0xE7, 0x04, 0xE3, 0xFF,
            ];
            for (i, v) in crtc.into_iter().enumerate() {
                self.cr(i as u8, v);
            }
            for (i, v) in [0x00, 0x00, 0x00, 0x00, 0x03, 0x00, 0x05, 0x0F, 0xFF]
                .into_iter()
                .enumerate()
            {
                self.gr(i as u8, v);
            }
        }
        /// Mode 13h (320x200, 256 colours, chain-4).
        fn mode13(&self) {
            self.outb(0x3C2, 0x63);
            for (i, v) in [0x03, 0x01, 0x0F, 0x00, 0x0E].into_iter().enumerate() {
                self.sr(i as u8, v);
            }
            self.cr(0x11, 0x0E);
            let crtc = [
                0x5F, 0x4F, 0x50, 0x82, 0x54, 0x80, 0xBF, 0x1F, 0x00, 0x41, 0x00, 0x00, 0x00, 0x00,
                0x00, 0x00, 0x9C, 0x0E, 0x8F, 0x28, 0x40, 0x96, 0xB9, 0xA3, 0xFF,
            ];
            for (i, v) in crtc.into_iter().enumerate() {
                self.cr(i as u8, v);
            }
            for (i, v) in [0x00, 0x00, 0x00, 0x00, 0x00, 0x40, 0x05, 0x0F, 0xFF]
                .into_iter()
                .enumerate()
            {
                self.gr(i as u8, v);
            }
            self.inb(0x3DA);
            self.outb(0x3C0, 0x10);
            self.outb(0x3C0, 0x41);
            self.outb(0x3C0, 0x20);
        }
    }

    fn text(r: &Rig) -> TextScreen {
        r.vga.lock().unwrap().text_screen().expect("a text mode")
    }

    #[test]
    fn mode_3_text_through_the_b8000_window() {
        let r = rig();
        r.mode3();
        for (i, ch) in b"Hello, VGA!".iter().enumerate() {
            // Character then attribute, as a 16-bit store (the bus hands over both bytes).
            r.mmio
                .write_value(0xB8000 + 2 * i as u64, 2, u64::from(*ch) | 0x1F << 8);
        }
        // Row 2, column 5; code page 437 box drawing.
        r.mem_w(0xB8000 + (2 * 80 + 5) * 2, 0xC9);
        r.mem_w(0xB8000 + (2 * 80 + 5) * 2 + 1, 0x4E);
        let t = text(&r);
        assert_eq!((t.cols, t.rows), (80, 25));
        assert_eq!(t.row_text(0), "Hello, VGA!");
        assert_eq!(t.cell(0, 0).unwrap().attr, 0x1F);
        assert_eq!(t.row_text(2), "     ╔");
        assert_eq!(
            *t.cell(5, 2).unwrap(),
            text::TextCell {
                code: 0xC9,
                ch: '╔',
                attr: 0x4E
            }
        );
        // QEMU's layout: cell n's character in plane 0 and attribute in plane 1 of dword n.
        assert_eq!(r.vram(0), b'H');
        assert_eq!(r.vram(1), 0x1F);
        assert_eq!(r.vram(4), b'e');
        // Reads come back through odd/even addressing.
        assert_eq!(r.mem_r(0xB8002), b'e');
        assert_eq!(r.mem_r(0xB8003), 0x1F);
        assert_eq!(r.mmio.read_value(0xB8000, 2), u64::from(b'H') | 0x1F << 8);
        // The other windows are not decoded in this memory map.
        assert_eq!(r.mem_r(0xA0000), 0xFF);
        assert_eq!(
            r.vga.lock().unwrap().mode(),
            DisplayMode::Text {
                cols: 80,
                rows: 25,
                char_width: 9,
                char_height: 16
            }
        );
    }

    #[test]
    fn start_address_scrolls_the_screen() {
        let r = rig();
        r.mode3();
        r.mem_w(0xB8000 + 80 * 2, b'X');
        assert_eq!(text(&r).row_text(1), "X");
        r.cr(0x0C, 0);
        r.cr(0x0D, 80);
        assert_eq!(text(&r).row_text(0), "X");
    }

    #[test]
    fn cursor_from_crtc_location_registers() {
        let r = rig();
        r.mode3();
        r.cr(0x0E, 0x00);
        r.cr(0x0F, 165); // row 2, column 5
        let c = text(&r).cursor.unwrap();
        assert_eq!((c.col, c.row), (5, 2));
        assert_eq!((c.start_line, c.end_line), (0x0D, 0x0E));
        r.cr(0x0E, 0x07);
        r.cr(0x0F, 0xCF); // 1999: the last cell
        let c = text(&r).cursor.unwrap();
        assert_eq!((c.col, c.row), (79, 24));
        r.cr(0x0F, 0xD0); // 2000: off the screen
        assert_eq!(text(&r).cursor, None);
        r.cr(0x0F, 0x00);
        r.cr(0x0A, 0x20 | 0x0D); // cursor disable
        assert_eq!(text(&r).cursor, None);
    }

    #[test]
    fn dac_round_trip_with_auto_increment() {
        let r = rig();
        r.outb(0x3C8, 5);
        for v in [0x3F, 0x20, 0x01, 0x02, 0x03, 0x04] {
            r.outb(0x3C9, v);
        }
        assert_eq!(r.inb(0x3C8), 7, "two entries written");
        assert_eq!(r.inb(0x3C7), 0, "write mode");
        r.outb(0x3C7, 5);
        assert_eq!(r.inb(0x3C7), 3, "read mode");
        let read: Vec<u8> = (0..6).map(|_| r.inb(0x3C9)).collect();
        assert_eq!(read, [0x3F, 0x20, 0x01, 0x02, 0x03, 0x04]);
        // An incomplete triple is not stored.
        r.outb(0x3C8, 9);
        r.outb(0x3C9, 0x11);
        r.outb(0x3C8, 10);
        r.outb(0x3C7, 9);
        assert_eq!(r.inb(0x3C9), 0);
        // The PEL mask is a plain register.
        r.outb(0x3C6, 0x0F);
        assert_eq!(r.inb(0x3C6), 0x0F);
        assert_eq!(r.vga.lock().unwrap().palette_rgb(5), 0xFF8204);
    }

    #[test]
    fn attribute_flip_flop() {
        let r = rig();
        r.outb(0x3C2, 0x01);
        r.inb(0x3DA); // reset: next write is an index
        r.outb(0x3C0, 0x05);
        // QEMU reads the index back only in the index phase, zero in the data phase.
        assert_eq!(r.inb(0x3C0), 0);
        r.outb(0x3C0, 0x3A); // data
        assert_eq!(r.inb(0x3C1), 0x3A);
        assert_eq!(r.inb(0x3C0), 0x05, "index reads back");
        // Back in index state: this write selects register 0x10.
        r.outb(0x3C0, 0x10);
        // Reading input status 1 drops the pending data phase.
        r.inb(0x3DA);
        r.outb(0x3C0, 0x12);
        r.outb(0x3C0, 0x0F);
        r.outb(0x3C0, 0x12);
        assert_eq!(r.inb(0x3C1), 0x0F);
        r.inb(0x3DA);
        r.outb(0x3C0, 0x10);
        assert_eq!(r.inb(0x3C1), 0, "mode register untouched");
        // Palette registers keep 6 bits.
        r.inb(0x3DA);
        r.outb(0x3C0, 0x01);
        r.outb(0x3C0, 0xFF);
        r.outb(0x3C0, 0x01);
        assert_eq!(r.inb(0x3C1), 0x3F);
    }

    #[test]
    fn input_status_toggles_and_follows_the_clock() {
        let r = rig();
        r.outb(0x3C2, 0x01);
        let a = r.inb(0x3DA);
        let b = r.inb(0x3DA);
        assert_eq!(a ^ b, 0x09, "retrace and display bits flip on every read");

        let clock = Clock::new(0);
        let r = rig_with(VgaConfig {
            retrace: Retrace::Clock(clock.clone()),
            ..VgaConfig::default()
        });
        r.outb(0x3C2, 0x01);
        assert_eq!(r.inb(0x3DA) & 0x09, 0, "top of the frame, in the display");
        assert_eq!(r.inb(0x3DA) & 0x09, 0, "the clock has not moved");
        clock.advance_to(490 * LINE_NS + 100);
        assert_eq!(r.inb(0x3DA) & 0x09, 0x09, "vertical retrace");
        clock.advance_to(500 * LINE_NS);
        assert_eq!(r.inb(0x3DA) & 0x09, 0x01, "blanking, retrace over");
        clock.advance_to(525 * LINE_NS + 3 * LINE_NS + 10);
        assert_eq!(r.inb(0x3DA) & 0x09, 0, "next frame");
        clock.advance_to(525 * LINE_NS + 3 * LINE_NS + 30_000);
        assert_eq!(r.inb(0x3DA) & 0x09, 0x01, "horizontal blanking");
    }

    #[test]
    fn misc_output_moves_the_crtc() {
        let r = rig();
        r.outb(0x3C2, 0x67);
        assert_eq!(r.inb(0x3CC), 0x67);
        r.cr(0x0C, 0x12);
        assert_eq!(r.read_cr(0x0C), 0x12);
        assert_eq!(r.inb(0x3B4), 0xFF, "mono CRTC not decoded in colour mode");
        r.outb(0x3B4, 0x0C);
        r.outb(0x3B5, 0x99);
        assert_eq!(
            r.read_cr(0x0C),
            0x12,
            "writes to the mono ports are ignored"
        );
        // Bit 0 clear: monochrome addressing at 0x3Bx.
        r.outb(0x3C2, 0x66);
        assert_eq!(r.inb(0x3CC), 0x66);
        r.outb(0x3B4, 0x0C);
        assert_eq!(r.inb(0x3B5), 0x12);
        assert_eq!(r.inb(0x3D5), 0xFF);
        r.outw(0x3B4, 0x340C); // index then data in one word
        assert_eq!(r.inb(0x3B5), 0x34);
        // Bit 4 is reserved.
        r.outb(0x3C2, 0xFF);
        assert_eq!(r.inb(0x3CC), 0xEF);
    }

    #[test]
    fn crtc_write_protect_locks_0_to_7() {
        let r = rig();
        r.outb(0x3C2, 0x01);
        r.cr(0x01, 0x4F);
        r.cr(0x07, 0x00);
        r.cr(0x11, 0x80);
        r.cr(0x01, 0x27);
        assert_eq!(r.read_cr(0x01), 0x4F);
        r.cr(0x07, 0xFF);
        assert_eq!(
            r.read_cr(0x07),
            0x10,
            "only the line compare bit is writable"
        );
        r.cr(0x08, 0x05);
        assert_eq!(r.read_cr(0x08), 0x05, "0x08 is not protected");
        r.cr(0x11, 0x00);
        r.cr(0x01, 0x27);
        assert_eq!(r.read_cr(0x01), 0x27);
    }

    #[test]
    fn planar_write_modes_and_read_modes() {
        let r = rig();
        r.mode12();
        assert_eq!(
            r.vga.lock().unwrap().mode(),
            DisplayMode::Graphics {
                width: 640,
                height: 480,
                bpp: 4
            }
        );
        r.sr(2, 0x0F);
        let planes = |a: usize| {
            [
                r.vram(4 * a),
                r.vram(4 * a + 1),
                r.vram(4 * a + 2),
                r.vram(4 * a + 3),
            ]
        };

        // Write mode 0, plain: the byte goes to every enabled plane.
        r.mem_w(0xA0000, 0xA5);
        assert_eq!(planes(0), [0xA5; 4]);
        // Map mask selects planes.
        r.sr(2, 0x02);
        r.mem_w(0xA0000, 0x11);
        assert_eq!(planes(0), [0xA5, 0x11, 0xA5, 0xA5]);
        r.sr(2, 0x0F);
        // Set/reset: planes 0 and 2 from the set/reset value, for the enabled planes.
        r.gr(GR_SET_RESET as u8, 0x05);
        r.gr(GR_ENABLE_SET_RESET as u8, 0x0F);
        r.mem_w(0xA0001, 0x00);
        assert_eq!(planes(1), [0xFF, 0x00, 0xFF, 0x00]);
        r.gr(GR_ENABLE_SET_RESET as u8, 0x01);
        r.mem_w(0xA0001, 0x3C);
        assert_eq!(planes(1), [0xFF, 0x3C, 0x3C, 0x3C]);
        r.gr(GR_ENABLE_SET_RESET as u8, 0x00);

        // Read mode 0: the read map select picks the plane (and loads the latches).
        r.gr(GR_READ_MAP as u8, 1);
        assert_eq!(r.mem_r(0xA0000), 0x11);
        r.gr(GR_READ_MAP as u8, 0);
        assert_eq!(r.mem_r(0xA0000), 0xA5);

        // Bit mask: unmasked bits come from the latches (loaded by the read of 0xA0000).
        r.gr(GR_BIT_MASK as u8, 0x0F);
        r.mem_w(0xA0002, 0x00);
        assert_eq!(planes(2), [0xA0, 0x10, 0xA0, 0xA0]);
        r.gr(GR_BIT_MASK as u8, 0xFF);

        // Function select XOR against the latches; rotate by 4.
        r.gr(GR_ROTATE as u8, 0x18 | 4);
        r.mem_w(0xA0003, 0x0F);
        assert_eq!(
            planes(3),
            [0xA5 ^ 0xF0, 0x11 ^ 0xF0, 0xA5 ^ 0xF0, 0xA5 ^ 0xF0]
        );
        r.gr(GR_ROTATE as u8, 0x08); // AND
        r.mem_w(0xA0003, 0x0F);
        assert_eq!(planes(3), [0x05, 0x01, 0x05, 0x05]);
        r.gr(GR_ROTATE as u8, 0x00);

        // Write mode 1: the latches are copied whole (a screen-to-screen copy).
        r.gr(GR_MODE as u8, 0x01);
        r.mem_r(0xA0000);
        r.mem_w(0xA0010, 0x00);
        assert_eq!(planes(0x10), [0xA5, 0x11, 0xA5, 0xA5]);

        // Write mode 2: the low nibble is a colour expanded to the planes, bit mask applies.
        r.gr(GR_MODE as u8, 0x02);
        r.gr(GR_BIT_MASK as u8, 0xF0);
        r.mem_r(0xA0020); // latches: zero
        r.mem_w(0xA0020, 0x09);
        assert_eq!(planes(0x20), [0xF0, 0x00, 0x00, 0xF0]);

        // Write mode 3: the set/reset colour, masked by the rotated byte AND the bit mask.
        r.gr(GR_MODE as u8, 0x03);
        r.gr(GR_SET_RESET as u8, 0x06);
        r.gr(GR_BIT_MASK as u8, 0xFF);
        r.gr(GR_ROTATE as u8, 0x01); // rotate right by 1
        r.mem_r(0xA0021);
        r.mem_w(0xA0021, 0x81); // rotated: 0xC0
        assert_eq!(planes(0x21), [0x00, 0xC0, 0xC0, 0x00]);
        r.gr(GR_ROTATE as u8, 0x00);

        // Read mode 1: colour compare 9 (planes 0 and 3) on pixels written with mode 2.
        r.gr(GR_MODE as u8, 0x08);
        r.gr(GR_COLOR_COMPARE as u8, 0x09);
        r.gr(GR_DONT_CARE as u8, 0x0F);
        assert_eq!(r.mem_r(0xA0020), 0xF0);
        assert_eq!(r.mem_r(0xA0021), 0x00, "colour 6 and colour 0 there");
        r.gr(GR_COLOR_COMPARE as u8, 0x06);
        assert_eq!(r.mem_r(0xA0021), 0xC0);
        r.gr(GR_DONT_CARE as u8, 0x0B);
        assert_eq!(
            r.mem_r(0xA0020),
            0x00,
            "colour 9 differs from 6 in planes 0, 1, 3"
        );
        // Only plane 2 compared: colour 6 has it set, colours 9 and 0 do not.
        r.gr(GR_DONT_CARE as u8, 0x04);
        assert_eq!(r.mem_r(0xA0020), 0x00);
        assert_eq!(r.mem_r(0xA0021), 0xC0);
        r.gr(GR_COLOR_COMPARE as u8, 0x00);
        assert_eq!(r.mem_r(0xA0020), 0xFF);
        r.gr(GR_DONT_CARE as u8, 0x0F);
        r.gr(GR_COLOR_COMPARE as u8, 0x00);
        assert_eq!(r.mem_r(0xA0021), 0x3F, "colour 0 matches the unset pixels");
        r.gr(GR_DONT_CARE as u8, 0x00);
        assert_eq!(
            r.mem_r(0xA0021),
            0xFF,
            "nothing compared: everything matches"
        );
    }

    #[test]
    fn chain_4_mode_13h_pixels() {
        let r = rig();
        r.mode13();
        assert_eq!(
            r.vga.lock().unwrap().mode(),
            DisplayMode::Graphics {
                width: 320,
                height: 200,
                bpp: 8
            }
        );
        for (x, y, c) in [
            (0u64, 0u64, 1u8),
            (1, 0, 2),
            (319, 199, 0x7F),
            (5, 10, 0xAA),
        ] {
            r.mem_w(0xA0000 + y * 320 + x, c);
            assert_eq!(r.vram((y * 320 + x) as usize), c);
            assert_eq!(r.mem_r(0xA0000 + y * 320 + x), c);
        }
        // Pixel n lives in plane n & 3: the map mask gates it.
        r.sr(2, 0x01);
        r.mem_w(0xA0004, 0x44); // plane 0
        r.mem_w(0xA0005, 0x55); // plane 1: masked
        assert_eq!((r.vram(4), r.vram(5)), (0x44, 0x00));
    }

    #[test]
    fn vga_graphics_framebuffers() {
        let r = rig();
        r.mode13();
        r.outb(0x3C8, 0x21);
        for v in [0x3F, 0x3F, 0x00] {
            r.outb(0x3C9, v);
        }
        r.mem_w(0xA0000 + 3 * 320 + 7, 0x21);
        let fb = r.vga.lock().unwrap().framebuffer_snapshot().unwrap();
        assert_eq!((fb.width, fb.height), (320, 200));
        assert_eq!(fb.pixel(7, 3), Some(0xFFFF00));
        assert_eq!(fb.pixel(8, 3), Some(0));

        // Mode 12h: colour 9 through an attribute palette that maps it to DAC entry 0x3C.
        let r = rig();
        r.mode12();
        r.inb(0x3DA);
        for (i, v) in [(0x09u8, 0x3Cu8), (0x10, 0x01), (0x12, 0x0F), (0x14, 0x00)] {
            r.outb(0x3C0, i);
            r.outb(0x3C0, v);
        }
        r.outb(0x3C0, 0x20);
        r.outb(0x3C8, 0x3C);
        for v in [0x00, 0x3F, 0x3F] {
            r.outb(0x3C9, v);
        }
        r.gr(GR_MODE as u8, 0x02);
        r.gr(GR_BIT_MASK as u8, 0x40); // the second pixel of the byte
        r.mem_r(0xA0000 + 80 * 10 + 1);
        r.mem_w(0xA0000 + 80 * 10 + 1, 0x09);
        let fb = r.vga.lock().unwrap().framebuffer_snapshot().unwrap();
        assert_eq!((fb.width, fb.height), (640, 480));
        assert_eq!(fb.pixel(9, 10), Some(0x00FFFF));
        assert_eq!(fb.pixel(8, 10), Some(0));
        assert_eq!(fb.pixel(10, 10), Some(0));
        // Disabling plane 3 in the attribute controller turns colour 9 into colour 1.
        r.inb(0x3DA);
        r.outb(0x3C0, 0x12);
        r.outb(0x3C0, 0x07);
        let fb = r.vga.lock().unwrap().framebuffer_snapshot().unwrap();
        assert_eq!(fb.pixel(9, 10), Some(0));
        // Text modes have no framebuffer.
        let r = rig();
        r.mode3();
        assert!(r.vga.lock().unwrap().framebuffer_snapshot().is_none());
    }

    #[test]
    fn font_loading_reaches_plane_2() {
        let r = rig();
        r.mode3();
        // What a BIOS does to load a font: plane 2, sequential addressing, map at A0000.
        r.sr(2, 0x04);
        r.sr(4, 0x07);
        r.gr(4, 0x02);
        r.gr(5, 0x00);
        r.gr(6, 0x04);
        r.mem_w(0xA0000 + 0x41 * 32 + 3, 0x7E);
        assert_eq!(r.vram((0x41 * 32 + 3) * 4 + 2), 0x7E);
        assert_eq!(r.mem_r(0xA0000 + 0x41 * 32 + 3), 0x7E);
        // Back to text: the characters are untouched.
        assert_eq!(r.vram(0x41 * 32 * 4), 0);
    }

    /// The root, the VGA at 00:02.0 with its legacy ranges, BAR 0 at 0xE000_0000, BAR 2 at
    /// 0xFEBF_0000, memory decoding on.
    fn pci_rig(rom: Option<Vec<u8>>) -> (Rig, PciRoot, Bdf) {
        pci_rig_with(VgaConfig {
            rom,
            ..VgaConfig::default()
        })
    }

    fn pci_rig_with(config: VgaConfig) -> (Rig, PciRoot, Bdf) {
        let r = rig_with(config);
        let root = PciRoot::new(r.pio.clone(), r.mmio.clone(), PirqRouter::unconnected());
        let bdf = Bdf::new(0, 2, 0).unwrap();
        root.add_function(bdf, r.vga.clone()).unwrap();
        root.config_write(bdf, 0x10, 4, 0xE000_0000);
        root.config_write(bdf, 0x18, 4, 0xFEBF_0000);
        root.config_write(
            bdf,
            0x04,
            2,
            u32::from(command::MEMORY_SPACE | command::IO_SPACE),
        );
        (r, root, bdf)
    }

    const LFB: u64 = 0xE000_0000;
    const MMIO: u64 = 0xFEBF_0000;

    #[test]
    fn pci_identity_and_bar_sizing() {
        let rom = vec![0x55; 0x6000];
        let (_r, root, d) = pci_rig(Some(rom));
        assert_eq!(root.config_read(d, 0x00, 4), 0x1111_1234);
        assert_eq!(root.config_read(d, 0x08, 4), 0x0300_0002);
        assert_eq!(root.config_read(d, 0x2C, 4), 0x1100_1AF4);
        assert_eq!(root.config_read(d, 0x3D, 1), 0, "no interrupt pin");
        for (reg, size_mask) in [
            (0x10, 0xFF00_0008u32), // 16 MiB, prefetchable 32-bit memory
            (0x14, 0),              // reserved for a 64-bit framebuffer BAR
            (0x18, 0xFFFF_F000),    // 4 KiB MMIO
            (0x30, 0xFFFF_8001),    // 24 KiB image in a 32 KiB ROM BAR
        ] {
            let old = root.config_read(d, reg, 4);
            root.config_write(d, reg, 4, 0xFFFF_FFFF);
            assert_eq!(root.config_read(d, reg, 4), size_mask, "register {reg:#x}");
            root.config_write(d, reg, 4, old);
        }
        let (_r, root, d) = pci_rig(None);
        root.config_write(d, 0x30, 4, 0xFFFF_FFFF);
        assert_eq!(root.config_read(d, 0x30, 4), 0, "no ROM, no ROM BAR");
    }

    #[test]
    fn rom_bar_returns_the_bios_image() {
        let mut image = vec![0u8; 0x9000];
        image[0] = 0x55;
        image[1] = 0xAA;
        image[2] = 0x48;
        image[0x8FFF] = 0x77;
        let (r, root, d) = pci_rig(Some(image));
        root.config_write(d, 0x30, 4, 0xFEB0_0000 | 1);
        assert_eq!(r.mmio.read_value(0xFEB0_0000, 4), 0x0048_AA55);
        assert_eq!(r.mmio.read_value(0xFEB0_8FFF, 1), 0x77);
        assert_eq!(r.mmio.read_value(0xFEB0_9000, 4), 0, "padding to 64 KiB");
        r.mmio.write_value(0xFEB0_0000, 1, 0);
        assert_eq!(r.mmio.read_value(0xFEB0_0000, 1), 0x55, "read-only");
        // Debian's VGA BIOS, when installed: a valid option ROM header.
        if let Ok(real) = std::fs::read("/usr/share/seabios/vgabios-stdvga.bin") {
            let vga = Vga::new(VgaConfig {
                rom: Some(real.clone()),
                ..VgaConfig::default()
            });
            let mut vga = vga.unwrap();
            let mut head = [0u8; 3];
            vga.bar_read(ROM_BAR, 0, &mut head);
            assert_eq!(&head[..2], &[0x55, 0xAA]);
            assert!(usize::from(head[2]) * 512 <= real.len().next_power_of_two());
        }
    }

    fn set_vbe(r: &Rig, x: u16, y: u16, bpp: u16, enable: u16) {
        r.dispi(vbe::INDEX_ENABLE, 0);
        r.dispi(vbe::INDEX_XRES, x);
        r.dispi(vbe::INDEX_YRES, y);
        r.dispi(vbe::INDEX_BPP, bpp);
        r.dispi(vbe::INDEX_ENABLE, enable);
    }

    #[test]
    fn vbe_1024x768x32_through_the_linear_framebuffer() {
        let (r, _root, _d) = pci_rig(None);
        r.mode3();
        r.mmio.write_value(LFB + 8, 4, 0xDEAD_BEEF);
        set_vbe(&r, 1024, 768, 32, vbe::ENABLED | vbe::LFB_ENABLED);
        assert_eq!(
            r.mmio.read_value(LFB + 8, 4),
            0,
            "enabling clears the screen"
        );
        let vga_mode = r.vga.lock().unwrap().mode();
        assert_eq!(
            vga_mode,
            DisplayMode::Vbe {
                width: 1024,
                height: 768,
                bpp: 32
            }
        );
        assert!(r.vga.lock().unwrap().text_screen().is_none());
        let px = |x: u64, y: u64| LFB + (y * 1024 + x) * 4;
        r.mmio.write_value(px(0, 0), 4, 0x00FF_0000);
        r.mmio.write_value(px(1023, 767), 4, 0x0012_3456);
        r.mmio.write_value(px(10, 20), 8, 0x0000_FF00_0000_00FF);
        assert_eq!(r.mmio.read_value(px(1023, 767), 4), 0x0012_3456);
        let fb = r.vga.lock().unwrap().framebuffer_snapshot().unwrap();
        assert_eq!(
            (fb.width, fb.height, fb.pixels.len()),
            (1024, 768, 1024 * 768)
        );
        assert_eq!(fb.pixel(0, 0), Some(0xFF0000));
        assert_eq!(fb.pixel(1023, 767), Some(0x123456));
        assert_eq!(fb.pixel(10, 20), Some(0x0000FF));
        assert_eq!(fb.pixel(11, 20), Some(0x00FF00));
        assert_eq!(fb.pixel(5, 5), Some(0));
        // The VGA side is set up for it: graphics, memory map 1, chain-4 as the memory logic
        // sees it, CRTC width and height.
        assert_eq!(r.read_cr(0x01), 127);
        assert_eq!(r.read_cr(0x12), 0xFF);
        r.outb(0x3CE, 6);
        assert_eq!(r.inb(0x3CF) & 0x0D, 0x05);
        // Panning moves the visible start.
        r.dispi(vbe::INDEX_Y_OFFSET, 1);
        assert_eq!(r.read_dispi(vbe::INDEX_Y_OFFSET), 1);
        let fb = r.vga.lock().unwrap().framebuffer_snapshot().unwrap();
        assert_eq!(fb.pixel(1023, 766), Some(0x123456));
        // Re-enabling with NOCLEARMEM keeps memory.
        set_vbe(&r, 1024, 768, 32, vbe::ENABLED | vbe::NOCLEARMEM);
        assert_eq!(r.mmio.read_value(px(0, 0), 4), 0x00FF_0000);
        // Disabled: the VGA registers show the 256-colour mode VBE left behind.
        r.dispi(vbe::INDEX_ENABLE, 0);
        assert!(matches!(
            r.vga.lock().unwrap().mode(),
            DisplayMode::Graphics { bpp: 8, .. }
        ));
    }

    #[test]
    fn vbe_8bpp_uses_the_dac() {
        let (r, _root, _d) = pci_rig(None);
        set_vbe(&r, 640, 480, 8, vbe::ENABLED | vbe::LFB_ENABLED);
        r.outb(0x3C8, 7);
        for v in [0x3F, 0x00, 0x20] {
            r.outb(0x3C9, v);
        }
        r.mmio.write_value(LFB + 641, 1, 7);
        let fb = r.vga.lock().unwrap().framebuffer_snapshot().unwrap();
        assert_eq!(fb.pixel(1, 1), Some(0xFF0082));
        // 8-bit DAC: components are taken whole.
        r.dispi(
            vbe::INDEX_ENABLE,
            vbe::ENABLED | vbe::LFB_ENABLED | vbe::DAC_8BIT | vbe::NOCLEARMEM,
        );
        let fb = r.vga.lock().unwrap().framebuffer_snapshot().unwrap();
        assert_eq!(fb.pixel(1, 1), Some(0x3F0020));
    }

    #[test]
    fn vbe_banked_window() {
        let (r, _root, _d) = pci_rig(None);
        set_vbe(&r, 800, 600, 16, vbe::ENABLED);
        r.mem_w(0xA0010, 0x5A);
        assert_eq!(r.mmio.read_value(LFB + 0x10, 1), 0x5A);
        r.dispi(vbe::INDEX_BANK, 3);
        assert_eq!(r.read_dispi(vbe::INDEX_BANK), 3);
        r.mmio.write_value(0xA0010, 2, 0xBEEF);
        assert_eq!(r.mmio.read_value(LFB + 0x3_0010, 2), 0xBEEF);
        r.mmio.write_value(LFB + 0x3_FFFE, 2, 0x1234);
        assert_eq!(r.mmio.read_value(0xAFFFE, 2), 0x1234);
        // Only 64 KiB at 0xA0000 in memory map 1.
        assert_eq!(r.mem_r(0xB0000), 0xFF);
        // The bank is masked to the memory (16 MiB: 256 banks).
        r.dispi(vbe::INDEX_BANK, 0x1FF);
        assert_eq!(r.read_dispi(vbe::INDEX_BANK), 0xFF);
    }

    #[test]
    fn vbe_getcaps_and_id() {
        let r = rig();
        assert_eq!(r.read_dispi(vbe::INDEX_ID), vbe::ID5);
        r.dispi(vbe::INDEX_ID, vbe::ID0 + 4);
        assert_eq!(r.read_dispi(vbe::INDEX_ID), 0xB0C4);
        r.dispi(vbe::INDEX_ENABLE, vbe::GETCAPS);
        assert_eq!(r.read_dispi(vbe::INDEX_XRES), vbe::MAX_XRES);
        assert_eq!(r.read_dispi(vbe::INDEX_YRES), vbe::MAX_YRES);
        assert_eq!(r.read_dispi(vbe::INDEX_BPP), 32);
        r.dispi(vbe::INDEX_ENABLE, 0);
        assert_eq!(r.read_dispi(vbe::INDEX_BPP), 0);
        assert_eq!(r.read_dispi(vbe::INDEX_VIDEO_MEMORY_64K), 256);
        assert_eq!(r.inw(0x1CE), vbe::INDEX_VIDEO_MEMORY_64K);
    }

    #[test]
    fn dispi_and_vga_ports_through_the_mmio_bar() {
        let (r, _root, _d) = pci_rig(None);
        // DISPI flat at 0x500 + 2 * index, both ways against the ports.
        r.mmio.write_value(MMIO + 0x500 + 2, 2, 800);
        assert_eq!(r.read_dispi(vbe::INDEX_XRES), 800);
        r.dispi(vbe::INDEX_YRES, 600);
        assert_eq!(r.mmio.read_value(MMIO + 0x504, 2), 600);
        assert_eq!(r.mmio.read_value(MMIO + 0x500, 2), u64::from(vbe::ID5));
        // A dword covers two registers.
        r.mmio
            .write_value(MMIO + 0x502, 4, u64::from(640u32 | 480 << 16));
        assert_eq!(r.read_dispi(vbe::INDEX_XRES), 640);
        assert_eq!(r.read_dispi(vbe::INDEX_YRES), 480);
        // A byte write changes one byte of the register.
        r.mmio.write_value(MMIO + 0x503, 1, 0x04);
        assert_eq!(r.read_dispi(vbe::INDEX_XRES), 0x480);
        r.mmio.write_value(MMIO + 0x506, 2, 32);
        r.mmio
            .write_value(MMIO + 0x508, 2, u64::from(vbe::ENABLED | vbe::LFB_ENABLED));
        assert_eq!(
            r.vga.lock().unwrap().mode(),
            DisplayMode::Vbe {
                width: 0x480,
                height: 480,
                bpp: 32
            }
        );
        // VGA ports at 0x400 + (port - 0x3C0); a word write is index then data.
        r.outb(0x3C2, 0x01);
        r.mmio.write_value(MMIO + 0x414, 2, 0x550E); // CRTC 0x0E = 0x55
        assert_eq!(r.read_cr(0x0E), 0x55);
        r.mmio.write_value(MMIO + 0x408, 1, 3); // DAC write index
        assert_eq!(r.mmio.read_value(MMIO + 0x408, 1), 3);
        assert_eq!(r.inb(0x3C8), 3);
        // QEMU extended registers: size and byte order.
        assert_eq!(r.mmio.read_value(MMIO + 0x600, 4), 8);
        assert_eq!(r.mmio.read_value(MMIO + 0x604, 4), 0x1E1E_1E1E);
        r.mmio.write_value(MMIO + 0x604, 4, 0xBEBE_BEBE);
        assert_eq!(r.mmio.read_value(MMIO + 0x604, 4), 0xBEBE_BEBE);
        r.mmio.write_value(MMIO + 0x604, 2, 0x1E1E);
        assert_eq!(
            r.mmio.read_value(MMIO + 0x604, 4),
            0xBEBE_BEBE,
            "32-bit only"
        );
        // No EDID: zeros.
        assert_eq!(r.mmio.read_value(MMIO, 8), 0);
    }

    #[test]
    fn reset_clears_registers_keeps_memory() {
        let r = rig();
        r.mode3();
        r.mem_w(0xB8000, b'Z');
        r.vga.lock().unwrap().reset_registers();
        assert_eq!(r.inb(0x3CC), 0);
        assert_eq!(r.vram(0), b'Z');
        r.vga.lock().unwrap().set_text_mode_3();
        assert_eq!(text(&r).row_text(0), "Z");
        assert_eq!(r.vga.lock().unwrap().palette_rgb(1), 0x0000AA);
        assert_eq!(r.vga.lock().unwrap().palette_rgb(0x3F), 0xFFFFFF);
    }

    #[test]
    fn bad_configuration_is_refused() {
        for size in [0, 1000, 128 << 10, 512 << 20, (16 << 20) + 4096] {
            assert!(matches!(
                Vga::new(VgaConfig {
                    vram_size: size,
                    ..VgaConfig::default()
                }),
                Err(VgaError::BadVramSize(_))
            ));
        }
        assert!(matches!(
            Vga::new(VgaConfig {
                rom: Some(Vec::new()),
                ..VgaConfig::default()
            }),
            Err(VgaError::BadRomSize(0))
        ));
        assert!(matches!(
            Vga::with_vram(VgaConfig::default(), Box::new(HeapVram::new(1 << 20))),
            Err(VgaError::VramBackingSize { .. })
        ));
    }

    #[test]
    fn snapshot_round_trip_and_behaviour_continues() {
        let r = rig();
        r.mode3();
        for (i, ch) in b"saved".iter().enumerate() {
            r.mem_w(0xB8000 + 2 * i as u64, *ch);
        }
        r.cr(0x0F, 3);
        // Mid-way states: a DAC read two components in, the attribute flip-flop in data phase.
        r.outb(0x3C7, 1);
        r.inb(0x3C9);
        r.inb(0x3C9);
        r.outb(0x3C0, 0x11);
        r.dispi(vbe::INDEX_BANK, 2);
        let original = r.vga.lock().unwrap();
        let mut fresh = Vga::new(VgaConfig::default()).unwrap();
        check_round_trip(&*original, &mut fresh).unwrap();
        drop(original);

        let r2 = Rig {
            vga: Arc::new(Mutex::new(fresh)),
            pio: Arc::new(Bus::new(BusKind::Pio)),
            mmio: Arc::new(Bus::new(BusKind::Mmio)),
        };
        Vga::register_legacy(&r2.vga, &r2.pio, &r2.mmio).unwrap();
        for rig in [&r, &r2] {
            let t = text(rig);
            assert_eq!(t.row_text(0), "saved");
            assert_eq!(t.cursor.map(|c| c.col), Some(3));
            assert_eq!(rig.inb(0x3C9), 0x2A, "blue of EGA colour 1 comes next");
            assert_eq!(rig.inb(0x3C9), 0x00, "then entry 2's red");
            rig.outb(0x3C0, 0x07); // data for index 0x11 (overscan)
            assert_eq!(rig.inb(0x3C1), 0x07);
            rig.mem_w(0xB8000 + 10, b'!');
            assert_eq!(text(rig).row_text(0), "saved!");
        }
        // VBE state survives too, and a blob for a different memory size is refused.
        let r3 = rig();
        set_vbe(&r3, 640, 480, 32, vbe::ENABLED);
        r3.dispi(vbe::INDEX_BANK, 5);
        r3.mmio.write_value(0xA0000, 4, 0x0102_0304);
        let blob = snapshot::save(&*r3.vga.lock().unwrap());
        let mut other = Vga::new(VgaConfig::default()).unwrap();
        snapshot::restore(&mut other, &blob).unwrap();
        assert_eq!(other.mode(), r3.vga.lock().unwrap().mode());
        let mut b = [0u8; 4];
        other.vram.read(5 << 16, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0102_0304);
        let mut small = Vga::new(VgaConfig {
            vram_size: 4 << 20,
            ..VgaConfig::default()
        })
        .unwrap();
        assert!(matches!(
            snapshot::restore(&mut small, &blob),
            Err(SnapshotError::Invalid(_))
        ));
        assert_eq!(
            small.mode(),
            DisplayMode::Text {
                cols: 1,
                rows: 1,
                char_width: 9,
                char_height: 1
            },
            "a refused blob changes nothing"
        );
    }

    #[test]
    fn pci_snapshot_goes_through_the_root() {
        let (r, root, d) = pci_rig(None);
        r.mode3();
        r.mem_w(0xB8000, b'P');
        let blob = snapshot::save(&root);
        let (r2, mut root2, _d) = pci_rig(None);
        snapshot::restore(&mut root2, &blob).unwrap();
        assert_eq!(text(&r2).row_text(0), "P");
        assert_eq!(root2.config_read(d, 0x10, 4), 0xE000_0008);
    }

    /// xorshift64*: deterministic noise for the random test.
    struct Noise(u64);
    impl Noise {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
    }

    #[test]
    fn random_accesses_never_panic() {
        // 1 MiB of video memory keeps the snapshot at the end quick.
        let (r, root, d) = pci_rig_with(VgaConfig {
            vram_size: 1 << 20,
            rom: Some(vec![0x55; 0x1234]),
            retrace: Retrace::Toggle,
        });
        root.config_write(d, 0x30, 4, 0xFEB0_0001);
        let mut n = Noise(0x9E37_79B9_7F4A_7C15);
        let ports: Vec<u64> = VGA_PORT_RANGES
            .iter()
            .flat_map(|&(b, l)| b..b + l)
            .chain(DISPI_PORT_BASE..DISPI_PORT_BASE + DISPI_PORT_LEN)
            .collect();
        for i in 0..100_000u32 {
            let size = 1usize << n.below(4);
            let value = n.next();
            let write = n.below(2) == 0;
            let (bus, addr) = match n.below(6) {
                0 | 1 => (&r.pio, ports[n.below(ports.len() as u64) as usize]),
                2 => (&r.mmio, LEGACY_WINDOW_BASE + n.below(LEGACY_WINDOW_LEN)),
                3 => (&r.mmio, MMIO + n.below(MMIO_BAR_SIZE)),
                4 => (&r.mmio, LFB + n.below(1 << 20)),
                _ => (&r.mmio, 0xFEB0_0000 + n.below(0x2000)),
            };
            // Keep the DISPI geometry interesting: mostly small modes, sometimes anything.
            if bus.kind() == BusKind::Pio && addr >= DISPI_PORT_BASE && i % 3 == 0 {
                r.outw(0x1CE, n.below(12) as u16);
            }
            if write {
                bus.write_value(addr, size, value);
            } else {
                bus.read_value(addr, size);
            }
            if i % 5000 == 0 {
                let v = r.vga.lock().unwrap();
                let _ = v.text_screen();
                let _ = v.mode();
                let _ = v.framebuffer_snapshot();
            }
        }
        let v = r.vga.lock().unwrap();
        let mut fresh = Vga::new(VgaConfig {
            vram_size: 1 << 20,
            ..VgaConfig::default()
        })
        .unwrap();
        check_round_trip(&*v, &mut fresh).unwrap();
    }
}
