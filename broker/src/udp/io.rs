//! The event loop's side of the UDP sockets the core opened (proxy sockets
//! and channel sockets): drained up to a budget, each datagram read behind
//! the core's headroom and handed to it (`engine::udp`,
//! `engine::channels`), and whatever it answers sent. Sends that fail (a
//! full socket buffer, an ICMP error) drop the datagram, as UDP may.

use std::io;
use std::net::{SocketAddr, SocketAddrV4};
use std::time::Instant;

use mio::Token;
use tracing::debug;

use crate::daemon::Daemon;
use crate::engine::{UdpSend, HEADROOM};
use crate::io::Dynamic;
use crate::tokens::TokenSlab;

/// Datagrams read from one socket per event before other sources get their
/// turn.
const UDP_BUDGET: usize = 256;

/// Which kind of UDP socket a datagram arrived at.
enum At {
    Proxy(SocketAddrV4),
    Channel(SocketAddrV4),
}

/// Sends from the proxy (or channel) socket behind `token`.
fn send_from(
    slab: &TokenSlab<Dynamic>,
    token: Token,
    bytes: &[u8],
    to: SocketAddrV4,
) -> io::Result<()> {
    match slab.get(token) {
        Some(Dynamic::UdpProxy { socket, .. } | Dynamic::UdpChannel { socket, .. }) => {
            socket.send_to(bytes, SocketAddr::V4(to)).map(|_| ())
        }
        _ => Err(io::ErrorKind::NotFound.into()),
    }
}

impl Daemon {
    /// Drains a proxy or channel UDP socket up to the budget.
    pub(crate) fn on_udp_ready(&mut self, token: Token) {
        for _ in 0..UDP_BUDGET {
            let (received, at) = match self.io.slab.get(token) {
                Some(Dynamic::UdpProxy { socket, proxy }) => (
                    socket.recv_from(&mut self.buf[HEADROOM..]),
                    At::Proxy(proxy.addr),
                ),
                Some(Dynamic::UdpChannel { socket, addr }) => (
                    socket.recv_from(&mut self.buf[HEADROOM..]),
                    At::Channel(*addr),
                ),
                _ => return,
            };
            match received {
                Ok((len, SocketAddr::V4(from))) => {
                    let now = Instant::now();
                    let send = match at {
                        At::Proxy(proxy) => {
                            self.engine
                                .on_udp_datagram(token, proxy, from, &mut self.buf, len, now)
                        }
                        At::Channel(addr) => self
                            .engine
                            .on_channel_datagram(addr, from, &self.buf, len, now),
                    };
                    self.udp_send(send);
                }
                Ok(_) => self.engine.count().udp_malformed += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // An ICMP error from an earlier send, typically.
                    self.engine.count().receive_errors += 1;
                    debug!("udp socket {}: receive error: {e}", token.0);
                }
            }
        }
        self.rerun.push_back(token);
    }

    fn udp_send(&mut self, send: UdpSend) {
        let (sent, len, to) = match send {
            UdpSend::Nothing => return,
            UdpSend::Relay {
                from,
                range,
                to,
                dir,
            } => {
                let len = range.len();
                match send_from(&self.io.slab, from, &self.buf[range], to) {
                    Ok(()) => return self.engine.udp_sent(dir),
                    Err(e) => (e, len, to),
                }
            }
            UdpSend::Answer { from, to, bytes } => {
                match send_from(&self.io.slab, from, &bytes, to) {
                    Ok(()) => return,
                    Err(e) => (e, bytes.len(), to),
                }
            }
        };
        self.engine.count().udp_send_errors += 1;
        debug!("udp: cannot send {len} bytes to {to}: {sent}");
    }
}
