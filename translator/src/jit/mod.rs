//! Tier 1: blocks that run often are compiled to x86-64 host code.
//!
//! `compile.rs` turns a tier-0 block's ops into host code (hot forms inline, everything else a
//! call of the op's tier-0 handler), `buffer.rs` is the bounded W^X code cache, and
//! `trampoline.rs` the entry into compiled code and the helpers it calls. The dispatch loop
//! (`Cpu::run`) asks [`run_block`] to run a block; it counts executions, compiles blocks over
//! the threshold (or all of them in [`JitMode::Always`]) and runs compiled ones. Compiled code
//! leaves the `Cpu` exactly as the tier-0 loop would, so the loop's accounting (icount, budget,
//! fault delivery, chaining) is shared.

mod buffer;
mod compile;
mod trampoline;

use crate::Cpu;
use crate::block::Block;
use crate::bus::CpuBus;
use crate::exception::Fault;
use buffer::CodeBuffer;
pub(crate) use buffer::Compiled;
use smallvec::SmallVec;
use std::cell::{RefCell, UnsafeCell};
use std::rc::{Rc, Weak};
use trampoline::{ST_BREAK, ST_DEOPT, ST_FAULT, ST_HALT, ST_OK, ST_STOP};

/// Whether tier 1 is used.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum JitMode {
    /// Tier 0 only.
    Off,
    /// Compile blocks that have run [`Jit::threshold`] times.
    #[default]
    Auto,
    /// Compile every block before its first run (for tests).
    Always,
}

impl JitMode {
    /// `VIREO_JIT=off|auto|always`, if set to one of these.
    pub fn from_env() -> Option<Self> {
        match std::env::var("VIREO_JIT")
            .ok()?
            .to_ascii_lowercase()
            .as_str()
        {
            "off" | "0" => Some(JitMode::Off),
            "auto" | "on" | "1" => Some(JitMode::Auto),
            "always" => Some(JitMode::Always),
            _ => None,
        }
    }
}

/// Counters for tests and tuning.
#[derive(Clone, Copy, Debug, Default)]
pub struct JitStats {
    /// Blocks compiled.
    pub compiled: u64,
    /// Ops compiled inline / as calls of their tier-0 handler.
    pub inline_ops: u64,
    pub called_ops: u64,
    /// Runs of compiled blocks.
    pub entries: u64,
    /// Code cache flushes (it was full).
    pub flushes: u64,
    /// Direct links set between compiled blocks (each is then followed in host code).
    pub links: u64,
    /// Static sites patched to jump into a successor's code / put back to the generic chain.
    pub static_links: u64,
    pub static_unlinks: u64,
}

const _: () = assert!(std::mem::size_of::<ChainLink>() == 32);

/// One direct link from a compiled block's end to a compiled successor. Compiled code follows
/// it when RIP and the context generation ([`Jit::context`]) are what they were when the
/// dispatcher recorded it: the same block cache and TLB generations, CS base, CPL and code
/// size — the conditions of tier 0's links — and the CS limit too (links skip `get_block`'s
/// check that the block lies within it).
/// `repr(C)`: compiled code reads the fields at fixed offsets; 32-byte aligned (and so sized),
/// as the indirect-branch table indexes slots with a shift.
#[repr(C, align(32))]
#[derive(Clone, Copy, Default)]
pub(crate) struct ChainLink {
    pub rip: u64,
    pub stamp: u64,
    /// Host address of the successor's body (past its prologue).
    pub entry: u64,
}

/// What a link rests on besides RIP; [`Jit::context`] numbers each one seen.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
struct LinkContext {
    chain_stamp: u64,
    cs_base: u64,
    cs_limit: u32,
    cpl: u8,
    bitness: u32,
    flat: u8,
    /// `chain_stamp` counts only the generations of global pages: numbered apart from the
    /// full context, whose stamp may take the same value at another time.
    global: bool,
}

/// Slots of the indirect-branch table (a power of two).
pub(crate) const IB_SLOTS: usize = 4096;

/// The slot of `rip` in the indirect-branch table (compiled code hashes the same way).
pub(crate) fn ib_slot(rip: u64) -> usize {
    ((rip ^ (rip >> 10)) as usize) & (IB_SLOTS - 1)
}

/// Compiled entries by RIP, for block ends whose own two links miss (returns to many call
/// sites, indirect jumps and calls): one direct-mapped slot per RIP hash, validated like a
/// link plus the RIP mask. Filled by the dispatcher at every entry into compiled code; read by
/// compiled code only. The allocation never moves or shrinks (compiled code holds its
/// address) and lives as long as the `Jit`.
pub(crate) struct IbTable(Box<[UnsafeCell<ChainLink>]>);

