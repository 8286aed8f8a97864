//! Character backends: where a serial port's output goes on the host and where its input
//! comes from.
//!
//! A backend has two faces:
//!
//! - [`CharSink`], the device side. A device (the UART) hands it each byte it transmits, from
//!   whatever thread runs the guest. It never blocks that thread: a backend that cannot pass the
//!   bytes on at once keeps them in a bounded buffer and drops what does not fit, saying so in the
//!   log.
//! - [`CharBackend`], the host side, driven by the board's one `mio` event loop. The loop
//!   registers each backend under its own [`Token`]; when that token fires it calls
//!   [`CharBackend::handle_ready`] (accept a client, flush output, read input), then
//!   [`CharBackend::pump_input`] to move host input into the device. The device takes only what
//!   fits (a UART takes up to its free FIFO space); the backend keeps the rest, so no input byte
//!   is lost. When the device has room again (the UART's rx-ready notifier), the board calls
//!   `pump_input` again.
//!
//! Locking: a backend never calls the device while holding the state it shares with its sinks,
//! so a vCPU thread that transmits (device lock, then sink) and the event loop that delivers
//! input (backend, then device lock) cannot deadlock.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::path::PathBuf;

use mio::{Registry, Token};
use thiserror::Error;

pub mod file;
pub mod stdio;
pub mod unix_socket;

/// Where a device's transmitted bytes go.
pub trait CharSink: Send {
    /// Take `bytes` for the host. Never blocks; a backend that cannot keep up drops bytes (and
    /// logs it) rather than stall the guest.
    fn write(&mut self, bytes: &[u8]);
}

/// A sink that discards everything (a port with nothing attached).
#[derive(Debug, Default)]
pub struct NullSink;

impl CharSink for NullSink {
    fn write(&mut self, _bytes: &[u8]) {}
}

/// The host side of a character backend, driven by one `mio` event loop.
pub trait CharBackend: Send {
    /// A device-side handle that writes into this backend. Several sinks may share a backend.
    fn sink(&self) -> Box<dyn CharSink>;

    /// Register the backend's host descriptors with `registry`, all under `token`. The backend
    /// keeps a clone of the registry to register descriptors it opens later (accepted clients).
    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()>;

    /// Called when `token` fired: do all the host I/O that is possible now without blocking.
    /// Errors are handled inside (a broken client is dropped, logged), never returned.
    fn handle_ready(&mut self);

    /// Offer buffered host input to `deliver`, which returns how many of the offered bytes it
    /// took; the rest stays here for a later call. Reads more from the host as room allows.
    /// Returns the number of bytes delivered.
    fn pump_input(&mut self, deliver: &mut dyn FnMut(&[u8]) -> usize) -> usize;

    /// Whether host input is waiting for the device.
    fn has_input(&self) -> bool;
}

#[derive(Debug, Error)]
pub enum ChardevError {
    #[error("cannot open {path} for character output: {source}")]
    OpenFile { path: PathBuf, source: io::Error },
    #[error("cannot listen on Unix socket {path}: {source}")]
    Listen { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("cannot set up stdio backend: {0}")]
    Stdio(io::Error),
}

/// How a non-blocking read pass ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadEnd {
    /// The host has nothing more right now; readiness will be signalled again.
    WouldBlock,
    /// Our buffer filled before the host ran dry: no new readiness event will come for the
    /// bytes still waiting (mio is edge-triggered), so read again once there is room.
    Full,
    /// End of file / the peer closed.
    Eof,
}

/// Host input waiting for the device, bounded.
#[derive(Debug)]
pub(crate) struct InputBuffer {
    buf: VecDeque<u8>,
    cap: usize,
}

