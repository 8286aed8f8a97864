//! Instruction handlers, one file per family. Every handler has the [`Handler`] signature; the
//! shared operand plumbing (effective addresses, reading and writing the operand locations the
//! decoder resolved) lives here.

pub mod arith;
pub mod bcd;
pub mod bits;
pub mod control;
pub mod far;
pub mod flags_ops;
pub mod io;
pub mod logic;
pub mod moves;
pub mod shift_rotate;
pub mod stack;
pub mod string;
pub mod system;
pub mod task;
pub mod x87;

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Op, loc};
use crate::exception::{ExecResult, Exit, Fault};
use crate::flags::size_mask;

/// Encodings the CPU does not implement (or that are invalid): #UD.
pub fn undefined(_cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    Err(Fault::ud().into())
}

/// An instruction longer than 15 bytes: #GP(0).
pub fn too_long(_cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    Err(Fault::gp(0).into())
}

/// Instructions that do nothing architecturally visible (NOP, hint NOPs, PAUSE, fences).
pub fn nop(_cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    Ok(())
}

impl Cpu {
    /// The effective address (offset within the segment) of the op's memory operand.
    #[inline]
    pub(crate) fn ea(&self, op: &Op) -> u64 {
        let mut a = op.disp;
        if op.base != loc::NO_REG {
            let b = if op.base == loc::RIP {
                self.rip
            } else {
                self.regs[op.base as usize & 15]
            };
            a = a.wrapping_add(b);
        }
        if op.index != loc::NO_REG {
            a = a.wrapping_add(self.regs[op.index as usize & 15] << op.scale);
        }
        a & size_mask(op.asize)
    }

    /// Read operand location `l` with the op's operand size.
    #[inline]
    pub(crate) fn rd(&mut self, bus: &mut dyn CpuBus, op: &Op, l: u8) -> Result<u64, Exit> {
        self.rd_sized(bus, op, l, op.osize)
    }

    #[inline]
    pub(crate) fn rd_sized(
        &mut self,
        bus: &mut dyn CpuBus,
        op: &Op,
        l: u8,
        size: u8,
    ) -> Result<u64, Exit> {
        match l {
            loc::MEM => {
                let ea = self.ea(op);
                self.read_mem(bus, op.seg as usize, ea, size)
            }
            loc::IMM => Ok(op.imm & size_mask(size)),
            r => Ok(self.reg(r, size)),
        }
    }

    /// Write operand location `l` with the op's operand size.
    #[inline]
    pub(crate) fn wr(&mut self, bus: &mut dyn CpuBus, op: &Op, l: u8, v: u64) -> ExecResult {
        self.wr_sized(bus, op, l, op.osize, v)
    }

    #[inline]
    pub(crate) fn wr_sized(
        &mut self,
        bus: &mut dyn CpuBus,
        op: &Op,
        l: u8,
        size: u8,
        v: u64,
    ) -> ExecResult {
        match l {
            loc::MEM => {
                let ea = self.ea(op);
                self.write_mem(bus, op.seg as usize, ea, size, v)
            }
            r => {
                self.set_reg(r, size, v);
                Ok(())
            }
        }
    }

    /// Evaluate condition code `cc` (0-15, the low nibble of Jcc/SETcc/CMOVcc).
    #[inline]
    pub(crate) fn cond(&mut self, cc: u8) -> bool {
        use crate::flags::{FlagOp, sign_bit};
        use crate::state::flag::*;
        // Fast paths: ZF and SF straight from the pending result.
        if self.lazy.op != FlagOp::None && matches!(cc >> 1, 2 | 4) {
            let res = self.lazy.res & size_mask(self.lazy.size);
            let r = if cc >> 1 == 2 {
                res == 0
            } else {
                res & sign_bit(self.lazy.size) != 0
            };
            return r ^ (cc & 1 != 0);
        }
        let f = self.rflags();
        let r = match cc >> 1 {
            0 => f & OF != 0,
            1 => f & CF != 0,
            2 => f & ZF != 0,
            3 => f & (CF | ZF) != 0,
            4 => f & SF != 0,
            5 => f & PF != 0,
            6 => (f & SF != 0) != (f & OF != 0),
            _ => f & ZF != 0 || ((f & SF != 0) != (f & OF != 0)),
        };
        r ^ (cc & 1 != 0)
    }
}
