//! ADD/ADC/SUB/SBB/CMP, INC/DEC/NEG, MUL/IMUL/DIV/IDIV, CBW/CWD family.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::Op;
use crate::exception::{ExecResult, Fault};
use crate::flags::{FlagOp, size_mask, szp};
use crate::state::flag;

/// ALU operation numbers (the reg field of opcodes 80-83), used as the const parameter of [`alu`].
pub mod kind {
    pub const ADD: u8 = 0;
    pub const OR: u8 = 1;
    pub const ADC: u8 = 2;
    pub const SBB: u8 = 3;
    pub const AND: u8 = 4;
    pub const SUB: u8 = 5;
    pub const XOR: u8 = 6;
    pub const CMP: u8 = 7;
    pub const TEST: u8 = 8;
}

/// The eight classic two-operand ALU instructions plus TEST: `dst = dst OP src`.
pub fn alu<const K: u8>(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let a = if K == kind::CMP || K == kind::TEST {
        cpu.rd(bus, op, op.dst)?
    } else {
        cpu.rd_rmw(bus, op, op.dst)?
    };
    let b = cpu.rd(bus, op, op.src)?;
    let m = size_mask(size);
    let (res, fop) = match K {
        kind::ADD => (a.wrapping_add(b), FlagOp::Add),
        kind::ADC => {
            let c = cpu.flag(flag::CF) as u64;
            (
                a.wrapping_add(b).wrapping_add(c),
                if c != 0 { FlagOp::Adc1 } else { FlagOp::Add },
            )
        }
        kind::SUB | kind::CMP => (a.wrapping_sub(b), FlagOp::Sub),
        kind::SBB => {
            let c = cpu.flag(flag::CF) as u64;
            (
                a.wrapping_sub(b).wrapping_sub(c),
                if c != 0 { FlagOp::Sbb1 } else { FlagOp::Sub },
            )
        }
        kind::AND | kind::TEST => (a & b, FlagOp::Logic),
        kind::OR => (a | b, FlagOp::Logic),
        _ => (a ^ b, FlagOp::Logic),
    };
    let res = res & m;
    if K != kind::CMP && K != kind::TEST {
        cpu.wr(bus, op, op.dst, res)?;
    }
    cpu.set_lazy(fop, size, a, b, res);
    Ok(())
}

pub fn inc(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let a = cpu.rd_rmw(bus, op, op.dst)?;
    let res = a.wrapping_add(1) & size_mask(op.osize);
    cpu.wr(bus, op, op.dst, res)?;
    cpu.set_lazy(FlagOp::Inc, op.osize, a, 1, res);
    Ok(())
}

pub fn dec(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let a = cpu.rd_rmw(bus, op, op.dst)?;
    let res = a.wrapping_sub(1) & size_mask(op.osize);
    cpu.wr(bus, op, op.dst, res)?;
    cpu.set_lazy(FlagOp::Dec, op.osize, a, 1, res);
    Ok(())
}

pub fn neg(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let b = cpu.rd_rmw(bus, op, op.dst)?;
    let res = 0u64.wrapping_sub(b) & size_mask(op.osize);
    cpu.wr(bus, op, op.dst, res)?;
    cpu.set_lazy(FlagOp::Sub, op.osize, 0, b, res);
    Ok(())
}

/// Sign-extend the low `size` bytes of `v`.
#[inline]
pub fn sext(v: u64, size: u8) -> i64 {
    match size {
        1 => v as u8 as i8 as i64,
        2 => v as u16 as i16 as i64,
        4 => v as u32 as i32 as i64,
        _ => v as i64,
    }
}

/// Flags after a multiply: CF = OF = `overflow`; SF/ZF/PF from the low half (undefined by the
/// manuals; this is what recent Intel parts produce), AF cleared.
fn mul_flags(cpu: &mut Cpu, low: u64, size: u8, overflow: bool) {
    let mut f = szp(low, size);
    if overflow {
        f |= flag::CF | flag::OF;
    }
    cpu.set_arith_flags(f);
}

/// One-operand MUL: rDX:rAX = rAX * src (AX = AL * src for bytes).
pub fn mul1(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let src = cpu.rd(bus, op, op.dst)? as u128;
    let a = cpu.reg(0, size) as u128;
    let bits = size as u32 * 8;
    let p = a * src;
    let lo = (p as u64) & size_mask(size);
    let hi = ((p >> bits) as u64) & size_mask(size);
    if size == 1 {
        cpu.set_reg(0, 2, p as u64);
    } else {
        cpu.set_reg(0, size, lo);
        cpu.set_reg(2, size, hi);
    }
    mul_flags(cpu, lo, size, hi != 0);
    Ok(())
}

