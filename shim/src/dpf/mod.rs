//! The DPF client (paper 3.2.1, docs/design.md, "DPF tables"): with `DPF_INAGENT` set, the shim
//!
//! * asks `dpfd` on the NAT gateway to forward a public address to every AF_INET
//!   UDP socket after `bind` and every TCP socket after `listen` (not loopback),
//!   keeps the coupled management socket `dpfd` probes, and reports the public
//!   address from `getsockname`, also on connections accepted from a forwarded
//!   listener ([`forward`], [`ops`]);
//! * deletes the forward when the socket turns active (`connect`) or its last fd
//!   in this process closes, unless another process shares it ([`ops`]);
//! * asks `dpfd` before a `connect` to one of its public IPs ([`public`], known
//!   without a lock) which private address is behind it, and dials that one
//!   directly ([`query`]); a connect elsewhere takes no lock;
//! * hands forwarded sockets over `exec` in `GCB_INHERITED` ([`inherit`]);
//! * forwards a socket the application binds to one of dpfd's public addresses
//!   from exactly that address ([`reported`], `client::pinned`).
//!
//! With `DPF_INAGENT=pcp://...` the forwards come from a standard gateway
//! instead, by PCP MAP or NAT-PMP ([`pcp`]): the same records, names, dups,
//! closes and hand-overs, with a port-mapping client in place of dpfd's
//! `Forward`, its probes and its `Query`.
//!
//! GCB and DPF are exclusive modes; the hooks reach this module through
//! [`crate::managed`], which picks the client by mode. State lives in one
//! [`state::State`] behind one fork-safe lock (`client::lock`), taken through
//! [`state::with`] for short, non-blocking critical sections only.
//!
//! The mode ([`mode::enabled`]) is decided in [`mode`], which every module
//! below uses; the process's lifetime events (init, fork, exec,
//! exit) reach the client through [`lifecycle`], above the rest.

pub mod adopt;
pub mod ask;
pub mod cache;
pub mod forward;
pub mod inherit;
pub mod lifecycle;
pub mod mode;
pub mod ops;
pub mod pcp;
pub mod public;
pub mod query;
pub mod reported;
pub mod serve;
pub mod state;
