//! CPUID: describes exactly what this CPU implements.

/// Family 6, model 1, stepping 9 (Pentium Pro class).
pub const SIGNATURE: u32 = 0x0000_0619;

/// Leaf 1 EDX feature bits.
pub mod edx1 {
    pub const FPU: u32 = 1 << 0;
    pub const PSE: u32 = 1 << 3;
    pub const TSC: u32 = 1 << 4;
    pub const MSR: u32 = 1 << 5;
    pub const PAE: u32 = 1 << 6;
    pub const CX8: u32 = 1 << 8;
    pub const PGE: u32 = 1 << 13;
    pub const CMOV: u32 = 1 << 15;
    pub const FXSR: u32 = 1 << 24;
}

/// FXSAVE/FXRSTOR are implemented (exec/x87.rs); the decoder makes them #UD when this is off.
pub const FXSR: bool = true;

/// The four result registers [EAX, EBX, ECX, EDX] of CPUID leaf `leaf` (sub-leaf `sub`).
pub fn cpuid(leaf: u32, _sub: u32) -> [u32; 4] {
    // "VireoVireoCP": EBX, EDX, ECX order.
    let vendor = *b"VireoVireoCP";
    let w = |i: usize| u32::from_le_bytes([vendor[i], vendor[i + 1], vendor[i + 2], vendor[i + 3]]);
    match leaf {
        0 => [1, w(0), w(8), w(4)],
        1 => [
            SIGNATURE,
            0,
            0,
            // FPU: the x87 is implemented with f64 arithmetic (see exec/x87.rs). FCMOV and FCOMI
            // come with CMOV. FXSR without SSE (a Pentium II's set): FXSAVE/FXRSTOR carry the
            // x87 state and an MXCSR that nothing else uses. No SSE, APIC, SEP, MTRR, VME yet.
            edx1::FPU
                | edx1::PSE
                | edx1::TSC
                | edx1::MSR
                | edx1::PAE
                | edx1::CX8
                | edx1::PGE
                | edx1::CMOV
                | if FXSR { edx1::FXSR } else { 0 },
        ],
        0x8000_0000 => [0x8000_0001, 0, 0, 0],
        // NX (bit 20) is implemented in the page walker.
        0x8000_0001 => [0, 0, 0, 1 << 20],
        _ => [0, 0, 0, 0],
    }
}
