//! PCI configuration mechanism #1 (ports 0xCF8-0xCFF) and the PIIX3 reset control register
//! (port 0xCF9).
//!
//! Register [`PciConfigIo`] on the port bus at [`CONFIG_IO_BASE`] for [`CONFIG_IO_LEN`] bytes.
//!
//! - **0xCF8 CONFIG_ADDRESS** latches only on a dword access: bit 31 enables, bits 23:16 bus,
//!   15:11 device, 10:8 function, 7:2 register; the reserved bits read as zero. Byte and word
//!   accesses to 0xCF8-0xCFB are not the host bridge's: on the i440FX they "pass through" to
//!   PCI as ordinary I/O cycles, where nothing but the PIIX3's 0xCF9 claims them (QEMU gives
//!   the whole dword to the region that starts it, to the same effect). They read as ones and
//!   writes are dropped, except the byte at 0xCF9.
//! - **0xCFC-0xCFF CONFIG_DATA**: an access of 1, 2 or 4 bytes at any port reaches register
//!   `(CONFIG_ADDRESS & 0xFC) + (port & 3)` of the addressed function. With the enable bit
//!   clear, reads return ones and writes are dropped.
//! - **0xCF9 reset control** (PIIX3 RC, byte access): bit 1 (System Reset) chooses a hard
//!   rather than a soft reset and is stored; writing bit 2 (Reset CPU) starts the reset and is
//!   not stored. The hard reset goes to `SystemControl::request_reset`. A soft reset only
//!   INITs the CPU on real hardware; `SystemControl` has no INIT, so it is requested as a
//!   full reset too (QEMU does the same), which a guest cannot tell apart at the reset vector.
//!
//! An access crossing from 0xCFB into 0xCFC is handled as the two cycles the CPU would make.

use std::sync::Arc;

use log::debug;

use super::Bdf;
use super::root::{CONFIG_ADDRESS_ENABLE, PciRoot};
use crate::bus::{AccessSizes, BusAddress, BusDevice};
use crate::system::SystemControl;

pub const CONFIG_IO_BASE: u64 = 0xCF8;
pub const CONFIG_IO_LEN: u64 = 8;
/// The reset control register's port.
pub const RESET_CONTROL_PORT: u64 = 0xCF9;

/// Reset control: hard (system) rather than soft (CPU INIT) reset.
pub const RC_SYSTEM_RESET: u8 = 1 << 1;
/// Reset control: start the reset.
pub const RC_RESET_CPU: u8 = 1 << 2;

/// Offset of 0xCF9 from the base.
const RC_OFFSET: u64 = RESET_CONTROL_PORT - CONFIG_IO_BASE;

/// The 0xCF8-0xCFF port device. Its state (the address latch and the reset control register)
/// lives in the root, so it is saved with the root's snapshot.
pub struct PciConfigIo {
    root: PciRoot,
    system: Arc<dyn SystemControl>,
}

impl PciConfigIo {
    pub fn new(root: PciRoot, system: Arc<dyn SystemControl>) -> PciConfigIo {
        PciConfigIo { root, system }
    }

    /// The function and base register CONFIG_ADDRESS selects, if its enable bit is set.
    fn target(&self) -> Option<(Bdf, usize)> {
        let addr = self.root.config_address();
        if addr & CONFIG_ADDRESS_ENABLE == 0 {
            return None;
        }
        let bdf = Bdf::from_devfn((addr >> 16) as u8, (addr >> 8) as u8);
        Some((bdf, (addr & 0xFC) as usize))
    }

    fn read_address(&mut self, offset: u64, data: &mut [u8]) {
        if offset == 0 && data.len() == 4 {
            data.copy_from_slice(&self.root.config_address().to_le_bytes());
            return;
        }
        for (i, b) in data.iter_mut().enumerate() {
            *b = if offset + i as u64 == RC_OFFSET {
                self.root.reset_control()
            } else {
                0xFF
            };
        }
    }

    fn write_address(&mut self, offset: u64, data: &[u8]) {
        if let Ok(dword) = <[u8; 4]>::try_from(data)
            && offset == 0
        {
            self.root.set_config_address(u32::from_le_bytes(dword));
            return;
        }
        for (i, &v) in data.iter().enumerate() {
            let port = CONFIG_IO_BASE + offset + i as u64;
            if port == RESET_CONTROL_PORT {
                self.write_reset_control(v);
            } else {
                debug!(
                    "{}-byte write to port {port:#x} passes through unclaimed",
                    data.len()
                );
            }
        }
    }

