//! Segmentation: logical → linear translation with limit and type checks, and loading segment
//! registers (real-mode style, or from a GDT/LDT descriptor with the protected-mode checks).

use super::Access;
use crate::Cpu;
use crate::bus::CpuBus;
use crate::exception::{Exit, Fault};
use crate::state::{Segment, attr, flag, sreg};

/// A raw 8-byte descriptor split into its fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Descriptor {
    pub raw: u64,
}

impl Descriptor {
    pub fn base(&self) -> u64 {
        let r = self.raw;
        ((r >> 16) & 0xFF_FFFF) | (((r >> 56) & 0xFF) << 24)
    }
    /// Byte-granular limit.
    pub fn limit(&self) -> u32 {
        let r = self.raw;
        let l = ((r & 0xFFFF) | (((r >> 48) & 0xF) << 16)) as u32;
        if self.attr() & attr::G != 0 {
            (l << 12) | 0xFFF
        } else {
            l
        }
    }
    /// Attributes in [`Segment::attr`] layout.
    pub fn attr(&self) -> u16 {
        let r = self.raw;
        (((r >> 40) & 0xFF) | (((r >> 52) & 0xF) << 12)) as u16
    }
    pub fn present(&self) -> bool {
        self.attr() & attr::P != 0
    }
    pub fn dpl(&self) -> u8 {
        ((self.attr() >> attr::DPL_SHIFT) & 3) as u8
    }
    /// Code or data (S = 1)?
    pub fn is_seg(&self) -> bool {
        self.attr() & attr::S != 0
    }
    pub fn is_code(&self) -> bool {
        self.is_seg() && self.attr() & attr::CODE != 0
    }
    /// System descriptor type (S = 0), 0-15.
    pub fn sys_type(&self) -> u8 {
        (self.attr() & 0xF) as u8
    }
    pub fn to_segment(&self, selector: u16) -> Segment {
        Segment {
            selector,
            base: self.base(),
            limit: self.limit(),
            attr: self.attr(),
        }
    }
}

impl Cpu {
    /// Logical → linear for a data access of `size` bytes at `seg:off`, with limit and (in
    /// protected mode) type checks.
    #[inline]
    pub(crate) fn seg_lin(
        &self,
        seg: usize,
        off: u64,
        size: u8,
        acc: Access,
    ) -> Result<u64, Fault> {
        let s = &self.segs[seg];
        // Present, writable, expand-up data (every flat segment): outside 64-bit mode every
        // type check passes, only the limit is left.
        if s.attr & (attr::P | attr::CODE | attr::DC | attr::RW) == attr::P | attr::RW
            && self.efer & crate::state::efer::LMA == 0
            && off.wrapping_add(size as u64 - 1) <= s.limit as u64
            && off <= s.limit as u64
        {
            return Ok(s.base.wrapping_add(off) & 0xFFFF_FFFF);
        }
        let fault = || {
            if seg == sreg::SS {
                Fault::ss(0)
            } else {
                Fault::gp(0)
            }
        };
        if self.long64() {
            let base = if seg >= sreg::FS { s.base } else { 0 };
            let lin = base.wrapping_add(off);
            // Canonical check (48-bit linear addresses).
            let top = (lin as i64) >> 47;
            if top != 0 && top != -1 {
                return Err(fault());
            }
            return Ok(lin);
        }
        if self.protected() && self.rflags & flag::VM == 0 {
            if s.unusable() {
                return Err(fault());
            }
            let code = s.attr & attr::CODE != 0;
            let rw = s.attr & attr::RW != 0;
            match acc {
                Access::Write if code || !rw => return Err(fault()),
                Access::Read if code && !rw => return Err(fault()),
                _ => {}
            }
        }
        let end = off + size as u64 - 1;
        let expand_down = s.attr & (attr::CODE | attr::DC) == attr::DC && self.protected();
        if expand_down {
            let upper = if s.big() { 0xFFFF_FFFF } else { 0xFFFF };
            if off <= s.limit as u64 || end > upper {
                return Err(fault());
            }
        } else if end > s.limit as u64 {
            return Err(fault());
        }
        Ok(s.base.wrapping_add(off) & 0xFFFF_FFFF)
    }

