//! `struct xen_dm_op` (public/hvm/dm_op.h): the argument of the DM-op hypercall, and the
//! per-op structures of its 24-byte union.
//!
//! The structs are the layout (checked at compile time against the measured sizes); [`DmOp`]
//! is what code builds, encoded into and decoded from the 32 bytes the kernel copies, with the
//! field offsets taken from those structs so the two cannot drift apart.

use std::mem::{offset_of, size_of};

use thiserror::Error;

pub const HYPERVISOR_DM_OP: u32 = 41;

pub const XEN_DMOP_CREATE_IOREQ_SERVER: u32 = 1;
pub const XEN_DMOP_GET_IOREQ_SERVER_INFO: u32 = 2;
pub const XEN_DMOP_MAP_IO_RANGE_TO_IOREQ_SERVER: u32 = 3;
pub const XEN_DMOP_UNMAP_IO_RANGE_FROM_IOREQ_SERVER: u32 = 4;
pub const XEN_DMOP_SET_IOREQ_SERVER_STATE: u32 = 5;
pub const XEN_DMOP_DESTROY_IOREQ_SERVER: u32 = 6;
pub const XEN_DMOP_TRACK_DIRTY_VRAM: u32 = 7;
pub const XEN_DMOP_SET_PCI_INTX_LEVEL: u32 = 8;
pub const XEN_DMOP_SET_ISA_IRQ_LEVEL: u32 = 9;
pub const XEN_DMOP_SET_PCI_LINK_ROUTE: u32 = 10;
pub const XEN_DMOP_MODIFIED_MEMORY: u32 = 11;
pub const XEN_DMOP_SET_MEM_TYPE: u32 = 12;
pub const XEN_DMOP_INJECT_EVENT: u32 = 13;
pub const XEN_DMOP_INJECT_MSI: u32 = 14;
pub const XEN_DMOP_MAP_MEM_TYPE_TO_IOREQ_SERVER: u32 = 15;
pub const XEN_DMOP_REMOTE_SHUTDOWN: u32 = 16;
pub const XEN_DMOP_RELOCATE_MEMORY: u32 = 17;
pub const XEN_DMOP_PIN_MEMORY_CACHEATTR: u32 = 18;
pub const XEN_DMOP_SET_IRQ_LEVEL: u32 = 19;
pub const XEN_DMOP_NR_VCPUS: u32 = 20;

/// `XEN_DMOP_IO_RANGE_*`.
pub const XEN_DMOP_IO_RANGE_PORT: u32 = 0;
pub const XEN_DMOP_IO_RANGE_MEMORY: u32 = 1;
pub const XEN_DMOP_IO_RANGE_PCI: u32 = 2;

/// `get_ioreq_server_info` flag: do not insert the pages into the guest physmap (we map them
/// as a resource instead).
pub const XEN_DMOP_NO_GFNS: u16 = 1;

/// `struct xen_dm_op`: op, pad, then the union (8-byte aligned in C).
#[repr(C)]
pub struct XenDmOp {
    pub op: u32,
    pub pad: u32,
    pub u: [u64; 3],
}

/// Offset of the union inside `xen_dm_op`.
pub const UNION_OFFSET: usize = offset_of!(XenDmOp, u);
pub const DM_OP_SIZE: usize = size_of::<XenDmOp>();

#[repr(C)]
pub struct CreateIoreqServer {
    pub handle_bufioreq: u8,
    pub pad: [u8; 3],
    pub id: u16,
}

#[repr(C)]
pub struct GetIoreqServerInfo {
    pub id: u16,
    pub flags: u16,
    pub bufioreq_port: u32,
    pub ioreq_gfn: u64,
    pub bufioreq_gfn: u64,
}

/// Used by both map (3) and unmap (4); `end` is inclusive.
#[repr(C)]
pub struct IoreqServerRange {
    pub id: u16,
    pub pad: u16,
    pub ty: u32,
    pub start: u64,
    pub end: u64,
}

#[repr(C)]
pub struct SetIoreqServerState {
    pub id: u16,
    pub enabled: u8,
    pub pad: u8,
}

