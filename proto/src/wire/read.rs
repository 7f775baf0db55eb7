//! The decoding half of the codec: the bounds-checked [`Reader`].

use super::DecodeError;
use std::net::{Ipv4Addr, SocketAddrV4};

/// Cursor over received bytes. Every accessor checks bounds first.
#[derive(Debug, Clone)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    /// Succeeds only if every byte was consumed: v1 messages have no optional
    /// tail, so extra bytes mean a malformed or foreign message.
    pub fn finish(&self) -> Result<(), DecodeError> {
        match self.remaining() {
            0 => Ok(()),
            n => Err(DecodeError::TrailingBytes(n)),
        }
    }

    pub fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if n > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        let s = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    pub fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    pub fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }

    pub fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_be_bytes(self.array()?))
    }

    pub fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array()?))
    }

    pub fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array()?))
    }

    pub fn addr(&mut self) -> Result<SocketAddrV4, DecodeError> {
        let ip: [u8; 4] = self.array()?;
        let port = self.u16()?;
        Ok(SocketAddrV4::new(Ipv4Addr::from(ip), port))
    }

    /// An option tag: only 0 and 1 are valid.
    pub fn opt_tag(&mut self) -> Result<bool, DecodeError> {
        match self.u8()? {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(DecodeError::BadValue("option tag")),
        }
    }

    pub fn opt_addr(&mut self) -> Result<Option<SocketAddrV4>, DecodeError> {
        Ok(if self.opt_tag()? {
            Some(self.addr()?)
        } else {
            None
        })
    }

    pub fn opt_u16(&mut self) -> Result<Option<u16>, DecodeError> {
        Ok(if self.opt_tag()? {
            Some(self.u16()?)
        } else {
            None
        })
    }

    fn string(
        &mut self,
        len: usize,
        max: usize,
        what: &'static str,
    ) -> Result<String, DecodeError> {
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        // `take` proves the bytes exist before anything is allocated.
        let raw = self.take(len)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| DecodeError::BadValue(what))
    }

    pub fn str8(&mut self, max: usize, what: &'static str) -> Result<String, DecodeError> {
        let len = self.u8()? as usize;
        self.string(len, max, what)
    }

    pub fn str16(&mut self, max: usize, what: &'static str) -> Result<String, DecodeError> {
        let len = self.u16()? as usize;
        self.string(len, max, what)
    }

    pub fn opt_str8(
        &mut self,
        max: usize,
        what: &'static str,
    ) -> Result<Option<String>, DecodeError> {
        Ok(if self.opt_tag()? {
            Some(self.str8(max, what)?)
        } else {
            None
        })
    }

    /// Reads a u8 element count for a list whose elements take at least
    /// `min_item_len` bytes each. Rejects counts over `max`, and counts the
    /// remaining input cannot possibly hold, before the caller allocates.
    pub fn count8(
        &mut self,
        max: usize,
        min_item_len: usize,
        what: &'static str,
    ) -> Result<usize, DecodeError> {
        let len = self.u8()? as usize;
        if len > max {
            return Err(DecodeError::TooLong { what, len, max });
        }
        if len.saturating_mul(min_item_len) > self.remaining() {
            return Err(DecodeError::Truncated);
        }
        Ok(len)
    }
}
