//! `kato doctor`: what kato can do on this host and what the declared
//! idle timeouts mean for the sockets on it. Gathers facts; rendering is the
//! CLI's job.

pub mod timeouts;
pub mod workloads;

use std::{collections::BTreeMap, path::PathBuf};

use serde::Serialize;

use crate::{
    bpf::{AttachMode, Bpf, Hook, Iterators, LoadError, LoadOptions},
    caps,
    kernel::{self, btf::Btf, hz, KernelInfo},
    learned::Learned,
    netns,
    policy::{Policy, Risk, RuleSource},
    sockets::{
        snapshot::{Listing, Snapshotter},
        Keepalive, Socket, ValueSource,
    },
    tcp::TcpState,
};

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct NetnsReport {
    pub inode: u32,
    pub name: Option<String>,
    /// net.ipv4.tcp_keepalive_time / intvl (seconds), probes.
    pub tcp_keepalive_time: Option<u32>,
    pub tcp_keepalive_intvl: Option<u32>,
    pub tcp_keepalive_probes: Option<u32>,
    /// Connections (not listening, TIME_WAIT or request sockets).
    pub connections: usize,
    pub keepalive_on: usize,
    /// Connections with keepalive on whose idle time is the sysctl default.
    pub relying_on_default_time: usize,
    pub relying_on_default_intvl: usize,
    pub relying_on_default_probes: usize,
}

#[derive(Debug, Serialize)]
pub struct Advice {
    pub rule: String,
    pub class: Risk,
    pub sockets: usize,
    pub message: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    /// kato can trace and list sockets on this host.
    pub ok: bool,
    pub kernel: String,
    pub checks: Vec<Check>,
    pub attach_path: String,
    pub attach_reason: String,
    pub namespaces: Vec<NetnsReport>,
    /// Every idle timeout known or found (declared, cloud-assumed,
    /// conntrack, learned) and the connections it endangers.
    pub timeouts: Vec<timeouts::TimeoutReport>,
    /// What the agent has learned so far, brackets with one bound included.
    pub learned: Vec<Learned>,
    /// Sockets named by unit, container and pod; runtimes found.
    pub workloads: workloads::WorkloadReport,
    pub advice: Vec<Advice>,
}

fn check(name: &str, ok: bool, detail: impl Into<String>) -> Check {
    Check {
        name: name.into(),
        ok,
        detail: detail.into(),
    }
}

