//! The block compiler: a tier-0 block (its `Op`s) → x86-64 host code.
//!
//! Every op either becomes inline host code (the forms `FastForm` names, plus near JMP rel)
//! or a call of [`trampoline::call_op`] with that op, which runs its tier-0 handler exactly as
//! the dispatch loop would. Register conventions inside a block: RBX = `*mut Cpu` (the `Ctx`
//! is part of it: `Jit::ctx`), R12 = the budget (ops left); RAX, RCX, RDX, R13 and R14 are
//! scratch.
//!
//! Guest registers: outside 64-bit code the eight guest GPRs live in host registers
//! (`GUEST`) for as long as compiled code runs — loaded at the entry from the dispatcher,
//! kept across links, and written back to `Cpu::regs` before every call out (which reloads
//! them after) and at every exit. So `Cpu::regs` is exact whenever Rust code runs, and the
//! handlers need to know nothing of it. 64-bit code (sixteen GPRs) keeps them in `Cpu::regs`.
//! Emitters reach guest registers only through `get`/`put` (and `home` for the forms that use
//! a pinned register directly).
//!
//! Each block is compiled twice: the first pass learns what every op does to the flags, where
//! code may leave, and which data segments each op touches; the second drops flag records
//! nothing reads (`dead_flags`) and puts a segment `guard` before the first op that uses a
//! segment (a failing guard sends the block back to be compiled with checks at every
//! access: [`ST_DEOPT`]).
//!
//! A block is entered with the number of ops the budget allows (R12); it stops
//! before its first op with [`ST_STOP`] when that is less than the block's length. A
//! chainable block's end may jump into a compiled successor's body instead of returning (see
//! `Compiler::chain`).
//!
//! RIP: inline ops do not read it, so their lengths are summed at compile time (`delta`) and
//! written back before a handler call, a branch, or the block end. Masking once is exact:
//! `((a + x) & m + y) & m == (a + x + y) & m` for the 16/32-bit masks.
//!
//! Flags: inline ALU ops record the lazy-flags state exactly as their tier-0 handlers do
//! (when anything reads it). A Jcc right after a register ALU op uses the host flags it left;
//! when the producer of the pending flags is another inline op of this block
//! (`Producer::Known`), a Jcc regenerates the host flags by redoing that operation (CMP for
//! SUB, TEST for the logic ops, ADD, INC/DEC with CF loaded from RFLAGS) and branches with the
//! host's own condition code; otherwise it calls `Cpu::cond`.

use super::trampoline::{self, Ctx, ST_BREAK, ST_DEOPT, ST_OK, ST_STOP};
use crate::Cpu;
use crate::block::Block;
use crate::decode::op::{Op, loc, pfx};
use crate::exec::arith::kind;
use crate::exec::fast::{FastForm, fast_form};
use crate::exec::shift_rotate::{kind as sk, shift};
use crate::flags::{FlagOp, LazyFlags};
use crate::mmu::tlb::{FAST, FAST_ENTRY_BYTES};
use crate::state::{Segment, attr, cr0, efer, flag, sreg};
use dynasmrt::x64::X64Relocation;
use dynasmrt::{DynamicLabel, DynasmApi, DynasmLabelApi, VecAssembler, dynasm};
use std::mem::offset_of;

macro_rules! asm {
    ($a:expr; $($t:tt)*) => {
        dynasm!($a ; .arch x64 ; $($t)*)
    };
}

const fn off32(x: usize) -> i32 {
    x as i32
}

const REGS: i32 = off32(offset_of!(Cpu, regs));
const RIP: i32 = off32(offset_of!(Cpu, rip));
const RFLAGS: i32 = off32(offset_of!(Cpu, rflags));
const LAZY: usize = offset_of!(Cpu, lazy);
const L_OP: i32 = off32(LAZY + offset_of!(LazyFlags, op));
const L_SIZE: i32 = off32(LAZY + offset_of!(LazyFlags, size));
const L_A: i32 = off32(LAZY + offset_of!(LazyFlags, a));
const L_B: i32 = off32(LAZY + offset_of!(LazyFlags, b));
const L_RES: i32 = off32(LAZY + offset_of!(LazyFlags, res));
const _: () = assert!(L_SIZE == L_OP + 1);

/// `LazyFlags::op` and `size` as the 16-bit word compiled code stores at `L_OP`.
fn op_size(fop: FlagOp, s: u8) -> i16 {
    (fop as u8 as i16) | ((s as i16) << 8)
}
const CS_LIMIT: i32 = off32(
    offset_of!(Cpu, segs) + sreg::CS * std::mem::size_of::<Segment>() + offset_of!(Segment, limit),
);

const SEG_ATTR: usize = offset_of!(Segment, attr);
const SEG_LIMIT: usize = offset_of!(Segment, limit);
const SEG_BASE: usize = offset_of!(Segment, base);
const EFER: i32 = off32(offset_of!(Cpu, efer));
const CR0: i32 = off32(offset_of!(Cpu, cr0));
const BLOCK_BREAK: i32 = off32(offset_of!(Cpu, block_break));
const DBG_ARMED: i32 = off32(offset_of!(Cpu, dbg_armed));
const JIT_POLL: i32 = off32(offset_of!(Cpu, jit) + offset_of!(super::Jit, poll));
const LINK_CONTEXT: i32 = off32(offset_of!(Cpu, jit) + offset_of!(super::Jit, context));
const LINK_CONTEXT_GLOBAL: i32 =
    off32(offset_of!(Cpu, jit) + offset_of!(super::Jit, context_global));
const JIT_FLAT: i32 = off32(offset_of!(Cpu, jit) + offset_of!(super::Jit, flat));
/// `Jit::ctx`: compiled code reaches the `Ctx` through the `Cpu` pointer.
const CTX: usize = offset_of!(Cpu, jit) + offset_of!(super::Jit, ctx);
const CTX_BLOCK: i32 = off32(CTX + offset_of!(Ctx, block));
const CTX_FAST_R: i32 = off32(CTX + offset_of!(Ctx, fast_r));
const CTX_FAST_W: i32 = off32(CTX + offset_of!(Ctx, fast_w));
const CTX_BUDGET: i32 = off32(CTX + offset_of!(Ctx, budget));
const CTX_NEAR: i32 = off32(CTX + offset_of!(Ctx, near));
const CTX_SHIFT_CF: i32 = off32(CTX + offset_of!(Ctx, shift_cf));
/// `Ctx::shared`: host addresses of the code all blocks share (`Shared`).
const CTX_THUNK_PINNED: i32 = off32(CTX + offset_of!(Ctx, shared));
const CTX_THUNK: i32 = CTX_THUNK_PINNED + 8;
const CTX_OUT_SYNC_PINNED: i32 = CTX_THUNK_PINNED + 16;
const CTX_OUT: i32 = CTX_THUNK_PINNED + 24;
const CTX_FALLBACK_PINNED: i32 = CTX_THUNK_PINNED + 32;
const CTX_FALLBACK: i32 = CTX_THUNK_PINNED + 40;
const CTX_IP_MASK: i32 = off32(CTX + offset_of!(Ctx, ip_mask));

/// The host register (number) holding the `*mut Cpu` (RBX).
const CPU_PTR: u8 = 3;

/// Host registers of guest EAX, ECX, EDX, EBX, ESP, EBP, ESI, EDI outside 64-bit code:
/// R8-R11, RSI, RBP, RDI, R15 (AL-BL are then R8B-R11B, which need no REX tricks).
const GUEST: [u8; 8] = [8, 9, 10, 11, 6, 5, 7, 15];

/// DS, ES and SS are taken to have base 0 (`Compiler::guard` checks it): every flat system
/// keeps them so, while FS and GS point at per-CPU or per-thread data.
fn zero_base(seg: usize) -> bool {
    matches!(seg, sreg::DS | sreg::ES | sreg::SS)
}

/// (offset of the segment's attributes, the attribute bits a fast data access needs, the
/// mask they are compared under).
fn seg_kind(seg: usize) -> (i32, i32, i32) {
    (
        seg_field(seg, SEG_ATTR),
        (attr::P | attr::RW) as i32,
        (attr::P | attr::CODE | attr::DC | attr::RW) as i32,
    )
}

/// In `Jit::flat` and `Compiler::seg_ok` beside the data segments: the CS limit is 4 GiB - 1
/// (a branch target masked to 32 bits needs no limit check).
const CS_FLAT: u8 = 1 << 7;
/// The stack is 32-bit outside long mode (CR0.PE and SS.B: `Compiler::check_stack32`).
const STACK32: u8 = 1 << 6;

/// The data segments (bits by `sreg`) an inline access may use with no checks but the 4 GiB
/// end: present, writable, expand-up data segments with a 4 GiB limit (DS, ES and SS also
/// based at 0), outside long mode and with EFLAGS.AC clear — what `Compiler::guard` checks
/// in compiled code.
pub(crate) fn flat_segments(cpu: &Cpu) -> u8 {
    if cpu.efer & efer::LMA != 0 || cpu.rflags & flag::AC != 0 {
        return 0;
    }
    let mut flat = 0;
    if cpu.segs[sreg::CS].limit == u32::MAX {
        flat |= CS_FLAT;
    }
    if cpu.cr0 & cr0::PE != 0 && cpu.segs[sreg::SS].attr & attr::DB != 0 {
        flat |= STACK32;
    }
    for (s, seg) in cpu.segs.iter().enumerate().take(6) {
        let (_, want, kind) = seg_kind(s);
        if seg.attr as i32 & kind == want
            && seg.limit == u32::MAX
            && (!zero_base(s) || seg.base == 0)
        {
            flat |= 1 << s;
        }
    }
    flat
}

fn seg_field(seg: usize, field: usize) -> i32 {
    off32(offset_of!(Cpu, segs) + seg * std::mem::size_of::<Segment>() + field)
}

/// Memory operands the inline path handles: one of the six segments, 16/32-bit addressing
/// (64-bit addressing means long mode, where `fast_lin` never applies).
fn mem_inlinable(op: &Op) -> bool {
    op.seg < 6 && matches!(op.asize, 2 | 4) && op.base != loc::RIP && op.index != loc::RIP
}

/// A two-operand r/m form the inline ALU paths take: a general register (0-15, no AH-BH)
/// destination with a register, immediate or memory source, or a memory destination with a
/// register or immediate source.
fn rm_operands_inlinable(op: &Op) -> bool {
    let reg = |l: u8| l < 16;
    matches!(op.osize, 1 | 2 | 4 | 8)
        && match (op.dst, op.src) {
            (d, s) if reg(d) => reg(s) || s == loc::IMM || (s == loc::MEM && mem_inlinable(op)),
            (loc::MEM, s) => (reg(s) || s == loc::IMM) && mem_inlinable(op),
            _ => false,
        }
}

/// A one-operand r/m form the inline paths take: a general register (0-15, no AH-BH) or an
/// inlinable memory operand, of 1, 2, 4 or 8 bytes.
fn unary_inlinable(op: &Op) -> bool {
    matches!(op.osize, 1 | 2 | 4 | 8) && (op.dst < 16 || (op.dst == loc::MEM && mem_inlinable(op)))
}

/// The shift (not rotate) kind of a generic `shift_rotate::shift` handler.
fn shift_kind(op: &Op) -> Option<u8> {
    [sk::SHL, sk::SAL, sk::SHR, sk::SAR]
        .into_iter()
        .zip([
            shift::<{ sk::SHL }> as crate::decode::op::Handler,
            shift::<{ sk::SAL }>,
            shift::<{ sk::SHR }>,
            shift::<{ sk::SAR }>,
        ])
        .find(|(_, h)| is_handler(op, *h))
        .map(|(k, _)| k)
}

fn reg(r: u8) -> i32 {
    REGS + 8 * (r as i32 & 15)
}

/// Who set the pending lazy flags, as far as the compiler can tell at this point.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Producer {
    /// A handler call or the block start: anything.
    Unknown,
    /// An inline op of this block with this operation and size.
    Known(FlagOp, u8),
    /// An inline ADC/SBB of a register: the lazy record is its own (`Add`/`Adc1`,
    /// `Sub`/`Sbb1`, decided at run time), and RFLAGS.CF also holds its carry out, so CF-only
    /// consumers read that bit (the other RFLAGS arithmetic bits are stale, as they may be
    /// under any pending operation but INC/DEC).
    Carry,
}

/// Counts for the statistics and tests.
#[derive(Default, Clone, Copy, Debug)]
pub(crate) struct Counts {
    pub inline: u64,
    pub called: u64,
}

pub(crate) struct Compiled {
    pub code: Vec<u8>,
    pub counts: Counts,
    /// Offset of the body, past the prologue: where links from other blocks enter.
    pub body: usize,
    /// Offset of the entry's checks of `Jit::flat` (`Plan::entry_segs`), which fall into
    /// the body.
    pub check: usize,
    /// For a block on two pages, the entry static sites jump to: it compares the link
    /// context with the one the dispatcher last ran the block in (`Block::
    /// jit_span_context`), under which its second page mapped where it did, and stops the
    /// block (back to the dispatcher, which checks the page) when they differ; then the
    /// `check`s. A static site vouches for the successor's first page only. `check`
    /// otherwise.
    pub span: usize,
    /// What the entry from the dispatcher checks (`Plan::entry_segs`).
    pub entry_segs: u8,
    pub sites: [Option<StaticSite>; MAX_SITES],
}

/// Static sites a block may have: its end's two successors and its side exits'
/// (`Compiler::side_exit`), first come first served.
pub(crate) const MAX_SITES: usize = 4;

/// A `jmp rel32` at a block end whose successor lies in the block's own guest page: it goes
/// to `refund` (the generic chain) until the dispatcher has seen that successor follow and
/// patched it (`Jit::link_static`). Only 32-bit code with a flat CS gets them: the
/// successor's linear address is then the block's plus a constant, and within one page so is
/// its physical address, whatever alias or CR3 the block runs under — the jump checks
/// neither RIP nor the link context. It rests on the successor's code alone. Self-modifying
/// code drops the whole page, the site's block with it; the successor's code going any other
/// way (a deopt, a replacement) unpatches the site (`Jit::unlink_into`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct StaticSite {
    /// Offset of the `jmp rel32` from the block's code start.
    pub at: u32,
    /// Offset of the generic chain's entry that the jump goes to while unlinked.
    pub refund: u32,
    /// Physical address of the successor's first byte.
    pub target: u64,
    /// What compiled code knows to hold at the site (`Compiler::seg_ok`): when the
    /// successor's entry checks (`Compiled::entry_segs`) are part of it, the site jumps to
    /// the body, else to the checks.
    pub segs: u8,
}

/// An inline op's way out to its handler: at `label` RIP in memory is `delta` bytes behind op
/// `index`'s start; after the call the inline path's pending RIP advance is `rewind` bytes
/// (so RIP goes back by that much before continuing at `cont`).
struct Fallback {
    label: DynamicLabel,
    index: usize,
    cont: DynamicLabel,
    delta: u64,
    rewind: u64,
    /// The inline path leaves the host flags as this producer's: so does this path (from
    /// the lazy record the handler left).
    regen: Option<(FlagOp, u8)>,
    /// The flag record pending where the op starts: stored before the handler runs.
    deferred: Option<Deferred>,
}

/// The fast-TLB half of a data access's probe, emitted after the block's code (see
/// `Compiler::far_probe`).
struct FarProbe {
    label: DynamicLabel,
    /// Where the access goes on, with RCX its host address.
    join: DynamicLabel,
    /// The op's handler (a miss).
    fallback: DynamicLabel,
    /// The near page's kind (`near_fields`).
    kind: i32,
    size: u8,
    /// RAX does not hold the linear address yet: RCX holds it less the near page's tag.
    lin_in_rcx: bool,
}

/// Classes of data access with a near page each, for reads and for writes: through ESP (the
/// stack), through EBP (the frame — or, without a frame pointer, any pointer: glibc's
/// merge sort walks an array with EBP while it counts in a stack slot, which shared one
/// page), else with a displacement of 64 KiB or more (a static table indexed by a
/// register), else by base register (a loop reading two arrays through two pointers keeps
/// both pages), else without one.
pub(crate) const NEAR_CLASSES: usize = 10;

/// The near-page class of `op`'s memory operand (`NEAR_CLASSES`).
fn near_class(op: &Op) -> i32 {
    if [op.base, op.index].contains(&4) {
        return 0;
    }
    if [op.base, op.index].contains(&5) {
        return 9;
    }
    let disp = op.disp as i64 as i32;
    if op.base != loc::NO_REG && disp.unsigned_abs() >= 0x1_0000 {
        return 8;
    }
    match op.base {
        0..=3 => 1 + op.base as i32,
        6 | 7 => op.base as i32 - 1,
        _ => 7,
    }
}

/// `Ctx` offsets of the tag and host address of near page `kind` (`Ctx::near`): reads
/// 0..NEAR_CLASSES, then writes, each by `near_class`.
fn near_fields(kind: i32) -> (i32, i32) {
    use super::trampoline::NearPage;
    let at = CTX_NEAR + kind * std::mem::size_of::<NearPage>() as i32;
    (
        at + off32(offset_of!(NearPage, tag)),
        at + off32(offset_of!(NearPage, host)),
    )
}

/// The count of a shift or rotate by an immediate, masked as the CPU masks it.
fn imm_count(op: &Op, s: u8) -> u32 {
    (op.imm as u32) & if s == 8 { 0x3F } else { 0x1F }
}

struct Compiler {
    a: VecAssembler<X64Relocation>,
    ip_mask: u64,
    long: bool,
    /// Guest GPRs live in host registers (`GUEST`): every mode but 64-bit code.
    pinned: bool,
    /// Bytes of RIP advance not yet written back.
    delta: u64,
    flags: Producer,
    /// Out-of-line exit stubs: (label, op index).
    exits: Vec<(DynamicLabel, usize)>,
    /// Out-of-line handler calls for inline ops that left their fast path: (label, op index,
    /// label to continue at).
    fallbacks: Vec<Fallback>,
    far_probes: Vec<FarProbe>,
    counts: Counts,
    /// Inline ops that end the block like a handler setting `block_break`: (label, op index).
    breaks: Vec<(DynamicLabel, usize)>,
    /// The op being emitted writes flags nothing will read: skip its record (`dead_flags`).
    dead: bool,
    /// What the op just emitted does to the pending flags, for the liveness pass.
    effect: Effect,
    /// Compile every data access with the full segment checks (`Block::jit_checked`).
    checked: bool,
    /// Data segments (bits by `sreg`) `guard` has found flat since the last handler call.
    seg_ok: u8,
    /// The op being emitted.
    cur: usize,
    /// Data segments the op being emitted accesses inline.
    op_segs: u8,
    /// The op just emitted left the guest's flags of its known producer in the host flags
    /// (register ALU forms, which have no other path), and `prev_host_flags` carries that to
    /// the next op, where a Jcc uses them instead of redoing the operation.
    host_flags: bool,
    prev_host_flags: bool,
    /// Exits for a segment `guard` that fails: (label, op index, RIP bytes pending).
    deopts: Vec<(DynamicLabel, usize, u64)>,
    /// Guest bytes from the block's start to the op being emitted, while the block is one
    /// straight run (a CALL continued into its callee ends that: `None`).
    off: Option<u64>,
    /// The block's physical address, when it may have static sites (`StaticSite`).
    phys: Option<u64>,
    /// The block's end may be chained (only side exits get static sites otherwise).
    chainable: bool,
    /// The indirect-branch table's address.
    ib: usize,
    /// The first op's code, past the entry's budget check (`loop_back`).
    loop_body: DynamicLabel,
    /// What the entry from the dispatcher checks, and whether the flags are dead there.
    entry_segs: u8,
    entry_flags_dead: bool,
    /// Static sites made: (jmp offset, refund label, target, segs, ops run there, where the
    /// refund goes on to).
    sites: Vec<(usize, DynamicLabel, u64, u8, usize, DynamicLabel)>,
    /// While a side exit's taken path is emitted: the ops it has run and its way out to the
    /// dispatcher (`static_tail` makes its site for those instead of the block end's).
    side: Option<(usize, DynamicLabel)>,
    /// Side exits emitted (they leave compiled code, for the liveness pass).
    side_exits: usize,
    /// Ops in the block.
    ops_len: usize,
    /// The generic chain's entry (`chain`).
    chain_start: DynamicLabel,
    /// The way out that writes the guest registers back (see `emit`).
    out_sync: DynamicLabel,
    /// The last op emitted went on to the next instruction (no branch, no handler).
    sequential: bool,
    /// May defer flag records (`Deferred`): the second pass, which knows which are live.
    defer: bool,
    /// A live flag record not stored yet.
    deferred: Option<Deferred>,
    /// The op being emitted replaces the flags of `deferred`, which only its fallbacks
    /// still store (`settle_deferred`).
    replacing: bool,
}

/// A live lazy-flag record (or a shift's eager flags) of a 32-bit register op, not stored
/// yet because what it needs is still in the registers: most live records are live only for
/// the rare exits of the memory accesses after them. Loads, stores, moves and LEAs that
/// write none of its registers leave it pending (their fallbacks store it before calling
/// the handler), a register ALU op or shift (no exits) replaces it, and anything else stores
/// it first (`Compiler::settle_deferred`).
#[derive(Clone, Copy)]
enum Deferred {
    /// ADD/SUB/logic done in place: the result in host register `d`, the source in `Err(r)`
    /// or the immediate `Ok(v)`; the first operand is the result minus or plus it.
    Alu {
        fop: FlagOp,
        d: u8,
        src: Result<i32, u8>,
    },
    /// CMP (`test` false) or TEST of `s` (1 or 4) bytes of host register `d` (a low byte
    /// for 1) with the source in `Err(r)` or the immediate `Ok(v)`: nothing written but the
    /// host flags, so the record follows from the operands.
    Cmp {
        test: bool,
        s: u8,
        d: u8,
        src: Result<i32, u8>,
    },
    /// INC/DEC of host register `d`, whose CF is `before`'s (the producer whose record is
    /// still in memory): storing it folds that CF into RFLAGS first, as the inline INC does.
    IncDec {
        fop: FlagOp,
        d: u8,
        before: Producer,
    },
    /// SHL/SHR/SAR by an immediate of host register `d`: its CF is in `Ctx::shift_cf`, the
    /// rest follows from the result.
    Shift { k: u8, d: u8 },
    /// ROL/ROR by an immediate of host register `d`: SF/ZF/AF/PF are still `before`'s
    /// (whose record is in memory), CF and OF follow from the result. Storing it twice (a
    /// fallback's path joining) gives the same flags: materialising leaves the record's
    /// operands in place.
    Rotate { ror: bool, d: u8, before: Producer },
}

