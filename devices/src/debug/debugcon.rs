//! The Bochs/QEMU debug console ("port E9").
//!
//! Every byte the guest writes goes to a host sink; reads return the readback value, 0xE9 by
//! default, which is how firmware detects the console (SeaBIOS compares a read of its debug
//! port with 0xE9 before it writes there). Bochs and most hobby OSes use port 0xE9
//! ([`DEBUGCON_PORT`]); SeaBIOS built for QEMU writes its log to 0x402 ([`SEABIOS_DEBUG_PORT`]).
//! The same type serves both: register each instance at its port, length 1. It takes byte
//! accesses only, like QEMU's `isa-debugcon` (a wider write puts its low byte here and the
//! rest on the next ports).
//!
//! The sink is any `Write`; [`Debugcon::capture`] gives a bounded in-memory one for tests. A
//! failing sink is reported once (until it works again) and never stops the guest.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use log::warn;

use crate::bus::{AccessSizes, BusAddress, BusDevice};
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

/// Bochs's debug console port.
pub const DEBUGCON_PORT: u64 = 0xe9;
/// SeaBIOS's debug output port under QEMU (CONFIG_DEBUG_IO).
pub const SEABIOS_DEBUG_PORT: u64 = 0x402;
/// What a read returns unless configured otherwise (QEMU's `readback` default).
pub const DEBUGCON_READBACK: u8 = 0xe9;

pub struct Debugcon {
    sink: Box<dyn Write + Send>,
    readback: u8,
    sink_failed: bool,
}

impl Debugcon {
    /// A console writing each guest byte to `sink` (flushed at each newline).
    pub fn new(sink: Box<dyn Write + Send>) -> Debugcon {
        Debugcon {
            sink,
            readback: DEBUGCON_READBACK,
            sink_failed: false,
        }
    }

    /// A console that drops what the guest writes (it still reads back as present).
    pub fn discard() -> Debugcon {
        Debugcon::new(Box::new(io::sink()))
    }

    /// A console writing to memory, keeping the newest `limit` bytes.
    pub fn capture(limit: usize) -> (Debugcon, DebugconCapture) {
        let capture = DebugconCapture {
            inner: Arc::new(Mutex::new(CaptureBuf {
                data: VecDeque::new(),
                limit,
                dropped: 0,
            })),
        };
        (Debugcon::new(Box::new(capture.clone())), capture)
    }

    /// Read back `value` instead of 0xE9 (QEMU's `readback` property).
    pub fn with_readback(mut self, value: u8) -> Debugcon {
        self.readback = value;
        self
    }

    fn emit(&mut self, byte: u8) {
        let mut result = self.sink.write_all(&[byte]);
        if result.is_ok() && byte == b'\n' {
            result = self.sink.flush();
        }
        match result {
            Ok(()) => self.sink_failed = false,
            Err(e) => {
                if !self.sink_failed {
                    warn!("debugcon: output lost: {e}");
                }
                self.sink_failed = true;
            }
        }
    }
}

impl BusDevice for Debugcon {
    fn read(&mut self, _at: BusAddress, data: &mut [u8]) {
        data.fill(self.readback);
    }

    fn write(&mut self, _at: BusAddress, data: &[u8]) {
        for &b in data {
            self.emit(b);
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::BYTE
    }
}

impl Snapshot for Debugcon {
    fn snapshot_id(&self) -> &'static str {
        "debugcon"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    /// Nothing the guest can observe changes: the readback value is configuration and the
    /// output has already left for the sink.
    fn save_state(&self, _w: &mut StateWriter) {}

    fn restore_state(
        &mut self,
        _r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        Ok(())
    }
}

struct CaptureBuf {
    data: VecDeque<u8>,
    limit: usize,
    dropped: u64,
}

/// The far end of [`Debugcon::capture`]: what the guest wrote, newest `limit` bytes.
#[derive(Clone)]
pub struct DebugconCapture {
    inner: Arc<Mutex<CaptureBuf>>,
}

impl DebugconCapture {
    /// The bytes held, oldest first.
    pub fn contents(&self) -> Vec<u8> {
        let buf = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        buf.data.iter().copied().collect()
    }

    /// The bytes held as text (invalid UTF-8 replaced).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.contents()).into_owned()
    }

    /// The bytes held, emptying the buffer.
    pub fn take(&self) -> Vec<u8> {
        let mut buf = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        buf.data.drain(..).collect()
    }

    /// How many of the oldest bytes were discarded to stay within the limit.
    pub fn dropped(&self) -> u64 {
        self.inner.lock().unwrap_or_else(|e| e.into_inner()).dropped
    }
}

