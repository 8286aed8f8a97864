//! Far transfers: JMP/CALL far, RETF and IRET, in real, v8086 and protected mode (code segments,
//! call gates, returns to an outer privilege level, IRET to v8086 mode). TSS descriptors and
//! task gates hand over to the task switch in `task.rs`.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::exception::{Exit, Fault};
use crate::exec::task::TaskSource;
use crate::flags::size_mask;
use crate::mmu::segmentation::Descriptor;
use crate::state::{Segment, attr, flag, sreg};

/// A resolved far-transfer target: the code descriptor, its address, the selector and offset
/// to load, and for a call gate (parameter count, gate size in bytes).
type FarTarget = (Descriptor, u64, u16, u64, Option<(u8, u8)>);

impl Cpu {
    fn real_cs(&mut self, sel: u16) {
        let cs = &mut self.segs[sreg::CS];
        cs.selector = sel;
        cs.base = (sel as u64) << 4;
        if self.rflags & flag::VM != 0 {
            cs.limit = 0xFFFF;
            cs.attr = attr::REAL_CODE | (3 << attr::DPL_SHIFT);
        }
    }

    /// Checks for a direct transfer to code segment `d` (JMP/CALL far without a gate).
    fn check_code_target(&self, d: &Descriptor, sel: u16) -> Result<(), Exit> {
        let err = (sel & !3) as u32;
        if !d.is_code() {
            return Err(Fault::gp(err).into());
        }
        let rpl = (sel & 3) as u8;
        if d.attr() & attr::DC != 0 {
            if d.dpl() > self.cpl {
                return Err(Fault::gp(err).into());
            }
        } else if rpl > self.cpl || d.dpl() != self.cpl {
            return Err(Fault::gp(err).into());
        }
        if !d.present() {
            return Err(Fault::np(err).into());
        }
        Ok(())
    }

    fn set_cs_pm(
        &mut self,
        bus: &mut dyn CpuBus,
        mut d: Descriptor,
        addr: u64,
        sel: u16,
        cpl: u8,
    ) -> Result<(), Exit> {
        self.mark_accessed(bus, &mut d, addr)?;
        let old_bitness = self.code_bitness();
        self.segs[sreg::CS] = d.to_segment((sel & !3) | cpl as u16);
        self.cpl = cpl;
        if self.code_bitness() != old_bitness {
            self.block_break = true;
        }
        Ok(())
    }

    /// Resolve a far JMP/CALL selector to (code descriptor, its address, final offset, gate
    /// param count and gate size) going through a call gate when the selector names one.
    fn far_target(&mut self, bus: &mut dyn CpuBus, sel: u16, off: u64) -> Result<FarTarget, Exit> {
        if sel & !3 == 0 {
            return Err(Fault::gp(0).into());
        }
        let (d, addr) = self.fetch_descriptor(bus, sel)?;
        let err = (sel & !3) as u32;
        if d.is_seg() {
            return Ok((d, addr, sel, off, None));
        }
        match d.sys_type() {
            0x4 | 0xC => {
                let rpl = (sel & 3) as u8;
                if d.dpl() < self.cpl || d.dpl() < rpl {
                    return Err(Fault::gp(err).into());
                }
                if !d.present() {
                    return Err(Fault::np(err).into());
                }
                let is32 = d.sys_type() == 0xC;
                let tsel = ((d.raw >> 16) & 0xFFFF) as u16;
                let mut toff = d.raw & 0xFFFF;
                if is32 {
                    toff |= ((d.raw >> 48) & 0xFFFF) << 16;
                }
                let params = ((d.raw >> 32) & 0x1F) as u8;
                if tsel & !3 == 0 {
                    return Err(Fault::gp(0).into());
                }
                let (td, taddr) = self.fetch_descriptor(bus, tsel)?;
                let terr = (tsel & !3) as u32;
                if !td.is_code() || td.dpl() > self.cpl {
                    return Err(Fault::gp(terr).into());
                }
                if !td.present() {
                    return Err(Fault::np(terr).into());
                }
                Ok((
                    td,
                    taddr,
                    tsel,
                    toff,
                    Some((params, if is32 { 4 } else { 2 })),
                ))
            }
            // TSS descriptors and task gates are resolved by the callers (task switch).
            _ => Err(Fault::gp(err).into()),
        }
    }

