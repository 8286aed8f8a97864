//! System instructions: descriptor-table registers (LGDT/LIDT/SGDT/SIDT/LLDT/SLDT/LTR/STR),
//! control and debug registers (MOV CRn/DRn, LMSW, SMSW, CLTS), INVLPG, CPUID, RDTSC, RDMSR,
//! WRMSR, WBINVD/INVD, and the descriptor probes LAR/LSL/VERR/VERW/ARPL.
//!
//! Debug registers: DR0-3 breakpoints enabled by DR7's L/G bits are armed. Instruction
//! breakpoints (R/W 00) are faults checked by the run loop before an instruction starts
//! (suppressed for one instruction by EFLAGS.RF); data breakpoints (R/W 01 write, 11 read or
//! write; LEN 1, 2, 4 or 8 bytes) are recorded by the memory access path and reported as a trap
//! after the instruction (after the iteration, for REP string instructions). DR7.GD makes MOV
//! DR a #DB fault with DR6.BD. I/O breakpoints (R/W 10) are not implemented. While any
//! breakpoint is armed the run loop executes one instruction at a time and, with data
//! breakpoints, the fast TLB slots stay empty; with DR7 arming nothing the cost is one test per
//! block.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Op, loc};
use crate::exception::{ExecResult, Exit, Fault};
use crate::flags::size_mask;
use crate::state::{Segment, TableReg, attr, cr0, cr4, efer, flag};

/// CPL 0 (or real mode) required: #GP(0) otherwise.
#[inline]
fn require_cpl0(cpu: &Cpu) -> Result<(), Exit> {
    if cpu.protected() && cpu.cpl != 0 {
        return Err(Fault::gp(0).into());
    }
    Ok(())
}

/// Protected mode (not v8086) required: #UD otherwise.
#[inline]
fn require_pmode(cpu: &Cpu) -> Result<(), Exit> {
    if !cpu.protected() || cpu.rflags & flag::VM != 0 {
        return Err(Fault::ud().into());
    }
    Ok(())
}

/// LGDT (aux 0) / LIDT (aux 1). With a 16-bit operand size only 24 bits of base are loaded.
pub fn lgdt_lidt(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    if op.src != loc::MEM {
        return Err(Fault::ud().into());
    }
    require_cpl0(cpu)?;
    let ea = cpu.ea(op);
    let limit = cpu.read_mem(bus, op.seg as usize, ea, 2)? as u16;
    let bsize = if cpu.long64() { 8 } else { 4 };
    let mut base = cpu.read_mem(bus, op.seg as usize, (ea + 2) & size_mask(op.asize), bsize)?;
    if op.osize == 2 {
        base &= 0xFF_FFFF;
    }
    let t = TableReg { base, limit };
    if op.aux == 0 {
        cpu.gdtr = t
    } else {
        cpu.idtr = t
    }
    Ok(())
}

/// SGDT (aux 0) / SIDT (aux 1).
pub fn sgdt_sidt(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    if op.dst != loc::MEM {
        return Err(Fault::ud().into());
    }
    let t = if op.aux == 0 { cpu.gdtr } else { cpu.idtr };
    let ea = cpu.ea(op);
    let bsize = if cpu.long64() { 8 } else { 4 };
    cpu.probe_write(bus, op.seg as usize, ea, 2 + bsize)?;
    cpu.write_mem(bus, op.seg as usize, ea, 2, t.limit as u64)?;
    cpu.write_mem(
        bus,
        op.seg as usize,
        (ea + 2) & size_mask(op.asize),
        bsize,
        t.base,
    )
}

/// SLDT (aux 0) / STR (aux 1).
pub fn sldt_str(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    require_pmode(cpu)?;
    let sel = if op.aux == 0 {
        cpu.ldtr.selector
    } else {
        cpu.tr.selector
    } as u64;
    if op.dst == loc::MEM {
        cpu.wr_sized(bus, op, op.dst, 2, sel)
    } else {
        cpu.wr(bus, op, op.dst, sel)
    }
}

