//! The ioreq server against the simulated Xen: the test posts requests into the shared page
//! and the buffered ring exactly as Xen does and checks the answers, the devices' view and the
//! DM ops issued.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use devices::bus::Bus;
use devices::bus::{BusAddress, BusDevice, BusKind};
use devices::chardev::NullSink;
use devices::clock::Clock;
use devices::pci::i440fx::{I440FX_BDF, I440fx};
use devices::pci::piix3::{PIIX3_BDF, Piix3, PirqRouter};
use devices::pci::{IntxPin, IntxSink, PciRoot};
use devices::serial::uart16550::{COM1_BASE, UART_PORT_COUNT, Uart16550};
use devices::system::SystemControl;
use xen::abi::dmop::{DmOp, XEN_DMOP_IO_RANGE_PCI};
use xen::abi::*;
use xen::ioreq_server::{
    DeviceModel, IoreqServer, IsaIrq, Oddity, ServerConfig, ShutdownLatch, XenIntxSink,
    XenLinkRoutes,
};
use xen::mapcache::{MapCache, new_mapcache};
use xen::transport::sim::{SimConfig, SimXen, pair};
use xen::transport::{RangeKind, Transport};

const DOMID: u16 = 7;
const PROBE_PORT: u64 = 0x100;
const PROBE_MMIO: u64 = 0xFEB0_0000;
const RAM: u64 = 4 << 20;

/// Logs every access; reads return successive bytes of a counter so order is visible.
#[derive(Default)]
struct Probe {
    log: Vec<(char, u64, Vec<u8>)>,
    next: u8,
}

impl BusDevice for Probe {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        for b in data.iter_mut() {
            *b = self.next;
            self.next = self.next.wrapping_add(1);
        }
        self.log.push(('r', at.absolute(), data.to_vec()));
    }
    fn write(&mut self, at: BusAddress, data: &[u8]) {
        self.log.push(('w', at.absolute(), data.to_vec()));
    }
}

/// Writing anything asks for a poweroff (a stand-in for PM1a S5).
struct PowerButton(Arc<ShutdownLatch>);

impl BusDevice for PowerButton {
    fn read(&mut self, _at: BusAddress, _data: &mut [u8]) {}
    fn write(&mut self, _at: BusAddress, _data: &[u8]) {
        self.0.request_exit(0);
    }
}

struct Rig {
    xen: SimXen,
    server: IoreqServer,
    dm: DeviceModel,
    probe: Arc<Mutex<Probe>>,
    cache: Arc<MapCache>,
    offsets: Arc<Mutex<Vec<i64>>>,
    transport: Arc<dyn Transport>,
}

fn rig() -> Rig {
    let (t, xen) = pair(SimConfig {
        domid: DOMID,
        vcpus: 2,
        ram_bytes: RAM,
    })
    .unwrap();
    let transport: Arc<dyn Transport> = Arc::new(t);
    let pio = Arc::new(Bus::new(BusKind::Pio));
    let mmio = Arc::new(Bus::new(BusKind::Mmio));
    let probe = Arc::new(Mutex::new(Probe::default()));
    pio.insert("probe", PROBE_PORT, 16, probe.clone()).unwrap();
    mmio.insert("probe", PROBE_MMIO, 0x1000, probe.clone())
        .unwrap();

    let router = PirqRouter::unconnected();
    router.set_listener(Arc::new(XenLinkRoutes::new(transport.clone(), DOMID)));
    let root = PciRoot::new(pio.clone(), mmio.clone(), router.clone());
    root.add(I440FX_BDF, I440fx::new()).unwrap();
    root.add(PIIX3_BDF, Piix3::new(router)).unwrap();
    root.set_intx_sink(Arc::new(XenIntxSink::new(transport.clone(), DOMID)));

    let isa = IsaIrq::lines(&transport, DOMID);
    let clock = Clock::new(0);
    let uart = Uart16550::new_shared(&clock, isa[4].clone(), Box::new(NullSink));
    pio.insert("com1", COM1_BASE, UART_PORT_COUNT, uart)
        .unwrap();
    let latch = ShutdownLatch::new();
    pio.insert(
        "power",
        0xB004,
        2,
        Arc::new(Mutex::new(PowerButton(latch.clone()))),
    )
    .unwrap();

    let cache = Arc::new(new_mapcache(transport.clone(), DOMID));
    let offsets = Arc::new(Mutex::new(Vec::new()));
    let seen = offsets.clone();
    let dm = DeviceModel::new(pio, mmio, cache.clone())
        .with_pci(root.clone())
        .with_shutdown(latch)
        .on_time_offset(move |d| seen.lock().unwrap().push(d));
    let server = IoreqServer::create(transport.clone(), ServerConfig::new(DOMID), &dm).unwrap();
    root.set_mapping_listener(server.bar_listener());
    Rig {
        xen,
        server,
        dm,
        probe,
        cache,
        offsets,
        transport,
    }
}

