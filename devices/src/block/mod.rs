//! Block backends: where a disk's sectors live on the host.

pub mod overlay;
pub mod raw;
