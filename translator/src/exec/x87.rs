//! x87 FPU: the register stack, control/status/tag words, loads and stores of every format
//! (m32/m64/m80 real, m16/m32/m64 integer, m80 BCD), arithmetic in all operand forms, compares
//! (FCOM/FUCOM/FICOM/FCOMI/FUCOMI/FTST/FXAM), FCMOVcc, the transcendental and rounding
//! instructions, FXCH/FFREE/FINCSTP/FDECSTP, and FNINIT/FNCLEX/FNSTSW/FNSTCW/FLDCW/FNSTENV/
//! FLDENV/FNSAVE/FRSTOR, FXSAVE/FXRSTOR.
//!
//! **Precision:** values are kept in f64, not 80-bit extended precision. Results therefore
//! carry 53 mantissa bits whatever the precision control says (they equal the hardware's at
//! PC = double), m80 loads round to 53 bits, and transcendental results come from the host's
//! libm. The rounding-control field is honoured by +, −, ×, ÷, √, FST m32/m64, FIST and
//! FRNDINT (directed rounding is derived from the exact error of the round-to-nearest result). Exceptions are always handled as if masked (the default
//! control word): invalid operations produce the indefinite NaN, stack faults set IE|SF, and
//! #MF/FERR# is never raised.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Handler, Op, loc};
use crate::exception::{ExecResult, Exit, Fault};
use crate::flags::size_mask;
use crate::state::{cr0, flag};
use iced_x86::{Code, Instruction, Mnemonic as M, OpKind, Register};

/// Status word bits.
pub mod sw {
    pub const IE: u16 = 1 << 0;
    pub const DE: u16 = 1 << 1;
    pub const ZE: u16 = 1 << 2;
    pub const OE: u16 = 1 << 3;
    pub const UE: u16 = 1 << 4;
    pub const PE: u16 = 1 << 5;
    pub const SF: u16 = 1 << 6;
    pub const ES: u16 = 1 << 7;
    pub const C0: u16 = 1 << 8;
    pub const C1: u16 = 1 << 9;
    pub const C2: u16 = 1 << 10;
    pub const C3: u16 = 1 << 14;
}

/// The indefinite QNaN that masked invalid operations produce.
const INDEFINITE: f64 = f64::from_bits(0xFFF8_0000_0000_0000);

/// x87 state.
#[derive(Clone, Copy, Debug)]
pub struct Fpu {
    /// Physical registers R0-R7; ST(i) is `st[(top + i) & 7]`.
    pub st: [f64; 8],
    pub top: u8,
    pub cw: u16,
    /// Status word without TOP (bits 11-13 are filled in on read).
    pub sw: u16,
    /// Tag word: 2 bits per physical register, 11 = empty (only empty/non-empty is tracked;
    /// FNSTENV computes the full tags from the values).
    pub tw: u16,
    /// MXCSR as FXSAVE/FXRSTOR see it. There is no SSE unit, so nothing reads it: it is a
    /// 32-bit store that keeps what FXRSTOR loaded (reset value 0x1F80, untouched by FNINIT),
    /// with FXRSTOR's #GP on bits outside [`MXCSR_MASK`] so software sees a consistent CPU.
    pub mxcsr: u32,
}

/// The MXCSR bits FXRSTOR accepts (reported in FXSAVE's MXCSR_MASK field): flags, masks,
/// rounding control and FZ as on the first SSE parts, no DAZ (bit 6) and no MM (AMD bit 17).
pub const MXCSR_MASK: u32 = 0x0000_FFBF;
/// MXCSR after reset.
pub const MXCSR_RESET: u32 = 0x1F80;

impl Default for Fpu {
    fn default() -> Self {
        // The FNINIT state.
        Fpu {
            st: [0.0; 8],
            top: 0,
            cw: 0x037F,
            sw: 0,
            tw: 0xFFFF,
            mxcsr: MXCSR_RESET,
        }
    }
}

impl Fpu {
    /// The state after FNINIT (or FNSAVE): control, status and tag words reset, every register
    /// tagged empty, but the registers' contents and MXCSR kept, as the hardware does (FXSAVE
    /// and FNSAVE show the old values in the empty slots).
    pub fn initialized(&self) -> Fpu {
        Fpu {
            st: self.st,
            mxcsr: self.mxcsr,
            ..Fpu::default()
        }
    }

    pub fn status(&self) -> u16 {
        (self.sw & !0x3800) | ((self.top as u16 & 7) << 11)
    }
    fn phys(&self, i: u8) -> usize {
        ((self.top + i) & 7) as usize
    }
    fn empty(&self, i: u8) -> bool {
        (self.tw >> (self.phys(i) * 2)) & 3 == 3
    }
    /// ST(i), or the indefinite NaN with a stack underflow flagged if it is empty.
    fn get(&mut self, i: u8) -> f64 {
        if self.empty(i) {
            self.sw |= sw::IE | sw::SF;
            self.sw &= !sw::C1;
            return INDEFINITE;
        }
        self.st[self.phys(i)]
    }
    fn set(&mut self, i: u8, v: f64) {
        let p = self.phys(i);
        self.st[p] = v;
        self.tw &= !(3 << (p * 2));
    }
    fn push(&mut self, v: f64) {
        let p = ((self.top + 7) & 7) as usize;
        if (self.tw >> (p * 2)) & 3 != 3 {
            // Stack overflow: the register is overwritten with the indefinite NaN.
            self.sw |= sw::IE | sw::SF | sw::C1;
            self.top = p as u8;
            self.set(0, INDEFINITE);
            return;
        }
        // C1 reports the overflow: cleared on a successful push.
        self.sw &= !sw::C1;
        self.top = p as u8;
        self.set(0, v);
    }
    fn pop(&mut self) {
        let p = self.phys(0);
        self.tw |= 3 << (p * 2);
        self.top = (self.top + 1) & 7;
    }
    fn set_cc(&mut self, c3: bool, c2: bool, c0: bool) {
        self.sw &= !(sw::C3 | sw::C2 | sw::C1 | sw::C0);
        self.sw |= (c3 as u16) << 14 | (c2 as u16) << 10 | (c0 as u16) << 8;
    }
    /// Tag of a value for FNSTENV: 00 valid, 01 zero, 10 special.
    fn full_tags(&self) -> u16 {
        let mut t = 0;
        for p in 0..8 {
            let tag = if (self.tw >> (p * 2)) & 3 == 3 {
                3
            } else {
                let v = self.st[p];
                if v == 0.0 {
                    1
                } else if !v.is_finite() {
                    // An f64 denormal is a normal number in the 80-bit format (tag valid).
                    2
                } else {
                    0
                }
            };
            t |= tag << (p * 2);
        }
        t
    }
    /// Round to an integer per the rounding-control field.
    fn round(&self, v: f64) -> f64 {
        match (self.cw >> 10) & 3 {
            0 => {
                let r = v.round();
                // Ties to even.
                if (v - v.trunc()).abs() == 0.5 {
                    2.0 * (v / 2.0).round()
                } else {
                    r
                }
            }
            1 => v.floor(),
            2 => v.ceil(),
            _ => v.trunc(),
        }
    }
}

