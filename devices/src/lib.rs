//! Vireo's device-emulation core.
//!
//! Devices here are synchronous state machines: register accesses and virtual time go in,
//! interrupt-line levels, timer deadlines and DMA through [`guest_memory::GuestMemory`] come
//! out. They know nothing of CPUs, hypervisors, threads or file descriptors; boards in the
//! `machines` crate wire them to the standalone CPU, to Xen, or (later) to KVM.

pub mod bus;
pub mod chardev;
pub mod clock;
pub mod guest_memory;
pub mod irq;
pub mod snapshot;
pub mod system;

pub mod acpi;
pub mod block;
pub mod chipset;
pub mod debug;
pub mod display;
pub mod firmware;
pub mod input;
pub mod interrupt;
pub mod pci;
pub mod rtc;
pub mod serial;
pub mod storage;
pub mod timer;
