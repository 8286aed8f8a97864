//! The PC's pair of 8259A programmable interrupt controllers, with the PIIX3's ELCR.
//!
//! The master takes ISA IRQ 0-7 and delivers vectors to the CPU; the slave takes IRQ 8-15 and
//! its INT output drives the master's IR2. The ELCR (edge/level control register) belongs to
//! the PIIX3, but it only changes how the PIC's inputs latch, so it lives here.
//!
//! # Registration
//!
//! One [`PicPair`] is registered on the port bus at three ranges of two bytes each, and tells
//! them apart by [`BusAddress::base`]; a board must use exactly these bases (or call
//! [`PicPair::register`]):
//!
//! | base | what | offset 0 | offset 1 |
//! |---|---|---|---|
//! | [`PIC_MASTER_BASE`] `0x20` | master | ICW1, OCW2, OCW3 / IRR, ISR, poll | ICW2-4, OCW1 / IMR, poll |
//! | [`PIC_SLAVE_BASE`] `0xA0` | slave | as the master | as the master |
//! | [`ELCR_BASE`] `0x4D0` | ELCR | IRQ 0-7 (mask `0xF8`) | IRQ 8-15 (mask `0xDE`) |
//!
//! All registers are bytes; the bus splits wider accesses.
//!
//! # CPU side
//!
//! The CPU never sees a device. The board asks [`PicPair::interrupt_pending`] (the INTR pin)
//! at instruction boundaries and runs [`PicPair::acknowledge`] (the INTA cycle) to get the
//! vector. A board whose CPU halts can also give the pair an output line
//! ([`PicPair::set_intr_output`]) that follows INTR, to wake the CPU.
//!
//! # Choices where the hardware leaves room
//!
//! - **Edge latching.** On the real chip an edge-triggered request must stay high until the
//!   first INTA. Emulated devices signal edges with an instantaneous [`IrqLine::pulse`], so an
//!   edge here is latched in IRR until it is acknowledged (or ICW1 resets the chip), as QEMU
//!   does (Bochs drops it when the line falls, which loses such pulses). A line held high does not re-trigger: a new request needs a new rising
//!   edge. A request can still vanish before INTA (a level-triggered line drops, the IMR masks
//!   it); INTA then gets the spurious vector (IR7), without setting the ISR bit.
//! - **Cascade.** The PIIX3 hardwires the slave to the master's IR2 and documents the values
//!   software must program in ICW3 (master `0x04`, slave ID 2), SNGL (0) and µPM (1). Like
//!   QEMU, the pair always cascades through IR2 and always forms 8086 vectors; the other
//!   values are stored (and snapshotted) and logged at debug level. The slave's INT output
//!   drops during the INTA cycle that acknowledges it and is re-evaluated afterwards (as
//!   Bochs models it; Xen's vPIC gets there by making IR2 follow the slave's INT), so a slave that still requests after INTA (AEOI, special mask mode)
//!   gives the master a fresh edge on IR2 instead of being lost.
//! - **The cascade input latches like any edge input** (the ELCR cannot make IR2 level), as
//!   in QEMU. So when the slave's request vanishes after the master latched its INT (a level
//!   line falls, the slave's IMR masks it), the master still takes IR2: INTA gets the slave's
//!   IR7 (IRQ 15), the master's ISR bit 2 is set and the slave's ISR is not touched. That is
//!   what a spurious IRQ 15 looks like on real hardware too (the master does not know the
//!   request vanished; Linux and the OSDev notes EOI the master for it). The real chip would
//!   only get there if the request vanished during the INTA cycle itself, and Xen's vPIC
//!   instead makes IR2 follow the slave's INT like a level input, so neither gives this
//!   spurious interrupt after, say, a driver EOIs with its level line still high and then
//!   quiets the device before INTA; QEMU, and this model, do.
//! - **Special mask mode.** The datasheet says it "enables interrupts from all other levels
//!   (lower as well as higher) that are not masked": in-service bits block nothing, only the
//!   IMR does, and a level in service is not requested again (Bochs reads it this way; QEMU
//!   and Xen's vPIC let unmasked in-service bits keep blocking lower levels, which only
//!   differs when software leaves its own level unmasked).
//! - **Special fully nested mode** (ICW4 SFNM on the master): a request on IR2 is accepted
//!   while IR2 is in service, so a higher-priority slave IRQ can nest inside a slave handler;
//!   other levels keep fully nested priority (as Xen's vPIC does; QEMU ignores ISR bit 2 for
//!   every level).
//! - **ICW1** clears IMR, ISR, the rotation, special mask mode, poll and read-select, AEOI and
//!   the other ICW4 functions, sets the slave ID to 7, and resets edge sensing: latched edge
//!   requests are dropped and a line that is high needs a new rising edge. Level-triggered
//!   requests stay while their lines stay high. The datasheet does not list the ISR; QEMU and
//!   Bochs clear it, and software re-initialising the chip expects nothing in service.
//! - **LTIM** (ICW1 bit 3) makes all of that chip's inputs level-triggered, as the 8259A
//!   datasheet and QEMU say. (The PIIX3 documents the bit as ignored in favour of the ELCR;
//!   PC software leaves it clear, so following the 8259A costs nothing.)
//! - **ISA IRQ 2** is the cascade input; [`PicPair::set_irq`] ignores it (an AT's ISA IRQ 2
//!   pin is wired to IRQ 9, which is the board's wiring to do).

use std::sync::{Arc, Mutex};

use log::debug;

use crate::bus::{AccessSizes, Bus, BusAddress, BusDevice, BusError, SharedDevice};
use crate::irq::IrqLine;
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

/// The master's command/data ports, 0x20-0x21.
pub const PIC_MASTER_BASE: u64 = 0x20;
/// The slave's command/data ports, 0xA0-0xA1.
pub const PIC_SLAVE_BASE: u64 = 0xA0;
/// The ELCR: 0x4D0 for IRQ 0-7, 0x4D1 for IRQ 8-15.
pub const ELCR_BASE: u64 = 0x4D0;
/// Every one of the three ranges is two ports long.
pub const RANGE_LEN: u64 = 2;

/// ELCR bits that may be set: IRQ 0 (PIT), 1 (keyboard) and 2 (cascade) are always edge.
const MASTER_ELCR_MASK: u8 = 0xF8;
/// IRQ 8 (RTC) and 13 (FPU error) are always edge.
const SLAVE_ELCR_MASK: u8 = 0xDE;

/// The master input the slave's INT output drives.
const CASCADE_IR: u8 = 2;

const ICW1_IC4: u8 = 0x01;
const ICW1_SNGL: u8 = 0x02;
const ICW1_LTIM: u8 = 0x08;
const ICW1_INIT: u8 = 0x10;

const ICW4_UPM: u8 = 0x01;
const ICW4_AEOI: u8 = 0x02;
const ICW4_SFNM: u8 = 0x10;

const OCW3_SELECT: u8 = 0x08;
const OCW3_READ_ISR: u8 = 0x01;
const OCW3_READ_REG: u8 = 0x02;
const OCW3_POLL: u8 = 0x04;
const OCW3_SMM: u8 = 0x20;
const OCW3_ESMM: u8 = 0x40;

/// Where the chip is in its initialisation sequence: which word a data-port write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum InitStep {
    /// Initialised: data-port writes are OCW1.
    Ready = 0,
    Icw2 = 1,
    Icw3 = 2,
    Icw4 = 3,
}

impl InitStep {
    fn from_u8(v: u8) -> Option<InitStep> {
        match v {
            0 => Some(InitStep::Ready),
            1 => Some(InitStep::Icw2),
            2 => Some(InitStep::Icw3),
            3 => Some(InitStep::Icw4),
            _ => None,
        }
    }
}

