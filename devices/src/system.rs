//! Board-level signals that devices raise: reset, the A20 gate, and the end of a test run.
//!
//! The 8042 pulses reset and drives A20, port 0xCF9 resets, the isa-debug-exit port ends the
//! run. None of them knows what a reset means on its board, so they call this trait.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

pub trait SystemControl: Send + Sync {
    /// Ask the board to reset the machine (CPU and devices) at its next opportunity.
    fn request_reset(&self);
    /// Drive the A20 gate: `false` masks address bit 20.
    fn set_a20(&self, enabled: bool);
    /// Ask the board to stop the machine and exit with `status`.
    fn request_exit(&self, status: i32);
}

/// Signals latched for a board that polls them between CPU blocks or ioreqs.
#[derive(Debug)]
pub struct SystemSignals {
    reset: AtomicBool,
    a20: AtomicBool,
    exit: Mutex<Option<i32>>,
}

impl Default for SystemSignals {
    fn default() -> Self {
        SystemSignals {
            reset: AtomicBool::new(false),
            // The PC powers up with A20 enabled by the chipset; firmware may mask it.
            a20: AtomicBool::new(true),
            exit: Mutex::new(None),
        }
    }
}

impl SystemSignals {
    pub fn new() -> SystemSignals {
        SystemSignals::default()
    }

    /// True once after each reset request.
    pub fn take_reset(&self) -> bool {
        self.reset.swap(false, Ordering::AcqRel)
    }

    pub fn a20(&self) -> bool {
        self.a20.load(Ordering::Acquire)
    }

    /// The exit status requested, if any (the first request wins).
    pub fn exit_status(&self) -> Option<i32> {
        *self.exit.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl SystemControl for SystemSignals {
    fn request_reset(&self) {
        self.reset.store(true, Ordering::Release);
    }

    fn set_a20(&self, enabled: bool) {
        self.a20.store(enabled, Ordering::Release);
    }

    fn request_exit(&self, status: i32) {
        let mut exit = self.exit.lock().unwrap_or_else(|e| e.into_inner());
        exit.get_or_insert(status);
    }
}
