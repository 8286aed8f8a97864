//! The real transport: `/dev/xen/privcmd` (DM_OP, MMAP_RESOURCE, MMAPBATCH_V2, RESTRICT) and
//! `/dev/xen/evtchn`, as libxendevicemodel, libxenforeignmemory and libxenevtchn use them on
//! Linux (docs/XEN-DM-SPEC.md 2.2-2.8). Compile-tested only off Xen; exercised on the testbed.

use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::time::Duration;

use log::{debug, warn};

use super::os::{self, MappedRegion};
use super::{DomId, ForeignMapping, Transport, TransportError};
use crate::abi::PAGE_SIZE;
use crate::abi::ioctl::{
    DM_OP_MAX_BUFS, EvtchnBindInterdomain, EvtchnPort, EvtchnRestrictDomid,
    IOCTL_EVTCHN_BIND_INTERDOMAIN, IOCTL_EVTCHN_NOTIFY, IOCTL_EVTCHN_RESTRICT_DOMID,
    IOCTL_EVTCHN_UNBIND, IOCTL_PRIVCMD_DM_OP, IOCTL_PRIVCMD_MMAP_RESOURCE,
    IOCTL_PRIVCMD_MMAPBATCH_V2, IOCTL_PRIVCMD_RESTRICT, PrivcmdDmOp, PrivcmdDmOpBuf,
    PrivcmdMmapBatchV2, PrivcmdMmapResource,
};

/// How long to keep retrying frames Xen reports as paged out (ENOENT), in 100 µs steps.
const PAGED_RETRIES: u32 = 10_000;

/// Handles on privcmd and evtchn for one device-model process.
pub struct XenTransport {
    privcmd: OwnedFd,
    evtchn: OwnedFd,
}

/// `ioctl(fd, request, arg)`, returning the (non-negative) result or errno.
///
/// # Safety
/// `arg` must point to the argument struct `request` expects, and every user pointer inside
/// it must be valid for the access the kernel makes, for the duration of the call.
unsafe fn ioctl<T>(fd: BorrowedFd<'_>, request: u32, arg: *mut T) -> io::Result<i32> {
    // SAFETY: forwarded from the caller's contract.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), libc::c_ulong::from(request), arg) };
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

fn open(path: &str, flags: i32) -> io::Result<OwnedFd> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | flags)
        .open(path)
        .map(OwnedFd::from)
}

impl XenTransport {
    /// Open `/dev/xen/privcmd` (falling back to `/proc/xen/privcmd`) and `/dev/xen/evtchn`
    /// (non-blocking, for the event loop).
    pub fn open() -> Result<XenTransport, TransportError> {
        let privcmd = match open("/dev/xen/privcmd", 0) {
            Ok(fd) => fd,
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::ENOENT) | Some(libc::ENXIO) | Some(libc::ENODEV)
                ) =>
            {
                open("/proc/xen/privcmd", 0)
                    .map_err(|e| TransportError::os("open /dev/xen/privcmd", e))?
            }
            Err(e) => return Err(TransportError::os("open /dev/xen/privcmd", e)),
        };
        let evtchn = open("/dev/xen/evtchn", libc::O_NONBLOCK)
            .map_err(|e| TransportError::os("open /dev/xen/evtchn", e))?;
        Ok(XenTransport { privcmd, evtchn })
    }

    /// Re-issue MMAPBATCH_V2 for each run of frames still reported paged out; returns how
    /// many were.
    fn retry_paged(
        &self,
        domid: DomId,
        region: &MappedRegion,
        gfns: &[u64],
        errors: &mut [i32],
    ) -> Result<usize, TransportError> {
        let mut paged = 0;
        let mut i = 0;
        while i < gfns.len() {
            if errors[i] != -libc::ENOENT {
                i += 1;
                continue;
            }
            let start = i;
            while i < gfns.len() && errors[i] == -libc::ENOENT {
                i += 1;
            }
            paged += i - start;
            let mut batch = PrivcmdMmapBatchV2 {
                num: (i - start) as u32,
                dom: domid,
                pad: 0,
                addr: region.addr() + (start * PAGE_SIZE) as u64,
                arr: gfns[start..].as_ptr() as u64,
                err: errors[start..].as_mut_ptr() as u64,
            };
            // SAFETY: the batch names `num` GFNs and `num` error slots inside live slices,
            // and a range of our privcmd mapping left unmapped by the previous attempt.
            match unsafe { ioctl(self.privcmd.as_fd(), IOCTL_PRIVCMD_MMAPBATCH_V2, &mut batch) } {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
                Err(e) => return Err(TransportError::os("MMAPBATCH_V2 (paged retry)", e)),
            }
        }
        Ok(paged)
    }
}

