//! Architectural CPU state: registers, segment registers with their descriptor caches, system
//! registers. Storage is sized for x86-64 (16 GPRs of 64 bits) so long mode only adds decoding.

/// General register numbers, in x86 encoding order.
pub mod reg {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
}

/// Segment register numbers, in x86 encoding order.
pub mod sreg {
    pub const ES: usize = 0;
    pub const CS: usize = 1;
    pub const SS: usize = 2;
    pub const DS: usize = 3;
    pub const FS: usize = 4;
    pub const GS: usize = 5;
}

/// RFLAGS bits.
pub mod flag {
    pub const CF: u64 = 1 << 0;
    pub const FIXED1: u64 = 1 << 1;
    pub const PF: u64 = 1 << 2;
    pub const AF: u64 = 1 << 4;
    pub const ZF: u64 = 1 << 6;
    pub const SF: u64 = 1 << 7;
    pub const TF: u64 = 1 << 8;
    pub const IF: u64 = 1 << 9;
    pub const DF: u64 = 1 << 10;
    pub const OF: u64 = 1 << 11;
    pub const IOPL: u64 = 3 << 12;
    pub const NT: u64 = 1 << 14;
    pub const RF: u64 = 1 << 16;
    pub const VM: u64 = 1 << 17;
    pub const AC: u64 = 1 << 18;
    pub const VIF: u64 = 1 << 19;
    pub const VIP: u64 = 1 << 20;
    pub const ID: u64 = 1 << 21;
    /// The six arithmetic flags that the lazy evaluator computes.
    pub const ARITH: u64 = CF | PF | AF | ZF | SF | OF;
}

/// CR0 bits.
pub mod cr0 {
    pub const PE: u64 = 1 << 0;
    pub const MP: u64 = 1 << 1;
    pub const EM: u64 = 1 << 2;
    pub const TS: u64 = 1 << 3;
    pub const ET: u64 = 1 << 4;
    pub const NE: u64 = 1 << 5;
    pub const WP: u64 = 1 << 16;
    pub const AM: u64 = 1 << 18;
    pub const NW: u64 = 1 << 29;
    pub const CD: u64 = 1 << 30;
    pub const PG: u64 = 1 << 31;
}

/// CR4 bits.
pub mod cr4 {
    pub const VME: u64 = 1 << 0;
    pub const PVI: u64 = 1 << 1;
    pub const TSD: u64 = 1 << 2;
    pub const DE: u64 = 1 << 3;
    pub const PSE: u64 = 1 << 4;
    pub const PAE: u64 = 1 << 5;
    pub const PGE: u64 = 1 << 7;
    pub const OSFXSR: u64 = 1 << 9;
}

/// EFER bits.
pub mod efer {
    pub const SCE: u64 = 1 << 0;
    pub const LME: u64 = 1 << 8;
    pub const LMA: u64 = 1 << 10;
    pub const NXE: u64 = 1 << 11;
}

/// Descriptor attribute bits as kept in [`Segment::attr`]: the descriptor's byte 5 in bits 0-7
/// (type, S, DPL, P) and the high nibble of byte 6 in bits 12-15 (AVL, L, D/B, G).
pub mod attr {
    pub const ACCESSED: u16 = 1 << 0;
    /// Data: writable. Code: readable.
    pub const RW: u16 = 1 << 1;
    /// Data: expand-down. Code: conforming.
    pub const DC: u16 = 1 << 2;
    pub const CODE: u16 = 1 << 3;
    /// 1 = code/data segment, 0 = system descriptor.
    pub const S: u16 = 1 << 4;
    pub const DPL_SHIFT: u16 = 5;
    pub const P: u16 = 1 << 7;
    pub const AVL: u16 = 1 << 12;
    pub const L: u16 = 1 << 13;
    pub const DB: u16 = 1 << 14;
    pub const G: u16 = 1 << 15;
    /// What real mode and reset leave in a data segment: present, writable, accessed data.
    pub const REAL_DATA: u16 = P | S | RW | ACCESSED;
    /// Real-mode code segment: present, readable, accessed code.
    pub const REAL_CODE: u16 = P | S | CODE | RW | ACCESSED;
}

/// A segment register: the visible selector and the hidden descriptor cache.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    pub selector: u16,
    pub base: u64,
    /// Byte-granular limit (already scaled when G is set).
    pub limit: u32,
    pub attr: u16,
}

impl Segment {
    /// A flat 4 GiB 32-bit segment as a loaded descriptor leaves it in the cache (present,
    /// accessed, read/write data or execute/read code): what boot loaders and test harnesses
    /// set up to enter protected mode directly.
    pub fn flat32(selector: u16, code: bool) -> Self {
        Segment {
            selector,
            base: 0,
            limit: 0xFFFF_FFFF,
            attr: attr::P
                | attr::S
                | attr::RW
                | attr::ACCESSED
                | attr::DB
                | attr::G
                | if code { attr::CODE } else { 0 },
        }
    }

    /// A real-mode style segment: base = selector × 16, 64 KiB limit.
    pub fn real(selector: u16, code: bool) -> Self {
        Segment {
            selector,
            base: (selector as u64) << 4,
            limit: 0xFFFF,
            attr: if code {
                attr::REAL_CODE
            } else {
                attr::REAL_DATA
            },
        }
    }
    #[inline]
    pub fn present(&self) -> bool {
        self.attr & attr::P != 0
    }
    #[inline]
    pub fn dpl(&self) -> u8 {
        ((self.attr >> attr::DPL_SHIFT) & 3) as u8
    }
    #[inline]
    pub fn is_code(&self) -> bool {
        self.attr & attr::CODE != 0
    }
    /// D/B bit: 32-bit default operand size (code) or 32-bit stack / 4 GiB expand-down bound.
    #[inline]
    pub fn big(&self) -> bool {
        self.attr & attr::DB != 0
    }
    /// Null selector loaded in protected mode (an "unusable" segment).
    #[inline]
    pub fn unusable(&self) -> bool {
        self.attr & attr::P == 0
    }
}

/// GDTR / IDTR.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TableReg {
    pub base: u64,
    pub limit: u16,
}

/// Model-specific registers this CPU implements (see `exec::system` for the numbers).
#[derive(Clone, Copy, Debug, Default)]
pub struct Msrs {
    pub sysenter_cs: u64,
    pub sysenter_esp: u64,
    pub sysenter_eip: u64,
    pub apic_base: u64,
    pub pat: u64,
    pub mtrr_def_type: u64,
    pub misc_enable: u64,
}
