//! The agent's settings: defaults, then the TOML file (`--config`), then
//! flags. Every bad value is one error naming its key (or flag), and the
//! binary exits with code 2 on it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{de, Deserialize, Deserializer};
use thiserror::Error;

mod values;

use crate::{
    bpf::AttachMode,
    policy::{Policy, Rule},
};

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
    /// The socket's Kubernetes pod, pod namespace, container, systemd unit.
    Pod,
    PodNamespace,
    Container,
    Unit,
}

impl LabelBy {
    pub fn parse(s: &str) -> Result<Self, String> {
        Ok(match s {
            "local_port" => LabelBy::LocalPort,
            "remote_port" => LabelBy::RemotePort,
            "comm" => LabelBy::Comm,
            "netns" => LabelBy::Netns,
            "pod" => LabelBy::Pod,
            "pod_namespace" => LabelBy::PodNamespace,
            "container" => LabelBy::Container,
            "unit" => LabelBy::Unit,
            _ => {
                return Err(format!(
                    "unknown label `{s}` (expected local_port, remote_port, comm, netns, pod, pod_namespace, container or unit)"
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
            LabelBy::Pod => "pod",
            LabelBy::PodNamespace => "pod_namespace",
            LabelBy::Container => "container",
            LabelBy::Unit => "unit",
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
    /// None: derived from the cgroup memory limit (`agent::capacity`).
    pub table_capacity: Option<usize>,
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
    /// `kato protect` in the agent: keepalive switched on or tightened on
    /// the connections of the namespaces it watches (off by default).
    pub protect: bool,
    /// The kernel's event ring, bytes (None: 4 MiB, 8 MiB with the HTTP
    /// keep-alive view).
    pub ring_bytes: Option<u32>,
    /// fentry, tracepoints, or the best the kernel allows.
    pub attach: AttachMode,
    /// `Host` names the endpoint answers to besides IP literals,
    /// `localhost` and the node's own names.
    pub allowed_hosts: Vec<String>,
    /// HTTP connections served at once.
    pub max_connections: usize,
    /// TLS and basic auth (exporter-toolkit web config format).
    pub web_config: Option<PathBuf>,
    /// Assume the idle timeout of the cloud the host runs in (DMI).
    pub cloud_defaults: bool,
    /// Where learned idle timeouts are kept across restarts (None: memory only).
    pub state_dir: Option<PathBuf>,
    /// containerd's API socket, for pod and container names (None: not asked).
    pub containerd_socket: Option<PathBuf>,
    /// The host's cgroup2 mount, where /proc/self/mountinfo does not show it
    /// (a container with its own cgroup namespace; None: found there).
    pub cgroup_root: Option<PathBuf>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        Self {
            listen: DEFAULT_LISTEN.parse().expect("valid default"),
            netns: NetnsScope::All,
            snapshot_interval: Duration::from_secs(30),
            label_by: vec![],
            label_limit: 20,
            table_capacity: None,
            btf: None,
            hz: None,
            policy: Policy::default(),
            idle_kill_min: Duration::from_secs(30),
            http_keepalive: false,
            protect: false,
            ring_bytes: None,
            attach: AttachMode::Auto,
            allowed_hosts: vec![],
            max_connections: 64,
            web_config: None,
            cloud_defaults: true,
            state_dir: None,
            containerd_socket: Some(PathBuf::from(crate::workload::containerd::DEFAULT_SOCKET)),
            cgroup_root: None,
        }
    }
}

/// Settings as given (file or flags); `None` = not given. The file is
/// read by serde; each value goes through the same parser as its flag.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    #[serde(default, deserialize_with = "de_via::<_, ListenAddr>")]
    pub listen: Option<SocketAddr>,
    #[serde(default)]
    pub netns: Option<NetnsScope>,
    #[serde(default, deserialize_with = "de_via::<_, Interval>")]
    pub snapshot_interval: Option<Duration>,
    #[serde(default)]
    pub label_by: Option<Vec<LabelBy>>,
    #[serde(default, deserialize_with = "de_via::<_, LabelLimit>")]
    pub label_limit: Option<usize>,
    #[serde(default, deserialize_with = "de_via::<_, TableCapacity>")]
    pub table_capacity: Option<usize>,
    #[serde(default)]
    pub btf: Option<PathBuf>,
    #[serde(default, deserialize_with = "de_via::<_, Hz>")]
    pub hz: Option<u32>,
    #[serde(default, deserialize_with = "de_rules")]
    pub idle_timeouts: Option<Vec<Rule>>,
    #[serde(default, deserialize_with = "de_via::<_, IdleKillMin>")]
    pub idle_kill_min: Option<Duration>,
    #[serde(default)]
    pub http_keepalive: Option<bool>,
    #[serde(default)]
    pub protect: Option<bool>,
    #[serde(default, deserialize_with = "de_via::<_, Attach>")]
    pub attach: Option<AttachMode>,
    #[serde(default)]
    pub allowed_hosts: Option<Vec<String>>,
    #[serde(default, deserialize_with = "de_via::<_, MaxConnections>")]
    pub max_connections: Option<usize>,
    #[serde(default, deserialize_with = "de_via::<_, RingSize>")]
    pub ring_size: Option<u32>,
    #[serde(default)]
    pub web_config: Option<PathBuf>,
    #[serde(default)]
    pub cloud_defaults: Option<bool>,
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub containerd_socket: Option<PathBuf>,
    #[serde(default)]
    pub cgroup_root: Option<PathBuf>,
}

use values::de_via;
pub use values::{
    Attach, Hz, IdleKillMin, Interval, LabelLimit, ListenAddr, MaxConnections, RingSize, Setting,
    TableCapacity,
};

impl<'de> Deserialize<'de> for LabelBy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        LabelBy::parse(&String::deserialize(d)?).map_err(de::Error::custom)
    }
}

impl<'de> Deserialize<'de> for NetnsScope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Item {
            Name(String),
            Inode(i64),
        }
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            One(String),
            Many(Vec<Item>),
        }
        let raw = Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected \"all\", \"self\" or a list of namespaces"))?;
        Ok(match raw {
            Raw::One(s) => NetnsScope::from_list(vec![s]),
            Raw::Many(items) => NetnsScope::Listed(
                items
                    .into_iter()
                    .map(|i| match i {
                        Item::Name(s) => s,
                        Item::Inode(n) => n.to_string(),
                    })
                    .collect(),
            ),
        })
    }
}

