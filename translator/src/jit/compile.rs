//! The block compiler: a tier-0 block (its `Op`s) → x86-64 host code.
//!
//! Every op either becomes inline host code (the forms `FastForm` names, plus near JMP rel)
//! or a call of [`trampoline::call_op`] with that op, which runs its tier-0 handler exactly as
//! the dispatch loop would. Register conventions inside a block: RBX = `*mut Cpu`, R12 =
//! `*mut Ctx`; RAX, RCX, RDX are scratch. Guest state stays in the `Cpu` (no register
//! caching yet), so a handler call needs no spilling.
//!
//! A block is entered with the number of ops the budget allows (R13); it stops before op
//! R13 with [`ST_STOP`] when that is less than the block's length. A chainable block's end
//! may jump into a compiled successor's body instead of returning (see `Compiler::chain`).
//!
//! RIP: inline ops do not read it, so their lengths are summed at compile time (`delta`) and
//! written back before a handler call, a branch, or the block end. Masking once is exact:
//! `((a + x) & m + y) & m == (a + x + y) & m` for the 16/32-bit masks.
//!
//! Flags: inline ALU ops record the lazy-flags state exactly as their tier-0 handlers do.
//! When the producer of the pending flags is an inline op of this block (`Producer::Known`),
//! a Jcc regenerates the host flags by redoing that operation (CMP for SUB, TEST for the
//! logic ops, ADD, INC/DEC with CF loaded from RFLAGS) and branches with the host's own
//! condition code; otherwise it calls `Cpu::cond`.

use super::trampoline::{self, Ctx, ST_BREAK, ST_OK, ST_STOP};
use crate::Cpu;
use crate::decode::op::{Op, loc};
use crate::exec::arith::kind;
use crate::exec::fast::{FastForm, fast_form};
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
const CS_LIMIT: i32 = off32(
    offset_of!(Cpu, segs) + sreg::CS * std::mem::size_of::<Segment>() + offset_of!(Segment, limit),
);