#[repr(C)]
pub struct DestroyIoreqServer {
    pub id: u16,
    pub pad: u16,
}

#[repr(C)]
pub struct SetPciIntxLevel {
    pub domain: u16,
    pub bus: u8,
    pub device: u8,
    pub intx: u8,
    pub level: u8,
}

#[repr(C)]
pub struct SetIsaIrqLevel {
    pub isa_irq: u8,
    pub level: u8,
}

#[repr(C)]
pub struct SetPciLinkRoute {
    pub link: u8,
    pub isa_irq: u8,
}

/// Buffer 1 is the OUT dirty bitmap, `(nr + 7) / 8` bytes.
#[repr(C)]
pub struct TrackDirtyVram {
    pub nr: u32,
    pub pad: u32,
    pub first_pfn: u64,
}

/// Buffer 1 is an array of [`ModifiedMemoryExtent`].
#[repr(C)]
pub struct ModifiedMemory {
    pub nr_extents: u32,
    pub opaque: u32,
}

/// `struct xen_dm_op_modified_memory_extent`.
#[repr(C)]
pub struct ModifiedMemoryExtent {
    pub nr: u32,
    pub pad: u32,
    pub first_pfn: u64,
}

pub const MODIFIED_MEMORY_EXTENT_SIZE: usize = size_of::<ModifiedMemoryExtent>();

#[repr(C)]
pub struct SetMemType {
    pub nr: u32,
    pub mem_type: u16,
    pub pad: u16,
    pub first_pfn: u64,
}

#[repr(C)]
pub struct InjectMsi {
    pub data: u32,
    pub pad: u32,
    pub addr: u64,
}

#[repr(C)]
pub struct RemoteShutdown {
    pub reason: u32,
}

#[repr(C)]
pub struct RelocateMemory {
    pub size: u32,
    pub pad: u32,
    pub src_gfn: u64,
    pub dst_gfn: u64,
}

#[repr(C)]
pub struct PinMemoryCacheattr {
    pub start: u64,
    pub end: u64,
    pub ty: u32,
    pub pad: u32,
}

#[repr(C)]
pub struct NrVcpus {
    pub vcpus: u32,
}

const _: () = {
    assert!(DM_OP_SIZE == 32);
    assert!(UNION_OFFSET == 8);
    // Sizes from docs/XEN-DM-SPEC.md 2.3 (measured with gcc on the Xen 4.17 headers).
    assert!(size_of::<CreateIoreqServer>() == 6);
    assert!(offset_of!(CreateIoreqServer, id) == 4);
    assert!(size_of::<GetIoreqServerInfo>() == 24);
    assert!(offset_of!(GetIoreqServerInfo, flags) == 2);
    assert!(offset_of!(GetIoreqServerInfo, bufioreq_port) == 4);
    assert!(offset_of!(GetIoreqServerInfo, ioreq_gfn) == 8);
    assert!(offset_of!(GetIoreqServerInfo, bufioreq_gfn) == 16);
    assert!(size_of::<IoreqServerRange>() == 24);
    assert!(offset_of!(IoreqServerRange, ty) == 4);
    assert!(offset_of!(IoreqServerRange, start) == 8);
    assert!(offset_of!(IoreqServerRange, end) == 16);
    assert!(size_of::<SetIoreqServerState>() == 4);
    assert!(offset_of!(SetIoreqServerState, enabled) == 2);
    assert!(size_of::<DestroyIoreqServer>() == 4);
    assert!(size_of::<SetPciIntxLevel>() == 6);
    assert!(offset_of!(SetPciIntxLevel, bus) == 2);
    assert!(offset_of!(SetPciIntxLevel, device) == 3);
    assert!(offset_of!(SetPciIntxLevel, intx) == 4);
    assert!(offset_of!(SetPciIntxLevel, level) == 5);
    assert!(size_of::<SetIsaIrqLevel>() == 2);
    assert!(size_of::<SetPciLinkRoute>() == 2);
    assert!(size_of::<TrackDirtyVram>() == 16);
    assert!(offset_of!(TrackDirtyVram, first_pfn) == 8);
    assert!(size_of::<ModifiedMemory>() == 8);
    assert!(size_of::<ModifiedMemoryExtent>() == 16);
    assert!(offset_of!(ModifiedMemoryExtent, first_pfn) == 8);
    assert!(size_of::<SetMemType>() == 16);
    assert!(offset_of!(SetMemType, mem_type) == 4);
    assert!(offset_of!(SetMemType, first_pfn) == 8);
    assert!(size_of::<InjectMsi>() == 16);
    assert!(offset_of!(InjectMsi, addr) == 8);
    assert!(size_of::<RemoteShutdown>() == 4);
    assert!(size_of::<RelocateMemory>() == 24);
    assert!(offset_of!(RelocateMemory, src_gfn) == 8);
    assert!(offset_of!(RelocateMemory, dst_gfn) == 16);
    assert!(size_of::<PinMemoryCacheattr>() == 24);
    assert!(offset_of!(PinMemoryCacheattr, ty) == 16);
    assert!(size_of::<NrVcpus>() == 4);
};

