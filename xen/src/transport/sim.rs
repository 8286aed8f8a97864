//! A simulated Xen for tests: the device model gets a [`SimTransport`] (the same trait as the
//! real one) and the test holds the matching [`SimXen`], which plays the hypervisor: it owns
//! guest RAM and the ioreq server's pages in memfds, answers and records DM ops, and posts
//! requests into the shared page and the buffered ring exactly as Xen does.
//!
//! Event channels are eventfds, one per direction per channel. The device model's side puts
//! its eventfds in a one-shot epoll set, whose fd is the pollable [`Transport::event_fd`]: a
//! delivered port stays disarmed (masked) until unmasked, as `/dev/xen/evtchn` behaves.
//! Everything the two sides share is an fd (memfds, eventfds), so a later `xen-sim` board can
//! move [`SimXen`] into another process and pass them over a Unix socket; only DM ops would
//! then need a message format.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::os::{self, Epoll, MappedRegion};
use super::{DomId, ForeignMapping, RangeKind, Transport, TransportError};
use crate::abi::dmop::DmOp;
use crate::abi::pages::{BufferedPage, IoreqSlot};
use crate::abi::{
    BufIoReq, HVM_IOREQSRV_BUFIOREQ_ATOMIC, HVM_IOREQSRV_BUFIOREQ_OFF, IoReq, MAX_VCPU_SLOTS,
    PAGE_SIZE, STATE_IOREQ_NONE, STATE_IOREQ_READY, STATE_IORESP_READY,
    XENMEM_RESOURCE_IOREQ_SERVER,
};

/// The simulated machine.
#[derive(Clone, Debug)]
pub struct SimConfig {
    pub domid: DomId,
    pub vcpus: u32,
    /// Guest RAM from address 0; frames above it are not RAM (mapping them fails per frame).
    pub ram_bytes: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            domid: 7,
            vcpus: 2,
            ram_bytes: 16 << 20,
        }
    }
}

/// One event channel: Xen's port, the device model's port once bound, and an eventfd per
/// direction.
struct Channel {
    local: Option<u32>,
    to_dm: Arc<OwnedFd>,
    to_xen: Arc<OwnedFd>,
}

struct SimServer {
    handle_bufioreq: u8,
    /// Frame 0 the buffered page, frame 1 the synchronous page.
    pages: OwnedFd,
    view: Arc<MappedRegion>,
    enabled: bool,
    vcpu_ports: Vec<u32>,
    buf_port: Option<u32>,
    ranges: BTreeSet<(RangeKind, u64, u64)>,
}

struct XenState {
    servers: BTreeMap<u16, SimServer>,
    channels: HashMap<u32, Channel>,
    next_remote: u32,
    dm_ops: Vec<DmOp>,
    foreign_maps: usize,
    restricted: Option<DomId>,
}

struct Shared {
    cfg: SimConfig,
    ram: OwnedFd,
    ram_view: MappedRegion,
    state: Mutex<XenState>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, XenState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn ram_frames(&self) -> u64 {
        self.cfg.ram_bytes / PAGE_SIZE as u64
    }
}

