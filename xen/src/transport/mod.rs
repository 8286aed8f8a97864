//! What a device model needs from Xen, behind one small trait, and its two implementations:
//! [`privcmd::XenTransport`] over `/dev/xen/privcmd` and `/dev/xen/evtchn`, and
//! [`sim::SimTransport`], whose Xen side ([`sim::SimXen`]) a test plays in the same process.
//!
//! The trait is deliberately raw (encoded DM-op bytes, resource frames, GFN lists, local
//! ports) so the real implementation stays a thin, obviously-correct layer over the ioctls;
//! [`DmOps`] builds the typed calls on top of it for every transport.
//!
//! Event channels follow `/dev/xen/evtchn`: a delivered port is masked until
//! [`Transport::unmask`]; [`Transport::event_fd`] is readable while some port is pending, so it
//! can be registered with mio (`mio::unix::SourceFd`) or polled.

pub mod os;
pub mod privcmd;
pub mod sim;

use std::io;
use std::os::fd::BorrowedFd;

use thiserror::Error;

use crate::abi::dmop::{
    DmOp, MODIFIED_MEMORY_EXTENT_SIZE, XEN_DMOP_IO_RANGE_MEMORY, XEN_DMOP_IO_RANGE_PCI,
    XEN_DMOP_IO_RANGE_PORT, XEN_DMOP_NO_GFNS,
};
use crate::abi::ioctl::DM_OP_MAX_BUF_SIZE;
pub use os::MappedRegion;

/// A domain id (`domid_t`).
pub type DomId = u16;

#[derive(Debug, Error)]
pub enum TransportError {
    #[error("{op}: {source}")]
    Os {
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{op}: Xen answered with a malformed result: {detail}")]
    Protocol { op: &'static str, detail: String },
}

impl TransportError {
    pub fn os(op: &'static str, source: io::Error) -> TransportError {
        TransportError::Os { op, source }
    }

    pub fn errno(op: &'static str, errno: i32) -> TransportError {
        TransportError::Os {
            op,
            source: io::Error::from_raw_os_error(errno),
        }
    }

    /// The OS error number, if this is one (EEXIST for an overlapping range, ...).
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            TransportError::Os { source, .. } => source.raw_os_error(),
            TransportError::Protocol { .. } => None,
        }
    }
}

/// Guest frames mapped into this process. `errors[i]` is 0 when frame `i` is mapped, else
/// the negative errno Xen gave for it (not RAM, paged out...); such pages must not be touched.
pub struct ForeignMapping {
    pub region: MappedRegion,
    pub errors: Vec<i32>,
}

/// The primitives a device model needs from Xen.
pub trait Transport: Send + Sync {
    /// Issue one DM op for `domid`. `op` is the 32-byte `struct xen_dm_op` (buffer 0); Xen's
    /// OUT fields are written back into it. `extra` are further buffers some ops take.
    fn dm_op(
        &self,
        domid: DomId,
        op: &mut [u8; 32],
        extra: &mut [&mut [u8]],
    ) -> Result<(), TransportError>;

    /// Map `count` frames of a resource (`XENMEM_resource_*` `kind`, `id`), from frame `first`.
    fn map_resource(
        &self,
        domid: DomId,
        kind: u32,
        id: u32,
        first: u32,
        count: usize,
    ) -> Result<MappedRegion, TransportError>;

    /// Map the guest frames `gfns`, in order, into one contiguous read-write region.
    fn map_foreign(&self, domid: DomId, gfns: &[u64]) -> Result<ForeignMapping, TransportError>;

    /// Bind a local port to `remote_port` of `domid`; returns the local port.
    fn bind_interdomain(&self, domid: DomId, remote_port: u32) -> Result<u32, TransportError>;

    fn unbind(&self, port: u32) -> Result<(), TransportError>;

    /// Signal the other end of local `port`.
    fn notify(&self, port: u32) -> Result<(), TransportError>;

    /// Re-enable delivery of local `port` after it was returned by [`Transport::pending`].
    fn unmask(&self, port: u32) -> Result<(), TransportError>;

    /// Pending local ports, without blocking; returns how many were stored in `out`.
    fn pending(&self, out: &mut [u32]) -> Result<usize, TransportError>;