/// The scratch register a pending record's register moves to (`Compiler::settle_deferred`):
/// R13, which the ops that keep a record pending do not touch (but PUSH m32).
const SPARE: u8 = 13;

impl Deferred {
    /// The same record with host register `from` read from `to` instead.
    fn moved(self, from: u8, to: u8) -> Deferred {
        let r = |h: u8| if h == from { to } else { h };
        let src = |v: Result<i32, u8>| v.map_err(r);
        match self {
            Deferred::Alu { fop, d, src: v } => Deferred::Alu {
                fop,
                d: r(d),
                src: src(v),
            },
            Deferred::Cmp { test, s, d, src: v } => Deferred::Cmp {
                test,
                s,
                d: r(d),
                src: src(v),
            },
            Deferred::IncDec { fop, d, before } => Deferred::IncDec {
                fop,
                d: r(d),
                before,
            },
            Deferred::Shift { k, d } => Deferred::Shift { k, d: r(d) },
            Deferred::Rotate { ror, d, before } => Deferred::Rotate {
                ror,
                d: r(d),
                before,
            },
        }
    }

    /// Whether writing host register `h` loses what the record needs.
    fn needs(&self, h: u8) -> bool {
        match *self {
            // (A logic op's record is its result alone.)
            Deferred::Alu {
                fop: FlagOp::Logic,
                d,
                ..
            } => h == d,
            Deferred::Alu { d, src, .. } | Deferred::Cmp { d, src, .. } => h == d || src == Err(h),
            Deferred::IncDec { d, .. } | Deferred::Shift { d, .. } | Deferred::Rotate { d, .. } => {
                h == d
            }
        }
    }
}

/// An inline op's effect on the flags, as far as it can be seen without leaving compiled
/// code (an op that may leave it — a handler call, a fallback, a fault — reads them all).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Effect {
    /// May read them (the default: anything not known to do less).
    Read,
    /// Replaces all six arithmetic flags without reading them.
    Kill,
    /// Leaves some or all as they were (MOV, LEA, INC/DEC, rotates, shifts by CL...).
    Pass,
}

/// Which ops' flag results are dead: overwritten by a later op of the block before anything
/// could read them. Nothing leaves compiled code between ops but handler calls, fallbacks and
/// faults (`exits`), where the flags must be exact, and the block end, where the successor
/// may read them; in between, an op that replaces all six flags kills the earlier ones.
///
/// Also whether the flags are live at the block's first op (a loop back to it may leave
/// its last record unstored otherwise: `Compiler::loop_back`).
fn dead_flags(seen: &[Seen]) -> (Vec<bool>, bool) {
    let mut dead = vec![false; seen.len()];
    let mut live = true;
    for (i, op) in seen.iter().enumerate().rev() {
        dead[i] = !live;
        live = op.exits
            || match op.effect {
                Effect::Read => true,
                Effect::Kill => false,
                Effect::Pass => live,
            };
    }
    (dead, live)
}

/// Compile `block` (with checks at every data access when it is `jit_checked`). `links`:
/// the address of the block's [`super::ChainLinks`] when it may be chained (its end keeps
/// CS, the mode and the CPL); its end then follows a matching link or entry of the
/// indirect-branch table (at `ib`) instead of returning. Side exits may use the table
/// whatever the end does.
pub(crate) fn compile(
    block: &Block,
    links: Option<usize>,
    ib: usize,
) -> Result<Compiled, dynasmrt::DynasmError> {
    // The first pass finds out what each op does to the flags and where code may leave;
    // the second skips the flag records nothing reads.
    let (_, first) = emit(block, links, ib, &Plan::default())?;
    let (dead, entry_live) = dead_flags(&first);
    let plan = Plan {
        entry_flags_dead: !entry_live,
        ops: first
            .iter()
            .zip(dead)
            .map(|(f, dead)| (dead, f.segs))
            .collect(),
        // The segments used before the first handler call are checked once, at the entry
        // from the dispatcher (links keep what it found: `Jit::flat` is part of their
        // context).
        entry_segs: first
            .iter()
            .take_while(|f| !f.called)
            .fold(0, |m, f| m | f.segs),
    };
    Ok(emit(block, links, ib, &plan)?.0)
}

/// What the second pass knows from the first (empty in the first).
#[derive(Default)]
struct Plan {
    /// Per op: its flag result is dead; the data segments (and `CS_FLAT`/`STACK32`) it uses.
    ops: Vec<(bool, u8)>,
    /// What the entry from the dispatcher checks (see `compile`).
    entry_segs: u8,
    /// The first op's code reads no flags before replacing them all, and leaves none before.
    entry_flags_dead: bool,
}

/// What the first pass learnt of an op.
struct Seen {
    effect: Effect,
    /// It may leave compiled code (a handler call, a fallback).
    exits: bool,
    /// Data segments its inline accesses use (bits by `sreg`).
    segs: u8,
    /// It was not compiled inline: its handler is called.
    called: bool,
}

fn emit(
    block: &Block,
    links: Option<usize>,
    ib: usize,
    plan: &Plan,
) -> Result<(Compiled, Vec<Seen>), dynasmrt::DynasmError> {
    let (ops, bitness, ip_mask) = (&block.ops, block.bitness(), block.ip_mask);
    let (checked, entry_segs) = (block.jit_checked.get(), plan.entry_segs);
    let mut seen = Vec::with_capacity(ops.len());
    // Sized for most blocks (about 1 KiB of code, dozens of labels): growing the buffers
    // showed as reallocations in a boot's profile.
    let mut a = VecAssembler::<X64Relocation>::new_with_capacity(0, 4096, 0, 0, 64, 0, 128);
    let out = a.new_dynamic_label();
    let chain_start = a.new_dynamic_label();
    let out_sync = a.new_dynamic_label();
    let loop_body = a.new_dynamic_label();
    let mut c = Compiler {
        a,
        ip_mask,
        long: bitness == 64,
        pinned: bitness != 64,
        delta: 0,
        flags: Producer::Unknown,
        exits: Vec::new(),
        fallbacks: Vec::new(),
        far_probes: Vec::new(),
        counts: Counts::default(),
        breaks: Vec::new(),
        dead: false,
        effect: Effect::Read,
        checked,
        seg_ok: 0,
        cur: 0,
        op_segs: 0,
        host_flags: false,
        prev_host_flags: false,
        deopts: Vec::new(),
        off: Some(0),
        phys: (!checked && bitness == 32).then_some(block.phys),
        chainable: links.is_some(),
        ib,
        loop_body,
        entry_segs,
        entry_flags_dead: plan.entry_flags_dead,
        sites: Vec::new(),
        side: None,
        side_exits: 0,
        ops_len: ops.len(),
        chain_start,
        out_sync,
        sequential: false,
        defer: !plan.ops.is_empty(),
        deferred: None,
        replacing: false,
    };
    // Six pushes and 8 bytes after the return address keep RSP 16-byte aligned at calls.
    asm!(c.a
        ; push rbx
        ; push rbp
        ; push r12
        ; push r13
        ; push r14
        ; push r15
        ; sub rsp, 8
        ; mov rbx, rdi
        ; mov r12, QWORD [rbx + CTX_BUDGET]
    );
    if c.pinned {
        reload(&mut c.a);
    }
    let stop = c.a.new_dynamic_label();
    let span = c.a.offset().0;
    if block.phys2.is_some() {
        let seen = block.jit_span_context.as_ptr() as i64;
        asm!(c.a
            ; mov rax, QWORD [rbx + LINK_CONTEXT]
            ; mov rcx, QWORD seen
            ; cmp rax, QWORD [rcx]
            ; jne =>stop
        );
    }
    // Static links whose site cannot vouch for the entry's checks enter here, with the
    // guest registers live (the reload above is the dispatcher's).
    let check = c.a.offset().0;
    if !checked && entry_segs != 0 {
        let deopt = c.a.new_dynamic_label();
        c.deopts.push((deopt, 0, 0));
        let need = entry_segs as i32;
        asm!(c.a
            ; movzx eax, BYTE [rbx + JIT_FLAT]
            ; and eax, need
            ; cmp eax, need
            ; jne =>deopt
        );
        c.seg_ok = entry_segs;
    }
    let body = c.a.offset().0;
    // The budget is checked once, here, where links enter too: a block runs whole or not at
    // all (the dispatcher runs a block the budget cuts short in tier 0), so no op needs a
    // stop of its own and nothing but a fault or a handler leaves the block between ops.
    let n = ops.len() as i32;
    asm!(c.a
        ; cmp r12, n
        ; jb =>stop
        ; =>loop_body
    );
    for (i, op) in ops.iter().enumerate() {
        let (dead, segs) = plan.ops.get(i).copied().unwrap_or_default();
        c.dead = dead;
        c.cur = i;
        c.effect = Effect::Read;
        c.op_segs = 0;
        c.prev_host_flags = std::mem::take(&mut c.host_flags);
        let guarded = !c.checked && segs & !c.seg_ok != 0;
        c.settle_deferred(op, guarded);
        // Guards go before any of the op's code: its paths may skip its accesses.
        if guarded {
            c.prev_host_flags = false;
            for seg in 0..8 {
                if segs & (1 << seg) != 0 {
                    c.guard(seg);
                }
            }
        }
        let exits = c.exits.len() + c.fallbacks.len() + c.breaks.len() + c.side_exits;
        let delta = c.delta;
        if is_handler(op, crate::exec::fast::call_rel32_sb) {
            c.off = None;
        }
        let called = !c.inline(i, op);
        if std::mem::take(&mut c.replacing) {
            // (`settle_deferred` only lets ops through that are always compiled inline.)
            debug_assert!(!called);
            c.deferred = None;
        }
        if called {
            c.call(i, op);
            c.counts.called += 1;
        } else {
            c.counts.inline += 1;
        }
        c.sequential = !called && c.delta == delta + op.len as u64;
        c.off = c.off.map(|o| o.wrapping_add(op.len as u64));
        if is_handler(op, crate::exec::fast::jmp_rel_sb) {
            // (In the block's page or not: `page_offset` tells.)
            c.off = c.off.map(|o| o.wrapping_add(op.imm));
        }
        let left = c.exits.len() + c.fallbacks.len() + c.breaks.len() + c.side_exits != exits;
        seen.push(Seen {
            effect: c.effect,
            exits: left,
            segs: c.op_segs,
            called,
        });
    }
    if let Some(df) = c.deferred.take() {
        c.store_deferred(df);
    }
    // (No host flags are live at the block end.)
    if c.delta != 0 && c.add_rip_in_page(0, c.delta as i64) {
        c.delta = 0;
    }
    c.flush_rip();
    if c.sequential {
        c.static_tail(ops.len() - 1, 0);
    }
    if let Some(links) = links {
        // The block's successors are its direct branch's or its fall-through.
        let last = &ops[ops.len() - 1];
        let direct = c.sequential
            || matches!(fast_form(last.exec), Some(FastForm::Jcc32))
            || is_handler(last, crate::exec::control::jcc)
            || is_handler(last, crate::exec::control::jmp_rel);
        // A computed JMP (a switch's jump table, an interpreter's dispatch) has more targets
        // than two links hold, and their compares would mostly miss.
        let computed = is_handler(last, crate::exec::control::jmp_ind);
        let start = c.chain_start;
        c.chain(
            ops.len(),
            Some(links).filter(|_| !computed),
            (!direct).then_some(ib),
            start,
        );
    }
    // Every exit but a handler's writes the guest registers back (`out_sync`); after a
    // handler's failure they are in `Cpu::regs` already (`out`).
    asm!(c.a
        ; xor eax, eax
        ; xor edx, edx
        ; jmp =>out_sync
    );
    // A static site not linked yet gives the budget back and takes the generic chain (or,
    // a side exit's, the way out).
    for &(_, refund, _, _, n, to) in &c.sites {
        let n = n as i32;
        asm!(c.a
            ; =>refund
            ; add r12, n
            ; jmp =>to
        );
    }
    for p in std::mem::take(&mut c.far_probes) {
        c.far_probe(&p);
    }
    for f in std::mem::take(&mut c.fallbacks) {
        asm!(c.a ; =>f.label);
        if let Some(df) = f.deferred {
            // (`store_deferred` leaves `flags` as after the op that made it: the path joins
            // the inline one, which did not store it, so the compiler's view is unchanged.)
            let flags = c.flags;
            c.store_deferred(df);
            c.flags = flags;
        }
        c.fallback_call(f.index, &ops[f.index], f.delta, f.rewind);
        if let Some((fop, s)) = f.regen {
            c.regenerate_flags(fop, s);
        }
        let cont = f.cont;
        asm!(c.a ; jmp =>cont);
    }
    let st = ST_STOP as i32;
    asm!(c.a
        ; =>stop
        ; xor edx, edx
        ; mov eax, st
        ; jmp =>out_sync
    );
    for (l, i, delta) in std::mem::take(&mut c.deopts) {
        asm!(c.a ; =>l);
        c.delta = delta;
        c.flush_rip();
        let (n, st) = (i as i32, ST_DEOPT as i32);
        asm!(c.a
            ; mov edx, n
            ; mov eax, st
            ; jmp =>out_sync
        );
    }
    for (l, i) in std::mem::take(&mut c.breaks) {
        let (n, st) = (i as i32, ST_BREAK as i32);
        asm!(c.a
            ; =>l
            ; mov BYTE [rbx + BLOCK_BREAK], 1
            ; mov edx, n
            ; mov eax, st
            ; jmp =>out_sync
        );
    }
    for (l, i) in std::mem::take(&mut c.exits) {
        // Blocks hold at most `MAX_OPS` ops.
        let i = i as i32;
        asm!(c.a
            ; =>l
            ; mov edx, i
            ; jmp =>out
        );
    }
    // Links do not say which block runs: the one that leaves does (for `Outcome`s). The
    // rest of the way out is shared (`Shared`).
    let block = block as *const Block as i64;
    let sync = if c.pinned {
        CTX_OUT_SYNC_PINNED
    } else {
        CTX_OUT
    };
    asm!(c.a
        ; =>out_sync
        ; mov rcx, QWORD block
        ; jmp QWORD [rbx + sync]
        ; =>out
        ; mov rcx, QWORD block
        ; jmp QWORD [rbx + CTX_OUT]
    );
    debug_assert_eq!(ST_OK, 0);
    let counts = c.counts;
    let mut sites = [None; MAX_SITES];
    for (slot, &(at, refund, target, segs, _, _)) in sites.iter_mut().zip(&c.sites) {
        let refund = c.a.labels().resolve_dynamic(refund)?.0;
        *slot = Some(StaticSite {
            at: at as u32,
            refund: refund as u32,
            target,
            segs,
        });
    }
    let code = Compiled {
        code: c.a.finalize()?,
        counts,
        body,
        check,
        span,
        entry_segs: plan.entry_segs,
        sites,
    };
    Ok((code, seen))
}

/// Write the pinned guest registers back to `Cpu::regs`.
fn spill(a: &mut VecAssembler<X64Relocation>) {
    for (r, h) in GUEST.iter().enumerate() {
        let (o, h) = (reg(r as u8), *h);
        asm!(a ; mov QWORD [rbx + o], Rq(h));
    }
}

/// Load the pinned guest registers from `Cpu::regs`.
fn reload(a: &mut VecAssembler<X64Relocation>) {
    for (r, h) in GUEST.iter().enumerate() {
        let (o, h) = (reg(r as u8), *h);
        asm!(a ; mov Rq(h), QWORD [rbx + o]);
    }
}

/// Offsets, in the code all blocks share (`shared`), of its routines; compiled code reaches
/// them through `Ctx::shared`, in this order.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Shared {
    /// Call-out thunks (RAX = the function, RCX and RDX its first two arguments), for blocks
    /// with pinned guest registers (written back before, reloaded after) and without.
    pub thunk_pinned: usize,
    pub thunk: usize,
    /// The way out of compiled code (RAX = status, RDX = op index, RCX = the block that
    /// leaves), writing the pinned registers back first or not.
    pub out_sync_pinned: usize,
    pub out: usize,
    /// A fallback's handler call (`Compiler::fallback_call`), with and without pinned guest
    /// registers.
    pub fallback_pinned: usize,
    pub fallback: usize,
}

/// The code every block shares instead of carrying its own copy (175 bytes a block over a boot):
/// `Jit` places it at the start of each code cache generation.
pub(crate) fn shared() -> Result<(Vec<u8>, Shared), dynasmrt::DynasmError> {
    let mut a = VecAssembler::<X64Relocation>::new(0);
    // The calls leave RSP 8 bytes off the 16-byte alignment the callee expects.
    let call = |a: &mut VecAssembler<X64Relocation>| {
        asm!(a
            ; mov rdi, rcx
            ; mov rsi, rdx
            // (`call_op` counts `icount` from it; R12 itself survives the call.)
            ; mov QWORD [rbx + CTX_BUDGET], r12
            ; sub rsp, 8
            ; call rax
            ; add rsp, 8
        );
    };
    let thunk_pinned = a.offset().0;
    spill(&mut a);
    call(&mut a);
    reload(&mut a);
    asm!(a ; ret);
    let thunk = a.offset().0;
    call(&mut a);
    asm!(a ; ret);
    let out_sync_pinned = a.offset().0;
    spill(&mut a);
    let out = a.offset().0;
    asm!(a
        ; mov QWORD [rbx + CTX_BUDGET], r12
        ; mov QWORD [rbx + CTX_BLOCK], rcx
        ; shl rdx, 8
        ; or rax, rdx
        ; add rsp, 8
        ; pop r15
        ; pop r14
        ; pop r13
        ; pop r12
        ; pop rbp
        ; pop rbx
        ; ret
    );
    // A fallback: RCX = the op, EDX = the bytes RIP is behind the op's start (bits 0-15)
    // and the bytes it is to be left behind the op's end after the handler (bits 16-31), the
    // amounts `flush_rip` and the rewind after the call would emit in each block. Returns
    // `call_op`'s status in RAX, with ZF set when it is OK.
    let mut fallbacks = [0; 2];
    for (k, pinned) in [true, false].into_iter().enumerate() {
        fallbacks[k] = a.offset().0;
        let call_op = addr(trampoline::call_op as *const () as usize);
        let fail = a.new_dynamic_label();
        asm!(a
            ; mov QWORD [rbx + CTX_BUDGET], r12
            ; movzx eax, dx
            ; add rax, QWORD [rbx + RIP]
            ; and rax, QWORD [rbx + CTX_IP_MASK]
            ; mov QWORD [rbx + RIP], rax
            // (Also the 16-byte alignment for the call below.)
            ; push rdx
        );
        if pinned {
            spill(&mut a);
        }
        asm!(a
            ; mov rdi, rbx
            ; mov rsi, rcx
            ; mov rax, QWORD call_op
            ; call rax
        );
        if pinned {
            reload(&mut a);
        }
        asm!(a
            ; pop rdx
            ; test rax, rax
            ; jnz =>fail
            ; shr edx, 16
            ; mov rcx, QWORD [rbx + RIP]
            ; sub rcx, rdx
            ; and rcx, QWORD [rbx + CTX_IP_MASK]
            ; mov QWORD [rbx + RIP], rcx
            ; test rax, rax
            ; =>fail
            ; ret
        );
    }
    let code = a.finalize()?;
    Ok((
        code,
        Shared {
            thunk_pinned,
            thunk,
            out_sync_pinned,
            out,
            fallback_pinned: fallbacks[0],
            fallback: fallbacks[1],
        },
    ))
}

/// Host address of an `extern "sysv64"` helper, as an immediate.
fn addr(p: usize) -> i64 {
    p as i64
}

impl Compiler {
    /// The block end (every op ran, RIP written back): go straight on to a compiled successor
    /// through one of the block's two links when the dispatcher would: budget left after
    /// this block, no event to take (`chain_poll`, only after a handler used the bus or
    /// changed IF/TF/RF/the shadow/HLT/the debug registers/NMI blocking — inline ops do
    /// none of that), and a link — the block's own two, else (given `ib`) the
    /// indirect table's entry for RIP — recorded under the same RIP and link context
    /// (`Jit::context`: chain stamp, CS base, CPL, CS limit and code size, one word). The ops
    /// just run are counted into `icount` (RDTSC in the successor must see them) and the
    /// budget. Falls out of the emitted code when no link is taken.
    ///
    /// A block that ends in a computed JMP (`table_only`) goes to the table without trying
    /// its links: a jump table's targets are more than two, so their compares mostly miss
    /// (vbench's bytecode dispatch: 1216 → 1183 ms).
    ///
    /// A block whose successors are its direct branch's or its fall-through skips the table
    /// (gets no `ib`) because a hit there is a transition the dispatcher
    /// never sees, so it never gets the link or static site that would be cheaper: in a boot
    /// with `vbench=1000`, 270 M block ends of Jcc blocks were table hits before.
    ///
    /// `len`: the ops to count; `start`: the label to place at the entry. A side exit that
    /// has no static site (`side_exit`) looks in the table alone (`links` = `None`).
    fn chain(&mut self, len: usize, links: Option<usize>, ib: Option<usize>, start: DynamicLabel) {
        use super::{ChainLink, IB_SLOTS};
        let done = self.a.new_dynamic_label();
        let poll = self.a.new_dynamic_label();
        let look = self.a.new_dynamic_label();
        let n = len as i32;
        let poll_fn = addr(trampoline::chain_poll as *const () as usize);
        let size = std::mem::size_of::<ChainLink>() as i32;
        let (l_rip, l_stamp, l_entry) = (
            off32(offset_of!(ChainLink, rip)),
            off32(offset_of!(ChainLink, stamp)),
            off32(offset_of!(ChainLink, entry)),
        );
        // (The successor's entry checks the budget.)
        asm!(self.a
            ; =>start
            ; cmp BYTE [rbx + JIT_POLL], 0
            ; jne =>poll
            ; =>look
        );
        if let Some(links) = links {
            let links = links as i64;
            asm!(self.a ; mov rdx, QWORD links);
        }
        asm!(self.a
            ; mov rax, QWORD [rbx + LINK_CONTEXT]
            ; mov r13, QWORD [rbx + LINK_CONTEXT_GLOBAL]
            ; mov rcx, QWORD [rbx + RIP]
        );
        // The block's two links, then the indirect table's slot for RIP (in RDX).
        let first = if links.is_some() { 0 } else { 2 };
        for k in first..2 + ib.is_some() as i32 {
            let next = self.a.new_dynamic_label();
            let o = if k < 2 { k * size } else { 0 };
            if let Some(ib) = ib.filter(|_| k == 2) {
                let ib = ib as i64;
                let (shift, slots) = (size.trailing_zeros() as i8, (IB_SLOTS - 1) as i32);
                asm!(self.a
                    ; mov rdx, rcx
                    ; shr rdx, 10
                    ; xor rdx, rcx
                    ; and edx, slots
                    ; shl rdx, shift
                    ; mov r14, QWORD ib
                    ; add rdx, r14
                );
            }
            let hit = self.a.new_dynamic_label();
            asm!(self.a
                ; cmp rcx, QWORD [rdx + o + l_rip]
                ; jne =>next
                ; cmp rax, QWORD [rdx + o + l_stamp]
                ; je =>hit
                ; cmp r13, QWORD [rdx + o + l_stamp]
                ; jne =>next
                ; =>hit
                ; sub r12, n
                ; jmp QWORD [rdx + o + l_entry]
                ; =>next
            );
        }
        asm!(self.a
            ; jmp =>done
            ; =>poll
        );
        self.call_out(poll_fn, None);
        asm!(self.a
            ; test eax, eax
            ; jnz =>look
            ; =>done
        );
    }

