//! The ioreq server: Vireo's side of Xen's device-model protocol.
//!
//! [`IoreqServer::create`] runs the start-up sequence (docs/XEN-DM-SPEC.md 2.4): create a
//! server with a buffered ring, map its two pages as a resource, learn the buffered port,
//! enable it (Xen publishes the vCPU ports then), bind every vCPU's port and the buffered
//! one, and claim from Xen every range on the board's buses and every PCI function by SBDF.
//! [`IoreqServer::handle_events`] is one step of the serve loop, called when
//! [`IoreqServer::event_fd`] is readable: it drains the buffered ring before any synchronous
//! request (so posted VGA writes are never overtaken), then answers each vCPU whose slot is
//! READY. [`IoreqServer::shutdown`] (or drop) disables and destroys the server.
//!
//! A board wires it like this:
//!
//! ```text
//! let transport: Arc<dyn Transport> = Arc::new(XenTransport::open()?);
//! let memory = Arc::new(mapcache::new_mapcache(transport.clone(), domid));   // IDE DMA too
//! let isa = IsaIrq::lines(&transport, domid);            // device interrupt lines
//! root.set_intx_sink(Arc::new(XenIntxSink::new(transport.clone(), domid)));
//! router.set_listener(Arc::new(XenLinkRoutes::new(transport.clone(), domid)));
//! let mut dm = DeviceModel::new(pio, mmio, memory).with_pci(root.clone()).with_shutdown(latch);
//! let mut server = IoreqServer::create(transport, ServerConfig::new(domid), &dm)?;
//! root.set_mapping_listener(server.bar_listener());       // BAR moves re-claim ranges
//! loop { wait for server.event_fd(); server.handle_events(&mut dm)?; }
//! ```

mod dispatch;
mod irq;

use std::collections::{BTreeSet, HashMap};
use std::os::fd::BorrowedFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use log::{debug, info, warn};
use thiserror::Error;

use devices::bus::Bus;
use devices::pci::{BarMappingListener, BarRegion, Bdf, PciRoot};

use crate::abi::pages::{BufferedPage, IoreqSlot};
use crate::abi::{
    HVM_IOREQSRV_BUFIOREQ_ATOMIC, HVM_IOREQSRV_BUFIOREQ_OFF, IOREQ_BUFFER_SLOT_NUM,
    IOREQ_TYPE_PCI_CONFIG, IoReq, MAX_VCPU_SLOTS, PAGE_SIZE, STATE_IOREQ_INPROCESS,
    STATE_IOREQ_READY, STATE_IORESP_READY, XENMEM_RESOURCE_IOREQ_SERVER,
    XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ, XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ,
    pci_sbdf,
};
use crate::mapcache::DmMemory;
use crate::transport::os::MappedRegion;
use crate::transport::{DmOps, DomId, RangeKind, Transport, TransportError, os};

pub use dispatch::{MAX_REPS, Oddities, Oddity, emulate, step};
pub use irq::{IsaIrq, PciIntxLine, ShutdownLatch, XenIntxSink, XenLinkRoutes};

/// At most this many buffered entries are handled per drain, so a guest that keeps the ring
/// full cannot starve the synchronous slots; the rest waits for the next pass.
const MAX_BUFFERED_PER_DRAIN: usize = 4 * IOREQ_BUFFER_SLOT_NUM as usize;

#[derive(Debug, Error)]
pub enum ServerError {
    #[error("{step}: {source}")]
    Xen {
        step: &'static str,
        #[source]
        source: TransportError,
    },
    #[error("Xen reports {0} vCPUs; an ioreq page holds at most {MAX_VCPU_SLOTS}")]
    TooManyVcpus(u32),
    #[error("Xen did not publish an event channel for vCPU {0}")]
    NoVcpuPort(usize),
    #[error("the mapped ioreq pages are {0} bytes, too small")]
    ShortMapping(usize),
}

fn xen(step: &'static str) -> impl FnOnce(TransportError) -> ServerError {
    move |source| ServerError::Xen { step, source }
}

/// What the requests reach: the board's buses, PCI root and guest memory, plus the hooks for
/// TIMEOFFSET and for shutdown requests.
pub struct DeviceModel {
    pub pio: Arc<Bus>,
    pub mmio: Arc<Bus>,
    pub pci: Option<PciRoot>,
    pub memory: Arc<dyn DmMemory>,
    time_offset: Option<Box<dyn FnMut(i64) + Send>>,
    shutdown: Option<Arc<ShutdownLatch>>,
}

