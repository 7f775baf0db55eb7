//! The clients of the core's tests, at known places (`Proc`), the requests
//! they send, and the configuration the core runs with.

use std::net::{Ipv4Addr, SocketAddrV4};

use proto::gcb::{Message, MgmtInfo};
use proto::Proto;

use super::harness::{BROKER, RANGE};
use crate::config::{Config, Limits};
use crate::values::Networks;
use daemon_kit::settings::Shared;

/// A process with a management socket, as the broker sees it (`mgmt`,
/// through its NAT if any) and as it sees itself (`own`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub mgmt: SocketAddrV4,
    pub own: Ipv4Addr,
    pub pid: u32,
}

impl Proc {
    /// On the public host 203.0.113.20.
    pub fn public(n: u16) -> Proc {
        Proc::at("203.0.113.20", "203.0.113.20", n)
    }

    /// On 192.0.2.10 in realm A, behind the NAT at 198.51.100.1.
    pub fn in_a(n: u16) -> Proc {
        Proc::at("198.51.100.1", "192.0.2.10", n)
    }

    /// On 10.1.0.10 in realm B, behind the NAT at 198.51.100.2.
    pub fn in_b(n: u16) -> Proc {
        Proc::at("198.51.100.2", "10.1.0.10", n)
    }

    fn at(seen: &str, own: &str, n: u16) -> Proc {
        Proc {
            mgmt: SocketAddrV4::new(seen.parse().unwrap(), 5000 + n),
            own: own.parse().unwrap(),
            pid: 100 + u32::from(n),
        }
    }

    pub fn info(&self) -> MgmtInfo {
        MgmtInfo {
            mgmt_local: SocketAddrV4::new(self.own, self.mgmt.port()),
            pid: self.pid,
            heartbeat_secs: 10,
            program: format!("prog{}", self.pid),
            features: proto::gcb::Features::NONE,
        }
    }

    /// Its socket `port`, as it sees it.
    pub fn local(&self, port: u16) -> SocketAddrV4 {
        SocketAddrV4::new(self.own, port)
    }

    pub fn register(&self, proto: Proto, port: u16) -> Message {
        self.register_for(proto, port, None, false)
    }

    /// A `Register` of `port` that wants proxy port `desired` (and with
    /// `required`, that port or nothing).
    pub fn register_for(
        &self,
        proto: Proto,
        port: u16,
        desired: Option<u16>,
        required: bool,
    ) -> Message {
        Message::Register {
            proto,
            local: self.local(port),
            realm: None,
            desired_port: desired,
            port_required: required,
            mgmt: self.info(),
        }
    }

    /// A TCP `Register` of `port` offering hole punching.
    pub fn register_punching(&self, port: u16) -> Message {
        let mut info = self.info();
        info.features = proto::gcb::Features::PUNCH_TCP;
        Message::Register {
            proto: Proto::Tcp,
            local: self.local(port),
            realm: None,
            desired_port: None,
            port_required: false,
            mgmt: info,
        }
    }

    /// A TCP `Connect` offering hole punching, sent from its management
    /// port, which its NAT keeps (`asked_from_port` as the broker sees it).
    pub fn connect_punching(&self, target: SocketAddrV4) -> Message {
        Message::Connect {
            proto: Proto::Tcp,
            target,
            connector: self.local(40000),
            connector_id: None,
            realm: None,
            features: proto::gcb::Features::PUNCH_TCP,
            asked_from_port: self.mgmt.port(),
        }
    }

    /// A `Connect` from its socket at port 40000 to `target`.
    pub fn connect(&self, proto: Proto, target: SocketAddrV4) -> Message {
        Message::Connect {
            proto,
            target,
            connector: self.local(40000),
            connector_id: None,
            realm: None,
            features: proto::gcb::Features::NONE,
            asked_from_port: 0,
        }
    }
}

pub fn limits() -> Limits {
    Limits {
        heartbeat_timeout_s: 30,
        max_registrations: 1000,
        max_relays: 100,
        rate_limit: 0,
        udp_rule_idle_s: 120,
        udp_rules_per_registration: 8,
        status_allow: Networks::default(),
        punch: crate::config::Punch::default(),
    }
}

pub fn config(limits: Limits) -> Config {
    Config {
        listen: BROKER.parse().unwrap(),
        public_ip: "203.0.113.10".parse().unwrap(),
        port_range: RANGE,
        limits,
        shared: Shared {
            secret_file: None,
            log_filter: "info".into(),
            metrics_listen: None,
        },
        freebind: false,
    }
}
