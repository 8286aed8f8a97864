//! The i440FX (82441FX PMC) host bridge at 00:00.0.
//!
//! Its configuration space holds the memory controller's registers. The ones a PC guest
//! programs are the Programmable Attribute Map (PAM0-PAM6, 0x59-0x5F), which decides whether
//! reads and writes to each segment of 0xC0000-0xFFFFF reach DRAM or the PCI bus (ROM), and
//! the SMRAM control register (0x72). The bridge only stores them and tells an optional
//! [`HostBridgeListener`]; acting on them is the board's memory map's business.
//!
//! Register values follow the 82441FX datasheet; the DRAM configuration registers are stored
//! as written and have no effect.

use std::sync::Arc;

use super::config_space::{self, ConfigSpace, PciIds, command, status};
use super::{Bdf, PciFunction};

/// The host bridge is device 0, function 0.
pub const I440FX_BDF: Bdf = Bdf::from_devfn(0, 0x00);

/// PAM0; PAM1-PAM6 follow.
pub const PAM0: usize = 0x59;
pub const NUM_PAM_REGISTERS: usize = 7;
/// System management RAM control.
pub const SMRAM: usize = 0x72;

/// SMRAM control register bits.
pub mod smram {
    /// SMM space visible outside SMM (for the BIOS to fill it).
    pub const D_OPEN: u8 = 1 << 6;
    /// SMM space closed to data accesses in SMM.
    pub const D_CLS: u8 = 1 << 5;
    /// Locks D_OPEN to 0 and itself to 1 until reset.
    pub const D_LCK: u8 = 1 << 4;
    /// Compatible SMRAM (0xA0000-0xBFFFF) enabled.
    pub const G_SMRAME: u8 = 1 << 3;
    /// Hardwired 010: compatible SMRAM is at 0xA0000.
    pub const C_BASE_SEG: u8 = 0b010;
}

/// Where accesses to a PAM segment go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PamAttr {
    /// Reads come from DRAM (else from the PCI bus: the BIOS ROM or an option ROM).
    pub read_dram: bool,
    /// Writes go to DRAM (else to the PCI bus).
    pub write_dram: bool,
}

impl PamAttr {
    fn from_nibble(n: u8) -> PamAttr {
        PamAttr {
            read_dram: n & 0x1 != 0,
            write_dram: n & 0x2 != 0,
        }
    }
}

/// One segment of the legacy BIOS area and its attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PamRegion {
    pub start: u64,
    pub size: u64,
    pub attr: PamAttr,
}

/// The 0xF0000 BIOS segment plus twelve 16 KiB segments from 0xC0000.
pub const NUM_PAM_REGIONS: usize = 13;

/// Told after the guest changes PAM or SMRAM control (and after a reset or restore), with the
/// new register values. Called with the root's state and the bridge locked: do not call back
/// into PCI.
pub trait HostBridgeListener: Send + Sync {
    fn memory_control_changed(&self, pam: [u8; NUM_PAM_REGISTERS], smram: u8);
}

pub struct I440fx {
    config: ConfigSpace,
    listener: Option<Arc<dyn HostBridgeListener>>,
}

impl Default for I440fx {
    fn default() -> Self {
        I440fx::new()
    }
}

