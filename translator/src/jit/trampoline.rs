//! Entry into compiled code and the Rust functions compiled code calls back into.
//!
//! A compiled block is `extern "sysv64" fn(cpu: *mut Cpu) -> u64`. It keeps the `Cpu`
//! pointer pinned in RBX (the context, [`Ctx`], is part of the `Cpu`: `Jit::ctx`), the
//! budget in R12, counts the ops it and its linked successors run off that budget and returns
//! `status | index << 8`: [`ST_OK`] when every op ran, otherwise the status of op `index` —
//! of the block in [`Ctx::block`], which the block that leaves compiled code stores (links
//! enter a successor's body past its prologue, on the same stack frame).

use crate::Cpu;
use crate::block::Block;
use crate::bus::CpuBus;
use crate::decode::op::Op;
use crate::exception::{Exit, Fault};
use std::ptr::NonNull;

/// The block ran to its end (index 0), or left through a taken side exit after op
/// `index - 1` (`Compiler::side_exit`).
pub(crate) const ST_OK: u64 = 0;
/// Op `index` completed and set `block_break` (mode change, store into code...).
pub(crate) const ST_BREAK: u64 = 1;
/// Op `index` faulted; RIP and RSP are back at its start and the fault is in [`Ctx::fault`].
pub(crate) const ST_FAULT: u64 = 2;
/// Op `index` was HLT.
pub(crate) const ST_HALT: u64 = 3;
/// The budget ran out: ops before `index` ran.
pub(crate) const ST_STOP: u64 = 4;
/// Ops before `index` ran; op `index` found a data segment that is not flat (see
/// `Compiler::guard`): the block is to be compiled again with checks at every access.
pub(crate) const ST_DEOPT: u64 = 5;

/// What compiled code needs besides the guest's state: the bus for handler calls and a place
/// for the fault that ends the block. It lives in the `Cpu` (`Jit::ctx`) so that compiled
/// code reaches it through the `Cpu` pointer, leaving a host register for the budget.
/// `repr(C)`: compiled code reads the host addresses at fixed offsets.
#[repr(C)]
pub(crate) struct Ctx {
    /// Host addresses of the fast read and write TLB tables.
    pub fast_r: usize,
    pub fast_w: usize,
    /// The pages compiled code accessed last, by kind of access (`NearPage`).
    pub near: [NearPage; NEAR_KINDS],
    /// The CF of a shift whose flags compiled code has not stored yet (`compile::Deferred`).
    pub shift_cf: u64,
    /// The bus `enter` was given, for the duration of the call only (its lifetime is
    /// `enter`'s borrow; `None` outside it).
    bus: Option<NonNull<dyn CpuBus + 'static>>,
    /// RIP mask of the block's code size.
    pub ip_mask: u64,
    pub fault: Option<Fault>,
    /// The block compiled code left from (`Rc::as_ptr`): its exit path stores it.
    pub block: *const Block,
    /// Ops left in the budget when compiled code last called out or left (it keeps the
    /// budget in R12 while it runs); links count theirs off (and so into `icount`: see
    /// [`Ctx::sync_icount`]).
    pub budget: u64,
    /// The budget and `Cpu::icount` at the entry.
    pub budget0: u64,
    pub icount0: u64,
    /// Host addresses of the code all blocks share (`compile::Shared`, in its order).
    pub shared: [usize; 6],
}

impl Default for Ctx {
    fn default() -> Self {
        Ctx {
            fast_r: 0,
            fast_w: 0,
            near: [NearPage::EMPTY; NEAR_KINDS],
            shift_cf: 0,
            bus: None,
            ip_mask: 0,
            fault: None,
            block: std::ptr::null(),
            budget: 0,
            budget0: 0,
            icount0: 0,
            shared: [0; 6],
        }
    }
}

/// Kinds of data access with a page of their own in [`Ctx::near`]: reads and writes, each by
/// base register (`compile::near_class`).
pub(crate) const NEAR_KINDS: usize = 2 * super::compile::NEAR_CLASSES;

/// A page that a fast-TLB probe of compiled code found last, remembered in front of the
/// fast TLB: stack and frame accesses stay in one page for long stretches, and comparing
/// against this page costs one subtraction instead of the slot's index arithmetic and two
/// dependent loads. Only Rust code changes the fast TLB or the CPL (handlers, called
/// through [`call_op`], which forgets every near page), so a near page is as valid as the
/// fast-TLB entry it came from.
#[derive(Clone, Copy)]
#[repr(C)]
pub(crate) struct NearPage {
    /// Linear address of the page; [`NearPage::EMPTY`] lies more than a page away from any
    /// 32-bit linear address.
    pub tag: u64,
    /// Host address of the page's byte 0.
    pub host: u64,
}

impl NearPage {
    pub const EMPTY: NearPage = NearPage {
        tag: 1 << 63,
        host: 0,
    };
}