impl Transport for XenTransport {
    fn dm_op(
        &self,
        domid: DomId,
        op: &mut [u8; 32],
        extra: &mut [&mut [u8]],
    ) -> Result<(), TransportError> {
        if extra.len() + 1 > DM_OP_MAX_BUFS {
            return Err(TransportError::errno("DM_OP", libc::E2BIG));
        }
        let mut bufs = Vec::with_capacity(extra.len() + 1);
        bufs.push(PrivcmdDmOpBuf {
            uptr: op.as_mut_ptr() as u64,
            size: op.len() as u64,
        });
        for b in extra.iter_mut() {
            bufs.push(PrivcmdDmOpBuf {
                uptr: b.as_mut_ptr() as u64,
                size: b.len() as u64,
            });
        }
        let mut arg = PrivcmdDmOp {
            dom: domid,
            num: bufs.len() as u16,
            pad: 0,
            ubufs: bufs.as_mut_ptr() as u64,
        };
        // SAFETY: `arg` points at `num` buffer descriptors, each naming a live, exclusively
        // borrowed byte slice of the stated size, which the kernel may read and write.
        unsafe { ioctl(self.privcmd.as_fd(), IOCTL_PRIVCMD_DM_OP, &mut arg) }
            .map_err(|e| TransportError::os("DM_OP", e))?;
        Ok(())
    }