/// Build a simulated Xen and the transport a device model uses to talk to it.
pub fn pair(cfg: SimConfig) -> io::Result<(SimTransport, SimXen)> {
    if cfg.vcpus == 0 || cfg.vcpus as usize > MAX_VCPU_SLOTS || cfg.ram_bytes == 0 {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let ram_bytes = cfg.ram_bytes.div_ceil(PAGE_SIZE as u64) * PAGE_SIZE as u64;
    let ram = os::memfd("sim-xen-ram", ram_bytes)?;
    let len = usize::try_from(ram_bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let ram_view = MappedRegion::map_shared(ram.as_fd(), len, 0)?;
    let shared = Arc::new(Shared {
        cfg: SimConfig { ram_bytes, ..cfg },
        ram,
        ram_view,
        state: Mutex::new(XenState {
            servers: BTreeMap::new(),
            channels: HashMap::new(),
            next_remote: 1,
            dm_ops: Vec::new(),
            foreign_maps: 0,
            restricted: None,
        }),
    });
    let transport = SimTransport {
        shared: shared.clone(),
        epoll: Epoll::new()?,
        local: Mutex::new(LocalPorts {
            ports: HashMap::new(),
            next: 1,
        }),
    };
    Ok((transport, SimXen { shared }))
}

struct LocalPort {
    remote: u32,
    to_dm: Arc<OwnedFd>,
    to_xen: Arc<OwnedFd>,
}

struct LocalPorts {
    ports: HashMap<u32, LocalPort>,
    next: u32,
}

/// The device model's side of the simulator.
pub struct SimTransport {
    shared: Arc<Shared>,
    epoll: Epoll,
    local: Mutex<LocalPorts>,
}

impl SimTransport {
    fn ports(&self) -> MutexGuard<'_, LocalPorts> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn check_domid(&self, op: &'static str, domid: DomId) -> Result<(), TransportError> {
        let st = self.shared.lock();
        if domid != self.shared.cfg.domid || st.restricted.is_some_and(|r| r != domid) {
            return Err(TransportError::errno(op, libc::ESRCH));
        }
        Ok(())
    }
}

fn alloc_channel(st: &mut XenState) -> io::Result<u32> {
    let port = st.next_remote;
    st.next_remote += 1;
    st.channels.insert(
        port,
        Channel {
            local: None,
            to_dm: Arc::new(os::eventfd()?),
            to_xen: Arc::new(os::eventfd()?),
        },
    );
    Ok(port)
}

/// Xen's handling of one DM op: validate as the hypervisor does, act, fill OUT fields.
fn xen_dm_op(shared: &Shared, st: &mut XenState, op: DmOp) -> Result<DmOp, i32> {
    use DmOp::*;
    match op {
        CreateIoreqServer {
            handle_bufioreq, ..
        } => {
            if handle_bufioreq > HVM_IOREQSRV_BUFIOREQ_ATOMIC {
                return Err(libc::EINVAL);
            }
            let id = (0u16..8)
                .find(|i| !st.servers.contains_key(i))
                .ok_or(libc::ENOSPC)?;
            let pages = os::memfd("sim-xen-ioreq", 2 * PAGE_SIZE as u64).map_err(errno)?;
            let view =
                Arc::new(MappedRegion::map_shared(pages.as_fd(), 2 * PAGE_SIZE, 0).map_err(errno)?);
            let mut vcpu_ports = Vec::new();
            for _ in 0..shared.cfg.vcpus {
                vcpu_ports.push(alloc_channel(st).map_err(errno)?);
            }
            let buf_port = if handle_bufioreq == HVM_IOREQSRV_BUFIOREQ_OFF {
                None
            } else {
                Some(alloc_channel(st).map_err(errno)?)
            };
            st.servers.insert(
                id,
                SimServer {
                    handle_bufioreq,
                    pages,
                    view,
                    enabled: false,
                    vcpu_ports,
                    buf_port,
                    ranges: BTreeSet::new(),
                },
            );
            Ok(CreateIoreqServer {
                handle_bufioreq,
                id,
            })
        }
        GetIoreqServerInfo { id, flags, .. } => {
            let s = st.servers.get(&id).ok_or(libc::ENOENT)?;
            Ok(GetIoreqServerInfo {
                id,
                flags,
                bufioreq_port: s.buf_port.unwrap_or(0),
                ioreq_gfn: 0,
                bufioreq_gfn: 0,
            })
        }
        MapIoRange { id, ty, start, end } => {
            let kind = range_kind(ty)?;
            let s = st.servers.get_mut(&id).ok_or(libc::ENOENT)?;
            if start > end {
                return Err(libc::EINVAL);
            }
            let overlaps = s
                .ranges
                .iter()
                .any(|&(k, a, b)| k == kind && a <= end && start <= b);
            if overlaps {
                return Err(libc::EEXIST);
            }
            if s.ranges.iter().filter(|r| r.0 == kind).count() >= 256 {
                return Err(libc::ENOSPC);
            }
            s.ranges.insert((kind, start, end));
            Ok(op)
        }
        UnmapIoRange { id, ty, start, end } => {
            let kind = range_kind(ty)?;
            let s = st.servers.get_mut(&id).ok_or(libc::ENOENT)?;
            if !s.ranges.remove(&(kind, start, end)) {
                return Err(libc::ENOENT);
            }
            Ok(op)
        }
        SetIoreqServerState { id, enabled } => {
            let s = st.servers.get_mut(&id).ok_or(libc::ENOENT)?;
            if enabled && !s.enabled {
                // Xen publishes each slot's port when the server is enabled.
                for (vcpu, &port) in s.vcpu_ports.iter().enumerate() {
                    if let Some(slot) = IoreqSlot::new(&s.view, PAGE_SIZE, vcpu) {
                        slot.set_vp_eport(port);
                    }
                }
            }
            s.enabled = enabled;
            Ok(op)
        }
        DestroyIoreqServer { id } => {
            let s = st.servers.remove(&id).ok_or(libc::ENOENT)?;
            for p in s.vcpu_ports.iter().chain(s.buf_port.iter()) {
                st.channels.remove(p);
            }
            Ok(op)
        }
        SetIsaIrqLevel { irq, level } => {
            if irq > 15 || level > 1 {
                return Err(libc::EINVAL);
            }
            Ok(op)
        }
        SetPciIntxLevel {
            domain,
            bus,
            device,
            intx,
            level,
        } => {
            if domain != 0 || bus != 0 || device > 31 || intx > 3 || level > 1 {
                return Err(libc::EINVAL);
            }
            Ok(op)
        }
        SetPciLinkRoute { link, irq } => {
            if link > 3 || irq > 15 {
                return Err(libc::EINVAL);
            }
            Ok(op)
        }
        NrVcpus { .. } => Ok(NrVcpus {
            vcpus: shared.cfg.vcpus,
        }),
        RemoteShutdown { .. }
        | TrackDirtyVram { .. }
        | ModifiedMemory { .. }
        | InjectMsi { .. }
        | SetMemType { .. }
        | RelocateMemory { .. }
        | PinMemoryCacheattr { .. } => Ok(op),
    }
}

fn range_kind(ty: u32) -> Result<RangeKind, i32> {
    match ty {
        0 => Ok(RangeKind::Port),
        1 => Ok(RangeKind::Memory),
        2 => Ok(RangeKind::Pci),
        _ => Err(libc::EINVAL),
    }
}

fn errno(e: io::Error) -> i32 {
    e.raw_os_error().unwrap_or(libc::EIO)
}

impl Transport for SimTransport {
    fn dm_op(
        &self,
        domid: DomId,
        op: &mut [u8; 32],
        extra: &mut [&mut [u8]],
    ) -> Result<(), TransportError> {
        self.check_domid("DM_OP", domid)?;
        let decoded =
            DmOp::decode(op).map_err(|_| TransportError::errno("DM_OP", libc::EOPNOTSUPP))?;
        let mut st = self.shared.lock();
        st.dm_ops.push(decoded);
        match decoded {
            // The simulator does not track writes: everything is dirty.
            DmOp::TrackDirtyVram { nr, .. } => match extra.first_mut() {
                Some(b) if b.len() >= (nr as usize).div_ceil(8) => b.fill(0xFF),
                _ => return Err(TransportError::errno("DM_OP", libc::EINVAL)),
            },
            DmOp::ModifiedMemory { nr_extents } => {
                let len = extra.first().map_or(0, |b| b.len());
                if len != nr_extents as usize * crate::abi::dmop::MODIFIED_MEMORY_EXTENT_SIZE {
                    return Err(TransportError::errno("DM_OP", libc::EINVAL));
                }
            }
            _ => {}
        }
        let answer = xen_dm_op(&self.shared, &mut st, decoded)
            .map_err(|e| TransportError::errno("DM_OP", e))?;
        *op = answer.encode();
        Ok(())
    }

    fn map_resource(
        &self,
        domid: DomId,
        kind: u32,
        id: u32,
        first: u32,
        count: usize,
    ) -> Result<MappedRegion, TransportError> {
        const OP: &str = "MMAP_RESOURCE";
        self.check_domid(OP, domid)?;
        if kind != XENMEM_RESOURCE_IOREQ_SERVER {
            return Err(TransportError::errno(OP, libc::EOPNOTSUPP));
        }
        let st = self.shared.lock();
        let id = u16::try_from(id).map_err(|_| TransportError::errno(OP, libc::ENOENT))?;
        let s = st
            .servers
            .get(&id)
            .ok_or_else(|| TransportError::errno(OP, libc::ENOENT))?;
        if first == 0 && s.handle_bufioreq == HVM_IOREQSRV_BUFIOREQ_OFF {
            return Err(TransportError::errno(OP, libc::ENOENT));
        }
        if count == 0 || first as usize + count > 2 {
            return Err(TransportError::errno(OP, libc::EINVAL));
        }
        MappedRegion::map_shared(
            s.pages.as_fd(),
            count * PAGE_SIZE,
            u64::from(first) * PAGE_SIZE as u64,
        )
        .map_err(|e| TransportError::os(OP, e))
    }

    fn map_foreign(&self, domid: DomId, gfns: &[u64]) -> Result<ForeignMapping, TransportError> {
        const OP: &str = "MMAPBATCH_V2";
        self.check_domid(OP, domid)?;
        if gfns.is_empty() {
            return Err(TransportError::errno(OP, libc::EINVAL));
        }
        self.shared.lock().foreign_maps += 1;
        let region = MappedRegion::map_anonymous(gfns.len() * PAGE_SIZE)
            .map_err(|e| TransportError::os(OP, e))?;
        let frames = self.shared.ram_frames();
        let mut errors = vec![0i32; gfns.len()];
        let mut i = 0;
        while i < gfns.len() {
            if gfns[i] >= frames {
                errors[i] = -libc::EINVAL;
                i += 1;
                continue;
            }
            // One mmap per run of consecutive RAM frames.
            let start = i;
            while i + 1 < gfns.len() && gfns[i + 1] == gfns[i] + 1 && gfns[i + 1] < frames {
                i += 1;
            }
            i += 1;
            region
                .map_fixed(
                    start * PAGE_SIZE,
                    self.shared.ram.as_fd(),
                    gfns[start] * PAGE_SIZE as u64,
                    (i - start) * PAGE_SIZE,
                )
                .map_err(|e| TransportError::os(OP, e))?;
        }
        Ok(ForeignMapping { region, errors })
    }

    fn bind_interdomain(&self, domid: DomId, remote_port: u32) -> Result<u32, TransportError> {
        const OP: &str = "EVTCHN_BIND_INTERDOMAIN";
        self.check_domid(OP, domid)?;
        let mut st = self.shared.lock();
        let ch = st
            .channels
            .get_mut(&remote_port)
            .filter(|c| c.local.is_none())
            .ok_or_else(|| TransportError::errno(OP, libc::EINVAL))?;
        let mut ports = self.ports();
        let local = ports.next;
        ports.next += 1;
        self.epoll
            .add(ch.to_dm.as_fd(), u64::from(local))
            .map_err(|e| TransportError::os(OP, e))?;
        ch.local = Some(local);
        ports.ports.insert(
            local,
            LocalPort {
                remote: remote_port,
                to_dm: ch.to_dm.clone(),
                to_xen: ch.to_xen.clone(),
            },
        );
        Ok(local)
    }

    fn unbind(&self, port: u32) -> Result<(), TransportError> {
        let lp = self
            .ports()
            .ports
            .remove(&port)
            .ok_or_else(|| TransportError::errno("EVTCHN_UNBIND", libc::ENOTCONN))?;
        let _ = self.epoll.remove(lp.to_dm.as_fd());
        if let Some(ch) = self.shared.lock().channels.get_mut(&lp.remote) {
            ch.local = None;
        }
        Ok(())
    }

    fn notify(&self, port: u32) -> Result<(), TransportError> {
        let ports = self.ports();
        let lp = ports
            .ports
            .get(&port)
            .ok_or_else(|| TransportError::errno("EVTCHN_NOTIFY", libc::ENOTCONN))?;
        os::eventfd_signal(lp.to_xen.as_fd()).map_err(|e| TransportError::os("EVTCHN_NOTIFY", e))
    }

    fn unmask(&self, port: u32) -> Result<(), TransportError> {
        let ports = self.ports();
        let Some(lp) = ports.ports.get(&port) else {
            return Ok(());
        };
        self.epoll
            .rearm(lp.to_dm.as_fd(), u64::from(port))
            .map_err(|e| TransportError::os("evtchn unmask", e))
    }

    fn pending(&self, out: &mut [u32]) -> Result<usize, TransportError> {
        let mut tokens = [0u64; 32];
        let max = out.len().min(tokens.len());
        let n = self
            .epoll
            .ready(&mut tokens[..max])
            .map_err(|e| TransportError::os("evtchn read", e))?;
        let ports = self.ports();
        let mut count = 0;
        for &t in &tokens[..n] {
            let port = t as u32;
            if let Some(lp) = ports.ports.get(&port) {
                // Clearing the counter is the delivery; the one-shot registration is the mask.
                os::eventfd_take(lp.to_dm.as_fd())
                    .map_err(|e| TransportError::os("evtchn read", e))?;
                out[count] = port;
                count += 1;
            }
        }
        Ok(count)
    }

    fn event_fd(&self) -> BorrowedFd<'_> {
        self.epoll.as_fd()
    }

    fn restrict(&self, domid: DomId) -> Result<(), TransportError> {
        let mut st = self.shared.lock();
        if st.restricted.is_some_and(|r| r != domid) {
            return Err(TransportError::errno("PRIVCMD_RESTRICT", libc::EPERM));
        }
        st.restricted = Some(domid);
        Ok(())
    }
}