impl IbTable {
    fn new() -> Self {
        IbTable((0..IB_SLOTS).map(|_| UnsafeCell::default()).collect())
    }

    fn addr(&self) -> usize {
        self.0.as_ptr() as usize
    }

    fn set(&self, link: ChainLink) {
        // SAFETY: written only by the dispatcher while no compiled code runs (the only
        // reader); no reference into the cell outlives this statement.
        unsafe { *self.0[ib_slot(link.rip)].get() = link };
    }
}

/// A block's two links (fall-through and taken target, or the last two return addresses).
/// Written only by the dispatcher, while no compiled code runs; read by compiled code.
#[derive(Default)]
pub(crate) struct ChainLinks(UnsafeCell<[ChainLink; 2]>);

impl ChainLinks {
    fn addr(&self) -> usize {
        self.0.get() as usize
    }

    /// Record `link`: a slot that is still valid (same stamp) stays, the other is replaced.
    fn set(&self, link: ChainLink) {
        // SAFETY: compiled code only reads the links while it runs, and the dispatcher (the
        // only writer) does not run then; no reference into the cell outlives this call.
        let links = unsafe { &mut *self.0.get() };
        if links[1].entry != 0 && links[1].rip == link.rip {
            links[1] = link;
            return;
        }
        if links[0].entry != 0 && links[0].stamp == link.stamp && links[0].rip != link.rip {
            links[1] = links[0];
        }
        links[0] = link;
    }
}

/// The static sites (`compile::StaticSite`) patched to jump into a block's current code.
/// Put back when the code stops being the block's (`Jit::unlink_into`).
#[derive(Default)]
pub(crate) struct Incoming(RefCell<SmallVec<[LinkedSite; 2]>>);

/// One patched static site.
pub(crate) struct LinkedSite {
    /// The block whose code holds the site.
    from: Weak<Block>,
    /// The code cache generation both blocks' code belongs to.
    generation: u64,
    /// Code cache offsets of the site's jmp and of its generic path.
    at: usize,
    refund: usize,
}

/// Executions after which [`JitMode::Auto`] compiles a block.
pub const DEFAULT_THRESHOLD: u32 = 32;
/// Default code cache size.
pub const DEFAULT_CACHE_BYTES: usize = 32 << 20;

pub struct Jit {
    pub mode: JitMode,
    pub threshold: u32,
    /// Code cache size; takes effect when the cache is first mapped.
    pub cache_bytes: usize,
    pub stats: JitStats,
    buf: Option<CodeBuffer>,
    /// The code all blocks share (`compile::shared`), and where it sits in the cache: (code
    /// cache generation, offset).
    shared: Option<(Vec<u8>, compile::Shared)>,
    shared_at: Option<(u64, usize)>,
    ib: Option<IbTable>,
    /// Since the dispatcher last polled, a handler used the bus or changed the CPU's event
    /// state (IF, TF, RF, shadow, HLT, debug registers, NMI blocking): compiled code must
    /// look at both again before following a link.
    pub(crate) poll: bool,
    /// The generation of the link context (`LinkContext`), which links are stamped with:
    /// it only changes in the dispatcher and in handlers, and both call
    /// `Cpu::refresh_link_context` before compiled code runs again, so compiled code compares
    /// this one word instead of every field.
    pub(crate) context: u64,
    /// The same context but for the TLB generation of global pages only (`Tlb::
    /// global_generation`): links into code on global pages are stamped with this one, so
    /// they outlive CR3 reloads; compiled code accepts a link stamped with either.
    pub(crate) context_global: u64,
    /// The data segments compiled code may use without checks now (`compile::flat_segments`):
    /// a block's entry from the dispatcher checks its own against these, and links need no
    /// check, since this is part of the link context.
    pub(crate) flat: u8,
    seen: LinkContext,
    /// The number each link context seen got, so that code coming back to one (the return
    /// from an interrupt or a system call to the code it left) finds its links still valid.
    /// Numbers are never reused: when the map is dropped for growing too big, every context
    /// gets a new one.
    numbers: hashbrown::HashMap<LinkContext, u64>,
    next_context: u64,
    /// What compiled code reaches through the `Cpu` pointer besides the guest's state
    /// (`trampoline::enter` fills it at each entry).
    pub(crate) ctx: trampoline::Ctx,
}

/// Link contexts remembered before the map starts over (each TLB flush makes new ones).
const MAX_CONTEXTS: usize = 4096;

