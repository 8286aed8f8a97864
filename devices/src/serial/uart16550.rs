//! 16550A UART (National PC16550D), the PC's COM ports.
//!
//! Register it at an 8-port range: COM1 at 0x3F8 with IRQ 4, COM2 0x2F8/IRQ 3, COM3 0x3E8/IRQ 4,
//! COM4 0x2E8/IRQ 3 (offsets 0-7 from `BusAddress.base`). Byte accesses only; the bus splits
//! wider ones, as on the ISA bus.
//!
//! What the model does, and the choices it makes where the datasheet leaves room:
//!
//! - **Transmit is instantaneous**, as in QEMU when its backend accepts: a byte written to THR
//!   goes straight to the [`CharSink`] (or, in loopback, into the receiver), so the TX FIFO and
//!   shift register are empty again when the write returns and LSR THRE and TEMT always read 1.
//!   The THRE interrupt still follows the datasheet: a THR write clears it (the line drops) and
//!   the byte leaving sets it again (the line rises), so an edge-triggered PIC sees one edge per
//!   byte, as with real hardware. FCR's TX-reset bit therefore has nothing to clear.
//! - **Receive**: the board offers host bytes with [`Uart16550::receive`], which takes only
//!   what fits ([`Uart16550::rx_space`]), so host input never overruns; the backend keeps the
//!   rest and the board offers it again when the notifier set with
//!   [`Uart16550::set_rx_ready_notifier`] fires. In loopback mode the receiver is disconnected
//!   from the line, so `rx_space` is 0 (hardware would lose those bytes; we keep them waiting).
//!   Overruns happen, as on hardware, when the guest loops back more than the FIFO holds.
//! - **Interrupt line**: driven at the level of "an interrupt is pending" (IIR bit 0 clear).
//!   MCR OUT2 does not gate it. On a PC, OUT2 enables a buffer on the IRQ line; QEMU does not
//!   model that and Linux does not depend on it (it sets OUT2 whenever it uses the IRQ and
//!   masks IER when it stops; its THRE probes read IIR, not the line).
//! - **Character timeout** (FIFO mode): fires 4 character times after the last character
//!   entered the RX FIFO or the CPU last read it, while characters wait. A character time is
//!   start + data + parity + stop bits (1.5 stop bits for 5-bit words) at the programmed baud
//!   rate (1.8432 MHz / 16 / divisor). A divisor of 0 is timed as 65536 (what a 16-bit
//!   down-counter reloaded with 0 counts; the datasheet leaves it undefined). As QEMU and real
//!   parts do, IER bit 0 masks the timeout interrupt too; when both the timeout and the
//!   trigger level are pending, IIR reports the timeout.
//! - **Word length** only times the frame: data bits above it are not masked off. On the
//!   wire they would be lost, but the reset value of LCR selects 5-bit words and many small
//!   guests write to the port without programming it; QEMU passes whole bytes, so do we.
//! - **Modem inputs** outside loopback: CTS, DSR and DCD asserted, RI not (a terminal is
//!   attached, as QEMU presents it); [`Uart16550::set_modem_inputs`] changes them.
//! - **Reset** ([`Uart16550::reset`], the MR pin): per the datasheet's reset table; the divisor
//!   latch and the scratch register keep their values.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};

use crate::bus::{AccessSizes, BusAddress, BusDevice};
use crate::chardev::{CharBackend, CharSink};
use crate::clock::{Clock, NANOS_PER_SEC, Nanos, Timer, TimerTarget};
use crate::irq::IrqLine;
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

/// Number of I/O ports a UART decodes.
pub const UART_PORT_COUNT: u64 = 8;
pub const COM1_BASE: u64 = 0x3F8;
pub const COM1_IRQ: u8 = 4;
pub const COM2_BASE: u64 = 0x2F8;
pub const COM2_IRQ: u8 = 3;
pub const COM3_BASE: u64 = 0x3E8;
pub const COM3_IRQ: u8 = 4;
pub const COM4_BASE: u64 = 0x2E8;
pub const COM4_IRQ: u8 = 3;

/// The PC's UART crystal: 16 times 115200 baud.
pub const BASE_CLOCK_HZ: u64 = 1_843_200;
/// Depth of each FIFO.
pub const FIFO_SIZE: usize = 16;

// Register offsets.
const RBR_THR_DLL: u8 = 0;
const IER_DLM: u8 = 1;
const IIR_FCR: u8 = 2;
const LCR: u8 = 3;
const MCR: u8 = 4;
const LSR: u8 = 5;
const MSR: u8 = 6;
const SCR: u8 = 7;

const IER_ERBFI: u8 = 0x01;
const IER_ETBEI: u8 = 0x02;
const IER_ELSI: u8 = 0x04;
const IER_EDSSI: u8 = 0x08;
const IER_MASK: u8 = 0x0F;

const IIR_NONE: u8 = 0x01;
const IIR_MODEM: u8 = 0x00;
const IIR_THRE: u8 = 0x02;
const IIR_RDA: u8 = 0x04;
const IIR_RLS: u8 = 0x06;
const IIR_TIMEOUT: u8 = 0x0C;
const IIR_FIFOS_ENABLED: u8 = 0xC0;

const FCR_ENABLE: u8 = 0x01;
const FCR_RX_RESET: u8 = 0x02;
const FCR_TX_RESET: u8 = 0x04;
const FCR_DMA_MODE: u8 = 0x08;
const FCR_TRIGGER: u8 = 0xC0;
/// The FCR bits that stick (the resets clear themselves).
const FCR_STICKY: u8 = FCR_ENABLE | FCR_DMA_MODE | FCR_TRIGGER;

const LCR_WORD_LENGTH: u8 = 0x03;
const LCR_TWO_STOP: u8 = 0x04;
const LCR_PARITY: u8 = 0x08;
const LCR_BREAK: u8 = 0x40;
const LCR_DLAB: u8 = 0x80;
/// LCR bits that change the length of a character frame.
const LCR_FRAME: u8 = LCR_WORD_LENGTH | LCR_TWO_STOP | LCR_PARITY;

const MCR_DTR: u8 = 0x01;
const MCR_RTS: u8 = 0x02;
const MCR_OUT1: u8 = 0x04;
const MCR_OUT2: u8 = 0x08;
const MCR_LOOP: u8 = 0x10;
const MCR_MASK: u8 = 0x1F;

const LSR_DR: u8 = 0x01;
const LSR_OE: u8 = 0x02;
const LSR_PE: u8 = 0x04;
const LSR_FE: u8 = 0x08;
const LSR_BI: u8 = 0x10;
const LSR_THRE: u8 = 0x20;
const LSR_TEMT: u8 = 0x40;
const LSR_FIFO_ERROR: u8 = 0x80;
/// Errors a received character carries with it through the FIFO.
const CHAR_ERRORS: u8 = LSR_PE | LSR_FE | LSR_BI;
/// The line-status interrupt sources.
const LSR_ERRORS: u8 = LSR_OE | CHAR_ERRORS;

const MSR_DCTS: u8 = 0x01;
const MSR_DDSR: u8 = 0x02;
const MSR_TERI: u8 = 0x04;
const MSR_DDCD: u8 = 0x08;
const MSR_DELTAS: u8 = 0x0F;
const MSR_CTS: u8 = 0x10;
const MSR_DSR: u8 = 0x20;
const MSR_RI: u8 = 0x40;
const MSR_DCD: u8 = 0x80;
const MSR_LINES: u8 = 0xF0;

/// Timer token of the character-timeout timer.
const TIMEOUT_TIMER: u32 = 0;

/// The modem-control inputs from the outside world (true = asserted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ModemInputs {
    pub cts: bool,
    pub dsr: bool,
    pub ri: bool,
    pub dcd: bool,
}

impl Default for ModemInputs {
    /// A terminal is attached and ready.
    fn default() -> Self {
        ModemInputs {
            cts: true,
            dsr: true,
            ri: false,
            dcd: true,
        }
    }
}

impl ModemInputs {
    fn msr_lines(self) -> u8 {
        let mut v = 0;
        if self.cts {
            v |= MSR_CTS;
        }
        if self.dsr {
            v |= MSR_DSR;
        }
        if self.ri {
            v |= MSR_RI;
        }
        if self.dcd {
            v |= MSR_DCD;
        }
        v
    }

    fn from_msr_lines(v: u8) -> ModemInputs {
        ModemInputs {
            cts: v & MSR_CTS != 0,
            dsr: v & MSR_DSR != 0,
            ri: v & MSR_RI != 0,
            dcd: v & MSR_DCD != 0,
        }
    }
}

/// Errors detected on a received character (for backends that can see them).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LineErrors {
    pub parity: bool,
    pub framing: bool,
}

