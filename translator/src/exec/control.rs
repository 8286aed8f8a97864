//! Control transfers: JMP/Jcc/JCXZ/LOOP, CALL/RET (near and far), INT n/INT3/INTO/INT1, IRET,
//! HLT. Branch targets are checked against the CS limit before RIP changes.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{JCC_GOES_ON, Op, loc};
use crate::exception::{ExecResult, Exit, Fault, vector};
use crate::flags::size_mask;
use crate::state::{flag, sreg};

impl Cpu {
    /// Jump to `target` (an offset in CS, truncated to the operand size). #GP(0) beyond the CS
    /// limit (outside 64-bit mode) or a non-canonical target (in it).
    #[inline]
    pub(crate) fn near_jump(&mut self, target: u64, osize: u8) -> ExecResult {
        let t = target & size_mask(osize);
        if self.long64() {
            let top = (t as i64) >> 47;
            if top != 0 && top != -1 {
                return Err(Fault::gp(0).into());
            }
        } else if t > self.segs[sreg::CS].limit as u64 {
            return Err(Fault::gp(0).into());
        }
        self.rip = t;
        Ok(())
    }

    /// A taken Jcc that its block goes on past (`JCC_GOES_ON`) ends the block here.
    #[inline]
    pub(crate) fn take_side_exit(&mut self, op: &Op) {
        if op.imm2 == JCC_GOES_ON {
            self.block_break = true;
            self.side_exit = true;
        }
    }
}

/// JMP rel: imm holds the offset from the next instruction.
pub fn jmp_rel(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let t = cpu.rip.wrapping_add(op.imm);
    cpu.near_jump(t, op.osize)
}

/// Jcc rel (aux = condition).
pub fn jcc(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    if cpu.cond(op.aux) {
        let t = cpu.rip.wrapping_add(op.imm);
        cpu.near_jump(t, op.osize)?;
        cpu.take_side_exit(op);
        Ok(())
    } else {
        Ok(())
    }
}

/// JMP r/m (near indirect).
pub fn jmp_ind(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let t = cpu.rd(bus, op, op.src)?;
    cpu.near_jump(t, op.osize)
}

/// CALL rel.
pub fn call_rel(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let ret = cpu.rip;
    let t = ret.wrapping_add(op.imm) & size_mask(op.osize);
    check_target(cpu, t)?;
    cpu.push(bus, op.osize, ret)?;
    cpu.rip = t;
    Ok(())
}

/// CALL r/m (near indirect).
pub fn call_ind(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let ret = cpu.rip;
    let t = cpu.rd(bus, op, op.src)? & size_mask(op.osize);
    check_target(cpu, t)?;
    cpu.push(bus, op.osize, ret)?;
    cpu.rip = t;
    Ok(())
}

fn check_target(cpu: &Cpu, t: u64) -> Result<(), Exit> {
    if !cpu.long64() && t > cpu.segs[sreg::CS].limit as u64 {
        return Err(Fault::gp(0).into());
    }
    Ok(())
}

/// RET / RET imm16 (imm = bytes to release).
pub fn ret_near(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let t = cpu.peek(bus, 0, op.osize)?;
    check_target(cpu, t)?;
    let sp = cpu
        .sp()
        .wrapping_add(op.osize as u64)
        .wrapping_add(op.imm & 0xFFFF);
    cpu.set_sp(sp);
    cpu.rip = t;
    Ok(())
}

/// JMP ptr16:16/32 (imm = offset, imm2 = selector).
pub fn jmp_far_ptr(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    cpu.far_jump(bus, op.imm2 as u16, op.imm, op.osize)
}

/// JMP m16:16/32. The register form is #UD.
pub fn jmp_far_mem(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let (sel, off) = far_ptr_operand(cpu, op, bus)?;
    cpu.far_jump(bus, sel, off, op.osize)
}

/// CALL ptr16:16/32.
pub fn call_far_ptr(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    cpu.far_call(bus, op.imm2 as u16, op.imm, op.osize)
}

/// CALL m16:16/32.
pub fn call_far_mem(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let (sel, off) = far_ptr_operand(cpu, op, bus)?;
    cpu.far_call(bus, sel, off, op.osize)
}

fn far_ptr_operand(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> Result<(u16, u64), Exit> {
    if op.src != loc::MEM {
        return Err(Fault::ud().into());
    }
    let ea = cpu.ea(op);
    let off = cpu.read_mem(bus, op.seg as usize, ea, op.osize)?;
    let sel_ea = (ea + op.osize as u64) & size_mask(op.asize);
    let sel = cpu.read_mem(bus, op.seg as usize, sel_ea, 2)? as u16;
    Ok((sel, off))
}

/// RETF / RETF imm16.
pub fn ret_far(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    cpu.far_return(bus, op.osize, op.imm & 0xFFFF)
}

/// INT imm8.
pub fn int_n(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = op.imm as u8;
    if cpu.rflags & flag::VM != 0 && (cpu.rflags & flag::IOPL) != flag::IOPL {
        return Err(Fault::gp(0).into());
    }
    cpu.software_interrupt(bus, v)
}

/// INT3 (the one-byte breakpoint; not IOPL-sensitive in v8086 mode).
pub fn int3(cpu: &mut Cpu, _op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    cpu.software_interrupt(bus, vector::BP)
}

/// INT1 / ICEBP: a #DB trap.
pub fn int1(cpu: &mut Cpu, _op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    cpu.deliver(bus, vector::DB, None, false)
        .map_err(Exit::Fault)
}

/// INTO: INT 4 if OF.
pub fn into(cpu: &mut Cpu, _op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    if cpu.flag(flag::OF) {
        cpu.software_interrupt(bus, vector::OF)
    } else {
        Ok(())
    }
}

/// IRET/IRETD/IRETQ.
pub fn iret(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    cpu.iret(bus, op.osize)
}

/// LOOP/LOOPE/LOOPNE (aux 0/1/2), counter size = address size.
pub fn loop_(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let cs = op.asize;
    let c = cpu.reg(1, cs).wrapping_sub(1) & size_mask(cs);
    let take = c != 0
        && match op.aux {
            1 => cpu.flag(flag::ZF),
            2 => !cpu.flag(flag::ZF),
            _ => true,
        };
    if take {
        let t = cpu.rip.wrapping_add(op.imm);
        check_target(cpu, t & size_mask(op.osize))?;
        cpu.set_reg(1, cs, c);
        cpu.rip = t & size_mask(op.osize);
    } else {
        cpu.set_reg(1, cs, c);
    }
    Ok(())
}

/// JCXZ/JECXZ/JRCXZ.
pub fn jcxz(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    if cpu.reg(1, op.asize) == 0 {
        let t = cpu.rip.wrapping_add(op.imm);
        cpu.near_jump(t, op.osize)
    } else {
        Ok(())
    }
}

/// HLT: privileged; hands control back to the board until an interrupt arrives.
pub fn hlt(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    if cpu.protected() && cpu.cpl != 0 {
        return Err(Fault::gp(0).into());
    }
    cpu.halted = true;
    Err(Exit::Halt)
}
