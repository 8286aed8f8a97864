//! Basic blocks of threaded code and their cache.
//!
//! A block is the run of instructions from one address up to a control transfer, the end of a
//! 4 KiB page, or [`MAX_OPS`] instructions, translated once into [`Op`]s. Blocks are cached by
//! (guest-physical address, code bitness). A bitmap of physical pages that hold translated code
//! lets every store check cheaply whether it must invalidate blocks (self-modifying code).

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::{
    self,
    op::{Handler, Op},
};
use crate::exception::{Exit, Fault};
use crate::mmu::Access;
use crate::state::sreg;
use bitvec::vec::BitVec;
use hashbrown::HashMap;
use iced_x86::{Decoder, DecoderError, DecoderOptions, FlowControl};
use smallvec::SmallVec;
use std::cell::{Cell, RefCell};
use std::rc::{Rc, Weak};

/// Upper bound on instructions per block (keeps interrupt latency and rebuild cost bounded).
pub const MAX_OPS: usize = 64;
/// Conditional branches a block goes on past (each a side exit): a side exit without a static
/// site in tier 1 (`jit::compile::MAX_SITES`; its target on another page) looks in the
/// indirect-branch table. Eight (two made vbench slower, as many as fit its boot): a
/// bytecode interpreter's case, its bound checks and its dispatch make one block (see
/// `Cpu::join_page`).
const MAX_SIDE_EXITS: usize = 8;

/// One translated basic block.
pub struct Block {
    pub ops: Box<[Op]>,
    /// Physical address of the first byte (the cache key's).
    pub(crate) phys: u64,
    /// For a block with code on a second page (an instruction or the block running onto the
    /// next page, or a JMP the block followed to another page: `Cpu::join_page`): that
    /// page's physical address. The block holds only while the linear page `lin2` bytes
    /// past the block's start page maps there.
    pub(crate) phys2: Option<u64>,
    pub(crate) lin2: u64,
    /// Bytes of guest code covered (for the CS-limit check on reuse).
    pub byte_len: u64,
    /// RIP mask of the code size the block was decoded for.
    pub(crate) ip_mask: u64,
    /// The last instruction leaves CS, the mode and the privilege level alone (it falls
    /// through or is a near branch, call or return), so when the block runs to its end the
    /// next block can be found through [`Block::links`].
    pub(crate) chainable: bool,
    /// The block sits in the cache (and so is dropped on self-modifying code); only such
    /// blocks may be chained to.
    pub(crate) cached: Cell<bool>,
    /// Successors seen after this block (fall-through and taken target, or the last two
    /// return addresses): a memo of `get_block` for the same fetch context.
    links: RefCell<[Option<Link>; 2]>,
    /// Executions seen by tier 1's hotness counter.
    pub(crate) hits: Cell<u32>,
    /// The block's tier-1 code; dropped when the block leaves the cache.
    pub(crate) jit: Cell<Option<crate::jit::Compiled>>,
    /// Tier 1 found a data segment it could not assume flat here: compile this block with
    /// the segment checks at every access.
    pub(crate) jit_checked: Cell<bool>,
    /// Tier 1's direct links to compiled successors; the compiled code reads them in place
    /// (the `Rc` keeps this address fixed).
    pub(crate) jit_links: crate::jit::ChainLinks,
    /// Static sites of other blocks' code that jump into this block's code.
    pub(crate) jit_in: crate::jit::Incoming,
    /// The link context (`Jit::context`) the dispatcher last ran this block in; for a block
    /// on two pages its compiled code's entry from static sites compares it (its address
    /// is fixed: blocks live in an `Rc`).
    pub(crate) jit_span_context: Cell<u64>,
}

/// A remembered successor: valid while RIP, the translation stamp (block cache and TLB
/// generations), the CS base, the CS limit (a far transfer may change it without a generation
/// bump, and the cache lookup checks the block against it) and the CPL are what they were
/// when it was recorded.
struct Link {
    rip: u64,
    stamp: u64,
    cs_base: u64,
    cs_limit: u32,
    cpl: u8,
    block: Weak<Block>,
}

impl Block {
    fn new(ops: Box<[Op]>, phys: u64, byte_len: u64, bitness: u32, chainable: bool) -> Self {
        Block {
            ops,
            phys,
            phys2: None,
            lin2: 0,
            byte_len,
            ip_mask: match bitness {
                16 => 0xFFFF,
                32 => 0xFFFF_FFFF,
                _ => u64::MAX,
            },
            chainable,
            cached: Cell::new(false),
            links: RefCell::new([None, None]),
            hits: Cell::new(0),
            jit: Cell::new(None),
            jit_checked: Cell::new(false),
            jit_links: crate::jit::ChainLinks::default(),
            jit_in: crate::jit::Incoming::default(),
            jit_span_context: Cell::new(0),
        }
    }