/// A 16550A UART.
pub struct Uart16550 {
    ier: u8,
    lcr: u8,
    mcr: u8,
    scr: u8,
    /// The sticky FCR bits (FCR itself is write-only).
    fcr: u8,
    divisor: u16,
    /// Received characters with their error bits (LSR positions); holds at most one in
    /// 16450 mode (FIFOs disabled), where it is the receiver buffer register.
    rx: VecDeque<(u8, u8)>,
    /// The last character read, returned again if RBR is read while the receiver is empty.
    rbr: u8,
    /// LSR OE/PE/FE/BI as last revealed; cleared by reading LSR.
    lsr_errors: u8,
    /// LSR bit 7 (FIFO mode): an errored character entered the FIFO.
    fifo_error: bool,
    /// The THR-empty interrupt source.
    thre_pending: bool,
    /// The character-timeout interrupt source.
    timeout_pending: bool,
    /// When the running character-timeout period started (last RX FIFO activity).
    timeout_since: Option<Nanos>,
    /// MSR: input line levels (bits 4-7) and delta bits (0-3).
    msr: u8,
    /// The modem inputs outside loopback.
    external: ModemInputs,
    irq_level: bool,
    /// `receive` turned bytes away since the receiver last had room.
    rx_refused: bool,
    irq: Arc<dyn IrqLine>,
    sink: Box<dyn CharSink>,
    timer: Timer,
    rx_ready: Option<Box<dyn Fn() + Send>>,
}

impl Uart16550 {
    /// A UART in its reset state, with its timer on `clock`. Register it on the port bus at
    /// [`COM1_BASE`] (or another COM base) for [`UART_PORT_COUNT`] ports.
    pub fn new_shared(
        clock: &Clock,
        irq: Arc<dyn IrqLine>,
        sink: Box<dyn CharSink>,
    ) -> Arc<Mutex<Uart16550>> {
        Arc::new_cyclic(|me: &Weak<Mutex<Uart16550>>| {
            let target: Weak<Mutex<dyn TimerTarget>> = me.clone();
            let timer = clock.timer(target, TIMEOUT_TIMER);
            let external = ModemInputs::default();
            Mutex::new(Uart16550 {
                ier: 0,
                lcr: 0,
                mcr: 0,
                scr: 0,
                fcr: 0,
                // 9600 baud until the guest programs it (the latch is undefined at power-on).
                divisor: 12,
                rx: VecDeque::with_capacity(FIFO_SIZE),
                rbr: 0,
                lsr_errors: 0,
                fifo_error: false,
                thre_pending: false,
                timeout_pending: false,
                timeout_since: None,
                msr: external.msr_lines(),
                external,
                irq_level: false,
                rx_refused: false,
                irq,
                sink,
                timer,
                rx_ready: None,
            })
        })
    }

    /// The master-reset state (machine reset). The divisor latch and scratch register keep
    /// their values, as on the chip.
    pub fn reset(&mut self) {
        self.ier = 0;
        self.lcr = 0;
        self.mcr = 0;
        self.fcr = 0;
        self.clear_rx();
        self.lsr_errors = 0;
        self.thre_pending = false;
        self.msr = self.external.msr_lines();
        self.update_irq();
        self.rx_space_freed();
    }

    /// Replace the output backend, returning the old one.
    pub fn replace_sink(&mut self, sink: Box<dyn CharSink>) -> Box<dyn CharSink> {
        std::mem::replace(&mut self.sink, sink)
    }

    /// Called (with the UART locked: only signal, e.g. wake the event loop) when the receiver
    /// has room again after [`receive`](Self::receive) turned bytes away.
    pub fn set_rx_ready_notifier(&mut self, notify: Option<Box<dyn Fn() + Send>>) {
        self.rx_ready = notify;
    }

    /// How many bytes [`receive`](Self::receive) would take now.
    pub fn rx_space(&self) -> usize {
        if self.mcr & MCR_LOOP != 0 {
            return 0;
        }
        self.rx_capacity().saturating_sub(self.rx.len())
    }

    /// Move waiting host input from `backend` into the UART, as much as fits. Call it after
    /// the backend's token fired and when the rx-ready notifier signalled. Locks the UART only
    /// inside the delivery, never while the backend holds its own state.
    pub fn receive_from(uart: &Mutex<Uart16550>, backend: &mut dyn CharBackend) -> usize {
        backend.pump_input(&mut |bytes| {
            uart.lock()
                .unwrap_or_else(|e| e.into_inner())
                .receive(bytes)
        })
    }

