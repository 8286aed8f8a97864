//! The `xenfv` board behind the ioreq server, with the simulated Xen playing the hypervisor:
//! the requests hvmloader and a guest make arrive as real `ioreq_t`s, and what the device model
//! tells Xen comes back as recorded DM ops.

use std::sync::{Arc, Mutex};

use devices::chardev::CharSink;
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
    assert_eq!(id(&mut r, 1, 3), 0x7113_8086, "PIIX4 PM");
    assert_eq!(id(&mut r, 2, 0), 0x1111_1234, "std VGA");
    assert_eq!(id(&mut r, 3, 0), 0x0001_5853, "Xen platform");
    assert_eq!(id(&mut r, 4, 0), 0xffff_ffff, "empty slot");
    let pci: Vec<u64> = r
        .xen
        .ranges()
        .into_iter()
        .filter(|(k, _, _)| *k == RangeKind::Pci)
        .map(|(_, first, _)| first)
        .collect();
    for (dev, func) in [(0, 0), (1, 0), (1, 3), (2, 0), (3, 0)] {
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
    // 8259, 8254, RTC, the debug port and the PM timer are Xen's.
    for port in [0x20, 0xa0, 0x40, 0x43, 0x70, 0x71, 0xe9, 0x4d0] {
        assert!(!claimed(port), "port {port:#x} must stay with Xen");
    }
    for port in [0x3f8, 0x60, 0x64, 0x92, 0xcf8, 0xcf9, 0xb2, 0x10] {
        assert!(claimed(port), "port {port:#x} is the device model's");
    }
    assert!(r.board.vga.is_none());
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
