//! Lazily computed arithmetic flags.
//!
//! Arithmetic instructions record what they did (the operation, the operand size, both inputs and
//! the result) instead of computing six flag bits that the next instruction usually overwrites.
//! Reading RFLAGS or testing a condition materialises only what is needed.

use crate::state::flag;

/// The operation whose flags are pending.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
// u8: tier 1 writes the discriminant straight into `LazyFlags::op`.
#[repr(u8)]
pub enum FlagOp {
    /// Nothing pending: RFLAGS holds every bit.
    None,
    Add,
    /// ADC with carry-in 1 (carry-in 0 is recorded as `Add`).
    Adc1,
    Sub,
    /// SBB with borrow-in 1.
    Sbb1,
    /// AND/OR/XOR/TEST: CF = OF = AF = 0.
    Logic,
    /// INC: CF is not touched (it stays in the stored RFLAGS).
    Inc,
    /// DEC: CF is not touched.
    Dec,
}

#[derive(Clone, Copy, Debug)]
// C layout: tier 1 stores `op` and `size` together as one 16-bit word.
#[repr(C)]
pub struct LazyFlags {
    pub op: FlagOp,
    /// Operand size in bytes.
    pub size: u8,
    pub a: u64,
    pub b: u64,
    pub res: u64,
}

impl Default for LazyFlags {
    fn default() -> Self {
        LazyFlags {
            op: FlagOp::None,
            size: 1,
            a: 0,
            b: 0,
            res: 0,
        }
    }
}

#[inline]
pub fn size_mask(size: u8) -> u64 {
    match size {
        1 => 0xFF,
        2 => 0xFFFF,
        4 => 0xFFFF_FFFF,
        _ => u64::MAX,
    }
}

#[inline]
pub fn sign_bit(size: u8) -> u64 {
    1u64 << (size as u32 * 8 - 1)
}

/// PF: set when the low byte of the result has an even number of 1 bits.
#[inline]
pub fn parity(v: u64) -> bool {
    (v as u8).count_ones().is_multiple_of(2)
}

/// ZF, SF and PF of a result.
#[inline]
pub fn szp(res: u64, size: u8) -> u64 {
    let m = res & size_mask(size);
    let mut f = 0;
    if m == 0 {
        f |= flag::ZF;
    }
    if m & sign_bit(size) != 0 {
        f |= flag::SF;
    }
    if parity(m) {
        f |= flag::PF;
    }
    f
}

impl LazyFlags {
    /// CF of the pending operation alone (cheaper than [`LazyFlags::compute`]); `old` supplies
    /// it for INC/DEC and when nothing is pending.
    #[inline]
    pub fn carry(&self, old: u64) -> bool {
        let m = size_mask(self.size);
        let (a, b) = (self.a & m, self.b & m);
        match self.op {
            FlagOp::Add => (a.wrapping_add(b) & m) < a,
            FlagOp::Adc1 => ((a as u128 + b as u128 + 1) >> (self.size as u32 * 8)) != 0,
            FlagOp::Sub => a < b,
            FlagOp::Sbb1 => (a as u128) < b as u128 + 1,
            FlagOp::Logic => false,
            FlagOp::None | FlagOp::Inc | FlagOp::Dec => old & flag::CF != 0,
        }
    }

    /// The six arithmetic flags of the pending operation. `old` supplies CF for INC/DEC.
    pub fn compute(&self, old: u64) -> u64 {
        let size = self.size;
        let mask = size_mask(size);
        let sign = sign_bit(size);
        let (a, b, res) = (self.a & mask, self.b & mask, self.res & mask);
        let mut f = szp(res, size);
        match self.op {
            FlagOp::None => return old & flag::ARITH,
            FlagOp::Add | FlagOp::Adc1 => {
                let cin = (self.op == FlagOp::Adc1) as u128;
                if ((a as u128 + b as u128 + cin) >> (size as u32 * 8)) != 0 {
                    f |= flag::CF;
                }
                if (a ^ res) & (b ^ res) & sign != 0 {
                    f |= flag::OF;
                }
                f |= (a ^ b ^ res) & flag::AF;
            }
            FlagOp::Sub | FlagOp::Sbb1 => {
                let bin = (self.op == FlagOp::Sbb1) as u128;
                if (a as u128) < b as u128 + bin {
                    f |= flag::CF;
                }
                if (a ^ b) & (a ^ res) & sign != 0 {
                    f |= flag::OF;
                }
                f |= (a ^ b ^ res) & flag::AF;
            }
            FlagOp::Logic => {}
            FlagOp::Inc => {
                f |= old & flag::CF;
                if res == sign {
                    f |= flag::OF;
                }
                f |= (a ^ 1 ^ res) & flag::AF;
            }
            FlagOp::Dec => {
                f |= old & flag::CF;
                if res == sign - 1 {
                    f |= flag::OF;
                }
                f |= (a ^ 1 ^ res) & flag::AF;
            }
        }
        f
    }
}
