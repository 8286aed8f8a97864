//! String instructions: MOVS, CMPS, STOS, LODS, SCAS, INS, OUTS, with REP/REPE/REPNE.
//!
//! A REP loop updates rCX/rSI/rDI after every element, so a fault mid-way leaves exactly the
//! state the hardware would (RIP at the instruction, the remaining count in rCX). Long loops
//! stop after a slice of iterations and re-execute the same instruction, so interrupts and the
//! instruction budget are honoured.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Op, pfx};
use crate::exception::{ExecResult, Exit};
use crate::flags::{FlagOp, size_mask};
use crate::mmu::Access;
use crate::state::{flag, sreg};

pub mod kind {
    pub const MOVS: u8 = 0;
    pub const CMPS: u8 = 1;
    pub const STOS: u8 = 2;
    pub const LODS: u8 = 3;
    pub const SCAS: u8 = 4;
    pub const INS: u8 = 5;
    pub const OUTS: u8 = 6;
}

/// Iterations of a REP loop run before the instruction yields to the run loop.
pub(crate) const REP_SLICE: u32 = 4096;

#[inline]
fn advance(cpu: &mut Cpu, r: u8, asize: u8, step: u64) {
    let v = cpu.reg(r, asize).wrapping_add(step) & size_mask(asize);
    cpu.set_reg(r, asize, v);
}

#[inline]
fn one<const K: u8>(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus, step: u64) -> ExecResult {
    let size = op.osize;
    let a = op.asize;
    let am = size_mask(a);
    let src_seg = op.seg as usize;
    match K {
        kind::MOVS => {
            let si = cpu.regs[6] & am;
            let di = cpu.regs[7] & am;
            let v = cpu.read_mem(bus, src_seg, si, size)?;
            cpu.write_mem(bus, sreg::ES, di, size, v)?;
            advance(cpu, 6, a, step);
            advance(cpu, 7, a, step);
        }
        kind::CMPS => {
            let si = cpu.regs[6] & am;
            let di = cpu.regs[7] & am;
            let x = cpu.read_mem(bus, src_seg, si, size)?;
            let y = cpu.read_mem(bus, sreg::ES, di, size)?;
            let res = x.wrapping_sub(y) & size_mask(size);
            cpu.set_lazy(FlagOp::Sub, size, x, y, res);
            advance(cpu, 6, a, step);
            advance(cpu, 7, a, step);
        }
        kind::STOS => {
            let di = cpu.regs[7] & am;
            let v = cpu.reg(0, size);
            cpu.write_mem(bus, sreg::ES, di, size, v)?;
            advance(cpu, 7, a, step);
        }
        kind::LODS => {
            let si = cpu.regs[6] & am;
            let v = cpu.read_mem(bus, src_seg, si, size)?;
            cpu.set_reg(0, size, v);
            advance(cpu, 6, a, step);
        }
        kind::SCAS => {
            let di = cpu.regs[7] & am;
            let y = cpu.read_mem(bus, sreg::ES, di, size)?;
            let x = cpu.reg(0, size);
            let res = x.wrapping_sub(y) & size_mask(size);
            cpu.set_lazy(FlagOp::Sub, size, x, y, res);
            advance(cpu, 7, a, step);
        }
        kind::INS => {
            let port = cpu.reg(2, 2) as u16;
            cpu.check_io(bus, port, size)?;
            let di = cpu.regs[7] & am;
            // Fault on the destination before the port read has side effects.
            cpu.probe_write(bus, sreg::ES, di, size)?;
            let v = bus.io_read(port, size) as u64;
            cpu.write_mem(bus, sreg::ES, di, size, v)?;
            advance(cpu, 7, a, step);
        }
        _ => {
            let port = cpu.reg(2, 2) as u16;
            cpu.check_io(bus, port, size)?;
            let si = cpu.regs[6] & am;
            let v = cpu.read_mem(bus, src_seg, si, size)?;
            bus.io_write(port, size, v as u32);
            advance(cpu, 6, a, step);
        }
    }
    Ok(())
}

