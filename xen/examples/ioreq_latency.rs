//! Ioreq round-trip latency over the simulated transport, next to its floor: a bare eventfd
//! ping-pong between two threads (what one request costs in wake-ups alone).
//!
//! `cargo run -p xen --release --example ioreq_latency [round_trips]`
//!
//! The "Xen" thread posts a port read into the shared page, notifies, and waits for
//! IORESP_READY; the device-model thread polls the event channel, serves the request through
//! the port bus and notifies back. Also reports buffered-ring throughput (posted writes).

use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use devices::bus::{Bus, BusAddress, BusDevice, BusKind};
use xen::abi::{IOREQ_TYPE_COPY, IOREQ_TYPE_PIO, IoReq};
use xen::ioreq_server::{DeviceModel, IoreqServer, ServerConfig};
use xen::mapcache::new_mapcache;
use xen::transport::Transport;
use xen::transport::os::{eventfd, eventfd_signal, eventfd_take, wait_readable};
use xen::transport::sim::{SimConfig, pair};

struct Constant;

impl BusDevice for Constant {
    fn read(&mut self, _at: BusAddress, data: &mut [u8]) {
        data.fill(0x5A);
    }
    fn write(&mut self, _at: BusAddress, _data: &[u8]) {}
}

fn summary(name: &str, mut ns: Vec<u64>) {
    ns.sort_unstable();
    let n = ns.len().max(1);
    let mean = ns.iter().sum::<u64>() / n as u64;
    let pct = |p: usize| ns.get((n * p / 100).min(n - 1)).copied().unwrap_or(0);
    println!(
        "{name:<34} mean {mean:>7} ns  p50 {:>7} ns  p99 {:>7} ns  ({:.0} round trips/s)",
        pct(50),
        pct(99),
        1e9 / mean.max(1) as f64
    );
}

fn eventfd_ping_pong(rounds: usize) -> Vec<u64> {
    let ping = Arc::new(eventfd().unwrap());
    let pong = Arc::new(eventfd().unwrap());
    let (p, q) = (ping.clone(), pong.clone());
    let echo = std::thread::spawn(move || {
        for _ in 0..rounds {
            while eventfd_take(p.as_fd()).unwrap() == 0 {
                wait_readable(p.as_fd(), None).unwrap();
            }
            eventfd_signal(q.as_fd()).unwrap();
        }
    });
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        eventfd_signal(ping.as_fd()).unwrap();
        while eventfd_take(pong.as_fd()).unwrap() == 0 {
            wait_readable(pong.as_fd(), None).unwrap();
        }
        times.push(t.elapsed().as_nanos() as u64);
    }
    echo.join().unwrap();
    times
}

fn main() {
    let rounds: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(20_000);

    let (t, xen) = pair(SimConfig {
        domid: 1,
        vcpus: 1,
        ram_bytes: 1 << 20,
    })
    .expect("simulated Xen");
    let transport: Arc<dyn Transport> = Arc::new(t);
    let pio = Arc::new(Bus::new(BusKind::Pio));
    let mmio = Arc::new(Bus::new(BusKind::Mmio));
    let dev = Arc::new(Mutex::new(Constant));
    pio.insert("constant", 0x80, 1, dev.clone()).unwrap();
    mmio.insert("vga", 0xA0000, 0x20000, dev).unwrap();
    let memory = Arc::new(new_mapcache(transport.clone(), 1));
    let mut dm = DeviceModel::new(pio, mmio, memory);
    let mut server = IoreqServer::create(transport, ServerConfig::new(1), &dm).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let worker = std::thread::spawn(move || {
        while !stop2.load(Ordering::Acquire) {
            if server.wait(Some(Duration::from_millis(10))).unwrap() {
                server.handle_events(&mut dm).unwrap();
            }
        }
        server.stats()
    });

    let vcpu = xen.vcpu(0).unwrap();
    let req = IoReq::new(IOREQ_TYPE_PIO, true, 0x80, 1, 0);
    for _ in 0..1000 {
        vcpu.request(&req, Duration::from_secs(5))
            .unwrap()
            .expect("answer");
    }
    let mut times = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        let r = vcpu
            .request(&req, Duration::from_secs(5))
            .unwrap()
            .expect("answer");
        times.push(t.elapsed().as_nanos() as u64);
        assert_eq!(r.data & 0xFF, 0x5A);
    }

    // Buffered ring: posted VGA writes in batches; the producer waits only when the ring is
    // full, as Xen falls back to the synchronous path then.
    let writes = rounds * 10;
    let start = Instant::now();
    let mut sent = 0;
    while sent < writes {
        match xen.push_buffered(IOREQ_TYPE_COPY, 0xA0000 + (sent as u32 & 0xFFFF), 1, 1) {
            Ok(()) => sent += 1,
            Err(_) => std::thread::yield_now(),
        }
    }
    while xen.ring_pointers().map(|(r, w)| r != w).unwrap_or(false) {
        std::thread::yield_now();
    }
    let buffered = start.elapsed();

    stop.store(true, Ordering::Release);
    let stats = worker.join().unwrap();

    println!("{rounds} round trips each (debug builds are much slower: use --release)");
    summary("bare eventfd ping-pong (floor)", eventfd_ping_pong(rounds));
    summary("ioreq PIO read, simulated Xen", times);
    println!(
        "{:<34} {writes} posted writes in {:.1} ms ({:.2} M writes/s); server saw {} sync, {} buffered",
        "buffered ring throughput",
        buffered.as_secs_f64() * 1e3,
        writes as f64 / buffered.as_secs_f64() / 1e6,
        stats.sync,
        stats.buffered
    );
}