impl Rig {
    /// One synchronous round trip on `vcpu`, single-threaded: post, serve, collect. Asserts
    /// the server answered (IORESP_READY) and notified.
    fn run_on(&mut self, vcpu: usize, req: IoReq) -> IoReq {
        let v = self.xen.vcpu(vcpu).unwrap();
        v.post(&req).unwrap();
        self.server.handle_events(&mut self.dm).unwrap();
        assert_eq!(
            v.state(),
            STATE_IORESP_READY,
            "request {req:?} not completed"
        );
        assert!(v.take_notified(), "vCPU port not notified");
        let resp = v.response().unwrap();
        assert_eq!(v.state(), STATE_IOREQ_NONE);
        resp
    }

    fn run(&mut self, req: IoReq) -> IoReq {
        self.run_on(0, req)
    }

    fn serve(&mut self) -> usize {
        self.server.handle_events(&mut self.dm).unwrap()
    }

    fn take_log(&self) -> Vec<(char, u64, Vec<u8>)> {
        std::mem::take(&mut self.probe.lock().unwrap().log)
    }

    fn ram(&self, addr: u64, len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        self.xen.ram_read(addr, &mut b).unwrap();
        b
    }
}

fn pio(read: bool, port: u64, size: u32, data: u64) -> IoReq {
    IoReq::new(IOREQ_TYPE_PIO, read, port, size, data)
}

fn mmio(read: bool, addr: u64, size: u32, data: u64) -> IoReq {
    IoReq::new(IOREQ_TYPE_COPY, read, addr, size, data)
}

#[test]
fn setup_claims_every_range_and_teardown_destroys() {
    let r = rig();
    let ops = r.xen.dm_ops();
    // The board's PIRQ listener reports the power-on routes (all disabled) first.
    assert_eq!(
        &ops[..4],
        &[0, 1, 2, 3].map(|link| DmOp::SetPciLinkRoute { link, irq: 0 })
    );
    // The log holds ops as issued (OUT fields still zero).
    assert_eq!(ops[4], DmOp::NrVcpus { vcpus: 0 });
    let ops = &ops[5..];
    assert!(matches!(
        ops[0],
        DmOp::CreateIoreqServer {
            handle_bufioreq: HVM_IOREQSRV_BUFIOREQ_ATOMIC,
            ..
        }
    ));
    assert!(matches!(ops[1], DmOp::GetIoreqServerInfo { flags: 1, .. }));
    assert!(matches!(
        ops[2],
        DmOp::SetIoreqServerState { enabled: true, .. }
    ));
    let ranges = r.xen.ranges();
    for want in [
        (RangeKind::Port, PROBE_PORT, PROBE_PORT + 15),
        (RangeKind::Port, COM1_BASE, COM1_BASE + 7),
        (RangeKind::Memory, PROBE_MMIO, PROBE_MMIO + 0xFFF),
        (RangeKind::Pci, 0, 0),
        (RangeKind::Pci, 8, 8),
    ] {
        assert!(ranges.contains(&want), "{want:?} not claimed: {ranges:?}");
    }
    assert!(ops.iter().any(|o| matches!(
        o,
        DmOp::MapIoRange {
            ty: XEN_DMOP_IO_RANGE_PCI,
            start: 8,
            end: 8,
            ..
        }
    )));
    assert_eq!(r.server.vcpu_ports().len(), 2);
    assert_eq!(r.xen.server_state(), Some(true));
    let Rig { xen, server, .. } = r;
    xen.take_dm_ops();
    server.shutdown().unwrap();
    let ops = xen.take_dm_ops();
    assert!(matches!(
        ops[0],
        DmOp::SetIoreqServerState { enabled: false, .. }
    ));
    assert!(matches!(ops.last(), Some(DmOp::DestroyIoreqServer { .. })));
    assert_eq!(xen.server_state(), None);
}

