//! Command-line interface: one module per subcommand.

pub mod agent;
pub mod agent_http;
pub mod bench_floor;
pub mod completions;
pub mod doctor;
pub mod history;
mod listing;
pub mod man;
pub mod protect;
pub mod signals;
pub mod sockets;
pub mod stories;
mod stream;
pub mod table;
pub mod top;
pub mod trace;
pub mod watch;

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use keepalive_user::bpf::{AttachMode, LoadOptions};

#[derive(Debug, Parser)]
#[command(
    name = "kato",
    version,
    about = "Watch the Linux kernel's TCP keepalive machinery: probes, dead peers and resets",
    long_about = "kato attaches eBPF programs to the kernel's TCP keepalive timer and active-reset \
path and reports, per socket, when keepalive is armed, when probes go out, when the peer answers, \
when a dead peer is declared (ETIMEDOUT), and which resets the kernel sent and why.\n\n\
It needs root (CAP_BPF and CAP_PERFMON) and a kernel with BTF (/sys/kernel/btf/vmlinux).",
    after_help = "Examples:\n  sudo kato trace                      live keepalive events, one line each\n  \
sudo kato trace --port 5432          only connections to or from port 5432\n  \
sudo kato trace --output json | jq   one JSON object per line\n\n\
Logging: RUST_LOG=debug kato ..."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Print keepalive and reset events live, one line each, until Ctrl-C.
    #[command(
        long_about = "Print keepalive and reset events live, one line each, until Ctrl-C.\n\n\
Events:\n  \
armed              keepalive timer armed (SO_KEEPALIVE set, connection established, re-configured)\n  \
fired              the timer ran and re-armed; the connection was not idle long enough to probe\n  \
probe_sent         the connection was idle past its keepalive time: a probe went out\n  \
peer_answered      the peer acknowledged an outstanding probe (PROBES: how many were out)\n  \
keepalive_timeout  TCP_KEEPCNT probes went unanswered: the kernel closed the socket with ETIMEDOUT\n  \
disarmed           the timer was stopped (keepalive off, socket closed, or a re-arm)\n  \
reset_sent         this kernel sent a RST: an active one, or a reply to data for a socket its owner \
closed (TCP_ABORT_ON_DATA), to a TIME_WAIT socket or to no socket (JSON reply: true); REASON is the \
kernel's sk_rst_reason (where the kernel gives none, before 6.12, the one the context proves, such as \
TCP_KEEPALIVE_TIMEOUT or TCP_ABORT_ON_DATA, with JSON reset_reason_inferred: true)\n  \
reset_received     a RST arrived from the peer (the kernel aborting a closed socket that got data is a \
reset_sent, not this)\n  \
socket_error       the kernel reported an error to the socket's owner: REASON is the errno, and for \
ETIMEDOUT which timer gave up: (keepalive) or (retransmits), a dead peer found by unacknowledged data or \
TCP_USER_TIMEOUT\n  \
stale_reuse        the keep-alive race: data written on a connection its peer had closed (the FIN \
already there, or crossing the write) was answered by a RST. On the side that wrote: `wrote after Ns idle`; \
on the side that closed: `peer wrote after ...` (JSON reused_by local|peer, peer_pid/peer_comm for the other \
end when it is on this host)\n  \
idle_kill_suspected  a middlebox forgot the flow: a RST after the connection sat idle past its path's \
idle timeout (--idle-timeout), or its first send after such a silence never got through (ETIMEDOUT from \
retransmissions). A keepalive timeout alone is a dead peer, never this (REASON: idle time and the rule)\n  \
fin_sent, fin_received, closed   how each connection ends (only with --closes: every TCP connection on the host)\n\n\
TIMER is the time left on the keepalive timer, like the first number of `netstat -o`'s \
keepalive (7198.14/0/0). PID/COMM is the process holding the socket: as the kernel saw it in the \
socket's own connect, listen or close, or found via /proc like `netstat -p`; a socket its process has \
closed names its last owner.\n\n\
On Ctrl-C (or SIGTERM) kato prints one summary line to stderr: events seen and events lost."
    )]
    Trace(trace::TraceArgs),
    /// List TCP sockets with their keepalive state, like `netstat -tnop` and more.
    #[command(
        long_about = "List TCP sockets with their keepalive state, like `netstat -tnop`, plus what \
neither netstat nor ss shows.\n\n\
Columns as in netstat -tnop: Proto, Recv-Q, Send-Q, Local and Foreign Address, State, \
PID/Program name, and Timer in netstat's notation: `keepalive (7198.14/0/0)` = seconds left / \
retransmits / unanswered probes; `on (...)` a retransmit timer, `timewait (...)`, `probe (...)` \
a zero-window probe, `off`.\n\n\
Added by kato:\n  \
Keepalive  the effective TCP_KEEPIDLE/TCP_KEEPINTVL/TCP_KEEPCNT (seconds/seconds/probes); a * marks \
a value taken from the socket's namespace sysctl net.ipv4.tcp_keepalive_*; `off` when SO_KEEPALIVE is off\n  \
Idle       seconds since the peer was last heard from (what keepalive measures)\n  \
Unans      keepalive probes sent and not yet answered\n\n\
Examples:\n  sudo kato sockets --keepalive off --state established    connections a NAT may silently drop\n  \
sudo kato sockets --sort probes --watch 1                 who is probing a dead peer right now\n  \
sudo kato sockets --all-netns --output json | jq ..."
    )]
    Sockets(sockets::SocketsArgs),
    /// Run as the node agent: track every socket, serve Prometheus /metrics.
    #[command(
        long_about = "Run as the node agent: load the programs, take a snapshot of every TCP socket, \
keep the table current from kernel events, and serve over HTTP:\n  \
/metrics   Prometheus metrics (docs/metrics.md lists them)\n  \
/sockets   the socket table as JSON; filters as query parameters: state, port, sport, dport, addr (or a network), pid, comm, netns, keepalive, sort; history=1 adds each row's story\n  \
/sockets/COOKIE/history, /history?local=ADDR:PORT&remote=ADDR:PORT   one socket's story (kato history)\n  \
/healthz   liveness, as JSON\n\n\
Listens on 127.0.0.1:7941 by default. After start-up it keeps only CAP_BPF and CAP_PERFMON \
(plus CAP_SYS_ADMIN and CAP_SYS_PTRACE when it watches other network namespaces). \
Stops cleanly on SIGTERM or SIGINT. A bad option or config value exits with code 2."
    )]
    Agent(agent::AgentArgs),
    /// Check what kato can do on this host, and advise against declared idle timeouts.
    #[command(
        long_about = "Check what kato can do on this host: kernel config, BTF, the attach path and \
why, capabilities, a trial load of every program; then, per network namespace, the keepalive \
sysctls and how many connections rely on each default; and, against the middlebox idle timeouts \
you declare (--idle-timeout or the agent's --config), concrete advice.\n\n\
Exits 0 when kato works here, 1 when it cannot.\n\n\
Example:\n  sudo kato doctor --idle-timeout 10.0.0.0/8:5432=350s --idle-timeout :443=4m"
    )]
    Doctor(doctor::DoctorArgs),
    /// Watch connections live, the ones probing a silent peer first
    /// (`kato sockets --watch`, arranged for it).
    Top(top::TopArgs),
    /// Keep connections alive through middleboxes without touching the application.
    Protect(protect::ProtectArgs),
    /// One connection's story from the agent: its events, oldest first, with the silences between.
    History(history::HistoryArgs),
    /// Print a completion script for bash, zsh, fish, elvish or PowerShell.
    Completions(completions::CompletionsArgs),
    /// Print kato's manual page (or write one per command with --dir).
    Man(man::ManArgs),
    /// (benchmarks) Attach empty programs on kato's tracepoints until SIGTERM.
    #[command(hide = true)]
    BenchFloor(bench_floor::BenchFloorArgs),
    /// The agent's HTTP process (started by `kato agent`).
    #[command(hide = true)]
    AgentHttp(agent_http::AgentHttpArgs),
}

