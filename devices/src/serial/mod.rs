//! Serial ports.

pub mod uart16550;
