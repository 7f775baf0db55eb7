//! The GCB client for TCP and UDP (paper section 4, docs/design.md, docs/gcb-client-design.md).
//!
//! With `GCB_INAGENT` set, the shim:
//!
//! * registers every non-loopback AF_INET TCP listener with the broker and
//!   reports the proxy address it gets ([`listener`], [`identity`]);
//! * answers the broker from a thread of its own, whatever the program is
//!   doing ([`responder`], [`mgmt`], [`mgmt_events`]): heartbeats, commands,
//!   and the brokered connections it dials at once and parks for `accept`
//!   ([`serve`], [`park`]);
//! * hands those connections to the program's `accept`, in kernel order,
//!   through doorbells ([`doorbell`], [`accept`]);
//! * brokers the application's own connects ([`connector`], [`dial`]), the
//!   non-blocking ones in the background ([`connecting`]);
//! * spreads over several brokers and fails over when one goes silent ([`brokers`]);
//! * registers a socket the application binds to a proxy address on exactly
//!   that address ([`reported`], `client::pinned`);
//! * carries UDP: registration at `bind`, relay header, receiver list, holes
//!   and the UDP buffer ([`udp`]);
//! * keeps its records right across dup, close, fork and exec ([`fdops`],
//!   [`inherit`], [`crate::client::lock`]).
//!
//! Without `GCB_INAGENT` nothing here runs: [`mode::enabled`] is false, no socket is
//! watched, and every hook stays on its fast path.
//!
//! State lives in one [`registry::Registry`] behind one fork-safe
//! [`crate::client::lock::Lock`], taken through [`state::with`] for short,
//! non-blocking critical sections only. The registry and the records it
//! keeps of work in progress (its child modules: doorbells, dials and
//! punches, parked connections, the program's non-blocking connects) import
//! none of the modules that drive that work; those take the registry. In the
//! same way [`mgmt`] (a listener's requests to its broker) lies below
//! [`mgmt_events`] (the responder's handling of what comes back), and the
//! UDP [`udp::table`] below the code that fills it.
//!
//! The mode ([`mode::enabled`], and the broker it names) is decided in
//! [`mode`], which every module below uses; the process's lifetime events (init, fork, exec,
//! exit) reach the client through [`lifecycle`], above the rest.

pub mod accept;
pub mod adopt;
pub mod ask;
pub mod brokers;
pub mod connecting;
pub mod connector;
pub mod dial;
pub mod doorbell;
pub mod fdops;
pub mod gate;
pub mod identity;
pub mod inherit;
pub mod interest;
pub mod lifecycle;
pub mod mode;
pub mod listener;
pub mod mgmt;
pub mod mgmt_events;
pub mod negcache;
pub mod notice;
pub mod park;
pub mod punch;
pub mod received;
pub mod registration;
pub mod registry;
pub mod reported;
pub mod responder;
pub mod reversal_listener;
pub mod serve;
pub mod serve_punch;
pub mod spare;
pub mod standby;
pub mod state;
pub mod swap;
pub mod udp;
