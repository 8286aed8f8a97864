//! Intel 8254 programmable interval timer, and the PC/AT system control port B.
//!
//! # Ports
//!
//! One device answers at two port ranges, which the board registers separately (or with
//! [`Pit8254::insert_into`]) and which the device tells apart by `BusAddress.base`:
//!
//! - [`PIT_BASE`] (0x40, [`PIT_LEN`] ports): offsets 0-2 are counters 0-2, offset 3 the
//!   control word (write-only; reads float to 0xFF as on the real part, whose data bus is
//!   three-stated for that address).
//! - [`PORT_B_BASE`] (0x61, [`PORT_B_LEN`] port): system control port B. Bit 0 drives counter
//!   2's GATE, bit 1 enables the speaker data path, bits 2-3 (parity and I/O channel check
//!   enables) are stored and read back. Reads add bit 4, the DRAM refresh toggle, which flips
//!   every [`REFRESH_TOGGLE_NS`] of virtual time so that firmware delay loops which count
//!   its transitions measure real (virtual) time, and bit 5, counter 2's OUT. Bits 6-7 (check
//!   errors) read as 0: this machine has neither parity nor channel check errors.
//!
//! All registers are bytes: the device declares byte access and lets the bus split wider
//! accesses.
//!
//! ```
//! use std::sync::Arc;
//! use devices::bus::{Bus, BusKind};
//! use devices::clock::Clock;
//! use devices::irq::LatchedLine;
//! use devices::timer::pit8254::Pit8254;
//!
//! let clock = Clock::new(0);
//! let irq0 = Arc::new(LatchedLine::new());
//! let pit = Pit8254::new_shared(&clock, irq0.clone());
//! let pio = Bus::new(BusKind::Pio);
//! Pit8254::insert_into(&pio, &pit).unwrap(); // 0x40-0x43 and 0x61
//!
//! // Linux's periodic tick: counter 0, mode 2, count 1193 (1000.15 Hz).
//! pio.write_value(0x43, 1, 0x34);
//! pio.write_value(0x40, 1, 1193 & 0xff);
//! pio.write_value(0x40, 1, 1193 >> 8);
//! irq0.take_rising_edges();
//! clock.advance_to(1_000_000_000);
//! assert_eq!(irq0.take_rising_edges(), 1000);
//! ```
//!
//! # Time
//!
//! Counters are never stepped. CLK pulses form a grid fixed to virtual time zero at
//! [`PIT_FREQ_HZ`]; each counter remembers the pulse at which its counting element (CE) was
//! last loaded, and its count and OUT level at any instant are closed-form functions of the
//! pulses since then. Reading a count is therefore exact at any time, and "the count is loaded
//! on the next CLK pulse after it is written" holds literally (mode 0's OUT rises N + 1 pulses
//! after a count of N is written, as the datasheet says).
//!
//! # IRQ 0
//!
//! Counter 0's OUT drives ISA IRQ 0, which a PC samples on rising edges. One clock timer is
//! armed for the next rising edge of OUT0 and nothing else: the one-pulse low phases of
//! modes 2, 4 and 5 and the falling half of mode 3 are not timed. At each rising edge the
//! line is lowered and raised again at the same instant, so a receiver sees exactly one
//! edge per period (modes 2 and 3) or per strobe (modes 0, 4). Register writes to counter 0
//! drive the line to OUT0's exact level before and after they take effect, so edges caused by
//! programming (mode 0 dropping OUT, then a later mode setting raising it) are seen as on
//! hardware. Construction and [`Pit8254::reset`] drive the line to OUT0 (high, in the power-on
//! mode 3), before any guest code runs, so the first programming causes no spurious edge.
//!
//! A guest can program counts as small as 2 (a 596 kHz rate). Timed edges are therefore
//! spaced at least [`MIN_IRQ_INTERVAL_NS`] apart, and a warning is logged once per
//! programming. In the periodic modes the edges that would come sooner are dropped (they
//! would land in the interrupt controller's single request bit anyway) and the next one
//! delivered is still a true edge of OUT0; a one-shot edge (modes 0 and 4) that would come
//! too soon after the previous edge is delayed to the bound, never lost. The count and OUT
//! that the guest reads stay exact. KVM's in-kernel PIT holds periodic timers to 200 µs by
//! default, older Xen to 0.9 ms; 20 µs (50 kHz) keeps PC-speaker sample playback through
//! IRQ 0 working while bounding host work.
//!
//! # Choices where the datasheet is silent
//!
//! - Power-on state (the datasheet calls it undefined) follows QEMU: every counter in mode 3,
//!   binary, LSB-then-MSB access, count 65536 loaded, so IRQ 0 ticks at 18.2 Hz before
//!   firmware programs it; counter 2 is stopped by its low gate.
//! - Writing a control word freezes the CE at its current value until a count is loaded, and
//!   discards latched counts and status (the counter's control logic is reset).
//! - Latched and unlatched reads share one byte pointer, as the part has one output latch per
//!   counter: a two-byte read must not be interrupted by another reader.
//! - Mode 2 with a count of 1 is illegal per the datasheet; OUT stays high and no edges come.
//!   Mode 3 with a count of 1 keeps OUT high (its low half-cycle is (N - 1) / 2 = 0 pulses).
//! - Mode 0: writing the first byte of a two-byte count stops counting and drops OUT, as the
//!   8254 datasheet says (the CHMOS 82C54's datasheet describes a variant that keeps counting
//!   when the counter has already wrapped; we follow the 8254).
//! - Mode 3 with an odd count follows the 8254 datasheet's sequence: N-1, N-3, ..., 0 while
//!   OUT is high, N-1, ..., 2 while it is low. Some second-source datasheets describe the
//!   same OUT waveform with a different count sequence.
//! - BCD counts with digits above 9 are counted at their positional value and logged.

use std::sync::{Arc, Mutex, Weak};

use log::{debug, warn};

use crate::bus::{AccessSizes, Bus, BusAddress, BusDevice, BusError};
use crate::clock::{Clock, NANOS_PER_SEC, Nanos, Timer, TimerTarget, TimerTargetRef};
use crate::irq::IrqLine;
use crate::snapshot::{Snapshot, SnapshotError, StateReader, StateWriter};

/// The counters and the control word: register this range with a length of [`PIT_LEN`].
pub const PIT_BASE: u64 = 0x40;
pub const PIT_LEN: u64 = 4;
/// System control port B: register this range with a length of [`PORT_B_LEN`].
pub const PORT_B_BASE: u64 = 0x61;
pub const PORT_B_LEN: u64 = 1;

/// The counters' CLK input on a PC: 14.31818 MHz / 12.
pub const PIT_FREQ_HZ: u64 = 1_193_182;
/// How often port B's refresh bit (bit 4) changes state.
pub const REFRESH_TOGGLE_NS: Nanos = 15_085;
/// The shortest interval between two timed IRQ 0 edges.
pub const MIN_IRQ_INTERVAL_NS: Nanos = 20_000;

const IRQ_TIMER: u32 = 0;
const CONTROL_OFFSET: u64 = 3;

const PORT_B_GATE2: u8 = 1 << 0;
const PORT_B_SPEAKER_DATA: u8 = 1 << 1;
const PORT_B_WRITABLE: u8 = 0x0f;
const PORT_B_REFRESH: u8 = 1 << 4;
const PORT_B_OUT2: u8 = 1 << 5;

/// Mode 3, LSB then MSB, binary.
const POWER_ON_CONTROL: u8 = 0x36;

/// Snapshot bound on relative tick values: far beyond any real uptime (2^60 pulses are
/// 30,000 years), small enough that no arithmetic on them can overflow.
const MAX_RELATIVE_TICKS: u64 = 1 << 60;

/// CLK pulses that have occurred by `ns` (pulse k happens at the first nanosecond at or after
/// k / PIT_FREQ_HZ seconds).
fn tick_at(ns: Nanos) -> i64 {
    let t = u128::from(ns) * u128::from(PIT_FREQ_HZ) / u128::from(NANOS_PER_SEC);
    i64::try_from(t).unwrap_or(i64::MAX)
}

/// The virtual time of CLK pulse `tick`.
fn tick_time(tick: i64) -> Nanos {
    let Ok(t) = u128::try_from(tick) else {
        return 0;
    };
    let ns = (t * u128::from(NANOS_PER_SEC)).div_ceil(u128::from(PIT_FREQ_HZ));
    Nanos::try_from(ns).unwrap_or(Nanos::MAX)
}

fn elapsed_since(t: i64, anchor: i64) -> u64 {
    u64::try_from(t.saturating_sub(anchor)).unwrap_or(0)
}

/// The value of a BCD count register, digits above 9 taken at their positional value.
fn bcd_value(raw: u16) -> u32 {
    let d = |shift: u32| u32::from((raw >> shift) & 0xf);
    d(12) * 1000 + d(8) * 100 + d(4) * 10 + d(0)
}

