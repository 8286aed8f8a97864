//! A PCI function's 256-byte configuration space.
//!
//! The space is a byte array with two masks beside it: `wmask` marks the bits a guest write may
//! change, `w1cmask` the bits a guest clears by writing 1 (the error bits of the status
//! register). Every other bit is read-only to the guest; the device itself changes them with the
//! `set_*` methods. PCI config cycles carry byte enables, so an access of 1, 2 or 4 bytes at any
//! byte offset is applied byte by byte through the masks.
//!
//! Base address registers are declared with [`ConfigSpace::add_bar`]: the BAR's write mask
//! clears the low address bits, which is all BAR sizing is (write all ones, read back the size
//! mask and the read-only type bits). [`ConfigSpace::bar_regions`] decodes the BARs the command
//! register currently enables into bus ranges; the root diffs them around every config write
//! and moves the ranges on the buses, so a device never touches a bus itself.

use log::debug;
use thiserror::Error;

use crate::bus::BusKind;

/// Size of a conventional PCI configuration space.
pub const CONFIG_SPACE_SIZE: usize = 256;

// Header registers common to both header types.
pub const VENDOR_ID: usize = 0x00;
pub const DEVICE_ID: usize = 0x02;
pub const COMMAND: usize = 0x04;
pub const STATUS: usize = 0x06;
pub const REVISION_ID: usize = 0x08;
pub const CLASS_PROG_IF: usize = 0x09;
pub const CACHE_LINE_SIZE: usize = 0x0C;
pub const LATENCY_TIMER: usize = 0x0D;
pub const HEADER_TYPE: usize = 0x0E;
pub const BIST: usize = 0x0F;
pub const BAR0: usize = 0x10;
pub const CAPABILITIES_POINTER: usize = 0x34;
pub const INTERRUPT_LINE: usize = 0x3C;
pub const INTERRUPT_PIN: usize = 0x3D;

// Type 0 (device) header.
pub const SUBSYSTEM_VENDOR_ID: usize = 0x2C;
pub const SUBSYSTEM_ID: usize = 0x2E;
pub const ROM_ADDRESS: usize = 0x30;
pub const MIN_GNT: usize = 0x3E;
pub const MAX_LAT: usize = 0x3F;

// Type 1 (PCI-to-PCI bridge) header.
pub const PRIMARY_BUS: usize = 0x18;
pub const SECONDARY_BUS: usize = 0x19;
pub const SUBORDINATE_BUS: usize = 0x1A;
pub const SECONDARY_LATENCY_TIMER: usize = 0x1B;
pub const IO_BASE: usize = 0x1C;
pub const IO_LIMIT: usize = 0x1D;
pub const SECONDARY_STATUS: usize = 0x1E;
pub const MEMORY_BASE: usize = 0x20;
pub const MEMORY_LIMIT: usize = 0x22;
pub const PREF_MEMORY_BASE: usize = 0x24;
pub const PREF_MEMORY_LIMIT: usize = 0x26;
pub const PREF_BASE_UPPER32: usize = 0x28;
pub const PREF_LIMIT_UPPER32: usize = 0x2C;
pub const IO_BASE_UPPER16: usize = 0x30;
pub const IO_LIMIT_UPPER16: usize = 0x32;
pub const ROM_ADDRESS_BRIDGE: usize = 0x38;
pub const BRIDGE_CONTROL: usize = 0x3E;

/// Header type register: bit 7 says the device has functions other than 0.
pub const HEADER_TYPE_MULTI_FUNCTION: u8 = 0x80;

/// Command register bits.
pub mod command {
    pub const IO_SPACE: u16 = 1 << 0;
    pub const MEMORY_SPACE: u16 = 1 << 1;
    pub const BUS_MASTER: u16 = 1 << 2;
    pub const SPECIAL_CYCLES: u16 = 1 << 3;
    pub const PARITY_ERROR_RESPONSE: u16 = 1 << 6;
    pub const SERR_ENABLE: u16 = 1 << 8;
    pub const INTX_DISABLE: u16 = 1 << 10;
}

/// Status register bits.
pub mod status {
    pub const INTERRUPT: u16 = 1 << 3;
    pub const CAPABILITIES_LIST: u16 = 1 << 4;
    pub const MHZ_66: u16 = 1 << 5;
    pub const FAST_BACK_TO_BACK: u16 = 1 << 7;
    pub const MASTER_DATA_PARITY_ERROR: u16 = 1 << 8;
    pub const DEVSEL_MEDIUM: u16 = 1 << 9;
    pub const SIGNALED_TARGET_ABORT: u16 = 1 << 11;
    pub const RECEIVED_TARGET_ABORT: u16 = 1 << 12;
    pub const RECEIVED_MASTER_ABORT: u16 = 1 << 13;
    pub const SIGNALED_SYSTEM_ERROR: u16 = 1 << 14;
    pub const DETECTED_PARITY_ERROR: u16 = 1 << 15;
    /// The error bits software clears by writing 1.
    pub const WRITE_1_TO_CLEAR: u16 = MASTER_DATA_PARITY_ERROR
        | SIGNALED_TARGET_ABORT
        | RECEIVED_TARGET_ABORT
        | RECEIVED_MASTER_ABORT
        | SIGNALED_SYSTEM_ERROR
        | DETECTED_PARITY_ERROR;
}

