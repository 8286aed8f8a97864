//! Interrupt and exception delivery: through the real-mode IVT, or through the protected-mode
//! IDT's interrupt and trap gates with the privilege change (TSS stack switch) and the
//! v8086-mode exit. Double fault and triple fault are decided by the run loop.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::exception::{Exit, Fault};
use crate::flags::size_mask;
use crate::state::{Segment, attr, flag, sreg};

impl Cpu {
    /// INT n / INT3 / INTO: like `deliver`, plus the protected-mode gate DPL check.
    pub(crate) fn software_interrupt(&mut self, bus: &mut dyn CpuBus, v: u8) -> Result<(), Exit> {
        self.deliver_inner(bus, v, None, true, false)
            .map_err(Exit::Fault)
    }

    /// Deliver vector `v` now, pushing `self.rip` as the return address (the loop has already
    /// rolled it back to the faulting instruction for faults). `ext` marks events not caused by
    /// an instruction (external interrupts, exceptions): it sets bit 0 of error codes raised
    /// during delivery.
    pub(crate) fn deliver(
        &mut self,
        bus: &mut dyn CpuBus,
        v: u8,
        code: Option<u32>,
        ext: bool,
    ) -> Result<(), Fault> {
        self.deliver_inner(bus, v, code, false, ext)
    }

    fn deliver_inner(
        &mut self,
        bus: &mut dyn CpuBus,
        v: u8,
        code: Option<u32>,
        soft: bool,
        ext: bool,
    ) -> Result<(), Fault> {
        self.halted = false;
        if !self.protected() {
            return self.deliver_real(bus, v);
        }
        let e = ext as u32;
        let idt_off = v as u64 * 8;
        if idt_off + 7 > self.idtr.limit as u64 {
            return Err(Fault::gp(idt_off as u32 + 2 + e));
        }
        let gate = self.read_sys(bus, self.idtr.base.wrapping_add(idt_off), 8)?;
        let gtype = ((gate >> 40) & 0xF) as u8;
        let gdpl = ((gate >> 45) & 3) as u8;
        let gpresent = gate & (1 << 47) != 0;
        let is32 = match gtype {
            0x6 | 0x7 => false,
            0xE | 0xF => true,
            0x5 => {
                if soft && gdpl < self.cpl {
                    return Err(Fault::gp(idt_off as u32 + 2));
                }
                if !gpresent {
                    return Err(Fault::np(idt_off as u32 + 2 + e));
                }
                let tss = ((gate >> 16) & 0xFFFF) as u16;
                self.halted = false;
                return self
                    .task_switch(bus, tss, crate::exec::task::TaskSource::Int, code)
                    .map_err(exit_fault);
            }
            _ => return Err(Fault::gp(idt_off as u32 + 2 + e)),
        };
        let trap = gtype & 1 != 0;
        if soft && gdpl < self.cpl {
            return Err(Fault::gp(idt_off as u32 + 2));
        }
        if !gpresent {
            return Err(Fault::np(idt_off as u32 + 2 + e));
        }
        let sel = ((gate >> 16) & 0xFFFF) as u16;
        let mut off = (gate & 0xFFFF)
            | if is32 {
                ((gate >> 48) & 0xFFFF) << 16
            } else {
                0
            };
        if !is32 {
            off &= 0xFFFF;
        }
        if sel & !3 == 0 {
            return Err(Fault::gp(e));
        }
        let (d, daddr) = self.fetch_descriptor(bus, sel).map_err(exit_fault)?;
        let serr = (sel & !3) as u32 + e;
        if !d.is_code() || d.dpl() > self.cpl {
            return Err(Fault::gp(serr));
        }
        if !d.present() {
            return Err(Fault::np(serr));
        }
        let conforming = d.attr() & attr::DC != 0;
        let old_flags = self.rflags();
        let v86 = old_flags & flag::VM != 0;
        let psize: u8 = if is32 { 4 } else { 2 };
        let old_cs = self.segs[sreg::CS].selector as u64;
        let old_ip = self.rip;

        if !conforming && d.dpl() < self.cpl {
            // Inner privilege: switch to the stack for the new CPL from the TSS.
            let new_cpl = d.dpl();
            let (new_ss, new_sp) = self.tss_stack(bus, new_cpl, e)?;
            let (ssd, _) = self
                .fetch_descriptor(bus, new_ss)
                .map_err(|x| ts_of(x, new_ss, e))?;
            let sserr = (new_ss & !3) as u32 + e;
            if new_ss & 3 != new_cpl as u16
                || ssd.dpl() != new_cpl
                || !ssd.is_seg()
                || ssd.is_code()
                || ssd.attr() & attr::RW == 0
            {
                return Err(Fault::ts(sserr));
            }
            if !ssd.present() {
                return Err(Fault::ss(sserr));
            }
            if v86 && new_cpl != 0 {
                return Err(Fault::gp(serr));
            }
            let old_ss = self.segs[sreg::SS].selector as u64;
            let old_sp = self.regs[4];
            let mut frame: smallvec::SmallVec<[u64; 10]> = smallvec::SmallVec::new();
            if v86 {
                frame.extend_from_slice(&[
                    self.segs[sreg::GS].selector as u64,
                    self.segs[sreg::FS].selector as u64,
                    self.segs[sreg::DS].selector as u64,
                    self.segs[sreg::ES].selector as u64,
                ]);
            }
            frame.extend_from_slice(&[old_ss, old_sp, old_flags, old_cs, old_ip]);
            if let Some(c) = code {
                frame.push(c as u64);
            }
            // Write the frame on the new stack before committing any register.
            let new_ss_seg = ssd.to_segment(new_ss);
            let ssmask = if new_ss_seg.big() {
                0xFFFF_FFFF
            } else {
                0xFFFF
            };
            let mut sp = new_sp & ssmask;
            let saved_ss = self.segs[sreg::SS];
            let saved_cpl = self.cpl;
            self.segs[sreg::SS] = new_ss_seg;
            self.cpl = new_cpl;
            for &x in &frame {
                sp = sp.wrapping_sub(psize as u64) & ssmask;
                if let Err(f) = self.write_mem(bus, sreg::SS, sp, psize, x) {
                    self.segs[sreg::SS] = saved_ss;
                    self.cpl = saved_cpl;
                    return Err(exit_fault(f));
                }
            }
            if new_ss_seg.big() {
                self.regs[4] = sp;
            } else {
                self.set_reg(4, 2, sp);
            }
            if v86 {
                for s in [sreg::ES, sreg::DS, sreg::FS, sreg::GS] {
                    self.segs[s] = Segment {
                        selector: 0,
                        base: 0,
                        limit: 0,
                        attr: 0,
                    };
                }
            }
        } else {
            if v86 {
                // v8086 code may only enter a ring-0 handler (through the branch above).
                return Err(Fault::gp(serr));
            }
            let mut frame: smallvec::SmallVec<[u64; 4]> = smallvec::SmallVec::new();
            frame.extend_from_slice(&[old_flags, old_cs, old_ip]);
            if let Some(c) = code {
                frame.push(c as u64);
            }
            let sm = size_mask(self.stack_size());
            let mut sp = self.sp();
            for &x in &frame {
                sp = sp.wrapping_sub(psize as u64) & sm;
                self.write_mem(bus, sreg::SS, sp, psize, x)
                    .map_err(exit_fault)?;
            }
            self.set_sp(sp);
        }
        let mut d = d;
        self.mark_accessed(bus, &mut d, daddr).map_err(exit_fault)?;
        let new_cpl = if conforming { self.cpl } else { d.dpl() };
        self.segs[sreg::CS] = d.to_segment((sel & !3) | new_cpl as u16);
        self.cpl = new_cpl;
        self.rip = off;
        let mut nf = old_flags & !(flag::TF | flag::NT | flag::RF | flag::VM);
        if !trap {
            nf &= !flag::IF;
        }
        self.set_rflags(nf);
        self.block_break = true;
        Ok(())
    }