    /// If `sel` names a TSS descriptor or a task gate (with the privilege checks of a far
    /// JMP/CALL), the TSS selector to switch to.
    fn task_target(&mut self, bus: &mut dyn CpuBus, sel: u16) -> Result<Option<u16>, Exit> {
        if sel & !3 == 0 {
            return Ok(None);
        }
        let (d, _) = self.fetch_descriptor(bus, sel)?;
        if d.is_seg() || !matches!(d.sys_type(), 0x1 | 0x5 | 0x9) {
            return Ok(None);
        }
        let err = (sel & !3) as u32;
        let rpl = (sel & 3) as u8;
        if d.dpl() < self.cpl || d.dpl() < rpl {
            return Err(Fault::gp(err).into());
        }
        if !d.present() {
            return Err(Fault::np(err).into());
        }
        Ok(Some(if d.sys_type() == 0x5 {
            ((d.raw >> 16) & 0xFFFF) as u16
        } else {
            sel
        }))
    }

    pub(crate) fn far_jump(
        &mut self,
        bus: &mut dyn CpuBus,
        sel: u16,
        off: u64,
        osize: u8,
    ) -> Result<(), Exit> {
        let off = off & size_mask(osize);
        if !self.protected() || self.rflags & flag::VM != 0 {
            if off > self.segs[sreg::CS].limit as u64 {
                return Err(Fault::gp(0).into());
            }
            self.real_cs(sel);
            self.rip = off;
            return Ok(());
        }
        if let Some(tss) = self.task_target(bus, sel)? {
            return self.task_switch(bus, tss, TaskSource::Jmp, None);
        }
        let (d, addr, tsel, toff, gate) = self.far_target(bus, sel, off)?;
        let cpl = self.cpl;
        if gate.is_some() {
            // Through a gate a JMP may not change privilege.
            let conforming = d.attr() & attr::DC != 0;
            if (conforming && d.dpl() > cpl) || (!conforming && d.dpl() != cpl) {
                return Err(Fault::gp((tsel & !3) as u32).into());
            }
        } else {
            self.check_code_target(&d, sel)?;
        }
        let toff = if gate.is_some_and(|g| g.1 == 2) {
            toff & 0xFFFF
        } else {
            toff
        };
        if toff > d.limit() as u64 {
            return Err(Fault::gp(0).into());
        }
        self.set_cs_pm(bus, d, addr, tsel, cpl)?;
        self.rip = toff;
        Ok(())
    }

    pub(crate) fn far_call(
        &mut self,
        bus: &mut dyn CpuBus,
        sel: u16,
        off: u64,
        osize: u8,
    ) -> Result<(), Exit> {
        let off = off & size_mask(osize);
        let old_cs = self.segs[sreg::CS].selector as u64;
        let ret = self.rip;
        if !self.protected() || self.rflags & flag::VM != 0 {
            if off > self.segs[sreg::CS].limit as u64 {
                return Err(Fault::gp(0).into());
            }
            let sm = size_mask(self.stack_size());
            let sp = self.sp();
            let sp1 = sp.wrapping_sub(osize as u64) & sm;
            let sp2 = sp1.wrapping_sub(osize as u64) & sm;
            self.write_mem(bus, sreg::SS, sp1, osize, old_cs)?;
            self.write_mem(bus, sreg::SS, sp2, osize, ret)?;
            self.set_sp(sp2);
            self.real_cs(sel);
            self.rip = off;
            return Ok(());
        }
        if let Some(tss) = self.task_target(bus, sel)? {
            return self.task_switch(bus, tss, TaskSource::Call, None);
        }
        let (d, addr, tsel, toff, gate) = self.far_target(bus, sel, off)?;
        let cpl = self.cpl;
        let conforming = d.attr() & attr::DC != 0;
        match gate {
            None => {
                self.check_code_target(&d, sel)?;
                if off > d.limit() as u64 {
                    return Err(Fault::gp(0).into());
                }
                let sm = size_mask(self.stack_size());
                let sp = self.sp();
                let sp1 = sp.wrapping_sub(osize as u64) & sm;
                let sp2 = sp1.wrapping_sub(osize as u64) & sm;
                self.write_mem(bus, sreg::SS, sp1, osize, old_cs)?;
                self.write_mem(bus, sreg::SS, sp2, osize, ret)?;
                self.set_cs_pm(bus, d, addr, sel, cpl)?;
                self.set_sp(sp2);
                self.rip = off;
                Ok(())
            }
            Some((params, gsize)) => {
                let toff = if gsize == 2 { toff & 0xFFFF } else { toff };
                if toff > d.limit() as u64 {
                    return Err(Fault::gp(0).into());
                }
                if !conforming && d.dpl() < cpl {
                    self.call_gate_inner(bus, d, addr, tsel, toff, params, gsize, old_cs, ret)
                } else {
                    let sm = size_mask(self.stack_size());
                    let sp = self.sp();
                    let sp1 = sp.wrapping_sub(gsize as u64) & sm;
                    let sp2 = sp1.wrapping_sub(gsize as u64) & sm;
                    self.write_mem(bus, sreg::SS, sp1, gsize, old_cs)?;
                    self.write_mem(bus, sreg::SS, sp2, gsize, ret)?;
                    self.set_cs_pm(bus, d, addr, tsel, cpl)?;
                    self.set_sp(sp2);
                    self.rip = toff;
                    Ok(())
                }
            }
        }
    }