impl I440fx {
    pub fn new() -> I440fx {
        let mut config = ConfigSpace::new(PciIds {
            vendor_id: 0x8086,
            device_id: 0x1237,
            revision_id: 0x02,
            class_code: 0x06_00_00,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        // Memory access and bus mastering are always on in the PMC; only parity and SERR#
        // reporting are programmable.
        config.set_u16(
            config_space::COMMAND,
            command::MEMORY_SPACE | command::BUS_MASTER,
        );
        config.set_write_mask(
            config_space::COMMAND,
            &(command::PARITY_ERROR_RESPONSE | command::SERR_ENABLE).to_le_bytes(),
        );
        config.set_status_bits(status::FAST_BACK_TO_BACK | status::DEVSEL_MEDIUM);
        config.set_write_mask(config_space::CACHE_LINE_SIZE, &[0x00]);
        // Master latency timer: bits 2:0 are reserved.
        config.set_write_mask(config_space::LATENCY_TIMER, &[0xF8]);
        config.set_write_mask(config_space::INTERRUPT_LINE, &[0x00]);
        // PMC configuration, DRAM control and timing (0x50-0x58), DRAM row boundaries and
        // fixed DRAM hole (0x60-0x68), latency timers (0x70-0x71), error command/status
        // (0x90-0x93): stored.
        config.set_write_mask(0x50, &[0xFF; 9]);
        config.set_write_mask(0x60, &[0xFF; 9]);
        config.set_write_mask(0x70, &[0xFF; 2]);
        config.set_write_mask(0x90, &[0xFF; 4]);
        // PAM0's low nibble is reserved; in each nibble only RE (bit 0) and WE (bit 1) exist,
        // the cache-enable bit being reserved on the 82441FX (the MTRRs set cacheability).
        config.set_write_mask(PAM0, &[0x30]);
        config.set_write_mask(PAM0 + 1, &[0x33; NUM_PAM_REGISTERS - 1]);
        config.set_write_mask(
            SMRAM,
            &[smram::D_OPEN | smram::D_CLS | smram::D_LCK | smram::G_SMRAME],
        );
        config.set_u8(SMRAM, smram::C_BASE_SEG);
        config.capture_power_on();
        I440fx {
            config,
            listener: None,
        }
    }

    /// A bridge that reports PAM/SMRAM changes to `listener`.
    pub fn with_listener(listener: Arc<dyn HostBridgeListener>) -> I440fx {
        let mut bridge = I440fx::new();
        bridge.listener = Some(listener);
        bridge
    }

    pub fn pam(&self) -> [u8; NUM_PAM_REGISTERS] {
        std::array::from_fn(|i| self.config.get_u8(PAM0 + i))
    }

    pub fn smram(&self) -> u8 {
        self.config.get_u8(SMRAM)
    }

    /// The PAM segments, 0xF0000-0xFFFFF first, then 0xC0000-0xEFFFF in 16 KiB steps.
    pub fn pam_regions(&self) -> [PamRegion; NUM_PAM_REGIONS] {
        let pam = self.pam();
        std::array::from_fn(|i| {
            if i == 0 {
                PamRegion {
                    start: 0xF_0000,
                    size: 0x1_0000,
                    attr: PamAttr::from_nibble(pam[0] >> 4),
                }
            } else {
                // Segment i is in PAM((i + 1) / 2): odd segments in the low nibble.
                let reg = pam[i.div_ceil(2)];
                let nibble = if i % 2 == 1 { reg & 0xF } else { reg >> 4 };
                PamRegion {
                    start: 0xC_0000 + 0x4000 * (i as u64 - 1),
                    size: 0x4000,
                    attr: PamAttr::from_nibble(nibble),
                }
            }
        })
    }

    fn memory_control(&self) -> ([u8; NUM_PAM_REGISTERS], u8) {
        (self.pam(), self.smram())
    }

    fn announce(&self) {
        if let Some(l) = &self.listener {
            let (pam, smram) = self.memory_control();
            l.memory_control_changed(pam, smram);
        }
    }
}

impl PciFunction for I440fx {
    fn name(&self) -> &str {
        "i440fx"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, reg: usize, data: &[u8]) {
        let before = self.memory_control();
        self.config.write(reg, data);
        let old = before.1;
        let mut new = self.smram();
        if old & smram::D_LCK != 0 {
            // Locked: D_LCK and D_OPEN are read-only (1 and 0) until the next reset.
            new = (new & !(smram::D_OPEN | smram::D_LCK)) | smram::D_LCK;
        } else if new & smram::D_LCK != 0 {
            // Setting D_LCK closes SMRAM in the same write.
            new &= !smram::D_OPEN;
        }
        self.config.set_u8(SMRAM, new);
        if self.memory_control() != before {
            self.announce();
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        self.announce();
    }

    fn config_restored(&mut self) {
        self.announce();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<([u8; 7], u8)>>);

    impl HostBridgeListener for Recorder {
        fn memory_control_changed(&self, pam: [u8; 7], smram: u8) {
            self.0.lock().unwrap().push((pam, smram));
        }
    }

    #[test]
    fn identity_and_defaults() {
        let b = I440fx::new();
        let c = b.config();
        assert_eq!(c.get_u32(0x00), 0x1237_8086);
        assert_eq!(c.get_u32(0x08), 0x0600_0002);
        assert_eq!(c.get_u8(0x0E), 0x00);
        assert_eq!(c.command(), 0x0006);
        assert_eq!(c.status(), 0x0280);
        assert_eq!(b.pam(), [0; 7]);
        assert_eq!(b.smram(), 0x02);
        assert!(b.pam_regions().iter().all(|r| r.attr
            == PamAttr {
                read_dram: false,
                write_dram: false
            }));
    }

    #[test]
    fn command_decode_bits_are_fixed() {
        let mut b = I440fx::new();
        b.write_config(0x04, &[0x00, 0x00]);
        assert_eq!(b.config().command(), 0x0006);
        b.write_config(0x04, &[0xFF, 0xFF]);
        assert_eq!(b.config().command(), 0x0146);
    }

    #[test]
    fn pam_write_masks_and_regions() {
        let mut b = I440fx::new();
        // What SeaBIOS does to shadow itself: make 0xF0000 and the option ROM area writable.
        b.write_config(PAM0, &[0xFF; 7]);
        assert_eq!(b.pam(), [0x30, 0x33, 0x33, 0x33, 0x33, 0x33, 0x33]);
        b.write_config(PAM0, &[0x10, 0x01, 0x20]);
        let r = b.pam_regions();
        assert_eq!(
            (r[0].start, r[0].size, r[0].attr),
            (
                0xF_0000,
                0x1_0000,
                PamAttr {
                    read_dram: true,
                    write_dram: false
                }
            )
        );
        assert_eq!(
            (r[1].start, r[1].attr),
            (
                0xC_0000,
                PamAttr {
                    read_dram: true,
                    write_dram: false
                }
            )
        );
        assert_eq!(
            (r[2].start, r[2].attr),
            (
                0xC_4000,
                PamAttr {
                    read_dram: false,
                    write_dram: false
                }
            )
        );
        assert_eq!((r[3].start, r[3].attr.read_dram), (0xC_8000, false));
        assert_eq!(
            (r[4].start, r[4].attr),
            (
                0xC_C000,
                PamAttr {
                    read_dram: false,
                    write_dram: true
                }
            )
        );
        assert_eq!((r[12].start, r[12].size), (0xE_C000, 0x4000));
        assert!(
            r[12].attr.read_dram && r[12].attr.write_dram,
            "PAM6 untouched: 0x33"
        );
    }

    #[test]
    fn smram_lock() {
        let mut b = I440fx::new();
        b.write_config(SMRAM, &[0xFF]);
        assert_eq!(
            b.smram(),
            smram::D_CLS | smram::D_LCK | smram::G_SMRAME | smram::C_BASE_SEG,
            "reserved bit 7 and C_BASE_SEG fixed; D_LCK clears D_OPEN"
        );
        b.write_config(SMRAM, &[smram::D_OPEN | smram::C_BASE_SEG]);
        assert_eq!(
            b.smram(),
            smram::D_LCK | smram::C_BASE_SEG,
            "locked: D_OPEN stays 0, D_LCK stays 1, the others still writable"
        );
        b.reset();
        assert_eq!(b.smram(), smram::C_BASE_SEG);
        b.write_config(SMRAM, &[smram::D_OPEN | smram::G_SMRAME]);
        assert_eq!(
            b.smram(),
            smram::D_OPEN | smram::G_SMRAME | smram::C_BASE_SEG
        );
    }

    #[test]
    fn listener_hears_changes() {
        let rec = Arc::new(Recorder::default());
        let mut b = I440fx::with_listener(rec.clone());
        b.write_config(0x50, &[0x12]);
        b.write_config(PAM0 + 1, &[0x11]);
        b.write_config(PAM0 + 1, &[0x11]);
        b.write_config(SMRAM - 2, &0x000A_0000u32.to_le_bytes());
        let calls = rec.0.lock().unwrap().clone();
        assert_eq!(calls.len(), 2, "only writes that change PAM or SMRAM");
        assert_eq!(calls[0].0[1], 0x11);
        assert_eq!(calls[1].1, 0x0A);
        assert_eq!(b.config().get_u8(0x50), 0x12, "other registers are stored");
    }
}