/// Number of BAR slots in a type 0 header; the expansion ROM is reported as index [`ROM_BAR`].
pub const NUM_BARS: usize = 6;
/// The index the expansion ROM takes in [`ConfigSpace::bar_regions`] and BAR callbacks.
pub const ROM_BAR: usize = 6;
/// BAR slots plus the expansion ROM.
pub const NUM_REGIONS: usize = 7;

/// The first byte after the predefined header, where capabilities and device registers live.
const DEVICE_SPECIFIC: usize = 0x40;
/// x86 I/O space: an I/O BAR must decode below this.
const IO_SPACE_LIMIT: u64 = 0x1_0000;
/// The standard capability list cannot be longer than the bytes available for it.
const MAX_CAPABILITIES: usize = (CONFIG_SPACE_SIZE - DEVICE_SPECIFIC) / 4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ConfigError {
    #[error("BAR {0} does not exist in this header type")]
    BadBarIndex(usize),
    #[error("BAR {0} is already declared")]
    BarInUse(usize),
    #[error("BAR size {size:#x} is not valid for a {kind:?} BAR")]
    BadBarSize { kind: BarKind, size: u64 },
    #[error("expansion ROM size {0:#x} is not a power of two between 2 KiB and 2 GiB")]
    BadRomSize(u64),
    #[error("capability of {len} bytes at {offset:#x} does not fit the configuration space")]
    CapabilityDoesNotFit { offset: usize, len: usize },
    #[error("capability at {0:#x} must be dword aligned and above the header")]
    BadCapabilityOffset(usize),
    #[error("capability at {offset:#x} overlaps the one at {existing:#x}")]
    CapabilityOverlap { offset: usize, existing: usize },
    #[error("interrupt pin {0} is not 0 (none) or 1-4 (INTA#-INTD#)")]
    BadInterruptPin(u8),
}

/// The layout of the header (offset 0x0E, low 7 bits).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderType {
    /// Type 0: an endpoint function with six BARs.
    Device,
    /// Type 1: a PCI-to-PCI bridge with two BARs and bus number / window registers.
    Bridge,
}

/// The identity of a function, read-only to the guest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciIds {
    pub vendor_id: u16,
    pub device_id: u16,
    pub revision_id: u8,
    /// Base class, sub-class and programming interface: 0x06_00_00 is a host bridge.
    pub class_code: u32,
    /// Ignored for a bridge header, which has no subsystem registers.
    pub subsystem_vendor_id: u16,
    pub subsystem_id: u16,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BarKind {
    /// A 32-bit I/O BAR (bit 0 set).
    Io,
    /// A 32-bit memory BAR.
    Memory32 { prefetchable: bool },
    /// A 64-bit memory BAR taking this slot and the next.
    Memory64 { prefetchable: bool },
}

/// A BAR (or the expansion ROM) decoded to a bus range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarRegion {
    /// 0-5, or [`ROM_BAR`].
    pub index: usize,
    pub space: BusKind,
    pub base: u64,
    pub size: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BarSlot {
    Empty,
    Bar {
        kind: BarKind,
        size: u64,
    },
    /// The high dword of the 64-bit BAR in the slot below.
    Upper,
}

/// A configuration space with its write masks. See the module documentation.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    data: [u8; CONFIG_SPACE_SIZE],
    wmask: [u8; CONFIG_SPACE_SIZE],
    w1cmask: [u8; CONFIG_SPACE_SIZE],
    /// What [`ConfigSpace::reset`] restores; captured when the function is registered.
    power_on: [u8; CONFIG_SPACE_SIZE],
    header: HeaderType,
    bars: [BarSlot; NUM_BARS],
    rom_size: Option<u64>,
    /// (offset, length) of each capability, in list order.
    caps: Vec<(usize, usize)>,
}

impl ConfigSpace {
    /// A type 0 (endpoint) header with the standard writable registers: command (I/O, memory,
    /// bus master, parity, SERR#, INTx disable), the status error bits (write 1 to clear), cache
    /// line size, latency timer and interrupt line.
    pub fn new(ids: PciIds) -> ConfigSpace {
        let mut c = ConfigSpace::blank(ids, HeaderType::Device);
        c.set_u16(SUBSYSTEM_VENDOR_ID, ids.subsystem_vendor_id);
        c.set_u16(SUBSYSTEM_ID, ids.subsystem_id);
        c
    }

    /// A type 1 (PCI-to-PCI bridge) header: bus numbers, the I/O window (16-bit), the memory
    /// window and a 64-bit prefetchable window are writable; forwarding them is the bridge
    /// device's business.
    pub fn new_bridge(ids: PciIds) -> ConfigSpace {
        let mut c = ConfigSpace::blank(ids, HeaderType::Bridge);
        c.wmask[PRIMARY_BUS..=SECONDARY_LATENCY_TIMER].fill(0xFF);
        c.wmask[IO_BASE] = 0xF0;
        c.wmask[IO_LIMIT] = 0xF0;
        c.set_w1c_mask(SECONDARY_STATUS, &status::WRITE_1_TO_CLEAR.to_le_bytes());
        c.set_write_mask(MEMORY_BASE, &0xFFF0_FFF0u32.to_le_bytes());
        c.set_write_mask(PREF_MEMORY_BASE, &0xFFF0_FFF0u32.to_le_bytes());
        // Low nibble 1: the prefetchable window decodes 64-bit addresses.
        c.set_u16(PREF_MEMORY_BASE, 0x0001);
        c.set_u16(PREF_MEMORY_LIMIT, 0x0001);
        c.set_write_mask(PREF_BASE_UPPER32, &[0xFF; 8]);
        // Parity response, SERR#, ISA, VGA, VGA 16-bit decode, master abort mode, bus reset.
        c.set_write_mask(BRIDGE_CONTROL, &0x007Fu16.to_le_bytes());
        c
    }

