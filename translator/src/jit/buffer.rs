//! The code cache: one fixed-size mapping that compiled blocks are appended to.
//!
//! W^X: no mapping of it is ever writable and executable at once. Where the host allows, the
//! cache is a memfd mapped read+execute only, and blocks are copied in and jumps patched with
//! `pwrite` on the memfd: the mapping shares the memfd's pages, so compiled code sees the
//! bytes at once, and nothing in the process can write them through memory. Otherwise (no
//! memfd, or the host refuses executable memfds) it is one anonymous mapping, read+execute,
//! whose pages each write flips to read+write with `mprotect` and back. Two `mprotect` calls
//! per compiled block and per patched jump cost a boot about 8% (each call changes page tables
//! and shoots down the TLBs of the process's other threads); a `pwrite` changes no mapping.
//! (A second, writable mapping would cost no call at all, but it counts every page it touches
//! in the process's resident memory a second time.)
//!
//! When the next block does not fit, the whole cache is flushed: the generation goes up (every
//! `Compiled` handle of the old generation is then stale and never entered again) and
//! appending starts over at offset 0. Memory stays bounded by the mapping size.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr::NonNull;

/// Where a compiled block lives: valid while the buffer's generation is `generation`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Compiled {
    pub generation: u64,
    pub offset: usize,
    /// Offset of the body (past the prologue) from `offset`: where links enter.
    pub body: usize,
    /// Offset of the entry's checks of `Jit::flat` from `offset`, and what they check: a
    /// static link skips them only from a site that knows the same.
    pub check: usize,
    /// Offset of the check a block on two pages makes first when a static site jumps in
    /// (`compile::Compiled::span`); `check` for other blocks.
    pub span: usize,
    pub entry_segs: u8,
    /// The block's direct jumps to successors in its own guest page (see
    /// `compile::StaticSite`), offsets from `offset`.
    pub sites: [Option<super::compile::StaticSite>; super::compile::MAX_SITES],
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("mmap of the code cache failed: {0}")]
    Map(std::io::Error),
    #[error("mprotect of the code cache failed: {0}")]
    Protect(std::io::Error),
    #[error("write into the code cache's memfd failed: {0}")]
    Write(std::io::Error),
    #[error("no jmp rel32 to patch at code cache offset {0:#x}")]
    NotAJump(usize),
}

pub(crate) struct CodeBuffer {
    /// The read+execute mapping compiled code runs from.
    base: NonNull<u8>,
    /// How the code gets written.
    writer: Writer,
    cap: usize,
    used: usize,
    pub(crate) generation: u64,
    /// Flushes so far (for tests and statistics).
    pub(crate) flushes: u64,
}

/// The way into the cache for stores.
enum Writer {
    /// `pwrite` on the memfd the cache maps.
    File(OwnedFd),
    /// `mprotect` around each store.
    Protect,
}

const PAGE: usize = 4096;

/// `MFD_EXEC` (Linux 6.3): asks for an executable memfd where `vm.memfd_noexec` would seal it
/// non-executable by default; older kernels refuse the flag, and are then asked without it.
const MFD_EXEC: libc::c_uint = 0x10;

impl CodeBuffer {
    pub fn new(cap: usize) -> Result<Self, BufferError> {
        let cap = cap.max(PAGE).next_multiple_of(PAGE);
        match Self::memfd(cap) {
            Ok(b) => return Ok(b),
            Err(e) => log::info!("jit: {e}; the code cache is written with mprotect instead"),
        }
        Self::protected(cap)
    }

    /// One anonymous read+execute mapping, written with `mprotect`.
    fn protected(cap: usize) -> Result<Self, BufferError> {
        let base = map(cap, libc::PROT_READ | libc::PROT_EXEC, -1)?;
        Ok(Self::with(base, Writer::Protect, cap))
    }

