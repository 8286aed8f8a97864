//! Xen's device-model ABI: the ioreq structures shared with the hypervisor, the DM-op
//! hypercall arguments and the privcmd / evtchn ioctls, laid out as Xen's public headers
//! (Xen 4.17, Linux 6.1 UAPI) define them on x86_64.
//!
//! Every type is `#[repr(C)]` with compile-time size and offset assertions against the values
//! measured from the real headers (docs/XEN-DM-SPEC.md sections 1-2). Memory shared with Xen is
//! never reached through these structs by reference: [`pages`] reads and writes it through
//! atomics and volatile accesses only.

pub mod dmop;
pub mod ioctl;
pub mod pages;

use std::mem::{offset_of, size_of};

/// Xen's page size on x86; the ioreq pages and foreign mappings are in these units.
pub const PAGE_SIZE: usize = 4096;
pub const PAGE_SHIFT: u32 = 12;

/// `dir`: the guest writes; the device model consumes `data`.
pub const IOREQ_WRITE: u8 = 0;
/// `dir`: the guest reads; the device model produces `data`.
pub const IOREQ_READ: u8 = 1;

pub const STATE_IOREQ_NONE: u8 = 0;
pub const STATE_IOREQ_READY: u8 = 1;
pub const STATE_IOREQ_INPROCESS: u8 = 2;
pub const STATE_IORESP_READY: u8 = 3;

pub const IOREQ_TYPE_PIO: u8 = 0;
pub const IOREQ_TYPE_COPY: u8 = 1;
pub const IOREQ_TYPE_PCI_CONFIG: u8 = 2;
pub const IOREQ_TYPE_TIMEOFFSET: u8 = 7;
pub const IOREQ_TYPE_INVALIDATE: u8 = 8;

/// Slots in the buffered ring.
pub const IOREQ_BUFFER_SLOT_NUM: u32 = 511;

pub const HVM_IOREQSRV_BUFIOREQ_OFF: u8 = 0;
pub const HVM_IOREQSRV_BUFIOREQ_LEGACY: u8 = 1;
pub const HVM_IOREQSRV_BUFIOREQ_ATOMIC: u8 = 2;

/// `XENMEM_resource_ioreq_server`, the resource type that holds an ioreq server's pages.
pub const XENMEM_RESOURCE_IOREQ_SERVER: u32 = 0;
/// Frame index of the buffered page within the ioreq-server resource.
pub const XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ: u32 = 0;
/// Frame index of the synchronous page (`frame_ioreq(0)`; no other index exists).
pub const XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ: u32 = 1;

pub const DOMID_SELF: u16 = 0x7FF0;
pub const DOMID_INVALID: u16 = 0x7FF4;

/// `SHUTDOWN_*` reasons for `XEN_DMOP_remote_shutdown` (public/sched.h).
pub const SHUTDOWN_POWEROFF: u32 = 0;
pub const SHUTDOWN_REBOOT: u32 = 1;
pub const SHUTDOWN_SUSPEND: u32 = 2;
pub const SHUTDOWN_CRASH: u32 = 3;

/// Byte 30 of `ioreq_t`: the C bitfields `state:4, data_is_ptr:1, dir:1, df:1, pad:1`.
pub const IOREQ_FLAG_STATE_MASK: u8 = 0x0F;
pub const IOREQ_FLAG_DATA_IS_PTR: u8 = 0x10;
pub const IOREQ_FLAG_DIR_READ: u8 = 0x20;
pub const IOREQ_FLAG_DF: u8 = 0x40;

/// `ioreq_t`: one synchronous request. A plain value here; the copy in the shared page is
/// reached only through [`pages::IoreqSlot`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoReq {
    /// Port (PIO), guest-physical address (COPY), or SBDF << 32 | register (PCI_CONFIG).
    pub addr: u64,
    /// The value, or the guest-physical address of a buffer when `data_is_ptr`.
    pub data: u64,
    pub count: u32,
    pub size: u32,
    /// Xen's (remote) event-channel port for this vCPU's slot.
    pub vp_eport: u32,
    pub pad0: u16,
    /// `state | data_is_ptr << 4 | dir << 5 | df << 6`.
    pub flags: u8,
    pub ty: u8,
}