    /// Write the pending RIP advance back to `Cpu::rip`.
    fn flush_rip(&mut self) {
        if self.delta == 0 {
            return;
        }
        let d = self.delta as i32;
        self.delta = 0;
        self.advance_rip_rax(d);
        asm!(self.a ; mov QWORD [rbx + RIP], rax);
    }

    /// RIP += `d` with one read-modify-write when the new RIP is `rel` bytes past the current
    /// op's start and that lies in the block's page, in 32-bit code with a flat CS: RIP is
    /// then the linear address, and staying in the page it cannot wrap at 4 GiB, so no mask
    /// is needed (nor a limit check). Clobbers the host flags. False (nothing emitted) if
    /// that is not known.
    fn add_rip_in_page(&mut self, rel: i64, d: i64) -> bool {
        let Ok(d) = i32::try_from(d) else {
            return false;
        };
        if self.page_offset(rel).is_none() || !self.assume(CS_FLAT) {
            return false;
        }
        // (A branch back to the block's first op from an unflushed RIP has nothing to add.)
        if d != 0 {
            asm!(self.a ; add QWORD [rbx + RIP], d);
        }
        true
    }

    /// The offset in the block's page of the guest byte `rel` bytes past the current op's
    /// start, while the block is one straight run of a known page and that byte is in it.
    fn page_offset(&self, rel: i64) -> Option<i64> {
        let (phys, off) = (self.phys?, self.off?);
        let at = (phys & 0xFFF) as i64 + off as i64 + rel;
        (0..0x1000).contains(&at).then_some(at)
    }

    /// RAX = (RIP + d) & ip_mask (leaving the host flags alone).
    fn advance_rip_rax(&mut self, d: i32) {
        asm!(self.a
            ; mov rax, QWORD [rbx + RIP]
            ; lea rax, [rax + d]
        );
        match self.ip_mask {
            0xFFFF => asm!(self.a ; movzx eax, ax),
            0xFFFF_FFFF => asm!(self.a ; mov eax, eax),
            _ => {}
        }
    }

    /// A handler call for op `i`, leaving the block on any status but OK.
    fn call(&mut self, i: usize, op: &Op) {
        self.flush_rip();
        self.emit_call(i, op);
        self.flags = Producer::Unknown;
        // A handler may load segment registers, EFLAGS.AC or EFER.
        self.seg_ok = 0;
    }

    /// The op just emitted set the pending flags to `p` — unless they were dead, when it
    /// recorded nothing.
    fn produced(&mut self, p: Producer) {
        self.flags = if self.dead { Producer::Unknown } else { p };
    }

    /// Where guest register `r` lives while compiled code runs: a host register, or (64-bit
    /// code, and R8-R15 there) `Cpu::regs`.
    fn home(&self, r: u8) -> Option<u8> {
        (self.pinned && r < 8).then(|| GUEST[r as usize])
    }

    /// Host register `to` = guest register `r`'s low `s` bytes, zero-extended.
    fn get(&mut self, s: u8, r: u8, to: Reg) {
        match self.home(r) {
            Some(h) => zext(&mut self.a, s, to as u8, h),
            None => load_sized(&mut self.a, s, to, CPU_PTR, reg(r)),
        }
    }

    /// Guest register `r`'s low `s` bytes = host register `from`'s (a 4-byte write clears
    /// the upper half, as a 32-bit register write does; `from`'s upper half may be dirty).
    fn put(&mut self, s: u8, from: Reg, r: u8) {
        let f = from as u8;
        match self.home(r) {
            Some(h) => match s {
                1 => asm!(self.a ; mov Rb(h), Rb(f)),
                2 => asm!(self.a ; mov Rw(h), Rw(f)),
                4 => asm!(self.a ; mov Rd(h), Rd(f)),
                _ => asm!(self.a ; mov Rq(h), Rq(f)),
            },
            None => {
                let o = reg(r);
                match s {
                    1 => asm!(self.a ; mov BYTE [rbx + o], Rb(f)),
                    2 => asm!(self.a ; mov WORD [rbx + o], Rw(f)),
                    4 => asm!(self.a ; mov Rd(f), Rd(f) ; mov QWORD [rbx + o], Rq(f)),
                    _ => asm!(self.a ; mov QWORD [rbx + o], Rq(f)),
                }
            }
        }
    }

    /// Host register `to` = AH, CH, DH or BH (`r` = 0-3), zero-extended.
    fn get_hi(&mut self, r: u8, to: Reg) {
        let t = to as u8;
        match self.home(r) {
            Some(h) => asm!(self.a ; movzx Rd(t), Rw(h) ; shr Rd(t), 8),
            None => {
                let o = reg(r) + 1;
                asm!(self.a ; movzx Rd(t), BYTE [rbx + o]);
            }
        }
    }

    /// AH, CH, DH or BH (`r` = 0-3) = the low byte of `from` (which this clobbers).
    fn put_hi(&mut self, from: Reg, r: u8) {
        let f = from as u8;
        match self.home(r) {
            Some(h) => {
                let keep = !0xFF00i32;
                asm!(self.a
                    ; movzx Rd(f), Rb(f)
                    ; shl Rd(f), 8
                    ; and Rq(h), keep
                    ; or Rq(h), Rq(f)
                );
            }
            None => {
                let o = reg(r) + 1;
                asm!(self.a ; mov BYTE [rbx + o], Rb(f));
            }
        }
    }

    /// Call the `extern "sysv64"` function at `f` with RDI = the `Cpu` and RSI = `arg1`, the guest registers written back before and reloaded after
    /// (Rust may read them, and the call clobbers the caller-saved ones) by the thunk all
    /// blocks share (`Shared`). The result is in RAX; the host flags are the callee's.
    fn call_out(&mut self, f: i64, arg1: Option<i64>) {
        asm!(self.a ; mov rcx, rbx);
        if let Some(v) = arg1 {
            asm!(self.a ; mov rdx, QWORD v);
        }
        let thunk = if self.pinned {
            CTX_THUNK_PINNED
        } else {
            CTX_THUNK
        };
        asm!(self.a
            ; mov rax, QWORD f
            ; call QWORD [rbx + thunk]
        );
    }

    /// A fallback's handler call, with RIP `delta` bytes behind the op's start before it and
    /// to be left `rewind` bytes behind where the handler leaves it after (the inline path's
    /// view), through the shared routine (`Shared::fallback`): 34 bytes a fallback instead
    /// of the ~90 of the RIP arithmetic and the call spelled out.
    fn fallback_call(&mut self, i: usize, op: &Op, delta: u64, rewind: u64) {
        let (Ok(d), Ok(r)) = (u16::try_from(delta), u16::try_from(rewind)) else {
            self.delta = delta;
            self.flush_rip();
            self.emit_call(i, op);
            if rewind != 0 {
                self.advance_rip_rax((rewind as i32).wrapping_neg());
                asm!(self.a ; mov QWORD [rbx + RIP], rax);
            }
            return;
        };
        self.delta = 0;
        let exit = self.a.new_dynamic_label();
        self.exits.push((exit, i));
        let op_ptr = op as *const Op as i64;
        let amounts = d as i32 | (r as i32) << 16;
        let thunk = if self.pinned {
            CTX_FALLBACK_PINNED
        } else {
            CTX_FALLBACK
        };
        asm!(self.a
            ; mov rcx, QWORD op_ptr
            ; mov edx, amounts
            ; call QWORD [rbx + thunk]
            ; jnz =>exit
        );
    }

    fn emit_call(&mut self, i: usize, op: &Op) {
        let exit = self.a.new_dynamic_label();
        self.exits.push((exit, i));
        let op_ptr = op as *const Op as i64;
        let f = addr(trampoline::call_op as *const () as usize);
        // A failing handler leaves through `out`, with `Cpu::regs` as it left them.
        self.call_out(f, Some(op_ptr));
        asm!(self.a
            ; test rax, rax
            ; jnz =>exit
        );
    }

    /// Emit op `i` inline if it is a form we compile; false to have it called.
    fn inline(&mut self, i: usize, op: &Op) -> bool {
        let form = fast_form(op.exec);
        match form {
            Some(FastForm::MovRR(s)) => {
                self.effect = Effect::Pass;
                if let (Some(d), Some(r)) = (self.home(op.dst), self.home(op.src)) {
                    match s {
                        1 => asm!(self.a ; mov Rb(d), Rb(r)),
                        2 => asm!(self.a ; mov Rw(d), Rw(r)),
                        4 => asm!(self.a ; mov Rd(d), Rd(r)),
                        _ => asm!(self.a ; mov Rq(d), Rq(r)),
                    }
                } else {
                    self.get(s, op.src, Reg::Rax);
                    self.put(s, Reg::Rax, op.dst);
                }
            }
            Some(FastForm::MovRI(s)) => {
                self.effect = Effect::Pass;
                let m = crate::flags::size_mask(s);
                let v = (op.imm & m) as i64;
                asm!(self.a ; mov rax, QWORD v);
                self.put(s, Reg::Rax, op.dst);
            }
            Some(FastForm::AluRR { k, s }) => {
                self.effect = Effect::Kill;
                match (self.home(op.dst), self.home(op.src)) {
                    (Some(d), Some(r)) if k != kind::CMP && k != kind::TEST => {
                        self.alu_in_place(k, s, op.dst, d, Err(r))
                    }
                    (Some(d), Some(r)) if self.cmp_defers(s, op) => {
                        self.cmp_deferred(k == kind::TEST, s, d, Err(r))
                    }
                    _ => {
                        self.get(s, op.dst, Reg::Rax);
                        self.get(s, op.src, Reg::Rcx);
                        self.alu(k, s, Some(op.dst));
                    }
                }
                self.host_flags = true;
            }
            Some(FastForm::AluRI { k, s }) => {
                self.effect = Effect::Kill;
                let m = crate::flags::size_mask(s);
                match self.home(op.dst) {
                    Some(d) if k != kind::CMP && k != kind::TEST && s <= 4 => {
                        let v = (op.imm & m) as u32 as i32;
                        self.alu_in_place(k, s, op.dst, d, Ok(v))
                    }
                    Some(d) if self.cmp_defers(s, op) => {
                        let v = (op.imm & m) as u32 as i32;
                        self.cmp_deferred(k == kind::TEST, s, d, Ok(v))
                    }
                    _ => {
                        self.get(s, op.dst, Reg::Rax);
                        let v = (op.imm & m) as i64;
                        asm!(self.a ; mov rcx, QWORD v);
                        self.alu(k, s, Some(op.dst));
                    }
                }
                self.host_flags = true;
            }
            Some(FastForm::Inc(s)) | Some(FastForm::Dec(s)) => {
                let inc = matches!(form, Some(FastForm::Inc(_)));
                self.effect = Effect::Pass;
                if let (true, false, 4, Some(d)) = (self.defer, self.dead, s, self.home(op.dst)) {
                    // The record in memory stays the previous producer's until this one's
                    // is stored (`Deferred::IncDec`).
                    if inc {
                        asm!(self.a ; inc Rd(d));
                    } else {
                        asm!(self.a ; dec Rd(d));
                    }
                    let fop = if inc { FlagOp::Inc } else { FlagOp::Dec };
                    self.deferred = Some(Deferred::IncDec {
                        fop,
                        d,
                        before: self.flags,
                    });
                    self.flags = Producer::Known(fop, s);
                    return self.advance(op, form);
                }
                if !self.dead {
                    self.fold_cf();
                }
                self.get(s, op.dst, Reg::Rax);
                if inc {
                    asm!(self.a ; lea rdx, [rax + 1]);
                } else {
                    asm!(self.a ; lea rdx, [rax - 1]);
                }
                mask(&mut self.a, s, Reg::Rdx);
                self.put(s, Reg::Rdx, op.dst);
                if self.dead {
                    self.flags = Producer::Unknown;
                    return self.advance(op, form);
                }
                let fop = if inc { FlagOp::Inc } else { FlagOp::Dec };
                let w = op_size(fop, s);
                asm!(self.a
                    ; mov QWORD [rbx + L_A], rax
                    ; mov QWORD [rbx + L_B], 1
                    ; mov QWORD [rbx + L_RES], rdx
                    ; mov WORD [rbx + L_OP], w
                );
                self.flags = Producer::Known(fop, s);
            }
            Some(FastForm::Lea(s)) if op.base != loc::RIP => {
                self.effect = Effect::Pass;
                // lea_r runs with a 32-bit address: the sum is masked to 32 bits.
                match (s, self.home(op.dst)) {
                    // Straight into the pinned register (a 32-bit LEA zero-extends).
                    (4, Some(d)) => self.sum32_to(op, d),
                    _ => {
                        self.sum32(op);
                        self.put(s, Reg::Rax, op.dst);
                    }
                }
            }
            Some(FastForm::MovRM(s)) if mem_inlinable(op) => {
                let cont = self.mem_probe(i, op, s, false);
                match self.home(op.dst) {
                    Some(h) if s == 4 => asm!(self.a ; mov Rd(h), DWORD [rcx]),
                    _ => {
                        load_sized(&mut self.a, s, Reg::Rax, Reg::Rcx as u8, 0);
                        self.put(s, Reg::Rax, op.dst);
                    }
                }
                asm!(self.a ; =>cont);
            }
            Some(FastForm::AluRM { k, s }) if mem_inlinable(op) => {
                let cont = self.mem_probe(i, op, s, false);
                let logic = matches!(k, kind::AND | kind::OR | kind::XOR);
                if let (4, Some(d), true) = (s, self.home(op.dst), self.dead || logic)
                    && k != kind::CMP
                    && k != kind::TEST
                {
                    // In place on the pinned register: the flags are dead, or a logic op's
                    // record needs only the result.
                    match k {
                        kind::ADD => asm!(self.a ; add Rd(d), DWORD [rcx]),
                        kind::SUB => asm!(self.a ; sub Rd(d), DWORD [rcx]),
                        kind::AND => asm!(self.a ; and Rd(d), DWORD [rcx]),
                        kind::OR => asm!(self.a ; or Rd(d), DWORD [rcx]),
                        _ => asm!(self.a ; xor Rd(d), DWORD [rcx]),
                    }
                    let fop = match k {
                        kind::ADD => FlagOp::Add,
                        kind::SUB => FlagOp::Sub,
                        _ => FlagOp::Logic,
                    };
                    if !self.dead {
                        asm!(self.a ; mov edx, Rd(d));
                        self.record(fop, s);
                    }
                    self.produced(Producer::Known(fop, s));
                    asm!(self.a ; =>cont);
                    self.host_flags_on_both_paths();
                    return self.advance(op, form);
                }
                match s {
                    1 => asm!(self.a ; movzx ecx, BYTE [rcx]),
                    2 => asm!(self.a ; movzx ecx, WORD [rcx]),
                    4 => asm!(self.a ; mov ecx, DWORD [rcx]),
                    _ => asm!(self.a ; mov rcx, QWORD [rcx]),
                }
                self.get(s, op.dst, Reg::Rax);
                self.alu(k, s, Some(op.dst));
                asm!(self.a ; =>cont);
                self.host_flags_on_both_paths();
            }
            Some(FastForm::AluMR { k, s } | FastForm::AluMI { k, s }) if mem_inlinable(op) => {
                // `fast::alu_m`: the destination is read with write intent (the write TLB)
                // unless the op only compares; flags and the store follow the read.
                let writes = k != kind::CMP && k != kind::TEST;
                let cont = self.mem_probe(i, op, s, writes);
                asm!(self.a ; mov r14, rcx);
                match s {
                    1 => asm!(self.a ; movzx eax, BYTE [r14]),
                    2 => asm!(self.a ; movzx eax, WORD [r14]),
                    4 => asm!(self.a ; mov eax, DWORD [r14]),
                    _ => asm!(self.a ; mov rax, QWORD [r14]),
                }
                if matches!(form, Some(FastForm::AluMR { .. })) {
                    self.get(s, op.src, Reg::Rcx);
                } else {
                    let v = (op.imm & crate::flags::size_mask(s)) as i64;
                    asm!(self.a ; mov rcx, QWORD v);
                }
                self.alu(k, s, None);
                if writes {
                    self.rm_store_rdx(op, s);
                }
                asm!(self.a ; =>cont);
                self.host_flags_on_both_paths();
            }
            Some(FastForm::MovMR(s)) if mem_inlinable(op) => {
                let cont = self.mem_probe(i, op, s, true);
                let v = match self.home(op.src) {
                    Some(h) => h,
                    None => {
                        self.get(8, op.src, Reg::Rax);
                        Reg::Rax as u8
                    }
                };
                match s {
                    1 => asm!(self.a ; mov BYTE [rcx], Rb(v)),
                    2 => asm!(self.a ; mov WORD [rcx], Rw(v)),
                    4 => asm!(self.a ; mov DWORD [rcx], Rd(v)),
                    _ => asm!(self.a ; mov QWORD [rcx], Rq(v)),
                }
                asm!(self.a ; =>cont);
            }
            Some(FastForm::MovMI(s)) if mem_inlinable(op) => {
                let cont = self.mem_probe(i, op, s, true);
                let v = (op.imm & crate::flags::size_mask(s)) as i64;
                asm!(self.a ; mov rax, QWORD v);
                match s {
                    1 => asm!(self.a ; mov BYTE [rcx], al),
                    2 => asm!(self.a ; mov WORD [rcx], ax),
                    4 => asm!(self.a ; mov DWORD [rcx], eax),
                    _ => asm!(self.a ; mov QWORD [rcx], rax),
                }
                asm!(self.a ; =>cont);
            }
            // Counts of the operand width or more (8/16-bit operands) leave CF undefined on
            // the host: those are called.
            Some(FastForm::ShiftRI { k, s }) if imm_count(op, s) < s as u32 * 8 => {
                self.shift_ri(k, s, op)
            }
            Some(FastForm::Ret32) if !self.long => self.ret32(i, op),
            Some(FastForm::Call32) if !self.long => self.call32(i, op, false),
            Some(FastForm::Call32Sb) if !self.long => self.call32(i, op, true),
            Some(FastForm::Jcc32) if !self.long => self.jcc(i, op, op.aux),
            None if self.push32_inline(op) => self.push32(i, op),
            None if self.pop32_inline(op) => self.pop32(i, op),
            // DF is not part of the lazy record: the handlers only flip the bit.
            Some(FastForm::Cld) => {
                self.effect = Effect::Pass;
                let keep = !(flag::DF as i32);
                asm!(self.a ; and QWORD [rbx + RFLAGS], keep)
            }
            Some(FastForm::Std) => {
                self.effect = Effect::Pass;
                let df = flag::DF as i32;
                asm!(self.a ; or QWORD [rbx + RFLAGS], df)
            }
            // (The prefix and address size are checked here, not only by the handler's
            // address: rustc merges functions whose code is identical, so these wrappers and
            // the generic string handler that other forms use may share one address.)
            Some(f @ (FastForm::Lods | FastForm::Stos | FastForm::Movs))
                if !self.long
                    && matches!(op.osize, 1 | 2 | 4)
                    && op.asize == 4
                    && (op.prefix & (pfx::REP | pfx::REPNE) == 0
                        || (f != FastForm::Lods
                            && !self.checked
                            && (f == FastForm::Stos || zero_base(op.seg as usize)))) =>
            {
                if op.prefix & (pfx::REP | pfx::REPNE) == 0 {
                    self.string1(i, op, f)
                } else {
                    self.effect = Effect::Pass;
                    self.rep_string(i, op, f == FastForm::Movs)
                }
            }
            None if !self.long && op.osize == 4 && is_handler(op, crate::exec::stack::leave) => {
                self.leave32(i, op)
            }
            None if (is_handler(op, crate::exec::moves::movzx)
                || is_handler(op, crate::exec::moves::movsx))
                && op.dst < 16
                && matches!((op.aux, op.osize), (1, 2 | 4 | 8) | (2, 4 | 8) | (4, 8))
                && (op.src < 20 || movx_load(op)) =>
            {
                let signed = is_handler(op, crate::exec::moves::movsx);
                self.effect = Effect::Pass;
                self.movx(i, op, signed)
            }
            None if is_handler(op, crate::exec::arith::imul_n)
                && op.dst < 16
                && matches!(op.osize, 2 | 4 | 8)
                && (op.src < 16 || (op.src == loc::MEM && mem_inlinable(op))) =>
            {
                self.effect = Effect::Kill;
                self.imul(i, op)
            }
            None if is_handler(op, crate::exec::moves::setcc) && op.dst < 20 => self.setcc(op),
            None if is_handler(op, crate::exec::moves::cmov)
                && op.dst < 16
                && matches!(op.osize, 2 | 4 | 8)
                && (op.src < 16 || (op.src == loc::MEM && mem_inlinable(op))) =>
            {
                self.cmov(i, op)
            }
            None if (is_handler(op, crate::exec::arith::alu::<{ kind::ADC }>)
                || is_handler(op, crate::exec::arith::alu::<{ kind::SBB }>))
                && rm_operands_inlinable(op) =>
            {
                let sbb = is_handler(op, crate::exec::arith::alu::<{ kind::SBB }>);
                self.adc_sbb(i, op, sbb)
            }
            None if (is_handler(op, shift::<{ sk::ROL }>)
                || is_handler(op, shift::<{ sk::ROR }>))
                && op.dst < 16
                && (op.src == loc::IMM || op.src == 1) =>
            {
                self.effect = Effect::Pass;
                self.rotate(op, is_handler(op, shift::<{ sk::ROR }>))
            }
            None if op.dst < 16 && op.src == 1 && shift_kind(op).is_some() => {
                self.effect = Effect::Pass;
                self.shift_cl(i, shift_kind(op).unwrap_or(sk::SHL), op)
            }
            None if op.dst == loc::MEM
                && mem_inlinable(op)
                && matches!(op.osize, 1 | 2 | 4)
                && (op.src == 1
                    || (op.src == loc::IMM
                        && (1..op.osize as u64 * 8).contains(&(op.imm & 0x1F))))
                && shift_kind(op).is_some() =>
            {
                self.effect = Effect::Pass;
                self.shift_mem(i, shift_kind(op).unwrap_or(sk::SHL), op)
            }
            None if is_handler(op, crate::exec::logic::not) && unary_inlinable(op) => {
                self.effect = Effect::Pass;
                self.not(i, op)
            }
            None if is_handler(op, crate::exec::arith::neg) && unary_inlinable(op) => {
                self.effect = Effect::Kill;
                self.unary_arith(i, op, FlagOp::Sub)
            }
            None if is_handler(op, crate::exec::arith::inc) && unary_inlinable(op) => {
                self.effect = Effect::Pass;
                self.unary_arith(i, op, FlagOp::Inc)
            }
            None if is_handler(op, crate::exec::arith::dec) && unary_inlinable(op) => {
                self.effect = Effect::Pass;
                self.unary_arith(i, op, FlagOp::Dec)
            }
            None if (is_handler(op, crate::exec::arith::mul1)
                || is_handler(op, crate::exec::arith::imul1))
                && op.osize != 1
                && unary_inlinable(op) =>
            {
                self.effect = Effect::Kill;
                self.mul1(i, op, is_handler(op, crate::exec::arith::imul1))
            }
            // Nothing at all in tier 0 either.
            Some(FastForm::Nop) => self.effect = Effect::Pass,
            // (The 16-bit form, undefined, clears the register in tier 0: called.)
            None if is_handler(op, crate::exec::moves::bswap)
                && matches!(op.osize, 4 | 8)
                && op.dst < 16 =>
            {
                self.effect = Effect::Pass;
                match self.home(op.dst) {
                    Some(h) => asm!(self.a ; bswap Rd(h)),
                    None => {
                        self.get(op.osize, op.dst, Reg::Rax);
                        match op.osize {
                            4 => asm!(self.a ; bswap eax),
                            _ => asm!(self.a ; bswap rax),
                        }
                        self.put(op.osize, Reg::Rax, op.dst);
                    }
                }
            }
            None if is_handler(op, crate::exec::arith::cbw) && matches!(op.osize, 2 | 4 | 8) => {
                self.effect = Effect::Pass;
                self.cbw_cwd(op, false)
            }
            None if is_handler(op, crate::exec::arith::cwd) && matches!(op.osize, 2 | 4 | 8) => {
                self.effect = Effect::Pass;
                self.cbw_cwd(op, true)
            }
            None if (is_handler(op, crate::exec::arith::div1)
                || is_handler(op, crate::exec::arith::idiv1))
                && op.osize == 4
                && unary_inlinable(op) =>
            {
                self.div32(i, op, is_handler(op, crate::exec::arith::idiv1))
            }
            None if is_handler(op, crate::exec::shift_rotate::shxd)
                && matches!(op.osize, 4 | 8)
                && op.dst < 16
                && op.src < 16 =>
            {
                self.shxd(op)
            }
            None if is_handler(op, crate::exec::bits::bsf_bsr)
                && matches!(op.osize, 2 | 4 | 8)
                && op.dst < 16
                && (op.src < 16 || (op.src == loc::MEM && mem_inlinable(op))) =>
            {
                self.bsf_bsr(i, op)
            }
            None if !self.long
                && op.osize == 4
                && (is_handler(op, crate::exec::control::jmp_ind)
                    || is_handler(op, crate::exec::control::call_ind))
                && (op.src < 16 || (op.src == loc::MEM && mem_inlinable(op))) =>
            {
                self.branch_ind32(i, op, is_handler(op, crate::exec::control::call_ind))
            }
            None if !self.long && is_handler(op, crate::exec::control::jcc) => {
                self.jcc(i, op, op.aux)
            }
            None if !self.long && is_handler(op, crate::exec::control::jmp_rel) => {
                self.flush_rip_unless_foldable(op);
                self.jump_taken(i, op);
            }
            // A JMP the block goes on after (`fast::jmp_rel_sb`): with a 4 GiB CS limit
            // nothing can stop it, so it only moves the pending RIP advance to its target.
            // (Whether CS is flat is known in the second pass only, from the guards the
            // first pass's `assume` asks for: the first pass must not call the handler.)
            None if !self.long
                && is_handler(op, crate::exec::fast::jmp_rel_sb)
                && !self.checked
                && self.ip_mask == 0xFFFF_FFFF =>
            {
                let flat = self.assume(CS_FLAT);
                debug_assert!(
                    flat || !self.defer,
                    "no CS_FLAT guard before a followed JMP"
                );
                let d = (self.delta as i64)
                    .wrapping_add(op.len as i64)
                    .wrapping_add(op.imm as i64);
                self.delta = d as u64;
                // (`fallback_call` and `flush_rip` take amounts below 32 KiB in one step.)
                if !(0..0x8000).contains(&d) {
                    self.flush_rip();
                }
                return true;
            }
            _ => return false,
        }
        self.advance(op, form)
    }

