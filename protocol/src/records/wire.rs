//! The byte reader and writer of the record encodings, in the style of `keys`' own (which
//! that crate keeps private): integers big-endian and fixed-width, a name as a one-byte
//! length and its ASCII bytes, an address as a family byte (4 or 6) and 4 or 16 bytes. The
//! reader refuses what the writer never produces and never panics.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use keys::Name;

/// Why bytes could not be read; each names the part being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum WireError {
    /// The input ended inside this part.
    Truncated(&'static str),
    /// This part holds a value the writer never produces.
    Invalid(&'static str),
}

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// Appends values to a buffer.
pub(super) struct Writer(Vec<u8>);

impl Writer {
    pub(super) fn with_capacity(capacity: usize) -> Writer {
        Writer(Vec::with_capacity(capacity))
    }

    pub(super) fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    pub(super) fn u16(&mut self, value: u16) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    pub(super) fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    pub(super) fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// A list's count or a name's length; callers keep both far below 256.
    pub(super) fn count(&mut self, count: usize) {
        debug_assert!(count <= usize::from(u8::MAX), "checked against its limit");
        self.u8(u8::try_from(count).unwrap_or(u8::MAX));
    }

    pub(super) fn name(&mut self, name: &Name) {
        let bytes = name.as_str().as_bytes();
        self.count(bytes.len());
        self.bytes(bytes);
    }

    pub(super) fn socket(&mut self, addr: &SocketAddr) {
        match addr.ip() {
            IpAddr::V4(ip) => {
                self.u8(FAMILY_V4);
                self.bytes(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(FAMILY_V6);
                self.bytes(&ip.octets());
            }
        }
        self.u16(addr.port());
    }

    pub(super) fn finish(self) -> Vec<u8> {
        self.0
    }
}

/// Takes values off the front of a byte slice.
pub(super) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader(bytes)
    }

    pub(super) fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.0.len() < len {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    pub(super) fn array<const N: usize>(
        &mut self,
        what: &'static str,
    ) -> Result<[u8; N], WireError> {
        // `bytes` returns exactly N bytes or an error.
        <[u8; N]>::try_from(self.bytes(N, what)?).map_err(|_| WireError::Truncated(what))
    }

    pub(super) fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub(super) fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub(super) fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        self.array(what).map(u64::from_be_bytes)
    }

    /// A list's count, refused above `max`.
    pub(super) fn count(&mut self, max: usize, what: &'static str) -> Result<usize, WireError> {
        let count = usize::from(self.u8(what)?);
        if count > max {
            return Err(WireError::Invalid(what));
        }
        Ok(count)
    }

    pub(super) fn name(&mut self, what: &'static str) -> Result<Name, WireError> {
        let len = usize::from(self.u8(what)?);
        let bytes = self.bytes(len, what)?;
        let text = std::str::from_utf8(bytes).map_err(|_| WireError::Invalid(what))?;
        Name::new(text).map_err(|_| WireError::Invalid(what))
    }

    pub(super) fn socket(&mut self, what: &'static str) -> Result<SocketAddr, WireError> {
        let ip = match self.u8(what)? {
            FAMILY_V4 => IpAddr::V4(Ipv4Addr::from(self.array::<4>(what)?)),
            FAMILY_V6 => IpAddr::V6(Ipv6Addr::from(self.array::<16>(what)?)),
            _ => return Err(WireError::Invalid(what)),
        };
        Ok(SocketAddr::new(ip, self.u16(what)?))
    }

    /// Succeeds only if every byte was read.
    pub(super) fn finish(self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Invalid("trailing bytes"))
        }
    }
}
