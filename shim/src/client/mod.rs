//! Pieces both clients (GCB in [`crate::gcb`], DPF in [`crate::dpf`]) use to talk
//! to their daemon: the bounded, blocking request/reply exchange over a connected
//! UDP socket ([`exchange`]), the mode-independent steps of a `bind` to a
//! reported address ([`pinned`]), and the fd-keyed table of records and
//! reported names both keep ([`records`]). Kept out of either client so neither grows a
//! second copy; socket plumbing itself stays in `gcb::sys`, which DPF reuses as is.

pub mod exchange;
pub mod pinned;
pub mod records;
pub mod seal;