    /// After an inline ALU op with a memory operand (one fallback, just made): its fast path
    /// leaves the host flags as the guest's, and so will the fallback, by redoing the
    /// operation from the lazy record the handler leaves — so a Jcc next may use them.
    fn host_flags_on_both_paths(&mut self) {
        if let Producer::Known(fop, s) = self.flags
            && fop != FlagOp::None
            && let Some(f) = self.fallbacks.last_mut()
        {
            f.regen = Some((fop, s));
            self.host_flags = true;
        }
    }

    /// Count an inline op's length into the pending RIP advance (branches write RIP).
    fn advance(&mut self, op: &Op, form: Option<FastForm>) -> bool {
        if !matches!(
            form,
            Some(FastForm::Jcc32 | FastForm::Ret32 | FastForm::Call32 | FastForm::Call32Sb)
        ) && !is_branch(op)
        {
            self.delta += op.len as u64;
        }
        true
    }

    /// The inline fast path of a data access of `s` bytes by op `i` (`Cpu::load_fast` /
    /// `store_fast`): effective address, segment checks (present, writable, expand-up data
    /// segment outside long mode, no alignment checking, within the limit), one page, and a
    /// hit in the fast TLB. Leaves RCX = the host address; anything else goes to the op's
    /// handler. Returns the label to place after the access (where both paths join).
    fn mem_probe(&mut self, i: usize, op: &Op, s: u8, write: bool) -> DynamicLabel {
        let (fb, cont) = self.fallback_label(i, op);
        self.probe_to(op, s, write, fb);
        cont
    }

    /// [`Compiler::mem_probe`] with the miss path going to `fb`.
    fn probe_to(&mut self, op: &Op, s: u8, write: bool, fb: DynamicLabel) {
        let seg = op.seg as usize;
        let pinned = |r: u8| r == loc::NO_REG || self.home(r).is_some();
        if !self.checked && zero_base(seg) && op.asize == 4 && pinned(op.base) && pinned(op.index) {
            // The common case, one instruction shorter: the address straight into RCX, which
            // the near page's check turns into the offset in the page (the far path gets the
            // linear address back from it).
            self.op_segs |= 1 << seg;
            self.sum32_to(op, Reg::Rcx as u8);
            self.near_check(op, s, write, fb, true);
            return;
        }
        self.effective_address(op);
        let (slimit, sbase) = (seg_field(seg, SEG_LIMIT), seg_field(seg, SEG_BASE));
        if self.checked {
            // `Cpu::fast_lin`'s checks, at every access.
            let (sattr, want, kind) = seg_kind(seg);
            let (lma, ac) = (efer::LMA as i32, flag::AC as i32);
            let last = s as i32 - 1;
            asm!(self.a
                ; movzx ecx, WORD [rbx + sattr]
                ; and ecx, kind
                ; cmp ecx, want
                ; jne =>fb
                ; test DWORD [rbx + EFER], lma
                ; jnz =>fb
                ; test DWORD [rbx + RFLAGS], ac
                ; jnz =>fb
                ; mov ecx, DWORD [rbx + slimit]
                ; cmp rax, rcx
                ; ja =>fb
                ; lea rdx, [rax + last]
                ; cmp rdx, rcx
                ; ja =>fb
            );
        } else {
            // Guarded at the op's start (in the second pass; the first one finds `op_segs`).
            self.op_segs |= 1 << seg;
            // The limit is 4 GiB - 1: only an access past 4 GiB - 1 is outside it. Without a
            // base the TLB probe sees that already (its last byte's page is past 4 GiB).
            if s > 1 && op.asize == 4 && !zero_base(seg) {
                let top = (0xFFFF_FFFFu32 - (s as u32 - 1)) as i32;
                asm!(self.a
                    ; cmp eax, top
                    ; ja =>fb
                );
            }
        }
        if self.checked || !zero_base(seg) {
            asm!(self.a
                ; add rax, QWORD [rbx + sbase]
                ; mov eax, eax
            );
        }
        asm!(self.a ; mov rcx, rax);
        self.near_check(op, s, write, fb, false);
    }

    /// The near page of this kind of access (`Ctx::near`) when the whole access lies in it:
    /// 0 <= linear - page <= 4096 - s, one unsigned compare; RCX = the linear address (also
    /// in RAX unless `lin_in_rcx`), then its host address.
    fn near_check(&mut self, op: &Op, s: u8, write: bool, fb: DynamicLabel, lin_in_rcx: bool) {
        let kind = write as i32 * NEAR_CLASSES as i32 + near_class(op);
        let (tag, host) = near_fields(kind);
        let (far, join) = (self.a.new_dynamic_label(), self.a.new_dynamic_label());
        let room = 4096 - s as i32;
        asm!(self.a
            ; sub rcx, QWORD [rbx + tag]
            ; cmp rcx, room
            ; ja =>far
            ; add rcx, QWORD [rbx + host]
            ; =>join
        );
        self.far_probes.push(FarProbe {
            label: far,
            join,
            fallback: fb,
            kind,
            size: s,
            lin_in_rcx,
        });
    }

    /// The out-of-line half of a probe (`probe_to`) whose near page did not hold the access:
    /// the fast TLB (the CPL's half): slot (page & (FAST-1)), tag the page's address, taken
    /// for the page of the access's last byte: an access that crosses into the next page
    /// finds no entry for it in the first page's slot and takes the slow path. A hit
    /// becomes the near page.
    fn far_probe(&mut self, p: &FarProbe) {
        let table = if p.kind >= NEAR_CLASSES as i32 {
            CTX_FAST_W
        } else {
            CTX_FAST_R
        };
        let shift = FAST_ENTRY_BYTES.trailing_zeros() as i8;
        let slots = ((FAST - 1) << shift) as i32;
        let last = p.size as i32 - 1;
        let entry_host = off32(offset_of!(crate::mmu::tlb::FastEntry, host));
        let (fb, join) = (p.fallback, p.join);
        let (tag, host) = near_fields(p.kind);
        asm!(self.a ; =>p.label);
        if p.lin_in_rcx {
            // (RCX = linear - tag, wrapping when the page is `NearPage::EMPTY`.)
            asm!(self.a
                ; mov rax, QWORD [rbx + tag]
                ; add rax, rcx
            );
        }
        asm!(self.a
            ; lea rdx, [rax + last]
            ; and rdx, -4096
            ; mov ecx, eax
            ; shr ecx, 12 - shift
            ; and ecx, slots
            ; add rcx, QWORD [rbx + table]
            ; cmp QWORD [rcx], rdx
            ; jne =>fb
            ; mov rcx, QWORD [rcx + entry_host]
            // (A hit means the access does not cross: RDX is its page.)
            ; mov QWORD [rbx + tag], rdx
            ; add rdx, rcx
            ; mov QWORD [rbx + host], rdx
            ; add rcx, rax
            ; jmp =>join
        );
    }

    /// RAX = the effective address of `op`'s memory operand (`asize` bits, zero-extended).
    /// Clobbers RCX.
    fn effective_address(&mut self, op: &Op) {
        let (has_base, has_index) = (op.base != loc::NO_REG, op.index != loc::NO_REG);
        if op.asize == 4 {
            self.sum32(op);
            return;
        }
        let disp = op.disp as i64;
        asm!(self.a ; mov rax, QWORD disp);
        if has_base {
            self.get(8, op.base, Reg::Rcx);
            asm!(self.a ; add rax, rcx);
        }
        if has_index {
            let sc = op.scale as i8;
            self.get(8, op.index, Reg::Rcx);
            asm!(self.a
                ; shl rcx, sc
                ; add rax, rcx
            );
        }
        mask(&mut self.a, op.asize, Reg::Rax);
    }

    /// EAX = base + index * scale + disp of `op`'s memory operand, wrapped to 32 bits (and
    /// zero-extended), as 32-bit address arithmetic does. Clobbers RCX.
    fn sum32(&mut self, op: &Op) {
        self.sum32_to(op, Reg::Rax as u8);
    }

    /// [`Compiler::sum32`] into host register `to` (RAX, RCX or a pinned register): one LEA
    /// when base and index are pinned. Clobbers RAX and RCX.
    fn sum32_to(&mut self, op: &Op, to: u8) {
        let disp = op.disp as i32;
        let b = match (op.base, self.home(op.base)) {
            (loc::NO_REG, _) => None,
            (_, Some(h)) => Some(h),
            (r, None) => {
                self.get(8, r, Reg::Rax);
                Some(Reg::Rax as u8)
            }
        };
        let ix = match (op.index, self.home(op.index)) {
            (loc::NO_REG, _) => None,
            (_, Some(h)) => Some(h),
            (r, None) => {
                self.get(8, r, Reg::Rcx);
                Some(Reg::Rcx as u8)
            }
        };
        match (b, ix, op.scale) {
            (None, None, _) => asm!(self.a ; mov Rd(to), disp),
            (Some(b), None, _) => asm!(self.a ; lea Rd(to), [Rq(b) + disp]),
            (None, Some(ix), 0) => asm!(self.a ; lea Rd(to), [Rq(ix) + disp]),
            (None, Some(ix), 1) => asm!(self.a ; lea Rd(to), [Rq(ix) * 2 + disp]),
            (None, Some(ix), 2) => asm!(self.a ; lea Rd(to), [Rq(ix) * 4 + disp]),
            (None, Some(ix), _) => asm!(self.a ; lea Rd(to), [Rq(ix) * 8 + disp]),
            (Some(b), Some(ix), 0) => asm!(self.a ; lea Rd(to), [Rq(b) + Rq(ix) + disp]),
            (Some(b), Some(ix), 1) => asm!(self.a ; lea Rd(to), [Rq(b) + Rq(ix) * 2 + disp]),
            (Some(b), Some(ix), 2) => asm!(self.a ; lea Rd(to), [Rq(b) + Rq(ix) * 4 + disp]),
            (Some(b), Some(ix), _) => asm!(self.a ; lea Rd(to), [Rq(b) + Rq(ix) * 8 + disp]),
        }
    }

    /// Once per data segment between handler calls, before the first op that accesses it:
    /// leave the block (to be compiled again with `checked`) unless `seg` is a present,
    /// writable, expand-up data segment with a 4 GiB limit, outside long mode and with
    /// EFLAGS.AC clear (DS, ES and SS also with base 0: `zero_base`). The accesses after it
    /// then need no segment checks but the 4 GiB end:
    /// inline ops change none of these, and a handler call forgets what was found.
    /// Clobbers ECX.
    fn guard(&mut self, seg: usize) {
        if self.seg_ok & (1 << seg) != 0 {
            return;
        }
        let deopt = self.a.new_dynamic_label();
        self.deopts.push((deopt, self.cur, self.delta));
        if 1 << seg == CS_FLAT {
            asm!(self.a
                ; cmp DWORD [rbx + CS_LIMIT], -1
                ; jne =>deopt
            );
            self.seg_ok |= CS_FLAT;
            return;
        }
        if 1 << seg == STACK32 {
            self.check_stack32(deopt);
            self.seg_ok |= STACK32;
            return;
        }
        let (sattr, want, kind) = seg_kind(seg);
        let slimit = seg_field(seg, SEG_LIMIT);
        if self.seg_ok == 0 {
            let (lma, ac) = (efer::LMA as i32, flag::AC as i32);
            asm!(self.a
                ; test DWORD [rbx + EFER], lma
                ; jnz =>deopt
                ; test DWORD [rbx + RFLAGS], ac
                ; jnz =>deopt
            );
        }
        asm!(self.a
            ; movzx ecx, WORD [rbx + sattr]
            ; and ecx, kind
            ; cmp ecx, want
            ; jne =>deopt
            ; cmp DWORD [rbx + slimit], -1
            ; jne =>deopt
        );
        if zero_base(seg) {
            let sbase = seg_field(seg, SEG_BASE);
            asm!(self.a
                ; cmp QWORD [rbx + sbase], 0
                ; jne =>deopt
            );
        }
        self.seg_ok |= 1 << seg;
    }

    /// SHL/SAL/SHR/SAR reg, imm (`fast::shift_ri`): the flags are eager there (lazy op None).
    /// For counts below the operand width the host shift gives CF, PF, ZF and SF exactly
    /// (LAHF puts them at their EFLAGS positions); OF follows tier 0's formula and AF is 0.
    /// Larger counts (only possible for 8/16-bit operands) are called.
    fn shift_ri(&mut self, k: u8, s: u8, op: &Op) {
        use crate::exec::shift_rotate::kind as sk;
        let bits = s as u32 * 8;
        let cnt = imm_count(op, s);
        if cnt == 0 {
            // No operation at all (not even the flags).
            self.effect = Effect::Pass;
            return;
        }
        self.effect = Effect::Kill;
        let c = cnt as i8;
        let defer = self.defer && !self.dead;
        if let (Some(h), true, 4) = (self.home(op.dst), self.dead || defer, s) {
            match k {
                sk::SHR => asm!(self.a ; shr Rd(h), c),
                sk::SAR => asm!(self.a ; sar Rd(h), c),
                _ => asm!(self.a ; shl Rd(h), c),
            }
            if defer {
                // The one flag the result does not give back: the last bit shifted out.
                asm!(self.a ; setc BYTE [rbx + CTX_SHIFT_CF]);
                self.deferred = Some(Deferred::Shift { k, d: h });
                self.flags = Producer::Known(FlagOp::None, s);
            } else {
                self.flags = Producer::Unknown;
            }
            return;
        }
        self.get(8, op.dst, Reg::Rcx);
        match (k, s) {
            (sk::SHR, 1) => asm!(self.a ; shr cl, c),
            (sk::SHR, 2) => asm!(self.a ; shr cx, c),
            (sk::SHR, 4) => asm!(self.a ; shr ecx, c),
            (sk::SHR, _) => asm!(self.a ; shr rcx, c),
            (sk::SAR, 1) => asm!(self.a ; sar cl, c),
            (sk::SAR, 2) => asm!(self.a ; sar cx, c),
            (sk::SAR, 4) => asm!(self.a ; sar ecx, c),
            (sk::SAR, _) => asm!(self.a ; sar rcx, c),
            (_, 1) => asm!(self.a ; shl cl, c),
            (_, 2) => asm!(self.a ; shl cx, c),
            (_, 4) => asm!(self.a ; shl ecx, c),
            (_, _) => asm!(self.a ; shl rcx, c),
        }
        if self.dead {
            self.put(s, Reg::Rcx, op.dst);
            self.flags = Producer::Unknown;
            return;
        }
        let szpc = (flag::SF | flag::ZF | flag::PF | flag::CF) as i32;
        asm!(self.a
            ; lahf
            ; movzx edx, ah
            ; and edx, szpc
        );
        mask(&mut self.a, s, Reg::Rcx);
        self.shift_of(k, bits);
        self.put(s, Reg::Rcx, op.dst);
        self.shift_flags_store();
        self.flags = Producer::Known(FlagOp::None, s);
    }

    /// EDX |= a shift's OF (by `shift_ri`'s rule) from RCX = its result (`bits` wide,
    /// masked) and EDX's CF: SHL: msb(result) ^ CF; SHR: bit (bits - 2) of the result; SAR: 0.
    fn shift_of(&mut self, k: u8, bits: u32) {
        use crate::exec::shift_rotate::kind as sk;
        match k {
            sk::SHR => {
                let sh = (bits - 2) as i8;
                asm!(self.a
                    ; mov rax, rcx
                    ; shr rax, sh
                    ; and eax, 1
                    ; shl eax, 11
                    ; or edx, eax
                );
            }
            sk::SAR => {}
            _ => {
                let sh = (bits - 1) as i8;
                asm!(self.a
                    ; mov rax, rcx
                    ; shr rax, sh
                    ; xor eax, edx
                    ; and eax, 1
                    ; shl eax, 11
                    ; or edx, eax
                );
            }
        }
    }

