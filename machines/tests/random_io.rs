//! Random access sequences against the whole legacy device set, through the port bus, as a
//! hostile or buggy guest would make them: any port, any width, any value, interleaved with
//! time passing, interrupt acknowledges, host input and snapshot round trips.
//!
//! What must hold: no panic, no unbounded growth (each device's state stays small), and a
//! snapshot taken at any point restores to the very same state. The seed is fixed so CI runs
//! the same sequences every time; `PROPTEST_CASES=100000 cargo test --release -p machines
//! --test random_io` runs many more.

use std::io;
use std::sync::Arc;

use devices::chardev::NullSink;
use devices::guest_memory::MappedRam;
use devices::input::i8042::KeyCode;
use machines::pc::{PcConfig, PcDevices};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

/// Ports where the PC has devices; most accesses land on or next to them.
const HOT_PORTS: &[(u16, u16)] = &[
    (0x20, 2),
    (0xa0, 2),
    (0x4d0, 2),
    (0x40, 4),
    (0x61, 1),
    (0x60, 1),
    (0x64, 1),
    (0x70, 2),
    (0x80, 1),
    (0xe9, 1),
    (0x402, 1),
    (0x3f8, 8),
    (0x510, 2),
    (0x514, 8),
    (0xcf8, 8),
];

const RAM_BYTES: usize = 4 << 20;

#[derive(Clone, Debug)]
enum Op {
    Read { port: u16, size: usize },
    Write { port: u16, size: usize, value: u64 },
    Advance { nanos: u64 },
    Acknowledge,
    SerialInput(Vec<u8>),
    Key { index: usize, pressed: bool },
    SnapshotRoundTrip,
}

fn port() -> impl Strategy<Value = u16> {
    prop_oneof![
        9 => (0..HOT_PORTS.len(), -2i32..10).prop_map(|(i, delta)| {
            let (base, _) = HOT_PORTS[i];
            (i32::from(base) + delta).clamp(0, 0xffff) as u16
        }),
        1 => any::<u16>(),
    ]
}

fn size() -> impl Strategy<Value = usize> {
    prop_oneof![Just(1usize), Just(2), Just(4), Just(8), 1usize..=8]
}

/// Values that hit corners (all ones, zero, one bit) more often than uniform values would.
fn value() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => any::<u64>(),
        2 => any::<u8>().prop_map(u64::from),
        1 => Just(0u64),
        1 => Just(u64::MAX),
        1 => (0u32..64).prop_map(|b| 1u64 << b),
        1 => Just(0x8000_0000u64),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        30 => (port(), size()).prop_map(|(port, size)| Op::Read { port, size }),
        40 => (port(), size(), value()).prop_map(|(port, size, value)| Op::Write { port, size, value }),
        8 => prop_oneof![0u64..100_000, 0u64..20_000_000, Just(1_000_000_000u64)]
            .prop_map(|nanos| Op::Advance { nanos }),
        6 => Just(Op::Acknowledge),
        3 => proptest::collection::vec(any::<u8>(), 0..40).prop_map(Op::SerialInput),
        3 => (0..KeyCode::ALL.len(), any::<bool>()).prop_map(|(index, pressed)| Op::Key { index, pressed }),
        1 => Just(Op::SnapshotRoundTrip),
    ]
}

fn machine() -> PcDevices {
    let ram = Arc::new(MappedRam::new(&[(0, RAM_BYTES)]).expect("guest RAM"));
    PcDevices::new(
        PcConfig {
            ram_below_4g: RAM_BYTES as u64,
            ram_above_4g: 0,
            cpus: 1,
            rtc_base_unix_secs: 1_795_536_645,
            serial: Box::new(NullSink),
            debugcon: Box::new(io::sink()),
        },
        ram,
    )
    .expect("PC device set")
}

/// No device's state may grow past this, whatever the guest does.
const MAX_STATE_BYTES: usize = 16 * 1024;

fn check_round_trip(pc: &PcDevices) -> Result<(), TestCaseError> {
    let blobs = pc.save_all();
    for (name, blob) in &blobs {
        prop_assert!(
            blob.len() <= MAX_STATE_BYTES,
            "{name} state grew to {} bytes",
            blob.len()
        );
    }
    pc.restore_all(&blobs)
        .map_err(|e| TestCaseError::fail(e.to_string()))?;
    prop_assert_eq!(pc.save_all(), blobs);
    Ok(())
}

fn run(ops: &[Op]) -> Result<(), TestCaseError> {
    let pc = machine();
    for op in ops {
        match op {
            Op::Read { port, size } => {
                let mut buf = [0u8; 8];
                pc.pio.read(u64::from(*port), &mut buf[..*size]);
            }
            Op::Write { port, size, value } => pc.pio.write_value(u64::from(*port), *size, *value),
            Op::Advance { nanos } => pc.clock.advance_by(*nanos),
            Op::Acknowledge => {
                let mut pic = pc.pic.lock().unwrap();
                if pic.interrupt_pending() {
                    pic.acknowledge();
                }
            }
            Op::SerialInput(bytes) => {
                pc.com1.lock().unwrap().receive(bytes);
            }
            Op::Key { index, pressed } => {
                pc.i8042
                    .lock()
                    .unwrap()
                    .key_event(KeyCode::ALL[*index], *pressed);
            }
            Op::SnapshotRoundTrip => check_round_trip(&pc)?,
        }
    }
    check_round_trip(&pc)
}

proptest! {
    #![proptest_config(Config {
        rng_seed: RngSeed::Fixed(0x5649_5245_4f21),
        failure_persistence: None,
        ..Config::default()
    })]

    #[test]
    fn random_port_io_never_breaks_the_legacy_devices(ops in proptest::collection::vec(op(), 1..400)) {
        run(&ops)?;
    }
}
