//! A software TLB: a direct-mapped cache from linear page to physical page plus the permission
//! bits gathered along the walk, so most accesses skip the page-table walk.

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

pub struct Tlb {
    entries: Box<[Entry]>,
    /// A large page was cached: INVLPG must drop everything (its 4 KiB pieces are spread over
    /// many slots).
    has_large: bool,
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
            has_large: false,
        }
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

    pub fn flush_all(&mut self) {
        self.entries.fill(Entry::default());
        self.has_large = false;
    }

    /// CR3 reload: drop everything but global pages.
    pub fn flush_nonglobal(&mut self) {
        for e in self.entries.iter_mut() {
            if e.perm & perm::GLOBAL == 0 {
                *e = Entry::default();
            }
        }
    }

    /// INVLPG.
    pub fn flush_page(&mut self, lpage: u64) {
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
