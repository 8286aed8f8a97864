//! Data movement: MOV, MOVZX/MOVSX, XCHG, LEA, CMOVcc, SETcc, BSWAP, XADD, CMPXCHG(8B), XLAT,
//! MOV to/from segment registers, LDS/LES/LSS/LFS/LGS.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Op, loc};
use crate::exception::{ExecResult, Fault};
use crate::exec::arith::sext;
use crate::flags::{FlagOp, size_mask};
use crate::state::{flag, sreg};

pub fn mov(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.rd(bus, op, op.src)?;
    cpu.wr(bus, op, op.dst, v)
}

/// MOVZX: aux = source size.
pub fn movzx(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.rd_sized(bus, op, op.src, op.aux)?;
    cpu.set_reg(op.dst, op.osize, v);
    Ok(())
}

/// MOVSX/MOVSXD: aux = source size.
pub fn movsx(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.rd_sized(bus, op, op.src, op.aux)?;
    cpu.set_reg(op.dst, op.osize, sext(v, op.aux) as u64);
    Ok(())
}

/// XCHG: dst is a register or memory, src a register. Memory is written first so a fault leaves
/// the register untouched.
pub fn xchg(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let a = cpu.rd_rmw(bus, op, op.dst)?;
    let b = cpu.reg(op.src, op.osize);
    cpu.wr(bus, op, op.dst, b)?;
    cpu.set_reg(op.src, op.osize, a);
    Ok(())
}

pub fn lea(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let ea = cpu.ea(op);
    cpu.set_reg(op.dst, op.osize, ea);
    Ok(())
}

/// CMOVcc: the source is always read (and may fault); a 32-bit destination is zero-extended
/// even when the condition is false (64-bit mode semantics, invisible elsewhere).
pub fn cmov(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.rd(bus, op, op.src)?;
    if cpu.cond(op.aux) {
        cpu.set_reg(op.dst, op.osize, v);
    } else if op.osize == 4 {
        let cur = cpu.reg(op.dst, 4);
        cpu.set_reg(op.dst, 4, cur);
    }
    Ok(())
}

pub fn setcc(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let c = cpu.cond(op.aux) as u64;
    cpu.wr_sized(bus, op, op.dst, 1, c)
}

pub fn bswap(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.reg(op.dst, op.osize);
    let r = match op.osize {
        8 => v.swap_bytes(),
        4 => (v as u32).swap_bytes() as u64,
        // BSWAP of a 16-bit register is undefined; real CPUs clear it.
        _ => 0,
    };
    cpu.set_reg(op.dst, op.osize, r);
    Ok(())
}

pub fn xadd(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let a = cpu.rd_rmw(bus, op, op.dst)?;
    let b = cpu.reg(op.src, op.osize);
    let res = a.wrapping_add(b) & size_mask(op.osize);
    if op.dst == loc::MEM {
        cpu.wr(bus, op, op.dst, res)?;
        cpu.set_reg(op.src, op.osize, a);
    } else {
        // The sum is written last, so `xadd r,r` leaves r = 2r (SDM: TEMP = SRC + DEST;
        // SRC = DEST; DEST = TEMP).
        cpu.set_reg(op.src, op.osize, a);
        cpu.set_reg(op.dst, op.osize, res);
    }
    cpu.set_lazy(FlagOp::Add, op.osize, a, b, res);
    Ok(())
}

/// CMPXCHG: compare rAX with dst; equal → dst = src, else rAX = dst. The destination is always
/// written (the old value when unequal), as the hardware's locked cycle does.
pub fn cmpxchg(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let d = cpu.rd_rmw(bus, op, op.dst)?;
    let acc = cpu.reg(0, size);
    let res = acc.wrapping_sub(d) & size_mask(size);
    if acc == d {
        let s = cpu.reg(op.src, size);
        cpu.wr(bus, op, op.dst, s)?;
    } else {
        if op.dst == loc::MEM {
            cpu.wr(bus, op, op.dst, d)?;
        }
        cpu.set_reg(0, size, d);
    }
    cpu.set_lazy(FlagOp::Sub, size, acc, d, res);
    Ok(())
}

/// CMPXCHG8B m64: compare EDX:EAX with m64; equal → m64 = ECX:EBX, ZF=1; else EDX:EAX = m64.
pub fn cmpxchg8b(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    if op.dst != loc::MEM {
        return Err(Fault::ud().into());
    }
    let ea = cpu.ea(op);
    let seg = op.seg as usize;
    let m = cpu.read_mem_rmw(bus, seg, ea, 8)?;
    let cur = (cpu.reg(2, 4) << 32) | cpu.reg(0, 4);
    let eq = m == cur;
    if eq {
        let new = (cpu.reg(1, 4) << 32) | cpu.reg(3, 4);
        cpu.write_mem(bus, seg, ea, 8, new)?;
    } else {
        cpu.write_mem(bus, seg, ea, 8, m)?;
        cpu.set_reg(0, 4, m & 0xFFFF_FFFF);
        cpu.set_reg(2, 4, m >> 32);
    }
    cpu.set_flag(flag::ZF, eq);
    Ok(())
}

/// XLAT: AL = [seg:rBX + AL].
pub fn xlat(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let off = (cpu.regs[3].wrapping_add(cpu.reg(0, 1))) & size_mask(op.asize);
    let v = cpu.read_mem(bus, op.seg as usize, off, 1)?;
    cpu.set_reg(0, 1, v);
    Ok(())
}

/// MOV r/m16, Sreg (aux = segment register). A register destination with a 32-bit operand
/// size gets the selector zero-extended.
pub fn mov_from_sreg(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let v = cpu.segs[op.aux as usize].selector as u64;
    if op.dst == loc::MEM {
        cpu.wr_sized(bus, op, op.dst, 2, v)
    } else {
        cpu.set_reg(op.dst, op.osize.max(2), v);
        Ok(())
    }
}

/// MOV Sreg, r/m16. Loading CS this way is #UD; loading SS inhibits interrupts for one
/// instruction.
pub fn mov_to_sreg(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let s = op.aux as usize;
    if s == sreg::CS || s > sreg::GS {
        return Err(Fault::ud().into());
    }
    let v = cpu.rd_sized(bus, op, op.src, 2)? as u16;
    cpu.load_seg(bus, s, v)?;
    if s == sreg::SS {
        cpu.irq_shadow = true;
        cpu.block_break = true;
    }
    Ok(())
}

/// LDS/LES/LSS/LFS/LGS r, m16:16/32 (aux = segment register). The register form is #UD.
pub fn load_far_ptr(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    if op.src != loc::MEM {
        return Err(Fault::ud().into());
    }
    let ea = cpu.ea(op);
    let seg = op.seg as usize;
    let off = cpu.read_mem(bus, seg, ea, op.osize)?;
    let sel_off = (ea + op.osize as u64) & size_mask(op.asize);
    let sel = cpu.read_mem(bus, seg, sel_off, 2)? as u16;
    cpu.load_seg(bus, op.aux as usize, sel)?;
    cpu.set_reg(op.dst, op.osize, off);
    Ok(())
}