/// One DM op. OUT fields (`id`, `bufioreq_port`, ...) are zero when building and filled in by
/// [`DmOp::decode`] of the buffer the hypercall wrote back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DmOp {
    CreateIoreqServer {
        handle_bufioreq: u8,
        id: u16,
    },
    GetIoreqServerInfo {
        id: u16,
        flags: u16,
        bufioreq_port: u32,
        ioreq_gfn: u64,
        bufioreq_gfn: u64,
    },
    MapIoRange {
        id: u16,
        ty: u32,
        start: u64,
        end: u64,
    },
    UnmapIoRange {
        id: u16,
        ty: u32,
        start: u64,
        end: u64,
    },
    SetIoreqServerState {
        id: u16,
        enabled: bool,
    },
    DestroyIoreqServer {
        id: u16,
    },
    SetPciIntxLevel {
        domain: u16,
        bus: u8,
        device: u8,
        intx: u8,
        level: u8,
    },
    SetIsaIrqLevel {
        irq: u8,
        level: u8,
    },
    SetPciLinkRoute {
        link: u8,
        irq: u8,
    },
    TrackDirtyVram {
        first_pfn: u64,
        nr: u32,
    },
    ModifiedMemory {
        nr_extents: u32,
    },
    SetMemType {
        nr: u32,
        mem_type: u16,
        first_pfn: u64,
    },
    InjectMsi {
        addr: u64,
        data: u32,
    },
    RemoteShutdown {
        reason: u32,
    },
    RelocateMemory {
        size: u32,
        src_gfn: u64,
        dst_gfn: u64,
    },
    PinMemoryCacheattr {
        start: u64,
        end: u64,
        ty: u32,
    },
    NrVcpus {
        vcpus: u32,
    },
}

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DmOpError {
    #[error("DM op {0} is not one this device model speaks")]
    Unknown(u32),
}

/// Little-endian field writer over the union, at offsets within it.
struct Union<'a>(&'a mut [u8; DM_OP_SIZE]);

impl Union<'_> {
    fn put(&mut self, off: usize, bytes: &[u8]) {
        let at = UNION_OFFSET + off;
        self.0[at..at + bytes.len()].copy_from_slice(bytes);
    }
    fn u8(&mut self, off: usize, v: u8) {
        self.put(off, &[v]);
    }
    fn u16(&mut self, off: usize, v: u16) {
        self.put(off, &v.to_le_bytes());
    }
    fn u32(&mut self, off: usize, v: u32) {
        self.put(off, &v.to_le_bytes());
    }
    fn u64(&mut self, off: usize, v: u64) {
        self.put(off, &v.to_le_bytes());
    }
}

fn get<const N: usize>(b: &[u8; DM_OP_SIZE], off: usize) -> [u8; N] {
    let at = UNION_OFFSET + off;
    let mut out = [0u8; N];
    out.copy_from_slice(&b[at..at + N]);
    out
}
fn g8(b: &[u8; DM_OP_SIZE], off: usize) -> u8 {
    b[UNION_OFFSET + off]
}
fn g16(b: &[u8; DM_OP_SIZE], off: usize) -> u16 {
    u16::from_le_bytes(get(b, off))
}
fn g32(b: &[u8; DM_OP_SIZE], off: usize) -> u32 {
    u32::from_le_bytes(get(b, off))
}
fn g64(b: &[u8; DM_OP_SIZE], off: usize) -> u64 {
    u64::from_le_bytes(get(b, off))
}

