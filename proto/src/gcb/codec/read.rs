//! Reading GCB message bodies: one arm per message kind, each checking every
//! value it reads (unknown tags are `BadValue`), so a decoded message is always
//! one `write` could have produced.

use super::*;

fn read_decision(r: &mut Reader<'_>) -> Result<Decision, DecodeError> {
    Ok(match r.u8()? {
        1 => Decision::Direct { addr: r.addr()? },
        2 => Decision::SameRealm { addr: r.addr()? },
        3 => Decision::Reversal {
            token: read_token(r)?,
        },
        4 => Decision::Relay {
            via: r.addr()?,
            token: read_token(r)?,
        },
        5 => Decision::NotRegistered,
        tag @ (6 | 8) => Decision::PunchTcp {
            via: r.addr()?,
            token: read_token(r)?,
            early: tag == 8,
        },
        7 => Decision::PunchUdp {
            via: r.addr()?,
            token: read_token(r)?,
            listener_at: r.addr()?,
        },
        _ => return Err(DecodeError::BadValue("connect decision")),
    })
}

/// The tail's features, if the request has a tail. A tail with no feature
/// set is refused: an encoder never writes one, so it is not a request
/// `write` could have produced.
fn read_features(r: &mut Reader<'_>) -> Result<Features, DecodeError> {
    if r.remaining() == 0 {
        return Ok(Features::NONE);
    }
    match Features::from_bits(r.u8()?) {
        f if f.is_empty() => Err(DecodeError::BadValue("empty features tail")),
        f => Ok(f),
    }
}

/// `PunchConnect`'s tail: absent, or 1 for a standby. A 0 is refused like
/// an empty features tail, for the same reason.
fn read_standby(r: &mut Reader<'_>) -> Result<bool, DecodeError> {
    if r.remaining() == 0 {
        return Ok(false);
    }
    match r.u8()? {
        1 => Ok(true),
        _ => Err(DecodeError::BadValue("standby tail")),
    }
}

/// The (token, dial-or-send address, peer, proxy) body shared by the
/// broker → listener commands.
type Command = (Token, SocketAddrV4, SocketAddrV4, SocketAddrV4);

fn read_command(r: &mut Reader<'_>) -> Result<Command, DecodeError> {
    Ok((read_token(r)?, r.addr()?, r.addr()?, r.addr()?))
}

pub(super) fn read_body(r: &mut Reader<'_>, kind: Kind) -> Result<Message, DecodeError> {
    Ok(match kind {
        Kind::Register => {
            let proto = Proto::read(r)?;
            let local = r.addr()?;
            let realm = r.opt_str8(MAX_REALM_LEN, "realm")?;
            let (desired_port, port_required) = read_port_wish(r)?;
            Message::Register {
                proto,
                local,
                realm,
                desired_port,
                port_required,
                mgmt: MgmtInfo {
                    mgmt_local: r.addr()?,
                    pid: r.u32()?,
                    heartbeat_secs: r.u16()?,
                    program: r.str8(MAX_PROGRAM_LEN, "program")?,
                    features: read_features(r)?,
                },
            }
        }
        Kind::RegisterOk => Message::RegisterOk {
            proxy: r.addr()?,
            observed: r.addr()?,
            udp_token: if r.opt_tag()? {
                Some(read_token(r)?)
            } else {
                None
            },
        },
        Kind::Unregister => Message::Unregister {
            proxy: Endpoint::read(r)?,
        },
        Kind::Heartbeat => Message::Heartbeat {
            held: read_endpoints(r, MAX_ENDPOINTS, "heartbeat list")?,
        },
        Kind::HeartbeatAck => Message::HeartbeatAck,
        Kind::ReregisterRequest => Message::ReregisterRequest {
            unknown: read_endpoints(r, MAX_ENDPOINTS, "reregister list")?,
        },
        Kind::Connect => {
            let (proto, target, connector) = (Proto::read(r)?, r.addr()?, r.addr()?);
            let connector_id = r.opt_addr()?;
            let realm = r.opt_str8(MAX_REALM_LEN, "realm")?;
            let features = read_features(r)?;
            let asked_from_port = if features.is_empty() { 0 } else { r.u16()? };
            Message::Connect {
                proto,
                target,
                connector,
                connector_id,
                realm,
                features,
                asked_from_port,
            }
        }
        Kind::ConnectDecision => Message::ConnectDecision(read_decision(r)?),
        Kind::ReverseConnect => {
            let (token, connector, peer, proxy) = read_command(r)?;
            Message::ReverseConnect {
                token,
                connector,
                peer,
                proxy,
            }
        }
        Kind::RelayConnect => {
            let (token, broker, peer, proxy) = read_command(r)?;
            Message::RelayConnect {
                token,
                broker,
                peer,
                proxy,
            }
        }
        Kind::MakeHole => {
            let (token, target, peer, proxy) = read_command(r)?;
            Message::MakeHole {
                token,
                target,
                peer,
                proxy,
            }
        }
        Kind::PunchConnect => {
            let (token, broker, peer, proxy) = read_command(r)?;
            Message::PunchConnect {
                token,
                broker,
                peer,
                proxy,
                standby: read_standby(r)?,
            }
        }
        Kind::PunchHole => {
            let (token, target, peer, proxy) = read_command(r)?;
            Message::PunchHole {
                token,
                target,
                peer,
                proxy,
            }
        }
        Kind::ConnectFailed => Message::ConnectFailed {
            token: read_token(r)?,
            code: ErrorCode::from_wire(r.u8()?),
        },
        Kind::Ack => Message::Ack,
        Kind::Error => Message::Error {
            code: ErrorCode::from_wire(r.u8()?),
            detail: r.str8(MAX_DETAIL_LEN, "error detail")?,
        },
        Kind::Dummy => Message::Dummy {
            token: read_token(r)?,
        },
        Kind::DummyAck => Message::DummyAck {
            token: read_token(r)?,
        },
        Kind::StatusRequest => Message::StatusRequest {
            snapshot: r.u64()?,
            page: r.u16()?,
            format: match r.u8()? {
                0 => StatusFormat::Text,
                1 => StatusFormat::Json,
                _ => return Err(DecodeError::BadValue("status format")),
            },
        },
        Kind::StatusReply => Message::StatusReply {
            snapshot: r.u64()?,
            page: r.u16()?,
            pages: r.u16()?,
            chunk: r.str16(MAX_STATUS_CHUNK, "status chunk")?,
        },
        Kind::UdpChannel => Message::UdpChannel {
            proxy: r.addr()?,
            peer: r.addr()?,
            udp_token: read_token(r)?,
            open: match r.u8()? {
                0 => false,
                1 => true,
                _ => return Err(DecodeError::BadValue("channel open flag")),
            },
        },
        Kind::UdpChannelOk => Message::UdpChannelOk {
            channel: r.addr()?,
            token: read_token(r)?,
        },
    })
}