    /// The arithmetic flags of RFLAGS = EDX (a shift's, eager), nothing pending.
    fn shift_flags_store(&mut self) {
        let keep = !flag::ARITH as i32;
        let none = FlagOp::None as u8 as i8;
        asm!(self.a
            ; mov rax, QWORD [rbx + RFLAGS]
            ; and rax, keep
            ; or rax, rdx
            ; mov QWORD [rbx + RFLAGS], rax
            ; mov BYTE [rbx + L_OP], none
        );
    }

    /// RET / RET imm16 with a 32-bit operand size (`fast::ret32`): the return address from
    /// SS:ESP through the inline load path; a 16-bit stack, a target beyond the CS limit or
    /// anything the load path does not handle goes to the handler.
    fn ret32(&mut self, i: usize, op: &Op) {
        let (fb, cont) = self.branch_fallback(i);
        // stack32: CR0.PE and SS.B (LMA is checked by the load path).
        self.stack32(fb);
        self.probe_to(&Self::stack_slot(op, 0), 4, false, fb);
        let pop = (4 + (op.imm & 0xFFFF)) as i32;
        asm!(self.a ; mov eax, DWORD [rcx]);
        self.check_cs_limit(fb);
        asm!(self.a ; mov QWORD [rbx + RIP], rax);
        self.delta = 0;
        self.add_esp(pop);
        asm!(self.a ; =>cont);
    }

    /// ESP += `v` (32-bit, zero-extended). Clobbers RAX.
    fn add_esp(&mut self, v: i32) {
        match self.home(4) {
            Some(h) => asm!(self.a ; lea Rd(h), [Rq(h) + v]),
            None => {
                let o = reg(4);
                asm!(self.a
                    ; mov eax, DWORD [rbx + o]
                    ; add eax, v
                    ; mov QWORD [rbx + o], rax
                );
            }
        }
    }

    /// CALL rel32 with a 32-bit stack (`fast::call_rel32`): target check against the CS
    /// limit, the return address stored through the inline store path at SS:ESP-4. `sb`: the
    /// block goes on with the callee (`fast::call_rel32_sb`), so the same checks as there
    /// decide whether it may (else `block_break` and the block ends after the call).
    fn call32(&mut self, i: usize, op: &Op, sb: bool) {
        let (fb, cont) = self.branch_fallback(i);
        let (len, imm) = (op.len as i32, op.imm as i64);
        self.stack32(fb);
        // R13 = return address (the next RIP), R14 = target.
        self.advance_rip_rax(self.delta as i32 + len);
        asm!(self.a
            ; mov r13, rax
            ; mov rcx, QWORD imm
            ; add rax, rcx
            ; mov eax, eax
        );
        self.check_cs_limit(fb);
        asm!(self.a ; mov r14, rax);
        self.probe_to(&Self::stack_slot(op, -4), 4, true, fb);
        asm!(self.a ; mov DWORD [rcx], r13d);
        self.add_esp(-4);
        asm!(self.a ; mov QWORD [rbx + RIP], r14);
        self.delta = 0;
        if sb {
            let brk = self.a.new_dynamic_label();
            let cs_base = seg_field(sreg::CS, SEG_BASE);
            let page_off = (op.imm2 & 0xFFF) as i32;
            let span = (op.imm2 >> 12) as i32;
            asm!(self.a
                ; mov rax, QWORD [rbx + cs_base]
                ; lea rdx, [r13 - len]
                ; mov edx, edx
                ; add rdx, rax
                ; mov edx, edx
                ; mov rcx, r14
                ; add rcx, rax
                ; mov ecx, ecx
                ; mov rax, rcx
                ; xor rax, rdx
                ; shr rax, 12
                ; jnz =>brk
                ; and ecx, 0xFFF
                ; cmp ecx, page_off
                ; jne =>brk
            );
            if span != 0 {
                asm!(self.a
                    ; lea rax, [r14 + span - 1]
                    ; mov ecx, DWORD [rbx + CS_LIMIT]
                    ; cmp rax, rcx
                    ; ja =>brk
                );
            }
            self.breaks.push((brk, i));
        }
        asm!(self.a ; =>cont);
    }

    /// The (destination, source) host registers of a MOVZX/MOVSX r32, r8/r16 between pinned
    /// registers, which `movx` does in place.
    fn movx_in_place(&self, op: &Op) -> Option<(u8, u8)> {
        let movx =
            is_handler(op, crate::exec::moves::movzx) || is_handler(op, crate::exec::moves::movsx);
        if !movx || op.osize != 4 || !matches!(op.aux, 1 | 2) || op.src >= 8 {
            return None;
        }
        Some((self.home(op.dst)?, self.home(op.src)?))
    }

    /// MOVZX/MOVSX(D) (`moves::movzx`/`movsx`, `aux` = source size): the source from a
    /// register (16-19: AH-BH), or memory through the inline load path.
    fn movx(&mut self, i: usize, op: &Op, signed: bool) {
        let cont = if op.src == loc::MEM {
            let c = self.mem_probe(i, op, op.aux, false);
            match (signed, op.aux) {
                (false, 1) => asm!(self.a ; movzx eax, BYTE [rcx]),
                (false, 2) => asm!(self.a ; movzx eax, WORD [rcx]),
                (false, _) => asm!(self.a ; mov eax, DWORD [rcx]),
                (true, 1) => asm!(self.a ; movsx rax, BYTE [rcx]),
                (true, 2) => asm!(self.a ; movsx rax, WORD [rcx]),
                (true, _) => asm!(self.a ; movsxd rax, DWORD [rcx]),
            }
            Some(c)
        } else {
            if let Some((d, r)) = self.movx_in_place(op) {
                match (signed, op.aux) {
                    (false, 1) => asm!(self.a ; movzx Rd(d), Rb(r)),
                    (false, _) => asm!(self.a ; movzx Rd(d), Rw(r)),
                    (true, 1) => asm!(self.a ; movsx Rd(d), Rb(r)),
                    (true, _) => asm!(self.a ; movsx Rd(d), Rw(r)),
                }
                return;
            }
            if op.src >= 16 {
                self.get_hi(op.src - 16, Reg::Rax);
            } else {
                self.get(op.aux, op.src, Reg::Rax);
            }
            match (signed, op.aux) {
                (false, _) => {}
                (true, 1) => asm!(self.a ; movsx rax, al),
                (true, 2) => asm!(self.a ; movsx rax, ax),
                (true, _) => asm!(self.a ; movsxd rax, eax),
            }
            None
        };
        self.put(op.osize, Reg::Rax, op.dst);
        if let Some(cont) = cont {
            asm!(self.a ; =>cont);
        }
    }

    /// Two- and three-operand IMUL (`arith::imul_n`): the host IMUL gives the truncated
    /// product and CF = OF = overflow exactly; SF, ZF, PF come from the result (as tier 0's
    /// `mul_flags`), AF is 0, and the flags are eager (lazy op None).
    fn imul(&mut self, i: usize, op: &Op) {
        let s = op.osize;
        if let (Some(d), Some(r), true, 4, false) = (
            self.home(op.dst),
            self.home(op.src),
            self.dead,
            s,
            op.aux == 1,
        ) {
            asm!(self.a ; imul Rd(d), Rd(r));
            self.produced(Producer::Known(FlagOp::None, s));
            return;
        }
        let cont = if op.src == loc::MEM {
            let c = self.mem_probe(i, op, s, false);
            // Exactly `s` bytes: the probe only vouched for those.
            match s {
                2 => asm!(self.a ; movzx ecx, WORD [rcx]),
                4 => asm!(self.a ; mov ecx, DWORD [rcx]),
                _ => asm!(self.a ; mov rcx, QWORD [rcx]),
            }
            Some(c)
        } else {
            self.get(8, op.src, Reg::Rcx);
            None
        };
        if op.aux == 1 {
            let v = op.imm as i64;
            asm!(self.a ; mov rax, QWORD v);
        } else {
            self.get(8, op.dst, Reg::Rax);
        }
        match (s, self.dead) {
            (2, true) => asm!(self.a ; imul cx, ax),
            (4, true) => asm!(self.a ; imul ecx, eax),
            (_, true) => asm!(self.a ; imul rcx, rax),
            (2, false) => asm!(self.a ; imul cx, ax ; seto r13b ; test cx, cx),
            (4, false) => asm!(self.a ; imul ecx, eax ; seto r13b ; test ecx, ecx),
            (_, false) => asm!(self.a ; imul rcx, rax ; seto r13b ; test rcx, rcx),
        }
        if !self.dead {
            self.imul_flags();
        }
        self.put(s, Reg::Rcx, op.dst);
        if let Some(cont) = cont {
            asm!(self.a ; =>cont);
        }
        self.produced(Producer::Known(FlagOp::None, s));
    }

    /// The eager flags of a multiply, from the host's: R13B = its OF (= CF), the host SF, ZF,
    /// PF from a TEST of the low half; AF 0.
    fn imul_flags(&mut self) {
        let szp = (flag::SF | flag::ZF | flag::PF) as i32;
        let cfof = (flag::CF | flag::OF) as i32;
        let keep = !flag::ARITH as i32;
        let none = FlagOp::None as u8 as i8;
        asm!(self.a
            ; lahf
            ; movzx edx, ah
            ; and edx, szp
            ; movzx r13d, r13b
            ; neg r13d
            ; and r13d, cfof
            ; or edx, r13d
            ; mov rax, QWORD [rbx + RFLAGS]
            ; and rax, keep
            ; or rax, rdx
            ; mov QWORD [rbx + RFLAGS], rax
            ; mov BYTE [rbx + L_OP], none
        );
    }

    /// Whether condition `bit` (`CS_FLAT`, `STACK32`) is known to hold here (checked at the
    /// block's entry or by a `guard`), in 32-bit code; the first pass learns from the calls
    /// which ops want it. When false the caller checks it itself.
    fn assume(&mut self, bit: u8) -> bool {
        if self.checked || self.ip_mask != 0xFFFF_FFFF {
            return false;
        }
        self.op_segs |= bit;
        self.seg_ok & bit != 0
    }

    /// Jump to `fb` unless the stack is 32-bit outside long mode (CR0.PE and SS.B; long mode
    /// is excluded by the memory probe), unless that is known (`STACK32`).
    fn stack32(&mut self, fb: DynamicLabel) {
        if !self.assume(STACK32) {
            self.check_stack32(fb);
        }
    }

    /// Jump to `fb` when RAX (a branch target) lies beyond the CS limit. Clobbers RCX.
    fn check_cs_limit(&mut self, fb: DynamicLabel) {
        if !self.assume(CS_FLAT) {
            asm!(self.a
                ; mov ecx, DWORD [rbx + CS_LIMIT]
                ; cmp rax, rcx
                ; ja =>fb
            );
        }
    }

    fn check_stack32(&mut self, fb: DynamicLabel) {
        let (pe, big) = (cr0::PE as i32, attr::DB as i16);
        let ss_attr = seg_field(sreg::SS, SEG_ATTR);
        asm!(self.a
            ; test DWORD [rbx + CR0], pe
            ; jz =>fb
            ; test WORD [rbx + ss_attr], big
            ; jz =>fb
        );
    }

    /// The memory operand SS:[ESP + disp] with 32-bit addressing.
    fn stack_slot(op: &Op, disp: i64) -> Op {
        let mut m = Self::reg_operand(op, sreg::SS, 4);
        m.disp = disp as u64;
        m
    }

    /// The memory operand seg:[r] with 32-bit addressing (an implicit operand of `op`: the
    /// stack slot, a string op's ESI/EDI), for the probe.
    fn reg_operand(op: &Op, seg: usize, r: u8) -> Op {
        let mut m = Op::new(op.exec, op.len);
        m.seg = seg as u8;
        m.base = r;
        m.asize = 4;
        m
    }

    /// PUSH r/imm/m32 that `push32` compiles.
    fn push32_inline(&self, op: &Op) -> bool {
        !self.long
            && op.osize == 4
            && is_handler(op, crate::exec::stack::push)
            && (op.src < 16 || op.src == loc::IMM || (op.src == loc::MEM && mem_inlinable(op)))
    }

    /// POP r32 that `pop32` compiles.
    fn pop32_inline(&self, op: &Op) -> bool {
        !self.long && op.osize == 4 && is_handler(op, crate::exec::stack::pop) && op.dst < 16
    }

    /// PUSH r32 / PUSH imm / PUSH m32 with a 32-bit stack (`stack::push`): the value is read before ESP
    /// moves (PUSH ESP pushes the old value), ESP changes after the store.
    fn push32(&mut self, i: usize, op: &Op) {
        let (fb, cont) = self.fallback_label(i, op);
        self.stack32(fb);
        if op.src == loc::MEM {
            // PUSH r/m32: the operand is read first (with ESP before the push).
            self.probe_to(op, 4, false, fb);
            asm!(self.a ; mov r13d, DWORD [rcx]);
        }
        self.probe_to(&Self::stack_slot(op, -4), 4, true, fb);
        if op.src == loc::IMM {
            let v = (op.imm & 0xFFFF_FFFF) as i64;
            asm!(self.a ; mov rax, QWORD v);
        } else if op.src == loc::MEM {
            asm!(self.a ; mov eax, r13d);
        } else {
            self.get(8, op.src, Reg::Rax);
        }
        asm!(self.a ; mov DWORD [rcx], eax);
        self.add_esp(-4);
        asm!(self.a ; =>cont);
    }

    /// POP r32 with a 32-bit stack (`stack::pop`): ESP moves first, then the register is
    /// written (so POP ESP loads the popped value).
    fn pop32(&mut self, i: usize, op: &Op) {
        let (fb, cont) = self.fallback_label(i, op);
        self.stack32(fb);
        self.probe_to(&Self::stack_slot(op, 0), 4, false, fb);
        asm!(self.a ; mov ecx, DWORD [rcx]);
        self.add_esp(4);
        self.put(4, Reg::Rcx, op.dst);
        asm!(self.a ; =>cont);
    }

    /// LEAVE with a 32-bit stack and operand (`stack::leave`): the load from SS:[EBP] comes
    /// first, so a fault leaves ESP and EBP untouched; then ESP = EBP + 4 and EBP = the value.
    fn leave32(&mut self, i: usize, op: &Op) {
        let (fb, cont) = self.fallback_label(i, op);
        self.stack32(fb);
        let mut slot = Self::stack_slot(op, 0);
        slot.base = 5;
        self.probe_to(&slot, 4, false, fb);
        asm!(self.a ; mov ecx, DWORD [rcx]);
        self.get(4, 5, Reg::Rax);
        asm!(self.a ; add eax, 4);
        self.put(4, Reg::Rax, 4);
        self.put(4, Reg::Rcx, 5);
        asm!(self.a ; =>cont);
    }

    /// One LODS/STOS/MOVS with 32-bit addressing (`string::string` without REP): both
    /// accesses are probed before either is made (so a miss or fault on the destination
    /// leaves nothing done), then ESI/EDI move by the size, down when DF is set.
    fn string1(&mut self, i: usize, op: &Op, f: FastForm) {
        let s = op.osize;
        let (fb, cont) = self.fallback_label(i, op);
        if f != FastForm::Stos {
            self.probe_to(&Self::reg_operand(op, op.seg as usize, 6), s, false, fb);
            match s {
                1 => asm!(self.a ; movzx r13d, BYTE [rcx]),
                2 => asm!(self.a ; movzx r13d, WORD [rcx]),
                _ => asm!(self.a ; mov r13d, DWORD [rcx]),
            }
        }
        if f != FastForm::Lods {
            self.probe_to(&Self::reg_operand(op, sreg::ES, 7), s, true, fb);
            if f == FastForm::Stos {
                self.get(8, 0, Reg::T2);
            }
            match s {
                1 => asm!(self.a ; mov BYTE [rcx], r13b),
                2 => asm!(self.a ; mov WORD [rcx], r13w),
                _ => asm!(self.a ; mov DWORD [rcx], r13d),
            }
        } else {
            asm!(self.a ; mov rax, r13);
            self.put(s, Reg::Rax, 0);
        }
        let (size, df) = (s as i32, flag::DF as i32);
        asm!(self.a
            ; mov eax, size
            ; mov edx, -size
            ; test DWORD [rbx + RFLAGS], df
            ; cmovnz eax, edx
        );
        for (r, moves) in [(6, f != FastForm::Stos), (7, f != FastForm::Lods)] {
            if moves {
                self.get(4, r, Reg::Rcx);
                asm!(self.a ; add ecx, eax);
                self.put(4, Reg::Rcx, r);
            }
        }
        asm!(self.a ; =>cont);
    }

    /// REP STOS / REP MOVS with 32-bit addressing as tier 0's handler runs them when ECX is
    /// 1 to `string::REP_SLICE` elements (one execution), DF, TF and the debug registers are
    /// clear, and each range lies in one page found in the fast TLB: the host's own REP
    /// STOS/MOVS of the same element size (so an overlapping MOVS repeats its pattern as the
    /// guest's does), then ESI/EDI past the ranges and ECX 0. Anything else goes to the
    /// handler. The fast write TLB holds no code page, so no store here hits translated code.
    /// Only segments with base 0 (`zero_base`, and not in a checked block): the page checks
    /// are on ESI/EDI, which are then the linear addresses.
    fn rep_string(&mut self, i: usize, op: &Op, movs: bool) {
        let s = op.osize;
        let (fb, cont) = self.fallback_label(i, op);
        let (flags, slice) = (
            (flag::DF | flag::TF) as i32,
            crate::exec::string::REP_SLICE as i32,
        );
        let shift = s.trailing_zeros() as i8;
        // R13 = the bytes each range covers. (At most REP_SLICE elements: no more fit in a
        // page anyway, and the byte count must not wrap.)
        self.get(4, 1, Reg::Rax);
        asm!(self.a
            ; test DWORD [rbx + RFLAGS], flags
            ; jnz =>fb
            ; cmp BYTE [rbx + DBG_ARMED], 0
            ; jne =>fb
            ; lea edx, [rax - 1]
            ; cmp edx, slice - 1
            ; ja =>fb
            ; shl eax, shift
            ; mov r13d, eax
        );
        // Each range inside one page (and below 4 GiB): its first and last byte's pages agree.
        let one_page = |c: &mut Self, r: u8| {
            c.get(4, r, Reg::Rcx);
            asm!(c.a
                ; lea rdx, [rcx + r13 - 1]
                ; xor rdx, rcx
                ; shr rdx, 12
                ; jnz =>fb
            );
        };
        one_page(self, 7);
        self.probe_to(&Self::reg_operand(op, sreg::ES, 7), 1, true, fb);
        asm!(self.a ; mov r14, rcx);
        if movs {
            one_page(self, 6);
            self.probe_to(&Self::reg_operand(op, op.seg as usize, 6), 1, false, fb);
        }
        // RSI and RDI hold guest registers: kept on the stack around the host's REP.
        if !movs {
            self.get(4, 0, Reg::Rax);
        }
        asm!(self.a
            ; push rsi
            ; push rdi
            ; mov rsi, rcx
            ; mov rdi, r14
        );
        self.get(4, 1, Reg::Rcx);
        match (movs, s) {
            (true, 1) => asm!(self.a ; rep movsb),
            (true, 2) => asm!(self.a ; rep movsw),
            (true, _) => asm!(self.a ; rep movsd),
            (false, 1) => asm!(self.a ; rep stosb),
            (false, 2) => asm!(self.a ; rep stosw),
            (false, _) => asm!(self.a ; rep stosd),
        }
        asm!(self.a
            ; pop rdi
            ; pop rsi
        );
        for (r, moves) in [(6, movs), (7, true)] {
            if moves {
                self.get(4, r, Reg::Rax);
                asm!(self.a ; add eax, r13d);
                self.put(4, Reg::Rax, r);
            }
        }
        asm!(self.a ; xor eax, eax);
        self.put(4, Reg::Rax, 1);
        asm!(self.a ; =>cont);
    }

    /// RAX = a, RCX = b (both masked): RDX = a OP b, the lazy flags, and the write-back.
    /// `dst`: the register written back (`None` for memory destinations, which the caller
    /// stores from RDX).
    fn alu(&mut self, k: u8, s: u8, dst: Option<u8>) {
        // At the operand size, so the host flags are the guest's (a Jcc right after may use
        // them); the inputs are masked, so RDX's upper bits stay clear for 8/16 bits.
        macro_rules! sized {
            ($op:tt) => {
                match s {
                    1 => asm!(self.a ; $op dl, cl),
                    2 => asm!(self.a ; $op dx, cx),
                    4 => asm!(self.a ; $op edx, ecx),
                    _ => asm!(self.a ; $op rdx, rcx),
                }
            };
        }
        asm!(self.a ; mov rdx, rax);
        let fop = match k {
            kind::ADD => {
                sized!(add);
                FlagOp::Add
            }
            kind::SUB | kind::CMP => {
                sized!(sub);
                FlagOp::Sub
            }
            kind::AND | kind::TEST => {
                sized!(and);
                FlagOp::Logic
            }
            kind::OR => {
                sized!(or);
                FlagOp::Logic
            }
            _ => {
                sized!(xor);
                FlagOp::Logic
            }
        };
        // The 32-bit form zero-extends; 8/16-bit forms keep RDX's clear upper bits.
        if !self.dead {
            self.record(fop, s);
        }
        if let Some(dst) = dst
            && k != kind::CMP
            && k != kind::TEST
        {
            self.put(s, Reg::Rdx, dst);
        }
        self.produced(Producer::Known(fop, s));
    }

