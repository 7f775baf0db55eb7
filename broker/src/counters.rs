//! What the broker counts since it started: for the status query, the
//! periodic debug line and the stop line. Plain integers, owned by the event
//! loop's one thread.

/// Event counts. Relay byte totals of running relays live with the relays;
/// `bytes_closed` holds those of relays already closed.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Datagrams read from the command socket.
    pub received: u64,
    /// Datagrams that are not the protocol or do not decode: dropped.
    pub malformed: u64,
    /// The same drops by class (the rest of `malformed` came from IPv6).
    pub malformed_why: proto::drops::DecodeDrops,
    /// Requests of a protocol version this broker does not speak.
    pub version_mismatch: u64,
    /// Retransmitted requests answered from the reply cache.
    pub duplicates: u64,
    /// Datagrams dropped by the per-source rate limit.
    pub rate_limited: u64,
    /// Requests this broker does not serve (broker-bound commands).
    pub unsupported: u64,
    /// Replies that answer no command of this broker's (late, forged or
    /// replayed Acks): dropped.
    pub stray_replies: u64,
    /// Receive failures on the command and proxy sockets (on the command
    /// socket, other than the ICMP errors below).
    pub receive_errors: u64,
    pub send_errors: u64,
    /// ICMP errors queued on the command socket (`icmp`): port unreachable
    /// for an address a command was in flight to, whose socket is then
    /// taken as gone; port unreachable not believed (no command in flight
    /// there, or sent by another host than the one addressed); any other
    /// error (host or network unreachable, local errors), which changes
    /// nothing.
    pub icmp_port_unreachable: u64,
    pub icmp_untrusted: u64,
    pub icmp_other: u64,
    /// New registrations (repeats of an existing one not counted).
    pub registered: u64,
    /// Registrations that ended because their last holder unregistered (or
    /// said it does not hold the socket, or its socket is gone), and
    /// because it stopped heartbeating.
    pub unregistered: u64,
    pub expired: u64,
    /// Holders that joined a registration (processes sharing its socket),
    /// and holders that left one: replaced by a joining holder (its own
    /// management socket behind a new NAT mapping, or silent), unregistered,
    /// expired, answered a command `NotRegistered`, or whose management
    /// socket is gone (a command to it drew an ICMP port unreachable). A
    /// registration's last holder is counted here too.
    pub holders_joined: u64,
    pub holders_replaced: u64,
    pub holders_left: u64,
    pub holders_expired: u64,
    pub holders_disowned: u64,
    pub holders_gone: u64,
    /// Registrations and relays refused at a limit.
    pub refused: u64,
    pub connects: u64,
    pub decided_direct: u64,
    pub decided_same_realm: u64,
    pub decided_reversal: u64,
    pub decided_relay: u64,
    pub decided_not_registered: u64,
    /// Non-GCB connections accepted on proxy sockets.
    pub regular_accepted: u64,
    /// Rendezvous connections that sent no valid hello in time.
    pub bad_hellos: u64,
    /// The same by reason: bytes that are no hello, the end of the stream
    /// (or a reset) before a whole hello, silence past the hello timeout,
    /// and connections closed at once because too many were waiting.
    pub bad_hellos_garbage: u64,
    pub bad_hellos_closed: u64,
    pub bad_hellos_silent: u64,
    pub bad_hellos_overflow: u64,
    /// Rendezvous connections answered `Rejected`.
    pub rendezvous_rejected: u64,
    /// Pairings whose other half never came.
    pub pairings_expired: u64,
    /// Commands to listeners that failed their connection (after being
    /// sent once more to another holder, if there was one), by the code
    /// the connector was given: the listener was silent, does not hold the
    /// socket, has a full accept queue, or refused otherwise.
    pub commands_failed: u64,
    pub commands_failed_timeout: u64,
    pub commands_failed_not_registered: u64,
    pub commands_failed_full: u64,
    pub commands_failed_other: u64,
    /// Commands sent once more, to another holder, after one failed them.
    pub commands_resent: u64,
    pub relays_opened: u64,
    /// TCP hole punching (docs/hole-punching.md): punches decided; those
    /// that ended direct; those that fell back to the relay, by why (a
    /// side's budget ran out, a connection failed the token check, a side
    /// could not use its port, a report missing at the broker's deadline);
    /// connects between private realms not punched, by why (a NAT did not
    /// keep the port, the pair failed recently, a side's shim cannot punch,
    /// `--no-punch`); and punches a side left before the verdict or never
    /// came to (its listener failed the command, the pairing expired).
    pub punch_attempts: u64,
    pub punch_succeeded: u64,
    pub punch_fallbacks_timeout: u64,
    pub punch_fallbacks_check_failed: u64,
    pub punch_fallbacks_local_error: u64,
    pub punch_fallbacks_no_report: u64,
    pub punch_skipped_unpredictable_mapping: u64,
    pub punch_skipped_cached_failure: u64,
    pub punch_skipped_not_capable: u64,
    pub punch_skipped_disabled: u64,
    pub punch_vanished: u64,
    /// Standby connections (docs/hole-punching.md): standby connects
    /// punched (counted in `punch_attempts` too), and those refused
    /// because the connect would not have been punched (counted nowhere
    /// else: not as a decision, nor a skip).
    pub punch_standby_attempts: u64,
    pub punch_standby_refused: u64,
    /// TCP punches decided for a connector that opened its rendezvous
    /// beside its `Connect` (`Features::PUNCH_EARLY`; counted in
    /// `punch_attempts` too), and those whose early hello joined them (the
    /// others' connector said its hello with the token after the decision:
    /// no Fast Open cookie yet, or the early hello was turned away).
    pub punch_early: u64,
    pub punch_early_joined: u64,
    /// UDP hole punching: `PunchUdp` decisions (the listener was sent
    /// `PunchHole`), and those whose connector said its direct path opened
    /// (its one `Dummy{token}` to the proxy, `engine::punch_udp`).
    pub udp_punch_attempts: u64,
    pub udp_punch_direct: u64,
    /// Relay byte totals of closed relays, connector → listener and back.
    pub bytes_closed: [u64; 2],
    /// UDP proxy sockets: datagrams relayed peer → client and client → peer.
    pub udp_relayed_to_client: u64,
    pub udp_relayed_to_peer: u64,
    /// Client datagrams naming a peer without a live rule: dropped.
    pub udp_refused: u64,
    /// New peers refused at a registration's rule cap.
    pub udp_rule_cap: u64,
    /// Peer datagrams too large to relay behind the 12-byte header.
    pub udp_oversize: u64,
    /// Client datagrams without a valid relay header.
    pub udp_malformed: u64,
    /// Peer datagrams dropped because the client has sent no Dummy yet.
    pub udp_no_path: u64,
    /// Valid Dummies answered, and Dummy/DummyAck dropped (wrong token or
    /// not from the client).
    pub udp_dummies: u64,
    pub udp_dummies_dropped: u64,
    pub udp_rules_created: u64,
    pub udp_rules_expired: u64,
    pub udp_send_errors: u64,
    /// UDP channels (`udp::channels`) opened, closed, and requests refused.
    pub udp_channels_opened: u64,
    pub udp_channels_closed: u64,
    pub udp_channels_refused: u64,
    /// Datagrams at a channel socket from anyone but its client: dropped.
    pub udp_channel_strangers: u64,
}