#[test]
fn port_io_of_each_size_in_both_directions() {
    let mut r = rig();
    for size in [1u32, 2, 4] {
        // Bits above `size` are garbage the device must not see.
        r.run(pio(false, PROBE_PORT + 4, size, 0xDEAD_BEEF_1122_3344));
        let log = r.take_log();
        assert_eq!(
            log,
            vec![(
                'w',
                PROBE_PORT + 4,
                0x1122_3344u32.to_le_bytes()[..size as usize].to_vec()
            )]
        );
        let resp = r.run(pio(true, PROBE_PORT, size, 0));
        let log = r.take_log();
        let mut want = [0u8; 8];
        want[..size as usize].copy_from_slice(&log[0].2);
        assert_eq!(resp.data, u64::from_le_bytes(want));
        assert_eq!(log[0].2.len(), size as usize);
    }
    // The other vCPU's slot works too.
    let resp = r.run_on(1, pio(true, PROBE_PORT, 1, 0));
    assert_eq!(r.take_log().len(), 1);
    assert!(resp.data < 0x100);
}

#[test]
fn mmio_of_each_size_in_both_directions() {
    let mut r = rig();
    for size in [1u32, 2, 4, 8] {
        r.run(mmio(false, PROBE_MMIO + 8, size, 0x0102_0304_0506_0708));
        let log = r.take_log();
        assert_eq!(
            log,
            vec![(
                'w',
                PROBE_MMIO + 8,
                0x0102_0304_0506_0708u64.to_le_bytes()[..size as usize].to_vec()
            )]
        );
        let resp = r.run(mmio(true, PROBE_MMIO + 16, size, 0));
        let log = r.take_log();
        let mut want = [0u8; 8];
        want[..size as usize].copy_from_slice(&log[0].2);
        assert_eq!(resp.data, u64::from_le_bytes(want));
    }
}

#[test]
fn rep_stos_to_mmio_steps_with_df() {
    let mut r = rig();
    r.run(mmio(false, PROBE_MMIO + 0x100, 4, 0xAABB_CCDD).with_count(3));
    let addrs: Vec<u64> = r.take_log().iter().map(|e| e.1).collect();
    assert_eq!(
        addrs,
        vec![PROBE_MMIO + 0x100, PROBE_MMIO + 0x104, PROBE_MMIO + 0x108]
    );
    r.run(
        mmio(false, PROBE_MMIO + 0x100, 2, 0x1234)
            .with_count(3)
            .with_df(true),
    );
    let log = r.take_log();
    let addrs: Vec<u64> = log.iter().map(|e| e.1).collect();
    assert_eq!(
        addrs,
        vec![PROBE_MMIO + 0x100, PROBE_MMIO + 0xFE, PROBE_MMIO + 0xFC]
    );
    assert!(log.iter().all(|e| e.2 == vec![0x34, 0x12]));
    // Rep reads keep the last value.
    let resp = r.run(mmio(true, PROBE_MMIO, 1, 0).with_count(3));
    let log = r.take_log();
    assert_eq!(log.len(), 3);
    assert_eq!(resp.data, u64::from(log[2].2[0]));
}

