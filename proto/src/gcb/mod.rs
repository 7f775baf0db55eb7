//! GCB (Generic Connection Brokering) wire formats, paper section 4.
//!
//! Three kinds of bytes travel between shim-loaded clients and the broker:
//!
//! * command datagrams over UDP, each a `header` plus a body: [`Message`],
//!   encoded by [`encode`] and decoded by [`decode`] (layouts in `codec`);
//! * fixed-size preambles on TCP connections that pair a reversed or relayed
//!   connection: [`StreamHello`] and [`StreamPeer`] (module `stream`);
//! * the [`UdpRelayHeader`] on datagrams relayed through a proxy socket;
//! * the [`doorbell::Record`] one shim-loaded process sends another over
//!   loopback to make a listener dial.
//!
//! # End to end
//!
//! 1. A listener registers each listening or bound socket (`Register` →
//!    `RegisterOk{proxy}`) and reports `proxy` as its address from then on;
//!    it heartbeats (`Heartbeat` → `HeartbeatAck`, or `ReregisterRequest`
//!    after a broker restart).
//! 2. A GCB connector sends `Connect{target}` to the broker at `target`'s IP
//!    and the command port, and follows the [`Decision`]: dial directly, dial
//!    the local address, wait for a reversed connection (the broker sent the
//!    listener `ReverseConnect`, or `MakeHole` for UDP), or meet the listener
//!    at the broker's rendezvous (`StreamHello`, `RelayConnect`,
//!    `StreamPeer`).
//! 3. A non-GCB connector simply dials the proxy socket; the broker sends the
//!    listener `RelayConnect` and relays. A non-GCB UDP peer sends to the
//!    proxy socket, and the broker relays with a [`UdpRelayHeader`].
//! 4. An operator asks a broker for its state (`gcb-broker query`) with
//!    `StatusRequest`, and gets the snapshot in `StatusReply` pages (module
//!    `status`: the cut into pages and the client's reassembly).

mod codec;
pub mod doorbell;
mod features;
mod message;
pub mod punch;
mod relay;
mod status;
mod stream;

pub use codec::{decode, encode, encode_into, Kind};
pub use features::Features;
pub use message::{
    Decision, ErrorCode, Message, MgmtInfo, StatusFormat, Token, COMMAND_PORT, MAX_DETAIL_LEN,
    MAX_ENDPOINTS, MAX_PROGRAM_LEN, MAX_REALM_LEN, MAX_STATUS_CHUNK,
};
pub use relay::{UdpRelayHeader, MAX_RELAY_PAYLOAD, RELAY_HEADER_LEN};
pub use status::{
    page_limit, paginate, FetchError, Progress, StatusFetch, TooManyPages, MAX_STATUS_PAGES,
    MIN_STATUS_PAGE,
};
pub use stream::{Frame, FrameReader, Role, StreamHello, StreamPeer, MAX_FRAME_LEN};

#[cfg(test)]
mod status_tests;
#[cfg(test)]
mod stream_tests;
#[cfg(test)]
mod tests;
