//! The status query, as the core answers it: who may ask, and the
//! snapshot of the broker's state (`status` keeps and renders it).
//!
//! Who may ask: loopback, any address of the broker's own host, and the
//! networks given with `--status-allow`. The state names every client's
//! addresses and programs, which strangers have no business seeing.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::Instant;

use proto::gcb::{ErrorCode, Message, StatusFormat};
use tracing::{debug, warn};

use super::{Engine, Host};
use crate::decide::Realm;
use crate::pairing::Kind;
use crate::status::{
    self, BlockedView, Head, HolderView, LimitsView, PendingView, RegView, Relayed, UdpRuleView, View,
    MAX_SNAPSHOT_BYTES,
};
use crate::udp::rules::{TO_CLIENT, TO_PEER};

impl Engine {
    pub(super) fn status_allowed(&self, ip: Ipv4Addr, host: &impl Host) -> bool {
        ip.is_loopback()
            || ip == self.public_ip
            || self
                .config
                .limits
                .status_allow
                .0
                .iter()
                .any(|n| n.contains(ip.into()))
            || host.is_own_address(ip)
    }

    pub(super) fn on_status(
        &mut self,
        from: SocketAddrV4,
        snapshot: u64,
        page: u16,
        format: StatusFormat,
        now: Instant,
        host: &impl Host,
    ) -> Message {
        if !self.status_allowed(*from.ip(), host) {
            debug!("status request from {from} refused");
            return Message::error(
                ErrorCode::Unauthorized,
                "this broker answers status queries only from its own host and --status-allow",
            );
        }
        if snapshot != 0 {
            return self.snapshots.page(snapshot, page, now);
        }
        let view = self.view(now, host);
        let text = match format {
            StatusFormat::Text => status::text(&view, MAX_SNAPSHOT_BYTES),
            StatusFormat::Json => status::json(&view, MAX_SNAPSHOT_BYTES),
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
    pub(super) fn view(&self, now: Instant, host: &impl Host) -> View {
        let mut relays = host.relays();
        relays.sort_by_key(|r| r.id);
        let bytes_relayed = relays.iter().fold(
            Relayed {
                to_listener: self.counters.bytes_closed[0],
                to_connector: self.counters.bytes_closed[1],
            },
            |acc, r| Relayed {
                to_listener: acc.to_listener + r.bytes_to_listener,
                to_connector: acc.to_connector + r.bytes_to_connector,
            },
        );
        let pool = self.registry.pool(proto::Proto::Tcp);
        let limits = &self.config.limits;
        let mut counters = self.counter_fields();
        counters.push(("relays_active", self.relays as u64));
        counters.push(("commands_in_flight", self.asyncs.len() as u64));
        counters.push(("udp_rules_active", self.udp.table.rules_len() as u64));
        counters.push(("udp_channels_active", self.udp.channels.len() as u64));
        View {
            head: Head {
                version: env!("CARGO_PKG_VERSION"),
                uptime: self.uptime(now),
                command: self.command,
                rendezvous: self.rendezvous,
                port_range: self.config.port_range,
                free_ports: pool.free(),
                quarantined_ports: pool.quarantined(),
                limits: LimitsView {
                    max_registrations: limits.max_registrations,
                    max_relays: limits.max_relays,
                    rate_limit: limits.rate_limit,
                },
            },
            registrations: self.registration_views(now),
            relays,
            pending: self.pending_views(now),
            udp_rules: self.udp_rule_views(now),
            punch_blocked: self
                .punch_cache
                .blocked_list(now)
                .into_iter()
                .map(|b| BlockedView {
                    proto: b.proto,
                    realms: b.ips,
                    expires_in: b.left,
                })
                .collect(),
            bytes_relayed,
            counters,
        }
    }

    fn registration_views(&self, now: Instant) -> Vec<RegView> {
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
        registrations
    }

    fn pending_views(&self, now: Instant) -> Vec<PendingView> {
        let mut pending: Vec<PendingView> = self
            .pairings
            .iter()
            .map(|(_, p)| PendingView {
                kind: match p.kind {
                    Kind::Reversal => "reversal",
                    Kind::Relay => "relay",
                    Kind::Regular => "regular",
                    Kind::Punch => "punch",
                },
                proxy: p.proxy,
                peer: p.peer,
                age: now.saturating_duration_since(p.created),
                expires_in: p.deadline.saturating_duration_since(now),
                connector_here: p.connector.is_some(),
                listener_here: p.listener.is_some(),
            })
            .collect();
        pending.sort_by_key(|p| std::cmp::Reverse(p.age));
        pending
    }

    fn udp_rule_views(&self, now: Instant) -> Vec<UdpRuleView> {
        let ago = |t: Instant| now.saturating_duration_since(t);
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
                    datagrams_to_client: rule.datagrams[TO_CLIENT],
                    bytes_to_client: rule.bytes[TO_CLIENT],
                    datagrams_to_peer: rule.datagrams[TO_PEER],
                    bytes_to_peer: rule.bytes[TO_PEER],
                })
            })
            .collect();
        udp_rules.sort_by_key(|r| (r.proxy, r.peer));
        udp_rules
    }
}
