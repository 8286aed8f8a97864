//! Basic blocks of threaded code and their cache.
//!
//! A block is the run of instructions from one address up to a control transfer, the end of a
//! 4 KiB page, or [`MAX_OPS`] instructions, translated once into [`Op`]s. Blocks are cached by
//! (guest-physical address, code bitness). A bitmap of physical pages that hold translated code
//! lets every store check cheaply whether it must invalidate blocks (self-modifying code).

use crate::Cpu;
use crate::bus::CpuBus;
use crate::decode::{self, op::Op};
use crate::exception::{Exit, Fault};
use crate::mmu::Access;
use crate::state::sreg;
use bitvec::vec::BitVec;
use hashbrown::HashMap;
use iced_x86::{Decoder, DecoderError, DecoderOptions, FlowControl};
use smallvec::SmallVec;
use std::rc::Rc;

/// Upper bound on instructions per block (keeps interrupt latency and rebuild cost bounded).
pub const MAX_OPS: usize = 64;

/// One translated basic block.
pub struct Block {
    pub ops: Box<[Op]>,
    /// Bytes of guest code covered (for the CS-limit check on reuse).
    pub byte_len: u64,
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
}

impl BlockCache {
    pub fn new() -> Self {
        BlockCache {
            fast: vec![None; FAST_SLOTS].into_boxed_slice(),
            map: HashMap::new(),
            by_page: HashMap::new(),
            code_pages: BitVec::new(),
        }
    }

    pub fn clear(&mut self) {
        if !self.map.is_empty() {
            self.fast.fill(None);
        }
        self.map.clear();
        self.by_page.clear();
        self.code_pages.fill(false);
    }

    #[inline]
    pub fn is_code_page(&self, page: u64) -> bool {
        self.code_pages.get(page as usize).is_some_and(|b| *b)
    }

    pub fn invalidate_page(&mut self, page: u64) {
        if let Some(keys) = self.by_page.remove(&page) {
            for k in keys {
                self.map.remove(&k);
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
        let page = key.0 >> 12;
        if self.code_pages.len() <= page as usize {
            self.code_pages.resize(page as usize + 1, false);
        }
        self.code_pages.set(page as usize, true);
        self.by_page.entry(page).or_default().push(key);
        self.map.insert(key, block);
    }
}

impl Cpu {
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
        let lin = if long {
            cs.base.wrapping_add(ip)
        } else {
            cs.base.wrapping_add(ip) & 0xFFFF_FFFF
        };
        let user = self.user_access();
        let phys = self.translate(bus, lin, Access::Exec, user)?;
        let key = (phys, bitness as u8);
        if let Some(b) = self.cache.get(&key)
            && (long || ip + b.byte_len - 1 <= cs.limit as u64)
        {
            return Ok(b);
        }
        let cacheable = self.mem.is_backed(phys);
        let block = Rc::new(self.build_block(bus, phys, lin, ip, bitness, user)?);
        if cacheable && block.byte_len > 0 && (phys & 0xFFF) + block.byte_len <= 0x1000 {
            if !self.cache.is_code_page(phys >> 12) {
                // Stores to this page must now take the slow path (SMC detection).
                self.tlb.flush_fast_writes();
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
        let mut off = 0u64;
        let mut buf = [0u8; 16];
        loop {
            let cur_ip = ip + off;
            let in_page = 0x1000 - ((phys + off) & 0xFFF);
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
            self.fetch_bytes(bus, phys + off, &mut buf[..n]);
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
                    let next_lin = (lin + in_page) & if long { u64::MAX } else { 0xFFFF_FFFF };
                    let phys2 = self.translate(bus, next_lin, Access::Exec, user)?;
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
                    // byte_len 0 marks the block as not cacheable.
                    return Ok(Block {
                        ops: vec![op].into_boxed_slice(),
                        byte_len: 0,
                    });
                }
                // Longer than the maximum instruction length.
                return Err(Fault::gp(0).into());
            }
            let len = ins.len().max(1);
            let mut op = decode::translate(&ins, &buf[..len], bitness);
            if ins.is_invalid()
                && len as u64 >= max_len
                && dec.last_error() == DecoderError::InvalidInstruction
            {
                // Prefixes ran past the length limit: #GP(0), not #UD.
                op.exec = crate::exec::too_long;
            }
            let stop = ins.is_invalid()
                || op.prefix & crate::decode::op::pfx::UNDEFINED != 0
                || !matches!(ins.flow_control(), FlowControl::Next);
            ops.push(op);
            off += len as u64;
            if stop || ops.len() >= MAX_OPS || (phys + off) & 0xFFF == 0 {
                break;
            }
        }
        Ok(Block {
            ops: ops.into_boxed_slice(),
            byte_len: off,
        })
    }
}