/// LLDT r/m16.
pub fn lldt(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    require_pmode(cpu)?;
    require_cpl0(cpu)?;
    let sel = cpu.rd_sized(bus, op, op.src, 2)? as u16;
    if sel & !3 == 0 {
        cpu.ldtr = Segment {
            selector: sel,
            base: 0,
            limit: 0,
            attr: 0,
        };
        return Ok(());
    }
    if sel & 4 != 0 {
        return Err(Fault::gp((sel & !3) as u32).into());
    }
    let (d, _) = cpu.fetch_descriptor(bus, sel)?;
    if d.is_seg() || d.sys_type() != 2 {
        return Err(Fault::gp((sel & !3) as u32).into());
    }
    if !d.present() {
        return Err(Fault::np((sel & !3) as u32).into());
    }
    cpu.ldtr = d.to_segment(sel);
    Ok(())
}

/// LTR r/m16: loads an available TSS and marks it busy.
pub fn ltr(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    require_pmode(cpu)?;
    require_cpl0(cpu)?;
    let sel = cpu.rd_sized(bus, op, op.src, 2)? as u16;
    let err = (sel & !3) as u32;
    if sel & !3 == 0 || sel & 4 != 0 {
        return Err(Fault::gp(err).into());
    }
    let (mut d, addr) = cpu.fetch_descriptor(bus, sel)?;
    if d.is_seg() || !matches!(d.sys_type(), 0x1 | 0x9) {
        return Err(Fault::gp(err).into());
    }
    if !d.present() {
        return Err(Fault::np(err).into());
    }
    d.raw |= 2 << 40;
    cpu.write_sys(bus, addr + 5, 1, (d.raw >> 40) & 0xFF)?;
    cpu.tr = d.to_segment(sel);
    Ok(())
}

/// SMSW r/m: the low 16 bits of CR0 (a register destination with a 32-bit operand size gets all
/// of CR0).
pub fn smsw(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.cr0;
    if op.dst == loc::MEM {
        cpu.wr_sized(bus, op, op.dst, 2, v)
    } else {
        cpu.wr(bus, op, op.dst, v)
    }
}

/// LMSW r/m16: loads PE, MP, EM, TS; PE can be set but not cleared.
pub fn lmsw(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)?;
    let v = cpu.rd_sized(bus, op, op.src, 2)?;
    let keep_pe = cpu.cr0 & cr0::PE;
    let new = (cpu.cr0 & !0xE) | (v & 0xF) | keep_pe;
    cpu.write_cr0(new)
}

pub fn clts(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)?;
    cpu.cr0 &= !cr0::TS;
    Ok(())
}

impl Cpu {
    /// Write CR0 with its consistency checks; paging or protection changes flush translations
    /// and end the block.
    pub(crate) fn write_cr0(&mut self, v: u64) -> Result<(), Exit> {
        let v = (v & 0xE005_003F) | cr0::ET;
        if v & cr0::PG != 0 && v & cr0::PE == 0 {
            return Err(Fault::gp(0).into());
        }
        if v & cr0::NW != 0 && v & cr0::CD == 0 {
            return Err(Fault::gp(0).into());
        }
        let changed = self.cr0 ^ v;
        if v & cr0::PG != 0 && changed & cr0::PG != 0 && self.efer & efer::LME != 0 {
            if self.cr4 & cr4::PAE == 0 {
                return Err(Fault::gp(0).into());
            }
            self.efer |= efer::LMA;
        }
        if v & cr0::PG == 0 {
            self.efer &= !efer::LMA;
        }
        self.cr0 = v;
        if changed & (cr0::PE | cr0::PG | cr0::WP) != 0 {
            self.flush_translations();
            self.block_break = true;
        }
        if changed & cr0::PE != 0 && v & cr0::PE == 0 {
            self.cpl = 0;
        }
        Ok(())
    }
}