    /// CALL through a gate to a more privileged non-conforming segment: new stack from the TSS,
    /// old SS:SP and `params` parameters copied over, then CS:IP.
    #[allow(clippy::too_many_arguments)]
    fn call_gate_inner(
        &mut self,
        bus: &mut dyn CpuBus,
        d: Descriptor,
        addr: u64,
        tsel: u16,
        toff: u64,
        params: u8,
        gsize: u8,
        old_cs: u64,
        ret: u64,
    ) -> Result<(), Exit> {
        let new_cpl = d.dpl();
        let ty = self.tr.attr & 0xF;
        let (new_ss, new_sp) = if ty == 0x9 || ty == 0xB {
            let o = 4 + new_cpl as u64 * 8;
            (
                self.read_sys(bus, self.tr.base + o + 4, 2)? as u16,
                self.read_sys(bus, self.tr.base + o, 4)?,
            )
        } else {
            let o = 2 + new_cpl as u64 * 4;
            (
                self.read_sys(bus, self.tr.base + o + 2, 2)? as u16,
                self.read_sys(bus, self.tr.base + o, 2)?,
            )
        };
        let (ssd, _) = self.fetch_descriptor(bus, new_ss)?;
        let sserr = (new_ss & !3) as u32;
        if new_ss & 3 != new_cpl as u16
            || ssd.dpl() != new_cpl
            || ssd.is_code()
            || !ssd.is_seg()
            || ssd.attr() & attr::RW == 0
        {
            return Err(Fault::ts(sserr).into());
        }
        if !ssd.present() {
            return Err(Fault::ss(sserr).into());
        }
        // Parameters from the old stack.
        let old_ss = self.segs[sreg::SS].selector as u64;
        let old_sp = self.regs[4] & size_mask(self.stack_size());
        let mut ps: smallvec::SmallVec<[u64; 32]> = smallvec::SmallVec::new();
        for i in (0..params as u64).rev() {
            ps.push(self.peek(bus, i * gsize as u64, gsize)?);
        }
        let saved = (self.segs[sreg::SS], self.cpl);
        let new_seg = ssd.to_segment(new_ss);
        let mask = if new_seg.big() { 0xFFFF_FFFF } else { 0xFFFF };
        self.segs[sreg::SS] = new_seg;
        self.cpl = new_cpl;
        let mut sp = new_sp & mask;
        let mut frame: smallvec::SmallVec<[u64; 36]> = smallvec::SmallVec::new();
        frame.push(old_ss);
        frame.push(old_sp);
        frame.extend_from_slice(&ps);
        frame.push(old_cs);
        frame.push(ret);
        for &x in &frame {
            sp = sp.wrapping_sub(gsize as u64) & mask;
            if let Err(e) = self.write_mem(bus, sreg::SS, sp, gsize, x) {
                (self.segs[sreg::SS], self.cpl) = saved;
                return Err(e);
            }
        }
        self.set_cs_pm(bus, d, addr, tsel, new_cpl)?;
        if new_seg.big() {
            self.regs[4] = sp;
        } else {
            self.set_reg(4, 2, sp);
        }
        self.rip = toff;
        Ok(())
    }

