//! The `xenfv` board behind the ioreq server, with the simulated Xen playing the hypervisor:
//! the requests hvmloader and a guest make arrive as real `ioreq_t`s, and what the device model
//! tells Xen comes back as recorded DM ops.

use std::sync::{Arc, Mutex};

use devices::block::raw::RawFile;
use devices::chardev::CharSink;
use devices::rtc::mc146818::BootDevice;
use devices::storage::ide::{ChannelDrives, IdeDrive};
use xen::abi::dmop::DmOp;
use xen::abi::*;
use xen::ioreq_server::{IoreqServer, ServerConfig};
use xen::transport::sim::{SimConfig, SimXen, pair};
use xen::transport::{RangeKind, Transport};

use machines::xenfv::{Display, Xenfv, XenfvConfig};

const DOMID: u16 = 3;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl CharSink for Capture {
    fn write(&mut self, bytes: &[u8]) {
        self.0.lock().unwrap().extend_from_slice(bytes);
    }
}

struct Rig {
    xen: SimXen,
    server: IoreqServer,
    board: Xenfv,
    serial: Capture,
}

fn rig(display: Display) -> Rig {
    rig_with(display, [[None, None], [None, None]])
}

fn rig_with(display: Display, ide: [ChannelDrives; 2]) -> Rig {
    let (t, xen) = pair(SimConfig {
        domid: DOMID,
        vcpus: 1,
        ram_bytes: 4 << 20,
    })
    .unwrap();
    let transport: Arc<dyn Transport> = Arc::new(t);
    let serial = Capture::default();
    let board = Xenfv::new(
        transport.clone(),
        XenfvConfig {
            domid: DOMID,
            display,
            serial: Some(Box::new(serial.clone())),
            ide,
            ram_bytes: 64 << 20,
            boot_order: vec![BootDevice::HardDisk],
        },
    )
    .unwrap();
    let server = IoreqServer::create(transport, ServerConfig::new(DOMID), &board.dm).unwrap();
    board
        .dm
        .pci
        .as_ref()
        .unwrap()
        .set_mapping_listener(server.bar_listener());
    Rig {
        xen,
        server,
        board,
        serial,
    }
}

impl Rig {
    fn run(&mut self, req: IoReq) -> u64 {
        let v = self.xen.vcpu(0).unwrap();
        v.post(&req).unwrap();
        self.server.handle_events(&mut self.board.dm).unwrap();
        assert_eq!(v.state(), STATE_IORESP_READY, "{req:?} not answered");
        v.response().unwrap().data
    }

    fn config(&mut self, read: bool, dev: u8, func: u8, reg: u64, size: u32, data: u64) -> u64 {
        let sbdf = u64::from(pci_sbdf(0, 0, dev, func));
        self.run(IoReq::new(
            IOREQ_TYPE_PCI_CONFIG,
            read,
            (sbdf << 32) | reg,
            size,
            data,
        ))
    }

    fn pio(&mut self, read: bool, port: u64, size: u32, data: u64) -> u64 {
        self.run(IoReq::new(IOREQ_TYPE_PIO, read, port, size, data))
    }
}

#[test]
fn pci_functions_answer_where_hvmloader_looks() {
    let mut r = rig(Display::Std { vgabios: None });
    let id = |r: &mut Rig, dev, func| r.config(true, dev, func, 0, 4, 0);
    assert_eq!(id(&mut r, 0, 0), 0x1237_8086, "i440FX");
    assert_eq!(id(&mut r, 1, 0), 0x7000_8086, "PIIX3");
    assert_eq!(id(&mut r, 1, 1), 0x7010_8086, "PIIX3 IDE");
    assert_eq!(id(&mut r, 1, 3), 0x7113_8086, "PIIX4 PM");
    assert_eq!(id(&mut r, 2, 0), 0x0001_5853, "Xen platform");
    assert_eq!(id(&mut r, 3, 0), 0x1111_1234, "std VGA");
    assert_eq!(id(&mut r, 4, 0), 0xffff_ffff, "empty slot");
    let pci: Vec<u64> = r
        .xen
        .ranges()
        .into_iter()
        .filter(|(k, _, _)| *k == RangeKind::Pci)
        .map(|(_, first, _)| first)
        .collect();
    for (dev, func) in [(0, 0), (1, 0), (1, 1), (1, 3), (2, 0), (3, 0)] {
        assert!(
            pci.contains(&u64::from(pci_sbdf(0, 0, dev, func))),
            "{dev}.{func} not claimed"
        );
    }
}