/// One 8259A.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Chip {
    master: bool,
    init: InitStep,
    /// The ICW1 last written (IC4, SNGL, ADI, LTIM, and the MCS-80 address bits).
    icw1: u8,
    /// ICW2: bits 7-3 are the vector base in 8086 mode.
    icw2: u8,
    /// ICW3: the master's slave mask, or the slave's ID in bits 2-0.
    icw3: u8,
    /// ICW4 (zero when ICW1 said it would not be sent).
    icw4: u8,
    irr: u8,
    isr: u8,
    imr: u8,
    /// The levels of the IR input pins (for the master's IR2, the slave's INT output as last
    /// seen): edge detection compares against them.
    lines: u8,
    elcr: u8,
    /// The IR with the highest priority; rotation moves it.
    priority_base: u8,
    read_isr: bool,
    poll: bool,
    special_mask: bool,
    rotate_in_aeoi: bool,
}

impl Chip {
    fn new(master: bool) -> Chip {
        Chip {
            master,
            init: InitStep::Ready,
            icw1: 0,
            icw2: 0,
            icw3: 0,
            icw4: 0,
            irr: 0,
            isr: 0,
            imr: 0,
            lines: 0,
            elcr: 0,
            priority_base: 0,
            read_isr: false,
            poll: false,
            special_mask: false,
            rotate_in_aeoi: false,
        }
    }

    fn name(&self) -> &'static str {
        if self.master { "master" } else { "slave" }
    }

    fn elcr_mask(&self) -> u8 {
        if self.master {
            MASTER_ELCR_MASK
        } else {
            SLAVE_ELCR_MASK
        }
    }

    /// Inputs that are level-triggered: all of them under LTIM, else those the ELCR selects.
    fn level_mask(&self) -> u8 {
        if self.icw1 & ICW1_LTIM != 0 {
            0xFF
        } else {
            self.elcr
        }
    }

    fn vector_base(&self) -> u8 {
        self.icw2 & 0xF8
    }

    fn aeoi(&self) -> bool {
        self.icw4 & ICW4_AEOI != 0
    }

    fn sfnm(&self) -> bool {
        self.icw4 & ICW4_SFNM != 0
    }

    /// 0 is the highest priority, 7 the lowest.
    fn priority(&self, ir: u8) -> u8 {
        ir.wrapping_sub(self.priority_base) & 7
    }

    /// The IR in `mask` with the highest priority.
    fn highest(&self, mask: u8) -> Option<u8> {
        (0..8u8)
            .map(|p| (p + self.priority_base) & 7)
            .find(|&ir| mask & (1 << ir) != 0)
    }

    /// In-service bits that hold back other requests: in special fully nested mode the
    /// master's IR2 does not hold back further requests from the slave.
    fn blocking_isr(&self, candidate: u8) -> u8 {
        if self.master && self.sfnm() && candidate == CASCADE_IR {
            self.isr & !(1 << CASCADE_IR)
        } else {
            self.isr
        }
    }

    /// The IR this chip would interrupt the CPU for now (its INT output), if any.
    fn resolve(&self) -> Option<u8> {
        let requests = self.irr & !self.imr;
        if self.special_mask {
            // Only the mask holds a level back; a level in service cannot re-request.
            let eligible = (0..8u8)
                .filter(|&ir| requests & (1 << ir) != 0)
                .filter(|&ir| self.blocking_isr(ir) & (1 << ir) == 0)
                .fold(0u8, |m, ir| m | (1 << ir));
            return self.highest(eligible);
        }
        let candidate = self.highest(requests)?;
        match self.highest(self.blocking_isr(candidate)) {
            Some(current) if self.priority(current) <= self.priority(candidate) => None,
            _ => Some(candidate),
        }
    }

    /// The chip's side of an acknowledge (INTA or a poll read) of `ir`.
    fn acknowledge(&mut self, ir: u8) {
        let bit = 1 << ir;
        if self.aeoi() {
            if self.rotate_in_aeoi {
                self.priority_base = (ir + 1) & 7;
            }
        } else {
            self.isr |= bit;
        }
        // A level-triggered request stays in IRR for as long as its line is high.
        if self.level_mask() & bit == 0 {
            self.irr &= !bit;
        }
    }

    /// Drive input `ir` (0-7) to `level`.
    fn set_line(&mut self, ir: u8, level: bool) {
        let bit = 1 << (ir & 7);
        let was = self.lines & bit != 0;
        if level {
            self.lines |= bit;
        } else {
            self.lines &= !bit;
        }
        if self.level_mask() & bit != 0 {
            if level {
                self.irr |= bit;
            } else {
                self.irr &= !bit;
            }
        } else if level && !was {
            self.irr |= bit;
        }
    }

    /// ICW1: start the initialisation sequence and reset what the datasheet says it resets.
    fn write_icw1(&mut self, value: u8) {
        self.icw1 = value;
        self.icw3 = 7;
        self.icw4 = 0;
        self.imr = 0;
        self.isr = 0;
        // Edge sensing restarts: latched edges are gone, and a line that is already high
        // must fall and rise again. Level requests follow their lines.
        self.irr = self.lines & self.level_mask();
        self.priority_base = 0;
        self.read_isr = false;
        self.poll = false;
        self.special_mask = false;
        self.rotate_in_aeoi = false;
        self.init = InitStep::Icw2;
        if value & ICW1_SNGL != 0 {
            debug!(
                "pic {}: ICW1 {value:#04x} asks for single mode; the PC's pair stays cascaded",
                self.name()
            );
        }
    }

    fn write_data(&mut self, value: u8) {
        match self.init {
            InitStep::Ready => self.imr = value,
            InitStep::Icw2 => {
                self.icw2 = value;
                self.init = if self.icw1 & ICW1_SNGL == 0 {
                    InitStep::Icw3
                } else if self.icw1 & ICW1_IC4 != 0 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw3 => {
                self.icw3 = value;
                let wired = if self.master {
                    1 << CASCADE_IR
                } else {
                    CASCADE_IR
                };
                if (self.master && value != wired) || (!self.master && value & 7 != wired) {
                    debug!(
                        "pic {}: ICW3 {value:#04x} differs from the PC's wiring ({wired:#04x}); \
                         the cascade stays on IR2",
                        self.name()
                    );
                }
                self.init = if self.icw1 & ICW1_IC4 != 0 {
                    InitStep::Icw4
                } else {
                    InitStep::Ready
                };
            }
            InitStep::Icw4 => {
                self.icw4 = value;
                if value & ICW4_UPM == 0 {
                    debug!(
                        "pic {}: ICW4 {value:#04x} selects MCS-80/85 mode; vectors stay 8086-style",
                        self.name()
                    );
                }
                self.init = InitStep::Ready;
            }
        }
    }

    fn write_ocw2(&mut self, value: u8) {
        let level = value & 7;
        match value >> 5 {
            // Rotate in automatic EOI mode: clear (000) or set (100).
            0b000 => self.rotate_in_aeoi = false,
            0b100 => self.rotate_in_aeoi = true,
            // Non-specific EOI (001), with rotation (101): the highest level in service.
            cmd @ (0b001 | 0b101) => {
                if let Some(ir) = self.highest(self.isr) {
                    self.isr &= !(1 << ir);
                    if cmd == 0b101 {
                        self.priority_base = (ir + 1) & 7;
                    }
                }
            }
            // Specific EOI.
            0b011 => self.isr &= !(1 << level),
            // Set priority: `level` becomes the lowest.
            0b110 => self.priority_base = (level + 1) & 7,
            // Rotate on specific EOI.
            0b111 => {
                self.isr &= !(1 << level);
                self.priority_base = (level + 1) & 7;
            }
            // 010: no operation.
            _ => {}
        }
    }

    fn write_ocw3(&mut self, value: u8) {
        if value & OCW3_POLL != 0 {
            self.poll = true;
        }
        if value & OCW3_READ_REG != 0 {
            self.read_isr = value & OCW3_READ_ISR != 0;
        }
        if value & OCW3_ESMM != 0 {
            self.special_mask = value & OCW3_SMM != 0;
        }
    }

    fn write_command(&mut self, value: u8) {
        if value & ICW1_INIT != 0 {
            self.write_icw1(value);
        } else if value & OCW3_SELECT != 0 {
            self.write_ocw3(value);
        } else {
            self.write_ocw2(value);
        }
    }

    fn save(&self, w: &mut StateWriter) {
        w.u8(self.init as u8);
        w.u8(self.icw1);
        w.u8(self.icw2);
        w.u8(self.icw3);
        w.u8(self.icw4);
        w.u8(self.irr);
        w.u8(self.isr);
        w.u8(self.imr);
        w.u8(self.lines);
        w.u8(self.elcr);
        w.u8(self.priority_base);
        w.bool(self.read_isr);
        w.bool(self.poll);
        w.bool(self.special_mask);
        w.bool(self.rotate_in_aeoi);
    }

    fn load(master: bool, r: &mut StateReader<'_>) -> Result<Chip, SnapshotError> {
        let init = InitStep::from_u8(r.u8_below(4)?)
            .ok_or_else(|| SnapshotError::Invalid("bad init step".into()))?;
        let mut chip = Chip::new(master);
        chip.init = init;
        chip.icw1 = r.u8()?;
        chip.icw2 = r.u8()?;
        chip.icw3 = r.u8()?;
        chip.icw4 = r.u8()?;
        chip.irr = r.u8()?;
        chip.isr = r.u8()?;
        chip.imr = r.u8()?;
        chip.lines = r.u8()?;
        chip.elcr = r.u8()?;
        chip.priority_base = r.u8_below(8)?;
        chip.read_isr = r.bool()?;
        chip.poll = r.bool()?;
        chip.special_mask = r.bool()?;
        chip.rotate_in_aeoi = r.bool()?;
        if chip.elcr & !chip.elcr_mask() != 0 {
            return Err(SnapshotError::Invalid(format!(
                "{} ELCR {:#04x} sets bits outside {:#04x}",
                chip.name(),
                chip.elcr,
                chip.elcr_mask()
            )));
        }
        let level = chip.level_mask();
        if chip.irr & level != chip.lines & level {
            return Err(SnapshotError::Invalid(format!(
                "{} level-triggered IRR {:#04x} disagrees with the lines {:#04x}",
                chip.name(),
                chip.irr & level,
                chip.lines & level
            )));
        }
        Ok(chip)
    }
}

