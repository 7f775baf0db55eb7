//! The `/metrics` endpoint: a small HTTP/1.1 server run by the daemon's own
//! mio event loop, beside its other sources. No thread, no runtime.
//!
//! A scraper can never stall the daemon:
//! * every socket is non-blocking, and a connection is only ever read or
//!   written as far as the kernel takes at that moment;
//! * at most [`MAX_CONNECTIONS`] connections at once; one over that is
//!   accepted and closed at once (counted), so the kernel's backlog never
//!   fills with scrapers the loop would have to come back to;
//! * a request is at most [`MAX_REQUEST`] bytes, and the answer is rendered
//!   once per request into a buffer sent as the socket takes it;
//! * each connection has [`TIMEOUT`] from accept to its last byte.
//!
//! One request per connection (`Connection: close`): a scrape every few
//! seconds gains nothing from keep-alive, and the server stays a list of
//! independent connections. After the answer the server shuts down its
//! side and reads until the scraper closes, so the answer is never cut by
//! a reset.
//!
//! Tokens: the listener and the connections use a block of fixed tokens far
//! above those of the daemons' token slabs ([`owns`] tells them apart).

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry, Token};

use super::{Snapshot, CONTENT_TYPE};

/// Connections served at once.
pub const MAX_CONNECTIONS: usize = 8;
/// Longest request (line and headers) read.
pub const MAX_REQUEST: usize = 8192;
/// From accept to the last byte of the answer.
pub const TIMEOUT: Duration = Duration::from_secs(10);
/// How long a closing connection may take to read the scraper's close.
const LINGER: Duration = Duration::from_secs(2);
/// Accepts per readiness event, so a connection flood shares the loop;
/// under a flood new connections keep bringing events for the rest.
const ACCEPTS_PER_EVENT: usize = 256;
/// The listener's token; connection `i` has `FIRST + 1 + i`.
const FIRST: usize = usize::MAX / 2;

/// Whether `token` is the metrics server's.
pub fn owns(token: Token) -> bool {
    (FIRST..=FIRST + MAX_CONNECTIONS).contains(&token.0)
}

/// What the server has done, shown next to the daemon's own counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Stats {
    /// Answers with the metrics.
    pub scrapes: u64,
    /// Connections closed at once because [`MAX_CONNECTIONS`] were open.
    pub refused: u64,
    /// Connections closed at [`TIMEOUT`].
    pub timed_out: u64,
    /// Requests answered with an error (bad request, unknown path, method).
    pub bad_requests: u64,
}

enum State {
    Reading(Vec<u8>),
    Writing {
        data: Vec<u8>,
        sent: usize,
    },
    /// Answer sent, our side shut down; waiting for the scraper's close.
    Closing,
}

struct Conn {
    stream: TcpStream,
    state: State,
    deadline: Instant,
    writable: bool,
}

pub struct Server {
    listener: TcpListener,
    addr: SocketAddr,
    conns: Vec<Option<Conn>>,
    pub stats: Stats,
}

/// The server for `--metrics-listen`, if given: bound, watched, and its
/// address logged. Errors are one line, for exit code 1.
pub fn start(listen: Option<SocketAddr>, registry: &Registry) -> Result<Option<Server>, String> {
    let Some(addr) = listen else {
        return Ok(None);
    };
    let server = Server::bind(addr, registry)?;
    tracing::info!("metrics at http://{}/metrics", server.local_addr());
    Ok(Some(server))
}

impl Server {
    /// Binds `addr` and watches it in `registry`. Errors are one line.
    pub fn bind(addr: SocketAddr, registry: &Registry) -> Result<Server, String> {
        let mut listener = TcpListener::bind(addr)
            .map_err(|e| format!("cannot bind the metrics port tcp {addr}: {e}"))?;
        let addr = listener
            .local_addr()
            .map_err(|e| format!("metrics socket: {e}"))?;
        registry
            .register(&mut listener, Token(FIRST), Interest::READABLE)
            .map_err(|e| format!("cannot watch the metrics socket: {e}"))?;
        Ok(Server {
            listener,
            addr,
            conns: (0..MAX_CONNECTIONS).map(|_| None).collect(),
            stats: Stats::default(),
        })
    }

    /// The address as bound (port 0 asks the kernel for one).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Adds the server's own counters to a scrape.
    pub fn report(&self, s: &mut Snapshot) {
        let st = self.stats;
        s.counter("metrics_scrapes", "Answers to GET /metrics", st.scrapes);
        s.counter(
            "metrics_refused",
            "Metrics connections closed at once: too many open",
            st.refused,
        );
        s.counter(
            "metrics_timed_out",
            "Metrics connections closed at their timeout",
            st.timed_out,
        );
        s.counter(
            "metrics_bad_requests",
            "Metrics requests answered with an error",
            st.bad_requests,
        );
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.conns.iter().filter(|c| c.is_some()).count()
    }

    /// Handles a readiness event for one of [`owns`]'s tokens. `render`
    /// makes the metrics text; it is called once per scrape request.
    pub fn on_event(
        &mut self,
        registry: &Registry,
        token: Token,
        now: Instant,
        render: &mut dyn FnMut() -> String,
    ) {
        if token.0 == FIRST {
            self.accept(registry, now);
        } else if let Some(i) = token.0.checked_sub(FIRST + 1) {
            if i < MAX_CONNECTIONS {
                self.serve(registry, i, render);
            }
        }
    }

