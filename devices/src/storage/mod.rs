//! Disk controllers.

pub mod ide;
