//! `xenfv`: the device set Xen expects from an HVM guest's device model.
//!
//! Xen emulates the platform itself — 8259, 8254, MC146818, IOAPIC, LAPIC, HPET, the PM timer
//! and PM1a event block, and port 0xE9 — so those are never registered here (their ports never
//! reach an ioreq server). What the device model provides, as qemu-xen does:
//!
//! | where | device | interrupt |
//! |---|---|---|
//! | 00:00.0 | i440FX host bridge | — |
//! | 00:01.0 | PIIX3 ISA bridge (PIRQ routes → `set_pci_link_route`) | — |
//! | 00:01.1 | PIIX3 IDE | ISA 14/15 |
//! | 00:01.3 | PIIX4 PM (PM1a_CNT, GPE0, APM ports 0xB2/0xB3) | SCI, ISA 9 |
//! | 00:02.0 | Xen platform device, unplug ports 0x10–0x1F | INTx |
//! | 00:03.0 | standard VGA with Bochs VBE (`vga="stdvga"`) | — |
//! | 0x3F8 | 16550A (COM1) | ISA 4 |
//! | 0x60, 0x64 | 8042 | ISA 1, 12 |
//! | 0x92 | system control port A | — |
//! | 0x70–0x71 | CMOS bytes 14–127 (Xen's RTC answers 0–13 and forwards the rest) | — |
//! | 0xCF8–0xCFF | configuration mechanism #1 (Xen turns 0xCFC into PCI_CONFIG) and 0xCF9 reset | — |
//!
//! Interrupts become DM ops: ISA lines `set_isa_irq_level`, PCI INTx `set_pci_intx_level`.
//! Poweroff (PM1a S5) and reset (0xCF9, 8042, port 0x92) become `remote_shutdown`.
//! Slots follow what qemu-xen does on the testbed: the platform device is created at machine
//! init (00:02.0), `-device VGA` after it (00:03.0).

use std::sync::{Arc, Mutex};

use devices::acpi::piix4_pm::{
    APM_CNT_PORT, APM_PORT_COUNT, GPE0_BASE, GPE0_LEN, PIIX4_PM_BDF, Piix4Pm, Piix4PmConfig,
    PmIoMapper, PmIoScope, PowerControl, SCI_IRQ,
};
use devices::bus::{Bus, BusError, BusKind};
use devices::chardev::CharSink;
use devices::chipset::port92::{PORT92, PORT92_LEN, Port92};
use devices::clock::Clock;
use devices::display::vga::{Vga, VgaConfig, VgaError};
use devices::input::i8042::{DATA_PORT, I8042, STATUS_PORT};
use devices::irq::{IrqLine, UnconnectedLine};
use devices::pci::config_io::{CONFIG_IO_BASE, CONFIG_IO_LEN, PciConfigIo};
use devices::pci::i440fx::{I440FX_BDF, I440fx};
use devices::pci::piix3::{PIIX3_BDF, Piix3, PirqRouter};
use devices::pci::root::PciRoot;
use devices::pci::xen_platform::{
    UnplugLatch, XEN_PLATFORM_IOPORT, XEN_PLATFORM_IOPORT_LEN, XenPlatform,
};
use devices::pci::{Bdf, PciError};
use devices::rtc::mc146818::{self, BootDevice, Mc146818};
use devices::serial::uart16550::{COM1_BASE, UART_PORT_COUNT, Uart16550};
use devices::snapshot::{self, Snapshot, SnapshotError};
use devices::storage::ide::{ChannelDrives, IdeHandle, PIIX3_IDE_BDF, Piix3Ide};
use devices::system::SystemControl;
use thiserror::Error;

use crate::device_state::{self, DeviceStateError, SnapshotDevice};
use xen::abi::SHUTDOWN_POWEROFF;
use xen::ioreq_server::{DeviceModel, IsaIrq, ShutdownLatch, XenIntxSink, XenLinkRoutes};
use xen::mapcache::new_mapcache;
use xen::transport::{DomId, Transport};

/// Guest RAM above this is relocated above 4 GiB (`HVM_BELOW_4G_RAM_END`).
const XEN_BELOW_4G_RAM_END: u64 = 0xF000_0000;

pub const XEN_PLATFORM_BDF: Bdf = Bdf::from_devfn(0, 2 << 3);
pub const VGA_BDF: Bdf = Bdf::from_devfn(0, 3 << 3);

