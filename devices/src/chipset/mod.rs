//! Chipset odds that are neither PCI functions nor ISA devices of their own.

pub mod port92;
