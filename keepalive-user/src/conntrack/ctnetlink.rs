//! ctnetlink, the netfilter netlink protocol `conntrack -L` speaks: the dump
//! request and the decoding of one entry (tuples, TCP state, seconds left).
//! Attribute numbers: include/uapi/linux/netfilter/nfnetlink_conntrack.h.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use thiserror::Error;

use super::CtState;
use crate::netlink;

pub const NETLINK_NETFILTER: i32 = 12;
/// NFNL_SUBSYS_CTNETLINK << 8 | IPCTNL_MSG_CT_NEW: what a dump answers with.
pub const MSG_CT_NEW: u16 = 1 << 8;
const MSG_CT_GET: u16 = 1 << 8 | 1;
/// struct nfgenmsg.
const NFGENMSG_LEN: usize = 4;

const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_PROTOINFO: u16 = 4;
const CTA_TIMEOUT: u16 = 7;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const CTA_PROTOINFO_TCP: u16 = 1;
const CTA_PROTOINFO_TCP_STATE: u16 = 1;
/// NLA_F_NESTED | NLA_F_NET_BYTEORDER.
const NLA_TYPE_MASK: u16 = 0x3fff;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum CtnetlinkError {
    #[error("ctnetlink message shorter than its header")]
    Short,
    #[error("ctnetlink attribute {0} overruns its message")]
    Overrun(u16),
    #[error("ctnetlink attribute {0} has length {1}")]
    Length(u16, usize),
    #[error("ctnetlink entry lacks {0}")]
    Missing(&'static str),
    #[error("unknown conntrack TCP state {0}")]
    State(u8),
}

/// The dump request: every entry of every family in the calling thread's
/// namespace (a per-tuple filter needs 5.8+ and saves nothing here: kato
/// wants most of them).
pub fn request(seq: u32) -> Vec<u8> {
    let mut b = netlink::header(MSG_CT_GET, seq, NFGENMSG_LEN);
    b.extend_from_slice(&[libc::AF_UNSPEC as u8, 0, 0, 0]);
    b
}

/// One direction of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tuple {
    pub src: SocketAddr,
    pub dst: SocketAddr,
}

/// A TCP conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Entry {
    pub orig: Tuple,
    pub reply: Tuple,
    pub state: CtState,
    /// Seconds until conntrack forgets the flow, unless a packet comes.
    pub remaining_s: u32,
}