    /// Characters arriving from the line: takes as many as fit and returns how many.
    pub fn receive(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.rx_space());
        for &b in &bytes[..n] {
            self.push_rx(b, 0);
        }
        if n < bytes.len() {
            self.rx_refused = true;
        }
        if n > 0 {
            self.update_irq();
        }
        n
    }

    /// One character received with line errors. Returns false (and keeps nothing) if the
    /// receiver has no room.
    pub fn receive_frame(&mut self, byte: u8, errors: LineErrors) -> bool {
        let mut flags = 0;
        if errors.parity {
            flags |= LSR_PE;
        }
        if errors.framing {
            flags |= LSR_FE;
        }
        self.receive_flagged(byte, flags)
    }

    /// A break on the line: one all-zero character flagged BI. False if there is no room.
    pub fn receive_break(&mut self) -> bool {
        self.receive_flagged(0, LSR_BI)
    }

    fn receive_flagged(&mut self, byte: u8, flags: u8) -> bool {
        if self.rx_space() == 0 {
            self.rx_refused = true;
            return false;
        }
        self.push_rx(byte, flags);
        self.update_irq();
        true
    }

    /// Change the modem-control inputs (CTS, DSR, RI, DCD) seen outside loopback.
    pub fn set_modem_inputs(&mut self, inputs: ModemInputs) {
        self.external = inputs;
        if self.mcr & MCR_LOOP == 0 {
            self.set_msr_lines(inputs.msr_lines());
            self.update_irq();
        }
    }

    /// Whether the UART is requesting an interrupt (the level it drives on its line).
    pub fn irq_pending(&self) -> bool {
        self.interrupt_id().is_some()
    }

    fn fifo_enabled(&self) -> bool {
        self.fcr & FCR_ENABLE != 0
    }

    fn rx_capacity(&self) -> usize {
        if self.fifo_enabled() { FIFO_SIZE } else { 1 }
    }

    fn rx_trigger_level(&self) -> usize {
        match self.fcr & FCR_TRIGGER {
            0x00 => 1,
            0x40 => 4,
            0x80 => 8,
            _ => 14,
        }
    }

    /// Length of one character frame on the wire, in half bits.
    fn frame_half_bits(&self) -> u64 {
        let data = 5 + u64::from(self.lcr & LCR_WORD_LENGTH);
        let parity = u64::from(self.lcr & LCR_PARITY != 0);
        let stop = match (self.lcr & LCR_TWO_STOP != 0, data) {
            (false, _) => 2,
            (true, 5) => 3,
            (true, _) => 4,
        };
        2 * (1 + data + parity) + stop
    }

    /// Four character times at the programmed rate and format.
    fn timeout_ns(&self) -> Nanos {
        let divisor = if self.divisor == 0 {
            65536
        } else {
            u64::from(self.divisor)
        };
        // A bit lasts 16 * divisor cycles of the base clock.
        let numerator = 4 * self.frame_half_bits() * 16 * divisor * NANOS_PER_SEC;
        numerator.div_ceil(2 * BASE_CLOCK_HZ)
    }

    /// The highest-priority pending interrupt, as its IIR identification.
    fn interrupt_id(&self) -> Option<u8> {
        if self.ier & IER_ELSI != 0 && self.lsr_errors & LSR_ERRORS != 0 {
            return Some(IIR_RLS);
        }
        if self.ier & IER_ERBFI != 0 {
            if self.timeout_pending {
                return Some(IIR_TIMEOUT);
            }
            let level = if self.fifo_enabled() {
                self.rx_trigger_level()
            } else {
                1
            };
            if self.rx.len() >= level {
                return Some(IIR_RDA);
            }
        }
        if self.ier & IER_ETBEI != 0 && self.thre_pending {
            return Some(IIR_THRE);
        }
        if self.ier & IER_EDSSI != 0 && self.msr & MSR_DELTAS != 0 {
            return Some(IIR_MODEM);
        }
        None
    }

    fn update_irq(&mut self) {
        let level = self.interrupt_id().is_some();
        if level != self.irq_level {
            self.irq_level = level;
            self.irq.set_level(level);
        }
    }

    /// A character assembled by the receiver (from the line or looped back).
    fn push_rx(&mut self, byte: u8, flags: u8) {
        let entry = (byte, flags & CHAR_ERRORS);
        if self.rx.len() >= self.rx_capacity() {
            self.lsr_errors |= LSR_OE;
            if !self.fifo_enabled() {
                // 16450 mode: the new character overwrites the unread one.
                self.rx.clear();
                self.rx.push_back(entry);
                self.lsr_errors |= entry.1;
            }
            // FIFO mode: the character in the shift register is lost, the FIFO kept.
        } else {
            if self.rx.is_empty() {
                self.lsr_errors |= entry.1;
            }
            self.rx.push_back(entry);
            if entry.1 != 0 && self.fifo_enabled() {
                self.fifo_error = true;
            }
        }
        // Once a timeout has been signalled only an RBR read restarts the period.
        if !self.timeout_pending {
            self.restart_timeout();
        }
    }

    fn restart_timeout(&mut self) {
        if self.fifo_enabled() && !self.rx.is_empty() {
            let now = self.timer.clock().now();
            self.timeout_since = Some(now);
            self.timer.arm(now.saturating_add(self.timeout_ns()));
        } else {
            self.timeout_since = None;
            self.timer.cancel();
        }
    }

    /// The frame format or baud rate changed: a running timeout period is re-timed.
    fn timing_changed(&mut self) {
        if let Some(since) = self.timeout_since {
            self.timer.arm(since.saturating_add(self.timeout_ns()));
        }
    }

    fn clear_rx(&mut self) {
        self.rx.clear();
        self.fifo_error = false;
        self.timeout_pending = false;
        self.timeout_since = None;
        self.timer.cancel();
    }

    fn rx_space_freed(&mut self) {
        if self.rx_refused && self.rx_space() > 0 {
            self.rx_refused = false;
            if let Some(notify) = &self.rx_ready {
                notify();
            }
        }
    }

    /// Set the MSR input lines, raising the delta bits for what changed.
    fn set_msr_lines(&mut self, lines: u8) {
        let old = self.msr & MSR_LINES;
        let changed = old ^ lines;
        let mut delta = 0;
        if changed & MSR_CTS != 0 {
            delta |= MSR_DCTS;
        }
        if changed & MSR_DSR != 0 {
            delta |= MSR_DDSR;
        }
        if changed & MSR_DCD != 0 {
            delta |= MSR_DDCD;
        }
        // Trailing edge only: RI going inactive.
        if old & MSR_RI != 0 && lines & MSR_RI == 0 {
            delta |= MSR_TERI;
        }
        self.msr = lines | (self.msr & MSR_DELTAS) | delta;
    }

    /// The input lines the MSR sees now.
    fn modem_lines(&self) -> u8 {
        modem_lines(self.mcr, self.external)
    }

    fn read_register(&mut self, reg: u8) -> u8 {
        let dlab = self.lcr & LCR_DLAB != 0;
        match reg {
            RBR_THR_DLL if dlab => self.divisor.to_le_bytes()[0],
            RBR_THR_DLL => self.read_rbr(),
            IER_DLM if dlab => self.divisor.to_le_bytes()[1],
            IER_DLM => self.ier,
            IIR_FCR => self.read_iir(),
            LCR => self.lcr,
            MCR => self.mcr,
            LSR => self.read_lsr(),
            MSR => self.read_msr(),
            _ => self.scr,
        }
    }

    fn write_register(&mut self, reg: u8, value: u8) {
        let dlab = self.lcr & LCR_DLAB != 0;
        match reg {
            RBR_THR_DLL if dlab => {
                self.divisor = (self.divisor & 0xFF00) | u16::from(value);
                self.timing_changed();
            }
            RBR_THR_DLL => self.write_thr(value),
            IER_DLM if dlab => {
                self.divisor = (self.divisor & 0x00FF) | (u16::from(value) << 8);
                self.timing_changed();
            }
            IER_DLM => self.write_ier(value),
            IIR_FCR => self.write_fcr(value),
            LCR => self.write_lcr(value),
            MCR => self.write_mcr(value),
            LSR | MSR => {
                log::debug!("uart: write {value:#04x} to read-only register {reg} ignored");
            }
            SCR => self.scr = value,
            _ => {}
        }
    }

    fn read_rbr(&mut self) -> u8 {
        let value = match self.rx.pop_front() {
            Some((byte, _)) => {
                self.rbr = byte;
                // The next character's errors show in LSR once it reaches the top.
                if let Some(&(_, flags)) = self.rx.front() {
                    self.lsr_errors |= flags;
                }
                byte
            }
            None => self.rbr,
        };
        self.timeout_pending = false;
        self.restart_timeout();
        self.update_irq();
        self.rx_space_freed();
        value
    }

    fn read_iir(&mut self) -> u8 {
        let id = self.interrupt_id();
        let mut value = id.unwrap_or(IIR_NONE);
        if self.fifo_enabled() {
            value |= IIR_FIFOS_ENABLED;
        }
        if id == Some(IIR_THRE) {
            // Reading IIR acknowledges THRE when it is the reported source.
            self.thre_pending = false;
            self.update_irq();
        }
        value
    }

    fn read_lsr(&mut self) -> u8 {
        let mut value = self.lsr_errors | LSR_THRE | LSR_TEMT;
        if !self.rx.is_empty() {
            value |= LSR_DR;
        }
        if self.fifo_enabled() && self.fifo_error {
            value |= LSR_FIFO_ERROR;
        }
        self.lsr_errors = 0;
        self.fifo_error = self.fifo_enabled() && self.rx.iter().any(|&(_, f)| f != 0);
        self.update_irq();
        value
    }

    fn read_msr(&mut self) -> u8 {
        let value = self.msr;
        self.msr &= MSR_LINES;
        self.update_irq();
        value
    }

    fn write_thr(&mut self, value: u8) {
        self.thre_pending = false;
        self.update_irq();
        if self.mcr & MCR_LOOP != 0 {
            self.push_rx(value, 0);
        } else {
            self.sink.write(&[value]);
        }
        // The byte has left: THR (and the FIFO and shift register) are empty again.
        self.thre_pending = self.ier & IER_ETBEI != 0;
        self.update_irq();
    }

    fn write_ier(&mut self, value: u8) {
        let value = value & IER_MASK;
        let changed = self.ier ^ value;
        self.ier = value;
        if changed & IER_ETBEI != 0 {
            // Enabling ETBEI while THR is empty raises THRE again, even if an IIR read had
            // acknowledged it (Linux's THRE and TXEN probes and Windows depend on this).
            self.thre_pending = value & IER_ETBEI != 0;
        }
        self.update_irq();
    }

    fn write_fcr(&mut self, value: u8) {
        let enable = value & FCR_ENABLE != 0;
        if enable != self.fifo_enabled() {
            // Switching between 16450 and FIFO mode empties both FIFOs.
            self.clear_rx();
        }
        if enable {
            if value & FCR_RX_RESET != 0 {
                self.clear_rx();
            }
            if value & FCR_TX_RESET != 0 {
                // Nothing ever waits in the TX FIFO: transmission is instantaneous.
            }
            self.fcr = value & FCR_STICKY;
        } else {
            // The other bits are only programmed together with FCR0 = 1.
            self.fcr = 0;
        }
        self.update_irq();
        self.rx_space_freed();
    }

    fn write_lcr(&mut self, value: u8) {
        let changed = self.lcr ^ value;
        self.lcr = value;
        if changed & LCR_FRAME != 0 {
            self.timing_changed();
        }
        if changed & LCR_BREAK != 0 {
            log::debug!(
                "uart: break {} (not passed to the backend)",
                if value & LCR_BREAK != 0 { "on" } else { "off" }
            );
        }
    }

    fn write_mcr(&mut self, value: u8) {
        let value = value & MCR_MASK;
        let changed = self.mcr ^ value;
        self.mcr = value;
        if changed != 0 {
            let lines = self.modem_lines();
            self.set_msr_lines(lines);
        }
        self.update_irq();
        if changed & MCR_LOOP != 0 {
            self.rx_space_freed();
        }
    }
}

/// The input lines the MSR sees: the outside world, or in loopback the MCR outputs.
fn modem_lines(mcr: u8, external: ModemInputs) -> u8 {
    if mcr & MCR_LOOP == 0 {
        return external.msr_lines();
    }
    let mut v = 0;
    if mcr & MCR_DTR != 0 {
        v |= MSR_DSR;
    }
    if mcr & MCR_RTS != 0 {
        v |= MSR_CTS;
    }
    if mcr & MCR_OUT1 != 0 {
        v |= MSR_RI;
    }
    if mcr & MCR_OUT2 != 0 {
        v |= MSR_DCD;
    }
    v
}

fn register_at(offset: u64, index: usize) -> u8 {
    (offset.wrapping_add(index as u64) & 7) as u8
}

impl BusDevice for Uart16550 {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.read_register(register_at(at.offset, i));
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            self.write_register(register_at(at.offset, i), byte);
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::BYTE
    }
}

