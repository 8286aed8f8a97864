//! `vireo-xen-dm`: Vireo as the device model of a Xen HVM guest.
//!
//! libxl starts it exactly where it would start qemu-xen (`device_model_override=`), with
//! qemu-xen's command line. Its life: parse the command line; open privcmd and evtchn; build
//! the `xenfv` device set; create and enable the ioreq server; load incoming device state;
//! publish `device-model/<domid>/state = running` in xenstore; then serve ioreqs, QMP and the
//! serial backend from one `mio` loop, with virtual time following the host's monotonic clock,
//! until QMP `quit`, SIGHUP/SIGTERM (how libxl ends a device model) or a fatal Xen error.

use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use devices::chardev::file::FileBackend;
use devices::chardev::stdio::StdioBackend;
use devices::chardev::unix_socket::UnixSocketBackend;
use devices::chardev::{CharBackend, NullSink};
use devices::rtc::mc146818::BootDevice;
use devices::storage::ide::{ChannelDrives, IdeDrive};
use machines::xenfv::{Display, Xenfv, XenfvConfig};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token};
use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
use signal_hook_mio::v1_0::Signals;
use xen::cmdline::{self, DmConfig, Media, SerialBackend};
use xen::ioreq_server::{IoreqServer, ServerConfig};
use xen::qmp::{QmpHandler, QmpServer, RunState, ServerInfo};
use xen::transport::Transport;
use xen::transport::privcmd::XenTransport;
use xen::xenstore::XenStore;
use xen::xenstore::dm::{DeviceModelNode, STATE_RUNNING};

const IOREQ: Token = Token(0);
const QMP: Token = Token(1);
const SIGNALS: Token = Token(2);
const SERIAL: Token = Token(3);

/// Where Debian's seabios package puts the VGA BIOS for QEMU's standard VGA.
const VGABIOS_PATHS: &[&str] = &[
    "/usr/share/seabios/vgabios-stdvga.bin",
    "/usr/share/qemu/vgabios-stdvga.bin",
    "/usr/lib/xen/boot/vgabios-stdvga.bin",
];

fn main() -> std::process::ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp_millis()
        .init();
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // stderr is libxl's /var/log/xen/qemu-dm-<name>.log.
            log::error!("vireo-xen-dm: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let cfg = DmConfig::parse(std::env::args().skip(1)).context("qemu-xen command line")?;
    log::info!(
        "vireo-xen-dm {} starting: {:?}",
        env!("CARGO_PKG_VERSION"),
        std::env::args().collect::<Vec<_>>()
    );
    for ignored in &cfg.ignored {
        log::debug!("ignored option: {ignored}");
    }
    if cfg.is_probe() {
        return serve_probe(&cfg);
    }
    let domid = cfg.domid.context("-xen-domid is missing")?;
    let domid16 = u16::try_from(domid).context("domain id out of range")?;

    let transport: Arc<dyn Transport> =
        Arc::new(XenTransport::open().context("opening /dev/xen/privcmd and /dev/xen/evtchn")?);
    let (serial_backend, serial_sink) = serial(&cfg)?;
    let mut board = Xenfv::new(
        transport.clone(),
        XenfvConfig {
            domid: domid16,
            display: display(&cfg),
            serial: serial_sink,
            ide: drives(&cfg)?,
            ram_bytes: cfg.ram_mib.unwrap_or(128) << 20,
            boot_order: boot_order(cfg.boot_order.as_deref().unwrap_or("cda")),
        },
    )
    .context("building the xenfv devices")?;
    let mut server = IoreqServer::create(transport.clone(), ServerConfig::new(domid16), &board.dm)
        .context("creating the ioreq server")?;
    if let Some(pci) = &board.dm.pci {
        pci.set_mapping_listener(server.bar_listener());
    }
    if let Some(incoming) = &cfg.incoming {
        let mut data = Vec::new();
        incoming
            .open()
            .context("opening the incoming device state")?
            .read_to_end(&mut data)?;
        board
            .load_state(&data)
            .context("loading the incoming device state")?;
        server.mark_ranges_stale();
        log::info!("device state restored ({} bytes)", data.len());
    }
    if cfg.restrict {
        transport
            .restrict(domid16)
            .context("restricting privcmd to the guest")?;
    }

    let mut xs = XenStore::open().context("connecting to xenstored")?;
    let node = DeviceModelNode::new(0, domid);
    node.publish_backends(&mut xs, &[])
        .context("publishing backends")?;

    let mut qmp = QmpServer::bind(&cfg.qmp, ServerInfo::from_config(&cfg))
        .context("binding the QMP sockets")?;
    let mut poll = Poll::new()?;
    let fd = server.event_fd().as_raw_fd();
    poll.registry()
        .register(&mut SourceFd(&fd), IOREQ, Interest::READABLE)?;
    qmp.register(poll.registry(), QMP)?;
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    let mut serial_backend = serial_backend;
    if let Some(backend) = serial_backend.as_mut() {
        backend.register(poll.registry(), SERIAL)?;
    }

    let clock = board.clock.clone();
    let mut control = Control {
        board: &mut board,
        server: &mut server,
        state: if cfg.start_paused {
            RunState::Prelaunch
        } else {
            RunState::Running
        },
        announced: false,
        xs: &mut xs,
        node: &node,
        quit: false,
    };
    if control.state == RunState::Running {
        control.announce_running()?;
    } else {
        control.server.set_enabled(false)?;
    }
    log::info!("dom{domid}: serving");

    let start = Instant::now();
    let mut events = Events::with_capacity(64);
    loop {
        let now = start.elapsed().as_nanos() as u64;
        clock.advance_to(now);
        let timeout = clock
            .next_deadline()
            .map(|d| Duration::from_nanos(d.saturating_sub(now)));
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e.into());
        }
        clock.advance_to(start.elapsed().as_nanos() as u64);
        for event in &events {
            match event.token() {
                IOREQ => {
                    control
                        .server
                        .handle_events(&mut control.board.dm)
                        .context("serving ioreqs")?;
                }
                QMP => qmp.handle_ready(&mut control),
                SIGNALS => {
                    if let Some(signal) = signals.pending().next() {
                        log::info!("dom{domid}: signal {signal}, ending");
                        control.quit = true;
                    }
                }
                SERIAL => {
                    if let (Some(backend), Some(com1)) =
                        (serial_backend.as_mut(), control.board.com1.as_ref())
                    {
                        backend.handle_ready();
                        devices::serial::uart16550::Uart16550::receive_from(com1, backend.as_mut());
                    }
                }
                _ => {}
            }
        }
        control.board.apply_unplug();
        if control.quit || qmp.quit_requested() {
            break;
        }
    }
    qmp.flush();
    server.shutdown().context("destroying the ioreq server")?;
    log::info!("dom{domid}: device model ended");
    Ok(())
}

