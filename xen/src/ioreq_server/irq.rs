//! Interrupts and machine control under Xen: the interrupt controllers are Xen's, so a line
//! level becomes a DM op (docs/XEN-DM-SPEC.md 3.4), and so do PIIX3 PIRQ routes and guest
//! poweroff/reboot (3.7).
//!
//! Lines remember the level they last reported and skip repeats (Xen's answer would not
//! change, and each DM op is a hypercall); a failed op forgets it so the next change retries.
//! Xen takes one level per ISA IRQ: if two devices share an ISA line, the board must OR them
//! before an [`IsaIrq`] (PCI INTx sharing is handled by the PCI root and Xen).

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use log::{debug, warn};

use devices::irq::IrqLine;
use devices::pci::{IntxPin, IntxSink, PirqRouteListener};
use devices::system::SystemControl;

use crate::abi::{SHUTDOWN_POWEROFF, SHUTDOWN_REBOOT};
use crate::transport::{DmOps, DomId, Transport, TransportError};

const UNKNOWN: u8 = 2;

/// The last level reported on a line, to skip repeats.
struct Level(AtomicU8);

impl Level {
    fn new() -> Level {
        Level(AtomicU8::new(UNKNOWN))
    }

    /// Whether `level` must be sent; records it.
    fn changes_to(&self, level: bool) -> bool {
        self.0.swap(u8::from(level), Ordering::AcqRel) != u8::from(level)
    }

    fn forget(&self) {
        self.0.store(UNKNOWN, Ordering::Release);
    }
}

fn report(what: &str, r: Result<(), TransportError>, level: &Level) {
    if let Err(e) = r {
        level.forget();
        warn!("{what}: {e}");
    }
}

/// ISA IRQ `irq` (0-15) of a domain: `set_isa_irq_level`.
pub struct IsaIrq {
    transport: Arc<dyn Transport>,
    domid: DomId,
    irq: u8,
    level: Level,
}

impl IsaIrq {
    pub fn new(transport: Arc<dyn Transport>, domid: DomId, irq: u8) -> IsaIrq {
        IsaIrq {
            transport,
            domid,
            irq,
            level: Level::new(),
        }
    }

    /// The 16 ISA lines, in order (what `PirqRouter::new` or a board's ISA devices take).
    pub fn lines(transport: &Arc<dyn Transport>, domid: DomId) -> Vec<Arc<dyn IrqLine>> {
        (0..16)
            .map(|irq| Arc::new(IsaIrq::new(transport.clone(), domid, irq)) as Arc<dyn IrqLine>)
            .collect()
    }
}

impl IrqLine for IsaIrq {
    fn set_level(&self, asserted: bool) {
        if self.level.changes_to(asserted) {
            let r = self
                .transport
                .set_isa_irq_level(self.domid, self.irq, asserted);
            report(
                &format!("set_isa_irq_level({}, {asserted})", self.irq),
                r,
                &self.level,
            );
        }
    }
}

/// One PCI INTx pin of a bus-0 device: `set_pci_intx_level`. Xen swizzles and routes it.
pub struct PciIntxLine {
    transport: Arc<dyn Transport>,
    domid: DomId,
    device: u8,
    pin: IntxPin,
    level: Level,
}

impl PciIntxLine {
    pub fn new(transport: Arc<dyn Transport>, domid: DomId, device: u8, pin: IntxPin) -> Self {
        PciIntxLine {
            transport,
            domid,
            device,
            pin,
            level: Level::new(),
        }
    }
}

impl IrqLine for PciIntxLine {
    fn set_level(&self, asserted: bool) {
        if self.level.changes_to(asserted) {
            let r = self.transport.set_pci_intx_level(
                self.domid,
                0,
                0,
                self.device,
                self.pin.index(),
                asserted,
            );
            report(
                &format!(
                    "set_pci_intx_level({}, {:?}, {asserted})",
                    self.device, self.pin
                ),
                r,
                &self.level,
            );
        }
    }
}

