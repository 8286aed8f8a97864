//! Guest-physical memory as devices see it for DMA.
//!
//! Two shapes of memory sit behind one trait: RAM that is wholly mapped into this process
//! (the standalone emulator, KVM) and memory mapped on demand, a bucket at a time (a Xen device
//! model maps the guest's frames through privcmd and must drop every mapping when Xen sends
//! INVALIDATE). Devices never hold host pointers into guest memory, only call this trait.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use thiserror::Error;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

#[derive(Debug, Error, PartialEq, Eq)]
pub enum GuestMemoryError {
    #[error("guest-physical range {addr:#x}+{len:#x} is not RAM")]
    Unmapped { addr: u64, len: usize },
    #[error("mapping guest frames {first:#x}+{count} failed: {reason}")]
    MapFailed {
        first: u64,
        count: usize,
        reason: String,
    },
}

pub trait GuestMemory: Send + Sync {
    /// Read `buf.len()` bytes at guest-physical `addr`.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError>;
    /// Write `buf` at guest-physical `addr`.
    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), GuestMemoryError>;

    fn read_u32(&self, addr: u64) -> Result<u32, GuestMemoryError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }

    fn write_u32(&self, addr: u64, value: u32) -> Result<(), GuestMemoryError> {
        self.write(addr, &value.to_le_bytes())
    }
}

/// Wholly mapped RAM, one anonymous mapping per region, through `vm-memory` (which gives us
/// bounds-checked volatile copies so this crate needs no `unsafe` for RAM).
pub struct MappedRam {
    memory: GuestMemoryMmap<()>,
}

impl MappedRam {
    /// RAM at each `(guest address, size)` region.
    pub fn new(regions: &[(u64, usize)]) -> Result<MappedRam, GuestMemoryError> {
        let ranges: Vec<_> = regions.iter().map(|&(a, s)| (GuestAddress(a), s)).collect();
        let memory =
            GuestMemoryMmap::from_ranges(&ranges).map_err(|e| GuestMemoryError::MapFailed {
                first: regions.first().map_or(0, |r| r.0 >> 12),
                count: regions.len(),
                reason: e.to_string(),
            })?;
        Ok(MappedRam { memory })
    }

    /// The underlying mapping, for a CPU that wants host pointers.
    pub fn mmap(&self) -> &GuestMemoryMmap<()> {
        &self.memory
    }
}

impl GuestMemory for MappedRam {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        self.memory
            .read_slice(buf, GuestAddress(addr))
            .map_err(|_| GuestMemoryError::Unmapped {
                addr,
                len: buf.len(),
            })
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), GuestMemoryError> {
        self.memory
            .write_slice(buf, GuestAddress(addr))
            .map_err(|_| GuestMemoryError::Unmapped {
                addr,
                len: buf.len(),
            })
    }
}

pub const FRAME_SIZE: u64 = 4096;

/// A run of guest frames mapped into this process.
pub trait MappedFrames: Send + Sync {
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), GuestMemoryError>;
    fn write(&self, offset: usize, buf: &[u8]) -> Result<(), GuestMemoryError>;
}

/// Maps guest frames on request (Xen: MMAPBATCH_V2 on privcmd).
pub trait FrameMapper: Send + Sync {
    fn map(
        &self,
        first_frame: u64,
        count: usize,
    ) -> Result<Arc<dyn MappedFrames>, GuestMemoryError>;
}

/// Memory mapped a bucket of frames at a time on first touch, cached, and dropped wholesale by
/// [`OnDemandMemory::invalidate`]. The cache holds at most `max_buckets`; when full it is
/// emptied, which costs re-mapping but keeps a guest from pinning unbounded host mappings.
pub struct OnDemandMemory<M: FrameMapper> {
    mapper: M,
    frames_per_bucket: usize,
    max_buckets: usize,
    buckets: Mutex<HashMap<u64, Arc<dyn MappedFrames>>>,
}