/// Runs every check; never fails (a failed check is part of the report).
pub fn run(
    btf: Option<&std::path::Path>,
    hz_override: Option<u32>,
    policy: &Policy,
    learned: Vec<Learned>,
    mut resolver: crate::workload::Resolver,
    attach: AttachMode,
) -> Report {
    let release = kernel::release();
    let mut checks = vec![];
    let config = hz::running_config(&release);
    match &config {
        Some(c) => {
            let flag = |n| hz::config_flag(c, n);
            checks.push(check(
                "kernel config",
                true,
                "/proc/config.gz or /boot/config-*",
            ));
            checks.push(check(
                "CONFIG_DEBUG_INFO_BTF",
                flag("CONFIG_DEBUG_INFO_BTF"),
                "BTF: struct offsets and tp_btf",
            ));
            // Informational: kato does not need kprobes.
            checks.push(check(
                "kprobes",
                true,
                if flag("CONFIG_KPROBES") {
                    "available (kato does not need them)"
                } else {
                    "not compiled in (kato does not need them)"
                },
            ));
        }
        None => checks.push(check(
            "kernel config",
            false,
            "no /proc/config.gz or /boot/config-*: pass --hz",
        )),
    }
    let path = btf.map_or_else(|| PathBuf::from(kernel::DEFAULT_BTF), ToOwned::to_owned);
    // Parsed once: the checks read it, then the programs load from it.
    let parsed = Btf::from_file(&path);
    match &parsed {
        Ok(b) => {
            let tcp = kernel::offsets::resolve(b, 1)
                .map(|_| ())
                .and_then(|()| kernel::offsets::resolve_iter(b).map(|_| ()));
            checks.push(check(
                "BTF",
                tcp.is_ok(),
                match &tcp {
                    Ok(()) => format!("{}: every field kato reads resolved", path.display()),
                    Err(e) => format!("{}: {e}", path.display()),
                },
            ));
            let reasons = kernel::reset_reason_names(b);
            // Degraded, not failed: kato names keepalive resets from context.
            checks.push(check(
                "reset reasons",
                true,
                if reasons.is_empty() {
                    "this kernel's resets carry no sk_rst_reason (before 6.10): kato names keepalive timeouts from the \
                     timer they are sent from (reset_reason_inferred), other resets stay UNKNOWN"
                        .to_owned()
                } else {
                    format!("{} sk_rst_reason values", reasons.len())
                },
            ));
            checks.push(check(
                "socket cgroups",
                true,
                if kernel::offsets::cgroup_offsets(b).is_some() {
                    "sk_cgrp_data.cgroup->kn->id: every socket and event names its cgroup (units, containers, pods)"
                } else {
                    "this kernel keeps no cgroup on sockets (CONFIG_SOCK_CGROUP_DATA): workloads stay unnamed"
                },
            ));
            if let Ok((_, field)) = kernel::offsets::keepalive_timer(b) {
                checks.push(check("keepalive timer", true, format!("found at {field}")));
            }
        }
        Err(e) => checks.push(check("BTF", false, e.to_string())),
    }
    checks.push(check(
        "cloud",
        true,
        match crate::cloud::detect() {
            Some(c) => {
                let (t, what) = c.idle_timeout();
                format!(
                    "{} (DMI): assuming the {what} idle timeout of {} s where no rule is declared (--no-cloud-defaults: don't)",
                    c.name(),
                    t.as_secs()
                )
            }
            None => "not a cloud kato knows (DMI): no idle timeout assumed".to_owned(),
        },
    ));
    let caps_needed = [
        (caps::CAP_BPF, "load programs"),
        (caps::CAP_PERFMON, "load tracing programs"),
        (caps::CAP_SYSLOG, "read /proc/kallsyms addresses"),
        (caps::CAP_SYS_ADMIN, "enter other network namespaces"),
        (
            caps::CAP_SYS_PTRACE,
            "find namespaces of other users' processes",
        ),
    ];
    for (cap, why) in caps_needed {
        checks.push(check(caps::name(cap), caps::has(cap), why));
    }
    checks.push(check(
        caps::name(caps::CAP_NET_ADMIN),
        true,
        if caps::has(caps::CAP_NET_ADMIN) {
            "read conntrack entries (ctnetlink)"
        } else {
            "absent (optional): conntrack entries unknown, conntrack left out of risk verdicts"
        },
    ));

    let mut namespaces = vec![];
    let mut advice = vec![];
    let mut found = vec![];
    let mut named = workloads::WorkloadReport::default();
    let mut policy = policy.clone();
    policy.learned = learned.iter().filter_map(Learned::rule).collect();
    let opts = LoadOptions {
        tracing: true,
        iterators: Iterators::Try,
        btf: Some(path.clone()),
        hz: hz_override,
        attach,
        ..LoadOptions::default()
    };
    let loaded = caps::require_tracing()
        .map_err(LoadError::Privilege)
        .and_then(|()| parsed.map_err(|e| LoadError::Kernel(e.into())))
        .and_then(|b| {
            let info = KernelInfo::from_btf(path.clone(), &b, hz_override, true)?;
            Bpf::open_with(info, &b, &opts)
        });
    let (attach_path, attach_reason, ok) = match loaded {
        Err(e) => {
            checks.push(check("load", false, e.to_string()));
            (
                "none".to_owned(),
                format!("the programs did not load: {e}"),
                false,
            )
        }
        Ok(mut p) => {
            let path = p.attach.clone().expect("opened for tracing");
            checks.push(check(
                "tracing programs",
                true,
                format!("attached via {} and detached again", path.kind.name()),
            ));
            checks.push(check(
                "BPF iterators",
                p.iterators.is_ok(),
                match &p.iterators {
                    Ok(()) => format!(
                        "{} and {} load",
                        Hook::IterTcp.target(),
                        Hook::IterTaskFile.target()
                    ),
                    Err(e) => format!("{e}: kato sockets falls back to sock_diag"),
                },
            ));
            let (np, t, adv, w) = sockets_report(&mut p, &mut policy, &mut resolver);
            namespaces = np;
            found = t;
            advice = adv;
            named = w;
            (
                path.kind.name().to_owned(),
                format!("{}. {} (kprobes are not used)", path.why, path.detail),
                true,
            )
        }
    };
    checks.push(protect_check(&path, hz_override, &found));
    Report {
        ok,
        kernel: release,
        checks,
        attach_path,
        attach_reason,
        namespaces,
        timeouts: found,
        learned,
        workloads: named,
        advice,
    }
}

