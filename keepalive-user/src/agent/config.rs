//! The agent's settings: defaults, then the TOML file (`--config`), then
//! flags. Every bad value is one error naming its key (or flag), and the
//! binary exits with code 2 on it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use thiserror::Error;

use crate::policy::{Policy, Rule};

/// 9100-9999 is fully allocated to exporters; 7941 is not a well-known
/// exporter's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7941";

#[derive(Debug, Error, PartialEq, Eq)]
#[error("{origin}: key `{key}`: {message}")]
pub struct ConfigError {
    /// The config file's path, or "command line".
    pub origin: String,
    pub key: String,
    pub message: String,
}

/// Which network namespaces the agent watches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NetnsScope {
    /// Every namespace on the host (needs CAP_SYS_ADMIN to enter them).
    All,
    /// Only the agent's own.
    Own,
    /// These (inode numbers, `ip netns` names or paths).
    Listed(Vec<String>),
}

/// An opt-in extra label on the per-event counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LabelBy {
    /// The local port, for listening (server) ports only; others are `other`.
    LocalPort,
    RemotePort,
    /// The owning process's command name.
    Comm,
    /// The network namespace inode.
    Netns,
}

impl LabelBy {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "local_port" => LabelBy::LocalPort,
            "remote_port" => LabelBy::RemotePort,
            "comm" => LabelBy::Comm,
            "netns" => LabelBy::Netns,
            _ => {
                return Err(format!(
                    "unknown label `{s}` (expected local_port, remote_port, comm or netns)"
                ))
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            LabelBy::LocalPort => "local_port",
            LabelBy::RemotePort => "remote_port",
            LabelBy::Comm => "comm",
            LabelBy::Netns => "netns",
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    pub netns: NetnsScope,
    /// How often the socket table is reconciled with a full snapshot.
    pub snapshot_interval: Duration,
    pub label_by: Vec<LabelBy>,
    /// Distinct values per opt-in label before the rest become `other`.
    pub label_limit: usize,
    /// Sockets tracked at most; the least recently updated are evicted first.
    pub table_capacity: usize,
    pub btf: Option<PathBuf>,
    pub hz: Option<u32>,
    /// Declared middlebox idle timeouts.
    pub policy: Policy,
    /// Resets and keepalive timeouts after this much idle time are
    /// reported as suspected middlebox kills.
    pub idle_kill_min: Duration,
    /// Count request/response turns from every send/recv (costs a little on
    /// every socket syscall).
    pub http_keepalive: bool,
    /// Ring buffer size override (tests only; not a config key).
    pub ring_bytes: Option<u32>,
    /// fentry, tracepoints, or the best the kernel allows.
    pub attach: crate::loader::AttachMode,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            netns: NetnsScope::All,
            snapshot_interval: Duration::from_secs(30),
            label_by: vec![],
            label_limit: 20,
            table_capacity: 1_000_000,
            btf: None,
            hz: None,
            policy: Policy::default(),
            idle_kill_min: Duration::from_secs(30),
            http_keepalive: false,
            ring_bytes: None,
            attach: crate::loader::AttachMode::Auto,
        }
    }
}

/// Settings as given (file or flags); `None` = not given.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub listen: Option<SocketAddr>,
    pub netns: Option<NetnsScope>,
    pub snapshot_interval: Option<Duration>,
    pub label_by: Option<Vec<LabelBy>>,
    pub label_limit: Option<usize>,
    pub table_capacity: Option<usize>,
    pub btf: Option<PathBuf>,
    pub hz: Option<u32>,
    pub idle_timeouts: Option<Vec<Rule>>,
    pub idle_kill_min: Option<Duration>,
    pub http_keepalive: Option<bool>,
    pub attach: Option<crate::loader::AttachMode>,
}