#[test]
fn rep_ins_and_outs_through_guest_memory_both_directions() {
    let mut r = rig();
    // INSW x4 upwards into 0x2000.
    let resp = r.run(
        pio(true, PROBE_PORT, 2, 0x2000)
            .with_count(4)
            .with_data_is_ptr(true),
    );
    assert_eq!(resp.data, 0x2000, "the pointer is left alone");
    assert_eq!(r.ram(0x2000, 8), vec![0, 1, 2, 3, 4, 5, 6, 7]);
    assert_eq!(r.take_log().len(), 4);
    // INSB x3 downwards from 0x3002.
    r.run(
        pio(true, PROBE_PORT, 1, 0x3002)
            .with_count(3)
            .with_data_is_ptr(true)
            .with_df(true),
    );
    assert_eq!(r.ram(0x3000, 3), vec![10, 9, 8]);
    r.take_log();
    // OUTSD x2 upwards from 0x4000, then downwards.
    r.xen.ram_write(0x4000, &[1, 2, 3, 4, 5, 6, 7, 8]).unwrap();
    r.run(
        pio(false, PROBE_PORT + 8, 4, 0x4000)
            .with_count(2)
            .with_data_is_ptr(true),
    );
    let log = r.take_log();
    assert_eq!(
        log,
        vec![
            ('w', PROBE_PORT + 8, vec![1, 2, 3, 4]),
            ('w', PROBE_PORT + 8, vec![5, 6, 7, 8])
        ]
    );
    r.run(
        pio(false, PROBE_PORT + 8, 4, 0x4004)
            .with_count(2)
            .with_data_is_ptr(true)
            .with_df(true),
    );
    let log = r.take_log();
    assert_eq!(log[0].2, vec![5, 6, 7, 8]);
    assert_eq!(log[1].2, vec![1, 2, 3, 4]);
}

#[test]
fn rep_movs_between_mmio_and_guest_memory() {
    let mut r = rig();
    // MMIO -> RAM, 8-byte items, crossing a guest page boundary in RAM.
    r.run(
        mmio(true, PROBE_MMIO, 8, 0x1FF8)
            .with_count(2)
            .with_data_is_ptr(true),
    );
    assert_eq!(r.ram(0x1FF8, 16), (0u8..16).collect::<Vec<_>>());
    let log = r.take_log();
    assert_eq!((log[0].1, log[1].1), (PROBE_MMIO, PROBE_MMIO + 8));
    // RAM -> MMIO downwards: both sides step down.
    r.xen.ram_write(0x5000, &[0xA, 0xB, 0xC, 0xD]).unwrap();
    r.run(
        mmio(false, PROBE_MMIO + 0x12, 2, 0x5002)
            .with_count(2)
            .with_data_is_ptr(true)
            .with_df(true),
    );
    let log = r.take_log();
    assert_eq!(
        log,
        vec![
            ('w', PROBE_MMIO + 0x12, vec![0xC, 0xD]),
            ('w', PROBE_MMIO + 0x10, vec![0xA, 0xB])
        ]
    );
}

#[test]
fn buffered_writes_in_order_with_pairs_and_wrap_around() {
    let mut r = rig();
    // Start just before the end of the ring so the entries wrap to slot 0; the 8-byte pair
    // straddles slots 510 and 0.
    r.xen.set_ring_pointers(1019, 1019).unwrap();
    r.xen
        .push_buffered(IOREQ_TYPE_COPY, 0xA0000, 1, 0x11)
        .unwrap();
    r.xen
        .push_buffered(IOREQ_TYPE_COPY, 0xA0002, 8, 0x8877_6655_4433_2211)
        .unwrap();
    r.xen
        .push_buffered(IOREQ_TYPE_PIO, PROBE_PORT as u32, 2, 0xBEEF)
        .unwrap();
    // The VGA window is not mapped here: put the probe on it.
    r.dm.mmio
        .insert("vga", 0xA0000, 0x20000, r.probe.clone())
        .unwrap();
    assert_eq!(r.serve(), 3);
    let log = r.take_log();
    assert_eq!(
        log,
        vec![
            ('w', 0xA0000, vec![0x11]),
            (
                'w',
                0xA0002,
                0x8877_6655_4433_2211u64.to_le_bytes().to_vec()
            ),
            ('w', PROBE_PORT, vec![0xEF, 0xBE]),
        ]
    );
    assert_eq!(r.xen.ring_pointers().unwrap(), (1023, 1023));
    assert_eq!(r.server.stats().buffered, 3);
}

#[test]
fn buffered_ring_is_drained_before_a_synchronous_request() {
    let mut r = rig();
    // A posted write whose notification has not arrived (Xen raced the vCPU's next access):
    // only the vCPU's port fires, and the write must still come first.
    let low = PROBE_MMIO & 0xFFFFF;
    r.dm.mmio.insert("low", low, 16, r.probe.clone()).unwrap();
    r.xen
        .write_ring_slot(0, BufIoReq::new(IOREQ_TYPE_COPY, false, 0, low as u32, 1))
        .unwrap();
    r.xen.set_ring_pointers(0, 1).unwrap();
    r.run(pio(true, PROBE_PORT, 1, 0));
    let kinds: Vec<char> = r.take_log().iter().map(|e| e.0).collect();
    assert_eq!(kinds, vec!['w', 'r']);
}

