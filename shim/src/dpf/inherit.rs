//! Handing forwarded sockets over `exec`, in the same `GCB_INHERITED` variable
//! and the same lock-free published table as GCB listeners (`client::inherit`): one
//! entry `FD,MGMT_FD,PUBLIC,BOUND,0` per forwarded fd that survives the exec,
//! with the management socket's close-on-exec cleared for it. The new image's
//! shim, in DPF mode, checks each fd (a bound UDP socket or a listening TCP
//! socket with that address; a listening TCP management socket) and takes the
//! forwards over as shared, so closing them in either image never deletes them:
//! `dpfd`'s probe does once the last holder is gone. This module writes the
//! entries; the new image reads them in `adopt`.
//!
//! A standard gateway's forward (`pcp`) hands over no socket (`MGMT_FD` -1)
//! but its mapping nonce (`,nHEX`): the new image opens its own socket to
//! the gateway and renews the mapping at once with that nonce, asking for the
//! same public address, which the gateway grants as a renewal.

use super::state::State;
use crate::client::inherit::{self as shared, Entry};

/// Publishes the forwarded fds for exec. Call inside [`super::state::with`].
pub fn publish(st: &State) {
    shared::publish_entries(st.forwards().flat_map(|f| {
        let nonce = f.pcp.as_ref().map(|m| m.client.config().nonce);
        let mgmt = if nonce.is_some() { -1 } else { f.mgmt_fd };
        f.fds.iter().map(move |&fd| Entry { fd, mgmt, proxy: Some(f.public), local: f.bound, backlog: 0, udp_token: None, channel: None, nonce })
    }));
}