#[derive(Debug, Clone, Copy, Default, ValueEnum, PartialEq, Eq)]
pub enum Output {
    /// Aligned columns for people.
    #[default]
    Table,
    /// JSON for scripts: trace and protect an object per line as events
    /// come, sockets one array, doctor and history one object (docs/json.md).
    Json,
}

/// One `--state` value: a state or one of ss's groups.
#[derive(Debug, Clone)]
pub struct States(Vec<keepalive_user::tcp::TcpState>);

pub fn parse_states(s: &str) -> Result<States, String> {
    keepalive_user::tcp::TcpState::parse_ss(s)
        .map(States)
        .ok_or_else(|| {
            format!(
                "unknown TCP state `{s}` (established, syn-sent, syn-recv, fin-wait-1, fin-wait-2, \
                 time-wait, closed, close-wait, last-ack, listening, closing, or all, connected, \
                 synchronized, bucket, big)"
            )
        })
}

/// The states of every `--state` value, each once.
pub fn states(values: &[States]) -> Vec<keepalive_user::tcp::TcpState> {
    let mut v: Vec<_> = values.iter().flat_map(|s| s.0.iter().copied()).collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Which ends of a connection to show: the same flags on trace and sockets.
#[derive(Debug, Clone, Args)]
pub struct EndsArgs {
    /// Only connections with this local or remote port (repeatable).
    #[arg(long, value_name = "PORT")]
    pub port: Vec<u16>,
    /// Only connections with this local port (ss's sport; repeatable).
    #[arg(long, value_name = "PORT")]
    pub sport: Vec<u16>,
    /// Only connections with this remote port (ss's dport; repeatable).
    #[arg(long, value_name = "PORT")]
    pub dport: Vec<u16>,
    /// Only connections with this local or remote address, or one in this
    /// network (repeatable): 10.0.0.5, 10.0.0.0/8, fd00::/8.
    #[arg(long, value_name = "IP[/LEN]")]
    pub addr: Vec<keepalive_user::policy::Cidr>,
}

impl EndsArgs {
    /// Puts these into `f`.
    pub fn filter(&self, f: &mut keepalive_user::filter::Filter) {
        f.ports.clone_from(&self.port);
        f.sports.clone_from(&self.sport);
        f.dports.clone_from(&self.dport);
        f.addrs.clone_from(&self.addr);
    }
}

/// How kato finds out about the kernel.
#[derive(Debug, Clone, Args)]
pub struct KernelArgs {
    /// Kernel BTF to resolve struct offsets from.
    #[arg(long, value_name = "PATH", default_value = keepalive_user::kernel::DEFAULT_BTF)]
    pub btf: PathBuf,
    /// The kernel's CONFIG_HZ, if /proc/config.gz and /boot/config-* are unavailable.
    #[arg(long, value_name = "HZ", value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub hz: Option<u32>,
    /// (testing) Ring buffer size in bytes: a power of two, at least 4096.
    #[arg(long, hide = true, value_parser = parse_ring_bytes)]
    pub ring_bytes: Option<u32>,
    /// How the programs reach the kernel: fentry/fexit trampolines on the
    /// keepalive functions (no cost to other timers), BTF tracepoints
    /// (timer:* filtered on the keepalive timer), or auto: fentry where the
    /// kernel allows it, else tracepoints. `kato doctor` shows the choice.
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
}

/// Who owns a socket: filters by workload, and where to ask containerd.
#[derive(Debug, Clone, Args)]
pub struct WorkloadArgs {
    /// Only sockets of this Kubernetes pod (repeatable; from the kubelet's labels in containerd).
    #[arg(long, value_name = "NAME")]
    pub pod: Vec<String>,
    /// Only sockets of pods in this Kubernetes namespace (repeatable).
    #[arg(long, value_name = "NAMESPACE")]
    pub pod_namespace: Vec<String>,
    /// Only sockets of this container name (repeatable).
    #[arg(long, value_name = "NAME")]
    pub container: Vec<String>,
    /// Only sockets of this systemd unit (repeatable): `nginx.service`.
    #[arg(long, value_name = "UNIT")]
    pub unit: Vec<String>,
    /// containerd's API socket, for pod and container names.
    #[arg(long, value_name = "PATH", default_value = keepalive_user::workload::containerd::DEFAULT_SOCKET)]
    pub containerd_socket: PathBuf,
}

impl WorkloadArgs {
    pub fn filter(&self, f: &mut keepalive_user::filter::Filter) {
        f.pods.clone_from(&self.pod);
        f.pod_namespaces.clone_from(&self.pod_namespace);
        f.containers.clone_from(&self.container);
        f.units.clone_from(&self.unit);
    }

    pub fn resolver(&self) -> keepalive_user::workload::Resolver {
        keepalive_user::workload::Resolver::new(Some(self.containerd_socket.clone()))
    }
}

/// `--show-kernel-addresses`: kernel pointers defeat KASLR, so only root
/// sees them, and only on the command line (never over HTTP).
pub fn check_show_addresses(wanted: bool) -> anyhow::Result<()> {
    // SAFETY: geteuid has no arguments and cannot fail.
    if wanted && unsafe { libc::geteuid() } != 0 {
        return Err(keepalive_user::agent::config::ConfigError {
            origin: "command line".into(),
            key: "--show-kernel-addresses".into(),
            message: "only root may see kernel addresses".into(),
        }
        .into());
    }
    Ok(())
}

/// The declared rules, plus this host's cloud default unless told not to.
pub fn policy(
    declared: Vec<keepalive_user::policy::Rule>,
    no_cloud_defaults: bool,
) -> keepalive_user::policy::Policy {
    let p = keepalive_user::policy::Policy {
        rules: declared,
        ..Default::default()
    };
    match keepalive_user::cloud::detect() {
        Some(c) if !no_cloud_defaults => p.with_assumed([c.rule()]),
        _ => p,
    }
}

pub fn parse_ring_bytes(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(n) if n >= 4096 && n.is_power_of_two() => Ok(n),
        _ => Err(format!("`{s}` is not a power of two of at least 4096")),
    }
}