#[test]
fn timeoffset_reaches_the_board_sync_and_buffered() {
    let mut r = rig();
    r.run(IoReq::new(
        IOREQ_TYPE_TIMEOFFSET,
        false,
        0,
        8,
        (-3600i64) as u64,
    ));
    r.xen
        .push_buffered(IOREQ_TYPE_TIMEOFFSET, 0, 8, 0x1_0000_0002)
        .unwrap();
    r.serve();
    assert_eq!(*r.offsets.lock().unwrap(), vec![-3600, 0x1_0000_0002]);
}

#[test]
fn invalidate_flushes_the_mapcache() {
    let mut r = rig();
    r.run(pio(true, PROBE_PORT, 1, 0x1000).with_data_is_ptr(true));
    r.run(pio(true, PROBE_PORT, 1, 0x30_0000).with_data_is_ptr(true));
    assert_eq!(r.cache.mapped_buckets(), 2);
    let calls = r.xen.foreign_map_calls();
    let inv = IoReq::new(IOREQ_TYPE_INVALIDATE, false, 0, 4, u64::MAX).with_count(0);
    let resp = r.run(inv);
    assert_eq!(resp.data, u64::MAX);
    assert_eq!(r.cache.mapped_buckets(), 0);
    r.run(pio(true, PROBE_PORT, 1, 0x1000).with_data_is_ptr(true));
    assert_eq!(
        r.xen.foreign_map_calls(),
        calls + 1,
        "re-mapped after the flush"
    );
}

#[test]
fn pci_config_reaches_the_root_and_pirq_routes_become_dm_ops() {
    let mut r = rig();
    let cfg = |read, sbdf: u32, reg: u64, size, data| {
        IoReq::new(
            IOREQ_TYPE_PCI_CONFIG,
            read,
            (u64::from(sbdf) << 32) | reg,
            size,
            data,
        )
    };
    assert_eq!(r.run(cfg(true, pci_sbdf(0, 0, 0, 0), 0, 2, 0)).data, 0x8086);
    assert_eq!(
        r.run(cfg(true, pci_sbdf(0, 0, 0, 0), 0, 4, 0)).data,
        0x1237_8086
    );
    assert_eq!(r.run(cfg(true, pci_sbdf(0, 0, 1, 0), 2, 2, 0)).data, 0x7000);
    // No function at 00:05.0; another segment.
    assert_eq!(
        r.run(cfg(true, pci_sbdf(0, 0, 5, 0), 0, 4, 0)).data,
        0xFFFF_FFFF
    );
    assert_eq!(
        r.run(cfg(true, pci_sbdf(1, 0, 0, 0), 0, 2, 0)).data,
        u64::MAX
    );
    r.xen.take_dm_ops();
    r.run(cfg(false, pci_sbdf(0, 0, 1, 0), 0x61, 1, 0x0B));
    assert_eq!(
        r.xen.take_dm_ops(),
        vec![DmOp::SetPciLinkRoute { link: 1, irq: 11 }]
    );
    assert_eq!(
        r.run(cfg(true, pci_sbdf(0, 0, 1, 0), 0x61, 1, 0)).data,
        0x0B
    );
    r.run(cfg(false, pci_sbdf(0, 0, 1, 0), 0x61, 1, 0x80));
    assert_eq!(
        r.xen.take_dm_ops(),
        vec![DmOp::SetPciLinkRoute { link: 1, irq: 0 }]
    );
}

