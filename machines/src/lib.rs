//! Boards: they own the buses, the clock and the devices, wire the interrupt lines, and drive
//! time. Today the PC's legacy device set; the standalone `pc` board and the Xen `xenfv` board
//! build on it.

pub mod device_state;
pub mod pc;
pub mod xenfv;