impl TimerTarget for Uart16550 {
    fn timer_expired(&mut self, token: u32, _now: Nanos) {
        if token != TIMEOUT_TIMER {
            return;
        }
        self.timeout_since = None;
        if self.fifo_enabled() && !self.rx.is_empty() {
            self.timeout_pending = true;
            self.update_irq();
        }
    }
}

impl Snapshot for Uart16550 {
    fn snapshot_id(&self) -> &'static str {
        "uart16550"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    fn save_state(&self, w: &mut StateWriter) {
        w.u8(self.ier);
        w.u8(self.lcr);
        w.u8(self.mcr);
        w.u8(self.scr);
        w.u8(self.fcr);
        w.u16(self.divisor);
        w.u8(self.rbr);
        let rx: Vec<u8> = self.rx.iter().flat_map(|&(b, f)| [b, f]).collect();
        w.var_bytes(&rx);
        w.u8(self.lsr_errors);
        w.bool(self.fifo_error);
        w.bool(self.thre_pending);
        w.bool(self.timeout_pending);
        w.opt_u64(self.timeout_since);
        w.u8(self.msr);
        w.u8(self.external.msr_lines());
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let invalid = |what: &str| SnapshotError::Invalid(format!("uart16550: {what}"));
        let ier = r.u8()?;
        let lcr = r.u8()?;
        let mcr = r.u8()?;
        let scr = r.u8()?;
        let fcr = r.u8()?;
        let divisor = r.u16()?;
        let rbr = r.u8()?;
        let rx_bytes = r.var_bytes(2 * FIFO_SIZE)?;
        let lsr_errors = r.u8()?;
        let fifo_error = r.bool()?;
        let thre_pending = r.bool()?;
        let timeout_pending = r.bool()?;
        let timeout_since = r.opt_u64()?;
        let msr = r.u8()?;
        let external_lines = r.u8()?;

        if ier & !IER_MASK != 0 {
            return Err(invalid("IER reserved bits set"));
        }
        if mcr & !MCR_MASK != 0 {
            return Err(invalid("MCR reserved bits set"));
        }
        if fcr & !FCR_STICKY != 0 || (fcr != 0 && fcr & FCR_ENABLE == 0) {
            return Err(invalid("FCR bits without FIFO enable"));
        }
        let fifo = fcr & FCR_ENABLE != 0;
        if rx_bytes.len() % 2 != 0 {
            return Err(invalid("odd receive FIFO record"));
        }
        let rx: VecDeque<(u8, u8)> = rx_bytes.chunks_exact(2).map(|c| (c[0], c[1])).collect();
        if rx.len() > if fifo { FIFO_SIZE } else { 1 } {
            return Err(invalid("more received characters than the receiver holds"));
        }
        if rx.iter().any(|&(_, f)| f & !CHAR_ERRORS != 0) {
            return Err(invalid("unknown character error bits"));
        }
        if lsr_errors & !LSR_ERRORS != 0 {
            return Err(invalid("unknown LSR error bits"));
        }
        if (fifo_error || timeout_pending || timeout_since.is_some()) && !fifo {
            return Err(invalid("FIFO-mode state with FIFOs disabled"));
        }
        if (timeout_pending || timeout_since.is_some()) && rx.is_empty() {
            return Err(invalid("character timeout with an empty FIFO"));
        }
        if timeout_pending && timeout_since.is_some() {
            return Err(invalid("character timeout both pending and running"));
        }
        if thre_pending && ier & IER_ETBEI == 0 {
            return Err(invalid("THRE pending while disabled"));
        }
        if external_lines & !MSR_LINES != 0 {
            return Err(invalid("modem input bits"));
        }
        let external = ModemInputs::from_msr_lines(external_lines);
        if msr & MSR_LINES != modem_lines(mcr, external) {
            return Err(invalid("MSR lines disagree with the modem inputs"));
        }

        self.ier = ier;
        self.lcr = lcr;
        self.mcr = mcr;
        self.scr = scr;
        self.fcr = fcr;
        self.divisor = divisor;
        self.rbr = rbr;
        self.rx = rx;
        self.lsr_errors = lsr_errors;
        self.fifo_error = fifo_error;
        self.thre_pending = thre_pending;
        self.timeout_pending = timeout_pending;
        self.timeout_since = timeout_since;
        self.msr = msr;
        self.external = external;
        match timeout_since {
            Some(since) => self.timer.arm(since.saturating_add(self.timeout_ns())),
            None => self.timer.cancel(),
        }
        // Re-drive the line whatever it was, and let the board offer waiting input.
        self.irq_level = self.interrupt_id().is_some();
        self.irq.set_level(self.irq_level);
        self.rx_refused = true;
        self.rx_space_freed();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{Bus, BusKind, SharedDevice};
    use crate::irq::LatchedLine;
    use crate::snapshot::{self, check_round_trip};
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl CharSink for Capture {
        fn write(&mut self, bytes: &[u8]) {
            self.0.lock().unwrap().extend_from_slice(bytes);
        }
    }

    struct Rig {
        clock: Clock,
        line: Arc<LatchedLine>,
        out: Capture,
        uart: Arc<Mutex<Uart16550>>,
        bus: Bus,
    }

    impl Rig {
        fn new() -> Rig {
            Rig::on_clock(Clock::new(0))
        }

        fn on_clock(clock: Clock) -> Rig {
            let line = Arc::new(LatchedLine::new());
            let out = Capture::default();
            let uart = Uart16550::new_shared(&clock, line.clone(), Box::new(out.clone()));
            let bus = Bus::new(BusKind::Pio);
            let dev: SharedDevice = uart.clone();
            bus.insert("com1", COM1_BASE, UART_PORT_COUNT, dev).unwrap();
            Rig {
                clock,
                line,
                out,
                uart,
                bus,
            }
        }

        fn inb(&self, reg: u8) -> u8 {
            self.bus.read_value(COM1_BASE + u64::from(reg), 1) as u8
        }

        fn outb(&self, reg: u8, value: u8) {
            self.bus
                .write_value(COM1_BASE + u64::from(reg), 1, u64::from(value));
        }

        fn iir(&self) -> u8 {
            self.inb(IIR_FCR)
        }

        fn uart(&self) -> std::sync::MutexGuard<'_, Uart16550> {
            self.uart.lock().unwrap()
        }

        fn receive(&self, bytes: &[u8]) -> usize {
            self.uart().receive(bytes)
        }

        fn output(&self) -> Vec<u8> {
            self.out.0.lock().unwrap().clone()
        }

        fn set_line(&self, divisor: u16, lcr: u8) {
            self.outb(LCR, LCR_DLAB);
            self.outb(RBR_THR_DLL, divisor.to_le_bytes()[0]);
            self.outb(IER_DLM, divisor.to_le_bytes()[1]);
            self.outb(LCR, lcr);
        }
    }

    /// 9600 baud 8N1: 4 characters of 10 bits = 40 / 9600 s.
    const TIMEOUT_9600_8N1: Nanos = 4_166_667;

    #[test]
    fn reset_state_matches_the_datasheet() {
        let r = Rig::new();
        assert_eq!(r.inb(IER_DLM), 0);
        assert_eq!(r.iir(), 0x01);
        assert_eq!(r.inb(LCR), 0);
        assert_eq!(r.inb(MCR), 0);
        assert_eq!(r.inb(LSR), 0x60);
        assert_eq!(r.inb(MSR), 0xB0, "CTS, DSR, DCD asserted; no deltas");
        assert!(!r.line.level());
        assert_eq!(r.uart().access_sizes(), AccessSizes::BYTE);
    }

    #[test]
    fn linux_8250_autoconfig_sees_a_16550a() {
        let r = Rig::new();
        // Existence test: IER keeps its low nibble only.
        r.outb(IER_DLM, 0);
        assert_eq!(r.inb(IER_DLM) & 0x0F, 0);
        r.outb(IER_DLM, 0x0F);
        assert_eq!(r.inb(IER_DLM) & 0x0F, 0x0F);
        // XScale UUE probe: IER bit 6 must not stick.
        r.outb(IER_DLM, 0xFF);
        assert_eq!(r.inb(IER_DLM), 0x0F);
        r.outb(IER_DLM, 0);
        // Loopback test: RTS -> CTS, OUT2 -> DCD.
        let save_mcr = r.inb(MCR);
        r.outb(MCR, MCR_LOOP | MCR_OUT2 | MCR_RTS);
        assert_eq!(r.inb(MSR) & 0xF0, 0x90);
        r.outb(MCR, save_mcr);
        // FIFO type: EFR write (FCR with LCR=0xBF), then FIFO enable: IIR top bits 11.
        r.outb(LCR, 0xBF);
        r.outb(IIR_FCR, 0);
        r.outb(LCR, 0);
        r.outb(IIR_FCR, FCR_ENABLE);
        assert_eq!(r.iir() >> 6, 3);
        // No EFR behind IIR when DLAB is set.
        r.outb(LCR, 0x80);
        assert_ne!(r.iir(), 0);
        // Not a 16750: IIR bit 5 stays clear with the 64-byte FIFO bit written.
        r.outb(LCR, 0);
        r.outb(IIR_FCR, FCR_ENABLE | 0x20);
        assert_eq!(r.iir() & 0x20, 0);
        r.outb(LCR, 0x80);
        r.outb(IIR_FCR, FCR_ENABLE | 0x20);
        assert_eq!(r.iir() & 0x20, 0);
    }