#[test]
fn device_interrupts_become_dm_ops() {
    let mut r = rig();
    r.xen.take_dm_ops();
    // Enabling the UART's THR-empty interrupt raises IRQ 4 at once.
    r.run(pio(false, COM1_BASE + 1, 1, 0x02));
    assert_eq!(
        r.xen.take_dm_ops(),
        vec![DmOp::SetIsaIrqLevel { irq: 4, level: 1 }]
    );
    // Reading IIR acknowledges THRE: the line drops.
    r.run(pio(true, COM1_BASE + 2, 1, 0));
    assert_eq!(
        r.xen.take_dm_ops(),
        vec![DmOp::SetIsaIrqLevel { irq: 4, level: 0 }]
    );
    // PCI INTx through the sink: repeats are not re-sent.
    let sink = XenIntxSink::new(r.transport.clone(), DOMID);
    sink.set_intx_level(3, IntxPin::B, true);
    sink.set_intx_level(3, IntxPin::B, true);
    sink.set_intx_level(3, IntxPin::B, false);
    assert_eq!(
        r.xen.take_dm_ops(),
        vec![
            DmOp::SetPciIntxLevel {
                domain: 0,
                bus: 0,
                device: 3,
                intx: 1,
                level: 1
            },
            DmOp::SetPciIntxLevel {
                domain: 0,
                bus: 0,
                device: 3,
                intx: 1,
                level: 0
            },
        ]
    );
}

#[test]
fn guest_poweroff_is_sent_before_the_vcpu_is_released() {
    let mut r = rig();
    r.xen.take_dm_ops();
    let v = r.xen.vcpu(0).unwrap();
    v.post(&pio(false, 0xB004, 2, 0x3400)).unwrap();
    r.serve();
    assert_eq!(
        r.xen.take_dm_ops(),
        vec![DmOp::RemoteShutdown {
            reason: SHUTDOWN_POWEROFF
        }]
    );
    assert_eq!(v.state(), STATE_IORESP_READY);
}

#[test]
fn ranges_follow_the_buses() {
    let mut r = rig();
    r.dm.pio.insert("late", 0x500, 4, r.probe.clone()).unwrap();
    r.dm.pio.remove(PROBE_PORT).unwrap();
    r.server.mark_ranges_stale();
    r.run(pio(true, 0x80, 1, 0));
    let ranges = r.xen.ranges();
    assert!(ranges.contains(&(RangeKind::Port, 0x500, 0x503)));
    assert!(!ranges.contains(&(RangeKind::Port, PROBE_PORT, PROBE_PORT + 15)));
    assert_eq!(r.server.claimed(), ranges);
}

#[test]
fn malformed_requests_complete_as_unclaimed_cycles() {
    let mut r = rig();
    // Sizes 0, 3, 16 (and 8 for ports): reads all ones, writes dropped.
    for size in [0u32, 3, 16] {
        assert_eq!(r.run(pio(true, PROBE_PORT, size, 0)).data, u64::MAX);
        assert_eq!(r.run(mmio(true, PROBE_MMIO, size, 0)).data, u64::MAX);
        r.run(pio(false, PROBE_PORT, size, 5));
        r.run(mmio(false, PROBE_MMIO, size, 5));
    }
    assert_eq!(r.run(pio(true, PROBE_PORT, 8, 0)).data, u64::MAX);
    assert!(r.take_log().is_empty());
    assert!(r.server.oddities().count(Oddity::BadSize) >= 13);

    // A huge or zero count: nothing touched, guest memory included.
    r.xen.ram_write(0x2000, &[0x5A; 8]).unwrap();
    let resp = r.run(
        pio(true, PROBE_PORT, 1, 0x2000)
            .with_count(u32::MAX)
            .with_data_is_ptr(true),
    );
    assert_eq!(resp.data, 0x2000);
    r.run(
        mmio(false, PROBE_MMIO, 4, 0x2000)
            .with_count(0)
            .with_data_is_ptr(true),
    );
    assert_eq!(
        r.run(mmio(true, PROBE_MMIO, 4, 0).with_count(5000)).data,
        u64::MAX
    );
    assert_eq!(r.ram(0x2000, 8), vec![0x5A; 8]);
    assert!(r.take_log().is_empty());
    assert_eq!(r.server.oddities().count(Oddity::BadCount), 3);

    // Unknown types.
    for ty in [3u8, 4, 9, 0xFF] {
        assert_eq!(r.run(IoReq::new(ty, true, 0x10, 4, 0)).data, u64::MAX);
    }
    assert_eq!(r.server.oddities().count(Oddity::UnknownType), 4);

    // String I/O to frames that are not RAM: device side still happens, memory side is
    // unassigned (reads ones, writes dropped).
    r.run(
        pio(true, PROBE_PORT, 2, RAM + 0x10)
            .with_count(2)
            .with_data_is_ptr(true),
    );
    assert_eq!(r.take_log().len(), 2);
    r.run(
        pio(false, PROBE_PORT, 2, RAM - 2)
            .with_count(2)
            .with_data_is_ptr(true),
    );
    let log = r.take_log();
    assert_eq!(log[1].2, vec![0xFF, 0xFF]);
    r.run(
        mmio(false, PROBE_MMIO, 4, u64::MAX - 1)
            .with_count(1)
            .with_data_is_ptr(true),
    );
    assert_eq!(r.take_log(), vec![('w', PROBE_MMIO, vec![0xFF; 4])]);
    assert!(r.server.oddities().count(Oddity::UnmappedBuffer) >= 3);

    // Addresses nobody serves.
    assert_eq!(r.run(pio(true, 0x9999, 2, 0)).data, 0xFFFF);
    assert_eq!(r.run(mmio(true, 0x1234_0000, 4, 0)).data, 0xFFFF_FFFF);
    assert_eq!(r.run(pio(true, 0x1_0000, 1, 0)).data, u64::MAX);
    r.run(mmio(false, 0xFFFF_FFFF_FFFF_FFFE, 8, 1));

    // PCI_CONFIG with a rep count or a pointer.
    let bad = IoReq::new(IOREQ_TYPE_PCI_CONFIG, true, 0, 2, 0).with_count(2);
    assert_eq!(r.run(bad).data, u64::MAX);
    let bad = IoReq::new(IOREQ_TYPE_PCI_CONFIG, true, 0, 2, 0x1000).with_data_is_ptr(true);
    assert_eq!(r.run(bad).data, 0x1000);
    assert!(r.take_log().is_empty());
}

