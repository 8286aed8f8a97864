//! The PIIX3 (82371SB) PCI-to-ISA bridge, function 0 at 00:01.0, and its PIRQ router.
//!
//! The four PIRQ route control registers (0x60-0x63, PIRQA#-PIRQD#) steer the board's PCI
//! interrupt wires to ISA IRQs: bit 7 set disables the route, bits 3:0 name the IRQ, and the
//! datasheet reserves IRQs 0, 1, 2, 8 and 13 (timer, keyboard, cascade, RTC, FPU), which the
//! router treats as "not routed". PCI interrupts are level-triggered and shared: a PIRQ is
//! asserted while any pin swizzled onto it is (the root computes that), and an ISA IRQ fed by
//! several PIRQs is their OR.
//!
//! [`PirqRouter`] serves both kinds of board. Standalone, it drives the 16 ISA lines it is given
//! (the 8259 inputs; the ELCR that makes them level-sensitive lives in the PIC). Under Xen,
//! Xen routes INTx itself from the PCI link routes the device model reports with
//! `set_pci_link_route`: give the router unconnected lines and a [`PirqRouteListener`], which
//! hears every change of a route. The reset control register at port 0xCF9, also a PIIX3
//! register, is served by [`super::config_io`] because it sits inside the 0xCF8 dword.

use std::sync::{Arc, Mutex};

use log::debug;

use super::config_space::{ConfigSpace, PciIds, command, status};
use super::{Bdf, PciError, PciFunction};
use crate::irq::{IrqLine, UnconnectedLine};

/// PIIX3 function 0 sits at device 1 on the i440FX board.
pub const PIIX3_BDF: Bdf = Bdf::from_devfn(0, 0x08);

/// PIRQA# route control; PIRQB#-PIRQD# follow.
pub const PIRQ_ROUTE: usize = 0x60;
/// Top of memory (ISA/DMA forwarding), stored only.
pub const TOM: usize = 0x69;
/// A route register with this bit set routes nowhere.
pub const PIRQ_ROUTE_DISABLE: u8 = 0x80;
/// Bits 6:4 of a route register are reserved and read as zero.
const PIRQ_ROUTE_WRITABLE: u8 = 0x8F;

pub const NUM_PIRQS: usize = 4;
pub const NUM_ISA_IRQS: usize = 16;

/// The ISA IRQ a route register value selects, if any.
pub fn decode_route(value: u8) -> Option<u8> {
    if value & PIRQ_ROUTE_DISABLE != 0 {
        return None;
    }
    match value & 0x0F {
        0 | 1 | 2 | 8 | 13 => None,
        irq => Some(irq),
    }
}

/// Told when the guest changes where a PIRQ goes (`None`: nowhere). A Xen board forwards this
/// to `xendevicemodel_set_pci_link_route` (with IRQ 0 for `None`). Called with the router's
/// lock held: do not call back into the router.
pub trait PirqRouteListener: Send + Sync {
    fn pirq_route_changed(&self, pirq: u8, irq: Option<u8>);
}

struct RouterState {
    routes: [Option<u8>; NUM_PIRQS],
    pirq_levels: [bool; NUM_PIRQS],
    /// The level last driven on each ISA line, so lines change only on edges of the OR.
    driven: [bool; NUM_ISA_IRQS],
    listener: Option<Arc<dyn PirqRouteListener>>,
}

/// PIRQ levels in, ISA IRQ levels (and route changes) out. Shared between the root (levels) and
/// the PIIX3 function (routes).
///
/// The ISA lines are driven with the router's lock held, so concurrent level changes reach the
/// PIC in the order they were computed; the lines must not call back into PCI.
pub struct PirqRouter {
    isa: Vec<Arc<dyn IrqLine>>,
    state: Mutex<RouterState>,
}

impl PirqRouter {
    /// A router driving `isa_irqs`, which must be the 16 ISA IRQ lines in order.
    pub fn new(isa_irqs: Vec<Arc<dyn IrqLine>>) -> Result<Arc<PirqRouter>, PciError> {
        if isa_irqs.len() != NUM_ISA_IRQS {
            return Err(PciError::IsaLineCount(isa_irqs.len()));
        }
        Ok(Arc::new(PirqRouter {
            isa: isa_irqs,
            state: Mutex::new(RouterState {
                routes: [None; NUM_PIRQS],
                pirq_levels: [false; NUM_PIRQS],
                driven: [false; NUM_ISA_IRQS],
                listener: None,
            }),
        }))
    }

