//! Decimal adjust: DAA, DAS, AAA, AAS, AAM, AAD (SDM pseudo-code, 386+ semantics: AAA/AAS
//! adjust AX as a whole). All are #UD in 64-bit mode (the decoder sees to that).

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::Op;
use crate::exception::{ExecResult, Fault};
use crate::flags::szp;
use crate::state::flag;

pub fn daa(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let f0 = cpu.rflags();
    let old_al = cpu.reg(0, 1);
    let old_cf = f0 & flag::CF != 0;
    let mut al = old_al;
    let mut f = 0;
    if (al & 0xF) > 9 || f0 & flag::AF != 0 {
        al = (al + 6) & 0xFF;
        f |= flag::AF;
    }
    if old_al > 0x99 || old_cf {
        al = (al + 0x60) & 0xFF;
        f |= flag::CF;
    }
    cpu.set_reg(0, 1, al);
    cpu.set_arith_flags(f | szp(al, 1));
    Ok(())
}

pub fn das(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let f0 = cpu.rflags();
    let old_al = cpu.reg(0, 1);
    let old_cf = f0 & flag::CF != 0;
    let mut al = old_al;
    let mut f = 0;
    if (al & 0xF) > 9 || f0 & flag::AF != 0 {
        if al < 6 || old_cf {
            f |= flag::CF;
        }
        al = al.wrapping_sub(6) & 0xFF;
        f |= flag::AF;
    }
    if old_al > 0x99 || old_cf {
        al = al.wrapping_sub(0x60) & 0xFF;
        f |= flag::CF;
    }
    cpu.set_reg(0, 1, al);
    cpu.set_arith_flags(f | szp(al, 1));
    Ok(())
}

pub fn aaa(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let f0 = cpu.rflags();
    let mut ax = cpu.reg(0, 2);
    let mut f = f0 & (flag::SF | flag::ZF | flag::PF | flag::OF);
    if (ax & 0xF) > 9 || f0 & flag::AF != 0 {
        ax = ax.wrapping_add(0x106);
        f |= flag::AF | flag::CF;
    }
    ax &= 0xFF0F;
    cpu.set_reg(0, 2, ax);
    cpu.set_arith_flags(f);
    Ok(())
}

pub fn aas(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let f0 = cpu.rflags();
    let mut ax = cpu.reg(0, 2);
    let mut f = f0 & (flag::SF | flag::ZF | flag::PF | flag::OF);
    if (ax & 0xF) > 9 || f0 & flag::AF != 0 {
        ax = ax.wrapping_sub(6);
        ax = ax.wrapping_sub(0x100);
        f |= flag::AF | flag::CF;
    }
    ax &= 0xFF0F;
    cpu.set_reg(0, 2, ax);
    cpu.set_arith_flags(f);
    Ok(())
}

/// AAM imm8: AH = AL / imm, AL = AL % imm. #DE when imm is 0.
pub fn aam(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let base = op.imm & 0xFF;
    if base == 0 {
        return Err(Fault::de().into());
    }
    let al = cpu.reg(0, 1);
    let (q, r) = (al / base, al % base);
    cpu.set_reg(0, 2, (q << 8) | r);
    cpu.set_arith_flags(szp(r, 1));
    Ok(())
}

/// AAD imm8: AL = AL + AH * imm, AH = 0. Flags as for an 8-bit ADD of AL and AH*imm.
pub fn aad(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let base = op.imm & 0xFF;
    let al = cpu.reg(0, 1);
    let ah = cpu.reg(16, 1);
    let prod = (ah * base) & 0xFF;
    let res = (al + prod) & 0xFF;
    cpu.set_reg(0, 2, res);
    cpu.set_lazy(crate::flags::FlagOp::Add, 1, al, prod, res);
    Ok(())
}
