//! String instructions: MOVS, CMPS, STOS, LODS, SCAS, INS, OUTS, with REP/REPE/REPNE.
//!
//! A REP loop updates rCX/rSI/rDI after every element, so a fault mid-way leaves exactly the
//! state the hardware would (RIP at the instruction, the remaining count in rCX). Long loops
//! stop after a slice of iterations and re-execute the same instruction, so interrupts and the
//! instruction budget are honoured.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Op, pfx};
use crate::exception::ExecResult;
use crate::flags::{FlagOp, size_mask};
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
const REP_SLICE: u32 = 4096;

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
    let mut n = 0;
    loop {
        let c = cpu.reg(1, a);
        if c == 0 {
            return Ok(());
        }
        one::<K>(cpu, op, bus, step)?;
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
        if n >= REP_SLICE || cpu.smc_hit {
            // Run this instruction again later: back to its first byte.
            cpu.rip = cpu.rip.wrapping_sub(op.len as u64) & cpu.ip_mask();
            cpu.block_break = true;
            return Ok(());
        }
    }
}
