//! The encoding half of the codec: [`Sink`]s and the field [`Writer`].

use super::EncodeError;
use std::net::SocketAddrV4;

/// Somewhere encoded bytes can go. `put` returns false when the bytes do not
/// fit; nothing is written in that case.
pub trait Sink {
    fn put(&mut self, bytes: &[u8]) -> bool;
}

impl Sink for Vec<u8> {
    fn put(&mut self, bytes: &[u8]) -> bool {
        self.extend_from_slice(bytes);
        true
    }
}

impl<T: Sink + ?Sized> Sink for &mut T {
    fn put(&mut self, bytes: &[u8]) -> bool {
        (**self).put(bytes)
    }
}

/// A fixed buffer being filled from the front, for allocation-free encoding.
#[derive(Debug)]
pub struct SliceSink<'a> {
    buf: &'a mut [u8],
    len: usize,
}

impl<'a> SliceSink<'a> {
    pub fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, len: 0 }
    }

    /// Number of bytes written so far.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn capacity(&self) -> usize {
        self.buf.len()
    }
}

impl Sink for SliceSink<'_> {
    fn put(&mut self, bytes: &[u8]) -> bool {
        let end = match self.len.checked_add(bytes.len()) {
            Some(end) if end <= self.buf.len() => end,
            _ => return false,
        };
        self.buf[self.len..end].copy_from_slice(bytes);
        self.len = end;
        true
    }
}

/// Field-by-field encoder. After the first error further writes are ignored,
/// and [`Writer::finish`] reports that error.
#[derive(Debug)]
pub struct Writer<S: Sink> {
    sink: S,
    written: usize,
    error: Option<EncodeError>,
}

impl<S: Sink> Writer<S> {
    pub fn new(sink: S) -> Self {
        Self {
            sink,
            written: 0,
            error: None,
        }
    }

    /// Ends encoding: the sink, or the first error met.
    pub fn finish(self) -> Result<S, EncodeError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(self.sink),
        }
    }

    fn fail(&mut self, e: EncodeError) {
        if self.error.is_none() {
            self.error = Some(e);
        }
    }

    pub fn bytes(&mut self, b: &[u8]) {
        if self.error.is_some() {
            return;
        }
        if self.sink.put(b) {
            self.written += b.len();
        } else {
            self.fail(EncodeError::BufferFull { at: self.written });
        }
    }

    pub fn u8(&mut self, v: u8) {
        self.bytes(&[v]);
    }

    pub fn u16(&mut self, v: u16) {
        self.bytes(&v.to_be_bytes());
    }

    pub fn u32(&mut self, v: u32) {
        self.bytes(&v.to_be_bytes());
    }

    pub fn u64(&mut self, v: u64) {
        self.bytes(&v.to_be_bytes());
    }

    pub fn addr(&mut self, a: &SocketAddrV4) {
        self.bytes(&a.ip().octets());
        self.u16(a.port());
    }

    /// Writes the option tag; the caller writes the value when it returns true.
    pub fn opt_tag<T>(&mut self, o: Option<T>) -> Option<T> {
        self.u8(u8::from(o.is_some()));
        o
    }

    pub fn opt_addr(&mut self, a: &Option<SocketAddrV4>) {
        if let Some(a) = self.opt_tag(a.as_ref()) {
            self.addr(a);
        }
    }

    pub fn opt_u16(&mut self, v: Option<u16>) {
        if let Some(v) = self.opt_tag(v) {
            self.u16(v);
        }
    }

    /// A string with a u8 length prefix, at most `max` (<= 255) bytes long.
    pub fn str8(&mut self, s: &str, max: usize, what: &'static str) {
        let max = max.min(u8::MAX as usize);
        if s.len() > max {
            return self.fail(EncodeError::TooLong {
                what,
                len: s.len(),
                max,
            });
        }
        self.u8(s.len() as u8);
        self.bytes(s.as_bytes());
    }

    /// A string with a u16 length prefix, at most `max` (<= 65535) bytes long.
    pub fn str16(&mut self, s: &str, max: usize, what: &'static str) {
        let max = max.min(u16::MAX as usize);
        if s.len() > max {
            return self.fail(EncodeError::TooLong {
                what,
                len: s.len(),
                max,
            });
        }
        self.u16(s.len() as u16);
        self.bytes(s.as_bytes());
    }

    pub fn opt_str8(&mut self, s: &Option<String>, max: usize, what: &'static str) {
        if let Some(s) = self.opt_tag(s.as_ref()) {
            self.str8(s, max, what);
        }
    }

    /// A u8 element count for a list of at most `max` (<= 255) elements.
    /// Returns false (and records the error) when the list is too long, so the
    /// caller can skip writing the elements.
    pub fn count8(&mut self, len: usize, max: usize, what: &'static str) -> bool {
        let max = max.min(u8::MAX as usize);
        if len > max {
            self.fail(EncodeError::TooLong { what, len, max });
            return false;
        }
        self.u8(len as u8);
        true
    }
}
