//! The small explicit binary encoding shared by certificates and join tokens, and by the
//! control plane's signed records in `protocol`.
//!
//! Integers are big-endian and fixed-width; a name is a one-byte length and its ASCII
//! bytes; a list is a one-byte count and its items; an IP address is a family byte (4 or
//! 6) and 4 or 16 bytes. Every value has exactly one encoding: the reader refuses what the
//! writer never produces (a family other than 4 or 6, a prefix longer than the address, a
//! subnet with host bits set, an invalid name, bytes left over), so equal values always
//! have equal bytes and a signature covers one meaning only.
//!
//! The reader never panics and never allocates more than the input justifies. This module
//! knows types, not documents: the certificate and token modules say what goes where.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as BASE64URL;
use ipnet::IpNet;
use zeroize::Zeroizing;

use crate::name::Name;

/// Why the bytes could not be read; each names the part being read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireError {
    /// The input ended inside this part.
    Truncated(&'static str),
    /// This part holds a value the writer never produces.
    Invalid(&'static str),
}

const FAMILY_V4: u8 = 4;
const FAMILY_V6: u8 = 6;

/// Appends values to a buffer that is zeroized when dropped (a token holds its secret).
pub struct Writer(Zeroizing<Vec<u8>>);

impl Writer {
    /// A writer whose buffer never reallocates below `capacity` bytes, so no stray copy of
    /// a secret is left behind by growth when the caller sizes it for the largest document.
    pub fn with_capacity(capacity: usize) -> Writer {
        Writer(Zeroizing::new(Vec::with_capacity(capacity)))
    }

    pub fn u8(&mut self, value: u8) {
        self.0.push(value);
    }

    pub fn u16(&mut self, value: u16) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    pub fn u32(&mut self, value: u32) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    pub fn u64(&mut self, value: u64) {
        self.0.extend_from_slice(&value.to_be_bytes());
    }

    pub fn bytes(&mut self, bytes: &[u8]) {
        self.0.extend_from_slice(bytes);
    }

    /// A list's count. Callers check their lists against limits far below 256 first.
    pub fn count(&mut self, count: usize) {
        debug_assert!(
            count <= usize::from(u8::MAX),
            "list checked against its limit"
        );
        self.u8(u8::try_from(count).unwrap_or(u8::MAX));
    }

    pub fn name(&mut self, name: &Name) {
        let bytes = name.as_str().as_bytes();
        // A `Name` is at most 63 bytes.
        self.count(bytes.len());
        self.bytes(bytes);
    }

    fn ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(ip) => {
                self.u8(FAMILY_V4);
                self.bytes(&ip.octets());
            }
            IpAddr::V6(ip) => {
                self.u8(FAMILY_V6);
                self.bytes(&ip.octets());
            }
        }
    }

    pub fn subnet(&mut self, net: &IpNet) {
        self.ip(net.addr());
        self.u8(net.prefix_len());
    }

    pub fn socket(&mut self, addr: &SocketAddr) {
        self.ip(addr.ip());
        self.u16(addr.port());
    }

    /// The bytes written, as a plain buffer: for documents that hold no secret.
    pub fn finish_plain(mut self) -> Vec<u8> {
        std::mem::take(&mut *self.0)
    }

    /// The bytes written, in a buffer zeroized when dropped.
    pub fn finish(self) -> Zeroizing<Vec<u8>> {
        self.0
    }
}

/// Takes values off the front of a byte slice.
pub struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub fn new(bytes: &'a [u8]) -> Reader<'a> {
        Reader(bytes)
    }

    pub fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.0.len() < len {
            return Err(WireError::Truncated(what));
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }

    pub fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let bytes = self.bytes(N, what)?;
        // `bytes` has exactly N bytes.
        <[u8; N]>::try_from(bytes).map_err(|_| WireError::Truncated(what))
    }

    pub fn u8(&mut self, what: &'static str) -> Result<u8, WireError> {
        Ok(self.array::<1>(what)?[0])
    }

    pub fn u16(&mut self, what: &'static str) -> Result<u16, WireError> {
        self.array(what).map(u16::from_be_bytes)
    }

    pub fn u32(&mut self, what: &'static str) -> Result<u32, WireError> {
        self.array(what).map(u32::from_be_bytes)
    }

    pub fn u64(&mut self, what: &'static str) -> Result<u64, WireError> {
        self.array(what).map(u64::from_be_bytes)
    }

    /// A list's count, refused above `max` (so a reader never trusts a count to size memory).
    pub fn count(&mut self, max: usize, what: &'static str) -> Result<usize, WireError> {
        let count = usize::from(self.u8(what)?);
        if count > max {
            return Err(WireError::Invalid(what));
        }
        Ok(count)
    }

    pub fn name(&mut self, what: &'static str) -> Result<Name, WireError> {
        let len = usize::from(self.u8(what)?);
        let bytes = self.bytes(len, what)?;
        Name::from_bytes(bytes).ok_or(WireError::Invalid(what))
    }

    fn ip(&mut self, what: &'static str) -> Result<IpAddr, WireError> {
        match self.u8(what)? {
            FAMILY_V4 => Ok(IpAddr::V4(Ipv4Addr::from(self.array::<4>(what)?))),
            FAMILY_V6 => Ok(IpAddr::V6(Ipv6Addr::from(self.array::<16>(what)?))),
            _ => Err(WireError::Invalid(what)),
        }
    }

    /// A subnet; refused unless in canonical form (no host bits set).
    pub fn subnet(&mut self, what: &'static str) -> Result<IpNet, WireError> {
        let addr = self.ip(what)?;
        let prefix_len = self.u8(what)?;
        let net = IpNet::new(addr, prefix_len).map_err(|_| WireError::Invalid(what))?;
        if net != net.trunc() {
            return Err(WireError::Invalid(what));
        }
        Ok(net)
    }

    pub fn socket(&mut self, what: &'static str) -> Result<SocketAddr, WireError> {
        let ip = self.ip(what)?;
        let port = self.u16(what)?;
        Ok(SocketAddr::new(ip, port))
    }

    /// Whether every byte was read.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Succeeds only if every byte was read.
    pub fn finish(self) -> Result<(), WireError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(WireError::Invalid("trailing bytes"))
        }
    }
}