    /// The code size the block was decoded for (16, 32 or 64).
    pub(crate) fn bitness(&self) -> u32 {
        match self.ip_mask {
            0xFFFF => 16,
            0xFFFF_FFFF => 32,
            _ => 64,
        }
    }
}

type Key = (u64, u8);
type FastSlot = Option<(Key, Rc<Block>)>;

/// Slots of the direct-mapped lookup in front of the hash map.
const FAST_SLOTS: usize = 4096;

#[inline]
fn fast_slot(key: &Key) -> usize {
    ((key.0 ^ (key.0 >> 12) ^ key.1 as u64) as usize) & (FAST_SLOTS - 1)
}

pub(crate) struct BlockCache {
    /// Direct-mapped cache of recent lookups (most block transitions hit here).
    fast: Box<[FastSlot]>,
    map: HashMap<Key, Rc<Block>>,
    by_page: HashMap<u64, SmallVec<[Key; 4]>>,
    code_pages: BitVec,
    /// Bumped whenever blocks are dropped, which makes every chain link stale.
    pub(crate) epoch: u64,
    /// Blocks dropped from the cache, kept alive until no compiled code can be running: a
    /// chained block may invalidate itself (SMC) and its code and ops must outlive the call.
    pub(crate) graveyard: Vec<Rc<Block>>,
    /// What links depend on beyond their own checks, as the last `Cpu::run` call left it.
    pub(crate) run_key: Option<RunKey>,
}

/// The state a chain link's validity rests on besides RIP, the stamp, the CS base and the
/// CPL (which it checks itself): the code segment's limit and size, the mode and paging
/// registers. A board may write these between `Cpu::run` calls without telling the CPU; links
/// survive from one call to the next only while they are unchanged.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct RunKey {
    cs: crate::state::Segment,
    cr0: u64,
    cr3: u64,
    cr4: u64,
    efer: u64,
    rflags_vm: u64,
}

impl BlockCache {
    pub fn new() -> Self {
        BlockCache {
            fast: vec![None; FAST_SLOTS].into_boxed_slice(),
            map: HashMap::new(),
            by_page: HashMap::new(),
            code_pages: BitVec::new(),
            epoch: 0,
            graveyard: Vec::new(),
            run_key: None,
        }
    }

    pub fn clear(&mut self) {
        self.epoch = self.epoch.wrapping_add(1);
        if !self.map.is_empty() {
            self.fast.fill(None);
        }
        for (_, b) in self.map.drain() {
            b.cached.set(false);
            b.jit.set(None);
            self.graveyard.push(b);
        }
        self.by_page.clear();
        self.code_pages.fill(false);
    }

    #[inline]
    pub fn is_code_page(&self, page: u64) -> bool {
        self.code_pages.get(page as usize).is_some_and(|b| *b)
    }

    pub fn invalidate_page(&mut self, page: u64) {
        if let Some(keys) = self.by_page.remove(&page) {
            self.epoch = self.epoch.wrapping_add(1);
            for k in keys {
                if let Some(b) = self.map.remove(&k) {
                    b.cached.set(false);
                    b.jit.set(None);
                    self.graveyard.push(b);
                }
                let slot = &mut self.fast[fast_slot(&k)];
                if slot.as_ref().is_some_and(|(fk, _)| *fk == k) {
                    *slot = None;
                }
            }
        }
        if let Some(mut b) = self.code_pages.get_mut(page as usize) {
            *b = false;
        }
    }

    #[inline]
    fn get(&mut self, key: &Key) -> Option<Rc<Block>> {
        let slot = fast_slot(key);
        if let Some((k, b)) = &self.fast[slot]
            && k == key
        {
            return Some(b.clone());
        }
        let b = self.map.get(key).cloned()?;
        self.fast[slot] = Some((*key, b.clone()));
        Some(b)
    }

    fn insert(&mut self, key: Key, block: Rc<Block>) {
        // A straddling block lies on its second page too: stores there drop it.
        let second = block.phys2.map(|p| p >> 12);
        for page in std::iter::once(key.0 >> 12).chain(second) {
            if self.code_pages.len() <= page as usize {
                self.code_pages.resize(page as usize + 1, false);
            }
            self.code_pages.set(page as usize, true);
            self.by_page.entry(page).or_default().push(key);
        }
        block.cached.set(true);
        if let Some(old) = self.map.insert(key, block) {
            // Replaced (it did not fit the CS limit): links to it must go stale.
            self.epoch = self.epoch.wrapping_add(1);
            old.cached.set(false);
            old.jit.set(None);
            self.graveyard.push(old);
        }
    }
}

