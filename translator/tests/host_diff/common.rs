//! What the native runner and Vireo share: the address layout (identical linear addresses on
//! both sides), one test case, one observed outcome, and the deterministic fill of the memory
//! operand area.

/// 64-bit trampoline, 32-bit prologue/epilogue, signal restorer (native only; not present in
/// Vireo's page tables).
pub const HARNESS: u32 = 0x0001_0000;
/// The page the code under test runs from (user, RWX natively).
pub const CODE: u32 = 0x0002_0000;
/// The memory operand area: two user RW pages, compared byte for byte. Unmapped guard pages on
/// both sides (0x21000 and 0x24000) turn strays into #PF on both sides.
pub const AREA: u32 = 0x0002_2000;
pub const AREA_SIZE: usize = 0x2000;
/// Native-only state page: input and output registers, the signal record, a scratch stack.
pub const STATE: u32 = 0x0003_0000;
pub const MAX_CODE: usize = 160;
/// Room for an FXRSTOR image's defined part.
pub const MAX_PATCH: usize = 160;

/// One test case: registers, EFLAGS, the code bytes and the area content (a fill from `seed`,
/// then `patch` written at `patch_off`).
#[derive(Clone, Copy)]
#[repr(C)]
pub struct Case {
    /// EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI.
    pub regs: [u32; 8],
    pub eflags: u32,
    pub code_len: u32,
    pub seed: u64,
    pub code: [u8; MAX_CODE],
    pub patch_off: u16,
    pub patch_len: u16,
    pub patch: [u8; MAX_PATCH],
}

impl Case {
    pub fn code(&self) -> &[u8] {
        &self.code[..self.code_len as usize]
    }
}

pub const MAX_DIFFS: usize = 48;

/// What one side observed.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct Outcome {
    /// Registers after the code (or at the fault).
    pub regs: [u32; 8],
    pub eflags: u32,
    /// Exception vector, or `NO_FAULT`.
    pub vector: u32,
    /// Error code (for vectors that push one), CR2 (for #PF), EIP at the fault.
    pub err: u32,
    pub cr2: u32,
    pub eip: u32,
    /// Native: the signal number (informational, not compared). Vireo: 0.
    pub signo: u32,
    /// Area bytes that differ from the initial content: count, a hash over all (offset, value)
    /// pairs, and the first `MAX_DIFFS` of them as `offset << 8 | value`.
    pub ndiff: u32,
    pub diff_hash: u64,
    pub diffs: [u32; MAX_DIFFS],
    /// A harness error (child died, Vireo panicked or ran away): a non-empty code.
    pub harness_error: u32,
}

pub const NO_FAULT: u32 = 0xFFFF_FFFF;

impl Default for Outcome {
    fn default() -> Self {
        Outcome {
            regs: [0; 8],
            eflags: 0,
            vector: NO_FAULT,
            err: 0,
            cr2: 0,
            eip: 0,
            signo: 0,
            ndiff: 0,
            diff_hash: 0,
            diffs: [0; MAX_DIFFS],
            harness_error: 0,
        }
    }
}

/// Does this exception vector push an error code?
pub fn has_error_code(v: u32) -> bool {
    matches!(v, 8 | 10..=14 | 17 | 21)
}

#[inline]
pub fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The initial byte of the area at `off`, before the patch.
#[inline]
pub fn fill_word(seed: u64, word: usize) -> u64 {
    splitmix(seed ^ (word as u64).wrapping_mul(0x1000_0000_01B3))
}

/// Write the initial area content into `dst` (AREA_SIZE bytes). No allocation: the native child
/// calls it after fork.
pub fn fill_area(case: &Case, dst: &mut [u8]) {
    for (w, chunk) in dst.chunks_exact_mut(8).enumerate() {
        chunk.copy_from_slice(&fill_word(case.seed, w).to_le_bytes());
    }
    let o = case.patch_off as usize;
    let n = case.patch_len as usize;
    dst[o..o + n].copy_from_slice(&case.patch[..n]);
}

/// The initial byte at `off` (fill plus patch).
#[inline]
pub fn initial_byte(case: &Case, off: usize) -> u8 {
    let o = case.patch_off as usize;
    if off >= o && off < o + case.patch_len as usize {
        return case.patch[off - o];
    }
    fill_word(case.seed, off / 8).to_le_bytes()[off % 8]
}

/// Record how `area` differs from the case's initial content.
pub fn record_diffs(case: &Case, area: &[u8], out: &mut Outcome) {
    out.ndiff = 0;
    out.diff_hash = 0xCBF2_9CE4_8422_2325;
    for w in 0..AREA_SIZE / 8 {
        let init = fill_word(case.seed, w).to_le_bytes();
        let cur = &area[w * 8..w * 8 + 8];
        let o = case.patch_off as usize;
        let patched = case.patch_len != 0 && w * 8 + 8 > o && w * 8 < o + case.patch_len as usize;
        if !patched && cur == init {
            continue;
        }
        for (i, &b) in cur.iter().enumerate() {
            let off = w * 8 + i;
            if b != initial_byte(case, off) {
                let d = (off as u32) << 8 | b as u32;
                if (out.ndiff as usize) < MAX_DIFFS {
                    out.diffs[out.ndiff as usize] = d;
                }
                out.ndiff += 1;
                out.diff_hash = (out.diff_hash ^ d as u64).wrapping_mul(0x100_0000_01B3);
            }
        }
    }
}

/// A small deterministic generator (splitmix64 stream).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        splitmix(self.0)
    }
    pub fn u32(&mut self) -> u32 {
        self.next() as u32
    }
    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u32) -> u32 {
        (((self.next() >> 32) * n as u64) >> 32) as u32
    }
    pub fn chance(&mut self, percent: u32) -> bool {
        self.below(100) < percent
    }
    /// A 32-bit value biased towards the interesting ones (0, ±1, sign boundaries, small).
    pub fn interesting(&mut self) -> u32 {
        match self.below(10) {
            0 => [
                0,
                1,
                0xFFFF_FFFF,
                0x8000_0000,
                0x7FFF_FFFF,
                0x80,
                0x7F,
                0xFF,
                0x8000,
                0x7FFF,
                0xFFFF,
                0x100,
            ][self.below(12) as usize],
            1 => self.below(16),
            2 => self.u32() & 0xFF,
            3 => self.u32() & 0xFFFF,
            _ => self.u32(),
        }
    }
}
