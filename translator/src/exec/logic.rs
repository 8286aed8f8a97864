//! NOT. (AND/OR/XOR/TEST share the ALU handler in `arith.rs`: same operand forms, lazy flags
//! with `FlagOp::Logic`.)

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::Op;
use crate::exception::ExecResult;
use crate::flags::size_mask;

/// NOT: flags untouched.
pub fn not(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let a = cpu.rd_rmw(bus, op, op.dst)?;
    cpu.wr(bus, op, op.dst, !a & size_mask(op.osize))
}