    fn blank(ids: PciIds, header: HeaderType) -> ConfigSpace {
        let mut c = ConfigSpace {
            data: [0; CONFIG_SPACE_SIZE],
            wmask: [0; CONFIG_SPACE_SIZE],
            w1cmask: [0; CONFIG_SPACE_SIZE],
            power_on: [0; CONFIG_SPACE_SIZE],
            header,
            bars: [BarSlot::Empty; NUM_BARS],
            rom_size: None,
            caps: Vec::new(),
        };
        c.set_u16(VENDOR_ID, ids.vendor_id);
        c.set_u16(DEVICE_ID, ids.device_id);
        c.set_u8(REVISION_ID, ids.revision_id);
        c.data[CLASS_PROG_IF..CLASS_PROG_IF + 3]
            .copy_from_slice(&ids.class_code.to_le_bytes()[..3]);
        c.set_u8(
            HEADER_TYPE,
            match header {
                HeaderType::Device => 0x00,
                HeaderType::Bridge => 0x01,
            },
        );
        let cmd = command::IO_SPACE
            | command::MEMORY_SPACE
            | command::BUS_MASTER
            | command::PARITY_ERROR_RESPONSE
            | command::SERR_ENABLE
            | command::INTX_DISABLE;
        c.set_write_mask(COMMAND, &cmd.to_le_bytes());
        c.set_w1c_mask(STATUS, &status::WRITE_1_TO_CLEAR.to_le_bytes());
        c.wmask[CACHE_LINE_SIZE] = 0xFF;
        c.wmask[LATENCY_TIMER] = 0xFF;
        c.wmask[INTERRUPT_LINE] = 0xFF;
        c.power_on = c.data;
        c
    }

    pub fn header_type(&self) -> HeaderType {
        self.header
    }

    fn bar_count(&self) -> usize {
        match self.header {
            HeaderType::Device => NUM_BARS,
            HeaderType::Bridge => 2,
        }
    }

    fn rom_offset(&self) -> usize {
        match self.header {
            HeaderType::Device => ROM_ADDRESS,
            HeaderType::Bridge => ROM_ADDRESS_BRIDGE,
        }
    }

    // ----- Guest accesses -----