/// The hypervisor's side of the simulator, held by the test.
#[derive(Clone)]
pub struct SimXen {
    shared: Arc<Shared>,
}

/// One vCPU's slot and event channel, as Xen sees them, once the server is enabled and the
/// device model has bound the port. Cheap to use from a thread (no shared lock).
pub struct SimVcpu {
    view: Arc<MappedRegion>,
    vcpu: usize,
    to_dm: Arc<OwnedFd>,
    to_xen: Arc<OwnedFd>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SimError {
    #[error("no enabled ioreq server")]
    NoServer,
    #[error("vCPU {0} has no slot or its port is not bound")]
    NoVcpu(usize),
    #[error("vCPU {0}'s slot is busy (state {1})")]
    SlotBusy(usize, u8),
    #[error("the buffered ring has no room")]
    RingFull,
    #[error("{0:#x}+{1:#x} is not guest RAM")]
    NotRam(u64, usize),
}

impl SimVcpu {
    fn slot(&self) -> Option<IoreqSlot<'_>> {
        IoreqSlot::new(&self.view, PAGE_SIZE, self.vcpu)
    }

    /// Post `req` as Xen does (NONE, copy, READY) and notify the vCPU's port.
    pub fn post(&self, req: &IoReq) -> Result<(), SimError> {
        let slot = self.slot().ok_or(SimError::NoVcpu(self.vcpu))?;
        let state = slot.state();
        if state != STATE_IOREQ_NONE {
            return Err(SimError::SlotBusy(self.vcpu, state));
        }
        slot.post(req, STATE_IOREQ_READY);
        let _ = os::eventfd_signal(self.to_dm.as_fd());
        Ok(())
    }

