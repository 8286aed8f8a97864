//! Faults and other early exits of an instruction handler.
//!
//! A handler returns `Err(Exit::Fault(..))` instead of panicking or unwinding; the dispatch loop
//! then rolls RIP and RSP back to the faulting instruction (handlers write architectural state only
//! after every check that can fault has passed) and delivers the exception.

/// Exception vectors.
pub mod vector {
    pub const DE: u8 = 0;
    pub const DB: u8 = 1;
    pub const NMI: u8 = 2;
    pub const BP: u8 = 3;
    pub const OF: u8 = 4;
    pub const BR: u8 = 5;
    pub const UD: u8 = 6;
    pub const NM: u8 = 7;
    pub const DF: u8 = 8;
    pub const TS: u8 = 10;
    pub const NP: u8 = 11;
    pub const SS: u8 = 12;
    pub const GP: u8 = 13;
    pub const PF: u8 = 14;
    pub const MF: u8 = 16;
    pub const AC: u8 = 17;
}

/// An architectural exception raised by an instruction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fault {
    pub vector: u8,
    pub error_code: Option<u32>,
}

impl Fault {
    pub const fn new(vector: u8) -> Self {
        Fault {
            vector,
            error_code: None,
        }
    }
    pub const fn with_code(vector: u8, code: u32) -> Self {
        Fault {
            vector,
            error_code: Some(code),
        }
    }
    pub const fn de() -> Self {
        Self::new(vector::DE)
    }
    pub const fn ud() -> Self {
        Self::new(vector::UD)
    }
    pub const fn nm() -> Self {
        Self::new(vector::NM)
    }
    pub const fn gp(code: u32) -> Self {
        Self::with_code(vector::GP, code)
    }
    pub const fn ss(code: u32) -> Self {
        Self::with_code(vector::SS, code)
    }
    pub const fn np(code: u32) -> Self {
        Self::with_code(vector::NP, code)
    }
    pub const fn ts(code: u32) -> Self {
        Self::with_code(vector::TS, code)
    }
    pub const fn pf(code: u32) -> Self {
        Self::with_code(vector::PF, code)
    }

    /// Contributory exceptions (SDM Vol. 3, table 6-4): two of them in a row make a #DF.
    pub fn is_contributory(&self) -> bool {
        matches!(self.vector, 0 | 10 | 11 | 12 | 13)
    }
}

/// Why a handler stopped the normal flow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// An exception: roll back to the instruction's start and deliver it.
    Fault(Fault),
    /// HLT executed (RIP already points after it).
    Halt,
}

impl From<Fault> for Exit {
    fn from(f: Fault) -> Self {
        Exit::Fault(f)
    }
}

/// What every handler returns.
pub type ExecResult = Result<(), Exit>;

/// Shorthand for `Err(Exit::Fault(f))`.
#[inline]
pub fn fault<T>(f: Fault) -> Result<T, Exit> {
    Err(Exit::Fault(f))
}
