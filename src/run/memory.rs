//! Guest RAM as the devices see it for DMA.
//!
//! The CPU owns guest RAM ([`PhysMem`] inside [`Cpu`]) and borrows it mutably for the whole of
//! [`Cpu::run`], so a device cannot reach it from inside a port access the CPU is making. Safe
//! Rust gives two ways out: share the bytes (which the CPU's direct, lock-free RAM path does not
//! allow today) or let devices touch RAM only between CPU slices. This board does the latter:
//! [`DmaRam::lend`] moves the `PhysMem` out of the CPU into this shared slot (a move of two
//! boxes, no copy) while the board runs device work, and [`DmaRam::give_back`] returns it and
//! drops the CPU's translations of every page a device wrote. A DMA attempted while the CPU holds
//! the RAM fails with [`GuestMemoryError::Unmapped`] (logged): the board defers the port writes
//! that start DMA so that this does not happen (see `board.rs`).

use std::sync::Mutex;

use devices::guest_memory::{GuestMemory, GuestMemoryError};
use translator::{Cpu, PhysMem};

#[derive(Default)]
struct Slot {
    mem: Option<PhysMem>,
    /// `[start, end)` ranges written by devices since the RAM was lent.
    dirty: Vec<(u64, u64)>,
}

/// The RAM slot devices DMA through.
#[derive(Default)]
pub struct DmaRam {
    slot: Mutex<Slot>,
}

/// Dirty ranges are merged into one when there are more than this many (a guest cannot make
/// the list grow without bound; invalidating a wider range is only slower).
const MAX_DIRTY_RANGES: usize = 64;

impl DmaRam {
    pub fn new() -> DmaRam {
        DmaRam::default()
    }

    fn slot(&self) -> std::sync::MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Take the CPU's RAM for device work between slices.
    pub fn lend(&self, cpu: &mut Cpu) {
        let mem = std::mem::replace(&mut cpu.mem, PhysMem::new(0));
        let mut slot = self.slot();
        slot.mem = Some(mem);
        slot.dirty.clear();
    }

    /// Hand the RAM back to the CPU, dropping its translated code in every page a device wrote.
    pub fn give_back(&self, cpu: &mut Cpu) {
        let (mem, dirty) = {
            let mut slot = self.slot();
            (slot.mem.take(), std::mem::take(&mut slot.dirty))
        };
        if let Some(mem) = mem {
            cpu.mem = mem;
        }
        for (start, end) in dirty {
            cpu.invalidate_phys(start, end);
        }
    }

    fn check(mem: &PhysMem, addr: u64, len: usize) -> Result<usize, GuestMemoryError> {
        let err = || GuestMemoryError::Unmapped { addr, len };
        let start = usize::try_from(addr).map_err(|_| err())?;
        let end = start.checked_add(len).ok_or_else(err)?;
        if end > mem.len() {
            return Err(err());
        }
        // Holes (the VGA window) are not RAM even though the store has bytes behind them.
        let mut page = addr & !0xFFF;
        while page < end as u64 {
            if !mem.is_backed(page) {
                return Err(err());
            }
            page += 0x1000;
        }
        Ok(start)
    }
}

impl GuestMemory for DmaRam {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        let slot = self.slot();
        let Some(mem) = slot.mem.as_ref() else {
            log::warn!("DMA read at {addr:#x} while the CPU holds guest RAM");
            return Err(GuestMemoryError::Unmapped {
                addr,
                len: buf.len(),
            });
        };
        let start = Self::check(mem, addr, buf.len())?;
        buf.copy_from_slice(&mem.as_slice()[start..start + buf.len()]);
        Ok(())
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), GuestMemoryError> {
        let mut slot = self.slot();
        let Some(mem) = slot.mem.as_mut() else {
            log::warn!("DMA write at {addr:#x} while the CPU holds guest RAM");
            return Err(GuestMemoryError::Unmapped {
                addr,
                len: buf.len(),
            });
        };
        let start = Self::check(mem, addr, buf.len())?;
        mem.as_mut_slice()[start..start + buf.len()].copy_from_slice(buf);
        let range = (addr, addr + buf.len() as u64);
        let dirty = &mut slot.dirty;
        match dirty.last_mut() {
            Some(last) if last.1 == range.0 => last.1 = range.1,
            _ => dirty.push(range),
        }
        if dirty.len() > MAX_DIRTY_RANGES {
            let lo = dirty.iter().map(|r| r.0).min().unwrap_or(0);
            let hi = dirty.iter().map(|r| r.1).max().unwrap_or(0);
            dirty.clear();
            dirty.push((lo, hi));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dma_reaches_ram_only_while_lent_and_holes_are_refused() {
        let mut mem = PhysMem::new(1 << 20);
        mem.set_mmio(0xA0000, 0xC0000);
        let mut cpu = Cpu::new(mem);
        let ram = DmaRam::new();
        assert!(ram.write(0x1000, &[1, 2, 3]).is_err());
        ram.lend(&mut cpu);
        assert_eq!(cpu.mem.len(), 0);
        ram.write(0x1000, &[1, 2, 3]).unwrap();
        let mut back = [0u8; 3];
        ram.read(0x1000, &mut back).unwrap();
        assert_eq!(back, [1, 2, 3]);
        assert!(ram.write(0xA0000, &[1]).is_err());
        assert!(ram.write(0xFFFFF, &[1, 2]).is_err());
        assert!(ram.read(u64::MAX, &mut back).is_err());
        ram.give_back(&mut cpu);
        assert_eq!(cpu.mem.len(), 1 << 20);
        assert_eq!(&cpu.mem.as_slice()[0x1000..0x1003], &[1, 2, 3]);
    }
}