/// Decodes unpadded base64url into a buffer zeroized when dropped. Text made only of
/// base64url characters that still does not decode was cut short (its length or last
/// character cannot end an encoding): that is reported as truncated, not as garbage.
pub fn decode_base64url(text: &str, what: &'static str) -> Result<Zeroizing<Vec<u8>>, WireError> {
    let mut out = Zeroizing::new(Vec::with_capacity(text.len() / 4 * 3 + 3));
    match BASE64URL.decode_vec(text, &mut out) {
        Ok(()) => Ok(out),
        Err(_) if text.bytes().all(is_base64url) => Err(WireError::Truncated(what)),
        Err(_) => Err(WireError::Invalid(what)),
    }
}

fn is_base64url(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'-' || c == b'_'
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip() {
        let name: Name = "web-1".parse().unwrap();
        let v4: IpNet = "10.42.1.0/24".parse().unwrap();
        let v6: IpNet = "fd00:42::/64".parse().unwrap();
        let socket: SocketAddr = "[2001:db8::1]:51820".parse().unwrap();
        let mut w = Writer::with_capacity(0);
        w.u8(7);
        w.u16(0xbeef);
        w.u64(u64::MAX - 1);
        w.name(&name);
        w.subnet(&v4);
        w.subnet(&v6);
        w.socket(&socket);
        w.count(3);
        let bytes = w.finish();
        let mut r = Reader::new(&bytes);
        assert_eq!(r.u8("a"), Ok(7));
        assert_eq!(r.u16("b"), Ok(0xbeef));
        assert_eq!(r.u64("c"), Ok(u64::MAX - 1));
        assert_eq!(r.name("d"), Ok(name));
        assert_eq!(r.subnet("e"), Ok(v4));
        assert_eq!(r.subnet("f"), Ok(v6));
        assert_eq!(r.socket("g"), Ok(socket));
        assert_eq!(r.count(3, "h"), Ok(3));
        assert_eq!(r.finish(), Ok(()));
    }

    #[test]
    fn non_canonical_values_are_refused() {
        // family 5
        assert_eq!(
            Reader::new(&[5, 1, 2, 3, 4, 8]).subnet("s"),
            Err(WireError::Invalid("s"))
        );
        // prefix 33 on IPv4
        assert_eq!(
            Reader::new(&[4, 10, 0, 0, 0, 33]).subnet("s"),
            Err(WireError::Invalid("s"))
        );
        // host bits set: 10.42.1.5/24
        assert_eq!(
            Reader::new(&[4, 10, 42, 1, 5, 24]).subnet("s"),
            Err(WireError::Invalid("s"))
        );
        assert_eq!(
            Reader::new(&[1, b'A']).name("n"),
            Err(WireError::Invalid("n"))
        );
        assert_eq!(
            Reader::new(&[4]).count(3, "c"),
            Err(WireError::Invalid("c"))
        );
        assert_eq!(
            Reader::new(&[0]).finish(),
            Err(WireError::Invalid("trailing bytes"))
        );
    }

    #[test]
    fn base64url_errors_tell_truncation_from_garbage() {
        let text = BASE64URL.encode([1, 2, 3, 4, 5]);
        assert_eq!(
            decode_base64url(&text, "t").unwrap().as_slice(),
            &[1, 2, 3, 4, 5]
        );
        assert_eq!(decode_base64url("A", "t"), Err(WireError::Truncated("t")));
        assert_eq!(decode_base64url("AAA=", "t"), Err(WireError::Invalid("t")));
        assert_eq!(decode_base64url("AA+A", "t"), Err(WireError::Invalid("t")));
    }

    #[test]
    fn short_input_is_truncated_not_a_panic() {
        assert_eq!(Reader::new(&[]).u8("a"), Err(WireError::Truncated("a")));
        assert_eq!(Reader::new(&[1]).u16("b"), Err(WireError::Truncated("b")));
        assert_eq!(
            Reader::new(&[0; 7]).u64("c"),
            Err(WireError::Truncated("c"))
        );
        assert_eq!(
            Reader::new(&[5, b'a']).name("d"),
            Err(WireError::Truncated("d"))
        );
        assert_eq!(
            Reader::new(&[6, 0, 0]).socket("e"),
            Err(WireError::Truncated("e"))
        );
        assert_eq!(
            Reader::new(&[0; 3]).bytes(4, "f"),
            Err(WireError::Truncated("f"))
        );
    }
}
