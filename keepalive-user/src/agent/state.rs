//! Everything the agent knows, behind one lock: the loaded programs, the
//! socket table, the metrics. The run loop feeds it events and snapshots;
//! HTTP handlers read it.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    time::Instant,
};

use thiserror::Error;

use super::{
    config::{AgentConfig, NetnsScope},
    metrics::{LabelCtx, Metrics},
};
use crate::{
    caps,
    closes::CloseTracker,
    event::{DecodeError, Derived, Deriver, Record},
    loader::{LoadError, LoadOptions},
    netns::{self, NetnsError},
    policy::Policy,
    sockets::{
        query::Query,
        snapshot::{SnapshotError, Snapshotter, Source, Sysctls, Targets},
        table::SocketTable,
    },
    stream::EventStream,
    tcp::TcpState,
};

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("kato agent needs {0} to watch other network namespaces (or set netns = \"self\")")]
    Privilege(&'static str),
}

pub struct AgentState {
    snap: Snapshotter,
    scope: NetnsScope,
    table: SocketTable,
    deriver: Deriver,
    metrics: Metrics,
    /// (netns, port) of listening sockets: the ports `local_port` may label.
    listening: HashSet<(u32, u16)>,
    sysctls: HashMap<u32, Sysctls>,
    /// Namespaces whose events count (None: all, the default scope).
    watched: Option<HashSet<u32>>,
    hz: u32,
    reasons: BTreeMap<u32, String>,
    undecodable: u64,
    processed: u64,
    started: Instant,
    derived: Vec<Derived>,
    closes: CloseTracker,
    policy: Policy,
}

impl AgentState {
    /// Capabilities needed after start-up, for this scope.
    pub fn runtime_caps(scope: &NetnsScope) -> Vec<u32> {
        let mut keep = vec![caps::CAP_BPF, caps::CAP_PERFMON];
        match scope {
            NetnsScope::Own => {}
            NetnsScope::Listed(_) => keep.push(caps::CAP_SYS_ADMIN),
            NetnsScope::All => keep.extend([caps::CAP_SYS_ADMIN, caps::CAP_SYS_PTRACE]),
        }
        keep
    }

    /// Loads and attaches everything; checks the scope can be served.
    pub fn new(cfg: &AgentConfig) -> Result<(Self, EventStream), AgentError> {
        let opts = LoadOptions {
            tracing: true,
            btf: cfg.btf.clone(),
            hz: cfg.hz,
            ring_bytes: cfg.ring_bytes,
            attach: cfg.attach,
            // Scoped to namespaces: the kernel drops everyone else's events
            // before they reach the ring (kept current in `targets`).
            netns_filter: !matches!(cfg.netns, NetnsScope::All),
        };
        let mut snap = Snapshotter::new(Source::Auto, &opts, true)?;
        if let Some(why) = &snap.degraded {
            log::warn!("{why}");
        }
        for cap in Self::runtime_caps(&cfg.netns) {
            if !caps::has(cap) {
                return Err(AgentError::Privilege(caps::name(cap)));
            }
        }
        let probes = snap.probes.as_mut().expect("opened with probes");
        probes.attach_tracing(cfg.attach)?;
        if cfg.http_keepalive {
            probes.attach_turns()?;
        }
        let stream = probes.events()?;
        let (hz, reasons, release) = (
            probes.kernel.hz,
            probes.kernel.reset_reasons.clone(),
            probes.kernel.release.clone(),
        );
        let mut metrics = Metrics::new(
            &cfg.label_by,
            cfg.label_limit,
            &release,
            probes.attach.as_ref().map_or("none", |a| a.kind),
        );
        metrics.turns = cfg.http_keepalive;
        let state = AgentState {
            hz,
            reasons,
            snap,
            scope: cfg.netns.clone(),
            table: SocketTable::new(cfg.table_capacity),
            deriver: Deriver::with_idle_kill(hz, cfg.idle_kill_min.as_secs_f64()),
            metrics,
            listening: HashSet::new(),
            sysctls: HashMap::new(),
            watched: None,
            undecodable: 0,
            processed: 0,
            started: Instant::now(),
            derived: Vec::new(),
            closes: CloseTracker::default(),
            policy: cfg.policy.clone(),
        };
        if let NetnsScope::Listed(names) = &cfg.netns {
            for n in names {
                netns::resolve(n)?;
            }
        }
        Ok((state, stream))
    }