impl Cpu {
    pub(crate) fn run_key(&self) -> RunKey {
        RunKey {
            cs: self.segs[sreg::CS],
            cr0: self.cr0,
            cr3: self.cr3,
            cr4: self.cr4,
            efer: self.efer,
            rflags_vm: self.rflags & crate::state::flag::VM,
        }
    }

    /// What a chain link must match besides RIP: block cache and TLB generations.
    #[inline]
    pub(crate) fn chain_stamp(&self) -> u64 {
        self.cache.epoch.wrapping_add(self.tlb.generation)
    }

    /// The same for links into code on a global page (or with paging off): a CR3 reload
    /// leaves those translations alone.
    pub(crate) fn global_chain_stamp(&self) -> u64 {
        self.cache.epoch.wrapping_add(self.tlb.global_generation)
    }

    /// The code at RIP is fetched through a translation a CR3 reload keeps: paging is off,
    /// or the TLB holds the page as global.
    pub(crate) fn code_page_global(&self) -> bool {
        use crate::mmu::tlb::perm;
        use crate::state::cr0;
        if self.cr0 & cr0::PG == 0 {
            return true;
        }
        self.tlb
            .lookup(self.code_lin(self.code_bitness() == 64) >> 12)
            .is_some_and(|(_, p)| p & perm::GLOBAL != 0)
    }

    /// The code page at linear `lin2` translates to physical `phys2` now (a block on two
    /// pages still holds); its fetch is noted, as the first page's is, so that invalidating
    /// it makes links stale.
    fn page_is(&mut self, bus: &mut dyn CpuBus, lin2: u64, phys2: u64, user: bool) -> bool {
        let cr2 = self.cr2;
        match self.translate(bus, lin2, Access::Exec, user) {
            Ok(p) if p & !0xFFF == phys2 => {
                self.tlb.note_exec(lin2 >> 12);
                true
            }
            Ok(_) => false,
            // Unmapped: building the block again fetches (or faults) anew; the block may not
            // reach that page now, so the failed walk leaves CR2 as it was.
            Err(_) => {
                self.cr2 = cr2;
                false
            }
        }
    }

    /// The physical page of code page `page_lin` for a block that starts at linear `lin`
    /// (physical `phys`): the start's own page, or the block's second page — which the first
    /// page other than the start's becomes (`page2`: linear, physical) when it translates
    /// for execution to RAM. A block keeps to two pages so that one translation check
    /// (`get_block`, `page_is`) and the TLB generation (links) vouch for all its code.
    fn join_page(
        &mut self,
        bus: &mut dyn CpuBus,
        page_lin: u64,
        lin: u64,
        phys: u64,
        page2: &mut Option<(u64, u64)>,
        user: bool,
    ) -> Option<u64> {
        if page_lin == lin & !0xFFF {
            return Some(phys & !0xFFF);
        }
        if let Some((l, p)) = *page2 {
            return (l == page_lin).then_some(p);
        }
        // (Nothing runs there yet: a failed walk must not leave its address in CR2.)
        let cr2 = self.cr2;
        let Ok(p) = self.translate(bus, page_lin, Access::Exec, user) else {
            self.cr2 = cr2;
            return None;
        };
        let p = p & !0xFFF;
        if !self.mem.is_backed(p) {
            return None;
        }
        *page2 = Some((page_lin, p));
        Some(p)
    }

    /// Linear address of the instruction at RIP (`long`: in 64-bit code).
    fn code_lin(&self, long: bool) -> u64 {
        let lin = self.segs[sreg::CS].base.wrapping_add(self.rip);
        if long { lin } else { lin & 0xFFFF_FFFF }
    }

    /// The block to run after `prev` (which ran to its end and is chainable): from its links
    /// when one matches, else from [`Cpu::get_block`], remembering the answer in `prev`.
    #[inline]
    pub(crate) fn next_block(
        &mut self,
        bus: &mut dyn CpuBus,
        prev: &Block,
    ) -> Result<Rc<Block>, Exit> {
        let stamp = self.chain_stamp();
        let cs_base = self.segs[sreg::CS].base;
        let cs_limit = self.segs[sreg::CS].limit;
        {
            let links = prev.links.borrow();
            for l in links.iter().flatten() {
                if l.rip == self.rip
                    && l.stamp == stamp
                    && l.cs_base == cs_base
                    && l.cs_limit == cs_limit
                    && l.cpl == self.cpl
                    && let Some(b) = l.block.upgrade()
                {
                    return Ok(b);
                }
            }
        }
        let b = self.get_block(bus)?;
        if b.cached.get() && self.chain_stamp() == stamp {
            let mut links = prev.links.borrow_mut();
            // Keep the entry that is still valid; replace the other (or the older one).
            let slot = match &links[0] {
                Some(l) if l.stamp == stamp && l.block.strong_count() > 0 => 1,
                _ => 0,
            };
            if slot == 1 {
                links[1] = links[0].take();
            }
            links[0] = Some(Link {
                rip: self.rip,
                stamp,
                cs_base,
                cs_limit,
                cpl: self.cpl,
                block: Rc::downgrade(&b),
            });
        }
        Ok(b)
    }

