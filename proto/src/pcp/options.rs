//! PCP options (RFC 6887 §7.3, §13): code u8, reserved u8, length u16,
//! then the data, padded with zeros to a multiple of 4 (the length does
//! not count the padding).
//!
//! Codes below 128 are mandatory to process: a server that does not know
//! one answers UNSUPP_OPTION; 128 and above may be skipped. MAP defines
//! THIRD_PARTY (a 16-byte internal address: map for another host),
//! PREFER_FAILURE (no data: fail rather than map other than suggested)
//! and FILTER (20 bytes: which remote peers may use the mapping).

use super::{ResultCode, OP_MAP};
use crate::wire::{DecodeError, Reader, Writer};
use std::net::Ipv6Addr;

pub const OPTION_THIRD_PARTY: u8 = 1;
pub const OPTION_PREFER_FAILURE: u8 = 2;
pub const OPTION_FILTER: u8 = 3;
/// Codes from here on may be ignored by a server that does not know them.
const OPTIONAL_FROM: u8 = 128;

/// One option.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Opt {
    ThirdParty(Ipv6Addr),
    PreferFailure,
    Filter {
        prefix_len: u8,
        remote_port: u16,
        remote_ip: Ipv6Addr,
    },
    /// Any other option, its data without padding.
    Other {
        code: u8,
        data: Vec<u8>,
    },
}

impl Opt {
    pub fn code(&self) -> u8 {
        match self {
            Opt::ThirdParty(_) => OPTION_THIRD_PARTY,
            Opt::PreferFailure => OPTION_PREFER_FAILURE,
            Opt::Filter { .. } => OPTION_FILTER,
            Opt::Other { code, .. } => *code,
        }
    }

    fn data(&self) -> Vec<u8> {
        match self {
            Opt::ThirdParty(ip) => ip.octets().to_vec(),
            Opt::PreferFailure => Vec::new(),
            Opt::Filter {
                prefix_len,
                remote_port,
                remote_ip,
            } => {
                let mut d = vec![0, *prefix_len];
                d.extend_from_slice(&remote_port.to_be_bytes());
                d.extend_from_slice(&remote_ip.octets());
                d
            }
            Opt::Other { data, .. } => data.clone(),
        }
    }
}

pub(super) fn write_all(w: &mut Writer<Vec<u8>>, opts: &[Opt]) {
    for o in opts {
        let data = o.data();
        w.u8(o.code());
        w.u8(0);
        w.u16(data.len() as u16);
        w.bytes(&data);
        w.bytes(&[0; 3][..data.len().next_multiple_of(4) - data.len()]);
    }
}

/// One raw option: code and data; the reader is left after its padding.
fn read_raw<'a>(r: &mut Reader<'a>) -> Result<(u8, &'a [u8]), DecodeError> {
    let code = r.u8()?;
    let _reserved = r.u8()?;
    let len = usize::from(r.u16()?);
    let data = r.take(len)?;
    // Padding may be cut by the end of the message; PCP messages are a
    // multiple of 4 long, so a well-formed one always has it.
    r.take(len.next_multiple_of(4) - len)?;
    Ok((code, data))
}

fn ip(data: &[u8]) -> Ipv6Addr {
    let mut b = [0u8; 16];
    b.copy_from_slice(data);
    Ipv6Addr::from(b)
}

/// Interprets a known option's data; `None` if its length is wrong.
fn known(code: u8, data: &[u8]) -> Option<Opt> {
    match (code, data.len()) {
        (OPTION_THIRD_PARTY, 16) => Some(Opt::ThirdParty(ip(data))),
        (OPTION_PREFER_FAILURE, 0) => Some(Opt::PreferFailure),
        (OPTION_FILTER, 20) => Some(Opt::Filter {
            prefix_len: data[1],
            remote_port: u16::from_be_bytes([data[2], data[3]]),
            remote_ip: ip(&data[4..]),
        }),
        _ => None,
    }
}

/// The options of a request, judged as a server must (§7.3, §13): a
/// truncated option or a known one of the wrong length or repeated (FILTER
/// may repeat) is MALFORMED_OPTION; a MAP option in another opcode is
/// MALFORMED_OPTION; an unknown mandatory one is UNSUPP_OPTION; unknown
/// optional ones are kept as `Other`.
pub(super) fn read_request(r: &mut Reader<'_>, opcode: u8) -> Result<Vec<Opt>, ResultCode> {
    let mut out: Vec<Opt> = Vec::new();
    while r.remaining() > 0 {
        let (code, data) = read_raw(r).map_err(|_| ResultCode::MalformedOption)?;
        let opt = match code {
            OPTION_THIRD_PARTY | OPTION_PREFER_FAILURE | OPTION_FILTER => {
                let opt = known(code, data).ok_or(ResultCode::MalformedOption)?;
                let repeated = code != OPTION_FILTER && out.iter().any(|o| o.code() == code);
                if repeated || opcode != OP_MAP {
                    return Err(ResultCode::MalformedOption);
                }
                opt
            }
            c if c < OPTIONAL_FROM => return Err(ResultCode::UnsuppOption),
            _ => Opt::Other {
                code,
                data: data.to_vec(),
            },
        };
        out.push(opt);
    }
    Ok(out)
}

/// The options of a response, read without judging them.
pub(super) fn read_any(r: &mut Reader<'_>) -> Result<Vec<Opt>, DecodeError> {
    let mut out = Vec::new();
    while r.remaining() > 0 {
        let (code, data) = read_raw(r)?;
        out.push(known(code, data).unwrap_or(Opt::Other {
            code,
            data: data.to_vec(),
        }));
    }
    Ok(out)
}