impl Counters {
    /// Every counter by name, in a fixed order, for rendering.
    pub fn fields(&self) -> Vec<(&'static str, u64)> {
        vec![
            ("received", self.received),
            ("malformed", self.malformed),
            ("malformed_not_gcb", self.malformed_why.not_protocol),
            ("malformed_truncated", self.malformed_why.truncated),
            ("malformed_oversize", self.malformed_why.oversize),
            ("malformed_invalid", self.malformed_why.invalid),
            ("version_mismatch", self.version_mismatch),
            ("duplicates", self.duplicates),
            ("rate_limited", self.rate_limited),
            ("unsupported", self.unsupported),
            ("stray_replies", self.stray_replies),
            ("receive_errors", self.receive_errors),
            ("send_errors", self.send_errors),
            ("icmp_port_unreachable", self.icmp_port_unreachable),
            ("icmp_untrusted", self.icmp_untrusted),
            ("icmp_other", self.icmp_other),
            ("registered", self.registered),
            ("unregistered", self.unregistered),
            ("expired", self.expired),
            ("holders_joined", self.holders_joined),
            ("holders_replaced", self.holders_replaced),
            ("holders_left", self.holders_left),
            ("holders_expired", self.holders_expired),
            ("holders_disowned", self.holders_disowned),
            ("holders_gone", self.holders_gone),
            ("refused", self.refused),
            ("connects", self.connects),
            ("decided_direct", self.decided_direct),
            ("decided_same_realm", self.decided_same_realm),
            ("decided_reversal", self.decided_reversal),
            ("decided_relay", self.decided_relay),
            ("decided_not_registered", self.decided_not_registered),
            ("regular_accepted", self.regular_accepted),
            ("bad_hellos", self.bad_hellos),
            ("bad_hellos_garbage", self.bad_hellos_garbage),
            ("bad_hellos_closed", self.bad_hellos_closed),
            ("bad_hellos_silent", self.bad_hellos_silent),
            ("bad_hellos_overflow", self.bad_hellos_overflow),
            ("rendezvous_rejected", self.rendezvous_rejected),
            ("pairings_expired", self.pairings_expired),
            ("commands_failed", self.commands_failed),
            ("commands_failed_timeout", self.commands_failed_timeout),
            (
                "commands_failed_not_registered",
                self.commands_failed_not_registered,
            ),
            ("commands_failed_full", self.commands_failed_full),
            ("commands_failed_other", self.commands_failed_other),
            ("commands_resent", self.commands_resent),
            ("relays_opened", self.relays_opened),
            ("punch_attempts", self.punch_attempts),
            ("punch_succeeded", self.punch_succeeded),
            ("punch_fallbacks_timeout", self.punch_fallbacks_timeout),
            ("punch_fallbacks_check_failed", self.punch_fallbacks_check_failed),
            ("punch_fallbacks_local_error", self.punch_fallbacks_local_error),
            ("punch_fallbacks_no_report", self.punch_fallbacks_no_report),
            (
                "punch_skipped_unpredictable_mapping",
                self.punch_skipped_unpredictable_mapping,
            ),
            ("punch_skipped_cached_failure", self.punch_skipped_cached_failure),
            ("punch_skipped_not_capable", self.punch_skipped_not_capable),
            ("punch_skipped_disabled", self.punch_skipped_disabled),
            ("punch_vanished", self.punch_vanished),
            ("punch_standby_attempts", self.punch_standby_attempts),
            ("punch_standby_refused", self.punch_standby_refused),
            ("punch_early", self.punch_early),
            ("punch_early_joined", self.punch_early_joined),
            ("udp_punch_attempts", self.udp_punch_attempts),
            ("udp_punch_direct", self.udp_punch_direct),
            ("udp_relayed_to_client", self.udp_relayed_to_client),
            ("udp_relayed_to_peer", self.udp_relayed_to_peer),
            ("udp_refused", self.udp_refused),
            ("udp_rule_cap", self.udp_rule_cap),
            ("udp_oversize", self.udp_oversize),
            ("udp_malformed", self.udp_malformed),
            ("udp_no_path", self.udp_no_path),
            ("udp_dummies", self.udp_dummies),
            ("udp_dummies_dropped", self.udp_dummies_dropped),
            ("udp_rules_created", self.udp_rules_created),
            ("udp_rules_expired", self.udp_rules_expired),
            ("udp_send_errors", self.udp_send_errors),
            ("udp_channels_opened", self.udp_channels_opened),
            ("udp_channels_closed", self.udp_channels_closed),
            ("udp_channels_refused", self.udp_channels_refused),
            ("udp_channel_strangers", self.udp_channel_strangers),
        ]
    }
}
