//! The flow an IP packet belongs to, for the policy: its 5-tuple, the service a new flow
//! of it would be checked as, and for an ICMP error the flow it reports on. Reads headers
//! only, never more than the packet holds; anything it cannot read is [`Classified::Malformed`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{Service, proto};

/// A flow's 5-tuple, as the side that opened it sent it. ICMP echo uses its identifier as
/// both ports, so that a request and its reply are one flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// IP protocol number.
    pub proto: u8,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (0 when the protocol has none).
    pub src_port: u16,
    /// Destination port (0 when the protocol has none).
    pub dst_port: u16,
}

impl FlowKey {
    /// The same flow seen from the other side (a reply's key).
    pub fn reversed(&self) -> FlowKey {
        FlowKey {
            proto: self.proto,
            src: self.dst,
            dst: self.src,
            src_port: self.dst_port,
            dst_port: self.src_port,
        }
    }
}

/// What a packet is to the policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    /// A packet of a flow: tracked already, or a new one checked as `service`.
    Flow {
        /// Its 5-tuple as sent.
        key: FlowKey,
        /// What a new flow of it is checked as.
        service: Service,
        /// A TCP segment with RST or FIN: the flow ends soon.
        closing: bool,
    },
    /// An ICMP or ICMPv6 error about the flow `about` (as the original packet was sent); it
    /// passes only when that flow is tracked.
    IcmpError {
        /// The flow the error reports on.
        about: FlowKey,
    },
    /// Headers cut short or impossible.
    Malformed,
}

const TCP_FIN: u8 = 0x01;
const TCP_RST: u8 = 0x04;

/// Classifies an IPv4 or IPv6 packet.
pub fn classify(packet: &[u8]) -> Classified {
    match header(packet) {
        Some(h) => transport(&h, packet, true).unwrap_or(Classified::Malformed),
        None => Classified::Malformed,
    }
}

/// The network header's fields the policy needs.
struct Header {
    proto: u8,
    src: IpAddr,
    dst: IpAddr,
    /// Offset of the transport header.
    offset: usize,
    /// A later fragment: no transport header.
    later_fragment: bool,
}

fn header(p: &[u8]) -> Option<Header> {
    match p.first()? >> 4 {
        4 => {
            let ihl = usize::from(p[0] & 0x0f) * 4;
            if ihl < 20 || p.len() < ihl {
                return None;
            }
            let fragment_offset = u16::from_be_bytes([p[6], p[7]]) & 0x1fff;
            Some(Header {
                proto: p[9],
                src: IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&p[12..16]).ok()?)),
                dst: IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(&p[16..20]).ok()?)),
                offset: ihl,
                later_fragment: fragment_offset != 0,
            })
        }
        6 => {
            if p.len() < 40 {
                return None;
            }
            let mut next = p[6];
            let mut offset = 40;
            let mut later_fragment = false;
            // Extension headers (RFC 8200 section 4), at most a few: a longer chain is a
            // packet no container sends.
            for _ in 0..8 {
                match next {
                    0 | 43 | 60 => {
                        let h = p.get(offset..offset + 2)?;
                        next = h[0];
                        offset += (usize::from(h[1]) + 1) * 8;
                    }
                    44 => {
                        let h = p.get(offset..offset + 8)?;
                        next = h[0];
                        later_fragment = u16::from_be_bytes([h[2], h[3]]) >> 3 != 0;
                        offset += 8;
                    }
                    51 => {
                        let h = p.get(offset..offset + 2)?;
                        next = h[0];
                        offset += (usize::from(h[1]) + 2) * 4;
                    }
                    _ => break,
                }
            }
            Some(Header {
                proto: next,
                src: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[8..24]).ok()?)),
                dst: IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[24..40]).ok()?)),
                offset,
                later_fragment,
            })
        }
        _ => None,
    }
}

/// The flow of the packet whose network header is `h`. `outer` is false inside an ICMP
/// error, where the quoted packet may be cut after 8 bytes of its transport header and
/// another error inside is not followed.
fn transport(h: &Header, p: &[u8], outer: bool) -> Option<Classified> {
    let key = |src_port, dst_port| FlowKey {
        proto: h.proto,
        src: h.src,
        dst: h.dst,
        src_port,
        dst_port,
    };
    let flow = |key, port, closing| Classified::Flow {
        key,
        service: Service {
            proto: h.proto,
            port,
        },
        closing,
    };
    if h.later_fragment {
        return Some(flow(key(0, 0), None, false));
    }
    let t = p.get(h.offset..)?;
    match h.proto {
        proto::TCP | proto::UDP => {
            let ports = t.get(..4)?;
            let (sp, dp) = (
                u16::from_be_bytes([ports[0], ports[1]]),
                u16::from_be_bytes([ports[2], ports[3]]),
            );
            let closing = h.proto == proto::TCP && outer && t.get(13)? & (TCP_FIN | TCP_RST) != 0;
            Some(flow(key(sp, dp), Some(dp), closing))
        }
        proto::ICMP | proto::ICMPV6 => {
            let kind = *t.first()?;
            let v6 = h.proto == proto::ICMPV6;
            let echo = if v6 {
                kind == 128 || kind == 129
            } else {
                kind == 8 || kind == 0
            };
            let error = if v6 {
                (1..=4).contains(&kind)
            } else {
                matches!(kind, 3 | 4 | 11 | 12)
            };
            if echo {
                let id_bytes = t.get(4..6)?;
                let id = u16::from_be_bytes([id_bytes[0], id_bytes[1]]);
                Some(flow(key(id, id), None, false))
            } else if error && outer {
                let quoted = t.get(8..)?;
                let inner = header(quoted)?;
                match transport(&inner, quoted, false)? {
                    Classified::Flow { key, .. } => Some(Classified::IcmpError { about: key }),
                    _ => None,
                }
            } else {
                Some(flow(key(0, 0), None, false))
            }
        }
        _ => Some(flow(key(0, 0), None, false)),
    }
}
