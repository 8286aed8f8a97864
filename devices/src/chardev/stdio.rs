//! Standard input and output.
//!
//! Neither stdin nor stdout is switched to non-blocking mode: both usually share one open file
//! description with the user's terminal (and the shell that started us), so `O_NONBLOCK` would
//! leak to them and make our own logging fail with `EAGAIN`. Terminal modes are not touched
//! either (raw mode is the board's business). Instead:
//!
//! - a reader thread does blocking reads of stdin and forwards the bytes through a pipe whose
//!   read end is non-blocking and registered with the event loop. A full pipe blocks only that
//!   thread, so typing faster than the guest reads is throttled, not lost.
//! - a writer thread does the blocking writes to stdout from a queue of
//!   [`OUTPUT_QUEUE_BYTES`]; the device side only appends to the queue, so a stalled terminal
//!   (Ctrl-S, a full pipe) never stalls the guest. Beyond the bound output is dropped (logged).
//!
//! Only one `StdioBackend::new` should exist per process: two would compete for stdin.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use mio::unix::pipe;
use mio::{Interest, Registry, Token};

use super::{CharBackend, CharSink, ChardevError, InputBuffer, ReadEnd};

/// Output queued for stdout before further output is dropped.
pub const OUTPUT_QUEUE_BYTES: usize = 64 * 1024;
const INPUT_BUFFER_BYTES: usize = 4096;
/// How long dropping the backend waits for queued output to reach stdout.
const DRAIN_ON_DROP: Duration = Duration::from_secs(1);

#[derive(Default)]
struct OutState {
    queue: VecDeque<u8>,
    /// The writer thread holds bytes it took from the queue and has not finished writing.
    writing: bool,
    shutdown: bool,
    dropped: u64,
}

struct OutQueue {
    state: Mutex<OutState>,
    cond: Condvar,
}

impl OutQueue {
    fn lock(&self) -> std::sync::MutexGuard<'_, OutState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Stdin in, stdout out (or any blocking reader and writer, for tests).
pub struct StdioBackend {
    input_pipe: Option<pipe::Receiver>,
    input: InputBuffer,
    input_stalled: bool,
    registry: Option<Registry>,
    out: Arc<OutQueue>,
}

impl StdioBackend {
    /// The process's stdin and stdout.
    pub fn new() -> Result<StdioBackend, ChardevError> {
        Self::with_streams(Some(Box::new(io::stdin())), Box::new(io::stdout()))
    }

    /// Any blocking reader (or none: output only) and writer, each served by its own thread.
    pub fn with_streams(
        input: Option<Box<dyn Read + Send>>,
        output: Box<dyn Write + Send>,
    ) -> Result<StdioBackend, ChardevError> {
        let out = Arc::new(OutQueue {
            state: Mutex::new(OutState::default()),
            cond: Condvar::new(),
        });
        let writer_queue = out.clone();
        std::thread::Builder::new()
            .name("vireo-stdio-out".into())
            .spawn(move || write_loop(&writer_queue, output))
            .map_err(ChardevError::Stdio)?;

        let input_pipe = match input {
            None => None,
            Some(reader) => {
                let (sender, receiver) = pipe::new().map_err(ChardevError::Stdio)?;
                // Only our thread writes the pipe: let it block when the pipe is full.
                sender.set_nonblocking(false).map_err(ChardevError::Stdio)?;
                std::thread::Builder::new()
                    .name("vireo-stdio-in".into())
                    .spawn(move || read_loop(reader, sender))
                    .map_err(ChardevError::Stdio)?;
                Some(receiver)
            }
        };
        Ok(StdioBackend {
            input_pipe,
            input: InputBuffer::new(INPUT_BUFFER_BYTES),
            input_stalled: false,
            registry: None,
            out,
        })
    }

    fn read_input(&mut self) {
        let Some(pipe) = self.input_pipe.as_ref() else {
            return;
        };
        match self.input.fill_from(pipe) {
            Ok(ReadEnd::WouldBlock) => self.input_stalled = false,
            Ok(ReadEnd::Full) => self.input_stalled = true,
            Ok(ReadEnd::Eof) => {
                log::debug!("stdio backend: end of input");
                self.close_input();
            }
            Err(e) => {
                log::warn!("stdio backend: reading input: {e}");
                self.close_input();
            }
        }
    }

    fn close_input(&mut self) {
        self.input_stalled = false;
        if let Some(mut pipe) = self.input_pipe.take()
            && let Some(registry) = self.registry.as_ref()
            && let Err(e) = registry.deregister(&mut pipe)
        {
            log::debug!("stdio backend: deregister: {e}");
        }
    }
}

fn read_loop(mut reader: Box<dyn Read + Send>, mut pipe: pipe::Sender) {
    let mut buf = [0u8; 1024];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                if pipe.write_all(&buf[..n]).is_err() {
                    // The backend is gone.
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                log::warn!("stdio backend: reading stdin: {e}");
                return;
            }
        }
    }
}