const SEG_ATTR: usize = offset_of!(Segment, attr);
const SEG_LIMIT: usize = offset_of!(Segment, limit);
const SEG_BASE: usize = offset_of!(Segment, base);
const EFER: i32 = off32(offset_of!(Cpu, efer));
const CR0: i32 = off32(offset_of!(Cpu, cr0));
const BLOCK_BREAK: i32 = off32(offset_of!(Cpu, block_break));
const CPL: i32 = off32(offset_of!(Cpu, cpl));
const ICOUNT: i32 = off32(offset_of!(Cpu, icount));
const JIT_POLL: i32 = off32(offset_of!(Cpu, jit) + offset_of!(super::Jit, poll));
const EPOCH: i32 = off32(offset_of!(Cpu, cache) + offset_of!(crate::block::BlockCache, epoch));
const TLB_GEN: i32 = off32(offset_of!(Cpu, tlb) + offset_of!(crate::mmu::tlb::Tlb, generation));
const CTX_BLOCK: i32 = off32(offset_of!(Ctx<'static>, block));
const CTX_MEM: i32 = off32(offset_of!(Ctx<'static>, mem));
const CTX_FAST_R: i32 = off32(offset_of!(Ctx<'static>, fast_r));
const CTX_FAST_W: i32 = off32(offset_of!(Ctx<'static>, fast_w));

fn seg_field(seg: usize, field: usize) -> i32 {
    off32(offset_of!(Cpu, segs) + seg * std::mem::size_of::<Segment>() + field)
}

/// Memory operands the inline path handles: one of the six segments, 16/32-bit addressing
/// (64-bit addressing means long mode, where `fast_lin` never applies).
fn mem_inlinable(op: &Op) -> bool {
    op.seg < 6 && matches!(op.asize, 2 | 4) && op.base != loc::RIP && op.index != loc::RIP
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
}

struct Compiler {
    a: VecAssembler<X64Relocation>,
    ip_mask: u64,
    long: bool,
    /// Bytes of RIP advance not yet written back.
    delta: u64,
    flags: Producer,
    /// Out-of-line exit stubs: (label, op index).
    exits: Vec<(DynamicLabel, usize)>,
    /// Out-of-line handler calls for inline ops that left their fast path: (label, op index,
    /// label to continue at).
    fallbacks: Vec<Fallback>,
    /// Budget stops before op `i` with `delta` RIP bytes pending: (label, i, delta).
    stops: Vec<(DynamicLabel, usize, u64)>,
    counts: Counts,
    /// Inline ops that end the block like a handler setting `block_break`: (label, op index).
    breaks: Vec<(DynamicLabel, usize)>,
}

/// Compile `ops` (a block decoded for `bitness`-bit code, RIP mask `ip_mask`). `links`: the
/// addresses of the block's [`super::ChainLinks`] and of the indirect-branch table when it may
/// be chained (its end keeps CS, the mode and the CPL); its end then follows a matching link
/// or table entry instead of returning.
pub(crate) fn compile(
    ops: &[Op],
    bitness: u32,
    ip_mask: u64,
    links: Option<(usize, usize)>,
) -> Result<Compiled, dynasmrt::DynasmError> {
    let mut a = VecAssembler::<X64Relocation>::new(0);
    let out = a.new_dynamic_label();
    let mut c = Compiler {
        a,
        ip_mask,
        long: bitness == 64,
        delta: 0,
        flags: Producer::Unknown,
        exits: Vec::new(),
        fallbacks: Vec::new(),
        stops: Vec::new(),
        counts: Counts::default(),
        breaks: Vec::new(),
    };
    // Three pushes after the return address keep RSP 16-byte aligned at our calls.
    asm!(c.a
        ; push rbx
        ; push r12
        ; push r13
        ; mov rbx, rdi
        ; mov r12, rsi
        ; mov r13, rdx
    );
    let body = c.a.offset().0;
    for (i, op) in ops.iter().enumerate() {
        if i > 0 {
            // The dispatcher's budget may end the block early (R13 = ops to run).
            let stop = c.a.new_dynamic_label();
            c.stops.push((stop, i, c.delta));
            let n = i as i32;
            asm!(c.a
                ; cmp r13, n
                ; jbe =>stop
            );
        }
        if !c.inline(i, op) {
            c.call(i, op);
            c.counts.called += 1;
        } else {
            c.counts.inline += 1;
        }
    }
    c.flush_rip();
    if let Some((links, ib)) = links {
        c.chain(ops.len(), links, ib);
    }
    asm!(c.a
        ; xor eax, eax
        ; pop r13
        ; pop r12
        ; pop rbx
        ; ret
    );
    for f in std::mem::take(&mut c.fallbacks) {
        asm!(c.a ; =>f.label);
        c.delta = f.delta;
        c.flush_rip();
        c.emit_call(f.index, &ops[f.index]);
        if f.rewind != 0 {
            c.advance_rip_rax((f.rewind as i32).wrapping_neg());
            asm!(c.a ; mov QWORD [rbx + RIP], rax);
        }
        let cont = f.cont;
        asm!(c.a ; jmp =>cont);
    }
    for (l, i, delta) in std::mem::take(&mut c.stops) {
        asm!(c.a ; =>l);
        c.delta = delta;
        c.flush_rip();
        let (n, st) = (i as i32, ST_STOP as i32);
        asm!(c.a
            ; mov edx, n
            ; mov eax, st
            ; jmp =>out
        );
    }
    for (l, i) in std::mem::take(&mut c.breaks) {
        let (n, st) = (i as i32, ST_BREAK as i32);
        asm!(c.a
            ; =>l
            ; mov BYTE [rbx + BLOCK_BREAK], 1
            ; mov edx, n
            ; mov eax, st
            ; jmp =>out
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
    asm!(c.a
        ; =>out
        ; shl rdx, 8
        ; or rax, rdx
        ; pop r13
        ; pop r12
        ; pop rbx
        ; ret
    );
    debug_assert_eq!(ST_OK, 0);
    let counts = c.counts;
    Ok(Compiled {
        code: c.a.finalize()?,
        counts,
        body,
    })
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
    /// none of that), and a link — the block's own two, else the indirect table's entry for
    /// RIP, which must also be of this block's code size — recorded
    /// under the same RIP, chain stamp, CS base, CPL and CS limit. The ops just run are counted into
    /// `icount` (RDTSC in the successor must see them) and the budget. Falls out of the emitted
    /// code when no link is taken.
    fn chain(&mut self, len: usize, links: usize, ib: usize) {
        use super::{ChainLink, IB_SLOTS};
        let done = self.a.new_dynamic_label();
        let poll = self.a.new_dynamic_label();
        let look = self.a.new_dynamic_label();
        let n = len as i32;
        let links = links as i64;
        let ib = ib as i64;
        let poll_fn = addr(trampoline::chain_poll as *const () as usize);
        let size = std::mem::size_of::<ChainLink>() as i32;
        let (l_rip, l_stamp, l_cs, l_cpl, l_entry, l_block, l_mask) = (
            off32(offset_of!(ChainLink, rip)),
            off32(offset_of!(ChainLink, stamp)),
            off32(offset_of!(ChainLink, cs_base)),
            off32(offset_of!(ChainLink, cpl)),
            off32(offset_of!(ChainLink, entry)),
            off32(offset_of!(ChainLink, block)),
            off32(offset_of!(ChainLink, ip_mask)),
        );
        let l_limit = off32(offset_of!(ChainLink, cs_limit));
        let cs_base = seg_field(sreg::CS, SEG_BASE);
        asm!(self.a
            ; cmp r13, n
            ; jbe =>done
            ; cmp BYTE [rbx + JIT_POLL], 0
            ; jne =>poll
            ; =>look
            ; mov rdx, QWORD links
            ; mov rax, QWORD [rbx + EPOCH]
            ; add rax, QWORD [rbx + TLB_GEN]
            ; mov rcx, QWORD [rbx + RIP]
            ; mov r8, QWORD [rbx + cs_base]
            ; movzx r9d, BYTE [rbx + CPL]
            ; mov r11d, DWORD [rbx + CS_LIMIT]
        );
        // The block's two links, then the indirect table's slot for RIP (in RDX).
        for k in 0..3 {
            let next = self.a.new_dynamic_label();
            let o = if k < 2 { k * size } else { 0 };
            if k == 2 {
                let (shift, slots) = (size.trailing_zeros() as i8, (IB_SLOTS - 1) as i32);
                asm!(self.a
                    ; mov rdx, rcx
                    ; shr rdx, 10
                    ; xor rdx, rcx
                    ; and edx, slots
                    ; shl rdx, shift
                    ; mov r10, QWORD ib
                    ; add rdx, r10
                );
            }
            asm!(self.a
                ; cmp rcx, QWORD [rdx + o + l_rip]
                ; jne =>next
                ; cmp rax, QWORD [rdx + o + l_stamp]
                ; jne =>next
                ; cmp r8, QWORD [rdx + o + l_cs]
                ; jne =>next
                ; cmp r9, QWORD [rdx + o + l_cpl]
                ; jne =>next
                ; cmp r11, QWORD [rdx + o + l_limit]
                ; jne =>next
            );
            if k == 2 {
                let mask = self.ip_mask as i64;
                asm!(self.a
                    ; mov r10, QWORD mask
                    ; cmp r10, QWORD [rdx + l_mask]
                    ; jne =>next
                );
            }
            asm!(self.a
                ; sub r13, n
                ; add QWORD [rbx + ICOUNT], n
                ; mov rax, QWORD [rdx + o + l_block]
                ; mov QWORD [r12 + CTX_BLOCK], rax
                ; jmp QWORD [rdx + o + l_entry]
                ; =>next
            );
        }
        asm!(self.a
            ; jmp =>done
            ; =>poll
            ; mov rdi, r12
            ; mov rax, QWORD poll_fn
            ; call rax
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

    /// RAX = (RIP + d) & ip_mask.
    fn advance_rip_rax(&mut self, d: i32) {
        asm!(self.a
            ; mov rax, QWORD [rbx + RIP]
            ; add rax, d
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
    }

    fn emit_call(&mut self, i: usize, op: &Op) {
        let exit = self.a.new_dynamic_label();
        self.exits.push((exit, i));
        let op_ptr = op as *const Op as i64;
        let f = addr(trampoline::call_op as *const () as usize);
        asm!(self.a
            ; mov rdi, r12
            ; mov rsi, QWORD op_ptr
            ; mov rax, QWORD f
            ; call rax
            ; test rax, rax
            ; jnz =>exit
        );
    }

    /// Emit op `i` inline if it is a form we compile; false to have it called.
    fn inline(&mut self, i: usize, op: &Op) -> bool {
        let form = fast_form(op.exec);
        let len = op.len as u64;
        match form {
            Some(FastForm::MovRR(s)) => {
                self.load(s, op.src);
                self.store_rax(s, op.dst);
            }
            Some(FastForm::MovRI(s)) => {
                let m = crate::flags::size_mask(s);
                let v = (op.imm & m) as i64;
                asm!(self.a ; mov rax, QWORD v);
                self.store_rax(s, op.dst);
            }
            Some(FastForm::AluRR { k, s }) => {
                self.load(s, op.dst);
                let src = reg(op.src);
                asm!(self.a ; mov rcx, QWORD [rbx + src]);
                mask(&mut self.a, s, Reg::Rcx);
                self.alu(k, s, Some(op.dst));
            }
            Some(FastForm::AluRI { k, s }) => {
                self.load(s, op.dst);
                let m = crate::flags::size_mask(s);
                let v = (op.imm & m) as i64;
                asm!(self.a ; mov rcx, QWORD v);
                self.alu(k, s, Some(op.dst));
            }
            Some(FastForm::Inc(s)) | Some(FastForm::Dec(s)) => {
                let inc = matches!(form, Some(FastForm::Inc(_)));
                self.fold_cf();
                self.load(s, op.dst);
                if inc {
                    asm!(self.a ; lea rdx, [rax + 1]);
                } else {
                    asm!(self.a ; lea rdx, [rax - 1]);
                }
                mask(&mut self.a, s, Reg::Rdx);
                self.store_rdx(s, op.dst);
                let fop = if inc { FlagOp::Inc } else { FlagOp::Dec };
                let (fb, sb) = (fop as u8 as i8, s as i8);
                asm!(self.a
                    ; mov QWORD [rbx + L_A], rax
                    ; mov QWORD [rbx + L_B], 1
                    ; mov QWORD [rbx + L_RES], rdx
                    ; mov BYTE [rbx + L_OP], fb
                    ; mov BYTE [rbx + L_SIZE], sb
                );
                self.flags = Producer::Known(fop, s);
            }
            Some(FastForm::Lea(s)) if op.base != loc::RIP => {
                let disp = op.disp as i64;
                asm!(self.a ; mov rax, QWORD disp);
                if op.base != loc::NO_REG {
                    let b = reg(op.base);
                    asm!(self.a ; add rax, QWORD [rbx + b]);
                }
                if op.index != loc::NO_REG {
                    let (ix, sc) = (reg(op.index), op.scale as i8);
                    asm!(self.a
                        ; mov rcx, QWORD [rbx + ix]
                        ; shl rcx, sc
                        ; add rax, rcx
                    );
                }
                // lea_r runs with a 32-bit address: the sum is masked to 32 bits.
                asm!(self.a ; mov eax, eax);
                self.store_rax(s, op.dst);
            }
            Some(FastForm::MovRM(s)) if mem_inlinable(op) => {
                let cont = self.mem_probe(i, op, s, false);
                match s {
                    1 => asm!(self.a ; movzx eax, BYTE [rcx]),
                    2 => asm!(self.a ; movzx eax, WORD [rcx]),
                    4 => asm!(self.a ; mov eax, DWORD [rcx]),
                    _ => asm!(self.a ; mov rax, QWORD [rcx]),
                }
                self.store_rax(s, op.dst);
                asm!(self.a ; =>cont);
            }
            Some(FastForm::AluRM { k, s }) if mem_inlinable(op) => {
                let cont = self.mem_probe(i, op, s, false);
                match s {
                    1 => asm!(self.a ; movzx ecx, BYTE [rcx]),
                    2 => asm!(self.a ; movzx ecx, WORD [rcx]),
                    4 => asm!(self.a ; mov ecx, DWORD [rcx]),
                    _ => asm!(self.a ; mov rcx, QWORD [rcx]),
                }
                self.load(s, op.dst);
                self.alu(k, s, Some(op.dst));
                asm!(self.a ; =>cont);
            }
            Some(FastForm::AluMR { k, s } | FastForm::AluMI { k, s }) if mem_inlinable(op) => {
                // `fast::alu_m`: the destination is read with write intent (the write TLB)
                // unless the op only compares; flags and the store follow the read.
                let writes = k != kind::CMP && k != kind::TEST;
                let cont = self.mem_probe(i, op, s, writes);
                asm!(self.a ; mov r11, rcx);
                match s {
                    1 => asm!(self.a ; movzx eax, BYTE [r11]),
                    2 => asm!(self.a ; movzx eax, WORD [r11]),
                    4 => asm!(self.a ; mov eax, DWORD [r11]),
                    _ => asm!(self.a ; mov rax, QWORD [r11]),
                }
                if matches!(form, Some(FastForm::AluMR { .. })) {
                    let src = reg(op.src);
                    asm!(self.a ; mov rcx, QWORD [rbx + src]);
                    mask(&mut self.a, s, Reg::Rcx);
                } else {
                    let v = (op.imm & crate::flags::size_mask(s)) as i64;
                    asm!(self.a ; mov rcx, QWORD v);
                }
                self.alu(k, s, None);
                if writes {
                    match s {
                        1 => asm!(self.a ; mov BYTE [r11], dl),
                        2 => asm!(self.a ; mov WORD [r11], dx),
                        4 => asm!(self.a ; mov DWORD [r11], edx),
                        _ => asm!(self.a ; mov QWORD [r11], rdx),
                    }
                }
                asm!(self.a ; =>cont);
            }
            Some(FastForm::MovMR(s)) if mem_inlinable(op) => {
                let cont = self.mem_probe(i, op, s, true);
                let src = reg(op.src);
                asm!(self.a ; mov rax, QWORD [rbx + src]);
                match s {
                    1 => asm!(self.a ; mov BYTE [rcx], al),
                    2 => asm!(self.a ; mov WORD [rcx], ax),
                    4 => asm!(self.a ; mov DWORD [rcx], eax),
                    _ => asm!(self.a ; mov QWORD [rcx], rax),
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
            Some(FastForm::ShiftRI { k, s })
                if (op.imm as u32) & if s == 8 { 0x3F } else { 0x1F } < s as u32 * 8 =>
            {
                self.shift_ri(k, s, op)
            }
            Some(FastForm::Ret32) if !self.long => self.ret32(i, op),
            Some(FastForm::Call32) if !self.long => self.call32(i, op, false),
            Some(FastForm::Call32Sb) if !self.long => self.call32(i, op, true),
            Some(FastForm::Jcc32) if !self.long => self.jcc(i, op, op.aux),
            None if !self.long
                && op.osize == 4
                && is_handler(op, crate::exec::stack::push)
                && (op.src < 16 || op.src == loc::IMM) =>
            {
                self.push32(i, op)
            }
            None if !self.long
                && op.osize == 4
                && is_handler(op, crate::exec::stack::pop)
                && op.dst < 16 =>
            {
                self.pop32(i, op)
            }
            None if (is_handler(op, crate::exec::moves::movzx)
                || is_handler(op, crate::exec::moves::movsx))
                && op.dst < 16
                && matches!((op.aux, op.osize), (1, 2 | 4 | 8) | (2, 4 | 8) | (4, 8))
                && (op.src < 20 || (op.src == loc::MEM && mem_inlinable(op))) =>
            {
                let signed = is_handler(op, crate::exec::moves::movsx);
                self.movx(i, op, signed)
            }
            None if is_handler(op, crate::exec::arith::imul_n)
                && op.dst < 16
                && matches!(op.osize, 2 | 4 | 8)
                && (op.src < 16 || (op.src == loc::MEM && mem_inlinable(op))) =>
            {
                self.imul(i, op)
            }
            None if !self.long && is_handler(op, crate::exec::control::jcc) => {
                self.jcc(i, op, op.aux)
            }
            None if !self.long && is_handler(op, crate::exec::control::jmp_rel) => {
                self.flush_rip();
                self.jump_taken(i, op, None);
            }
            _ => return false,
        }
        if !matches!(
            form,
            Some(FastForm::Jcc32 | FastForm::Ret32 | FastForm::Call32 | FastForm::Call32Sb)
        ) && !is_branch(op)
        {
            self.delta += len;
        }
        true
    }

    /// The inline fast path of a data access of `s` bytes by op `i` (`Cpu::load_fast` /
    /// `store_fast`): effective address, segment checks (present, writable, expand-up data
    /// segment outside long mode, no alignment checking, within the limit), one page, and a
    /// hit in the fast TLB. Leaves RCX = the host address; anything else goes to the op's
    /// handler. Returns the label to place after the access (where both paths join).
    fn mem_probe(&mut self, i: usize, op: &Op, s: u8, write: bool) -> DynamicLabel {
        let fb = self.a.new_dynamic_label();
        let cont = self.a.new_dynamic_label();
        self.fallbacks.push(Fallback {
            label: fb,
            index: i,
            cont,
            delta: self.delta,
            rewind: self.delta + op.len as u64,
        });
        self.probe_to(op, s, write, fb);
        cont
    }

    /// [`Compiler::mem_probe`] with the miss path going to `fb`.
    fn probe_to(&mut self, op: &Op, s: u8, write: bool, fb: DynamicLabel) {
        // RAX = effective address.
        let disp = op.disp as i64;
        asm!(self.a ; mov rax, QWORD disp);
        if op.base != loc::NO_REG {
            let b = reg(op.base);
            asm!(self.a ; add rax, QWORD [rbx + b]);
        }
        if op.index != loc::NO_REG {
            let (ix, sc) = (reg(op.index), op.scale as i8);
            asm!(self.a
                ; mov rcx, QWORD [rbx + ix]
                ; shl rcx, sc
                ; add rax, rcx
            );
        }
        mask(&mut self.a, op.asize, Reg::Rax);
        // Segment checks (`Cpu::fast_lin`).
        let seg = op.seg as usize;
        let (sattr, slimit, sbase) = (
            seg_field(seg, SEG_ATTR),
            seg_field(seg, SEG_LIMIT),
            seg_field(seg, SEG_BASE),
        );
        let want = (attr::P | attr::RW) as i32;
        let kind = (attr::P | attr::CODE | attr::DC | attr::RW) as i32;
        let (lma, ac) = (efer::LMA as i32, flag::AC as i32);
        let last = s as i32 - 1;
        let page_max = 0x1000 - s as i32;
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
            ; add rax, QWORD [rbx + sbase]
            ; mov eax, eax
            ; mov ecx, eax
            ; and ecx, 0xFFF
            ; cmp ecx, page_max
            ; ja =>fb
        );
        // Fast TLB: slot (page & (FAST-1)), tag ((page << 1) | user) + 1.
        let table = if write { CTX_FAST_W } else { CTX_FAST_R };
        let (slots, shift) = ((FAST - 1) as i32, FAST_ENTRY_BYTES.trailing_zeros() as i8);
        asm!(self.a
            ; mov rdx, rax
            ; shr rdx, 12
            ; mov ecx, edx
            ; and ecx, slots
            ; shl ecx, shift
            ; add rcx, QWORD [r12 + table]
            ; add rdx, rdx
            ; cmp BYTE [rbx + CPL], 3
            ; sete r8b
            ; movzx r8d, r8b
            ; or rdx, r8
            ; inc rdx
            ; cmp QWORD [rcx], rdx
            ; jne =>fb
            ; mov rcx, QWORD [rcx + 8]
            ; and eax, 0xFFF
            ; add rcx, rax
            ; add rcx, QWORD [r12 + CTX_MEM]
        );
    }

    /// SHL/SAL/SHR/SAR reg, imm (`fast::shift_ri`): the flags are eager there (lazy op None).
    /// For counts below the operand width the host shift gives CF, PF, ZF and SF exactly
    /// (LAHF puts them at their EFLAGS positions); OF follows tier 0's formula and AF is 0.
    /// Larger counts (only possible for 8/16-bit operands) are called.
    fn shift_ri(&mut self, k: u8, s: u8, op: &Op) {
        use crate::exec::shift_rotate::kind as sk;
        let bits = s as u32 * 8;
        let cnt = (op.imm as u32) & if s == 8 { 0x3F } else { 0x1F };
        if cnt == 0 {
            // No operation at all (not even the flags).
            return;
        }
        let o = reg(op.dst);
        let c = cnt as i8;
        asm!(self.a ; mov rcx, QWORD [rbx + o]);
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
        let szpc = (flag::SF | flag::ZF | flag::PF | flag::CF) as i32;
        asm!(self.a
            ; lahf
            ; movzx edx, ah
            ; and edx, szpc
        );
        mask(&mut self.a, s, Reg::Rcx);
        // OF: SHL: msb(result) ^ CF; SHR: bit (bits - 2) of the result; SAR: 0.
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
        match s {
            1 => asm!(self.a ; mov BYTE [rbx + o], cl),
            2 => asm!(self.a ; mov WORD [rbx + o], cx),
            _ => asm!(self.a ; mov QWORD [rbx + o], rcx),
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
        self.flags = Producer::Known(FlagOp::None, s);
    }

    /// RET / RET imm16 with a 32-bit operand size (`fast::ret32`): the return address from
    /// SS:ESP through the inline load path; a 16-bit stack, a target beyond the CS limit or
    /// anything the load path does not handle goes to the handler.
    fn ret32(&mut self, i: usize, op: &Op) {
        self.flush_rip();
        let fb = self.a.new_dynamic_label();
        let cont = self.a.new_dynamic_label();
        self.fallbacks.push(Fallback {
            label: fb,
            index: i,
            cont,
            delta: 0,
            rewind: 0,
        });
        // stack32: CR0.PE and SS.B (LMA is checked by the load path).
        let (pe, big) = (cr0::PE as i32, attr::DB as i32);
        let ss_attr = seg_field(sreg::SS, SEG_ATTR);
        asm!(self.a
            ; test DWORD [rbx + CR0], pe
            ; jz =>fb
            ; test WORD [rbx + ss_attr], big as i16
            ; jz =>fb
        );
        let mut stack = Op::new(op.exec, op.len);
        stack.seg = sreg::SS as u8;
        stack.base = 4;
        stack.asize = 4;
        stack.disp = 0;
        self.probe_to(&stack, 4, false, fb);
        let esp_off = reg(4);
        let pop = (4 + (op.imm & 0xFFFF)) as i32;
        asm!(self.a
            ; mov eax, DWORD [rcx]
            ; mov ecx, DWORD [rbx + CS_LIMIT]
            ; cmp rax, rcx
            ; ja =>fb
            ; mov QWORD [rbx + RIP], rax
            ; mov eax, DWORD [rbx + esp_off]
            ; add eax, pop
            ; mov QWORD [rbx + esp_off], rax
            ; =>cont
        );
    }

    /// CALL rel32 with a 32-bit stack (`fast::call_rel32`): target check against the CS
    /// limit, the return address stored through the inline store path at SS:ESP-4. `sb`: the
    /// block goes on with the callee (`fast::call_rel32_sb`), so the same checks as there
    /// decide whether it may (else `block_break` and the block ends after the call).
    fn call32(&mut self, i: usize, op: &Op, sb: bool) {
        self.flush_rip();
        let fb = self.a.new_dynamic_label();
        let cont = self.a.new_dynamic_label();
        self.fallbacks.push(Fallback {
            label: fb,
            index: i,
            cont,
            delta: 0,
            rewind: 0,
        });
        let (pe, big) = (cr0::PE as i32, attr::DB as i16);
        let ss_attr = seg_field(sreg::SS, SEG_ATTR);
        let (len, imm) = (op.len as i32, op.imm as i64);
        asm!(self.a
            ; test DWORD [rbx + CR0], pe
            ; jz =>fb
            ; test WORD [rbx + ss_attr], big
            ; jz =>fb
        );
        // R9 = return address (the next RIP), R10 = target.
        self.advance_rip_rax(len);
        asm!(self.a
            ; mov r9, rax
            ; mov rcx, QWORD imm
            ; add rax, rcx
            ; mov eax, eax
            ; mov ecx, DWORD [rbx + CS_LIMIT]
            ; cmp rax, rcx
            ; ja =>fb
            ; mov r10, rax
        );
        let mut push = Op::new(op.exec, op.len);
        push.seg = sreg::SS as u8;
        push.base = 4;
        push.asize = 4;
        push.disp = (-4i64) as u64;
        self.probe_to(&push, 4, true, fb);
        let esp_off = reg(4);
        asm!(self.a
            ; mov DWORD [rcx], r9d
            ; mov eax, DWORD [rbx + esp_off]
            ; sub eax, 4
            ; mov QWORD [rbx + esp_off], rax
            ; mov QWORD [rbx + RIP], r10
        );
        if sb {
            let brk = self.a.new_dynamic_label();
            let cs_base = seg_field(sreg::CS, SEG_BASE);
            let page_off = (op.imm2 & 0xFFF) as i32;
            let span = (op.imm2 >> 12) as i32;
            asm!(self.a
                ; mov rax, QWORD [rbx + cs_base]
                ; lea rdx, [r9 - len]
                ; mov edx, edx
                ; add rdx, rax
                ; mov edx, edx
                ; mov rcx, r10
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
                    ; lea rax, [r10 + span - 1]
                    ; mov ecx, DWORD [rbx + CS_LIMIT]
                    ; cmp rax, rcx
                    ; ja =>brk
                );
            }
            self.breaks.push((brk, i));
        }
        asm!(self.a ; =>cont);
    }

    /// MOVZX/MOVSX(D) (`moves::movzx`/`movsx`, `aux` = source size): the source from a
    /// register (16-19: AH-BH), or memory through the inline load path.
    fn movx(&mut self, i: usize, op: &Op, signed: bool) {
        let cont = if op.src == loc::MEM {
            Some(self.mem_probe(i, op, op.aux, false))
        } else {
            let o = if op.src >= 16 {
                reg(op.src - 16) + 1
            } else {
                reg(op.src)
            };
            asm!(self.a ; lea rcx, [rbx + o]);
            None
        };
        match (signed, op.aux) {
            (false, 1) => asm!(self.a ; movzx eax, BYTE [rcx]),
            (false, 2) => asm!(self.a ; movzx eax, WORD [rcx]),
            (false, _) => asm!(self.a ; mov eax, DWORD [rcx]),
            (true, 1) => asm!(self.a ; movsx rax, BYTE [rcx]),
            (true, 2) => asm!(self.a ; movsx rax, WORD [rcx]),
            (true, _) => asm!(self.a ; movsxd rax, DWORD [rcx]),
        }
        self.store_rax(op.osize, op.dst);
        if let Some(cont) = cont {
            asm!(self.a ; =>cont);
        }
    }

    /// Two- and three-operand IMUL (`arith::imul_n`): the host IMUL gives the truncated
    /// product and CF = OF = overflow exactly; SF, ZF, PF come from the result (as tier 0's
    /// `mul_flags`), AF is 0, and the flags are eager (lazy op None).
    fn imul(&mut self, i: usize, op: &Op) {
        let s = op.osize;
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
            let o = reg(op.src);
            asm!(self.a ; mov rcx, QWORD [rbx + o]);
            None
        };
        if op.aux == 1 {
            let v = op.imm as i64;
            asm!(self.a ; mov rax, QWORD v);
        } else {
            let o = reg(op.dst);
            asm!(self.a ; mov rax, QWORD [rbx + o]);
        }
        match s {
            2 => asm!(self.a ; imul cx, ax ; seto r8b ; test cx, cx),
            4 => asm!(self.a ; imul ecx, eax ; seto r8b ; test ecx, ecx),
            _ => asm!(self.a ; imul rcx, rax ; seto r8b ; test rcx, rcx),
        }
        let szp = (flag::SF | flag::ZF | flag::PF) as i32;
        let cfof = (flag::CF | flag::OF) as i32;
        let keep = !flag::ARITH as i32;
        let none = FlagOp::None as u8 as i8;
        asm!(self.a
            ; lahf
            ; movzx edx, ah
            ; and edx, szp
            ; movzx r8d, r8b
            ; neg r8d
            ; and r8d, cfof
            ; or edx, r8d
            ; mov rax, QWORD [rbx + RFLAGS]
            ; and rax, keep
            ; or rax, rdx
            ; mov QWORD [rbx + RFLAGS], rax
            ; mov BYTE [rbx + L_OP], none
        );
        mask(&mut self.a, s, Reg::Rcx);
        let d = reg(op.dst);
        match s {
            2 => asm!(self.a ; mov WORD [rbx + d], cx),
            _ => asm!(self.a ; mov QWORD [rbx + d], rcx),
        }
        if let Some(cont) = cont {
            asm!(self.a ; =>cont);
        }
        self.flags = Producer::Known(FlagOp::None, s);
    }

    /// Jump to `fb` unless the stack is 32-bit outside long mode (CR0.PE and SS.B; long mode
    /// is excluded by the memory probe).
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
        let mut m = Op::new(op.exec, op.len);
        m.seg = sreg::SS as u8;
        m.base = 4;
        m.asize = 4;
        m.disp = disp as u64;
        m
    }

    /// PUSH r32 / PUSH imm with a 32-bit stack (`stack::push`): the value is read before ESP
    /// moves (PUSH ESP pushes the old value), ESP changes after the store.
    fn push32(&mut self, i: usize, op: &Op) {
        let fb = self.a.new_dynamic_label();
        let cont = self.a.new_dynamic_label();
        self.fallbacks.push(Fallback {
            label: fb,
            index: i,
            cont,
            delta: self.delta,
            rewind: self.delta + op.len as u64,
        });
        self.check_stack32(fb);
        self.probe_to(&Self::stack_slot(op, -4), 4, true, fb);
        if op.src == loc::IMM {
            let v = (op.imm & 0xFFFF_FFFF) as i64;
            asm!(self.a ; mov rax, QWORD v);
        } else {
            let src = reg(op.src);
            asm!(self.a ; mov rax, QWORD [rbx + src]);
        }
        let esp_off = reg(4);
        asm!(self.a
            ; mov DWORD [rcx], eax
            ; mov eax, DWORD [rbx + esp_off]
            ; sub eax, 4
            ; mov QWORD [rbx + esp_off], rax
            ; =>cont
        );
    }

    /// POP r32 with a 32-bit stack (`stack::pop`): ESP moves first, then the register is
    /// written (so POP ESP loads the popped value).
    fn pop32(&mut self, i: usize, op: &Op) {
        let fb = self.a.new_dynamic_label();
        let cont = self.a.new_dynamic_label();
        self.fallbacks.push(Fallback {
            label: fb,
            index: i,
            cont,
            delta: self.delta,
            rewind: self.delta + op.len as u64,
        });
        self.check_stack32(fb);
        self.probe_to(&Self::stack_slot(op, 0), 4, false, fb);
        let (esp_off, dst) = (reg(4), reg(op.dst));
        asm!(self.a
            ; mov ecx, DWORD [rcx]
            ; mov eax, DWORD [rbx + esp_off]
            ; add eax, 4
            ; mov QWORD [rbx + esp_off], rax
            ; mov QWORD [rbx + dst], rcx
            ; =>cont
        );
    }

    /// RAX = the low `s` bytes of register `r`.
    fn load(&mut self, s: u8, r: u8) {
        let o = reg(r);
        asm!(self.a ; mov rax, QWORD [rbx + o]);
        mask(&mut self.a, s, Reg::Rax);
    }

    /// Register `r`'s low `s` bytes = RAX (already masked; a 32-bit write zero-extends).
    fn store_rax(&mut self, s: u8, r: u8) {
        let o = reg(r);
        match s {
            1 => asm!(self.a ; mov BYTE [rbx + o], al),
            2 => asm!(self.a ; mov WORD [rbx + o], ax),
            4 => asm!(self.a ; mov eax, eax ; mov QWORD [rbx + o], rax),
            _ => asm!(self.a ; mov QWORD [rbx + o], rax),
        }
    }

    fn store_rdx(&mut self, s: u8, r: u8) {
        let o = reg(r);
        match s {
            1 => asm!(self.a ; mov BYTE [rbx + o], dl),
            2 => asm!(self.a ; mov WORD [rbx + o], dx),
            _ => asm!(self.a ; mov QWORD [rbx + o], rdx),
        }
    }

    /// RAX = a, RCX = b (both masked): RDX = a OP b, the lazy flags, and the write-back.
    /// `dst`: the register written back (`None` for memory destinations, which the caller
    /// stores from RDX).
    fn alu(&mut self, k: u8, s: u8, dst: Option<u8>) {
        asm!(self.a ; mov rdx, rax);
        let fop = match k {
            kind::ADD => {
                asm!(self.a ; add rdx, rcx);
                FlagOp::Add
            }
            kind::SUB | kind::CMP => {
                asm!(self.a ; sub rdx, rcx);
                FlagOp::Sub
            }
            kind::AND | kind::TEST => {
                asm!(self.a ; and rdx, rcx);
                FlagOp::Logic
            }
            kind::OR => {
                asm!(self.a ; or rdx, rcx);
                FlagOp::Logic
            }
            _ => {
                asm!(self.a ; xor rdx, rcx);
                FlagOp::Logic
            }
        };
        mask(&mut self.a, s, Reg::Rdx);
        let (fb, sb) = (fop as u8 as i8, s as i8);
        asm!(self.a
            ; mov QWORD [rbx + L_A], rax
            ; mov QWORD [rbx + L_B], rcx
            ; mov QWORD [rbx + L_RES], rdx
            ; mov BYTE [rbx + L_OP], fb
            ; mov BYTE [rbx + L_SIZE], sb
        );
        if let Some(dst) = dst
            && k != kind::CMP
            && k != kind::TEST
        {
            self.store_rdx(s, dst);
        }
        self.flags = Producer::Known(fop, s);
    }

    /// INC/DEC keep CF: fold the pending producer's CF into RFLAGS first (`Cpu::set_lazy`).
    fn fold_cf(&mut self) {
        match self.flags {
            Producer::Known(FlagOp::Inc | FlagOp::Dec | FlagOp::None, _) => {}
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
                let f = addr(trampoline::fold_cf as *const () as usize);
                asm!(self.a
                    ; mov rdi, rbx
                    ; mov rax, QWORD f
                    ; call rax
                );
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
        self.flush_rip();
        let taken = self.a.new_dynamic_label();
        match self.flags {
            Producer::Known(fop, s) if fop != FlagOp::None => {
                self.regenerate_flags(fop, s);
                jcc_host(&mut self.a, cc & 15, taken);
            }
            _ => {
                let (c32, f) = (cc as i32, addr(trampoline::cond as *const () as usize));
                asm!(self.a
                    ; mov rdi, rbx
                    ; mov esi, c32
                    ; mov rax, QWORD f
                    ; call rax
                    ; test al, al
                    ; jnz =>taken
                );
                // `Cpu::cond` may have materialised the flags.
                self.flags = Producer::Unknown;
            }
        }
        let cont = self.a.new_dynamic_label();
        // Not taken: RIP to the next instruction.
        self.advance_rip_rax(op.len as i32);
        asm!(self.a
            ; mov QWORD [rbx + RIP], rax
            ; jmp =>cont
            ; =>taken
        );
        self.jump_taken(i, op, Some(cont));
    }

    /// RIP = (next RIP + imm) masked to the operand size, or the handler (which faults) when
    /// that lies beyond the CS limit. RIP in memory is the branch's start here.
    fn jump_taken(&mut self, i: usize, op: &Op, cont: Option<DynamicLabel>) {
        let fb = self.a.new_dynamic_label();
        let cont = cont.unwrap_or_else(|| self.a.new_dynamic_label());
        let (len, imm) = (op.len as i32, op.imm as i64);
        asm!(self.a
            ; mov rax, QWORD [rbx + RIP]
            ; add rax, len
            ; mov rcx, QWORD imm
            ; add rax, rcx
        );
        mask(&mut self.a, op.osize, Reg::Rax);
        asm!(self.a
            ; mov ecx, DWORD [rbx + CS_LIMIT]
            ; cmp rax, rcx
            ; ja =>fb
            ; mov QWORD [rbx + RIP], rax
            ; =>cont
        );
        self.fallbacks.push(Fallback {
            label: fb,
            index: i,
            cont,
            delta: 0,
            rewind: 0,
        });
        // Both paths join with RIP written back. The handler path only returns here when the
        // branch did not fault, and the lazy flags it may have materialised are equal to the
        // pending ones, so `self.flags` still describes them.
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

#[derive(Clone, Copy)]
enum Reg {
    Rax,
    Rcx,
    Rdx,
}

/// Zero-extend the low `s` bytes of `r` in place.
fn mask(a: &mut VecAssembler<X64Relocation>, s: u8, r: Reg) {
    match (s, r) {
        (1, Reg::Rax) => asm!(a ; movzx eax, al),
        (2, Reg::Rax) => asm!(a ; movzx eax, ax),
        (4, Reg::Rax) => asm!(a ; mov eax, eax),
        (1, Reg::Rcx) => asm!(a ; movzx ecx, cl),
        (2, Reg::Rcx) => asm!(a ; movzx ecx, cx),
        (4, Reg::Rcx) => asm!(a ; mov ecx, ecx),
        (1, Reg::Rdx) => asm!(a ; movzx edx, dl),
        (2, Reg::Rdx) => asm!(a ; movzx edx, dx),
        (4, Reg::Rdx) => asm!(a ; mov edx, edx),
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

fn is_handler(op: &Op, h: crate::decode::op::Handler) -> bool {
    op.exec as usize == h as usize
}

fn is_branch(op: &Op) -> bool {
    is_handler(op, crate::exec::control::jcc) || is_handler(op, crate::exec::control::jmp_rel)
}