    fn map_resource(
        &self,
        domid: DomId,
        kind: u32,
        id: u32,
        first: u32,
        count: usize,
    ) -> Result<MappedRegion, TransportError> {
        let len = count
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| TransportError::errno("MMAP_RESOURCE", libc::EINVAL))?;
        let region = MappedRegion::map_shared(self.privcmd.as_fd(), len, 0)
            .map_err(|e| TransportError::os("mmap privcmd for MMAP_RESOURCE", e))?;
        let mut arg = PrivcmdMmapResource {
            dom: domid,
            pad: 0,
            ty: kind,
            id,
            idx: first,
            num: count as u64,
            addr: region.addr(),
        };
        // SAFETY: `arg.addr` is the start of a privcmd mapping of exactly `num` pages that we
        // own; on failure the mapping is dropped (munmap), as libxenforeignmemory does.
        unsafe { ioctl(self.privcmd.as_fd(), IOCTL_PRIVCMD_MMAP_RESOURCE, &mut arg) }
            .map_err(|e| TransportError::os("MMAP_RESOURCE", e))?;
        Ok(region)
    }

    fn map_foreign(&self, domid: DomId, gfns: &[u64]) -> Result<ForeignMapping, TransportError> {
        let len = gfns
            .len()
            .checked_mul(PAGE_SIZE)
            .ok_or_else(|| TransportError::errno("MMAPBATCH_V2", libc::EINVAL))?;
        let num = u32::try_from(gfns.len())
            .map_err(|_| TransportError::errno("MMAPBATCH_V2", libc::EINVAL))?;
        let region = MappedRegion::map_shared(self.privcmd.as_fd(), len, 0)
            .map_err(|e| TransportError::os("mmap privcmd for MMAPBATCH_V2", e))?;
        let mut errors = vec![0i32; gfns.len()];
        let mut batch = PrivcmdMmapBatchV2 {
            num,
            dom: domid,
            pad: 0,
            addr: region.addr(),
            arr: gfns.as_ptr() as u64,
            err: errors.as_mut_ptr() as u64,
        };
        // SAFETY: `arr` and `err` are live slices of `num` entries; `addr` is the start of a
        // fresh privcmd mapping of `num` pages that we own.
        match unsafe { ioctl(self.privcmd.as_fd(), IOCTL_PRIVCMD_MMAPBATCH_V2, &mut batch) } {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                let mut tries = 0;
                loop {
                    std::thread::sleep(Duration::from_micros(100));
                    let paged = self.retry_paged(domid, &region, gfns, &mut errors)?;
                    tries += 1;
                    if paged == 0 {
                        break;
                    }
                    if tries >= PAGED_RETRIES {
                        warn!("dom{domid}: {paged} guest frame(s) stayed paged out; left unmapped");
                        break;
                    }
                }
            }
            Err(e) => return Err(TransportError::os("MMAPBATCH_V2", e)),
        }
        let bad = errors.iter().filter(|&&e| e != 0).count();
        if bad > 0 {
            debug!(
                "dom{domid}: {bad} of {} frame(s) from gfn {:#x} not mapped",
                gfns.len(),
                gfns.first().copied().unwrap_or(0)
            );
        }
        Ok(ForeignMapping { region, errors })
    }

    fn bind_interdomain(&self, domid: DomId, remote_port: u32) -> Result<u32, TransportError> {
        let mut arg = EvtchnBindInterdomain {
            remote_domain: u32::from(domid),
            remote_port,
        };
        // SAFETY: `arg` is the struct this request takes; the result is the local port.
        let port = unsafe { ioctl(self.evtchn.as_fd(), IOCTL_EVTCHN_BIND_INTERDOMAIN, &mut arg) }
            .map_err(|e| TransportError::os("EVTCHN_BIND_INTERDOMAIN", e))?;
        Ok(port as u32)
    }

    fn unbind(&self, port: u32) -> Result<(), TransportError> {
        let mut arg = EvtchnPort { port };
        // SAFETY: `arg` is the struct this request takes.
        unsafe { ioctl(self.evtchn.as_fd(), IOCTL_EVTCHN_UNBIND, &mut arg) }
            .map_err(|e| TransportError::os("EVTCHN_UNBIND", e))?;
        Ok(())
    }

    fn notify(&self, port: u32) -> Result<(), TransportError> {
        let mut arg = EvtchnPort { port };
        // SAFETY: `arg` is the struct this request takes.
        unsafe { ioctl(self.evtchn.as_fd(), IOCTL_EVTCHN_NOTIFY, &mut arg) }
            .map_err(|e| TransportError::os("EVTCHN_NOTIFY", e))?;
        Ok(())
    }

    fn unmask(&self, port: u32) -> Result<(), TransportError> {
        os::write_u32(self.evtchn.as_fd(), port).map_err(|e| TransportError::os("evtchn unmask", e))
    }

    fn pending(&self, out: &mut [u32]) -> Result<usize, TransportError> {
        os::read_u32s(self.evtchn.as_fd(), out).map_err(|e| TransportError::os("evtchn read", e))
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.evtchn.as_fd()
    }

    fn restrict(&self, domid: DomId) -> Result<(), TransportError> {
        let mut dom = domid;
        // SAFETY: RESTRICT takes a pointer to a domid_t.
        unsafe { ioctl(self.privcmd.as_fd(), IOCTL_PRIVCMD_RESTRICT, &mut dom) }
            .map_err(|e| TransportError::os("PRIVCMD_RESTRICT", e))?;
        let mut arg = EvtchnRestrictDomid { domid };
        // SAFETY: `arg` is the struct this request takes.
        unsafe { ioctl(self.evtchn.as_fd(), IOCTL_EVTCHN_RESTRICT_DOMID, &mut arg) }
            .map_err(|e| TransportError::os("EVTCHN_RESTRICT_DOMID", e))?;
        Ok(())
    }
}