impl Default for Jit {
    fn default() -> Self {
        Jit {
            mode: JitMode::from_env().unwrap_or_default(),
            threshold: DEFAULT_THRESHOLD,
            cache_bytes: DEFAULT_CACHE_BYTES,
            stats: JitStats::default(),
            buf: None,
            shared: None,
            shared_at: None,
            ib: None,
            poll: true,
            context: 1,
            context_global: 1,
            flat: 0,
            seen: LinkContext::default(),
            numbers: hashbrown::HashMap::new(),
            next_context: 2,
            ctx: trampoline::Ctx::default(),
        }
    }
}

impl Cpu {
    /// Renew the link context numbers (`Jit::context`, `Jit::context_global`) when what
    /// links rest on changed (after a handler, and at every entry into compiled code).
    pub(crate) fn refresh_link_context(&mut self) {
        let cs = self.segs[crate::state::sreg::CS];
        let now = LinkContext {
            chain_stamp: self.chain_stamp(),
            cs_base: cs.base,
            cs_limit: cs.limit,
            cpl: self.cpl,
            bitness: self.code_bitness(),
            flat: compile::flat_segments(self),
            global: false,
        };
        self.jit.flat = now.flat;
        if now != self.jit.seen {
            self.jit.seen = now;
            let global = LinkContext {
                chain_stamp: self.global_chain_stamp(),
                global: true,
                ..now
            };
            self.jit.context = self.jit.number(now);
            self.jit.context_global = self.jit.number(global);
        }
    }
}

impl Jit {
    /// The number of link context `c` (a new one the first time it is seen).
    fn number(&mut self, c: LinkContext) -> u64 {
        if self.numbers.len() >= MAX_CONTEXTS {
            self.numbers.clear();
        }
        let next = self.next_context;
        let n = *self.numbers.entry(c).or_insert(next);
        if n == next {
            self.next_context += 1;
        }
        n
    }

    fn is_current(&self, c: Compiled) -> bool {
        self.buf
            .as_ref()
            .is_some_and(|b| b.generation == c.generation)
    }

