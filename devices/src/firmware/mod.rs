//! Firmware interfaces.

pub mod fw_cfg;