    fn write_reset_control(&mut self, v: u8) {
        self.root.set_reset_control(v);
        if v & RC_RESET_CPU != 0 {
            if v & RC_SYSTEM_RESET != 0 {
                debug!("port 0xCF9: hard reset");
            } else {
                debug!("port 0xCF9: soft reset (CPU INIT), done as a full reset");
            }
            self.system.request_reset();
        }
    }
}

impl BusDevice for PciConfigIo {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        let mut done = 0;
        while done < data.len() {
            let offset = at.offset + done as u64;
            if offset >= CONFIG_IO_LEN {
                break;
            }
            let n = (data.len() - done).min((4 - offset % 4) as usize);
            let chunk = &mut data[done..done + n];
            if offset < 4 {
                self.read_address(offset, chunk);
            } else {
                match self.target() {
                    Some((bdf, reg)) => {
                        self.root
                            .config_read_bytes(bdf, reg + (offset - 4) as usize, chunk)
                    }
                    None => chunk.fill(0xFF),
                }
            }
            done += n;
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        let mut done = 0;
        while done < data.len() {
            let offset = at.offset + done as u64;
            if offset >= CONFIG_IO_LEN {
                break;
            }
            let n = (data.len() - done).min((4 - offset % 4) as usize);
            let chunk = &data[done..done + n];
            if offset < 4 {
                self.write_address(offset, chunk);
            } else {
                match self.target() {
                    Some((bdf, reg)) => {
                        self.root
                            .config_write_bytes(bdf, reg + (offset - 4) as usize, chunk)
                    }
                    None => debug!("config data write with CONFIG_ADDRESS disabled dropped"),
                }
            }
            done += n;
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::new(1, 4)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    use crate::bus::{Bus, BusKind};
    use crate::irq::{IrqLine, LatchedLine};
    use crate::pci::config_space::{BarKind, ConfigSpace, PciIds};
    use crate::pci::i440fx::{I440FX_BDF, I440fx};
    use crate::pci::piix3::{PIIX3_BDF, Piix3, PirqRouter};
    use crate::pci::{PciFunction, root::CONFIG_ADDRESS_MASK};
    use crate::snapshot::{self, check_round_trip};
    use crate::system::SystemSignals;

    struct Machine {
        root: PciRoot,
        pio: Arc<Bus>,
        signals: Arc<SystemSignals>,
        isa: Vec<Arc<LatchedLine>>,
    }

    fn machine() -> Machine {
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let isa: Vec<Arc<LatchedLine>> = (0..16).map(|_| Arc::new(LatchedLine::new())).collect();
        let router =
            PirqRouter::new(isa.iter().map(|l| l.clone() as Arc<dyn IrqLine>).collect()).unwrap();
        let root = PciRoot::new(pio.clone(), mmio, router.clone());
        root.add(I440FX_BDF, I440fx::new()).unwrap();
        root.add(PIIX3_BDF, Piix3::new(router)).unwrap();
        let signals = Arc::new(SystemSignals::new());
        pio.insert(
            "pci-config",
            CONFIG_IO_BASE,
            CONFIG_IO_LEN,
            Arc::new(Mutex::new(PciConfigIo::new(root.clone(), signals.clone()))),
        )
        .unwrap();
        Machine {
            root,
            pio,
            signals,
            isa,
        }
    }

    fn address(bdf: Bdf, reg: u8) -> u64 {
        0x8000_0000 | u64::from(bdf.bus()) << 16 | u64::from(bdf.devfn()) << 8 | u64::from(reg)
    }

    impl Machine {
        fn select(&self, bdf: Bdf, reg: u8) {
            self.pio.write_value(0xCF8, 4, address(bdf, reg));
        }
    }

    #[test]
    fn address_latch_reads_back_with_reserved_bits_clear() {
        let m = machine();
        m.pio.write_value(0xCF8, 4, 0x8000_0000);
        assert_eq!(m.pio.read_value(0xCF8, 4), 0x8000_0000);
        m.pio.write_value(0xCF8, 4, 0xFFFF_FFFF);
        assert_eq!(m.pio.read_value(0xCF8, 4), u64::from(CONFIG_ADDRESS_MASK));
        assert_eq!(m.root.config_address(), CONFIG_ADDRESS_MASK);
    }

    #[test]
    fn only_dword_accesses_latch_the_address() {
        let m = machine();
        m.pio.write_value(0xCF8, 4, 0x8000_0800);
        m.pio.write_value(0xCF8, 1, 0x00);
        m.pio.write_value(0xCF8, 2, 0x0000);
        m.pio.write_value(0xCFA, 2, 0x1234);
        m.pio.write_value(0xCFB, 1, 0x00);
        assert_eq!(m.root.config_address(), 0x8000_0800);
        assert_eq!(m.pio.read_value(0xCF8, 1), 0xFF, "byte reads pass through");
        assert_eq!(m.pio.read_value(0xCFA, 2), 0xFFFF);
        // A word at 0xCF8 carries 0xCF9 in its high byte: that byte is the reset control.
        assert_eq!(m.pio.read_value(0xCF8, 2), 0x00FF);
        assert!(
            !m.signals.take_reset(),
            "the word write above held no reset bit"
        );
    }

    #[test]
    fn data_port_at_every_width_and_byte_offset() {
        let m = machine();
        // The host bridge's first dwords: 8086:1237, command 0006, status 0280, class/rev.
        let expect: Vec<u8> = (0..16u16)
            .map(|i| m.root.config_read(I440FX_BDF, i, 1) as u8)
            .collect();
        assert_eq!(&expect[..4], &[0x86, 0x80, 0x37, 0x12]);
        for reg in (0..16u8).step_by(4) {
            m.select(I440FX_BDF, reg);
            for port in 0..4u64 {
                for size in [1usize, 2, 4] {
                    if port as usize + size > 4 {
                        continue;
                    }
                    let got = m.pio.read_value(0xCFC + port, size);
                    let base = usize::from(reg) + port as usize;
                    let mut want = [0u8; 8];
                    want[..size].copy_from_slice(&expect[base..base + size]);
                    assert_eq!(
                        got,
                        u64::from_le_bytes(want),
                        "reg {reg:#x} port +{port} size {size}"
                    );
                }
            }
        }
        // Writes at every byte offset: PIIX3 route registers 0x60-0x63.
        m.select(PIIX3_BDF, 0x60);
        m.pio.write_value(0xCFC, 4, 0x0505_0505);
        m.pio.write_value(0xCFD, 1, 0x0A);
        m.pio.write_value(0xCFE, 2, 0x0B09);
        assert_eq!(m.root.config_read(PIIX3_BDF, 0x60, 4), 0x0B09_0A05);
        m.pio.write_value(0xCFF, 1, 0x8B);
        assert_eq!(m.pio.read_value(0xCFC, 4), 0x8B09_0A05);
        assert_eq!(m.root.pirq_router().route(3), None);
        assert_eq!(m.root.pirq_router().route(1), Some(10));
    }

    #[test]
    fn disabled_address_reads_ones_and_drops_writes() {
        let m = machine();
        m.pio.write_value(0xCF8, 4, 0x0000_0860);
        assert_eq!(m.pio.read_value(0xCFC, 4), 0xFFFF_FFFF);
        m.pio.write_value(0xCFC, 1, 0x0B);
        assert_eq!(m.root.config_read(PIIX3_BDF, 0x60, 1), 0x80);
    }

    #[test]
    fn absent_device_and_other_bus_read_all_ones() {
        let m = machine();
        m.select(Bdf::new(0, 7, 0).unwrap(), 0);
        assert_eq!(m.pio.read_value(0xCFC, 4), 0xFFFF_FFFF);
        assert_eq!(m.pio.read_value(0xCFE, 2), 0xFFFF);
        m.select(Bdf::new(1, 0, 0).unwrap(), 0);
        assert_eq!(m.pio.read_value(0xCFC, 4), 0xFFFF_FFFF);
        m.select(Bdf::new(0, 1, 1).unwrap(), 0);
        assert_eq!(m.pio.read_value(0xCFC, 2), 0xFFFF);
    }

    #[test]
    fn access_straddling_0xcfb_and_0xcfc() {
        let m = machine();
        m.select(I440FX_BDF, 0);
        // 0xCFB (pass-through: ones) then 0xCFC (vendor ID low byte).
        assert_eq!(m.pio.read_value(0xCFB, 2), 0x86FF);
        m.pio.write_value(0xCFB, 2, 0x0000);
        assert_eq!(m.root.config_address(), address(I440FX_BDF, 0) as u32);
    }

    #[test]
    fn reset_control_register() {
        let m = machine();
        assert_eq!(m.pio.read_value(0xCF9, 1), 0x00);
        m.pio.write_value(0xCF9, 1, 0x02);
        assert!(
            !m.signals.take_reset(),
            "bit 1 alone only selects the reset type"
        );
        assert_eq!(m.pio.read_value(0xCF9, 1), 0x02);
        m.pio.write_value(0xCF9, 1, 0x06);
        assert!(m.signals.take_reset(), "bit 2 with bit 1: hard reset");
        assert_eq!(m.pio.read_value(0xCF9, 1), 0x02, "bit 2 is not stored");
        m.pio.write_value(0xCF9, 1, 0x04);
        assert!(
            m.signals.take_reset(),
            "soft reset, approximated by a full one"
        );
        // Reserved bits are not stored.
        m.pio.write_value(0xCF9, 1, 0xF9);
        assert!(!m.signals.take_reset());
        assert_eq!(m.pio.read_value(0xCF9, 1), 0x00);
        // A dword at 0xCF8 is CONFIG_ADDRESS, whatever its second byte holds.
        m.pio.write_value(0xCF8, 4, 0x8000_0600);
        assert!(!m.signals.take_reset());
        assert_eq!(m.root.config_address(), 0x8000_0600);
        assert_eq!(m.root.reset_control(), 0x00);
        // And a dword read returns the latch, not the reset register.
        m.pio.write_value(0xCF9, 1, 0x02);
        assert_eq!(m.pio.read_value(0xCF8, 4), 0x8000_0600);
    }

    /// A function with a BAR and a snapshot, to check the port path end to end.
    struct Nic {
        config: ConfigSpace,
    }

    impl PciFunction for Nic {
        fn name(&self) -> &str {
            "nic"
        }
        fn config(&self) -> &ConfigSpace {
            &self.config
        }
        fn config_mut(&mut self) -> &mut ConfigSpace {
            &mut self.config
        }
        fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8 ^ 0x5A);
        }
    }