/// One-operand IMUL.
pub fn imul1(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let src = sext(cpu.rd(bus, op, op.dst)?, size) as i128;
    let a = sext(cpu.reg(0, size), size) as i128;
    let bits = size as u32 * 8;
    let p = a * src;
    let lo = (p as u64) & size_mask(size);
    let hi = ((p >> bits) as u64) & size_mask(size);
    let overflow = sext(lo, size) as i128 != p;
    if size == 1 {
        cpu.set_reg(0, 2, p as u64);
    } else {
        cpu.set_reg(0, size, lo);
        cpu.set_reg(2, size, hi);
    }
    mul_flags(cpu, lo, size, overflow);
    Ok(())
}

/// Two- and three-operand IMUL: dst = src * (imm or dst), truncated.
pub fn imul_n(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let b = sext(cpu.rd(bus, op, op.src)?, size) as i128;
    // aux = 1: three-operand form, multiplier in imm; otherwise dst is the multiplier.
    let a = if op.aux == 1 {
        sext(op.imm, size) as i128
    } else {
        sext(cpu.reg(op.dst, size), size) as i128
    };
    let p = a * b;
    let lo = (p as u64) & size_mask(size);
    cpu.set_reg(op.dst, size, lo);
    mul_flags(cpu, lo, size, sext(lo, size) as i128 != p);
    Ok(())
}

/// One-operand DIV. #DE on division by zero or a quotient that does not fit.
pub fn div1(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let d = cpu.rd(bus, op, op.dst)? as u128;
    if d == 0 {
        return Err(Fault::de().into());
    }
    let bits = size as u32 * 8;
    let n: u128 = if size == 1 {
        cpu.reg(0, 2) as u128
    } else {
        ((cpu.reg(2, size) as u128) << bits) | cpu.reg(0, size) as u128
    };
    let q = n / d;
    let r = n % d;
    if q > size_mask(size) as u128 {
        return Err(Fault::de().into());
    }
    if size == 1 {
        cpu.set_reg(0, 1, q as u64);
        cpu.set_reg(16, 1, r as u64);
    } else {
        cpu.set_reg(0, size, q as u64);
        cpu.set_reg(2, size, r as u64);
    }
    Ok(())
}

/// One-operand IDIV (quotient truncated toward zero, remainder takes the dividend's sign).
pub fn idiv1(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let d = sext(cpu.rd(bus, op, op.dst)?, size) as i128;
    if d == 0 {
        return Err(Fault::de().into());
    }
    let bits = size as u32 * 8;
    let n: i128 = if size == 1 {
        cpu.reg(0, 2) as i16 as i128
    } else {
        let raw = ((cpu.reg(2, size) as u128) << bits) | cpu.reg(0, size) as u128;
        // Sign-extend the 2*bits-wide dividend.
        ((raw << (128 - 2 * bits)) as i128) >> (128 - 2 * bits)
    };
    // i128::MIN / -1 cannot occur: n has at most 128 bits only for 64-bit operands, and then
    // the check below rejects the out-of-range quotient first via checked_div.
    let Some(q) = n.checked_div(d) else {
        return Err(Fault::de().into());
    };
    let r = n - q * d;
    let max = (1i128 << (bits - 1)) - 1;
    let min = -(1i128 << (bits - 1));
    if q > max || q < min {
        return Err(Fault::de().into());
    }
    if size == 1 {
        cpu.set_reg(0, 1, q as u64);
        cpu.set_reg(16, 1, r as u64);
    } else {
        cpu.set_reg(0, size, q as u64);
        cpu.set_reg(2, size, r as u64);
    }
    Ok(())
}

/// CBW/CWDE/CDQE: sign-extend the low half of rAX into rAX (osize = destination size).
pub fn cbw(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let half = op.osize / 2;
    let v = sext(cpu.reg(0, half), half) as u64;
    cpu.set_reg(0, op.osize, v);
    Ok(())
}

/// CWD/CDQ/CQO: rDX = sign of rAX.
pub fn cwd(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let v = sext(cpu.reg(0, op.osize), op.osize);
    cpu.set_reg(2, op.osize, if v < 0 { u64::MAX } else { 0 });
    Ok(())
}