impl Cpu {
    /// `Cpu::icount` with the ops of every block left through a link (links only count
    /// them off the budget): before a handler runs and when compiled code returns.
    fn sync_icount(&mut self) {
        let ctx = &self.jit.ctx;
        self.icount = ctx.icount0 + (ctx.budget0 - ctx.budget);
    }

    /// The bus compiled code was entered with.
    ///
    /// # Safety
    /// Only while `enter` runs (from the functions compiled code calls), and the returned
    /// borrow must not outlive the call compiled code made.
    unsafe fn entered_bus<'b>(&self) -> &'b mut dyn CpuBus {
        let bus = self
            .jit
            .ctx
            .bus
            .expect("compiled code runs only inside `enter`");
        // SAFETY: `enter` set it from an exclusive borrow it holds for the whole run of
        // compiled code and does not use otherwise meanwhile; the caller keeps the borrow
        // within that run.
        unsafe { &mut *bus.as_ptr() }
    }
}

/// The fast TLB tables of the CPL's accesses (user at CPL 3).
fn fast_tables(cpu: &Cpu) -> (usize, usize) {
    cpu.tlb.fast_tables(cpu.cpl == 3)
}

type Entry = unsafe extern "sysv64" fn(*mut Cpu) -> u64;

/// Run the compiled block at host address `entry`.
///
/// # Safety
/// `entry` must be the start of a block compiled by `compile::compile` for a `Block` that is
/// alive for the whole call (its code holds pointers to the block's ops), still mapped
/// executable, and compiled for this `Cpu` type layout (always true within one build);
/// `shared` must be the host addresses of `compile::shared`'s routines as placed in the same
/// code cache generation (compiled code calls and jumps to them).
pub(crate) unsafe fn enter(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    entry: usize,
    ip_mask: u64,
    budget: u64,
    block: *const Block,
    shared: [usize; 6],
) -> (u64, Option<Fault>, *const Block) {
    let (fast_r, fast_w) = fast_tables(cpu);
    let bus: *mut (dyn CpuBus + '_) = bus;
    // SAFETY: only the lifetime is erased; the pointer is taken out again below, before the
    // borrow it came from ends, and used only by the functions compiled code calls meanwhile.
    let bus =
        unsafe { std::mem::transmute::<*mut (dyn CpuBus + '_), *mut (dyn CpuBus + 'static)>(bus) };
    cpu.jit.ctx = Ctx {
        fast_r,
        fast_w,
        near: [NearPage::EMPTY; NEAR_KINDS],
        shift_cf: 0,
        bus: NonNull::new(bus),
        ip_mask,
        fault: None,
        block,
        budget,
        budget0: budget,
        icount0: cpu.icount,
        shared,
    };
    // SAFETY: the caller guarantees `entry` is a compiled block with this signature.
    let f: Entry = unsafe { std::mem::transmute::<usize, Entry>(entry) };
    // SAFETY: `cpu` is an exclusive borrow not used otherwise until the call returns; the
    // compiled code only touches `Cpu` fields at offsets taken with `offset_of!` and calls
    // the functions below.
    let r = unsafe { f(cpu) };
    cpu.jit.ctx.bus = None;
    cpu.sync_icount();
    (r, cpu.jit.ctx.fault.take(), cpu.jit.ctx.block)
}

/// Run one op exactly as the tier-0 loop does: RIP to the next instruction, the handler, and
/// on a fault RIP and RSP back to the instruction's start (precise faults).
pub(crate) extern "sysv64" fn call_op(cpu: *mut Cpu, op: *const Op) -> u64 {
    // SAFETY: compiled code passes its pinned `Cpu` pointer (`enter`'s exclusive borrow, not
    // touched by compiled code while this call runs) and a pointer into its block's `ops`,
    // which the dispatcher keeps alive while it runs.
    let (cpu, op) = unsafe { (&mut *cpu, &*op) };
    // SAFETY: called from compiled code, inside `enter`; the borrow ends with this call.
    let bus = unsafe { cpu.entered_bus() };
    cpu.sync_icount();
    let start = cpu.rip;
    let rsp = cpu.regs[4];
    cpu.rip = start.wrapping_add(op.len as u64) & cpu.jit.ctx.ip_mask;
    let before = event_state(cpu);
    let mut watched = Watched { bus, used: false };
    let r = (op.exec)(cpu, op, &mut watched);
    // A handler that used the bus (a device may have raised a line) or changed what the
    // dispatcher looks at between blocks: the next link is followed only after `chain_poll`.
    if watched.used || event_state(cpu) != before {
        cpu.jit.poll = true;
    }
    // A far transfer, a CPL change, an invalidation...: links made before must not be taken.
    cpu.refresh_link_context();
    // A handler may change the CPL (and so the tables' half) and the fast TLB.
    let (fast_r, fast_w) = fast_tables(cpu);
    let ctx = &mut cpu.jit.ctx;
    (ctx.fast_r, ctx.fast_w) = (fast_r, fast_w);
    ctx.near = [NearPage::EMPTY; NEAR_KINDS];
    match r {
        Ok(()) if cpu.block_break => ST_BREAK,
        Ok(()) => ST_OK,
        Err(Exit::Fault(f)) => {
            cpu.rip = start;
            cpu.regs[4] = rsp;
            cpu.jit.ctx.fault = Some(f);
            ST_FAULT
        }
        Err(Exit::Halt) => ST_HALT,
    }
}

/// What the dispatcher checks between blocks on the CPU's side: IF, TF, RF, the interrupt
/// shadow, the HLT state, armed debug registers, NMI blocking.
fn event_state(cpu: &Cpu) -> u64 {
    use crate::state::flag;
    cpu.rflags & (flag::IF | flag::TF | flag::RF)
        | (cpu.irq_shadow as u64) << 32
        | (cpu.halted as u64) << 33
        | (cpu.dbg_armed as u64) << 34
        | (cpu.nmi_blocked as u64) << 35
}

/// The bus as handlers called from compiled code see it: notes whether they used it at all.
struct Watched<'a, 'b> {
    bus: &'a mut (dyn CpuBus + 'b),
    used: bool,
}

