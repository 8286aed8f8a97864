//! PCI: configuration spaces, the i440FX root with its host bridge and PIIX3 ISA bridge,
//! configuration mechanism #1 and INTx routing.
//!
//! The pieces and how a board wires them:
//!
//! ```text
//!   guest ports 0xCF8-0xCFF ──► PciConfigIo ─┐
//!   Xen PCI_CONFIG ioreq ───────────────────►├─► PciRoot ──► functions (config space, BARs)
//!                                            │      │  BAR (re)mappings ──► port / MMIO Bus
//!   device INTx line (root.intx_line) ─────────────► swizzle ──► PirqRouter (PIIX3 0x60-0x63)
//!                                                   │               └──► ISA IRQ lines (standalone)
//!                                                   └──► IntxSink (Xen: set_pci_intx_level)
//! ```
//!
//! A device implements [`PciFunction`]: it owns a [`config_space::ConfigSpace`], may hook
//! config reads and writes, and serves its BAR regions. It never touches a bus: after each
//! config write the root compares the BARs the function decodes with what it has mapped and
//! inserts, moves or removes the ranges itself (crosvm's "config write result" idea, computed
//! by the root so a device cannot forget to report one).

pub mod config_io;
pub mod config_space;
pub mod i440fx;
pub mod piix3;
pub mod root;
pub mod xen_platform;

use std::fmt;

use thiserror::Error;

use crate::bus::{AccessSizes, BusError};
use crate::snapshot::SnapshotError;

pub use config_io::PciConfigIo;
pub use config_space::{BarKind, BarRegion, ConfigError, ConfigSpace, PciIds};
pub use i440fx::I440fx;
pub use piix3::{Piix3, PirqRouteListener, PirqRouter};
pub use root::PciRoot;

/// A PCI address: bus, device (0-31), function (0-7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Bdf {
    bus: u8,
    devfn: u8,
}

impl Bdf {
    pub fn new(bus: u8, device: u8, function: u8) -> Result<Bdf, PciError> {
        if device > 31 || function > 7 {
            return Err(PciError::BadAddress {
                bus,
                device,
                function,
            });
        }
        Ok(Bdf {
            bus,
            devfn: device << 3 | function,
        })
    }

    /// From the `devfn` byte (device in bits 7:3, function in bits 2:0), as Xen and the PCI
    /// BIOS carry it; every value is valid.
    pub const fn from_devfn(bus: u8, devfn: u8) -> Bdf {
        Bdf { bus, devfn }
    }

    pub const fn bus(self) -> u8 {
        self.bus
    }

    pub const fn device(self) -> u8 {
        self.devfn >> 3
    }

    pub const fn function(self) -> u8 {
        self.devfn & 7
    }

    pub const fn devfn(self) -> u8 {
        self.devfn
    }
}

impl fmt::Display for Bdf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:02x}:{:02x}.{}",
            self.bus,
            self.device(),
            self.function()
        )
    }
}

/// An INTx pin.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IntxPin {
    A,
    B,
    C,
    D,
}

impl IntxPin {
    /// From the interrupt pin register (1 = INTA# ... 4 = INTD#; 0 = none).
    pub fn from_register(pin: u8) -> Option<IntxPin> {
        match pin {
            1 => Some(IntxPin::A),
            2 => Some(IntxPin::B),
            3 => Some(IntxPin::C),
            4 => Some(IntxPin::D),
            _ => None,
        }
    }

    /// 0 for INTA# to 3 for INTD#, the numbering Xen's `set_pci_intx_level` uses.
    pub fn index(self) -> u8 {
        self as u8
    }