    /// ADD/SUB/AND/OR/XOR (`k`, `s` bytes) of guest register `g`, pinned in host register
    /// `d`, with a pinned register (`Err`) or an immediate (`Ok`, masked) source, done in
    /// place: one host instruction when the flags are dead, else the operands (masked) and
    /// the result go to the lazy record as in [`Compiler::alu`]. The host flags are the
    /// guest's afterwards.
    fn alu_in_place(&mut self, k: u8, s: u8, g: u8, d: u8, src: Result<i32, u8>) {
        let fop = match k {
            kind::ADD => FlagOp::Add,
            kind::SUB => FlagOp::Sub,
            _ => FlagOp::Logic,
        };
        let defer = self.defer && !self.dead && s == 4 && src != Err(d);
        if !self.dead && !defer && fop != FlagOp::Logic {
            self.get(s, g, Reg::Rax);
            match src {
                Ok(v) => asm!(self.a ; mov ecx, v),
                Err(r) => zext(&mut self.a, s, Reg::Rcx as u8, r),
            }
        }
        macro_rules! op {
            ($op:tt) => {
                match (s, src) {
                    (1, Ok(v)) => asm!(self.a ; $op Rb(d), v as i8),
                    (2, Ok(v)) => asm!(self.a ; $op Rw(d), v as i16),
                    (_, Ok(v)) => asm!(self.a ; $op Rd(d), v),
                    (1, Err(r)) => asm!(self.a ; $op Rb(d), Rb(r)),
                    (2, Err(r)) => asm!(self.a ; $op Rw(d), Rw(r)),
                    (4, Err(r)) => asm!(self.a ; $op Rd(d), Rd(r)),
                    (_, Err(r)) => asm!(self.a ; $op Rq(d), Rq(r)),
                }
            };
        }
        match k {
            kind::ADD => op!(add),
            kind::SUB => op!(sub),
            kind::AND => op!(and),
            kind::OR => op!(or),
            _ => op!(xor),
        }
        if defer {
            self.deferred = Some(Deferred::Alu { fop, d, src });
        } else if !self.dead {
            // Moves only from here: the host flags stay the guest's.
            zext(&mut self.a, s, Reg::Rdx as u8, d);
            self.record(fop, s);
        }
        self.produced(Producer::Known(fop, s));
    }

    /// Whether a CMP/TEST of `s` bytes (register forms) leaves its record pending
    /// (`Deferred::Cmp`): in the second pass, flags live, 32-bit or a low byte register.
    fn cmp_defers(&self, s: u8, op: &Op) -> bool {
        self.defer
            && !self.dead
            && (s == 4 || (s == 1 && op.dst < 8 && (op.src < 8 || op.src == loc::IMM)))
    }

    /// CMP/TEST in the host's own instruction on the pinned registers, its record pending.
    fn cmp_deferred(&mut self, test: bool, s: u8, d: u8, src: Result<i32, u8>) {
        match (test, s, src) {
            (false, 1, Ok(v)) => asm!(self.a ; cmp Rb(d), v as i8),
            (false, 1, Err(r)) => asm!(self.a ; cmp Rb(d), Rb(r)),
            (false, _, Ok(v)) => asm!(self.a ; cmp Rd(d), v),
            (false, _, Err(r)) => asm!(self.a ; cmp Rd(d), Rd(r)),
            (true, 1, Ok(v)) => asm!(self.a ; test Rb(d), v as i8),
            (true, 1, Err(r)) => asm!(self.a ; test Rb(d), Rb(r)),
            (true, _, Ok(v)) => asm!(self.a ; test Rd(d), v),
            (true, _, Err(r)) => asm!(self.a ; test Rd(d), Rd(r)),
        }
        self.deferred = Some(Deferred::Cmp { test, s, d, src });
        let fop = if test { FlagOp::Logic } else { FlagOp::Sub };
        self.produced(Producer::Known(fop, s));
    }

    /// Before op `op` (`guarded`: it starts with segment guards, whose exits need the
    /// flags): keep a pending flag record pending, drop it (the op replaces every flag and
    /// cannot leave before), or store it.
    fn settle_deferred(&mut self, op: &Op, guarded: bool) {
        let Some(df) = self.deferred else {
            return;
        };
        let writes = |c: &Self, g: u8| c.home(g).is_none_or(|h| df.needs(h));
        let keep = !guarded
            && match fast_form(op.exec) {
                Some(FastForm::MovRM(_)) => mem_inlinable(op) && !writes(self, op.dst),
                Some(FastForm::MovMR(_) | FastForm::MovMI(_)) => mem_inlinable(op),
                Some(FastForm::MovRR(_) | FastForm::MovRI(_)) => !writes(self, op.dst),
                Some(FastForm::Lea(_)) => op.base != loc::RIP && !writes(self, op.dst),
                Some(FastForm::Nop) => true,
                // A Jcc the block goes on past tests the host flags (still the pending
                // producer's) and stores the record on its taken path alone.
                Some(FastForm::Jcc32) => {
                    op.imm2 == crate::decode::op::JCC_GOES_ON
                        && self.cur + 1 < self.ops_len
                        && self.prev_host_flags
                        && matches!(self.flags, Producer::Known(f, _) if f != FlagOp::None)
                }
                // `push32` writes ESP (and the stack; R13 too, for a memory operand), `pop32`
                // ESP and the register.
                None if self.push32_inline(op) => {
                    !writes(self, 4) && (op.src != loc::MEM || !df.needs(SPARE))
                }
                None if self.pop32_inline(op) => !writes(self, 4) && !writes(self, op.dst),
                // A MOVZX/MOVSX load: its fallback stores the record, as a MOV's does.
                None if movx_load(op) => !writes(self, op.dst),
                None => self.movx_in_place(op).is_some() && !writes(self, op.dst),
                _ => false,
            };
        if keep {
            return;
        }
        // An op that would keep it pending but overwrites a register it needs (one: these
        // write one) and leaves R13 alone: that register's value moves to R13 (one move
        // instead of the record's five to nine instructions).
        let moves = !guarded
            && !df.needs(SPARE)
            && match fast_form(op.exec) {
                Some(FastForm::MovRM(_)) => mem_inlinable(op),
                Some(FastForm::MovRR(_) | FastForm::MovRI(_)) => true,
                Some(FastForm::Lea(_)) => op.base != loc::RIP,
                None => movx_load(op) || self.movx_in_place(op).is_some(),
                _ => false,
            };
        if let (true, Some(h)) = (moves, self.home(op.dst).filter(|&h| df.needs(h))) {
            asm!(self.a ; mov Rq(SPARE), Rq(h));
            self.deferred = Some(df.moved(h, SPARE));
            return;
        }
        // A rotate that will be deferred too replaces CF and OF and keeps the rest, which
        // is still the producer's before the pending rotate.
        if let Deferred::Rotate { before, .. } = df
            && !guarded
            && self.rotate_defers(op)
        {
            self.deferred = None;
            self.flags = before;
            return;
        }
        // ALU ops with a memory operand replace every flag, but their fallbacks leave before
        // that and store the pending record first.
        if !guarded
            && mem_inlinable(op)
            && matches!(
                fast_form(op.exec),
                Some(FastForm::AluRM { .. } | FastForm::AluMR { .. } | FastForm::AluMI { .. })
            )
        {
            self.flags = Producer::Unknown;
            self.replacing = true;
            return;
        }
        self.deferred = None;
        let replaces = !guarded
            && match fast_form(op.exec) {
                Some(FastForm::AluRR { .. } | FastForm::AluRI { .. }) => true,
                Some(FastForm::ShiftRI { s, .. }) => (1..s as u32 * 8).contains(&imm_count(op, s)),
                _ => false,
            };
        if replaces {
            // The record in memory is an older op's now: nothing may skip storing the op word
            // on the grounds that it holds this one (`record`), nor fold a CF from it.
            self.flags = Producer::Unknown;
        } else {
            self.store_deferred(df);
        }
    }

    /// Store a deferred flag record (`Deferred`); leaves `flags` describing it. An ALU
    /// op's is stored with moves and LEAs only, so the host flags stay the guest's (a Jcc
    /// next may use them); the others leave no host flags to keep.
    fn store_deferred(&mut self, df: Deferred) {
        match df {
            Deferred::Alu { fop, d, src } => {
                match (fop, src) {
                    (FlagOp::Add, Ok(v)) => {
                        let neg = v.wrapping_neg();
                        asm!(self.a ; lea eax, [Rq(d) + neg] ; mov ecx, v);
                    }
                    (FlagOp::Add, Err(r)) => asm!(self.a
                        ; mov eax, Rd(r)
                        ; not eax
                        ; lea eax, [Rq(d) + rax + 1]
                        ; mov ecx, Rd(r)
                    ),
                    (FlagOp::Sub, Ok(v)) => asm!(self.a ; lea eax, [Rq(d) + v] ; mov ecx, v),
                    (FlagOp::Sub, Err(r)) => {
                        asm!(self.a ; lea eax, [Rq(d) + Rq(r)] ; mov ecx, Rd(r))
                    }
                    _ => {}
                }
                if fop != FlagOp::Logic {
                    asm!(self.a
                        ; mov QWORD [rbx + L_A], rax
                        ; mov QWORD [rbx + L_B], rcx
                    );
                }
                let w = op_size(fop, 4);
                asm!(self.a
                    ; mov edx, Rd(d)
                    ; mov QWORD [rbx + L_RES], rdx
                    ; mov WORD [rbx + L_OP], w
                );
                self.flags = Producer::Known(fop, 4);
            }
            Deferred::Cmp { test, s, d, src } => {
                // The host flags stay the guest's: moves, LEAs and NOT, and TEST's AND
                // gives the flags TEST gave.
                let fop = if test { FlagOp::Logic } else { FlagOp::Sub };
                if s == 1 {
                    asm!(self.a ; movzx eax, Rb(d));
                } else {
                    asm!(self.a ; mov eax, Rd(d));
                }
                match src {
                    Ok(v) => asm!(self.a ; mov ecx, v),
                    Err(r) if s == 1 => asm!(self.a ; movzx ecx, Rb(r)),
                    Err(r) => asm!(self.a ; mov ecx, Rd(r)),
                }
                if test && s == 1 {
                    // (At the byte's size: SF is bit 7 of the result.)
                    asm!(self.a ; mov edx, eax ; and dl, cl);
                } else if test {
                    asm!(self.a ; mov edx, eax ; and edx, ecx);
                } else {
                    asm!(self.a
                        ; mov edx, ecx
                        ; not edx
                        ; lea edx, [rax + rdx + 1]
                        ; mov QWORD [rbx + L_A], rax
                        ; mov QWORD [rbx + L_B], rcx
                    );
                    if s == 1 {
                        asm!(self.a ; movzx edx, dl);
                    }
                }
                let w = op_size(fop, s);
                asm!(self.a
                    ; mov QWORD [rbx + L_RES], rdx
                    ; mov WORD [rbx + L_OP], w
                );
                self.flags = Producer::Known(fop, s);
            }
            Deferred::IncDec { fop, d, before } => {
                // Stored once already (by a fallback on the way here, whose path joined
                // this one) when the record holds an INC/DEC of this size: folding again
                // would take CF from that record. Any INC/DEC record's CF is in RFLAGS.
                let w = op_size(fop, 4);
                let folded = self.a.new_dynamic_label();
                asm!(self.a
                    ; cmp WORD [rbx + L_OP], w
                    ; je =>folded
                );
                self.flags = before;
                self.fold_cf();
                asm!(self.a ; =>folded);
                if fop == FlagOp::Inc {
                    asm!(self.a ; lea eax, [Rq(d) - 1]);
                } else {
                    asm!(self.a ; lea eax, [Rq(d) + 1]);
                }
                asm!(self.a
                    ; mov QWORD [rbx + L_A], rax
                    ; mov QWORD [rbx + L_B], 1
                    ; mov edx, Rd(d)
                    ; mov QWORD [rbx + L_RES], rdx
                    ; mov WORD [rbx + L_OP], w
                );
                self.flags = Producer::Known(fop, 4);
            }
            Deferred::Shift { k, d } => {
                let szp = (flag::SF | flag::ZF | flag::PF) as i32;
                asm!(self.a
                    ; mov ecx, Rd(d)
                    ; test ecx, ecx
                    ; lahf
                    ; movzx edx, ah
                    ; and edx, szp
                    ; movzx eax, BYTE [rbx + CTX_SHIFT_CF]
                    ; or edx, eax
                );
                self.shift_of(k, 32);
                self.shift_flags_store();
                self.flags = Producer::Known(FlagOp::None, 4);
            }
            Deferred::Rotate { ror, d, before } => {
                self.flags = before;
                self.materialise();
                asm!(self.a ; mov eax, Rd(d));
                self.rotate_flags(ror, 4);
                self.flags = Producer::Known(FlagOp::None, 0);
            }
        }
    }

    /// The lazy record of `fop` at `s` bytes from RAX = a, RCX = b, RDX = the result (all
    /// masked); stores only, so the host flags survive. The logic ops' flags come from the
    /// result alone (`LazyFlags::compute`): their operands are not stored.
    fn record(&mut self, fop: FlagOp, s: u8) {
        if fop != FlagOp::Logic {
            asm!(self.a
                ; mov QWORD [rbx + L_A], rax
                ; mov QWORD [rbx + L_B], rcx
            );
        }
        asm!(self.a ; mov QWORD [rbx + L_RES], rdx);
        // The record holds the pending producer's op and size (`Producer::Known`): unchanged
        // when it is the same.
        if !matches!(self.flags, Producer::Known(f, z) if f == fop && z == s) {
            let w = op_size(fop, s);
            asm!(self.a ; mov WORD [rbx + L_OP], w);
        }
    }

    /// INC/DEC keep CF: fold the pending producer's CF into RFLAGS first (`Cpu::set_lazy`).
    fn fold_cf(&mut self) {
        match self.flags {
            Producer::Known(FlagOp::Inc | FlagOp::Dec | FlagOp::None, _) | Producer::Carry => {}
            Producer::Known(FlagOp::Logic, _) => asm!(self.a ; and QWORD [rbx + RFLAGS], -2),
            Producer::Known(FlagOp::Add, _) => {
                // CF = res < a (both masked).
                asm!(self.a
                    ; mov rcx, QWORD [rbx + L_RES]
                    ; cmp rcx, QWORD [rbx + L_A]
                    ; setb cl
                );
                self.set_cf_from_cl();
            }
            Producer::Known(FlagOp::Sub, _) => {
                asm!(self.a
                    ; mov rcx, QWORD [rbx + L_A]
                    ; cmp rcx, QWORD [rbx + L_B]
                    ; setb cl
                );
                self.set_cf_from_cl();
            }
            _ => {
                // The record's op decides at run time, as `LazyFlags::carry`: ADD's and SUB's
                // carry comes from the host ADD/CMP of the operands shifted to the top of a
                // quadword (so the size's mask does not matter); the rare ADC1/SBB1 call it.
                let (done, arith, add, slow) = (
                    self.a.new_dynamic_label(),
                    self.a.new_dynamic_label(),
                    self.a.new_dynamic_label(),
                    self.a.new_dynamic_label(),
                );
                let op = |f: FlagOp| f as u8 as i32;
                asm!(self.a
                    ; movzx eax, BYTE [rbx + L_OP]
                    ; cmp eax, op(FlagOp::Add)
                    ; je =>arith
                    ; cmp eax, op(FlagOp::Sub)
                    ; je =>arith
                    ; cmp eax, op(FlagOp::Adc1)
                    ; je =>slow
                    ; cmp eax, op(FlagOp::Sbb1)
                    ; je =>slow
                    ; cmp eax, op(FlagOp::Logic)
                    ; jne =>done
                    ; and QWORD [rbx + RFLAGS], -2
                    ; jmp =>done
                    ; =>arith
                    ; movzx ecx, BYTE [rbx + L_SIZE]
                    ; shl ecx, 3
                    ; neg ecx
                    ; add ecx, 64
                    ; mov rdx, QWORD [rbx + L_A]
                    ; shl rdx, cl
                    ; mov rax, QWORD [rbx + L_B]
                    ; shl rax, cl
                    ; cmp BYTE [rbx + L_OP], op(FlagOp::Add) as i8
                    ; je =>add
                    ; cmp rdx, rax
                    ; setb cl
                );
                self.set_cf_from_cl();
                asm!(self.a
                    ; jmp =>done
                    ; =>add
                    ; add rdx, rax
                    ; setc cl
                );
                self.set_cf_from_cl();
                asm!(self.a ; jmp =>done ; =>slow);
                let f = addr(trampoline::fold_cf as *const () as usize);
                self.call_out(f, None);
                asm!(self.a ; =>done);
            }
        }
    }

    fn set_cf_from_cl(&mut self) {
        asm!(self.a
            ; movzx ecx, cl
            ; mov rdx, QWORD [rbx + RFLAGS]
            ; and rdx, -2
            ; or rdx, rcx
            ; mov QWORD [rbx + RFLAGS], rdx
        );
    }

    /// Jcc (outside 64-bit code): RIP is written back to the Jcc's start first, so the
    /// fallback (a CS-limit fault on the taken path) calls the handler with tier-0 state.
    fn jcc(&mut self, i: usize, op: &Op, cc: u8) {
        self.flush_rip_unless_foldable(op);
        let taken = self.a.new_dynamic_label();
        let hc = if self.prev_host_flags
            && matches!(self.flags, Producer::Known(f, _) if f != FlagOp::None)
        {
            cc & 15
        } else {
            self.host_cond(cc)
        };
        if op.imm2 == crate::decode::op::JCC_GOES_ON && i + 1 < self.ops_len {
            self.side_exit(i, op, hc);
            return;
        }
        jcc_host(&mut self.a, hc, taken);
        let cont = self.a.new_dynamic_label();
        // Not taken: RIP to the next instruction.
        let d = self.delta + op.len as u64;
        if !self.add_rip_in_page(op.len as i64, d as i64) {
            self.advance_rip_rax(d as i32);
            asm!(self.a ; mov QWORD [rbx + RIP], rax);
        }
        self.static_tail(i, op.len as i64);
        asm!(self.a
            ; jmp =>cont
            ; =>taken
        );
        self.jump_taken(i, op);
        asm!(self.a ; =>cont);
    }

    /// A Jcc inside the block (`JCC_GOES_ON`), its condition in host condition `hc`: taken,
    /// the block ends here — the pending flag record stored, RIP written, ops up to this one
    /// counted — through a static site when the target is in the block's page, else back
    /// to the dispatcher (status OK with `i + 1` ops done, which chains on as from a block
    /// end); not taken, the block goes on with what the compiler knew before.
    fn side_exit(&mut self, i: usize, op: &Op, hc: u8) {
        let not_taken = self.a.new_dynamic_label();
        jcc_host(&mut self.a, hc ^ 1, not_taken);
        let (delta, flags, deferred, seg_ok) = (self.delta, self.flags, self.deferred, self.seg_ok);
        if !self.loop_back(i, op) {
            if let Some(df) = self.deferred.take() {
                self.store_deferred(df);
            }
            let out = self.a.new_dynamic_label();
            self.side = Some((i + 1, out));
            let sites = self.sites.len();
            self.jump_taken(i, op);
            self.side = None;
            if self.sites.len() == sites {
                // No static site: the indirect table, where the dispatcher puts every block
                // it enters (a site, once patched, never reaches the dispatcher or the table).
                let start = self.a.new_dynamic_label();
                self.chain(i + 1, None, Some(self.ib), start);
            }
            asm!(self.a ; =>out);
            self.side_out(i + 1);
        }
        asm!(self.a ; =>not_taken);
        (self.delta, self.flags, self.deferred, self.seg_ok) = (delta, flags, deferred, seg_ok);
        self.delta += op.len as u64;
        self.side_exits += 1;
    }

    /// Back to the dispatcher after a side exit that ran `n` ops (status OK, index `n`).
    fn side_out(&mut self, n: usize) {
        let (n, st) = (n as i32, ST_OK as i32);
        asm!(self.a
            ; mov edx, n
            ; mov eax, st
            ; jmp =>self.out_sync
        );
    }

    /// A side exit of op `i` (a relative branch) back to the block's own first op, in 32-bit
    /// code with a flat CS in one page: a loop within the compiled code, no site to patch
    /// (the code jumps into itself, which it always matches). It counts the ops, checks
    /// the budget for another pass and the event poll, and goes on past the entry's checks
    /// (when what they check holds here). When the first op's code needs no flags, the
    /// pending record stays unstored on the way round (the ways out store it). False, with
    /// nothing emitted, when that does not apply.
    fn loop_back(&mut self, i: usize, op: &Op) -> bool {
        let rel = (op.len as i64).wrapping_add(op.imm as i64);
        let Some(phys) = self.phys else {
            return false;
        };
        if op.osize != 4
            || self.page_offset(rel) != Some((phys & 0xFFF) as i64)
            || self.seg_ok & self.entry_segs != self.entry_segs
            || !self.assume(CS_FLAT)
        {
            return false;
        }
        let d = (self.delta as i64).wrapping_add(rel);
        if !self.add_rip_in_page(rel, d) {
            return false;
        }
        self.delta = 0;
        let keep = self.entry_flags_dead;
        if !keep && let Some(df) = self.deferred.take() {
            self.store_deferred(df);
        }
        let (n, len) = ((i + 1) as i32, self.ops_len as i32);
        let (out, body) = (self.a.new_dynamic_label(), self.loop_body);
        // `Jit::poll` is clear wherever a block is entered (the dispatcher clears it, links
        // check it) and only Rust code sets it: a loop body that calls none (no handler, no
        // fallback) need not look at it.
        if self.counts.called != 0 || !self.fallbacks.is_empty() {
            asm!(self.a
                ; cmp BYTE [rbx + JIT_POLL], 0
                ; jne =>out
            );
        }
        asm!(self.a
            ; sub r12, n
            ; cmp r12, len
            ; jae =>body
            ; add r12, n
            ; =>out
        );
        if let Some(df) = self.deferred.take() {
            self.store_deferred(df);
        }
        self.side_out(i + 1);
        true
    }

    /// At the end of op `i` when it is the block's last (or on a side exit's taken path),
    /// with RIP written back and `rel` bytes past the op's start: a static site
    /// (`StaticSite`) when the successor lies in the block's guest page. Leaves the code
    /// after it for the other ways out.
    fn static_tail(&mut self, i: usize, rel: i64) {
        let (Some(phys), Some(page_off)) = (self.phys, self.page_offset(rel)) else {
            return;
        };
        let (done, poll) = self.side.unwrap_or((self.ops_len, self.chain_start));
        if (self.side.is_none() && !self.chainable)
            || i + 1 != done
            || self.sites.len() == MAX_SITES
            || !self.assume(CS_FLAT)
        {
            return;
        }
        let n = done as i32;
        let refund = self.a.new_dynamic_label();
        asm!(self.a
            ; cmp BYTE [rbx + JIT_POLL], 0
            ; jne =>poll
            ; sub r12, n
        );
        let at = self.a.offset().0;
        asm!(self.a ; jmp =>refund);
        if self.a.offset().0 - at != 5 {
            // Only a jmp rel32 can be patched (dynasm emits that form for dynamic labels).
            return;
        }
        let target = (phys & !0xFFF) + page_off as u64;
        self.sites
            .push((at, refund, target, self.seg_ok, done, poll));
    }

