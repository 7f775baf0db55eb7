//! Proxy listeners: a program without the shim dials a proxy address as if
//! it were the listener's (paper 4.1, "normal connectors"). Each connection
//! is accepted and handed to the core (`engine::streams`), which parks it
//! unread and asks the listener to come to the rendezvous.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Token;
use tracing::{debug, warn};

use super::rendezvous::{transient_accept_error, ACCEPT_BUDGET, ACCEPT_RETRY};
use crate::daemon::{Daemon, Timer};
use crate::io::Dynamic;

impl Daemon {
    /// Accepts on a proxy listener, up to the budget.
    pub(crate) fn on_proxy_ready(&mut self, token: Token) {
        for _ in 0..ACCEPT_BUDGET {
            let (accepted, proxy) = match self.io.slab.get(token) {
                Some(Dynamic::Proxy { listener, proxy }) => (listener.accept(), *proxy),
                _ => return,
            };
            match accepted {
                Ok((stream, SocketAddr::V4(addr))) => {
                    let stream = self.io.park(stream);
                    self.engine.on_regular(proxy, stream, addr, Instant::now());
                    self.carry_out();
                }
                Ok((_, addr)) => {
                    debug!("proxy {}: ignoring IPv6 connection from {addr}", proxy.addr)
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if transient_accept_error(&e) => {}
                Err(e) => {
                    // Out of descriptors, typically: try again soon, since
                    // no new edge will announce the queued connections.
                    let now = Instant::now();
                    if let Some(more) = self.accept_errors.hit(now) {
                        warn!(
                            "proxy {}: cannot accept: {e} ({more} more such errors)",
                            proxy.addr
                        );
                    }
                    self.timers
                        .schedule(now + ACCEPT_RETRY, Timer::Accept(token));
                    return;
                }
            }
        }
        // Budget spent: the queue may still hold connections, and no new
        // edge will say so.
        self.rerun.push_back(token);
    }
}