    /// Code cache bytes in use (bounded by `cache_bytes`).
    pub fn cache_used(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.used())
    }

    /// The code cache's host address and the bytes compiled since its last flush, for
    /// matching a profiler's samples to emitted instructions (`VIREO_JIT_DUMP` in `vireo run`).
    pub fn code_snapshot(&self) -> Option<(usize, &[u8])> {
        self.buf.as_ref().map(|b| (b.addr(0), b.contents()))
    }

    /// Compile `block` into the code cache, flushing it when full.
    /// `rip` is only for the trace log (a profile's code matched to guest addresses).
    fn compile(&mut self, block: &Block, rip: u64) -> Option<Compiled> {
        let ib = self.ib.get_or_insert_with(IbTable::new).addr();
        let links = block.chainable.then(|| block.jit_links.addr());
        let out = match compile::compile(block, links, ib) {
            Ok(c) => c,
            Err(e) => {
                log::warn!("jit: block not compiled: {e}");
                return None;
            }
        };
        if self.buf.is_none() {
            match CodeBuffer::new(self.cache_bytes) {
                Ok(b) => self.buf = Some(b),
                Err(e) => {
                    log::warn!("jit: {e}; running tier 0 only");
                    self.mode = JitMode::Off;
                    return None;
                }
            }
        }
        if self.shared.is_none() {
            match compile::shared() {
                Ok(s) => self.shared = Some(s),
                Err(e) => {
                    log::warn!("jit: shared code not compiled: {e}; running tier 0 only");
                    self.mode = JitMode::Off;
                    return None;
                }
            }
        }
        let shared_len = self.shared.as_ref().map_or(0, |(c, _)| c.len());
        let buf = self.buf.as_mut()?;
        // (16: the block's alignment after the shared code.)
        if shared_len + 16 + out.code.len() > buf.capacity() {
            return None;
        }
        if buf.next_offset(out.code.len()).is_none() {
            buf.flush();
            self.stats.flushes += 1;
            log::debug!("jit: code cache full, flushed");
        }
        // Each generation starts with the shared code.
        if self.shared_at.map(|(g, _)| g) != Some(buf.generation)
            && let Some((code, _)) = &self.shared
        {
            let at = buf.next_offset(code.len())?;
            if let Err(e) = buf.write(at, code) {
                log::warn!("jit: {e}; running tier 0 only");
                self.mode = JitMode::Off;
                return None;
            }
            self.shared_at = Some((buf.generation, at));
        }
        let off = buf.next_offset(out.code.len())?;
        match buf.write(off, &out.code) {
            Ok(c) => {
                // For matching a profile's hot code (`VIREO_JIT_DUMP`) to guest code.
                log::trace!(
                    "jit: block at phys {:#x} rip {:#x} ({} ops) compiled to offset {:#x}",
                    block.phys,
                    rip,
                    block.ops.len(),
                    c.offset
                );
                self.stats.compiled += 1;
                self.stats.inline_ops += out.counts.inline;
                self.stats.called_ops += out.counts.called;
                Some(Compiled {
                    body: out.body,
                    check: out.check,
                    span: out.span,
                    entry_segs: out.entry_segs,
                    sites: out.sites,
                    ..c
                })
            }
            Err(e) => {
                log::warn!("jit: {e}; running tier 0 only");
                self.mode = JitMode::Off;
                None
            }
        }
    }

    /// `from` (compiled as `fc`) was just followed by `to` (compiled as `tc`, both current):
    /// point `from`'s static site for `to`'s address, if it has one, at `to`'s body.
    fn link_static(&mut self, from: &Rc<Block>, fc: Compiled, to: &Block, tc: Compiled) {
        let Some(buf) = self.buf.as_mut() else {
            return;
        };
        for site in fc.sites.iter().flatten() {
            let at = fc.offset + site.at as usize;
            if site.target != to.phys
                || to.ip_mask != 0xFFFF_FFFF
                || to.jit_in.0.borrow().iter().any(|l| l.at == at)
            {
                continue;
            }
            // (A block on two pages depends on its second page's translation, which only
            // its `span` entry checks.)
            let entry = if to.phys2.is_some() {
                tc.span
            } else if tc.entry_segs & !site.segs == 0 {
                tc.body
            } else {
                tc.check
            };
            if let Err(e) = buf.patch_jmp(at, tc.offset + entry) {
                log::warn!("jit: {e}; running tier 0 only");
                self.mode = JitMode::Off;
                return;
            }
            let refund = fc.offset + site.refund as usize;
            to.jit_in.0.borrow_mut().push(LinkedSite {
                from: Rc::downgrade(from),
                generation: buf.generation,
                at,
                refund,
            });
            self.stats.static_links += 1;
        }
    }

    /// `block`'s code is no longer its own (it was dropped or is compiled again): put the
    /// static sites that jump into it back to their generic paths.
    fn unlink_into(&mut self, block: &Block) {
        let sites = std::mem::take(&mut *block.jit_in.0.borrow_mut());
        let Some(buf) = self.buf.as_mut() else {
            return;
        };
        for site in sites {
            // A site in code that never runs again (its block left the cache, or the cache
            // was flushed) may stay as it is.
            if site.generation != buf.generation
                || !site.from.upgrade().is_some_and(|b| b.cached.get())
            {
                continue;
            }
            if let Err(e) = buf.patch_jmp(site.at, site.refund) {
                // The site would jump into code that may be wrong now: stop running any.
                log::warn!("jit: {e}; running tier 0 only");
                self.mode = JitMode::Off;
                return;
            }
            self.stats.static_unlinks += 1;
        }
    }
}

/// How a compiled block ended (what the tier-0 loop would have seen).
pub(crate) enum Outcome {
    /// `done` ops completed; `clean`: the block ran to its end without `block_break`.
    Ran { done: u64, clean: bool },
    /// `done` ops completed, then the next one faulted (RIP and RSP are at its start).
    Fault { done: u64, fault: Fault },
    /// `done` ops completed, then HLT.
    Halt { done: u64 },
}

