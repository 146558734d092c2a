//! The agent's settings: defaults, then the TOML file (`--config`), then
//! flags. Every bad value is one error naming its key (or flag), and the
//! binary exits with code 2 on it.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::{de, Deserialize, Deserializer};
use thiserror::Error;

mod values;

use crate::{
    agent::otlp::Endpoint,
    bpf::AttachMode,
    policy::{Policy, Rule},
};

/// 9100-9999 is fully allocated to exporters; 7941 is not a well-known
/// exporter's port.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:7941";
/// Events the per-socket history keeps for all sockets together, by
/// default (~60 B each; a socket counts `history::STORY_COST` more).
pub const DEFAULT_HISTORY_EVENTS: usize = 65_536;

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
    pub fn parse(s: &str) -> Result<Self, crate::invalid::Invalid> {
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
                return Err(crate::invalid::Invalid::unknown(
                    "label",
                    s,
                    "local_port, remote_port, comm, netns, pod, pod_namespace, container or unit",
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

/// The field's type in [`AgentConfig`]: the value, or an optional one.
macro_rules! resolved_ty {
    (val, $t:ty) => { $t };
    (opt, $t:ty) => { Option<$t> };
}

/// The resolved value: given, else the default.
macro_rules! resolve_one {
    (val, $given:expr, $default:expr) => {
        $given.unwrap_or_else(|| $default)
    };
    (opt, $given:expr, $default:expr) => {
        $given.or_else(|| $default)
    };
}

/// Each key once: its documentation, kind (`val`: always has a value;
/// `opt`: may have none), type, default, and the file value's parser. Out
/// of it come [`AgentConfig`] (resolved), its `Default`, [`Overrides`] (as
/// given in the file or by flags), their layering, and [`KEYS`].
macro_rules! settings {
    ($( $(#[doc = $doc:literal])* $key:ident : $kind:ident $t:ty = $default:expr $(, with $with:literal)? ;)*) => {
        #[derive(Debug, Clone, PartialEq)]
        pub struct AgentConfig {
            $( $(#[doc = $doc])* pub $key: resolved_ty!($kind, $t), )*
        }

        impl Default for AgentConfig {
            fn default() -> Self {
                Overrides::default().resolve()
            }
        }

        /// Settings as given (file or flags); `None` = not given. The file
        /// is read by serde; each value goes through the same parser as its
        /// flag.
        #[derive(Debug, Clone, Default, PartialEq, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Overrides {
            $( #[serde(default $(, deserialize_with = $with)?)] pub $key: Option<$t>, )*
        }

        /// The file's keys, for the unknown-key message.
        pub const KEYS: &[&str] = &[$(stringify!($key)),*];

        impl Overrides {
            /// `self` on top of `base`.
            pub fn over(self, base: Overrides) -> Overrides {
                Overrides { $( $key: self.$key.or(base.$key), )* }
            }

            pub fn resolve(self) -> AgentConfig {
                AgentConfig { $( $key: resolve_one!($kind, self.$key, $default), )* }
            }
        }
    };
}

settings! {
    listen: val SocketAddr = DEFAULT_LISTEN.parse().expect("valid default"), with "de_via::<_, ListenAddr>";
    /// Which network namespaces are watched.
    netns: val NetnsScope = NetnsScope::All;
    /// How often the socket table is reconciled with a full snapshot.
    snapshot_interval: val Duration = Duration::from_secs(30), with "de_via::<_, Interval>";
    label_by: val Vec<LabelBy> = vec![];
    /// Distinct values per opt-in label before the rest become `other`.
    label_limit: val usize = 20, with "de_via::<_, LabelLimit>";
    /// Sockets tracked at most; the least recently updated are evicted first.
    /// None: derived from the cgroup memory limit (`agent::capacity`).
    table_capacity: opt usize = None, with "de_via::<_, TableCapacity>";
    btf: opt PathBuf = None;
    hz: opt u32 = None, with "de_via::<_, Hz>";
    /// Declared middlebox idle timeouts (`[idle_timeouts]`, `--idle-timeout`).
    idle_timeouts: val Vec<Rule> = vec![], with "de_rules";
    /// Resets and keepalive timeouts after this much idle time are
    /// reported as suspected middlebox kills.
    idle_kill_min: val Duration = Duration::from_secs(30), with "de_via::<_, IdleKillMin>";
    /// Count request/response turns from every send/recv (costs a little on
    /// every socket syscall).
    http_keepalive: val bool = false;
    /// `kato protect` in the agent: keepalive switched on or tightened on
    /// the connections of the namespaces it watches (off by default).
    protect: val bool = false;
    /// fentry, tracepoints, or the best the kernel allows.
    attach: val AttachMode = AttachMode::Auto, with "de_via::<_, Attach>";
    /// `Host` names the endpoint answers to besides IP literals,
    /// `localhost` and the node's own names.
    allowed_hosts: val Vec<String> = vec![];
    /// HTTP connections served at once.
    max_connections: val usize = 64, with "de_via::<_, MaxConnections>";
    /// The kernel's event ring, bytes (None: 4 MiB, 8 MiB with the HTTP
    /// keep-alive view).
    ring_size: opt u32 = None, with "de_via::<_, RingSize>";
    /// TLS and basic auth (exporter-toolkit web config format).
    web_config: opt PathBuf = None;
    /// Assume the idle timeout of the cloud the host runs in (DMI).
    cloud_defaults: val bool = true;
    /// Where learned idle timeouts are kept across restarts (None: memory only).
    state_dir: opt PathBuf = None;
    /// Each reported event (resets, keepalive timeouts, idle kills, stale
    /// reuse, socket errors) as a JSON line on stdout (None: off).
    log_events: opt EventLogFormat = None, with "de_via::<_, LogEvents>";
    /// Where metrics and reported events go over OTLP/HTTP (None: off).
    otlp_endpoint: opt Endpoint = None, with "de_via::<_, OtlpEndpoint>";
    /// How often the metrics are exported over OTLP.
    otlp_interval: val Duration = Duration::from_secs(60), with "de_via::<_, OtlpInterval>";
    /// How long the story of a closed socket stays readable
    /// (`/sockets/<cookie>/history`).
    history_retention: val Duration = Duration::from_secs(600), with "de_via::<_, IdleKillMin>";
    /// Events the per-socket history keeps for all sockets together.
    history_events: val usize = DEFAULT_HISTORY_EVENTS, with "de_via::<_, HistoryEvents>";
    /// containerd's API socket, for pod and container names (None: not asked).
    containerd_socket: opt PathBuf =
        Some(PathBuf::from(crate::workload::containerd::DEFAULT_SOCKET));
    /// The host's cgroup2 mount, where /proc/self/mountinfo does not show it
    /// (a container with its own cgroup namespace; None: found there).
    cgroup_root: opt PathBuf = None;
}

impl AgentConfig {
    /// Whether keepalive probes are counted in the kernel (no record for a
    /// healthy probe): in quiet mode, when the probe counters carry no
    /// per-socket labels (`label_by` empty) that only a record could give.
    pub fn probes_in_kernel(&self) -> bool {
        self.label_by.is_empty() && !self.http_keepalive
    }

    /// The declared idle timeouts as a policy (kato adds what it finds).
    pub fn policy(&self) -> Policy {
        Policy {
            rules: self.idle_timeouts.clone(),
            ..Policy::default()
        }
    }
}

use values::de_via;
pub use values::{
    Attach, EventLogFormat, HistoryEvents, Hz, IdleKillMin, Interval, LabelLimit, ListenAddr,
    LogEvents, MaxConnections, OtlpEndpoint, OtlpInterval, RingSize, Setting, TableCapacity,
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
        assert_eq!(c.ring_size, Some(16 << 20));
        // A bare integer is bytes, held to the same bounds.
        let c = parse("ring_size = 16777216").unwrap().resolve();
        assert_eq!(c.ring_size, Some(16 << 20));
        let e = parse("ring_size = 100000").unwrap_err();
        assert!(e.message.contains("not a power of two"), "{e}");
        let e = parse("ring_size = -65536").unwrap_err();
        assert!(e.message.contains("is not a size"), "{e}");
        let e = parse("ring_size = true").unwrap_err();
        assert!(e.message.contains("`boolean` is not a size"), "{e}");
    }

    #[test]
    fn idle_timeouts_table() {
        let c = parse("idle_kill_min = \"5s\"\nhttp_keepalive = true\n[idle_timeouts]\ndefault = \"10m\"\n\"10.0.0.0/8:5432\" = \"350s\"\n").unwrap().resolve();
        assert_eq!(c.policy().rules.len(), 2);
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
    fn listen_without_an_address_says_which_to_give() {
        let e = ListenAddr::parse(":7942".to_owned())
            .unwrap_err()
            .to_string();
        assert!(e.contains("0.0.0.0:7942") && e.contains("[::]:7942"), "{e}");
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
