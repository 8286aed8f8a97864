//! The compact, pre-decoded form of one guest instruction that the dispatch loop runs.

use crate::Cpu;
use crate::bus::CpuBus;
use crate::exception::ExecResult;

/// An instruction handler. `rip` already points at the next instruction when it runs (so relative
/// branches and CALL's return address need no adjustment); on a fault the loop rolls it back.
pub type Handler = fn(&mut Cpu, &Op, &mut dyn CpuBus) -> ExecResult;

/// Operand locations in [`Op::dst`] / [`Op::src`]: 0-15 a general register (low byte for byte
/// operands), 16-19 AH/CH/DH/BH, or one of these.
pub mod loc {
    /// The instruction's memory operand (described by seg/base/index/scale/disp).
    pub const MEM: u8 = 0xFE;
    /// The immediate in [`super::Op::imm`].
    pub const IMM: u8 = 0xFD;
    pub const NONE: u8 = 0xFF;
    /// Marks "no base / no index register" in an effective address.
    pub const NO_REG: u8 = 0xFF;
    /// RIP-relative base (64-bit mode): the displacement is relative to the next instruction.
    pub const RIP: u8 = 0xFC;
}

/// Bits in [`Op::prefix`].
pub mod pfx {
    pub const REP: u8 = 1;
    pub const REPNE: u8 = 2;
    pub const LOCK: u8 = 4;
    pub const OPSIZE: u8 = 8;
    pub const ADSIZE: u8 = 16;
    /// No handler: the op raises #UD (the block ends after it).
    pub const UNDEFINED: u8 = 32;
}

/// `Op::imm2` of a Jcc that is not its block's last instruction (the block goes on with the
/// fall-through): taken, it ends the block early as a side exit (`Cpu::side_exit`).
pub const JCC_GOES_ON: u32 = 1;

/// One pre-decoded instruction: the handler and its operands, resolved once at translation.
#[derive(Clone, Copy)]
pub struct Op {
    pub exec: Handler,
    /// Immediate (sign- or zero-extended as the encoding says), or a relative branch offset
    /// from the next instruction, or a far branch's offset.
    pub imm: u64,
    /// Displacement of the memory operand (sign-extended; masked to the address size on use).
    pub disp: u64,
    /// Second immediate: ENTER's nesting level, a far pointer's selector, a Jcc's
    /// [`JCC_GOES_ON`].
    pub imm2: u32,
    /// Instruction length in bytes.
    pub len: u8,
    /// Operand size in bytes (1, 2, 4, 8).
    pub osize: u8,
    /// Address size in bytes (2, 4, 8).
    pub asize: u8,
    pub dst: u8,
    pub src: u8,
    /// Segment register of the memory operand (override applied).
    pub seg: u8,
    pub base: u8,
    pub index: u8,
    /// log2 of the index scale.
    pub scale: u8,
    /// Handler-specific selector: ALU operation, condition code, segment register, source size.
    pub aux: u8,
    pub prefix: u8,
}

impl Op {
    pub fn new(exec: Handler, len: u8) -> Self {
        Op {
            exec,
            imm: 0,
            disp: 0,
            imm2: 0,
            len,
            osize: 0,
            asize: 2,
            dst: loc::NONE,
            src: loc::NONE,
            seg: 3,
            base: loc::NO_REG,
            index: loc::NO_REG,
            scale: 0,
            aux: 0,
            prefix: 0,
        }
    }
}

impl std::fmt::Debug for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Op")
            .field("len", &self.len)
            .field("osize", &self.osize)
            .field("asize", &self.asize)
            .field("dst", &self.dst)
            .field("src", &self.src)
            .field("imm", &self.imm)
            .field("aux", &self.aux)
            .finish()
    }
}