fn is_valid_bcd(raw: u16) -> bool {
    (0..4).all(|i| (raw >> (4 * i)) & 0xf <= 9)
}

fn to_bcd(v: u64) -> u16 {
    let digit = |div: u64| ((v / div) % 10) as u16;
    (digit(1000) << 12) | (digit(100) << 8) | (digit(10) << 4) | digit(1)
}

/// Pulses OUT stays high in each mode-3 cycle of `n`: (N + 1) / 2 for odd counts.
fn high_len(n: u32) -> u32 {
    n.div_ceil(2)
}

/// The CE value (not yet reduced to the counter's modulus) `e` pulses after `n` was loaded.
fn counting_value(mode: u8, n: u32, e: u64, modulus: u64) -> u64 {
    let n64 = u64::from(n);
    match mode {
        2 => n64 - e % n64,
        3 => {
            // Even counts step N, N-2, ..., 2 in each half-cycle; odd counts step
            // N-1, N-3, ..., 0 in the high half and N-1, ..., 2 in the low half.
            let p = e % n64;
            let h = u64::from(high_len(n));
            let q = if p < h { p } else { p - h };
            if n.is_multiple_of(2) {
                n64 - 2 * q
            } else {
                n64 - 1 - 2 * q
            }
        }
        // Modes 0, 1, 4, 5 keep counting down through zero after terminal count.
        _ => (n64 + modulus - e % modulus) % modulus,
    }
}

fn counting_out(mode: u8, n: u32, e: u64) -> bool {
    let n64 = u64::from(n);
    match mode {
        0 | 1 => e >= n64,
        2 => n < 2 || e % n64 != n64 - 1,
        3 => e % n64 < u64::from(high_len(n)),
        _ => e != n64,
    }
}

/// What a counting element is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Run {
    /// Not counting: after a control word, before a mode 1/5 trigger, or between the two
    /// bytes of a mode 0 count.
    Stopped { ce: u16, out: bool },
    /// Counting down from `n`, which stood in the CE at pulse `anchor` (for a mode 3 count
    /// loaded at a half-cycle boundary, the anchor is moved back by the high half so the
    /// cycle continues with the low half).
    Counting { n: u32, anchor: i64 },
    /// Counting from `n` suspended by a low GATE after `elapsed` pulses (modes 0, 2, 3, 4).
    Paused { n: u32, elapsed: u64 },
}