fn write_loop(queue: &OutQueue, mut output: Box<dyn Write + Send>) {
    loop {
        let bytes: Vec<u8> = {
            let mut st = queue.lock();
            while st.queue.is_empty() && !st.shutdown {
                st = queue.cond.wait(st).unwrap_or_else(|e| e.into_inner());
            }
            if st.queue.is_empty() {
                return;
            }
            st.writing = true;
            st.queue.drain(..).collect()
        };
        let result = output.write_all(&bytes).and_then(|()| output.flush());
        let mut st = queue.lock();
        st.writing = false;
        queue.cond.notify_all();
        if let Err(e) = result {
            log::warn!("stdio backend: writing output: {e}; further output is dropped");
            st.shutdown = true;
            st.queue.clear();
            return;
        }
    }
}

impl Drop for StdioBackend {
    fn drop(&mut self) {
        let mut st = self.out.lock();
        st.shutdown = true;
        self.out.cond.notify_all();
        // Give queued output a moment to reach the terminal, without hanging on a stuck one.
        let (_st, timeout) = self
            .out
            .cond
            .wait_timeout_while(st, DRAIN_ON_DROP, |st| !st.queue.is_empty() || st.writing)
            .unwrap_or_else(|e| e.into_inner());
        if timeout.timed_out() {
            log::debug!("stdio backend: output still pending at shutdown");
        }
    }
}

struct StdioSink {
    out: Arc<OutQueue>,
}

impl CharSink for StdioSink {
    fn write(&mut self, bytes: &[u8]) {
        let mut st = self.out.lock();
        if st.shutdown {
            return;
        }
        let room = OUTPUT_QUEUE_BYTES.saturating_sub(st.queue.len());
        let keep = bytes.len().min(room);
        st.queue.extend(&bytes[..keep]);
        let lost = (bytes.len() - keep) as u64;
        if lost > 0 {
            if st.dropped == 0 {
                log::debug!("stdio backend: output queue full, dropping output");
            }
            st.dropped = st.dropped.saturating_add(lost);
        }
        if keep > 0 {
            self.out.cond.notify_all();
        }
    }
}

impl CharBackend for StdioBackend {
    fn sink(&self) -> Box<dyn CharSink> {
        Box::new(StdioSink {
            out: self.out.clone(),
        })
    }

    fn register(&mut self, registry: &Registry, token: Token) -> io::Result<()> {
        if let Some(pipe) = self.input_pipe.as_mut() {
            registry.register(pipe, token, Interest::READABLE)?;
        }
        self.registry = Some(registry.try_clone()?);
        // Input may have arrived before registration: its edge is gone.
        self.read_input();
        Ok(())
    }

    fn handle_ready(&mut self) {
        self.read_input();
    }

    fn pump_input(&mut self, deliver: &mut dyn FnMut(&[u8]) -> usize) -> usize {
        let mut total = 0;
        loop {
            total += self.input.pump(deliver);
            if !self.input.is_empty() || !self.input_stalled {
                return total;
            }
            self.read_input();
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
    use std::time::Instant;

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn output_reaches_the_writer_and_input_comes_through_the_event_loop() {
        let (reader, mut writer) = io::pipe().unwrap();
        let out = Shared::default();
        let mut backend =
            StdioBackend::with_streams(Some(Box::new(reader)), Box::new(out.clone())).unwrap();
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(4);
        backend.register(poll.registry(), Token(1)).unwrap();

        let mut sink = backend.sink();
        sink.write(b"boot ");
        sink.write(b"ok\n");

        writer.write_all(b"typed").unwrap();
        let start = Instant::now();
        while !backend.has_input() {
            assert!(start.elapsed() < Duration::from_secs(5));
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            if !events.is_empty() {
                backend.handle_ready();
            }
        }
        let mut got = Vec::new();
        backend.pump_input(&mut |b: &[u8]| {
            let n = b.len().min(2);
            got.extend_from_slice(&b[..n]);
            n
        });
        assert_eq!(got, b"ty");
        backend.pump_input(&mut |b: &[u8]| {
            got.extend_from_slice(b);
            b.len()
        });
        assert_eq!(got, b"typed");

        drop(backend);
        assert_eq!(&out.0.lock().unwrap()[..], b"boot ok\n");
    }

    #[test]
    fn output_queue_is_bounded_when_the_writer_stalls() {
        struct Stuck(Arc<(Mutex<bool>, Condvar)>);
        impl Write for Stuck {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                let (m, c) = &*self.0;
                let mut go = m.lock().unwrap();
                while !*go {
                    go = c.wait(go).unwrap();
                }
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let gate = Arc::new((Mutex::new(false), Condvar::new()));
        let backend = StdioBackend::with_streams(None, Box::new(Stuck(gate.clone()))).unwrap();
        let mut sink = backend.sink();
        let chunk = [0x55u8; 1024];
        for _ in 0..(OUTPUT_QUEUE_BYTES / 1024) * 4 {
            sink.write(&chunk);
        }
        {
            let st = backend.out.lock();
            assert!(st.queue.len() <= OUTPUT_QUEUE_BYTES);
            assert!(st.dropped > 0);
        }
        *gate.0.lock().unwrap() = true;
        gate.1.notify_all();
    }
}
