//! A Unix-socket server: input from the connected client, output to it.
//!
//! Behaves like QEMU's `-chardev socket,path=...,server=on,wait=off`:
//!
//! - The machine does not wait for a client. While none is connected, device output is dropped
//!   (logged at debug level, once per unconnected stretch, with a count when a client arrives).
//! - One client at a time. Later clients are not refused: their connections complete into the
//!   listen backlog and wait there, unserved, until the current client disconnects; then the
//!   oldest waiting one is accepted.
//! - Output is written non-blockingly. What the socket does not take (`EAGAIN`, partial
//!   writes) waits in a buffer of [`OUTPUT_BUFFER_BYTES`] and is sent when the socket is
//!   writable again; beyond that bound output is dropped. The guest never waits for the client.
//! - Input is read into a buffer of [`INPUT_BUFFER_BYTES`] only as the device takes it, so a
//!   client that types faster than the guest reads is throttled by the socket, never dropped.
//! - A stale socket file at the path (left by an earlier run) is replaced; any other kind of
//!   file is not touched. The socket file is removed when the backend is dropped.

use std::io;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry, Token};

use super::{CharBackend, CharSink, ChardevError, InputBuffer, OutputBuffer, ReadEnd};

/// Output kept for a slow client before further output is dropped.
pub const OUTPUT_BUFFER_BYTES: usize = 64 * 1024;
/// Client input read ahead of the device.
pub const INPUT_BUFFER_BYTES: usize = 4096;

struct Connection {
    client: Option<UnixStream>,
    /// A sink's write failed (the peer is gone); the event loop drops the client.
    broken: bool,
    output: OutputBuffer,
    /// Output dropped since the last client left, reported when the next one arrives.
    dropped_unconnected: u64,
}

/// A listening Unix socket serving one client at a time.
pub struct UnixSocketBackend {
    path: PathBuf,
    listener: UnixListener,
    conn: Arc<Mutex<Connection>>,
    input: InputBuffer,
    /// The last read stopped because `input` was full, not because the client ran dry.
    input_stalled: bool,
    registry: Option<Registry>,
    token: Token,
}