/// Attributes of one nest: (type without flags, payload).
fn attrs(mut b: &[u8]) -> impl Iterator<Item = Result<(u16, &[u8]), CtnetlinkError>> {
    std::iter::from_fn(move || {
        if b.len() < 4 {
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > b.len() {
            b = &[];
            return Some(Err(CtnetlinkError::Overrun(ty)));
        }
        let payload = &b[4..len];
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
        Some(Ok((ty, payload)))
    })
}

fn exact<const N: usize>(ty: u16, p: &[u8]) -> Result<[u8; N], CtnetlinkError> {
    p.try_into()
        .map_err(|_| CtnetlinkError::Length(ty, p.len()))
}

/// A tuple; None for other protocols than TCP.
fn tuple(b: &[u8]) -> Result<Option<Tuple>, CtnetlinkError> {
    let (mut src, mut dst, mut proto, mut sport, mut dport) = (None, None, None, None, None);
    for a in attrs(b) {
        let (ty, p) = a?;
        match ty {
            CTA_TUPLE_IP => {
                for a in attrs(p) {
                    let (ty, p) = a?;
                    match ty {
                        CTA_IP_V4_SRC => src = Some(IpAddr::V4(Ipv4Addr::from(exact::<4>(ty, p)?))),
                        CTA_IP_V4_DST => dst = Some(IpAddr::V4(Ipv4Addr::from(exact::<4>(ty, p)?))),
                        CTA_IP_V6_SRC => {
                            src = Some(IpAddr::V6(Ipv6Addr::from(exact::<16>(ty, p)?)));
                        }
                        CTA_IP_V6_DST => {
                            dst = Some(IpAddr::V6(Ipv6Addr::from(exact::<16>(ty, p)?)));
                        }
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for a in attrs(p) {
                    let (ty, p) = a?;
                    match ty {
                        CTA_PROTO_NUM => proto = Some(exact::<1>(ty, p)?[0]),
                        CTA_PROTO_SRC_PORT => sport = Some(u16::from_be_bytes(exact(ty, p)?)),
                        CTA_PROTO_DST_PORT => dport = Some(u16::from_be_bytes(exact(ty, p)?)),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    if proto.ok_or(CtnetlinkError::Missing("a protocol"))? != libc::IPPROTO_TCP as u8 {
        return Ok(None);
    }
    let missing = CtnetlinkError::Missing;
    Ok(Some(Tuple {
        src: SocketAddr::new(
            src.ok_or(missing("a source address"))?,
            sport.ok_or(missing("a source port"))?,
        ),
        dst: SocketAddr::new(
            dst.ok_or(missing("a destination address"))?,
            dport.ok_or(missing("a destination port"))?,
        ),
    }))
}

/// Decodes one IPCTNL_MSG_CT_NEW payload (after the netlink header); None
/// for entries of other protocols than TCP.
pub fn decode(msg: &[u8]) -> Result<Option<Entry>, CtnetlinkError> {
    let body = msg.get(NFGENMSG_LEN..).ok_or(CtnetlinkError::Short)?;
    let (mut orig, mut reply, mut state, mut remaining) = (None, None, None, None);
    for a in attrs(body) {
        let (ty, p) = a?;
        match ty {
            CTA_TUPLE_ORIG => match tuple(p)? {
                Some(t) => orig = Some(t),
                None => return Ok(None),
            },
            CTA_TUPLE_REPLY => reply = tuple(p)?,
            CTA_TIMEOUT => remaining = Some(u32::from_be_bytes(exact(ty, p)?)),
            CTA_PROTOINFO => {
                for a in attrs(p) {
                    let (ty, p) = a?;
                    if ty != CTA_PROTOINFO_TCP {
                        continue;
                    }
                    for a in attrs(p) {
                        let (ty, p) = a?;
                        if ty == CTA_PROTOINFO_TCP_STATE {
                            let raw = exact::<1>(ty, p)?[0];
                            state = Some(CtState::from_raw(raw).ok_or(CtnetlinkError::State(raw))?);
                        }
                    }
                }
            }
            _ => {}
        }
    }
    let missing = CtnetlinkError::Missing;
    Ok(Some(Entry {
        orig: orig.ok_or(missing("an original tuple"))?,
        reply: reply.ok_or(missing("a reply tuple"))?,
        state: state.ok_or(missing("a TCP state"))?,
        remaining_s: remaining.ok_or(missing("a timeout"))?,
    }))
}

/// Builders for the tests and the fuzz corpus: an entry as the kernel sends it.
#[doc(hidden)]
pub mod build {
    fn attr(ty: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((4 + payload.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&ty.to_ne_bytes());
        b.extend_from_slice(payload);
        while b.len() % 4 != 0 {
            b.push(0);
        }
        b
    }

    fn nest(ty: u16, parts: &[Vec<u8>]) -> Vec<u8> {
        attr(ty | 0x8000, &parts.concat())
    }

    fn tuple(ty: u16, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        nest(
            ty,
            &[
                nest(1, &[attr(1, &src), attr(2, &dst)]),
                nest(
                    2,
                    &[
                        attr(1, &[6]),
                        attr(2, &sport.to_be_bytes()),
                        attr(3, &dport.to_be_bytes()),
                    ],
                ),
            ],
        )
    }

    /// An IPv4 TCP entry (payload after the netlink header).
    pub fn entry(
        src: [u8; 4],
        sport: u16,
        dst: [u8; 4],
        dport: u16,
        state: u8,
        timeout: u32,
    ) -> Vec<u8> {
        let mut m = vec![2, 0, 0, 0];
        m.extend(tuple(1, src, sport, dst, dport));
        m.extend(tuple(2, dst, dport, src, sport));
        m.extend(attr(3, &0x18eu32.to_be_bytes()));
        m.extend(attr(7, &timeout.to_be_bytes()));
        m.extend(nest(4, &[nest(1, &[attr(1, &[state]), attr(2, &[0])])]));
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_an_entry() {
        let e = decode(&build::entry(
            [10, 0, 0, 1],
            40000,
            [10, 0, 0, 2],
            5432,
            3,
            17,
        ))
        .unwrap()
        .unwrap();
        assert_eq!(e.orig.src, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(e.orig.dst, "10.0.0.2:5432".parse().unwrap());
        assert_eq!(e.reply.src, "10.0.0.2:5432".parse().unwrap());
        assert_eq!((e.state, e.remaining_s), (CtState::Established, 17));
    }

    #[test]
    fn rejects_truncated_and_unknown() {
        let m = build::entry([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, 3, 17);
        for cut in [2, 10, 40, m.len() - 3] {
            assert!(decode(&m[..cut]).is_err(), "cut at {cut}");
        }
        let bad_state = build::entry([10, 0, 0, 1], 1, [10, 0, 0, 2], 2, 42, 17);
        assert_eq!(decode(&bad_state), Err(CtnetlinkError::State(42)));
        // A UDP entry is not an error, just not kato's.
        let mut udp = m.clone();
        let at = udp
            .windows(8)
            .position(|w| w == [5, 0, 1, 0, 6, 0, 0, 0])
            .unwrap();
        udp[at + 4] = 17;
        assert_eq!(decode(&udp), Ok(None));
    }

    #[test]
    fn request_layout() {
        let r = request(3);
        assert_eq!(r.len(), 20);
        assert_eq!(u16::from_ne_bytes([r[4], r[5]]), 0x101);
        assert_eq!(r[16], 0);
    }
}