impl NetnsScope {
    /// `--netns` values: `all`, `self`, or namespaces.
    pub fn from_list(values: Vec<String>) -> Self {
        match values.as_slice() {
            [one] if one == "all" => NetnsScope::All,
            [one] if one == "self" => NetnsScope::Own,
            _ => NetnsScope::Listed(values),
        }
    }
}

/// `[idle_timeouts]`: `"CIDR:PORT" = "DURATION"` (or `default`).
fn de_rules<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<Rule>>, D::Error> {
    let table = std::collections::BTreeMap::<String, toml::Value>::deserialize(d)?;
    let mut rules = vec![];
    for (k, v) in table {
        let Some(v) = v.as_str() else {
            return Err(de::Error::custom(format!(
                "`{k}`: expected a duration string like \"350s\""
            )));
        };
        rules.push(Rule::from_entry(&k, v).map_err(|m| de::Error::custom(format!("`{k}`: {m}")))?);
    }
    Ok(Some(rules))
}

/// The file's keys, for the unknown-key message.
pub const KEYS: [&str; 21] = [
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
    "protect",
    "attach",
    "allowed_hosts",
    "max_connections",
    "ring_size",
    "web_config",
    "cloud_defaults",
    "state_dir",
    "containerd_socket",
    "cgroup_root",
];

/// A config file's text, or the one-line error naming the file.
pub fn read_file(path: &std::path::Path) -> Result<String, ConfigError> {
    crate::files::read_text(path, crate::files::MAX_SETTINGS).map_err(|e| ConfigError {
        origin: path.display().to_string(),
        key: "(file)".into(),
        message: e.reason(),
    })
}

/// The line of byte offset `at` in `text`, 1-based.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].lines().count().max(1)
}

impl Overrides {
    /// Reads and parses the TOML config file at `path`.
    pub fn read(path: &std::path::Path) -> Result<Self, ConfigError> {
        Self::from_toml(&path.display().to_string(), &read_file(path)?)
    }