    /// A router whose ISA side goes nowhere: a Xen board, which only needs the listener.
    pub fn unconnected() -> Arc<PirqRouter> {
        let lines = (0..NUM_ISA_IRQS)
            .map(|_| Arc::new(UnconnectedLine) as Arc<dyn IrqLine>)
            .collect();
        match PirqRouter::new(lines) {
            Ok(r) => r,
            Err(_) => unreachable!("exactly 16 lines were built"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouterState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Install the route listener; it is told the current route of every PIRQ at once.
    pub fn set_listener(&self, listener: Arc<dyn PirqRouteListener>) {
        let mut st = self.lock();
        for (pirq, route) in st.routes.iter().enumerate() {
            listener.pirq_route_changed(pirq as u8, *route);
        }
        st.listener = Some(listener);
    }

    /// The level of PIRQ `pirq` (0 = PIRQA#), as the root's swizzle computes it.
    pub fn set_pirq_level(&self, pirq: u8, asserted: bool) {
        let mut st = self.lock();
        let Some(level) = st.pirq_levels.get_mut(usize::from(pirq)) else {
            debug!("PIRQ {pirq} does not exist");
            return;
        };
        *level = asserted;
        self.drive(&mut st);
    }

    /// The guest wrote `value` to PIRQ `pirq`'s route control register.
    pub fn set_route_register(&self, pirq: u8, value: u8) {
        let mut st = self.lock();
        let route = decode_route(value);
        let Some(slot) = st.routes.get_mut(usize::from(pirq)) else {
            debug!("PIRQ {pirq} does not exist");
            return;
        };
        if *slot == route {
            return;
        }
        *slot = route;
        if value & PIRQ_ROUTE_DISABLE == 0 && route.is_none() {
            debug!(
                "PIRQ {pirq} routed to reserved IRQ {}: not routed",
                value & 0x0F
            );
        }
        if let Some(listener) = &st.listener {
            listener.pirq_route_changed(pirq, route);
        }
        self.drive(&mut st);
    }

    pub fn route(&self, pirq: u8) -> Option<u8> {
        self.lock().routes.get(usize::from(pirq)).copied().flatten()
    }

    pub fn pirq_level(&self, pirq: u8) -> bool {
        self.lock()
            .pirq_levels
            .get(usize::from(pirq))
            .copied()
            .unwrap_or(false)
    }

    /// The level the router drives on ISA IRQ `irq`.
    pub fn isa_level(&self, irq: u8) -> bool {
        self.lock()
            .driven
            .get(usize::from(irq))
            .copied()
            .unwrap_or(false)
    }

    fn drive(&self, st: &mut RouterState) {
        for (irq, line) in self.isa.iter().enumerate() {
            let level = st
                .routes
                .iter()
                .zip(st.pirq_levels)
                .any(|(route, on)| on && *route == Some(irq as u8));
            if level != st.driven[irq] {
                st.driven[irq] = level;
                line.set_level(level);
            }
        }
    }
}

/// PIIX3 function 0: the PCI-to-ISA bridge's configuration space.
pub struct Piix3 {
    config: ConfigSpace,
    router: Arc<PirqRouter>,
}

impl Piix3 {
    /// The ISA bridge with its power-on register values (as QEMU resets them), reporting PIRQ
    /// route writes to `router`.
    pub fn new(router: Arc<PirqRouter>) -> Piix3 {
        let mut config = ConfigSpace::new(PciIds {
            vendor_id: 0x8086,
            device_id: 0x7000,
            revision_id: 0x00,
            class_code: 0x06_01_00,
            subsystem_vendor_id: 0,
            subsystem_id: 0,
        });
        // Function 0 of a multi-function device (IDE, USB and power management follow).
        config.set_multifunction(true);
        config.set_u16(
            super::config_space::COMMAND,
            command::IO_SPACE | command::MEMORY_SPACE | command::BUS_MASTER,
        );
        config.set_status_bits(status::DEVSEL_MEDIUM);
        // The bridge has no INTx of its own, no cache line and no latency timer.
        config.set_write_mask(super::config_space::CACHE_LINE_SIZE, &[0, 0]);
        config.set_write_mask(super::config_space::INTERRUPT_LINE, &[0]);
        // The device-specific registers (ISA recovery timer, X-bus chip select, TOM, motherboard
        // IRQ/DMA routing, APIC base, SMI control...) are stored as written; only the PIRQ
        // route registers have reserved bits.
        config.set_write_mask(0x40, &[0xFF; 0xC0]);
        config.set_write_mask(PIRQ_ROUTE, &[PIRQ_ROUTE_WRITABLE; NUM_PIRQS]);
        for (reg, value) in [
            (0x4C, 0x4D), // IORT
            (0x4E, 0x03), // XBCS
            (0x60, PIRQ_ROUTE_DISABLE),
            (0x61, PIRQ_ROUTE_DISABLE),
            (0x62, PIRQ_ROUTE_DISABLE),
            (0x63, PIRQ_ROUTE_DISABLE),
            (TOM, 0x02),
            (0x70, 0x80), // MBIRQ0
            (0x76, 0x0C), // MBDMA0
            (0x77, 0x0C), // MBDMA1
            (0x78, 0x02), // PCSC
            (0xA0, 0x08), // SMICNTL
            (0xA8, 0x0F), // FTMR
        ] {
            config.set_u8(reg, value);
        }
        config.capture_power_on();
        let piix3 = Piix3 { config, router };
        piix3.sync_routes();
        piix3
    }

    pub fn router(&self) -> &Arc<PirqRouter> {
        &self.router
    }

    /// The raw route register of PIRQ `pirq` (0-3).
    pub fn route_register(&self, pirq: u8) -> u8 {
        self.config.get_u8(PIRQ_ROUTE + usize::from(pirq & 3))
    }

    fn sync_routes(&self) {
        for pirq in 0..NUM_PIRQS as u8 {
            self.router
                .set_route_register(pirq, self.route_register(pirq));
        }
    }
}

impl PciFunction for Piix3 {
    fn name(&self) -> &str {
        "piix3"
    }

    fn config(&self) -> &ConfigSpace {
        &self.config
    }

    fn config_mut(&mut self) -> &mut ConfigSpace {
        &mut self.config
    }

    fn write_config(&mut self, reg: usize, data: &[u8]) {
        self.config.write(reg, data);
        if reg < PIRQ_ROUTE + NUM_PIRQS && PIRQ_ROUTE < reg.saturating_add(data.len()) {
            self.sync_routes();
        }
    }

    fn reset(&mut self) {
        self.config.reset();
        self.sync_routes();
    }

    fn config_restored(&mut self) {
        self.sync_routes();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::irq::LatchedLine;

    fn lines() -> (Vec<Arc<LatchedLine>>, Vec<Arc<dyn IrqLine>>) {
        let latched: Vec<Arc<LatchedLine>> =
            (0..16).map(|_| Arc::new(LatchedLine::new())).collect();
        let dyns = latched
            .iter()
            .map(|l| l.clone() as Arc<dyn IrqLine>)
            .collect();
        (latched, dyns)
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u8, Option<u8>)>>);

    impl PirqRouteListener for Recorder {
        fn pirq_route_changed(&self, pirq: u8, irq: Option<u8>) {
            self.0.lock().unwrap().push((pirq, irq));
        }
    }

    impl Recorder {
        fn take(&self) -> Vec<(u8, Option<u8>)> {
            std::mem::take(&mut *self.0.lock().unwrap())
        }
    }

    #[test]
    fn route_decoding_follows_the_datasheet() {
        assert_eq!(decode_route(0x80), None);
        assert_eq!(decode_route(0x8B), None, "bit 7 disables");
        assert_eq!(decode_route(0x0B), Some(11));
        assert_eq!(decode_route(0x03), Some(3));
        for reserved in [0, 1, 2, 8, 13] {
            assert_eq!(decode_route(reserved), None, "IRQ {reserved} is reserved");
        }
    }

    #[test]
    fn wrong_line_count_is_an_error() {
        let (_, mut dyns) = lines();
        dyns.pop();
        assert_eq!(
            PirqRouter::new(dyns).err(),
            Some(PciError::IsaLineCount(15))
        );
    }

    #[test]
    fn pirq_level_reaches_the_routed_isa_line() {
        let (isa, dyns) = lines();
        let r = PirqRouter::new(dyns).unwrap();
        r.set_pirq_level(0, true);
        assert!(
            isa.iter().all(|l| !l.level()),
            "unrouted PIRQ drives nothing"
        );
        r.set_route_register(0, 0x0A);
        assert!(isa[10].level(), "routing an asserted PIRQ raises the line");
        r.set_route_register(0, 0x0B);
        assert!(
            !isa[10].level() && isa[11].level(),
            "the level follows the route"
        );
        r.set_route_register(0, 0x8B);
        assert!(!isa[11].level(), "bit 7 disables the route");
        r.set_route_register(0, 0x0D);
        assert!(
            isa.iter().all(|l| !l.level()),
            "reserved IRQ 13 is not driven"
        );
        r.set_route_register(0, 0x05);
        r.set_pirq_level(0, false);
        assert!(!isa[5].level());
        assert_eq!(isa[5].take_rising_edges(), 1);
        r.set_pirq_level(9, true);
        r.set_route_register(9, 0x05);
    }

    #[test]
    fn isa_line_is_the_or_of_its_pirqs() {
        let (isa, dyns) = lines();
        let r = PirqRouter::new(dyns).unwrap();
        r.set_route_register(0, 11);
        r.set_route_register(2, 11);
        r.set_pirq_level(0, true);
        r.set_pirq_level(2, true);
        assert!(isa[11].level());
        r.set_pirq_level(0, false);
        assert!(isa[11].level(), "PIRQC still holds IRQ 11");
        r.set_pirq_level(2, false);
        assert!(!isa[11].level());
        assert_eq!(isa[11].take_rising_edges(), 1, "no glitch while shared");
    }

    #[test]
    fn listener_hears_route_changes_only() {
        let r = PirqRouter::unconnected();
        let rec = Arc::new(Recorder::default());
        r.set_listener(rec.clone());
        assert_eq!(rec.take(), vec![(0, None), (1, None), (2, None), (3, None)]);
        r.set_route_register(1, 0x0A);
        r.set_route_register(1, 0x0A);
        r.set_route_register(2, 0x80);
        r.set_route_register(1, 0x02);
        assert_eq!(rec.take(), vec![(1, Some(10)), (1, None)]);
    }

    #[test]
    fn piix3_defaults() {
        let p = Piix3::new(PirqRouter::unconnected());
        let c = p.config();
        assert_eq!(c.vendor_id(), 0x8086);
        assert_eq!(c.device_id(), 0x7000);
        assert_eq!(c.get_u32(0x08) >> 8, 0x06_01_00);
        assert_eq!(c.get_u8(0x0E), 0x80);
        assert_eq!(c.get_u32(0x60), 0x8080_8080);
        assert_eq!(c.get_u8(TOM), 0x02);
        assert_eq!(c.command(), 0x0007);
    }

    #[test]
    fn route_register_writes_reach_the_router() {
        let (isa, dyns) = lines();
        let router = PirqRouter::new(dyns).unwrap();
        let rec = Arc::new(Recorder::default());
        router.set_listener(rec.clone());
        rec.take();
        let mut p = Piix3::new(router.clone());
        p.write_config(0x60, &0x0B0A_8005u32.to_le_bytes());
        assert_eq!(router.route(0), Some(5));
        assert_eq!(router.route(1), None);
        assert_eq!(router.route(2), Some(10));
        assert_eq!(router.route(3), Some(11));
        assert_eq!(rec.take(), vec![(0, Some(5)), (2, Some(10)), (3, Some(11))]);
        // Reserved bits read as zero; an unaligned word write reaches PIRQD alone.
        p.write_config(0x63, &[0xFF, 0x12]);
        assert_eq!(p.route_register(3), 0x8F);
        assert_eq!(p.config().get_u8(0x64), 0x12);
        assert_eq!(router.route(3), None);
        router.set_pirq_level(2, true);
        assert!(isa[10].level());
        p.write_config(TOM, &[0x40]);
        p.reset();
        assert_eq!(router.route(2), None);
        assert!(!isa[10].level());
        assert_eq!(
            p.config().get_u8(TOM),
            0x02,
            "reset restores the power-on values"
        );
        assert_eq!(p.config().get_u8(0x0E), 0x80);
        // TOM and the other registers are stored.
        p.write_config(TOM, &[0xF2]);
        assert_eq!(p.config().get_u8(TOM), 0xF2);
    }
}