    /// The response, if the device model has completed the request (Xen then sets NONE).
    pub fn response(&self) -> Option<IoReq> {
        let slot = self.slot()?;
        if slot.state() != STATE_IORESP_READY {
            return None;
        }
        let r = slot.read();
        slot.set_state(&r, STATE_IOREQ_NONE);
        Some(r)
    }

    /// The slot's state now.
    pub fn state(&self) -> u8 {
        self.slot().map_or(STATE_IOREQ_NONE, |s| s.state())
    }

    /// Whether the device model notified this vCPU's port since the last call.
    pub fn take_notified(&self) -> bool {
        os::eventfd_take(self.to_xen.as_fd()).unwrap_or(0) > 0
    }

    /// Block until the device model notifies and the response is there.
    pub fn wait_response(&self, timeout: Duration) -> Option<IoReq> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(r) = self.response() {
                let _ = os::eventfd_take(self.to_xen.as_fd());
                return Some(r);
            }
            let left = deadline.checked_duration_since(Instant::now())?;
            if os::wait_readable(self.to_xen.as_fd(), Some(left)).ok()? {
                let _ = os::eventfd_take(self.to_xen.as_fd());
            }
        }
    }

    /// Post and wait: one synchronous round trip.
    pub fn request(&self, req: &IoReq, timeout: Duration) -> Result<Option<IoReq>, SimError> {
        self.post(req)?;
        Ok(self.wait_response(timeout))
    }
}

