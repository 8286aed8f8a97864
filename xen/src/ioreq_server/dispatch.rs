//! Emulating one request: PIO and COPY onto the buses, PCI_CONFIG into the PCI root,
//! TIMEOFFSET to the board, INVALIDATE to the mapcache; string I/O (`data_is_ptr`) through
//! guest memory with `count` and `df` (docs/XEN-DM-SPEC.md 1.6).
//!
//! Malformed requests are completed as hardware would answer a cycle nobody claims: reads
//! return all ones, writes are dropped, guest memory is left alone. Each kind is logged at
//! `warn` the first time and at `debug` afterwards.

use log::{debug, info, warn};

use devices::pci::Bdf;

use super::DeviceModel;
use crate::abi::{
    IOREQ_TYPE_COPY, IOREQ_TYPE_INVALIDATE, IOREQ_TYPE_PCI_CONFIG, IOREQ_TYPE_PIO,
    IOREQ_TYPE_TIMEOFFSET, IoReq,
};

/// Xen clips repetitions to 4096 (`hvmemul_linear_to_phys`); more is a malformed request.
pub const MAX_REPS: u32 = 4096;

/// The kinds of bad input that are logged once each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Oddity {
    BadSize,
    BadCount,
    UnknownType,
    UnmappedBuffer,
    PortOutOfRange,
    BadPciConfig,
    NoPciRoot,
    RingOutOfOrder,
    RingTornPair,
    BufferedRead,
    StateChanged,
    DmOpFailed,
}

/// Which oddities were already reported at `warn`.
#[derive(Debug, Default)]
pub struct Oddities {
    seen: u32,
    counts: [u64; 12],
}

impl Oddities {
    pub fn report(&mut self, kind: Oddity, detail: impl FnOnce() -> String) {
        let bit = 1u32 << (kind as u8);
        if let Some(c) = self.counts.get_mut(kind as usize) {
            *c += 1;
        }
        if self.seen & bit == 0 {
            self.seen |= bit;
            warn!(
                "{kind:?}: {} (further ones logged at debug level)",
                detail()
            );
        } else {
            debug!("{kind:?}: {}", detail());
        }
    }

    /// How many times `kind` was seen.
    pub fn count(&self, kind: Oddity) -> u64 {
        self.counts.get(kind as usize).copied().unwrap_or(0)
    }
}

/// The answer to a refused request: all ones for a read of a value, the request's own `data`
/// otherwise (writes, and reads into a guest buffer, which is left untouched).
fn refused(req: &IoReq) -> u64 {
    if req.is_read() && !req.data_is_ptr() {
        u64::MAX
    } else {
        req.data
    }
}

fn mask(size: u32) -> u64 {
    if size >= 8 {
        u64::MAX
    } else {
        (1u64 << (8 * size)) - 1
    }
}

/// Item `i` of a string, `size` bytes each, stepping down when `df`. Wrapping, as Xen and QEMU
/// compute it.
pub fn step(base: u64, i: u32, size: u32, df: bool) -> u64 {
    let off = u64::from(i).wrapping_mul(u64::from(size));
    if df {
        base.wrapping_sub(off)
    } else {
        base.wrapping_add(off)
    }
}

/// Emulate `req`; returns the value for the slot's `data` field.
pub fn emulate(dm: &mut DeviceModel, req: &IoReq, odd: &mut Oddities) -> u64 {
    match req.ty {
        IOREQ_TYPE_PIO => pio(dm, req, odd),
        IOREQ_TYPE_COPY => copy(dm, req, odd),
        IOREQ_TYPE_PCI_CONFIG => pci_config(dm, req, odd),
        IOREQ_TYPE_TIMEOFFSET => {
            let delta = req.data as i64;
            info!("guest moved its RTC by {delta} s");
            dm.time_offset_changed(delta);
            req.data
        }
        IOREQ_TYPE_INVALIDATE => {
            debug!("INVALIDATE: dropping every guest mapping");
            dm.memory.invalidate();
            req.data
        }
        other => {
            odd.report(Oddity::UnknownType, || {
                format!(
                    "ioreq type {other} at {:#x} answered as unclaimed",
                    req.addr
                )
            });
            refused(req)
        }
    }
}

/// Rep count of a string request, if sane.
fn reps(req: &IoReq, odd: &mut Oddities) -> Option<u32> {
    if (1..=MAX_REPS).contains(&req.count) {
        Some(req.count)
    } else {
        odd.report(Oddity::BadCount, || {
            format!(
                "type {} at {:#x}: count {} outside 1..={MAX_REPS}; answered as unclaimed",
                req.ty, req.addr, req.count
            )
        });
        None
    }
}

fn bad_size(req: &IoReq, odd: &mut Oddities) -> u64 {
    odd.report(Oddity::BadSize, || {
        format!(
            "type {} at {:#x}: size {} answered as unclaimed",
            req.ty, req.addr, req.size
        )
    });
    refused(req)
}

/// Copy one item of a string from guest memory; unmapped memory reads as ones.
fn load(dm: &DeviceModel, gpa: u64, size: usize, odd: &mut Oddities) -> u64 {
    let mut b = [0u8; 8];
    if let Err(e) = dm.memory.read(gpa, &mut b[..size]) {
        odd.report(Oddity::UnmappedBuffer, || {
            format!("string source: {e}; reads as ones")
        });
        return u64::MAX;
    }
    u64::from_le_bytes(b)
}

