//! Hardware task switching (SDM Vol. 3, 7.3): JMP/CALL to a TSS descriptor or a task gate,
//! INT n / exceptions through a task gate, and IRET with NT set. 32-bit and 16-bit TSSs.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::exception::{Exit, Fault, vector};
use crate::mmu::segmentation::Descriptor;
use crate::state::{Segment, attr, cr0, flag, sreg};

/// What started the switch (decides busy bits, NT and the back link).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskSource {
    Jmp,
    Call,
    /// INT n, an exception or an external interrupt through a task gate.
    Int,
    Iret,
}

const BUSY: u64 = 2 << 40;

impl Cpu {
    /// Switch to the task whose TSS descriptor `sel` names. `error_code` is pushed on the new
    /// task's stack (exceptions through task gates).
    pub(crate) fn task_switch(
        &mut self,
        bus: &mut dyn CpuBus,
        sel: u16,
        src: TaskSource,
        error_code: Option<u32>,
    ) -> Result<(), Exit> {
        let err = (sel & !3) as u32;
        if sel & 4 != 0 {
            // A TSS descriptor must be in the GDT.
            return Err(Fault::gp(err).into());
        }
        let (mut nd, naddr) = self.fetch_descriptor(bus, sel)?;
        let ty = nd.sys_type();
        let want_busy = src == TaskSource::Iret;
        let ok_type = if want_busy {
            matches!(ty, 0x3 | 0xB)
        } else {
            matches!(ty, 0x1 | 0x9)
        };
        if nd.is_seg() || !ok_type {
            return Err(if src == TaskSource::Iret {
                Fault::ts(err)
            } else {
                Fault::gp(err)
            }
            .into());
        }
        if !nd.present() {
            return Err(Fault::np(err).into());
        }
        let new32 = ty & 8 != 0;
        if nd.limit() < if new32 { 0x67 } else { 0x2B } {
            return Err(Fault::ts(err).into());
        }

        // Save the outgoing task.
        let old_sel = self.tr.selector;
        let ob = self.tr.base;
        let old32 = self.tr.attr & 8 != 0;
        let mut oflags = self.rflags();
        if matches!(src, TaskSource::Jmp | TaskSource::Iret) {
            oflags &= !flag::NT;
        }
        if old32 {
            self.write_sys(bus, ob + 0x20, 4, self.rip)?;
            self.write_sys(bus, ob + 0x24, 4, oflags)?;
            for r in 0..8 {
                self.write_sys(
                    bus,
                    ob + 0x28 + r * 4,
                    4,
                    self.regs[r as usize] & 0xFFFF_FFFF,
                )?;
            }
            for s in 0..6 {
                self.write_sys(
                    bus,
                    ob + 0x48 + s * 4,
                    2,
                    self.segs[s as usize].selector as u64,
                )?;
            }
        } else {
            self.write_sys(bus, ob + 0x0E, 2, self.rip & 0xFFFF)?;
            self.write_sys(bus, ob + 0x10, 2, oflags & 0xFFFF)?;
            for r in 0..8 {
                self.write_sys(bus, ob + 0x12 + r * 2, 2, self.regs[r as usize] & 0xFFFF)?;
            }
            for s in 0..4 {
                self.write_sys(
                    bus,
                    ob + 0x22 + s * 2,
                    2,
                    self.segs[s as usize].selector as u64,
                )?;
            }
        }
        if matches!(src, TaskSource::Jmp | TaskSource::Iret) {
            let (od, oaddr) = self.fetch_descriptor(bus, old_sel)?;
            self.write_sys(bus, oaddr + 5, 1, ((od.raw & !BUSY) >> 40) & 0xFF)?;
        }

        // Read the incoming task's state before committing anything else.
        let nb = nd.base();
        let (cr3, eip, mut eflags, gprs, sels, ldt) = if new32 {
            let mut g = [0u64; 8];
            for (r, v) in g.iter_mut().enumerate() {
                *v = self.read_sys(bus, nb + 0x28 + r as u64 * 4, 4)?;
            }
            let mut s = [0u16; 6];
            for (i, v) in s.iter_mut().enumerate() {
                *v = self.read_sys(bus, nb + 0x48 + i as u64 * 4, 2)? as u16;
            }
            (
                Some(self.read_sys(bus, nb + 0x1C, 4)?),
                self.read_sys(bus, nb + 0x20, 4)?,
                self.read_sys(bus, nb + 0x24, 4)?,
                g,
                s,
                self.read_sys(bus, nb + 0x60, 2)? as u16,
            )
        } else {
            let mut g = [0u64; 8];
            for (r, v) in g.iter_mut().enumerate() {
                *v = self.read_sys(bus, nb + 0x12 + r as u64 * 2, 2)?;
            }
            let mut s = [0u16; 6];
            for (i, v) in s.iter_mut().take(4).enumerate() {
                *v = self.read_sys(bus, nb + 0x22 + i as u64 * 2, 2)? as u16;
            }
            (
                None,
                self.read_sys(bus, nb + 0x0E, 2)?,
                self.read_sys(bus, nb + 0x10, 2)? | (self.rflags & !0xFFFF & !flag::VM),
                g,
                s,
                self.read_sys(bus, nb + 0x2A, 2)? as u16,
            )
        };
        if matches!(src, TaskSource::Call | TaskSource::Int) {
            eflags |= flag::NT;
            self.write_sys(bus, nb, 2, old_sel as u64)?;
        }
        if src != TaskSource::Iret {
            nd.raw |= BUSY;
            self.write_sys(bus, naddr + 5, 1, (nd.raw >> 40) & 0xFF)?;
        }

        // Commit: TR, CR3, registers, flags. From here on faults belong to the new task.
        self.tr = Segment {
            selector: sel,
            base: nb,
            limit: nd.limit(),
            attr: nd.attr() | (BUSY >> 40) as u16,
        };
        self.cr0 |= cr0::TS;
        // The local breakpoint enables (L0-L3, LE) belong to the old task.
        self.dr[7] &= !0x155;
        self.update_debug_arm();
        if let Some(c) = cr3
            && self.cr0 & cr0::PG != 0
        {
            self.cr3 = c;
            self.tlb.flush_nonglobal();
        }
        self.rip = eip;
        for (r, v) in gprs.iter().enumerate() {
            if new32 {
                self.regs[r] = *v;
            } else {
                self.set_reg(r as u8, 2, *v);
            }
        }
        self.set_rflags(eflags);
        self.block_break = true;

        // Faults from here on happen in the new task: deliver them there (RIP and the stack
        // are the new task's, so the dispatch loop's rollback must not apply).
        if let Err(Exit::Fault(f)) =
            self.task_load_segments(bus, new32, eflags, &sels, ldt, error_code)
        {
            self.raise(bus, f, true);
        }
        Ok(())
    }