    /// The block that starts at CS:RIP, from the cache or freshly translated. Faults here are
    /// instruction-fetch faults of the first instruction (#GP beyond the CS limit, #PF).
    pub(crate) fn get_block(&mut self, bus: &mut dyn CpuBus) -> Result<Rc<Block>, Exit> {
        let bitness = self.code_bitness();
        let long = bitness == 64;
        let cs = self.segs[sreg::CS];
        let ip = self.rip;
        if !long && ip > cs.limit as u64 {
            return Err(Fault::gp(0).into());
        }
        let lin = self.code_lin(long);
        let user = self.user_access();
        let phys = self.translate(bus, lin, Access::Exec, user)?;
        // Links to this block rest on the translation (`Tlb::flush_page`).
        self.tlb.note_exec(lin >> 12);
        let key = (phys, bitness as u8);
        if let Some(b) = self.cache.get(&key)
            && (long || ip + b.byte_len - 1 <= cs.limit as u64)
            && b.phys2
                .is_none_or(|p2| self.page_is(bus, page2_lin(lin, b.lin2, long), p2, user))
        {
            return Ok(b);
        }
        let block = Rc::new(self.build_block(bus, phys, lin, ip, bitness, user)?);
        let fits = (phys & 0xFFF) + block.byte_len <= 0x1000 || block.phys2.is_some();
        let backed = self.mem.is_backed(phys) && block.phys2.is_none_or(|p| self.mem.is_backed(p));
        if backed && block.byte_len > 0 && fits {
            let second = block.phys2.map(|p| p >> 12);
            for page in std::iter::once(phys >> 12).chain(second) {
                if !self.cache.is_code_page(page) {
                    // Stores to this page must now take the slow path (SMC detection).
                    self.tlb.flush_fast_writes();
                }
            }
            if block.phys2.is_some() {
                self.tlb.note_exec(page2_lin(lin, block.lin2, long) >> 12);
            }
            self.cache.insert(key, block.clone());
        }
        Ok(block)
    }

    fn fetch_bytes(&mut self, bus: &mut dyn CpuBus, phys: u64, buf: &mut [u8]) {
        if self.mem.is_backed(phys) && self.mem.is_backed(phys + buf.len() as u64 - 1) {
            self.mem.read_backed(phys, buf);
        } else {
            for (i, b) in buf.iter_mut().enumerate() {
                *b = self.phys_read(bus, phys + i as u64, 1) as u8;
            }
        }
    }