impl DeviceModel {
    /// Ports on `pio`, MMIO on `mmio`, string I/O through `memory` (the mapcache under Xen).
    pub fn new(pio: Arc<Bus>, mmio: Arc<Bus>, memory: Arc<dyn DmMemory>) -> DeviceModel {
        DeviceModel {
            pio,
            mmio,
            pci: None,
            memory,
            time_offset: None,
            shutdown: None,
        }
    }

    /// PCI_CONFIG requests go to `root`, and its functions are claimed by SBDF.
    pub fn with_pci(mut self, root: PciRoot) -> DeviceModel {
        self.pci = Some(root);
        self
    }

    /// Called with the change in seconds whenever the guest moves its RTC (TIMEOFFSET).
    pub fn on_time_offset(mut self, f: impl FnMut(i64) + Send + 'static) -> DeviceModel {
        self.time_offset = Some(Box::new(f));
        self
    }

    /// Shutdown requests latched here become `remote_shutdown` before the vCPU is released.
    pub fn with_shutdown(mut self, latch: Arc<ShutdownLatch>) -> DeviceModel {
        self.shutdown = Some(latch);
        self
    }

    fn time_offset_changed(&mut self, delta: i64) {
        if let Some(f) = self.time_offset.as_mut() {
            f(delta);
        }
    }
}

/// How to create the server.
#[derive(Clone, Copy, Debug)]
pub struct ServerConfig {
    pub domid: DomId,
    /// vCPU slots to bind; `None` asks Xen (`XEN_DMOP_nr_vcpus`).
    pub vcpus: Option<u32>,
    /// Ask for a buffered ring (ATOMIC mode, as QEMU does).
    pub buffered: bool,
}

impl ServerConfig {
    pub fn new(domid: DomId) -> ServerConfig {
        ServerConfig {
            domid,
            vcpus: None,
            buffered: true,
        }
    }
}

/// Counters for tests and the performance notes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    pub sync: u64,
    pub buffered: u64,
    pub spurious: u64,
}

/// Marks the server's claimed ranges stale when the PCI root moves a BAR.
struct BarWatch(Arc<AtomicBool>);

impl BarMappingListener for BarWatch {
    fn bar_mapped(&self, _bdf: Bdf, _region: BarRegion) {
        self.0.store(true, Ordering::Release);
    }
    fn bar_unmapped(&self, _bdf: Bdf, _region: BarRegion) {
        self.0.store(true, Ordering::Release);
    }
}

/// A running ioreq server. See the module documentation.
pub struct IoreqServer {
    transport: Arc<dyn Transport>,
    domid: DomId,
    id: u16,
    pages: Option<MappedRegion>,
    /// Offsets of the two pages inside `pages`.
    ioreq_off: usize,
    buf_off: Option<usize>,
    vcpu_ports: Vec<u32>,
    port_vcpu: HashMap<u32, usize>,
    buf_port: Option<u32>,
    claimed: BTreeSet<(RangeKind, u64, u64)>,
    ranges_stale: Arc<AtomicBool>,
    enabled: bool,
    destroyed: bool,
    odd: Oddities,
    stats: ServerStats,
}