pub const KEYS: [&str; 12] = [
    "listen",
    "netns",
    "snapshot_interval",
    "label_by",
    "label_limit",
    "table_capacity",
    "btf",
    "hz",
    "idle_timeouts",
    "idle_kill_min",
    "http_keepalive",
    "attach",
];

fn positive(key: &str, v: i64, max: i64) -> Result<i64, String> {
    let _ = key;
    if v < 1 || v > max {
        return Err(format!("{v} is out of range (1 to {max})"));
    }
    Ok(v)
}

impl Overrides {
    /// Parses a TOML config file's text.
    pub fn from_toml(origin: &str, text: &str) -> Result<Self, ConfigError> {
        // An empty TOML key ("" = 1) is still named, as "".
        let err = |key: &str, message: String| ConfigError {
            origin: origin.into(),
            key: if key.is_empty() {
                "\"\"".into()
            } else {
                key.into()
            },
            message,
        };
        let table: toml::Table = text.parse().map_err(|e: toml::de::Error| {
            let msg = e.message().to_owned();
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].lines().count().max(1));
            ConfigError {
                origin: origin.into(),
                key: "(syntax)".into(),
                message: match line {
                    Some(l) => format!("line {l}: {msg}"),
                    None => msg,
                },
            }
        })?;
        let mut o = Overrides::default();
        for (key, value) in &table {
            let want =
                |what: &str| err(key, format!("expected {what}, found {}", value.type_str()));
            match key.as_str() {
                "listen" => {
                    let s = value
                        .as_str()
                        .ok_or_else(|| want("a string like \"127.0.0.1:7941\""))?;
                    o.listen = Some(
                        s.parse()
                            .map_err(|_| err(key, format!("`{s}` is not an address:port")))?,
                    );
                }
                "netns" => {
                    o.netns = Some(match value {
                        toml::Value::String(s) if s == "all" => NetnsScope::All,
                        toml::Value::String(s) if s == "self" => NetnsScope::Own,
                        toml::Value::String(s) => NetnsScope::Listed(vec![s.clone()]),
                        toml::Value::Array(a) => NetnsScope::Listed(
                            a.iter()
                                .map(|v| match v {
                                    toml::Value::String(s) => Ok(s.clone()),
                                    toml::Value::Integer(i) => Ok(i.to_string()),
                                    _ => Err(want("\"all\", \"self\" or a list of namespaces")),
                                })
                                .collect::<Result<_, _>>()?,
                        ),
                        _ => return Err(want("\"all\", \"self\" or a list of namespaces")),
                    });
                }
                "snapshot_interval" => {
                    let s = value
                        .as_str()
                        .ok_or_else(|| want("a duration string like \"30s\""))?;
                    let d = crate::duration::parse(s).map_err(|m| err(key, m))?;
                    if d < Duration::from_millis(100) {
                        return Err(err(key, format!("`{s}` is too short (at least 100ms)")));
                    }
                    o.snapshot_interval = Some(d);
                }
                "label_by" => {
                    let a = value
                        .as_array()
                        .ok_or_else(|| want("a list like [\"remote_port\"]"))?;
                    o.label_by = Some(
                        a.iter()
                            .map(|v| {
                                v.as_str()
                                    .ok_or_else(|| want("a list of strings"))
                                    .and_then(|s| LabelBy::parse(s).map_err(|m| err(key, m)))
                            })
                            .collect::<Result<_, _>>()?,
                    );
                }
                "label_limit" => {
                    let v = value.as_integer().ok_or_else(|| want("an integer"))?;
                    o.label_limit =
                        Some(positive(key, v, 10_000).map_err(|m| err(key, m))? as usize);
                }
                "table_capacity" => {
                    let v = value.as_integer().ok_or_else(|| want("an integer"))?;
                    o.table_capacity =
                        Some(positive(key, v, 100_000_000).map_err(|m| err(key, m))? as usize);
                }
                "btf" => o.btf = Some(value.as_str().ok_or_else(|| want("a path string"))?.into()),
                "idle_timeouts" => {
                    let t = value
                        .as_table()
                        .ok_or_else(|| want("a table like { \"10.0.0.0/8:5432\" = \"350s\" }"))?;
                    let mut rules = vec![];
                    for (k, v) in t {
                        let v = v.as_str().ok_or_else(|| {
                            err(
                                &format!("idle_timeouts.{k}"),
                                "expected a duration string like \"350s\"".into(),
                            )
                        })?;
                        rules.push(
                            Rule::from_entry(k, v)
                                .map_err(|m| err(&format!("idle_timeouts.{k}"), m))?,
                        );
                    }
                    o.idle_timeouts = Some(rules);
                }
                "idle_kill_min" => {
                    let s = value
                        .as_str()
                        .ok_or_else(|| want("a duration string like \"30s\""))?;
                    o.idle_kill_min = Some(crate::duration::parse(s).map_err(|m| err(key, m))?);
                }
                "http_keepalive" => {
                    o.http_keepalive = Some(value.as_bool().ok_or_else(|| want("true or false"))?)
                }
                "attach" => {
                    let s = value
                        .as_str()
                        .ok_or_else(|| want("\"auto\", \"fentry\" or \"tracepoint\""))?;
                    o.attach = Some(s.parse().map_err(|m| err(key, m))?);
                }
                "hz" => {
                    let v = value.as_integer().ok_or_else(|| want("an integer"))?;
                    o.hz = Some(positive(key, v, 10_000).map_err(|m| err(key, m))? as u32);
                }
                _ => {
                    return Err(err(
                        key,
                        format!("unknown key (known keys: {})", KEYS.join(", ")),
                    ))
                }
            }
        }
        Ok(o)
    }

    /// `self` on top of `base`.
    pub fn over(self, base: Overrides) -> Overrides {
        Overrides {
            listen: self.listen.or(base.listen),
            netns: self.netns.or(base.netns),
            snapshot_interval: self.snapshot_interval.or(base.snapshot_interval),
            label_by: self.label_by.or(base.label_by),
            label_limit: self.label_limit.or(base.label_limit),
            table_capacity: self.table_capacity.or(base.table_capacity),
            btf: self.btf.or(base.btf),
            hz: self.hz.or(base.hz),
            idle_timeouts: self.idle_timeouts.or(base.idle_timeouts),
            idle_kill_min: self.idle_kill_min.or(base.idle_kill_min),
            http_keepalive: self.http_keepalive.or(base.http_keepalive),
            attach: self.attach.or(base.attach),
        }
    }

    pub fn resolve(self) -> AgentConfig {
        let d = AgentConfig::default();
        AgentConfig {
            listen: self.listen.unwrap_or(d.listen),
            netns: self.netns.unwrap_or(d.netns),
            snapshot_interval: self.snapshot_interval.unwrap_or(d.snapshot_interval),
            label_by: self.label_by.unwrap_or(d.label_by),
            label_limit: self.label_limit.unwrap_or(d.label_limit),
            table_capacity: self.table_capacity.unwrap_or(d.table_capacity),
            btf: self.btf.or(d.btf),
            hz: self.hz.or(d.hz),
            policy: self
                .idle_timeouts
                .map(|rules| Policy { rules })
                .unwrap_or(d.policy),
            idle_kill_min: self.idle_kill_min.unwrap_or(d.idle_kill_min),
            http_keepalive: self.http_keepalive.unwrap_or(d.http_keepalive),
            ring_bytes: None,
            attach: self.attach.unwrap_or(d.attach),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Overrides, ConfigError> {
        Overrides::from_toml("kato.toml", text)
    }

    #[test]
    fn full_file() {
        let o = parse(
            "listen = \"0.0.0.0:9999\"\nnetns = [\"blue\", 4026531840]\nsnapshot_interval = \"10s\"\n\
             label_by = [\"remote_port\", \"netns\"]\nlabel_limit = 5\ntable_capacity = 1000\nbtf = \"/tmp/v\"\nhz = 100\n",
        )
        .unwrap();
        let c = o.resolve();
        assert_eq!(c.listen, "0.0.0.0:9999".parse().unwrap());
        assert_eq!(
            c.netns,
            NetnsScope::Listed(vec!["blue".into(), "4026531840".into()])
        );
        assert_eq!(c.snapshot_interval, Duration::from_secs(10));
        assert_eq!(c.label_by, [LabelBy::RemotePort, LabelBy::Netns]);
        assert_eq!(
            (c.label_limit, c.table_capacity, c.hz),
            (5, 1000, Some(100))
        );
    }

    #[test]
    fn defaults_and_precedence() {
        let c = Overrides::default().resolve();
        assert_eq!(c, AgentConfig::default());
        assert_eq!(c.listen.to_string(), DEFAULT_LISTEN);
        let file = parse("label_limit = 5\nnetns = \"self\"\n").unwrap();
        let flags = Overrides {
            label_limit: Some(7),
            ..Default::default()
        };
        let c = flags.over(file).resolve();
        assert_eq!((c.label_limit, c.netns), (7, NetnsScope::Own));
    }

    #[test]
    fn each_bad_value_names_its_key() {
        for (text, key, needle) in [
            (
                "listen = \"nope\"",
                "listen",
                "`nope` is not an address:port",
            ),
            ("listen = 5", "listen", "expected a string"),
            (
                "snapshot_interval = \"3x\"",
                "snapshot_interval",
                "unknown unit `x`",
            ),
            (
                "snapshot_interval = \"10ms\"",
                "snapshot_interval",
                "too short",
            ),
            ("label_by = [\"pid\"]", "label_by", "unknown label `pid`"),
            ("label_by = \"comm\"", "label_by", "expected a list"),
            ("label_limit = 0", "label_limit", "out of range"),
            ("table_capacity = -4", "table_capacity", "out of range"),
            ("hz = \"250\"", "hz", "expected an integer, found string"),
            (
                "attach = \"kprobe\"",
                "attach",
                "`kprobe` is not one of auto, fentry, tracepoint",
            ),
            ("netns = 3", "netns", "expected \"all\""),
            ("colour = \"blue\"", "colour", "unknown key"),
            ("\"\" = 1", "\"\"", "unknown key"),
        ] {
            let e = parse(text).unwrap_err();
            assert_eq!(e.key, key, "{text}");
            assert!(e.message.contains(needle), "{text}: {e}");
            assert!(
                e.to_string()
                    .starts_with(&format!("kato.toml: key `{key}`: ")),
                "{e}"
            );
        }
    }

    #[test]
    fn idle_timeouts_table() {
        let c = parse("idle_kill_min = \"5s\"\nhttp_keepalive = true\n[idle_timeouts]\ndefault = \"10m\"\n\"10.0.0.0/8:5432\" = \"350s\"\n").unwrap().resolve();
        assert_eq!(c.policy.rules.len(), 2);
        assert_eq!(c.idle_kill_min, Duration::from_secs(5));
        assert!(c.http_keepalive);
        let e = parse("[idle_timeouts]\n\"10.0.0.0/99\" = \"5s\"\n").unwrap_err();
        assert_eq!(e.key, "idle_timeouts.10.0.0.0/99");
        assert!(e.message.contains("prefix length"), "{e}");
        let e = parse("[idle_timeouts]\n\":443\" = 5\n").unwrap_err();
        assert!(e.message.contains("expected a duration string"), "{e}");
        assert_eq!(
            parse("http_keepalive = \"yes\"").unwrap_err().key,
            "http_keepalive"
        );
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let e = parse("listen = \"127.0.0.1:1\"\nlabel_limit = = 3\n").unwrap_err();
        assert!(e.message.starts_with("line 2:"), "{e}");
    }
}