    fn task_load_segments(
        &mut self,
        bus: &mut dyn CpuBus,
        new32: bool,
        eflags: u64,
        sels: &[u16; 6],
        ldt: u16,
        error_code: Option<u32>,
    ) -> Result<(), Exit> {
        // Segment registers, with #TS for bad selectors.
        let ts = |e: Exit| match e {
            Exit::Fault(f) if f.vector == vector::GP || f.vector == vector::SS => {
                Exit::Fault(Fault::ts(f.error_code.unwrap_or(0)))
            }
            other => other,
        };
        if ldt & !3 == 0 {
            self.ldtr = Segment {
                selector: ldt,
                base: 0,
                limit: 0,
                attr: 0,
            };
        } else {
            let (d, _) = self.fetch_descriptor(bus, ldt).map_err(ts)?;
            if ldt & 4 != 0 || d.is_seg() || d.sys_type() != 2 {
                return Err(Fault::ts((ldt & !3) as u32).into());
            }
            self.ldtr = d.to_segment(ldt);
        }
        if eflags & flag::VM != 0 {
            self.cpl = 3;
            for (s, &v) in sels.iter().enumerate() {
                self.load_seg(bus, s, v)?;
            }
        } else {
            let cs = sels[sreg::CS];
            self.cpl = (cs & 3) as u8;
            self.load_task_cs(bus, cs)?;
            for s in [sreg::SS, sreg::DS, sreg::ES, sreg::FS, sreg::GS] {
                if !new32 && s >= sreg::FS {
                    self.segs[s] = Segment {
                        selector: 0,
                        base: 0,
                        limit: 0,
                        attr: 0,
                    };
                    continue;
                }
                self.load_seg(bus, s, sels[s]).map_err(ts)?;
            }
        }
        if let Some(code) = error_code {
            let size = if new32 { 4 } else { 2 };
            self.push(bus, size, code as u64)?;
        }
        Ok(())
    }

    fn load_task_cs(&mut self, bus: &mut dyn CpuBus, cs: u16) -> Result<(), Exit> {
        let err = (cs & !3) as u32;
        if cs & !3 == 0 {
            return Err(Fault::ts(0).into());
        }
        let (d, _): (Descriptor, u64) =
            self.fetch_descriptor(bus, cs).map_err(|_| Fault::ts(err))?;
        if !d.is_code() {
            return Err(Fault::ts(err).into());
        }
        let conforming = d.attr() & attr::DC != 0;
        if (conforming && d.dpl() > self.cpl) || (!conforming && d.dpl() != self.cpl) {
            return Err(Fault::ts(err).into());
        }
        if !d.present() {
            return Err(Fault::np(err).into());
        }
        self.segs[sreg::CS] = d.to_segment(cs);
        Ok(())
    }
}
