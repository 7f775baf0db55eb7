//! `gcb-broker query HOST:PORT [--json]`: the operator's view of a running
//! broker, fetched over the command port with `StatusRequest` pages (see
//! `status`) and printed as the broker rendered it.
//!
//! The pages are asked for and put together by `proto::gcb::StatusFetch`.
//! Every request is retransmitted by the proto `Requester` with the default
//! policy, so a lost datagram costs a retransmission, and a broker that does
//! not answer at all costs about 3 s, then one clear line and exit code 1.

use std::io;
use std::net::{SocketAddr, SocketAddrV4, ToSocketAddrs, UdpSocket};
use std::time::{Duration, Instant};

use proto::auth::{AuthError, Authenticator};
use proto::gcb::{self, Message, Progress, StatusFetch, StatusFormat, COMMAND_PORT};
use proto::rudp::{Requester, RetryPolicy, Timeout};
use proto::DecodeError;

/// Snapshots may expire between pages (a very slow link); start over at
/// most this many times.
const MAX_RESTARTS: usize = 3;

/// Resolves `HOST:PORT` (or a bare host, on the default command port) to
/// an IPv4 address.
fn resolve(target: &str) -> Result<SocketAddrV4, String> {
    let with_port = if target.parse::<SocketAddr>().is_ok()
        || target
            .rsplit_once(':')
            .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        target.to_string()
    } else {
        format!("{target}:{COMMAND_PORT}")
    };
    let addrs = with_port
        .to_socket_addrs()
        .map_err(|e| format!("query: cannot resolve {target}: {e}"))?;
    addrs
        .filter_map(|a| match a {
            SocketAddr::V4(a) => Some(a),
            SocketAddr::V6(_) => None,
        })
        .next()
        .ok_or_else(|| format!("query: {target} has no IPv4 address"))
}

/// One request, retransmitted until its reply arrives or the policy gives up.
fn exchange(
    sock: &UdpSocket,
    to: SocketAddrV4,
    req: &mut Requester<SocketAddrV4>,
    auth: &mut Option<Authenticator>,
    msg: &Message,
) -> Result<Message, String> {
    let (id, bytes) = req
        .send(to, Instant::now(), |id| {
            daemon_kit::auth::seal(auth.as_ref(), gcb::encode(msg, id))
        })
        .map_err(|e| format!("query: {e}"))?;
    let bytes = bytes.to_vec();
    sock.send(&bytes).map_err(|e| failure(to, e))?;
    let mut buf = vec![0u8; 65_536];
    loop {
        let now = Instant::now();
        let wait = req
            .next_deadline()
            .map_or(Duration::from_millis(1), |t| {
                t.saturating_duration_since(now)
            })
            .max(Duration::from_millis(1));
        sock.set_read_timeout(Some(wait))
            .map_err(|e| failure(to, e))?;
        match sock.recv(&mut buf) {
            Ok(n) => {
                let Some((header, reply)) = open_reply(auth, &buf[..n], to)? else {
                    continue;
                };
                if header.request_id == id && req.on_response(id, &to, Instant::now()).is_some() {
                    return Ok(reply);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(failure(to, e)),
        }
        for t in req.poll_timeout(Instant::now()) {
            match t {
                Timeout::Retransmit { bytes, .. } => {
                    sock.send(&bytes).map_err(|e| failure(to, e))?;
                }
                Timeout::GaveUp { .. } => {
                    let total = req.policy().total;
                    return Err(format!(
                        "query: no answer from {to} within {total:?}; is gcb-broker running there?"
                    ));
                }
            }
        }
    }
}

/// Decodes a reply, opening it first with a secret. `None`: a sealed reply
/// that does not open (forged, replayed): ignored, the retransmissions go on.
fn open_reply(
    auth: &mut Option<Authenticator>,
    datagram: &[u8],
    to: SocketAddrV4,
) -> Result<Option<(proto::Header, Message)>, String> {
    let opened;
    let plain = match auth {
        None => datagram,
        Some(a) => match a.open(datagram, daemon_kit::auth::stamp_now().unix_ms) {
            Ok(m) => {
                opened = m;
                &opened
            }
            Err(AuthError::Missing) => {
                return Err(format!(
                    "query: {to} answered without authentication; is its --secret-file set?"
                ))
            }
            Err(_) => return Ok(None),
        },
    };
    match gcb::decode(plain) {
        Ok(decoded) => Ok(Some(decoded)),
        Err(DecodeError::AuthUnsupported) => Err(format!(
            "query: {to} answered with authentication; pass its --secret-file"
        )),
        Err(_) => Err(format!(
            "query: {to} answered something that is not the GCB protocol"
        )),
    }
}

fn failure(to: SocketAddrV4, e: io::Error) -> String {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        format!("query: no broker at {to} (connection refused)")
    } else {
        format!("query: {to}: {e}")
    }
}

/// Fetches the whole status text from the broker at `target`.
pub fn fetch(target: &str, json: bool, mut auth: Option<Authenticator>) -> Result<String, String> {
    let to = resolve(target)?;
    let sock =
        UdpSocket::bind("0.0.0.0:0").map_err(|e| format!("query: cannot open a socket: {e}"))?;
    // Connected, so an absent broker shows as ECONNREFUSED at once.
    sock.connect(to).map_err(|e| failure(to, e))?;
    let format = if json {
        StatusFormat::Json
    } else {
        StatusFormat::Text
    };
    let mut req = Requester::new(RetryPolicy::default(), daemon_kit::random::random_u64(), 1);
    let mut fetch = StatusFetch::new(format);
    let mut restarts = 0;
    while let Some(msg) = fetch.request() {
        let reply = exchange(&sock, to, &mut req, &mut auth, &msg)?;
        match fetch.on_reply(reply) {
            Ok(Progress::More | Progress::Done) => {}
            Ok(Progress::Restarted) if restarts < MAX_RESTARTS => restarts += 1,
            Ok(Progress::Restarted) => {
                return Err(format!(
                    "query: the status of {to} kept expiring before all pages arrived"
                ))
            }
            Err(e) => return Err(format!("query: the broker at {to}: {e}")),
        }
    }
    let mut text = fetch.into_text();
    if !text.ends_with('\n') {
        text.push('\n');
    }
    Ok(text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_resolve_with_or_without_port() {
        assert_eq!(
            resolve("127.0.0.1:7").unwrap(),
            "127.0.0.1:7".parse().unwrap()
        );
        assert_eq!(resolve("127.0.0.1").unwrap().port(), COMMAND_PORT);
        assert_eq!(resolve("localhost:9").unwrap().port(), 9);
        assert!(resolve("[::1]:9").unwrap_err().contains("no IPv4"));
    }

    #[test]
    fn silent_or_absent_broker_is_one_clear_error() {
        // A bound socket that never answers: the requester gives up.
        let mute = UdpSocket::bind("127.0.0.1:0").unwrap();
        let err = fetch(&mute.local_addr().unwrap().to_string(), false, None).unwrap_err();
        assert!(
            err.contains("no answer") || err.contains("refused"),
            "{err}"
        );
        // A closed port: refused at once.
        let port = UdpSocket::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = fetch(&format!("127.0.0.1:{port}"), true, None).unwrap_err();
        assert!(err.contains("refused"), "{err}");
    }
}
