//! DPF through a standard gateway (issue 14): with `DPF_INAGENT=pcp://[IP][:PORT]`
//! the DPF client asks a PCP server (RFC 6887), or a NAT-PMP one (RFC 6886),
//! for its forwards instead of dpfd. miniupnpd on a Linux, OpenWrt or pfSense
//! gateway, and dpfd itself, answer both. The records, names, dups, closes and
//! hand-overs are the DPF client's ([`super::state`], [`super::ops`]); what
//! changes is who makes the forward and how it is kept:
//!
//! * **Making it** ([`map`]): `bind` (UDP) and `listen` (TCP) run a PCP MAP,
//!   or NAT-PMP after UNSUPP_VERSION, through `proto::portmap::MapClient` in
//!   the calling thread, bounded by [`wire::CALL_BOUND`]; a refusal or silence
//!   leaves the socket on its local address after one warning line naming
//!   the result code.
//! * **Keeping it** ([`serve`]): the responder thread drives every
//!   mapping's client (renewals between 1/2 and 5/8 of the lifetime, a new
//!   MAP when an answer's epoch or an ANNOUNCE on 224.0.0.1:5350 shows the
//!   gateway lost its state, [`announce`]), and maps afresh, every
//!   [`wire::RETRY`], one the gateway stopped renewing.
//! * **Ending it** ([`wind`]): a delete (lifetime 0) when the socket's last
//!   fd closes in the last process that holds it. A gateway cannot probe a
//!   process as dpfd does, so a process that closes a socket another may hold
//!   (after `fork` or `exec`) asks the kernel whether the socket lives on
//!   ([`holders`]) and deletes only if it does not; every holder renews
//!   meanwhile, with the mapping's one nonce. A process killed outright
//!   deletes nothing: its mappings end with their lease ([`wire::LIFETIME_S`]),
//!   unless a process of the same user maps the same address again first,
//!   which renews it: the nonce is derived from the user's secret and the
//!   address ([`nonce`]).
//!
//! The gateway is `DPF_INAGENT`'s IP, or the default route's gateway
//! ([`route`]), looked up once per process image ([`wire`], which also
//! sends and reads the datagrams). `docs/dpf-standard-gateway.md`
//! says why it is done this way.

pub mod announce;
pub mod holders;
pub mod map;
pub mod nonce;
pub mod route;
pub mod serve;
pub mod side;
pub mod wind;
pub mod wire;
