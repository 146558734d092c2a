//! `kato agent`: the node-level daemon and Prometheus scrape target.

use std::path::PathBuf;

use clap::Args;
use keepalive_user::agent::{
    config::{
        self, Attach, ConfigError, HistoryEvents, Hz, IdleKillMin, Interval, LabelBy, LabelLimit,
        ListenAddr, LogEvents, MaxConnections, NetnsScope, OtlpEndpoint, OtlpInterval, Overrides,
        RingSize, Setting, TableCapacity,
    },
    engine::{Engine, EngineError},
    supervise::HttpError,
};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
sudo kato agent                                   serve 127.0.0.1:7941 (curl localhost:7941/metrics)\n  \
sudo kato agent --listen 0.0.0.0:7941 --netns all every namespace, reachable by Prometheus\n  \
sudo kato agent --config /etc/kato/kato.toml      settings from a file (docs/deploy/kato.toml)\n  \
sudo kato agent --log-events json | jq .event     resets and timeouts as JSON lines\n  \
kato history 127.0.0.1:54430-127.0.0.1:5432       a connection's story, from this agent")]
pub struct AgentArgs {
    /// TOML file whose keys are these flags' names with underscores
    /// (`snapshot_interval`; `[idle_timeouts]`, `allowed_hosts`,
    /// `cloud_defaults = false`): docs/deploy/kato.toml has each. Flags
    /// override it.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Address for /metrics, /sockets and /healthz [default: 127.0.0.1:7941].
    /// Port 0 picks a free port (printed at start).
    #[arg(long, value_name = "ADDR:PORT")]
    pub listen: Option<String>,
    /// Network namespaces to watch: `all` (default), `self`, or namespaces
    /// (inode, `ip netns` name or path; repeatable).
    #[arg(long, value_name = "NETNS")]
    pub netns: Vec<String>,
    /// How often to reconcile with a full socket snapshot [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub snapshot_interval: Option<String>,
    /// Extra label on the event counters: local_port (listening ports only),
    /// remote_port, comm, netns, pod, pod_namespace, container, unit.
    /// Comma-separated or repeated; each bounded by --label-limit.
    #[arg(long, value_name = "LABEL", value_delimiter = ',')]
    pub label_by: Vec<String>,
    /// Values kept per extra label before the rest become `other` [default: 20].
    #[arg(long, value_name = "N")]
    pub label_limit: Option<String>,
    /// Sockets tracked at most; the least recently updated go first [default: 1000000].
    #[arg(long, value_name = "N")]
    pub table_capacity: Option<String>,
    /// Kernel BTF [default: /sys/kernel/btf/vmlinux].
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,
    /// The kernel's CONFIG_HZ, if its config cannot be read.
    #[arg(long, value_name = "HZ")]
    pub hz: Option<String>,
    /// A middlebox idle timeout (repeatable): `350s` for every path, or
    /// `CIDR[:PORT]=DURATION` (`10.0.0.0/8:5432=350s`, `:443=4m`). Replaces
    /// the config file's [idle_timeouts].
    #[arg(long, value_name = "RULE")]
    pub idle_timeout: Vec<String>,
    /// The silence before a reset or a failed send that makes it a
    /// candidate idle kill for the learner (confirmed once the destination
    /// shows alive), and below which the kernel records no end of a
    /// connection without keepalive [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub idle_kill_min: Option<String>,
    /// HTTP keep-alive view: count request/response exchanges per
    /// connection from every send/recv (a small cost on every socket syscall).
    #[arg(long)]
    pub http_keepalive: bool,
    /// Keep the watched namespaces' connections alive through middleboxes
    /// as `kato protect` does: keepalive switched on or tightened (never
    /// loosened) on every connection whose path has an idle timeout
    /// (--idle-timeout, conntrack, IPVS, learned, the cloud's). Changes
    /// other processes' sockets: off unless asked. Needs CAP_NET_ADMIN.
    #[arg(long)]
    pub protect: bool,
    /// Write each reported event (resets, keepalive timeouts, idle kills,
    /// stale reuse, socket errors; never probes) to stdout as one JSON
    /// line, `kato trace --output json`'s fields, for log shippers. At most
    /// 200 a second after a burst of 1000; the rest are counted in
    /// kato_log_events_dropped_total.
    #[arg(long, value_name = "FORMAT")]
    pub log_events: Option<String>,
    /// Send the metrics and the reported events (as log records) to an
    /// OpenTelemetry collector over OTLP/HTTP, e.g. http://127.0.0.1:4318
    /// (`/v1/metrics` and `/v1/logs` are appended). Off by default. A
    /// collector that is down costs counted failures
    /// (kato_otlp_exports_total), never a wait.
    #[arg(long, value_name = "URL")]
    pub otlp_endpoint: Option<String>,
    /// How often the metrics are exported over OTLP (default 60s, at least
    /// 1s; events go within a second).
    #[arg(long, value_name = "DURATION")]
    pub otlp_interval: Option<String>,
    /// How long the story of a closed socket stays readable at
    /// /sockets/COOKIE/history (e.g. 10m, the default).
    #[arg(long, value_name = "DURATION")]
    pub history_retention: Option<String>,
    /// Events the per-socket history keeps for all sockets together
    /// (default 65536, ~60 bytes each, a socket counting 4 more); past it
    /// the oldest go, counted in
    /// kato_history_events_dropped_total.
    #[arg(long, value_name = "N")]
    pub history_events: Option<String>,
    /// (testing) Ring buffer size in bytes: a power of two, at least 4096.
    #[arg(long, hide = true, value_parser = super::parse_ring_bytes)]
    pub ring_bytes: Option<u32>,
    /// How the programs reach the kernel: auto (fentry where the kernel
    /// allows it, else tracepoints), fentry, or tracepoint [default: auto].
    #[arg(long, value_name = "PATH")]
    pub attach: Option<String>,
    /// A `Host` name the endpoint answers to (repeatable), besides IP
    /// addresses, localhost and this node's names; others get 421.
    #[arg(long, value_name = "NAME")]
    pub allowed_host: Vec<String>,
    /// TLS and basic auth from a web config file in the Prometheus
    /// exporter-toolkit format (tls_server_config, basic_auth_users).
    #[arg(long, value_name = "FILE")]
    pub web_config: Option<PathBuf>,
    /// Do not assume the idle timeout of the cloud this host runs in (AWS
    /// 350 s, Azure 4 min, Google Cloud 10 min; from DMI).
    #[arg(long)]
    pub no_cloud_defaults: bool,
    /// HTTP connections served at once; more wait [default: 64].
    #[arg(long, value_name = "N")]
    pub max_connections: Option<String>,
    /// The kernel's event ring (16MiB, 512KiB...; a power of two) [default:
    /// 4MiB, 8MiB with --http-keepalive]. It holds the records written
    /// while the agent is not reading, and it is resident memory twice over
    /// (mapped whole, its pages twice). Hosts whose keepalive timers fire in
    /// bursts of 100,000s of records a second want 16MiB: watch
    /// kato_events_lost_total{cause="ring_full"}.
    #[arg(long, value_name = "SIZE")]
    pub ring_size: Option<String>,
    /// Keep learned idle timeouts in DIR/learned.json across restarts (and
    /// for `kato doctor`); the systemd unit and the DaemonSet use
    /// /var/lib/kato [default: memory only].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// containerd's API socket: pod, namespace and container names from the
    /// kubelet's labels [default: /run/containerd/containerd.sock].
    #[arg(long, value_name = "PATH")]
    pub containerd_socket: Option<PathBuf>,
    /// The host's cgroup2 mount, for a kato in a container with its own
    /// cgroup namespace (the DaemonSet mounts it at /host/sys/fs/cgroup)
    /// [default: the cgroup2 mount in /proc/self/mountinfo].
    #[arg(long, value_name = "DIR")]
    pub cgroup_root: Option<PathBuf>,
}