#[test]
fn a_corrupt_buffered_ring_does_not_stall() {
    let mut r = rig();
    // read > write: resynchronised to the write pointer, nothing handled.
    r.xen.set_ring_pointers(10, 5).unwrap();
    r.xen.notify_buffered().unwrap();
    assert_eq!(r.serve(), 0);
    assert_eq!(r.xen.ring_pointers().unwrap(), (5, 5));
    // More queued than the ring holds.
    r.xen.set_ring_pointers(0, 600).unwrap();
    r.xen.notify_buffered().unwrap();
    r.serve();
    assert_eq!(r.xen.ring_pointers().unwrap(), (600, 600));
    // An 8-byte entry whose second half was never published.
    r.xen
        .write_ring_slot(600, BufIoReq::new(IOREQ_TYPE_COPY, false, 3, 0xA0000, 1))
        .unwrap();
    r.xen.set_ring_pointers(600, 601).unwrap();
    r.xen.notify_buffered().unwrap();
    r.serve();
    assert_eq!(r.xen.ring_pointers().unwrap(), (601, 601));
    // A buffered "read" is ignored.
    r.xen
        .push_buffered_raw(&[BufIoReq::new(IOREQ_TYPE_PIO, true, 0, PROBE_PORT as u32, 0)])
        .unwrap();
    r.serve();
    assert!(r.take_log().is_empty());
    assert_eq!(r.server.oddities().count(Oddity::RingOutOfOrder), 2);
    assert_eq!(r.server.oddities().count(Oddity::RingTornPair), 1);
    assert_eq!(r.server.oddities().count(Oddity::BufferedRead), 1);
    // The synchronous path still works afterwards.
    r.run(pio(true, PROBE_PORT, 1, 0));
}

#[test]
fn spurious_events_are_ignored() {
    let mut r = rig();
    r.xen.notify_buffered().unwrap();
    assert_eq!(r.serve(), 0);
    assert_eq!(r.server.stats().sync, 0);
}

