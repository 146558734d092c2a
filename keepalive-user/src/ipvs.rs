//! IPVS (kube-proxy's IPVS mode, keepalived, LVS): a virtual service
//! forgets an established TCP connection after its `tcp` timeout (900 s by
//! default; `ipvsadm --set`, kube-proxy `--ipvs-tcp-timeout`). kato reads
//! the virtual services from /proc/net/ip_vs and the timeout over generic
//! netlink (IPVS_CMD_GET_CONFIG), in the calling thread's namespace; every
//! client connection to a virtual service is judged against it. Nothing is
//! asked of the kernel unless /proc/net/ip_vs exists: a generic netlink
//! lookup of the IPVS family would load the module on hosts without it.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use crate::{
    netlink,
    policy::{Cidr, Rule, RuleSource},
};

const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
const IPVS_CMD_GET_CONFIG: u8 = 13;
const IPVS_CMD_ATTR_TIMEOUT_TCP: u16 = 4;
const PROC: &str = "/proc/net/ip_vs";

/// The TCP virtual services listed in /proc/net/ip_vs text.
pub fn parse_services(text: &str) -> Result<Vec<SocketAddr>, String> {
    let mut out = vec![];
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("TCP ") else {
            continue;
        };
        let addr = rest.split_whitespace().next().unwrap_or_default();
        out.push(parse_hex_addr(addr).ok_or_else(|| format!("{PROC}: bad service `{addr}`"))?);
    }
    Ok(out)
}

/// `0A480001:0050` or `[2001:0db8:0000:...:0001]:0050`.
fn parse_hex_addr(s: &str) -> Option<SocketAddr> {
    let (ip, port) = s.rsplit_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let ip = match ip.strip_prefix('[').and_then(|i| i.strip_suffix(']')) {
        Some(v6) => IpAddr::V6(v6.parse::<Ipv6Addr>().ok()?),
        None if ip.len() == 8 => IpAddr::V4(Ipv4Addr::from(u32::from_str_radix(ip, 16).ok()?)),
        None => return None,
    };
    Some(SocketAddr::new(ip, port))
}

fn genl_request(family: u16, cmd: u8, attrs: &[u8]) -> Vec<u8> {
    let mut b = netlink::header_with(
        family,
        netlink::NLM_F_REQUEST | netlink::NLM_F_ACK,
        1,
        4 + attrs.len(),
    );
    b.extend_from_slice(&[cmd, 1, 0, 0]);
    b.extend_from_slice(attrs);
    b
}

/// Attributes after the genl header: (type, payload); None when malformed.
fn genl_attrs(msg: &[u8]) -> Option<Vec<(u16, &[u8])>> {
    let mut b = msg.get(4..)?;
    let mut out = vec![];
    while b.len() >= 4 {
        let len = usize::from(u16::from_ne_bytes([b[0], b[1]]));
        let ty = u16::from_ne_bytes([b[2], b[3]]) & 0x3fff;
        if len < 4 || len > b.len() {
            return None;
        }
        out.push((ty, &b[4..len]));
        b = b.get((len + 3) & !3..).unwrap_or(&[]);
    }
    Some(out)
}

/// The generic netlink family id of IPVS in a CTRL_CMD_NEWFAMILY answer.
pub fn parse_family(msg: &[u8]) -> Option<u16> {
    genl_attrs(msg)?
        .into_iter()
        .find(|(t, _)| *t == CTRL_ATTR_FAMILY_ID)
        .and_then(|(_, p)| Some(u16::from_ne_bytes(p.try_into().ok()?)))
}

/// IPVS_CMD_ATTR_TIMEOUT_TCP (seconds) in an IPVS_CMD_SET_CONFIG answer.
pub fn parse_tcp_timeout(msg: &[u8]) -> Option<u32> {
    genl_attrs(msg)?
        .into_iter()
        .find(|(t, _)| *t == IPVS_CMD_ATTR_TIMEOUT_TCP)
        .and_then(|(_, p)| Some(u32::from_ne_bytes(p.try_into().ok()?)))
}

fn tcp_timeout() -> io::Result<u32> {
    let name = netlink::attr(CTRL_ATTR_FAMILY_NAME, b"IPVS\0");
    let mut family = None;
    netlink::dump(
        NETLINK_GENERIC,
        &[genl_request(GENL_ID_CTRL, CTRL_CMD_GETFAMILY, &name)],
        |ty, msg| {
            if ty == GENL_ID_CTRL {
                family = family.or(parse_family(msg));
            }
        },
    )?;
    let family = family.ok_or_else(|| io::Error::other("no IPVS generic netlink family"))?;
    let mut timeout = None;
    netlink::dump(
        NETLINK_GENERIC,
        &[genl_request(family, IPVS_CMD_GET_CONFIG, &[])],
        |ty, msg| {
            if ty == family {
                timeout = timeout.or(parse_tcp_timeout(msg));
            }
        },
    )?;
    timeout.ok_or_else(|| io::Error::other("IPVS config without a TCP timeout"))
}

/// One rule per TCP virtual service of the calling thread's namespace;
/// none when IPVS is not loaded or has no services.
pub fn rules() -> io::Result<Vec<Rule>> {
    let text = match std::fs::read_to_string(PROC) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e),
    };
    let services = parse_services(&text).map_err(io::Error::other)?;
    if services.is_empty() {
        return Ok(vec![]);
    }
    let t = tcp_timeout()?;
    Ok(services.into_iter().map(|s| rule(s, t)).collect())
}

fn rule(service: SocketAddr, timeout_s: u32) -> Rule {
    let timeout = Duration::from_secs(u64::from(timeout_s));
    Rule {
        cidr: Some(Cidr::host(service.ip())),
        port: Some(service.port()),
        timeout,
        text: format!("{service}={}", crate::duration::format(timeout)),
        source: RuleSource::Ipvs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_services_like_ipvsadm() {
        let text = "IP Virtual Server version 1.2.1 (size=4096)\n\
            Prot LocalAddress:Port Scheduler Flags\n  -> RemoteAddress:Port Forward Weight ActiveConn InActConn\n\
            TCP  0A480001:0050 rr\n  -> 7F000001:1F90      Masq    1      0          0\n\
            UDP  0A480001:0035 rr\n\
            TCP  [2001:0db8:0000:0000:0000:0000:0000:0001]:01BB wlc\n";
        assert_eq!(
            parse_services(text).unwrap(),
            [
                "10.72.0.1:80".parse().unwrap(),
                "[2001:db8::1]:443".parse().unwrap()
            ]
        );
        assert!(parse_services("TCP  0A48:0050 rr\n").is_err());
        let r = rule("10.72.0.1:80".parse().unwrap(), 900);
        assert_eq!(
            (r.text.as_str(), r.source),
            ("10.72.0.1:80=900s", RuleSource::Ipvs)
        );
    }

    #[test]
    fn reads_genl_answers() {
        let mut m = vec![1, 2, 0, 0];
        m.extend(netlink::attr(CTRL_ATTR_FAMILY_NAME, b"IPVS\0"));
        m.extend(netlink::attr(CTRL_ATTR_FAMILY_ID, &37u16.to_ne_bytes()));
        assert_eq!(parse_family(&m), Some(37));
        let mut c = vec![14, 1, 0, 0];
        c.extend(netlink::attr(
            IPVS_CMD_ATTR_TIMEOUT_TCP,
            &30u32.to_ne_bytes(),
        ));
        assert_eq!(parse_tcp_timeout(&c), Some(30));
        assert_eq!(parse_tcp_timeout(&c[..c.len() - 1]), None);
        assert_eq!(parse_tcp_timeout(&[]), None);
    }
}
