//! Real-time clocks and their CMOS memory.

pub mod mc146818;