#[test]
fn a_server_thread_answers_a_xen_thread() {
    let r = rig();
    let Rig {
        xen,
        mut server,
        mut dm,
        probe,
        ..
    } = r;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let worker = std::thread::spawn(move || {
        while !stop2.load(std::sync::atomic::Ordering::Acquire) {
            if server.wait(Some(Duration::from_millis(20))).unwrap() {
                server.handle_events(&mut dm).unwrap();
            }
        }
        server.stats()
    });
    let v0 = xen.vcpu(0).unwrap();
    let v1 = xen.vcpu(1).unwrap();
    for i in 0..200u64 {
        let v = if i % 2 == 0 { &v0 } else { &v1 };
        let resp = v
            .request(&pio(false, PROBE_PORT, 4, i), Duration::from_secs(5))
            .unwrap()
            .expect("no answer");
        assert_eq!(resp.data, i);
    }
    stop.store(true, std::sync::atomic::Ordering::Release);
    let stats = worker.join().unwrap();
    assert_eq!(stats.sync, 200);
    assert_eq!(probe.lock().unwrap().log.len(), 200);
}

#[test]
fn the_event_fd_drives_a_mio_loop() {
    use mio::unix::SourceFd;
    use mio::{Events, Interest, Poll, Token};
    use std::os::fd::AsRawFd;

    let mut r = rig();
    let mut poll = Poll::new().unwrap();
    let raw = r.server.event_fd().as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&raw), Token(1), Interest::READABLE)
        .unwrap();
    let mut events = Events::with_capacity(4);
    poll.poll(&mut events, Some(Duration::ZERO)).unwrap();
    assert!(events.is_empty());
    for round in 0..3 {
        r.xen.post(round % 2, &pio(true, PROBE_PORT, 1, 0)).unwrap();
        poll.poll(&mut events, Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(events.iter().next().map(|e| e.token()), Some(Token(1)));
        assert_eq!(r.serve(), 1);
        assert!(r.xen.response(round % 2).is_some());
    }
}

/// A PCI function with one 32-byte I/O BAR whose registers read back their offset.
struct IoBarDev {
    config: devices::pci::ConfigSpace,
}

impl devices::pci::PciFunction for IoBarDev {
    fn name(&self) -> &str {
        "iobar"
    }
    fn config(&self) -> &devices::pci::ConfigSpace {
        &self.config
    }
    fn config_mut(&mut self) -> &mut devices::pci::ConfigSpace {
        &mut self.config
    }
    fn bar_read(&mut self, _bar: usize, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = offset as u8 + i as u8;
        }
    }
}

#[test]
fn bar_programming_through_pci_config_claims_and_moves_ranges() {
    use devices::pci::{BarKind, Bdf, ConfigSpace, PciIds};
    let mut r = rig();
    let mut config = ConfigSpace::new(PciIds {
        vendor_id: 0x1B36,
        device_id: 0x0001,
        revision_id: 0,
        class_code: 0xFF_00_00,
        subsystem_vendor_id: 0,
        subsystem_id: 0,
    });
    config.add_bar(0, BarKind::Io, 0x20).unwrap();
    let root = r.dm.pci.clone().unwrap();
    root.add(Bdf::new(0, 3, 0).unwrap(), IoBarDev { config })
        .unwrap();
    r.server.mark_ranges_stale();
    let sbdf = u64::from(pci_sbdf(0, 0, 3, 0));
    let cfg = |read, reg: u64, size, data| {
        IoReq::new(IOREQ_TYPE_PCI_CONFIG, read, (sbdf << 32) | reg, size, data)
    };
    assert_eq!(r.run(cfg(true, 0, 2, 0)).data, 0x1B36);
    assert!(r.xen.ranges().contains(&(RangeKind::Pci, sbdf, sbdf)));
    // BAR0 = 0xC000, then I/O decode on: the range is claimed before the vCPU resumes.
    r.run(cfg(false, 0x10, 4, 0xC000));
    r.run(cfg(false, 0x04, 2, 0x0001));
    assert!(r.xen.ranges().contains(&(RangeKind::Port, 0xC000, 0xC01F)));
    assert_eq!(r.run(pio(true, 0xC004, 2, 0)).data, 0x0504);
    // Moving the BAR releases the old range.
    r.run(cfg(false, 0x10, 4, 0xC100));
    let ranges = r.xen.ranges();
    assert!(ranges.contains(&(RangeKind::Port, 0xC100, 0xC11F)));
    assert!(!ranges.contains(&(RangeKind::Port, 0xC000, 0xC01F)));
    // Decode off: gone.
    r.run(cfg(false, 0x04, 2, 0));
    assert!(!r.xen.ranges().iter().any(|x| x.1 == 0xC100));
}
