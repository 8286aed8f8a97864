//! Memory access: segmentation (logical → linear), paging (linear → physical) and the physical
//! access itself (RAM directly, everything else through the bus). Self-modifying code is caught
//! here: a store to a physical page that holds translated code invalidates its blocks.

pub mod paging;
pub mod segmentation;
pub mod tlb;

use crate::Cpu;
use crate::bus::CpuBus;
use crate::exception::{Exit, Fault, vector};
use crate::state::{attr, cr0, efer, flag};

/// Kind of memory access, for protection checks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
    Exec,
}

impl Cpu {
    /// Read `size` (1..=8) bytes of physical memory, little-endian. Never faults: unbacked
    /// addresses go to the bus.
    pub(crate) fn phys_read(&mut self, bus: &mut dyn CpuBus, pa: u64, size: u8) -> u64 {
        let mut buf = [0u8; 8];
        let n = size as usize;
        let first = self.mem.is_backed(pa);
        let last = self.mem.is_backed(pa + n as u64 - 1);
        if first && last {
            return self.mem.load(pa, size);
        } else if !first && !last {
            // Wholly outside RAM: one bus access of the natural size.
            bus.mmio_read(pa, &mut buf[..n]);
        } else {
            for (i, b) in buf[..n].iter_mut().enumerate() {
                let a = pa + i as u64;
                if self.mem.is_backed(a) {
                    self.mem.read_backed(a, std::slice::from_mut(b));
                } else {
                    bus.mmio_read(a, std::slice::from_mut(b));
                }
            }
        }
        u64::from_le_bytes(buf)
    }

    /// Write physical memory. ROM drops writes; pages with translated code lose their blocks.
    /// Callers split accesses at 4 KiB boundaries, so one page check covers the whole write.
    pub(crate) fn phys_write(&mut self, bus: &mut dyn CpuBus, pa: u64, size: u8, v: u64) {
        let bytes = v.to_le_bytes();
        let n = size as usize;
        let last = pa + n as u64 - 1;
        if (pa ^ last) >> 12 != 0 {
            // Only page-table updates of misaligned entries get here: split bytewise.
            for (i, b) in bytes[..n].iter().enumerate() {
                self.phys_write(bus, pa + i as u64, 1, *b as u64);
            }
            return;
        }
        if !self.mem.is_backed(pa) || !self.mem.is_backed(last) {
            bus.mmio_write(pa, &bytes[..n]);
            return;
        }
        if self.mem.is_rom(pa) {
            return;
        }
        let page = pa >> 12;
        if self.cache.is_code_page(page) {
            self.cache.invalidate_page(page);
            self.smc_hit = true;
            // The dispatch loop watches `block_break` alone.
            self.block_break = true;
        }
        self.mem.store(pa, size, v);
    }

    /// Is this access made at user privilege (for page protection)?
    #[inline]
    pub(crate) fn user_access(&self) -> bool {
        self.cpl == 3
    }

    /// Read `size` bytes at a linear address.
    pub(crate) fn read_lin(
        &mut self,
        bus: &mut dyn CpuBus,
        lin: u64,
        size: u8,
        acc: Access,
        user: bool,
    ) -> Result<u64, Fault> {
        let off = lin & 0xFFF;
        if off + size as u64 <= 0x1000 {
            let pa = self.translate(bus, lin, acc, user)?;
            Ok(self.phys_read(bus, pa, size))
        } else {
            // Crosses a page: translate both halves before touching either.
            let first = (0x1000 - off) as u8;
            let pa1 = self.translate(bus, lin, acc, user)?;
            let pa2 = self.translate(bus, lin + first as u64, acc, user)?;
            let lo = self.phys_read(bus, pa1, first);
            let hi = self.phys_read(bus, pa2, size - first);
            Ok(lo | (hi << (first as u32 * 8)))
        }
    }

    /// Write `size` bytes at a linear address; both pages of a split access are checked first.
    pub(crate) fn write_lin(
        &mut self,
        bus: &mut dyn CpuBus,
        lin: u64,
        size: u8,
        v: u64,
        user: bool,
    ) -> Result<(), Fault> {
        let off = lin & 0xFFF;
        if off + size as u64 <= 0x1000 {
            let pa = self.translate(bus, lin, Access::Write, user)?;
            self.phys_write(bus, pa, size, v);
        } else {
            let first = (0x1000 - off) as u8;
            let pa1 = self.translate(bus, lin, Access::Write, user)?;
            let pa2 = self.translate(bus, lin + first as u64, Access::Write, user)?;
            self.phys_write(bus, pa1, first, v);
            self.phys_write(bus, pa2, size - first, v >> (first as u32 * 8));
        }
        Ok(())
    }

