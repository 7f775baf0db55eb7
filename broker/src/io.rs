//! The sockets the event loop holds for the core, and the [`Host`] the
//! core opens them through: proxy listeners and UDP sockets, channel
//! sockets, rendezvous connections waiting for their hello, streams parked
//! for a pairing, and running relays.
//!
//! Invariants:
//! 1. Every source in `slab` is registered with `poll` under its slot's
//!    token, and deregistered when it leaves the slab; slots freed in one
//!    event batch are reused only after it (`TokenSlab`), so a late event
//!    never reaches a new socket.
//! 2. A stream in `parked` is named by exactly one of the core's pairings
//!    (or by an effect not carried out yet): it leaves `parked` only by a
//!    `Reject`, `Abort` or `Relay` effect, or at shutdown.
//! 3. A parked stream is registered with `poll` exactly while `watched`
//!    names it (a punch's rendezvous connection whose report is awaited),
//!    under a slab slot holding `Dynamic::Punch` with its id.
//! 4. A relay in `relays` has both streams registered, under the two slab
//!    slots in its `tokens`, each holding `Dynamic::Relay` with its id.

use std::collections::HashMap;
use std::io::{self, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};

use mio::net::{TcpListener, TcpStream, UdpSocket};
use mio::{Interest, Poll, Token};
use proto::gcb::punch::PunchReport;
use proto::gcb::FrameReader;
use proto::{Endpoint, Proto};
use tracing::error;

use crate::engine::{Host, Opening, SocketId, StreamId};
use crate::relay::{Hello, Relays};
use crate::status::RelayView;
use crate::tokens::TokenSlab;

/// Event sources that get a token from the slab.
pub(crate) enum Dynamic {
    /// The proxy TCP listener of registration `proxy`.
    Proxy {
        proxy: Endpoint,
        listener: TcpListener,
    },
    /// A rendezvous connection that has not said hello yet.
    Hello(Hello),
    /// A parked punch connection whose report is awaited.
    Punch {
        stream: StreamId,
        reader: FrameReader<PunchReport>,
    },
    /// One of the two sockets of relay number `.0`.
    Relay(u64),
    /// The proxy UDP socket of registration `proxy`.
    UdpProxy { proxy: Endpoint, socket: UdpSocket },
    /// A UDP channel socket at `addr`.
    UdpChannel {
        addr: SocketAddrV4,
        socket: UdpSocket,
    },
}

/// What the event loop holds besides its fixed sockets.
pub(crate) struct Io {
    pub poll: Poll,
    pub slab: TokenSlab<Dynamic>,
    /// Connections the core's pairings hold, by the id it knows them by.
    parked: HashMap<StreamId, TcpStream>,
    /// Parked streams being read, and their slots (invariant 3).
    watched: HashMap<StreamId, Token>,
    next_stream: u64,
    pub relays: Relays,
}

impl Io {
    pub fn new(poll: Poll) -> Io {
        Io {
            poll,
            slab: TokenSlab::new(),
            parked: HashMap::new(),
            watched: HashMap::new(),
            next_stream: 0,
            relays: Relays::default(),
        }
    }

    /// Keeps `stream` for the core, which names it by the id returned.
    pub fn park(&mut self, stream: TcpStream) -> StreamId {
        self.next_stream += 1;
        let id = StreamId(self.next_stream);
        self.parked.insert(id, stream);
        id
    }

    /// Takes back a stream the core hands back.
    pub fn unpark(&mut self, id: StreamId) -> Option<TcpStream> {
        self.unwatch_parked(id);
        self.parked.remove(&id)
    }

    pub fn parked_mut(&mut self, id: StreamId) -> Option<&mut TcpStream> {
        self.parked.get_mut(&id)
    }

    /// Reads a parked stream from now on: its events come as
    /// `Dynamic::Punch`.
    pub fn watch_parked(&mut self, id: StreamId) -> io::Result<()> {
        if self.watched.contains_key(&id) {
            return Ok(());
        }
        let stream = self.parked.get_mut(&id).ok_or(io::ErrorKind::NotFound)?;
        let token = self.slab.insert(Dynamic::Punch {
            stream: id,
            reader: FrameReader::new(),
        });
        if let Err(e) = self
            .poll
            .registry()
            .register(stream, token, Interest::READABLE)
        {
            self.slab.remove(token);
            return Err(e);
        }
        self.watched.insert(id, token);
        Ok(())
    }

