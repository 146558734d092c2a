//! `kato doctor`: one page a person can act on.

use std::{io::Write, path::PathBuf};

use clap::Args;
use keepalive_user::doctor::{self, Report};

use keepalive_user::bpf::AttachMode;

use super::Output;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[arg(long, short, value_enum, default_value_t)]
    pub output: Output,
    /// A middlebox idle timeout to give advice against (repeatable): `350s`,
    /// or `CIDR[:PORT]=DURATION` (`10.0.0.0/8:5432=350s`, `:443=4m`).
    #[arg(long, value_name = "RULE")]
    pub idle_timeout: Vec<String>,
    /// Read idle timeouts from the agent's config file ([idle_timeouts]).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Kernel BTF [default: /sys/kernel/btf/vmlinux].
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,
    /// The kernel's CONFIG_HZ, if its config cannot be read.
    #[arg(long, value_name = "HZ")]
    pub hz: Option<u32>,
    /// Do not assume the idle timeout of the cloud this host runs in.
    #[arg(long)]
    pub no_cloud_defaults: bool,
    /// containerd's API socket, for pod and container names.
    #[arg(long, value_name = "PATH", default_value = keepalive_user::workload::containerd::DEFAULT_SOCKET)]
    pub containerd_socket: PathBuf,
    /// The agent's state directory, for the idle timeouts it has learned.
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kato")]
    pub state_dir: PathBuf,
    /// Check this attach path (auto: what trace and the agent would pick).
    #[arg(long, value_enum, default_value_t = AttachMode::Auto)]
    pub attach: AttachMode,
}

fn render(r: &Report, out: &mut impl Write) -> std::io::Result<()> {
    writeln!(
        out,
        "kato doctor: {}\n",
        if r.ok {
            "kato works on this host"
        } else {
            "kato cannot work on this host yet"
        }
    )?;
    writeln!(out, "Kernel       {}", r.kernel)?;
    writeln!(out, "Attach path  {}: {}\n", r.attach_path, r.attach_reason)?;
    writeln!(out, "Checks")?;
    for c in &r.checks {
        writeln!(
            out,
            "  [{}] {:<22} {}",
            if c.ok { " ok " } else { "FAIL" },
            c.name,
            c.detail
        )?;
    }
    if !r.namespaces.is_empty() {
        writeln!(
            out,
            "\nKeepalive sysctls and the connections relying on them, per network namespace"
        )?;
        writeln!(
            out,
            "  {:<12} {:<16} {:>6} {:>6} {:>6} {:>11} {:>12} {:>20}",
            "NETNS",
            "NAME",
            "TIME",
            "INTVL",
            "PROBES",
            "CONNECTIONS",
            "KEEPALIVE-ON",
            "DEFAULT-TIME/INTVL/N"
        )?;
        for n in &r.namespaces {
            let v = |x: Option<u32>| x.map_or("?".to_owned(), |v| v.to_string());
            writeln!(
                out,
                "  {:<12} {:<16} {:>6} {:>6} {:>6} {:>11} {:>12} {:>20}",
                n.inode,
                n.name.as_deref().unwrap_or("-"),
                v(n.tcp_keepalive_time),
                v(n.tcp_keepalive_intvl),
                v(n.tcp_keepalive_probes),
                n.connections,
                n.keepalive_on,
                format!(
                    "{}/{}/{}",
                    n.relying_on_default_time,
                    n.relying_on_default_intvl,
                    n.relying_on_default_probes
                )
            )?;
        }
    }
    let w = &r.workloads;
    writeln!(
        out,
        "\nWorkloads    {} sockets with a cgroup ({}): {} named by pod, {} by container, {} by unit; runtimes {}; containerd {}",
        w.sockets_with_cgroup,
        w.cgroup_root.as_deref().unwrap_or("no cgroup2 mount found"),
        w.by_pod,
        w.by_container,
        w.by_unit,
        if w.runtimes.is_empty() {
            "none".to_owned()
        } else {
            w.runtimes.iter().map(|(k, v)| format!("{k} ({v} containers)")).collect::<Vec<_>>().join(", ")
        },
        w.containerd
    )?;
    if !r.timeouts.is_empty() {
        writeln!(
            out,
            "\nIdle timeouts on this host's paths, and the connections they endanger"
        )?;
        for t in &r.timeouts {
            let ns = if t.namespaces.is_empty() {
                String::new()
            } else {
                format!(
                    " in netns {}",
                    t.namespaces
                        .iter()
                        .map(u32::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            writeln!(
                out,
                "  {} [{}]{ns}: {} safe, {} at-risk, {} unprotected",
                t.rule,
                t.source.name(),
                t.safe,
                t.at_risk,
                t.unprotected
            )?;
            for e in &t.endangered {
                writeln!(
                    out,
                    "      {} {} -> {} (netns {}, {})",
                    e.risk.name(),
                    e.local,
                    e.remote,
                    e.netns,
                    e.owner.as_deref().unwrap_or("owner unknown")
                )?;
            }
            if t.at_risk + t.unprotected > 0 {
                writeln!(out, "      fix: {}", t.suggestion)?;
            }
        }
    }
    let pending: Vec<_> = r
        .learned
        .iter()
        .filter(|l| l.bracket.bounds().is_none())
        .collect();
    if !pending.is_empty() {
        writeln!(out, "\nLearning (one bound so far, or contradictory)")?;
        for l in pending {
            let b = &l.bracket;
            let s = |v: Option<f64>| v.map_or("?".to_owned(), |v| format!("{v:.1}s"));
            writeln!(
                out,
                "  {}: survived {} ({} times), killed after {} ({} times){}",
                l.destination,
                s(b.survived_s),
                b.survivals,
                s(b.killed_s),
                b.kills,
                if b.contradictory() {
                    "; a survival outlasted a kill: more than an idle timeout at work"
                } else {
                    ""
                }
            )?;
        }
    }
    writeln!(out, "\nAdvice")?;
    if r.advice.is_empty() {
        writeln!(out, "  none (no idle timeout applies to any connection here: declare the middleboxes' with --idle-timeout, e.g. --idle-timeout 10.0.0.0/8=350s)")?;
    }
    for a in &r.advice {
        writeln!(out, "  - [{}] {}", a.class.name(), a.message)?;
    }
    Ok(())
}

pub fn run(args: &DoctorArgs) -> anyhow::Result<std::process::ExitCode> {
    let mut rules = super::agent::idle_timeout_flags(&args.idle_timeout)?;
    if let Some(path) = &args.config {
        let file = keepalive_user::agent::config::Overrides::read(path)?;
        rules.extend(file.idle_timeouts.unwrap_or_default());
    }
    let learned = keepalive_user::learned::read_state(
        &args.state_dir.join(keepalive_user::learned::STATE_FILE),
    )
    .map_err(|e| anyhow::anyhow!("learned idle timeouts: {e}"))?;
    let report = doctor::run(
        args.btf.as_deref(),
        args.hz,
        &super::policy(rules, args.no_cloud_defaults),
        learned,
        keepalive_user::workload::Resolver::new(Some(args.containerd_socket.clone())),
        args.attach,
    );
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match args.output {
        Output::Json => writeln!(out, "{}", serde_json::to_string_pretty(&report)?)?,
        Output::Table => render(&report, &mut out)?,
    }
    Ok(if report.ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    })
}
