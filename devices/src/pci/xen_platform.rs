//! The Xen platform PCI device (`xen-platform`, 5853:0001): what the guest's PV drivers look
//! for, and the legacy protocol they use to unplug the emulated disks and NICs they replace.
//!
//! The device has three windows, all served by QEMU's `xen_platform.c` in the same way:
//!
//! - **BAR0**, 256 bytes of I/O, byte accesses only (the bus splits wider ones). Offset 0 reads
//!   the platform flags, every other offset reads all ones. Writes: offset 0 sets the platform
//!   flags; offset 4, value 1, is the old SUSE unplug (all disks and NICs); offset 8, value 1,
//!   unplugs the disks, value 2 the NICs, and any other value is one character of the guest's
//!   log (the Novell VMDP protocol overloaded both on one port).
//! - **BAR1**, 16 MiB of prefetchable memory with no content: reads return 0, writes are
//!   dropped. PV drivers only use its address range, as a place to map Xen's shared-info and
//!   grant-table frames into.
//! - **Ports 0x10-0x1F**, fixed (register [`XenPlatformPorts`] at [`XEN_PLATFORM_IOPORT`],
//!   [`XEN_PLATFORM_IOPORT_LEN`] bytes): the official unplug protocol
//!   (`docs/misc/hvm-emulated-unplug.pandoc`). What an access means depends on its width, so
//!   the window takes 1, 2 and 4 bytes at any offset:
//!
//!   | access | meaning |
//!   |---|---|
//!   | read16 @0x10 | magic 0x49D2 (0xD249 once the driver build is blacklisted) |
//!   | read8 @0x10 | platform flags |
//!   | read8 @0x12 | protocol version, 1 |
//!   | write16 @0x10 | unplug mask ([`UnplugMask`]) |
//!   | write16 @0x12 | the driver's product number |
//!   | write32 @0x10 | the driver's build number (the blacklist check) |
//!   | write8 @0x10 | platform flags |
//!   | write8 @0x12 | one log character |
//!
//!   Everything else reads all ones (a dword read included) and drops writes.
//!
//! Platform flags: bit 0 (`PFFLAG_ROM_LOCK`) makes the 0xC0000-0xFFFFF ROM area read-only,
//! which only the board can do (Xen's `set_mem_type`): [`XenPlatformHost::set_rom_locked`]
//! is asked, and the flag is stored only if it succeeded. A device reset writes 0; a restore
//! re-applies the saved value.
//!
//! Blacklisting: upstream QEMU never blacklists (qemu-traditional consulted xenstore); the
//! default [`XenPlatformHost::driver_blacklisted`] says no, so the magic stays 0x49D2.
//!
//! The guest's log is line-buffered and each line goes to [`XenPlatformHost::guest_log`]
//! (logged at info by default). Lines are cut at [`LOG_LINE_MAX`] bytes (QEMU cuts at 4095,
//! dropping the byte that overflowed; here no byte is dropped).
//!
//! State is shared between the PCI function and the fixed ports; it is saved with the
//! function (through the root, or [`XenPlatform`]'s own [`Snapshot`]).

use std::sync::{Arc, Mutex, MutexGuard};

use log::{debug, info};

use super::PciFunction;
use super::config_space::{BarKind, ConfigSpace, PciIds, command};
use crate::bus::{AccessSizes, BusAddress, BusDevice};
use crate::snapshot::{self, Snapshot, SnapshotError, StateReader, StateWriter};

pub const XEN_PLATFORM_VENDOR_ID: u16 = 0x5853;
pub const XEN_PLATFORM_DEVICE_ID: u16 = 0x0001;
/// Base class 0xFF (other), sub-class 0x80, programming interface 0.
pub const XEN_PLATFORM_CLASS: u32 = 0xFF_80_00;
pub const XEN_PLATFORM_REVISION: u8 = 1;

/// The fixed unplug-protocol ports.
pub const XEN_PLATFORM_IOPORT: u64 = 0x10;
pub const XEN_PLATFORM_IOPORT_LEN: u64 = 16;
/// BAR0: the PV drivers' I/O ports.
pub const BAR0_SIZE: u64 = 0x100;
/// BAR1: the range PV drivers map Xen's frames into.
pub const BAR1_SIZE: u64 = 0x100_0000;

