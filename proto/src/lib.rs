//! GCB and DPF wire formats and protocol state machines (sans-I/O).
//!
//! Nothing here opens a socket, reads a clock or starts a thread: callers pass
//! bytes in and get bytes out, and pass the current time in as an
//! [`std::time::Instant`]. That keeps the crate usable from inside the
//! `LD_PRELOAD` shim's interposed calls as well as from the daemons, and lets
//! every state machine be tested deterministically.
//!
//! * [`wire`]: the big-endian codec everything is built on;
//! * [`header`]: the 15-byte header shared by GCB and DPF datagrams;
//! * [`common`]: protocol and endpoint types both families use;
//! * [`drops`]: the classes of undecodable input daemons count;
//! * [`gcb`]: connection-brokering commands, stream preambles, UDP relay header;
//! * [`dpf`]: dynamic port forwarding requests;
//! * [`natpmp`], [`pcp`]: the standard port mapping protocols (RFC 6886,
//!   RFC 6887), which `dpfd` answers as well, and [`portmap`], a client
//!   keeping one port mapped through either;
//! * [`rudp`]: the reliable request/response layer over UDP (paper's RUDP);
//! * [`auth`]: shared-secret HMAC sealing of datagrams, and the replay guard.

pub mod auth;
pub mod common;
pub mod dpf;
pub mod drops;
pub mod gcb;
pub mod header;
pub mod natpmp;
pub mod pcp;
pub mod portmap;
pub mod rudp;
pub mod wire;

#[cfg(test)]
mod strategies;

pub use common::{Endpoint, Proto};
pub use header::{Family, Flags, Header};
pub use wire::{DecodeError, EncodeError};
