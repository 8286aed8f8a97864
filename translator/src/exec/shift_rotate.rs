//! ROL/ROR/RCL/RCR/SHL/SAL/SHR/SAR and SHLD/SHRD, following the SDM pseudo-code: the count is
//! masked to 5 bits (6 for 64-bit operands); a masked count of 0 changes no flags.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::op::{Op, loc};
use crate::exception::ExecResult;
use crate::flags::{sign_bit, size_mask, szp};
use crate::state::flag;

/// Shift/rotate kinds: the reg field of C0/C1/D0-D3 (6 = SAL, same as SHL).
pub mod kind {
    pub const ROL: u8 = 0;
    pub const ROR: u8 = 1;
    pub const RCL: u8 = 2;
    pub const RCR: u8 = 3;
    pub const SHL: u8 = 4;
    pub const SHR: u8 = 5;
    pub const SAL: u8 = 6;
    pub const SAR: u8 = 7;
}

/// Count source: `src` is IMM (imm holds 1 or imm8) or CL (register 1, byte).
#[inline]
fn count(cpu: &Cpu, op: &Op) -> u32 {
    let raw = if op.src == loc::IMM {
        op.imm
    } else {
        cpu.reg(1, 1)
    };
    (raw as u32) & if op.osize == 8 { 0x3F } else { 0x1F }
}

pub fn shift<const K: u8>(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let bits = size as u32 * 8;
    let m = size_mask(size);
    let sign = sign_bit(size);
    let cnt = count(cpu, op);
    let v = cpu.rd(bus, op, op.dst)?;
    if cnt == 0 {
        // Still a read-modify-write bus-wise, but nothing changes architecturally.
        return Ok(());
    }
    // Only the rotates keep SF/ZF/AF/PF, and only RCL/RCR read CF: the shifts need no
    // materialised flags at all.
    let f_old = if matches!(K, kind::ROL | kind::ROR | kind::RCL | kind::RCR) {
        cpu.rflags()
    } else {
        0
    };
    let cf_old = f_old & flag::CF != 0;
    let (res, cf, of): (u64, bool, bool);
    let mut f = f_old & flag::ARITH;
    match K {
        kind::ROL => {
            let c = cnt % bits;
            res = if c == 0 {
                v
            } else {
                ((v << c) | (v >> (bits - c))) & m
            };
            cf = res & 1 != 0;
            of = ((res & sign) != 0) ^ cf;
        }
        kind::ROR => {
            let c = cnt % bits;
            res = if c == 0 {
                v
            } else {
                ((v >> c) | (v << (bits - c))) & m
            };
            cf = res & sign != 0;
            of = ((res & sign) != 0) ^ ((res & (sign >> 1)) != 0);
        }
        kind::RCL => {
            let c = cnt % (bits + 1);
            let wide = ((cf_old as u128) << bits) | v as u128;
            let w = bits + 1;
            let r = if c == 0 {
                wide
            } else {
                ((wide << c) | (wide >> (w - c))) & ((1u128 << w) - 1)
            };
            res = (r as u64) & m;
            cf = (r >> bits) & 1 != 0;
            of = ((res & sign) != 0) ^ cf;
        }
        kind::RCR => {
            let c = cnt % (bits + 1);
            let wide = ((cf_old as u128) << bits) | v as u128;
            let w = bits + 1;
            let r = if c == 0 {
                wide
            } else {
                ((wide >> c) | (wide << (w - c))) & ((1u128 << w) - 1)
            };
            res = (r as u64) & m;
            cf = (r >> bits) & 1 != 0;
            of = ((res & sign) != 0) ^ ((res & (sign >> 1)) != 0);
        }
        kind::SHL | kind::SAL => {
            res = if cnt >= 64 { 0 } else { (v << cnt) & m };
            cf = if cnt > bits {
                false
            } else {
                (v >> (bits - cnt)) & 1 != 0
            };
            of = ((res & sign) != 0) ^ cf;
            f = szp(res, size);
        }
        kind::SHR => {
            res = if cnt >= 64 { 0 } else { v >> cnt };
            cf = if cnt > 64 {
                false
            } else {
                (v >> (cnt - 1)) & 1 != 0
            };
            // The top two result bits differ: the original sign for a count of 1, and 0 for
            // larger counts (what the 80286 and Bochs both produce; the SDM leaves it undefined).
            of = ((res << 1) ^ res) & sign != 0;
            f = szp(res, size);
        }
        _ => {
            // SAR
            let s = crate::exec::arith::sext(v, size);
            res = ((s >> cnt.min(63)) as u64) & m;
            cf = (s >> (cnt - 1).min(63)) & 1 != 0;
            of = false;
            f = szp(res, size);
        }
    }
    cpu.wr(bus, op, op.dst, res)?;
    f &= !(flag::CF | flag::OF);
    if cf {
        f |= flag::CF;
    }
    if of {
        f |= flag::OF;
    }
    cpu.set_arith_flags(f);
    Ok(())
}

/// SHLD/SHRD (aux 0 = left, 1 = right): shift dst, filling from src. Count from imm or CL.
pub fn shxd(cpu: &mut Cpu, op: &Op, bus: &mut dyn CpuBus) -> ExecResult {
    let size = op.osize;
    let bits = size as u32 * 8;
    let m = size_mask(size);
    let raw = if op.imm2 == 1 { op.imm } else { cpu.reg(1, 1) };
    let cnt = (raw as u32) & if size == 8 { 0x3F } else { 0x1F };
    let d = cpu.rd(bus, op, op.dst)?;
    if cnt == 0 {
        return Ok(());
    }
    let s = cpu.reg(op.src, size);
    if cnt > bits {
        // Undefined result for 16-bit operands with counts 17-31: leave dst alone, flags too.
        return Ok(());
    }
    let (res, cf) = if op.aux == 0 {
        let wide = ((d as u128) << bits) | s as u128;
        let r = ((wide << cnt) >> bits) as u64 & m;
        (r, (d >> (bits - cnt)) & 1 != 0)
    } else {
        let wide = ((s as u128) << bits) | d as u128;
        let r = (wide >> cnt) as u64 & m;
        (r, (d >> (cnt - 1)) & 1 != 0)
    };
    cpu.wr(bus, op, op.dst, res)?;
    let mut f = szp(res, size);
    if cf {
        f |= flag::CF;
    }
    if (res ^ d) & sign_bit(size) != 0 {
        f |= flag::OF;
    }
    cpu.set_arith_flags(f);
    Ok(())
}