/// What a word read at 0x10 returns.
pub const MAGIC: u16 = 0x49D2;
/// What it returns once the driver build is blacklisted.
pub const MAGIC_BLACKLISTED: u16 = 0xD249;
/// The protocol version a byte read at 0x12 returns.
pub const PROTOCOL_VERSION: u8 = 1;
/// Platform flag bit 0: the ROM area is read-only.
pub const PFFLAG_ROM_LOCK: u8 = 1;
/// A log line is cut here if the guest sends no newline.
pub const LOG_LINE_MAX: usize = 4095;

/// The unplug mask a guest writes (word at 0x10).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnplugMask(pub u16);

impl UnplugMask {
    /// Bit 0: every emulated IDE and SATA hard disk (not CD-ROMs), and SCSI controllers.
    pub const ALL_DISKS: u16 = 1 << 0;
    /// Bit 1: every emulated NIC (with its host-side peer).
    pub const ALL_NICS: u16 = 1 << 1;
    /// Bit 2: the IDE disks except the primary master; overridden by bit 0.
    pub const AUX_IDE_DISKS: u16 = 1 << 2;
    /// Bit 3: NVMe controllers.
    pub const NVME_DISKS: u16 = 1 << 3;

    /// Whether any disk unplug is asked for (QEMU walks the disk controllers for bits 0, 2, 3).
    pub fn disks(self) -> bool {
        self.0 & (Self::ALL_DISKS | Self::AUX_IDE_DISKS | Self::NVME_DISKS) != 0
    }

    /// Disks are to go, but the primary master stays (bit 2 without bit 0); SCSI stays too.
    pub fn keep_primary_master(self) -> bool {
        self.0 & Self::AUX_IDE_DISKS != 0 && self.0 & Self::ALL_DISKS == 0
    }

    /// IDE/SATA hard disks are to go (bit 0 or bit 2).
    pub fn ide_disks(self) -> bool {
        self.0 & (Self::ALL_DISKS | Self::AUX_IDE_DISKS) != 0
    }

    pub fn nics(self) -> bool {
        self.0 & Self::ALL_NICS != 0
    }

    pub fn nvme(self) -> bool {
        self.0 & Self::NVME_DISKS != 0
    }
}

/// What the platform device asks of the board.
///
/// Calls come from inside a guest access, with the device's bus or PCI lock held (never its
/// own state lock): an implementation must not call back into the platform device or the PCI
/// root. An unplug in particular should be latched (see [`UnplugLatch`]) and carried out after
/// the access, before the guest's next instruction (under Xen: before the ioreq completes).
pub trait XenPlatformHost: Send + Sync {
    /// The guest's PV drivers asked for the emulated devices in `mask` to go away. Never touch
    /// pass-through devices.
    fn unplug(&self, mask: UnplugMask);

    /// Make the 0xC0000-0xFFFFF ROM area read-only (`true`) or writable; return whether it
    /// worked (the flag is stored only then). Under Xen: `set_mem_type(HVMMEM_ram_ro / _rw,
    /// first pfn 0xC0, 0x40 pages)`. The default, for a board with no such control, accepts.
    fn set_rom_locked(&self, locked: bool) -> bool {
        let _ = locked;
        true
    }

    /// Whether the PV driver `product` at `build` must not load (the magic then reads
    /// 0xD249). Upstream QEMU never blacklists.
    fn driver_blacklisted(&self, product: u16, build: u32) -> bool {
        let _ = (product, build);
        false
    }

    /// One line of the guest drivers' log, control characters already escaped.
    fn guest_log(&self, line: &str) {
        info!("xen-platform: guest: {line}");
    }
}

/// A host that latches unplug requests for the board to act on between accesses, and keeps
/// the ROM-lock and log calls' defaults.
#[derive(Debug, Default)]
pub struct UnplugLatch {
    pending: Mutex<u16>,
}

impl UnplugLatch {
    pub fn new() -> UnplugLatch {
        UnplugLatch::default()
    }

    /// The union of the masks requested since the last call, if any.
    pub fn take(&self) -> Option<UnplugMask> {
        let mut p = self.pending.lock().unwrap_or_else(|e| e.into_inner());
        match std::mem::take(&mut *p) {
            0 => None,
            m => Some(UnplugMask(m)),
        }
    }
}