    /// The namespaces to snapshot now; also fixes whose events count.
    fn targets(&mut self) -> Result<Targets, AgentError> {
        let own = netns::current()
            .map_err(|e| AgentError::Snapshot(SnapshotError::OwnNetns(e)))?
            .inode;
        let targets: Targets = match &self.scope {
            NetnsScope::Own => vec![None],
            NetnsScope::All => netns::list()
                .into_iter()
                .map(|n| (n.inode != own).then_some(n))
                .collect(),
            NetnsScope::Listed(names) => {
                let mut t = vec![];
                for n in names {
                    match netns::resolve(n) {
                        Ok(r) if r.inode == own => t.push(None),
                        Ok(r) => t.push(Some(r)),
                        Err(e) => log::warn!("skipping namespace: {e}"),
                    }
                }
                t
            }
        };
        self.watched = match self.scope {
            NetnsScope::All => None,
            _ => Some(
                targets
                    .iter()
                    .map(|t| t.as_ref().map_or(own, |n| n.inode))
                    .collect(),
            ),
        };
        if let (Some(w), Some(p)) = (&self.watched, self.snap.probes.as_mut()) {
            p.watch_netns(w).map_err(AgentError::from)?;
        }
        Ok(targets)
    }

    /// Reconciles the table with a full snapshot of every watched namespace.
    pub fn snapshot(&mut self) -> Result<usize, AgentError> {
        let t = Instant::now();
        let targets = self.targets()?;
        let snaps = self.snap.take(&targets)?;
        self.listening.clear();
        let mut n = 0;
        for s in snaps {
            n += s.sockets.len();
            for sock in s.sockets.iter().filter(|x| x.state == TcpState::Listen) {
                self.listening.insert((s.inode, sock.local.port()));
            }
            if let Some(sys) = s.sysctls {
                self.sysctls.insert(s.inode, sys);
            }
            self.table.apply_snapshot(s.inode, s.sockets);
        }
        self.metrics
            .on_snapshot(t.elapsed().as_secs_f64(), &self.sysctls);
        log::debug!("snapshot: {n} sockets in {:?}", t.elapsed());
        Ok(n)
    }

    /// Applies a batch of ring-buffer records.
    pub fn on_records(&mut self, batch: &mut Vec<Result<Record, DecodeError>>) {
        for rec in batch.drain(..) {
            let rec = match rec {
                Ok(r) => r,
                Err(e) => {
                    self.undecodable += 1;
                    log::debug!("undecodable event: {e}");
                    continue;
                }
            };
            if self
                .watched
                .as_ref()
                .is_some_and(|w| !w.contains(&rec.netns))
            {
                continue;
            }
            self.processed += 1;
            self.derived.clear();
            self.deriver.derive(&rec, &mut self.derived);
            let reasons = &self.reasons;
            let name = |c: u32| {
                reasons
                    .get(&c)
                    .cloned()
                    .unwrap_or_else(|| format!("UNKNOWN_{c}"))
            };
            let comm = self.table.get(rec.sk).and_then(|s| s.comm.as_deref());
            let closed = self.closes.on(&rec, &self.derived, self.hz);
            let policy = self
                .policy
                .lookup(rec.local, rec.remote)
                .map(|r| r.text.as_str());
            let ctx = LabelCtx {
                local_port_listening: self.listening.contains(&(rec.netns, rec.local.port())),
                comm,
                policy,
                closed,
            };
            self.metrics
                .on_event(&rec, &self.derived, &ctx, self.hz, name);
            self.table.apply_event(&rec, &self.derived, name, self.hz);
        }
    }

    /// The Prometheus exposition, refreshed from the table and kernel counters.
    pub fn metrics_text(&mut self) -> String {
        let kernel = self
            .snap
            .probes
            .as_ref()
            .and_then(|p| p.counters().ok())
            .unwrap_or_default();
        let policy = &self.policy;
        self.metrics.refresh(
            self.table.iter(),
            |s| policy.classify(s).map(|(r, _)| r),
            kernel,
            self.table.evictions,
            self.undecodable,
        );
        self.metrics.encode()
    }

    pub fn sockets_json(&self, q: &Query) -> String {
        let mut sockets = self.table.sockets();
        for s in &mut sockets {
            self.policy.annotate(s);
        }
        serde_json::to_string(&q.apply(sockets)).expect("serializable")
    }

    pub fn health_json(&self) -> String {
        serde_json::json!({
            "status": "ok",
            "uptime_s": self.started.elapsed().as_secs(),
            "sockets": self.table.len(),
            "events_processed": self.processed,
            "degraded": self.snap.degraded,
        })
        .to_string()
    }
}