impl UnixSocketBackend {
    /// Listen on `path`.
    pub fn bind(path: impl AsRef<Path>) -> Result<UnixSocketBackend, ChardevError> {
        let path = path.as_ref();
        let listen_err = |source| ChardevError::Listen {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) if meta.file_type().is_socket() => {
                log::debug!("replacing stale socket {}", path.display());
                std::fs::remove_file(path).map_err(listen_err)?;
            }
            Ok(_) => {
                return Err(ChardevError::NotASocket {
                    path: path.to_path_buf(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        Ok(UnixSocketBackend {
            path: path.to_path_buf(),
            listener,
            conn: Arc::new(Mutex::new(Connection {
                client: None,
                broken: false,
                output: OutputBuffer::new(OUTPUT_BUFFER_BYTES),
                dropped_unconnected: 0,
            })),
            input: InputBuffer::new(INPUT_BUFFER_BYTES),
            input_stalled: false,
            registry: None,
            token: Token(0),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether a client is being served.
    pub fn is_connected(&self) -> bool {
        self.conn
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .client
            .is_some()
    }

    /// All host I/O possible now: flush output to and read input from the client, drop it if
    /// it is gone, and accept the next one when there is none.
    fn service(&mut self) {
        let Some(registry) = self.registry.as_ref() else {
            return;
        };
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        loop {
            let c = &mut *conn;
            if let Some(stream) = c.client.as_ref() {
                let mut alive = !c.broken;
                if alive && let Err(e) = c.output.flush_to(stream) {
                    log::debug!("serial socket {}: write: {e}", self.path.display());
                    alive = false;
                }
                let dropped = c.output.take_dropped();
                if dropped > 0 {
                    log::debug!(
                        "serial socket {}: client too slow, dropped {dropped} byte(s) of output",
                        self.path.display()
                    );
                }
                if alive {
                    match self.input.fill_from(stream) {
                        Ok(ReadEnd::WouldBlock) => self.input_stalled = false,
                        Ok(ReadEnd::Full) => self.input_stalled = true,
                        Ok(ReadEnd::Eof) => alive = false,
                        Err(e) => {
                            log::debug!("serial socket {}: read: {e}", self.path.display());
                            alive = false;
                        }
                    }
                }
                if alive {
                    // Later clients wait in the backlog until this one leaves.
                    return;
                }
                if let Some(mut stream) = c.client.take()
                    && let Err(e) = registry.deregister(&mut stream)
                {
                    log::debug!("serial socket {}: deregister: {e}", self.path.display());
                }
                c.broken = false;
                c.output.clear();
                self.input_stalled = false;
                log::info!("serial socket {}: client disconnected", self.path.display());
            }
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    if let Err(e) = registry.register(
                        &mut stream,
                        self.token,
                        Interest::READABLE | Interest::WRITABLE,
                    ) {
                        log::warn!(
                            "serial socket {}: cannot watch new client: {e}",
                            self.path.display()
                        );
                        continue;
                    }
                    log::info!("serial socket {}: client connected", self.path.display());
                    let missed = std::mem::take(&mut conn.dropped_unconnected);
                    if missed > 0 {
                        log::debug!(
                            "serial socket {}: {missed} byte(s) of output were dropped while no client was connected",
                            self.path.display()
                        );
                    }
                    conn.client = Some(stream);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    log::warn!("serial socket {}: accept: {e}", self.path.display());
                    return;
                }
            }
        }
    }
}

impl Drop for UnixSocketBackend {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.path) {
            log::debug!("removing socket {}: {e}", self.path.display());
        }
    }
}

struct UnixSocketSink {
    conn: Arc<Mutex<Connection>>,
}

impl CharSink for UnixSocketSink {
    fn write(&mut self, bytes: &[u8]) {
        let mut conn = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        let c = &mut *conn;
        match c.client.as_ref() {
            None => {
                if c.dropped_unconnected == 0 {
                    log::debug!("serial socket: no client connected, dropping output");
                }
                c.dropped_unconnected = c.dropped_unconnected.saturating_add(bytes.len() as u64);
            }
            Some(_) if c.broken => {}
            Some(stream) => {
                if let Err(e) = c.output.write_through(stream, bytes) {
                    log::debug!("serial socket: write to client: {e}");
                    c.broken = true;
                    c.output.clear();
                }
            }
        }
    }
}

impl CharBackend for UnixSocketBackend {
    fn sink(&self) -> Box<dyn CharSink> {
        Box::new(UnixSocketSink {
            conn: self.conn.clone(),
        })
    }

    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        registry.register(&mut self.listener, token, Interest::READABLE)?;
        self.registry = Some(registry.try_clone()?);
        self.token = token;
        // A client may have connected before we watched the listener: its edge is gone.
        self.service();
        Ok(())
    }

    fn handle_ready(&mut self) {
        self.service();
    }

    fn pump_input(&mut self, deliver: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        let mut total = 0;
        loop {
            total += self.input.pump(deliver);
            if !self.input.is_empty() || !self.input_stalled {
                return total;
            }
            // The buffer is drained but the client had more: no new event will announce it.
            self.service();
            if self.input.is_empty() {
                return total;
            }
        }
    }

    fn has_input(&self) -> bool {
        !self.input.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chardev::file::tests::scratch_dir;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream as StdStream;
    use std::time::{Duration, Instant};

    const TOKEN: Token = Token(7);

    struct Harness {
        poll: mio::Poll,
        events: mio::Events,
        backend: UnixSocketBackend,
        dir: PathBuf,
    }

    impl Harness {
        fn new(tag: &str) -> Harness {
            let dir = scratch_dir(tag);
            let poll = mio::Poll::new().unwrap();
            let mut backend = UnixSocketBackend::bind(dir.join("serial.sock")).unwrap();
            backend.register(poll.registry(), TOKEN).unwrap();
            Harness {
                poll,
                events: mio::Events::with_capacity(16),
                backend,
                dir,
            }
        }

        fn connect(&self) -> StdStream {
            let s = StdStream::connect(self.backend.path()).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            s
        }

        /// Run the event loop until `done` holds (or fail after a few seconds).
        fn run_until(&mut self, mut done: impl FnMut(&mut UnixSocketBackend) -> bool) {
            let start = Instant::now();
            while !done(&mut self.backend) {
                assert!(start.elapsed() < Duration::from_secs(5), "timed out");
                self.poll
                    .poll(&mut self.events, Some(Duration::from_millis(50)))
                    .unwrap();
                for ev in self.events.iter() {
                    assert_eq!(ev.token(), TOKEN);
                    self.backend.handle_ready();
                }
            }
        }

        fn drain_input(&mut self, max_per_call: usize) -> Vec<u8> {
            let mut got = Vec::new();
            self.backend.pump_input(&mut |b: &[u8]| {
                let n = b.len().min(max_per_call);
                got.extend_from_slice(&b[..n]);
                n
            });
            got
        }
    }

    impl Drop for Harness {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[test]
    fn output_is_dropped_without_a_client_then_reaches_the_client() {
        let mut h = Harness::new("sock-out");
        let mut sink = h.backend.sink();
        sink.write(b"lost");
        let mut client = h.connect();
        h.run_until(|b| b.is_connected());
        sink.write(b"hello");
        let mut buf = [0u8; 5];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"hello");
    }

    #[test]
    fn input_is_delivered_only_as_the_device_takes_it() {
        let mut h = Harness::new("sock-in");
        let mut client = h.connect();
        h.run_until(|b| b.is_connected());
        client.write_all(b"abcdefgh").unwrap();
        h.run_until(|b| b.has_input());
        // A device with room for 3 bytes takes 3; the rest waits in the backend.
        let mut got = h.drain_input(3);
        assert_eq!(got, b"abc");
        assert!(h.backend.has_input());
        let start = Instant::now();
        while got.len() < 8 {
            assert!(start.elapsed() < Duration::from_secs(5));
            let mut more = Vec::new();
            h.backend.pump_input(&mut |b: &[u8]| {
                more.extend_from_slice(b);
                b.len()
            });
            got.extend(more);
            if got.len() < 8 {
                h.run_until(|b| b.has_input());
            }
        }
        assert_eq!(got, b"abcdefgh");
    }

    #[test]
    fn large_input_arrives_whole_through_a_small_device() {
        // More than the backend's read-ahead: after the buffer fills, further reads must be
        // driven by pump_input (mio is edge-triggered, no new event comes for waiting bytes).
        let mut h = Harness::new("sock-bulk");
        let client = h.connect();
        h.run_until(|b| b.is_connected());
        let data: Vec<u8> = (0..INPUT_BUFFER_BYTES * 5)
            .map(|i| (i % 251) as u8)
            .collect();
        let writer = {
            let mut c = client.try_clone().unwrap();
            let data = data.clone();
            std::thread::spawn(move || c.write_all(&data).unwrap())
        };
        let mut got = Vec::new();
        let start = Instant::now();
        while got.len() < data.len() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "stalled at {}",
                got.len()
            );
            // A 16-byte FIFO that the guest empties between pumps.
            loop {
                let chunk = h.drain_input(16);
                if chunk.is_empty() {
                    break;
                }
                got.extend(chunk);
            }
            if got.len() < data.len() {
                h.poll
                    .poll(&mut h.events, Some(Duration::from_millis(20)))
                    .unwrap();
                if !h.events.is_empty() {
                    h.backend.handle_ready();
                }
            }
        }
        writer.join().unwrap();
        assert_eq!(got, data);
        client.shutdown(std::net::Shutdown::Both).unwrap();
    }

    #[test]
    fn slow_client_output_is_bounded_and_in_order() {
        let mut h = Harness::new("sock-slow");
        let mut client = h.connect();
        h.run_until(|b| b.is_connected());
        let mut sink = h.backend.sink();
        // Far more than the socket buffer plus our bound, without the client reading.
        let data: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
        for chunk in data.chunks(1000) {
            sink.write(chunk);
        }
        let buffered = h.backend.conn.lock().unwrap().output.len();
        assert_eq!(buffered, OUTPUT_BUFFER_BYTES, "buffer full, not beyond");
        // Now the client reads; writable events flush the buffer.
        client
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut got = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let start = Instant::now();
        loop {
            assert!(start.elapsed() < Duration::from_secs(10));
            match client.read(&mut buf) {
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if h.backend.conn.lock().unwrap().output.len() == 0 {
                        break;
                    }
                }
                Err(e) => panic!("{e}"),
            }
            h.poll
                .poll(&mut h.events, Some(Duration::from_millis(10)))
                .unwrap();
            if !h.events.is_empty() {
                h.backend.handle_ready();
            }
        }
        assert!(got.len() > OUTPUT_BUFFER_BYTES, "got {}", got.len());
        assert!(got.len() < data.len());
        assert_eq!(got[..], data[..got.len()], "a prefix, in order, no holes");
    }

