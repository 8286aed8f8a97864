//! Interrupt lines: what a device drives, without knowing what listens.
//!
//! A line is a wire with a level. Edge-triggered sources (the ISA convention) pulse it;
//! level-triggered ones (PCI INTx, a UART on a shared line) hold it. Whether the receiver
//! latches edges or samples levels is the receiver's business (the 8259's ELCR, Xen's vPIC,
//! KVM's irqchip), so the same device works behind all of them.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

pub trait IrqLine: Send + Sync {
    /// Drive the line: `true` asserts it.
    fn set_level(&self, asserted: bool);

    /// Signal one edge-triggered interrupt: assert, then release.
    fn pulse(&self) {
        self.set_level(true);
        self.set_level(false);
    }
}

/// A line that nothing listens to (a device whose interrupt is not wired).
#[derive(Debug, Default)]
pub struct UnconnectedLine;

impl IrqLine for UnconnectedLine {
    fn set_level(&self, _asserted: bool) {}
}

/// A line that remembers its level and counts rising edges, for receivers that poll
/// (and for tests that check what a device signalled).
#[derive(Debug, Default)]
pub struct LatchedLine {
    level: AtomicBool,
    rising_edges: AtomicU64,
}

impl LatchedLine {
    pub fn new() -> LatchedLine {
        LatchedLine::default()
    }

    pub fn level(&self) -> bool {
        self.level.load(Ordering::Acquire)
    }

    /// Rising edges seen since the last call.
    pub fn take_rising_edges(&self) -> u64 {
        self.rising_edges.swap(0, Ordering::AcqRel)
    }
}

impl IrqLine for LatchedLine {
    fn set_level(&self, asserted: bool) {
        let was = self.level.swap(asserted, Ordering::AcqRel);
        if asserted && !was {
            self.rising_edges.fetch_add(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latched_line_counts_rising_edges_only() {
        let line = LatchedLine::new();
        line.set_level(true);
        line.set_level(true);
        assert!(line.level());
        line.set_level(false);
        line.pulse();
        assert!(!line.level());
        assert_eq!(line.take_rising_edges(), 2);
        assert_eq!(line.take_rising_edges(), 0);
    }
}
