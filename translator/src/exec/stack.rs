//! Stack: PUSH/POP (registers, memory, immediates, segment registers), PUSHA/POPA, PUSHF/POPF,
//! ENTER/LEAVE, and the push/pop primitives every other family uses.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::Op;
use crate::exception::{ExecResult, Exit, Fault};
use crate::flags::size_mask;
use crate::state::{flag, sreg};

impl Cpu {
    /// Stack address size in bytes: 8 in 64-bit mode, else SS.B selects 4 or 2.
    #[inline]
    pub(crate) fn stack_size(&self) -> u8 {
        if self.long64() {
            8
        } else if self.protected() && self.segs[sreg::SS].big() {
            4
        } else {
            2
        }
    }

    #[inline]
    pub(crate) fn sp(&self) -> u64 {
        self.regs[4] & size_mask(self.stack_size())
    }

    /// Set the stack pointer, touching only the bits of the stack size.
    #[inline]
    pub(crate) fn set_sp(&mut self, v: u64) {
        let s = self.stack_size();
        self.set_reg(4, s, v);
    }

    /// Push `size` bytes. SP changes only after the write succeeded.
    pub fn push(&mut self, bus: &mut dyn CpuBus, size: u8, v: u64) -> Result<(), Exit> {
        let sp = self.sp().wrapping_sub(size as u64) & size_mask(self.stack_size());
        self.write_mem(bus, sreg::SS, sp, size, v)?;
        self.set_sp(sp);
        Ok(())
    }

    /// Pop `size` bytes. SP changes only after the read succeeded.
    pub fn pop(&mut self, bus: &mut dyn CpuBus, size: u8) -> Result<u64, Exit> {
        let sp = self.sp();
        let v = self.read_mem(bus, sreg::SS, sp, size)?;
        self.set_sp(sp.wrapping_add(size as u64));
        Ok(v)
    }

    /// Read the stack at SP + `off` without popping.
    pub(crate) fn peek(&mut self, bus: &mut dyn CpuBus, off: u64, size: u8) -> Result<u64, Exit> {
        let a = self.sp().wrapping_add(off) & size_mask(self.stack_size());
        self.read_mem(bus, sreg::SS, a, size)
    }
}

/// PUSH r/m, PUSH imm, PUSH r. PUSH SP pushes the value before the decrement (286 and later).
pub fn push(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.rd(bus, op, op.src)?;
    cpu.push(bus, op.osize, v)
}

/// POP r/m. A memory destination that uses SP as its base sees SP after the increment.
pub fn pop(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.pop(bus, op.osize)?;
    cpu.wr(bus, op, op.dst, v)
}

/// PUSH Sreg (aux = segment register). With a 32-bit operand size only the low 16 bits are
/// written (P6 and later), but SP moves by 4.
pub fn push_sreg(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.segs[op.aux as usize].selector as u64;
    if op.osize == 2 {
        return cpu.push(bus, 2, v);
    }
    let sp = cpu.sp().wrapping_sub(op.osize as u64) & size_mask(cpu.stack_size());
    cpu.probe_write(bus, sreg::SS, sp, op.osize)?;
    cpu.write_mem(bus, sreg::SS, sp, 2, v)?;
    cpu.set_sp(sp);
    Ok(())
}

/// POP Sreg. POP SS inhibits interrupts for one instruction.
pub fn pop_sreg(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let s = op.aux as usize;
    let sp = cpu.sp();
    let v = cpu.read_mem(bus, sreg::SS, sp, op.osize)? as u16;
    cpu.load_seg(bus, s, v)?;
    cpu.set_sp(sp.wrapping_add(op.osize as u64));
    if s == sreg::SS {
        cpu.irq_shadow = true;
        cpu.block_break = true;
    }
    Ok(())
}

/// PUSHA/PUSHAD: AX, CX, DX, BX, original SP, BP, SI, DI.
pub fn pusha(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let orig_sp = cpu.reg(4, size);
    let sm = size_mask(cpu.stack_size());
    let mut sp = cpu.sp();
    for r in 0..8u8 {
        let v = if r == 4 { orig_sp } else { cpu.reg(r, size) };
        sp = sp.wrapping_sub(size as u64) & sm;
        cpu.write_mem(bus, sreg::SS, sp, size, v)?;
    }
    cpu.set_sp(sp);
    Ok(())
}

