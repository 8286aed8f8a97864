//! PCI.

pub mod config_io;
pub mod config_space;
pub mod i440fx;
pub mod piix3;
pub mod root;