    /// A guest read of `data.len()` bytes at `offset`; bytes past the end read as ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset
                .checked_add(i)
                .and_then(|o| self.data.get(o))
                .copied()
                .unwrap_or(0xFF);
        }
    }

    /// A guest write: each byte through the write mask, then the write-1-to-clear mask. Bytes
    /// past the end are dropped.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let Some(o) = offset.checked_add(i).filter(|&o| o < CONFIG_SPACE_SIZE) else {
                break;
            };
            let (w, c) = (self.wmask[o], self.w1cmask[o]);
            self.data[o] = ((self.data[o] & !w) | (v & w)) & !(v & c);
        }
    }

    // ----- Device-side accessors (no masks) -----

    /// The raw bytes, as the device sees them (without the root's interrupt status bit).
    pub fn data(&self) -> &[u8; CONFIG_SPACE_SIZE] {
        &self.data
    }

    pub fn get_u8(&self, offset: usize) -> u8 {
        let mut b = [0xFF; 1];
        self.read(offset, &mut b);
        b[0]
    }

    pub fn get_u16(&self, offset: usize) -> u16 {
        let mut b = [0xFF; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
    }

    pub fn get_u32(&self, offset: usize) -> u32 {
        let mut b = [0xFF; 4];
        self.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    /// Store bytes as the device (read-only bits included); bytes past the end are dropped.
    pub fn set_bytes(&mut self, offset: usize, bytes: &[u8]) {
        for (i, &v) in bytes.iter().enumerate() {
            if let Some(b) = offset.checked_add(i).and_then(|o| self.data.get_mut(o)) {
                *b = v;
            }
        }
    }

    pub fn set_u8(&mut self, offset: usize, v: u8) {
        self.set_bytes(offset, &[v]);
    }

    pub fn set_u16(&mut self, offset: usize, v: u16) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    pub fn set_u32(&mut self, offset: usize, v: u32) {
        self.set_bytes(offset, &v.to_le_bytes());
    }

    /// Make `mask`'s bits writable by the guest at `offset` (and the others read-only).
    pub fn set_write_mask(&mut self, offset: usize, mask: &[u8]) {
        for (i, &m) in mask.iter().enumerate() {
            if let Some(b) = offset.checked_add(i).and_then(|o| self.wmask.get_mut(o)) {
                *b = m;
            }
        }
    }

    /// Make `mask`'s bits write-1-to-clear at `offset`.
    pub fn set_w1c_mask(&mut self, offset: usize, mask: &[u8]) {
        for (i, &m) in mask.iter().enumerate() {
            if let Some(b) = offset.checked_add(i).and_then(|o| self.w1cmask.get_mut(o)) {
                *b = m;
            }
        }
    }

    pub fn write_mask(&self) -> &[u8; CONFIG_SPACE_SIZE] {
        &self.wmask
    }

    // ----- Reset and snapshots -----

    /// Take the current contents as the power-on values [`ConfigSpace::reset`] restores. The
    /// root calls this when the function is registered.
    pub fn capture_power_on(&mut self) {
        self.power_on = self.data;
    }

    /// Return every byte to its power-on value (a PCI reset).
    pub fn reset(&mut self) {
        self.data = self.power_on;
    }

    /// Replace the contents from a snapshot. The masks are structural (built by the device's
    /// constructor) and are not part of the state.
    pub fn restore_data(&mut self, data: &[u8; CONFIG_SPACE_SIZE]) {
        self.data = *data;
    }

    // ----- Header registers -----

    pub fn vendor_id(&self) -> u16 {
        self.get_u16(VENDOR_ID)
    }

    pub fn device_id(&self) -> u16 {
        self.get_u16(DEVICE_ID)
    }

    pub fn command(&self) -> u16 {
        self.get_u16(COMMAND)
    }

    pub fn status(&self) -> u16 {
        self.get_u16(STATUS)
    }

    /// Set status bits as the device (an abort it signalled, DEVSEL timing, 66 MHz...).
    pub fn set_status_bits(&mut self, bits: u16) {
        let v = self.status() | bits;
        self.set_u16(STATUS, v);
    }

    pub fn set_multifunction(&mut self, on: bool) {
        let v = self.get_u8(HEADER_TYPE);
        self.set_u8(
            HEADER_TYPE,
            if on {
                v | HEADER_TYPE_MULTI_FUNCTION
            } else {
                v & !HEADER_TYPE_MULTI_FUNCTION
            },
        );
    }

    pub fn interrupt_line(&self) -> u8 {
        self.get_u8(INTERRUPT_LINE)
    }

    /// The INTx pin the function uses: 0 none, 1-4 INTA#-INTD#.
    pub fn interrupt_pin(&self) -> u8 {
        self.get_u8(INTERRUPT_PIN)
    }

    pub fn set_interrupt_pin(&mut self, pin: u8) -> Result<(), ConfigError> {
        if pin > 4 {
            return Err(ConfigError::BadInterruptPin(pin));
        }
        self.set_u8(INTERRUPT_PIN, pin);
        Ok(())
    }

    // ----- BARs -----

    /// Declare BAR `index` (a 64-bit BAR also takes `index + 1`). The size must be a power of
    /// two: 4 bytes to 64 KiB for I/O, at least 16 bytes for memory (at most 2 GiB for a 32-bit
    /// BAR).
    pub fn add_bar(&mut self, index: usize, kind: BarKind, size: u64) -> Result<(), ConfigError> {
        let slots = if matches!(kind, BarKind::Memory64 { .. }) {
            2
        } else {
            1
        };
        if index + slots > self.bar_count() {
            return Err(ConfigError::BadBarIndex(index));
        }
        if let Some(i) = (index..index + slots).find(|&i| self.bars[i] != BarSlot::Empty) {
            return Err(ConfigError::BarInUse(i));
        }
        let (min, max) = match kind {
            BarKind::Io => (4, IO_SPACE_LIMIT),
            BarKind::Memory32 { .. } => (16, 1 << 31),
            BarKind::Memory64 { .. } => (16, 1 << 63),
        };
        if !size.is_power_of_two() || size < min || size > max {
            return Err(ConfigError::BadBarSize { kind, size });
        }
        let offset = BAR0 + 4 * index;
        let address_mask = !(size - 1);
        match kind {
            BarKind::Io => {
                self.set_u32(offset, 0x1);
                self.set_write_mask(offset, &((address_mask as u32) & !0x3).to_le_bytes());
            }
            BarKind::Memory32 { prefetchable } => {
                self.set_u32(offset, if prefetchable { 0x8 } else { 0x0 });
                self.set_write_mask(offset, &((address_mask as u32) & !0xF).to_le_bytes());
            }
            BarKind::Memory64 { prefetchable } => {
                self.set_u32(offset, 0x4 | if prefetchable { 0x8 } else { 0x0 });
                self.set_u32(offset + 4, 0);
                self.set_write_mask(offset, &(address_mask & !0xF).to_le_bytes());
                self.bars[index + 1] = BarSlot::Upper;
            }
        }
        self.bars[index] = BarSlot::Bar { kind, size };
        Ok(())
    }

    /// Declare the expansion ROM BAR (bit 0 enables decoding, bits 31:11 the address).
    pub fn set_rom_bar(&mut self, size: u64) -> Result<(), ConfigError> {
        if !size.is_power_of_two() || !(0x800..=1 << 31).contains(&size) {
            return Err(ConfigError::BadRomSize(size));
        }
        let offset = self.rom_offset();
        let mask = ((!(size - 1)) as u32 & 0xFFFF_F800) | 1;
        self.set_u32(offset, 0);
        self.set_write_mask(offset, &mask.to_le_bytes());
        self.rom_size = Some(size);
        Ok(())
    }

    /// The kind and size of BAR `index`, if declared (the upper half of a 64-bit BAR is not).
    pub fn bar(&self, index: usize) -> Option<(BarKind, u64)> {
        match self.bars.get(index) {
            Some(BarSlot::Bar { kind, size }) => Some((*kind, *size)),
            _ => None,
        }
    }

    /// The address programmed into BAR `index` (or the ROM), whether decoding is on or not.
    pub fn bar_address(&self, index: usize) -> Option<u64> {
        if index == ROM_BAR {
            return self
                .rom_size
                .map(|_| u64::from(self.get_u32(self.rom_offset()) & 0xFFFF_F800));
        }
        let (kind, _) = self.bar(index)?;
        let offset = BAR0 + 4 * index;
        let low = u64::from(self.get_u32(offset));
        Some(match kind {
            BarKind::Io => low & !0x3,
            BarKind::Memory32 { .. } => low & !0xF,
            BarKind::Memory64 { .. } => (u64::from(self.get_u32(offset + 4)) << 32 | low) & !0xF,
        })
    }

    /// The bus range BAR `index` (or [`ROM_BAR`]) decodes now, if any.
    ///
    /// A BAR decodes when the command register enables its space (and, for the ROM, its own
    /// enable bit is set). Address 0 counts as unassigned, as in QEMU: firmware never places a
    /// BAR there and the low memory and ports belong to the platform. An I/O BAR that reaches
    /// past 0xFFFF does not decode: the x86 has no such ports.
    pub fn bar_region(&self, index: usize) -> Option<BarRegion> {
        let cmd = self.command();
        let (space, size) = if index == ROM_BAR {
            let size = self.rom_size?;
            if cmd & command::MEMORY_SPACE == 0 || self.get_u32(self.rom_offset()) & 1 == 0 {
                return None;
            }
            (BusKind::Mmio, size)
        } else {
            let (kind, size) = self.bar(index)?;
            match kind {
                BarKind::Io if cmd & command::IO_SPACE != 0 => (BusKind::Pio, size),
                BarKind::Memory32 { .. } | BarKind::Memory64 { .. }
                    if cmd & command::MEMORY_SPACE != 0 =>
                {
                    (BusKind::Mmio, size)
                }
                _ => return None,
            }
        };
        let base = self.bar_address(index)?;
        if base == 0 {
            return None;
        }
        let end = base.checked_add(size - 1)?;
        if space == BusKind::Pio && end >= IO_SPACE_LIMIT {
            debug!("I/O BAR {index} at {base:#x}+{size:#x} is beyond the x86 I/O space");
            return None;
        }
        Some(BarRegion {
            index,
            space,
            base,
            size,
        })
    }

    /// Every BAR and the ROM as decoded now, indexed 0-5 and [`ROM_BAR`].
    pub fn bar_regions(&self) -> [Option<BarRegion>; NUM_REGIONS] {
        std::array::from_fn(|i| self.bar_region(i))
    }

    // ----- Capabilities -----

    /// Append a capability (`id`, then `body`, the bytes after the ID and next pointer) at the
    /// first free dword after the header and the existing capabilities; returns its offset.
    /// The body is read-only until the device sets write masks on it.
    pub fn add_capability(&mut self, id: u8, body: &[u8]) -> Result<usize, ConfigError> {
        let end = self
            .caps
            .iter()
            .map(|&(o, l)| o + l)
            .max()
            .unwrap_or(DEVICE_SPECIFIC);
        let offset = end.next_multiple_of(4);
        self.add_capability_at(offset, id, body)?;
        Ok(offset)
    }

    /// Place a capability at a fixed offset (some devices document where theirs live).
    pub fn add_capability_at(
        &mut self,
        offset: usize,
        id: u8,
        body: &[u8],
    ) -> Result<(), ConfigError> {
        if offset < DEVICE_SPECIFIC || !offset.is_multiple_of(4) || offset >= CONFIG_SPACE_SIZE {
            return Err(ConfigError::BadCapabilityOffset(offset));
        }
        let len = body.len() + 2;
        if offset + len > CONFIG_SPACE_SIZE || self.caps.len() >= MAX_CAPABILITIES {
            return Err(ConfigError::CapabilityDoesNotFit { offset, len });
        }
        if let Some(&(existing, _)) = self
            .caps
            .iter()
            .find(|&&(o, l)| o < offset + len && offset < o + l)
        {
            return Err(ConfigError::CapabilityOverlap { offset, existing });
        }
        self.set_u8(offset, id);
        self.set_u8(offset + 1, 0);
        self.set_bytes(offset + 2, body);
        let link = match self.caps.last() {
            Some(&(last, _)) => last + 1,
            None => CAPABILITIES_POINTER,
        };
        self.set_u8(link, offset as u8);
        self.caps.push((offset, len));
        self.set_status_bits(status::CAPABILITIES_LIST);
        Ok(())
    }

    /// Walk the capability list as a guest would: (offset, id) pairs. The walk is bounded, so
    /// a looping list (a device bug) ends instead of spinning.
    pub fn capabilities(&self) -> Vec<(usize, u8)> {
        let mut out = Vec::new();
        if self.status() & status::CAPABILITIES_LIST == 0 {
            return out;
        }
        let mut next = usize::from(self.get_u8(CAPABILITIES_POINTER) & !0x3);
        while next >= DEVICE_SPECIFIC && out.len() < MAX_CAPABILITIES {
            out.push((next, self.get_u8(next)));
            next = usize::from(self.get_u8(next + 1) & !0x3);
        }
        out
    }

    pub fn find_capability(&self, id: u8) -> Option<usize> {
        self.capabilities()
            .into_iter()
            .find(|&(_, i)| i == id)
            .map(|(o, _)| o)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor_id: 0x1234,
            device_id: 0x5678,
            revision_id: 0x02,
            class_code: 0x01_01_80,
            subsystem_vendor_id: 0x1AF4,
            subsystem_id: 0x1100,
        }
    }

    fn write32(c: &mut ConfigSpace, off: usize, v: u32) {
        c.write(off, &v.to_le_bytes());
    }

    fn read32(c: &ConfigSpace, off: usize) -> u32 {
        let mut b = [0; 4];
        c.read(off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn ids_class_and_header_are_read_only() {
        let mut c = ConfigSpace::new(ids());
        assert_eq!(read32(&c, 0x00), 0x5678_1234);
        assert_eq!(read32(&c, 0x08), 0x0101_8002);
        assert_eq!(read32(&c, 0x2C), 0x1100_1AF4);
        for off in [0x00, 0x08, 0x2C] {
            write32(&mut c, off, 0xFFFF_FFFF);
            write32(&mut c, off, 0);
        }
        assert_eq!(read32(&c, 0x00), 0x5678_1234);
        assert_eq!(read32(&c, 0x08), 0x0101_8002);
        assert_eq!(read32(&c, 0x2C), 0x1100_1AF4);
        c.write(HEADER_TYPE, &[0xFF]);
        assert_eq!(c.get_u8(HEADER_TYPE), 0);
    }

    #[test]
    fn command_register_writable_bits() {
        let mut c = ConfigSpace::new(ids());
        c.write(COMMAND, &0xFFFFu16.to_le_bytes());
        assert_eq!(c.command(), 0x0547);
        c.write(COMMAND, &[0x00]);
        assert_eq!(
            c.command(),
            0x0500,
            "a byte write leaves the high byte alone"
        );
    }

    #[test]
    fn status_error_bits_are_write_one_to_clear() {
        let mut c = ConfigSpace::new(ids());
        c.set_status_bits(
            status::RECEIVED_MASTER_ABORT | status::DETECTED_PARITY_ERROR | status::DEVSEL_MEDIUM,
        );
        c.add_capability(0x09, &[0; 2]).unwrap();
        // Writing zeros changes nothing.
        c.write(STATUS, &[0, 0]);
        assert_eq!(
            c.status(),
            0xA210,
            "error bits, DEVSEL and the capability bit survive"
        );
        // Writing one clears only the bit written; read-only bits ignore ones.
        c.write(STATUS, &status::RECEIVED_MASTER_ABORT.to_le_bytes());
        assert_eq!(c.status(), 0x8210);
        c.write(STATUS, &[0xFF, 0xFF]);
        assert_eq!(
            c.status(),
            status::DEVSEL_MEDIUM | status::CAPABILITIES_LIST
        );
        // A dword write to the command register with status bits zero keeps them.
        c.set_status_bits(status::SIGNALED_SYSTEM_ERROR);
        write32(&mut c, COMMAND, 0x0000_0006);
        assert_eq!(c.command(), 0x0006);
        assert_ne!(c.status() & status::SIGNALED_SYSTEM_ERROR, 0);
    }

    #[test]
    fn io_bar_sizing() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(0, BarKind::Io, 0x20).unwrap();
        assert_eq!(read32(&c, 0x10), 0x0000_0001);
        write32(&mut c, 0x10, 0xFFFF_FFFF);
        assert_eq!(read32(&c, 0x10), 0xFFFF_FFE1);
        write32(&mut c, 0x10, 0xC043);
        assert_eq!(
            read32(&c, 0x10),
            0xC041,
            "address bits below the size are zero"
        );
        assert_eq!(c.bar_address(0), Some(0xC040));
    }

    #[test]
    fn memory32_bar_sizing_and_prefetchable_bit() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(1, BarKind::Memory32 { prefetchable: true }, 0x1000)
            .unwrap();
        c.add_bar(
            2,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x100_0000,
        )
        .unwrap();
        assert_eq!(read32(&c, 0x14), 0x8);
        write32(&mut c, 0x14, 0xFFFF_FFFF);
        assert_eq!(read32(&c, 0x14), 0xFFFF_F008);
        write32(&mut c, 0x18, 0xFFFF_FFFF);
        assert_eq!(read32(&c, 0x18), 0xFF00_0000);
        // Sizing by halves works too (a word write leaves the other half).
        c.write(0x18, &[0, 0]);
        assert_eq!(read32(&c, 0x18), 0xFF00_0000);
        c.write(0x1A, &[0x34, 0x12]);
        assert_eq!(read32(&c, 0x18), 0x1200_0000);
    }

    #[test]
    fn memory64_bar_takes_two_dwords() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(2, BarKind::Memory64 { prefetchable: true }, 0x2_0000_0000)
            .unwrap();
        assert_eq!(read32(&c, 0x18), 0xC);
        assert_eq!(
            c.add_bar(3, BarKind::Io, 0x10),
            Err(ConfigError::BarInUse(3))
        );
        assert_eq!(c.bar(3), None);
        write32(&mut c, 0x18, 0xFFFF_FFFF);
        write32(&mut c, 0x1C, 0xFFFF_FFFF);
        // 8 GiB: no writable bits in the low dword, bit 33 and up in the high one.
        assert_eq!(read32(&c, 0x18), 0x0000_000C);
        assert_eq!(read32(&c, 0x1C), 0xFFFF_FFFE);
        write32(&mut c, 0x18, 0);
        write32(&mut c, 0x1C, 0x8);
        write32(&mut c, 0x04, u32::from(command::MEMORY_SPACE));
        assert_eq!(
            c.bar_region(2),
            Some(BarRegion {
                index: 2,
                space: BusKind::Mmio,
                base: 0x8_0000_0000,
                size: 0x2_0000_0000
            })
        );
        assert_eq!(
            c.add_bar(
                5,
                BarKind::Memory64 {
                    prefetchable: false
                },
                0x1000
            ),
            Err(ConfigError::BadBarIndex(5)),
            "a 64-bit BAR cannot start in the last slot"
        );
    }

    #[test]
    fn bar_size_validation() {
        let mut c = ConfigSpace::new(ids());
        assert!(matches!(
            c.add_bar(0, BarKind::Io, 0x30),
            Err(ConfigError::BadBarSize { .. })
        ));
        assert!(matches!(
            c.add_bar(
                0,
                BarKind::Memory32 {
                    prefetchable: false
                },
                8
            ),
            Err(ConfigError::BadBarSize { .. })
        ));
        assert!(matches!(
            c.add_bar(
                0,
                BarKind::Memory32 {
                    prefetchable: false
                },
                1 << 32
            ),
            Err(ConfigError::BadBarSize { .. })
        ));
        assert_eq!(
            c.add_bar(6, BarKind::Io, 4),
            Err(ConfigError::BadBarIndex(6))
        );
        assert_eq!(c.set_rom_bar(0x400), Err(ConfigError::BadRomSize(0x400)));
    }

    #[test]
    fn expansion_rom_sizing_and_enable() {
        let mut c = ConfigSpace::new(ids());
        c.set_rom_bar(0x1_0000).unwrap();
        write32(&mut c, ROM_ADDRESS, 0xFFFF_FFFF);
        assert_eq!(read32(&c, ROM_ADDRESS), 0xFFFF_0001);
        write32(&mut c, ROM_ADDRESS, 0xFEB0_0000);
        write32(&mut c, COMMAND, u32::from(command::MEMORY_SPACE));
        assert_eq!(c.bar_region(ROM_BAR), None, "ROM enable bit clear");
        write32(&mut c, ROM_ADDRESS, 0xFEB0_0001);
        assert_eq!(
            c.bar_region(ROM_BAR),
            Some(BarRegion {
                index: ROM_BAR,
                space: BusKind::Mmio,
                base: 0xFEB0_0000,
                size: 0x1_0000
            })
        );
        write32(&mut c, COMMAND, 0);
        assert_eq!(c.bar_region(ROM_BAR), None, "memory decode off");
    }

    #[test]
    fn command_register_controls_decode() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(0, BarKind::Io, 0x10).unwrap();
        c.add_bar(
            1,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        write32(&mut c, 0x10, 0xC000);
        write32(&mut c, 0x14, 0xFEBF_0000);
        assert_eq!(c.bar_regions(), [None; NUM_REGIONS]);
        c.write(COMMAND, &[command::IO_SPACE as u8]);
        assert_eq!(c.bar_region(0).map(|r| r.base), Some(0xC000));
        assert_eq!(c.bar_region(0).map(|r| r.space), Some(BusKind::Pio));
        assert_eq!(c.bar_region(1), None);
        c.write(COMMAND, &[command::MEMORY_SPACE as u8]);
        assert_eq!(c.bar_region(0), None);
        assert_eq!(c.bar_region(1).map(|r| r.base), Some(0xFEBF_0000));
    }

    #[test]
    fn unassigned_and_impossible_bars_do_not_decode() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(0, BarKind::Io, 0x100).unwrap();
        c.add_bar(
            1,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        c.write(
            COMMAND,
            &[(command::IO_SPACE | command::MEMORY_SPACE) as u8],
        );
        assert_eq!(
            c.bar_regions(),
            [None; NUM_REGIONS],
            "address 0 is unassigned"
        );
        write32(&mut c, 0x10, 0x1_0000);
        assert_eq!(c.bar_region(0), None, "no I/O ports above 64 KiB");
        write32(&mut c, 0x10, 0xFF00);
        assert_eq!(c.bar_region(0).map(|r| r.base), Some(0xFF00));
        write32(&mut c, 0x14, 0xFFFF_F000);
        assert_eq!(c.bar_region(1).map(|r| r.base), Some(0xFFFF_F000));
    }

    #[test]
    fn interrupt_line_writable_pin_read_only() {
        let mut c = ConfigSpace::new(ids());
        c.set_interrupt_pin(1).unwrap();
        assert_eq!(c.set_interrupt_pin(5), Err(ConfigError::BadInterruptPin(5)));
        c.write(INTERRUPT_LINE, &[0x0B, 0x04]);
        assert_eq!(c.interrupt_line(), 0x0B);
        assert_eq!(c.interrupt_pin(), 1);
    }

    #[test]
    fn capability_list_is_chained_through_0x34() {
        let mut c = ConfigSpace::new(ids());
        assert!(c.capabilities().is_empty());
        let a = c
            .add_capability(0x01, &[0x23, 0x00, 0x00, 0x00, 0x00, 0x00])
            .unwrap();
        let b = c.add_capability(0x05, &[0; 22]).unwrap();
        let d = c.add_capability(0x09, &[0x0A, 0x01, 0xFF]).unwrap();
        assert_eq!((a, b, d), (0x40, 0x48, 0x60));
        assert_ne!(c.status() & status::CAPABILITIES_LIST, 0);
        assert_eq!(c.get_u8(CAPABILITIES_POINTER), 0x40);
        assert_eq!(c.get_u8(0x41), 0x48);
        assert_eq!(c.get_u8(0x49), 0x60);
        assert_eq!(c.get_u8(0x61), 0x00);
        assert_eq!(
            c.capabilities(),
            vec![(0x40, 0x01), (0x48, 0x05), (0x60, 0x09)]
        );
        assert_eq!(c.find_capability(0x05), Some(0x48));
        assert_eq!(c.get_u8(0x62), 0x0A);
        // Read-only unless the device says otherwise.
        c.write(0x62, &[0]);
        assert_eq!(c.get_u8(0x62), 0x0A);
        c.set_write_mask(0x62, &[0xFF]);
        c.write(0x62, &[0x55]);
        assert_eq!(c.get_u8(0x62), 0x55);
        // Errors: past the end, overlapping, misaligned.
        assert!(matches!(
            c.add_capability(0x11, &[0; 200]),
            Err(ConfigError::CapabilityDoesNotFit { .. })
        ));
        assert!(matches!(
            c.add_capability_at(0x44, 0x11, &[]),
            Err(ConfigError::CapabilityOverlap { .. })
        ));
        assert_eq!(
            c.add_capability_at(0x3C, 0x11, &[]),
            Err(ConfigError::BadCapabilityOffset(0x3C))
        );
        c.add_capability_at(0xF0, 0x11, &[1, 2]).unwrap();
        assert_eq!(c.capabilities().last(), Some(&(0xF0, 0x11)));
    }

    #[test]
    fn looping_capability_list_walk_terminates() {
        let mut c = ConfigSpace::new(ids());
        c.add_capability(0x01, &[0; 2]).unwrap();
        c.set_u8(0x41, 0x40);
        assert_eq!(c.capabilities().len(), MAX_CAPABILITIES);
    }

    #[test]
    fn every_width_at_every_byte_offset_composes() {
        let mut c = ConfigSpace::new(ids());
        c.set_write_mask(0x40, &[0xFF; 16]);
        for off in 0x40..0x4C {
            for (size, v) in [(1usize, 0xA5u32), (2, 0xBEEF), (4, 0xDEAD_BEEF)] {
                c.write(0x40, &[0; 16]);
                c.write(off, &v.to_le_bytes()[..size]);
                let mut all = [0u8; 16];
                c.read(0x40, &mut all);
                let mut expect = [0u8; 16];
                expect[off - 0x40..off - 0x40 + size].copy_from_slice(&v.to_le_bytes()[..size]);
                assert_eq!(all, expect, "size {size} at {off:#x}");
                let mut back = [0u8; 4];
                c.read(off, &mut back[..size]);
                assert_eq!(&back[..size], &v.to_le_bytes()[..size]);
            }
        }
        let mut tail = [0u8; 4];
        c.read(0xFE, &mut tail);
        assert_eq!(tail, [0, 0, 0xFF, 0xFF], "past the end reads ones");
        c.write(0xFF, &[1, 2, 3]);
    }

    #[test]
    fn reset_restores_power_on_values() {
        let mut c = ConfigSpace::new(ids());
        c.add_bar(0, BarKind::Io, 0x10).unwrap();
        c.capture_power_on();
        write32(&mut c, 0x10, 0xC000);
        c.write(COMMAND, &[1]);
        c.write(INTERRUPT_LINE, &[5]);
        c.reset();
        assert_eq!(read32(&c, 0x10), 1);
        assert_eq!(c.command(), 0);
        assert_eq!(c.interrupt_line(), 0);
    }

    #[test]
    fn bridge_header_layout() {
        let mut c = ConfigSpace::new_bridge(PciIds {
            vendor_id: 0x8086,
            device_id: 0x244E,
            revision_id: 0,
            class_code: 0x06_04_00,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        assert_eq!(c.get_u8(HEADER_TYPE), 0x01);
        c.add_bar(
            1,
            BarKind::Memory32 {
                prefetchable: false,
            },
            0x1000,
        )
        .unwrap();
        assert_eq!(
            c.add_bar(2, BarKind::Io, 4),
            Err(ConfigError::BadBarIndex(2))
        );
        write32(&mut c, PRIMARY_BUS, 0x00_02_01_00);
        assert_eq!(c.get_u8(SECONDARY_BUS), 1);
        assert_eq!(c.get_u8(SUBORDINATE_BUS), 2);
        c.write(IO_BASE, &[0xFF, 0xFF]);
        assert_eq!(c.get_u16(IO_BASE), 0xF0F0);
        write32(&mut c, PREF_MEMORY_BASE, 0xFFFF_FFFF);
        assert_eq!(read32(&c, PREF_MEMORY_BASE), 0xFFF1_FFF1);
        c.set_rom_bar(0x800).unwrap();
        write32(&mut c, ROM_ADDRESS_BRIDGE, 0xFFFF_FFFF);
        assert_eq!(read32(&c, ROM_ADDRESS_BRIDGE), 0xFFFF_F801);
        assert_eq!(
            read32(&c, ROM_ADDRESS),
            0,
            "0x30 is the I/O upper half, read-only here"
        );
    }
}