/// MOV r32, CRn (aux = n).
pub fn mov_from_cr(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)?;
    if cpu.rflags & flag::VM != 0 {
        return Err(Fault::gp(0).into());
    }
    let v = match op.aux {
        0 => cpu.cr0,
        2 => cpu.cr2,
        3 => cpu.cr3,
        4 => cpu.cr4,
        _ => return Err(Fault::ud().into()),
    };
    cpu.set_reg(op.dst, op.osize, v);
    Ok(())
}

/// MOV CRn, r32 (aux = n).
pub fn mov_to_cr(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)?;
    if cpu.rflags & flag::VM != 0 {
        return Err(Fault::gp(0).into());
    }
    let v = cpu.reg(op.src, op.osize);
    match op.aux {
        0 => cpu.write_cr0(v)?,
        2 => cpu.cr2 = v,
        3 => {
            cpu.cr3 = v;
            cpu.tlb.flush_nonglobal();
        }
        4 => {
            let supported = cr4::PSE | cr4::PAE | cr4::PGE | cr4::TSD | cr4::DE | cr4::OSFXSR;
            if v & !supported != 0 {
                return Err(Fault::gp(0).into());
            }
            cpu.cr4 = v;
            cpu.flush_translations();
            cpu.block_break = true;
        }
        _ => return Err(Fault::ud().into()),
    }
    Ok(())
}

/// DR6 bits.
pub mod dr6 {
    /// B0-B3: which breakpoints the last #DB reports.
    pub const B_MASK: u64 = 0xF;
    /// Debug-register access detected (DR7.GD).
    pub const BD: u64 = 1 << 13;
    /// Single step (EFLAGS.TF).
    pub const BS: u64 = 1 << 14;
}

/// DR7.GD: general detect.
const DR7_GD: u64 = 1 << 13;

impl Cpu {
    /// Derive the armed state from DR7 (after MOV DR, and at every `run` since `dr` is public).
    pub(crate) fn update_debug_arm(&mut self) {
        let dr7 = self.dr[7];
        self.dbg_armed = dr7 & 0xFF != 0;
        // R/W 01 and 11 (bit 16 + 4n set) are data breakpoints.
        let data = (0..4).any(|n| (dr7 >> (2 * n)) & 3 != 0 && (dr7 >> (16 + 4 * n)) & 1 != 0);
        self.tlb.set_no_fast(data);
    }

    /// The instruction breakpoints (DR6 B0-B3 bits) matching the instruction at CS:rIP.
    pub(crate) fn code_breakpoints(&self) -> u64 {
        let dr7 = self.dr[7];
        let mut lin = self.segs[crate::state::sreg::CS]
            .base
            .wrapping_add(self.rip);
        if !self.long64() {
            lin &= 0xFFFF_FFFF;
        }
        let mut hits = 0;
        for n in 0..4 {
            // Enabled, R/W 00 (LEN should be 00 too; other lengths are undefined and treated
            // as 1 byte).
            if (dr7 >> (2 * n)) & 3 != 0 && (dr7 >> (16 + 4 * n)) & 3 == 0 && self.dr[n] == lin {
                hits |= 1 << n;
            }
        }
        hits
    }
}

/// DR7.GD set: the MOV DR becomes a #DB fault with DR6.BD, and GD is cleared so the handler
/// can use the debug registers.
fn general_detect(cpu: &mut Cpu) -> Result<(), Exit> {
    if cpu.dr[7] & DR7_GD != 0 {
        cpu.dr[6] |= dr6::BD;
        cpu.dr[7] &= !DR7_GD;
        return Err(Fault::new(crate::exception::vector::DB).into());
    }
    Ok(())
}

/// MOV r32, DRn (aux = n). DR4/DR5 alias DR6/DR7 unless CR4.DE.
pub fn mov_from_dr(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)?;
    let n = dr_index(cpu, op.aux)?;
    general_detect(cpu)?;
    let v = cpu.dr[n];
    cpu.set_reg(op.dst, op.osize, v);
    Ok(())
}