pub fn string<const K: u8>(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize as u64;
    let step = if cpu.rflags & flag::DF != 0 {
        size.wrapping_neg()
    } else {
        size
    };
    let rep = op.prefix & (pfx::REP | pfx::REPNE);
    if rep == 0 {
        return one::<K>(cpu, op, bus, step);
    }
    let a = op.asize;
    let compares = K == kind::CMPS || K == kind::SCAS;
    // Intel SDM, REP/REPE/REPNE: when a fault interrupts a REPE/REPNE CMPS or SCAS, EFLAGS is
    // restored to its value before the instruction (the comparisons do not read the flags, so
    // the restarted instruction needs none of them). The AMD APM does not say what the
    // arithmetic flags hold then. Vireo restores them whenever the instruction stops before
    // its termination condition — a fault, a single-step or data-breakpoint trap between
    // iterations, or the end of a slice — as the Intel processors the host test ran on do
    // for the trap too (HOST_DIFF.md, "Intel vs AMD hosts").
    let saved = compares.then_some((cpu.lazy, cpu.rflags & flag::ARITH));
    let restore = |cpu: &mut Cpu| {
        if let Some((lazy, arith)) = saved {
            cpu.lazy = lazy;
            cpu.rflags = (cpu.rflags & !flag::ARITH) | arith;
        }
    };
    let mut n = 0;
    loop {
        let c = cpu.reg(1, a);
        if c == 0 {
            return Ok(());
        }
        // Under TF each iteration is its own step (below); with alignment checking on, every
        // element must go through the checked path.
        if (K == kind::MOVS || K == kind::STOS)
            && step == size
            && c > 1
            && cpu.rflags & flag::TF == 0
            && !cpu.dbg_armed
            && !cpu.align_checking()
        {
            // Forward MOVS/STOS: whole runs of elements inside one page of plain RAM at once.
            let done = fast_run::<K>(cpu, op, bus, c.min((REP_SLICE - n) as u64))?;
            if done > 0 {
                let c = (c - done) & size_mask(a);
                cpu.set_reg(1, a, c);
                n += done as u32;
                if c == 0 {
                    return Ok(());
                }
                if n >= REP_SLICE {
                    cpu.rip = cpu.rip.wrapping_sub(op.len as u64) & cpu.ip_mask();
                    cpu.block_break = true;
                    return Ok(());
                }
                continue;
            }
        }
        if let Err(e) = one::<K>(cpu, op, bus, step) {
            restore(cpu);
            return Err(e);
        }
        let c = c.wrapping_sub(1) & size_mask(a);
        cpu.set_reg(1, a, c);
        if compares {
            let zf = cpu.flag(flag::ZF);
            // REPE (F3) stops when ZF = 0, REPNE (F2) when ZF = 1.
            if (rep & pfx::REP != 0 && !zf) || (rep & pfx::REPNE != 0 && zf) {
                return Ok(());
            }
        }
        if c == 0 {
            return Ok(());
        }
        n += 1;
        // TF: the hardware single-steps a REP instruction per iteration, trapping with RIP
        // still at the instruction and rCX/rSI/rDI advanced by one element.
        // An iteration that hit a data breakpoint traps likewise.
        if n >= REP_SLICE || cpu.smc_hit || cpu.rflags & flag::TF != 0 || cpu.dbg_hits != 0 {
            // Run this instruction again later: back to its first byte.
            cpu.rip = cpu.rip.wrapping_sub(op.len as u64) & cpu.ip_mask();
            cpu.block_break = true;
            restore(cpu);
            return Ok(());
        }
    }
}

/// Elements of `size` bytes that fit from linear `lin` to the end of its page.
#[inline]
fn in_page(lin: u64, size: u64) -> u64 {
    (0x1000 - (lin & 0xFFF)) / size
}