    /// A memfd mapped read+execute, written with `pwrite`.
    fn memfd(cap: usize) -> Result<Self, BufferError> {
        let name = c"vireo-jit";
        // SAFETY: `name` is a NUL-terminated string; the call only creates a descriptor.
        let mut fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC | MFD_EXEC) };
        if fd < 0 {
            // SAFETY: as above.
            fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        }
        if fd < 0 {
            return Err(BufferError::Map(std::io::Error::last_os_error()));
        }
        // SAFETY: `fd` is the descriptor just created and owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let raw = fd.as_raw_fd();
        // SAFETY: sizing our own fresh memfd.
        if unsafe { libc::ftruncate(raw, cap as libc::off_t) } != 0 {
            return Err(BufferError::Map(std::io::Error::last_os_error()));
        }
        let base = map(cap, libc::PROT_READ | libc::PROT_EXEC, raw)?;
        Ok(Self::with(base, Writer::File(fd), cap))
    }

    fn with(base: NonNull<u8>, writer: Writer, cap: usize) -> Self {
        CodeBuffer {
            base,
            writer,
            cap,
            used: 0,
            generation: 0,
            flushes: 0,
        }
    }

    pub fn capacity(&self) -> usize {
        self.cap
    }

    pub fn used(&self) -> usize {
        self.used
    }

    /// The bytes compiled so far in this generation (for profiling tools).
    pub fn contents(&self) -> &[u8] {
        // SAFETY: [0, used) lies inside our mapping, which is always readable; it is only
        // written through `&mut self`, so not while this borrow lives.
        unsafe { std::slice::from_raw_parts(self.base.as_ptr(), self.used) }
    }

    /// Host address of offset `off` (for the entry call and for position-dependent code).
    pub fn addr(&self, off: usize) -> usize {
        self.base.as_ptr() as usize + off
    }

    /// The offset the next block will be placed at, if `len` bytes still fit.
    pub fn next_offset(&self, len: usize) -> Option<usize> {
        let off = self.used.next_multiple_of(16);
        (off + len <= self.cap).then_some(off)
    }

    /// Forget every compiled block.
    pub fn flush(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.flushes += 1;
        self.used = 0;
        // Give the pages back to the host; the mapping stays (now zero-filled). Nothing runs
        // from it while the CPU compiles.
        match &self.writer {
            Writer::File(fd) => {
                let fd = fd.as_raw_fd();
                let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
                // SAFETY: punching a hole in our own memfd; the mapping then reads zeros.
                unsafe { libc::fallocate(fd, mode, 0, self.cap as libc::off_t) };
            }
            Writer::Protect => {
                // SAFETY: the range is our own private mapping.
                unsafe { libc::madvise(self.base.as_ptr().cast(), self.cap, libc::MADV_DONTNEED) };
            }
        }
    }

    /// Copy `code` in at `off` (from [`CodeBuffer::next_offset`]).
    pub fn write(&mut self, off: usize, code: &[u8]) -> Result<Compiled, BufferError> {
        assert!(off + code.len() <= self.cap, "code cache overrun");
        self.store(off, code)?;
        self.used = off + code.len();
        Ok(Compiled {
            generation: self.generation,
            offset: off,
            body: 0,
            check: 0,
            span: 0,
            entry_segs: 0,
            sites: [None; super::compile::MAX_SITES],
        })
    }

    /// Point the 5-byte `jmp rel32` at offset `at` to offset `target` (linking or unlinking
    /// compiled blocks).
    pub fn patch_jmp(&mut self, at: usize, target: usize) -> Result<(), BufferError> {
        if at + 5 > self.used || target >= self.used {
            return Err(BufferError::NotAJump(at));
        }
        // SAFETY: `at < used`, inside the mapping, which is always readable.
        if unsafe { *self.base.as_ptr().add(at) } != 0xE9 {
            return Err(BufferError::NotAJump(at));
        }
        let rel = (target as i64 - (at as i64 + 5)) as i32;
        self.store(at + 1, &rel.to_le_bytes())
    }

    /// Copy `bytes` to offset `off` (inside the mapping) through the writer.
    fn store(&mut self, off: usize, bytes: &[u8]) -> Result<(), BufferError> {
        debug_assert!(off + bytes.len() <= self.cap);
        match &self.writer {
            Writer::File(fd) => {
                let fd = fd.as_raw_fd();
                // The memfd is not a pipe or socket: a write within its size is whole, or it
                // failed.
                // SAFETY: `bytes` is a live buffer of `len` bytes, read by the call only.
                let n = unsafe {
                    libc::pwrite(fd, bytes.as_ptr().cast(), bytes.len(), off as libc::off_t)
                };
                if n < 0 {
                    return Err(BufferError::Write(std::io::Error::last_os_error()));
                }
                if n as usize != bytes.len() {
                    let e = format!("short write: {n} of {} bytes", bytes.len());
                    return Err(BufferError::Write(std::io::Error::other(e)));
                }
            }
            Writer::Protect => {
                let start = off / PAGE * PAGE;
                let end = (off + bytes.len()).next_multiple_of(PAGE).min(self.cap);
                // SAFETY: [start, end) lies inside our mapping; no compiled code runs while a
                // block is being written (the CPU is single-threaded and compiling).
                let p = unsafe { self.base.as_ptr().add(start) };
                protect(p, end - start, libc::PROT_READ | libc::PROT_WRITE)?;
                // SAFETY: the destination is inside the mapping and now writable; `bytes`
                // is a separate buffer, so the ranges do not overlap.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        bytes.as_ptr(),
                        self.base.as_ptr().add(off),
                        bytes.len(),
                    );
                }
                protect(p, end - start, libc::PROT_READ | libc::PROT_EXEC)?;
            }
        }
        Ok(())
    }
}

