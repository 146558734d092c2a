//! `kato agent`: the node-level daemon and Prometheus scrape target.

use std::{path::PathBuf, sync::Arc};

use anyhow::Context as _;
use clap::Args;
use keepalive_user::{
    agent::{
        config::{ConfigError, NetnsScope, Overrides},
        http::{self, Response},
        state::AgentState,
    },
    caps,
};
use tokio::net::TcpListener;

#[derive(Debug, Args)]
pub struct AgentArgs {
    /// TOML file with any of: listen, netns, snapshot_interval, label_by,
    /// label_limit, table_capacity, btf, hz. Flags override it.
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
    /// remote_port, comm, netns. Comma-separated or repeated.
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
    /// Report resets and keepalive timeouts after at least this much idle
    /// time as suspected middlebox kills [default: 30s].
    #[arg(long, value_name = "DURATION")]
    pub idle_kill_min: Option<String>,
    /// HTTP keep-alive view: count request/response exchanges per
    /// connection from every send/recv (a small cost on every socket syscall).
    #[arg(long)]
    pub http_keepalive: bool,
    /// (testing) Ring buffer size in bytes: a power of two, at least 4096.
    #[arg(long, hide = true, value_parser = super::parse_ring_bytes_pub)]
    pub ring_bytes: Option<u32>,
    /// How the programs reach the kernel: auto (fentry where the kernel
    /// allows it, else tracepoints), fentry, or tracepoint [default: auto].
    #[arg(long, value_name = "PATH")]
    pub attach: Option<String>,
}

/// Flags as overrides; a bad value is a ConfigError naming the flag.
fn flag_overrides(a: &AgentArgs) -> Result<Overrides, ConfigError> {
    // Reuse the file parser for values so flags and file agree exactly.
    let mut toml = String::new();
    let quote = |s: &str| format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""));
    if let Some(v) = &a.listen {
        toml += &format!("listen = {}\n", quote(v));
    }
    if let Some(v) = &a.attach {
        toml += &format!("attach = {}\n", quote(v));
    }
    match a.netns.as_slice() {
        [] => {}
        [one] if one == "all" || one == "self" => toml += &format!("netns = {}\n", quote(one)),
        many => {
            toml += &format!(
                "netns = [{}]\n",
                many.iter().map(|s| quote(s)).collect::<Vec<_>>().join(", ")
            )
        }
    }
    if let Some(v) = &a.snapshot_interval {
        toml += &format!("snapshot_interval = {}\n", quote(v));
    }
    if !a.label_by.is_empty() {
        toml += &format!(
            "label_by = [{}]\n",
            a.label_by
                .iter()
                .map(|s| quote(s))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    for (key, v) in [
        ("label_limit", &a.label_limit),
        ("table_capacity", &a.table_capacity),
        ("hz", &a.hz),
    ] {
        if let Some(v) = v {
            let n: i64 = v.parse().map_err(|_| ConfigError {
                origin: "command line".into(),
                key: format!("--{}", key.replace('_', "-")),
                message: format!("`{v}` is not a number"),
            })?;
            toml += &format!("{key} = {n}\n");
        }
    }
    if let Some(v) = &a.btf {
        toml += &format!("btf = {}\n", quote(&v.display().to_string()));
    }
    if let Some(v) = &a.idle_kill_min {
        toml += &format!("idle_kill_min = {}\n", quote(v));
    }
    if a.http_keepalive {
        toml += "http_keepalive = true\n";
    }
    let mut o = Overrides::from_toml("command line", &toml).map_err(|mut e| {
        e.key = format!("--{}", e.key.replace('_', "-"));
        e
    })?;
    if !a.idle_timeout.is_empty() {
        o.idle_timeouts = Some(idle_timeout_flags(&a.idle_timeout)?);
    }
    Ok(o)
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
                message,
            })
        })
        .collect()
}

pub fn config(a: &AgentArgs) -> Result<keepalive_user::agent::config::AgentConfig, ConfigError> {
    let flags = flag_overrides(a)?;
    let ring_bytes = a.ring_bytes;
    let file = match &a.config {
        None => Overrides::default(),
        Some(path) => {
            let origin = path.display().to_string();
            let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
                origin: origin.clone(),
                key: "(file)".into(),
                message: format!("cannot read: {e}"),
            })?;
            Overrides::from_toml(&origin, &text)?
        }
    };
    let mut cfg = flags.over(file).resolve();
    cfg.ring_bytes = ring_bytes;
    Ok(cfg)
}

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    let cfg = config(&args)?;
    // Before anything is announced, so a signal right after start is handled.
    let stop = super::signals::shutdown()?;
    let (state, mut stream) = AgentState::new(&cfg)?;
    let listener = TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let addr = listener.local_addr()?;
    let state = Arc::new(std::sync::Mutex::new(state));
    let n = state.lock().expect("lock").snapshot()?;

    // Everything that needed privileges is done: keep only what runs need.
    let keep = AgentState::runtime_caps(&cfg.netns);
    caps::keep_only(&keep).context("dropping capabilities")?;
    let kept: Vec<&str> = keep.iter().map(|c| caps::name(*c)).collect();
    eprintln!(
        "kato agent: listening on http://{addr} (/metrics, /sockets, /healthz); {n} sockets in {}; keeping {}",
        match &cfg.netns {
            NetnsScope::All => "all network namespaces".to_owned(),
            NetnsScope::Own => "its own network namespace".to_owned(),
            NetnsScope::Listed(l) => format!("network namespaces {}", l.join(", ")),
        },
        kept.join(", ")
    );

    let mut batch = Vec::new();
    let mut tick = tokio::time::interval(cfg.snapshot_interval);
    tick.tick().await; // the first tick fires at once: the seed snapshot was just taken
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            r = stream.next_batch(&mut batch) => {
                r.context("reading the event ring buffer")?;
                state.lock().expect("lock").on_records(&mut batch);
            }
            _ = tick.tick() => {
                if let Err(e) = state.lock().expect("lock").snapshot() {
                    log::warn!("snapshot failed: {e}");
                }
            }
            conn = listener.accept() => {
                let Ok((stream, _)) = conn else { continue };
                let state = Arc::clone(&state);
                tokio::spawn(http::serve_one(stream, move |req| route(&state, req)));
            }
        }
    }
    // Dropping the state closes every program, map and link fd: the kernel detaches them.
    drop(state);
    eprintln!("kato agent: stopped");
    Ok(())
}

fn route(state: &std::sync::Mutex<AgentState>, req: http::Request) -> Response {
    let json = |body| Response {
        status: 200,
        content_type: "application/json",
        body,
    };
    match req.path.as_str() {
        "/metrics" => Response {
            status: 200,
            content_type: "text/plain; version=0.0.4; charset=utf-8",
            body: state.lock().expect("lock").metrics_text(),
        },
        "/sockets" => match http::query_from(&req.query) {
            Ok(q) => json(state.lock().expect("lock").sockets_json(&q)),
            Err(e) => Response::text(400, format!("{e}\n")),
        },
        "/healthz" => json(state.lock().expect("lock").health_json()),
        "/" => Response::text(200, "kato agent: /metrics /sockets /healthz\n"),
        _ => Response::text(404, "not found: try /metrics, /sockets or /healthz\n"),
    }
}
