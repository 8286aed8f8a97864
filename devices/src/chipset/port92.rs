//! System Control Port A (port 0x92): the "fast" A20 gate and fast reset of the PS/2 and
//! PIIX chipsets, as QEMU's `port92` presents it.
//!
//! Register [`Port92`] at [`PORT92`], [`PORT92_LEN`] byte.
//!
//! - **Bit 1, ALT_A20_GATE**: every write drives the A20 gate to this bit through
//!   [`SystemControl::set_a20`] (the 8042's output port drives the same gate; whichever wrote
//!   last wins, as on QEMU's board).
//! - **Bit 0, ALT_RESET**: a 0-to-1 transition requests a system reset. The bit stays set (and
//!   reads back set) until the reset clears it, so firmware that rewrites the port with the
//!   value it read does not reset again.
//! - The other bits (the password lock, the activity lights of the PS/2 era) have no function
//!   here; they are stored and read back as written, as QEMU does.

use std::sync::Arc;

use log::{debug, info};

use crate::bus::{AccessSizes, BusAddress, BusDevice};
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};
use crate::system::SystemControl;

/// The port System Control Port A is decoded at.
pub const PORT92: u64 = 0x92;
/// It is one byte wide.
pub const PORT92_LEN: u64 = 1;

/// Bit 0: fast reset, acting on its rising edge.
pub const FAST_RESET: u8 = 1 << 0;
/// Bit 1: the A20 gate (set = address line 20 enabled).
pub const A20_GATE: u8 = 1 << 1;

pub struct Port92 {
    value: u8,
    system: Arc<dyn SystemControl>,
}

impl Port92 {
    /// The port at its power-on value (0: A20 bit clear, no reset pending), reporting to
    /// `system`. Construction does not drive the A20 gate: the board owns its initial level.
    pub fn new(system: Arc<dyn SystemControl>) -> Port92 {
        Port92 { value: 0, system }
    }

    /// The value the port reads back.
    pub fn value(&self) -> u8 {
        self.value
    }

    /// A system reset: the fast-reset bit clears (so the next 0-to-1 write resets again); the
    /// A20 bit keeps its value, as in QEMU.
    pub fn reset(&mut self) {
        self.value &= !FAST_RESET;
    }

    fn write_value(&mut self, value: u8) {
        let old = self.value;
        self.value = value;
        self.system.set_a20(value & A20_GATE != 0);
        if value & FAST_RESET != 0 && old & FAST_RESET == 0 {
            info!("port 0x92: fast reset requested");
            self.system.request_reset();
        } else if (value ^ old) & !(FAST_RESET | A20_GATE) != 0 {
            debug!("port 0x92: reserved bits now {value:#04x}");
        }
    }
}

impl BusDevice for Port92 {
    fn read(&mut self, _at: BusAddress, data: &mut [u8]) {
        data.fill(self.value);
    }

    fn write(&mut self, _at: BusAddress, data: &[u8]) {
        if let Some(&value) = data.first() {
            self.write_value(value);
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::BYTE
    }
}

impl Snapshot for Port92 {
    fn snapshot_id(&self) -> &'static str {
        "port92"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        w.u8(self.value);
    }

    /// The A20 gate is not re-driven: its level is board state (the 8042 drives it too), which
    /// the board restores with the CPU.
    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        self.value = r.u8()?;
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

    fn rig() -> (Bus, Arc<SystemSignals>, Arc<Mutex<Port92>>) {
        let signals = Arc::new(SystemSignals::new());
        let port = Arc::new(Mutex::new(Port92::new(signals.clone())));
        let bus = Bus::new(BusKind::Pio);
        bus.insert("port92", PORT92, PORT92_LEN, port.clone())
            .unwrap();
        (bus, signals, port)
    }

    #[test]
    fn a20_follows_bit_1_and_reads_back() {
        let (bus, signals, _) = rig();
        assert_eq!(bus.read_value(PORT92, 1), 0);
        bus.write_value(PORT92, 1, 0x00);
        assert!(!signals.a20());
        assert_eq!(bus.read_value(PORT92, 1), 0x00);
        bus.write_value(PORT92, 1, 0x02);
        assert!(signals.a20());
        assert_eq!(bus.read_value(PORT92, 1), 0x02);
        bus.write_value(PORT92, 1, 0x00);
        assert!(!signals.a20());
        assert!(!signals.take_reset(), "A20 writes never reset");
    }

    #[test]
    fn reset_on_rising_edge_of_bit_0_only() {
        let (bus, signals, port) = rig();
        bus.write_value(PORT92, 1, 0x03);
        assert!(signals.take_reset());
        assert!(signals.a20());
        assert_eq!(bus.read_value(PORT92, 1), 0x03);
        // Rewriting the value read back (bit 0 still set) is not an edge.
        bus.write_value(PORT92, 1, 0x03);
        assert!(!signals.take_reset());
        bus.write_value(PORT92, 1, 0x02);
        assert!(!signals.take_reset(), "a falling edge does not reset");
        bus.write_value(PORT92, 1, 0x01);
        assert!(signals.take_reset());
        // The board's reset clears bit 0, so the next set resets again.
        port.lock().unwrap().reset();
        assert_eq!(bus.read_value(PORT92, 1), 0x00);
        bus.write_value(PORT92, 1, 0x01);
        assert!(signals.take_reset());
    }

    #[test]
    fn wide_accesses_reach_only_the_byte_at_0x92() {
        let (bus, signals, _) = rig();
        // A word write at 0x91 puts its high byte in port 0x92.
        bus.write_value(0x91, 2, 0x0200);
        assert!(signals.a20());
        assert_eq!(bus.read_value(0x92, 2), 0xFF02);
    }

    #[test]
    fn snapshot_round_trip_and_edge_continues() {
        let (_, _, port) = rig();
        port.lock().unwrap().write_value(0x03);
        let signals = Arc::new(SystemSignals::new());
        let mut fresh = Port92::new(signals.clone());
        check_round_trip(&*port.lock().unwrap(), &mut fresh).unwrap();
        assert_eq!(fresh.value(), 0x03);
        // Bit 0 was restored set: writing it again is no edge; clearing and setting is.
        fresh.write_value(0x03);
        assert!(!signals.take_reset());
        fresh.write_value(0x02);
        fresh.write_value(0x03);
        assert!(signals.take_reset());
    }

    #[test]
    fn any_value_at_any_width_is_harmless() {
        let (bus, _, _) = rig();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let size = 1usize << (x % 4);
            let port = 0x90 + (x >> 8) % 6;
            if x & 0x100 == 0 {
                bus.write_value(port, size, x >> 16);
            } else {
                bus.read_value(port, size);
            }
        }
    }
}