    /// Parses a TOML config file's text.
    pub fn from_toml(origin: &str, text: &str) -> Result<Self, ConfigError> {
        let err = |key: String, message: String| ConfigError {
            origin: origin.into(),
            key,
            message,
        };
        let de = toml::Deserializer::parse(text).map_err(|e| {
            let msg = e.message().to_owned();
            let message = match e.span() {
                Some(s) => format!("line {}: {msg}", line_of(text, s.start)),
                None => msg,
            };
            err("(syntax)".into(), message)
        })?;
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            let msg = inner.message().trim_end().to_owned();
            // An unknown key is reported at the table that holds it.
            let (key, message) = match msg.strip_prefix("unknown field `") {
                Some(rest) => {
                    let name = rest.split('`').next().unwrap_or_default();
                    let key = if name.is_empty() {
                        "\"\"".to_owned()
                    } else {
                        name.to_owned()
                    };
                    (
                        key,
                        format!("unknown key (known keys: {})", KEYS.join(", ")),
                    )
                }
                None => (path, msg),
            };
            err(key, message)
        })
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
            protect: self.protect.or(base.protect),
            attach: self.attach.or(base.attach),
            allowed_hosts: self.allowed_hosts.or(base.allowed_hosts),
            max_connections: self.max_connections.or(base.max_connections),
            ring_size: self.ring_size.or(base.ring_size),
            web_config: self.web_config.or(base.web_config),
            cloud_defaults: self.cloud_defaults.or(base.cloud_defaults),
            state_dir: self.state_dir.or(base.state_dir),
            containerd_socket: self.containerd_socket.or(base.containerd_socket),
            cgroup_root: self.cgroup_root.or(base.cgroup_root),
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
            table_capacity: self.table_capacity.or(d.table_capacity),
            btf: self.btf.or(d.btf),
            hz: self.hz.or(d.hz),
            policy: self
                .idle_timeouts
                .map(|rules| Policy {
                    rules,
                    ..Policy::default()
                })
                .unwrap_or(d.policy),
            idle_kill_min: self.idle_kill_min.unwrap_or(d.idle_kill_min),
            http_keepalive: self.http_keepalive.unwrap_or(d.http_keepalive),
            protect: self.protect.unwrap_or(d.protect),
            ring_bytes: self.ring_size,
            attach: self.attach.unwrap_or(d.attach),
            allowed_hosts: self.allowed_hosts.unwrap_or(d.allowed_hosts),
            max_connections: self.max_connections.unwrap_or(d.max_connections),
            web_config: self.web_config.or(d.web_config),
            cloud_defaults: self.cloud_defaults.unwrap_or(d.cloud_defaults),
            state_dir: self.state_dir.or(d.state_dir),
            containerd_socket: self.containerd_socket.or(d.containerd_socket),
            cgroup_root: self.cgroup_root.or(d.cgroup_root),
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
            (5, Some(1000), Some(100))
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
                "`3x` is not a duration",
            ),
            (
                "snapshot_interval = \"10ms\"",
                "snapshot_interval",
                "too short",
            ),
            ("label_by = [\"pid\"]", "label_by[0]", "unknown label `pid`"),
            ("label_by = \"comm\"", "label_by", "expected a sequence"),
            ("label_limit = 0", "label_limit", "out of range"),
            ("table_capacity = -4", "table_capacity", "out of range"),
            ("hz = \"250\"", "hz", "invalid type: string \"250\""),
            (
                "attach = \"kprobe\"",
                "attach",
                "`kprobe` is not one of auto, fentry, tracepoint",
            ),
            ("netns = 3", "netns", "expected \"all\""),
            (
                "ring_size = \"3MiB\"",
                "ring_size",
                "not a power of two from 64KiB to 1GiB",
            ),
            ("ring_size = \"16MB\"", "ring_size", "is not a size"),
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
    fn ring_size_in_units() {
        for (text, bytes) in [("16MiB", 16 << 20), ("512KiB", 512 << 10), ("65536", 65536)] {
            assert_eq!(RingSize::parse(text.into()), Ok(bytes), "{text}");
        }
        let c = parse("ring_size = \"16MiB\"").unwrap().resolve();
        assert_eq!(c.ring_bytes, Some(16 << 20));
        // A bare integer is bytes, held to the same bounds.
        let c = parse("ring_size = 16777216").unwrap().resolve();
        assert_eq!(c.ring_bytes, Some(16 << 20));
        let e = parse("ring_size = 100000").unwrap_err();
        assert!(e.message.contains("not a power of two"), "{e}");
        let e = parse("ring_size = -65536").unwrap_err();
        assert!(e.message.contains("is not a size"), "{e}");
        let e = parse("ring_size = true").unwrap_err();
        assert!(e.message.contains("a boolean is not a size"), "{e}");
    }

    #[test]
    fn idle_timeouts_table() {
        let c = parse("idle_kill_min = \"5s\"\nhttp_keepalive = true\n[idle_timeouts]\ndefault = \"10m\"\n\"10.0.0.0/8:5432\" = \"350s\"\n").unwrap().resolve();
        assert_eq!(c.policy.rules.len(), 2);
        assert_eq!(c.idle_kill_min, Duration::from_secs(5));
        assert!(c.http_keepalive);
        let e = parse("[idle_timeouts]\n\"10.0.0.0/99\" = \"5s\"\n").unwrap_err();
        assert_eq!(e.key, "idle_timeouts");
        assert!(
            e.message.starts_with("`10.0.0.0/99`: ") && e.message.contains("prefix length"),
            "{e}"
        );
        let e = parse("[idle_timeouts]\n\":443\" = 5\n").unwrap_err();
        assert!(e.message.contains("expected a duration string"), "{e}");
        assert_eq!(
            parse("http_keepalive = \"yes\"").unwrap_err().key,
            "http_keepalive"
        );
    }

    #[test]
    fn listen_takes_either_family_in_brackets() {
        let p = |s: &str| ListenAddr::parse(s.to_owned());
        assert_eq!(p("[10.0.0.5]:7941"), Ok("10.0.0.5:7941".parse().unwrap()));
        assert_eq!(p("[fd00::5]:7941"), Ok("[fd00::5]:7941".parse().unwrap()));
        assert_eq!(p("127.0.0.1:0"), Ok("127.0.0.1:0".parse().unwrap()));
        for bad in ["[10.0.0.5]", "[host]:1", "[10.0.0.5]:x", "fd00::5:7941"] {
            assert!(p(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn syntax_errors_give_the_line() {
        let e = parse("listen = \"127.0.0.1:1\"\nlabel_limit = = 3\n").unwrap_err();
        assert!(e.message.starts_with("line 2:"), "{e}");
    }
}