    /// Read a data operand through segment `seg` at offset `off`.
    #[inline]
    pub fn read_mem(
        &mut self,
        bus: &mut dyn CpuBus,
        seg: usize,
        off: u64,
        size: u8,
    ) -> Result<u64, Exit> {
        let lin = self.seg_lin(seg, off, size, Access::Read)?;
        self.check_align(lin, size)?;
        let user = self.user_access();
        if (lin & 0xFFF) + size as u64 <= 0x1000 {
            if let Some(pa) = self.tlb.fast_read(lin, user) {
                return Ok(self.mem.load(pa, size));
            }
            // Armed data breakpoints keep the fast slots empty, so every access gets here.
            if self.tlb.no_fast() {
                self.watch(lin, size, false);
            }
            let pa = self.translate(bus, lin, Access::Read, user)?;
            if self.mem.is_ram(pa) {
                let ram = self.mem.host_base();
                self.tlb.fill_read(lin, user, pa, ram);
                return Ok(self.mem.load(pa, size));
            }
            return Ok(self.phys_read(bus, pa, size));
        }
        if self.tlb.no_fast() {
            self.watch(lin, size, false);
        }
        Ok(self.read_lin(bus, lin, size, Access::Read, user)?)
    }

    /// Read the destination of a read-modify-write instruction. The read is made with write
    /// intent, as the hardware does: a read-only (e.g. code) segment is #GP before anything is
    /// read, and a #PF on it reports W=1.
    pub(crate) fn read_mem_rmw(
        &mut self,
        bus: &mut dyn CpuBus,
        seg: usize,
        off: u64,
        size: u8,
    ) -> Result<u64, Exit> {
        let lin = self.seg_lin(seg, off, size, Access::Write)?;
        self.check_align(lin, size)?;
        let user = self.user_access();
        if (lin & 0xFFF) + size as u64 <= 0x1000
            && let Some(pa) = self.tlb.fast_write(lin, user)
        {
            return Ok(self.mem.load(pa, size));
        }
        if self.tlb.no_fast() {
            self.watch(lin, size, false);
        }
        Ok(self.read_lin(bus, lin, size, Access::Write, user)?)
    }

    /// #AC(0) for a misaligned data access when CR0.AM, EFLAGS.AC and CPL 3 are all set. The
    /// inlined test is one rarely-taken branch on EFLAGS.AC. It comes after the segment checks
    /// (a misaligned write through CS is #GP) and before paging.
    #[inline(always)]
    pub(crate) fn check_align(&self, lin: u64, size: u8) -> Result<(), Fault> {
        if self.rflags & flag::AC != 0 && size > 1 {
            return self.check_align_slow(lin, size);
        }
        Ok(())
    }

    /// Is alignment checking in force (CR0.AM, EFLAGS.AC, CPL 3)?
    #[inline]
    pub(crate) fn align_checking(&self) -> bool {
        self.rflags & flag::AC != 0 && self.cr0 & cr0::AM != 0 && self.cpl == 3
    }

    #[cold]
    fn check_align_slow(&self, lin: u64, size: u8) -> Result<(), Fault> {
        if !self.align_checking() {
            return Ok(());
        }
        // Natural alignment, at most 8. Odd sizes (probes of 6- and 10-byte operands) are left
        // to the pieces they are accessed in: an m80's 8-byte part needs 8 as the SDM asks, the
        // limit and base of a pseudo-descriptor need 2 and 4.
        let align = if size.is_power_of_two() {
            size.min(8) as u64
        } else {
            1
        };
        if lin & (align - 1) != 0 {
            return Err(Fault::with_code(vector::AC, 0));
        }
        Ok(())
    }

    /// Write a data operand through segment `seg` at offset `off`.
    #[inline]
    pub fn write_mem(
        &mut self,
        bus: &mut dyn CpuBus,
        seg: usize,
        off: u64,
        size: u8,
        v: u64,
    ) -> Result<(), Exit> {
        let lin = self.seg_lin(seg, off, size, Access::Write)?;
        self.check_align(lin, size)?;
        let user = self.user_access();
        if (lin & 0xFFF) + size as u64 <= 0x1000 {
            if let Some(pa) = self.tlb.fast_write(lin, user) {
                self.mem.store(pa, size, v);
                return Ok(());
            }
            if self.tlb.no_fast() {
                self.watch(lin, size, true);
            }
            let pa = self.translate(bus, lin, Access::Write, user)?;
            if self.mem.is_ram(pa) && !self.cache.is_code_page(pa >> 12) {
                let ram = self.mem.host_base();
                self.tlb.fill_write(lin, user, pa, ram);
                self.mem.store(pa, size, v);
                return Ok(());
            }
            self.phys_write(bus, pa, size, v);
            return Ok(());
        }
        if self.tlb.no_fast() {
            self.watch(lin, size, true);
        }
        Ok(self.write_lin(bus, lin, size, v, user)?)
    }