    /// Readable while a port is pending (register it with mio, or poll it).
    fn event_fd(&self) -> BorrowedFd<'_>;

    /// Pin every handle to `domid` (privcmd RESTRICT, evtchn RESTRICT_DOMID).
    fn restrict(&self, domid: DomId) -> Result<(), TransportError>;
}

/// The kind of an I/O range claimed from Xen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RangeKind {
    Port,
    Memory,
    /// PCI functions by SBDF.
    Pci,
}

impl RangeKind {
    pub fn abi(self) -> u32 {
        match self {
            RangeKind::Port => XEN_DMOP_IO_RANGE_PORT,
            RangeKind::Memory => XEN_DMOP_IO_RANGE_MEMORY,
            RangeKind::Pci => XEN_DMOP_IO_RANGE_PCI,
        }
    }
}

/// What `get_ioreq_server_info` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IoreqServerInfo {
    pub bufioreq_port: u32,
    pub ioreq_gfn: u64,
    pub bufioreq_gfn: u64,
}

/// The typed DM ops, for any transport.
pub trait DmOps {
    fn dm(&self, domid: DomId, op: DmOp) -> Result<DmOp, TransportError>;

    fn create_ioreq_server(
        &self,
        domid: DomId,
        handle_bufioreq: u8,
    ) -> Result<u16, TransportError> {
        match self.dm(
            domid,
            DmOp::CreateIoreqServer {
                handle_bufioreq,
                id: 0,
            },
        )? {
            DmOp::CreateIoreqServer { id, .. } => Ok(id),
            other => Err(unexpected("create_ioreq_server", other)),
        }
    }

    fn get_ioreq_server_info(
        &self,
        domid: DomId,
        id: u16,
    ) -> Result<IoreqServerInfo, TransportError> {
        match self.dm(
            domid,
            DmOp::GetIoreqServerInfo {
                id,
                flags: XEN_DMOP_NO_GFNS,
                bufioreq_port: 0,
                ioreq_gfn: 0,
                bufioreq_gfn: 0,
            },
        )? {
            DmOp::GetIoreqServerInfo {
                bufioreq_port,
                ioreq_gfn,
                bufioreq_gfn,
                ..
            } => Ok(IoreqServerInfo {
                bufioreq_port,
                ioreq_gfn,
                bufioreq_gfn,
            }),
            other => Err(unexpected("get_ioreq_server_info", other)),
        }
    }

    /// Claim `start..=end` (inclusive, as Xen takes it).
    fn map_io_range(
        &self,
        domid: DomId,
        id: u16,
        kind: RangeKind,
        start: u64,
        end: u64,
    ) -> Result<(), TransportError> {
        self.dm(
            domid,
            DmOp::MapIoRange {
                id,
                ty: kind.abi(),
                start,
                end,
            },
        )
        .map(drop)
    }

    fn unmap_io_range(
        &self,
        domid: DomId,
        id: u16,
        kind: RangeKind,
        start: u64,
        end: u64,
    ) -> Result<(), TransportError> {
        self.dm(
            domid,
            DmOp::UnmapIoRange {
                id,
                ty: kind.abi(),
                start,
                end,
            },
        )
        .map(drop)
    }

    fn set_ioreq_server_state(
        &self,
        domid: DomId,
        id: u16,
        enabled: bool,
    ) -> Result<(), TransportError> {
        self.dm(domid, DmOp::SetIoreqServerState { id, enabled })
            .map(drop)
    }

    fn destroy_ioreq_server(&self, domid: DomId, id: u16) -> Result<(), TransportError> {
        self.dm(domid, DmOp::DestroyIoreqServer { id }).map(drop)
    }

    fn set_isa_irq_level(&self, domid: DomId, irq: u8, level: bool) -> Result<(), TransportError> {
        self.dm(
            domid,
            DmOp::SetIsaIrqLevel {
                irq,
                level: u8::from(level),
            },
        )
        .map(drop)
    }

    fn set_pci_intx_level(
        &self,
        domid: DomId,
        segment: u16,
        bus: u8,
        device: u8,
        intx: u8,
        level: bool,
    ) -> Result<(), TransportError> {
        self.dm(
            domid,
            DmOp::SetPciIntxLevel {
                domain: segment,
                bus,
                device,
                intx,
                level: u8::from(level),
            },
        )
        .map(drop)
    }