    /// SS:SP for privilege level `pl` from the current TSS.
    fn tss_stack(&mut self, bus: &mut dyn CpuBus, pl: u8, e: u32) -> Result<(u16, u64), Fault> {
        let ty = self.tr.attr & 0xF;
        let tserr = (self.tr.selector & !3) as u32 + e;
        if ty == 0x9 || ty == 0xB {
            let o = 4 + pl as u64 * 8;
            if o + 5 > self.tr.limit as u64 {
                return Err(Fault::ts(tserr));
            }
            let sp = self.read_sys(bus, self.tr.base + o, 4)?;
            let ss = self.read_sys(bus, self.tr.base + o + 4, 2)? as u16;
            Ok((ss, sp))
        } else {
            let o = 2 + pl as u64 * 4;
            if o + 3 > self.tr.limit as u64 {
                return Err(Fault::ts(tserr));
            }
            let sp = self.read_sys(bus, self.tr.base + o, 2)?;
            let ss = self.read_sys(bus, self.tr.base + o + 2, 2)? as u16;
            Ok((ss, sp))
        }
    }

    /// Real mode: push FLAGS, CS, IP and jump through the interrupt vector table.
    fn deliver_real(&mut self, bus: &mut dyn CpuBus, v: u8) -> Result<(), Fault> {
        let off = v as u64 * 4;
        if off + 3 > self.idtr.limit as u64 {
            return Err(Fault::gp(0));
        }
        let vec = self.read_sys(bus, self.idtr.base.wrapping_add(off), 4)?;
        let f = self.rflags();
        let cs = self.segs[sreg::CS].selector as u64;
        let ip = self.rip & 0xFFFF;
        let sp0 = self.sp();
        let mut sp = sp0;
        for x in [f & 0xFFFF, cs, ip] {
            sp = sp.wrapping_sub(2) & 0xFFFF;
            if let Err(e) = self.write_mem(bus, sreg::SS, sp, 2, x) {
                return Err(exit_fault(e));
            }
        }
        self.set_sp(sp);
        let sel = (vec >> 16) as u16;
        self.segs[sreg::CS].selector = sel;
        self.segs[sreg::CS].base = (sel as u64) << 4;
        self.rip = vec & 0xFFFF;
        self.set_rflags(f & !(flag::IF | flag::TF | flag::AC | flag::RF));
        Ok(())
    }
}

fn exit_fault(e: Exit) -> Fault {
    match e {
        Exit::Fault(f) => f,
        // Delivery never halts; treat it as a #GP so it cannot be silently lost.
        Exit::Halt => Fault::gp(0),
    }
}

/// A fault while fetching the new SS descriptor during a stack switch is reported as #TS.
fn ts_of(e: Exit, sel: u16, ext: u32) -> Fault {
    match e {
        Exit::Fault(f) if f.vector == crate::exception::vector::GP => {
            Fault::ts((sel & !3) as u32 + ext)
        }
        other => exit_fault(other),
    }
}