    fn build_block(
        &mut self,
        bus: &mut dyn CpuBus,
        phys: u64,
        lin: u64,
        ip: u64,
        bitness: u32,
        user: bool,
    ) -> Result<Block, Exit> {
        let cs_limit = self.segs[sreg::CS].limit as u64;
        let long = bitness == 64;
        let max_len = self.max_insn_len.clamp(1, 15) as u64;
        let mut ops: Vec<Op> = Vec::with_capacity(16);
        // The block is one or more straight-line runs: the first starts at `phys`; a direct
        // CALL into the same page or a JMP the block follows opens the next at its target
        // (`run_opener`: that op, which gets the run's span; see `exec::fast::
        // call_rel32_sb`). `off` counts bytes within the current run.
        let mut run_phys = phys;
        let mut run_ip = ip;
        let mut run_lin = lin;
        let mut off = 0u64;
        let mut first_len: Option<u64> = None;
        let mut run_opener: Option<usize> = None;
        let mut buf = [0u8; 16];
        let mut chainable = false;
        let mut side_exits = 0;
        // The block's second page (linear, physical), once it has one (`join_page`), and the
        // runs decoded before the current one (start, bytes): a JMP into them is not followed.
        let mut page2: Option<(u64, u64)> = None;
        let mut runs: SmallVec<[(u64, u64); 4]> = SmallVec::new();
        let mut may_span = bitness == 32;
        loop {
            let cur_ip = run_ip + off;
            // (`run_phys + off` is where the next byte is fetched from: a run that went on
            // into another page moved `run_phys` so that it stays so.)
            let in_page = 0x1000 - (run_phys.wrapping_add(off) & 0xFFF);
            let in_seg = if long {
                u64::MAX
            } else {
                (cs_limit + 1).saturating_sub(cur_ip)
            };
            let avail = max_len.min(in_page).min(in_seg);
            if avail == 0 {
                // Next instruction starts beyond the CS limit: fault when (if) it is reached.
                if ops.is_empty() {
                    return Err(Fault::gp(0).into());
                }
                break;
            }
            let n = avail as usize;
            self.fetch_bytes(bus, run_phys.wrapping_add(off), &mut buf[..n]);
            let mut dec = Decoder::with_ip(bitness, &buf[..n], cur_ip, DecoderOptions::NONE);
            let ins = dec.decode();
            if ins.is_invalid() && dec.last_error() == DecoderError::NoMoreBytes {
                if !ops.is_empty() {
                    break;
                }
                if avail == in_seg && in_seg < max_len {
                    // The instruction runs past the CS limit.
                    return Err(Fault::gp(0).into());
                }
                if avail == in_page && in_page < max_len {
                    // It straddles a page: fetch the rest through the next page's translation.
                    let rest = (max_len.min(in_seg) - in_page) as usize;
                    let phys2 = self.translate(bus, next_page(lin, long), Access::Exec, user)?;
                    let mut tmp = [0u8; 16];
                    self.fetch_bytes(bus, phys2, &mut tmp[..rest]);
                    buf[n..n + rest].copy_from_slice(&tmp[..rest]);
                    let total = n + rest;
                    let mut dec =
                        Decoder::with_ip(bitness, &buf[..total], cur_ip, DecoderOptions::NONE);
                    let ins = dec.decode();
                    if ins.is_invalid() && dec.last_error() == DecoderError::NoMoreBytes {
                        return Err(Fault::gp(0).into());
                    }
                    let op = decode::translate(&ins, &buf[..ins.len().max(1)], bitness);
                    // Cached like any block, but on both pages (`BlockCache::insert`) and
                    // only while the next page still maps to `phys2` (`get_block`). Links
                    // into it rest on the TLB generation (both pages' fetches are noted),
                    // never on a global page's or a static jump (`jit::run_block`); none
                    // leave it (its successor is found by the dispatcher).
                    let mut b = Block::new(
                        vec![op].into_boxed_slice(),
                        phys,
                        ins.len() as u64,
                        bitness,
                        false,
                    );
                    b.phys2 = Some(phys2 & !0xFFF);
                    b.lin2 = next_page(lin, long).wrapping_sub(lin & !0xFFF);
                    return Ok(b);
                }
                // Longer than the maximum instruction length.
                return Err(Fault::gp(0).into());
            }
            let len = ins.len().max(1);
            if !ops.is_empty() && reads_icount(&ins) {
                // `icount` is brought up to date at block ends only: instructions that read it
                // (the TSC) start a block of their own.
                break;
            }
            let mut op = decode::translate(&ins, &buf[..len], bitness);
            if ins.is_invalid()
                && len as u64 >= max_len
                && dec.last_error() == DecoderError::InvalidInstruction
            {
                // Prefixes ran past the length limit: #GP(0), not #UD.
                op.exec = crate::exec::too_long;
            }
            chainable = chainable_end(&ins);
            let stop = ins.is_invalid()
                || op.prefix & crate::decode::op::pfx::UNDEFINED != 0
                || !matches!(ins.flow_control(), FlowControl::Next);
            ops.push(op);
            let cur_lin = (run_lin + off) & 0xFFFF_FFFF;
            let cur_page = run_phys.wrapping_add(off) & !0xFFF;
            off += len as u64;
            if may_remap(&ins) {
                // Code after it may be fetched through another translation: none from a
                // second page.
                may_span = false;
                if page2.is_some() {
                    break;
                }
            }
            // A direct CALL into the same page, or a JMP to the block's page or its second
            // one, the block goes on at: the handler that checks it at run time and the
            // target's physical page.
            if stop
                && bitness == 32
                && ops.len() < MAX_OPS
                && ins.op_kind(0) == iced_x86::OpKind::NearBranch32
                && ins.near_branch32() as u64 <= cs_limit
            {
                let target = ins.near_branch32() as u64;
                let target_lin = lin.wrapping_sub(ip).wrapping_add(target) & 0xFFFF_FFFF;
                let mut follow = None;
                match ins.mnemonic() {
                    iced_x86::Mnemonic::Call if target_lin >> 12 == cur_lin >> 12 => {
                        follow = Some((crate::exec::fast::call_rel32_sb as Handler, cur_page));
                    }
                    // Not into code the block holds already (a loop's back edge stays a
                    // branch), nor around the top of the address space (tier 1 takes the
                    // distance from the block's start as it is).
                    iced_x86::Mnemonic::Jmp if may_span => {
                        let decoded = std::iter::once((run_ip, off))
                            .chain(runs.iter().copied())
                            .any(|(at, n)| (at..at + n).contains(&target));
                        let rel = ops[ops.len() - 1].imm as i64;
                        let wraps = cur_lin as i64 + len as i64 + rel != target_lin as i64;
                        if !decoded && !wraps {
                            follow = self
                                .join_page(bus, target_lin & !0xFFF, lin, phys, &mut page2, user)
                                .map(|page| (crate::exec::fast::jmp_rel_sb as Handler, page));
                        }
                    }
                    _ => {}
                }
                if let Some((exec, page)) = follow {
                    // Close this run, open the next at the target.
                    if let Some(i) = run_opener.take() {
                        ops[i].imm2 = ((off as u32) << 12) | (run_lin & 0xFFF) as u32;
                    }
                    first_len.get_or_insert(off);
                    runs.push((run_ip, off));
                    let last = ops.len() - 1;
                    ops[last].exec = exec;
                    run_opener = Some(last);
                    run_phys = page | (target_lin & 0xFFF);
                    run_ip = target;
                    run_lin = target_lin;
                    off = 0;
                    continue;
                }
            }
            // At a page's end the block goes on into the next page when it can take that
            // page as its second (or has it already).
            let at_end = run_phys.wrapping_add(off) & 0xFFF == 0;
            let goes_on = !at_end
                || (may_span
                    && ops.len() < MAX_OPS
                    && run_lin + off < 1 << 32
                    && (!stop || is_jcc(&ins))
                    && self
                        .join_page(
                            bus,
                            (run_lin + off) & 0xFFFF_FFFF,
                            lin,
                            phys,
                            &mut page2,
                            user,
                        )
                        .map(|page| run_phys = page.wrapping_sub(off))
                        .is_some());
            if stop
                && bitness == 32
                && side_exits < MAX_SIDE_EXITS
                && ops.len() < MAX_OPS
                && goes_on
                && is_jcc(&ins)
            {
                // Go on past a conditional branch: its taken path becomes a side exit of the
                // block (see `decode::op::JCC_GOES_ON`).
                let last = ops.len() - 1;
                ops[last].imm2 = crate::decode::op::JCC_GOES_ON;
                side_exits += 1;
                continue;
            }
            if stop || ops.len() >= MAX_OPS || !goes_on {
                break;
            }
        }
        if let Some(i) = run_opener {
            ops[i].imm2 = ((off as u32) << 12) | (run_lin & 0xFFF) as u32;
        }
        let byte_len = first_len.unwrap_or(off);
        let mut b = Block::new(ops.into_boxed_slice(), phys, byte_len, bitness, chainable);
        if let Some((lin2, phys2)) = page2 {
            b.phys2 = Some(phys2);
            b.lin2 = lin2.wrapping_sub(lin & !0xFFF) & 0xFFFF_FFFF;
        }
        Ok(b)
    }
}

