//! Views of the two pages an ioreq server shares with Xen.
//!
//! Ordering (docs/XEN-DM-SPEC.md 1.7, 8.2): the `state` byte is loaded with Acquire ("see
//! READY, then read the request") and stored with Release ("write the response, then the
//! state"); the ring's pointers are loaded with Acquire and `read_pointer` advanced with an
//! atomic read-modify-write. Everything else is a volatile access. On x86 these are plain moves
//! with compiler barriers, which is what Xen's and QEMU's barriers amount to.

use std::mem::offset_of;
use std::sync::atomic::Ordering;

use super::{
    BufIoReq, BufferedIoPage, IOREQ_BUFFER_SLOT_NUM, IOREQ_FLAG_STATE_MASK, IoReq, MAX_VCPU_SLOTS,
    PAGE_SIZE,
};
use crate::transport::os::MappedRegion;

const IOREQ_SIZE: usize = std::mem::size_of::<IoReq>();

/// One vCPU's slot in the synchronous page.
#[derive(Clone, Copy)]
pub struct IoreqSlot<'a> {
    page: &'a MappedRegion,
    base: usize,
}

impl<'a> IoreqSlot<'a> {
    /// Slot `vcpu` of the synchronous page starting at `page_offset` in `region`, if both fit.
    pub fn new(region: &'a MappedRegion, page_offset: usize, vcpu: usize) -> Option<Self> {
        if vcpu >= MAX_VCPU_SLOTS {
            return None;
        }
        let base = page_offset.checked_add(vcpu * IOREQ_SIZE)?;
        if base.checked_add(IOREQ_SIZE)? > region.len() || !page_offset.is_multiple_of(PAGE_SIZE) {
            return None;
        }
        Some(IoreqSlot { page: region, base })
    }

    fn flags_byte(&self) -> u8 {
        self.page
            .atomic_u8(self.base + offset_of!(IoReq, flags))
            .map_or(0, |a| a.load(Ordering::Acquire))
    }

    /// The slot's state (Acquire).
    pub fn state(&self) -> u8 {
        self.flags_byte() & IOREQ_FLAG_STATE_MASK
    }

    /// Store the whole flags byte: `state` in the low nibble, the request's other bits kept
    /// from `req` (Release: everything written before is visible first).
    pub fn set_state(&self, req: &IoReq, state: u8) {
        let byte = (req.flags & !IOREQ_FLAG_STATE_MASK) | (state & IOREQ_FLAG_STATE_MASK);
        if let Some(a) = self.page.atomic_u8(self.base + offset_of!(IoReq, flags)) {
            a.store(byte, Ordering::Release);
        }
    }

    /// Copy the request out (call after seeing READY through [`IoreqSlot::state`]).
    pub fn read(&self) -> IoReq {
        let p = self.page;
        let b = self.base;
        IoReq {
            addr: p.read_u64(b + offset_of!(IoReq, addr)).unwrap_or(0),
            data: p.read_u64(b + offset_of!(IoReq, data)).unwrap_or(0),
            count: p.read_u32(b + offset_of!(IoReq, count)).unwrap_or(0),
            size: p.read_u32(b + offset_of!(IoReq, size)).unwrap_or(0),
            vp_eport: p.read_u32(b + offset_of!(IoReq, vp_eport)).unwrap_or(0),
            pad0: 0,
            flags: self.flags_byte(),
            ty: p
                .atomic_u8(b + offset_of!(IoReq, ty))
                .map_or(0, |a| a.load(Ordering::Relaxed)),
        }
    }

    /// Xen's event-channel port for this slot (valid once the server is enabled).
    pub fn vp_eport(&self) -> u32 {
        self.page
            .read_u32(self.base + offset_of!(IoReq, vp_eport))
            .unwrap_or(0)
    }

    /// The response value (the only field the device model writes besides `state`).
    pub fn set_data(&self, data: u64) {
        self.page
            .write_u64(self.base + offset_of!(IoReq, data), data);
    }

    // ----- Xen's side (the simulator) -----

    /// Xen's half of posting: copy every field in with state NONE, then publish READY.
    pub fn post(&self, req: &IoReq, state: u8) {
        let p = self.page;
        let b = self.base;
        let none = IoReq {
            flags: req.flags & !IOREQ_FLAG_STATE_MASK,
            ..*req
        };
        self.set_state(&none, 0);
        p.write_u64(b + offset_of!(IoReq, addr), req.addr);
        p.write_u64(b + offset_of!(IoReq, data), req.data);
        p.write_u32(b + offset_of!(IoReq, count), req.count);
        p.write_u32(b + offset_of!(IoReq, size), req.size);
        p.write_u16(b + offset_of!(IoReq, pad0), 0);
        if let Some(a) = p.atomic_u8(b + offset_of!(IoReq, ty)) {
            a.store(req.ty, Ordering::Relaxed);
        }
        self.set_state(&none, state);
    }

    /// Xen's half of enabling a server: publish the slot's event-channel port.
    pub fn set_vp_eport(&self, port: u32) {
        self.page
            .write_u32(self.base + offset_of!(IoReq, vp_eport), port);
    }
}