    #[test]
    fn scratch_and_divisor_latch() {
        let r = Rig::new();
        for v in 0..=255u8 {
            r.outb(SCR, v);
            assert_eq!(r.inb(SCR), v);
        }
        r.outb(IER_DLM, 0x05);
        r.outb(LCR, 0x83);
        r.outb(RBR_THR_DLL, 0x34);
        r.outb(IER_DLM, 0x12);
        assert_eq!(r.inb(RBR_THR_DLL), 0x34);
        assert_eq!(r.inb(IER_DLM), 0x12);
        assert_eq!(r.inb(LCR), 0x83);
        assert!(r.output().is_empty(), "a DLL write is not a THR write");
        r.outb(LCR, 0x03);
        assert_eq!(r.inb(IER_DLM), 0x05, "a DLM write is not an IER write");
        assert_eq!(r.uart().divisor, 0x1234);
        // IIR/FCR and LSR are not banked by DLAB.
        r.outb(LCR, 0x83);
        r.outb(IIR_FCR, FCR_ENABLE);
        assert_eq!(r.iir(), 0xC1);
        assert_eq!(r.inb(LSR), 0x60);
    }

    #[test]
    fn transmit_goes_to_the_sink_at_once_whole_bytes_whatever_the_word_length() {
        let r = Rig::new();
        r.outb(LCR, 0x03);
        r.outb(RBR_THR_DLL, b'h');
        r.outb(RBR_THR_DLL, b'i');
        assert_eq!(r.output(), b"hi");
        assert_eq!(r.inb(LSR), LSR_THRE | LSR_TEMT);
        // LCR at its reset value (5-bit words), as unconfigured guests leave it.
        r.outb(LCR, 0x00);
        r.outb(RBR_THR_DLL, 0xC1);
        assert_eq!(r.output(), [b'h', b'i', 0xC1]);
    }

    #[test]
    fn thre_interrupt_rearm_rules() {
        let r = Rig::new();
        r.outb(IER_DLM, IER_ETBEI);
        assert!(r.line.level());
        assert_eq!(r.iir(), 0x02);
        // The IIR read that reported THRE acknowledged it.
        assert!(!r.line.level());
        assert_eq!(r.iir(), 0x01);
        // Rewriting the same IER value is no rising edge of ETBEI.
        r.outb(IER_DLM, IER_ETBEI);
        assert_eq!(r.iir(), 0x01);
        // Linux's UART_BUG_THRE probe: disable, re-enable: THRE is raised again.
        r.outb(IER_DLM, 0);
        r.outb(IER_DLM, IER_ETBEI);
        assert_eq!(r.iir(), 0x02);
        r.outb(IER_DLM, 0);
        // Linux's UART_BUG_TXEN probe: enable THRI, LSR shows TEMT, IIR must show THRE.
        r.outb(IER_DLM, IER_ETBEI);
        assert_ne!(r.inb(LSR) & LSR_TEMT, 0);
        assert_eq!(r.iir() & 0x01, 0);
        r.outb(IER_DLM, 0);
        assert!(!r.line.level());

        // Each THR write drops THRE and raises it again when the byte leaves: one edge.
        r.outb(IER_DLM, IER_ETBEI);
        r.line.take_rising_edges();
        r.outb(RBR_THR_DLL, b'a');
        r.outb(RBR_THR_DLL, b'b');
        assert_eq!(r.line.take_rising_edges(), 2);
        assert!(r.line.level());
        assert_eq!(r.iir(), 0x02);
        assert_eq!(r.iir(), 0x01);
        r.outb(RBR_THR_DLL, b'c');
        assert_eq!(r.iir(), 0x02, "a THR write re-arms THRE");
        // Disabling ETBEI withdraws the request.
        r.outb(IER_DLM, 0);
        assert!(!r.line.level());
        assert_eq!(r.iir(), 0x01);
    }

    #[test]
    fn interrupt_priorities() {
        let r = Rig::new();
        r.outb(IIR_FCR, FCR_ENABLE);
        r.outb(IER_DLM, 0x0F);
        r.uart().set_modem_inputs(ModemInputs {
            cts: false,
            ..ModemInputs::default()
        });
        assert!(r.uart().receive_frame(
            b'x',
            LineErrors {
                parity: true,
                framing: false
            }
        ));
        // All four sources pending: line status first.
        assert_eq!(r.iir(), 0xC6);
        assert_eq!(
            r.inb(LSR),
            LSR_DR | LSR_PE | LSR_THRE | LSR_TEMT | LSR_FIFO_ERROR
        );
        // Then received data.
        assert_eq!(r.iir(), 0xC4);
        assert_eq!(r.inb(RBR_THR_DLL), b'x');
        // Then THRE (acknowledged by this very read).
        assert_eq!(r.iir(), 0xC2);
        // Then modem status, cleared by reading MSR.
        assert_eq!(r.iir(), 0xC0);
        assert!(r.line.level());
        assert_eq!(r.inb(MSR), MSR_DSR | MSR_DCD | MSR_DCTS);
        assert_eq!(r.iir(), 0xC1);
        assert!(!r.line.level());
    }

    #[test]
    fn line_status_outranks_timeout_which_outranks_thre() {
        let r = Rig::new();
        r.set_line(12, 0x03);
        r.outb(IIR_FCR, FCR_ENABLE | 0xC0);
        r.outb(IER_DLM, IER_ERBFI | IER_ETBEI | IER_ELSI);
        assert!(r.uart().receive_frame(
            b'a',
            LineErrors {
                parity: false,
                framing: true
            }
        ));
        r.clock.advance_to(TIMEOUT_9600_8N1);
        assert_eq!(r.iir(), 0xC6);
        assert_eq!(r.inb(LSR) & LSR_FE, LSR_FE);
        assert_eq!(r.iir(), 0xCC);
        assert_eq!(r.inb(RBR_THR_DLL), b'a');
        assert_eq!(r.iir(), 0xC2);
        assert_eq!(r.iir(), 0xC1);
    }

    #[test]
    fn rx_fifo_trigger_levels() {
        for (bits, level) in [(0x00u8, 1usize), (0x40, 4), (0x80, 8), (0xC0, 14)] {
            let r = Rig::new();
            r.outb(IIR_FCR, FCR_ENABLE | bits);
            r.outb(IER_DLM, IER_ERBFI);
            assert_eq!(r.receive(&vec![b'.'; level - 1]), level - 1);
            assert_eq!(r.iir(), 0xC1, "below trigger level {level}");
            assert!(!r.line.level());
            assert_eq!(r.receive(b"!"), 1);
            assert_eq!(r.iir(), 0xC4, "at trigger level {level}");
            assert!(r.line.level());
            r.inb(RBR_THR_DLL);
            assert_eq!(r.iir(), 0xC1, "back below trigger level {level}");
            assert!(!r.line.level());
        }
    }

    #[test]
    fn fifo_control_register() {
        let r = Rig::new();
        r.outb(IIR_FCR, FCR_ENABLE);
        assert_eq!(r.receive(b"hello"), 5);
        r.outb(IIR_FCR, FCR_ENABLE | FCR_RX_RESET);
        assert_eq!(r.inb(LSR) & LSR_DR, 0, "RX reset empties the FIFO");
        assert_eq!(r.uart().rx_space(), FIFO_SIZE);
        r.outb(IIR_FCR, FCR_ENABLE | FCR_TX_RESET);
        assert_eq!(r.inb(LSR), 0x60);
        assert_eq!(r.iir() & 0xC0, 0xC0);

        assert_eq!(r.receive(b"abc"), 3);
        r.outb(IIR_FCR, 0);
        assert_eq!(r.iir(), 0x01, "16450 mode: no FIFO bits");
        assert_eq!(r.inb(LSR) & LSR_DR, 0, "disabling the FIFOs empties them");
        assert_eq!(r.uart().rx_space(), 1);

        // With FCR0 clear the other bits are not programmed.
        r.outb(IIR_FCR, 0xC0);
        assert_eq!(r.iir(), 0x01);
        assert_eq!(r.receive(b"z"), 1);
        // Entering FIFO mode empties the 16450 receiver buffer too.
        r.outb(IIR_FCR, FCR_ENABLE);
        assert_eq!(r.inb(LSR) & LSR_DR, 0);
        r.outb(IER_DLM, IER_ERBFI);
        r.receive(b"1");
        assert_eq!(
            r.iir(),
            0xC4,
            "trigger level 1: the earlier 0xC0 did not stick"
        );
    }