    /// Write RIP back before a relative branch unless its target can be computed from the
    /// pending advance: when the operand-size mask keeps no more bits than the RIP mask,
    /// `((rip + delta) & ip_mask + len + imm) & osize_mask` is `(rip + delta + len + imm) &
    /// osize_mask`.
    fn flush_rip_unless_foldable(&mut self, op: &Op) {
        if crate::flags::size_mask(op.osize) > self.ip_mask {
            self.flush_rip();
        }
    }

    /// RIP = (next RIP + imm) masked to the operand size, or the handler (which faults) when
    /// that lies beyond the CS limit. RIP in memory is `delta` bytes behind the branch's
    /// start here (see `flush_rip_unless_foldable`); both paths leave it written back.
    fn jump_taken(&mut self, i: usize, op: &Op) {
        let d = (self.delta as i64)
            .wrapping_add(op.len as i64)
            .wrapping_add(op.imm as i64);
        let rel = (op.len as i64).wrapping_add(op.imm as i64);
        if op.osize == 4 && self.add_rip_in_page(rel, d) {
            // Within the page and a flat CS: no wrap, no limit to pass.
            self.delta = 0;
            self.static_tail(i, rel);
            return;
        }
        let cont = self.a.new_dynamic_label();
        let fb = self.fallback_to(i, cont, self.delta, 0);
        asm!(self.a ; mov rax, QWORD [rbx + RIP]);
        match i32::try_from(d) {
            Ok(d) => asm!(self.a ; add rax, d),
            Err(_) => asm!(self.a ; mov rcx, QWORD d ; add rax, rcx),
        }
        mask(&mut self.a, op.osize, Reg::Rax);
        self.check_cs_limit(fb);
        asm!(self.a
            ; mov QWORD [rbx + RIP], rax
            ; =>cont
        );
        self.delta = 0;
        // Both paths join with RIP written back. The handler path only returns here when the
        // branch did not fault, and the lazy flags it may have materialised are equal to the
        // pending ones, so `self.flags` still describes them. A 16-bit operand size wraps the
        // target at 64 KiB, which the page arithmetic of a static site does not follow.
        if op.osize == 4 {
            self.static_tail(i, (op.len as i64).wrapping_add(op.imm as i64));
        }
    }

    /// Host flags = the x86 flags of the pending lazy operation (known to be `fop`, size `s`).
    fn regenerate_flags(&mut self, fop: FlagOp, s: u8) {
        match fop {
            FlagOp::Sub => {
                asm!(self.a ; mov rax, QWORD [rbx + L_A] ; mov rcx, QWORD [rbx + L_B]);
                match s {
                    1 => asm!(self.a ; cmp al, cl),
                    2 => asm!(self.a ; cmp ax, cx),
                    4 => asm!(self.a ; cmp eax, ecx),
                    _ => asm!(self.a ; cmp rax, rcx),
                }
            }
            FlagOp::Add => {
                asm!(self.a ; mov rax, QWORD [rbx + L_A] ; mov rcx, QWORD [rbx + L_B]);
                match s {
                    1 => asm!(self.a ; add al, cl),
                    2 => asm!(self.a ; add ax, cx),
                    4 => asm!(self.a ; add eax, ecx),
                    _ => asm!(self.a ; add rax, rcx),
                }
            }
            FlagOp::Inc | FlagOp::Dec => {
                // CF from RFLAGS (INC/DEC keep it), the rest from redoing the operation.
                asm!(self.a
                    ; mov rax, QWORD [rbx + L_A]
                    ; bt QWORD [rbx + RFLAGS], 0
                );
                match (fop == FlagOp::Inc, s) {
                    (true, 1) => asm!(self.a ; inc al),
                    (true, 2) => asm!(self.a ; inc ax),
                    (true, 4) => asm!(self.a ; inc eax),
                    (true, _) => asm!(self.a ; inc rax),
                    (false, 1) => asm!(self.a ; dec al),
                    (false, 2) => asm!(self.a ; dec ax),
                    (false, 4) => asm!(self.a ; dec eax),
                    (false, _) => asm!(self.a ; dec rax),
                }
            }
            _ => {
                // Logic: CF = OF = 0, the rest from the result.
                asm!(self.a ; mov rax, QWORD [rbx + L_RES]);
                match s {
                    1 => asm!(self.a ; test al, al),
                    2 => asm!(self.a ; test ax, ax),
                    4 => asm!(self.a ; test eax, eax),
                    _ => asm!(self.a ; test rax, rax),
                }
            }
        }
    }
}

/// Emitters for the forms tier 0 runs through its generic handlers (`arith::alu` for ADC/SBB,
/// `moves::setcc`/`cmov`, ...): same reads in the same order, the same lazy-flags record (or
/// eager flags where tier 0 materialises them), the handler on any fast-path miss.
impl Compiler {
    /// Leave the host flags such that host condition code `hc` (returned) is x86 condition
    /// `cc` of the pending flags: redo a known producer, read RFLAGS when the flags are
    /// eager there (all but OF, through SAHF) or when only CF is asked for after ADC/SBB,
    /// otherwise ask `Cpu::cond` (then `hc` is NE on its result).
    fn host_cond(&mut self, cc: u8) -> u8 {
        let cc = cc & 15;
        match self.flags {
            Producer::Known(fop, s) if fop != FlagOp::None => {
                self.regenerate_flags(fop, s);
                cc
            }
            // O, L, LE and their negations need OF, which SAHF does not load.
            Producer::Known(FlagOp::None, _) if !matches!(cc >> 1, 0 | 6 | 7) => {
                asm!(self.a
                    ; mov eax, DWORD [rbx + RFLAGS]
                    ; mov ah, al
                    ; sahf
                );
                cc
            }
            Producer::Carry if cc >> 1 == 1 => {
                asm!(self.a ; bt QWORD [rbx + RFLAGS], 0);
                cc
            }
            _ => {
                let (c32, f) = (cc as i32, addr(trampoline::cond as *const () as usize));
                self.call_out(f, Some(c32 as i64));
                asm!(self.a ; test al, al);
                // `Cpu::cond` may have materialised the flags.
                self.flags = Producer::Unknown;
                5
            }
        }
    }

    /// SETcc of a register (16-19: AH-BH), as `moves::setcc`.
    fn setcc(&mut self, op: &Op) {
        let hc = self.host_cond(op.aux);
        setcc_al(&mut self.a, hc);
        if op.dst >= 16 {
            self.put_hi(Reg::Rax, op.dst - 16);
        } else {
            self.put(1, Reg::Rax, op.dst);
        }
    }

    /// CMOVcc r, r/m (`moves::cmov`): the source is read (and may fault) whatever the
    /// condition; a false condition still zero-extends a 32-bit destination.
    fn cmov(&mut self, i: usize, op: &Op) {
        let s = op.osize;
        // The condition first (it may call out and clobber scratch registers), kept in R10.
        let hc = self.host_cond(op.aux);
        setcc_al(&mut self.a, hc);
        asm!(self.a ; movzx r14d, al);
        let cont = if op.src == loc::MEM {
            let c = self.mem_probe(i, op, s, false);
            match s {
                2 => asm!(self.a ; movzx eax, WORD [rcx]),
                4 => asm!(self.a ; mov eax, DWORD [rcx]),
                _ => asm!(self.a ; mov rax, QWORD [rcx]),
            }
            Some(c)
        } else {
            self.get(8, op.src, Reg::Rax);
            None
        };
        self.get(8, op.dst, Reg::Rdx);
        asm!(self.a ; test r14d, r14d);
        match s {
            2 => asm!(self.a ; cmovz ax, dx),
            4 => asm!(self.a ; cmovz eax, edx),
            _ => asm!(self.a ; cmovz rax, rdx),
        }
        self.put(s, Reg::Rax, op.dst);
        if let Some(cont) = cont {
            asm!(self.a ; =>cont);
        }
    }

    /// Host CF = CF of the pending flags (what `Cpu::flag(CF)` reads): already there when
    /// the op before left its flags in the host's (`host_flags`; the ADD of an ADD/ADC pair).
    fn carry_in(&mut self) {
        if self.prev_host_flags
            && matches!(
                self.flags,
                Producer::Known(FlagOp::Add | FlagOp::Sub | FlagOp::Logic, _)
            )
        {
            return;
        }
        match self.flags {
            Producer::Known(FlagOp::Logic, _) => asm!(self.a ; clc),
            Producer::Known(FlagOp::Add, _) => asm!(self.a
                ; mov rcx, QWORD [rbx + L_RES]
                ; cmp rcx, QWORD [rbx + L_A]
            ),
            Producer::Known(FlagOp::Sub, _) => asm!(self.a
                ; mov rcx, QWORD [rbx + L_A]
                ; cmp rcx, QWORD [rbx + L_B]
            ),
            Producer::Known(_, _) | Producer::Carry => {
                asm!(self.a ; bt QWORD [rbx + RFLAGS], 0)
            }
            Producer::Unknown => {
                self.fold_cf();
                asm!(self.a ; bt QWORD [rbx + RFLAGS], 0);
            }
        }
    }

    /// ADC/SBB (`arith::alu::<ADC/SBB>`): the host ADC/SBB on the masked operands; the lazy
    /// record is `Add`/`Sub` for a carry-in of 0 and `Adc1`/`Sbb1` for 1, as tier 0 records
    /// it. The carry out also goes to RFLAGS.CF, so a following ADC/SBB/Jcc reads it there
    /// (`Producer::Carry`; not after a memory form, whose handler path does not do that).
    fn adc_sbb(&mut self, i: usize, op: &Op, sbb: bool) {
        let s = op.osize;
        // T2 = the carry in, T1 = the memory operand's host address.
        self.carry_in();
        asm!(self.a ; setc r13b ; movzx r13d, r13b);
        let mem_dst = op.dst == loc::MEM;
        let cont = if mem_dst || op.src == loc::MEM {
            let c = self.mem_probe(i, op, s, mem_dst);
            asm!(self.a ; mov r14, rcx);
            Some(c)
        } else {
            None
        };
        if mem_dst {
            load_t1(&mut self.a, s, Reg::Rax);
        } else {
            self.get(s, op.dst, Reg::Rax);
        }
        match op.src {
            loc::MEM => load_t1(&mut self.a, s, Reg::Rcx),
            loc::IMM => {
                let v = (op.imm & crate::flags::size_mask(s)) as i64;
                asm!(self.a ; mov rcx, QWORD v);
            }
            r => self.get(s, r, Reg::Rcx),
        }
        asm!(self.a ; mov rdx, rax ; bt r13d, 0);
        match (sbb, s) {
            (false, 1) => asm!(self.a ; adc dl, cl),
            (false, 2) => asm!(self.a ; adc dx, cx),
            (false, 4) => asm!(self.a ; adc edx, ecx),
            (false, _) => asm!(self.a ; adc rdx, rcx),
            (true, 1) => asm!(self.a ; sbb dl, cl),
            (true, 2) => asm!(self.a ; sbb dx, cx),
            (true, 4) => asm!(self.a ; sbb edx, ecx),
            (true, _) => asm!(self.a ; sbb rdx, rcx),
        }
        // Only moves until the carry out is taken (SETC below).
        mask(&mut self.a, s, Reg::Rdx);
        self.rm_store_rdx(op, s);
        if self.dead {
            // Nothing reads these flags: no record, no CF in RFLAGS (the memory ADC of a
            // 64-bit counter's high half, a compare right after).
            if let Some(cont) = cont {
                asm!(self.a ; =>cont);
            }
            self.flags = Producer::Unknown;
            return;
        }
        asm!(self.a ; setc r14b ; movzx r14d, r14b);
        // Add + 1 = Adc1, Sub + 1 = Sbb1.
        let base = if sbb { FlagOp::Sub } else { FlagOp::Add } as u8 as i32;
        let sb = s as i8;
        asm!(self.a
            ; mov QWORD [rbx + L_A], rax
            ; mov QWORD [rbx + L_B], rcx
            ; mov QWORD [rbx + L_RES], rdx
            ; add r13d, base
            ; mov BYTE [rbx + L_OP], r13b
            ; mov BYTE [rbx + L_SIZE], sb
            ; mov rax, QWORD [rbx + RFLAGS]
            ; and rax, -2
            ; or rax, r14
            ; mov QWORD [rbx + RFLAGS], rax
        );
        self.flags = match cont {
            Some(cont) => {
                asm!(self.a ; =>cont);
                Producer::Unknown
            }
            None => Producer::Carry,
        };
    }
}

/// `r` = the `s` bytes at [T1], zero-extended.
fn load_t1(a: &mut VecAssembler<X64Relocation>, s: u8, r: Reg) {
    load_sized(a, s, r, Reg::T1 as u8, 0);
}

/// `r` = the low `s` bytes at [host register `base` + `off`], zero-extended (one load).
fn load_sized(a: &mut VecAssembler<X64Relocation>, s: u8, r: Reg, base: u8, off: i32) {
    let d = r as u8;
    match s {
        1 => asm!(a ; movzx Rd(d), BYTE [Rq(base) + off]),
        2 => asm!(a ; movzx Rd(d), WORD [Rq(base) + off]),
        4 => asm!(a ; mov Rd(d), DWORD [Rq(base) + off]),
        _ => asm!(a ; mov Rq(d), QWORD [Rq(base) + off]),
    }
}

/// AL = host condition code `cc` (0-15) of the host flags.
fn setcc_al(a: &mut VecAssembler<X64Relocation>, cc: u8) {
    match cc {
        0 => asm!(a ; seto al),
        1 => asm!(a ; setno al),
        2 => asm!(a ; setb al),
        3 => asm!(a ; setae al),
        4 => asm!(a ; sete al),
        5 => asm!(a ; setne al),
        6 => asm!(a ; setbe al),
        7 => asm!(a ; seta al),
        8 => asm!(a ; sets al),
        9 => asm!(a ; setns al),
        10 => asm!(a ; setp al),
        11 => asm!(a ; setnp al),
        12 => asm!(a ; setl al),
        13 => asm!(a ; setge al),
        14 => asm!(a ; setle al),
        _ => asm!(a ; setg al),
    }
}

impl Compiler {
    /// Materialise the pending flags into RFLAGS (lazy op `None`), as `Cpu::rflags`: a known
    /// producer is redone on the host (its six flags are the x86 ones; TEST leaves AF
    /// undefined, and the logic ops clear it), anything else is computed by `Cpu::rflags`.
    fn materialise(&mut self) {
        match self.flags {
            Producer::Known(FlagOp::None, _) => return,
            Producer::Known(fop, s) => {
                self.regenerate_flags(fop, s);
                let mut szapc = (flag::SF | flag::ZF | flag::AF | flag::PF | flag::CF) as i32;
                if fop == FlagOp::Logic {
                    szapc &= !(flag::AF as i32);
                }
                let keep = !flag::ARITH as i32;
                let none = FlagOp::None as u8 as i8;
                asm!(self.a
                    ; lahf
                    ; seto dl
                    ; movzx ecx, ah
                    ; and ecx, szapc
                    ; movzx edx, dl
                    ; shl edx, 11
                    ; or ecx, edx
                    ; mov rax, QWORD [rbx + RFLAGS]
                    ; and rax, keep
                    ; or rax, rcx
                    ; mov QWORD [rbx + RFLAGS], rax
                    ; mov BYTE [rbx + L_OP], none
                );
            }
            Producer::Carry | Producer::Unknown => {
                let f = addr(trampoline::materialise as *const () as usize);
                self.call_out(f, None);
            }
        }
        self.flags = Producer::Known(FlagOp::None, 0);
    }

    /// A ROL/ROR whose flags `rotate` defers: a pinned register by a non-zero immediate at 32
    /// bits, its flags live, in the second pass.
    fn rotate_defers(&self, op: &Op) -> bool {
        (is_handler(op, shift::<{ sk::ROL }>) || is_handler(op, shift::<{ sk::ROR }>))
            && self.defer
            && !self.dead
            && op.osize == 4
            && op.src == loc::IMM
            && imm_count(op, 4) != 0
            && self.home(op.dst).is_some()
    }

    /// ROL/ROR of a register by an immediate or CL (`shift_rotate::shift`): a masked count of
    /// 0 changes nothing; otherwise the flags are materialised, SF/ZF/AF/PF kept, and CF/OF
    /// set from the result (ROL: CF = bit 0, OF = msb ^ CF; ROR: CF = msb, OF = msb ^ the
    /// bit below), eagerly. The host rotate gives the value (its count is taken modulo the
    /// width for 8/16-bit operands, as tier 0 does).
    fn rotate(&mut self, op: &Op, ror: bool) {
        let s = op.osize;
        let cmask = if s == 8 { 0x3F } else { 0x1F };
        if op.src == loc::IMM && (op.imm as u32) & cmask == 0 {
            return;
        }
        if let Some(d) = self.home(op.dst).filter(|_| self.rotate_defers(op)) {
            let c = imm_count(op, s) as i8;
            if ror {
                asm!(self.a ; ror Rd(d), c);
            } else {
                asm!(self.a ; rol Rd(d), c);
            }
            self.deferred = Some(Deferred::Rotate {
                ror,
                d,
                before: self.flags,
            });
            self.flags = Producer::Known(FlagOp::None, 0);
            return;
        }
        if self.dead
            && s == 4
            && op.src == loc::IMM
            && let Some(d) = self.home(op.dst)
        {
            let c = imm_count(op, s) as i8;
            if ror {
                asm!(self.a ; ror Rd(d), c);
            } else {
                asm!(self.a ; rol Rd(d), c);
            }
            self.flags = Producer::Unknown;
            return;
        }
        // Materialising first is invisible and leaves the flags eager on both paths.
        if !self.dead {
            self.materialise();
        }
        let skip = self.a.new_dynamic_label();
        if op.src == loc::IMM {
            let c = ((op.imm as u32) & cmask) as i8;
            asm!(self.a ; mov cl, c);
        } else {
            self.get(1, 1, Reg::Rcx);
            asm!(self.a
                ; and ecx, cmask as i32
                ; jz =>skip
            );
        }
        self.get(8, op.dst, Reg::Rax);
        match (ror, s) {
            (false, 1) => asm!(self.a ; rol al, cl),
            (false, 2) => asm!(self.a ; rol ax, cl),
            (false, 4) => asm!(self.a ; rol eax, cl),
            (false, _) => asm!(self.a ; rol rax, cl),
            (true, 1) => asm!(self.a ; ror al, cl),
            (true, 2) => asm!(self.a ; ror ax, cl),
            (true, 4) => asm!(self.a ; ror eax, cl),
            (true, _) => asm!(self.a ; ror rax, cl),
        }
        self.put(s, Reg::Rax, op.dst);
        if self.dead {
            asm!(self.a ; =>skip);
            self.flags = Producer::Unknown;
            return;
        }
        self.rotate_flags(ror, s);
        asm!(self.a ; =>skip);
    }

    /// RFLAGS.CF and OF of a rotate (ROR or ROL) from RAX = its `s`-byte result.
    fn rotate_flags(&mut self, ror: bool, s: u8) {
        // RDX = CF | OF << 11.
        let msb = (s as u32 * 8 - 1) as i8;
        if ror {
            asm!(self.a
                ; mov rdx, rax
                ; shr rdx, msb
                ; and edx, 1
                ; mov rcx, rax
                ; shr rcx, msb - 1
                ; xor ecx, edx
                ; and ecx, 1
            );
        } else {
            asm!(self.a
                ; mov edx, eax
                ; and edx, 1
                ; mov rcx, rax
                ; shr rcx, msb
                ; xor ecx, edx
                ; and ecx, 1
            );
        }
        let keep = !(flag::CF | flag::OF) as i32;
        asm!(self.a
            ; shl ecx, 11
            ; or edx, ecx
            ; mov rax, QWORD [rbx + RFLAGS]
            ; and rax, keep
            ; or rax, rdx
            ; mov QWORD [rbx + RFLAGS], rax
        );
    }

    /// SHL/SAL/SHR/SAR of a register by CL (`shift_rotate::shift`), as [`Compiler::shift_ri`]
    /// with the count known at run time: a masked count of 0 changes nothing (the flags stay
    /// pending), 8/16-bit operands shifted by their width or more go to the handler.
    fn shift_cl(&mut self, i: usize, k: u8, op: &Op) {
        use crate::exec::shift_rotate::kind as sk;
        let s = op.osize;
        let bits = s as i32 * 8;
        let cmask = if s == 8 { 0x3F } else { 0x1F };
        // Only 8/16-bit counts of the width or more leave the inline path.
        let (fb, cont) = if s < 4 {
            self.fallback_label(i, op)
        } else {
            (self.a.new_dynamic_label(), self.a.new_dynamic_label())
        };
        self.get(1, 1, Reg::Rcx);
        asm!(self.a
            ; and ecx, cmask
            ; jz =>cont
        );
        if s < 4 {
            asm!(self.a ; cmp ecx, bits ; jae =>fb);
        }
        self.get(8, op.dst, Reg::Rax);
        match (k, s) {
            (sk::SHR, 1) => asm!(self.a ; shr al, cl),
            (sk::SHR, 2) => asm!(self.a ; shr ax, cl),
            (sk::SHR, 4) => asm!(self.a ; shr eax, cl),
            (sk::SHR, _) => asm!(self.a ; shr rax, cl),
            (sk::SAR, 1) => asm!(self.a ; sar al, cl),
            (sk::SAR, 2) => asm!(self.a ; sar ax, cl),
            (sk::SAR, 4) => asm!(self.a ; sar eax, cl),
            (sk::SAR, _) => asm!(self.a ; sar rax, cl),
            (_, 1) => asm!(self.a ; shl al, cl),
            (_, 2) => asm!(self.a ; shl ax, cl),
            (_, 4) => asm!(self.a ; shl eax, cl),
            (_, _) => asm!(self.a ; shl rax, cl),
        }
        if self.dead {
            self.put(s, Reg::Rax, op.dst);
            asm!(self.a ; =>cont);
            self.flags = Producer::Unknown;
            return;
        }
        // The host count is below the width: CF, PF, ZF, SF are the x86 ones.
        let szpc = (flag::SF | flag::ZF | flag::PF | flag::CF) as i32;
        asm!(self.a
            ; mov r13, rax
            ; lahf
            ; movzx edx, ah
            ; and edx, szpc
        );
        self.put(s, Reg::T2, op.dst);
        self.shift_of_to_rflags(k, s);
        asm!(self.a ; =>cont);
        // The count-0 path leaves the old flags pending.
        self.flags = Producer::Unknown;
    }

