//! The small set of OS primitives the transports need (mmap, memfd, eventfd, epoll, poll),
//! wrapped once so that `unsafe` lives here and in the privcmd ioctls only.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64};
use std::time::Duration;

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A mapping shared with another party (Xen, the guest, or a simulated Xen): it may change at
/// any time, so it is only ever read and written through atomics and volatile accesses, never
/// through references to plain data. Unmapped on drop.
#[derive(Debug)]
pub struct MappedRegion {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the region is plain shared memory; every access goes through atomics or volatile
// reads/writes of bounds-checked addresses, which are sound from any thread.
unsafe impl Send for MappedRegion {}
// SAFETY: as above; no method hands out references to non-atomic data.
unsafe impl Sync for MappedRegion {}

impl Drop for MappedRegion {
    fn drop(&mut self) {
        // SAFETY: `ptr`/`len` describe a mapping this value created and still owns; nothing
        // borrowed from it outlives `self` (accessor references are tied to `&self`).
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

impl MappedRegion {
    fn mmap(
        len: usize,
        flags: libc::c_int,
        fd: RawFd,
        offset: u64,
        prot: libc::c_int,
    ) -> io::Result<MappedRegion> {
        if len == 0 {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: a fresh mapping at an address the kernel chooses; it aliases no Rust object.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, offset) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).ok_or_else(|| io::Error::other("mmap gave NULL"))?;
        Ok(MappedRegion { ptr, len })
    }

    /// `mmap(NULL, len, PROT_READ|PROT_WRITE, MAP_SHARED, fd, offset)`.
    pub fn map_shared(fd: BorrowedFd<'_>, len: usize, offset: u64) -> io::Result<MappedRegion> {
        Self::mmap(
            len,
            libc::MAP_SHARED,
            fd.as_raw_fd(),
            offset,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    }

    /// Private zero-filled memory (a placeholder a simulated foreign mapping is built in).
    pub fn map_anonymous(len: usize) -> io::Result<MappedRegion> {
        Self::mmap(
            len,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    }

    /// Replace `len` bytes at `at` inside this region by a shared mapping of `fd` at `offset`.
    pub fn map_fixed(
        &self,
        at: usize,
        fd: BorrowedFd<'_>,
        offset: u64,
        len: usize,
    ) -> io::Result<()> {
        let end = at.checked_add(len).filter(|&e| e <= self.len);
        if end.is_none() || len == 0 || !at.is_multiple_of(crate::abi::PAGE_SIZE) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        let offset = libc::off_t::try_from(offset)
            .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        // SAFETY: the target lies wholly inside this region (checked above), which we own;
        // replacing pages of it changes what the region holds, not Rust-visible memory, since
        // every access to the region is volatile or atomic.
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().add(at).cast(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                fd.as_raw_fd(),
                offset,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The start address, for ioctls that fill the mapping (privcmd).
    pub(crate) fn addr(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    fn at(&self, off: usize, size: usize) -> Option<*mut u8> {
        let end = off.checked_add(size)?;
        if end > self.len || !off.is_multiple_of(size.clamp(1, 8)) && size <= 8 {
            return None;
        }
        // SAFETY: `off + size <= len`, so the pointer stays inside the mapping.
        Some(unsafe { self.ptr.as_ptr().add(off) })
    }

    pub fn atomic_u8(&self, off: usize) -> Option<&AtomicU8> {
        let p = self.at(off, 1)?;
        // SAFETY: in bounds, alignment 1, valid for the lifetime of `&self`; the memory is
        // only accessed atomically or volatilely.
        Some(unsafe { AtomicU8::from_ptr(p) })
    }

    /// `off` must be 4-byte aligned.
    pub fn atomic_u32(&self, off: usize) -> Option<&AtomicU32> {
        let p = self.at(off, 4)?;
        // SAFETY: in bounds and 4-aligned (the mapping is page-aligned and `at` checked
        // `off`), valid while `&self` lives.
        Some(unsafe { AtomicU32::from_ptr(p.cast()) })
    }

    /// `off` must be 8-byte aligned.
    pub fn atomic_u64(&self, off: usize) -> Option<&AtomicU64> {
        let p = self.at(off, 8)?;
        // SAFETY: in bounds and 8-aligned, valid while `&self` lives.
        Some(unsafe { AtomicU64::from_ptr(p.cast()) })
    }

    pub fn read_u16(&self, off: usize) -> Option<u16> {
        let p = self.at(off, 2)?;
        // SAFETY: in bounds and aligned; volatile because the other side may write it.
        Some(unsafe { p.cast::<u16>().read_volatile() })
    }

    pub fn read_u32(&self, off: usize) -> Option<u32> {
        let p = self.at(off, 4)?;
        // SAFETY: in bounds and aligned; volatile because the other side may write it.
        Some(unsafe { p.cast::<u32>().read_volatile() })
    }

    pub fn read_u64(&self, off: usize) -> Option<u64> {
        let p = self.at(off, 8)?;
        // SAFETY: in bounds and aligned; volatile because the other side may write it.
        Some(unsafe { p.cast::<u64>().read_volatile() })
    }

    pub fn write_u16(&self, off: usize, v: u16) -> Option<()> {
        let p = self.at(off, 2)?;
        // SAFETY: in bounds and aligned.
        unsafe { p.cast::<u16>().write_volatile(v) };
        Some(())
    }

    pub fn write_u32(&self, off: usize, v: u32) -> Option<()> {
        let p = self.at(off, 4)?;
        // SAFETY: in bounds and aligned.
        unsafe { p.cast::<u32>().write_volatile(v) };
        Some(())
    }

    pub fn write_u64(&self, off: usize, v: u64) -> Option<()> {
        let p = self.at(off, 8)?;
        // SAFETY: in bounds and aligned.
        unsafe { p.cast::<u64>().write_volatile(v) };
        Some(())
    }

    fn span(&self, off: usize, len: usize) -> Option<*mut u8> {
        let end = off.checked_add(len)?;
        if end > self.len {
            return None;
        }
        // SAFETY: `off <= len`.
        Some(unsafe { self.ptr.as_ptr().add(off) })
    }

    /// Volatile copy out of the region; `false` if the range is outside it.
    pub fn read_bytes(&self, off: usize, buf: &mut [u8]) -> bool {
        let Some(p) = self.span(off, buf.len()) else {
            return false;
        };
        let mut i = 0;
        while i < buf.len() {
            // SAFETY: `p + i` stays below `p + buf.len()`, inside the region; 8-byte reads
            // are only issued at 8-aligned addresses with 8 bytes left.
            unsafe {
                let q = p.add(i);
                if (q as usize).is_multiple_of(8) && buf.len() - i >= 8 {
                    let v = q.cast::<u64>().read_volatile();
                    buf[i..i + 8].copy_from_slice(&v.to_ne_bytes());
                    i += 8;
                } else {
                    buf[i] = q.read_volatile();
                    i += 1;
                }
            }
        }
        true
    }

    /// Volatile copy into the region; `false` if the range is outside it.
    pub fn write_bytes(&self, off: usize, buf: &[u8]) -> bool {
        let Some(p) = self.span(off, buf.len()) else {
            return false;
        };
        let mut i = 0;
        while i < buf.len() {
            // SAFETY: as in `read_bytes`.
            unsafe {
                let q = p.add(i);
                if (q as usize).is_multiple_of(8) && buf.len() - i >= 8 {
                    let mut v = [0u8; 8];
                    v.copy_from_slice(&buf[i..i + 8]);
                    q.cast::<u64>().write_volatile(u64::from_ne_bytes(v));
                    i += 8;
                } else {
                    q.write_volatile(buf[i]);
                    i += 1;
                }
            }
        }
        true
    }
}

/// An anonymous memory file of `len` bytes (shared pages and guest RAM for the simulator).
pub fn memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    let cname =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `cname` is a valid NUL-terminated string for the duration of the call.
    let fd = check(unsafe { libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC) })?;
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain syscall on an fd we own.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len) })?;
    Ok(fd)
}

/// A non-blocking eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall.
    let fd = check(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })?;
    // SAFETY: a fresh fd owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add one to an eventfd's counter.
pub fn eventfd_signal(fd: BorrowedFd<'_>) -> io::Result<()> {
    let one = 1u64.to_ne_bytes();
    // SAFETY: writes 8 bytes from a live local buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), 8) };
    if n == 8 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Read and clear an eventfd's counter; 0 when it was not signalled.
pub fn eventfd_take(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut buf = [0u8; 8];
    // SAFETY: reads at most 8 bytes into a live local buffer.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
    if n == 8 {
        return Ok(u64::from_ne_bytes(buf));
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(0)
    } else {
        Err(e)
    }
}

/// Wait until `fd` is readable or `timeout` passes (`None`: forever); `true` if readable.
pub fn wait_readable(fd: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<bool> {
    let ms = timeout.map_or(-1, |t| i32::try_from(t.as_millis()).unwrap_or(i32::MAX));
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    loop {
        // SAFETY: one valid pollfd on the stack.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n >= 0 {
            return Ok(n > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Read native-endian u32s (event-channel ports) from a non-blocking fd into `out`; returns
/// how many were read (0 when nothing is pending).
pub fn read_u32s(fd: BorrowedFd<'_>, out: &mut [u32]) -> io::Result<usize> {
    let bytes = std::mem::size_of_val(out);
    // SAFETY: reads at most `bytes` bytes into `out`'s own storage; any bit pattern is a
    // valid u32.
    let n = unsafe { libc::read(fd.as_raw_fd(), out.as_mut_ptr().cast(), bytes) };
    if n >= 0 {
        return Ok(n as usize / 4);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(0)
    } else {
        Err(e)
    }
}

/// Write one native-endian u32 (an evtchn unmask).
pub fn write_u32(fd: BorrowedFd<'_>, v: u32) -> io::Result<()> {
    let b = v.to_ne_bytes();
    // SAFETY: writes 4 bytes from a live local buffer.
    let n = unsafe { libc::write(fd.as_raw_fd(), b.as_ptr().cast(), 4) };
    if n == 4 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// An epoll instance whose registrations are one-shot: a ready fd is reported once and then
/// stays disarmed until [`Epoll::rearm`] (the masking of a delivered event channel).
#[derive(Debug)]
pub struct Epoll {
    fd: OwnedFd,
}

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        // SAFETY: a fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Epoll { fd })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLONESHOT) as u32,
            u64: token,
        };
        // SAFETY: `ev` is a valid epoll_event on the stack.
        check(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) })?;
        Ok(())
    }

    pub fn add(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd.as_raw_fd(), token)
    }

    pub fn rearm(&self, fd: BorrowedFd<'_>, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd.as_raw_fd(), token)
    }

    pub fn remove(&self, fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: a NULL event is allowed for EPOLL_CTL_DEL.
        check(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            )
        })?;
        Ok(())
    }

    /// Tokens of ready registrations, without blocking.
    pub fn ready(&self, out: &mut [u64]) -> io::Result<usize> {
        let mut events = [libc::epoll_event { events: 0, u64: 0 }; 32];
        let max = out.len().min(events.len());
        if max == 0 {
            return Ok(0);
        }
        // SAFETY: `events` has room for `max` entries.
        let n = check(unsafe {
            libc::epoll_wait(self.fd.as_raw_fd(), events.as_mut_ptr(), max as i32, 0)
        })?;
        let n = n as usize;
        for (o, e) in out.iter_mut().zip(&events[..n]) {
            *o = e.u64;
        }
        Ok(n)
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn region_accessors_are_bounds_and_alignment_checked() {
        let r = MappedRegion::map_anonymous(4096).unwrap();
        assert!(r.write_u64(8, 0x1122_3344_5566_7788).is_some());
        assert_eq!(r.read_u32(8), Some(0x5566_7788));
        assert_eq!(r.read_u16(14), Some(0x1122));
        assert!(r.read_u32(4094).is_none());
        assert!(r.read_u32(6).is_none());
        assert!(r.atomic_u8(4096).is_none());
        let mut b = [0u8; 11];
        assert!(r.read_bytes(5, &mut b));
        assert_eq!(&b[3..11], &0x1122_3344_5566_7788u64.to_le_bytes());
        assert!(!r.read_bytes(4090, &mut b));
        assert!(r.write_bytes(4085, &b));
    }

    #[test]
    fn shared_memfd_mappings_see_each_other() {
        let fd = memfd("t", 8192).unwrap();
        let a = MappedRegion::map_shared(fd.as_fd(), 8192, 0).unwrap();
        let b = MappedRegion::map_shared(fd.as_fd(), 4096, 4096).unwrap();
        a.write_u32(4100, 7).unwrap();
        assert_eq!(b.read_u32(4), Some(7));
        let c = MappedRegion::map_anonymous(8192).unwrap();
        c.map_fixed(4096, fd.as_fd(), 0, 4096).unwrap();
        a.write_u32(0, 9).unwrap();
        assert_eq!(c.read_u32(4096), Some(9));
        assert!(c.map_fixed(100, fd.as_fd(), 0, 4096).is_err());
    }

    #[test]
    fn oneshot_epoll_reports_once_until_rearmed() {
        let ep = Epoll::new().unwrap();
        let ev = eventfd().unwrap();
        ep.add(ev.as_fd(), 42).unwrap();
        let mut out = [0u64; 4];
        assert_eq!(ep.ready(&mut out).unwrap(), 0);
        eventfd_signal(ev.as_fd()).unwrap();
        assert_eq!(ep.ready(&mut out).unwrap(), 1);
        assert_eq!(out[0], 42);
        assert_eq!(eventfd_take(ev.as_fd()).unwrap(), 1);
        eventfd_signal(ev.as_fd()).unwrap();
        assert_eq!(ep.ready(&mut out).unwrap(), 0, "masked until rearmed");
        ep.rearm(ev.as_fd(), 42).unwrap();
        assert_eq!(ep.ready(&mut out).unwrap(), 1);
        assert!(wait_readable(ep.as_fd(), Some(Duration::ZERO)).is_ok());
    }
}