    #[test]
    fn mode_16450_has_one_byte_receiver_and_no_timeout() {
        let r = Rig::new();
        r.outb(IER_DLM, IER_ERBFI);
        assert_eq!(r.receive(b"ab"), 1);
        assert_eq!(r.iir(), 0x04);
        assert_eq!(r.inb(LSR), 0x61);
        r.clock.advance_by(NANOS_PER_SEC);
        assert_eq!(r.iir(), 0x04);
        assert_eq!(r.inb(RBR_THR_DLL), b'a');
        assert_eq!(r.iir(), 0x01);
        assert_eq!(r.inb(LSR), 0x60);
        // An empty receiver returns the last character again.
        assert_eq!(r.inb(RBR_THR_DLL), b'a');
    }

    #[test]
    fn character_timeout_after_four_character_times() {
        let r = Rig::new();
        r.set_line(12, 0x03);
        r.outb(IIR_FCR, FCR_ENABLE | 0xC0);
        r.outb(IER_DLM, IER_ERBFI);
        let t0 = 1_000_000;
        r.clock.advance_to(t0);
        assert_eq!(r.receive(b"abc"), 3);
        r.clock.advance_to(t0 + TIMEOUT_9600_8N1 - 1);
        assert_eq!(r.iir(), 0xC1);
        assert!(!r.line.level());
        r.clock.advance_to(t0 + TIMEOUT_9600_8N1);
        assert!(r.line.level());
        assert_eq!(r.iir(), 0xCC);
        // Reading one character clears it and restarts the period from the read.
        let t1 = t0 + TIMEOUT_9600_8N1 + 500;
        r.clock.advance_to(t1);
        assert_eq!(r.inb(RBR_THR_DLL), b'a');
        assert_eq!(r.iir(), 0xC1);
        assert!(!r.line.level());
        r.clock.advance_to(t1 + TIMEOUT_9600_8N1 - 1);
        assert_eq!(r.iir(), 0xC1);
        r.clock.advance_to(t1 + TIMEOUT_9600_8N1);
        assert_eq!(r.iir(), 0xCC);
        // Emptying the FIFO ends it for good.
        r.inb(RBR_THR_DLL);
        r.inb(RBR_THR_DLL);
        r.clock.advance_by(10 * TIMEOUT_9600_8N1);
        assert_eq!(r.iir(), 0xC1);
        assert_eq!(r.clock.next_deadline(), None);
    }

    #[test]
    fn character_timeout_restarts_on_each_received_character() {
        let r = Rig::new();
        r.set_line(12, 0x03);
        r.outb(IIR_FCR, FCR_ENABLE | 0xC0);
        r.outb(IER_DLM, IER_ERBFI);
        r.receive(b"a");
        let half = TIMEOUT_9600_8N1 / 2;
        r.clock.advance_to(half);
        r.receive(b"b");
        r.clock.advance_to(TIMEOUT_9600_8N1);
        assert_eq!(r.iir(), 0xC1);
        r.clock.advance_to(half + TIMEOUT_9600_8N1 - 1);
        assert_eq!(r.iir(), 0xC1);
        r.clock.advance_to(half + TIMEOUT_9600_8N1);
        assert_eq!(r.iir(), 0xCC);
    }

    #[test]
    fn character_timeout_follows_the_frame_format_and_baud_rate() {
        // (divisor, LCR, four character times in ns, from the datasheet's frame arithmetic)
        let cases: [(u16, u8, Nanos); 4] = [
            // 115200 baud, 5 data bits, parity, 1.5 stop bits: 8.5 bits per character.
            (1, 0x0C, 295_139),
            // 115200 baud 7E2: 11 bits per character.
            (1, 0x1E, 381_945),
            // 2400 baud 8N1.
            (48, 0x03, 16_666_667),
            // Divisor 0 is timed as 65536: 40 bits at 1.8432 MHz / 16 / 65536.
            (0, 0x03, 22_755_555_556),
        ];
        for (divisor, lcr, timeout) in cases {
            let r = Rig::new();
            r.set_line(divisor, lcr);
            r.outb(IIR_FCR, FCR_ENABLE | 0xC0);
            r.outb(IER_DLM, IER_ERBFI);
            r.receive(b"x");
            r.clock.advance_to(timeout - 1);
            assert_eq!(r.iir(), 0xC1, "divisor {divisor} LCR {lcr:#x}: early");
            r.clock.advance_to(timeout);
            assert_eq!(r.iir(), 0xCC, "divisor {divisor} LCR {lcr:#x}: due");
        }
    }

    #[test]
    fn changing_the_baud_rate_re_times_a_running_timeout() {
        let r = Rig::new();
        r.set_line(12, 0x03);
        r.outb(IIR_FCR, FCR_ENABLE | 0xC0);
        r.outb(IER_DLM, IER_ERBFI);
        r.receive(b"x");
        r.clock.advance_to(1000);
        // 115200 8N1: 40 bits = 347 222.2 ns, counted from the character's arrival at 0.
        r.set_line(1, 0x03);
        r.clock.advance_to(347_222);
        assert_eq!(r.iir(), 0xC1);
        r.clock.advance_to(347_223);
        assert_eq!(r.iir(), 0xCC);
    }

    #[test]
    fn timeout_interrupt_is_masked_by_erbfi() {
        let r = Rig::new();
        r.set_line(12, 0x03);
        r.outb(IIR_FCR, FCR_ENABLE | 0xC0);
        r.receive(b"x");
        r.clock.advance_to(TIMEOUT_9600_8N1);
        assert_eq!(r.iir(), 0xC1);
        assert!(!r.line.level());
        r.outb(IER_DLM, IER_ERBFI);
        assert_eq!(r.iir(), 0xCC);
        assert!(r.line.level());
    }

    #[test]
    fn overrun_in_fifo_mode_keeps_the_fifo_and_loses_the_new_character() {
        let r = Rig::new();
        r.outb(IIR_FCR, FCR_ENABLE);
        r.outb(MCR, MCR_LOOP);
        r.outb(IER_DLM, IER_ELSI);
        for i in 0..16u8 {
            r.outb(RBR_THR_DLL, i);
        }
        assert_eq!(r.iir(), 0xC1);
        r.outb(RBR_THR_DLL, 99);
        assert_eq!(r.iir(), 0xC6);
        assert!(r.line.level());
        assert_eq!(r.inb(LSR), LSR_DR | LSR_OE | LSR_THRE | LSR_TEMT);
        assert_eq!(r.iir(), 0xC1, "reading LSR clears the overrun");
        assert!(!r.line.level());
        assert_eq!(r.inb(LSR), LSR_DR | LSR_THRE | LSR_TEMT);
        let got: Vec<u8> = (0..16).map(|_| r.inb(RBR_THR_DLL)).collect();
        assert_eq!(got, (0..16).collect::<Vec<u8>>());
        assert_eq!(r.inb(LSR), 0x60);
        assert!(r.output().is_empty(), "loopback does not reach the line");
    }

    #[test]
    fn overrun_in_16450_mode_overwrites_the_holding_register() {
        let r = Rig::new();
        r.outb(MCR, MCR_LOOP);
        r.outb(RBR_THR_DLL, 1);
        r.outb(RBR_THR_DLL, 2);
        assert_eq!(r.inb(LSR), LSR_DR | LSR_OE | LSR_THRE | LSR_TEMT);
        assert_eq!(r.inb(RBR_THR_DLL), 2);
        assert_eq!(r.inb(LSR), 0x60);
    }

