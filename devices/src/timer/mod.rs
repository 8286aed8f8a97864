//! Interval timers.

pub mod pit8254;