/// The linear address of a block's second page: `lin2` bytes past the page of its start
/// `lin`.
fn page2_lin(lin: u64, lin2: u64, long: bool) -> u64 {
    let at = (lin & !0xFFF).wrapping_add(lin2);
    if long { at } else { at & 0xFFFF_FFFF }
}

/// The linear address of the page after the one holding `lin` (wrapping at 4 GiB outside
/// 64-bit code).
fn next_page(lin: u64, long: bool) -> u64 {
    (lin | 0xFFF).wrapping_add(1) & if long { u64::MAX } else { 0xFFFF_FFFF }
}

/// Instructions that may change how linear addresses translate (and so where the code after
/// them comes from).
fn may_remap(ins: &iced_x86::Instruction) -> bool {
    use iced_x86::Mnemonic as M;
    matches!(
        ins.mnemonic(),
        M::Invlpg | M::Invlpga | M::Invpcid | M::Wrmsr | M::Lmsw | M::Clts
    ) || (ins.mnemonic() == M::Mov
        && ins.op0_kind() == iced_x86::OpKind::Register
        && ins.op0_register().is_cr())
}

/// Instructions whose result depends on `Cpu::icount` (the TSC is derived from it).
fn reads_icount(ins: &iced_x86::Instruction) -> bool {
    use iced_x86::Mnemonic as M;
    matches!(
        ins.mnemonic(),
        M::Rdtsc | M::Rdtscp | M::Rdmsr | M::Wrmsr | M::Rdpmc
    )
}

/// A conditional near branch on the flags (not LOOP or JCXZ, which also change or test a
/// count register).
fn is_jcc(ins: &iced_x86::Instruction) -> bool {
    ins.flow_control() == FlowControl::ConditionalBranch
        && matches!(
            ins.op0_kind(),
            iced_x86::OpKind::NearBranch16 | iced_x86::OpKind::NearBranch32
        )
        && ins.condition_code() != iced_x86::ConditionCode::None
        && !matches!(
            ins.mnemonic(),
            iced_x86::Mnemonic::Loop
                | iced_x86::Mnemonic::Loope
                | iced_x86::Mnemonic::Loopne
                | iced_x86::Mnemonic::Jcxz
                | iced_x86::Mnemonic::Jecxz
                | iced_x86::Mnemonic::Jrcxz
        )
}