/// POPA/POPAD: the saved SP is skipped.
pub fn popa(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let sm = size_mask(cpu.stack_size());
    let sp0 = cpu.sp();
    let mut vals = [0u64; 8];
    for (i, v) in vals.iter_mut().enumerate() {
        let a = sp0.wrapping_add(i as u64 * size as u64) & sm;
        *v = cpu.read_mem(bus, sreg::SS, a, size)?;
    }
    for (i, &v) in vals.iter().enumerate() {
        let r = 7 - i as u8;
        if r != 4 {
            cpu.set_reg(r, size, v);
        }
    }
    cpu.set_sp(sp0.wrapping_add(8 * size as u64));
    Ok(())
}

/// PUSHF/PUSHFD/PUSHFQ. VM and RF are stored as 0. In v8086 mode with IOPL < 3: #GP(0).
pub fn pushf(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let f = cpu.rflags();
    if f & flag::VM != 0 && (f & flag::IOPL) != flag::IOPL {
        return Err(Fault::gp(0).into());
    }
    cpu.push(bus, op.osize, f & !(flag::VM | flag::RF))
}

/// POPF/POPFD/POPFQ with the privilege rules: IOPL changes only at CPL 0, IF only when
/// CPL <= IOPL; VM, VIP, VIF never change; RF is cleared.
pub fn popf(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let old = cpu.rflags();
    let v8086 = old & flag::VM != 0;
    if v8086 && (old & flag::IOPL) != flag::IOPL {
        return Err(Fault::gp(0).into());
    }
    let v = cpu.pop(bus, op.osize)?;
    let mut changeable =
        flag::ARITH | flag::TF | flag::DF | flag::NT | flag::AC | flag::ID | flag::IF | flag::IOPL;
    if cpu.protected() {
        let iopl = ((old & flag::IOPL) >> 12) as u8;
        if v8086 || cpu.cpl > 0 {
            changeable &= !flag::IOPL;
        }
        if !v8086 && cpu.cpl > iopl {
            changeable &= !flag::IF;
        }
    }
    if op.osize == 2 {
        changeable &= 0xFFFF;
    }
    let new = (old & !changeable) | (v & changeable);
    cpu.set_rflags(new & !flag::RF);
    // IF or TF may have changed: let the run loop look at interrupts again.
    cpu.block_break = true;
    Ok(())
}

/// ENTER imm16, imm8.
pub fn enter(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let alloc = op.imm & 0xFFFF;
    let level = (op.imm2 & 0x1F) as u64;
    let ss = cpu.stack_size();
    let sm = size_mask(ss);
    let mut sp = cpu.sp();
    let bp = cpu.reg(5, ss);
    sp = sp.wrapping_sub(size as u64) & sm;
    cpu.write_mem(bus, sreg::SS, sp, size, cpu.reg(5, size))?;
    let frame = sp;
    if level > 0 {
        let mut b = bp;
        for _ in 1..level {
            b = b.wrapping_sub(size as u64) & sm;
            let v = cpu.read_mem(bus, sreg::SS, b, size)?;
            sp = sp.wrapping_sub(size as u64) & sm;
            cpu.write_mem(bus, sreg::SS, sp, size, v)?;
        }
        sp = sp.wrapping_sub(size as u64) & sm;
        cpu.write_mem(bus, sreg::SS, sp, size, frame)?;
    }
    let new_sp = sp.wrapping_sub(alloc) & sm;
    // The final SP must be usable: touch the lowest byte of the allocation.
    if alloc != 0 {
        cpu.probe_write(bus, sreg::SS, new_sp, 1)?;
    }
    cpu.set_reg(5, size, frame);
    cpu.set_sp(new_sp);
    Ok(())
}

/// LEAVE: SP = BP; BP = pop.
pub fn leave(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let ss = cpu.stack_size();
    let bp = cpu.reg(5, ss);
    let v = cpu.read_mem(bus, sreg::SS, bp, op.osize)?;
    cpu.set_sp(bp.wrapping_add(op.osize as u64));
    cpu.set_reg(5, op.osize, v);
    Ok(())
}