impl IoreqServer {
    /// Create, map, enable and bind the server, and claim every range `dm` serves.
    pub fn create(
        transport: Arc<dyn Transport>,
        cfg: ServerConfig,
        dm: &DeviceModel,
    ) -> Result<IoreqServer, ServerError> {
        let domid = cfg.domid;
        let vcpus = match cfg.vcpus {
            Some(n) => n,
            None => transport.nr_vcpus(domid).map_err(xen("nr_vcpus"))?,
        };
        if vcpus as usize > MAX_VCPU_SLOTS {
            return Err(ServerError::TooManyVcpus(vcpus));
        }
        let mode = if cfg.buffered {
            HVM_IOREQSRV_BUFIOREQ_ATOMIC
        } else {
            HVM_IOREQSRV_BUFIOREQ_OFF
        };
        let id = transport
            .create_ioreq_server(domid, mode)
            .map_err(xen("create_ioreq_server"))?;
        // From here on, dropping `server` tears down whatever was set up.
        let mut server = IoreqServer {
            transport,
            domid,
            id,
            pages: None,
            ioreq_off: 0,
            buf_off: None,
            vcpu_ports: Vec::new(),
            port_vcpu: HashMap::new(),
            buf_port: None,
            claimed: BTreeSet::new(),
            ranges_stale: Arc::new(AtomicBool::new(false)),
            enabled: false,
            destroyed: false,
            odd: Oddities::default(),
            stats: ServerStats::default(),
        };
        let t = server.transport.clone();
        let (first, count) = if cfg.buffered {
            (XENMEM_RESOURCE_IOREQ_SERVER_FRAME_BUFIOREQ, 2)
        } else {
            (XENMEM_RESOURCE_IOREQ_SERVER_FRAME_IOREQ, 1)
        };
        let pages = t
            .map_resource(
                domid,
                XENMEM_RESOURCE_IOREQ_SERVER,
                u32::from(id),
                first,
                count,
            )
            .map_err(xen("map ioreq server pages"))?;
        if pages.len() < count * PAGE_SIZE {
            return Err(ServerError::ShortMapping(pages.len()));
        }
        if cfg.buffered {
            server.buf_off = Some(0);
            server.ioreq_off = PAGE_SIZE;
        }
        server.pages = Some(pages);
        let info = t
            .get_ioreq_server_info(domid, id)
            .map_err(xen("get_ioreq_server_info"))?;
        server.set_enabled(true)?;
        for vcpu in 0..vcpus as usize {
            let remote = server
                .slot(vcpu)
                .map(|s| s.vp_eport())
                .filter(|&p| p != 0)
                .ok_or(ServerError::NoVcpuPort(vcpu))?;
            let local = t
                .bind_interdomain(domid, remote)
                .map_err(xen("bind vCPU event channel"))?;
            server.vcpu_ports.push(local);
            server.port_vcpu.insert(local, vcpu);
        }
        if cfg.buffered {
            let local = t
                .bind_interdomain(domid, info.bufioreq_port)
                .map_err(xen("bind buffered event channel"))?;
            server.buf_port = Some(local);
        }
        server.sync_ranges(dm);
        info!(
            "dom{domid}: ioreq server {id} up, {vcpus} vCPU(s), {} range(s) claimed",
            server.claimed.len()
        );
        Ok(server)
    }

    pub fn id(&self) -> u16 {
        self.id
    }

    pub fn domid(&self) -> DomId {
        self.domid
    }

    pub fn stats(&self) -> ServerStats {
        self.stats
    }

    pub fn oddities(&self) -> &Oddities {
        &self.odd
    }

    /// The local ports bound for the vCPUs, in vCPU order.
    pub fn vcpu_ports(&self) -> &[u32] {
        &self.vcpu_ports
    }

    /// The ranges claimed from Xen.
    pub fn claimed(&self) -> Vec<(RangeKind, u64, u64)> {
        self.claimed.iter().copied().collect()
    }

    /// Readable when an event is pending: register it with mio (`SourceFd`) or poll it.
    pub fn event_fd(&self) -> BorrowedFd<'_> {
        self.transport.event_fd()
    }

    /// Block until an event is pending or `timeout` passes; `true` if one is.
    pub fn wait(&self, timeout: Option<Duration>) -> Result<bool, ServerError> {
        os::wait_readable(self.transport.event_fd(), timeout)
            .map_err(|e| xen("wait for events")(TransportError::os("poll", e)))
    }

    /// A listener for `PciRoot::set_mapping_listener`: after a request that moved a BAR, the
    /// server re-claims its ranges before releasing the vCPU.
    pub fn bar_listener(&self) -> Arc<dyn BarMappingListener> {
        Arc::new(BarWatch(self.ranges_stale.clone()))
    }

    /// Tell the server the buses changed outside PCI (it re-claims after the next request).
    pub fn mark_ranges_stale(&self) {
        self.ranges_stale.store(true, Ordering::Release);
    }

    /// Enable or disable delivery (QMP `stop`/`cont`: a stopped device model gets nothing).
    pub fn set_enabled(&mut self, enabled: bool) -> Result<(), ServerError> {
        self.transport
            .set_ioreq_server_state(self.domid, self.id, enabled)
            .map_err(xen("set_ioreq_server_state"))?;
        self.enabled = enabled;
        Ok(())
    }

    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Tell Xen to shut the domain down now (`SHUTDOWN_*` reason).
    pub fn remote_shutdown(&self, reason: u32) -> Result<(), ServerError> {
        self.transport
            .remote_shutdown(self.domid, reason)
            .map_err(xen("remote_shutdown"))
    }

    fn slot(&self, vcpu: usize) -> Option<IoreqSlot<'_>> {
        IoreqSlot::new(self.pages.as_ref()?, self.ioreq_off, vcpu)
    }

    /// Bring the ranges claimed from Xen in line with the buses and the PCI functions: unclaim
    /// what went away, claim what is new. A range Xen refuses is logged and retried at the
    /// next sync.
    pub fn sync_ranges(&mut self, dm: &DeviceModel) {
        sync_ranges(&*self.transport, self.domid, self.id, &mut self.claimed, dm);
    }
}