/// libxl's probe instance (`-machine none`) runs no guest: it only answers QMP until `quit`.
fn serve_probe(cfg: &DmConfig) -> Result<()> {
    struct Probe(bool);
    impl QmpHandler for Probe {
        fn status(&self) -> RunState {
            RunState::Prelaunch
        }
        fn pause(&mut self) -> Result<(), String> {
            Ok(())
        }
        fn resume(&mut self) -> Result<(), String> {
            Ok(())
        }
        fn save_state(&mut self, _out: &mut std::fs::File, _live: bool) -> Result<(), String> {
            Err("the probe instance has no devices".into())
        }
        fn load_state(&mut self, _input: &mut std::fs::File) -> Result<(), String> {
            Err("the probe instance has no devices".into())
        }
        fn quit(&mut self) {
            self.0 = true;
        }
        fn set_dirty_log(&mut self, _enable: bool) -> Result<(), String> {
            Ok(())
        }
    }
    let mut qmp = QmpServer::bind(&cfg.qmp, ServerInfo::from_config(cfg))?;
    let mut poll = Poll::new()?;
    qmp.register(poll.registry(), QMP)?;
    let mut signals = Signals::new([SIGHUP, SIGTERM, SIGINT])?;
    poll.registry()
        .register(&mut signals, SIGNALS, Interest::READABLE)?;
    let mut probe = Probe(false);
    let mut events = Events::with_capacity(16);
    while !probe.0 && !qmp.quit_requested() {
        poll.poll(&mut events, None)?;
        for event in &events {
            match event.token() {
                QMP => qmp.handle_ready(&mut probe),
                _ => return Ok(()),
            }
        }
    }
    qmp.flush();
    Ok(())
}

/// What QMP commands act on.
struct Control<'a> {
    board: &'a mut Xenfv,
    server: &'a mut IoreqServer,
    state: RunState,
    /// Whether xenstore has heard `running` (libxl's start-up signal; written once).
    announced: bool,
    xs: &'a mut XenStore,
    node: &'a DeviceModelNode,
    quit: bool,
}

impl Control<'_> {
    fn announce_running(&mut self) -> Result<()> {
        if !self.announced {
            self.node
                .set_state(self.xs, STATE_RUNNING)
                .context("writing device-model state")?;
            self.announced = true;
        }
        Ok(())
    }
}

