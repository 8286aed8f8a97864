//! Bit instructions: BT/BTS/BTR/BTC, BSF/BSR, BOUND.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Op, loc};
use crate::exception::{ExecResult, Fault};
use crate::exec::arith::sext;
use crate::flags::size_mask;
use crate::state::flag;

/// BT/BTS/BTR/BTC (aux 0/1/2/3). With a register bit offset and a memory operand the offset is
/// signed and selects any bit relative to the operand's address.
pub fn bt(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let bits = size as u64 * 8;
    let raw = if op.src == loc::IMM {
        op.imm
    } else {
        cpu.reg(op.src, size)
    };
    let (val, bit, addr) = if op.dst == loc::MEM {
        let base = cpu.ea(op);
        let (byte_off, bit) = if op.src == loc::IMM {
            (0i64, raw % bits)
        } else {
            let s = sext(raw, size);
            (
                s.div_euclid(bits as i64) * size as i64,
                s.rem_euclid(bits as i64) as u64,
            )
        };
        let a = base.wrapping_add(byte_off as u64) & size_mask(op.asize);
        let v = if op.aux != 0 {
            cpu.read_mem_rmw(bus, op.seg as usize, a, size)?
        } else {
            cpu.read_mem(bus, op.seg as usize, a, size)?
        };
        (v, bit, Some(a))
    } else {
        (cpu.reg(op.dst, size), raw % bits, None)
    };
    let cf = (val >> bit) & 1 != 0;
    let new = match op.aux {
        1 => val | (1 << bit),
        2 => val & !(1 << bit),
        3 => val ^ (1 << bit),
        _ => val,
    };
    if op.aux != 0 {
        match addr {
            Some(a) => cpu.write_mem(bus, op.seg as usize, a, size, new)?,
            None => cpu.set_reg(op.dst, size, new),
        }
    }
    cpu.set_flag(flag::CF, cf);
    Ok(())
}

/// BSF (aux 0) / BSR (aux 1): ZF = source was zero (destination unchanged then).
pub fn bsf_bsr(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.rd(bus, op, op.src)?;
    let f = cpu.rflags() & flag::ARITH & !flag::ZF;
    if v == 0 {
        cpu.set_arith_flags(f | flag::ZF);
        return Ok(());
    }
    let r = if op.aux == 0 {
        v.trailing_zeros() as u64
    } else {
        63 - v.leading_zeros() as u64
    };
    cpu.set_reg(op.dst, op.osize, r);
    cpu.set_arith_flags(f);
    Ok(())
}

/// BOUND r, m: #BR unless lower <= r <= upper (signed). The register form is #UD.
pub fn bound(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    if op.src != loc::MEM {
        return Err(Fault::ud().into());
    }
    let size = op.osize;
    let ea = cpu.ea(op);
    // Both bounds are read before either is compared, so a bound pair that runs into an
    // unmapped page is #PF even when the readable lower bound alone shows the index out of
    // range. Neither manual orders #BR against a data #PF (both are faults of the executing
    // instruction, whose order within that class the Intel SDM calls implementation-dependent);
    // AMD's Zen 3 behaves like this, Intel's family 6 model 0xA7 raises #BR from the lower bound
    // first (HOST_DIFF.md, "Intel vs AMD hosts").
    let lo = sext(cpu.read_mem(bus, op.seg as usize, ea, size)?, size);
    let hi_ea = (ea + size as u64) & size_mask(op.asize);
    let hi = sext(cpu.read_mem(bus, op.seg as usize, hi_ea, size)?, size);
    let r = sext(cpu.reg(op.dst, size), size);
    if r < lo || r > hi {
        return Err(Fault::new(crate::exception::vector::BR).into());
    }
    Ok(())
}