impl InputBuffer {
    pub(crate) fn new(cap: usize) -> InputBuffer {
        InputBuffer {
            buf: VecDeque::with_capacity(cap),
            cap,
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Read from a non-blocking reader until it would block, ends, or our buffer is full.
    pub(crate) fn fill_from<R: Read>(&mut self, mut reader: R) -> io::Result<ReadEnd> {
        let mut chunk = [0u8; 1024];
        loop {
            let room = self.cap - self.buf.len();
            if room == 0 {
                return Ok(ReadEnd::Full);
            }
            let want = room.min(chunk.len());
            match reader.read(&mut chunk[..want]) {
                Ok(0) => return Ok(ReadEnd::Eof),
                Ok(n) => self.buf.extend(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(ReadEnd::WouldBlock),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// Hand the oldest bytes to `deliver` until it takes less than it was offered.
    pub(crate) fn pump(&mut self, deliver: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        let mut total = 0;
        while !self.buf.is_empty() {
            let front = self.buf.as_slices().0;
            let offered = front.len();
            let taken = deliver(front).min(offered);
            self.buf.drain(..taken);
            total += taken;
            if taken < offered {
                break;
            }
        }
        total
    }
}

/// Output a non-blocking writer has not taken yet, bounded: what does not fit is dropped.
#[derive(Debug)]
pub(crate) struct OutputBuffer {
    buf: VecDeque<u8>,
    cap: usize,
    dropped: u64,
}

impl OutputBuffer {
    pub(crate) fn new(cap: usize) -> OutputBuffer {
        OutputBuffer {
            buf: VecDeque::new(),
            cap,
            dropped: 0,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.buf.len()
    }

    /// Bytes dropped because the buffer was full, since the last call.
    pub(crate) fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    pub(crate) fn clear(&mut self) {
        self.buf.clear();
    }

    fn push(&mut self, bytes: &[u8]) {
        let room = self.cap - self.buf.len();
        let keep = bytes.len().min(room);
        self.buf.extend(&bytes[..keep]);
        let lost = (bytes.len() - keep) as u64;
        if lost > 0 {
            if self.dropped == 0 {
                log::debug!("character backend output buffer full: dropping output");
            }
            self.dropped += lost;
        }
    }

    /// Send what is buffered, then `bytes`, keeping (up to the bound) whatever the writer does
    /// not take now. Order is preserved: new bytes never overtake buffered ones.
    pub(crate) fn write_through<W: Write>(&mut self, writer: W, bytes: &[u8]) -> io::Result<()> {
        let mut writer = writer;
        self.flush_to(&mut writer)?;
        if !self.buf.is_empty() {
            self.push(bytes);
            return Ok(());
        }
        let mut rest = bytes;
        while !rest.is_empty() {
            match writer.write(rest) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => rest = &rest[n..],
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        self.push(rest);
        Ok(())
    }

    /// Write buffered bytes until the buffer is empty or the writer would block.
    pub(crate) fn flush_to<W: Write>(&mut self, mut writer: W) -> io::Result<()> {
        while !self.buf.is_empty() {
            let front = self.buf.as_slices().0;
            match writer.write(front) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.buf.drain(..n.min(front.len()));
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A writer that takes at most `limit` bytes in total, then would block.
    struct Choked {
        taken: Vec<u8>,
        limit: usize,
    }

    impl Write for Choked {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            let room = self.limit - self.taken.len();
            if room == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            let n = buf.len().min(room).min(3);
            self.taken.extend_from_slice(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_buffer_keeps_order_bounds_and_counts_drops() {
        let mut out = OutputBuffer::new(4);
        let mut w = Choked {
            taken: Vec::new(),
            limit: 5,
        };
        out.write_through(&mut w, b"abcdefg").unwrap();
        assert_eq!(w.taken, b"abcde");
        assert_eq!(out.len(), 2);
        out.write_through(&mut w, b"hijk").unwrap();
        assert_eq!(out.len(), 4, "bounded at the cap");
        assert_eq!(out.take_dropped(), 2);
        assert_eq!(out.take_dropped(), 0);
        w.limit = 100;
        out.flush_to(&mut w).unwrap();
        assert_eq!(w.taken, b"abcdefghi");
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn input_buffer_fills_to_its_bound_and_pumps_partially() {
        let mut inp = InputBuffer::new(5);
        let src = b"0123456789".to_vec();
        let mut cursor = io::Cursor::new(src);
        assert_eq!(inp.fill_from(&mut cursor).unwrap(), ReadEnd::Full);
        assert_eq!(inp.len(), 5);
        let mut got = Vec::new();
        let n = inp.pump(&mut |b: &[u8]| {
            let take = b.len().min(2);
            got.extend_from_slice(&b[..take]);
            take
        });
        assert_eq!(n, 2);
        assert_eq!(got, b"01");
        assert_eq!(inp.fill_from(&mut cursor).unwrap(), ReadEnd::Full);
        let n = inp.pump(&mut |b: &[u8]| {
            got.extend_from_slice(b);
            b.len()
        });
        assert_eq!(n, 5);
        assert_eq!(inp.fill_from(&mut cursor).unwrap(), ReadEnd::Eof);
        inp.pump(&mut |b: &[u8]| {
            got.extend_from_slice(b);
            b.len()
        });
        assert_eq!(got, b"0123456789");
    }
}