/// Store one item of a string into guest memory; unmapped memory drops it.
fn store(dm: &DeviceModel, gpa: u64, size: usize, value: u64, odd: &mut Oddities) {
    if let Err(e) = dm.memory.write(gpa, &value.to_le_bytes()[..size]) {
        odd.report(Oddity::UnmappedBuffer, || {
            format!("string target: {e}; dropped")
        });
    }
}

fn pio(dm: &mut DeviceModel, req: &IoReq, odd: &mut Oddities) -> u64 {
    if !matches!(req.size, 1 | 2 | 4) {
        return bad_size(req, odd);
    }
    if req.addr > 0xFFFF {
        odd.report(Oddity::PortOutOfRange, || {
            format!("port {:#x} beyond the 64 KiB I/O space", req.addr)
        });
        return refused(req);
    }
    let size = req.size as usize;
    let port = req.addr;
    if !req.data_is_ptr() {
        // A value access is one access whatever `count` says (QEMU ignores it too).
        return if req.is_read() {
            dm.pio.read_value(port, size)
        } else {
            dm.pio.write_value(port, size, req.data & mask(req.size));
            req.data
        };
    }
    let Some(count) = reps(req, odd) else {
        return refused(req);
    };
    for i in 0..count {
        let gpa = step(req.data, i, req.size, req.df());
        if req.is_read() {
            let v = dm.pio.read_value(port, size);
            store(dm, gpa, size, v, odd);
        } else {
            let v = load(dm, gpa, size, odd);
            dm.pio.write_value(port, size, v);
        }
    }
    req.data
}

fn copy(dm: &mut DeviceModel, req: &IoReq, odd: &mut Oddities) -> u64 {
    if !matches!(req.size, 1 | 2 | 4 | 8) {
        return bad_size(req, odd);
    }
    let Some(count) = reps(req, odd) else {
        return refused(req);
    };
    let size = req.size as usize;
    let df = req.df();
    let mut data = req.data;
    for i in 0..count {
        let addr = step(req.addr, i, req.size, df);
        match (req.data_is_ptr(), req.is_read()) {
            (false, true) => data = dm.mmio.read_value(addr, size),
            (false, false) => dm.mmio.write_value(addr, size, req.data & mask(req.size)),
            (true, true) => {
                let v = dm.mmio.read_value(addr, size);
                store(dm, step(req.data, i, req.size, df), size, v, odd);
            }
            (true, false) => {
                let v = load(dm, step(req.data, i, req.size, df), size, odd);
                dm.mmio.write_value(addr, size, v);
            }
        }
    }
    data
}

fn pci_config(dm: &mut DeviceModel, req: &IoReq, odd: &mut Oddities) -> u64 {
    if !matches!(req.size, 1 | 2 | 4) {
        return bad_size(req, odd);
    }
    if req.count != 1 || req.data_is_ptr() {
        odd.report(Oddity::BadPciConfig, || {
            format!(
                "PCI_CONFIG {:#x} with count {} data_is_ptr {}; answered as unclaimed",
                req.addr,
                req.count,
                req.data_is_ptr()
            )
        });
        return refused(req);
    }
    let Some(root) = dm.pci.as_ref() else {
        odd.report(Oddity::NoPciRoot, || {
            format!("PCI_CONFIG {:#x} but the board has no PCI root", req.addr)
        });
        return refused(req);
    };
    let sbdf = req.pci_sbdf();
    let segment = sbdf >> 16;
    let bdf = Bdf::from_devfn((sbdf >> 8) as u8, sbdf as u8);
    // CF8 extended decoding can add register bits 11:8; the root answers past 0xFF with ones.
    let reg = u16::try_from(req.pci_reg()).ok().filter(|_| segment == 0);
    let Some(reg) = reg else {
        odd.report(Oddity::BadPciConfig, || {
            format!(
                "PCI_CONFIG to segment {segment} register {:#x}",
                req.pci_reg()
            )
        });
        return refused(req);
    };
    if req.is_read() {
        u64::from(root.config_read(bdf, reg, req.size as u8))
    } else {
        root.config_write(bdf, reg, req.size as u8, req.data as u32);
        req.data
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_wrap_in_both_directions() {
        assert_eq!(step(0x1000, 3, 4, false), 0x100c);
        assert_eq!(step(0x1000, 3, 4, true), 0x0ff4);
        assert_eq!(step(2, 1, 4, true), u64::MAX - 1);
        assert_eq!(step(u64::MAX, 1, 1, false), 0);
        assert_eq!(mask(1), 0xff);
        assert_eq!(mask(4), 0xffff_ffff);
        assert_eq!(mask(8), u64::MAX);
    }

    #[test]
    fn oddities_count_every_report() {
        let mut o = Oddities::default();
        o.report(Oddity::BadSize, || "x".into());
        o.report(Oddity::BadSize, || "y".into());
        assert_eq!(o.count(Oddity::BadSize), 2);
        assert_eq!(o.count(Oddity::DmOpFailed), 0);
    }
}