impl CpuBus for Watched<'_, '_> {
    fn mmio_read(&mut self, addr: u64, data: &mut [u8]) {
        self.used = true;
        self.bus.mmio_read(addr, data)
    }
    fn mmio_write(&mut self, addr: u64, data: &[u8]) {
        self.used = true;
        self.bus.mmio_write(addr, data)
    }
    fn io_read(&mut self, port: u16, size: u8) -> u32 {
        self.used = true;
        self.bus.io_read(port, size)
    }
    fn io_write(&mut self, port: u16, size: u8, value: u32) {
        self.used = true;
        self.bus.io_write(port, size, value)
    }
    fn intr_pending(&mut self) -> bool {
        self.used = true;
        self.bus.intr_pending()
    }
    fn intr_ack(&mut self) -> u8 {
        self.used = true;
        self.bus.intr_ack()
    }
    fn take_nmi(&mut self) -> bool {
        self.used = true;
        self.bus.take_nmi()
    }
    fn events_pending(&mut self) -> bool {
        self.used = true;
        self.bus.events_pending()
    }
    fn shutdown(&mut self) {
        self.used = true;
        self.bus.shutdown()
    }
}

/// At a block end after a handler used the bus or changed the event state: may compiled code follow a link, i.e. would
/// the dispatcher go straight on to the next block's compiled code? Not when it would deliver
/// an event (NMI, INTR — as far as the bus can tell cheaply), stop (HLT state) or run the next
/// instruction alone (interrupt shadow, TF, RF, armed debug registers). 1 = go on.
pub(crate) extern "sysv64" fn chain_poll(cpu: *mut Cpu) -> u64 {
    // SAFETY: as in `call_op`.
    let cpu = unsafe { &mut *cpu };
    // SAFETY: as in `call_op`.
    let bus = unsafe { cpu.entered_bus() };
    use crate::state::flag;
    if cpu.irq_shadow || cpu.halted || cpu.dbg_armed || cpu.rflags & (flag::TF | flag::RF) != 0 {
        return 0;
    }
    if (cpu.rflags & flag::IF != 0 || !cpu.nmi_blocked) && bus.events_pending() {
        return 0;
    }
    cpu.jit.poll = false;
    1
}

/// INC/DEC after an operation the compiler could not see: fold its CF into RFLAGS, as
/// `Cpu::set_lazy` does.
pub(crate) extern "sysv64" fn fold_cf(cpu: *mut Cpu) {
    // SAFETY: compiled code passes its pinned `Cpu` pointer (see `call_op`).
    let cpu = unsafe { &mut *cpu };
    if cpu.lazy.op != crate::flags::FlagOp::None {
        let cf = cpu.lazy.carry(cpu.rflags);
        cpu.rflags = (cpu.rflags & !crate::state::flag::CF) | cf as u64;
    }
}

/// A condition code evaluated from whatever flag state is pending (`Cpu::cond`).
pub(crate) extern "sysv64" fn cond(cpu: *mut Cpu, cc: u64) -> u64 {
    // SAFETY: compiled code passes its pinned `Cpu` pointer (see `call_op`).
    let cpu = unsafe { &mut *cpu };
    cpu.cond(cc as u8) as u64
}

/// Materialise the pending lazy flags into RFLAGS (`Cpu::rflags`), for inline ops that keep
/// some of the old arithmetic flags (rotates) after a producer the compiler could not see.
pub(crate) extern "sysv64" fn materialise(cpu: *mut Cpu) {
    // SAFETY: compiled code passes its pinned `Cpu` pointer (see `call_op`).
    let cpu = unsafe { &mut *cpu };
    cpu.rflags();
}