    /// Fetch the descriptor a selector names (GDT or LDT). #GP(selector) if it lies outside
    /// the table.
    pub(crate) fn fetch_descriptor(
        &mut self,
        bus: &mut dyn CpuBus,
        selector: u16,
    ) -> Result<(Descriptor, u64), Exit> {
        let index = (selector & !7) as u64;
        let (base, limit) = if selector & 4 != 0 {
            if self.ldtr.unusable() || self.ldtr.selector & !3 == 0 {
                return Err(Fault::gp((selector & !3) as u32).into());
            }
            (self.ldtr.base, self.ldtr.limit as u64)
        } else {
            (self.gdtr.base, self.gdtr.limit as u64)
        };
        if index + 7 > limit {
            return Err(Fault::gp((selector & !3) as u32).into());
        }
        let addr = base.wrapping_add(index);
        let raw = self.read_sys(bus, addr, 8)?;
        Ok((Descriptor { raw }, addr))
    }

    /// Set the accessed bit of a descriptor in memory if it is clear.
    pub(crate) fn mark_accessed(
        &mut self,
        bus: &mut dyn CpuBus,
        d: &mut Descriptor,
        addr: u64,
    ) -> Result<(), Exit> {
        if d.raw & (1 << 40) == 0 {
            d.raw |= 1 << 40;
            self.write_sys(bus, addr + 5, 1, (d.raw >> 40) & 0xFF)?;
        }
        Ok(())
    }

    /// MOV/POP/LxS to a data segment register or SS (not CS: far transfers load CS).
    pub fn load_seg(
        &mut self,
        bus: &mut dyn CpuBus,
        seg: usize,
        selector: u16,
    ) -> Result<(), Exit> {
        if !self.protected() {
            // Real mode: only selector and base change; the limit and attributes stay, which is
            // what lets "unreal mode" keep 4 GiB limits.
            let s = &mut self.segs[seg];
            s.selector = selector;
            s.base = (selector as u64) << 4;
            return Ok(());
        }
        if self.rflags & flag::VM != 0 {
            let dpl3 = 3 << attr::DPL_SHIFT;
            self.segs[seg] = Segment {
                selector,
                base: (selector as u64) << 4,
                limit: 0xFFFF,
                attr: attr::REAL_DATA | dpl3 | if seg == sreg::CS { attr::CODE } else { 0 },
            };
            return Ok(());
        }
        let rpl = (selector & 3) as u8;
        let err = (selector & !3) as u32;
        if selector & !3 == 0 {
            if seg == sreg::SS && !(self.long64() && self.cpl != 3) {
                return Err(Fault::gp(0).into());
            }
            // A null selector makes the register unusable; using it faults later.
            self.segs[seg] = Segment {
                selector,
                base: 0,
                limit: 0,
                attr: 0,
            };
            return Ok(());
        }
        let (mut d, addr) = self.fetch_descriptor(bus, selector)?;
        if seg == sreg::SS {
            let writable_data = d.is_seg() && !d.is_code() && d.attr() & attr::RW != 0;
            if rpl != self.cpl || d.dpl() != self.cpl || !writable_data {
                return Err(Fault::gp(err).into());
            }
            if !d.present() {
                return Err(Fault::ss(err).into());
            }
        } else {
            let readable = d.is_seg() && (!d.is_code() || d.attr() & attr::RW != 0);
            if !readable {
                return Err(Fault::gp(err).into());
            }
            let conforming = d.is_code() && d.attr() & attr::DC != 0;
            if !conforming && d.dpl() < self.cpl.max(rpl) {
                return Err(Fault::gp(err).into());
            }
            if !d.present() {
                return Err(Fault::np(err).into());
            }
        }
        self.mark_accessed(bus, &mut d, addr)?;
        self.segs[seg] = d.to_segment(selector);
        Ok(())
    }
}