    /// The earliest connection deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.conns.iter().flatten().map(|c| c.deadline).min()
    }

    /// Closes the connections past their deadline.
    pub fn expire(&mut self, registry: &Registry, now: Instant) {
        for i in 0..MAX_CONNECTIONS {
            if self.conns[i].as_ref().is_some_and(|c| c.deadline <= now) {
                if !matches!(
                    self.conns[i].as_ref().map(|c| &c.state),
                    Some(State::Closing)
                ) {
                    self.stats.timed_out += 1;
                }
                self.close(registry, i);
            }
        }
    }

    fn accept(&mut self, registry: &Registry, now: Instant) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let mut stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // Out of descriptors or a connection reset before accept:
                // the next scrape tries again.
                Err(e) => {
                    tracing::debug!("metrics: accept: {e}");
                    return;
                }
            };
            let Some(i) = self.conns.iter().position(Option::is_none) else {
                self.stats.refused += 1;
                continue;
            };
            if registry
                .register(&mut stream, Token(FIRST + 1 + i), Interest::READABLE)
                .is_err()
            {
                continue;
            }
            self.conns[i] = Some(Conn {
                stream,
                state: State::Reading(Vec::new()),
                deadline: now + TIMEOUT,
                writable: false,
            });
        }
    }

    fn serve(&mut self, registry: &Registry, i: usize, render: &mut dyn FnMut() -> String) {
        let Some(conn) = self.conns[i].as_mut() else {
            return;
        };
        let done = match &mut conn.state {
            State::Reading(buf) => match read_request(&mut conn.stream, buf) {
                Ok(Some(answer)) => {
                    let data = respond(&answer, render, &mut self.stats);
                    conn.state = State::Writing { data, sent: 0 };
                    conn.write(registry, Token(FIRST + 1 + i))
                }
                Ok(None) => false,
                Err(()) => true,
            },
            State::Writing { .. } => conn.write(registry, Token(FIRST + 1 + i)),
            State::Closing => drain(&mut conn.stream),
        };
        if done {
            self.close(registry, i);
        }
    }

    fn close(&mut self, registry: &Registry, i: usize) {
        if let Some(mut c) = self.conns[i].take() {
            let _ = registry.deregister(&mut c.stream);
        }
    }
}

impl Conn {
    /// Writes what the socket takes; true if the connection is finished
    /// with (failed, or answered and the scraper already gone).
    fn write(&mut self, registry: &Registry, token: Token) -> bool {
        let State::Writing { data, sent } = &mut self.state else {
            return false;
        };
        while *sent < data.len() {
            match self.stream.write(&data[*sent..]) {
                Ok(0) => return true,
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    if !self.writable {
                        self.writable = true;
                        let both = Interest::READABLE | Interest::WRITABLE;
                        return registry.reregister(&mut self.stream, token, both).is_err();
                    }
                    return false;
                }
                Err(_) => return true,
            }
        }
        let _ = self.stream.shutdown(Shutdown::Write);
        self.state = State::Closing;
        self.deadline = self.deadline.min(Instant::now() + LINGER);
        drain(&mut self.stream)
    }
}

/// Reads and drops what the scraper still sends; true at its close.
fn drain(stream: &mut TcpStream) -> bool {
    let mut sink = [0u8; 512];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(_) => return true,
        }
    }
}

/// What a request asks for.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    Metrics { head_only: bool },
    NotFound,
    BadMethod,
    BadRequest,
}

/// Reads what is there; `Ok(Some)` once the request's headers are in,
/// `Err` if the scraper closed or failed first.
fn read_request(stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<Option<Answer>, ()> {
    let mut chunk = [0u8; 2048];
    loop {
        match stream.read(&mut chunk) {
            Ok(0) => return Err(()),
            Ok(n) => {
                let room = MAX_REQUEST - buf.len();
                buf.extend_from_slice(&chunk[..n.min(room)]);
                if let Some(answer) = parse(buf) {
                    return Ok(Some(answer));
                }
                if buf.len() >= MAX_REQUEST {
                    return Ok(Some(Answer::BadRequest));
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(_) => return Err(()),
        }
    }
}

/// The answer to a complete request, or `None` while the headers are not.
fn parse(buf: &[u8]) -> Option<Answer> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").or_else(|| {
        // Bare newlines, as a hand-typed request may have.
        buf.windows(2).position(|w| w == b"\n\n")
    })?;
    let head = String::from_utf8_lossy(&buf[..end]);
    let line = head.lines().next().unwrap_or("");
    let mut words = line.split(' ');
    let (Some(method), Some(target), Some(version)) = (words.next(), words.next(), words.next())
    else {
        return Some(Answer::BadRequest);
    };
    if !version.starts_with("HTTP/1.") || words.next().is_some() {
        return Some(Answer::BadRequest);
    }
    let path = target.split('?').next().unwrap_or("");
    Some(match (method, path) {
        ("GET", "/metrics") => Answer::Metrics { head_only: false },
        ("HEAD", "/metrics") => Answer::Metrics { head_only: true },
        (_, "/metrics") => Answer::BadMethod,
        _ => Answer::NotFound,
    })
}

fn respond(answer: &Answer, render: &mut dyn FnMut() -> String, stats: &mut Stats) -> Vec<u8> {
    let (status, content_type, body, head_only) = match answer {
        Answer::Metrics { head_only } => {
            stats.scrapes += 1;
            ("200 OK", CONTENT_TYPE, render(), *head_only)
        }
        other => {
            stats.bad_requests += 1;
            let (status, body) = match other {
                Answer::NotFound => ("404 Not Found", "metrics are at /metrics\n"),
                Answer::BadMethod => ("405 Method Not Allowed", "GET /metrics\n"),
                _ => ("400 Bad Request", "GET /metrics\n"),
            };
            (status, "text/plain; charset=utf-8", body.to_string(), false)
        }
    };
    let mut out = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        body.len()
    )
    .into_bytes();
    if !head_only {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

#[cfg(test)]
#[path = "http_tests.rs"]
mod tests;