const _: () = {
    assert!(size_of::<IoReq>() == 32);
    assert!(offset_of!(IoReq, addr) == 0);
    assert!(offset_of!(IoReq, data) == 8);
    assert!(offset_of!(IoReq, count) == 16);
    assert!(offset_of!(IoReq, size) == 20);
    assert!(offset_of!(IoReq, vp_eport) == 24);
    assert!(offset_of!(IoReq, pad0) == 28);
    assert!(offset_of!(IoReq, flags) == 30);
    assert!(offset_of!(IoReq, ty) == 31);
};

impl IoReq {
    /// A request as Xen would post it (state NONE; the poster sets READY).
    pub fn new(ty: u8, read: bool, addr: u64, size: u32, data: u64) -> IoReq {
        IoReq {
            addr,
            data,
            count: 1,
            size,
            vp_eport: 0,
            pad0: 0,
            flags: if read { IOREQ_FLAG_DIR_READ } else { 0 },
            ty,
        }
    }

    /// Repeat `count` times (rep prefix).
    pub fn with_count(mut self, count: u32) -> IoReq {
        self.count = count;
        self
    }

    /// `data` is a guest-physical buffer address.
    pub fn with_data_is_ptr(mut self, on: bool) -> IoReq {
        self.set_flag(IOREQ_FLAG_DATA_IS_PTR, on);
        self
    }

    /// Step downwards (EFLAGS.DF set).
    pub fn with_df(mut self, on: bool) -> IoReq {
        self.set_flag(IOREQ_FLAG_DF, on);
        self
    }

    fn set_flag(&mut self, flag: u8, on: bool) {
        if on {
            self.flags |= flag;
        } else {
            self.flags &= !flag;
        }
    }

    pub fn state(&self) -> u8 {
        self.flags & IOREQ_FLAG_STATE_MASK
    }

    pub fn data_is_ptr(&self) -> bool {
        self.flags & IOREQ_FLAG_DATA_IS_PTR != 0
    }

    pub fn is_read(&self) -> bool {
        self.flags & IOREQ_FLAG_DIR_READ != 0
    }

    pub fn dir(&self) -> u8 {
        if self.is_read() {
            IOREQ_READ
        } else {
            IOREQ_WRITE
        }
    }

    pub fn df(&self) -> bool {
        self.flags & IOREQ_FLAG_DF != 0
    }

    /// For PCI_CONFIG: `segment << 16 | bus << 8 | device << 3 | function`.
    pub fn pci_sbdf(&self) -> u32 {
        (self.addr >> 32) as u32
    }

    /// For PCI_CONFIG: the register offset.
    pub fn pci_reg(&self) -> u32 {
        self.addr as u32
    }
}

/// `XEN_DMOP_PCI_SBDF(s, b, d, f)`.
pub const fn pci_sbdf(segment: u16, bus: u8, device: u8, function: u8) -> u32 {
    (segment as u32) << 16
        | (bus as u32) << 8
        | ((device & 0x1F) as u32) << 3
        | (function & 7) as u32
}

/// `buf_ioreq_t`: `u8 type; u8 pad:1, dir:1, size:2; u32 addr:20; u32 data`, which GCC packs
/// into one little-endian word (`type` in bits 0-7, `dir` bit 9, size code bits 10-11, `addr`
/// bits 12-31) followed by `data`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BufIoReq {
    pub w0: u32,
    pub data: u32,
}

const _: () = {
    assert!(size_of::<BufIoReq>() == 8);
    assert!(offset_of!(BufIoReq, data) == 4);
};

/// The largest address a buffered request can carry (20 bits).
pub const BUF_IOREQ_MAX_ADDR: u32 = 0xF_FFFF;

impl BufIoReq {
    /// Encode; `size_code` is log2 of the size (0-3), `addr` is cut to 20 bits.
    pub const fn new(ty: u8, read: bool, size_code: u8, addr: u32, data: u32) -> BufIoReq {
        BufIoReq {
            w0: ty as u32
                | (read as u32) << 9
                | ((size_code & 3) as u32) << 10
                | (addr & BUF_IOREQ_MAX_ADDR) << 12,
            data,
        }
    }

    pub const fn ty(self) -> u8 {
        self.w0 as u8
    }