impl DmOp {
    pub fn code(&self) -> u32 {
        match self {
            DmOp::CreateIoreqServer { .. } => XEN_DMOP_CREATE_IOREQ_SERVER,
            DmOp::GetIoreqServerInfo { .. } => XEN_DMOP_GET_IOREQ_SERVER_INFO,
            DmOp::MapIoRange { .. } => XEN_DMOP_MAP_IO_RANGE_TO_IOREQ_SERVER,
            DmOp::UnmapIoRange { .. } => XEN_DMOP_UNMAP_IO_RANGE_FROM_IOREQ_SERVER,
            DmOp::SetIoreqServerState { .. } => XEN_DMOP_SET_IOREQ_SERVER_STATE,
            DmOp::DestroyIoreqServer { .. } => XEN_DMOP_DESTROY_IOREQ_SERVER,
            DmOp::SetPciIntxLevel { .. } => XEN_DMOP_SET_PCI_INTX_LEVEL,
            DmOp::SetIsaIrqLevel { .. } => XEN_DMOP_SET_ISA_IRQ_LEVEL,
            DmOp::SetPciLinkRoute { .. } => XEN_DMOP_SET_PCI_LINK_ROUTE,
            DmOp::TrackDirtyVram { .. } => XEN_DMOP_TRACK_DIRTY_VRAM,
            DmOp::ModifiedMemory { .. } => XEN_DMOP_MODIFIED_MEMORY,
            DmOp::SetMemType { .. } => XEN_DMOP_SET_MEM_TYPE,
            DmOp::InjectMsi { .. } => XEN_DMOP_INJECT_MSI,
            DmOp::RemoteShutdown { .. } => XEN_DMOP_REMOTE_SHUTDOWN,
            DmOp::RelocateMemory { .. } => XEN_DMOP_RELOCATE_MEMORY,
            DmOp::PinMemoryCacheattr { .. } => XEN_DMOP_PIN_MEMORY_CACHEATTR,
            DmOp::NrVcpus { .. } => XEN_DMOP_NR_VCPUS,
        }
    }