impl XenPlatformHost for UnplugLatch {
    fn unplug(&self, mask: UnplugMask) {
        *self.pending.lock().unwrap_or_else(|e| e.into_inner()) |= mask.0;
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct PlatformState {
    flags: u8,
    product: u16,
    build: u32,
    blacklisted: bool,
    log: Vec<u8>,
}

struct Shared {
    state: Mutex<PlatformState>,
    host: Arc<dyn XenPlatformHost>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, PlatformState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn flags(&self) -> u8 {
        self.state().flags
    }

    fn write_flags(&self, value: u8) {
        let locked = value & PFFLAG_ROM_LOCK != 0;
        if self.host.set_rom_locked(locked) {
            self.state().flags = value & PFFLAG_ROM_LOCK;
            debug!(
                "xen-platform: ROM area now {}",
                if locked { "read-only" } else { "writable" }
            );
        } else {
            debug!("xen-platform: the board refused to change the ROM area's protection");
        }
    }

    fn unplug(&self, mask: UnplugMask) {
        info!("xen-platform: guest asks to unplug {:#x}", mask.0);
        self.host.unplug(mask);
    }

    fn log_byte(&self, byte: u8) {
        let line = {
            let mut st = self.state();
            if byte != b'\n' {
                st.log.push(byte);
            }
            if byte == b'\n' || st.log.len() >= LOG_LINE_MAX {
                Some(std::mem::take(&mut st.log))
            } else {
                None
            }
        };
        if let Some(line) = line {
            self.host.guest_log(&printable(&line));
        }
    }

    fn set_product(&self, product: u16) {
        match product {
            0 => debug!("xen-platform: guest claims PV product 0"),
            1 => debug!("xen-platform: Citrix Windows PV drivers loaded"),
            p => debug!("xen-platform: PV product {p} loaded"),
        }
        self.state().product = product;
    }

    fn set_build(&self, build: u32) {
        let product = self.state().product;
        let blacklisted = self.host.driver_blacklisted(product, build);
        if blacklisted {
            info!("xen-platform: PV driver product {product} build {build} is blacklisted");
        }
        let mut st = self.state();
        st.build = build;
        st.blacklisted = blacklisted;
    }

    /// A device reset: the ROM area becomes writable again and the handshake starts over.
    fn reset(&self) {
        self.write_flags(0);
        let mut st = self.state();
        st.blacklisted = false;
        st.log.clear();
    }
}

/// The log line with control characters escaped, so a guest cannot forge log records.
fn printable(line: &[u8]) -> String {
    let text = String::from_utf8_lossy(line);
    let text = text.strip_suffix('\r').unwrap_or(&text);
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

impl Snapshot for PlatformState {
    fn snapshot_id(&self) -> &'static str {
        "xen-platform-state"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        w.u8(self.flags);
        w.u16(self.product);
        w.u32(self.build);
        w.bool(self.blacklisted);
        w.var_bytes(&self.log);
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let flags = r.u8()?;
        if flags & !PFFLAG_ROM_LOCK != 0 {
            return Err(SnapshotError::Invalid(format!(
                "platform flags {flags:#x} have undefined bits"
            )));
        }
        let product = r.u16()?;
        let build = r.u32()?;
        let blacklisted = r.bool()?;
        let log = r.var_bytes(LOG_LINE_MAX - 1)?;
        *self = PlatformState {
            flags,
            product,
            build,
            blacklisted,
            log,
        };
        Ok(())
    }
}

/// The PCI function. Add it with `PciRoot::add` (libxl's board puts it at 00:02.0 or 00:03.0,
/// after the VGA) and register [`XenPlatform::fixed_ports`] at [`XEN_PLATFORM_IOPORT`].
pub struct XenPlatform {
    config: ConfigSpace,
    shared: Arc<Shared>,
}

impl XenPlatform {
    /// The device as QEMU realizes it: I/O and memory decoding on, INTA#, BAR0 256 bytes of
    /// I/O, BAR1 16 MiB of prefetchable memory.
    pub fn new(host: Arc<dyn XenPlatformHost>) -> XenPlatform {
        let mut config = ConfigSpace::new(PciIds {
            vendor_id: XEN_PLATFORM_VENDOR_ID,
            device_id: XEN_PLATFORM_DEVICE_ID,
            revision_id: XEN_PLATFORM_REVISION,
            class_code: XEN_PLATFORM_CLASS,
            subsystem_vendor_id: XEN_PLATFORM_VENDOR_ID,
            subsystem_id: XEN_PLATFORM_DEVICE_ID,
        });
        config.set_u16(
            super::config_space::COMMAND,
            command::IO_SPACE | command::MEMORY_SPACE,
        );
        if let Err(e) = config.set_interrupt_pin(1) {
            unreachable!("pin 1 is valid: {e}");
        }
        if let Err(e) = config.add_bar(0, BarKind::Io, BAR0_SIZE) {
            unreachable!("a 256-byte I/O BAR is valid: {e}");
        }
        if let Err(e) = config.add_bar(1, BarKind::Memory32 { prefetchable: true }, BAR1_SIZE) {
            unreachable!("a 16 MiB memory BAR is valid: {e}");
        }
        config.capture_power_on();
        XenPlatform {
            config,
            shared: Arc::new(Shared {
                state: Mutex::new(PlatformState::default()),
                host,
            }),
        }
    }

    /// The fixed ports 0x10-0x1F, sharing this device's state.
    pub fn fixed_ports(&self) -> Arc<Mutex<XenPlatformPorts>> {
        Arc::new(Mutex::new(XenPlatformPorts {
            shared: self.shared.clone(),
        }))
    }

    /// The platform flags as stored.
    pub fn flags(&self) -> u8 {
        self.shared.flags()
    }

    /// The product number the guest's drivers announced (0 until they do).
    pub fn driver_product(&self) -> u16 {
        self.shared.state().product
    }

    /// The build number the guest's drivers announced (0 until they do).
    pub fn driver_build(&self) -> u32 {
        self.shared.state().build
    }
}

impl PciFunction for XenPlatform {
    fn name(&self) -> &str {
        "xen-platform"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            0 => {
                let value = if offset == 0 {
                    self.shared.flags()
                } else {
                    0xFF
                };
                data.fill(value);
            }
            1 => data.fill(0),
            _ => {}
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let Some(&value) = data.first() else {
            return;
        };
        match (bar, offset, value) {
            (0, 0, v) => self.shared.write_flags(v),
            (0, 4, 1) => self
                .shared
                .unplug(UnplugMask(UnplugMask::ALL_DISKS | UnplugMask::ALL_NICS)),
            (0, 8, 1) => self.shared.unplug(UnplugMask(UnplugMask::ALL_DISKS)),
            (0, 8, 2) => self.shared.unplug(UnplugMask(UnplugMask::ALL_NICS)),
            (0, 8, v) => self.shared.log_byte(v),
            (1, _, _) => debug!("xen-platform: write to the BAR1 range at {offset:#x} dropped"),
            _ => {}
        }
    }

    fn bar_access_sizes(&self, bar: usize) -> AccessSizes {
        match bar {
            0 => AccessSizes::BYTE,
            _ => AccessSizes::ANY,
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        self.shared.reset();
    }

    fn save_device_state(&self) -> Vec<u8> {
        let state = self.shared.state().clone();
        snapshot::save(&state)
    }

    fn restore_device_state(&mut self, blob: &[u8]) -> Result<(), SnapshotError> {
        let mut state = PlatformState::default();
        snapshot::restore(&mut state, blob)?;
        let flags = state.flags;
        *self.shared.state() = state;
        // As QEMU's post-load: the board's ROM protection follows the restored flag.
        self.shared.write_flags(flags);
        Ok(())
    }
}

/// The whole device: its configuration space, then its state.
impl Snapshot for XenPlatform {
    fn snapshot_id(&self) -> &'static str {
        "xen-platform"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        w.bytes(self.config.data());
        w.var_bytes(&self.save_device_state());
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let mut config = [0u8; super::config_space::CONFIG_SPACE_SIZE];
        r.bytes(&mut config)?;
        if config[..4] != self.config.data()[..4] {
            return Err(SnapshotError::Invalid(
                "saved configuration space is not a Xen platform device's".into(),
            ));
        }
        let blob = r.var_bytes(LOG_LINE_MAX + 64)?;
        self.restore_device_state(&blob)?;
        self.config.restore_data(&config);
        Ok(())
    }
}

/// The fixed ports 0x10-0x1F (see the module documentation).
pub struct XenPlatformPorts {
    shared: Arc<Shared>,
}

impl BusDevice for XenPlatformPorts {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        let value: u32 = match (data.len(), at.offset) {
            (1, 0) => u32::from(self.shared.flags()),
            (1, 2) => u32::from(PROTOCOL_VERSION),
            (2, 0) => u32::from(if self.shared.state().blacklisted {
                MAGIC_BLACKLISTED
            } else {
                MAGIC
            }),
            _ => u32::MAX,
        };
        for (i, b) in data.iter_mut().enumerate() {
            *b = value.checked_shr(8 * i as u32).unwrap_or(0) as u8;
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        let mut bytes = [0u8; 4];
        let n = data.len().min(4);
        bytes[..n].copy_from_slice(&data[..n]);
        let value = u32::from_le_bytes(bytes);
        match (data.len(), at.offset) {
            (1, 0) => self.shared.write_flags(value as u8),
            (1, 2) => self.shared.log_byte(value as u8),
            (2, 0) => self.shared.unplug(UnplugMask(value as u16)),
            (2, 2) => self.shared.set_product(value as u16),
            (4, 0) => self.shared.set_build(value),
            (len, off) => debug!(
                "xen-platform: {len}-byte write of {value:#x} at port {:#x} ignored",
                XEN_PLATFORM_IOPORT + off
            ),
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::new(1, 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusKind};
    use crate::pci::root::PciRoot;
    use crate::pci::{Bdf, PirqRouter};
    use crate::snapshot::check_round_trip;

    #[derive(Default)]
    struct Host {
        unplugs: Mutex<Vec<u16>>,
        rom: Mutex<Vec<bool>>,
        lines: Mutex<Vec<String>>,
        refuse_rom: bool,
        blacklist_build: Option<u32>,
    }

    impl XenPlatformHost for Host {
        fn unplug(&self, mask: UnplugMask) {
            self.unplugs.lock().unwrap().push(mask.0);
        }
        fn set_rom_locked(&self, locked: bool) -> bool {
            self.rom.lock().unwrap().push(locked);
            !self.refuse_rom
        }
        fn driver_blacklisted(&self, _product: u16, build: u32) -> bool {
            self.blacklist_build == Some(build)
        }
        fn guest_log(&self, line: &str) {
            self.lines.lock().unwrap().push(line.to_string());
        }
    }

    struct Rig {
        host: Arc<Host>,
        pio: Arc<Bus>,
        mmio: Arc<Bus>,
        root: PciRoot,
        dev: Arc<Mutex<XenPlatform>>,
    }

    const BDF: Bdf = Bdf::from_devfn(0, 3 << 3);

    fn rig_with(host: Host) -> Rig {
        let host = Arc::new(host);
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let root = PciRoot::new(pio.clone(), mmio.clone(), PirqRouter::unconnected());
        let platform = XenPlatform::new(host.clone());
        pio.insert(
            "xen-platform-fixed",
            XEN_PLATFORM_IOPORT,
            XEN_PLATFORM_IOPORT_LEN,
            platform.fixed_ports(),
        )
        .unwrap();
        let dev = root.add(BDF, platform).unwrap();
        Rig {
            host,
            pio,
            mmio,
            root,
            dev,
        }
    }

    fn rig() -> Rig {
        rig_with(Host::default())
    }

    #[test]
    fn pci_identity_and_bar_sizes() {
        let r = rig();
        let cfg = |reg, size| r.root.config_read(BDF, reg, size);
        assert_eq!(cfg(0x00, 4), 0x0001_5853);
        assert_eq!(
            cfg(0x08, 4),
            0xFF80_0001,
            "class FF80, prog-if 0, revision 1"
        );
        assert_eq!(cfg(0x2C, 4), 0x0001_5853, "subsystem");
        assert_eq!(cfg(0x3D, 1), 1, "INTA#");
        assert_eq!(
            cfg(0x04, 2) as u16 & (command::IO_SPACE | command::MEMORY_SPACE),
            command::IO_SPACE | command::MEMORY_SPACE
        );
        // BAR sizing: write ones, read back the size mask and type bits.
        r.root.config_write(BDF, 0x10, 4, u32::MAX);
        assert_eq!(cfg(0x10, 4), 0xFFFF_FF01, "256 bytes of I/O");
        r.root.config_write(BDF, 0x14, 4, u32::MAX);
        assert_eq!(cfg(0x14, 4), 0xFF00_0008, "16 MiB prefetchable memory");
        for reg in [0x18, 0x1C, 0x20, 0x24] {
            r.root.config_write(BDF, reg, 4, u32::MAX);
            assert_eq!(cfg(reg, 4), 0, "BAR at {reg:#x} is not implemented");
        }
    }

    fn map_bars(r: &Rig) {
        r.root.config_write(BDF, 0x10, 4, 0xC000);
        r.root.config_write(BDF, 0x14, 4, 0xF100_0000);
    }

    #[test]
    fn bar0_flags_unplug_and_log() {
        let r = rig();
        map_bars(&r);
        assert_eq!(r.pio.read_value(0xC000, 1), 0);
        assert_eq!(r.pio.read_value(0xC001, 1), 0xFF);
        r.pio.write_value(0xC000, 1, 0xFF);
        assert_eq!(
            r.pio.read_value(0xC000, 1),
            1,
            "only the ROM lock bit is kept"
        );
        assert_eq!(*r.host.rom.lock().unwrap(), vec![true]);
        // The SUSE driver's outl(1, base + 4): bytes 1, 0, 0, 0.
        r.pio.write_value(0xC004, 4, 1);
        assert_eq!(*r.host.unplugs.lock().unwrap(), vec![0x3]);
        r.pio.write_value(0xC004, 1, 2);
        r.pio.write_value(0xC008, 1, 1);
        r.pio.write_value(0xC008, 1, 2);
        assert_eq!(*r.host.unplugs.lock().unwrap(), vec![0x3, 0x1, 0x2]);
        for b in b"vmdp\n" {
            r.pio.write_value(0xC008, 1, u64::from(*b));
        }
        assert_eq!(*r.host.lines.lock().unwrap(), vec!["vmdp".to_string()]);
        // BAR1 has no content.
        assert_eq!(r.mmio.read_value(0xF100_0000, 4), 0);
        r.mmio.write_value(0xF1FF_FFF8, 8, u64::MAX);
        assert_eq!(r.mmio.read_value(0xF1FF_FFF8, 8), 0);
    }

    #[test]
    fn magic_version_and_handshake() {
        let r = rig();
        let p = &r.pio;
        assert_eq!(p.read_value(0x10, 2), u64::from(MAGIC));
        assert_eq!(p.read_value(0x12, 1), 1);
        assert_eq!(p.read_value(0x10, 1), 0, "platform flags");
        assert_eq!(p.read_value(0x12, 2), 0xFFFF);
        assert_eq!(p.read_value(0x11, 2), 0xFFFF, "unaligned word");
        assert_eq!(
            p.read_value(0x10, 4),
            0xFFFF_FFFF,
            "dword reads are all ones"
        );
        assert_eq!(p.read_value(0x1F, 1), 0xFF);
        p.write_value(0x12, 2, 3);
        p.write_value(0x10, 4, 0x0001_0203);
        assert_eq!(r.dev.lock().unwrap().driver_product(), 3);
        assert_eq!(r.dev.lock().unwrap().driver_build(), 0x0001_0203);
        assert_eq!(p.read_value(0x10, 2), u64::from(MAGIC), "never blacklisted");
        assert!(r.host.unplugs.lock().unwrap().is_empty());
    }

    #[test]
    fn blacklisted_build_flips_the_magic() {
        let r = rig_with(Host {
            blacklist_build: Some(7),
            ..Host::default()
        });
        r.pio.write_value(0x12, 2, 1);
        r.pio.write_value(0x10, 4, 7);
        assert_eq!(r.pio.read_value(0x10, 2), u64::from(MAGIC_BLACKLISTED));
        r.pio.write_value(0x10, 4, 8);
        assert_eq!(r.pio.read_value(0x10, 2), u64::from(MAGIC));
    }

    #[test]
    fn unplug_mask_reaches_the_host() {
        let r = rig();
        r.pio.write_value(0x10, 2, 0x0003);
        r.pio.write_value(0x10, 2, 0x0004);
        assert_eq!(*r.host.unplugs.lock().unwrap(), vec![0x3, 0x4]);
        let m = UnplugMask(0x4);
        assert!(m.disks() && m.ide_disks() && m.keep_primary_master() && !m.nics());
        let m = UnplugMask(0x5);
        assert!(!m.keep_primary_master(), "bit 0 overrides bit 2");
        let m = UnplugMask(0x8);
        assert!(m.disks() && m.nvme() && !m.ide_disks());
        assert!(UnplugMask(0x2).nics() && !UnplugMask(0x2).disks());
    }

    #[test]
    fn unplug_latch_accumulates() {
        let latch = UnplugLatch::new();
        assert_eq!(latch.take(), None);
        latch.unplug(UnplugMask(1));
        latch.unplug(UnplugMask(2));
        assert_eq!(latch.take(), Some(UnplugMask(3)));
        assert_eq!(latch.take(), None);
    }

    #[test]
    fn log_port_builds_lines() {
        let r = rig();
        for b in b"hello\r\nwor" {
            r.pio.write_value(0x12, 1, u64::from(*b));
        }
        assert_eq!(*r.host.lines.lock().unwrap(), vec!["hello".to_string()]);
        for b in b"ld\x1b[31m\n" {
            r.pio.write_value(0x12, 1, u64::from(*b));
        }
        assert_eq!(r.host.lines.lock().unwrap()[1], "world\\u{1b}[31m");
        // Without a newline, a line is cut at the limit rather than growing.
        for _ in 0..LOG_LINE_MAX + 10 {
            r.pio.write_value(0x12, 1, u64::from(b'x'));
        }
        let lines = r.host.lines.lock().unwrap();
        assert_eq!(lines.len(), 3);
        assert_eq!(lines[2].len(), LOG_LINE_MAX);
    }

    #[test]
    fn refused_rom_lock_is_not_stored_and_reset_unlocks() {
        let r = rig_with(Host {
            refuse_rom: true,
            ..Host::default()
        });
        r.pio.write_value(0x10, 1, 1);
        assert_eq!(r.pio.read_value(0x10, 1), 0);
        let r = rig();
        r.pio.write_value(0x10, 1, 1);
        assert_eq!(r.pio.read_value(0x10, 1), 1);
        r.root.reset();
        assert_eq!(r.pio.read_value(0x10, 1), 0);
        assert_eq!(*r.host.rom.lock().unwrap(), vec![true, false]);
    }

    #[test]
    fn snapshot_round_trip_and_behaviour_continues() {
        let r = rig();
        r.pio.write_value(0x10, 1, 1);
        r.pio.write_value(0x12, 2, 1);
        r.pio.write_value(0x10, 4, 42);
        for b in b"half a li" {
            r.pio.write_value(0x12, 1, u64::from(*b));
        }
        let host = Arc::new(Host::default());
        let mut fresh = XenPlatform::new(host.clone());
        check_round_trip(&*r.dev.lock().unwrap(), &mut fresh).unwrap();
        assert_eq!(fresh.flags(), 1);
        assert!(
            *host.rom.lock().unwrap().last().unwrap(),
            "ROM lock re-applied"
        );
        assert_eq!(fresh.driver_build(), 42);
        let ports = fresh.fixed_ports();
        for b in b"ne\n" {
            ports.lock().unwrap().write(
                BusAddress {
                    base: 0x10,
                    offset: 2,
                },
                &[*b],
            );
        }
        assert_eq!(*host.lines.lock().unwrap(), vec!["half a line".to_string()]);
        // Through the root's snapshot too.
        let blob = snapshot::save(&r.root);
        r.pio.write_value(0x10, 1, 0);
        let mut root = r.root.clone();
        snapshot::restore(&mut root, &blob).unwrap();
        assert_eq!(r.pio.read_value(0x10, 1), 1);
    }

    #[test]
    fn random_accesses_do_not_panic() {
        let r = rig();
        map_bars(&r);
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let size = 1usize << (x % 4);
            let (bus, addr) = match (x >> 2) % 3 {
                0 => (&r.pio, 0x0E + (x >> 8) % 0x14),
                1 => (&r.pio, 0xBFFE + (x >> 8) % 0x104),
                _ => (&r.mmio, 0xF0FF_FFF0 + (x >> 8) % 0x20),
            };
            if x & 0x80 == 0 {
                bus.write_value(addr, size, x >> 16);
            } else {
                bus.read_value(addr, size);
            }
        }
    }
}
