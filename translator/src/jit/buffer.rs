//! The code cache: one fixed-size anonymous mapping that compiled blocks are appended to.
//!
//! W^X: the mapping is never writable and executable at once. It is mapped read+execute;
//! appending a block flips the pages it touches to read+write, copies the code in and flips
//! them back. When the next block does not fit, the whole cache is flushed: the generation
//! goes up (every `Compiled` handle of the old generation is then stale and never entered
//! again) and appending starts over at offset 0. Memory stays bounded by the mapping size.

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
    pub entry_segs: u8,
    /// The block's direct jumps to successors in its own guest page (see
    /// `compile::StaticSite`), offsets from `offset`.
    pub sites: [Option<super::compile::StaticSite>; 2],
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("mmap of the code cache failed: {0}")]
    Map(std::io::Error),
    #[error("mprotect of the code cache failed: {0}")]
    Protect(std::io::Error),
    #[error("no jmp rel32 to patch at code cache offset {0:#x}")]
    NotAJump(usize),
}

pub(crate) struct CodeBuffer {
    base: NonNull<u8>,
    cap: usize,
    used: usize,
    pub(crate) generation: u64,
    /// Flushes so far (for tests and statistics).
    pub(crate) flushes: u64,
}

const PAGE: usize = 4096;

impl CodeBuffer {
    pub fn new(cap: usize) -> Result<Self, BufferError> {
        let cap = cap.max(PAGE).next_multiple_of(PAGE);
        // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                cap,
                libc::PROT_READ | libc::PROT_EXEC,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(BufferError::Map(std::io::Error::last_os_error()));
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or_else(|| {
            BufferError::Map(std::io::Error::other("mmap returned a null mapping"))
        })?;
        Ok(CodeBuffer {
            base,
            cap,
            used: 0,
            generation: 0,
            flushes: 0,
        })
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
        // Give the pages back to the host; the mapping stays (read+execute, now zero-filled).
        // SAFETY: the range is our own mapping; nothing runs from it while the CPU compiles.
        unsafe {
            libc::madvise(self.base.as_ptr().cast(), self.cap, libc::MADV_DONTNEED);
        }
    }

    /// Copy `code` in at `off` (from [`CodeBuffer::next_offset`]).
    pub fn write(&mut self, off: usize, code: &[u8]) -> Result<Compiled, BufferError> {
        assert!(off + code.len() <= self.cap, "code cache overrun");
        let start = off / PAGE * PAGE;
        let end = (off + code.len()).next_multiple_of(PAGE).min(self.cap);
        // SAFETY: [start, end) lies inside our mapping (checked above); no compiled code runs
        // while a block is being written (the CPU is single-threaded and compiling).
        let p = unsafe { self.base.as_ptr().add(start) };
        self.protect(p, end - start, libc::PROT_READ | libc::PROT_WRITE)?;
        // SAFETY: the destination is inside the mapping and now writable; `code` is a
        // separate heap buffer, so the ranges do not overlap.
        unsafe {
            std::ptr::copy_nonoverlapping(code.as_ptr(), self.base.as_ptr().add(off), code.len());
        }
        self.protect(p, end - start, libc::PROT_READ | libc::PROT_EXEC)?;
        self.used = off + code.len();
        Ok(Compiled {
            generation: self.generation,
            offset: off,
            body: 0,
            check: 0,
            entry_segs: 0,
            sites: [None; 2],
        })
    }

    /// Point the 5-byte `jmp rel32` at offset `at` to offset `target` (linking or unlinking
    /// compiled blocks), flipping its pages writable for the store as `write` does.
    pub fn patch_jmp(&mut self, at: usize, target: usize) -> Result<(), BufferError> {
        if at + 5 > self.used || target >= self.used {
            return Err(BufferError::NotAJump(at));
        }
        // SAFETY: `at < used`, inside the mapping, which is always readable.
        if unsafe { *self.base.as_ptr().add(at) } != 0xE9 {
            return Err(BufferError::NotAJump(at));
        }
        let rel = (target as i64 - (at as i64 + 5)) as i32;
        let start = (at + 1) / PAGE * PAGE;
        let end = (at + 5).next_multiple_of(PAGE).min(self.cap);
        // SAFETY: [start, end) lies inside our mapping (`at + 5 <= used <= cap`); no compiled
        // code runs while the dispatcher patches.
        let p = unsafe { self.base.as_ptr().add(start) };
        self.protect(p, end - start, libc::PROT_READ | libc::PROT_WRITE)?;
        // SAFETY: the 4 bytes after the opcode are inside the mapping and now writable; the
        // store is unaligned, so it goes through `write_unaligned`.
        unsafe {
            self.base
                .as_ptr()
                .add(at + 1)
                .cast::<[u8; 4]>()
                .write_unaligned(rel.to_le_bytes());
        }
        self.protect(p, end - start, libc::PROT_READ | libc::PROT_EXEC)
    }

    fn protect(&self, p: *mut u8, len: usize, prot: i32) -> Result<(), BufferError> {
        // SAFETY: `p..p+len` is a page-aligned range of our own mapping.
        let r = unsafe { libc::mprotect(p.cast(), len, prot) };
        if r != 0 {
            return Err(BufferError::Protect(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

impl Drop for CodeBuffer {
    fn drop(&mut self) {
        // SAFETY: unmapping our own mapping; every `Compiled` handle into it is only entered
        // through the `Jit` that owns this buffer, which is being dropped.
        unsafe {
            libc::munmap(self.base.as_ptr().cast(), self.cap);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patch_jmp_rewrites_only_a_jmp_rel32_inside_the_code() {
        let mut buf = CodeBuffer::new(2 * PAGE).expect("mmap");
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
