//! Disk controllers.

pub mod atapi;
pub mod ide;