impl SimXen {
    fn lock(&self) -> MutexGuard<'_, XenState> {
        self.shared.lock()
    }

    pub fn domid(&self) -> DomId {
        self.shared.cfg.domid
    }

    fn enabled_server(st: &XenState) -> Option<(&u16, &SimServer)> {
        st.servers.iter().rev().find(|(_, s)| s.enabled)
    }

    /// vCPU `vcpu` of the most recently created enabled server.
    pub fn vcpu(&self, vcpu: usize) -> Result<SimVcpu, SimError> {
        let st = self.lock();
        let (_, s) = Self::enabled_server(&st).ok_or(SimError::NoServer)?;
        let port = *s.vcpu_ports.get(vcpu).ok_or(SimError::NoVcpu(vcpu))?;
        let ch = st
            .channels
            .get(&port)
            .filter(|c| c.local.is_some())
            .ok_or(SimError::NoVcpu(vcpu))?;
        Ok(SimVcpu {
            view: s.view.clone(),
            vcpu,
            to_dm: ch.to_dm.clone(),
            to_xen: ch.to_xen.clone(),
        })
    }

    /// Post `req` on `vcpu` (see [`SimVcpu::post`]).
    pub fn post(&self, vcpu: usize, req: &IoReq) -> Result<(), SimError> {
        self.vcpu(vcpu)?.post(req)
    }

    /// Take `vcpu`'s response if it is ready.
    pub fn response(&self, vcpu: usize) -> Option<IoReq> {
        self.vcpu(vcpu).ok()?.response()
    }

    fn with_ring<T>(&self, f: impl FnOnce(BufferedPage<'_>, &Channel) -> T) -> Result<T, SimError> {
        let st = self.lock();
        let (_, s) = Self::enabled_server(&st).ok_or(SimError::NoServer)?;
        let port = s.buf_port.ok_or(SimError::NoServer)?;
        let ch = st.channels.get(&port).ok_or(SimError::NoServer)?;
        let ring = BufferedPage::new(&s.view, 0).ok_or(SimError::NoServer)?;
        Ok(f(ring, ch))
    }

    /// Xen's `ioreq_send_buffered` for one write: 8-byte values take two slots (low word,
    /// then the high word in the second slot's data). Notifies the buffered port.
    pub fn push_buffered(&self, ty: u8, addr: u32, size: u32, data: u64) -> Result<(), SimError> {
        let code = match size {
            1 => 0,
            2 => 1,
            4 => 2,
            _ => 3,
        };
        let lo = BufIoReq::new(ty, false, code, addr, data as u32);
        if code == 3 {
            let hi = BufIoReq::new(ty, false, code, addr, (data >> 32) as u32);
            self.push_buffered_raw(&[lo, hi])
        } else {
            self.push_buffered_raw(&[lo])
        }
    }

    /// Append raw ring entries as one producer step and notify.
    pub fn push_buffered_raw(&self, entries: &[BufIoReq]) -> Result<(), SimError> {
        self.with_ring(|ring, ch| {
            let w = ring.write_pointer();
            let r = ring.read_pointer();
            let n = entries.len() as u32;
            if w.wrapping_sub(r).saturating_add(n) > crate::abi::IOREQ_BUFFER_SLOT_NUM {
                return Err(SimError::RingFull);
            }
            for (i, e) in entries.iter().enumerate() {
                ring.write_slot(w.wrapping_add(i as u32), *e);
            }
            ring.set_write_pointer(w.wrapping_add(n));
            let _ = os::eventfd_signal(ch.to_dm.as_fd());
            Ok(())
        })?
    }

    /// Set both ring pointers (to start near a wrap, or to corrupt the ring in a test).
    pub fn set_ring_pointers(&self, read: u32, write: u32) -> Result<(), SimError> {
        self.with_ring(|ring, _| {
            ring.set_read_pointer(read);
            ring.set_write_pointer(write);
        })
    }

    /// Write one raw ring slot without moving the pointers.
    pub fn write_ring_slot(&self, pointer: u32, entry: BufIoReq) -> Result<(), SimError> {
        self.with_ring(|ring, _| ring.write_slot(pointer, entry))
    }

    /// Notify the buffered port without adding anything.
    pub fn notify_buffered(&self) -> Result<(), SimError> {
        self.with_ring(|_, ch| {
            let _ = os::eventfd_signal(ch.to_dm.as_fd());
        })
    }

    /// `(read_pointer, write_pointer)`.
    pub fn ring_pointers(&self) -> Result<(u32, u32), SimError> {
        self.with_ring(|ring, _| (ring.read_pointer(), ring.write_pointer()))
    }

    /// Every DM op issued so far, in order (including refused ones).
    pub fn dm_ops(&self) -> Vec<DmOp> {
        self.lock().dm_ops.clone()
    }

    /// The DM ops issued since the last call.
    pub fn take_dm_ops(&self) -> Vec<DmOp> {
        std::mem::take(&mut self.lock().dm_ops)
    }

    /// How many MMAPBATCH_V2 calls the device model made.
    pub fn foreign_map_calls(&self) -> usize {
        self.lock().foreign_maps
    }

    /// The ranges the newest server claims.
    pub fn ranges(&self) -> Vec<(RangeKind, u64, u64)> {
        let st = self.lock();
        st.servers
            .values()
            .next_back()
            .map(|s| s.ranges.iter().copied().collect())
            .unwrap_or_default()
    }

    /// Whether any server exists, and whether the newest one is enabled.
    pub fn server_state(&self) -> Option<bool> {
        self.lock().servers.values().next_back().map(|s| s.enabled)
    }

    pub fn restricted_to(&self) -> Option<DomId> {
        self.lock().restricted
    }

    pub fn ram_write(&self, addr: u64, data: &[u8]) -> Result<(), SimError> {
        let off = usize::try_from(addr).map_err(|_| SimError::NotRam(addr, data.len()))?;
        if self.shared.ram_view.write_bytes(off, data) {
            Ok(())
        } else {
            Err(SimError::NotRam(addr, data.len()))
        }
    }

    pub fn ram_read(&self, addr: u64, data: &mut [u8]) -> Result<(), SimError> {
        let off = usize::try_from(addr).map_err(|_| SimError::NotRam(addr, data.len()))?;
        if self.shared.ram_view.read_bytes(off, data) {
            Ok(())
        } else {
            Err(SimError::NotRam(addr, data.len()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::IOREQ_TYPE_PIO;
    use crate::transport::DmOps;

    #[test]
    fn sim_server_life_cycle_and_event_channels() {
        let (t, xen) = pair(SimConfig::default()).unwrap();
        let id = t
            .create_ioreq_server(7, HVM_IOREQSRV_BUFIOREQ_ATOMIC)
            .unwrap();
        let info = t.get_ioreq_server_info(7, id).unwrap();
        assert_ne!(info.bufioreq_port, 0);
        let pages = t.map_resource(7, 0, u32::from(id), 0, 2).unwrap();
        t.set_ioreq_server_state(7, id, true).unwrap();
        let remote = IoreqSlot::new(&pages, PAGE_SIZE, 1).unwrap().vp_eport();
        assert_ne!(remote, 0);
        let local = t.bind_interdomain(7, remote).unwrap();
        assert!(t.bind_interdomain(7, remote).is_err(), "already bound");
        assert!(t.bind_interdomain(8, remote).is_err(), "wrong domain");

        let v1 = xen.vcpu(1).unwrap();
        v1.post(&IoReq::new(IOREQ_TYPE_PIO, true, 0x80, 1, 0))
            .unwrap();
        assert!(matches!(
            v1.post(&IoReq::default()),
            Err(SimError::SlotBusy(1, 1))
        ));
        let mut ports = [0u32; 4];
        assert_eq!(t.pending(&mut ports).unwrap(), 1);
        assert_eq!(ports[0], local);
        // Masked until unmasked.
        xen.vcpu(1).unwrap().to_dm.as_fd();
        os::eventfd_signal(v1.to_dm.as_fd()).unwrap();
        assert_eq!(t.pending(&mut ports).unwrap(), 0);
        t.unmask(local).unwrap();
        assert_eq!(t.pending(&mut ports).unwrap(), 1);
        t.unmask(local).unwrap();
        t.notify(local).unwrap();
        assert!(v1.take_notified());
        assert!(!v1.take_notified());

        t.map_io_range(7, id, RangeKind::Port, 0x3f8, 0x3ff)
            .unwrap();
        let e = t
            .map_io_range(7, id, RangeKind::Port, 0x3f0, 0x3f8)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EEXIST));
        let e = t
            .unmap_io_range(7, id, RangeKind::Port, 0x3f0, 0x3f8)
            .unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        assert_eq!(xen.ranges(), vec![(RangeKind::Port, 0x3f8, 0x3ff)]);
        let mut bitmap = [0u8; 3];
        t.track_dirty_vram(7, 0xA0, 20, &mut bitmap).unwrap();
        assert_eq!(bitmap, [0xFF; 3]);
        assert!(t.track_dirty_vram(7, 0xA0, 40, &mut bitmap).is_err());
        let extents: Vec<(u64, u32)> = (0..300).map(|i| (i * 16, 1)).collect();
        xen.take_dm_ops();
        t.modified_memory(7, &extents).unwrap();
        assert_eq!(
            xen.take_dm_ops(),
            vec![
                DmOp::ModifiedMemory { nr_extents: 256 },
                DmOp::ModifiedMemory { nr_extents: 44 }
            ]
        );
        t.destroy_ioreq_server(7, id).unwrap();
        assert_eq!(xen.server_state(), None);
    }

    #[test]
    fn foreign_frames_alias_guest_ram_and_flag_holes() {
        let (t, xen) = pair(SimConfig {
            ram_bytes: 4 * PAGE_SIZE as u64,
            ..SimConfig::default()
        })
        .unwrap();
        xen.ram_write(2 * PAGE_SIZE as u64 + 8, b"hello").unwrap();
        let m = t.map_foreign(7, &[3, 2, 9]).unwrap();
        assert_eq!(m.errors, vec![0, 0, -libc::EINVAL]);
        let mut b = [0u8; 5];
        assert!(m.region.read_bytes(PAGE_SIZE + 8, &mut b));
        assert_eq!(&b, b"hello");
        assert!(m.region.write_bytes(0, b"world"));
        xen.ram_read(3 * PAGE_SIZE as u64, &mut b).unwrap();
        assert_eq!(&b, b"world");
        assert_eq!(xen.foreign_map_calls(), 1);
    }
}
