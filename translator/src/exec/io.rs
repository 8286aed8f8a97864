//! Port I/O: IN/OUT (INS/OUTS are in `string.rs`), with the protected-mode IOPL check and the
//! TSS I/O permission bitmap.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Op, loc};
use crate::exception::{ExecResult, Exit, Fault};
use crate::state::flag;

impl Cpu {
    /// May the current code access `size` ports from `port`? In protected mode with CPL > IOPL,
    /// and always in v8086 mode, the TSS I/O bitmap decides; a 16-bit TSS has none (#GP).
    pub(crate) fn check_io(
        &mut self,
        bus: &mut dyn CpuBus,
        port: u16,
        size: u8,
    ) -> Result<(), Exit> {
        if !self.protected() {
            return Ok(());
        }
        let iopl = ((self.rflags & flag::IOPL) >> 12) as u8;
        let v86 = self.rflags & flag::VM != 0;
        if !v86 && self.cpl <= iopl {
            return Ok(());
        }
        let ty = self.tr.attr & 0xF;
        if !(ty == 0x9 || ty == 0xB) || self.tr.limit < 0x67 {
            return Err(Fault::gp(0).into());
        }
        let map_base = self.read_sys(bus, self.tr.base + 0x66, 2)?;
        let byte = map_base + (port as u64 >> 3);
        if byte + 1 > self.tr.limit as u64 {
            return Err(Fault::gp(0).into());
        }
        let bits = self.read_sys(bus, self.tr.base + byte, 2)?;
        let mask = ((1u64 << size) - 1) << (port & 7);
        if bits & mask != 0 {
            return Err(Fault::gp(0).into());
        }
        Ok(())
    }
}

/// IN AL/AX/EAX, imm8 or DX (src = IMM or DX).
pub fn in_(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let port = if op.src == loc::IMM {
        op.imm as u16
    } else {
        cpu.reg(2, 2) as u16
    };
    cpu.check_io(bus, port, op.osize)?;
    let v = bus.io_read(port, op.osize) as u64;
    cpu.set_reg(0, op.osize, v);
    Ok(())
}

/// OUT imm8 or DX, AL/AX/EAX (dst = IMM or DX).
pub fn out(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let port = if op.dst == loc::IMM {
        op.imm as u16
    } else {
        cpu.reg(2, 2) as u16
    };
    cpu.check_io(bus, port, op.osize)?;
    let v = cpu.reg(0, op.osize);
    bus.io_write(port, op.osize, v as u32);
    Ok(())
}