/// The buffered ring page.
#[derive(Clone, Copy)]
pub struct BufferedPage<'a> {
    page: &'a MappedRegion,
    base: usize,
}

const READ_POINTER: usize = offset_of!(BufferedIoPage, read_pointer);
const WRITE_POINTER: usize = offset_of!(BufferedIoPage, write_pointer);
const SLOTS: usize = offset_of!(BufferedIoPage, buf_ioreq);

impl<'a> BufferedPage<'a> {
    pub fn new(region: &'a MappedRegion, page_offset: usize) -> Option<Self> {
        if page_offset.checked_add(PAGE_SIZE)? > region.len()
            || !page_offset.is_multiple_of(PAGE_SIZE)
        {
            return None;
        }
        Some(BufferedPage {
            page: region,
            base: page_offset,
        })
    }

    pub fn read_pointer(&self) -> u32 {
        self.page
            .atomic_u32(self.base + READ_POINTER)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }

    pub fn write_pointer(&self) -> u32 {
        self.page
            .atomic_u32(self.base + WRITE_POINTER)
            .map_or(0, |a| a.load(Ordering::Acquire))
    }

    /// The entry for free-running pointer value `pointer` (slot `pointer % 511`).
    pub fn slot(&self, pointer: u32) -> BufIoReq {
        let off = self.base + SLOTS + (pointer % IOREQ_BUFFER_SLOT_NUM) as usize * 8;
        BufIoReq {
            w0: self.page.read_u32(off).unwrap_or(0),
            data: self.page.read_u32(off + 4).unwrap_or(0),
        }
    }

    /// Consume `n` entries: an atomic add, as Xen (ATOMIC mode) may rebase the pointers with a
    /// cmpxchg at any moment.
    pub fn advance_read_pointer(&self, n: u32) {
        if let Some(a) = self.page.atomic_u32(self.base + READ_POINTER) {
            a.fetch_add(n, Ordering::AcqRel);
        }
    }

    /// Store `read_pointer` outright (resynchronising after a corrupt ring).
    pub fn set_read_pointer(&self, v: u32) {
        if let Some(a) = self.page.atomic_u32(self.base + READ_POINTER) {
            a.store(v, Ordering::Release);
        }
    }

    // ----- Xen's side (the simulator) -----

    pub fn write_slot(&self, pointer: u32, entry: BufIoReq) {
        let off = self.base + SLOTS + (pointer % IOREQ_BUFFER_SLOT_NUM) as usize * 8;
        self.page.write_u32(off, entry.w0);
        self.page.write_u32(off + 4, entry.data);
    }

    pub fn set_write_pointer(&self, v: u32) {
        if let Some(a) = self.page.atomic_u32(self.base + WRITE_POINTER) {
            a.store(v, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{IOREQ_TYPE_PIO, STATE_IOREQ_READY, STATE_IORESP_READY};

    #[test]
    fn slot_fields_land_at_the_abi_offsets() {
        let r = MappedRegion::map_anonymous(PAGE_SIZE).unwrap();
        let slot = IoreqSlot::new(&r, 0, 3).unwrap();
        let req = IoReq::new(IOREQ_TYPE_PIO, true, 0x3f8, 1, 0x55)
            .with_count(2)
            .with_df(true);
        slot.post(&req, STATE_IOREQ_READY);
        let base = 3 * 32;
        assert_eq!(r.read_u64(base), Some(0x3f8));
        assert_eq!(r.read_u64(base + 8), Some(0x55));
        assert_eq!(r.read_u32(base + 16), Some(2));
        assert_eq!(r.read_u32(base + 20), Some(1));
        assert_eq!(
            r.atomic_u8(base + 30).unwrap().load(Ordering::Relaxed),
            0x61
        );
        assert_eq!(slot.state(), STATE_IOREQ_READY);
        let back = slot.read();
        assert_eq!(
            (back.addr, back.data, back.count, back.size),
            (0x3f8, 0x55, 2, 1)
        );
        assert!(back.is_read() && back.df());
        slot.set_data(0xAB);
        slot.set_state(&back, STATE_IORESP_READY);
        assert_eq!(
            r.atomic_u8(base + 30).unwrap().load(Ordering::Relaxed),
            0x63
        );
        assert_eq!(slot.read().data, 0xAB);
        assert!(IoreqSlot::new(&r, 0, 128).is_none());
        assert!(IoreqSlot::new(&r, 4096, 0).is_none());
    }

    #[test]
    fn ring_slots_wrap_at_511() {
        let r = MappedRegion::map_anonymous(PAGE_SIZE).unwrap();
        let ring = BufferedPage::new(&r, 0).unwrap();
        ring.write_slot(511, BufIoReq::new(1, false, 0, 0xA0000, 7));
        assert_eq!(r.read_u32(8 + 4), Some(7));
        ring.write_slot(510, BufIoReq::new(1, false, 0, 0xA0000, 9));
        assert_eq!(r.read_u32(8 + 510 * 8 + 4), Some(9));
        ring.set_write_pointer(3);
        assert_eq!(r.read_u32(4), Some(3));
        ring.advance_read_pointer(2);
        assert_eq!((ring.read_pointer(), ring.write_pointer()), (2, 3));
    }
}
