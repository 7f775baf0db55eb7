//! The status query (`gcb-broker query`), broker side.
//!
//! A `StatusRequest` with snapshot 0 takes a snapshot of the broker's state,
//! renders it once (text or JSON, see `render`), cuts it into pages of at
//! most [`MAX_STATUS_CHUNK`] bytes and answers page 0 with the snapshot's
//! id; the tool then asks for the other pages of that snapshot, so all
//! pages come from the same moment however long the transfer takes.
//! Snapshots are kept for [`SNAPSHOT_TTL`], at most [`MAX_SNAPSHOTS`] of
//! them, each at most [`MAX_SNAPSHOT_BYTES`]: the memory a status request
//! can make the broker hold is bounded.
//!
//! Who may ask: loopback, any address of the broker's own host, and the
//! networks given with `--status-allow`. The state names every client's
//! addresses and programs, which strangers have no business seeing.

mod render;

pub use render::{PendingView, RegView, RelayView, UdpRuleView, View};

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use proto::gcb::{ErrorCode, Message, StatusFormat, MAX_STATUS_CHUNK};
use proto::wire::truncate_str;
use tracing::debug;

use crate::daemon::Daemon;
use crate::decide::Realm;
use crate::pairing::Kind;

/// How long the pages of a snapshot can be fetched.
pub const SNAPSHOT_TTL: Duration = Duration::from_secs(30);
/// Snapshots kept at once; the oldest goes first.
pub const MAX_SNAPSHOTS: usize = 4;
/// Size of one rendered snapshot; lists are cut to fit.
pub const MAX_SNAPSHOT_BYTES: usize = 4 << 20;

struct Snapshot {
    id: u64,
    taken: Instant,
    pages: Vec<String>,
}

/// Recent snapshots, oldest first.
#[derive(Default)]
pub struct Snapshots {
    list: VecDeque<Snapshot>,
}

/// Cuts `text` into pieces of at most `max` bytes on character boundaries;
/// always at least one piece (an empty one for empty text).
pub fn paginate(text: &str, max: usize) -> Vec<String> {
    let mut pages = Vec::new();
    let mut rest = text;
    loop {
        let page = truncate_str(rest, max);
        pages.push(page.to_owned());
        rest = &rest[page.len()..];
        if rest.is_empty() || page.is_empty() {
            return pages;
        }
    }
}

impl Snapshots {
    fn expire(&mut self, now: Instant) {
        self.list
            .retain(|s| now.saturating_duration_since(s.taken) < SNAPSHOT_TTL);
    }

    /// Stores a rendered snapshot and returns its id.
    pub fn store(&mut self, id: u64, text: &str, now: Instant) -> u64 {
        self.expire(now);
        while self.list.len() >= MAX_SNAPSHOTS {
            self.list.pop_front();
        }
        self.list.push_back(Snapshot {
            id,
            taken: now,
            pages: paginate(text, MAX_STATUS_CHUNK),
        });
        id
    }

    /// Page `page` of snapshot `id` as a reply message.
    pub fn page(&mut self, id: u64, page: u16, now: Instant) -> Message {
        self.expire(now);
        let Some(s) = self.list.iter().find(|s| s.id == id) else {
            return Message::error(
                ErrorCode::UnknownToken,
                "status snapshot expired; ask again",
            );
        };
        let Some(chunk) = s.pages.get(usize::from(page)) else {
            return Message::error(ErrorCode::BadRequest, "no such status page");
        };
        Message::StatusReply {
            snapshot: id,
            page,
            // At most 4 MiB / 32 KiB pages, far below u16::MAX.
            pages: u16::try_from(s.pages.len()).unwrap_or(u16::MAX),
            chunk: chunk.clone(),
        }
    }
}

/// Whether `ip` is an address of this host: binding to it succeeds.
fn is_own_address(ip: Ipv4Addr) -> bool {
    std::net::UdpSocket::bind(SocketAddrV4::new(ip, 0)).is_ok()
}