    /// The end of an inline SHL/SHR/SAR by a count below the width: EDX holds its CF, PF,
    /// ZF, SF (from LAHF) and T2 its result; add OF as tier 0 computes it (SHL: msb(result) ^
    /// CF; SHR: bit (bits - 2) of the result; SAR: 0) and write the six flags to RFLAGS,
    /// eagerly (lazy op None; AF 0). Clobbers RAX and RCX.
    fn shift_of_to_rflags(&mut self, k: u8, s: u8) {
        use crate::exec::shift_rotate::kind as sk;
        let bits = (s * 8) as i8;
        match k {
            sk::SHR => asm!(self.a
                ; mov rcx, r13
                ; shr rcx, bits - 2
                ; and ecx, 1
                ; shl ecx, 11
                ; or edx, ecx
            ),
            sk::SAR => {}
            _ => asm!(self.a
                ; mov rcx, r13
                ; shr rcx, bits - 1
                ; xor ecx, edx
                ; and ecx, 1
                ; shl ecx, 11
                ; or edx, ecx
            ),
        }
        let keep = !flag::ARITH as i32;
        let none = FlagOp::None as u8 as i8;
        asm!(self.a
            ; mov rax, QWORD [rbx + RFLAGS]
            ; and rax, keep
            ; or rax, rdx
            ; mov QWORD [rbx + RFLAGS], rax
            ; mov BYTE [rbx + L_OP], none
        );
    }

    /// SHL/SAL/SHR/SAR of a memory operand (1/2/4 bytes) by an immediate or CL
    /// (`shift_rotate::shift`): the operand is read with write intent through the inline
    /// path, shifted on the host, written back, and the flags are set as in
    /// [`Compiler::shift_cl`]. A count of 0 (the handler still reads the operand) or, for
    /// 8/16-bit operands, of the width or more goes to the handler.
    fn shift_mem(&mut self, i: usize, k: u8, op: &Op) {
        use crate::exec::shift_rotate::kind as sk;
        let s = op.osize;
        let bits = s as i32 * 8;
        let (fb, cont) = self.fallback_label(i, op);
        self.probe_to(op, s, true, fb);
        asm!(self.a ; mov r14, rcx);
        if op.src == loc::IMM {
            let c = (op.imm & 0x1F) as i8;
            asm!(self.a ; mov ecx, c as i32);
        } else {
            self.get(1, 1, Reg::Rcx);
            asm!(self.a
                ; and ecx, 0x1F
                ; jz =>fb
            );
            if s < 4 {
                asm!(self.a ; cmp ecx, bits ; jae =>fb);
            }
        }
        load_t1(&mut self.a, s, Reg::Rax);
        match (k, s) {
            (sk::SHR, 1) => asm!(self.a ; shr al, cl),
            (sk::SHR, 2) => asm!(self.a ; shr ax, cl),
            (sk::SHR, _) => asm!(self.a ; shr eax, cl),
            (sk::SAR, 1) => asm!(self.a ; sar al, cl),
            (sk::SAR, 2) => asm!(self.a ; sar ax, cl),
            (sk::SAR, _) => asm!(self.a ; sar eax, cl),
            (_, 1) => asm!(self.a ; shl al, cl),
            (_, 2) => asm!(self.a ; shl ax, cl),
            (_, _) => asm!(self.a ; shl eax, cl),
        }
        // (Moves only until LAHF.)
        asm!(self.a ; mov r13, rax);
        match s {
            1 => asm!(self.a ; mov BYTE [r14], al),
            2 => asm!(self.a ; mov WORD [r14], ax),
            _ => asm!(self.a ; mov DWORD [r14], eax),
        }
        if !self.dead {
            let szpc = (flag::SF | flag::ZF | flag::PF | flag::CF) as i32;
            asm!(self.a
                ; lahf
                ; movzx edx, ah
                ; and edx, szpc
            );
            self.shift_of_to_rflags(k, s);
        }
        asm!(self.a ; =>cont);
        // The handler's path may have left the old flags (count 0).
        self.flags = Producer::Unknown;
    }

    /// The destination of a one-operand read-modify-write op: RAX = its `s` bytes; for
    /// memory R11 = the host address (read with write intent) and the join label returned.
    fn rm_load(&mut self, i: usize, op: &Op, s: u8) -> Option<DynamicLabel> {
        if op.dst == loc::MEM {
            let c = self.mem_probe(i, op, s, true);
            asm!(self.a ; mov r14, rcx);
            load_t1(&mut self.a, s, Reg::Rax);
            Some(c)
        } else {
            self.get(s, op.dst, Reg::Rax);
            None
        }
    }

    /// Write RDX (masked) back to where [`Compiler::rm_load`] read (for memory: [T1]; moves
    /// only, so the host flags survive).
    fn rm_store_rdx(&mut self, op: &Op, s: u8) {
        if op.dst == loc::MEM {
            match s {
                1 => asm!(self.a ; mov BYTE [r14], dl),
                2 => asm!(self.a ; mov WORD [r14], dx),
                4 => asm!(self.a ; mov DWORD [r14], edx),
                _ => asm!(self.a ; mov QWORD [r14], rdx),
            }
        } else {
            self.put(s, Reg::Rdx, op.dst);
        }
    }

    /// NOT r/m (`logic::not`): no flags.
    fn not(&mut self, i: usize, op: &Op) {
        let s = op.osize;
        let cont = self.rm_load(i, op, s);
        asm!(self.a ; mov rdx, rax ; not rdx);
        mask(&mut self.a, s, Reg::Rdx);
        self.rm_store_rdx(op, s);
        if let Some(c) = cont {
            asm!(self.a ; =>c);
        }
    }

    /// NEG / INC / DEC r/m (`arith::neg`/`inc`/`dec`): NEG records `Sub` of 0 - x, INC/DEC
    /// fold the pending CF into RFLAGS first (`Cpu::set_lazy`) and record `Inc`/`Dec`.
    fn unary_arith(&mut self, i: usize, op: &Op, fop: FlagOp) {
        let s = op.osize;
        if fop != FlagOp::Sub && !self.dead {
            self.fold_cf();
        }
        let cont = self.rm_load(i, op, s);
        match fop {
            FlagOp::Sub => asm!(self.a
                ; mov rcx, rax
                ; xor eax, eax
                ; mov rdx, rax
                ; sub rdx, rcx
            ),
            FlagOp::Inc => asm!(self.a ; mov ecx, 1 ; lea rdx, [rax + 1]),
            _ => asm!(self.a ; mov ecx, 1 ; lea rdx, [rax - 1]),
        }
        mask(&mut self.a, s, Reg::Rdx);
        self.rm_store_rdx(op, s);
        if !self.dead {
            let w = op_size(fop, s);
            asm!(self.a
                ; mov QWORD [rbx + L_A], rax
                ; mov QWORD [rbx + L_B], rcx
                ; mov QWORD [rbx + L_RES], rdx
                ; mov WORD [rbx + L_OP], w
            );
        }
        if let Some(c) = cont {
            asm!(self.a ; =>c);
        }
        self.produced(Producer::Known(fop, s));
    }

    /// One-operand MUL/IMUL of 16/32/64 bits (`arith::mul1`/`imul1`): rDX:rAX = rAX * src
    /// on the host, whose CF = OF are tier 0's (high half non-zero / not the sign extension
    /// of the low half); SF, ZF, PF from the low half, AF 0, eager.
    fn mul1(&mut self, i: usize, op: &Op, signed: bool) {
        let s = op.osize;
        let cont = if op.dst == loc::MEM {
            let c = self.mem_probe(i, op, s, false);
            asm!(self.a ; mov r14, rcx);
            load_t1(&mut self.a, s, Reg::Rcx);
            Some(c)
        } else {
            self.get(8, op.dst, Reg::Rcx);
            None
        };
        self.get(8, 0, Reg::Rax);
        match (signed, s) {
            (false, 2) => asm!(self.a ; mul cx),
            (false, 4) => asm!(self.a ; mul ecx),
            (false, _) => asm!(self.a ; mul rcx),
            (true, 2) => asm!(self.a ; imul cx),
            (true, 4) => asm!(self.a ; imul ecx),
            (true, _) => asm!(self.a ; imul rcx),
        }
        asm!(self.a ; seto r13b);
        self.put(s, Reg::Rax, 0);
        self.put(s, Reg::Rdx, 2);
        match s {
            2 => asm!(self.a ; test ax, ax),
            4 => asm!(self.a ; test eax, eax),
            _ => asm!(self.a ; test rax, rax),
        }
        if !self.dead {
            self.imul_flags();
        }
        if let Some(c) = cont {
            asm!(self.a ; =>c);
        }
        self.produced(Producer::Known(FlagOp::None, s));
    }
}

impl Compiler {
    /// A fallback to op `i`'s handler for an inline path with several exits; returns (its
    /// label, the label to place where both paths join).
    fn fallback_label(&mut self, i: usize, op: &Op) -> (DynamicLabel, DynamicLabel) {
        let cont = self.a.new_dynamic_label();
        let fb = self.fallback_to(i, cont, self.delta, self.delta + op.len as u64);
        (fb, cont)
    }

    /// The same for a branch, whose inline path writes RIP itself: the pending advance is
    /// written back on the fallback's path alone (the handler leaves RIP at the target); the
    /// inline path adds it where it needs the next RIP and clears it once it has written RIP.
    fn branch_fallback(&mut self, i: usize) -> (DynamicLabel, DynamicLabel) {
        let cont = self.a.new_dynamic_label();
        (self.fallback_to(i, cont, self.delta, 0), cont)
    }

    /// A new out-of-line call of op `i`'s handler that continues at `cont` (see `Fallback`
    /// for `delta` and `rewind`); returns its label.
    fn fallback_to(
        &mut self,
        i: usize,
        cont: DynamicLabel,
        delta: u64,
        rewind: u64,
    ) -> DynamicLabel {
        let label = self.a.new_dynamic_label();
        self.fallbacks.push(Fallback {
            label,
            index: i,
            cont,
            delta,
            rewind,
            regen: None,
            deferred: self.deferred,
        });
        label
    }

    /// CBW/CWDE/CDQE (`arith::cbw`) and CWD/CDQ/CQO (`arith::cwd`): no flags.
    fn cbw_cwd(&mut self, op: &Op, cwd: bool) {
        let s = op.osize;
        match (cwd, s) {
            (false, 2) => {
                self.get(1, 0, Reg::Rax);
                asm!(self.a ; movsx eax, al);
            }
            (false, 4) => {
                self.get(2, 0, Reg::Rax);
                asm!(self.a ; movsx eax, ax);
            }
            (false, _) => {
                self.get(4, 0, Reg::Rax);
                asm!(self.a ; movsxd rax, eax);
            }
            (true, 2) => {
                self.get(2, 0, Reg::Rax);
                asm!(self.a ; movsx eax, ax ; sar eax, 15);
            }
            (true, 4) => {
                self.get(4, 0, Reg::Rax);
                asm!(self.a ; sar eax, 31);
            }
            (true, _) => {
                self.get(8, 0, Reg::Rax);
                asm!(self.a ; sar rax, 63);
            }
        }
        self.put(s, Reg::Rax, if cwd { 2 } else { 0 });
    }

    /// 32-bit DIV/IDIV (`arith::div1`/`idiv1`): EDX:EAX / src on the host, after checks that
    /// it cannot trap there; a zero divisor or a quotient that does not fit (#DE) goes to the
    /// handler. IDIV by -1 runs on the host too unless the 64-bit dividend is -2^63 (its
    /// negation, the quotient, would trap there; it does not fit 32 bits either).
    /// The flags are not touched (tier 0 leaves them as they were).
    fn div32(&mut self, i: usize, op: &Op, signed: bool) {
        let (fb, cont) = self.fallback_label(i, op);
        if op.dst == loc::MEM {
            self.probe_to(op, 4, false, fb);
            if signed {
                asm!(self.a ; movsxd rcx, DWORD [rcx]);
            } else {
                asm!(self.a ; mov ecx, DWORD [rcx]);
            }
        } else {
            self.get(4, op.dst, Reg::Rcx);
            if signed {
                asm!(self.a ; movsxd rcx, ecx);
            }
        }
        asm!(self.a
            ; test rcx, rcx
            ; jz =>fb
        );
        self.get(4, 0, Reg::Rax);
        self.get(4, 2, Reg::Rdx);
        if signed {
            let go = self.a.new_dynamic_label();
            asm!(self.a
                ; shl rdx, 32
                ; or rax, rdx
                ; cmp rcx, -1
                ; jne =>go
                ; mov r13, rax
                ; neg r13
                ; jo =>fb
                ; =>go
                ; cqo
                ; idiv rcx
                ; movsxd r13, eax
                ; cmp r13, rax
                ; jne =>fb
            );
        } else {
            asm!(self.a
                ; cmp edx, ecx
                ; jae =>fb
                ; div ecx
            );
        }
        self.put(4, Reg::Rax, 0);
        self.put(4, Reg::Rdx, 2);
        asm!(self.a ; =>cont);
    }

    /// SHLD/SHRD of 32/64-bit registers by an immediate or CL (`shift_rotate::shxd`): a
    /// masked count of 0 changes nothing; otherwise the host's result, CF, SF, ZF, PF, with
    /// OF = the sign changed and AF 0, eagerly.
    fn shxd(&mut self, op: &Op) {
        let s = op.osize;
        let cmask = if s == 8 { 0x3F } else { 0x1F };
        let skip = self.a.new_dynamic_label();
        if op.imm2 == 1 {
            if (op.imm as u32) & cmask == 0 {
                return;
            }
            let c = ((op.imm as u32) & cmask) as i8;
            asm!(self.a ; mov cl, c);
        } else {
            self.get(1, 1, Reg::Rcx);
            asm!(self.a
                ; and ecx, cmask as i32
                ; jz =>skip
            );
        }
        // T1 = the old value, T2 = the result.
        self.get(8, op.dst, Reg::Rax);
        asm!(self.a ; mov r14, rax);
        self.get(8, op.src, Reg::Rdx);
        match (op.aux == 1, s) {
            (false, 4) => asm!(self.a ; shld eax, edx, cl),
            (false, _) => asm!(self.a ; shld rax, rdx, cl),
            (true, 4) => asm!(self.a ; shrd eax, edx, cl),
            (true, _) => asm!(self.a ; shrd rax, rdx, cl),
        }
        let szpc = (flag::SF | flag::ZF | flag::PF | flag::CF) as i32;
        let sign = (s as u32 * 8 - 1) as i8;
        asm!(self.a
            ; mov r13, rax
            ; lahf
            ; movzx edx, ah
            ; and edx, szpc
        );
        self.put(s, Reg::T2, op.dst);
        asm!(self.a
            ; xor r14, r13
            ; shr r14, sign
            ; and r14d, 1
            ; shl r14d, 11
            ; or edx, r14d
        );
        let keep = !flag::ARITH as i32;
        let none = FlagOp::None as u8 as i8;
        asm!(self.a
            ; mov rax, QWORD [rbx + RFLAGS]
            ; and rax, keep
            ; or rax, rdx
            ; mov QWORD [rbx + RFLAGS], rax
            ; mov BYTE [rbx + L_OP], none
            ; =>skip
        );
        // The count-0 path leaves the old flags pending.
        self.flags = Producer::Unknown;
    }

    /// BSF/BSR r, r/m (`bits::bsf_bsr`, also for the TZCNT/LZCNT encodings, which it runs as
    /// BSF/BSR): the flags are materialised and all kept but ZF; a zero source sets ZF and
    /// leaves the destination alone.
    fn bsf_bsr(&mut self, i: usize, op: &Op) {
        let s = op.osize;
        // ZF is new, the rest as they were: the old flags are read only if the new ones are.
        self.effect = Effect::Pass;
        let flags = !self.dead;
        if flags {
            self.materialise();
        }
        let cont = if op.src == loc::MEM {
            let c = self.mem_probe(i, op, s, false);
            asm!(self.a ; mov r14, rcx);
            load_t1(&mut self.a, s, Reg::Rcx);
            Some(c)
        } else {
            self.get(s, op.src, Reg::Rcx);
            None
        };
        let (zero, done) = (self.a.new_dynamic_label(), self.a.new_dynamic_label());
        let zf = flag::ZF as i32;
        asm!(self.a
            ; test rcx, rcx
            ; jz =>zero
        );
        if op.aux == 0 {
            asm!(self.a ; bsf rax, rcx);
        } else {
            asm!(self.a ; bsr rax, rcx);
        }
        self.put(s, Reg::Rax, op.dst);
        if flags {
            asm!(self.a
                ; and QWORD [rbx + RFLAGS], !zf
                ; jmp =>done
                ; =>zero
                ; or QWORD [rbx + RFLAGS], zf
                ; =>done
            );
        } else {
            asm!(self.a
                ; =>zero
                ; =>done
            );
        }
        if let Some(c) = cont {
            asm!(self.a ; =>c);
        }
        if flags {
            self.flags = Producer::Known(FlagOp::None, s);
        }
    }
}

impl Compiler {
    /// JMP r/m32 and CALL r/m32 outside 64-bit code (`control::jmp_ind`/`call_ind`): the
    /// target from a register or through the inline load path, checked against the CS limit;
    /// CALL pushes the return address through the inline store path (32-bit stack). RIP in
    /// memory is the branch's start until the op completes; anything off the fast path goes
    /// to the handler.
    fn branch_ind32(&mut self, i: usize, op: &Op, call: bool) {
        let (fb, cont) = self.branch_fallback(i);
        if call {
            self.stack32(fb);
        }
        // T1 = target (the operand is read before anything is pushed).
        if op.src == loc::MEM {
            self.probe_to(op, 4, false, fb);
            asm!(self.a ; mov r14d, DWORD [rcx]);
        } else {
            self.get(4, op.src, Reg::T1);
        }
        asm!(self.a ; mov eax, r14d);
        self.check_cs_limit(fb);
        if call {
            self.advance_rip_rax(self.delta as i32 + op.len as i32);
            asm!(self.a ; mov r13, rax);
            self.probe_to(&Self::stack_slot(op, -4), 4, true, fb);
            asm!(self.a ; mov DWORD [rcx], r13d);
            self.add_esp(-4);
        }
        asm!(self.a
            ; mov QWORD [rbx + RIP], r14
            ; =>cont
        );
        self.delta = 0;
    }
}

/// Scratch host registers (x86-64 register numbers).
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Reg {
    Rax = 0,
    Rcx = 1,
    Rdx = 2,
    /// Scratch beyond the three the x86 forms need (MUL, DIV, shifts by CL, LAHF).
    T1 = 14,
    T2 = 13,
}

/// Host register `to` = the low `s` bytes of host register `from`, zero-extended (a move:
/// the host flags survive).
fn zext(a: &mut VecAssembler<X64Relocation>, s: u8, to: u8, from: u8) {
    match s {
        1 => asm!(a ; movzx Rd(to), Rb(from)),
        2 => asm!(a ; movzx Rd(to), Rw(from)),
        4 => asm!(a ; mov Rd(to), Rd(from)),
        _ => asm!(a ; mov Rq(to), Rq(from)),
    }
}

/// Zero-extend the low `s` bytes of `r` in place.
fn mask(a: &mut VecAssembler<X64Relocation>, s: u8, r: Reg) {
    let r = r as u8;
    match s {
        1 => asm!(a ; movzx Rd(r), Rb(r)),
        2 => asm!(a ; movzx Rd(r), Rw(r)),
        4 => asm!(a ; mov Rd(r), Rd(r)),
        _ => {}
    }
}

/// Branch to `l` on x86 condition code `cc` (the low nibble of Jcc) of the host flags.
fn jcc_host(a: &mut VecAssembler<X64Relocation>, cc: u8, l: DynamicLabel) {
    match cc {
        0 => asm!(a ; jo =>l),
        1 => asm!(a ; jno =>l),
        2 => asm!(a ; jb =>l),
        3 => asm!(a ; jae =>l),
        4 => asm!(a ; je =>l),
        5 => asm!(a ; jne =>l),
        6 => asm!(a ; jbe =>l),
        7 => asm!(a ; ja =>l),
        8 => asm!(a ; js =>l),
        9 => asm!(a ; jns =>l),
        10 => asm!(a ; jp =>l),
        11 => asm!(a ; jnp =>l),
        12 => asm!(a ; jl =>l),
        13 => asm!(a ; jge =>l),
        14 => asm!(a ; jle =>l),
        _ => asm!(a ; jg =>l),
    }
}

/// A MOVZX/MOVSX from memory that compiles to the inline load path (`Compiler::movx`).
fn movx_load(op: &Op) -> bool {
    (is_handler(op, crate::exec::moves::movzx) || is_handler(op, crate::exec::moves::movsx))
        && op.dst < 16
        && matches!((op.aux, op.osize), (1, 2 | 4 | 8) | (2, 4 | 8) | (4, 8))
        && op.src == loc::MEM
        && mem_inlinable(op)
}

fn is_handler(op: &Op, h: crate::decode::op::Handler) -> bool {
    op.exec as usize == h as usize
}

fn is_branch(op: &Op) -> bool {
    is_handler(op, crate::exec::control::jcc)
        || is_handler(op, crate::exec::control::jmp_rel)
        || is_handler(op, crate::exec::control::jmp_ind)
        || is_handler(op, crate::exec::control::call_ind)
}
