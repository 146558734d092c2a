//! Each setting's parser, shared by its flag (a string) and its value in
//! the config file (the TOML type `Raw`): one place says what a valid
//! value is.

use std::{net::SocketAddr, time::Duration};

use serde::{de, Deserialize, Deserializer};

use crate::{bpf::AttachMode, invalid::Invalid};

/// One setting's parser, shared by its flag (a string) and its file value
/// (the TOML type `Raw`).
pub trait Setting {
    type Raw: for<'de> Deserialize<'de>;
    type Value;
    fn parse(raw: Self::Raw) -> Result<Self::Value, Invalid>;
}

pub(super) fn de_via<'de, D: Deserializer<'de>, S: Setting>(
    d: D,
) -> Result<Option<S::Value>, D::Error> {
    S::parse(S::Raw::deserialize(d)?)
        .map(Some)
        .map_err(de::Error::custom)
}

fn range(v: i64, max: i64) -> Result<i64, Invalid> {
    if v < 1 || v > max {
        return Err(Invalid::OutOfRange {
            value: v,
            min: 1,
            max,
        });
    }
    Ok(v)
}

pub struct ListenAddr;
impl Setting for ListenAddr {
    type Raw = String;
    type Value = SocketAddr;
    /// `IP:PORT`, `[IPv6]:PORT`, and `[IPv4]:PORT` too, so that one
    /// template (`[$(NODE_IP)]:7941`) serves both families.
    fn parse(s: String) -> Result<SocketAddr, Invalid> {
        let bad = || Invalid::not_a(s.clone(), "an address:port");
        if let Ok(a) = s.parse() {
            return Ok(a);
        }
        // node_exporter's `:9100` binds every address; kato binds exactly
        // what it is told (metrics name processes and peers), so it asks.
        if let Some(port) = s.strip_prefix(':').filter(|p| p.parse::<u16>().is_ok()) {
            return Err(Invalid::refused(
                s.clone(),
                format!("it has no address: give 127.0.0.1:{port} (this host only), 0.0.0.0:{port} (every IPv4 address) or [::]:{port} (every address)"),
            ));
        }
        let (ip, port) = s
            .strip_prefix('[')
            .and_then(|r| r.split_once("]:"))
            .ok_or_else(bad)?;
        let ip: std::net::Ipv4Addr = ip.parse().map_err(|_| bad())?;
        Ok(SocketAddr::new(ip.into(), port.parse().map_err(|_| bad())?))
    }
}

/// A duration of at least `min` (`least` says it in words).
fn at_least(s: String, min: Duration, least: &'static str) -> Result<Duration, Invalid> {
    let d = crate::duration::parse(&s)?;
    if d < min {
        return Err(Invalid::refused(s, least));
    }
    Ok(d)
}

pub struct Interval;
impl Setting for Interval {
    type Raw = String;
    type Value = Duration;
    fn parse(s: String) -> Result<Duration, Invalid> {
        at_least(s, Duration::from_millis(100), "too short (at least 100ms)")
    }
}

pub struct IdleKillMin;
impl Setting for IdleKillMin {
    type Raw = String;
    type Value = Duration;
    fn parse(s: String) -> Result<Duration, Invalid> {
        crate::duration::parse(&s)
    }
}

pub struct LabelLimit;
impl Setting for LabelLimit {
    type Raw = i64;
    type Value = usize;
    fn parse(v: i64) -> Result<usize, Invalid> {
        range(v, 10_000).map(|v| v as usize)
    }
}

pub struct TableCapacity;
impl Setting for TableCapacity {
    type Raw = i64;
    type Value = usize;
    fn parse(v: i64) -> Result<usize, Invalid> {
        range(v, 100_000_000).map(|v| v as usize)
    }
}

pub struct HistoryEvents;
impl Setting for HistoryEvents {
    type Raw = i64;
    type Value = usize;
    fn parse(v: i64) -> Result<usize, Invalid> {
        range(v, 100_000_000).map(|v| v as usize)
    }
}

pub struct MaxConnections;
impl Setting for MaxConnections {
    type Raw = i64;
    type Value = usize;
    fn parse(v: i64) -> Result<usize, Invalid> {
        range(v, 10_000).map(|v| v as usize)
    }
}

/// The event ring's size: `16MiB`, `512KiB` or bytes (a string, or in the
/// config file a bare integer too); a power of two from 64 KiB to 1 GiB
/// (the kernel takes powers of two of pages).
pub struct RingSize;
const SIZE: &str = "a size (e.g. 16MiB, 512KiB)";
impl Setting for RingSize {
    type Raw = toml::Value;
    type Value = u32;
    fn parse(raw: toml::Value) -> Result<u32, Invalid> {
        let s = match raw {
            toml::Value::String(s) => s,
            toml::Value::Integer(n) => n.to_string(),
            other => {
                return Err(Invalid::not_a(
                    other.type_str(),
                    "a size (e.g. \"16MiB\", \"512KiB\" or bytes)",
                ))
            }
        };
        let t = s.trim();
        let (num, unit) = match t.find(|c: char| !c.is_ascii_digit()) {
            Some(i) => t.split_at(i),
            None => (t, ""),
        };
        let scale: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            _ => return Err(Invalid::not_a(s, SIZE)),
        };
        let bytes = num
            .parse::<u64>()
            .ok()
            .and_then(|n| n.checked_mul(scale))
            .ok_or_else(|| Invalid::not_a(s.clone(), SIZE))?;
        if !(64 << 10..=1 << 30).contains(&bytes) || !bytes.is_power_of_two() {
            return Err(Invalid::not_a(s, "a power of two from 64KiB to 1GiB"));
        }
        Ok(bytes as u32)
    }
}

/// The format of `log_events` (JSON lines; one format today).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventLogFormat {
    Json,
}

pub struct LogEvents;
impl Setting for LogEvents {
    type Raw = String;
    type Value = EventLogFormat;
    fn parse(s: String) -> Result<EventLogFormat, Invalid> {
        match s.as_str() {
            "json" => Ok(EventLogFormat::Json),
            _ => Err(Invalid::unknown("event log format", s, "json")),
        }
    }
}

/// How often metrics go over OTLP: events go every second, so no less.
pub struct OtlpInterval;
impl Setting for OtlpInterval {
    type Raw = String;
    type Value = Duration;
    fn parse(s: String) -> Result<Duration, Invalid> {
        at_least(s, Duration::from_secs(1), "too short (at least 1s)")
    }
}

pub struct OtlpEndpoint;
impl Setting for OtlpEndpoint {
    type Raw = String;
    type Value = crate::agent::otlp::Endpoint;
    fn parse(s: String) -> Result<Self::Value, Invalid> {
        s.parse()
    }
}

pub struct Hz;
impl Setting for Hz {
    type Raw = i64;
    type Value = u32;
    fn parse(v: i64) -> Result<u32, Invalid> {
        range(v, 10_000).map(|v| v as u32)
    }
}

pub struct Attach;
impl Setting for Attach {
    type Raw = String;
    type Value = AttachMode;
    fn parse(s: String) -> Result<AttachMode, Invalid> {
        s.parse()
    }
}