impl Write for DebugconCapture {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buf = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        for &b in bytes {
            if buf.limit == 0 {
                buf.dropped += 1;
                continue;
            }
            if buf.data.len() >= buf.limit {
                buf.data.pop_front();
                buf.dropped += 1;
            }
            buf.data.push_back(b);
        }
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusKind};
    use crate::snapshot::check_round_trip;

    fn write_str(bus: &Bus, port: u64, s: &str) {
        for b in s.bytes() {
            bus.write_value(port, 1, u64::from(b));
        }
    }

    #[test]
    fn bytes_reach_the_sink_and_reads_return_e9() {
        let (e9, e9_out) = Debugcon::capture(1024);
        let (seabios, seabios_out) = Debugcon::capture(1024);
        let bus = Bus::new(BusKind::Pio);
        bus.insert("debugcon", DEBUGCON_PORT, 1, Arc::new(Mutex::new(e9)))
            .unwrap();
        bus.insert(
            "seabios-debug",
            SEABIOS_DEBUG_PORT,
            1,
            Arc::new(Mutex::new(seabios)),
        )
        .unwrap();
        assert_eq!(bus.read_value(DEBUGCON_PORT, 1), 0xe9);
        assert_eq!(bus.read_value(SEABIOS_DEBUG_PORT, 1), 0xe9);
        write_str(&bus, DEBUGCON_PORT, "Hello\n");
        write_str(&bus, SEABIOS_DEBUG_PORT, "SeaBIOS (version x)\n");
        assert_eq!(e9_out.text(), "Hello\n");
        assert_eq!(seabios_out.text(), "SeaBIOS (version x)\n");
        // A word write leaves only its low byte here.
        bus.write_value(DEBUGCON_PORT, 2, u64::from(u16::from_le_bytes(*b"AB")));
        assert_eq!(e9_out.take(), b"Hello\nA");
        assert!(e9_out.contents().is_empty());
    }

    #[test]
    fn readback_is_configurable() {
        let mut d = Debugcon::discard().with_readback(0x00);
        let mut b = [0xffu8];
        d.read(
            BusAddress {
                base: DEBUGCON_PORT,
                offset: 0,
            },
            &mut b,
        );
        assert_eq!(b, [0]);
    }

    #[test]
    fn capture_is_bounded_and_keeps_the_newest() {
        let (mut d, out) = Debugcon::capture(4);
        let at = BusAddress {
            base: DEBUGCON_PORT,
            offset: 0,
        };
        d.write(at, b"abcdef");
        assert_eq!(out.contents(), b"cdef");
        assert_eq!(out.dropped(), 2);
        let (mut z, zero) = Debugcon::capture(0);
        z.write(at, b"xy");
        assert_eq!((zero.contents().len(), zero.dropped()), (0, 2));
    }

    struct Broken;
    impl Write for Broken {
        fn write(&mut self, _: &[u8]) -> io::Result<usize> {
            Err(io::Error::new(io::ErrorKind::BrokenPipe, "gone"))
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_failing_sink_does_not_stop_the_guest() {
        let mut d = Debugcon::new(Box::new(Broken));
        let at = BusAddress {
            base: DEBUGCON_PORT,
            offset: 0,
        };
        d.write(at, b"lost\n");
        assert!(d.sink_failed);
        let mut b = [0u8];
        d.read(at, &mut b);
        assert_eq!(b, [0xe9]);
    }

    #[test]
    fn snapshot_round_trip_and_output_continues() {
        let (a, _) = Debugcon::capture(16);
        let (mut b, out) = Debugcon::capture(16);
        check_round_trip(&a, &mut b).unwrap();
        b.write(
            BusAddress {
                base: DEBUGCON_PORT,
                offset: 0,
            },
            b"ok",
        );
        assert_eq!(out.text(), "ok");
    }

    #[test]
    fn any_access_at_any_width_never_panics() {
        let (d, out) = Debugcon::capture(64);
        let bus = Bus::new(BusKind::Pio);
        bus.insert("debugcon", DEBUGCON_PORT, 1, Arc::new(Mutex::new(d)))
            .unwrap();
        for port in 0xe5..0xedu64 {
            for width in [1, 2, 4, 8] {
                for value in [0, 0x41, 0xff, 0xdead_beef, u64::MAX] {
                    bus.write_value(port, width, value);
                    bus.read_value(port, width);
                }
            }
        }
        // Each access that covers 0xE9 hands it exactly one byte: 1 + 2 + 4 + 5 spans of the
        // swept ports include it, for each of the 5 values.
        assert_eq!(out.contents().len(), 60);
    }
}