impl KernelArgs {
    /// Where and how to load; the command says what to attach.
    pub fn load_options(&self) -> LoadOptions {
        LoadOptions {
            btf: Some(self.btf.clone()),
            hz: self.hz,
            ring_bytes: self.ring_bytes,
            attach: self.attach,
            ..LoadOptions::default()
        }
    }
}

/// An error and its causes on one line, as anyhow's `{:#}` writes them,
/// without a cause the message before it already quotes (most of kato's
/// errors name their cause, and thiserror makes it the source as well).
pub fn one_line(e: &anyhow::Error) -> String {
    let mut line = e.to_string();
    for cause in e.chain().skip(1) {
        let cause = cause.to_string();
        if !line.contains(&cause) {
            line.push_str(": ");
            line.push_str(&cause);
        }
    }
    line
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn a_quoted_cause_is_not_repeated() {
        let e = anyhow::Error::from(keepalive_user::bpf::LoadError::Iterator {
            name: "tcp",
            source: std::io::Error::other("boom"),
        });
        assert_eq!(format!("{e:#}"), "BPF iterator `tcp`: boom: boom");
        assert_eq!(one_line(&e), "BPF iterator `tcp`: boom");
    }

    #[test]
    fn context_and_unquoted_causes_are_kept() {
        let e = anyhow::Error::from(std::io::Error::other("No such file"))
            .context("reading /etc/kato.toml");
        assert_eq!(one_line(&e), "reading /etc/kato.toml: No such file");
    }
}
