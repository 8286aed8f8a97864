//! The POST code port, 0x80.
//!
//! Firmware writes a progress code here at each step of its power-on self test, for a
//! diagnostics card to display; operating systems also write it just to spend an I/O cycle.
//! Register at [`POST_CODE_PORT`], length 1; the device takes byte accesses only (a wider
//! access at 0x80 spills into the DMA page registers at 0x81 and up, which the bus sends there).
//!
//! Reads return the last code written. On the PC/AT, 0x80 is the spare byte of the 74LS612
//! DMA page register file at 0x80-0x8F, a read/write latch (PIIX and ICH keep it readable),
//! and Bochs reads it back the same way. QEMU's `ioport80` instead ignores writes and reads
//! 0xFF; no firmware or OS depends on either value, and the latch is what hardware does.
//!
//! Each code is logged at debug level and kept in a bounded history for tests and the monitor.

use std::collections::VecDeque;

use log::debug;

use crate::bus::{AccessSizes, BusAddress, BusDevice};
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

/// Where the POST code latch sits.
pub const POST_CODE_PORT: u64 = 0x80;
/// History kept by [`PostCode::new`].
pub const DEFAULT_HISTORY: usize = 256;
/// Upper bound on any history (and on what a snapshot may carry).
pub const MAX_HISTORY: usize = 64 * 1024;

pub struct PostCode {
    last: u8,
    history: VecDeque<u8>,
    capacity: usize,
}

impl Default for PostCode {
    fn default() -> Self {
        PostCode::new()
    }
}

impl PostCode {
    /// A latch that remembers the last [`DEFAULT_HISTORY`] codes.
    pub fn new() -> PostCode {
        PostCode::with_history(DEFAULT_HISTORY)
    }

    /// A latch that remembers the last `capacity` codes (at most [`MAX_HISTORY`]; 0 keeps none).
    pub fn with_history(capacity: usize) -> PostCode {
        let capacity = capacity.min(MAX_HISTORY);
        PostCode {
            last: 0,
            history: VecDeque::with_capacity(capacity),
            capacity,
        }
    }

    /// The code a read of the port returns: the last one written (0 after power-on).
    pub fn last(&self) -> u8 {
        self.last
    }

    /// The codes remembered, oldest first.
    pub fn history(&self) -> Vec<u8> {
        self.history.iter().copied().collect()
    }

    /// The codes remembered, oldest first, forgetting them.
    pub fn take_history(&mut self) -> Vec<u8> {
        self.history.drain(..).collect()
    }

    fn record(&mut self, code: u8) {
        debug!("POST code {code:#04x}");
        self.last = code;
        if self.capacity == 0 {
            return;
        }
        if self.history.len() >= self.capacity {
            self.history.pop_front();
        }
        self.history.push_back(code);
    }
}

impl BusDevice for PostCode {
    fn read(&mut self, _at: BusAddress, data: &mut [u8]) {
        data.fill(self.last);
    }

    fn write(&mut self, _at: BusAddress, data: &[u8]) {
        for &code in data {
            self.record(code);
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::BYTE
    }
}

impl Snapshot for PostCode {
    fn snapshot_id(&self) -> &'static str {
        "post-code"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        w.u8(self.last);
        w.var_bytes(&self.history());
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let last = r.u8()?;
        let saved = r.var_bytes(MAX_HISTORY)?;
        // A device built with a shorter history keeps the newest codes.
        let keep = saved.len().min(self.capacity);
        self.last = last;
        self.history = saved[saved.len() - keep..].iter().copied().collect();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusKind};
    use crate::snapshot::check_round_trip;
    use std::sync::{Arc, Mutex};

    #[test]
    fn reads_return_the_last_code_written() {
        let dev = Arc::new(Mutex::new(PostCode::new()));
        let bus = Bus::new(BusKind::Pio);
        bus.insert("post", POST_CODE_PORT, 1, dev.clone()).unwrap();
        assert_eq!(bus.read_value(0x80, 1), 0);
        bus.write_value(0x80, 1, 0x12);
        bus.write_value(0x80, 1, 0xab);
        assert_eq!(bus.read_value(0x80, 1), 0xab);
        // A word write puts only its low byte here; the high byte belongs to port 0x81.
        bus.write_value(0x80, 2, 0x5634);
        assert_eq!(bus.read_value(0x80, 1), 0x34);
        assert_eq!(bus.read_value(0x80, 2), 0xff34);
        assert_eq!(dev.lock().unwrap().history(), [0x12, 0xab, 0x34]);
    }

    #[test]
    fn history_is_bounded_and_keeps_the_newest() {
        let mut d = PostCode::with_history(4);
        let at = BusAddress {
            base: POST_CODE_PORT,
            offset: 0,
        };
        for code in 1..=6u8 {
            d.write(at, &[code]);
        }
        assert_eq!(d.history(), [3, 4, 5, 6]);
        assert_eq!(d.take_history(), [3, 4, 5, 6]);
        assert!(d.history().is_empty());
        assert_eq!(d.last(), 6);
        let mut none = PostCode::with_history(0);
        none.write(at, &[9]);
        assert_eq!((none.last(), none.history().len()), (9, 0));
        assert_eq!(PostCode::with_history(usize::MAX).capacity, MAX_HISTORY);
    }

    #[test]
    fn snapshot_round_trip_keeps_code_and_history() {
        let at = BusAddress {
            base: POST_CODE_PORT,
            offset: 0,
        };
        let mut a = PostCode::new();
        for code in [0x01, 0x02, 0x7f] {
            a.write(at, &[code]);
        }
        let mut b = PostCode::new();
        check_round_trip(&a, &mut b).unwrap();
        let mut out = [0u8];
        b.read(at, &mut out);
        assert_eq!(out, [0x7f]);
        b.write(at, &[0x80]);
        assert_eq!(b.history(), [0x01, 0x02, 0x7f, 0x80]);
        // Into a shorter history: the newest codes survive.
        let mut small = PostCode::with_history(2);
        crate::snapshot::restore(&mut small, &crate::snapshot::save(&a)).unwrap();
        assert_eq!(small.history(), [0x02, 0x7f]);
    }

    #[test]
    fn any_access_at_any_width_never_panics() {
        let dev = Arc::new(Mutex::new(PostCode::with_history(8)));
        let bus = Bus::new(BusKind::Pio);
        bus.insert("post", POST_CODE_PORT, 1, dev.clone()).unwrap();
        for port in 0x7c..0x84u64 {
            for width in [1, 2, 4, 8] {
                for value in [0, 1, 0x80, 0xff, 0xdead_beef, u64::MAX] {
                    bus.write_value(port, width, value);
                    bus.read_value(port, width);
                }
            }
        }
        assert!(dev.lock().unwrap().history().len() <= 8);
    }
}
