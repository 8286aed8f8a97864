//! x87 FPU — a first slice: the register stack, control/status/tag words, FNINIT, FNSTSW,
//! FNSTCW, FLDCW, FLD/FSTP of m32/m64/ST(i), FLD1/FLDZ and the D8 arithmetic group (FADD, FMUL,
//! FCOM, FCOMP, FSUB, FSUBR, FDIV, FDIVR with m32 or ST(i)).
//!
//! Results are computed in f64, not 80-bit extended precision: programs that depend on the
//! extra 11 mantissa bits or on precision control see different last bits. Every other x87
//! opcode is #UD for now (so CPUID does not claim an FPU yet).

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Op, loc};
use crate::exception::{ExecResult, Exit, Fault};
use crate::state::cr0;

/// x87 state.
#[derive(Clone, Copy, Debug)]
pub struct Fpu {
    /// Physical registers R0-R7; ST(i) is `st[(top + i) & 7]`.
    pub st: [f64; 8],
    pub top: u8,
    pub cw: u16,
    /// Status word without TOP (bits 11-13 are filled in on read).
    pub sw: u16,
    /// Tag word: 2 bits per physical register, 11 = empty.
    pub tw: u16,
}

impl Default for Fpu {
    fn default() -> Self {
        // FNINIT state.
        Fpu {
            st: [0.0; 8],
            top: 0,
            cw: 0x037F,
            sw: 0,
            tw: 0xFFFF,
        }
    }
}

impl Fpu {
    pub fn status(&self) -> u16 {
        (self.sw & !0x3800) | ((self.top as u16 & 7) << 11)
    }
    fn phys(&self, i: u8) -> usize {
        ((self.top + i) & 7) as usize
    }
    fn get(&self, i: u8) -> f64 {
        self.st[self.phys(i)]
    }
    fn set(&mut self, i: u8, v: f64) {
        let p = self.phys(i);
        self.st[p] = v;
        self.tw &= !(3 << (p * 2));
    }
    fn push(&mut self, v: f64) {
        self.top = (self.top + 7) & 7;
        self.set(0, v);
    }
    fn pop(&mut self) {
        let p = self.phys(0);
        self.tw |= 3 << (p * 2);
        self.top = (self.top + 1) & 7;
    }
    /// FCOM condition codes: C3 C2 C0 = 000 (>), 001 (<), 100 (=), 111 (unordered).
    fn compare(&mut self, a: f64, b: f64) {
        let (c3, c2, c0) = if a.is_nan() || b.is_nan() {
            (true, true, true)
        } else if a < b {
            (false, false, true)
        } else if a == b {
            (true, false, false)
        } else {
            (false, false, false)
        };
        self.sw &= !(0x4000 | 0x0400 | 0x0100 | 0x0200);
        self.sw |= (c3 as u16) << 14 | (c2 as u16) << 10 | (c0 as u16) << 8;
    }
}

/// CR0.EM or CR0.TS: #NM before any x87 work.
fn check_nm(cpu: &Cpu) -> Result<(), Exit> {
    if cpu.cr0 & (cr0::EM | cr0::TS) != 0 {
        return Err(Fault::nm().into());
    }
    Ok(())
}

/// WAIT/FWAIT: #NM when CR0.MP and CR0.TS are both set.
pub fn fwait(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    if cpu.cr0 & cr0::MP != 0 && cpu.cr0 & cr0::TS != 0 {
        return Err(Fault::nm().into());
    }
    Ok(())
}

pub fn fninit(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    cpu.fpu = Fpu::default();
    Ok(())
}

/// FNSTSW AX or m16.
pub fn fnstsw(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let v = cpu.fpu.status() as u64;
    cpu.wr_sized(bus, op, op.dst, 2, v)
}

pub fn fnstcw(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let v = cpu.fpu.cw as u64;
    cpu.wr_sized(bus, op, op.dst, 2, v)
}

pub fn fldcw(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let v = cpu.rd_sized(bus, op, op.src, 2)?;
    cpu.fpu.cw = (v as u16) | 0x40;
    Ok(())
}

/// Read the source operand as f64: m32/m64 real (aux2 = memory size) or ST(i) (src = i).
fn load_src(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> Result<f64, Exit> {
    if op.src == loc::MEM {
        let ea = cpu.ea(op);
        let size = op.osize;
        let raw = cpu.read_mem(bus, op.seg as usize, ea, size)?;
        Ok(if size == 4 {
            f32::from_bits(raw as u32) as f64
        } else {
            f64::from_bits(raw)
        })
    } else {
        Ok(cpu.fpu.get(op.src))
    }
}

/// FLD m32/m64/ST(i).
pub fn fld(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let v = load_src(cpu, op, bus)?;
    cpu.fpu.push(v);
    Ok(())
}

/// FLD1 (aux 0) / FLDZ (aux 1).
pub fn fld_const(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    cpu.fpu.push(if op.aux == 0 { 1.0 } else { 0.0 });
    Ok(())
}

/// FST/FSTP m32/m64/ST(i) (aux 1 = pop).
pub fn fst(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let v = cpu.fpu.get(0);
    if op.dst == loc::MEM {
        let ea = cpu.ea(op);
        let raw = if op.osize == 4 {
            (v as f32).to_bits() as u64
        } else {
            v.to_bits()
        };
        cpu.write_mem(bus, op.seg as usize, ea, op.osize, raw)?;
    } else {
        cpu.fpu.set(op.dst, v);
    }
    if op.aux == 1 {
        cpu.fpu.pop();
    }
    Ok(())
}

/// The D8/DC arithmetic group (aux = reg field: FADD, FMUL, FCOM, FCOMP, FSUB, FSUBR, FDIV,
/// FDIVR). ST(0) op src → ST(0); with `imm2 = 1` the register form stores to ST(i) (DC).
pub fn farith(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let b = load_src(cpu, op, bus)?;
    let a = cpu.fpu.get(0);
    let r = match op.aux {
        0 => a + b,
        1 => a * b,
        2 | 3 => {
            cpu.fpu.compare(a, b);
            if op.aux == 3 {
                cpu.fpu.pop();
            }
            return Ok(());
        }
        4 => a - b,
        5 => b - a,
        6 => a / b,
        _ => b / a,
    };
    cpu.fpu.set(0, r);
    Ok(())
}
