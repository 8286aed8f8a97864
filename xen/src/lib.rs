//! Everything Xen: the ioreq ABI, the ioreq server, DM ops, event channels, foreign memory and
//! xenstore. Empty until the Xen device-model issue: the foundation only fixes where it goes.