/// MOV DRn, r32. Writing DR0-3 or DR7 re-arms the breakpoints.
pub fn mov_to_dr(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)?;
    let n = dr_index(cpu, op.aux)?;
    general_detect(cpu)?;
    let v = cpu.reg(op.src, op.osize);
    cpu.dr[n] = match n {
        6 => (v & 0xE00F) | 0xFFFF_0FF0,
        7 => (v & 0xFFFF_2BFF) | 0x400,
        _ => v,
    };
    cpu.update_debug_arm();
    // The run loop checks `dbg_armed` at block boundaries: stop here so a breakpoint armed by
    // this instruction applies from the next one.
    cpu.block_break = true;
    Ok(())
}

fn dr_index(cpu: &Cpu, n: u8) -> Result<usize, Exit> {
    match n {
        0..=3 | 6 | 7 => Ok(n as usize),
        4 | 5 if cpu.cr4 & cr4::DE == 0 => Ok(n as usize + 2),
        _ => Err(Fault::ud().into()),
    }
}

pub fn invlpg(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    if op.src != loc::MEM {
        return Err(Fault::ud().into());
    }
    require_cpl0(cpu)?;
    let ea = cpu.ea(op);
    let lin = cpu.segs[op.seg as usize].base.wrapping_add(ea) & 0xFFFF_FFFF;
    cpu.tlb.flush_page(lin >> 12);
    Ok(())
}

/// WBINVD / INVD: no caches to manage.
pub fn wbinvd(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)
}

pub fn cpuid(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let leaf = cpu.reg(0, 4) as u32;
    let sub = cpu.reg(1, 4) as u32;
    let [a, b, c, d] = crate::cpuid::cpuid(leaf, sub);
    cpu.set_reg(0, 4, a as u64);
    cpu.set_reg(3, 4, b as u64);
    cpu.set_reg(1, 4, c as u64);
    cpu.set_reg(2, 4, d as u64);
    Ok(())
}

/// RDTSC: the time-stamp counter, from the clock the board chose (`Cpu::tsc_clock`).
pub fn rdtsc(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    if cpu.cr4 & cr4::TSD != 0 && cpu.protected() && cpu.cpl != 0 {
        return Err(Fault::gp(0).into());
    }
    let t = cpu.tsc_now();
    cpu.set_reg(0, 4, t & 0xFFFF_FFFF);
    cpu.set_reg(2, 4, t >> 32);
    Ok(())
}

pub mod msr {
    pub const TSC: u32 = 0x10;
    pub const APIC_BASE: u32 = 0x1B;
    pub const SYSENTER_CS: u32 = 0x174;
    pub const SYSENTER_ESP: u32 = 0x175;
    pub const SYSENTER_EIP: u32 = 0x176;
    pub const MISC_ENABLE: u32 = 0x1A0;
    pub const PAT: u32 = 0x277;
    pub const MTRR_DEF_TYPE: u32 = 0x2FF;
    pub const EFER: u32 = 0xC000_0080;
}

pub fn rdmsr(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)?;
    let v = match cpu.reg(1, 4) as u32 {
        msr::TSC => cpu.tsc_now(),
        msr::APIC_BASE => cpu.msr.apic_base,
        msr::SYSENTER_CS => cpu.msr.sysenter_cs,
        msr::SYSENTER_ESP => cpu.msr.sysenter_esp,
        msr::SYSENTER_EIP => cpu.msr.sysenter_eip,
        msr::MISC_ENABLE => cpu.msr.misc_enable,
        msr::PAT => cpu.msr.pat,
        msr::MTRR_DEF_TYPE => cpu.msr.mtrr_def_type,
        msr::EFER => cpu.efer,
        _ => return Err(Fault::gp(0).into()),
    };
    cpu.set_reg(0, 4, v & 0xFFFF_FFFF);
    cpu.set_reg(2, 4, v >> 32);
    Ok(())
}

