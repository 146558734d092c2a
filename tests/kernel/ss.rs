//! A parser for `ss -tnoa` output, to compare kato against it.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[derive(Debug, Clone, PartialEq)]
pub struct SsTimer {
    /// on, keepalive, timewait, persist.
    pub kind: String,
    pub secs: f64,
    /// The resolution ss printed with: it truncates to this.
    pub unit: f64,
    pub retrans: u32,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SsSocket {
    /// Kernel state name (ESTABLISHED, FIN_WAIT2, ...).
    pub state: String,
    pub local: SocketAddr,
    pub remote: SocketAddr,
    pub timer: Option<SsTimer>,
}

fn addr(s: &str) -> SocketAddr {
    let (host, port) = s
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("ss address {s}"));
    let port = if port == "*" {
        0
    } else {
        port.parse().unwrap()
    };
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let ip: IpAddr = if host == "*" {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        host.parse().unwrap()
    };
    SocketAddr::new(ip, port)
}

fn state(s: &str) -> String {
    match s {
        "ESTAB" => "ESTABLISHED".into(),
        "UNCONN" => "CLOSE".into(),
        other => other.replace("FIN-WAIT-", "FIN_WAIT").replace('-', "_"),
    }
}

/// iproute2's print_ms_timer: `1min5sec`, `59sec`, `1.979ms` (1 s 979 ms), `979ms`.
pub fn duration(s: &str) -> (f64, f64) {
    let (mut secs, mut unit) = (0.0, 0.001);
    let mut rest = s;
    if let Some((m, r)) = rest.split_once("min") {
        let m: f64 = m.parse().unwrap();
        secs += m * 60.0;
        unit = if m > 9.0 { 60.0 } else { 1.0 };
        rest = r;
    }
    if let Some((n, r)) = rest.split_once("sec") {
        secs += n.parse::<f64>().unwrap();
        if unit < 1.0 {
            unit = 1.0;
        }
        rest = r;
    } else if let Some((n, r)) = rest.split_once('.') {
        secs += n.parse::<f64>().unwrap();
        rest = r;
    }
    if let Some(ms) = rest.strip_suffix("ms") {
        secs += ms.parse::<f64>().unwrap() / 1000.0;
    }
    (secs, unit)
}

pub fn parse(text: &str) -> Vec<SsSocket> {
    text.lines()
        .skip(1)
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let timer = f.iter().find_map(|x| x.strip_prefix("timer:(")).map(|t| {
                let parts: Vec<&str> = t.trim_end_matches(')').split(',').collect();
                let (secs, unit) = duration(parts[1]);
                SsTimer {
                    kind: parts[0].into(),
                    secs,
                    unit,
                    retrans: parts[2].parse().unwrap(),
                }
            });
            SsSocket {
                state: state(f[0]),
                local: addr(f[3]),
                remote: addr(f[4]),
                timer,
            }
        })
        .collect()
}

#[test]
fn parses_ss_output() {
    let text = "State     Recv-Q Send-Q Local Address:Port  Peer Address:Port Process\n\
LISTEN    0      128        127.0.0.1:9123       0.0.0.0:*\n\
ESTAB     0      0          127.0.0.1:38646    127.0.0.1:9123  timer:(keepalive,29sec,0)\n\
FIN-WAIT-2 0     0              [::1]:40000        [::1]:5000  timer:(timewait,59sec,0)\n\
ESTAB     0      0          127.0.0.1:1        127.0.0.1:2     timer:(on,1.979ms,3)\n";
    let v = parse(text);
    assert_eq!(v.len(), 4);
    assert_eq!(v[0].remote, "0.0.0.0:0".parse().unwrap());
    assert_eq!(v[1].timer.as_ref().unwrap().secs, 29.0);
    assert_eq!(v[2].state, "FIN_WAIT2");
    assert_eq!(v[2].local, "[::1]:40000".parse().unwrap());
    let t = v[3].timer.as_ref().unwrap();
    assert_eq!(
        (t.kind.as_str(), t.secs, t.unit, t.retrans),
        ("on", 1.979, 0.001, 3)
    );
    assert_eq!(duration("119min"), (7140.0, 60.0));
    assert_eq!(duration("2min5sec"), (125.0, 1.0));
    assert_eq!(duration("979ms"), (0.979, 0.001));
}