    #[test]
    fn loopback_routes_mcr_outputs_to_msr_inputs_with_deltas() {
        let r = Rig::new();
        r.outb(MCR, MCR_LOOP);
        // Leaving the terminal's CTS/DSR/DCD for four inactive loopback lines.
        assert_eq!(r.inb(MSR), MSR_DCTS | MSR_DDSR | MSR_DDCD);
        assert_eq!(r.inb(MSR), 0);
        r.outb(MCR, MCR_LOOP | MCR_DTR);
        assert_eq!(r.inb(MSR), MSR_DSR | MSR_DDSR);
        r.outb(MCR, MCR_LOOP | MCR_RTS);
        assert_eq!(r.inb(MSR), MSR_CTS | MSR_DCTS | MSR_DDSR);
        r.outb(MCR, MCR_LOOP | MCR_OUT1);
        assert_eq!(r.inb(MSR), MSR_RI | MSR_DCTS, "RI rising sets no TERI");
        r.outb(MCR, MCR_LOOP | MCR_OUT2);
        assert_eq!(r.inb(MSR), MSR_DCD | MSR_TERI | MSR_DDCD);
        assert_eq!(r.inb(MCR), MCR_LOOP | MCR_OUT2);
        // Modem status interrupt from loopback changes, cleared by reading MSR.
        r.outb(IER_DLM, IER_EDSSI);
        assert_eq!(r.iir(), 0x01);
        r.outb(MCR, MCR_LOOP | MCR_OUT2 | MCR_DTR);
        assert_eq!(r.iir(), 0x00);
        assert!(r.line.level());
        r.inb(MSR);
        assert_eq!(r.iir(), 0x01);
        assert!(!r.line.level());
        // Loopback data comes back through the receiver.
        r.outb(RBR_THR_DLL, b'L');
        assert_eq!(r.inb(LSR) & LSR_DR, LSR_DR);
        assert_eq!(r.inb(RBR_THR_DLL), b'L');
        assert!(r.output().is_empty());
        // Leaving loopback: the terminal's lines are back.
        r.outb(MCR, 0);
        assert_eq!(r.inb(MSR) & 0xF0, 0xB0);
        r.outb(RBR_THR_DLL, b'T');
        assert_eq!(r.output(), b"T");
    }

    #[test]
    fn external_modem_inputs_raise_deltas() {
        let r = Rig::new();
        r.outb(IER_DLM, IER_EDSSI);
        let mut inputs = ModemInputs {
            ri: true,
            ..ModemInputs::default()
        };
        r.uart().set_modem_inputs(inputs);
        assert_eq!(r.iir(), 0x01, "RI rising is no event");
        inputs.ri = false;
        r.uart().set_modem_inputs(inputs);
        assert_eq!(r.iir(), 0x00);
        assert_eq!(r.inb(MSR), 0xB0 | MSR_TERI);
        inputs.dcd = false;
        inputs.dsr = false;
        r.uart().set_modem_inputs(inputs);
        assert_eq!(r.inb(MSR), MSR_CTS | MSR_DDCD | MSR_DDSR);
        assert_eq!(r.iir(), 0x01);
        // Hidden while in loopback, visible (with deltas) after.
        r.outb(MCR, MCR_LOOP | MCR_RTS);
        r.inb(MSR);
        r.uart().set_modem_inputs(ModemInputs::default());
        assert_eq!(r.inb(MSR), MSR_CTS);
        r.outb(MCR, 0);
        assert_eq!(r.inb(MSR), 0xB0 | MSR_DDSR | MSR_DDCD);
    }

    #[test]
    fn receive_takes_only_what_fits_and_notifies_when_room_returns() {
        let r = Rig::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        r.uart().set_rx_ready_notifier(Some(Box::new(move || {
            c.fetch_add(1, Ordering::SeqCst);
        })));
        assert_eq!(r.uart().rx_space(), 1, "16450 mode holds one character");
        r.outb(IIR_FCR, FCR_ENABLE);
        let data: Vec<u8> = (0..20).collect();
        assert_eq!(r.receive(&data), 16);
        assert_eq!(r.uart().rx_space(), 0);
        assert_eq!(r.receive(&data[16..]), 0);
        assert_eq!(calls.load(Ordering::SeqCst), 0);
        assert_eq!(r.inb(RBR_THR_DLL), 0);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(r.inb(RBR_THR_DLL), 1);
        assert_eq!(calls.load(Ordering::SeqCst), 1, "only after a refusal");
        assert_eq!(r.receive(&data[16..]), 2);
        assert_eq!(r.inb(LSR) & LSR_OE, 0, "host input never overruns");
        let rest: Vec<u8> = (0..16).map(|_| r.inb(RBR_THR_DLL)).collect();
        assert_eq!(rest, (2..18).collect::<Vec<u8>>());
        assert_eq!(calls.load(Ordering::SeqCst), 2);

        // In loopback the receiver is off the line.
        r.outb(MCR, MCR_LOOP);
        assert_eq!(r.uart().rx_space(), 0);
        assert_eq!(r.receive(b"q"), 0);
        r.outb(MCR, 0);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        assert_eq!(r.receive(b"q"), 1);
    }

    #[test]
    fn character_errors_travel_with_their_character() {
        let r = Rig::new();
        r.outb(IIR_FCR, FCR_ENABLE);
        r.outb(IER_DLM, IER_ELSI);
        r.receive(b"a");
        assert!(r.uart().receive_frame(
            b'b',
            LineErrors {
                parity: true,
                framing: false
            }
        ));
        r.receive(b"c");
        // The errored character is not at the top yet; only the FIFO error bit shows.
        assert_eq!(r.iir(), 0xC1);
        assert_eq!(r.inb(LSR), 0xE1);
        assert_eq!(r.inb(RBR_THR_DLL), b'a');
        assert_eq!(r.iir(), 0xC6);
        assert_eq!(r.inb(LSR), 0xE5);
        assert_eq!(r.iir(), 0xC1);
        // Bit 7 stays while the errored character is still in the FIFO...
        assert_eq!(r.inb(LSR), 0xE1);
        assert_eq!(r.inb(RBR_THR_DLL), b'b');
        // ...and until the LSR read after it has left.
        assert_eq!(r.inb(LSR), 0xE1);
        assert_eq!(r.inb(LSR), 0x61);
        assert_eq!(r.inb(RBR_THR_DLL), b'c');

        assert!(r.uart().receive_break());
        assert_eq!(r.inb(LSR), LSR_DR | LSR_BI | 0x60 | LSR_FIFO_ERROR);
        assert_eq!(r.inb(RBR_THR_DLL), 0);
        assert!(r.uart().receive_frame(
            b'f',
            LineErrors {
                parity: false,
                framing: true
            }
        ));
        assert_eq!(r.inb(LSR) & LSR_FE, LSR_FE);

        // 16450 mode has no FIFO error bit.
        let r = Rig::new();
        assert!(r.uart().receive_frame(
            b'p',
            LineErrors {
                parity: true,
                framing: false
            }
        ));
        assert_eq!(r.inb(LSR), LSR_DR | LSR_PE | 0x60);
        assert_eq!(r.inb(LSR), LSR_DR | 0x60);
    }

    #[test]
    fn reset_returns_to_the_reset_state_but_keeps_divisor_and_scratch() {
        let r = Rig::new();
        r.set_line(3, 0x1B);
        r.outb(SCR, 0x77);
        r.outb(IIR_FCR, 0xC1);
        r.outb(IER_DLM, 0x0F);
        r.outb(MCR, 0x1F);
        r.receive(b"xyz");
        assert!(r.line.level());
        r.uart().reset();
        assert!(!r.line.level());
        assert_eq!(r.inb(IER_DLM), 0);
        assert_eq!(r.iir(), 0x01);
        assert_eq!(r.inb(LCR), 0);
        assert_eq!(r.inb(MCR), 0);
        assert_eq!(r.inb(LSR), 0x60);
        assert_eq!(r.inb(MSR), 0xB0);
        assert_eq!(r.inb(SCR), 0x77);
        assert_eq!(r.uart().divisor, 3);
        assert_eq!(r.clock.next_deadline(), None);
    }

    #[test]
    fn wide_accesses_are_split_into_bytes_by_the_bus() {
        let r = Rig::new();
        r.bus.write_value(COM1_BASE + u64::from(LCR), 2, 0x0B03);
        assert_eq!(r.inb(LCR), 0x03);
        assert_eq!(r.inb(MCR), 0x0B);
        assert_eq!(r.bus.read_value(COM1_BASE + u64::from(LCR), 2), 0x0B03);
    }