fn sync_ranges(
    transport: &dyn Transport,
    domid: DomId,
    id: u16,
    claimed: &mut BTreeSet<(RangeKind, u64, u64)>,
    dm: &DeviceModel,
) {
    {
        let mut want = BTreeSet::new();
        for (kind, bus) in [(RangeKind::Port, &dm.pio), (RangeKind::Memory, &dm.mmio)] {
            for (_, start, len) in bus.ranges() {
                want.insert((kind, start, start.saturating_add(len.saturating_sub(1))));
            }
        }
        if let Some(root) = &dm.pci {
            for bdf in root.functions() {
                let sbdf = u64::from(pci_sbdf(0, bdf.bus(), bdf.device(), bdf.function()));
                want.insert((RangeKind::Pci, sbdf, sbdf));
            }
        }
        let gone: Vec<_> = claimed.difference(&want).copied().collect();
        for r @ (kind, start, end) in gone {
            match transport.unmap_io_range(domid, id, kind, start, end) {
                Ok(()) => debug!("unclaimed {kind:?} {start:#x}-{end:#x}"),
                Err(e) => warn!("unclaiming {kind:?} {start:#x}-{end:#x}: {e}"),
            }
            claimed.remove(&r);
        }
        let new: Vec<_> = want.difference(claimed).copied().collect();
        for r @ (kind, start, end) in new {
            match transport.map_io_range(domid, id, kind, start, end) {
                Ok(()) => {
                    debug!("claimed {kind:?} {start:#x}-{end:#x}");
                    claimed.insert(r);
                }
                Err(e) => warn!("Xen refused {kind:?} {start:#x}-{end:#x}: {e}"),
            }
        }
    }
}

impl IoreqServer {
    /// One step of the serve loop: handle every pending event. Returns how many requests
    /// (synchronous and buffered) were handled. An error means the event channel failed; the
    /// board should report it and exit.
    pub fn handle_events(&mut self, dm: &mut DeviceModel) -> Result<usize, ServerError> {
        let mut ports = [0u32; 32];
        let mut handled = 0;
        loop {
            let n = self
                .transport
                .pending(&mut ports)
                .map_err(xen("read pending event channels"))?;
            if n == 0 {
                break;
            }
            for &port in &ports[..n] {
                // Unmask first: an event arriving while we work is then not lost.
                self.transport
                    .unmask(port)
                    .map_err(xen("unmask event channel"))?;
                if Some(port) == self.buf_port {
                    handled += self.drain_buffered(dm);
                } else if let Some(&vcpu) = self.port_vcpu.get(&port) {
                    handled += self.drain_buffered(dm);
                    handled += self.serve_vcpu(vcpu, dm)?;
                } else {
                    debug!("event on port {port}, which is not ours");
                }
            }
        }
        if self.buffered_pending() {
            handled += self.drain_buffered(dm);
        }
        Ok(handled)
    }

    fn buffered_pending(&self) -> bool {
        self.ring()
            .is_some_and(|r| r.read_pointer() != r.write_pointer())
    }