impl Daemon {
    pub(crate) fn status_allowed(&self, ip: Ipv4Addr) -> bool {
        ip.is_loopback()
            || ip == self.public_ip
            || self
                .config
                .status_allow
                .0
                .iter()
                .any(|n| n.contains(ip.into()))
            || is_own_address(ip)
    }

    pub(crate) fn on_status(
        &mut self,
        from: SocketAddrV4,
        snapshot: u64,
        page: u16,
        format: StatusFormat,
        now: Instant,
    ) -> Message {
        if !self.status_allowed(*from.ip()) {
            debug!("status request from {from} refused");
            return Message::error(
                ErrorCode::Unauthorized,
                "this broker answers status queries only from its own host and --status-allow",
            );
        }
        if snapshot != 0 {
            return self.snapshots.page(snapshot, page, now);
        }
        let view = self.view(now);
        let text = match format {
            StatusFormat::Text => render::text(&view, MAX_SNAPSHOT_BYTES),
            StatusFormat::Json => render::json(&view, MAX_SNAPSHOT_BYTES),
        };
        let id = loop {
            let id = daemon_kit::random::random_u64();
            if id != 0 {
                break id;
            }
        };
        self.snapshots.store(id, &text, now);
        self.snapshots.page(id, page, now)
    }

    /// The broker's state at `now`, sorted for stable output.
    fn view(&self, now: Instant) -> View {
        let ago = |t: Instant| now.saturating_duration_since(t);
        let mut registrations: Vec<RegView> = self
            .registry
            .iter()
            .map(|r| RegView {
                proto: r.proxy.proto,
                proxy: r.proxy.addr,
                local: r.local,
                observed: r.client.mgmt,
                public: r.client.public,
                realm: match &r.client.realm {
                    Realm::Named(name) => name.clone(),
                    Realm::Ip(ip) => ip.to_string(),
                },
                realm_named: matches!(r.client.realm, Realm::Named(_)),
                pid: r.client.pid,
                program: r.client.program.clone(),
                age: ago(r.registered),
                since_heartbeat: ago(r.last_heartbeat),
                heartbeat_secs: r.client.heartbeat_secs,
                data_path: self.udp.table.data_path(&r.proxy.addr),
            })
            .collect();
        registrations.sort_by_key(|r| (r.proto, r.proxy));
        let mut relays: Vec<RelayView> = self
            .relays
            .iter()
            .map(|(id, r)| RelayView {
                id: *id,
                connector: r.addrs[0],
                listener: r.addrs[1],
                proxy: r.proxy,
                bytes: r.bytes(),
                age: ago(r.started),
            })
            .collect();
        relays.sort_by_key(|r| r.id);
        let mut pending: Vec<PendingView> = self
            .pairings
            .iter()
            .map(|(_, p)| PendingView {
                kind: match p.kind {
                    Kind::Reversal => "reversal",
                    Kind::Relay => "relay",
                    Kind::Regular => "regular",
                },
                proxy: p.proxy,
                peer: p.peer,
                age: ago(p.created),
                expires_in: p.deadline.saturating_duration_since(now),
                connector_here: p.connector.is_some(),
                listener_here: p.listener.is_some(),
            })
            .collect();
        pending.sort_by_key(|p| std::cmp::Reverse(p.age));
        let mut udp_rules: Vec<UdpRuleView> = self
            .udp
            .table
            .iter()
            .flat_map(|(proxy, reg)| {
                reg.rules().map(|(peer, rule)| UdpRuleView {
                    peer: *peer,
                    proxy: *proxy,
                    age: ago(rule.created),
                    idle: ago(rule.last_used),
                    datagrams: rule.datagrams,
                    bytes: rule.bytes,
                })
            })
            .collect();
        udp_rules.sort_by_key(|r| (r.proxy, r.peer));
        let pool = self.registry.pool(proto::Proto::Tcp);
        let limits = &self.config.limits;
        let mut counters = self.counters.fields();
        counters.extend(self.auth_counters());
        counters.push(("relays_active", self.relays.len() as u64));
        counters.push(("commands_in_flight", self.asyncs.len() as u64));
        counters.push(("udp_rules_active", self.udp.table.rules_len() as u64));
        counters.push(("udp_channels_active", self.udp.channels.len() as u64));
        View {
            version: env!("CARGO_PKG_VERSION"),
            uptime: ago(self.started),
            command: self.command_addr,
            rendezvous: self.rendezvous_addr,
            port_range: self.config.port_range,
            free_ports: pool.free(),
            quarantined_ports: pool.quarantined(),
            max_registrations: limits.max_registrations,
            max_relays: limits.max_relays,
            rate_limit: limits.rate_limit,
            registrations,
            relays,
            pending,
            udp_rules,
            bytes_relayed: self.relays.bytes_total(&self.counters),
            counters,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_cut_on_character_boundaries_and_join_back() {
        let text = "é".repeat(10);
        let pages = paginate(&text, 3);
        assert!(pages.iter().all(|p| p.len() <= 3 && !p.is_empty()));
        assert_eq!(pages.concat(), text);
        assert_eq!(paginate("", 3), vec![String::new()]);
        assert_eq!(paginate("abcdef", 3), vec!["abc", "def"]);
    }

    /// Every text of up to 6 characters of 1 to 4 bytes each, cut at every
    /// limit that holds the widest character: pages stay within the limit,
    /// are never empty, join back to the text, and each one travels in a
    /// `StatusReply` that decodes to the same page.
    #[test]
    fn every_short_text_pages_and_round_trips() {
        let alphabet = ['a', 'é', '€', '😀'];
        for len in 0..=6u32 {
            for n in 0..4usize.pow(len) {
                let text: String = (0..len).map(|i| alphabet[n / 4usize.pow(i) % 4]).collect();
                for max in 4..=9 {
                    let pages = paginate(&text, max);
                    assert_eq!(pages.concat(), text, "max {max}");
                    let total = pages.len() as u16;
                    for (i, page) in pages.iter().enumerate() {
                        assert!(page.len() <= max && (!page.is_empty() || text.is_empty()));
                        let reply = Message::StatusReply {
                            snapshot: 9,
                            page: i as u16,
                            pages: total,
                            chunk: page.clone(),
                        };
                        let bytes = proto::gcb::encode(&reply, 1).unwrap();
                        assert_eq!(proto::gcb::decode(&bytes).unwrap().1, reply);
                    }
                }
            }
        }
    }

    #[test]
    fn snapshots_are_paged_bounded_and_expire() {
        let t = Instant::now();
        let mut s = Snapshots::default();
        let big = "x".repeat(MAX_STATUS_CHUNK * 2 + 1);
        s.store(7, &big, t);
        match s.page(7, 2, t) {
            Message::StatusReply {
                snapshot,
                page,
                pages,
                chunk,
            } => {
                assert_eq!((snapshot, page, pages, chunk.len()), (7, 2, 3, 1));
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            s.page(7, 3, t),
            Message::Error {
                code: ErrorCode::BadRequest,
                ..
            }
        ));
        assert!(matches!(
            s.page(8, 0, t),
            Message::Error {
                code: ErrorCode::UnknownToken,
                ..
            }
        ));
        for id in 10..10 + MAX_SNAPSHOTS as u64 {
            s.store(id, "x", t);
        }
        assert!(
            matches!(s.page(7, 0, t), Message::Error { .. }),
            "oldest dropped at the cap"
        );
        assert!(matches!(s.page(10, 0, t), Message::StatusReply { .. }));
        let later = t + SNAPSHOT_TTL;
        assert!(
            matches!(s.page(10, 0, later), Message::Error { .. }),
            "expired"
        );
    }
}