/// Flags as overrides, each through its setting's parser (the one the
/// config file uses); a bad value is a ConfigError naming the flag.
fn flag_overrides(a: &AgentArgs) -> Result<Overrides, ConfigError> {
    fn flag<S: Setting>(name: &str, v: Option<S::Raw>) -> Result<Option<S::Value>, ConfigError> {
        v.map(S::parse).transpose().map_err(|message| ConfigError {
            origin: "command line".into(),
            key: format!("--{name}"),
            message: message.to_string(),
        })
    }
    fn number(name: &str, v: Option<&String>) -> Result<Option<i64>, ConfigError> {
        v.map(|v| {
            v.parse().map_err(|_| ConfigError {
                origin: "command line".into(),
                key: format!("--{name}"),
                message: format!("`{v}` is not a number"),
            })
        })
        .transpose()
    }
    let label_by = if a.label_by.is_empty() {
        None
    } else {
        Some(
            a.label_by
                .iter()
                .map(|l| LabelBy::parse(l))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|message| ConfigError {
                    origin: "command line".into(),
                    key: "--label-by".into(),
                    message: message.to_string(),
                })?,
        )
    };
    Ok(Overrides {
        listen: flag::<ListenAddr>("listen", a.listen.clone())?,
        netns: (!a.netns.is_empty()).then(|| NetnsScope::from_list(a.netns.clone())),
        snapshot_interval: flag::<Interval>("snapshot-interval", a.snapshot_interval.clone())?,
        label_by,
        label_limit: flag::<LabelLimit>(
            "label-limit",
            number("label-limit", a.label_limit.as_ref())?,
        )?,
        table_capacity: flag::<TableCapacity>(
            "table-capacity",
            number("table-capacity", a.table_capacity.as_ref())?,
        )?,
        btf: a.btf.clone(),
        hz: flag::<Hz>("hz", number("hz", a.hz.as_ref())?)?,
        idle_timeouts: if a.idle_timeout.is_empty() {
            None
        } else {
            Some(idle_timeout_flags(&a.idle_timeout)?)
        },
        idle_kill_min: flag::<IdleKillMin>("idle-kill-min", a.idle_kill_min.clone())?,
        http_keepalive: a.http_keepalive.then_some(true),
        protect: a.protect.then_some(true),
        log_events: flag::<LogEvents>("log-events", a.log_events.clone())?,
        otlp_endpoint: flag::<OtlpEndpoint>("otlp-endpoint", a.otlp_endpoint.clone())?,
        otlp_interval: flag::<OtlpInterval>("otlp-interval", a.otlp_interval.clone())?,
        history_retention: flag::<IdleKillMin>("history-retention", a.history_retention.clone())?,
        history_events: flag::<HistoryEvents>(
            "history-events",
            number("history-events", a.history_events.as_ref())?,
        )?,
        attach: flag::<Attach>("attach", a.attach.clone())?,
        allowed_hosts: (!a.allowed_host.is_empty()).then(|| a.allowed_host.clone()),
        web_config: a.web_config.clone(),
        cloud_defaults: a.no_cloud_defaults.then_some(false),
        state_dir: a.state_dir.clone(),
        containerd_socket: a.containerd_socket.clone(),
        cgroup_root: a.cgroup_root.clone(),
        max_connections: flag::<MaxConnections>(
            "max-connections",
            number("max-connections", a.max_connections.as_ref())?,
        )?,
        ring_size: flag::<RingSize>("ring-size", a.ring_size.clone().map(toml::Value::String))?,
    })
}