#[derive(Debug, Error)]
pub enum XenfvError {
    #[error("wiring a bus: {0}")]
    Bus(#[from] BusError),
    #[error("building PCI: {0}")]
    Pci(#[from] PciError),
    #[error("building the VGA: {0}")]
    Vga(#[from] VgaError),
    #[error("reading device state: {0}")]
    DeviceState(#[from] DeviceStateError),
    #[error("restoring {device}: {source}")]
    Restore {
        device: String,
        source: SnapshotError,
    },
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn lock_save<T: Snapshot>(m: &Mutex<T>) -> Vec<u8> {
    snapshot::save(&*lock(m))
}

/// Which display adapter the guest gets.
pub enum Display {
    /// `vga="none"`.
    None,
    /// `vga="stdvga"`: QEMU's standard VGA, with the VGA BIOS image for its ROM BAR.
    Std { vgabios: Option<Vec<u8>> },
}

pub struct XenfvConfig {
    pub domid: DomId,
    pub display: Display,
    /// Where COM1's output goes; `None` leaves COM1 out (`-serial none`).
    pub serial: Option<Box<dyn CharSink>>,
    /// The PIIX3 IDE drives: (master, slave) of the primary and the secondary channel.
    pub ide: [ChannelDrives; 2],
    /// Guest RAM, for the CMOS memory-size bytes SeaBIOS reads.
    pub ram_bytes: u64,
    /// `-boot order=`: the first three devices, as the CMOS boot bytes hold them.
    pub boot_order: Vec<BootDevice>,
}

/// Forwards the PM's S5 request to Xen as a poweroff.
struct XenPower(Arc<ShutdownLatch>);

impl PowerControl for XenPower {
    fn request_poweroff(&self) {
        self.0.request_shutdown(SHUTDOWN_POWEROFF);
    }
    fn request_suspend(&self) {
        // S3 under Xen is HVM_PARAM_ACPI_S_STATE, a hypercall we do not make yet; QEMU's
        // toolstack path also ends in a shutdown when it is unsupported.
        log::warn!("guest asked for S3 suspend, which this device model does not support yet");
    }
}

/// The board: buses, clock and devices, and what the ioreq server dispatches into.
pub struct Xenfv {
    pub clock: Clock,
    pub dm: DeviceModel,
    pub shutdown: Arc<ShutdownLatch>,
    pub unplug: Arc<UnplugLatch>,
    pub com1: Option<Arc<Mutex<Uart16550>>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub cmos: Arc<Mutex<Mc146818>>,
    pub vga: Option<Arc<Mutex<Vga>>>,
    pub ide: IdeHandle,
    pub pm: Arc<Mutex<Piix4Pm>>,
    /// Keeps the PM I/O block where the guest's PMBA puts it.
    pub pm_io: Arc<PmIoMapper>,
}

impl Xenfv {
    pub fn new(transport: Arc<dyn Transport>, config: XenfvConfig) -> Result<Xenfv, XenfvError> {
        let domid = config.domid;
        let clock = Clock::new(0);
        let pio = Arc::new(Bus::new(BusKind::Pio));
        let mmio = Arc::new(Bus::new(BusKind::Mmio));
        let shutdown = ShutdownLatch::new();
        let system: Arc<dyn SystemControl> = shutdown.clone();
        let isa: Vec<Arc<dyn IrqLine>> = IsaIrq::lines(&transport, domid);

        let router = PirqRouter::unconnected();
        router.set_listener(Arc::new(XenLinkRoutes::new(transport.clone(), domid)));
        let pci = PciRoot::new(pio.clone(), mmio.clone(), router.clone());
        pci.set_intx_sink(Arc::new(XenIntxSink::new(transport.clone(), domid)));
        pci.add(I440FX_BDF, I440fx::new())?;
        pci.add(PIIX3_BDF, Piix3::new(router))?;
        let config_io = PciConfigIo::new(pci.clone(), system.clone());
        pio.insert(
            "pci-config",
            CONFIG_IO_BASE,
            CONFIG_IO_LEN,
            Arc::new(Mutex::new(config_io)),
        )?;

        let memory = Arc::new(new_mapcache(transport, domid));
        let [primary, secondary] = config.ide;
        let ide = Piix3Ide::new(
            memory.clone(),
            isa[14].clone(),
            isa[15].clone(),
            primary,
            secondary,
        );
        ide.register_legacy_ports(&pio)?;
        let ide_handle = ide.handle();
        pci.add(PIIX3_IDE_BDF, ide)?;

        let power = Arc::new(XenPower(shutdown.clone()));
        let mut pm = Piix4Pm::new(
            Piix4PmConfig::xen(),
            &clock,
            isa[usize::from(SCI_IRQ)].clone(),
            power,
        );
        // Xen emulates PM1a_EVT and the PM timer; only PM1a_CNT comes to us.
        let pm_io = pm.attach_io(pio.clone(), PmIoScope::Pm1aControl);
        pio.insert("gpe0", GPE0_BASE, GPE0_LEN, pm.gpe_block())?;
        pio.insert("apm", APM_CNT_PORT, APM_PORT_COUNT, pm.apm_ports())?;
        let pm = pci.add(PIIX4_PM_BDF, pm)?;

        let vga = match config.display {
            Display::None => None,
            Display::Std { vgabios } => {
                let vga = Vga::new_shared(VgaConfig {
                    rom: vgabios,
                    ..VgaConfig::default()
                })?;
                Vga::register_legacy(&vga, &pio, &mmio)?;
                pci.add_function(VGA_BDF, vga.clone())?;
                Some(vga)
            }
        };

        let unplug = Arc::new(UnplugLatch::new());
        let platform = XenPlatform::new(unplug.clone());
        pio.insert(
            "xen-platform",
            XEN_PLATFORM_IOPORT,
            XEN_PLATFORM_IOPORT_LEN,
            platform.fixed_ports(),
        )?;
        pci.add(XEN_PLATFORM_BDF, platform)?;

        let com1 = match config.serial {
            Some(sink) => {
                let uart = Uart16550::new_shared(&clock, isa[4].clone(), sink);
                pio.insert("com1", COM1_BASE, UART_PORT_COUNT, uart.clone())?;
                Some(uart)
            }
            None => None,
        };
        let i8042 = Arc::new(Mutex::new(I8042::new(
            isa[1].clone(),
            isa[12].clone(),
            system.clone(),
        )));
        pio.insert("i8042-data", DATA_PORT, 1, i8042.clone())?;
        pio.insert("i8042-cmd", STATUS_PORT, 1, i8042.clone())?;
        pio.insert(
            "port92",
            PORT92,
            PORT92_LEN,
            Arc::new(Mutex::new(Port92::new(system))),
        )?;

        // Xen's RTC serves CMOS 0-13 itself and forwards index writes and data accesses for
        // the rest; SeaBIOS reads the boot order and memory sizes there (as from qemu-xen).
        let cmos = Mc146818::new_shared(&clock, Arc::new(UnconnectedLine), 0);
        {
            let mut c = lock(&cmos);
            let below_4g = config.ram_bytes.min(XEN_BELOW_4G_RAM_END);
            c.set_memory_size(below_4g, config.ram_bytes - below_4g);
            let order: Vec<BootDevice> = config.boot_order.iter().copied().take(3).collect();
            if let Err(e) = c.set_boot_order(&order) {
                log::warn!("CMOS boot order: {e}");
            }
        }
        pio.insert(
            "cmos",
            mc146818::PORT_BASE,
            mc146818::PORT_COUNT,
            cmos.clone(),
        )?;

        let dm = DeviceModel::new(pio, mmio, memory)
            .with_pci(pci)
            .with_shutdown(shutdown.clone());
        Ok(Xenfv {
            clock,
            dm,
            shutdown,
            unplug,
            com1,
            i8042,
            cmos,
            vga,
            ide: ide_handle,
            pm,
            pm_io,
        })
    }
}

impl Xenfv {
    /// Every device's state (`xen-save-devices-state`): the PCI root carries its functions
    /// (IDE, VGA, PM, platform); the ISA devices are saved beside it.
    pub fn save_state(&self) -> Vec<u8> {
        let mut blobs = vec![
            ("i8042".to_string(), lock_save(&self.i8042)),
            ("cmos".to_string(), lock_save(&self.cmos)),
        ];
        if let Some(com1) = &self.com1 {
            blobs.push(("com1".to_string(), lock_save(com1)));
        }
        if let Some(pci) = &self.dm.pci {
            blobs.push(("pci".to_string(), snapshot::save(pci)));
        }
        device_state::encode(&blobs)
    }

    /// Restore what [`Xenfv::save_state`] wrote (`xen-load-devices-state`, `-incoming`).
    pub fn load_state(&self, data: &[u8]) -> Result<(), XenfvError> {
        let blobs = device_state::decode(data)?;
        let restore = |name: &str, device: &mut dyn SnapshotDevice| -> Result<(), XenfvError> {
            let blob = device_state::find(&blobs, name)?;
            snapshot::restore(device, blob).map_err(|source| XenfvError::Restore {
                device: name.to_string(),
                source,
            })
        };
        restore("i8042", &mut *lock(&self.i8042))?;
        restore("cmos", &mut *lock(&self.cmos))?;
        if let Some(com1) = &self.com1 {
            restore("com1", &mut *lock(com1))?;
        }
        if let Some(pci) = &self.dm.pci {
            restore("pci", &mut pci.clone())?;
        }
        Ok(())
    }

    /// Act on the PV drivers' unplug request, if one came (the platform device latches it so
    /// that no device lock is held while disks go away).
    pub fn apply_unplug(&self) {
        if let Some(mask) = self.unplug.take() {
            log::info!("PV drivers asked to unplug emulated devices: {mask:?}");
            if mask.ide_disks() {
                self.ide.unplug_disks(mask.keep_primary_master());
            }
        }
    }
}
