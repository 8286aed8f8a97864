//! The test-exit port: QEMU's `isa-debug-exit`.
//!
//! A write of value `v` asks the board to stop the machine and exit with status `(v << 1) | 1`,
//! so a test guest can report success or failure and no status it writes can be mistaken for a
//! clean 0. Test suites place it at 0xF4 ([`EXIT_PORT`]) with a 1- or 4-byte window
//! (`-device isa-debug-exit,iobase=0xf4,iosize=0x04`); QEMU's own default is 0x501, 2 bytes.
//!
//! Register at the chosen port with length [`ExitPort::size`] (1, 2 or 4, QEMU's `iosize`).
//! The device takes accesses of 1 to 4 bytes at any offset in its window, like QEMU: the
//! value written is the access's little-endian value, whatever its offset. Wider accesses are
//! split by the bus (the first piece's request wins). The status is computed in 64 bits and
//! truncated to an `i32`, as QEMU passes it on as a C `int`; a process exit status keeps its
//! low 8 bits. Reads return 0.

use std::sync::Arc;

use log::info;
use thiserror::Error;

use crate::bus::{AccessSizes, BusAddress, BusDevice};
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};
use crate::system::SystemControl;

/// Where test suites put the exit port.
pub const EXIT_PORT: u64 = 0xf4;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum ExitPortError {
    #[error("isa-debug-exit window of {0} bytes: must be 1, 2 or 4")]
    BadSize(u8),
}

pub struct ExitPort {
    system: Arc<dyn SystemControl>,
    size: u8,
}

impl ExitPort {
    /// A 1-byte exit port that reports to `system`.
    pub fn new(system: Arc<dyn SystemControl>) -> ExitPort {
        ExitPort { system, size: 1 }
    }

    /// An exit port whose window is `iosize` bytes (1, 2 or 4).
    pub fn with_size(
        system: Arc<dyn SystemControl>,
        iosize: u8,
    ) -> Result<ExitPort, ExitPortError> {
        match iosize {
            1 | 2 | 4 => Ok(ExitPort {
                system,
                size: iosize,
            }),
            n => Err(ExitPortError::BadSize(n)),
        }
    }

    /// The length to register the port with.
    pub fn size(&self) -> u64 {
        u64::from(self.size)
    }

    /// The exit status a write of `value` requests.
    pub fn status_for(value: u64) -> i32 {
        ((value << 1) | 1) as u32 as i32
    }
}

impl BusDevice for ExitPort {
    fn read(&mut self, _at: BusAddress, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        let mut value = [0u8; 8];
        let n = data.len().min(8);
        value[..n].copy_from_slice(&data[..n]);
        let value = u64::from_le_bytes(value);
        let status = ExitPort::status_for(value);
        info!(
            "isa-debug-exit: guest wrote {value:#x} at {:#x}; exit status {status}",
            at.absolute()
        );
        self.system.request_exit(status);
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::new(1, 4)
    }
}

impl Snapshot for ExitPort {
    fn snapshot_id(&self) -> &'static str {
        "isa-debug-exit"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    /// Stateless: the window size is configuration, and an exit request belongs to the board.
    fn save_state(&self, _w: &mut StateWriter) {}

    fn restore_state(
        &mut self,
        _r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusKind};
    use crate::snapshot::check_round_trip;
    use crate::system::SystemSignals;
    use std::sync::Mutex;

    fn rig(iosize: u8) -> (Bus, Arc<SystemSignals>) {
        let signals = Arc::new(SystemSignals::new());
        let port = ExitPort::with_size(signals.clone(), iosize).unwrap();
        let bus = Bus::new(BusKind::Pio);
        bus.insert(
            "isa-debug-exit",
            EXIT_PORT,
            port.size(),
            Arc::new(Mutex::new(port)),
        )
        .unwrap();
        (bus, signals)
    }

    #[test]
    fn a_byte_write_requests_exit_with_v_shifted_left_plus_one() {
        for (v, status) in [(0u64, 1), (1, 3), (0x10, 0x21), (0x7f, 0xff), (0xff, 0x1ff)] {
            let (bus, signals) = rig(1);
            assert_eq!(signals.exit_status(), None);
            bus.write_value(EXIT_PORT, 1, v);
            assert_eq!(signals.exit_status(), Some(status), "value {v:#x}");
        }
    }

    #[test]
    fn wider_windows_take_the_whole_value() {
        let (bus, signals) = rig(4);
        bus.write_value(EXIT_PORT, 4, 0x1234_5678);
        assert_eq!(signals.exit_status(), Some(0x2468_acf1));
        let (bus, signals) = rig(2);
        bus.write_value(EXIT_PORT, 2, 0x0102);
        assert_eq!(signals.exit_status(), Some(0x0205));
        // A byte at any offset of the window counts, as in QEMU.
        let (bus, signals) = rig(4);
        bus.write_value(EXIT_PORT + 3, 1, 2);
        assert_eq!(signals.exit_status(), Some(5));
        // A 1-byte window sees the low byte of a word write.
        let (bus, signals) = rig(1);
        bus.write_value(EXIT_PORT, 2, 0x0203);
        assert_eq!(signals.exit_status(), Some(7));
        // The top bit shifts out: the status is a C int.
        assert_eq!(ExitPort::status_for(0xffff_ffff), -1);
        assert_eq!(ExitPort::status_for(0x8000_0000), 1);
    }

    #[test]
    fn reads_return_zero_and_do_not_exit() {
        let (bus, signals) = rig(4);
        assert_eq!(bus.read_value(EXIT_PORT, 4), 0);
        assert_eq!(signals.exit_status(), None);
    }

    #[test]
    fn window_sizes_are_checked() {
        let s: Arc<dyn SystemControl> = Arc::new(SystemSignals::new());
        for bad in [0u8, 3, 8] {
            assert_eq!(
                ExitPort::with_size(s.clone(), bad).err(),
                Some(ExitPortError::BadSize(bad))
            );
        }
        assert_eq!(ExitPort::new(s).size(), 1);
    }

    #[test]
    fn snapshot_round_trip_and_the_port_still_works() {
        let signals = Arc::new(SystemSignals::new());
        let a = ExitPort::new(signals.clone());
        let mut b = ExitPort::new(signals.clone());
        check_round_trip(&a, &mut b).unwrap();
        b.write(
            BusAddress {
                base: EXIT_PORT,
                offset: 0,
            },
            &[0x21],
        );
        assert_eq!(signals.exit_status(), Some(0x43));
    }

    #[test]
    fn any_access_at_any_width_never_panics() {
        for iosize in [1, 2, 4] {
            let (bus, signals) = rig(iosize);
            for port in 0xf0..0xfau64 {
                for width in [1, 2, 4, 8] {
                    for value in [0, 1, 0xff, 0xdead_beef, u64::MAX] {
                        bus.write_value(port, width, value);
                        bus.read_value(port, width);
                    }
                }
            }
            assert!(signals.exit_status().is_some());
        }
    }
}