    /// Record the data breakpoints (DR0-3 with R/W 01 or 11, enabled in DR7) that an access of
    /// `size` bytes at linear `lin` hits. The #DB trap is taken after the instruction.
    #[cold]
    #[inline(never)]
    fn watch(&mut self, lin: u64, size: u8, write: bool) {
        let dr7 = self.dr[7];
        for n in 0..4 {
            if (dr7 >> (2 * n)) & 3 == 0 {
                continue;
            }
            let rw = (dr7 >> (16 + 4 * n)) & 3;
            // 00 is an instruction breakpoint, 10 an I/O breakpoint (not implemented).
            if !(rw == 3 || (rw == 1 && write)) {
                continue;
            }
            // LEN 00/01/11 = 1/2/4 bytes, 10 = 8 bytes; the address is aligned down to it.
            let len = [1u64, 2, 8, 4][((dr7 >> (18 + 4 * n)) & 3) as usize];
            let a = self.dr[n] & !(len - 1);
            if lin < a.wrapping_add(len) && a < lin.wrapping_add(size as u64) {
                self.dbg_hits |= 1 << n;
            }
        }
    }

    /// The linear address of an `S`-byte data access at `seg:off` when it needs no check beyond
    /// the limit — a present, writable, expand-up data segment outside long mode, no alignment
    /// checking, within one page — or `None` to take the full path.
    #[inline(always)]
    fn fast_lin<const S: u8>(&self, seg: usize, off: u64) -> Option<u64> {
        let s = &self.segs[seg];
        if s.attr & (attr::P | attr::CODE | attr::DC | attr::RW) == attr::P | attr::RW
            && self.efer & efer::LMA == 0
            && self.rflags & flag::AC == 0
            && off.wrapping_add(S as u64 - 1) <= s.limit as u64
            && off <= s.limit as u64
        {
            let lin = s.base.wrapping_add(off) & 0xFFFF_FFFF;
            if (lin & 0xFFF) <= 0x1000 - S as u64 {
                return Some(lin);
            }
        }
        None
    }

    /// [`Cpu::read_mem`] for a fixed size, with the common case inline: a present, writable,
    /// expand-up data segment outside long mode, the offset within its limit, and a page the
    /// fast TLB knows as plain RAM. Everything else takes the full path.
    #[inline(always)]
    pub(crate) fn load_fast<const S: u8>(
        &mut self,
        bus: &mut dyn CpuBus,
        seg: usize,
        off: u64,
    ) -> Result<u64, Exit> {
        if let Some(lin) = self.fast_lin::<S>(seg, off)
            && let Some(pa) = self.tlb.fast_read(lin, self.cpl == 3)
        {
            return Ok(self.mem.load(pa, S));
        }
        self.read_mem(bus, seg, off, S)
    }

    /// [`Cpu::read_mem_rmw`] for a fixed size with the common case inline: the destination of a
    /// read-modify-write is looked up in the write TLB, so a miss walks with write intent (a
    /// #PF reports W=1, as the hardware does).
    #[inline(always)]
    pub(crate) fn load_rmw_fast<const S: u8>(
        &mut self,
        bus: &mut dyn CpuBus,
        seg: usize,
        off: u64,
    ) -> Result<u64, Exit> {
        if let Some(lin) = self.fast_lin::<S>(seg, off)
            && let Some(pa) = self.tlb.fast_write(lin, self.cpl == 3)
        {
            return Ok(self.mem.load(pa, S));
        }
        self.read_mem_rmw(bus, seg, off, S)
    }

    /// [`Cpu::write_mem`] for a fixed size with the common case inline (see
    /// [`Cpu::load_fast`]; the fast write TLB never holds pages with translated code).
    #[inline(always)]
    pub(crate) fn store_fast<const S: u8>(
        &mut self,
        bus: &mut dyn CpuBus,
        seg: usize,
        off: u64,
        v: u64,
    ) -> Result<(), Exit> {
        if let Some(lin) = self.fast_lin::<S>(seg, off)
            && let Some(pa) = self.tlb.fast_write(lin, self.cpl == 3)
        {
            self.mem.store(pa, S, v);
            return Ok(());
        }
        self.write_mem(bus, seg, off, S, v)
    }

    /// Check that a write of `size` bytes at `seg:off` would succeed, without writing (for
    /// instructions that must fault before changing anything, like PUSHA or far CALL).
    pub(crate) fn probe_write(
        &mut self,
        bus: &mut dyn CpuBus,
        seg: usize,
        off: u64,
        size: u8,
    ) -> Result<(), Exit> {
        let lin = self.seg_lin(seg, off, size, Access::Write)?;
        self.check_align(lin, size)?;
        let user = self.user_access();
        self.translate(bus, lin, Access::Write, user)?;
        if (lin & 0xFFF) + size as u64 > 0x1000 {
            self.translate(bus, (lin | 0xFFF) + 1, Access::Write, user)?;
        }
        Ok(())
    }

    /// Read at a linear address with supervisor privilege (descriptor tables, TSS, IDT).
    pub(crate) fn read_sys(
        &mut self,
        bus: &mut dyn CpuBus,
        lin: u64,
        size: u8,
    ) -> Result<u64, Fault> {
        self.read_lin(bus, lin, size, Access::Read, false)
    }

    pub(crate) fn write_sys(
        &mut self,
        bus: &mut dyn CpuBus,
        lin: u64,
        size: u8,
        v: u64,
    ) -> Result<(), Fault> {
        self.write_lin(bus, lin, size, v, false)
    }
}