    #[test]
    fn second_client_waits_until_the_first_leaves() {
        let mut h = Harness::new("sock-two");
        let mut first = h.connect();
        h.run_until(|b| b.is_connected());
        let mut second = h.connect();
        second.write_all(b"2nd").unwrap();
        first.write_all(b"1st").unwrap();
        h.run_until(|b| b.input.len() >= 3);
        assert_eq!(h.drain_input(100), b"1st");
        let mut sink = h.backend.sink();
        sink.write(b"to-first");
        let mut buf = [0u8; 8];
        first.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"to-first");

        drop(first);
        // The first client's EOF is seen, then the waiting second client is accepted and its
        // early input read.
        h.run_until(|b| b.has_input());
        assert!(h.backend.is_connected());
        assert_eq!(h.drain_input(100), b"2nd");
        sink.write(b"to-second");
        let mut buf = [0u8; 9];
        second.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"to-second");
    }

    #[test]
    fn stale_socket_is_replaced_but_other_files_are_not() {
        let dir = scratch_dir("sock-stale");
        let path = dir.join("serial.sock");
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let backend = UnixSocketBackend::bind(&path).unwrap();
        drop(backend);
        assert!(!path.exists(), "socket removed on drop");

        let plain = dir.join("plain");
        std::fs::write(&plain, b"keep me").unwrap();
        let err = UnixSocketBackend::bind(&plain).err().unwrap();
        assert!(matches!(err, ChardevError::NotASocket { .. }));
        assert_eq!(std::fs::read(&plain).unwrap(), b"keep me");
        let _ = std::fs::remove_dir_all(dir);
    }
}