impl QmpHandler for Control<'_> {
    fn status(&self) -> RunState {
        self.state
    }

    fn pause(&mut self) -> Result<(), String> {
        self.server.set_enabled(false).map_err(|e| e.to_string())?;
        self.state = RunState::Paused;
        Ok(())
    }

    fn resume(&mut self) -> Result<(), String> {
        self.server.set_enabled(true).map_err(|e| e.to_string())?;
        self.state = RunState::Running;
        self.announce_running().map_err(|e| format!("{e:#}"))
    }

    fn save_state(&mut self, out: &mut std::fs::File, _live: bool) -> Result<(), String> {
        let blob = self.board.save_state();
        out.write_all(&blob)
            .and_then(|()| out.flush())
            .map_err(|e| e.to_string())?;
        log::info!("device state saved ({} bytes)", blob.len());
        Ok(())
    }

    fn load_state(&mut self, input: &mut std::fs::File) -> Result<(), String> {
        let mut data = Vec::new();
        input.read_to_end(&mut data).map_err(|e| e.to_string())?;
        self.board.load_state(&data).map_err(|e| e.to_string())?;
        self.server.mark_ranges_stale();
        Ok(())
    }

    fn quit(&mut self) {
        self.quit = true;
    }

    fn set_dirty_log(&mut self, enable: bool) -> Result<(), String> {
        // `xl save` stops the guest and this device model before copying memory, so nothing
        // is written behind the toolstack's back; live migration would need
        // XEN_DMOP_modified_memory for DMA writes, which we do not track yet.
        log::info!("global dirty log {}", if enable { "on" } else { "off" });
        Ok(())
    }
}

fn display(cfg: &DmConfig) -> Display {
    match cfg.vga {
        cmdline::Vga::None => Display::None,
        cmdline::Vga::Std { .. } => {
            let vgabios = VGABIOS_PATHS.iter().find_map(|p| std::fs::read(p).ok());
            if vgabios.is_none() {
                log::warn!(
                    "no vgabios-stdvga.bin found in {VGABIOS_PATHS:?}; the VGA has no option ROM"
                );
            }
            Display::Std { vgabios }
        }
    }
}

type Serial = (
    Option<Box<dyn CharBackend>>,
    Option<Box<dyn devices::chardev::CharSink>>,
);

fn serial(cfg: &DmConfig) -> Result<Serial> {
    let Some(first) = cfg.serials.first() else {
        return Ok((None, None));
    };
    let backend: Box<dyn CharBackend> = match first {
        SerialBackend::Null => return Ok((None, Some(Box::new(NullSink)))),
        SerialBackend::File(path) => Box::new(FileBackend::open_append(path)?),
        SerialBackend::Stdio => Box::new(StdioBackend::new()?),
        SerialBackend::UnixServer { path, wait } => {
            if *wait {
                log::warn!(
                    "serial socket {}: wait=on is not supported; not waiting for a client",
                    path.display()
                );
            }
            Box::new(UnixSocketBackend::bind(path)?)
        }
    };
    let sink = backend.sink();
    Ok((Some(backend), Some(sink)))
}

/// QEMU's `-boot order=` letters as the CMOS boot bytes hold them.
fn boot_order(letters: &str) -> Vec<BootDevice> {
    letters
        .chars()
        .filter_map(|c| match c {
            'a' => Some(BootDevice::Floppy),
            'c' => Some(BootDevice::HardDisk),
            'd' => Some(BootDevice::CdRom),
            'n' => Some(BootDevice::Network),
            _ => None,
        })
        .collect()
}

fn drives(cfg: &DmConfig) -> Result<[ChannelDrives; 2]> {
    let mut ide: [ChannelDrives; 2] = [[None, None], [None, None]];
    for d in &cfg.drives {
        let (bus, unit) = (usize::from(d.bus), usize::from(d.unit));
        if bus > 1 || unit > 1 {
            bail!("IDE drive at bus {bus} unit {unit}: the PIIX3 has two channels of two drives");
        }
        let open =
            |path: &Path, read_only: bool| -> Result<Box<dyn devices::block::BlockBackend>> {
                let file = devices::block::raw::RawFile::open(path, read_only)
                    .with_context(|| format!("opening disk image {}", path.display()))?;
                Ok(Box::new(file))
            };
        ide[bus][unit] = Some(match (d.media, &d.file) {
            (Media::Disk, Some(path)) => IdeDrive::disk(open(path, d.read_only)?),
            (Media::Disk, None) => bail!("IDE disk {bus}:{unit} has no image"),
            (Media::Cdrom, Some(path)) => IdeDrive::cdrom(Some(open(path, true)?)),
            (Media::Cdrom, None) => IdeDrive::cdrom(None),
        });
    }
    Ok(ide)
}