/// The NaN an arithmetic operation with a NaN operand returns: the NaN operand, quieted; of two
/// NaNs the one with the larger significand (the positive one on a tie). The significands are
/// compared after quieting, so an SNaN can win over a QNaN (as this AMD host does).
fn nan_result(a: f64, b: f64) -> f64 {
    let quiet = |x: f64| f64::from_bits(x.to_bits() | (1 << 51));
    match (a.is_nan(), b.is_nan()) {
        (true, true) => {
            let (ma, mb) = (
                quiet(a).to_bits() & 0x000F_FFFF_FFFF_FFFF,
                quiet(b).to_bits() & 0x000F_FFFF_FFFF_FFFF,
            );
            if ma > mb || (ma == mb && !a.is_sign_negative()) {
                quiet(a)
            } else {
                quiet(b)
            }
        }
        (true, false) => quiet(a),
        _ => quiet(b),
    }
}

/// Unbiased binary exponent of a finite non-zero value as the 80-bit format holds it (f64
/// denormals are normal there).
fn x87_exponent(x: f64) -> i32 {
    let bits = x.to_bits();
    let e = ((bits >> 52) & 0x7FF) as i32;
    if e == 0 {
        let m = bits & 0x000F_FFFF_FFFF_FFFF;
        63 - m.leading_zeros() as i32 - 1074
    } else {
        e - 1023
    }
}

/// Adjust a round-to-nearest result `r` for rounding control `rc` (0 nearest, 1 down, 2 up,
/// 3 toward zero), given the sign of the exact error (exact value − r).
fn directed(r: f64, err: f64, rc: u16) -> f64 {
    if err == 0.0 || r.is_nan() || err.is_nan() {
        return r;
    }
    match rc {
        1 if err < 0.0 => r.next_down(),
        2 if err > 0.0 => r.next_up(),
        3 if r > 0.0 && err < 0.0 => r.next_down(),
        3 if r < 0.0 && err > 0.0 => r.next_up(),
        _ => r,
    }
}

/// Overflow to infinity under directed rounding stops at the largest finite value.
fn overflow(r: f64, rc: u16) -> f64 {
    match rc {
        1 if r == f64::INFINITY => f64::MAX,
        2 if r == f64::NEG_INFINITY => f64::MIN,
        3 if r.is_infinite() => f64::MAX.copysign(r),
        _ => r,
    }
}

/// a + b rounded per `rc`.
fn add_rc(a: f64, b: f64, rc: u16) -> f64 {
    let s = a + b;
    if rc == 0 {
        return s;
    }
    if s.is_infinite() && a.is_finite() && b.is_finite() {
        return overflow(s, rc);
    }
    if s == 0.0 {
        // Exact zero: −0 under round-down unless both operands are +0.
        let neg = if a == 0.0 && b == 0.0 {
            a.is_sign_negative() || b.is_sign_negative()
        } else {
            true
        };
        return if rc == 1 && neg {
            -0.0
        } else if a == 0.0 && b == 0.0 {
            s
        } else {
            0.0
        };
    }
    // TwoSum: the exact error of s.
    let bb = s - a;
    let err = (a - (s - bb)) + (b - bb);
    directed(s, err, rc)
}

fn mul_rc(a: f64, b: f64, rc: u16) -> f64 {
    let p = a * b;
    if rc == 0 {
        return p;
    }
    if p.is_infinite() && a.is_finite() && b.is_finite() {
        return overflow(p, rc);
    }
    directed(p, a.mul_add(b, -p), rc)
}

fn div_rc(a: f64, b: f64, rc: u16) -> f64 {
    let q = a / b;
    if rc == 0 || !q.is_finite() || !a.is_finite() || !b.is_finite() || b == 0.0 {
        return if q.is_infinite() && a.is_finite() && b.is_finite() && b != 0.0 {
            overflow(q, rc)
        } else {
            q
        };
    }
    // a − q·b, exactly; the exact quotient lies on the side of q given by rem / b.
    let rem = -q.mul_add(b, -a);
    directed(q, rem * b.signum(), rc)
}

fn sqrt_rc(a: f64, rc: u16) -> f64 {
    let r = a.sqrt();
    if rc == 0 || !r.is_finite() || r == 0.0 {
        return r;
    }
    directed(r, -r.mul_add(r, -a), rc)
}

/// f64 → f32 rounded per `rc`.
fn to_f32_rc(v: f64, rc: u16) -> f32 {
    let f = v as f32;
    if rc == 0 || !f.is_finite() || v.is_nan() {
        return f;
    }
    let err = v - f as f64;
    if err == 0.0 {
        return f;
    }
    match rc {
        1 if err < 0.0 => f.next_down(),
        2 if err > 0.0 => f.next_up(),
        3 if f > 0.0 && err < 0.0 => f.next_down(),
        3 if f < 0.0 && err > 0.0 => f.next_up(),
        _ => f,
    }
}

/// 80-bit extended → f64 (rounded to nearest).
pub fn f80_to_f64(mant: u64, se: u16) -> f64 {
    let neg = se & 0x8000 != 0;
    let e = (se & 0x7FFF) as i32;
    let v = if e == 0x7FFF {
        if mant << 1 == 0 {
            f64::INFINITY
        } else {
            // The quiet bit (62) maps to f64's bit 51, so a signalling NaN stays signalling
            // (FLD m80 quiets it and flags IE; FRSTOR/FXRSTOR keep it as it is). A payload
            // only in the 11 bits f64 cannot hold keeps the NaN a NaN.
            let frac = (mant >> 11) & 0x000F_FFFF_FFFF_FFFF;
            f64::from_bits(0x7FF0_0000_0000_0000 | if frac == 0 { 1 } else { frac })
        }
    } else if mant == 0 {
        0.0
    } else {
        // mant × 2^(e − 16383 − 63), scaled in steps so intermediates stay finite.
        let mut x = mant as f64;
        let mut k = e - 16383 - 63;
        while k > 1000 {
            x *= 2f64.powi(1000);
            k -= 1000;
        }
        while k < -1000 {
            x *= 2f64.powi(-1000);
            k += 1000;
        }
        x * 2f64.powi(k)
    };
    if neg { -v } else { v }
}

