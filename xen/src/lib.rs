//! Everything Xen: the ioreq ABI, the transports to Xen (real and simulated), the ioreq server,
//! the mapcache, xenstore, the QMP subset libxl speaks, and qemu-xen's command line.

pub mod abi;
pub mod cmdline;
pub mod ioreq_server;
pub mod mapcache;
pub mod qmp;
pub mod transport;
pub mod xenstore;