impl<M: FrameMapper> OnDemandMemory<M> {
    pub fn new(mapper: M, frames_per_bucket: usize, max_buckets: usize) -> Self {
        OnDemandMemory {
            mapper,
            frames_per_bucket: frames_per_bucket.max(1),
            max_buckets: max_buckets.max(1),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Drop every mapping (Xen's IOREQ_TYPE_INVALIDATE, after the guest's memory changed).
    pub fn invalidate(&self) {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }

    pub fn mapped_buckets(&self) -> usize {
        self.buckets.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    fn bucket_bytes(&self) -> u64 {
        self.frames_per_bucket as u64 * FRAME_SIZE
    }

    fn bucket(&self, index: u64) -> Result<Arc<dyn MappedFrames>, GuestMemoryError> {
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(b) = buckets.get(&index) {
            return Ok(b.clone());
        }
        if buckets.len() >= self.max_buckets {
            buckets.clear();
        }
        let first = index * self.frames_per_bucket as u64;
        let mapped = self.mapper.map(first, self.frames_per_bucket)?;
        buckets.insert(index, mapped.clone());
        Ok(mapped)
    }

    /// Walk `addr..addr+len` bucket by bucket.
    fn for_each_piece(
        &self,
        addr: u64,
        len: usize,
        mut f: impl FnMut(
            &dyn MappedFrames,
            usize,
            std::ops::Range<usize>,
        ) -> Result<(), GuestMemoryError>,
    ) -> Result<(), GuestMemoryError> {
        addr.checked_add(len as u64)
            .ok_or(GuestMemoryError::Unmapped { addr, len })?;
        let size = self.bucket_bytes();
        let mut done = 0usize;
        while done < len {
            let a = addr + done as u64;
            let offset = (a % size) as usize;
            let n = (len - done).min(size as usize - offset);
            let bucket = self.bucket(a / size)?;
            f(&*bucket, offset, done..done + n)?;
            done += n;
        }
        Ok(())
    }
}

impl<M: FrameMapper> GuestMemory for OnDemandMemory<M> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        self.for_each_piece(addr, buf.len(), |b, off, range| {
            b.read(off, &mut buf[range])
        })
    }

    fn write(&self, addr: u64, buf: &[u8]) -> Result<(), GuestMemoryError> {
        self.for_each_piece(addr, buf.len(), |b, off, range| b.write(off, &buf[range]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Guest "RAM" of `frames` frames, shared by every mapping, as a foreign mapping is.
    struct SharedFrames {
        ram: Arc<Mutex<Vec<u8>>>,
        base: usize,
        len: usize,
    }

    impl MappedFrames for SharedFrames {
        fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
            let ram = self.ram.lock().unwrap();
            buf.copy_from_slice(&ram[self.base + offset..self.base + offset + buf.len()]);
            Ok(())
        }
        fn write(&self, offset: usize, buf: &[u8]) -> Result<(), GuestMemoryError> {
            assert!(offset + buf.len() <= self.len);
            let mut ram = self.ram.lock().unwrap();
            ram[self.base + offset..self.base + offset + buf.len()].copy_from_slice(buf);
            Ok(())
        }
    }

    struct Mapper {
        ram: Arc<Mutex<Vec<u8>>>,
        maps: AtomicUsize,
    }

    impl FrameMapper for Mapper {
        fn map(&self, first: u64, count: usize) -> Result<Arc<dyn MappedFrames>, GuestMemoryError> {
            self.maps.fetch_add(1, Ordering::SeqCst);
            let total = self.ram.lock().unwrap().len() as u64 / FRAME_SIZE;
            if first + count as u64 > total {
                return Err(GuestMemoryError::MapFailed {
                    first,
                    count,
                    reason: "beyond RAM".into(),
                });
            }
            Ok(Arc::new(SharedFrames {
                ram: self.ram.clone(),
                base: (first * FRAME_SIZE) as usize,
                len: count * FRAME_SIZE as usize,
            }))
        }
    }

    #[test]
    fn on_demand_maps_once_per_bucket_and_crosses_buckets() {
        let ram = Arc::new(Mutex::new(vec![0u8; 64 * 4096]));
        let mem = OnDemandMemory::new(
            Mapper {
                ram: ram.clone(),
                maps: AtomicUsize::new(0),
            },
            4,
            8,
        );
        let data: Vec<u8> = (0..=255).collect();
        // Straddles the bucket boundary at 16 KiB.
        mem.write(0x4000 - 100, &data).unwrap();
        let mut back = vec![0u8; 256];
        mem.read(0x4000 - 100, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(&ram.lock().unwrap()[0x4000 - 100..0x4000 + 156], &data[..]);
        assert_eq!(mem.mapper.maps.load(Ordering::SeqCst), 2);
        mem.read_u32(0x10).unwrap();
        assert_eq!(mem.mapper.maps.load(Ordering::SeqCst), 2);
        mem.invalidate();
        assert_eq!(mem.mapped_buckets(), 0);
        mem.read_u32(0x10).unwrap();
        assert_eq!(mem.mapper.maps.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn on_demand_errors_beyond_ram_and_bounds_the_cache() {
        let ram = Arc::new(Mutex::new(vec![0u8; 16 * 4096]));
        let mem = OnDemandMemory::new(
            Mapper {
                ram,
                maps: AtomicUsize::new(0),
            },
            1,
            3,
        );
        for f in 0..16 {
            mem.write_u32(f * 4096, f as u32).unwrap();
            assert!(mem.mapped_buckets() <= 3);
        }
        assert!(mem.read_u32(16 * 4096).is_err());
        assert!(mem.read(u64::MAX - 1, &mut [0; 4]).is_err());
    }

    #[test]
    fn mapped_ram_reads_back_and_rejects_holes() {
        let ram = MappedRam::new(&[(0, 0x10000), (0x100000, 0x1000)]).unwrap();
        ram.write_u32(0xfffc, 0xdead_beef).unwrap();
        assert_eq!(ram.read_u32(0xfffc).unwrap(), 0xdead_beef);
        assert!(ram.read_u32(0x20000).is_err());
        ram.write_u32(0x100ffc, 7).unwrap();
        assert!(ram.write_u32(0x100ffe, 7).is_err());
    }
}