#[test]
fn the_platform_xen_emulates_is_left_to_xen() {
    let r = rig(Display::None);
    let ports: Vec<(u64, u64)> = r
        .xen
        .ranges()
        .into_iter()
        .filter(|(k, _, _)| *k == RangeKind::Port)
        .map(|(_, a, b)| (a, b))
        .collect();
    let claimed = |p: u64| ports.iter().any(|&(a, b)| a <= p && p <= b);
    // 8259, 8254, the debug port and the PM timer are Xen's (so is the RTC, which forwards
    // only the CMOS bytes it does not hold).
    for port in [0x20, 0xa0, 0x40, 0x43, 0xe9, 0x4d0] {
        assert!(!claimed(port), "port {port:#x} must stay with Xen");
    }
    for port in [
        0x3f8, 0x60, 0x64, 0x92, 0xcf8, 0xcf9, 0xb2, 0x10, 0x1f0, 0x3f6, 0x170,
    ] {
        assert!(claimed(port), "port {port:#x} is the device model's");
    }
    assert!(r.board.vga.is_none());
}

#[test]
fn cmos_bytes_xen_forwards_hold_the_boot_order_and_memory() {
    let mut r = rig(Display::None);
    let cmos = |r: &mut Rig, index: u64| {
        r.pio(false, 0x70, 1, index);
        r.pio(true, 0x71, 1, 0)
    };
    // 0x3D: first boot device in the low nibble (2 = hard disk).
    assert_eq!(cmos(&mut r, 0x3d) & 0x0f, 2);
    // 0x34/0x35: RAM above 16 MiB in 64 KiB units (64 MiB guest → 48 MiB → 768).
    assert_eq!(cmos(&mut r, 0x34) | (cmos(&mut r, 0x35) << 8), 768);
}

#[test]
fn serial_output_and_its_interrupt_reach_xen() {
    let mut r = rig(Display::None);
    r.xen.take_dm_ops();
    r.pio(false, 0x3f8, 1, u64::from(b'V'));
    assert_eq!(&*r.serial.0.lock().unwrap(), b"V");
    // Enable the THR-empty interrupt: IRQ 4 rises through a DM op.
    r.pio(false, 0x3f9, 1, 0x02);
    assert!(
        r.xen
            .take_dm_ops()
            .contains(&DmOp::SetIsaIrqLevel { irq: 4, level: 1 })
    );
}

#[test]
fn acpi_s5_through_pm1a_powers_the_domain_off() {
    let mut r = rig(Display::None);
    // hvmloader's PM setup: PMBA = 0xb000, I/O decode on through PMREGMISC.
    r.config(false, 1, 3, 0x40, 4, 0xb001);
    r.config(false, 1, 3, 0x80, 1, 1);
    let claimed = r.xen.ranges();
    assert!(
        claimed.contains(&(RangeKind::Port, 0xb004, 0xb007)),
        "{claimed:?}"
    );
    r.xen.take_dm_ops();
    r.pio(false, 0xb004, 2, 0x2000);
    assert_eq!(
        r.xen.take_dm_ops(),
        vec![DmOp::RemoteShutdown {
            reason: SHUTDOWN_POWEROFF
        }]
    );
}

