//! A software TLB: a direct-mapped cache from linear page to physical page plus the permission
//! bits gathered along the walk, so most accesses skip the page-table walk.

use bitvec::vec::BitVec;

const ENTRIES: usize = 1024;

/// Permission bits of a cached translation.
pub mod perm {
    /// Writable at every level.
    pub const RW: u8 = 1;
    /// User-accessible at every level.
    pub const US: u8 = 2;
    /// Execute-disable at some level (only meaningful when EFER.NXE).
    pub const NX: u8 = 4;
    /// The dirty bit is already set in the final entry (a write needs no walk).
    pub const DIRTY: u8 = 8;
    /// Global page: survives CR3 reloads when CR4.PGE.
    pub const GLOBAL: u8 = 16;
}

#[derive(Clone, Copy, Default)]
struct Entry {
    /// Linear page number + 1 (0 = empty).
    tag: u64,
    ppage: u64,
    perm: u8,
}

/// Slots of the fast data-access caches.
pub(crate) const FAST: usize = 1024;
/// Bytes per fast slot (a power of two: tier 1 indexes slots with a shift).
pub(crate) const FAST_ENTRY_BYTES: usize = std::mem::size_of::<FastEntry>();

/// A fast-path slot: linear page → physical page of plain RAM. Each table has one half for
/// supervisor and one for user accesses, so the tag is the page's address alone.
/// `repr(C)`: tier 1 probes these slots from generated code (`jit::compile`).
#[derive(Clone, Copy)]
#[repr(C, align(32))]
pub(crate) struct FastEntry {
    /// Linear address of the page (low 12 bits clear); `EMPTY` matches no address.
    tag: u64,
    /// Physical address of the page.
    base: u64,
    /// Host address of the page's byte 0 minus its linear address (wrapping): compiled
    /// code adds the linear address of an access to get the host address in one step.
    pub(crate) host: u64,
}

const _: () = assert!(FAST_ENTRY_BYTES.is_power_of_two());

const EMPTY: u64 = u64::MAX;

impl Default for FastEntry {
    fn default() -> Self {
        FastEntry {
            tag: EMPTY,
            base: 0,
            host: 0,
        }
    }
}

impl FastEntry {
    fn new(tag: u64, lin: u64, phys: u64, ram: usize) -> Self {
        let base = phys & !0xFFF;
        FastEntry {
            tag,
            base,
            host: (ram as u64).wrapping_add(base).wrapping_sub(lin & !0xFFF),
        }
    }
}

pub struct Tlb {
    entries: Box<[Entry]>,
    /// Reads that may skip segmentation-independent work entirely: the page is RAM, the
    /// translation (if paging is on) allows the read at this privilege.
    fast_r: Box<[FastEntry]>,
    /// Writes likewise; only for RAM pages without translated code, with the dirty bit set.
    fast_w: Box<[FastEntry]>,
    /// Slots of `fast_r` and `fast_w` filled since they were last emptied: a CR3 reload
    /// (every guest context switch) empties just these instead of both whole tables.
    filled_r: Vec<u32>,
    filled_w: Vec<u32>,
    /// A large page was cached: INVLPG must drop everything (its 4 KiB pieces are spread over
    /// many slots).
    has_large: bool,
    /// Bumped whenever cached translations are dropped, so block chains (which remember a
    /// code translation) can tell they are stale.
    pub(crate) generation: u64,
    /// Bumped whenever translations of global pages may have been dropped (not by a CR3
    /// reload): links into code on global pages (a kernel's) rest on this one.
    pub(crate) global_generation: u64,
    /// Data breakpoints are armed: the fast slots stay empty so every data access takes the
    /// checked path in `mmu/mod.rs`.
    no_fast: bool,
    /// Linear pages code was fetched from since the last bump of both generations (hashed: a
    /// collision only costs a needless bump; a CR3 reload keeps them, as global pages keep
    /// their translations), and the bits set, for a cheap reset. INVLPG of any other page
    /// cannot touch a translation a chain link rests on, so it keeps the generations — Linux
    /// invalidates data pages far more often than code pages.
    exec_seen: BitVec,
    exec_list: Vec<u32>,
}

/// Bits of `Tlb::exec_seen`.
const EXEC_SLOTS: usize = 1 << 16;

fn exec_slot(lpage: u64) -> usize {
    ((lpage ^ (lpage >> 16) ^ (lpage >> 32)) as usize) & (EXEC_SLOTS - 1)
}

/// Slot `i` of `table` is being filled: remember it in `filled`. (A slot INVLPG emptied is
/// noted again when refilled; past a bound the whole table is emptied instead — any fast slot
/// may be dropped — so the list stays bounded.)
fn note_filled(filled: &mut Vec<u32>, table: &mut [FastEntry], i: usize) {
    if filled.len() >= 2 * table.len() {
        table.fill(FastEntry::default());
        filled.clear();
    }
    filled.push(i as u32);
}

impl Default for Tlb {
    fn default() -> Self {
        Self::new()
    }
}

impl Tlb {
    pub fn new() -> Self {
        Tlb {
            entries: vec![Entry::default(); ENTRIES].into_boxed_slice(),
            fast_r: vec![FastEntry::default(); 2 * FAST].into_boxed_slice(),
            fast_w: vec![FastEntry::default(); 2 * FAST].into_boxed_slice(),
            filled_r: Vec::new(),
            filled_w: Vec::new(),
            has_large: false,
            generation: 0,
            global_generation: 0,
            no_fast: false,
            exec_seen: BitVec::repeat(false, EXEC_SLOTS),
            exec_list: Vec::new(),
        }
    }

