//! The Linux `/dev/xen/privcmd` and `/dev/xen/evtchn` ioctls (include/uapi/xen/privcmd.h,
//! evtchn.h) on x86_64: request numbers and argument structs, with explicit padding so the
//! layout does not depend on compiler packing.

use std::mem::{offset_of, size_of};

const IOC_NONE: u32 = 0;
const IOC_WRITE: u32 = 1;

/// Linux's `_IOC(dir, type, nr, size)`.
pub const fn ioc(dir: u32, ty: u8, nr: u8, size: usize) -> u32 {
    dir << 30 | (size as u32) << 16 | (ty as u32) << 8 | nr as u32
}

/// `struct privcmd_hypercall`.
#[repr(C)]
pub struct PrivcmdHypercall {
    pub op: u64,
    pub arg: [u64; 5],
}

/// `struct privcmd_dm_op_buf`: a user pointer and a length.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrivcmdDmOpBuf {
    pub uptr: u64,
    pub size: u64,
}

/// `struct privcmd_dm_op`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrivcmdDmOp {
    pub dom: u16,
    pub num: u16,
    pub pad: u32,
    pub ubufs: u64,
}

/// `struct privcmd_mmapbatch_v2`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrivcmdMmapBatchV2 {
    pub num: u32,
    pub dom: u16,
    pub pad: u16,
    pub addr: u64,
    /// `const xen_pfn_t *` (u64 GFNs).
    pub arr: u64,
    /// `int *`: per-page result, 0 or -errno.
    pub err: u64,
}

/// `struct privcmd_mmap_resource`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct PrivcmdMmapResource {
    pub dom: u16,
    pub pad: u16,
    pub ty: u32,
    pub id: u32,
    pub idx: u32,
    pub num: u64,
    pub addr: u64,
}

pub const IOCTL_PRIVCMD_HYPERCALL: u32 = ioc(IOC_NONE, b'P', 0, size_of::<PrivcmdHypercall>());
pub const IOCTL_PRIVCMD_MMAPBATCH_V2: u32 = ioc(IOC_NONE, b'P', 4, size_of::<PrivcmdMmapBatchV2>());
pub const IOCTL_PRIVCMD_DM_OP: u32 = ioc(IOC_NONE, b'P', 5, size_of::<PrivcmdDmOp>());
pub const IOCTL_PRIVCMD_RESTRICT: u32 = ioc(IOC_NONE, b'P', 6, size_of::<u16>());
pub const IOCTL_PRIVCMD_MMAP_RESOURCE: u32 =
    ioc(IOC_NONE, b'P', 7, size_of::<PrivcmdMmapResource>());

/// Linux privcmd's default limits on DM_OP buffers (module parameters).
pub const DM_OP_MAX_BUFS: usize = 16;
pub const DM_OP_MAX_BUF_SIZE: usize = 4096;

/// `struct ioctl_evtchn_bind_interdomain`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvtchnBindInterdomain {
    pub remote_domain: u32,
    pub remote_port: u32,
}

/// `struct ioctl_evtchn_bind_virq`.
#[repr(C)]
pub struct EvtchnBindVirq {
    pub virq: u32,
}

/// `struct ioctl_evtchn_bind_unbound_port`.
#[repr(C)]
pub struct EvtchnBindUnboundPort {
    pub remote_domain: u32,
}

/// `struct ioctl_evtchn_unbind` and `ioctl_evtchn_notify`: a local port.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvtchnPort {
    pub port: u32,
}

/// `struct ioctl_evtchn_restrict_domid`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EvtchnRestrictDomid {
    pub domid: u16,
}

pub const IOCTL_EVTCHN_BIND_VIRQ: u32 = ioc(IOC_NONE, b'E', 0, size_of::<EvtchnBindVirq>());
pub const IOCTL_EVTCHN_BIND_INTERDOMAIN: u32 =
    ioc(IOC_NONE, b'E', 1, size_of::<EvtchnBindInterdomain>());
