//! FXSAVE/FXRSTOR cases: the 512-byte image after x87 loads and stack operations, and the x87
//! state seen through FNSTENV/FNSTSW/FSTP m80 (and a second FXSAVE) after FXRSTOR of a random
//! valid image.
//!
//! What is compared, and what the code under test blanks out itself (on both sides, so the
//! area comparison sees zeros there):
//! - FCW, FSW, the abridged FTW, MXCSR and the eight register slots (80-bit value and the six
//!   padding bytes) are compared byte for byte.
//! - FOP, FIP/FCS and FDP/FDS (bytes 6-23) are blanked: Vireo does not track them (it stores
//!   0), Intel parts store the last non-control instruction's (with FCS/FDS deprecated to 0 on
//!   recent ones), AMD parts store them only while an x87 exception is pending (ES = 1). No
//!   vendor-independent oracle. FNSTENV's pointer fields (bytes 12-27) likewise.
//! - MXCSR_MASK (bytes 28-31) is blanked: it is a per-part constant (Vireo reports 0xFFBF, the
//!   mask of the first SSE parts; later Intel parts add DAZ, AMD parts DAZ and MM).
//! - Bytes 160-511 (XMM0-7 and the reserved/software area) are blanked: the host has XMM
//!   registers, Vireo has none and leaves that memory untouched.
//!
//! Values are f64-exact (Vireo keeps the x87 registers in f64), not f64 denormals (the host
//! flags DE on loading them, Vireo does not model DE), and arithmetic is limited to exact
//! results of small dyadic values (Vireo does not model PE/OE/UE), so every status bit is
//! comparable. Exception masks are always all set: no #MF.

use super::{AREA, CODE, COMPARE_FLAGS};
use super::{Case, Mask, Rng, new_case, patch, set_code};
use iced_x86::code_asm::*;

#[derive(Clone, Copy, Debug)]
pub enum FxOp {
    /// FXSAVE after loads of special and ordinary values and stack shuffles.
    SaveLoads,
    /// FXSAVE after exact arithmetic on small dyadic values.
    SaveArith,
    /// FXSAVE to an operand that is not 16-byte aligned: #GP(0).
    SaveMisaligned,
    /// FXRSTOR of a random valid image, then FXSAVE, FNSTENV, FNSTSW AX and eight FSTP m80.
    Restore,
    /// FXRSTOR of an image whose MXCSR sets a bit no part accepts: #GP(0).
    RestoreBadMxcsr,
}

pub const OPS: [FxOp; 5] = [
    FxOp::SaveLoads,
    FxOp::SaveArith,
    FxOp::SaveMisaligned,
    FxOp::Restore,
    FxOp::RestoreBadMxcsr,
];

/// The value table (loads), the FXRSTOR image, the FXSAVE image, the FNSTENV image.
const VALUES: u32 = AREA + 0x100;
const IMAGE: u32 = AREA + 0x200;
const SAVE: u32 = AREA + 0x600;
const ENV: u32 = AREA + 0x400;

fn special(rng: &mut Rng) -> f64 {
    [
        0.0,
        -0.0,
        1.0,
        -1.5,
        f64::INFINITY,
        f64::NEG_INFINITY,
        f64::NAN,
        f64::from_bits(0xFFF8_0000_0000_0000),
        f64::from_bits(0x7FFC_0000_1234_5678),
        // Signalling: the load quiets it and flags IE.
        f64::from_bits(0x7FF0_0000_0000_0001),
        f64::MAX,
        f64::MIN_POSITIVE,
        1e300,
        -3.0e-300,
    ][rng.below(14) as usize]
}

/// A value whose sums, differences and products with up to four others of its kind (a case
/// has at most 9 loads and 3 operations) stay exact in 53 bits.
fn dyadic(rng: &mut Rng) -> f64 {
    (rng.u32() as i8) as f64 / (1u32 << rng.below(5)) as f64
}

fn value(rng: &mut Rng, arith: bool) -> f64 {
    if arith {
        if rng.chance(10) {
            [0.0, -0.0][rng.below(2) as usize]
        } else {
            dyadic(rng)
        }
    } else if rng.chance(40) {
        special(rng)
    } else {
        let m = (rng.next() >> 12) | 0x3FF0_0000_0000_0000;
        let s = if rng.chance(50) { -1.0 } else { 1.0 };
        s * f64::from_bits(m) * 2f64.powi(rng.below(200) as i32 - 100)
    }
}

/// A random control word with every exception masked (no #MF on either side): precision and
/// rounding control, the infinity-control bit and reserved bit 6 at random.
fn control_word(rng: &mut Rng) -> u16 {
    0x3F | (rng.u32() as u16 & 0x1F40)
}

/// f64 → 80-bit extended, exactly (the oracle's own conversion, not Vireo's).
fn to_f80(v: f64) -> [u8; 10] {
    let b = v.to_bits();
    let sign = ((b >> 63) as u16) << 15;
    let e = ((b >> 52) & 0x7FF) as u16;
    let frac = b & ((1 << 52) - 1);
    let (m, se) = match e {
        0 if frac == 0 => (0, sign),
        0 => {
            // f64 denormal: normalise (the 80-bit exponent reaches far lower).
            let sh = frac.leading_zeros() - 11;
            (frac << (sh + 11), sign | (15361 - sh as u16))
        }
        0x7FF => ((1 << 63) | (frac << 11), sign | 0x7FFF),
        _ => ((1 << 63) | (frac << 11), sign | (e + 15360)),
    };
    let mut out = [0u8; 10];
    out[..8].copy_from_slice(&m.to_le_bytes());
    out[8..].copy_from_slice(&se.to_le_bytes());
    out
}