/// A fresh shared mapping of `fd`'s first `cap` bytes, or a private anonymous one (`fd` -1).
fn map(cap: usize, prot: i32, fd: i32) -> Result<NonNull<u8>, BufferError> {
    let flags = if fd < 0 {
        libc::MAP_PRIVATE | libc::MAP_ANONYMOUS
    } else {
        libc::MAP_SHARED
    };
    // SAFETY: a new mapping at an address of the kernel's choosing; no existing memory is
    // affected.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), cap, prot, flags, fd, 0) };
    if p == libc::MAP_FAILED {
        return Err(BufferError::Map(std::io::Error::last_os_error()));
    }
    NonNull::new(p.cast::<u8>())
        .ok_or_else(|| BufferError::Map(std::io::Error::other("mmap returned a null mapping")))
}

fn unmap(p: NonNull<u8>, cap: usize) {
    // SAFETY: `p` is a mapping of `cap` bytes made by `map` that nothing refers to any more.
    unsafe {
        libc::munmap(p.as_ptr().cast(), cap);
    }
}

fn protect(p: *mut u8, len: usize, prot: i32) -> Result<(), BufferError> {
    // SAFETY: `p..p+len` is a page-aligned range of our own mapping.
    let r = unsafe { libc::mprotect(p.cast(), len, prot) };
    if r != 0 {
        return Err(BufferError::Protect(std::io::Error::last_os_error()));
    }
    Ok(())
}

impl Drop for CodeBuffer {
    fn drop(&mut self) {
        // Every `Compiled` handle into the cache is only entered through the `Jit` that owns
        // this buffer, which is being dropped.
        unmap(self.base, self.cap);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_jmp_rewrites_only_a_jmp_rel32_inside_the_code() {
        let memfd = CodeBuffer::memfd(2 * PAGE).expect("memfd");
        assert!(matches!(memfd.writer, Writer::File(_)));
        for buf in [memfd, CodeBuffer::protected(2 * PAGE).expect("mmap")] {
            patch_jmp_in(buf);
        }
    }

    /// Code written (and rewritten after a flush) runs, with either writer.
    #[test]
    fn written_code_runs_and_a_flush_replaces_it() {
        for mut buf in [
            CodeBuffer::memfd(PAGE).expect("memfd"),
            CodeBuffer::protected(PAGE).expect("mmap"),
        ] {
            for value in [42u32, 7] {
                // mov eax, value; ret
                let mut code = vec![0xB8];
                code.extend_from_slice(&value.to_le_bytes());
                code.push(0xC3);
                let off = buf.next_offset(code.len()).expect("room");
                assert_eq!(off, 0);
                buf.write(off, &code).expect("write");
                // SAFETY: the cache holds exactly the function just written at offset 0.
                let f: extern "sysv64" fn() -> u32 = unsafe { std::mem::transmute(buf.addr(0)) };
                assert_eq!(f(), value);
                buf.flush();
                assert!(buf.contents().is_empty());
                // The pages went back to the host: the code is gone, not just forgotten.
                // SAFETY: offset 0 is inside the mapping, which stays readable.
                assert_eq!(unsafe { *(buf.addr(0) as *const u8) }, 0);
            }
        }
    }

    fn patch_jmp_in(mut buf: CodeBuffer) {
        // A jmp rel32 that straddles the first page boundary, then code to jump to.
        let at = PAGE - 2;
        let mut code = vec![0x90; at];
        code.extend_from_slice(&[0xE9, 0, 0, 0, 0, 0xC3, 0xC3]);
        buf.write(0, &code).expect("write");
        buf.patch_jmp(at, at + 6).expect("patch");
        assert_eq!(&buf.contents()[at..at + 5], &[0xE9, 1, 0, 0, 0]);
        buf.patch_jmp(at, 0).expect("patch back");
        let rel = -(at as i32 + 5);
        assert_eq!(&buf.contents()[at + 1..at + 5], &rel.to_le_bytes());
        // Not a jmp, past the code, or a target past the code: refused, nothing written.
        assert!(matches!(buf.patch_jmp(0, 8), Err(BufferError::NotAJump(0))));
        assert!(buf.patch_jmp(at + 3, 0).is_err());
        assert!(buf.patch_jmp(at, code.len()).is_err());
        assert_eq!(buf.contents(), {
            let mut want = code.clone();
            want[at + 1..at + 5].copy_from_slice(&rel.to_le_bytes());
            want
        });
    }
}
