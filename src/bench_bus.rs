//! The port-I/O dispatch benchmark: the path every `in`/`out` of a guest takes, from the bus
//! lookup through width adaptation to the device's register, on the real PC device set.

use std::hint::black_box;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use devices::bus::Bus;
use devices::chardev::NullSink;
use devices::guest_memory::MappedRam;
use machines::pc::{PcConfig, PcDevices};

#[derive(clap::Args)]
pub struct Options {
    /// How long to measure each workload, in seconds.
    #[arg(long, default_value_t = 1.0)]
    seconds: f64,
    /// Independent runs per workload; the median is reported.
    #[arg(long, default_value_t = 5)]
    runs: usize,
}

/// One workload: `accesses` bus accesses per call.
struct Workload {
    name: &'static str,
    accesses: u64,
    run: fn(&Bus),
}

const PCI_ADDRESS: u64 = 0xcf8;
const PCI_DATA: u64 = 0xcfc;
/// CONFIG_ADDRESS for 00:00.0, register 0 (the host bridge's vendor/device IDs).
const HOST_BRIDGE_ID: u64 = 0x8000_0000;

const WORKLOADS: &[Workload] = &[
    Workload {
        name: "UART scratch read (inb 0x3ff)",
        accesses: 1,
        run: |bus| {
            black_box(bus.read_value(black_box(0x3ff), 1));
        },
    },
    Workload {
        name: "UART scratch write (outb 0x3ff)",
        accesses: 1,
        run: |bus| bus.write_value(black_box(0x3ff), 1, black_box(0x5a)),
    },
    Workload {
        name: "UART LSR read (inb 0x3fd)",
        accesses: 1,
        run: |bus| {
            black_box(bus.read_value(black_box(0x3fd), 1));
        },
    },
    Workload {
        name: "PCI config read (outl 0xcf8; inl 0xcfc)",
        accesses: 2,
        run: |bus| {
            bus.write_value(PCI_ADDRESS, 4, black_box(HOST_BRIDGE_ID));
            black_box(bus.read_value(black_box(PCI_DATA), 4));
        },
    },
    Workload {
        name: "PCI config data read, address latched (inl 0xcfc)",
        accesses: 1,
        run: |bus| {
            black_box(bus.read_value(black_box(PCI_DATA), 4));
        },
    },
    Workload {
        name: "unmapped port read (inb 0x300)",
        accesses: 1,
        run: |bus| {
            black_box(bus.read_value(black_box(0x300), 1));
        },
    },
];

pub fn run(options: &Options) -> Result<()> {
    let ram = Arc::new(MappedRam::new(&[(0, 16 << 20)]).context("allocating guest RAM")?);
    let pc = PcDevices::new(
        PcConfig {
            ram_below_4g: 16 << 20,
            ram_above_4g: 0,
            cpus: 1,
            rtc_base_unix_secs: 0,
            serial: Box::new(NullSink),
            debugcon: Box::new(io::sink()),
        },
        ram,
    )
    .context("building the PC device set")?;
    let per_run = Duration::from_secs_f64(options.seconds.max(0.01) / options.runs.max(1) as f64);

    println!(
        "port-I/O dispatch through the PC device set ({} runs of {:?}, median)",
        options.runs.max(1),
        per_run
    );
    println!(
        "{:<52} {:>14} {:>12}",
        "workload", "accesses/s", "ns/access"
    );
    for w in WORKLOADS {
        (w.run)(&pc.pio);
        if w.name.starts_with("PCI config data") {
            pc.pio.write_value(PCI_ADDRESS, 4, HOST_BRIDGE_ID);
        }
        let mut rates: Vec<f64> = (0..options.runs.max(1))
            .map(|_| measure(&pc.pio, w, per_run))
            .collect();
        rates.sort_by(f64::total_cmp);
        let median = rates[rates.len() / 2];
        println!("{:<52} {:>14.0} {:>12.1}", w.name, median, 1e9 / median);
    }
    Ok(())
}

/// Bus accesses per second for `w`, over at least `period`.
fn measure(bus: &Bus, w: &Workload, period: Duration) -> f64 {
    const BATCH: u64 = 10_000;
    let start = Instant::now();
    let mut calls = 0u64;
    while start.elapsed() < period {
        for _ in 0..BATCH {
            (w.run)(bus);
        }
        calls += BATCH;
    }
    (calls * w.accesses) as f64 / start.elapsed().as_secs_f64()
}
