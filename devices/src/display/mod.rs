//! Display adapters.

pub mod text;
pub mod vbe;
pub mod vga;