/// The master and slave 8259A and the ELCR. See the module documentation for the ports.
pub struct PicPair {
    master: Chip,
    slave: Chip,
    /// Follows INTR, so a board can wake a halted CPU. Called with the pair locked: it must
    /// not call back into the pair.
    intr_output: Option<Arc<dyn IrqLine>>,
    /// The level last driven on `intr_output`.
    intr_driven: bool,
}

impl Default for PicPair {
    fn default() -> Self {
        PicPair::new()
    }
}

impl PicPair {
    /// Both chips as at power-on: every input edge-triggered, nothing masked, pending or in
    /// service, vector base 0 until the firmware initialises them.
    pub fn new() -> PicPair {
        PicPair {
            master: Chip::new(true),
            slave: Chip::new(false),
            intr_output: None,
            intr_driven: false,
        }
    }

    /// A pair ready to share between the buses, the board and the interrupt inputs.
    pub fn new_shared() -> Arc<Mutex<PicPair>> {
        Arc::new(Mutex::new(PicPair::new()))
    }

    /// Register `pic` on the port bus at its three ranges (0x20, 0xA0, 0x4D0).
    pub fn register(pic: &Arc<Mutex<PicPair>>, bus: &Bus) -> Result<(), BusError> {
        let device: SharedDevice = pic.clone();
        bus.insert("pic-master", PIC_MASTER_BASE, RANGE_LEN, device.clone())?;
        bus.insert("pic-slave", PIC_SLAVE_BASE, RANGE_LEN, device.clone())?;
        bus.insert("elcr", ELCR_BASE, RANGE_LEN, device)
    }

    /// The interrupt line for ISA IRQ `irq` (0-15), to hand to a device.
    pub fn input(pic: &Arc<Mutex<PicPair>>, irq: u8) -> Arc<dyn IrqLine> {
        Arc::new(PicInput {
            pic: pic.clone(),
            irq,
        })
    }

    /// Drive `line` with the INTR level from now on (and at once with the current level).
    /// The line is called while the pair is locked, so it must not lock the pair.
    pub fn set_intr_output(&mut self, line: Arc<dyn IrqLine>) {
        let level = self.interrupt_pending();
        line.set_level(level);
        self.intr_driven = level;
        self.intr_output = Some(line);
    }

    /// Machine reset: both chips to their power-on state, the ELCR to all-edge. The input
    /// lines keep their levels (the devices driving them are reset separately).
    pub fn reset(&mut self) {
        let (master_lines, slave_lines) = (self.master.lines, self.slave.lines);
        self.master = Chip::new(true);
        self.slave = Chip::new(false);
        self.master.lines = master_lines;
        self.slave.lines = slave_lines;
        self.update(false);
    }

    /// The INTR pin: whether the master asks the CPU for an interrupt.
    pub fn interrupt_pending(&self) -> bool {
        self.master.resolve().is_some()
    }

    /// The INTA cycle: the vector for the CPU, with both chips' IRR and ISR updated. When the
    /// request vanished since INTR rose, the vector is the spurious IR7 of the master, or of
    /// the slave when the master had already taken it through IR2.
    pub fn acknowledge(&mut self) -> u8 {
        let mut slave_acknowledged = false;
        let vector = match self.master.resolve() {
            None => {
                debug!("pic: spurious interrupt on the master (IRQ 7)");
                self.master.vector_base() | 7
            }
            Some(CASCADE_IR) => {
                let vector = match self.slave.resolve() {
                    Some(ir) => {
                        self.slave.acknowledge(ir);
                        slave_acknowledged = true;
                        self.slave.vector_base() | ir
                    }
                    None => {
                        debug!("pic: spurious interrupt on the slave (IRQ 15)");
                        self.slave.vector_base() | 7
                    }
                };
                self.master.acknowledge(CASCADE_IR);
                vector
            }
            Some(ir) => {
                self.master.acknowledge(ir);
                self.master.vector_base() | ir
            }
        };
        self.update(slave_acknowledged);
        vector
    }

    /// Drive ISA IRQ `irq` (0-15). IRQ 2 is the cascade and others do not exist: both are
    /// ignored.
    pub fn set_irq(&mut self, irq: u8, level: bool) {
        match irq {
            CASCADE_IR => {
                debug!("pic: IRQ 2 is the cascade input; level {level} ignored");
                return;
            }
            0..8 => self.master.set_line(irq, level),
            8..16 => self.slave.set_line(irq - 8, level),
            _ => {
                debug!("pic: no IRQ {irq}; level {level} ignored");
                return;
            }
        }
        self.update(false);
    }

    /// The ELCR: bit n set makes IRQ n level-triggered.
    pub fn elcr(&self) -> u16 {
        u16::from(self.master.elcr) | (u16::from(self.slave.elcr) << 8)
    }

    /// Feed the slave's INT output to the master's IR2, then drive INTR if it changed.
    /// `slave_acknowledged` says the slave just went through INTA (or a poll read), during
    /// which its INT output drops, so a request it still has is a new edge on IR2.
    fn update(&mut self, slave_acknowledged: bool) {
        if slave_acknowledged {
            self.master.lines &= !(1 << CASCADE_IR);
        }
        let slave_int = self.slave.resolve().is_some();
        self.master.set_line(CASCADE_IR, slave_int);
        let level = self.interrupt_pending();
        if level != self.intr_driven {
            self.intr_driven = level;
            if let Some(line) = &self.intr_output {
                line.set_level(level);
            }
        }
    }

    fn chip_mut(&mut self, base: u64) -> Option<&mut Chip> {
        match base {
            PIC_MASTER_BASE => Some(&mut self.master),
            PIC_SLAVE_BASE => Some(&mut self.slave),
            _ => None,
        }
    }