pub fn wrmsr(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    require_cpl0(cpu)?;
    let v = (cpu.reg(2, 4) << 32) | cpu.reg(0, 4);
    match cpu.reg(1, 4) as u32 {
        msr::TSC => cpu.set_tsc(v),
        msr::APIC_BASE => cpu.msr.apic_base = v,
        msr::SYSENTER_CS => cpu.msr.sysenter_cs = v,
        msr::SYSENTER_ESP => cpu.msr.sysenter_esp = v,
        msr::SYSENTER_EIP => cpu.msr.sysenter_eip = v,
        msr::MISC_ENABLE => cpu.msr.misc_enable = v,
        msr::PAT => cpu.msr.pat = v,
        msr::MTRR_DEF_TYPE => cpu.msr.mtrr_def_type = v,
        msr::EFER => {
            // Only NXE is settable: long mode is not offered in CPUID yet.
            if v & !efer::NXE != 0 {
                return Err(Fault::gp(0).into());
            }
            cpu.efer = (cpu.efer & efer::LMA) | v;
            cpu.tlb.flush_all();
        }
        _ => return Err(Fault::gp(0).into()),
    }
    Ok(())
}

/// LAR (aux 0) / LSL (aux 1): ZF = 1 and the access rights / limit loaded when the selector is
/// visible at CPL/RPL and of a type the instruction accepts; ZF = 0 otherwise (no fault).
pub fn lar_lsl(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    require_pmode(cpu)?;
    let sel = cpu.rd_sized(bus, op, op.src, 2)? as u16;
    let ok = probe_desc(cpu, bus, sel, |d| {
        if d.is_seg() {
            true
        } else if op.aux == 0 {
            matches!(d.sys_type(), 1 | 2 | 3 | 4 | 5 | 9 | 0xB | 0xC)
        } else {
            matches!(d.sys_type(), 1 | 2 | 3 | 9 | 0xB)
        }
    })?;
    match ok {
        Some(d) => {
            let v = if op.aux == 0 {
                (d.raw >> 32) & 0x00F0_FF00
            } else {
                d.limit() as u64
            };
            cpu.set_reg(op.dst, op.osize, v);
            cpu.set_flag(flag::ZF, true);
        }
        None => cpu.set_flag(flag::ZF, false),
    }
    Ok(())
}

/// VERR (aux 0) / VERW (aux 1).
pub fn verr_verw(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    require_pmode(cpu)?;
    let sel = cpu.rd_sized(bus, op, op.src, 2)? as u16;
    let write = op.aux == 1;
    let ok = probe_desc(cpu, bus, sel, |d| {
        if !d.is_seg() {
            return false;
        }
        if write {
            !d.is_code() && d.attr() & attr::RW != 0
        } else {
            !d.is_code() || d.attr() & attr::RW != 0
        }
    })?;
    cpu.set_flag(flag::ZF, ok.is_some());
    Ok(())
}

fn probe_desc(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    sel: u16,
    type_ok: impl Fn(&crate::mmu::segmentation::Descriptor) -> bool,
) -> Result<Option<crate::mmu::segmentation::Descriptor>, Exit> {
    if sel & !3 == 0 {
        return Ok(None);
    }
    let d = match cpu.fetch_descriptor(bus, sel) {
        Ok((d, _)) => d,
        Err(Exit::Fault(f)) if f.vector == crate::exception::vector::GP => return Ok(None),
        Err(e) => return Err(e),
    };
    if !type_ok(&d) {
        return Ok(None);
    }
    let conforming_code = d.is_code() && d.attr() & attr::DC != 0;
    let rpl = (sel & 3) as u8;
    if !conforming_code && (d.dpl() < cpu.cpl || d.dpl() < rpl) {
        return Ok(None);
    }
    Ok(Some(d))
}

/// ARPL r/m16, r16: raise the destination's RPL to the source's. #UD outside protected mode.
pub fn arpl(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    require_pmode(cpu)?;
    let d = cpu.rd_sized(bus, op, op.dst, 2)?;
    let s = cpu.reg(op.src, 2);
    if d & 3 < s & 3 {
        cpu.wr_sized(bus, op, op.dst, 2, (d & !3) | (s & 3))?;
        cpu.set_flag(flag::ZF, true);
    } else {
        cpu.set_flag(flag::ZF, false);
    }
    Ok(())
}