    /// Check a CS selector popped by RETF/IRET and return its descriptor.
    fn check_return_cs(
        &mut self,
        bus: &mut dyn CpuBus,
        sel: u16,
    ) -> Result<(Descriptor, u64), Exit> {
        if sel & !3 == 0 {
            return Err(Fault::gp(0).into());
        }
        let (d, addr) = self.fetch_descriptor(bus, sel)?;
        let err = (sel & !3) as u32;
        let rpl = (sel & 3) as u8;
        if !d.is_code() || rpl < self.cpl {
            return Err(Fault::gp(err).into());
        }
        if d.attr() & attr::DC != 0 {
            if d.dpl() > rpl {
                return Err(Fault::gp(err).into());
            }
        } else if d.dpl() != rpl {
            return Err(Fault::gp(err).into());
        }
        if !d.present() {
            return Err(Fault::np(err).into());
        }
        Ok((d, addr))
    }

    /// Returning to an outer level: data segment registers the new CPL may not use become null.
    fn null_inaccessible_segs(&mut self) {
        for s in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
            let seg = self.segs[s];
            let conforming_code = seg.is_code() && seg.attr & attr::DC != 0;
            if !seg.unusable() && !conforming_code && seg.dpl() < self.cpl {
                self.segs[s] = Segment {
                    selector: 0,
                    base: 0,
                    limit: 0,
                    attr: 0,
                };
            }
        }
    }

    /// Pop SS:SP for an outer-level return from stack offset `at` and load them.
    fn load_outer_stack(
        &mut self,
        bus: &mut dyn CpuBus,
        at: u64,
        size: u8,
        rpl: u8,
        release: u64,
    ) -> Result<(), Exit> {
        let new_sp = self.peek(bus, at, size)?;
        let new_ss = self.peek(bus, at + size as u64, size)? as u16;
        if new_ss & !3 == 0 {
            return Err(Fault::gp(0).into());
        }
        let (mut ssd, ssaddr) = self.fetch_descriptor(bus, new_ss)?;
        let err = (new_ss & !3) as u32;
        if new_ss & 3 != rpl as u16
            || ssd.dpl() != rpl
            || ssd.is_code()
            || !ssd.is_seg()
            || ssd.attr() & attr::RW == 0
        {
            return Err(Fault::gp(err).into());
        }
        if !ssd.present() {
            return Err(Fault::ss(err).into());
        }
        self.mark_accessed(bus, &mut ssd, ssaddr)?;
        self.segs[sreg::SS] = ssd.to_segment(new_ss);
        let sp = new_sp.wrapping_add(release);
        if self.segs[sreg::SS].big() {
            self.regs[4] = sp & 0xFFFF_FFFF;
        } else {
            self.set_reg(4, 2, sp);
        }
        Ok(())
    }

    pub(crate) fn far_return(
        &mut self,
        bus: &mut dyn CpuBus,
        osize: u8,
        release: u64,
    ) -> Result<(), Exit> {
        let ip = self.peek(bus, 0, osize)?;
        let cs = self.peek(bus, osize as u64, osize)? as u16;
        if !self.protected() || self.rflags & flag::VM != 0 {
            if ip > self.segs[sreg::CS].limit as u64 {
                return Err(Fault::gp(0).into());
            }
            self.real_cs(cs);
            self.rip = ip;
            let sp = self.sp().wrapping_add(2 * osize as u64 + release);
            self.set_sp(sp);
            return Ok(());
        }
        let (d, addr) = self.check_return_cs(bus, cs)?;
        let rpl = (cs & 3) as u8;
        if ip > d.limit() as u64 {
            return Err(Fault::gp(0).into());
        }
        if rpl == self.cpl {
            self.set_cs_pm(bus, d, addr, cs, rpl)?;
            let sp = self.sp().wrapping_add(2 * osize as u64 + release);
            self.set_sp(sp);
        } else {
            let at = 2 * osize as u64 + release;
            // The outer SS:ESP is read from the current (inner) stack with the current
            // privilege: under paging that stack is usually supervisor-only.
            let saved = (self.segs, self.regs[4]);
            if let Err(e) = self.load_outer_stack(bus, at, osize, rpl, release) {
                (self.segs, self.regs[4]) = saved;
                return Err(e);
            }
            self.set_cs_pm(bus, d, addr, cs, rpl)?;
            self.null_inaccessible_segs();
        }
        self.rip = ip;
        Ok(())
    }

    pub(crate) fn iret(&mut self, bus: &mut dyn CpuBus, osize: u8) -> Result<(), Exit> {
        // Any IRET ends NMI blocking (even one that faults later: the SDM ties it to the
        // execution of IRET).
        self.nmi_blocked = false;
        let old = self.rflags();
        if !self.protected() || old & flag::VM != 0 {
            if old & flag::VM != 0 && (old & flag::IOPL) != flag::IOPL {
                return Err(Fault::gp(0).into());
            }
            let ip = self.peek(bus, 0, osize)?;
            let cs = self.peek(bus, osize as u64, osize)? as u16;
            let f = self.peek(bus, 2 * osize as u64, osize)?;
            if ip > self.segs[sreg::CS].limit as u64 {
                return Err(Fault::gp(0).into());
            }
            let mut keep = flag::VM | flag::VIF | flag::VIP;
            if old & flag::VM != 0 {
                keep |= flag::IOPL;
            }
            if osize == 2 {
                keep |= !0xFFFF;
            }
            self.real_cs(cs);
            self.rip = ip;
            let sp = self.sp().wrapping_add(3 * osize as u64);
            self.set_sp(sp);
            self.set_rflags((old & keep) | (f & !keep));
            self.block_break = true;
            return Ok(());
        }
        if old & flag::NT != 0 {
            // Return to the task in the back link of the current TSS.
            let link = self.read_sys(bus, self.tr.base, 2)? as u16;
            return self.task_switch(bus, link, TaskSource::Iret, None);
        }
        let ip = self.peek(bus, 0, osize)?;
        let cs = self.peek(bus, osize as u64, osize)? as u16;
        let f = self.peek(bus, 2 * osize as u64, osize)?;
        if osize == 4 && f & flag::VM != 0 && self.cpl == 0 {
            return self.iret_to_v86(bus, ip, cs, f);
        }
        let (d, addr) = self.check_return_cs(bus, cs)?;
        let rpl = (cs & 3) as u8;
        if ip > d.limit() as u64 {
            return Err(Fault::gp(0).into());
        }
        let old_cpl = self.cpl;
        if rpl == self.cpl {
            self.set_cs_pm(bus, d, addr, cs, rpl)?;
            let sp = self.sp().wrapping_add(3 * osize as u64);
            self.set_sp(sp);
        } else {
            let saved = (self.segs, self.regs[4]);
            if let Err(e) = self.load_outer_stack(bus, 3 * osize as u64, osize, rpl, 0) {
                (self.segs, self.regs[4]) = saved;
                return Err(e);
            }
            self.set_cs_pm(bus, d, addr, cs, rpl)?;
            self.null_inaccessible_segs();
        }
        // Flag privilege rules use the CPL the IRET executed at.
        let iopl = ((old & flag::IOPL) >> 12) as u8;
        let mut change =
            flag::ARITH | flag::TF | flag::DF | flag::NT | flag::AC | flag::ID | flag::RF;
        if old_cpl <= iopl {
            change |= flag::IF;
        }
        if old_cpl == 0 {
            change |= flag::IOPL | flag::VIF | flag::VIP;
        }
        if osize == 2 {
            change &= 0xFFFF;
        }
        self.set_rflags((old & !change) | (f & change));
        self.rip = ip;
        self.block_break = true;
        Ok(())
    }

    fn iret_to_v86(&mut self, bus: &mut dyn CpuBus, ip: u64, cs: u16, f: u64) -> Result<(), Exit> {
        let mut vals = [0u64; 6];
        for (i, v) in vals.iter_mut().enumerate() {
            *v = self.peek(bus, 12 + 4 * i as u64, 4)?;
        }
        let [esp, ss, es, ds, fs, gs] = vals;
        self.set_rflags(f);
        self.cpl = 3;
        for (s, sel) in [
            (sreg::ES, es),
            (sreg::DS, ds),
            (sreg::FS, fs),
            (sreg::GS, gs),
            (sreg::SS, ss),
        ] {
            self.load_seg(bus, s, sel as u16)?;
        }
        self.real_cs(cs);
        self.regs[4] = esp & 0xFFFF_FFFF;
        self.rip = ip & 0xFFFF;
        self.block_break = true;
        Ok(())
    }
}