    /// The 32 bytes of `struct xen_dm_op` (buffer 0 of the hypercall).
    pub fn encode(&self) -> [u8; DM_OP_SIZE] {
        let mut b = [0u8; DM_OP_SIZE];
        b[..4].copy_from_slice(&self.code().to_le_bytes());
        let mut u = Union(&mut b);
        match *self {
            DmOp::CreateIoreqServer {
                handle_bufioreq,
                id,
            } => {
                u.u8(
                    offset_of!(CreateIoreqServer, handle_bufioreq),
                    handle_bufioreq,
                );
                u.u16(offset_of!(CreateIoreqServer, id), id);
            }
            DmOp::GetIoreqServerInfo {
                id,
                flags,
                bufioreq_port,
                ioreq_gfn,
                bufioreq_gfn,
            } => {
                u.u16(offset_of!(GetIoreqServerInfo, id), id);
                u.u16(offset_of!(GetIoreqServerInfo, flags), flags);
                u.u32(offset_of!(GetIoreqServerInfo, bufioreq_port), bufioreq_port);
                u.u64(offset_of!(GetIoreqServerInfo, ioreq_gfn), ioreq_gfn);
                u.u64(offset_of!(GetIoreqServerInfo, bufioreq_gfn), bufioreq_gfn);
            }
            DmOp::MapIoRange { id, ty, start, end } | DmOp::UnmapIoRange { id, ty, start, end } => {
                u.u16(offset_of!(IoreqServerRange, id), id);
                u.u32(offset_of!(IoreqServerRange, ty), ty);
                u.u64(offset_of!(IoreqServerRange, start), start);
                u.u64(offset_of!(IoreqServerRange, end), end);
            }
            DmOp::SetIoreqServerState { id, enabled } => {
                u.u16(offset_of!(SetIoreqServerState, id), id);
                u.u8(offset_of!(SetIoreqServerState, enabled), u8::from(enabled));
            }
            DmOp::DestroyIoreqServer { id } => u.u16(offset_of!(DestroyIoreqServer, id), id),
            DmOp::SetPciIntxLevel {
                domain,
                bus,
                device,
                intx,
                level,
            } => {
                u.u16(offset_of!(SetPciIntxLevel, domain), domain);
                u.u8(offset_of!(SetPciIntxLevel, bus), bus);
                u.u8(offset_of!(SetPciIntxLevel, device), device);
                u.u8(offset_of!(SetPciIntxLevel, intx), intx);
                u.u8(offset_of!(SetPciIntxLevel, level), level);
            }
            DmOp::SetIsaIrqLevel { irq, level } => {
                u.u8(offset_of!(SetIsaIrqLevel, isa_irq), irq);
                u.u8(offset_of!(SetIsaIrqLevel, level), level);
            }
            DmOp::SetPciLinkRoute { link, irq } => {
                u.u8(offset_of!(SetPciLinkRoute, link), link);
                u.u8(offset_of!(SetPciLinkRoute, isa_irq), irq);
            }
            DmOp::TrackDirtyVram { first_pfn, nr } => {
                u.u32(offset_of!(TrackDirtyVram, nr), nr);
                u.u64(offset_of!(TrackDirtyVram, first_pfn), first_pfn);
            }
            DmOp::ModifiedMemory { nr_extents } => {
                u.u32(offset_of!(ModifiedMemory, nr_extents), nr_extents);
            }
            DmOp::SetMemType {
                nr,
                mem_type,
                first_pfn,
            } => {
                u.u32(offset_of!(SetMemType, nr), nr);
                u.u16(offset_of!(SetMemType, mem_type), mem_type);
                u.u64(offset_of!(SetMemType, first_pfn), first_pfn);
            }
            DmOp::InjectMsi { addr, data } => {
                u.u32(offset_of!(InjectMsi, data), data);
                u.u64(offset_of!(InjectMsi, addr), addr);
            }
            DmOp::RemoteShutdown { reason } => u.u32(offset_of!(RemoteShutdown, reason), reason),
            DmOp::RelocateMemory {
                size,
                src_gfn,
                dst_gfn,
            } => {
                u.u32(offset_of!(RelocateMemory, size), size);
                u.u64(offset_of!(RelocateMemory, src_gfn), src_gfn);
                u.u64(offset_of!(RelocateMemory, dst_gfn), dst_gfn);
            }
            DmOp::PinMemoryCacheattr { start, end, ty } => {
                u.u64(offset_of!(PinMemoryCacheattr, start), start);
                u.u64(offset_of!(PinMemoryCacheattr, end), end);
                u.u32(offset_of!(PinMemoryCacheattr, ty), ty);
            }
            DmOp::NrVcpus { vcpus } => u.u32(offset_of!(NrVcpus, vcpus), vcpus),
        }
        b
    }

