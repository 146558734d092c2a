//! The event-throughput load with a share of dead peers (issue 27): about
//! one connection in ten stops hearing its peer while the rest keep
//! probing every second, and every keepalive timeout the kernel takes must
//! reach the agent, with nothing lost.

use std::{
    fmt::Write as _,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use crate::harness::{
    cpu_ticks, events_lost, http_get, metric, metric_sum, spawn_agent_with, tcpext, Netns,
};

/// The connections that die: the server-to-client segments of those whose
/// client port lies in the first tenth of the namespace's ephemeral range
/// (1024-65000, set in `Netns::new`; the holders listen below 1024). Their
/// clients' probes get no answer and their servers' probes no client: both
/// ends time out.
const DYING: &str = "tcp sport < 1024 tcp dport 1024-7421";
/// The same sockets, as `ss` selects them.
const DYING_SS: &str = "( sport >= :1024 and sport <= :7421 and dport < :1024 ) or ( dport >= :1024 and dport <= :7421 and sport < :1024 )";

pub struct DeadRun {
    pub secs: u64,
    /// Established sockets the rule would kill, before it went in.
    pub dying: u64,
    /// Of those, the ones the kernel closed during the run (`ss`).
    pub died: u64,
    /// Keepalive timeouts by the kernel's count (TcpExt TCPAbortOnTimeout,
    /// which also counts retransmission timeouts: none on this loopback).
    pub kernel_timeouts: u64,
    pub kato_timeouts: f64,
    pub lost: f64,
    /// Of `lost`, the routine records shed to keep room for verdicts.
    pub shed: f64,
    pub processed_per_s: f64,
    pub agent_cpu: f64,
    /// How long after the window the agent's count took to reach the
    /// kernel's (or [`CATCH_UP`], when it did not).
    pub caught_up_s: f64,
}

/// How long the agent's timeout count may take to reach the kernel's
/// after the window: longer than a snapshot of 200,000 sockets.
const CATCH_UP: Duration = Duration::from_secs(20);

fn established(ns: &Netns, filter: &str) -> Result<u64> {
    let out = ns
        .cmd("ss")
        .args(["-Htn", "state", "established", filter])
        .output()?;
    Ok(String::from_utf8_lossy(&out.stdout).lines().count() as u64)
}

/// Runs in `ns`, whose holders keep their connections probing every second;
/// the rule stays (the namespace goes after).
pub fn run(kato: &str, ns: &Netns, secs: u64) -> Result<DeadRun> {
    eprintln!("xtask bench: event throughput with a tenth of the peers dead");
    let (agent, addr) = spawn_agent_with(kato, ns, "30s", &[])?;
    std::thread::sleep(Duration::from_secs(5));
    let scrape = || -> Result<(f64, f64, f64, f64)> {
        let (_, m) = http_get(&addr, "/metrics")?;
        Ok((
            metric_sum(&m, "kato_keepalive_timeouts_total"),
            events_lost(&m),
            metric(&m, "kato_events_lost_total{cause=\"shed\"}"),
            metric(&m, "kato_events_processed_total"),
        ))
    };
    let dying = established(ns, DYING_SS)?;
    let a0 = tcpext(ns, "TCPAbortOnTimeout")?;
    let (k0, l0, s0, p0) = scrape()?;
    let c0 = cpu_ticks(agent.id())?;
    let t0 = Instant::now();
    let rule = format!(
        "add table inet dead; add chain inet dead in {{ type filter hook input priority 0; }}; add rule inet dead in {DYING} drop"
    );
    let ok = ns.cmd("nft").arg(&rule).status()?.success();
    anyhow::ensure!(ok, "nft: {rule}");
    std::thread::sleep(Duration::from_secs(secs));
    // The kernel's count and the agent's, read a moment apart; again, for
    // up to CATCH_UP, while the agent's reader is behind (records wait in
    // the ring while a snapshot of 100,000s of sockets is decoded). How
    // long it took is reported: a timeout reported late is still reported.
    let dt = t0.elapsed().as_secs_f64();
    let c1 = cpu_ticks(agent.id())?;
    let waiting = Instant::now();
    let (a1, (k1, l1, s1, p1)) = loop {
        let a1 = tcpext(ns, "TCPAbortOnTimeout")?;
        let m = scrape()?;
        if m.0 - k0 >= (a1 - a0) as f64 || waiting.elapsed() >= CATCH_UP {
            break (a1, m);
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    let caught_up_s = waiting.elapsed().as_secs_f64();
    let left = established(ns, DYING_SS).context("ss")?;
    drop(agent);
    Ok(DeadRun {
        secs,
        dying,
        died: dying.saturating_sub(left),
        kernel_timeouts: a1 - a0,
        kato_timeouts: k1 - k0,
        lost: l1 - l0,
        shed: s1 - s0,
        processed_per_s: (p1 - p0) / (dt + caught_up_s),
        agent_cpu: (c1 - c0) as f64 / 100.0 / dt,
        caught_up_s,
    })
}

pub fn report(d: &DeadRun) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "\nWith dead peers: after the runs above, the default agent again, and an nftables rule dropping the server-to-client segments of every connection whose client port lies in the first tenth of the ephemeral range (`{DYING}`): both ends of those connections stop hearing each other and time out, while the rest keep probing. Over {} s: the sockets the rule caught ({} established before it; `ss`), those the kernel closed meanwhile (by a keepalive timeout, or by the reset their peer sent when its own timed out), the kernel's keepalive timeouts (TcpExt TCPAbortOnTimeout in the namespace) and those the agent reported (`kato_keepalive_timeouts_total`). The counts are read again every 200 ms, for up to {} s, until the agent's reaches the kernel's; how long that took is the last column. Target: every timeout reported, 0 lost. Lost records include the routine ones (probes) the kernel shed to keep the last quarter of the ring for verdict records (timeouts, resets, closes).\n",
        d.secs,
        d.dying,
        CATCH_UP.as_secs()
    );
    let _ = writeln!(
        s,
        "| sockets caught | closed by the kernel | timeouts (kernel) | timeouts kato reported | lost | of them shed | records processed/s | agent CPU | reported in full after |"
    );
    let _ = writeln!(
        s,
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
    );
    let caught = if d.kato_timeouts >= d.kernel_timeouts as f64 {
        format!("{:.1} s", d.caught_up_s)
    } else {
        format!("not within {} s", CATCH_UP.as_secs())
    };
    let _ = writeln!(
        s,
        "| {} | {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {:.1}% of a core | {caught} |",
        d.dying,
        d.died,
        d.kernel_timeouts,
        d.kato_timeouts,
        d.lost,
        d.shed,
        d.processed_per_s,
        d.agent_cpu * 100.0
    );
    s
}