/// Forward REP MOVS/STOS fast path: up to `max` elements that stay inside one page of plain
/// RAM on each side (no MMIO, no ROM, no translated code on the destination page) and inside
/// the segment limits, copied element by element in the architectural order (so overlapping
/// MOVS behaves as on hardware). Returns how many elements were done (0: use the slow path).
/// Faults never happen here: anything that could fault is left to the slow path.
fn fast_run<const K: u8>(
    cpu: &mut Cpu,
    op: &Op,
    bus: &mut dyn CpuBus,
    max: u64,
) -> Result<u64, Exit> {
    let size = op.osize as u64;
    let am = size_mask(op.asize);
    let di = cpu.regs[7] & am;
    let user = cpu.user_access();
    let mut n = max;
    // Destination: ES:rDI.
    let Ok(dlin) = cpu.seg_lin(sreg::ES, di, op.osize, Access::Write) else {
        return Ok(0);
    };
    n = n.min(in_page(dlin, size));
    // The run must not wrap the offset and must stay inside the limit: check its last element.
    if n == 0
        || di + n * size - 1 > am
        || cpu
            .seg_lin(sreg::ES, di + (n - 1) * size, op.osize, Access::Write)
            .is_err()
    {
        return Ok(0);
    }
    let Ok(dpa) = cpu.translate(bus, dlin, Access::Write, user) else {
        return Ok(0);
    };
    if !cpu.mem.is_ram(dpa) || cpu.cache.is_code_page(dpa >> 12) {
        return Ok(0);
    }
    if K == kind::STOS {
        let v = cpu.reg(0, op.osize);
        let bytes = v.to_le_bytes();
        let elem = &bytes[..size as usize];
        let len = (n * size) as usize;
        let d = dpa as usize;
        // The run lies in one RAM page: fill it as a slice.
        match cpu.mem.as_mut_slice().get_mut(d..d + len) {
            Some(dst) => {
                for chunk in dst.chunks_exact_mut(elem.len()) {
                    chunk.copy_from_slice(elem);
                }
            }
            None => {
                for i in 0..n {
                    cpu.mem.store(dpa + i * size, op.osize, v);
                }
            }
        }
        cpu.set_reg(7, op.asize, (di + n * size) & am);
        return Ok(n);
    }
    // Source: seg:rSI.
    let si = cpu.regs[6] & am;
    let seg = op.seg as usize;
    let Ok(slin) = cpu.seg_lin(seg, si, op.osize, Access::Read) else {
        return Ok(0);
    };
    n = n.min(in_page(slin, size));
    if n == 0
        || si + n * size - 1 > am
        || cpu
            .seg_lin(seg, si + (n - 1) * size, op.osize, Access::Read)
            .is_err()
    {
        return Ok(0);
    }
    let Ok(spa) = cpu.translate(bus, slin, Access::Read, user) else {
        return Ok(0);
    };
    if !cpu.mem.is_backed(spa) {
        return Ok(0);
    }
    let len = n * size;
    let total = cpu.mem.as_slice().len() as u64;
    // Element by element, a forward copy onto an overlapping higher destination repeats the
    // source pattern; any other layout is what a block move produces.
    let replicates = dpa > spa && dpa < spa + len;
    if !replicates && spa + len <= total && dpa + len <= total {
        let (s0, d0) = (spa as usize, dpa as usize);
        cpu.mem
            .as_mut_slice()
            .copy_within(s0..s0 + len as usize, d0);
    } else {
        for i in 0..n {
            let v = cpu.mem.load(spa + i * size, op.osize);
            cpu.mem.store(dpa + i * size, op.osize, v);
        }
    }
    cpu.set_reg(6, op.asize, (si + n * size) & am);
    cpu.set_reg(7, op.asize, (di + n * size) & am);
    Ok(n)
}
