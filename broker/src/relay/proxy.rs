//! Regular connectors: a program without the shim dials a proxy address as
//! if it were the listener's (paper 4.1, "normal connectors"). The broker
//! accepts, parks the connection in the pairing table *without reading from
//! it* (the client may be waiting for the server to speak first, as in SMTP
//! or SSH), and sends the listener `RelayConnect`; the listener dials the
//! rendezvous, and the relay starts. If the listener does not come within
//! the pairing timeout, the parked connection is reset.
//!
//! Closing a proxy socket, TCP or UDP, is here too (`close_proxy`).

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use mio::net::TcpStream;
use mio::Token;
use proto::gcb::Message;
use proto::Endpoint;
use tracing::{debug, info, warn};

use super::abort;
use super::rendezvous::{transient_accept_error, ACCEPT_BUDGET, ACCEPT_RETRY};
use crate::daemon::{Daemon, Dynamic, Timer};
use crate::handlers::PAIR_TIMEOUT;
use crate::pairing::{Half, Kind, Pending};

impl Daemon {
    /// Accepts on a proxy listener, up to the budget.
    pub(crate) fn on_proxy_ready(&mut self, token: Token) {
        for _ in 0..ACCEPT_BUDGET {
            let (accepted, proxy) = match self.slab.get(token) {
                Some(Dynamic::Proxy { listener, proxy }) => (listener.accept(), *proxy),
                _ => return,
            };
            match accepted {
                Ok((stream, SocketAddr::V4(addr))) => self.on_regular(proxy, stream, addr),
                Ok((_, addr)) => {
                    debug!("proxy {}: ignoring IPv6 connection from {addr}", proxy.addr)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if transient_accept_error(&e) => {}
                Err(e) => {
                    // Out of descriptors, typically: try again soon, since
                    // no new edge will announce the queued connections.
                    let now = Instant::now();
                    if let Some(more) = self.throttles.accept.hit(now) {
                        warn!(
                            "proxy {}: cannot accept: {e} ({more} more such errors)",
                            proxy.addr
                        );
                    }
                    self.schedule(now + ACCEPT_RETRY, Timer::Accept(token));
                    return;
                }
            }
        }
        // Budget spent: the queue may still hold connections, and no new
        // edge will say so.
        self.rerun.push_back(token);
    }

    fn on_regular(&mut self, proxy: Endpoint, stream: TcpStream, addr: SocketAddrV4) {
        let now = Instant::now();
        self.counters.regular_accepted += 1;
        let Some(record) = self.registry.get(&proxy) else {
            abort(stream);
            return;
        };
        let (mgmt, local) = (record.commanded(now).mgmt, record.local);
        if !self.relay_room() {
            self.relay_refused(
                &format!("the connection from {addr} to {}", proxy.addr),
                now,
            );
            abort(stream);
            return;
        }
        let token = self.new_token();
        let mut pending = Pending::new(
            Kind::Regular,
            proxy.addr,
            mgmt,
            addr,
            now,
            now + PAIR_TIMEOUT,
        );
        pending.connector = Some(Half { stream, addr });
        let msg = Message::RelayConnect {
            token,
            broker: self.rendezvous_addr,
            peer: addr,
            proxy: proxy.addr,
        };
        match self.start_pairing(token, pending, msg, now) {
            Ok(()) => info!(
                "connection from {addr} to proxy {}: asking listener {local} (mgmt {mgmt}) to meet it at {}",
                proxy.addr, self.rendezvous_addr
            ),
            Err(e) => warn!("connection from {addr} to proxy {}: cannot ask the listener: {e}", proxy.addr),
        }
    }

    /// Deregisters and closes a proxy socket, with a UDP one's relay rules.
    pub(crate) fn close_proxy(&mut self, token: Token) {
        match self.slab.remove(token) {
            Some(Dynamic::Proxy { mut listener, .. }) => {
                let _ = self.poll.registry().deregister(&mut listener);
            }
            Some(Dynamic::UdpProxy { proxy, mut socket }) => {
                let _ = self.poll.registry().deregister(&mut socket);
                self.udp.table.remove(&proxy.addr);
                self.close_channels_of(proxy.addr);
            }
            _ => {}
        }
    }
}
