//! The agent's engine: the one owner of the loaded eBPF object. It loads
//! and attaches the programs, takes the seed census, drops every
//! capability it no longer needs, starts the unprivileged HTTP process
//! (`supervise`), then runs the loop: records from the ring into the
//! pipeline and its sinks (the table, the metrics, the learner), and a
//! census every `snapshot_interval`, after the records written before it.

use std::{
    future::Future,
    sync::{atomic::AtomicU64, Arc, Mutex},
};

use thiserror::Error;

use super::{
    config::{AgentConfig, NetnsScope},
    httpd::HttpdConfig,
    state::{AgentError, AgentState},
    supervise::{self, HttpError, Serving},
};
use crate::{
    bpf::{ring::Drained, Bpf, Iterators, LoadError, LoadOptions},
    caps,
};

#[derive(Debug, Error)]
pub enum EngineError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("dropping capabilities: {0}")]
    Caps(#[from] ::caps::errors::CapsError),
    #[error("asking the event ring's reader to flush: {0}")]
    Flush(std::io::Error),
    #[error("the event ring's reader thread ended")]
    ReaderEnded,
}

/// `/sockets` pages rendered at once (one socket pair each to the HTTP
/// process); more get 503.
const MAX_RENDERS: usize = 4;
/// The quiet agent's ring: 4 MiB (resident: the ring is mapped whole)
/// holds ~24k records, 0.24 s of 100k records/s at the reader's 100 ms
/// wake-up; recording every close, the object's 8 MiB.
const QUIET_RING_BYTES: u32 = 4 << 20;

pub struct Engine {
    bpf: Bpf,
    state: Arc<Mutex<AgentState>>,
    cfg: AgentConfig,
    /// What the start-up line says.
    pub banner: String,
}

impl Engine {
    /// Loads, takes the seed census, drops capabilities, starts serving.
    pub fn start(cfg: AgentConfig) -> Result<Self, EngineError> {
        match crate::rlimit::raise_nofile() {
            Ok((soft, _)) => log::debug!("RLIMIT_NOFILE soft limit {soft}"),
            Err(e) => log::warn!("cannot raise RLIMIT_NOFILE: {e}"),
        }
        let mut bpf = Bpf::open(&LoadOptions {
            tracing: true,
            turns: cfg.http_keepalive,
            iterators: Iterators::Try,
            btf: cfg.btf.clone(),
            hz: cfg.hz,
            ring_bytes: cfg
                .ring_size
                .or((!cfg.http_keepalive).then_some(QUIET_RING_BYTES)),
            attach: cfg.attach,
            // Scoped to namespaces: the kernel drops everyone else's events
            // before they reach the ring (kept current at each census).
            netns_filter: !matches!(cfg.netns, NetnsScope::All),
            // Short connections make no records: only keepalive, long idle and
            // resets (every close with the HTTP keep-alive view).
            quiet: (!cfg.http_keepalive).then_some(cfg.idle_kill_min),
            quiet_probes: cfg.probes_in_kernel(),
            // Its table takes timers from snapshots; metrics count no arming.
            no_arming: true,
            protect: cfg.protect,
        })?;
        super::privileges::check_caps(&cfg.netns)?;
        let restarts = Arc::new(AtomicU64::new(0));
        let mut state = AgentState::new(&cfg, &bpf, Arc::clone(&restarts))?;
        if cfg.protect {
            state.start_protect(&mut bpf)?;
        }
        if cfg.log_events.is_some() {
            state.start_event_log()?;
        }
        if cfg.otlp_endpoint.is_some() {
            let node = std::env::var(super::otlp::NODE_NAME_ENV).ok();
            state.start_otlp(super::otlp::resource(
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .unwrap_or_default()
                    .trim(),
                node.as_deref(),
            ));
        }
        let n = state.snapshot(&mut bpf)?;
        let state = Arc::new(Mutex::new(state));
        // Only what runs need; CAP_SETUID/CAP_SETGID/CAP_SETPCAP also for
        // the exec of each HTTP process, which uses them to switch users
        // and empty its bounding set, then drops them.
        let keep = super::privileges::runtime_caps(&cfg.netns);
        let for_exec: Vec<caps::Capability> = [
            caps::Capability::CAP_SETUID,
            caps::Capability::CAP_SETGID,
            caps::Capability::CAP_SETPCAP,
        ]
        .into_iter()
        .filter(|c| keep.contains(c))
        .collect();
        let bounding = match caps::keep_only(&keep, &for_exec)? {
            caps::Bounding::Reduced => "bounding set reduced to what it keeps",
            caps::Bounding::LeftWithoutSetpcap => "bounding set left as started (no CAP_SETPCAP)",
        };
        // Started after the drop: threads keep the sets they start with.
        let served = supervise::run(
            HttpdConfig {
                listen: cfg.listen,
                web_config: cfg.web_config.clone(),
                allowed_hosts: cfg.allowed_hosts.clone(),
                max_connections: cfg.max_connections,
                max_renders: MAX_RENDERS,
                fds: vec![],
                lifeline: -1,
                otlp: cfg.otlp_endpoint.clone().map(|e| (e, cfg.otlp_interval)),
            },
            Arc::clone(&state),
            restarts,
        )?;
        let kept: Vec<&str> = keep.iter().map(|c| caps::name(*c)).collect();
        let banner = banner(&cfg, &served, n, &kept, bounding);
        Ok(Engine {
            bpf,
            state,
            cfg,
            banner,
        })
    }