    /// Keep the fast data-access slots empty (`true`) or let them fill again.
    pub fn set_no_fast(&mut self, on: bool) {
        if on && !self.no_fast {
            self.flush_fast();
        }
        self.no_fast = on;
    }

    pub fn no_fast(&self) -> bool {
        self.no_fast
    }

    #[inline]
    pub fn lookup(&self, lpage: u64) -> Option<(u64, u8)> {
        let e = &self.entries[(lpage as usize) & (ENTRIES - 1)];
        if e.tag == lpage + 1 {
            Some((e.ppage, e.perm))
        } else {
            None
        }
    }

    pub fn insert(&mut self, lpage: u64, ppage: u64, perm: u8, large: bool) {
        self.has_large |= large;
        self.entries[(lpage as usize) & (ENTRIES - 1)] = Entry {
            tag: lpage + 1,
            ppage,
            perm,
        };
    }

    /// Code is being fetched through the translation of `lpage` (see `exec_seen`).
    #[inline]
    pub fn note_exec(&mut self, lpage: u64) {
        let i = exec_slot(lpage);
        if !self.exec_seen[i] {
            self.exec_seen.set(i, true);
            self.exec_list.push(i as u32);
        }
    }

    fn new_generation(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.global_generation = self.global_generation.wrapping_add(1);
        for i in self.exec_list.drain(..) {
            self.exec_seen.set(i as usize, false);
        }
    }

    pub fn flush_all(&mut self) {
        self.new_generation();
        self.entries.fill(Entry::default());
        self.has_large = false;
        self.flush_fast();
    }

    #[inline]
    fn fast_tag(lin: u64, user: bool) -> (usize, u64) {
        let page = lin >> 12;
        (
            user as usize * FAST + ((page as usize) & (FAST - 1)),
            lin & !0xFFF,
        )
    }

    /// Physical address for a read at `lin` if the fast path knows the page.
    #[inline]
    pub fn fast_read(&self, lin: u64, user: bool) -> Option<u64> {
        let (i, tag) = Self::fast_tag(lin, user);
        let e = &self.fast_r[i];
        if e.tag == tag {
            Some(e.base | (lin & 0xFFF))
        } else {
            None
        }
    }

    #[inline]
    pub fn fast_write(&self, lin: u64, user: bool) -> Option<u64> {
        let (i, tag) = Self::fast_tag(lin, user);
        let e = &self.fast_w[i];
        if e.tag == tag {
            Some(e.base | (lin & 0xFFF))
        } else {
            None
        }
    }

    /// `ram`: host address of guest physical 0 (`PhysMem::host_base`).
    pub fn fill_read(&mut self, lin: u64, user: bool, phys: u64, ram: usize) {
        if self.no_fast {
            return;
        }
        let (i, tag) = Self::fast_tag(lin, user);
        if self.fast_r[i].tag == EMPTY {
            note_filled(&mut self.filled_r, &mut self.fast_r, i);
        }
        self.fast_r[i] = FastEntry::new(tag, lin, phys, ram);
    }

    pub fn fill_write(&mut self, lin: u64, user: bool, phys: u64, ram: usize) {
        if self.no_fast {
            return;
        }
        let (i, tag) = Self::fast_tag(lin, user);
        if self.fast_w[i].tag == EMPTY {
            note_filled(&mut self.filled_w, &mut self.fast_w, i);
        }
        self.fast_w[i] = FastEntry::new(tag, lin, phys, ram);
    }

    /// Host addresses of the fast read and write tables of user (`user`) or supervisor
    /// accesses, for compiled code.
    pub(crate) fn fast_tables(&self, user: bool) -> (usize, usize) {
        let half = user as usize * FAST;
        (
            self.fast_r[half..].as_ptr() as usize,
            self.fast_w[half..].as_ptr() as usize,
        )
    }

    /// Forget every fast write slot (a page just became a code page).
    pub fn flush_fast_writes(&mut self) {
        for i in self.filled_w.drain(..) {
            self.fast_w[i as usize] = FastEntry::default();
        }
    }

    fn flush_fast(&mut self) {
        self.flush_fast_writes();
        for i in self.filled_r.drain(..) {
            self.fast_r[i as usize] = FastEntry::default();
        }
    }

    /// CR3 reload: drop everything but global pages.
    pub fn flush_nonglobal(&mut self) {
        // Global pages keep their translations, and so their bits in `exec_seen`.
        self.generation = self.generation.wrapping_add(1);
        self.flush_fast();
        for e in self.entries.iter_mut() {
            if e.perm & perm::GLOBAL == 0 {
                *e = Entry::default();
            }
        }
    }

    /// INVLPG.
    pub fn flush_page(&mut self, lpage: u64) {
        if self.exec_seen[exec_slot(lpage)] {
            self.new_generation();
        }
        // The fast slots of other pages hold translations INVLPG leaves valid.
        let tag = lpage << 12;
        for user in [false, true] {
            let (i, _) = Self::fast_tag(tag, user);
            for table in [&mut self.fast_r, &mut self.fast_w] {
                if table[i].tag == tag {
                    table[i] = FastEntry::default();
                }
            }
        }
        if self.has_large {
            self.flush_all();
        } else {
            let e = &mut self.entries[(lpage as usize) & (ENTRIES - 1)];
            if e.tag == lpage + 1 {
                *e = Entry::default();
            }
        }
    }
}