/// Whether `kato protect` can work here (its programs load: the sock_ops
/// program and the iterator that calls bpf_setsockopt, 5.15+; a cgroup2
/// hierarchy; CAP_NET_ADMIN for the cgroup attach), and what it would
/// change: the connections at risk or unprotected under a rule.
fn protect_check(
    btf: &std::path::Path,
    hz: Option<u32>,
    found: &[timeouts::TimeoutReport],
) -> Check {
    let loads = Btf::from_file(btf)
        .map_err(|e| LoadError::Kernel(e.into()))
        .and_then(|b| {
            let info = KernelInfo::from_btf(btf.to_owned(), &b, hz, false)?;
            Bpf::open_with(
                info,
                &b,
                &LoadOptions {
                    protect: true,
                    hz,
                    ..LoadOptions::default()
                },
            )
        })
        .map(drop);
    let cgroup = crate::protect::cgroup::root();
    let net_admin = caps::has(caps::CAP_NET_ADMIN);
    let would: usize = found.iter().map(|t| t.at_risk + t.unprotected).sum();
    match (loads, cgroup, net_admin) {
        (Ok(()), Ok(root), true) => check(
            "kato protect",
            true,
            format!(
                "can work here (sock_ops at {}, bpf_setsockopt from the socket walk): it would switch on or tighten keepalive on {would} connection(s) at risk or unprotected above",
                root.display()
            ),
        ),
        (Err(e), _, _) => check(
            "kato protect",
            true,
            format!("not on this kernel (its programs do not load: {}); kato works without it", crate::bpf::tidy(&e)),
        ),
        (_, Err(e), _) => check("kato protect", true, format!("not here: {e}")),
        (_, _, false) => check(
            "kato protect",
            true,
            "needs CAP_NET_ADMIN to attach to the cgroup hierarchy (run as root)",
        ),
    }
}

/// What one idle-timeout rule covers.
#[derive(Default)]
struct RuleTally {
    timeout: std::time::Duration,
    classes: BTreeMap<Risk, usize>,
    /// At-risk sockets whose idle time is the namespace's sysctl.
    at_risk_on_default: usize,
    sysctl_time: Option<u32>,
}

fn is_connection(s: &Socket) -> bool {
    s.keepalive.is_some() && s.state != TcpState::Listen
}

type SocketsReport = (
    Vec<NetnsReport>,
    Vec<timeouts::TimeoutReport>,
    Vec<Advice>,
    workloads::WorkloadReport,
);