    fn nic() -> Nic {
        let mut config = ConfigSpace::new(PciIds {
            vendor_id: 0x10EC,
            device_id: 0x8139,
            revision_id: 0x20,
            class_code: 0x02_00_00,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        config.add_bar(0, BarKind::Io, 0x100).unwrap();
        config.set_interrupt_pin(1).unwrap();
        Nic { config }
    }

    #[test]
    fn bios_style_bar_setup_through_the_ports() {
        let m = machine();
        let at = Bdf::new(0, 3, 0).unwrap();
        m.root.add(at, nic()).unwrap();
        m.select(at, 0x10);
        m.pio.write_value(0xCFC, 4, 0xFFFF_FFFF);
        assert_eq!(m.pio.read_value(0xCFC, 4), 0xFFFF_FF01);
        m.pio.write_value(0xCFC, 4, 0xC100);
        m.select(at, 0x04);
        m.pio.write_value(0xCFC, 2, 0x0001);
        assert_eq!(m.pio.read_value(0xC105, 1), 0x5F);
    }

    #[test]
    fn snapshot_keeps_the_latch_and_the_reset_register() {
        let m = machine();
        m.select(PIIX3_BDF, 0x60);
        m.pio.write_value(0xCFC, 1, 0x0A);
        m.pio.write_value(0xCF9, 1, 0x02);
        let mut fresh = machine();
        check_round_trip(&m.root, &mut fresh.root).unwrap();
        // The restored latch still points at PIIX3 0x60: the next data access continues.
        m.pio.write_value(0xCFD, 1, 0x0B);
        fresh.pio.write_value(0xCFD, 1, 0x0B);
        assert_eq!(fresh.pio.read_value(0xCFC, 2), 0x0B0A);
        assert_eq!(fresh.pio.read_value(0xCF9, 1), 0x02);
        assert_eq!(snapshot::save(&fresh.root), snapshot::save(&m.root));
        assert_eq!(fresh.root.pirq_router().route(1), Some(11));
        fresh.root.pirq_router().set_pirq_level(1, true);
        assert!(fresh.isa[11].level());
    }

    #[test]
    fn random_port_accesses_do_not_panic() {
        let m = machine();
        m.root.add(Bdf::new(0, 3, 0).unwrap(), nic()).unwrap();
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..20_000 {
            let r = next();
            let port = 0xCF6 + (r % 12);
            let size = [1usize, 2, 4, 8][((r >> 8) % 4) as usize];
            if r & 0x1000 != 0 {
                // Mostly a plausible address so the data port reaches real functions.
                let v = if r & 0x2000 != 0 {
                    0x8000_0000 | ((r >> 20) & 0x1F00) | ((r >> 40) & 0xFC)
                } else {
                    next()
                };
                m.pio.write_value(port, size, v);
            } else {
                m.pio.read_value(port, size);
            }
        }
        m.signals.take_reset();
    }
}
