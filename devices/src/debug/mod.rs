//! Debug and test ports: POST codes, the debug console, the test-exit port.

pub mod debugcon;
pub mod exit_port;
pub mod post_code;