/// Blank what the comparison leaves out of an FXSAVE image at `at` (see the module comment).
/// Uses EAX = 0, ECX, EDI and clears DF.
fn blank_image(a: &mut CodeAssembler, at: u32) -> Result<(), IcedError> {
    a.cld()?;
    a.xor(eax, eax)?;
    a.mov(word_ptr(at + 6), ax)?;
    a.mov(edi, at + 8)?;
    a.mov(ecx, 4u32)?;
    a.rep().stosd()?;
    a.mov(dword_ptr(at + 28), eax)?;
    a.mov(edi, at + 160)?;
    a.mov(cl, 88)?;
    a.rep().stosd()
}

pub fn gen_case(op: FxOp, rng: &mut Rng) -> Option<(Case, Mask)> {
    let mut c = new_case(rng);
    let mut a = CodeAssembler::new(32).ok()?;
    match op {
        FxOp::SaveLoads | FxOp::SaveArith | FxOp::SaveMisaligned => {
            let arith = matches!(op, FxOp::SaveArith);
            let mut p = [0u8; 66];
            for i in 0..8 {
                p[i * 8..i * 8 + 8].copy_from_slice(&value(rng, arith).to_le_bytes());
            }
            let mut cw = control_word(rng);
            if arith {
                // Double or extended precision: Vireo's f64 cannot round to 24 bits.
                cw |= 0x200;
            }
            p[64..].copy_from_slice(&cw.to_le_bytes());
            patch(&mut c, VALUES, &p);
            let loads = if matches!(op, FxOp::SaveMisaligned) {
                rng.below(3)
            } else {
                rng.below(10)
            };
            let nops = rng.below(4);
            let mut picks = Vec::new();
            for _ in 0..nops {
                picks.push((rng.below(if arith { 12 } else { 8 }), rng.below(8)));
            }
            let at = if matches!(op, FxOp::SaveMisaligned) {
                SAVE + 1 + rng.below(15)
            } else {
                SAVE
            };
            let asm = |a: &mut CodeAssembler| -> Result<(), IcedError> {
                // FNINIT empties the registers but keeps their contents, which FXSAVE shows:
                // give all eight known contents first.
                for _ in 0..8 {
                    a.fld1()?;
                }
                a.fninit()?;
                a.fldcw(word_ptr(VALUES + 64))?;
                for i in 0..loads {
                    // Nine loads overflow the stack (IE, SF, C1 and the indefinite NaN).
                    a.fld(qword_ptr(VALUES + 8 * (i % 8)))?;
                }
                for &(k, j) in &picks {
                    let r = [st0, st1, st2, st3, st4, st5, st6, st7][j as usize];
                    match k {
                        0 => a.fxch(st0, r)?,
                        1 => a.fincstp()?,
                        2 => a.fdecstp()?,
                        3 => a.ffree(r)?,
                        4 => a.fld(r)?,
                        5 => a.fstp(r)?,
                        6 => a.fchs()?,
                        7 => a.fabs()?,
                        8 => a.faddp(r, st0)?,
                        9 => a.fsubp(r, st0)?,
                        10 => a.fmulp(r, st0)?,
                        _ => a.fsubrp(r, st0)?,
                    }
                }
                a.fxsave(ptr(at))?;
                blank_image(a, at)
            };
            asm(&mut a).ok()?;
        }
        FxOp::Restore | FxOp::RestoreBadMxcsr => {
            let mut img = [0u8; 160];
            for b in img.iter_mut() {
                *b = rng.u32() as u8;
            }
            img[0..2].copy_from_slice(&control_word(rng).to_le_bytes());
            // No exception pending (ES and B clear): a pending one would make the FSTPs take
            // #MF on the host whatever the masks say.
            img[2] &= 0x7F;
            img[3] &= 0x7F;
            let mxcsr = if matches!(op, FxOp::RestoreBadMxcsr) {
                // Bits 18-31 are reserved on every part (AMD's MM is bit 17).
                (rng.u32() & 0xFFBF) | (1 << (18 + rng.below(14)))
            } else {
                rng.u32() & 0xFFBF
            };
            img[24..28].copy_from_slice(&mxcsr.to_le_bytes());
            for i in 0..8 {
                let o = 32 + i * 16;
                // Register slots hold f64-exact values (including signalling NaNs, which
                // FXRSTOR and FSTP m80 carry through unchanged).
                let v = if rng.chance(10) {
                    f64::from_bits(0x7FF4_0000_0000_0000 | (rng.next() & 0x3_FFFF_FFFF_FFFF))
                } else {
                    let arith = rng.chance(30);
                    value(rng, arith)
                };
                img[o..o + 10].copy_from_slice(&to_f80(v));
            }
            patch(&mut c, IMAGE, &img);
            let asm = |a: &mut CodeAssembler| -> Result<(), IcedError> {
                a.fxrstor(ptr(IMAGE))?;
                a.fxsave(ptr(SAVE))?;
                a.fnstenv(ptr(ENV))?;
                blank_image(a, SAVE)?;
                a.mov(edi, ENV + 12)?;
                a.mov(cl, 4)?;
                a.rep().stosd()?;
                a.fnstsw(ax)?;
                for i in 0..8 {
                    a.fstp(tword_ptr(ENV + 0x20 + 10 * i))?;
                }
                a.fnstsw(word_ptr(ENV + 0x70))
            };
            asm(&mut a).ok()?;
        }
    }
    let bytes = a.assemble(CODE as u64).ok()?;
    set_code(&mut c, &bytes);
    Some((
        c,
        Mask {
            // AF after XOR is undefined.
            flags: COMPARE_FLAGS & !0x10,
            regs: 0,
            informational: false,
            rep_cmp: None,
            bound_br_first: false,
        },
    ))
}