/// A transfer of the count register to the CE due at pulse `at`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Load {
    n: u32,
    at: i64,
    /// A mode 3 load at the end of a high half-cycle: the new count starts low.
    low_start: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Access {
    Lsb,
    Msb,
    Word,
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Channel {
    /// Bits 5-0 of the last control word, as written (the status byte returns them).
    control: u8,
    /// The count register as written.
    cr: u16,
    /// The write flip-flop: the LSB of a two-byte count awaiting its MSB.
    write_lsb: Option<u8>,
    /// The read flip-flop: the next two-byte read returns the MSB.
    read_msb_next: bool,
    latched_count: Option<u16>,
    latched_status: Option<u8>,
    null_count: bool,
    /// A count has been written since the control word, so triggers have something to load.
    count_written: bool,
    gate: bool,
    run: Run,
    pending: Option<Load>,
}

impl Channel {
    fn power_on(gate: bool, tick: i64) -> Channel {
        let mut ch = Channel {
            control: POWER_ON_CONTROL,
            cr: 0,
            write_lsb: None,
            read_msb_next: false,
            latched_count: None,
            latched_status: None,
            null_count: false,
            count_written: true,
            gate,
            run: Run::Stopped { ce: 0, out: true },
            pending: None,
        };
        ch.run = ch.loaded_run(Load {
            n: ch.initial_count(),
            at: tick,
            low_start: false,
        });
        ch
    }

    /// The counting mode, modes 6 and 7 being 2 and 3.
    fn mode(&self) -> u8 {
        match (self.control >> 1) & 7 {
            m @ 0..=5 => m,
            m => m - 4,
        }
    }

    fn bcd(&self) -> bool {
        self.control & 1 != 0
    }

    fn access(&self) -> Access {
        match (self.control >> 4) & 3 {
            1 => Access::Lsb,
            2 => Access::Msb,
            _ => Access::Word,
        }
    }

    fn modulus(&self) -> u64 {
        if self.bcd() { 10_000 } else { 0x1_0000 }
    }

    /// The number of pulses the count register stands for: 0 means the full range.
    fn initial_count(&self) -> u32 {
        if self.bcd() {
            match bcd_value(self.cr) {
                0 => 10_000,
                v => v,
            }
        } else if self.cr == 0 {
            0x1_0000
        } else {
            u32::from(self.cr)
        }
    }

    fn encode(&self, v: u64) -> u16 {
        let v = v % self.modulus();
        if self.bcd() { to_bcd(v) } else { v as u16 }
    }

    fn loaded_run(&self, l: Load) -> Run {
        let anchor = if l.low_start {
            l.at - i64::from(high_len(l.n))
        } else {
            l.at
        };
        if self.gate || matches!(self.mode(), 1 | 5) {
            Run::Counting { n: l.n, anchor }
        } else {
            Run::Paused {
                n: l.n,
                elapsed: elapsed_since(l.at, anchor),
            }
        }
    }

    /// The run in effect at pulse `t`, a due load applied.
    fn run_at(&self, t: i64) -> Run {
        match self.pending {
            Some(l) if l.at <= t => self.loaded_run(l),
            _ => self.run,
        }
    }

    /// Apply a load that is due by pulse `t`. Every change of state starts here, so that
    /// a load is applied with the gate and mode that held when it happened.
    fn advance(&mut self, t: i64) {
        if let Some(l) = self.pending
            && l.at <= t
        {
            self.run = self.loaded_run(l);
            self.pending = None;
            self.null_count = false;
        }
    }

    fn run_value(&self, run: Run, t: i64) -> u16 {
        let mode = self.mode();
        match run {
            Run::Stopped { ce, .. } => ce,
            Run::Counting { n, anchor } => self.encode(counting_value(
                mode,
                n,
                elapsed_since(t, anchor),
                self.modulus(),
            )),
            Run::Paused { n, elapsed } => {
                self.encode(counting_value(mode, n, elapsed, self.modulus()))
            }
        }
    }

    fn run_out(&self, run: Run, t: i64) -> bool {
        let mode = self.mode();
        match run {
            Run::Stopped { out, .. } => out,
            // A low gate forces OUT high in modes 2 and 3 and leaves it alone in 0 and 4.
            Run::Paused { n, elapsed } => matches!(mode, 2 | 3) || counting_out(mode, n, elapsed),
            Run::Counting { n, anchor } => counting_out(mode, n, elapsed_since(t, anchor)),
        }
    }

    fn count_at(&self, t: i64) -> u16 {
        self.run_value(self.run_at(t), t)
    }

    fn out_at(&self, t: i64) -> bool {
        self.run_out(self.run_at(t), t)
    }

    fn status_at(&self, t: i64) -> u8 {
        let loaded = matches!(self.pending, Some(l) if l.at <= t);
        let null = self.null_count && !loaded;
        (u8::from(self.out_at(t)) << 7) | (u8::from(null) << 6) | self.control
    }

    /// The first rising edge of OUT in `run` strictly after pulse `after`.
    fn rise_in_run(&self, run: Run, after: i64) -> Option<i64> {
        let Run::Counting { n, anchor } = run else {
            return None;
        };
        let n64 = i64::from(n);
        let e = after.saturating_sub(anchor);
        match self.mode() {
            0 | 1 => (e < n64).then(|| anchor + n64),
            2 | 3 => (n >= 2).then(|| anchor + (e.div_euclid(n64) + 1) * n64),
            _ => (e <= n64).then(|| anchor + n64 + 1),
        }
    }

    /// The first rising edge of OUT strictly after pulse `after`, a pending load included.
    /// The channel must have been advanced to a pulse at or before `after`.
    fn next_rise(&self, after: i64) -> Option<i64> {
        let Some(l) = self.pending else {
            return self.rise_in_run(self.run, after);
        };
        let loaded = self.loaded_run(l);
        if l.at > after {
            if let Some(r) = self.rise_in_run(self.run, after)
                && r < l.at
            {
                return Some(r);
            }
            if !self.run_out(self.run, l.at - 1) && self.run_out(loaded, l.at) {
                return Some(l.at);
            }
            return self.rise_in_run(loaded, l.at);
        }
        self.rise_in_run(loaded, after)
    }

    /// A control word other than a latch command.
    fn program(&mut self, control: u8, t: i64) {
        let ce = self.count_at(t);
        self.control = control & 0x3f;
        self.run = Run::Stopped {
            ce,
            out: self.mode() != 0,
        };
        self.pending = None;
        self.null_count = true;
        self.count_written = false;
        self.write_lsb = None;
        self.read_msb_next = false;
        self.latched_count = None;
        self.latched_status = None;
    }

    fn stop(&mut self, t: i64) {
        let ce = self.count_at(t);
        self.run = Run::Stopped { ce, out: false };
        self.pending = None;
    }

    fn write_byte(&mut self, v: u8, t: i64) {
        let cr = match self.access() {
            Access::Lsb => u16::from(v),
            Access::Msb => u16::from(v) << 8,
            Access::Word => match self.write_lsb.take() {
                None => {
                    self.write_lsb = Some(v);
                    if self.mode() == 0 {
                        self.stop(t);
                    }
                    return;
                }
                Some(lsb) => u16::from_le_bytes([lsb, v]),
            },
        };
        self.set_count(cr, t);
    }

    fn set_count(&mut self, cr: u16, t: i64) {
        self.cr = cr;
        self.null_count = true;
        self.count_written = true;
        if self.bcd() && !is_valid_bcd(cr) {
            debug!("i8254: BCD count {cr:#06x} has digits above 9; counted positionally");
        }
        let n = self.initial_count();
        let next = Load {
            n,
            at: t + 1,
            low_start: false,
        };
        match self.mode() {
            0 => {
                self.stop(t);
                self.pending = Some(next);
            }
            4 => self.pending = Some(next),
            // Loaded by the next trigger.
            1 | 5 => {}
            _ => {
                if let Some(p) = self.pending.as_mut() {
                    p.n = n;
                } else {
                    match self.run {
                        Run::Stopped { .. } => self.pending = Some(next),
                        // A low gate: the rising edge will load it.
                        Run::Paused { .. } => {}
                        // The current cycle (mode 2) or half-cycle (mode 3) runs out first.
                        Run::Counting { n: current, anchor } => {
                            let (at, low_start) = self.reload_point(current, anchor, t);
                            self.pending = Some(Load { n, at, low_start });
                        }
                    }
                }
            }
        }
    }

    /// Where a mode 2/3 counter counting from `n` since `anchor` next reloads after pulse `t`.
    fn reload_point(&self, n: u32, anchor: i64, t: i64) -> (i64, bool) {
        let n64 = i64::from(n);
        let e = t.saturating_sub(anchor);
        let base = anchor + e.div_euclid(n64) * n64;
        let h = i64::from(high_len(n));
        if self.mode() == 3 && e.rem_euclid(n64) < h {
            (base + h, true)
        } else {
            (base + n64, false)
        }
    }

    fn set_gate(&mut self, level: bool, t: i64) {
        if level == self.gate {
            return;
        }
        self.gate = level;
        let mode = self.mode();
        let trigger = Load {
            n: self.initial_count(),
            at: t + 1,
            low_start: false,
        };
        match (mode, level) {
            // A trigger: modes 1 and 5 start, modes 2 and 3 restart, from the count register.
            (1 | 2 | 3 | 5, true) => {
                if self.count_written {
                    self.pending = Some(trigger);
                }
            }
            (1 | 5, false) => {}
            // Modes 0 and 4 resume where they stopped.
            (_, true) => {
                if let Run::Paused { n, elapsed } = self.run {
                    let anchor = t.saturating_sub(i64::try_from(elapsed).unwrap_or(i64::MAX));
                    self.run = Run::Counting { n, anchor };
                }
            }
            (_, false) => {
                if let Run::Counting { n, anchor } = self.run {
                    self.run = Run::Paused {
                        n,
                        elapsed: elapsed_since(t, anchor),
                    };
                }
                // Modes 2 and 3 restart from the count register on the next rising edge.
                if matches!(mode, 2 | 3) {
                    self.pending = None;
                }
            }
        }
    }

    fn latch_count(&mut self, t: i64) {
        if self.latched_count.is_none() {
            self.latched_count = Some(self.count_at(t));
        }
    }

    fn latch_status(&mut self, t: i64) {
        if self.latched_status.is_none() {
            self.latched_status = Some(self.status_at(t));
        }
    }

    fn read_byte(&mut self, t: i64) -> u8 {
        if let Some(status) = self.latched_status.take() {
            return status;
        }
        let value = self.latched_count.unwrap_or_else(|| self.count_at(t));
        let [lsb, msb] = value.to_le_bytes();
        let (byte, last) = match self.access() {
            Access::Lsb => (lsb, true),
            Access::Msb => (msb, true),
            Access::Word => {
                self.read_msb_next = !self.read_msb_next;
                if self.read_msb_next {
                    (lsb, false)
                } else {
                    (msb, true)
                }
            }
        };
        if last {
            self.latched_count = None;
        }
        byte
    }
}

/// The 8254 PIT and port 0x61. Build it with [`Pit8254::new_shared`].
pub struct Pit8254 {
    clock: Clock,
    timer: Timer,
    irq0: Arc<dyn IrqLine>,
    channels: [Channel; 3],
    port_b: u8,
    /// The level last driven on IRQ 0.
    irq_level: bool,
    /// When the last timed IRQ 0 edge was delivered, for the rate bound.
    last_irq_edge: Option<Nanos>,
    throttle_warned: bool,
}

impl Pit8254 {
    /// A PIT in its power-on state whose counter 0 drives `irq0`, timed by `clock`.
    pub fn new_shared(clock: &Clock, irq0: Arc<dyn IrqLine>) -> Arc<Mutex<Pit8254>> {
        Arc::new_cyclic(|me: &Weak<Mutex<Pit8254>>| {
            let target: TimerTargetRef = me.clone();
            let timer = clock.timer(target, IRQ_TIMER);
            let t = tick_at(clock.now());
            let mut pit = Pit8254 {
                clock: clock.clone(),
                timer,
                irq0,
                channels: std::array::from_fn(|i| Channel::power_on(i != 2, t)),
                port_b: 0,
                irq_level: false,
                last_irq_edge: None,
                throttle_warned: false,
            };
            pit.reset();
            Mutex::new(pit)
        })
    }

    /// Map `pit` at both of its ranges on a port bus.
    pub fn insert_into(bus: &Bus, pit: &Arc<Mutex<Pit8254>>) -> Result<(), BusError> {
        bus.insert("i8254-pit", PIT_BASE, PIT_LEN, pit.clone())?;
        bus.insert("port-b", PORT_B_BASE, PORT_B_LEN, pit.clone())
    }

    /// Return to the power-on state (see the module documentation); IRQ 0 follows OUT0 (high).
    pub fn reset(&mut self) {
        let now = self.clock.now();
        let t = tick_at(now);
        self.port_b = 0;
        self.channels = std::array::from_fn(|i| Channel::power_on(i != 2, t));
        self.last_irq_edge = None;
        self.throttle_warned = false;
        self.sync_irq(t);
        self.rearm_irq(now);
    }

    /// The OUT level of counter `channel` (0-2) now.
    pub fn output(&self, channel: usize) -> Option<bool> {
        let t = tick_at(self.clock.now());
        self.channels.get(channel).map(|ch| ch.out_at(t))
    }

    /// Counter 2's OUT now: the tone a speaker would be driven with.
    pub fn channel2_out(&self) -> bool {
        self.channels[2].out_at(tick_at(self.clock.now()))
    }

    /// Counter 2's GATE (port B bit 0).
    pub fn channel2_gate(&self) -> bool {
        self.port_b & PORT_B_GATE2 != 0
    }

    /// Whether port B connects counter 2's OUT to the speaker (bit 1).
    pub fn speaker_data_enabled(&self) -> bool {
        self.port_b & PORT_B_SPEAKER_DATA != 0
    }

    /// The speaker's input now: counter 2's OUT gated by port B bit 1.
    pub fn speaker_level(&self) -> bool {
        self.speaker_data_enabled() && self.channel2_out()
    }

    fn sync_irq(&mut self, t: i64) {
        let out = self.channels[0].out_at(t);
        if out != self.irq_level {
            self.irq_level = out;
            self.irq0.set_level(out);
        }
    }

    /// Arm the timer for OUT0's next rising edge, no sooner than the rate bound allows.
    fn rearm_irq(&mut self, now: Nanos) {
        let cur = tick_at(now);
        let ch = &mut self.channels[0];
        ch.advance(cur);
        let Some(natural) = ch.next_rise(cur) else {
            self.timer.cancel();
            return;
        };
        let earliest = self
            .last_irq_edge
            .map_or(0, |last| last.saturating_add(MIN_IRQ_INTERVAL_NS));
        let mut deadline = tick_time(natural);
        if deadline < earliest {
            // A periodic OUT gives its first edge past the bound; a one-shot's only edge is
            // delayed to the bound rather than lost, so a guest waiting for it still wakes.
            deadline = ch
                .next_rise(tick_at(earliest - 1))
                .map_or(earliest, tick_time);
            if !self.throttle_warned {
                warn!(
                    "i8254: counter 0 (mode {}, count {}) interrupts faster than once per \
                     {MIN_IRQ_INTERVAL_NS} ns; IRQ 0 is held to that rate",
                    ch.mode(),
                    ch.initial_count()
                );
                self.throttle_warned = true;
            }
        }
        self.timer.arm(deadline);
    }

    fn write_control(&mut self, v: u8, now: Nanos, t: i64) {
        let select = usize::from(v >> 6);
        if select == 3 {
            self.read_back(v, t);
            return;
        }
        self.channels[select].advance(t);
        if (v >> 4) & 3 == 0 {
            self.channels[select].latch_count(t);
            return;
        }
        if select == 0 {
            self.sync_irq(t);
            self.throttle_warned = false;
        }
        self.channels[select].program(v, t);
        if select == 0 {
            self.sync_irq(t);
            self.rearm_irq(now);
        }
    }

    fn read_back(&mut self, v: u8, t: i64) {
        if v & 1 != 0 {
            debug!("i8254: read-back command {v:#04x} sets reserved bit 0");
        }
        let count = v & 0x20 == 0;
        let status = v & 0x10 == 0;
        for (i, ch) in self.channels.iter_mut().enumerate() {
            if v & (2 << i) == 0 {
                continue;
            }
            ch.advance(t);
            if status {
                ch.latch_status(t);
            }
            if count {
                ch.latch_count(t);
            }
        }
    }

    fn write_counter(&mut self, index: usize, v: u8, now: Nanos, t: i64) {
        self.channels[index].advance(t);
        if index == 0 {
            self.sync_irq(t);
        }
        self.channels[index].write_byte(v, t);
        if index == 0 {
            self.sync_irq(t);
            self.rearm_irq(now);
        }
    }

    fn read_port_b(&self, now: Nanos, t: i64) -> u8 {
        let refresh = if (now / REFRESH_TOGGLE_NS) % 2 == 1 {
            PORT_B_REFRESH
        } else {
            0
        };
        let out2 = if self.channels[2].out_at(t) {
            PORT_B_OUT2
        } else {
            0
        };
        (self.port_b & PORT_B_WRITABLE) | refresh | out2
    }

    fn write_port_b(&mut self, v: u8, t: i64) {
        self.port_b = v & PORT_B_WRITABLE;
        let ch = &mut self.channels[2];
        ch.advance(t);
        ch.set_gate(v & PORT_B_GATE2 != 0, t);
    }

    fn read_register(&mut self, base: u64, offset: u64) -> u8 {
        let now = self.clock.now();
        let t = tick_at(now);
        match (base, offset) {
            (PIT_BASE, 0..=2) => {
                let ch = &mut self.channels[offset as usize];
                ch.advance(t);
                ch.read_byte(t)
            }
            (PIT_BASE, CONTROL_OFFSET) => 0xff,
            (PORT_B_BASE, 0) => self.read_port_b(now, t),
            _ => {
                debug!("i8254: read at {base:#x}+{offset:#x} is not a PIT register");
                0xff
            }
        }
    }

    fn write_register(&mut self, base: u64, offset: u64, v: u8) {
        let now = self.clock.now();
        let t = tick_at(now);
        match (base, offset) {
            (PIT_BASE, 0..=2) => self.write_counter(offset as usize, v, now, t),
            (PIT_BASE, CONTROL_OFFSET) => self.write_control(v, now, t),
            (PORT_B_BASE, 0) => self.write_port_b(v, t),
            _ => debug!("i8254: write of {v:#04x} at {base:#x}+{offset:#x} dropped"),
        }
    }
}

impl BusDevice for Pit8254 {
    fn read(&mut self, at: BusAddress, data: &mut [u8]) {
        for (i, byte) in data.iter_mut().enumerate() {
            *byte = self.read_register(at.base, at.offset.wrapping_add(i as u64));
        }
    }

    fn write(&mut self, at: BusAddress, data: &[u8]) {
        for (i, &byte) in data.iter().enumerate() {
            self.write_register(at.base, at.offset.wrapping_add(i as u64), byte);
        }
    }

    fn access_sizes(&self) -> AccessSizes {
        AccessSizes::BYTE
    }
}

impl TimerTarget for Pit8254 {
    fn timer_expired(&mut self, token: u32, now: Nanos) {
        if token != IRQ_TIMER {
            return;
        }
        // The timer is only ever armed for a rising edge of OUT0: deliver it.
        if self.irq_level {
            self.irq0.set_level(false);
        }
        self.irq0.set_level(true);
        self.irq_level = true;
        self.last_irq_edge = Some(now);
        self.rearm_irq(now);
    }
}

fn read_count(r: &mut StateReader<'_>) -> Result<u32, SnapshotError> {
    let n = r.u32()?;
    if !(1..=0x1_0000).contains(&n) {
        return Err(SnapshotError::Invalid(format!("i8254 count {n}")));
    }
    Ok(n)
}

/// A tick saved relative to the current one, turned back into an absolute tick.
fn read_relative_tick(r: &mut StateReader<'_>, now_tick: i64) -> Result<i64, SnapshotError> {
    let rel = r.i64()?;
    if rel.unsigned_abs() > MAX_RELATIVE_TICKS {
        return Err(SnapshotError::Invalid(format!(
            "i8254 tick offset {rel} out of range"
        )));
    }
    Ok(now_tick - rel)
}

fn save_channel(ch: &Channel, w: &mut StateWriter, now_tick: i64) {
    w.u8(ch.control);
    w.u16(ch.cr);
    w.opt_u8(ch.write_lsb);
    w.bool(ch.read_msb_next);
    w.opt_u16(ch.latched_count);
    w.opt_u8(ch.latched_status);
    w.bool(ch.null_count);
    w.bool(ch.count_written);
    match ch.run {
        Run::Stopped { ce, out } => {
            w.u8(0);
            w.u16(ce);
            w.bool(out);
        }
        Run::Counting { n, anchor } => {
            w.u8(1);
            w.u32(n);
            w.i64(now_tick - anchor);
        }
        Run::Paused { n, elapsed } => {
            w.u8(2);
            w.u32(n);
            w.u64(elapsed);
        }
    }
    w.bool(ch.pending.is_some());
    let p = ch.pending.unwrap_or(Load {
        n: 1,
        at: now_tick,
        low_start: false,
    });
    w.u32(p.n);
    w.i64(now_tick - p.at);
    w.bool(p.low_start);
}

fn restore_channel(
    r: &mut StateReader<'_>,
    now_tick: i64,
    gate: bool,
) -> Result<Channel, SnapshotError> {
    let control = r.u8_below(0x40)?;
    if control >> 4 == 0 {
        return Err(SnapshotError::Invalid(format!(
            "i8254 control word {control:#04x} has no access mode"
        )));
    }
    let cr = r.u16()?;
    let write_lsb = r.opt_u8()?;
    let read_msb_next = r.bool()?;
    let latched_count = r.opt_u16()?;
    let latched_status = r.opt_u8()?;
    let null_count = r.bool()?;
    let count_written = r.bool()?;
    let run = match r.u8_below(3)? {
        0 => {
            let ce = r.u16()?;
            let out = r.bool()?;
            Run::Stopped { ce, out }
        }
        1 => {
            let n = read_count(r)?;
            let anchor = read_relative_tick(r, now_tick)?;
            Run::Counting { n, anchor }
        }
        _ => {
            let n = read_count(r)?;
            let elapsed = r.u64()?;
            if elapsed > MAX_RELATIVE_TICKS {
                return Err(SnapshotError::Invalid(format!(
                    "i8254 paused after {elapsed} pulses"
                )));
            }
            Run::Paused { n, elapsed }
        }
    };
    let has_pending = r.bool()?;
    let n = read_count(r)?;
    let at = read_relative_tick(r, now_tick)?;
    let low_start = r.bool()?;
    Ok(Channel {
        control,
        cr,
        write_lsb,
        read_msb_next,
        latched_count,
        latched_status,
        null_count,
        count_written,
        gate,
        run,
        pending: has_pending.then_some(Load { n, at, low_start }),
    })
}

impl Snapshot for Pit8254 {
    fn snapshot_id(&self) -> &'static str {
        "i8254-pit"
    }

    fn snapshot_version(&self) -> u16 {
        1
    }

    /// Ticks and deadlines are saved relative to the clock's present, so the state can be
    /// restored on a clock that reads a different time.
    fn save_state(&self, w: &mut StateWriter) {
        let now = self.clock.now();
        let t = tick_at(now);
        for ch in &self.channels {
            save_channel(ch, w, t);
        }
        w.u8(self.port_b);
        w.bool(self.irq_level);
        w.opt_u64(self.last_irq_edge.map(|last| now.saturating_sub(last)));
        w.opt_u64(self.timer.deadline().map(|d| d.saturating_sub(now)));
    }

    fn restore_state(
        &mut self,
        r: &mut StateReader<'_>,
        _version: u16,
    ) -> Result<(), SnapshotError> {
        let now = self.clock.now();
        let t = tick_at(now);
        let mut channels = [
            restore_channel(r, t, true)?,
            restore_channel(r, t, true)?,
            restore_channel(r, t, true)?,
        ];
        let port_b = r.u8_below(PORT_B_WRITABLE + 1)?;
        let irq_level = r.bool()?;
        let last_irq_edge = r.opt_u64()?.map(|ago| now.saturating_sub(ago));
        let deadline = r.opt_u64()?.map(|in_ns| now.saturating_add(in_ns));

        // The gates are wires: counters 0 and 1 are tied high, counter 2 follows port B.
        channels[2].gate = port_b & PORT_B_GATE2 != 0;
        self.channels = channels;
        self.port_b = port_b;
        self.irq_level = irq_level;
        self.last_irq_edge = last_irq_edge;
        self.throttle_warned = false;
        self.irq0.set_level(irq_level);
        match deadline {
            Some(d) => self.timer.arm(d),
            None => self.timer.cancel(),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::BusKind;
    use crate::irq::LatchedLine;
    use crate::snapshot::{self, check_round_trip};
    use std::ops::RangeInclusive;

    struct Rig {
        clock: Clock,
        line: Arc<LatchedLine>,
        pit: Arc<Mutex<Pit8254>>,
        bus: Bus,
    }

    impl Rig {
        fn new() -> Rig {
            Rig::starting_at(0)
        }

        fn starting_at(now: Nanos) -> Rig {
            let clock = Clock::new(now);
            let line = Arc::new(LatchedLine::new());
            let pit = Pit8254::new_shared(&clock, line.clone());
            let bus = Bus::new(BusKind::Pio);
            Pit8254::insert_into(&bus, &pit).unwrap();
            // Construction raises the line to follow OUT0; tests count edges from here.
            assert!(line.level());
            line.take_rising_edges();
            Rig {
                clock,
                line,
                pit,
                bus,
            }
        }

        fn outb(&self, port: u64, v: u8) {
            self.bus.write_value(port, 1, u64::from(v));
        }

        fn inb(&self, port: u64) -> u8 {
            self.bus.read_value(port, 1) as u8
        }

        /// Advance virtual time to CLK pulse `k`.
        fn tick(&self, k: i64) {
            self.clock.advance_to(tick_time(k));
        }

        fn now_tick(&self) -> i64 {
            tick_at(self.clock.now())
        }

        fn control(&self, ch: u8, access: u8, mode: u8, bcd: bool) {
            self.outb(
                0x43,
                (ch << 6) | (access << 4) | (mode << 1) | u8::from(bcd),
            );
        }

        fn write16(&self, ch: u8, count: u16) {
            let [lo, hi] = count.to_le_bytes();
            self.outb(0x40 + u64::from(ch), lo);
            self.outb(0x40 + u64::from(ch), hi);
        }

        fn program(&self, ch: u8, mode: u8, count: u16) {
            self.control(ch, 3, mode, false);
            self.write16(ch, count);
        }

        fn read16(&self, ch: u8) -> u16 {
            let lo = self.inb(0x40 + u64::from(ch));
            let hi = self.inb(0x40 + u64::from(ch));
            u16::from_le_bytes([lo, hi])
        }

        /// Counter latch command, then the two bytes.
        fn latched(&self, ch: u8) -> u16 {
            self.outb(0x43, ch << 6);
            self.read16(ch)
        }

        /// Read-back of the status byte alone.
        fn status(&self, ch: u8) -> u8 {
            self.outb(0x43, 0xe0 | (2 << ch));
            self.inb(0x40 + u64::from(ch))
        }

        fn out(&self, ch: u8) -> bool {
            self.status(ch) & 0x80 != 0
        }

        fn gate2(&self, high: bool) {
            self.outb(0x61, u8::from(high));
        }

        /// (count, OUT) at each pulse of `ticks`.
        fn trace(&self, ch: u8, ticks: RangeInclusive<i64>) -> Vec<(u16, bool)> {
            ticks
                .map(|k| {
                    self.tick(k);
                    (self.latched(ch), self.out(ch))
                })
                .collect()
        }

        /// The pulses of `ticks` at which IRQ 0 had a rising edge.
        fn edge_ticks(&self, ticks: RangeInclusive<i64>) -> Vec<i64> {
            ticks
                .filter(|&k| {
                    self.tick(k);
                    self.line.take_rising_edges() > 0
                })
                .collect()
        }
    }

    const H: bool = true;
    const L: bool = false;

    #[test]
    fn tick_grid_round_trips() {
        for k in [0i64, 1, 2, 1193, 65_536, 1_193_182, 10_000_000_000] {
            assert_eq!(tick_at(tick_time(k)), k);
            assert_eq!(
                tick_at(tick_time(k) - u64::from(k > 0)),
                k - i64::from(k > 0)
            );
        }
        assert_eq!(tick_time(1_193_182), NANOS_PER_SEC);
    }

    #[test]
    fn mode0_counts_down_and_raises_out_at_terminal_count() {
        let r = Rig::new();
        r.program(0, 0, 5);
        // OUT low at once; the count is not loaded before the next CLK pulse.
        assert_eq!(r.status(0), 0x40 | 0x30);
        assert!(!r.line.level());
        assert_eq!(r.clock.next_deadline(), Some(tick_time(6)));
        assert_eq!(
            r.trace(0, 1..=8),
            [
                (5, L),
                (4, L),
                (3, L),
                (2, L),
                (1, L),
                (0, H),
                (0xffff, H),
                (0xfffe, H)
            ]
        );
        assert_eq!(r.status(0), 0x80 | 0x30);
        // N + 1 pulses after the write, exactly once.
        let r = Rig::new();
        r.program(0, 0, 5);
        assert_eq!(r.edge_ticks(1..=100), [6]);
        assert!(r.line.level());
        assert_eq!(r.clock.next_deadline(), None);
    }

    #[test]
    fn mode0_first_byte_stops_counting_and_drops_out() {
        let r = Rig::new();
        r.program(0, 0, 100);
        r.tick(11);
        assert_eq!(r.latched(0), 90);
        r.outb(0x40, 0x20);
        r.tick(20);
        assert_eq!(r.latched(0), 90, "counting stops after the first byte");
        r.outb(0x40, 0x00);
        r.tick(21);
        assert_eq!(r.latched(0), 0x20);
        assert_eq!(r.edge_ticks(22..=60), [21 + 32]);

        // After terminal count, the first byte of a new count drops OUT immediately.
        r.tick(1000);
        assert!(r.out(0));
        r.outb(0x40, 3);
        assert!(!r.out(0));
        assert!(!r.line.level());
        r.outb(0x40, 0);
        let t = r.now_tick();
        assert_eq!(r.edge_ticks(t + 1..=t + 10), [t + 4]);
    }

    #[test]
    fn mode1_is_a_retriggerable_one_shot_on_gate_edges() {
        let r = Rig::new();
        r.gate2(false);
        r.program(2, 1, 3);
        assert_eq!(
            r.status(2),
            0x80 | 0x40 | 0x32,
            "OUT high, count not loaded"
        );
        r.tick(2);
        r.gate2(true);
        assert!(r.out(2), "OUT falls on the pulse after the trigger");
        assert_eq!(r.status(2) & 0x40, 0x40);
        assert_eq!(
            r.trace(2, 3..=7),
            [(3, L), (2, L), (1, L), (0, H), (0xffff, H)]
        );
        // A new count does not disturb the running one-shot; the next trigger loads it.
        r.gate2(false);
        r.write16(2, 2);
        r.tick(8);
        r.gate2(true);
        assert_eq!(r.trace(2, 9..=11), [(2, L), (1, L), (0, H)]);
        // Retriggering during the pulse restarts it.
        r.gate2(false);
        r.write16(2, 4);
        r.gate2(true);
        r.tick(12);
        r.gate2(false);
        r.gate2(true);
        assert_eq!(
            r.trace(2, 13..=18),
            [(4, L), (3, L), (2, L), (1, L), (0, H), (0xffff, H)]
        );
        // Port B bit 5 shows OUT2.
        assert_eq!(r.inb(0x61) & 0x20, 0x20);
    }

    #[test]
    fn mode1_without_a_gate_edge_never_fires_on_counter_0() {
        let r = Rig::new();
        r.program(0, 1, 5);
        assert_eq!(r.trace(0, 1..=10).iter().filter(|s| !s.1).count(), 0);
        assert_eq!(r.status(0) & 0x40, 0x40, "still waiting for a trigger");
        assert_eq!(r.line.take_rising_edges(), 0);
    }

    #[test]
    fn mode2_rate_generator_pulses_low_for_one_clock() {
        let r = Rig::new();
        r.program(0, 2, 4);
        assert!(r.out(0));
        assert_eq!(
            r.trace(0, 1..=9),
            [
                (4, H),
                (3, H),
                (2, H),
                (1, L),
                (4, H),
                (3, H),
                (2, H),
                (1, L),
                (4, H)
            ]
        );
        // One IRQ 0 edge per period, when OUT rises again.
        let r = Rig::new();
        r.program(0, 2, 40);
        assert_eq!(r.edge_ticks(1..=170), [41, 81, 121, 161]);
        assert!(r.line.level());
    }

    #[test]
    fn mode3_square_wave_even_and_odd_counts() {
        let r = Rig::new();
        r.program(0, 3, 6);
        assert_eq!(
            r.trace(0, 1..=7),
            [(6, H), (4, H), (2, H), (6, L), (4, L), (2, L), (6, H)]
        );
        // Odd: high (N + 1) / 2 pulses counting N-1, N-3, ..., 0; low (N - 1) / 2.
        let r = Rig::new();
        r.program(0, 3, 5);
        assert_eq!(
            r.trace(0, 1..=11),
            [
                (4, H),
                (2, H),
                (0, H),
                (4, L),
                (2, L),
                (4, H),
                (2, H),
                (0, H),
                (4, L),
                (2, L),
                (4, H)
            ]
        );
        // One IRQ 0 edge per period, at the start of the high half.
        let r = Rig::new();
        r.program(0, 3, 41);
        assert_eq!(r.edge_ticks(1..=170), [42, 83, 124, 165]);
    }

    #[test]
    fn mode4_strobes_once_after_n_plus_one_pulses() {
        let r = Rig::new();
        r.program(0, 4, 3);
        assert!(r.out(0));
        assert_eq!(
            r.trace(0, 1..=6),
            [(3, H), (2, H), (1, H), (0, L), (0xffff, H), (0xfffe, H)]
        );
        let r = Rig::new();
        r.program(0, 4, 3);
        assert_eq!(r.edge_ticks(1..=50), [5]);
        assert_eq!(r.clock.next_deadline(), None);
        // Writing a new count retriggers it.
        r.write16(0, 2);
        let t = r.now_tick();
        assert_eq!(r.edge_ticks(t + 1..=t + 10), [t + 4]);
    }

    #[test]
    fn mode5_strobes_after_a_gate_trigger() {
        let r = Rig::new();
        r.gate2(false);
        r.program(2, 5, 3);
        r.tick(2);
        assert!(r.out(2));
        r.gate2(true);
        assert_eq!(
            r.trace(2, 3..=7),
            [(3, H), (2, H), (1, H), (0, L), (0xffff, H)]
        );
        // Retriggering mid-count restarts the full count.
        r.gate2(false);
        r.gate2(true);
        r.tick(9);
        r.gate2(false);
        r.gate2(true);
        assert_eq!(
            r.trace(2, 10..=14),
            [(3, H), (2, H), (1, H), (0, L), (0xffff, H)]
        );
    }

    #[test]
    fn modes_6_and_7_alias_2_and_3_and_status_keeps_the_written_bits() {
        let r = Rig::new();
        r.control(0, 3, 6, false);
        r.write16(0, 40);
        assert_eq!(r.status(0), 0x80 | 0x40 | 0x3c);
        assert_eq!(r.trace(0, 39..=41), [(2, H), (1, L), (40, H)]);
        assert_eq!(r.line.take_rising_edges(), 1);
        assert_eq!(r.edge_ticks(42..=81), [81]);
        assert_eq!(r.status(0) & 0x3f, 0x3c);
        let r = Rig::new();
        r.control(0, 3, 7, false);
        r.write16(0, 6);
        assert_eq!(r.trace(0, 1..=4), [(6, H), (4, H), (2, H), (6, L)]);
    }

    #[test]
    fn bcd_counting() {
        let r = Rig::new();
        r.control(0, 3, 0, true);
        r.write16(0, 0x0012);
        assert_eq!(
            r.trace(0, 1..=4),
            [(0x12, L), (0x11, L), (0x10, L), (0x09, L)]
        );
        assert_eq!(r.status(0) & 0x3f, 0x31);
        assert_eq!(r.edge_ticks(5..=20), [13]);
        // Zero stands for 10000 in BCD.
        let r = Rig::new();
        r.control(0, 3, 0, true);
        r.write16(0, 0);
        assert_eq!(r.trace(0, 1..=3), [(0, L), (0x9999, L), (0x9998, L)]);
        let r = Rig::new();
        r.control(0, 3, 2, true);
        r.write16(0, 0);
        assert_eq!(r.clock.next_deadline(), Some(tick_time(10_001)));
        // ...and 65536 in binary.
        let r = Rig::new();
        r.program(0, 2, 0);
        assert_eq!(r.clock.next_deadline(), Some(tick_time(65_537)));
    }

    #[test]
    fn access_modes_and_flip_flops() {
        let r = Rig::new();
        r.gate2(false); // counter 2 holds its count in mode 0 with GATE low
        // LSB only: every read and write is the low byte; the high byte is 0.
        r.control(2, 1, 0, false);
        r.outb(0x42, 0x34);
        r.tick(1);
        assert_eq!([r.inb(0x42), r.inb(0x42)], [0x34, 0x34]);
        r.outb(0x43, 0x80);
        assert_eq!(r.inb(0x42), 0x34);
        assert_eq!(r.inb(0x42), 0x34, "the latch is released after one byte");
        // MSB only: the low byte is 0.
        r.control(2, 2, 0, false);
        r.outb(0x42, 0x12);
        r.tick(2);
        assert_eq!([r.inb(0x42), r.inb(0x42)], [0x12, 0x12]);
        r.outb(0x43, 0x80);
        assert_eq!(r.inb(0x42), 0x12);
        // LSB then MSB, with reads and writes interleaved: separate flip-flops.
        r.control(2, 3, 0, false);
        r.write16(2, 0x5678);
        r.tick(3);
        assert_eq!(r.inb(0x42), 0x78);
        r.outb(0x42, 0x34);
        assert_eq!(r.inb(0x42), 0x56);
        r.outb(0x42, 0x12);
        r.tick(4);
        assert_eq!(r.read16(2), 0x1234);
        // A control word resets both flip-flops.
        r.inb(0x42);
        r.outb(0x42, 0xaa);
        r.control(2, 3, 0, false);
        r.write16(2, 0x4321);
        r.tick(5);
        assert_eq!(r.read16(2), 0x4321);
    }

    #[test]
    fn latch_holds_the_count_while_counting_continues() {
        let r = Rig::new();
        r.program(0, 2, 1000);
        r.tick(10);
        r.outb(0x43, 0x00);
        r.tick(50);
        r.outb(0x43, 0x00); // ignored: the first latch has not been read
        assert_eq!(r.read16(0), 991);
        assert_eq!(r.read16(0), 951, "unlatched reads follow the counter");
        // A latch stays until both bytes are read, even across another latch command.
        r.outb(0x43, 0x00);
        let lo = r.inb(0x40);
        r.tick(80);
        r.outb(0x43, 0x00);
        let hi = r.inb(0x40);
        assert_eq!(u16::from_le_bytes([lo, hi]), 951);
        assert_eq!(r.latched(0), 921);
    }

    #[test]
    fn read_back_status_and_null_count() {
        let r = Rig::new();
        r.control(0, 3, 2, false);
        assert_eq!(r.status(0), 0x80 | 0x40 | 0x34);
        r.outb(0x40, 100);
        assert_eq!(r.status(0), 0x80 | 0x40 | 0x34);
        r.outb(0x40, 0);
        assert_eq!(
            r.status(0),
            0x80 | 0x40 | 0x34,
            "null until the next CLK pulse"
        );
        r.tick(1);
        assert_eq!(r.status(0), 0x80 | 0x34);
        // A new count in mode 2 waits for the end of the current cycle.
        r.tick(50);
        r.write16(0, 20);
        assert_eq!(r.status(0) & 0x40, 0x40);
        r.tick(100);
        assert_eq!((r.status(0), r.latched(0)), (0x40 | 0x34, 1));
        assert_eq!(r.line.take_rising_edges(), 0);
        r.tick(101);
        assert_eq!((r.status(0), r.latched(0)), (0x80 | 0x34, 20));
        assert_eq!(r.line.take_rising_edges(), 1);
        // 20 pulses (16.8 us) is under the IRQ rate bound: the edge at 121 is dropped.
        assert_eq!(r.edge_ticks(102..=141), [141]);

        // Status and count together: status first, then the count.
        r.tick(150);
        r.outb(0x43, 0xc2);
        assert_eq!(r.inb(0x40), 0x80 | 0x34);
        assert_eq!(r.read16(0), 20 - (150 - 141));
        // Several counters at once; a second read-back does not replace unread latches.
        r.program(1, 0, 500);
        r.gate2(false);
        r.program(2, 4, 0x1234);
        r.tick(160);
        r.outb(0x43, 0xde);
        r.tick(170);
        r.outb(0x43, 0xde);
        assert_eq!(r.read16(0), 20 - (160 - 141));
        assert_eq!(r.read16(1), 500 - (160 - 151));
        assert_eq!(r.read16(2), 0x1234);
        // One status latch at a time: the second command is ignored until it is read.
        r.outb(0x43, 0xe8);
        r.tick(180);
        r.outb(0x43, 0xe8);
        assert_eq!(r.inb(0x42), 0x80 | 0x38);
        assert_eq!(r.inb(0x42), 0x34, "then the (unlatched) count");
    }

    #[test]
    fn mode3_new_count_waits_for_the_half_cycle() {
        let r = Rig::new();
        r.program(0, 3, 10);
        r.tick(3);
        r.write16(0, 4);
        // The high half of 10 ends at pulse 6; the new count goes on with its low half.
        assert_eq!(
            r.trace(0, 4..=12),
            [
                (4, H),
                (2, H),
                (4, L),
                (2, L),
                (4, H),
                (2, H),
                (4, L),
                (2, L),
                (4, H)
            ]
        );
        let r = Rig::new();
        r.program(0, 3, 100);
        r.tick(3);
        r.write16(0, 40);
        assert_eq!(r.status(0) & 0x40, 0x40);
        r.tick(50);
        assert_eq!((r.latched(0), r.status(0) & 0xc0), (2, 0xc0));
        r.tick(51);
        assert_eq!((r.latched(0), r.status(0) & 0xc0), (40, 0));
        assert_eq!(r.edge_ticks(52..=160), [71, 111, 151]);
    }

    #[test]
    fn gate_pauses_modes_0_and_4() {
        for mode in [0u8, 4] {
            let r = Rig::new();
            r.gate2(true);
            r.program(2, mode, 10);
            r.tick(4);
            assert_eq!(r.latched(2), 7);
            r.gate2(false);
            r.tick(10);
            assert_eq!(r.latched(2), 7, "mode {mode}");
            r.gate2(true);
            r.tick(11);
            assert_eq!(r.latched(2), 6);
            r.tick(16);
            assert_eq!(r.out(2), mode == 4);
            r.tick(17);
            assert_eq!(
                r.out(2),
                mode == 0,
                "terminal count at pulse 17 in mode {mode}"
            );
            r.tick(18);
            assert!(r.out(2));
        }
        // A count written while GATE is low loads but waits for GATE.
        let r = Rig::new();
        r.gate2(false);
        r.program(2, 0, 3);
        r.tick(5);
        assert_eq!((r.latched(2), r.status(2) & 0x40), (3, 0));
        r.gate2(true);
        r.tick(8);
        assert!(r.out(2));
    }

    #[test]
    fn gate_restarts_modes_2_and_3_and_forces_out_high() {
        let r = Rig::new();
        r.gate2(true);
        r.program(2, 2, 5);
        r.tick(5);
        assert!(!r.out(2));
        r.gate2(false);
        assert!(r.out(2), "a low gate ends the pulse at once");
        r.tick(8);
        assert_eq!((r.latched(2), r.out(2)), (1, H));
        r.gate2(true);
        assert_eq!(
            r.trace(2, 9..=14),
            [(5, H), (4, H), (3, H), (2, H), (1, L), (5, H)]
        );

        let r = Rig::new();
        r.gate2(true);
        r.program(2, 3, 8);
        r.tick(6);
        assert_eq!((r.latched(2), r.out(2)), (6, L));
        r.gate2(false);
        assert!(r.out(2));
        r.tick(9);
        r.gate2(true);
        assert_eq!(
            r.trace(2, 10..=18),
            [
                (8, H),
                (6, H),
                (4, H),
                (2, H),
                (8, L),
                (6, L),
                (4, L),
                (2, L),
                (8, H)
            ]
        );
        // With GATE low from the start, counting waits for the first rising edge.
        let r = Rig::new();
        r.gate2(false);
        r.program(2, 2, 3);
        r.tick(10);
        assert_eq!((r.latched(2), r.out(2)), (3, H));
        r.gate2(true);
        assert_eq!(r.trace(2, 11..=14), [(3, H), (2, H), (1, L), (3, H)]);
    }

    #[test]
    fn linux_periodic_tick_mode2_count_1193() {
        let r = Rig::starting_at(3_000_000);
        let t0 = r.now_tick();
        r.program(0, 2, 1193);
        assert_eq!(r.line.take_rising_edges(), 0);
        for k in 1..=5 {
            let edge = tick_time(t0 + 1 + 1193 * k);
            assert_eq!(r.clock.next_deadline(), Some(edge));
            r.clock.advance_to(edge - 1);
            assert_eq!(r.line.take_rising_edges(), 0, "edge {k} early");
            r.clock.advance_to(edge);
            assert_eq!(r.line.take_rising_edges(), 1, "edge {k}");
            assert!(r.line.level());
        }
        // 1193 pulses is 999.85 us: 1000.15 Hz.
        let start = r.clock.now();
        r.clock.advance_to(start + NANOS_PER_SEC);
        assert_eq!(r.line.take_rising_edges(), 1000);
        let period = tick_time(1193 * 1000) as f64 / 1000.0;
        assert!((period - 999_847.0).abs() < 1.0, "{period}");
    }

    #[test]
    fn bios_tick_mode3_count_0_is_18_2_hz() {
        let r = Rig::new();
        r.program(0, 3, 0);
        let edge = |k: i64| tick_time(1 + 65_536 * k);
        assert_eq!(r.clock.next_deadline(), Some(edge(1)));
        // The falling half is not timed: one callback per period, at the rising edge.
        r.clock.advance_to(edge(1));
        assert_eq!(r.line.take_rising_edges(), 1);
        assert_eq!(r.clock.next_deadline(), Some(edge(2)));
        r.clock.advance_to(10 * NANOS_PER_SEC);
        // 10 s * 1193182 / 65536 = 182.07 rising edges.
        assert_eq!(r.line.take_rising_edges(), 181);
        assert_eq!(r.clock.next_deadline(), Some(edge(183)));
    }

    #[test]
    fn power_on_state_ticks_at_18_2_hz() {
        let r = Rig::new();
        assert_eq!(r.status(0), 0x80 | 0x36);
        assert_eq!(r.clock.next_deadline(), Some(tick_time(65_536)));
        assert_eq!(r.edge_ticks(65_535..=65_536), [65_536]);
        assert_eq!(r.status(2), 0x80 | 0x36);
        assert_eq!(r.latched(2), 0, "counter 2 holds 65536 with GATE low");
    }

    #[test]
    fn refresh_bit_toggles_every_15_085_us() {
        let r = Rig::new();
        let bit = |ns: Nanos| {
            r.clock.advance_to(ns);
            r.inb(0x61) & 0x10 != 0
        };
        assert!(!bit(0));
        assert!(!bit(15_084));
        assert!(bit(15_085));
        assert!(bit(30_169));
        assert!(!bit(30_170));
        assert!(bit(45_255));
        // A delay loop counting toggles measures time: 66 toggles ~ 1 ms.
        let mut toggles = 0;
        let mut last = r.inb(0x61) & 0x10;
        let start = r.clock.now();
        while toggles < 66 {
            r.clock.advance_by(1_000);
            let b = r.inb(0x61) & 0x10;
            if b != last {
                toggles += 1;
                last = b;
            }
        }
        let took = r.clock.now() - start;
        assert!((990_000..=1_000_000).contains(&took), "{took}");
    }

    #[test]
    fn port_b_bits() {
        let r = Rig::new();
        r.outb(0x61, 0xff);
        let v = r.inb(0x61);
        assert_eq!(v & 0xcf, 0x0f, "bits 0-3 read back, 6-7 clear");
        {
            let pit = r.pit.lock().unwrap();
            assert!(pit.channel2_gate() && pit.speaker_data_enabled());
            assert_eq!(pit.speaker_level(), pit.channel2_out());
        }
        // Counter 2 in mode 3 drives bit 5 as a square wave once gated.
        r.program(2, 3, 4);
        let bits: Vec<bool> = (1..=5)
            .map(|k| {
                r.tick(k);
                r.inb(0x61) & 0x20 != 0
            })
            .collect();
        assert_eq!(bits, [H, H, L, L, H]);
        r.outb(0x61, 0x01);
        let pit = r.pit.lock().unwrap();
        assert!(!pit.speaker_data_enabled() && !pit.speaker_level());
        assert_eq!(pit.output(2), Some(true));
        assert_eq!(pit.output(3), None);
    }

    #[test]
    fn linux_style_tsc_calibration_on_counter_2() {
        let r = Rig::new();
        r.outb(0x61, (r.inb(0x61) & !0x02) | 0x01);
        r.outb(0x43, 0xb0);
        r.write16(2, 11_932); // 10 ms
        let start = r.clock.now();
        while r.inb(0x61) & 0x20 == 0 {
            r.clock.advance_by(1_000);
        }
        let took = r.clock.now() - start;
        assert!((10_000_000..=10_002_000).contains(&took), "{took}");
    }

    #[test]
    fn tiny_periods_are_rate_bounded() {
        for (mode, count) in [(2u8, 2u16), (3, 2), (3, 3), (2, 7)] {
            let r = Rig::new();
            r.program(0, mode, count);
            r.clock.advance_to(NANOS_PER_SEC / 1000);
            let edges = r.line.take_rising_edges();
            let bound = NANOS_PER_SEC / 1000 / MIN_IRQ_INTERVAL_NS + 1;
            assert!(
                (bound - 10..=bound).contains(&edges),
                "{mode}/{count}: {edges}"
            );
            let d = r.clock.next_deadline().unwrap();
            assert!(d >= r.clock.now());
        }
        // Mode 2 with the illegal count 1 keeps OUT high: no edges at all.
        let r = Rig::new();
        r.program(0, 2, 1);
        r.clock.advance_to(NANOS_PER_SEC / 1000);
        assert_eq!(r.line.take_rising_edges(), 0);
        assert!(r.line.level() && r.out(0));
        // A period just above the bound is not thinned.
        let r = Rig::new();
        r.program(0, 2, 30); // 25.1 us
        r.clock.advance_to(tick_time(1 + 30 * 100));
        assert_eq!(r.line.take_rising_edges(), 100);
    }

    #[test]
    fn a_one_shot_edge_too_soon_after_the_last_is_delayed_not_lost() {
        let r = Rig::new();
        r.program(0, 2, 1193);
        let edge = tick_time(1 + 1193);
        r.clock.advance_to(edge);
        assert_eq!(r.line.take_rising_edges(), 1);
        // Linux switching to one-shot mode 4 with a 5-pulse delta: OUT0 would rise 6 us later.
        r.program(0, 4, 5);
        assert_eq!(r.clock.next_deadline(), Some(edge + MIN_IRQ_INTERVAL_NS));
        r.clock.advance_to(edge + MIN_IRQ_INTERVAL_NS - 1);
        assert_eq!(r.line.take_rising_edges(), 0);
        r.clock.advance_to(edge + MIN_IRQ_INTERVAL_NS);
        assert_eq!(r.line.take_rising_edges(), 1);
        assert_eq!(r.clock.next_deadline(), None);
        // Later one-shots are on time again.
        r.clock.advance_to(edge + 1_000_000);
        r.write16(0, 5);
        let t = r.now_tick();
        assert_eq!(r.clock.next_deadline(), Some(tick_time(t + 7)));
    }

    #[test]
    fn snapshot_round_trip_and_timing_continue() {
        let r = Rig::starting_at(7_777_777);
        let t0 = r.now_tick();
        r.program(0, 2, 1193);
        r.control(1, 1, 0, true);
        r.outb(0x41, 0x99);
        r.outb(0x61, 0x03);
        r.program(2, 3, 1000);
        r.clock.advance_to(tick_time(t0 + 1 + 1193 * 2 + 500));
        r.outb(0x43, 0x80); // latch counter 2
        r.inb(0x42); // and read half of it
        r.outb(0x43, 0xe2); // latch counter 0's status
        r.outb(0x40, 0x10); // half of a new count
        r.line.take_rising_edges();

        let now = r.clock.now();
        let clock2 = Clock::new(now);
        let line2 = Arc::new(LatchedLine::new());
        let pit2 = Pit8254::new_shared(&clock2, line2.clone());
        {
            let orig = r.pit.lock().unwrap();
            let mut fresh = pit2.lock().unwrap();
            check_round_trip(&*orig, &mut *fresh).unwrap();
        }
        assert!(line2.level());
        line2.take_rising_edges();
        let bus2 = Bus::new(BusKind::Pio);
        Pit8254::insert_into(&bus2, &pit2).unwrap();

        // Both devices go on identically.
        let next = tick_time(t0 + 1 + 1193 * 3);
        assert_eq!(clock2.next_deadline(), Some(next));
        for bus in [&r.bus, &bus2] {
            assert_eq!(bus.read_value(0x40, 1), 0x80 | 0x34, "latched status");
            // 2886 pulses into a mode 3 count of 1000: low half, 1000 - 2 * 386 = 228.
            assert_eq!(bus.read_value(0x42, 1), 228 >> 8);
            bus.write_value(0x40, 1, 0x04); // count 0x410 from the next cycle
        }
        r.clock.advance_to(next);
        clock2.advance_to(next);
        assert_eq!(line2.take_rising_edges(), 1);
        assert_eq!(r.line.take_rising_edges(), 1);
        let after = tick_time(t0 + 1 + 1193 * 3 + 0x410);
        assert_eq!(clock2.next_deadline(), Some(after));
        clock2.advance_to(after);
        assert_eq!(line2.take_rising_edges(), 1);
        r.clock.advance_to(after);
        assert_eq!(r.line.take_rising_edges(), 1);
        for port in [0x40, 0x41, 0x42] {
            let latch = |bus: &Bus| {
                bus.write_value(0x43, 1, (port - 0x40) << 6);
                bus.read_value(port, 1) | (bus.read_value(port, 1) << 8)
            };
            assert_eq!(latch(&bus2), latch(&r.bus), "port {port:#x}");
        }
        assert_eq!(bus2.read_value(0x61, 1), r.bus.read_value(0x61, 1));

        // Restored on a clock that reads a later time, everything shifts with it.
        let blob = snapshot::save(&*r.pit.lock().unwrap());
        let later = now + 5 * NANOS_PER_SEC;
        let clock3 = Clock::new(later);
        let pit3 = Pit8254::new_shared(&clock3, Arc::new(LatchedLine::new()));
        let orig_deadline = r.clock.next_deadline().unwrap();
        let orig_now = r.clock.now();
        snapshot::restore(&mut *pit3.lock().unwrap(), &blob).unwrap();
        assert_eq!(
            clock3.next_deadline(),
            Some(later + (orig_deadline - orig_now))
        );
    }

    #[test]
    fn restore_rejects_a_bad_control_word_and_keeps_the_device() {
        let r = Rig::new();
        r.program(0, 2, 100);
        let pit = r.pit.lock().unwrap();
        let blob = snapshot::save(&*pit);
        let id_len = usize::from(blob[4]);
        let payload_at = 4 + 1 + id_len + 2 + 4;
        let mut payload = blob[payload_at..blob.len() - 4].to_vec();
        let before = snapshot::save(&*pit);
        drop(pit);
        let mut pit = r.pit.lock().unwrap();
        payload[0] = 0x04; // mode 2 with access bits 00: not a counter setting
        let res = pit.restore_state(&mut StateReader::new(&payload), 1);
        assert!(matches!(res, Err(SnapshotError::Invalid(_))), "{res:?}");
        assert_eq!(snapshot::save(&*pit), before);
    }

    #[test]
    fn any_access_to_any_port_is_harmless() {
        let r = Rig::new();
        let ports = [0x40u64, 0x41, 0x42, 0x43, 0x61];
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut rand = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for &port in &ports {
            for v in 0..=255u8 {
                r.outb(port, v);
                for &p in &ports {
                    r.inb(p);
                }
                r.clock.advance_by(rand() % 3_000);
            }
        }
        for _ in 0..50_000 {
            let x = rand();
            let port = 0x3e + (x % 0x28);
            let size = [1usize, 2, 4][(x >> 8) as usize % 3];
            if x & (1 << 20) != 0 {
                r.bus.write_value(port, size, x >> 24);
            } else {
                r.bus.read_value(port, size);
            }
            r.clock.advance_by((x >> 40) % 5_000);
            if let Some(d) = r.clock.next_deadline() {
                assert!(d >= r.clock.now());
            }
        }
        // Whatever state that left, it snapshots and restores.
        let clock2 = Clock::new(r.clock.now());
        let pit2 = Pit8254::new_shared(&clock2, Arc::new(LatchedLine::new()));
        check_round_trip(&*r.pit.lock().unwrap(), &mut *pit2.lock().unwrap()).unwrap();
        // Unmapped bases and offsets read as ones and ignore writes.
        let mut pit = r.pit.lock().unwrap();
        let mut b = [0u8; 2];
        pit.read(
            BusAddress {
                base: 0x80,
                offset: 0,
            },
            &mut b,
        );
        assert_eq!(b, [0xff, 0xff]);
        pit.write(
            BusAddress {
                base: 0x61,
                offset: 5,
            },
            &[1],
        );
        let mut b = [0u8];
        pit.read(
            BusAddress {
                base: 0x40,
                offset: 3,
            },
            &mut b,
        );
        assert_eq!(b, [0xff]);
    }
}
