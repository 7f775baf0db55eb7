//! What the GCB client hands over `exec` (see `client::inherit` for the
//! variable, the published table and the exec side): every registered
//! listener's and UDP socket's fds, with a UDP socket's data-path token and
//! broker channel. The new image takes them over in `adopt`.

use super::registry::Registry;
use crate::client::inherit::{publish_entries, ChannelEntry, Entry};

/// Publishes the registry's listener and UDP fds for exec. Call with the
/// registry locked (the lock is what makes this the only writer).
pub fn publish(reg: &Registry) {
    publish_entries(reg.listeners().flat_map(|(_, l)| {
        // A UDP registration always has a token once the broker answered;
        // before, there is no proxy to keep either.
        let udp_token = (l.proto == proto::Proto::Udp).then(|| l.udp_token.map_or(0, |t| t.0));
        l.fds.iter().map(move |&fd| {
            let channel = reg.udp.get(fd).and_then(|s| s.channel).map(|c| ChannelEntry {
                peer: c.peer,
                addr: c.addr,
                token: if c.reopen.is_some() { 0 } else { c.token.0 },
            });
            Entry { fd, mgmt: -1, proxy: l.proxy, local: l.local, backlog: l.backlog as u64, udp_token, channel, nonce: None }
        })
    }));
}