    /// The PIRQ (0 = PIRQA#) this pin of `device` reaches on the i440FX/PIIX3 board: the
    /// rotation by slot that spreads INTA# of neighbouring slots over the four PIRQs. Xen's
    /// virtual PCI link routing uses the same formula.
    pub fn pirq(self, device: u8) -> u8 {
        (device.wrapping_add(self.index())) & 3
    }
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum PciError {
    #[error("no PCI function {device}.{function} on bus {bus}: device must be 0-31, function 0-7")]
    BadAddress { bus: u8, device: u8, function: u8 },
    #[error("PCI slot {0} is already taken")]
    SlotInUse(Bdf),
    #[error("PCI bus {0} does not exist (the root has no bridges)")]
    NoSuchBus(u8),
    #[error("the PIIX3 routes to 16 ISA IRQ lines, {0} were given")]
    IsaLineCount(usize),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Bus(#[from] BusError),
}

/// A PCI function as the root sees it.
///
/// Register offsets are within the 256-byte configuration space (the root drops the bytes of
/// an access that fall outside it). BAR indices are 0-5, and [`config_space::ROM_BAR`] for the
/// expansion ROM; BAR offsets are relative to the BAR's current base.
///
/// Locking: the root calls these with the function's mutex held and its own state locked; an
/// implementation may drive its interrupt line but must not call back into the root.
pub trait PciFunction: Send {
    /// A short name for logs and bus-range names ("piix3", "ide").
    fn name(&self) -> &str;

    fn config(&self) -> &ConfigSpace;
    fn config_mut(&mut self) -> &mut ConfigSpace;

    /// A guest config read. The default returns the stored bytes; override for registers whose
    /// value is computed on read. The root patches in the status register's interrupt bit and
    /// the multi-function bit of function 0 afterwards.
    fn read_config(&mut self, reg: usize, data: &mut [u8]) {
        self.config().read(reg, data);
    }

    /// A guest config write. The default applies it through the write masks; a device that acts
    /// on a register overrides this, calls `self.config_mut().write(reg, data)` and reacts (it
    /// can look at the old value first). BAR and command-register changes need no handling:
    /// the root remaps the BARs after every write.
    fn write_config(&mut self, reg: usize, data: &[u8]) {
        self.config_mut().write(reg, data);
    }

    /// A read of `data.len()` bytes at `offset` in BAR `bar`; `data` arrives filled with ones.
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        let _ = (bar, offset, data);
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        let _ = (bar, offset, data);
    }

    /// The access sizes BAR `bar` implements; the bus adapts the others (see [`AccessSizes`]).
    fn bar_access_sizes(&self, bar: usize) -> AccessSizes {
        let _ = bar;
        AccessSizes::ANY
    }

    /// A PCI reset (RST#). The default returns the configuration space to its power-on values;
    /// a device with more state resets it too and lowers its interrupt line.
    fn reset(&mut self) {
        self.config_mut().reset();
    }

    /// The root restored the configuration space from a snapshot, bypassing
    /// [`PciFunction::write_config`]: re-derive anything kept outside it (the PIIX3 pushes its
    /// PIRQ routes to the router, the host bridge re-announces PAM).
    fn config_restored(&mut self) {}

    /// Device state beyond the configuration space, which the root saves itself. Return a
    /// nested blob, typically `snapshot::save(&self.state)` of a type implementing
    /// [`crate::snapshot::Snapshot`], so each device versions its format independently; empty
    /// when the configuration space is all there is.
    fn save_device_state(&self) -> Vec<u8> {
        Vec::new()
    }

    /// Restore what [`PciFunction::save_device_state`] produced. Must validate before changing
    /// anything and must re-drive the interrupt line.
    fn restore_device_state(&mut self, blob: &[u8]) -> Result<(), SnapshotError> {
        if blob.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::Invalid(format!(
                "{} keeps no device state but the snapshot holds {} bytes",
                self.name(),
                blob.len()
            )))
        }
    }
}

/// Receives INTx levels per (device, pin) on bus 0, after the functions of a device sharing a
/// pin are ORed and INTx-disabled functions masked, before any swizzling: what Xen's
/// `set_pci_intx_level` DM op wants (Xen swizzles and routes with the PCI link routes it is
/// told through [`PirqRouteListener`]).
pub trait IntxSink: Send + Sync {
    fn set_intx_level(&self, device: u8, pin: IntxPin, asserted: bool);
}

/// Told whenever the root maps or unmaps a BAR on a bus (a Xen ioreq server must claim the
/// range from Xen). Called with the root's state locked: do not call back into the root.
pub trait BarMappingListener: Send + Sync {
    fn bar_mapped(&self, bdf: Bdf, region: BarRegion);
    fn bar_unmapped(&self, bdf: Bdf, region: BarRegion);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bdf_fields_and_display() {
        let b = Bdf::new(0, 31, 7).unwrap();
        assert_eq!(
            (b.bus(), b.device(), b.function(), b.devfn()),
            (0, 31, 7, 0xFF)
        );
        assert_eq!(b.to_string(), "00:1f.7");
        assert_eq!(Bdf::from_devfn(0, 0x09), Bdf::new(0, 1, 1).unwrap());
        assert!(Bdf::new(0, 32, 0).is_err());
        assert!(Bdf::new(0, 0, 8).is_err());
    }

    #[test]
    fn swizzle_rotates_by_slot() {
        assert_eq!(IntxPin::A.pirq(0), 0);
        assert_eq!(IntxPin::A.pirq(1), 1);
        assert_eq!(IntxPin::D.pirq(1), 0);
        assert_eq!(IntxPin::B.pirq(3), 0);
        assert_eq!(IntxPin::C.pirq(31), 1);
        assert_eq!(IntxPin::from_register(0), None);
        assert_eq!(IntxPin::from_register(4), Some(IntxPin::D));
        assert_eq!(IntxPin::from_register(5), None);
    }
}