    pub const fn is_read(self) -> bool {
        (self.w0 >> 9) & 1 != 0
    }

    pub const fn size_code(self) -> u8 {
        ((self.w0 >> 10) & 3) as u8
    }

    /// The access size in bytes: 1, 2, 4 or 8.
    pub const fn size(self) -> u32 {
        1 << self.size_code()
    }

    pub const fn addr(self) -> u32 {
        self.w0 >> 12
    }
}

/// `buffered_iopage_t`, for its layout; reached through [`pages::BufferedPage`].
#[repr(C)]
pub struct BufferedIoPage {
    pub read_pointer: u32,
    pub write_pointer: u32,
    pub buf_ioreq: [BufIoReq; IOREQ_BUFFER_SLOT_NUM as usize],
}

const _: () = {
    assert!(size_of::<BufferedIoPage>() == PAGE_SIZE);
    assert!(offset_of!(BufferedIoPage, read_pointer) == 0);
    assert!(offset_of!(BufferedIoPage, write_pointer) == 4);
    assert!(offset_of!(BufferedIoPage, buf_ioreq) == 8);
};

/// vCPU slots in the synchronous page (`shared_iopage_t` is `ioreq_t vcpu_ioreq[]` filling one
/// page, indexed by vCPU id).
pub const MAX_VCPU_SLOTS: usize = PAGE_SIZE / size_of::<IoReq>();
const _: () = assert!(MAX_VCPU_SLOTS == 128);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioreq_flag_bits_match_the_measured_bitfield_byte() {
        // state=0xf -> 0x0f, data_is_ptr -> 0x10, dir -> 0x20, df -> 0x40 (spec 1.2).
        let r = IoReq::new(IOREQ_TYPE_PIO, true, 0, 1, 0)
            .with_data_is_ptr(true)
            .with_df(true);
        assert_eq!(r.flags, 0x70);
        assert!(r.is_read() && r.data_is_ptr() && r.df());
        assert_eq!(r.dir(), IOREQ_READ);
        let w = IoReq::new(IOREQ_TYPE_COPY, false, 0, 4, 0);
        assert_eq!(w.flags, 0);
        assert_eq!(w.dir(), IOREQ_WRITE);
    }

    #[test]
    fn buf_ioreq_packing_matches_gcc() {
        // Measured: size=3 -> byte1 = 0x0c; addr=0x12345 -> bytes 1..3 = 50 34 12.
        let b = BufIoReq::new(0, false, 3, 0, 0);
        assert_eq!(b.w0.to_le_bytes()[1], 0x0c);
        let b = BufIoReq::new(1, false, 0, 0x12345, 0xdead_beef);
        assert_eq!(&b.w0.to_le_bytes()[1..4], &[0x50, 0x34, 0x12]);
        assert_eq!(
            (b.ty(), b.addr(), b.size(), b.data),
            (1, 0x12345, 1, 0xdead_beef)
        );
        let r = BufIoReq::new(7, true, 2, 0xF_FFFF, 0);
        assert_eq!(
            (r.ty(), r.is_read(), r.size(), r.addr()),
            (7, true, 4, 0xF_FFFF)
        );
    }

    #[test]
    fn sbdf_helper_matches_the_header_macro() {
        assert_eq!(pci_sbdf(0, 0, 1, 0), 0x08);
        assert_eq!(pci_sbdf(1, 2, 31, 7), 0x1_02FF);
        let r = IoReq::new(IOREQ_TYPE_PCI_CONFIG, true, (0x08u64 << 32) | 0x60, 1, 0);
        assert_eq!((r.pci_sbdf(), r.pci_reg()), (0x08, 0x60));
    }

    #[test]
    fn constants_agree_with_xen_sys() {
        assert_eq!(SHUTDOWN_POWEROFF, xen_sys::SHUTDOWN_poweroff);
        assert_eq!(SHUTDOWN_REBOOT, xen_sys::SHUTDOWN_reboot);
        assert_eq!(SHUTDOWN_CRASH, xen_sys::SHUTDOWN_crash);
        assert_eq!(dmop::HYPERVISOR_DM_OP, xen_sys::__HYPERVISOR_dm_op);
    }
}
