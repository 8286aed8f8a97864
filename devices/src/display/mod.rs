//! Display adapters.

pub mod vga;