    /// Stops reading a parked stream; it stays parked.
    pub fn unwatch_parked(&mut self, id: StreamId) {
        let Some(token) = self.watched.remove(&id) else {
            return;
        };
        self.slab.remove(token);
        if let Some(stream) = self.parked.get_mut(&id) {
            let _ = self.poll.registry().deregister(stream);
        }
    }

    /// Writes a small frame on a parked stream, whole: its send buffer holds
    /// at most other frames of the same exchange.
    pub fn send_parked(&mut self, id: StreamId, bytes: &[u8]) -> io::Result<()> {
        let stream = self.parked.get_mut(&id).ok_or(io::ErrorKind::NotFound)?;
        match stream.write(bytes)? {
            n if n == bytes.len() => Ok(()),
            _ => Err(io::ErrorKind::WriteZero.into()),
        }
    }

    /// Every parked stream, at shutdown.
    pub fn unpark_all(&mut self) -> Vec<TcpStream> {
        self.parked.drain().map(|(_, s)| s).collect()
    }

    /// Adds `source` to the slab and watches it for reading.
    pub fn watch(&mut self, source: Dynamic) -> io::Result<Token> {
        let token = self.slab.insert(source);
        let registry = self.poll.registry();
        let registered = match self.slab.get_mut(token) {
            Some(Dynamic::Proxy { listener, .. }) => {
                registry.register(listener, token, Interest::READABLE)
            }
            Some(Dynamic::UdpProxy { socket, .. } | Dynamic::UdpChannel { socket, .. }) => {
                registry.register(socket, token, Interest::READABLE)
            }
            Some(Dynamic::Hello(h)) => h.register(registry, token),
            _ => Err(io::ErrorKind::NotFound.into()),
        };
        match registered {
            Ok(()) => Ok(token),
            Err(e) => {
                self.slab.remove(token);
                Err(e)
            }
        }
    }

    /// Deregisters and closes the socket behind `token`.
    pub fn close(&mut self, token: Token) -> Option<Dynamic> {
        let mut source = self.slab.remove(token)?;
        let registry = self.poll.registry();
        let _ = match &mut source {
            Dynamic::Proxy { listener, .. } => registry.deregister(listener),
            Dynamic::UdpProxy { socket, .. } | Dynamic::UdpChannel { socket, .. } => {
                registry.deregister(socket)
            }
            Dynamic::Hello(h) => h.deregister(registry),
            Dynamic::Relay(_) | Dynamic::Punch { .. } => Ok(()),
        };
        Some(source)
    }
}

impl Host for Io {
    fn open(&mut self, what: Opening, addr: SocketAddrV4) -> io::Result<SocketId> {
        let at = SocketAddr::V4(addr);
        let source = match what {
            Opening::Proxy(proxy) if proxy.proto == Proto::Tcp => Dynamic::Proxy {
                proxy,
                listener: TcpListener::bind(at)?,
            },
            Opening::Proxy(proxy) => Dynamic::UdpProxy {
                proxy,
                socket: UdpSocket::bind(at)?,
            },
            Opening::Channel => Dynamic::UdpChannel {
                addr,
                socket: UdpSocket::bind(at)?,
            },
        };
        self.watch(source).map_err(|e| {
            error!("cannot watch the socket bound at {addr}: {e}");
            // Not AddrInUse, whatever it was: another port would not help.
            io::Error::other(format!("cannot watch it: {e}"))
        })
    }

    fn is_own_address(&self, ip: Ipv4Addr) -> bool {
        std::net::UdpSocket::bind(SocketAddrV4::new(ip, 0)).is_ok()
    }

    fn relays(&self) -> Vec<RelayView> {
        let now = std::time::Instant::now();
        self.relays
            .iter()
            .map(|(id, r)| {
                let [to_listener, to_connector] = r.bytes();
                RelayView {
                    id: *id,
                    connector: r.addrs[0],
                    listener: r.addrs[1],
                    proxy: r.proxy,
                    bytes_to_listener: to_listener,
                    bytes_to_connector: to_connector,
                    age: now.saturating_duration_since(r.started),
                }
            })
            .collect()
    }
}