/// f64 → 80-bit extended (exact). Returns (mantissa, sign/exponent).
pub fn f64_to_f80(v: f64) -> (u64, u16) {
    let bits = v.to_bits();
    let sign = ((bits >> 63) as u16) << 15;
    let e = ((bits >> 52) & 0x7FF) as i32;
    let frac = bits & 0x000F_FFFF_FFFF_FFFF;
    if e == 0x7FF {
        let m = if frac == 0 {
            1u64 << 63
        } else {
            (1u64 << 63) | (frac << 11)
        };
        return (m, sign | 0x7FFF);
    }
    if e == 0 {
        if frac == 0 {
            return (0, sign);
        }
        let shift = frac.leading_zeros() - 11;
        let m = (frac << shift) << 11;
        let exp = 1 - 1023 - shift as i32 + 16383;
        return (m, sign | exp as u16);
    }
    (
        (1u64 << 63) | (frac << 11),
        sign | (e - 1023 + 16383) as u16,
    )
}

/// #NM when CR0.EM or CR0.TS is set.
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

// ---- memory operand helpers ----

fn read_f(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus, size: u8) -> Result<f64, Exit> {
    let ea = cpu.ea(op);
    let seg = op.seg as usize;
    Ok(match size {
        4 => f32::from_bits(cpu.read_mem(bus, seg, ea, 4)? as u32) as f64,
        8 => f64::from_bits(cpu.read_mem(bus, seg, ea, 8)?),
        _ => {
            let m = cpu.read_mem(bus, seg, ea, 8)?;
            let se = cpu.read_mem(bus, seg, (ea + 8) & size_mask(op.asize), 2)? as u16;
            f80_to_f64(m, se)
        }
    })
}

fn read_i(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus, size: u8) -> Result<f64, Exit> {
    let ea = cpu.ea(op);
    let v = cpu.read_mem(bus, op.seg as usize, ea, size)?;
    Ok(crate::exec::arith::sext(v, size) as f64)
}

