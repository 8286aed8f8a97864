//! Flag instructions: CLC/STC/CMC/CLD/STD/CLI/STI, LAHF/SAHF, SALC, PUSHF/POPF (in stack.rs).

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::Op;
use crate::exception::{ExecResult, Fault};
use crate::state::flag;

pub fn clc(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    cpu.set_flag(flag::CF, false);
    Ok(())
}
pub fn stc(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    cpu.set_flag(flag::CF, true);
    Ok(())
}
pub fn cmc(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let c = cpu.flag(flag::CF);
    cpu.set_flag(flag::CF, !c);
    Ok(())
}
pub fn cld(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    cpu.set_flag(flag::DF, false);
    Ok(())
}
pub fn std(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    cpu.set_flag(flag::DF, true);
    Ok(())
}

/// IOPL check for CLI/STI: in protected mode CPL must be <= IOPL; in v8086 mode IOPL must be 3
/// (VME's virtual interrupt flag is not implemented, so CR4.VME is reported absent in CPUID).
fn if_allowed(cpu: &Cpu) -> bool {
    if !cpu.protected() {
        return true;
    }
    let iopl = ((cpu.rflags & flag::IOPL) >> 12) as u8;
    if cpu.rflags & flag::VM != 0 {
        return iopl == 3;
    }
    cpu.cpl <= iopl
}

pub fn cli(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    if !if_allowed(cpu) {
        return Err(Fault::gp(0).into());
    }
    cpu.set_flag(flag::IF, false);
    Ok(())
}

/// STI: interrupts stay blocked until after the next instruction (the block ends here so the
/// run loop can apply the shadow).
pub fn sti(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    if !if_allowed(cpu) {
        return Err(Fault::gp(0).into());
    }
    if cpu.rflags & flag::IF == 0 {
        cpu.irq_shadow = true;
    }
    cpu.set_flag(flag::IF, true);
    cpu.block_break = true;
    Ok(())
}

/// LAHF: AH = SF:ZF:0:AF:0:PF:1:CF.
pub fn lahf(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let f = cpu.rflags() & 0xD7;
    cpu.set_reg(16, 1, f | 2);
    Ok(())
}

/// SAHF: SF, ZF, AF, PF, CF = AH.
pub fn sahf(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let ah = cpu.reg(16, 1);
    let f = cpu.rflags();
    cpu.set_arith_flags((f & flag::OF) | (ah & 0xD5));
    Ok(())
}

/// SALC (undocumented D6): AL = CF ? FF : 00.
pub fn salc(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let c = cpu.flag(flag::CF);
    cpu.set_reg(0, 1, if c { 0xFF } else { 0 });
    Ok(())
}