    /// Route PCI link `link` (0 = PIRQA#) to ISA IRQ `irq` (0 disables the link).
    fn set_pci_link_route(&self, domid: DomId, link: u8, irq: u8) -> Result<(), TransportError> {
        self.dm(domid, DmOp::SetPciLinkRoute { link, irq })
            .map(drop)
    }

    fn inject_msi(&self, domid: DomId, addr: u64, data: u32) -> Result<(), TransportError> {
        self.dm(domid, DmOp::InjectMsi { addr, data }).map(drop)
    }

    /// `SHUTDOWN_*` reason: poweroff 0, reboot 1, ...
    fn remote_shutdown(&self, domid: DomId, reason: u32) -> Result<(), TransportError> {
        self.dm(domid, DmOp::RemoteShutdown { reason }).map(drop)
    }

    /// Which of `nr` frames from `first_pfn` the guest wrote since the last call (VGA
    /// refresh): bit `i` of `bitmap` (at least `(nr + 7) / 8` bytes) for frame `first_pfn + i`.
    /// Xen answers ENODATA when it cannot tell; treat that as "all dirty".
    fn track_dirty_vram(
        &self,
        domid: DomId,
        first_pfn: u64,
        nr: u32,
        bitmap: &mut [u8],
    ) -> Result<(), TransportError>;

    /// Report guest frames the device model wrote (needed while Xen tracks dirty memory for
    /// live migration): `(first_pfn, count)` extents.
    fn modified_memory(&self, domid: DomId, extents: &[(u64, u32)]) -> Result<(), TransportError>;

    fn nr_vcpus(&self, domid: DomId) -> Result<u32, TransportError> {
        match self.dm(domid, DmOp::NrVcpus { vcpus: 0 })? {
            DmOp::NrVcpus { vcpus } => Ok(vcpus),
            other => Err(unexpected("nr_vcpus", other)),
        }
    }
}

fn unexpected(op: &'static str, got: DmOp) -> TransportError {
    TransportError::Protocol {
        op,
        detail: format!("answer decoded as {got:?}"),
    }
}

impl<T: Transport + ?Sized> DmOps for T {
    fn dm(&self, domid: DomId, op: DmOp) -> Result<DmOp, TransportError> {
        let mut bytes = op.encode();
        self.dm_op(domid, &mut bytes, &mut [])?;
        DmOp::decode(&bytes).map_err(|e| TransportError::Protocol {
            op: "dm_op",
            detail: e.to_string(),
        })
    }

    fn track_dirty_vram(
        &self,
        domid: DomId,
        first_pfn: u64,
        nr: u32,
        bitmap: &mut [u8],
    ) -> Result<(), TransportError> {
        let need = (nr as usize).div_ceil(8);
        if bitmap.len() < need || need > DM_OP_MAX_BUF_SIZE {
            return Err(TransportError::errno("track_dirty_vram", libc::EINVAL));
        }
        let mut bytes = DmOp::TrackDirtyVram { first_pfn, nr }.encode();
        self.dm_op(domid, &mut bytes, &mut [&mut bitmap[..need]])
    }

    fn modified_memory(&self, domid: DomId, extents: &[(u64, u32)]) -> Result<(), TransportError> {
        // One buffer holds at most a page of extents (privcmd's per-buffer limit).
        for chunk in extents.chunks(DM_OP_MAX_BUF_SIZE / MODIFIED_MEMORY_EXTENT_SIZE) {
            let mut buf = Vec::with_capacity(chunk.len() * MODIFIED_MEMORY_EXTENT_SIZE);
            for &(first_pfn, nr) in chunk {
                buf.extend_from_slice(&nr.to_le_bytes());
                buf.extend_from_slice(&0u32.to_le_bytes());
                buf.extend_from_slice(&first_pfn.to_le_bytes());
            }
            let mut bytes = DmOp::ModifiedMemory {
                nr_extents: chunk.len() as u32,
            }
            .encode();
            self.dm_op(domid, &mut bytes, &mut [&mut buf])?;
        }
        Ok(())
    }
}
