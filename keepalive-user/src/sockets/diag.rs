//! The fallback when BPF iterators are unavailable: NETLINK_SOCK_DIAG, what
//! `ss` uses. It knows tuples, states, timers and owners' inodes, but not a
//! socket's keepalive settings, which are then reported as unknown.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
};

use super::{Socket, Timer, TimerKind};
use crate::{netlink, tcp::TcpState};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// struct inet_diag_msg.
const MSG_LEN: usize = 72;

/// One `inet_diag_req_v2` dump request for TCP sockets of `family`, all states.
fn request(family: u8, seq: u32) -> Vec<u8> {
    let mut b = netlink::header(SOCK_DIAG_BY_FAMILY, seq, 56);
    // family, protocol, ext, pad, states
    b.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    b.extend_from_slice(&u32::MAX.to_ne_bytes());
    b.extend_from_slice(&[0u8; 48]); // inet_diag_sockid: match everything
    b
}

/// Decodes one `inet_diag_msg`; `hz` is unused (the kernel reports ms).
pub fn decode(msg: &[u8], netns: u32) -> Option<Socket> {
    if msg.len() < MSG_LEN {
        return None;
    }
    let family = u16::from(msg[0]);
    let state = TcpState::from_raw(msg[1])?;
    let (timer_code, retrans) = (msg[2], msg[3]);
    let sport = u16::from_be_bytes([msg[4], msg[5]]);
    let dport = u16::from_be_bytes([msg[6], msg[7]]);
    let ip = |b: &[u8]| -> Option<IpAddr> {
        Some(match family as i32 {
            libc::AF_INET => IpAddr::V4(Ipv4Addr::new(b[0], b[1], b[2], b[3])),
            libc::AF_INET6 => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&b[..16]).ok()?)),
            _ => return None,
        })
    };
    let u32_at = |o: usize| u32::from_ne_bytes([msg[o], msg[o + 1], msg[o + 2], msg[o + 3]]);
    let cookie = u64::from(u32_at(44)) | u64::from(u32_at(48)) << 32;
    let expires_ms = u32_at(52);
    let (kind, retransmits, probes) = match timer_code {
        1 => (TimerKind::On, retrans, 0),
        2 => (TimerKind::Keepalive, 0, retrans),
        3 => (TimerKind::TimeWait, 0, 0),
        4 => (TimerKind::Probe, 0, retrans),
        _ => (TimerKind::Off, 0, 0),
    };
    let timer = Timer {
        kind,
        remaining_s: f64::from(expires_ms) / 1000.0,
        retransmits,
        probes,
    };
    let local = SocketAddr::new(ip(&msg[8..24])?, sport);
    let remote = SocketAddr::new(ip(&msg[24..40])?, dport);
    Some(Socket {
        // inet_diag's idiag_cookie is the socket cookie (it is also kato's
        // key here: sock_diag gives no kernel address).
        cookie: Some(cookie),
        recv_q: u32_at(56),
        send_q: u32_at(60),
        uid: u32_at(64),
        ..Socket::bare(
            cookie,
            netns,
            local,
            remote,
            state,
            u64::from(u32_at(68)),
            timer,
        )
    })
}

/// Every TCP socket of the calling thread's network namespace.
pub fn dump(netns: u32) -> io::Result<Vec<Socket>> {
    let mut out = Vec::new();
    let requests = [
        request(libc::AF_INET as u8, 1),
        request(libc::AF_INET6 as u8, 2),
    ];
    netlink::dump(NETLINK_SOCK_DIAG, &requests, |ty, msg| {
        if ty == SOCK_DIAG_BY_FAMILY {
            out.extend(decode(msg, netns));
        }
    })?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg() -> Vec<u8> {
        let mut m = vec![0u8; MSG_LEN];
        m[0] = libc::AF_INET as u8;
        m[1] = 1; // ESTABLISHED
        m[2] = 2; // keepalive timer
        m[3] = 1; // one probe out
        m[4..6].copy_from_slice(&40000u16.to_be_bytes());
        m[6..8].copy_from_slice(&5432u16.to_be_bytes());
        m[8..12].copy_from_slice(&[10, 0, 0, 1]);
        m[24..28].copy_from_slice(&[10, 0, 0, 2]);
        m[44..48].copy_from_slice(&7u32.to_ne_bytes());
        m[52..56].copy_from_slice(&1500u32.to_ne_bytes());
        m[68..72].copy_from_slice(&4242u32.to_ne_bytes());
        m
    }

    #[test]
    fn decodes_inet_diag_msg() {
        let s = decode(&msg(), 1).unwrap();
        assert_eq!(s.local, "10.0.0.1:40000".parse().unwrap());
        assert_eq!(s.remote, "10.0.0.2:5432".parse().unwrap());
        assert_eq!(s.timer.netstat(), "keepalive (1.50/0/1)");
        assert_eq!((s.inode, s.sock, s.keepalive), (4242, 7, None));
    }

    #[test]
    fn rejects_short_or_unknown() {
        assert!(decode(&msg()[..MSG_LEN - 1], 1).is_none());
        let mut m = msg();
        m[1] = 0;
        assert!(decode(&m, 1).is_none());
        let mut m = msg();
        m[0] = 1;
        assert!(decode(&m, 1).is_none());
    }

    #[test]
    fn request_layout() {
        let r = request(libc::AF_INET6 as u8, 9);
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(
            (r[16], r[17]),
            (libc::AF_INET6 as u8, libc::IPPROTO_TCP as u8)
        );
    }

    #[test]
    fn dumps_own_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let all = dump(0).unwrap();
        assert!(all
            .iter()
            .any(|s| s.local.port() == port && s.state == TcpState::Listen));
    }
}