/// `--idle-timeout` values, each one error naming the flag.
pub fn idle_timeout_flags(
    values: &[String],
) -> Result<Vec<keepalive_user::policy::Rule>, ConfigError> {
    values
        .iter()
        .map(|v| {
            keepalive_user::policy::Rule::parse(v).map_err(|message| ConfigError {
                origin: "command line".into(),
                key: "--idle-timeout".into(),
                message: message.to_string(),
            })
        })
        .collect()
}

pub fn config(a: &AgentArgs) -> Result<config::AgentConfig, ConfigError> {
    let flags = flag_overrides(a)?;
    let ring_bytes = a.ring_bytes;
    let file = match &a.config {
        None => Overrides::default(),
        Some(path) => Overrides::read(path)?,
    };
    let mut cfg = flags.over(file).resolve();
    // The hidden test flag, exact bytes, wins.
    cfg.ring_size = ring_bytes.or(cfg.ring_size);
    Ok(cfg)
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    // Before anything is announced, so a signal right after start is handled.
    let stop = super::signals::agent_shutdown()?;
    tokio::pin!(stop);
    // Start-up (loading, the seed census, the HTTP process) runs on this
    // thread, whose capabilities it drops (they are per thread); a thread
    // of its own watches for SIGTERM meanwhile: a stuck start-up still stops.
    let watching = super::signals::exit_on_shutdown("kato agent: stopped during start-up");
    let started = Engine::start(cfg);
    drop(watching);
    let engine = started.map_err(engine_error)?;
    eprintln!("{}", engine.banner);
    engine.run(stop).await.map_err(engine_error)?;
    eprintln!("kato agent: stopped");
    Ok(())
}

/// A web config the HTTP process refused is a usage error (exit 2), like a
/// bad flag; the rest are failures.
fn engine_error(e: EngineError) -> anyhow::Error {
    match e {
        // Its message names the file and key already.
        EngineError::Http(HttpError::Config(why)) => ConfigError {
            origin: "web config".into(),
            key: "(file)".into(),
            message: why,
        }
        .into(),
        // The state directory's file is the operator's input too.
        EngineError::Agent(keepalive_user::agent::state::AgentError::State(why)) => ConfigError {
            origin: "state_dir".into(),
            key: "(file)".into(),
            message: why.to_string(),
        }
        .into(),
        e => e.into(),
    }
}