/// Run `block` as compiled code (compiling it first if it is due) with `budget` ops left,
/// following links into compiled successors while the budget, the bus and the CPU's event
/// state allow; `None` when tier 0 should run it. `from`: the block that ran just before
/// and led here through the dispatcher's chaining (it gets a direct link to `block`).
///
/// Ops of blocks left through a link are already in `cpu.icount`; the [`Outcome`] is the
/// last block's, which is returned when it is not `block`.
pub(crate) fn run_block(
    cpu: &mut Cpu,
    bus: &mut dyn CpuBus,
    block: &Rc<Block>,
    from: Option<&Rc<Block>>,
    budget: u64,
) -> Option<(Outcome, Option<Rc<Block>>)> {
    // Compiled code runs whole blocks: tier 0 runs the one the budget cuts short.
    if cpu.jit.mode == JitMode::Off || budget < block.ops.len() as u64 {
        return None;
    }
    let code = match block.jit.get() {
        Some(c) if cpu.jit.is_current(c) => c,
        _ => {
            let hits = block.hits.get().saturating_add(1);
            block.hits.set(hits);
            if cpu.jit.mode == JitMode::Auto && hits < cpu.jit.threshold {
                return None;
            }
            let flushes = cpu.jit.stats.flushes;
            let c = cpu.jit.compile(block, cpu.rip);
            if cpu.jit.stats.flushes != flushes {
                // Every link pointed into the flushed cache.
                cpu.cache.epoch = cpu.cache.epoch.wrapping_add(1);
            }
            let c = c?;
            block.jit.set(Some(c));
            c
        }
    };
    cpu.refresh_link_context();
    // (`get_block` or a link of the current context found it: its second page maps where
    // it did.)
    block.jit_span_context.set(cpu.jit.context);
    let buf = cpu.jit.buf.as_ref()?;
    let entry = buf.addr(code.offset);
    // Current code implies shared code placed in its generation.
    let (Some((_, s)), Some((generation, at))) = (&cpu.jit.shared, cpu.jit.shared_at) else {
        return None;
    };
    if generation != buf.generation {
        return None;
    }
    let shared = [
        s.thunk_pinned,
        s.thunk,
        s.out_sync_pinned,
        s.out,
        s.fallback_pinned,
        s.fallback,
    ]
    .map(|o| buf.addr(at + o));
    let link = ChainLink {
        rip: cpu.rip,
        // A block on two pages holds only while the second maps where it did, which a CR3
        // reload may change even when the first page is global.
        stamp: if cpu.code_page_global() && block.phys2.is_none() {
            cpu.jit.context_global
        } else {
            cpu.jit.context
        },
        entry: (entry + code.body) as u64,
    };
    if let Some(a) = from
        && a.cached.get()
        && block.cached.get()
        && a.ip_mask == block.ip_mask
        && let Some(ac) = a.jit.get()
        && cpu.jit.is_current(ac)
    {
        a.jit_links.set(link);
        cpu.jit.stats.links += 1;
        cpu.jit.link_static(a, ac, block, code);
    }
    if block.cached.get()
        && let Some(ib) = &cpu.jit.ib
    {
        ib.set(link);
    }
    cpu.jit.stats.entries += 1;
    // No compiled code runs now, so blocks dropped earlier can go, once no site jumps into
    // their code.
    for b in cpu.cache.graveyard.drain(..) {
        cpu.jit.unlink_into(&b);
    }
    // The dispatcher has just polled the bus.
    cpu.jit.poll = false;
    let first = Rc::as_ptr(block);
    // SAFETY: `code` is current (checked above or just compiled), so `entry` is mapped
    // executable and was compiled from `block`, which the caller holds alive for the call;
    // blocks reached through links are in the cache or its graveyard until the next call.
    let (r, fault, last) =
        unsafe { trampoline::enter(cpu, bus, entry, block.ip_mask, budget, first, shared) };
    let last = (last != first).then(|| {
        // SAFETY: `last` is `Rc::as_ptr` of a block a link led to; links are only followed
        // to blocks in the cache, and blocks leaving it wait in the graveyard, which is not
        // emptied while compiled code runs, so the allocation is alive.
        unsafe {
            Rc::increment_strong_count(last);
            Rc::from_raw(last)
        }
    });
    let len = last.as_ref().map_or(block.ops.len(), |b| b.ops.len());
    let (status, idx) = (r & 0xFF, r >> 8);
    if status == ST_DEOPT {
        let b = last.as_deref().unwrap_or(block);
        log::debug!("jit: block at op {idx} needs segment checks; compiling it again");
        b.jit_checked.set(true);
        b.jit.set(None);
        cpu.jit.unlink_into(b);
        // Links into its old code must not be followed any more.
        cpu.cache.epoch = cpu.cache.epoch.wrapping_add(1);
        if idx == 0 && last.is_none() {
            // Nothing ran: tier 0 runs the block now (one outside the cache would come back
            // unchecked from the next lookup and leave again here).
            return None;
        }
    }
    let outcome = match (status, fault) {
        // (A side exit's index: the ops it ran; a block end's is 0.)
        (ST_OK, _) => Outcome::Ran {
            done: if idx == 0 { len as u64 } else { idx },
            clean: true,
        },
        (ST_BREAK, _) => Outcome::Ran {
            done: idx + 1,
            clean: false,
        },
        (ST_FAULT, Some(fault)) => Outcome::Fault { done: idx, fault },
        (ST_HALT, _) => Outcome::Halt { done: idx },
        (ST_STOP | ST_DEOPT, _) => Outcome::Ran {
            done: idx,
            clean: false,
        },
        _ => unreachable!("compiled code returned {r:#x}"),
    };
    Some((outcome, last))
}
