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

mod json;
mod render;

pub use render::{HolderView, PendingView, RegView, RelayView, UdpRuleView, View};

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, Instant};

use proto::gcb::{paginate, ErrorCode, Message, StatusFormat, MAX_STATUS_CHUNK};
use tracing::{debug, warn};

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

impl Snapshots {
    fn expire(&mut self, now: Instant) {
        self.list
            .retain(|s| now.saturating_duration_since(s.taken) < SNAPSHOT_TTL);
    }

    /// Stores a rendered snapshot under `id`. A snapshot is at most
    /// [`MAX_SNAPSHOT_BYTES`], far fewer pages than a reply can count, so
    /// the error is for a text that broke that bound.
    pub fn store(&mut self, id: u64, text: &str, now: Instant) -> Result<(), String> {
        let pages = paginate(text, MAX_STATUS_CHUNK).map_err(|e| e.to_string())?;
        self.expire(now);
        while self.list.len() >= MAX_SNAPSHOTS {
            self.list.pop_front();
        }
        self.list.push_back(Snapshot {
            id,
            taken: now,
            pages,
        });
        Ok(())
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
            // `paginate` makes at most u16::MAX pages.
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
        match self.snapshots.store(id, &text, now) {
            Ok(()) => self.snapshots.page(id, page, now),
            Err(e) => {
                warn!("status request from {from}: {e}");
                Message::error(ErrorCode::Internal, &e)
            }
        }
    }

    /// The broker's state at `now`, sorted for stable output.
    fn view(&self, now: Instant) -> View {
        let ago = |t: Instant| now.saturating_duration_since(t);
        let mut registrations: Vec<RegView> = self
            .registry
            .iter()
            .map(|r| {
                let freshest = r.freshest();
                // The freshest first, and on a tie the latest to join, as
                // `Record::freshest` picks them (the sort is stable).
                let mut holders: Vec<HolderView> = r
                    .holders()
                    .iter()
                    .rev()
                    .map(|h| HolderView {
                        mgmt: h.mgmt,
                        pid: h.pid,
                        program: h.program.clone(),
                        heartbeat_secs: h.heartbeat_secs,
                        age: ago(h.joined),
                        since_heartbeat: ago(h.last_heartbeat),
                    })
                    .collect();
                holders.sort_by_key(|h| h.since_heartbeat);
                RegView {
                    proto: r.proxy.proto,
                    proxy: r.proxy.addr,
                    local: r.local,
                    observed: freshest.mgmt,
                    public: r.public,
                    realm: match &r.realm {
                        Realm::Named(name) => name.clone(),
                        Realm::Ip(ip) => ip.to_string(),
                    },
                    realm_named: matches!(r.realm, Realm::Named(_)),
                    pid: freshest.pid,
                    program: freshest.program.clone(),
                    age: ago(r.registered),
                    since_heartbeat: ago(freshest.last_heartbeat),
                    heartbeat_secs: freshest.heartbeat_secs,
                    data_path: self.udp.table.data_path(&r.proxy.addr),
                    holders,
                }
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
    fn snapshots_are_paged_bounded_and_expire() {
        let t = Instant::now();
        let mut s = Snapshots::default();
        let big = "x".repeat(MAX_STATUS_CHUNK * 2 + 1);
        s.store(7, &big, t).unwrap();
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
            s.store(id, "x", t).unwrap();
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