    fn ring(&self) -> Option<BufferedPage<'_>> {
        BufferedPage::new(self.pages.as_ref()?, self.buf_off?)
    }

    /// Handle what is in the buffered ring (docs/XEN-DM-SPEC.md 1.5). Returns the number of
    /// requests handled.
    pub fn drain_buffered(&mut self, dm: &mut DeviceModel) -> usize {
        let Some(region) = self.pages.as_ref() else {
            return 0;
        };
        let Some(ring) = self.buf_off.and_then(|off| BufferedPage::new(region, off)) else {
            return 0;
        };
        let mut handled = 0;
        while handled < MAX_BUFFERED_PER_DRAIN {
            let r = ring.read_pointer();
            let w = ring.write_pointer();
            if ring.read_pointer() != r {
                continue; // Xen rebased both pointers under us.
            }
            let queued = w.wrapping_sub(r);
            if queued == 0 {
                break;
            }
            if queued > IOREQ_BUFFER_SLOT_NUM {
                self.odd.report(Oddity::RingOutOfOrder, || {
                    format!("buffered ring read {r} write {w}: dropping to the write pointer")
                });
                ring.advance_read_pointer(queued);
                break;
            }
            let entry = ring.slot(r);
            let (data, used) = if entry.size() == 8 {
                if queued < 2 {
                    self.odd.report(Oddity::RingTornPair, || {
                        format!("8-byte buffered entry at {r} without its second half")
                    });
                    ring.advance_read_pointer(queued);
                    break;
                }
                let hi = ring.slot(r.wrapping_add(1));
                (u64::from(entry.data) | u64::from(hi.data) << 32, 2)
            } else {
                (u64::from(entry.data), 1)
            };
            if entry.is_read() {
                self.odd.report(Oddity::BufferedRead, || {
                    format!(
                        "buffered read of type {} at {:#x} ignored",
                        entry.ty(),
                        entry.addr()
                    )
                });
            } else {
                let req = IoReq::new(
                    entry.ty(),
                    false,
                    u64::from(entry.addr()),
                    entry.size(),
                    data,
                );
                emulate(dm, &req, &mut self.odd);
            }
            ring.advance_read_pointer(used);
            handled += 1;
        }
        self.stats.buffered += handled as u64;
        handled
    }

    /// Answer vCPU `vcpu`'s slot if it holds a request (docs/XEN-DM-SPEC.md 1.7).
    fn serve_vcpu(&mut self, vcpu: usize, dm: &mut DeviceModel) -> Result<usize, ServerError> {
        let Some(region) = self.pages.as_ref() else {
            return Ok(0);
        };
        let Some(slot) = IoreqSlot::new(region, self.ioreq_off, vcpu) else {
            return Ok(0);
        };
        if slot.state() != STATE_IOREQ_READY {
            self.stats.spurious += 1;
            return Ok(0);
        }
        let req = slot.read();
        slot.set_state(&req, STATE_IOREQ_INPROCESS);
        let data = emulate(dm, &req, &mut self.odd);
        if req.is_read() && !req.data_is_ptr() {
            slot.set_data(data);
        }
        // A config write can move a decoder that is not a BAR (the PIIX4's PMBA), which the
        // root does not report; re-checking the claims after each one is cheap (they are rare).
        let config_write = req.ty == IOREQ_TYPE_PCI_CONFIG && !req.is_read();
        if self.ranges_stale.swap(false, Ordering::AcqRel) || config_write {
            sync_ranges(&*self.transport, self.domid, self.id, &mut self.claimed, dm);
        }
        if let Some(reason) = dm.shutdown.as_ref().and_then(|l| l.take()) {
            info!(
                "dom{}: guest requested shutdown (reason {reason})",
                self.domid
            );
            if let Err(e) = self.transport.remote_shutdown(self.domid, reason) {
                self.odd.report(Oddity::DmOpFailed, || {
                    format!("remote_shutdown({reason}): {e}")
                });
            }
        }
        if slot.state() != STATE_IOREQ_INPROCESS {
            self.odd.report(Oddity::StateChanged, || {
                format!("vCPU {vcpu}'s slot changed state while in process")
            });
        }
        slot.set_state(&req, STATE_IORESP_READY);
        self.stats.sync += 1;
        let port = self.vcpu_ports.get(vcpu).copied();
        if let Some(port) = port {
            self.transport
                .notify(port)
                .map_err(xen("notify vCPU event channel"))?;
        }
        Ok(1)
    }

    /// Disable and destroy the server and unbind its ports (also done on drop, ignoring
    /// errors). Returns the first error.
    pub fn shutdown(mut self) -> Result<(), ServerError> {
        self.teardown()
    }

    fn teardown(&mut self) -> Result<(), ServerError> {
        if self.destroyed {
            return Ok(());
        }
        self.destroyed = true;
        let mut first = None;
        let mut note = |r: Result<(), ServerError>| {
            if let Err(e) = r {
                warn!("ioreq server teardown: {e}");
                first.get_or_insert(e);
            }
        };
        if self.enabled {
            note(self.set_enabled(false));
        }
        let ports: Vec<u32> = self
            .vcpu_ports
            .drain(..)
            .chain(self.buf_port.take())
            .collect();
        for p in ports {
            note(self.transport.unbind(p).map_err(xen("unbind")));
        }
        self.port_vcpu.clear();
        self.pages = None;
        note(
            self.transport
                .destroy_ioreq_server(self.domid, self.id)
                .map_err(xen("destroy_ioreq_server")),
        );
        first.map_or(Ok(()), Err)
    }
}

impl Drop for IoreqServer {
    fn drop(&mut self) {
        let _ = self.teardown();
    }
}
