//! The shared client core: what both clients (GCB in [`crate::gcb`], DPF in
//! [`crate::dpf`]) build on, kept out of either so neither grows a second copy
//! and neither imports the other's internals:
//!
//! * socket plumbing with deadlines ([`sys`]), IPv4 endpoints in the
//!   application's family ([`family`]) and the socket options carried to a
//!   replacement socket ([`options`]);
//! * the one fork-safe lock a client keeps its state behind ([`lock`]);
//! * the bounded request/reply exchange with a daemon ([`exchange`], sealed by
//!   [`seal`]), the fd-keyed records and reported names ([`records`]), the
//!   public addresses a closed socket gave up ([`released`]), and the
//!   mode-independent steps of a `bind` to a reported address ([`pinned`]).

pub mod exchange;
pub mod family;
pub mod inherit;
pub mod lock;
pub mod options;
pub mod pinned;
pub mod records;
pub mod released;
pub mod seal;
pub mod sys;