    /// The loop, until `stop` resolves.
    pub async fn run(mut self, stop: impl Future<Output = ()>) -> Result<(), EngineError> {
        // After the capabilities were dropped: a thread keeps the sets it
        // was started with. Records waited in the kernel's ring until now.
        let mut ring = self.bpf.events_thread()?;
        let mut tick = tokio::time::interval(self.cfg.snapshot_interval);
        tick.tick().await; // the first tick fires at once: the seed census was just taken
        tokio::pin!(stop);
        // A census is due once the records written before it are in.
        let mut due = false;
        loop {
            tokio::select! {
                () = &mut stop => break,
                m = ring.next() => match m {
                    Some(Drained::Records(mut batch)) => {
                        self.state.lock().expect("lock").on_records(&mut batch);
                    }
                    // Records made before this census first: a connection
                    // accepted on a listener that has closed since is still
                    // the server's. The ring thread keeps draining meanwhile.
                    Some(Drained::Flushed) if due => {
                        due = false;
                        if let Err(e) = self.state.lock().expect("lock").snapshot(&mut self.bpf) {
                            log::warn!("snapshot failed: {e}");
                        }
                    }
                    Some(Drained::Flushed) => {}
                    None => return Err(EngineError::ReaderEnded),
                },
                _ = tick.tick(), if !due => {
                    ring.flush().map_err(EngineError::Flush)?;
                    due = true;
                }
            }
        }
        // The HTTP process ends with this one (its lifeline pipe closes);
        // dropping the object closes every program, map
        // and link fd: the kernel detaches them.
        drop(self.bpf);
        Ok(())
    }
}

fn banner(
    cfg: &AgentConfig,
    served: &Serving,
    sockets: usize,
    kept: &[&str],
    bounding: &str,
) -> String {
    let scheme = if served.tls { "https" } else { "http" };
    let serving_as = if served.switched {
        format!(
            "HTTP served by process {} without capabilities as uid {}",
            served.pid, served.uid
        )
    } else {
        format!(
            "HTTP served by process {} without capabilities as uid {} (no CAP_SETUID/CAP_SETGID to switch to {})",
            served.pid,
            served.uid,
            super::sandbox::NOBODY
        )
    };
    let otlp = cfg.otlp_endpoint.as_ref().map_or(String::new(), |e| {
        format!(
            "; exporting over OTLP to {e} (metrics every {}, events within 1s)",
            crate::duration::format(cfg.otlp_interval)
        )
    });
    format!(
        "kato agent: listening on {scheme}://{} (/metrics, /sockets, /healthz); {sockets} sockets in {}; keeping {}; {bounding}; {serving_as}{otlp}",
        served.addr,
        match &cfg.netns {
            NetnsScope::All => "all network namespaces".to_owned(),
            NetnsScope::Own => "its own network namespace".to_owned(),
            NetnsScope::Listed(l) => format!("network namespaces {}", l.join(", ")),
        },
        kept.join(", ")
    )
}