fn sockets_report(
    p: &mut Bpf,
    policy: &mut Policy,
    resolver: &mut crate::workload::Resolver,
) -> SocketsReport {
    let own = netns::current().ok().map(|n| n.inode);
    let listed = netns::list().namespaces;
    let names: BTreeMap<u32, String> = listed
        .iter()
        .filter_map(|n| Some((n.inode, n.name.clone()?)))
        .collect();
    let targets: Vec<_> = listed
        .into_iter()
        .map(|n| (Some(n.inode) != own).then_some(n))
        .collect();
    let snapshotter = Snapshotter::new(Listing::Iter, Some(p));
    let Ok(snaps) = crate::census::take(&snapshotter, Some(p), &targets, resolver, policy) else {
        return (
            vec![],
            timeouts::Tally::new(policy).finish(),
            vec![],
            workloads::WorkloadReport::default(),
        );
    };
    let named = workloads::report(resolver, snaps.iter().flat_map(|n| &n.sockets));
    let policy = &*policy;
    let mut tally = timeouts::Tally::new(policy);
    let mut reports = vec![];
    let mut by_rule: BTreeMap<String, RuleTally> = BTreeMap::new();
    for snap in &snaps {
        let conns: Vec<&Socket> = snap.sockets.iter().filter(|s| is_connection(s)).collect();
        if conns.is_empty() && snap.sockets.is_empty() {
            continue;
        }
        let on: Vec<&&Socket> = conns
            .iter()
            .filter(|s| s.keepalive.is_some_and(|k| k.enabled))
            .collect();
        let default = |f: fn(&Keepalive) -> ValueSource| {
            on.iter()
                .filter(|s| s.keepalive.is_some_and(|k| f(&k) == ValueSource::Sysctl))
                .count()
        };
        reports.push(NetnsReport {
            inode: snap.inode,
            name: names.get(&snap.inode).cloned(),
            tcp_keepalive_time: snap.sysctls.map(|s| s.time_s),
            tcp_keepalive_intvl: snap.sysctls.map(|s| s.intvl_s),
            tcp_keepalive_probes: snap.sysctls.map(|s| s.probes),
            connections: conns.len(),
            keepalive_on: on.len(),
            relying_on_default_time: default(|k| k.idle_s.source),
            relying_on_default_intvl: default(|k| k.interval_s.source),
            relying_on_default_probes: default(|k| k.count.source),
        });
        for s in &conns {
            if let Some((risk, Some(rule))) = policy.classify(s) {
                tally.add(s, risk, rule);
                let named = match rule.source {
                    RuleSource::Declared => rule.text.clone(),
                    other => format!("{} ({})", rule.text, other.name()),
                };
                let e = by_rule.entry(named).or_insert_with(|| RuleTally {
                    timeout: rule.timeout,
                    ..Default::default()
                });
                *e.classes.entry(risk).or_default() += 1;
                if risk == Risk::AtRisk
                    && s.keepalive
                        .is_some_and(|k| k.idle_s.source == ValueSource::Sysctl)
                {
                    e.at_risk_on_default += 1;
                    e.sysctl_time = snap.sysctls.map(|x| x.time_s);
                }
            }
        }
    }
    let mut advice = vec![];
    for (
        rule,
        RuleTally {
            timeout,
            classes,
            at_risk_on_default: on_default,
            sysctl_time,
        },
    ) in by_rule
    {
        let t = timeout.as_secs();
        for (class, n) in classes {
            let message = match class {
                Risk::Safe => format!("{n} connections under {rule} send keepalive probes before the {t} s idle timeout"),
                Risk::AtRisk if on_default > 0 => format!(
                    "tcp_keepalive_time = {} s is longer than the {t} s idle timeout of {rule}: {on_default} of {n} at-risk sockets there rely on it; set TCP_KEEPIDLE (+ TCP_KEEPINTVL) below {t} s or lower the sysctl",
                    sysctl_time.map_or("the default".to_owned(), |v| v.to_string())
                ),
                Risk::AtRisk => format!("{n} connections under {rule} set TCP_KEEPIDLE + TCP_KEEPINTVL at or above the {t} s idle timeout: lower them below {t} s"),
                Risk::Unprotected => format!("{n} connections under {rule} have keepalive off: the middlebox will forget them after {t} s idle; enable SO_KEEPALIVE with TCP_KEEPIDLE below {t} s"),
                Risk::Forgotten => format!("{n} connections under {rule} are already forgotten (their conntrack entry is gone while the sockets live): the next packet meets a reset or nothing; close them, and enable SO_KEEPALIVE with TCP_KEEPIDLE below {t} s"),
                Risk::PeerProtected => format!("{n} connections under {rule} have keepalive off but their peers' probes keep them alive"),
                Risk::Unknown => continue,
            };
            advice.push(Advice {
                rule: rule.clone(),
                class,
                sockets: n,
                message,
            });
        }
    }
    (reports, tally.finish(), advice, named)
}