pub const IOCTL_EVTCHN_BIND_UNBOUND_PORT: u32 =
    ioc(IOC_NONE, b'E', 2, size_of::<EvtchnBindUnboundPort>());
pub const IOCTL_EVTCHN_UNBIND: u32 = ioc(IOC_NONE, b'E', 3, size_of::<EvtchnPort>());
pub const IOCTL_EVTCHN_NOTIFY: u32 = ioc(IOC_NONE, b'E', 4, size_of::<EvtchnPort>());
pub const IOCTL_EVTCHN_RESET: u32 = ioc(IOC_NONE, b'E', 5, 0);
pub const IOCTL_EVTCHN_RESTRICT_DOMID: u32 =
    ioc(IOC_NONE, b'E', 6, size_of::<EvtchnRestrictDomid>());

/// Not used; kept to check `ioc` against an `_IOW` value from the spec.
const IOCTL_PRIVCMD_IRQFD_SIZE: usize = 24;
pub const IOCTL_PRIVCMD_IRQFD: u32 = ioc(IOC_WRITE, b'P', 8, IOCTL_PRIVCMD_IRQFD_SIZE);

const _: () = {
    assert!(size_of::<PrivcmdHypercall>() == 48);
    assert!(size_of::<PrivcmdDmOpBuf>() == 16);
    assert!(size_of::<PrivcmdDmOp>() == 16);
    assert!(offset_of!(PrivcmdDmOp, num) == 2);
    assert!(offset_of!(PrivcmdDmOp, ubufs) == 8);
    assert!(size_of::<PrivcmdMmapBatchV2>() == 32);
    assert!(offset_of!(PrivcmdMmapBatchV2, dom) == 4);
    assert!(offset_of!(PrivcmdMmapBatchV2, addr) == 8);
    assert!(offset_of!(PrivcmdMmapBatchV2, arr) == 16);
    assert!(offset_of!(PrivcmdMmapBatchV2, err) == 24);
    assert!(size_of::<PrivcmdMmapResource>() == 32);
    assert!(offset_of!(PrivcmdMmapResource, ty) == 4);
    assert!(offset_of!(PrivcmdMmapResource, id) == 8);
    assert!(offset_of!(PrivcmdMmapResource, idx) == 12);
    assert!(offset_of!(PrivcmdMmapResource, num) == 16);
    assert!(offset_of!(PrivcmdMmapResource, addr) == 24);
    assert!(size_of::<EvtchnBindInterdomain>() == 8);
    // Request numbers measured from the headers (docs/XEN-DM-SPEC.md 2.2, 2.8).
    assert!(IOCTL_PRIVCMD_HYPERCALL == 0x0030_5000);
    assert!(IOCTL_PRIVCMD_MMAPBATCH_V2 == 0x0020_5004);
    assert!(IOCTL_PRIVCMD_DM_OP == 0x0010_5005);
    assert!(IOCTL_PRIVCMD_RESTRICT == 0x0002_5006);
    assert!(IOCTL_PRIVCMD_MMAP_RESOURCE == 0x0020_5007);
    assert!(IOCTL_PRIVCMD_IRQFD == 0x4018_5008);
    assert!(IOCTL_EVTCHN_BIND_VIRQ == 0x0004_4500);
    assert!(IOCTL_EVTCHN_BIND_INTERDOMAIN == 0x0008_4501);
    assert!(IOCTL_EVTCHN_BIND_UNBOUND_PORT == 0x0004_4502);
    assert!(IOCTL_EVTCHN_UNBIND == 0x0004_4503);
    assert!(IOCTL_EVTCHN_NOTIFY == 0x0004_4504);
    assert!(IOCTL_EVTCHN_RESET == 0x0000_4505);
    assert!(IOCTL_EVTCHN_RESTRICT_DOMID == 0x0002_4506);
};