    /// Parse the 32 bytes of a `struct xen_dm_op` (the OUT fields after the hypercall, or
    /// what a simulated Xen receives).
    pub fn decode(b: &[u8; DM_OP_SIZE]) -> Result<DmOp, DmOpError> {
        let code = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        let range = || {
            (
                g16(b, offset_of!(IoreqServerRange, id)),
                g32(b, offset_of!(IoreqServerRange, ty)),
                g64(b, offset_of!(IoreqServerRange, start)),
                g64(b, offset_of!(IoreqServerRange, end)),
            )
        };
        Ok(match code {
            XEN_DMOP_CREATE_IOREQ_SERVER => DmOp::CreateIoreqServer {
                handle_bufioreq: g8(b, offset_of!(CreateIoreqServer, handle_bufioreq)),
                id: g16(b, offset_of!(CreateIoreqServer, id)),
            },
            XEN_DMOP_GET_IOREQ_SERVER_INFO => DmOp::GetIoreqServerInfo {
                id: g16(b, offset_of!(GetIoreqServerInfo, id)),
                flags: g16(b, offset_of!(GetIoreqServerInfo, flags)),
                bufioreq_port: g32(b, offset_of!(GetIoreqServerInfo, bufioreq_port)),
                ioreq_gfn: g64(b, offset_of!(GetIoreqServerInfo, ioreq_gfn)),
                bufioreq_gfn: g64(b, offset_of!(GetIoreqServerInfo, bufioreq_gfn)),
            },
            XEN_DMOP_MAP_IO_RANGE_TO_IOREQ_SERVER => {
                let (id, ty, start, end) = range();
                DmOp::MapIoRange { id, ty, start, end }
            }
            XEN_DMOP_UNMAP_IO_RANGE_FROM_IOREQ_SERVER => {
                let (id, ty, start, end) = range();
                DmOp::UnmapIoRange { id, ty, start, end }
            }
            XEN_DMOP_SET_IOREQ_SERVER_STATE => DmOp::SetIoreqServerState {
                id: g16(b, offset_of!(SetIoreqServerState, id)),
                enabled: g8(b, offset_of!(SetIoreqServerState, enabled)) != 0,
            },
            XEN_DMOP_DESTROY_IOREQ_SERVER => DmOp::DestroyIoreqServer {
                id: g16(b, offset_of!(DestroyIoreqServer, id)),
            },
            XEN_DMOP_SET_PCI_INTX_LEVEL => DmOp::SetPciIntxLevel {
                domain: g16(b, offset_of!(SetPciIntxLevel, domain)),
                bus: g8(b, offset_of!(SetPciIntxLevel, bus)),
                device: g8(b, offset_of!(SetPciIntxLevel, device)),
                intx: g8(b, offset_of!(SetPciIntxLevel, intx)),
                level: g8(b, offset_of!(SetPciIntxLevel, level)),
            },
            XEN_DMOP_SET_ISA_IRQ_LEVEL => DmOp::SetIsaIrqLevel {
                irq: g8(b, offset_of!(SetIsaIrqLevel, isa_irq)),
                level: g8(b, offset_of!(SetIsaIrqLevel, level)),
            },
            XEN_DMOP_SET_PCI_LINK_ROUTE => DmOp::SetPciLinkRoute {
                link: g8(b, offset_of!(SetPciLinkRoute, link)),
                irq: g8(b, offset_of!(SetPciLinkRoute, isa_irq)),
            },
            XEN_DMOP_TRACK_DIRTY_VRAM => DmOp::TrackDirtyVram {
                nr: g32(b, offset_of!(TrackDirtyVram, nr)),
                first_pfn: g64(b, offset_of!(TrackDirtyVram, first_pfn)),
            },
            XEN_DMOP_MODIFIED_MEMORY => DmOp::ModifiedMemory {
                nr_extents: g32(b, offset_of!(ModifiedMemory, nr_extents)),
            },
            XEN_DMOP_SET_MEM_TYPE => DmOp::SetMemType {
                nr: g32(b, offset_of!(SetMemType, nr)),
                mem_type: g16(b, offset_of!(SetMemType, mem_type)),
                first_pfn: g64(b, offset_of!(SetMemType, first_pfn)),
            },
            XEN_DMOP_INJECT_MSI => DmOp::InjectMsi {
                data: g32(b, offset_of!(InjectMsi, data)),
                addr: g64(b, offset_of!(InjectMsi, addr)),
            },
            XEN_DMOP_REMOTE_SHUTDOWN => DmOp::RemoteShutdown {
                reason: g32(b, offset_of!(RemoteShutdown, reason)),
            },
            XEN_DMOP_RELOCATE_MEMORY => DmOp::RelocateMemory {
                size: g32(b, offset_of!(RelocateMemory, size)),
                src_gfn: g64(b, offset_of!(RelocateMemory, src_gfn)),
                dst_gfn: g64(b, offset_of!(RelocateMemory, dst_gfn)),
            },
            XEN_DMOP_PIN_MEMORY_CACHEATTR => DmOp::PinMemoryCacheattr {
                start: g64(b, offset_of!(PinMemoryCacheattr, start)),
                end: g64(b, offset_of!(PinMemoryCacheattr, end)),
                ty: g32(b, offset_of!(PinMemoryCacheattr, ty)),
            },
            XEN_DMOP_NR_VCPUS => DmOp::NrVcpus {
                vcpus: g32(b, offset_of!(NrVcpus, vcpus)),
            },
            other => return Err(DmOpError::Unknown(other)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_put_fields_at_the_measured_offsets() {
        let b = DmOp::MapIoRange {
            id: 3,
            ty: XEN_DMOP_IO_RANGE_MEMORY,
            start: 0xA0000,
            end: 0xBFFFF,
        }
        .encode();
        assert_eq!(&b[0..4], &3u32.to_le_bytes());
        assert_eq!(&b[8..10], &3u16.to_le_bytes());
        assert_eq!(&b[12..16], &1u32.to_le_bytes());
        assert_eq!(&b[16..24], &0xA0000u64.to_le_bytes());
        assert_eq!(&b[24..32], &0xBFFFFu64.to_le_bytes());

        let b = DmOp::SetPciIntxLevel {
            domain: 0,
            bus: 0,
            device: 3,
            intx: 1,
            level: 1,
        }
        .encode();
        assert_eq!(&b[0..4], &8u32.to_le_bytes());
        assert_eq!(&b[8..14], &[0, 0, 0, 3, 1, 1]);

        let b = DmOp::SetIsaIrqLevel { irq: 4, level: 1 }.encode();
        assert_eq!((&b[0..4], b[8], b[9]), (&9u32.to_le_bytes()[..], 4, 1));

        let b = DmOp::CreateIoreqServer {
            handle_bufioreq: 2,
            id: 0,
        }
        .encode();
        assert_eq!((b[0], b[8]), (1, 2));

        let b = DmOp::InjectMsi {
            addr: 0xFEE0_0000,
            data: 0x41,
        }
        .encode();
        assert_eq!(&b[8..12], &0x41u32.to_le_bytes());
        assert_eq!(&b[16..24], &0xFEE0_0000u64.to_le_bytes());
    }

    #[test]
    fn every_op_round_trips() {
        let ops = [
            DmOp::CreateIoreqServer {
                handle_bufioreq: 2,
                id: 7,
            },
            DmOp::GetIoreqServerInfo {
                id: 1,
                flags: XEN_DMOP_NO_GFNS,
                bufioreq_port: 33,
                ioreq_gfn: 0xfeff0,
                bufioreq_gfn: 0xfeff1,
            },
            DmOp::MapIoRange {
                id: 1,
                ty: 0,
                start: 0x3f8,
                end: 0x3ff,
            },
            DmOp::UnmapIoRange {
                id: 1,
                ty: 2,
                start: 8,
                end: 8,
            },
            DmOp::SetIoreqServerState {
                id: 1,
                enabled: true,
            },
            DmOp::DestroyIoreqServer { id: 1 },
            DmOp::SetPciIntxLevel {
                domain: 0,
                bus: 0,
                device: 2,
                intx: 0,
                level: 1,
            },
            DmOp::SetIsaIrqLevel { irq: 12, level: 0 },
            DmOp::SetPciLinkRoute { link: 3, irq: 11 },
            DmOp::SetMemType {
                nr: 4,
                mem_type: 1,
                first_pfn: 0xc0,
            },
            DmOp::InjectMsi {
                addr: 0xFEE0_1000,
                data: 0x4041,
            },
            DmOp::RemoteShutdown { reason: 1 },
            DmOp::RelocateMemory {
                size: 16,
                src_gfn: 1,
                dst_gfn: 2,
            },
            DmOp::PinMemoryCacheattr {
                start: 5,
                end: 9,
                ty: 6,
            },
            DmOp::NrVcpus { vcpus: 4 },
            DmOp::TrackDirtyVram {
                first_pfn: 0xf0000,
                nr: 2048,
            },
            DmOp::ModifiedMemory { nr_extents: 3 },
        ];
        for op in ops {
            assert_eq!(DmOp::decode(&op.encode()), Ok(op));
        }
        let mut junk = [0u8; DM_OP_SIZE];
        junk[0] = 99;
        assert_eq!(DmOp::decode(&junk), Err(DmOpError::Unknown(99)));
    }
}