    fn read_byte(&mut self, base: u64, offset: u64) -> u8 {
        if base == ELCR_BASE {
            return match offset {
                0 => self.master.elcr,
                1 => self.slave.elcr,
                _ => 0xFF,
            };
        }
        let is_slave = base == PIC_SLAVE_BASE;
        let Some(chip) = self.chip_mut(base) else {
            debug!("pic: read at unknown base {base:#x}+{offset:#x}");
            return 0xFF;
        };
        if chip.poll {
            // The poll word: this read is the chip's interrupt acknowledge.
            chip.poll = false;
            let word = match chip.resolve() {
                Some(ir) => {
                    chip.acknowledge(ir);
                    0x80 | ir
                }
                None => 0,
            };
            self.update(is_slave);
            return word;
        }
        match offset {
            0 if chip.read_isr => chip.isr,
            0 => chip.irr,
            1 => chip.imr,
            _ => 0xFF,
        }
    }

    fn write_byte(&mut self, base: u64, offset: u64, value: u8) {
        if base == ELCR_BASE {
            let chip = match offset {
                0 => &mut self.master,
                1 => &mut self.slave,
                _ => return,
            };
            let elcr = value & chip.elcr_mask();
            if elcr != value {
                debug!(
                    "pic: ELCR {offset} write {value:#04x}: bits {:#04x} are always edge",
                    value & !elcr
                );
            }
            chip.elcr = elcr;
            // Inputs that are now level-triggered request for as long as their line is high;
            // those now edge-triggered keep a pending request until it is acknowledged.
            let level = chip.level_mask();
            chip.irr = (chip.irr & !level) | (chip.lines & level);
            self.update(false);
            return;
        }
        let Some(chip) = self.chip_mut(base) else {
            debug!("pic: write {value:#04x} at unknown base {base:#x}+{offset:#x}");
            return;
        };
        match offset {
            0 => chip.write_command(value),
            1 => chip.write_data(value),
            _ => return,
        }
        self.update(false);
    }
}

impl BusDevice for PicPair {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.read_byte(at.base, at.offset.wrapping_add(i as u64));
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            self.write_byte(at.base, at.offset.wrapping_add(i as u64), byte);
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::BYTE
    }
}

impl Snapshot for PicPair {
    fn snapshot_id(&self) -> &'static str {
        "pic8259-pair"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        self.master.save(w);
        self.slave.save(w);
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let master = Chip::load(true, r)?;
        let slave = Chip::load(false, r)?;
        self.master = master;
        self.slave = slave;
        // The output line is the board's: drive it to match the restored state.
        let level = self.interrupt_pending();
        self.intr_driven = level;
        if let Some(line) = &self.intr_output {
            line.set_level(level);
        }
        Ok(())
    }
}

/// ISA IRQ `irq` of a shared [`PicPair`], as a device sees it. Made by [`PicPair::input`].
pub struct PicInput {
    pic: Arc<Mutex<PicPair>>,
    irq: u8,
}

impl PicInput {
    pub fn new(pic: Arc<Mutex<PicPair>>, irq: u8) -> PicInput {
        PicInput { pic, irq }
    }
}

