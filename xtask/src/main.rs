//! `cargo xtask`: kato's build, run and test entry points.
//!
//! Every command first runs `setup` (idempotent), so a fresh machine needs
//! nothing but the README's commands.

mod bench;
mod churn;
mod deadshare;
mod fuzz;
mod harness;
mod hold;
mod hooks;
mod overhead;
mod package;
mod protect;
mod rr;
mod setup;
mod vm;
mod web;

use std::process::Command;

use anyhow::{bail, Context as _, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test kato")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building and testing kato needs: rust-src for the
    /// nightly toolchain, bpf-linker built against LLVM 22, and the Debian
    /// packages the tests drive (nftables, iproute2, bpftool). Idempotent.
    Setup,
    /// Build kato (the eBPF object is built by keepalive-user's build script).
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run kato with the given arguments, e.g. `cargo xtask run -- trace`.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for kato.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure kato against ss/netstat and write docs/benchmarks.md (as root).
    Bench {
        /// Socket counts for the listing benchmark.
        #[arg(long, value_delimiter = ',', default_value = "10000,100000")]
        sockets: Vec<usize>,
        /// Seconds of each request/response run (4 conditions x 2 loads x 3 repetitions).
        #[arg(long, default_value_t = 4.0)]
        rr_secs: f64,
        /// Keepalive sockets (1 s keepalive) for the event-throughput run.
        #[arg(long, default_value_t = 100_000)]
        events_sockets: usize,
        /// Seconds of the event-throughput run.
        #[arg(long, default_value_t = 60)]
        events_secs: u64,
        /// Connections opened and closed in the churn soak.
        #[arg(long, default_value_t = 200_000)]
        churn: usize,
        /// Seconds of each nginx + wrk run (0: skip).
        #[arg(long, default_value_t = 8)]
        web_secs: u64,
        /// Only the nginx + wrk section, printed (docs/benchmarks.md is left
        /// alone: it holds one full run).
        #[arg(long)]
        web_only: bool,
        /// Only the listing and agent-memory sections (at --sockets), printed
        /// (docs/benchmarks.md is left alone).
        #[arg(long, conflicts_with = "web_only")]
        listing_only: bool,
        /// With --listing-only: the agent against this earlier kato binary
        /// instead, interleaved (3 rounds): RSS of all its processes and
        /// /metrics p99, medians.
        #[arg(long, value_name = "KATO", requires = "listing_only")]
        against: Option<std::path::PathBuf>,
        /// Seconds of each hook-cost run (4 loads x 2 conditions x 3 repetitions; 0: skip).
        #[arg(long, default_value_t = 5.0)]
        hook_secs: f64,
        /// Only the hook-cost section, printed (docs/benchmarks.md is left alone).
        #[arg(long, conflicts_with_all = ["web_only", "listing_only"])]
        hooks_only: bool,
        /// Only the event-throughput section (at --events-sockets), printed
        /// (docs/benchmarks.md is left alone).
        #[arg(long, conflicts_with_all = ["web_only", "listing_only", "hooks_only"])]
        events_only: bool,
        /// Seconds of each `kato protect` run (nginx + wrk, 4 conditions x
        /// 7 repetitions; 0: skip).
        #[arg(long, default_value_t = 5)]
        protect_secs: u64,
        /// Only the `kato protect` section, printed (docs/benchmarks.md is
        /// left alone).
        #[arg(long, conflicts_with_all = ["web_only", "listing_only", "hooks_only", "events_only"])]
        protect_only: bool,
        /// Seconds of fuzzing per parser (0: skip).
        #[arg(long, default_value_t = 30)]
        fuzz_secs: u64,
    },
    /// (internal) Open and close loopback connections for the churn soak.
    #[command(hide = true)]
    Churn {
        #[arg(long)]
        count: usize,
    },
    /// (internal) Loopback connections trickling one byte each way, for the
    /// hook-cost benchmark's delayed-ACK timers.
    #[command(hide = true)]
    Trickle {
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        every_ms: u64,
        #[arg(long)]
        secs: f64,
    },
    /// (internal) Loopback request/response load for the overhead benchmark.
    #[command(hide = true)]
    Rr {
        #[arg(long)]
        conns: usize,
        #[arg(long)]
        secs: f64,
    },
    /// (internal) Hold loopback TCP connections open for a benchmark.
    #[command(hide = true)]
    Hold {
        #[arg(long, conflicts_with = "connect")]
        listen: Option<std::net::SocketAddr>,
        #[arg(long)]
        connect: Option<std::net::SocketAddr>,
        #[arg(long)]
        count: usize,
        #[arg(long)]
        keepalive: bool,
        /// Keepalive on every socket, with TCP_KEEPIDLE = TCP_KEEPINTVL = SECS.
        #[arg(long)]
        ka_secs: Option<i32>,
    },
    /// Build the Debian package and the OCI image into target/package/:
    /// kato_VERSION_amd64.deb and kato-VERSION.oci.tar (docs/deploy.md
    /// says how to install the one and push the other).
    Package {
        /// Cargo profile of the binary: `release`, or `dev` for a quick
        /// check of the recipe (the tests' choice).
        #[arg(long, default_value = "release")]
        profile: String,
    },
    /// Fuzz the event decoder, config, BTF, idle-timeout and HTTP parsers
    /// with cargo fuzz (nightly, libFuzzer), each for SECS seconds.
    Fuzz {
        #[arg(long, default_value_t = 60)]
        secs: u64,
    },
    /// Run every test: unit tests, the kernel-facing tests (as root) on this
    /// kernel, a short fuzz run of every parser, then the kernel-facing tests
    /// again inside qemu VMs booting Debian's 6.1 and 6.12 kernels, under
    /// each attach path (auto, fentry, tracepoint; the real-server tests
    /// under the kernel's own).
    Test {
        /// Only this kernel: `host` (the running one), `debian-6.1` or
        /// `debian-6.12` (a VM, software emulation; keepalive, sockets,
        /// doctor, IPVS and real-server tests, or the filters given).
        #[arg(long, value_name = "KERNEL")]
        kernel: Option<String>,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

pub fn cargo() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

pub fn status(cmd: &mut Command) -> Result<()> {
    eprintln!("xtask: running {cmd:?}");
    let st = cmd
        .status()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !st.success() {
        bail!("{cmd:?} failed ({st})");
    }
    Ok(())
}

pub fn build(release: bool) -> Result<()> {
    let mut cmd = cargo();
    cmd.args(["build", "--package", "keepalive-user"]);
    if release {
        cmd.arg("--release");
    }
    status(&mut cmd)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Paths below are the workspace's, wherever `cargo xtask` was typed.
    std::env::set_current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .context("cannot enter the workspace")?;
    if let Cmd::Hold {
        listen,
        connect,
        count,
        keepalive,
        ka_secs,
    } = cli.command
    {
        return match (listen, connect) {
            (Some(a), _) => hold::listen(a, count, ka_secs),
            (_, Some(a)) => hold::connect(a, count, keepalive, ka_secs),
            _ => bail!("hold needs --listen or --connect"),
        };
    }
    if let Cmd::Rr { conns, secs } = cli.command {
        return rr::run(conns, secs);
    }
    if let Cmd::Churn { count } = cli.command {
        return churn::run(count);
    }
    if let Cmd::Trickle {
        conns,
        every_ms,
        secs,
    } = cli.command
    {
        return hooks::trickle(conns, every_ms, secs);
    }
    setup::ensure()?;
    match cli.command {
        Cmd::Hold { .. } | Cmd::Rr { .. } | Cmd::Churn { .. } | Cmd::Trickle { .. } => {
            unreachable!("handled above")
        }
        Cmd::Bench {
            sockets,
            rr_secs,
            events_sockets,
            events_secs,
            churn,
            web_secs,
            web_only,
            listing_only,
            against,
            hook_secs,
            hooks_only,
            events_only,
            protect_secs,
            protect_only,
            fuzz_secs,
        } => {
            if euid() != 0 {
                bail!("benchmarks create network namespaces and load eBPF: run `cargo xtask bench` as root");
            }
            setup::ensure_bench()?;
            build(true)?;
            let kato = std::fs::canonicalize("target/release/kato")?;
            let kato = kato.to_str().context("path")?;
            if let Some(other) = against {
                let other = std::fs::canonicalize(other)?;
                let other = other.to_str().context("path")?;
                println!("{}", bench::agent_ab(kato, other, &sockets, 3)?);
                return Ok(());
            }
            if listing_only {
                let (rows, baseline) = bench::scale(kato, &sockets)?;
                let command = format!(
                    "cargo xtask bench --listing-only --sockets {}",
                    sockets
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(",")
                );
                println!("{}", bench::report(&rows, &baseline, &command));
                return Ok(());
            }
            if hooks_only {
                let h = hooks::run(kato, hook_secs)?;
                harness::bpf_stats(false);
                println!("{}", hooks::report(&h));
                return Ok(());
            }
            if protect_only {
                let p = protect::run(kato, protect_secs)?;
                println!("{}", protect::report(&p));
                return Ok(());
            }
            if events_only {
                let t = overhead::throughput(kato, events_sockets, events_secs)?;
                harness::bpf_stats(false);
                println!("{}", overhead::throughput_report(&t));
                return Ok(());
            }
            let web = (web_secs > 0)
                .then(|| web::run(kato, web_secs))
                .transpose()?;
            if web_only {
                harness::bpf_stats(false);
                println!("{}", web.as_ref().map(web::report).unwrap_or_default());
                return Ok(());
            }
            let overhead = overhead::run(kato, rr_secs)?;
            let hook_costs = (hook_secs > 0.0)
                .then(|| hooks::run(kato, hook_secs))
                .transpose()?;
            let throughput = overhead::throughput(kato, events_sockets, events_secs)?;
            let churned = overhead::churn(kato, churn)?;
            let protected = (protect_secs > 0)
                .then(|| protect::run(kato, protect_secs))
                .transpose()?;
            let (rows, baseline) = bench::scale(kato, &sockets)?;
            let command = format!(
                "cargo xtask bench --sockets {} --rr-secs {rr_secs} --hook-secs {hook_secs} --events-sockets {events_sockets} --events-secs {events_secs} --churn {churn} --web-secs {web_secs} --protect-secs {protect_secs} --fuzz-secs {fuzz_secs}",
                sockets.iter().map(ToString::to_string).collect::<Vec<_>>().join(",")
            );
            harness::bpf_stats(false);
            let mut text = bench::report(&rows, &baseline, &command);
            text += &overhead::report(&overhead, &throughput);
            if let Some(h) = &hook_costs {
                text += &hooks::report(h);
            }
            text += &overhead::churn_report(&churned);
            if let Some(w) = &web {
                text += &web::report(w);
            }
            if let Some(p) = &protected {
                text += &protect::report(p);
            }
            if fuzz_secs > 0 {
                // After the measurements: fuzzing keeps both cores busy.
                fuzz::run(fuzz_secs)?;
                text += &format!(
                    "\n## Fuzzing\n\nEach of {} ran {fuzz_secs} s under libFuzzer (cargo fuzz) without a finding.\n",
                    fuzz::TARGETS.map(|t| format!("`{t}`")).join(", ")
                );
            }
            std::fs::create_dir_all("docs")?;
            std::fs::write("docs/benchmarks.md", &text)?;
            println!("{text}");
            Ok(())
        }
        Cmd::Setup => Ok(()),
        Cmd::Build { release } => build(release),
        Cmd::Run { release, args } => {
            build(release)?;
            let bin = format!("target/{}/kato", if release { "release" } else { "debug" });
            let st = Command::new(&bin)
                .args(&args)
                .status()
                .with_context(|| format!("cannot start {bin}"))?;
            std::process::exit(st.code().unwrap_or(1));
        }
        Cmd::Fuzz { secs } => fuzz::run(secs),
        Cmd::Package { profile } => package::run(&profile),
        Cmd::Test { kernel, args } => {
            if euid() != 0 {
                bail!("the kernel-facing tests load eBPF programs and create network namespaces: run `cargo xtask test` as root");
            }
            let runs = || -> vm::Runs {
                if args.is_empty() {
                    vm::default_runs()
                } else {
                    args.iter()
                        .map(|f| (f.clone(), vm::ATTACH_PATHS.to_vec()))
                        .collect()
                }
            };
            match kernel.as_deref() {
                None | Some("host") => {}
                Some(k) => return vm::test(k, &runs()),
            }
            // Each phase's wall time, printed at the end: where the test
            // command's minutes go on this machine.
            let mut phases = Phases::default();
            if args.is_empty() {
                phases.time("fmt and clippy", lint)?;
            }
            phases.time("build", || build(false))?;
            // The package tests read target/package/: the same recipe as
            // `cargo xtask package`, on the dev build already made (a release
            // build from scratch would add ~5 minutes).
            if args.is_empty() || args.iter().any(|a| a.contains("package")) {
                phases.time("package", || package::run("dev"))?;
            }
            // default-members: the host crates (the eBPF crate only builds for BPF).
            let mut test = cargo();
            test.args(["test", "--no-fail-fast"]).args(&args);
            if args.is_empty() {
                // This host's kernel has no ip_vs; the VM below runs it.
                test.args(["--", "--skip", vm::HOST_SKIPS]);
            }
            phases.time("unit and host kernel tests", || status(&mut test))?;
            if args.is_empty() && kernel.is_none() {
                phases.time("fuzz", fuzz::quick)?;
                // More kernels: the same binaries in VMs, every attach path.
                phases.time("VMs", || vm::test_all(&runs()))?;
            }
            phases.print();
            Ok(())
        }
    }
}

/// Wall time per phase of a command.
#[derive(Default)]
struct Phases(Vec<(&'static str, std::time::Duration)>);

impl Phases {
    fn time(&mut self, name: &'static str, f: impl FnOnce() -> Result<()>) -> Result<()> {
        let t = std::time::Instant::now();
        let r = f();
        self.0.push((name, t.elapsed()));
        if r.is_err() {
            self.print();
        }
        r
    }

    fn print(&self) {
        let total: std::time::Duration = self.0.iter().map(|(_, d)| *d).sum();
        let each: Vec<String> = self
            .0
            .iter()
            .map(|(n, d)| format!("{n} {:.0} s", d.as_secs_f64()))
            .collect();
        eprintln!(
            "xtask: phases: {} (total {:.0} s)",
            each.join(", "),
            total.as_secs_f64()
        );
    }
}

/// `cargo fmt --check` and clippy with warnings as errors, over the host
/// crates and their tests (the workspace's `[lints]` say which).
fn lint() -> Result<()> {
    status(cargo().args(["fmt", "--all", "--check"]))?;
    status(cargo().args(["clippy", "--all-targets", "--", "-D", "warnings"]))
}

fn euid() -> u32 {
    // No libc dependency for one call: /proc/self/status has the effective uid.
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:").map(str::to_owned))
        })
        .and_then(|l| l.split_whitespace().nth(1).and_then(|u| u.parse().ok()))
        .unwrap_or(u32::MAX)
}