/// Does this instruction keep CS, the mode and the CPL (so the block it ends may be chained)?
fn chainable_end(ins: &iced_x86::Instruction) -> bool {
    if ins.is_invalid() {
        return false;
    }
    match ins.flow_control() {
        FlowControl::Next => true,
        FlowControl::UnconditionalBranch | FlowControl::ConditionalBranch => !ins.is_jmp_far(),
        FlowControl::IndirectBranch => !ins.is_jmp_far_indirect(),
        FlowControl::Call => !ins.is_call_far(),
        FlowControl::IndirectCall => !ins.is_call_far_indirect(),
        FlowControl::Return => ins.mnemonic() == iced_x86::Mnemonic::Ret,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use crate::bus::{NullBus, PhysMem};
    use crate::exception::vector;
    use crate::state::{Segment, attr, cr0, sreg};
    use crate::{Cpu, RunExit};
    use iced_x86::code_asm::*;

    /// 32-bit flat protected mode (no IDT: any exception ends in shutdown), code at 0x1000.
    fn flat32(code: &[u8]) -> Cpu {
        let mut mem = PhysMem::new(1 << 20);
        mem.as_mut_slice()[0x1000..0x1000 + code.len()].copy_from_slice(code);
        let mut cpu = Cpu::new(mem);
        cpu.cr0 |= cr0::PE;
        for s in 0..6 {
            cpu.segs[s] = Segment::flat32(if s == sreg::CS { 8 } else { 0x10 }, s == sreg::CS);
        }
        cpu.idtr.limit = 0;
        cpu.rip = 0x1000;
        cpu.regs[4] = 0x8000;
        cpu
    }

    /// `call f; hlt` with `f: mov eax, 1; mov ebx, 2; ret` at 0x1100 (same page).
    fn call_program() -> Vec<u8> {
        let mut a = CodeAssembler::new(32).unwrap();
        a.call(0x1100u64).unwrap();
        a.hlt().unwrap();
        let mut code = a.assemble(0x1000).unwrap();
        let mut f = CodeAssembler::new(32).unwrap();
        f.mov(eax, 1).unwrap();
        f.mov(ebx, 2).unwrap();
        f.ret().unwrap();
        let fcode = f.assemble(0x1100).unwrap();
        code.resize(0x100, 0x90);
        code.extend_from_slice(&fcode);
        code
    }

    fn run_to_end(cpu: &mut Cpu) -> RunExit {
        cpu.run(&mut NullBus, 1000)
    }

    #[test]
    fn block_runs_on_into_a_direct_callee_in_the_same_page() {
        let mut cpu = flat32(&call_program());
        assert_eq!(run_to_end(&mut cpu), RunExit::Halted);
        assert_eq!((cpu.regs[0], cpu.regs[3]), (1, 2));
        assert_eq!(cpu.regs[4], 0x8000);
        assert_eq!(cpu.rip, 0x1006);
        // The call, the callee's two moves and RET, then HLT.
        assert_eq!(cpu.icount, 5);
        // One block covers the call and the callee (RET ends it).
        let key = (0x1000u64, 32u8);
        let b = cpu.cache.get(&key).expect("cached");
        assert_eq!(b.ops.len(), 4);
        assert_eq!(b.byte_len, 5);
    }

    #[test]
    fn callee_run_past_the_cs_limit_faults_at_the_right_instruction() {
        let mut cpu = flat32(&call_program());
        assert_eq!(run_to_end(&mut cpu), RunExit::Halted);
        // Same cached block, now with a CS limit that ends inside `mov ebx, 2`.
        cpu.regs = [0; 16];
        cpu.regs[4] = 0x8000;
        cpu.rip = 0x1000;
        cpu.halted = false;
        cpu.segs[sreg::CS].limit = 0x1106;
        cpu.segs[sreg::CS].attr &= !attr::G;
        let _ = run_to_end(&mut cpu);
        assert_eq!(cpu.regs[0], 1, "mov eax, 1 lies within the limit");
        assert_eq!(cpu.regs[3], 0, "mov ebx, 2 does not");
        assert_eq!(cpu.last_fault.map(|f| f.vector), Some(vector::GP));
    }

    #[test]
    fn callee_rewritten_by_the_guest_is_retranslated() {
        let mut cpu = flat32(&call_program());
        assert_eq!(run_to_end(&mut cpu), RunExit::Halted);
        // The guest patches `mov eax, 1` into `mov eax, 7` (imm32 at 0x1101).
        let mut a = CodeAssembler::new(32).unwrap();
        a.mov(dword_ptr(0x1101), 7).unwrap();
        a.jmp(0x1000u64).unwrap();
        let patch = a.assemble(0x2000).unwrap();
        cpu.mem.as_mut_slice()[0x2000..0x2000 + patch.len()].copy_from_slice(&patch);
        cpu.invalidate_phys(0x2000, 0x3000);
        cpu.rip = 0x2000;
        cpu.halted = false;
        assert_eq!(run_to_end(&mut cpu), RunExit::Halted);
        assert_eq!(cpu.regs[0], 7);
    }

    fn rep_program(f: impl Fn(&mut CodeAssembler)) -> Cpu {
        let mut a = CodeAssembler::new(32).unwrap();
        f(&mut a);
        a.hlt().unwrap();
        let mut cpu = flat32(&a.assemble(0x1000).unwrap());
        for i in 0..64u8 {
            cpu.mem.as_mut_slice()[0x3000 + i as usize] = i + 1;
        }
        cpu
    }

    #[test]
    fn rep_movsb_onto_an_overlapping_higher_destination_repeats_the_pattern() {
        let mut cpu = rep_program(|a| {
            a.mov(esi, 0x3000).unwrap();
            a.mov(edi, 0x3001).unwrap();
            a.mov(ecx, 16).unwrap();
            a.rep().movsb().unwrap();
        });
        assert_eq!(run_to_end(&mut cpu), RunExit::Halted);
        assert_eq!(
            &cpu.mem.as_slice()[0x3000..0x3012],
            &[1; 17].iter().chain(&[18]).copied().collect::<Vec<u8>>()[..]
        );
        assert_eq!((cpu.regs[6], cpu.regs[7], cpu.regs[1]), (0x3010, 0x3011, 0));
    }

    #[test]
    fn rep_movsd_and_stosd_move_whole_runs() {
        let mut cpu = rep_program(|a| {
            a.mov(esi, 0x3004).unwrap();
            a.mov(edi, 0x3000).unwrap();
            a.mov(ecx, 4).unwrap();
            a.rep().movsd().unwrap();
            a.mov(eax, 0xA1B2_C3D4u32).unwrap();
            a.mov(edi, 0x4000).unwrap();
            a.mov(ecx, 3).unwrap();
            a.rep().stosd().unwrap();
        });
        assert_eq!(run_to_end(&mut cpu), RunExit::Halted);
        let m = cpu.mem.as_slice();
        // Lower overlapping destination: a plain forward move.
        assert_eq!(&m[0x3000..0x3010], &(5..=20).collect::<Vec<u8>>()[..]);
        assert_eq!(&m[0x3010..0x3014], &[17, 18, 19, 20]);
        assert_eq!(&m[0x4000..0x400C], &[0xD4, 0xC3, 0xB2, 0xA1].repeat(3)[..]);
        assert_eq!(m[0x400C], 0);
        assert_eq!(cpu.regs[7], 0x400C);
    }

    #[test]
    fn chain_links_do_not_outlive_a_run_opener() {
        // top (0x1000): inc eax; jmp next.  next (0x1010): inc ebx; jmp top.
        let mut a = CodeAssembler::new(32).unwrap();
        a.inc(eax).unwrap();
        a.jmp(0x1010u64).unwrap();
        let mut code = a.assemble(0x1000).unwrap();
        code.resize(0x10, 0x90);
        let mut b = CodeAssembler::new(32).unwrap();
        b.inc(ebx).unwrap();
        b.jmp(0x1000u64).unwrap();
        code.extend_from_slice(&b.assemble(0x1010).unwrap());
        let mut cpu = flat32(&code);
        assert_eq!(cpu.run(&mut NullBus, 100), RunExit::Budget);
        assert_eq!(cpu.regs[0] + cpu.regs[3], 50);
        // The board shrinks CS so that `jmp top` (0x1011) lies outside it: the next block
        // must be fetched (and fault) again, not reached through a remembered link.
        cpu.segs[sreg::CS].limit = 0x1010;
        cpu.segs[sreg::CS].attr &= !attr::G;
        cpu.rip = 0x1000;
        let _ = cpu.run(&mut NullBus, 100);
        assert_eq!(cpu.last_fault.map(|f| f.vector), Some(vector::GP));
    }

    #[test]
    fn rdtsc_sees_every_instruction_retired_before_it() {
        let mut a = CodeAssembler::new(32).unwrap();
        a.nop().unwrap();
        a.nop().unwrap();
        a.rdtsc().unwrap();
        a.mov(esi, eax).unwrap();
        a.nop().unwrap();
        a.rdtsc().unwrap();
        a.hlt().unwrap();
        let mut cpu = flat32(&a.assemble(0x1000).unwrap());
        assert_eq!(run_to_end(&mut cpu), RunExit::Halted);
        assert_eq!(cpu.regs[0].wrapping_sub(cpu.regs[6]), 3);
    }
}