    #[test]
    fn snapshot_round_trip_and_pending_timeout_fires_after_restore() {
        let clock = Clock::new(0);
        let a = Rig::on_clock(clock.clone());
        a.set_line(12, 0x03);
        a.outb(IIR_FCR, FCR_ENABLE | 0x80);
        a.outb(IER_DLM, 0x0F);
        a.outb(MCR, MCR_OUT2 | MCR_DTR);
        a.outb(SCR, 0x5A);
        clock.advance_to(1000);
        a.receive(b"hello");
        a.uart().set_modem_inputs(ModemInputs {
            cts: false,
            ..ModemInputs::default()
        });
        let b = Rig::on_clock(clock.clone());
        check_round_trip(&*a.uart(), &mut *b.uart()).unwrap();
        drop(a);
        assert!(b.line.level(), "restore re-drives the interrupt line");
        assert_eq!(b.inb(SCR), 0x5A);
        assert_eq!(b.inb(MCR), MCR_OUT2 | MCR_DTR);
        assert_eq!(b.inb(LCR), 0x03);
        // THRE (enabled, THR empty) is pending; below trigger level 8, no RDA yet.
        assert_eq!(b.iir(), 0xC2);
        assert_eq!(b.iir(), 0xC0, "the modem delta survived");
        assert_eq!(b.inb(MSR), MSR_DSR | MSR_DCD | MSR_DCTS);
        clock.advance_to(1000 + TIMEOUT_9600_8N1 - 1);
        assert_eq!(b.iir(), 0xC1);
        clock.advance_to(1000 + TIMEOUT_9600_8N1);
        assert_eq!(
            b.iir(),
            0xCC,
            "the armed timeout fires in the restored UART"
        );
        let got: Vec<u8> = (0..5).map(|_| b.inb(RBR_THR_DLL)).collect();
        assert_eq!(got, b"hello");
        b.outb(RBR_THR_DLL, b'!');
        assert_eq!(b.output(), b"!");
    }

    /// A hand-made uart16550 payload, to check what restore refuses.
    struct Forged {
        ier: u8,
        fcr: u8,
        rx: Vec<(u8, u8)>,
        timeout_since: Option<u64>,
    }

    impl Snapshot for Forged {
        fn snapshot_id(&self) -> &'static str {
            "uart16550"
        }
        fn snapshot_version(&self) -> u16 {
            1
        }
        fn save_state(&self, w: &mut StateWriter) {
            for v in [self.ier, 0x03, 0, 0, self.fcr] {
                w.u8(v);
            }
            w.u16(12);
            w.u8(0);
            let flat: Vec<u8> = self.rx.iter().flat_map(|&(b, f)| [b, f]).collect();
            w.var_bytes(&flat);
            w.u8(0);
            w.bool(false);
            w.bool(false);
            w.bool(false);
            w.opt_u64(self.timeout_since);
            w.u8(0xB0);
            w.u8(0xB0);
        }
        fn restore_state(&mut self, _: &mut StateReader<'_>, _: u16) -> Result<(), SnapshotError> {
            unreachable!()
        }
    }

    fn forged(ier: u8, fcr: u8, rx: &[(u8, u8)], timeout_since: Option<u64>) -> Vec<u8> {
        snapshot::save(&Forged {
            ier,
            fcr,
            rx: rx.to_vec(),
            timeout_since,
        })
    }

    #[test]
    fn restore_refuses_inconsistent_state_without_changing_the_device() {
        let r = Rig::new();
        r.outb(SCR, 0x42);
        let before = snapshot::save(&*r.uart());
        let good = forged(0x01, FCR_ENABLE, &[(b'a', 0)], Some(5));
        assert!(snapshot::restore(&mut *r.uart(), &good).is_ok());
        r.uart().reset();
        snapshot::restore(&mut *r.uart(), &before).unwrap();
        let bad = [
            forged(0x10, 0, &[], None),
            forged(0x00, 0x02, &[], None),
            forged(0x00, 0, &[(1, 0), (2, 0)], None),
            forged(0x00, FCR_ENABLE, &[(1, 0x20)], None),
            forged(0x00, FCR_ENABLE, &[], Some(5)),
            forged(0x00, 0, &[(1, 0)], Some(5)),
        ];
        for blob in bad {
            let err = snapshot::restore(&mut *r.uart(), &blob);
            assert!(matches!(err, Err(SnapshotError::Invalid(_))), "{err:?}");
            assert_eq!(snapshot::save(&*r.uart()), before);
        }
        let seventeen = vec![(0u8, 0u8); 17];
        let err = snapshot::restore(&mut *r.uart(), &forged(0, FCR_ENABLE, &seventeen, None));
        assert!(matches!(err, Err(SnapshotError::Invalid(_))));
    }

    #[test]
    fn every_register_takes_every_value() {
        let r = Rig::new();
        for dlab in [0u8, LCR_DLAB] {
            for reg in 0..8u8 {
                for v in 0..=255u8 {
                    r.outb(LCR, dlab);
                    r.outb(reg, v);
                    for rd in 0..8u8 {
                        r.inb(rd);
                    }
                    r.receive(&[v]);
                    r.clock.advance_by(1_000_000);
                }
            }
        }
        // Offsets past 7 (a board that registers a larger range) alias, never panic.
        let mut u = r.uart();
        let mut data = [0u8; 4];
        u.read(
            BusAddress {
                base: 0,
                offset: u64::MAX,
            },
            &mut data,
        );
        u.write(
            BusAddress {
                base: 0,
                offset: u64::MAX - 1,
            },
            &[1, 2, 3],
        );
        u.read(BusAddress { base: 0, offset: 0 }, &mut []);
    }

    #[test]
    fn random_access_keeps_invariants() {
        let r = Rig::new();
        let mut seed: u64 = 0x2545_F491_4F6C_DD1D;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..50_000 {
            let x = next();
            let reg = (x & 7) as u8;
            let v = (x >> 8) as u8;
            match (x >> 16) % 8 {
                0..=2 => r.outb(reg, v),
                3..=5 => {
                    r.inb(reg);
                }
                6 => {
                    let n = ((x >> 24) % 20) as usize;
                    r.receive(&vec![v; n]);
                }
                _ => r.clock.advance_by((x >> 24) % 10_000_000),
            }
            let u = r.uart();
            assert!(u.rx.len() <= FIFO_SIZE);
            assert!(u.fifo_enabled() || u.rx.len() <= 1);
            assert_eq!(r.line.level(), u.irq_pending());
            let blob = snapshot::save(&*u);
            drop(u);
            if x % 997 == 0 {
                snapshot::restore(&mut *r.uart(), &blob).unwrap();
            }
        }
    }

    #[test]
    fn end_to_end_through_a_unix_socket_backend_and_event_loop() {
        use crate::chardev::file::tests::scratch_dir;
        use crate::chardev::unix_socket::UnixSocketBackend;
        use std::io::{Read, Write};
        use std::time::{Duration, Instant};

        const SERIAL: mio::Token = mio::Token(1);
        const WAKE: mio::Token = mio::Token(2);
        let dir = scratch_dir("uart-e2e");
        let mut poll = mio::Poll::new().unwrap();
        let mut events = mio::Events::with_capacity(8);
        let mut backend = UnixSocketBackend::bind(dir.join("com1.sock")).unwrap();
        backend.register(poll.registry(), SERIAL).unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), WAKE).unwrap());

        let clock = Clock::new(0);
        let line = Arc::new(LatchedLine::new());
        let uart = Uart16550::new_shared(&clock, line.clone(), backend.sink());
        let w = waker.clone();
        uart.lock()
            .unwrap()
            .set_rx_ready_notifier(Some(Box::new(move || {
                let _ = w.wake();
            })));
        let bus = Bus::new(BusKind::Pio);
        let dev: SharedDevice = uart.clone();
        bus.insert("com1", COM1_BASE, UART_PORT_COUNT, dev).unwrap();
        let inb = |reg: u8| bus.read_value(COM1_BASE + u64::from(reg), 1) as u8;
        let outb = |reg: u8, v: u8| bus.write_value(COM1_BASE + u64::from(reg), 1, u64::from(v));
        outb(IIR_FCR, FCR_ENABLE);
        outb(IER_DLM, IER_ERBFI);

        let mut client = std::os::unix::net::UnixStream::connect(backend.path()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        client.write_all(b"0123456789ABCDEFGHIJ").unwrap();

        // The board's loop: handle readiness, feed the UART; the guest reads as it likes.
        let mut got = Vec::new();
        let mut woken = 0;
        let start = Instant::now();
        while got.len() < 20 {
            assert!(start.elapsed() < Duration::from_secs(5), "got {got:?}");
            poll.poll(&mut events, Some(Duration::from_millis(50)))
                .unwrap();
            for ev in events.iter() {
                if ev.token() == SERIAL {
                    backend.handle_ready();
                } else {
                    woken += 1;
                }
            }
            Uart16550::receive_from(&uart, &mut backend);
            assert!(uart.lock().unwrap().rx.len() <= FIFO_SIZE);
            // The guest takes one character per loop turn; the notifier wakes the loop.
            if inb(LSR) & LSR_DR != 0 {
                assert!(line.level());
                got.push(inb(RBR_THR_DLL));
            }
        }
        assert_eq!(got, b"0123456789ABCDEFGHIJ");
        assert_eq!(inb(LSR), 0x60, "no overrun");
        assert!(woken > 0, "the rx-ready notifier woke the loop");

        for &b in b"ok\n" {
            outb(RBR_THR_DLL, b);
        }
        let mut buf = [0u8; 3];
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"ok\n");
        drop(backend);
        let _ = std::fs::remove_dir_all(dir);
    }
}
