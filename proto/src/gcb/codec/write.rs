//! Writing GCB message bodies, the inverse of `read`: one arm per message kind,
//! in the layouts the parent module's table documents.

use super::*;

pub(super) fn write_body<S: Sink>(w: &mut Writer<S>, msg: &Message) {
    match msg {
        Message::Register {
            proto,
            local,
            realm,
            desired_port,
            port_required,
            mgmt,
        } => {
            proto.write(w);
            w.addr(local);
            w.opt_str8(realm, MAX_REALM_LEN, "realm");
            write_port_wish(w, *desired_port, *port_required);
            w.addr(&mgmt.mgmt_local);
            w.u32(mgmt.pid);
            w.u16(mgmt.heartbeat_secs);
            w.str8(&mgmt.program, MAX_PROGRAM_LEN, "program");
            if !mgmt.features.is_empty() {
                w.u8(mgmt.features.bits());
            }
        }
        Message::RegisterOk {
            proxy,
            observed,
            udp_token,
        } => {
            w.addr(proxy);
            w.addr(observed);
            if let Some(t) = w.opt_tag(*udp_token) {
                write_token(w, t);
            }
        }
        Message::Unregister { proxy } => proxy.write(w),
        Message::Heartbeat { held } => write_endpoints(w, held, MAX_ENDPOINTS, "heartbeat list"),
        Message::ReregisterRequest { unknown } => {
            write_endpoints(w, unknown, MAX_ENDPOINTS, "reregister list")
        }
        Message::Connect {
            proto,
            target,
            connector,
            connector_id,
            realm,
            features,
            asked_from_port,
        } => {
            proto.write(w);
            w.addr(target);
            w.addr(connector);
            w.opt_addr(connector_id);
            w.opt_str8(realm, MAX_REALM_LEN, "realm");
            if !features.is_empty() {
                w.u8(features.bits());
                w.u16(*asked_from_port);
            }
        }
        Message::ConnectDecision(d) => write_decision(w, d),
        Message::ReverseConnect {
            token,
            connector: a,
            peer,
            proxy,
        }
        | Message::RelayConnect {
            token,
            broker: a,
            peer,
            proxy,
        }
        | Message::MakeHole {
            token,
            target: a,
            peer,
            proxy,
        }
        | Message::PunchConnect {
            token,
            broker: a,
            peer,
            proxy,
            ..
        }
        | Message::PunchHole {
            token,
            target: a,
            peer,
            proxy,
        } => {
            write_token(w, *token);
            w.addr(a);
            w.addr(peer);
            w.addr(proxy);
            if let Message::PunchConnect { standby: true, .. } = msg {
                w.u8(1);
            }
        }
        Message::ConnectFailed { token, code } => {
            write_token(w, *token);
            w.u8(code.wire());
        }
        Message::HeartbeatAck | Message::Ack => {}
        Message::Error { code, detail } => {
            w.u8(code.wire());
            w.str8(detail, MAX_DETAIL_LEN, "error detail");
        }
        Message::Dummy { token } | Message::DummyAck { token } => write_token(w, *token),
        Message::StatusRequest {
            snapshot,
            page,
            format,
        } => {
            w.u64(*snapshot);
            w.u16(*page);
            w.u8(format.wire());
        }
        Message::StatusReply {
            snapshot,
            page,
            pages,
            chunk,
        } => {
            w.u64(*snapshot);
            w.u16(*page);
            w.u16(*pages);
            w.str16(chunk, MAX_STATUS_CHUNK, "status chunk");
        }
        Message::UdpChannel {
            proxy,
            peer,
            udp_token,
            open,
        } => {
            w.addr(proxy);
            w.addr(peer);
            write_token(w, *udp_token);
            w.u8(u8::from(*open));
        }
        Message::UdpChannelOk { channel, token } => {
            w.addr(channel);
            write_token(w, *token);
        }
    }
}

fn write_decision<S: Sink>(w: &mut Writer<S>, d: &Decision) {
    match d {
        Decision::Direct { addr } => {
            w.u8(1);
            w.addr(addr);
        }
        Decision::SameRealm { addr } => {
            w.u8(2);
            w.addr(addr);
        }
        Decision::Reversal { token } => {
            w.u8(3);
            write_token(w, *token);
        }
        Decision::Relay { via, token } => {
            w.u8(4);
            w.addr(via);
            write_token(w, *token);
        }
        Decision::NotRegistered => w.u8(5),
        Decision::PunchTcp { via, token, early } => {
            w.u8(if *early { 8 } else { 6 });
            w.addr(via);
            write_token(w, *token);
        }
        Decision::PunchUdp {
            via,
            token,
            listener_at,
        } => {
            w.u8(7);
            w.addr(via);
            write_token(w, *token);
            w.addr(listener_at);
        }
    }
}