impl IrqLine for PicInput {
    fn set_level(&self, asserted: bool) {
        self.pic
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .set_irq(self.irq, asserted);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusKind;
    use crate::irq::LatchedLine;
    use crate::snapshot::{self, check_round_trip};

    fn split(port: u16) -> BusAddress {
        let port = u64::from(port);
        let base = match port {
            0x20 | 0x21 => PIC_MASTER_BASE,
            0xA0 | 0xA1 => PIC_SLAVE_BASE,
            0x4D0 | 0x4D1 => ELCR_BASE,
            _ => panic!("not a PIC port: {port:#x}"),
        };
        BusAddress {
            base,
            offset: port - base,
        }
    }

    fn outb(p: &mut PicPair, port: u16, value: u8) {
        p.write(split(port), &[value]);
    }

    fn inb(p: &mut PicPair, port: u16) -> u8 {
        let mut b = [0xFF];
        p.read(split(port), &mut b);
        b[0]
    }

    /// What Linux's init_8259A writes (with the vector bases of older kernels).
    fn linux_init(p: &mut PicPair) {
        outb(p, 0x21, 0xFF);
        outb(p, 0xA1, 0xFF);
        outb(p, 0x20, 0x11);
        outb(p, 0x21, 0x20);
        outb(p, 0x21, 0x04);
        outb(p, 0x21, 0x01);
        outb(p, 0xA0, 0x11);
        outb(p, 0xA1, 0x28);
        outb(p, 0xA1, 0x02);
        outb(p, 0xA1, 0x01);
        outb(p, 0x21, 0x00);
        outb(p, 0xA1, 0x00);
    }

    fn initialised() -> PicPair {
        let mut p = PicPair::new();
        linux_init(&mut p);
        p
    }

    fn isr(p: &mut PicPair, cmd: u16) -> u8 {
        outb(p, cmd, 0x0B);
        let v = inb(p, cmd);
        outb(p, cmd, 0x0A);
        v
    }

    fn irr(p: &mut PicPair, cmd: u16) -> u8 {
        outb(p, cmd, 0x0A);
        inb(p, cmd)
    }

    fn pulse(p: &mut PicPair, irq: u8) {
        p.set_irq(irq, true);
        p.set_irq(irq, false);
    }

    /// Acknowledge if INTR is up, as a CPU would.
    fn take(p: &mut PicPair) -> Option<u8> {
        p.interrupt_pending().then(|| p.acknowledge())
    }

    #[test]
    fn linux_init_sequence_sets_vectors_and_leaves_data_port_as_imr() {
        let mut p = PicPair::new();
        linux_init(&mut p);
        assert_eq!(p.master.init, InitStep::Ready);
        assert_eq!(p.slave.init, InitStep::Ready);
        assert_eq!(p.master.icw3, 0x04);
        assert_eq!(p.slave.icw3, 0x02);
        assert_eq!(p.master.icw4, 0x01);
        outb(&mut p, 0x21, 0xFB);
        outb(&mut p, 0xA1, 0x5A);
        assert_eq!(inb(&mut p, 0x21), 0xFB);
        assert_eq!(inb(&mut p, 0xA1), 0x5A);
        outb(&mut p, 0x21, 0x00);
        outb(&mut p, 0xA1, 0x00);
        pulse(&mut p, 0);
        assert_eq!(take(&mut p), Some(0x20));
        outb(&mut p, 0x20, 0x20);
        pulse(&mut p, 14);
        assert_eq!(take(&mut p), Some(0x2E));
        assert_eq!(isr(&mut p, 0xA0), 0x40);
        assert_eq!(isr(&mut p, 0x20), 0x04);
        outb(&mut p, 0xA0, 0x20);
        outb(&mut p, 0x20, 0x20);
        assert_eq!(isr(&mut p, 0xA0), 0);
        assert_eq!(isr(&mut p, 0x20), 0);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn seabios_interleaved_init_sequence() {
        let mut p = PicPair::new();
        outb(&mut p, 0x20, 0x11);
        outb(&mut p, 0xA0, 0x11);
        outb(&mut p, 0x21, 0x08);
        outb(&mut p, 0xA1, 0x70);
        outb(&mut p, 0x21, 0x04);
        outb(&mut p, 0xA1, 0x02);
        outb(&mut p, 0x21, 0x01);
        outb(&mut p, 0xA1, 0x01);
        outb(&mut p, 0x21, !0x04);
        outb(&mut p, 0xA1, 0xFF);
        assert_eq!(inb(&mut p, 0x21), 0xFB);
        assert_eq!(inb(&mut p, 0xA1), 0xFF);
        pulse(&mut p, 1);
        assert!(!p.interrupt_pending(), "IRQ 1 is masked");
        outb(&mut p, 0x21, !0x06);
        assert_eq!(take(&mut p), Some(0x09));
        outb(&mut p, 0x20, 0x20);
        outb(&mut p, 0xA1, !0x40);
        pulse(&mut p, 14);
        assert_eq!(take(&mut p), Some(0x76));
    }

    #[test]
    fn icw_sequence_follows_sngl_and_ic4() {
        let mut p = PicPair::new();
        // Single, no ICW4: ICW2 ends the sequence.
        outb(&mut p, 0x20, 0x12);
        assert_eq!(p.master.init, InitStep::Icw2);
        outb(&mut p, 0x21, 0x40);
        assert_eq!(p.master.init, InitStep::Ready);
        outb(&mut p, 0x21, 0x33);
        assert_eq!(inb(&mut p, 0x21), 0x33);
        // Single with ICW4: ICW2 then ICW4.
        outb(&mut p, 0x20, 0x13);
        outb(&mut p, 0x21, 0x40);
        assert_eq!(p.master.init, InitStep::Icw4);
        outb(&mut p, 0x21, 0x03);
        assert!(p.master.aeoi());
        // Cascade, no ICW4: ICW2, ICW3; ICW4 functions are cleared.
        outb(&mut p, 0x20, 0x10);
        assert!(!p.master.aeoi());
        outb(&mut p, 0x21, 0x48);
        assert_eq!(p.master.init, InitStep::Icw3);
        outb(&mut p, 0x21, 0x04);
        assert_eq!(p.master.init, InitStep::Ready);
        assert_eq!(p.master.vector_base(), 0x48);
        // ICW2's low three bits are not part of the vector.
        outb(&mut p, 0x20, 0x11);
        outb(&mut p, 0x21, 0x57);
        outb(&mut p, 0x21, 0x04);
        outb(&mut p, 0x21, 0x1D);
        assert_eq!(p.master.icw4, 0x1D, "SFNM, buffered and M/S are stored");
        pulse(&mut p, 3);
        assert_eq!(take(&mut p), Some(0x53));
    }

    #[test]
    fn commands_during_init_do_not_break_the_sequence() {
        let mut p = PicPair::new();
        outb(&mut p, 0x20, 0x11);
        outb(&mut p, 0x21, 0x20);
        outb(&mut p, 0x20, 0x0B); // OCW3 in the middle
        outb(&mut p, 0x21, 0x04);
        outb(&mut p, 0x21, 0x01);
        assert_eq!(p.master.init, InitStep::Ready);
        assert!(p.master.read_isr);
    }

    #[test]
    fn edge_triggered_input_latches_rising_edges_only() {
        let mut p = initialised();
        p.set_irq(4, true);
        assert_eq!(irr(&mut p, 0x20), 0x10);
        assert_eq!(take(&mut p), Some(0x24));
        assert_eq!(irr(&mut p, 0x20), 0, "INTA clears an edge request");
        outb(&mut p, 0x20, 0x20);
        // Still high: no new edge, no new request.
        p.set_irq(4, true);
        assert!(!p.interrupt_pending());
        assert_eq!(irr(&mut p, 0x20), 0);
        p.set_irq(4, false);
        p.set_irq(4, true);
        assert_eq!(take(&mut p), Some(0x24));
        outb(&mut p, 0x20, 0x20);
        // A pulse survives the line falling before INTA.
        p.set_irq(4, false);
        pulse(&mut p, 4);
        assert_eq!(irr(&mut p, 0x20), 0x10);
        assert_eq!(take(&mut p), Some(0x24));
    }

    #[test]
    fn level_triggered_input_follows_the_line_with_elcr() {
        let mut p = initialised();
        outb(&mut p, 0x4D1, 0x08); // IRQ 11 level
        assert_eq!(p.elcr(), 0x0800);
        p.set_irq(11, true);
        assert_eq!(irr(&mut p, 0xA0), 0x08);
        assert_eq!(take(&mut p), Some(0x2B));
        assert_eq!(irr(&mut p, 0xA0), 0x08, "INTA leaves a level request");
        outb(&mut p, 0xA0, 0x20);
        outb(&mut p, 0x20, 0x20);
        // Line still high: the same request again.
        assert_eq!(take(&mut p), Some(0x2B));
        // A driver quiets the device before its EOI: the line falls, nothing more comes.
        p.set_irq(11, false);
        assert_eq!(irr(&mut p, 0xA0), 0);
        outb(&mut p, 0xA0, 0x20);
        outb(&mut p, 0x20, 0x20);
        assert!(!p.interrupt_pending());
        // The same input on edge: held high delivers once.
        outb(&mut p, 0x4D1, 0x00);
        p.set_irq(11, true);
        assert_eq!(take(&mut p), Some(0x2B));
        outb(&mut p, 0xA0, 0x20);
        outb(&mut p, 0x20, 0x20);
        assert!(!p.interrupt_pending());
        // Switching to level while the line is high requests at once.
        outb(&mut p, 0x4D1, 0x08);
        assert_eq!(take(&mut p), Some(0x2B));
    }

    #[test]
    fn elcr_cannot_make_irq_0_1_2_8_13_level() {
        let mut p = initialised();
        outb(&mut p, 0x4D0, 0xFF);
        outb(&mut p, 0x4D1, 0xFF);
        assert_eq!(inb(&mut p, 0x4D0), 0xF8);
        assert_eq!(inb(&mut p, 0x4D1), 0xDE);
        assert_eq!(p.elcr(), 0xDEF8);
        // IRQ 0 stays edge: held high it delivers once.
        p.set_irq(0, true);
        assert_eq!(take(&mut p), Some(0x20));
        outb(&mut p, 0x20, 0x20);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn ltim_makes_every_input_level_triggered() {
        let mut p = PicPair::new();
        outb(&mut p, 0x20, 0x19);
        outb(&mut p, 0x21, 0x20);
        outb(&mut p, 0x21, 0x04);
        outb(&mut p, 0x21, 0x01);
        p.set_irq(0, true);
        assert_eq!(take(&mut p), Some(0x20));
        outb(&mut p, 0x20, 0x20);
        assert_eq!(take(&mut p), Some(0x20), "IRQ 0 is level under LTIM");
        outb(&mut p, 0x20, 0x20);
        p.set_irq(0, false);
        assert!(!p.interrupt_pending());
        // ELCR still reads what was written: LTIM does not change it.
        assert_eq!(inb(&mut p, 0x4D0), 0);
    }

    #[test]
    fn masked_requests_wait_in_irr() {
        let mut p = initialised();
        outb(&mut p, 0x21, 0x08);
        pulse(&mut p, 3);
        assert!(!p.interrupt_pending());
        assert_eq!(irr(&mut p, 0x20), 0x08);
        outb(&mut p, 0x21, 0x00);
        assert_eq!(take(&mut p), Some(0x23));
        // Masking the cascade hides the whole slave.
        outb(&mut p, 0x20, 0x20);
        outb(&mut p, 0x21, 0x04);
        pulse(&mut p, 9);
        assert!(!p.interrupt_pending());
        outb(&mut p, 0x21, 0x00);
        assert_eq!(take(&mut p), Some(0x29));
    }

    #[test]
    fn fixed_priority_and_nesting() {
        let mut p = initialised();
        pulse(&mut p, 5);
        pulse(&mut p, 3);
        assert_eq!(take(&mut p), Some(0x23));
        // IR5 is lower than IR3 in service: it waits.
        assert!(!p.interrupt_pending());
        pulse(&mut p, 1);
        assert_eq!(take(&mut p), Some(0x21), "IR1 nests inside IR3");
        assert_eq!(isr(&mut p, 0x20), 0x0A);
        outb(&mut p, 0x20, 0x20); // clears IR1, the highest in service
        assert_eq!(isr(&mut p, 0x20), 0x08);
        assert!(!p.interrupt_pending());
        outb(&mut p, 0x20, 0x20);
        assert_eq!(take(&mut p), Some(0x25));
    }

    #[test]
    fn slave_interrupts_rank_at_the_masters_ir2() {
        let mut p = initialised();
        pulse(&mut p, 3);
        pulse(&mut p, 12);
        assert_eq!(take(&mut p), Some(0x2C), "IRQ 12 (IR2) beats IRQ 3");
        pulse(&mut p, 1);
        assert_eq!(take(&mut p), Some(0x21), "IRQ 1 beats the slave");
        pulse(&mut p, 8);
        assert!(!p.interrupt_pending(), "the master holds IR2 in service");
        outb(&mut p, 0x20, 0x20); // EOI IRQ 1
        assert!(!p.interrupt_pending());
        outb(&mut p, 0xA0, 0x20);
        outb(&mut p, 0x20, 0x20);
        assert_eq!(take(&mut p), Some(0x28));
        outb(&mut p, 0xA0, 0x20);
        outb(&mut p, 0x20, 0x20);
        assert_eq!(take(&mut p), Some(0x23));
    }

    #[test]
    fn specific_eoi_clears_only_its_level() {
        let mut p = initialised();
        pulse(&mut p, 6);
        assert_eq!(take(&mut p), Some(0x26));
        pulse(&mut p, 4);
        assert_eq!(take(&mut p), Some(0x24));
        outb(&mut p, 0x20, 0x66);
        assert_eq!(isr(&mut p, 0x20), 0x10);
        outb(&mut p, 0x20, 0x60 | 5); // not in service: nothing happens
        assert_eq!(isr(&mut p, 0x20), 0x10);
        outb(&mut p, 0x20, 0x64);
        assert_eq!(isr(&mut p, 0x20), 0);
    }

    #[test]
    fn rotate_on_non_specific_eoi_gives_equal_priority() {
        let mut p = initialised();
        for irq in [3, 4, 5] {
            pulse(&mut p, irq);
        }
        assert_eq!(take(&mut p), Some(0x23));
        outb(&mut p, 0x20, 0xA0);
        // IR3 is now the lowest: a new IRQ 3 ranks below 4 and 5.
        pulse(&mut p, 3);
        assert_eq!(take(&mut p), Some(0x24));
        outb(&mut p, 0x20, 0xA0);
        assert_eq!(take(&mut p), Some(0x25));
        outb(&mut p, 0x20, 0xA0);
        // IR5 lowest: IR6 and IR7 are now above IR0-3.
        pulse(&mut p, 0);
        pulse(&mut p, 7);
        assert_eq!(take(&mut p), Some(0x27));
        outb(&mut p, 0x20, 0xA0);
        assert_eq!(take(&mut p), Some(0x20));
        outb(&mut p, 0x20, 0xA0);
        assert_eq!(take(&mut p), Some(0x23));
    }

    #[test]
    fn set_priority_and_rotate_on_specific_eoi() {
        let mut p = initialised();
        outb(&mut p, 0x20, 0xC0 | 4); // IR4 lowest, IR5 highest
        pulse(&mut p, 0);
        pulse(&mut p, 6);
        assert_eq!(take(&mut p), Some(0x26));
        pulse(&mut p, 5);
        assert_eq!(take(&mut p), Some(0x25), "IR5 is above IR6");
        // Non-specific EOI follows the rotated order: IR5 first.
        outb(&mut p, 0x20, 0x20);
        assert_eq!(isr(&mut p, 0x20), 0x40);
        // Rotate on specific EOI of IR6: IR7 becomes highest, IR0 still pending below it.
        outb(&mut p, 0x20, 0xE6);
        assert_eq!(isr(&mut p, 0x20), 0);
        pulse(&mut p, 7);
        assert_eq!(take(&mut p), Some(0x27));
        outb(&mut p, 0x20, 0x20);
        assert_eq!(take(&mut p), Some(0x20));
        // No-operation command changes nothing.
        outb(&mut p, 0x20, 0x40);
        assert_eq!(isr(&mut p, 0x20), 0x01);
    }

    #[test]
    fn automatic_eoi_and_rotation_in_aeoi() {
        let mut p = PicPair::new();
        outb(&mut p, 0x20, 0x11);
        outb(&mut p, 0x21, 0x20);
        outb(&mut p, 0x21, 0x04);
        outb(&mut p, 0x21, 0x03); // 8086, AEOI
        pulse(&mut p, 3);
        assert_eq!(take(&mut p), Some(0x23));
        assert_eq!(isr(&mut p, 0x20), 0, "AEOI leaves nothing in service");
        pulse(&mut p, 5);
        assert_eq!(
            take(&mut p),
            Some(0x25),
            "lower level delivered without EOI"
        );
        // Rotate in AEOI: each acknowledged level becomes the lowest.
        outb(&mut p, 0x20, 0x80);
        pulse(&mut p, 1);
        assert_eq!(take(&mut p), Some(0x21));
        pulse(&mut p, 1);
        pulse(&mut p, 4);
        assert_eq!(take(&mut p), Some(0x24), "IR1 was rotated to the lowest");
        outb(&mut p, 0x20, 0x00); // clear rotate in AEOI
        assert_eq!(take(&mut p), Some(0x21));
        pulse(&mut p, 0);
        pulse(&mut p, 6);
        // The last rotation (IR4 lowest) stays: IR6 now ranks above IR0.
        assert_eq!(take(&mut p), Some(0x26));
        assert_eq!(take(&mut p), Some(0x20));
    }

    #[test]
    fn poll_mode_acknowledges_through_a_read() {
        let mut p = initialised();
        outb(&mut p, 0x20, 0x0C);
        assert_eq!(inb(&mut p, 0x20), 0, "nothing requesting");
        assert_eq!(inb(&mut p, 0x20), 0, "poll is one read only: back to IRR");
        pulse(&mut p, 6);
        pulse(&mut p, 4);
        outb(&mut p, 0x20, 0x0C);
        assert_eq!(inb(&mut p, 0x21), 0x84, "either port reads the poll word");
        assert_eq!(isr(&mut p, 0x20), 0x10);
        assert_eq!(irr(&mut p, 0x20), 0x40);
        assert_eq!(
            inb(&mut p, 0x21),
            0x00,
            "after the poll, the data port is IMR"
        );
        // IR6 is below IR4 in service: no request.
        outb(&mut p, 0x20, 0x0C);
        assert_eq!(inb(&mut p, 0x20), 0);
        outb(&mut p, 0x20, 0x20);
        outb(&mut p, 0x20, 0x0C);
        assert_eq!(inb(&mut p, 0x20), 0x86);
        outb(&mut p, 0x20, 0x20);
        // Slave through the master's IR2, then the slave itself.
        pulse(&mut p, 13);
        outb(&mut p, 0x20, 0x0C);
        assert_eq!(inb(&mut p, 0x20), 0x82);
        outb(&mut p, 0xA0, 0x0C);
        assert_eq!(inb(&mut p, 0xA0), 0x85);
        assert_eq!(isr(&mut p, 0xA0), 0x20);
        assert_eq!(isr(&mut p, 0x20), 0x04);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn irr_isr_and_imr_reads() {
        let mut p = initialised();
        outb(&mut p, 0x21, 0x81);
        pulse(&mut p, 0);
        pulse(&mut p, 5);
        // After init the command port reads IRR.
        assert_eq!(inb(&mut p, 0x20), 0x21);
        assert_eq!(take(&mut p), Some(0x25));
        outb(&mut p, 0x20, 0x0B);
        assert_eq!(inb(&mut p, 0x20), 0x20);
        assert_eq!(inb(&mut p, 0x20), 0x20, "the selection sticks");
        assert_eq!(inb(&mut p, 0x21), 0x81);
        // OCW3 without RR keeps the selection.
        outb(&mut p, 0x20, 0x08);
        assert_eq!(inb(&mut p, 0x20), 0x20);
        outb(&mut p, 0x20, 0x0A);
        assert_eq!(inb(&mut p, 0x20), 0x01);
    }

    #[test]
    fn special_mask_mode_lets_lower_levels_through() {
        let mut p = initialised();
        pulse(&mut p, 3);
        assert_eq!(take(&mut p), Some(0x23));
        pulse(&mut p, 5);
        assert!(!p.interrupt_pending());
        outb(&mut p, 0x21, 0x08);
        outb(&mut p, 0x20, 0x68); // set special mask mode
        assert_eq!(take(&mut p), Some(0x25), "IR5 below IR3 in service");
        // A level in service is not requested again, and a masked one is held.
        pulse(&mut p, 5);
        assert!(!p.interrupt_pending());
        pulse(&mut p, 3);
        assert!(!p.interrupt_pending());
        outb(&mut p, 0x20, 0x65);
        assert_eq!(
            take(&mut p),
            Some(0x25),
            "out of service, IR5 requests again"
        );
        outb(&mut p, 0x20, 0x65);
        outb(&mut p, 0x20, 0x48); // reset special mask mode
        outb(&mut p, 0x20, 0x08); // ESMM clear: no change
        assert!(!p.master.special_mask);
        pulse(&mut p, 6);
        assert!(!p.interrupt_pending(), "fully nested again: IR3 blocks IR6");
        outb(&mut p, 0x20, 0x63);
        outb(&mut p, 0x21, 0x00);
        assert_eq!(take(&mut p), Some(0x23));
    }

    #[test]
    fn spurious_master_interrupt_is_ir7_without_isr() {
        let mut p = initialised();
        outb(&mut p, 0x4D0, 0x10); // IRQ 4 level
        p.set_irq(4, true);
        assert!(p.interrupt_pending());
        p.set_irq(4, false);
        assert_eq!(p.acknowledge(), 0x27);
        assert_eq!(isr(&mut p, 0x20), 0);
        // Masked between INTR and INTA.
        pulse(&mut p, 3);
        assert!(p.interrupt_pending());
        outb(&mut p, 0x21, 0x08);
        assert_eq!(p.acknowledge(), 0x27);
        assert_eq!(isr(&mut p, 0x20), 0);
        assert_eq!(
            irr(&mut p, 0x20),
            0x08,
            "the masked request is still pending"
        );
        // A real IRQ 7 does set its ISR bit.
        outb(&mut p, 0x21, 0x00);
        outb(&mut p, 0x20, 0x63);
        assert_eq!(take(&mut p), Some(0x23));
        outb(&mut p, 0x20, 0x20);
        pulse(&mut p, 7);
        assert_eq!(take(&mut p), Some(0x27));
        assert_eq!(isr(&mut p, 0x20), 0x80);
    }

    #[test]
    fn spurious_slave_interrupt_is_irq15_with_master_ir2_in_service() {
        let mut p = initialised();
        outb(&mut p, 0x4D1, 0x04); // IRQ 10 level
        p.set_irq(10, true);
        assert!(p.interrupt_pending());
        p.set_irq(10, false);
        // The master latched the slave's edge on IR2 and still asks.
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x2F);
        assert_eq!(isr(&mut p, 0xA0), 0, "the slave's ISR is untouched");
        assert_eq!(isr(&mut p, 0x20), 0x04, "the master took IR2 in service");
        // The OS sends EOI to the master only, and all is well again.
        outb(&mut p, 0x20, 0x20);
        assert_eq!(isr(&mut p, 0x20), 0);
        pulse(&mut p, 9);
        assert_eq!(take(&mut p), Some(0x29));
        outb(&mut p, 0xA0, 0x20);
        outb(&mut p, 0x20, 0x20);
        // The slave's IMR hiding the request after the master latched it does the same.
        pulse(&mut p, 13);
        outb(&mut p, 0xA1, 0x20);
        assert!(p.interrupt_pending());
        assert_eq!(p.acknowledge(), 0x2F);
        assert_eq!((p.master.isr, p.slave.isr), (0x04, 0));
        assert_eq!(p.slave.irr, 0x20, "IRQ 13 still waits behind its mask");
    }

    #[test]
    fn the_cascade_stays_on_ir2_whatever_icw3_and_sngl_say() {
        let mut p = PicPair::new();
        outb(&mut p, 0x20, 0x13); // single mode, ICW4 needed: no ICW3
        outb(&mut p, 0x21, 0x20);
        outb(&mut p, 0x21, 0x01);
        assert_eq!(p.master.init, InitStep::Ready);
        outb(&mut p, 0xA0, 0x11);
        outb(&mut p, 0xA1, 0x28);
        outb(&mut p, 0xA1, 0x05); // a slave ID the PC does not use
        outb(&mut p, 0xA1, 0x00); // and MCS-80 mode
        assert_eq!(p.slave.icw3, 0x05);
        pulse(&mut p, 10);
        assert_eq!(take(&mut p), Some(0x2A));
    }

    #[test]
    fn icw1_resets_the_chip() {
        let mut p = initialised();
        outb(&mut p, 0x4D0, 0x20); // IRQ 5 level
        outb(&mut p, 0x21, 0x80);
        outb(&mut p, 0x20, 0xC2); // rotate: IR3 highest
        outb(&mut p, 0x20, 0x6B); // special mask, read ISR
        p.set_irq(3, true); // edge, held high
        p.set_irq(5, true); // level
        pulse(&mut p, 6);
        assert_eq!(take(&mut p), Some(0x23));
        outb(&mut p, 0x20, 0x0C); // poll pending
        outb(&mut p, 0x20, 0x11);
        let m = &p.master;
        assert_eq!((m.imr, m.isr, m.priority_base), (0, 0, 0));
        assert!(!m.special_mask && !m.read_isr && !m.poll);
        assert_eq!(m.icw3, 7, "slave address set to 7");
        assert_eq!(m.irr, 0x20, "edge requests dropped; the level one stays");
        outb(&mut p, 0x21, 0x30);
        outb(&mut p, 0x21, 0x04);
        outb(&mut p, 0x21, 0x01);
        assert_eq!(inb(&mut p, 0x21), 0, "IMR cleared");
        assert_eq!(take(&mut p), Some(0x35));
        outb(&mut p, 0x20, 0x20);
        p.set_irq(5, false);
        // IRQ 3 is still high: it needs a new rising edge.
        p.set_irq(3, true);
        assert!(!p.interrupt_pending());
        p.set_irq(3, false);
        p.set_irq(3, true);
        assert_eq!(take(&mut p), Some(0x33));
        // The ELCR survives ICW1.
        assert_eq!(inb(&mut p, 0x4D0), 0x20);
    }

    #[test]
    fn special_fully_nested_mode_lets_the_slave_nest() {
        let mut p = PicPair::new();
        linux_init(&mut p);
        outb(&mut p, 0x20, 0x11);
        outb(&mut p, 0x21, 0x20);
        outb(&mut p, 0x21, 0x04);
        outb(&mut p, 0x21, 0x11); // SFNM
        pulse(&mut p, 12);
        assert_eq!(take(&mut p), Some(0x2C));
        pulse(&mut p, 8);
        assert_eq!(take(&mut p), Some(0x28), "higher slave level nests");
        pulse(&mut p, 3);
        assert!(!p.interrupt_pending(), "lower master level still waits");
        // Fully nested (no SFNM): the same would wait.
        let mut q = initialised();
        pulse(&mut q, 12);
        assert_eq!(take(&mut q), Some(0x2C));
        pulse(&mut q, 8);
        assert!(!q.interrupt_pending());
    }

    #[test]
    fn slave_in_aeoi_with_two_requests_delivers_both() {
        let mut p = initialised();
        outb(&mut p, 0xA0, 0x11);
        outb(&mut p, 0xA1, 0x28);
        outb(&mut p, 0xA1, 0x02);
        outb(&mut p, 0xA1, 0x03); // slave AEOI
        pulse(&mut p, 8);
        pulse(&mut p, 11);
        assert_eq!(take(&mut p), Some(0x28));
        outb(&mut p, 0x20, 0x20);
        assert_eq!(take(&mut p), Some(0x2B));
        outb(&mut p, 0x20, 0x20);
        assert!(!p.interrupt_pending());
    }

    #[test]
    fn irqs_outside_the_pair_and_the_cascade_are_ignored() {
        let mut p = initialised();
        p.set_irq(2, true);
        p.set_irq(16, true);
        p.set_irq(255, true);
        assert!(!p.interrupt_pending());
        assert_eq!(irr(&mut p, 0x20), 0);
    }

    #[test]
    fn intr_output_follows_the_pin() {
        let mut p = initialised();
        let line = Arc::new(LatchedLine::new());
        p.set_intr_output(line.clone());
        assert!(!line.level());
        pulse(&mut p, 1);
        assert!(line.level());
        assert_eq!(p.acknowledge(), 0x21);
        assert!(!line.level());
        pulse(&mut p, 10);
        assert!(!line.level(), "blocked by IR1 in service");
        outb(&mut p, 0x20, 0x20);
        assert!(line.level(), "EOI lets the slave through");
        outb(&mut p, 0x21, 0x04);
        assert!(!line.level(), "masking the cascade drops INTR");
        assert_eq!(line.take_rising_edges(), 2);
    }

    #[test]
    fn inputs_and_bus_registration_work_through_shared_handles() {
        let pic = PicPair::new_shared();
        let bus = Bus::new(BusKind::Pio);
        PicPair::register(&pic, &bus).unwrap();
        for (port, v) in [
            (0x20, 0x11),
            (0x21, 0x20),
            (0x21, 0x04),
            (0x21, 0x01),
            (0xA0, 0x11),
            (0xA1, 0x28),
            (0xA1, 0x02),
            (0xA1, 0x01),
        ] {
            bus.write_value(port, 1, v);
        }
        // The bus splits a word at 0x4D0 into both ELCR bytes.
        bus.write_value(0x4D0, 2, 0x0C20);
        assert_eq!(bus.read_value(0x4D0, 2), 0x0C20);
        bus.write_value(0x21, 1, 0x01);
        assert_eq!(bus.read_value(0x21, 1), 0x01);
        assert_eq!(bus.read_value(0xA1, 1), 0x00);
        let kbd = PicPair::input(&pic, 1);
        let ide = PicPair::input(&pic, 14);
        kbd.pulse();
        ide.set_level(true);
        let mut p = pic.lock().unwrap();
        assert_eq!(p.acknowledge(), 0x21);
        p.write_byte(PIC_MASTER_BASE, 0, 0x20);
        assert_eq!(p.acknowledge(), 0x2E);
        drop(p);
        ide.set_level(false);
        // The level-triggered IRQ 11 from the ELCR write above.
        let nic = PicInput::new(pic.clone(), 11);
        nic.set_level(true);
        let p = pic.lock().unwrap();
        assert_eq!(p.slave.irr & 0x08, 0x08);
    }

    #[test]
    fn machine_reset_returns_to_power_on() {
        let mut p = initialised();
        outb(&mut p, 0x4D1, 0x08);
        p.set_irq(11, true);
        assert!(p.interrupt_pending());
        p.reset();
        assert_eq!(p.elcr(), 0);
        assert!(!p.interrupt_pending());
        assert_eq!(p.master.vector_base(), 0);
        assert_eq!(
            irr(&mut p, 0xA0),
            0,
            "IRQ 11 is edge again and saw no new edge"
        );
    }

    /// A pair mid-way through things: rotated priorities, the slave in service with a request
    /// behind it, a pending level, ISR read-select, a mask.
    fn busy_pair() -> PicPair {
        let mut p = initialised();
        outb(&mut p, 0x4D0, 0x20);
        outb(&mut p, 0x4D1, 0x02);
        outb(&mut p, 0x20, 0xC5);
        p.set_irq(5, true);
        pulse(&mut p, 12);
        assert_eq!(take(&mut p), Some(0x2C));
        pulse(&mut p, 10);
        p.set_irq(3, true);
        outb(&mut p, 0x20, 0x0B);
        outb(&mut p, 0x21, 0x10);
        p
    }

    #[test]
    fn snapshot_round_trip_and_behaviour_continues() {
        let mut original = busy_pair();
        let mut fresh = PicPair::new();
        let line = Arc::new(LatchedLine::new());
        fresh.set_intr_output(line.clone());
        check_round_trip(&original, &mut fresh).unwrap();
        assert!(fresh.master == original.master && fresh.slave == original.slave);
        // Priority order is 6,7,0,1,2,3,4,5: IR2 in service holds back IR3 and IR5.
        assert!(!fresh.interrupt_pending());
        assert!(!line.level(), "the output was driven to the restored INTR");
        for p in [&mut original, &mut fresh] {
            assert_eq!(inb(p, 0x20), 0x04, "read-select (ISR) survived");
            assert_eq!(inb(p, 0x21), 0x10);
            outb(p, 0xA0, 0x20);
            outb(p, 0x20, 0x20);
            assert_eq!(take(p), Some(0x2A), "IRQ 10 waited behind IRQ 12");
            outb(p, 0xA0, 0x20);
            outb(p, 0x20, 0x20);
            assert_eq!(
                take(p),
                Some(0x23),
                "IR3 ranks above IR5 after the rotation"
            );
            outb(p, 0x20, 0x20);
            assert_eq!(take(p), Some(0x25), "IRQ 5 is level and still high");
            outb(p, 0x20, 0x20);
            // The slave starts over; snapshot it half-way through ICW2..ICW4.
            outb(p, 0xA0, 0x11);
            outb(p, 0xA1, 0x38);
            assert_eq!(p.slave.init, InitStep::Icw3);
        }
        assert!(line.level(), "IRQ 5 is still requesting");
        let mut again = PicPair::new();
        check_round_trip(&fresh, &mut again).unwrap();
        for p in [&mut original, &mut fresh, &mut again] {
            p.set_irq(5, false);
            outb(p, 0xA1, 0x02);
            outb(p, 0xA1, 0x01);
            assert_eq!(p.slave.init, InitStep::Ready);
            p.set_irq(9, true);
            assert_eq!(take(p), Some(0x39), "IRQ 9 at the new slave base");
            assert_eq!(isr(p, 0xA0), 0x02);
        }
        assert_eq!(snapshot::save(&original), snapshot::save(&again));
    }

    #[test]
    fn snapshot_rejects_impossible_state() {
        let mut p = busy_pair();
        let good = snapshot::save(&p);
        // ELCR bit for IRQ 0 is not settable.
        let mut bad = p.master.clone();
        bad.elcr |= 0x01;
        let mut q = PicPair::new();
        q.master = bad;
        q.master.irr |= q.master.lines & 1;
        assert!(snapshot::restore(&mut p, &snapshot::save(&q)).is_err());
        assert_eq!(snapshot::save(&p), good);
    }

    /// A small deterministic generator, so the fuzz test needs no crate.
    struct XorShift(u64);
    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    #[test]
    fn any_value_at_any_port_and_width_does_not_panic() {
        let pic = PicPair::new_shared();
        let bus = Bus::new(BusKind::Pio);
        PicPair::register(&pic, &bus).unwrap();
        let ports = [0x1F, 0x20, 0x21, 0x9F, 0xA0, 0xA1, 0x4CF, 0x4D0, 0x4D1];
        for &port in &ports {
            for v in 0..=255u64 {
                bus.write_value(port, 1, v);
                let _ = bus.read_value(port, 1);
            }
        }
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        for _ in 0..20_000 {
            let r = rng.next();
            let port = ports[(r % ports.len() as u64) as usize];
            let size = 1 << ((r >> 8) % 4);
            match (r >> 16) % 4 {
                0 => bus.write_value(port, size, r >> 24),
                1 => {
                    let _ = bus.read_value(port, size);
                }
                2 => {
                    let mut p = pic.lock().unwrap();
                    p.set_irq(((r >> 24) % 20) as u8, r & (1 << 40) != 0);
                }
                _ => {
                    let mut p = pic.lock().unwrap();
                    if p.interrupt_pending() {
                        let _ = p.acknowledge();
                    } else {
                        let _ = p.acknowledge(); // a spurious INTA
                    }
                }
            }
        }
        // And snapshots of whatever state that left still round-trip.
        let p = pic.lock().unwrap();
        check_round_trip(&*p, &mut PicPair::new()).unwrap();
    }
}