/// The PCI root's per-(device, pin) INTx levels as DM ops: give it to
/// `PciRoot::set_intx_sink`.
pub struct XenIntxSink {
    transport: Arc<dyn Transport>,
    domid: DomId,
    levels: Vec<Level>,
}

impl XenIntxSink {
    pub fn new(transport: Arc<dyn Transport>, domid: DomId) -> XenIntxSink {
        XenIntxSink {
            transport,
            domid,
            levels: (0..32 * 4).map(|_| Level::new()).collect(),
        }
    }
}

impl IntxSink for XenIntxSink {
    fn set_intx_level(&self, device: u8, pin: IntxPin, asserted: bool) {
        let Some(level) = self
            .levels
            .get(usize::from(device) * 4 + usize::from(pin.index()))
        else {
            debug!("INTx of device {device} ignored: bus 0 has 32 devices");
            return;
        };
        if level.changes_to(asserted) {
            let r =
                self.transport
                    .set_pci_intx_level(self.domid, 0, 0, device, pin.index(), asserted);
            report(
                &format!("set_pci_intx_level({device}, {pin:?}, {asserted})"),
                r,
                level,
            );
        }
    }
}

/// PIIX3 PIRQ route changes as `set_pci_link_route` (IRQ 0 disables the link): give it to
/// `PirqRouter::set_listener`.
pub struct XenLinkRoutes {
    transport: Arc<dyn Transport>,
    domid: DomId,
}

impl XenLinkRoutes {
    pub fn new(transport: Arc<dyn Transport>, domid: DomId) -> XenLinkRoutes {
        XenLinkRoutes { transport, domid }
    }
}

impl PirqRouteListener for XenLinkRoutes {
    fn pirq_route_changed(&self, pirq: u8, irq: Option<u8>) {
        let irq = irq.unwrap_or(0);
        if let Err(e) = self.transport.set_pci_link_route(self.domid, pirq, irq) {
            warn!("set_pci_link_route({pirq}, {irq}): {e}");
        }
    }
}

const NO_SHUTDOWN: u32 = u32::MAX;

/// Guest poweroff and reset, latched by devices and sent by the ioreq server as
/// `remote_shutdown` after the request that caused them and before the vCPU is released, so
/// the toolstack sees the shutdown before the guest runs on. Xen does not reset an HVM domain
/// in place: a reset is `SHUTDOWN_reboot` and the toolstack builds a new domain.
#[derive(Debug)]
pub struct ShutdownLatch {
    reason: AtomicU32,
}

impl Default for ShutdownLatch {
    fn default() -> Self {
        ShutdownLatch {
            reason: AtomicU32::new(NO_SHUTDOWN),
        }
    }
}

impl ShutdownLatch {
    pub fn new() -> Arc<ShutdownLatch> {
        Arc::new(ShutdownLatch::default())
    }

    /// Request `SHUTDOWN_*` `reason`; the first request wins until it is taken.
    pub fn request_shutdown(&self, reason: u32) {
        let _ =
            self.reason
                .compare_exchange(NO_SHUTDOWN, reason, Ordering::AcqRel, Ordering::Acquire);
    }

    /// The pending reason, clearing it.
    pub fn take(&self) -> Option<u32> {
        match self.reason.swap(NO_SHUTDOWN, Ordering::AcqRel) {
            NO_SHUTDOWN => None,
            r => Some(r),
        }
    }
}

impl SystemControl for ShutdownLatch {
    fn request_reset(&self) {
        self.request_shutdown(SHUTDOWN_REBOOT);
    }

    fn set_a20(&self, enabled: bool) {
        // Under Xen the vCPU's address masking is Xen's; port 0x92/8042 A20 is ignored.
        debug!(
            "A20 {} ignored under Xen",
            if enabled { "on" } else { "off" }
        );
    }

    fn request_exit(&self, status: i32) {
        debug!("guest asked to exit with {status}: powering off");
        self.request_shutdown(SHUTDOWN_POWEROFF);
    }
}