/// The source operand of an arithmetic/compare op: ST(i) or memory (float or integer).
fn source(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> Result<f64, Exit> {
    if op.src == loc::MEM {
        if op.imm2 & INT_SRC != 0 {
            read_i(cpu, op, bus, op.osize)
        } else {
            read_f(cpu, op, bus, op.osize)
        }
    } else {
        Ok(cpu.fpu.get(op.src))
    }
}

/// `imm2` bits of x87 ops.
const POP: u32 = 1;
const INT_SRC: u32 = 2;
const POP2: u32 = 4;

// ---- handlers ----

pub fn fninit(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    cpu.fpu = cpu.fpu.initialized();
    Ok(())
}

pub fn fnclex(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    cpu.fpu.sw &= !0x80FF;
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
    cpu.fpu.cw = (v as u16 & 0x1F7F) | 0x40;
    Ok(())
}

/// FLD m32/m64/m80/ST(i).
pub fn fld(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let v = if op.src == loc::MEM {
        let v = read_f(cpu, op, bus, op.osize)?;
        // Converting an m32/m64 SNaN to the register format quiets it (IE); FLD m80 and
        // FLD ST(i) copy it unchanged.
        if op.osize != 10 && v.is_nan() && v.to_bits() & (1 << 51) == 0 {
            cpu.fpu.sw |= sw::IE;
            f64::from_bits(v.to_bits() | (1 << 51))
        } else {
            v
        }
    } else {
        cpu.fpu.get(op.src)
    };
    let underflow = op.src != loc::MEM && cpu.fpu.empty(op.src);
    cpu.fpu.push(v);
    if underflow {
        // An empty source wins over a full destination: C1 = 0 (underflow), not 1 (overflow).
        cpu.fpu.sw &= !sw::C1;
    }
    Ok(())
}

/// FILD m16/m32/m64.
pub fn fild(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let v = read_i(cpu, op, bus, op.osize)?;
    cpu.fpu.push(v);
    Ok(())
}

/// FBLD m80: 18 packed BCD digits and a sign byte.
pub fn fbld(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let ea = cpu.ea(op);
    let lo = cpu.read_mem(bus, op.seg as usize, ea, 8)?;
    let hi = cpu.read_mem(bus, op.seg as usize, (ea + 8) & size_mask(op.asize), 2)?;
    let mut v: u64 = 0;
    for i in (0..9).rev() {
        let byte = if i == 8 {
            hi & 0xFF
        } else {
            (lo >> (i * 8)) & 0xFF
        };
        v = v * 100 + (byte >> 4) * 10 + (byte & 0xF);
    }
    let f = v as f64;
    cpu.fpu.push(if hi & 0x8000 != 0 { -f } else { f });
    Ok(())
}

/// FLD1/FLDZ/FLDPI/FLDL2E/FLDL2T/FLDLG2/FLDLN2 (aux 0-6).
pub fn fld_const(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    use std::f64::consts::*;
    let v = [1.0, 0.0, PI, LOG2_E, LOG2_10, LOG10_2, LN_2][op.aux as usize % 7];
    cpu.fpu.push(v);
    Ok(())
}

/// FST/FSTP m32/m64/m80/ST(i) (imm2 POP).
pub fn fst(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let mut v = cpu.fpu.get(0);
    if op.dst == loc::MEM {
        let ea = cpu.ea(op);
        let seg = op.seg as usize;
        // A register SNaN (FLD m80, FRSTOR, FXRSTOR can load one) is quieted, with IE, when
        // converted to m32/m64.
        let snan = op.osize != 10 && v.is_nan() && v.to_bits() & (1 << 51) == 0;
        if snan {
            v = f64::from_bits(v.to_bits() | (1 << 51));
        }
        match op.osize {
            4 => cpu.write_mem(
                bus,
                seg,
                ea,
                4,
                to_f32_rc(v, (cpu.fpu.cw >> 10) & 3).to_bits() as u64,
            )?,
            8 => cpu.write_mem(bus, seg, ea, 8, v.to_bits())?,
            _ => {
                let (m, se) = f64_to_f80(v);
                cpu.probe_write(bus, seg, ea, 10)?;
                cpu.write_mem(bus, seg, ea, 8, m)?;
                cpu.write_mem(bus, seg, (ea + 8) & size_mask(op.asize), 2, se as u64)?;
            }
        }
        if snan {
            cpu.fpu.sw |= sw::IE;
        }
    } else {
        cpu.fpu.set(op.dst, v);
    }
    // C1 tells whether an inexact result was rounded up; this FPU does not track that (a
    // stack underflow clears it in `get` as well).
    cpu.fpu.sw &= !sw::C1;
    if op.imm2 & POP != 0 {
        cpu.fpu.pop();
    }
    Ok(())
}

/// FIST/FISTP m16/m32/m64: rounded per RC; out of range gives the integer indefinite.
pub fn fist(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let v = cpu.fpu.get(0);
    let r = cpu.fpu.round(v);
    let size = op.osize;
    let max = 2f64.powi(size as i32 * 8 - 1);
    let out = if r.is_nan() || r >= max || r < -max {
        cpu.fpu.sw |= sw::IE;
        1u64 << (size as u32 * 8 - 1)
    } else {
        if r != v {
            cpu.fpu.sw |= sw::PE;
        }
        (r as i64) as u64 & size_mask(size)
    };
    let ea = cpu.ea(op);
    cpu.write_mem(bus, op.seg as usize, ea, size, out)?;
    if op.imm2 & POP != 0 {
        cpu.fpu.pop();
    }
    Ok(())
}

/// FBSTP m80.
pub fn fbstp(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let v = cpu.fpu.get(0);
    let r = cpu.fpu.round(v);
    let ea = cpu.ea(op);
    let (lo, hi) = if r.is_nan() || r.abs() >= 1e18 {
        cpu.fpu.sw |= sw::IE;
        (0xC000_0000_0000_0000u64, 0xFFFFu64)
    } else {
        let mut n = r.abs() as u64;
        let mut lo = 0u64;
        let mut hi = 0u64;
        for i in 0..9 {
            let byte = ((n / 10 % 10) << 4) | (n % 10);
            n /= 100;
            if i == 8 {
                hi = byte
            } else {
                lo |= byte << (i * 8)
            }
        }
        if r.is_sign_negative() {
            hi |= 0x8000;
        }
        (lo, hi)
    };
    cpu.probe_write(bus, op.seg as usize, ea, 10)?;
    cpu.write_mem(bus, op.seg as usize, ea, 8, lo)?;
    cpu.write_mem(bus, op.seg as usize, (ea + 8) & size_mask(op.asize), 2, hi)?;
    cpu.fpu.pop();
    Ok(())
}

/// FADD/FMUL/FSUB/FSUBR/FDIV/FDIVR (aux 0,1,4,5,6,7) in every form: dst ST(op.dst) = dst OP src.
pub fn farith(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let underflow = (op.src != loc::MEM && cpu.fpu.empty(op.src)) || cpu.fpu.empty(op.dst);
    let b = source(cpu, op, bus)?;
    let a = cpu.fpu.get(op.dst);
    let rc = (cpu.fpu.cw >> 10) & 3;
    if underflow {
        // Masked stack underflow: the result is the indefinite, whatever the other operand.
        cpu.fpu.set(op.dst, INDEFINITE);
        if op.imm2 & POP != 0 {
            cpu.fpu.pop();
        }
        return Ok(());
    }
    // C1 = 1 would say an inexact result was rounded up, which is not tracked: exact results
    // (and every result of the host tests that compare C1) have C1 = 0.
    cpu.fpu.sw &= !sw::C1;
    if a.is_nan() || b.is_nan() {
        cpu.fpu.set(op.dst, nan_result(a, b));
        if op.imm2 & POP != 0 {
            cpu.fpu.pop();
        }
        return Ok(());
    }
    let r = match op.aux {
        0 => add_rc(a, b, rc),
        1 => mul_rc(a, b, rc),
        4 => add_rc(a, -b, rc),
        5 => add_rc(b, -a, rc),
        6 => div_rc(a, b, rc),
        _ => div_rc(b, a, rc),
    };
    let r = if r.is_nan() {
        // Invalid operation (∞ − ∞, 0 × ∞, 0/0, ∞/∞): the indefinite QNaN.
        cpu.fpu.sw |= sw::IE;
        INDEFINITE
    } else {
        r
    };
    if matches!(op.aux, 6 | 7) && (if op.aux == 6 { b } else { a }) == 0.0 && r.is_infinite() {
        cpu.fpu.sw |= sw::ZE;
    }
    cpu.fpu.set(op.dst, r);
    if op.imm2 & POP != 0 {
        cpu.fpu.pop();
    }
    Ok(())
}

fn compare_cc(fpu: &mut Fpu, a: f64, b: f64) -> (bool, bool, bool) {
    if a.is_nan() || b.is_nan() {
        fpu.sw |= sw::IE;
        (true, true, true)
    } else if a < b {
        (false, false, true)
    } else if a == b {
        (true, false, false)
    } else {
        (false, false, false)
    }
}

/// FCOM/FCOMP/FCOMPP/FUCOM*/FICOM* and FTST (src = IMM: compare with 0.0).
pub fn fcom(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let b = if op.src == loc::IMM {
        0.0
    } else {
        source(cpu, op, bus)?
    };
    let a = cpu.fpu.get(0);
    let (c3, c2, c0) = compare_cc(&mut cpu.fpu, a, b);
    cpu.fpu.set_cc(c3, c2, c0);
    if op.imm2 & (POP | POP2) != 0 {
        cpu.fpu.pop();
    }
    if op.imm2 & POP2 != 0 {
        cpu.fpu.pop();
    }
    Ok(())
}

/// FCOMI/FCOMIP/FUCOMI/FUCOMIP: ZF, PF, CF from the comparison; OF, SF, AF cleared.
pub fn fcomi(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let b = cpu.fpu.get(op.src);
    let a = cpu.fpu.get(0);
    let (z, p, c) = compare_cc(&mut cpu.fpu, a, b);
    let f = (if z { flag::ZF } else { 0 })
        | (if p { flag::PF } else { 0 })
        | (if c { flag::CF } else { 0 });
    cpu.set_arith_flags(f);
    if op.imm2 & POP != 0 {
        cpu.fpu.pop();
    }
    Ok(())
}

/// FXAM: classify ST(0) into C3 C2 C0, sign in C1.
pub fn fxam(cpu: &mut Cpu, _op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let f = &mut cpu.fpu;
    let v = f.st[f.phys(0)];
    let (c3, c2, c0) = if f.empty(0) {
        (true, false, true)
    } else if v.is_nan() {
        (false, false, true)
    } else if v.is_infinite() {
        (false, true, true)
    } else if v == 0.0 {
        (true, false, false)
    } else if v.is_subnormal() {
        (true, true, false)
    } else {
        (false, true, false)
    };
    f.set_cc(c3, c2, c0);
    if v.is_sign_negative() {
        f.sw |= sw::C1;
    }
    Ok(())
}

/// FCMOVcc ST(0), ST(i) (aux: 0 B, 1 E, 2 BE, 3 U, 4-7 negations).
pub fn fcmov(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let f = cpu.rflags();
    let c = match op.aux & 3 {
        0 => f & flag::CF != 0,
        1 => f & flag::ZF != 0,
        2 => f & (flag::CF | flag::ZF) != 0,
        _ => f & flag::PF != 0,
    } ^ (op.aux & 4 != 0);
    if c {
        let v = cpu.fpu.get(op.src);
        cpu.fpu.set(0, v);
    }
    Ok(())
}

/// One-operand and transcendental operations on the stack top (aux selects).
pub fn funary(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let f = &mut cpu.fpu;
    let underflow = f.empty(0);
    let a = f.get(0);
    f.sw &= !sw::C2;
    match op.aux {
        0 | 1 => {
            f.sw &= !sw::C1;
            // The masked response to an empty ST(0) is the indefinite itself, not its negation
            // or absolute value.
            f.set(
                0,
                if underflow {
                    a
                } else if op.aux == 0 {
                    -a
                } else {
                    a.abs()
                },
            )
        }
        2 => {
            if a < 0.0 {
                f.sw |= sw::IE;
            }
            let r = sqrt_rc(a, (f.cw >> 10) & 3);
            f.set(0, r)
        }
        3 => {
            let r = f.round(a);
            f.set(0, r)
        }
        4 => f.set(0, a.sin()),
        5 => f.set(0, a.cos()),
        6 => {
            // FSINCOS: ST(0) = cos, then push sin... i.e. sin below cos.
            f.set(0, a.sin());
            f.push(a.cos());
        }
        7 => {
            f.set(0, a.tan());
            f.push(1.0);
        }
        8 => f.set(0, a.exp2() - 1.0), // F2XM1
        9 => {
            // FSCALE: ST(0) × 2^trunc(ST(1)).
            let b = f.get(1).trunc();
            f.set(0, a * 2f64.powf(b));
        }
        10 => {
            // FXTRACT: ST(0) = significand, push exponent below it.
            if a == 0.0 {
                f.sw |= sw::ZE;
                f.set(0, f64::NEG_INFINITY);
                f.push(a);
            } else {
                let e = a.abs().log2().floor();
                f.set(0, e);
                f.push(a / 2f64.powf(e));
            }
        }
        11 | 12 => {
            // FPREM (truncating) / FPREM1 (round to nearest). The result is exact (fmod is).
            let b = f.get(1);
            f.sw &= !(sw::C0 | sw::C1 | sw::C3);
            if a.is_nan() || b.is_nan() {
                f.set(0, nan_result(a, b));
            } else if a.is_infinite() || b == 0.0 {
                f.sw |= sw::IE;
                f.set(0, INDEFINITE);
            } else if a != 0.0 && b.is_finite() {
                let d = x87_exponent(a) - x87_exponent(b);
                if d >= 64 {
                    // Partial remainder: reduce the exponent by D - N with N = 32 + D mod 32
                    // (AMD's documented choice, which Intel parts follow), C2 = 1 and the
                    // quotient bits cleared; software loops until C2 = 0. Scaling by a power
                    // of two is exact, and fmod keeps the dividend's sign.
                    let n = 32 + d % 32;
                    let mut m = b.abs();
                    let mut k = d - n;
                    // 2^k alone can overflow f64 (a denormal modulus); the product cannot.
                    while k > 1000 {
                        m *= 2f64.powi(1000);
                        k -= 1000;
                    }
                    let m = m * 2f64.powi(k);
                    f.set(0, a % m);
                    f.sw |= sw::C2;
                } else {
                    let r = a % b;
                    // Low three bits of the quotient: from the remainder modulo 8|b| (exact),
                    // unless 8|b| overflows, when the quotient is below 8 anyway.
                    let b8 = b.abs() * 8.0;
                    let r8 = if b8.is_finite() { a % b8 } else { a };
                    let mut q = ((r8 - r) / b.abs()).round().abs() as u64 & 7;
                    let mut r = r;
                    if op.aux == 12 {
                        // Round to nearest, ties to even: step once more past half the modulus.
                        let half = b.abs() / 2.0;
                        if r.abs() > half || (r.abs() == half && q & 1 == 1) {
                            r -= b.abs().copysign(r);
                            q = (q + 1) & 7;
                        }
                    }
                    f.set(0, r);
                    f.sw |= (((q >> 2) & 1) as u16) << 8
                        | ((q & 1) as u16) << 9
                        | (((q >> 1) & 1) as u16) << 14;
                }
            }
            // Otherwise (a zero dividend or an infinite modulus) ST(0) stays as it is.
        }
        13 => {
            // FYL2X: ST(1) = ST(1) × log2(ST(0)), pop.
            let b = f.get(1);
            f.set(1, b * a.log2());
            f.pop();
        }
        14 => {
            // FYL2XP1.
            let b = f.get(1);
            f.set(1, b * a.ln_1p() / std::f64::consts::LN_2);
            f.pop();
        }
        _ => {
            // FPATAN: ST(1) = atan2(ST(1), ST(0)), pop.
            let b = f.get(1);
            f.set(1, b.atan2(a));
            f.pop();
        }
    }
    Ok(())
}

/// FXCH ST(i).
pub fn fxch(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let f = &mut cpu.fpu;
    let a = f.get(0);
    let b = f.get(op.src);
    f.sw &= !sw::C1;
    f.set(0, b);
    f.set(op.src, a);
    Ok(())
}

/// FFREE ST(i) (imm2 POP: FFREEP), FINCSTP (aux 1), FDECSTP (aux 2), FNOP (aux 3).
pub fn fstack(cpu: &mut Cpu, op: &Op, _bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let f = &mut cpu.fpu;
    match op.aux {
        0 => {
            let p = f.phys(op.src);
            f.tw |= 3 << (p * 2);
            // C0-C3 are undefined after FFREE; C1 cleared is what the host CPU of the
            // differential test (Intel family 6 model 0xA7) does.
            f.sw &= !sw::C1;
            if op.imm2 & POP != 0 {
                f.top = (f.top + 1) & 7;
            }
        }
        1 => {
            f.top = (f.top + 1) & 7;
            f.sw &= !sw::C1;
        }
        2 => {
            f.top = (f.top + 7) & 7;
            f.sw &= !sw::C1;
        }
        _ => {}
    }
    Ok(())
}

/// FNSTENV (aux 0) / FNSAVE (aux 1): 14/28-byte environment (osize 2/4) plus, for FNSAVE, the
/// eight registers in stack order as m80, then FNINIT. Instruction/operand pointers read 0.
pub fn fnstenv(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let ea = cpu.ea(op);
    let seg = op.seg as usize;
    let w = op.osize as u64;
    let env = 7 * w;
    let total = if op.aux == 1 { env + 80 } else { env };
    cpu.probe_write(bus, seg, ea, 1)?;
    cpu.probe_write(bus, seg, (ea + total - 1) & size_mask(op.asize), 1)?;
    let fields = [
        cpu.fpu.cw as u64,
        cpu.fpu.status() as u64,
        cpu.fpu.full_tags() as u64,
        0,
        0,
        0,
        0,
    ];
    for (i, v) in fields.iter().enumerate() {
        let a = (ea + i as u64 * w) & size_mask(op.asize);
        cpu.write_mem(
            bus,
            seg,
            a,
            op.osize,
            if w == 4 {
                *v | (0xFFFF_0000 * (i < 3) as u64)
            } else {
                *v
            },
        )?;
    }
    if op.aux == 1 {
        for i in 0..8u8 {
            let v = cpu.fpu.st[cpu.fpu.phys(i)];
            let (m, se) = f64_to_f80(v);
            let a = (ea + env + i as u64 * 10) & size_mask(op.asize);
            cpu.write_mem(bus, seg, a, 8, m)?;
            cpu.write_mem(bus, seg, (a + 8) & size_mask(op.asize), 2, se as u64)?;
        }
        cpu.fpu = cpu.fpu.initialized();
    } else {
        // FNSTENV masks all exceptions afterwards.
        cpu.fpu.cw |= 0x3F;
    }
    Ok(())
}

/// FLDENV (aux 0) / FRSTOR (aux 1).
pub fn fldenv(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let ea = cpu.ea(op);
    let seg = op.seg as usize;
    let w = op.osize as u64;
    let cw = cpu.read_mem(bus, seg, ea, 2)? as u16;
    let swv = cpu.read_mem(bus, seg, (ea + w) & size_mask(op.asize), 2)? as u16;
    let tw = cpu.read_mem(bus, seg, (ea + 2 * w) & size_mask(op.asize), 2)? as u16;
    let mut regs = [0f64; 8];
    if op.aux == 1 {
        for (i, r) in regs.iter_mut().enumerate() {
            let a = (ea + 7 * w + i as u64 * 10) & size_mask(op.asize);
            let m = cpu.read_mem(bus, seg, a, 8)?;
            let se = cpu.read_mem(bus, seg, (a + 8) & size_mask(op.asize), 2)? as u16;
            *r = f80_to_f64(m, se);
        }
    }
    let f = &mut cpu.fpu;
    f.cw = cw | 0x40;
    f.top = ((swv >> 11) & 7) as u8;
    f.sw = swv & !0x3800;
    // Only "empty" survives from the tag word; other tags are recomputed from the values.
    let mut t = 0;
    for p in 0..8 {
        if (tw >> (p * 2)) & 3 == 3 {
            t |= 3 << (p * 2);
        }
    }
    f.tw = t;
    if op.aux == 1 {
        for (i, r) in regs.iter().enumerate() {
            let p = f.phys(i as u8);
            f.st[p] = *r;
        }
    }
    Ok(())
}

/// Bytes of the FXSAVE image this CPU defines: the header (control/status/tag words, pointers,
/// MXCSR) and the eight 16-byte register slots. The XMM area (160-287) and the rest (288-511)
/// belong to registers this CPU does not have: FXSAVE leaves them untouched and FXRSTOR
/// ignores them.
const FX_IMAGE: usize = 160;

/// The 16-byte-aligned linear address of an FXSAVE/FXRSTOR operand, or #GP(0).
fn fx_operand(cpu: &Cpu, op: &Op) -> Result<u64, Exit> {
    let ea = cpu.ea(op);
    let lin = cpu.segs[op.seg as usize].base.wrapping_add(ea);
    if lin & 15 != 0 {
        return Err(Fault::gp(0).into());
    }
    Ok(ea)
}

/// FXSAVE m512 (0F AE /0): the x87 state in the FXSAVE layout, without reinitialising the FPU.
/// FOP, FIP/FCS and FDP/FDS are not tracked (as in FNSTENV) and read 0 — which is also what an
/// AMD part stores for them while no x87 exception is pending (Intel parts store the last
/// non-control instruction's); the 64-bit form's wider pointer fields are then the same bytes.
/// Reserved header bytes and the slots' padding read 0.
pub fn fxsave(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let ea = fx_operand(cpu, op)?;
    let seg = op.seg as usize;
    let am = size_mask(op.asize);
    cpu.probe_write(bus, seg, ea, 16)?;
    cpu.probe_write(bus, seg, (ea + 512 - 16) & am, 16)?;
    let f = &cpu.fpu;
    let mut img = [0u8; FX_IMAGE];
    img[0..2].copy_from_slice(&f.cw.to_le_bytes());
    img[2..4].copy_from_slice(&f.status().to_le_bytes());
    // Abridged tag word: bit i set when physical register i is not empty.
    img[4] = (0..8).fold(0u8, |t, p| t | (((f.tw >> (p * 2)) & 3 != 3) as u8) << p);
    img[24..28].copy_from_slice(&f.mxcsr.to_le_bytes());
    img[28..32].copy_from_slice(&MXCSR_MASK.to_le_bytes());
    for i in 0..8u8 {
        let (m, se) = f64_to_f80(f.st[f.phys(i)]);
        let o = 32 + i as usize * 16;
        img[o..o + 8].copy_from_slice(&m.to_le_bytes());
        img[o + 8..o + 10].copy_from_slice(&se.to_le_bytes());
    }
    for (k, chunk) in img.chunks_exact(8).enumerate() {
        let v = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        cpu.write_mem(bus, seg, (ea + k as u64 * 8) & am, 8, v)?;
    }
    Ok(())
}

/// FXRSTOR m512 (0F AE /1): loads what [`fxsave`] stores. #GP(0) when the image's MXCSR sets a
/// bit outside [`MXCSR_MASK`]. The abridged tag word only says empty/non-empty; the full tags
/// are derived from the values when FNSTENV asks.
pub fn fxrstor(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    check_nm(cpu)?;
    let ea = fx_operand(cpu, op)?;
    let seg = op.seg as usize;
    let am = size_mask(op.asize);
    let mut img = [0u8; FX_IMAGE];
    for k in 0..FX_IMAGE / 8 {
        let v = cpu.read_mem(bus, seg, (ea + k as u64 * 8) & am, 8)?;
        img[k * 8..k * 8 + 8].copy_from_slice(&v.to_le_bytes());
    }
    // The whole 512 bytes are the operand: a limit or page fault on its tail counts too.
    cpu.read_mem(bus, seg, (ea + 512 - 8) & am, 8)?;
    let word = |o: usize| u16::from_le_bytes([img[o], img[o + 1]]);
    let mxcsr = u32::from_le_bytes([img[24], img[25], img[26], img[27]]);
    if mxcsr & !MXCSR_MASK != 0 {
        return Err(Fault::gp(0).into());
    }
    let f = &mut cpu.fpu;
    f.cw = word(0) | 0x40;
    let swv = word(2);
    f.top = ((swv >> 11) & 7) as u8;
    f.sw = swv & !0x3800;
    f.tw = (0..8).fold(0u16, |t, p| {
        t | if img[4] & (1 << p) == 0 {
            3 << (p * 2)
        } else {
            0
        }
    });
    for i in 0..8u8 {
        let o = 32 + i as usize * 16;
        let m = u64::from_le_bytes(img[o..o + 8].try_into().unwrap_or_default());
        let p = f.phys(i);
        f.st[p] = f80_to_f64(m, word(o + 8));
    }
    f.mxcsr = mxcsr;
    Ok(())
}

fn st_index(r: Register) -> u8 {
    (r as u32).wrapping_sub(Register::ST0 as u32) as u8 & 7
}

/// Decode-side mapping of x87 instructions to handlers (None: not an x87 instruction).
pub(crate) fn translate(ins: &Instruction, op: &mut Op, osz: u8) -> Option<Handler> {
    let m = ins.mnemonic();
    let n = ins.op_count();
    let mem = (0..n).any(|i| ins.op_kind(i) == OpKind::Memory);
    let msize = ins.memory_size().size() as u8;
    let st = |i: u32| st_index(ins.op_register(i));
    op.dst = loc::NONE;
    op.src = loc::NONE;
    let h: Handler = match m {
        M::Fninit => fninit,
        M::Fnclex => fnclex,
        M::Fnstsw => {
            op.dst = if mem { loc::MEM } else { 0 };
            fnstsw
        }
        M::Fnstcw => {
            op.dst = loc::MEM;
            fnstcw
        }
        M::Fldcw => {
            op.src = loc::MEM;
            fldcw
        }
        M::Fld => {
            if mem {
                op.src = loc::MEM;
                op.osize = msize;
            } else {
                op.src = st(0);
            }
            fld
        }
        M::Fild => {
            op.src = loc::MEM;
            op.osize = msize;
            fild
        }
        M::Fbld => {
            op.src = loc::MEM;
            fbld
        }
        M::Fld1 | M::Fldz | M::Fldpi | M::Fldl2e | M::Fldl2t | M::Fldlg2 | M::Fldln2 => {
            op.aux = match m {
                M::Fld1 => 0,
                M::Fldz => 1,
                M::Fldpi => 2,
                M::Fldl2e => 3,
                M::Fldl2t => 4,
                M::Fldlg2 => 5,
                _ => 6,
            };
            fld_const
        }
        M::Fst | M::Fstp | M::Fstpnce => {
            op.imm2 = if m == M::Fst { 0 } else { POP };
            if mem {
                op.dst = loc::MEM;
                op.osize = msize;
            } else {
                op.dst = st(0);
            }
            fst
        }
        M::Fist | M::Fistp => {
            op.imm2 = if m == M::Fistp { POP } else { 0 };
            op.dst = loc::MEM;
            op.osize = msize;
            fist
        }
        M::Fbstp => {
            op.dst = loc::MEM;
            fbstp
        }
        M::Fadd
        | M::Faddp
        | M::Fiadd
        | M::Fmul
        | M::Fmulp
        | M::Fimul
        | M::Fsub
        | M::Fsubp
        | M::Fisub
        | M::Fsubr
        | M::Fsubrp
        | M::Fisubr
        | M::Fdiv
        | M::Fdivp
        | M::Fidiv
        | M::Fdivr
        | M::Fdivrp
        | M::Fidivr => {
            op.aux = match m {
                M::Fadd | M::Faddp | M::Fiadd => 0,
                M::Fmul | M::Fmulp | M::Fimul => 1,
                M::Fsub | M::Fsubp | M::Fisub => 4,
                M::Fsubr | M::Fsubrp | M::Fisubr => 5,
                M::Fdiv | M::Fdivp | M::Fidiv => 6,
                _ => 7,
            };
            if matches!(
                m,
                M::Faddp | M::Fmulp | M::Fsubp | M::Fsubrp | M::Fdivp | M::Fdivrp
            ) {
                op.imm2 |= POP;
            }
            if matches!(
                m,
                M::Fiadd | M::Fimul | M::Fisub | M::Fisubr | M::Fidiv | M::Fidivr
            ) {
                op.imm2 |= INT_SRC;
            }
            if mem {
                op.dst = 0;
                op.src = loc::MEM;
                op.osize = msize;
            } else if n == 2 {
                op.dst = st(0);
                op.src = st(1);
            } else {
                // Implicit "FADDP" with no operands: ST(1) = ST(1) op ST(0), pop.
                op.dst = 1;
                op.src = 0;
            }
            farith
        }
        M::Fcom
        | M::Fcomp
        | M::Fcompp
        | M::Fucom
        | M::Fucomp
        | M::Fucompp
        | M::Ficom
        | M::Ficomp
        | M::Ftst => {
            op.imm2 = match m {
                M::Fcomp | M::Fucomp | M::Ficomp => POP,
                M::Fcompp | M::Fucompp => POP2,
                _ => 0,
            };
            if matches!(m, M::Ficom | M::Ficomp) {
                op.imm2 |= INT_SRC;
            }
            if m == M::Ftst {
                op.src = loc::IMM;
            } else if mem {
                op.src = loc::MEM;
                op.osize = msize;
            } else if n == 2 {
                op.src = st(1);
            } else {
                op.src = 1;
            }
            fcom
        }
        M::Fcomi | M::Fcomip | M::Fucomi | M::Fucomip => {
            op.imm2 = if matches!(m, M::Fcomip | M::Fucomip) {
                POP
            } else {
                0
            };
            op.src = st(1);
            fcomi
        }
        M::Fxam => fxam,
        M::Fcmovb
        | M::Fcmove
        | M::Fcmovbe
        | M::Fcmovu
        | M::Fcmovnb
        | M::Fcmovne
        | M::Fcmovnbe
        | M::Fcmovnu => {
            op.aux = match m {
                M::Fcmovb => 0,
                M::Fcmove => 1,
                M::Fcmovbe => 2,
                M::Fcmovu => 3,
                M::Fcmovnb => 4,
                M::Fcmovne => 5,
                M::Fcmovnbe => 6,
                _ => 7,
            };
            op.src = st(1);
            fcmov
        }
        M::Fchs
        | M::Fabs
        | M::Fsqrt
        | M::Frndint
        | M::Fsin
        | M::Fcos
        | M::Fsincos
        | M::Fptan
        | M::F2xm1
        | M::Fscale
        | M::Fxtract
        | M::Fprem
        | M::Fprem1
        | M::Fyl2x
        | M::Fyl2xp1
        | M::Fpatan => {
            op.aux = match m {
                M::Fchs => 0,
                M::Fabs => 1,
                M::Fsqrt => 2,
                M::Frndint => 3,
                M::Fsin => 4,
                M::Fcos => 5,
                M::Fsincos => 6,
                M::Fptan => 7,
                M::F2xm1 => 8,
                M::Fscale => 9,
                M::Fxtract => 10,
                M::Fprem => 11,
                M::Fprem1 => 12,
                M::Fyl2x => 13,
                M::Fyl2xp1 => 14,
                _ => 15,
            };
            funary
        }
        M::Fxch => {
            op.src = if n == 2 { st(1) } else { 1 };
            fxch
        }
        M::Ffree | M::Ffreep => {
            op.src = st(0);
            op.imm2 = if m == M::Ffreep { POP } else { 0 };
            fstack
        }
        M::Fincstp => {
            op.aux = 1;
            fstack
        }
        M::Fdecstp => {
            op.aux = 2;
            fstack
        }
        // FNOP and the 287 leftovers that are no-ops on a 387 and later.
        M::Fnop | M::Fneni | M::Fndisi | M::Fnsetpm => {
            op.aux = 3;
            fstack
        }
        M::Fnstenv | M::Fnsave => {
            op.aux = (m == M::Fnsave) as u8;
            op.osize = if matches!(ins.code(), Code::Fnstenv_m14byte | Code::Fnsave_m94byte) {
                2
            } else {
                4
            };
            let _ = osz;
            fnstenv
        }
        M::Fldenv | M::Frstor => {
            op.aux = (m == M::Frstor) as u8;
            op.osize = if matches!(ins.code(), Code::Fldenv_m14byte | Code::Frstor_m94byte) {
                2
            } else {
                4
            };
            fldenv
        }
        // With FXSR off in CPUID the encodings stay undefined (#UD), as on a part without it.
        M::Fxsave | M::Fxsave64 if crate::cpuid::FXSR && mem => {
            op.dst = loc::MEM;
            fxsave
        }
        M::Fxrstor | M::Fxrstor64 if crate::cpuid::FXSR && mem => {
            op.src = loc::MEM;
            fxrstor
        }
        _ => return None,
    };
    Some(h)
}

#[cfg(test)]
mod tests {
    use crate::Cpu;
    use crate::bus::{NullBus, PhysMem};
    use crate::exception::vector;
    use crate::state::{Segment, cr0, sreg};
    use iced_x86::code_asm::*;

    /// 32-bit flat protected mode with no IDT (an exception ends in shutdown; `last_fault`
    /// tells which), code at 0x1000, data at 0x2000.
    fn run(cr0_extra: u64, f: impl FnOnce(&mut CodeAssembler) -> Result<(), IcedError>) -> Cpu {
        let mut a = CodeAssembler::new(32).unwrap();
        f(&mut a).unwrap();
        a.hlt().unwrap();
        let code = a.assemble(0x1000).unwrap();
        let mut mem = PhysMem::new(1 << 20);
        mem.as_mut_slice()[0x1000..0x1000 + code.len()].copy_from_slice(&code);
        let mut cpu = Cpu::new(mem);
        cpu.cr0 |= cr0::PE | cr0_extra;
        for s in 0..6 {
            cpu.segs[s] = Segment::flat32(if s == sreg::CS { 8 } else { 0x10 }, s == sreg::CS);
        }
        cpu.idtr.limit = 0;
        cpu.rip = 0x1000;
        cpu.regs[4] = 0x8000;
        cpu.run(&mut NullBus, 1000);
        cpu
    }

    fn fault(cpu: &Cpu) -> Option<u8> {
        cpu.last_fault.map(|f| f.vector)
    }

    #[test]
    fn fxsave_nm_with_ts_or_em_and_gp_when_misaligned() {
        for (extra, at, want) in [
            (cr0::TS, 0x2000, Some(vector::NM)),
            (cr0::EM, 0x2000, Some(vector::NM)),
            (0, 0x2008, Some(vector::GP)),
            (0, 0x2000, None),
        ] {
            let cpu = run(extra, |a| a.fxsave(ptr(at)));
            assert_eq!(fault(&cpu), want, "cr0 {extra:#x} at {at:#x}");
        }
    }

    #[test]
    fn fxrstor_checks_mxcsr_and_round_trips_with_fxsave() {
        // DAZ (bit 6) is outside this CPU's MXCSR_MASK: #GP(0).
        let cpu = run(0, |a| {
            a.mov(dword_ptr(0x2018), 0x1FC0)?;
            a.fxrstor(ptr(0x2000))
        });
        assert_eq!(fault(&cpu), Some(vector::GP));
        let cpu = run(0, |a| {
            a.fninit()?;
            a.fld1()?;
            a.fldz()?;
            a.fxsave(ptr(0x2000))?;
            a.mov(dword_ptr(0x2018), 0x7F80)?; // MXCSR: round toward zero
            a.fninit()?;
            a.fxrstor(ptr(0x2000))?;
            a.fninit()?; // keeps MXCSR
            a.fxrstor(ptr(0x2000))?;
            a.fxsave(ptr(0x2200))
        });
        assert_eq!(fault(&cpu), None);
        let m = cpu.mem.as_slice();
        // The second image equals the first in every byte FXSAVE defines.
        assert_eq!(m[0x2000..0x20A0], m[0x2200..0x22A0]);
        assert_eq!(&m[0x2218..0x221C], &0x7F80u32.to_le_bytes());
        // FCW, FSW with TOP = 6, abridged tags of R6 and R7, ST(0) = +0, ST(1) = 1.0.
        assert_eq!(&m[0x2200..0x2205], &[0x7F, 0x03, 0x00, 0x30, 0xC0]);
        assert_eq!(&m[0x2220..0x222A], &[0; 10]);
        assert_eq!(&m[0x2230..0x223A], &[0, 0, 0, 0, 0, 0, 0, 0x80, 0xFF, 0x3F]);
    }
}
