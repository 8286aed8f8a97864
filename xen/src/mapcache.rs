//! The mapcache: guest RAM as a device model reaches it under Xen, mapped a bucket of frames
//! at a time through the transport (MMAPBATCH_V2) and dropped wholesale on
//! `IOREQ_TYPE_INVALIDATE`.
//!
//! [`devices::guest_memory::OnDemandMemory`] is the cache; this module supplies the mapper and
//! the mapped frames. Frames Xen refused to map (not RAM, MMIO, paged out for good) are
//! remembered per page: touching one is an error the caller turns into "reads all ones, writes
//! dropped", as unassigned memory behaves.

use std::sync::Arc;

use devices::guest_memory::{
    FRAME_SIZE, FrameMapper, GuestMemory, GuestMemoryError, MappedFrames, MappedRam, OnDemandMemory,
};

use crate::abi::PAGE_SIZE;
use crate::transport::{DomId, ForeignMapping, Transport};

/// QEMU's bucket size on 64-bit hosts: 1 MiB (`MCACHE_BUCKET_SHIFT` 20).
pub const FRAMES_PER_BUCKET: usize = 256;
/// At most this many buckets stay mapped (16 GiB of guest RAM); beyond, the cache is emptied
/// and refilled, bounding the host mappings a guest can make us hold.
pub const MAX_BUCKETS: usize = 16 * 1024;

const _: () = assert!(FRAME_SIZE as usize == PAGE_SIZE);

/// Maps runs of a domain's frames through a [`Transport`].
pub struct ForeignMapper {
    transport: Arc<dyn Transport>,
    domid: DomId,
}

impl ForeignMapper {
    pub fn new(transport: Arc<dyn Transport>, domid: DomId) -> ForeignMapper {
        ForeignMapper { transport, domid }
    }
}

/// A run of frames mapped from the guest; copies are volatile (the guest runs concurrently).
pub struct ForeignFrames {
    mapping: ForeignMapping,
}

impl ForeignFrames {
    pub fn new(mapping: ForeignMapping) -> ForeignFrames {
        ForeignFrames { mapping }
    }

    /// Every page under `offset..offset+len` was mapped.
    fn check(&self, offset: usize, len: usize) -> Result<(), GuestMemoryError> {
        let end = offset
            .checked_add(len)
            .filter(|&e| e <= self.mapping.region.len());
        let bad = || GuestMemoryError::Unmapped {
            addr: offset as u64,
            len,
        };
        let end = end.ok_or_else(bad)?;
        if len == 0 {
            return Ok(());
        }
        let pages = offset / PAGE_SIZE..=(end - 1) / PAGE_SIZE;
        if self
            .mapping
            .errors
            .get(pages)
            .is_some_and(|e| e.iter().all(|&e| e == 0))
        {
            Ok(())
        } else {
            Err(bad())
        }
    }
}

impl MappedFrames for ForeignFrames {
    fn read(&self, offset: usize, buf: &mut [u8]) -> Result<(), GuestMemoryError> {
        self.check(offset, buf.len())?;
        if self.mapping.region.read_bytes(offset, buf) {
            Ok(())
        } else {
            Err(GuestMemoryError::Unmapped {
                addr: offset as u64,
                len: buf.len(),
            })
        }
    }

    fn write(&self, offset: usize, buf: &[u8]) -> Result<(), GuestMemoryError> {
        self.check(offset, buf.len())?;
        if self.mapping.region.write_bytes(offset, buf) {
            Ok(())
        } else {
            Err(GuestMemoryError::Unmapped {
                addr: offset as u64,
                len: buf.len(),
            })
        }
    }
}

impl FrameMapper for ForeignMapper {
    fn map(
        &self,
        first_frame: u64,
        count: usize,
    ) -> Result<Arc<dyn MappedFrames>, GuestMemoryError> {
        let gfns: Vec<u64> = (0..count as u64)
            .map(|i| first_frame.saturating_add(i))
            .collect();
        let mapping = self.transport.map_foreign(self.domid, &gfns).map_err(|e| {
            GuestMemoryError::MapFailed {
                first: first_frame,
                count,
                reason: e.to_string(),
            }
        })?;
        Ok(Arc::new(ForeignFrames::new(mapping)))
    }
}

/// Guest memory of a Xen domain.
pub type MapCache = OnDemandMemory<ForeignMapper>;

/// A mapcache with QEMU's geometry.
pub fn new_mapcache(transport: Arc<dyn Transport>, domid: DomId) -> MapCache {
    OnDemandMemory::new(
        ForeignMapper::new(transport, domid),
        FRAMES_PER_BUCKET,
        MAX_BUCKETS,
    )
}

/// Guest memory as the ioreq server needs it: DMA-style access plus the INVALIDATE hook.
pub trait DmMemory: GuestMemory {
    /// Drop every cached mapping (a no-op for memory that is wholly mapped).
    fn invalidate(&self) {}
}

impl DmMemory for MapCache {
    fn invalidate(&self) {
        OnDemandMemory::invalidate(self);
    }
}

impl DmMemory for MappedRam {}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::sim::{SimConfig, pair};

    #[test]
    fn mapcache_reads_guest_ram_across_buckets_and_refuses_holes() {
        let (t, xen) = pair(SimConfig {
            ram_bytes: 3 << 20,
            ..SimConfig::default()
        })
        .unwrap();
        let cache = new_mapcache(Arc::new(t), 7);
        let data: Vec<u8> = (0..200u8).collect();
        let at = (1 << 20) - 100;
        cache.write(at, &data).unwrap();
        let mut back = vec![0u8; 200];
        xen.ram_read(at, &mut back).unwrap();
        assert_eq!(back, data);
        assert_eq!(cache.mapped_buckets(), 2);
        assert_eq!(xen.foreign_map_calls(), 2);
        cache.read(at, &mut back).unwrap();
        assert_eq!(xen.foreign_map_calls(), 2, "cached");
        // Beyond RAM: the bucket maps (Xen refuses per frame) but the access fails.
        assert!(cache.read_u32(3 << 20).is_err());
        // Straddling the end of RAM fails as a whole rather than half-reading.
        assert!(cache.read((3 << 20) - 2, &mut [0u8; 4]).is_err());
        DmMemory::invalidate(&cache);
        assert_eq!(cache.mapped_buckets(), 0);
        cache.read_u32(0).unwrap();
        assert_eq!(cache.mapped_buckets(), 1);
    }
}