#[test]
fn reset_through_0xcf9_reboots_the_domain() {
    let mut r = rig(Display::None);
    r.xen.take_dm_ops();
    r.pio(false, 0xcf9, 1, 0x06);
    assert_eq!(
        r.xen.take_dm_ops(),
        vec![DmOp::RemoteShutdown {
            reason: SHUTDOWN_REBOOT
        }]
    );
}

#[test]
fn ide_dma_reads_a_sector_into_guest_memory_through_the_mapcache() {
    let dir = std::env::temp_dir().join(format!("vireo-xenfv-ide-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let image = dir.join("disk.img");
    let mut bytes = vec![0u8; 64 * 512];
    for (i, b) in bytes[512..1024].iter_mut().enumerate() {
        *b = (i as u8).wrapping_mul(7) ^ 0x5a;
    }
    std::fs::write(&image, &bytes).unwrap();
    let disk = IdeDrive::disk(Box::new(RawFile::open(&image, false).unwrap()));
    let mut r = rig_with(Display::None, [[Some(disk), None], [None, None]]);

    // Firmware's part: bus-master BAR at 0xc000, I/O and bus mastering on.
    r.config(false, 1, 1, 0x20, 4, 0xc001);
    r.config(false, 1, 1, 0x04, 2, 0x0005);
    assert!(r.xen.ranges().contains(&(RangeKind::Port, 0xc000, 0xc00f)));
    // One PRD entry: 512 bytes to 0x2000, end of table.
    r.xen
        .ram_write(0x1000, &[0x00, 0x20, 0, 0, 0x00, 0x02, 0x00, 0x80])
        .unwrap();
    r.xen.take_dm_ops();
    // READ DMA of LBA 1, one sector, on the primary master.
    for (port, value) in [
        (0x1f6, 0xe0),
        (0x1f2, 1),
        (0x1f3, 1),
        (0x1f4, 0),
        (0x1f5, 0),
        (0x1f7, 0xc8),
    ] {
        r.pio(false, port, 1, value);
    }
    r.pio(false, 0xc004, 4, 0x1000);
    r.pio(false, 0xc000, 1, 0x09);
    let mut got = vec![0u8; 512];
    r.xen.ram_read(0x2000, &mut got).unwrap();
    assert_eq!(got, bytes[512..1024]);
    assert_eq!(
        r.pio(true, 0xc002, 1, 0) & 0x04,
        0x04,
        "bus-master interrupt bit"
    );
    assert!(
        r.xen
            .take_dm_ops()
            .contains(&DmOp::SetIsaIrqLevel { irq: 14, level: 1 })
    );
    assert_eq!(
        r.pio(true, 0x1f7, 1, 0) & 0x89,
        0x00,
        "not busy, no DRQ, no error"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn device_state_saves_and_restores_across_boards() {
    let mut r = rig(Display::Std { vgabios: None });
    // Guest-visible state in an ISA device and in a PCI function.
    r.pio(false, 0x3ff, 1, 0xa5);
    r.config(false, 1, 3, 0x40, 4, 0xb001);
    r.config(false, 1, 3, 0x80, 1, 1);
    let saved = r.board.save_state();

    let mut fresh = rig(Display::Std { vgabios: None });
    fresh.board.load_state(&saved).unwrap();
    fresh.server.mark_ranges_stale();
    assert_eq!(fresh.pio(true, 0x3ff, 1, 0), 0xa5);
    assert_eq!(fresh.config(true, 1, 3, 0x40, 4, 0), 0xb001);
    // The restored PMBA decodes again: S5 still powers off.
    fresh.xen.take_dm_ops();
    fresh.pio(false, 0xb004, 2, 0x2000);
    assert!(fresh.xen.take_dm_ops().contains(&DmOp::RemoteShutdown {
        reason: SHUTDOWN_POWEROFF
    }));

    // A board without the VGA refuses the state of one with it, without panicking.
    let other = rig(Display::None);
    assert!(other.board.load_state(&saved).is_err());
    assert!(other.board.load_state(b"garbage").is_err());
}
