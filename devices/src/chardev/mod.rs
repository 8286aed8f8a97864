//! Character backends.

pub mod file;
pub mod stdio;
pub mod unix_socket;
