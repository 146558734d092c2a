//! Everything the agent knows, behind one lock: the pipeline, the socket
//! table, the metrics. The run loop owns the loaded programs ([`Bpf`]) and
//! lends them for snapshots; it feeds records in; HTTP handlers read.

use std::{
    collections::{HashMap, HashSet},
    ops::ControlFlow,
    sync::Arc,
    time::Instant,
};

use thiserror::Error;

use super::{
    config::{AgentConfig, NetnsScope},
    metrics::{LabelCtx, Metrics, Side},
    subscribe::{Context, LearnerFeed, Subscriber},
};
use crate::{
    bpf::{Bpf, CounterMap, LoadError},
    caps,
    events::{DecodeError, Observation, Pipeline, Record, ResetReasons, Sink},
    learned::{Destination, Learner, StateError},
    netns::{self, NetnsError},
    owner::Owner,
    policy::Policy,
    sockets::{
        snapshot::{Listing, SnapshotError, Snapshotter, Sysctls, Targets},
        table::SocketTable,
    },
    tcp::TcpState,
};

mod pages;

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    #[error(transparent)]
    Netns(#[from] NetnsError),
    #[error("learned idle timeouts: {0}")]
    State(#[from] StateError),
    #[error("kato agent needs {0} to watch other network namespaces (or set netns = \"self\")")]
    Privilege(&'static str),
    #[error("protect = true needs CAP_NET_ADMIN (attaching to the cgroup hierarchy)")]
    ProtectPrivilege,
    #[error("starting the event log: {0}")]
    EventLog(std::io::Error),
}

/// The engine's side of the pipeline: names each observation's context
/// from the table and the policy, hands it to every subscriber, then
/// updates the table (so subscribers see the socket as it was before).
struct AgentSink {
    table: SocketTable,
    metrics: Metrics,
    learn: LearnerFeed,
    history: super::history::History,
    /// Subscribers added with [`AgentState::subscribe`], after the built-in ones.
    extra: Vec<Box<dyn Subscriber>>,
    /// (netns, port) of listening sockets: the ports `local_port` may label.
    listening: HashSet<(u32, u16)>,
    policy: Policy,
    resolver: crate::workload::Resolver,
}

impl AgentSink {
    /// Which end `rec`'s socket is: the kernel's passive-open mark, or for
    /// a reply without a full socket (TIME_WAIT, none), whether its local
    /// port is a listener's.
    fn side(&self, rec: &Record) -> Side {
        if rec.mini {
            Side::of_passive(self.listening.contains(&(rec.netns, rec.local.port())))
        } else {
            Side::of_passive(rec.passive)
        }
    }

    /// The idle-timeout rule of `rec`'s path: the path's, or its flow's
    /// conntrack where that is shorter (as the table last saw the flow).
    fn rule(&self, rec: &Record) -> Option<&crate::policy::Rule> {
        let tracked = self
            .table
            .get(rec.netns, rec.sk)
            .and_then(|e| e.socket.conntrack());
        self.policy
            .rule_for_flow(rec.netns, rec.local, rec.remote, tracked)
    }
}

impl Sink for AgentSink {
    fn owner(&mut self, rec: &Record) -> Option<Owner> {
        let s = &self.table.get(rec.netns, rec.sk)?.socket;
        Some(Owner {
            pid: s.pid()?,
            comm: s.comm_arc()?,
        })
    }

    fn path_timeout(&mut self, rec: &Record) -> Option<f64> {
        self.rule(rec).map(|r| r.timeout.as_secs_f64())
    }

    fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()> {
        let rec = obs.record;
        // Cached per cgroup: the event names its workload before any snapshot.
        let workload = rec.cgroup_id.map(|id| self.resolver.resolve(id));
        let side = self.side(rec);
        let ctx = Context {
            labels: LabelCtx {
                side,
                comm: obs.owner.as_ref().map(|o| &*o.comm),
                workload: workload.as_deref(),
                rule: self.rule(rec).map(|r| (r.source, r.path())),
            },
            dest: Destination::of(rec.local, rec.remote, side == Side::Server),
            policy: &self.policy,
            cookie: rec.cookie.or_else(|| {
                self.table
                    .get(rec.netns, rec.sk)
                    .and_then(|e| e.socket.socket_cookie())
            }),
        };
        let built: [&mut dyn Subscriber; 3] =
            [&mut self.metrics, &mut self.learn, &mut self.history];
        for s in built.into_iter().chain(
            self.extra
                .iter_mut()
                .map(|b| &mut **b as &mut dyn Subscriber),
        ) {
            s.seen(obs, &ctx);
        }
        self.table.apply(obs);
        ControlFlow::Continue(())
    }
}

/// The owned listeners and connections of a snapshot, as the task walk
/// reported them, for [`Bpf::seed_owners`].
fn owner_records<'a>(
    sockets: impl Iterator<Item = &'a crate::sockets::Socket>,
) -> Vec<keepalive_common::OwnerRecord> {
    sockets
        .filter_map(|s| {
            let (pid, comm) = (s.pid?, s.comm.as_ref()?);
            let mut c = [0u8; 16];
            let n = comm.len().min(15);
            c[..n].copy_from_slice(&comm.as_bytes()[..n]);
            Some(keepalive_common::OwnerRecord {
                sk: s.sock,
                tgid: pid,
                comm: c,
                netns: s.netns,
                sport: s.local.port(),
                state: s.state as u8,
                passive: u8::from(s.side == Some(Side::Server)),
                ..Default::default()
            })
        })
        .collect()
}

pub struct AgentState {
    pipeline: Pipeline,
    sink: AgentSink,
    snapshotter: Snapshotter,
    scope: NetnsScope,
    /// `netns = [...]`: resolved and opened once, at start, while the
    /// agent still has every capability.
    listed: Vec<netns::NetnsRef>,
    counters: Arc<CounterMap>,
    http_restarts: Arc<std::sync::atomic::AtomicU64>,
    started: Instant,
    /// Where the learner's state is saved (None: memory only).
    state_dir: Option<crate::files::StateDir>,
    /// `protect = true`: kato protect in the agent.
    protect: Option<super::protect::AgentProtect>,
    /// `log_events`: the event log's counters.
    log_counts: Option<Arc<super::eventlog::LogCounts>>,
    /// `otlp_endpoint`: what the exporter is handed.
    otlp: Option<super::otlp::source::Source>,
    /// `kato_kernel_keepalive_probes_total`.
    kernel_probes: super::kernel_count::KernelProbes,
}

impl AgentState {
    /// Builds the state around loaded, attached programs.
    /// `http_restarts`: HTTP processes replaced so far (`supervise`).
    pub fn new(
        cfg: &AgentConfig,
        bpf: &Bpf,
        http_restarts: Arc<std::sync::atomic::AtomicU64>,
    ) -> Result<Self, AgentError> {
        let snapshotter = Snapshotter::new(Listing::Auto, Some(bpf));
        if let Some(why) = &snapshotter.degraded {
            log::warn!("{why}");
        }
        let k = &bpf.kernel;
        let attach = bpf.attach.as_ref().map_or("none", |a| a.kind.name());
        let mut metrics = Metrics::new(
            &cfg.label_by,
            cfg.label_limit,
            &k.release,
            attach,
            cfg.http_keepalive,
        );
        let capacity = cfg.table_capacity.unwrap_or_else(|| {
            let (n, limit) = super::capacity::default_capacity();
            log::info!("table capacity {n} (memory limit {limit:?})");
            n
        });
        metrics.set_capacity(capacity);
        if cfg.probes_in_kernel() {
            metrics.count_probes_in_kernel();
        }
        let listed = match &cfg.netns {
            NetnsScope::Listed(names) => names
                .iter()
                .map(|n| netns::resolve(n))
                .collect::<Result<Vec<_>, _>>()?,
            _ => vec![],
        };
        let (learner, state_dir) = match &cfg.state_dir {
            Some(dir) => {
                let dir = crate::files::StateDir::open(dir).map_err(StateError::from)?;
                let learner = Learner::load(&dir)?;
                (learner, Some(dir))
            }
            None => (Learner::default(), None),
        };
        let mut state = AgentState {
            pipeline: Pipeline::new(k.hz, ResetReasons(k.reset_reasons.clone())),
            sink: AgentSink {
                table: SocketTable::new(capacity),
                metrics,
                listening: HashSet::new(),
                policy: match crate::cloud::detect() {
                    Some(c) if cfg.cloud_defaults => cfg.policy().with_assumed([c.rule()]),
                    _ => cfg.policy(),
                },
                learn: LearnerFeed {
                    learner,
                    idle_kill_min: cfg.idle_kill_min.as_secs_f64(),
                },
                history: super::history::History::new(cfg.history_events, cfg.history_retention),
                extra: Vec::new(),
                resolver: crate::workload::Resolver::with_cgroups(
                    match &cfg.cgroup_root {
                        Some(root) => crate::workload::cgroupfs::Cgroups::at(Some(root.clone())),
                        None => crate::workload::cgroupfs::Cgroups::new(),
                    },
                    cfg.containerd_socket.clone(),
                ),
            },
            state_dir,
            protect: None,
            log_counts: None,
            otlp: None,
            snapshotter,
            scope: cfg.netns.clone(),
            listed,
            counters: bpf.counter_map(),
            http_restarts,
            started: Instant::now(),
            kernel_probes: Default::default(),
        };
        // The kernel's count from now, as kato's from its programs' load.
        if let Ok(own) = netns::current() {
            state.kernel_probes =
                super::kernel_count::KernelProbes::start(&state.scoped(own.inode).0, own.inode);
        }
        Ok(state)
    }

    /// The namespaces in scope now (None: the agent's own), and how many
    /// vanished while being listed.
    fn scoped(&self, own: u32) -> (Targets, usize) {
        let mine = |n: netns::NetnsRef| (n.inode != own).then_some(n);
        match &self.scope {
            NetnsScope::Own => (vec![None], 0),
            NetnsScope::All => {
                let l = netns::list();
                (l.namespaces.into_iter().map(mine).collect(), l.vanished)
            }
            NetnsScope::Listed(_) => (self.listed.iter().cloned().map(mine).collect(), 0),
        }
    }

    /// The namespaces to snapshot now, and how many vanished while being
    /// listed; also fixes whose events count, in the kernel and in the
    /// pipeline.
    fn targets(&mut self, bpf: &mut Bpf) -> Result<(Targets, usize), AgentError> {
        let own = netns::current()
            .map_err(|e| AgentError::Snapshot(SnapshotError::OwnNetns(e)))?
            .inode;
        let (targets, vanished) = self.scoped(own);
        self.kernel_probes.rescope(&targets, own);
        let watched: Option<HashSet<u32>> = match self.scope {
            NetnsScope::All => None,
            _ => Some(
                targets
                    .iter()
                    .map(|t| t.as_ref().map_or(own, |n| n.inode))
                    .collect(),
            ),
        };
        if let Some(w) = &watched {
            bpf.watch_netns(w)?;
        }
        self.pipeline.watch(watched);
        Ok((targets, vanished))
    }

    /// Adds a consumer of every observation from now on, after metrics
    /// and the learner.
    pub fn subscribe(&mut self, s: Box<dyn Subscriber>) {
        self.sink.extra.push(s);
    }

    /// Writes each reported event to stdout as a JSON line (`log_events`).
    pub fn start_event_log(&mut self) -> Result<(), AgentError> {
        let counts = Arc::new(super::eventlog::LogCounts::default());
        let log =
            super::eventlog::EventLog::start(Arc::clone(&counts)).map_err(AgentError::EventLog)?;
        self.subscribe(Box::new(log));
        self.log_counts = Some(counts);
        Ok(())
    }

    /// Queues each reported event as an OTLP log record for the HTTP
    /// process's exporter (`otlp_endpoint`), and counts the exports.
    pub fn start_otlp(&mut self, resource: super::otlp::proto::resource::v1::Resource) {
        let outbox = super::otlp::logs::SharedOutbox::default();
        self.subscribe(Box::new(super::otlp::logs::LogFeed::new(Arc::clone(
            &outbox,
        ))));
        self.otlp = Some(super::otlp::source::Source::new(
            self.sink.metrics.registry(),
            outbox,
            resource,
        ));
    }

    /// Turns `kato protect` on (before the seed census: nothing opened
    /// from then on is missed).
    pub fn start_protect(&mut self, bpf: &mut Bpf) -> Result<(), AgentError> {
        if !caps::has(caps::CAP_NET_ADMIN) {
            return Err(AgentError::ProtectPrivilege);
        }
        let filter = !matches!(self.scope, NetnsScope::All);
        // The watched set first: the program reads it.
        self.targets(bpf)?;
        self.protect = Some(
            super::protect::AgentProtect::start(bpf, &self.sink.policy, filter)
                .map_err(AgentError::Load)?,
        );
        Ok(())
    }

    /// Reconciles the table with a full snapshot of every watched namespace.
    pub fn snapshot(&mut self, bpf: &mut Bpf) -> Result<usize, AgentError> {
        let t = Instant::now();
        // A quiet ring brings no record to end a hold: the tick does.
        let _ = self.pipeline.settle_now(&mut self.sink);
        let (targets, vanished) = self.targets(bpf)?;
        let sink = &mut self.sink;
        let mut snaps = crate::census::take(
            &self.snapshotter,
            Some(bpf),
            &targets,
            &mut sink.resolver,
            &mut sink.policy,
        )?;
        sink.listening.clear();
        let mut sysctls: HashMap<u32, Sysctls> = HashMap::new();
        let mut n = 0;
        for s in &snaps {
            for sock in s.sockets.iter().filter(|x| x.state == TcpState::Listen) {
                sink.listening.insert((s.inode, sock.local.port()));
            }
        }
        let listening = &sink.listening;
        sink.learn
            .learner
            .snapshot(snaps.iter().flat_map(|s| &s.sockets), |x| {
                listening.contains(&(x.netns, x.local.port()))
            });
        sink.policy.learned = sink.learn.learner.rules();
        if let Some(p) = &mut self.protect {
            p.after_census(bpf, &targets, &mut snaps, &sink.policy);
            sink.metrics.on_protect(&mut p.made, p.protected_now);
        }
        if let Some(dir) = &self.state_dir {
            if let Err(e) = sink.learn.learner.save(dir) {
                log::warn!("saving learned idle timeouts: {e}");
            }
        }
        let owned = owner_records(snaps.iter().flat_map(|s| &s.sockets));
        if let Err(e) = bpf.seed_owners(&owned) {
            log::warn!("telling the programs sockets' owners: {e}");
        }
        self.pipeline.know_listeners(&owned);
        for s in snaps {
            n += s.sockets.len();
            if let Some(sys) = s.sysctls {
                sysctls.insert(s.inode, sys);
            }
            let policy = &sink.policy;
            // Verdicts change only with the policy, which changes only
            // here: taken once, so scrapes merely count them.
            sink.table.apply_snapshot(s.inode, s.sockets, |x, seen| {
                policy
                    .classify_watched(x, seen)
                    .map(|(r, rule)| (r, rule.map(|x| x.source)))
            });
        }
        let table = &sink.table;
        sink.history
            .close_missing(|ns, sk| table.get(ns, sk).is_some());
        sink.metrics
            .on_snapshot(t.elapsed().as_secs_f64(), &sysctls, vanished);
        log::debug!("snapshot: {n} sockets in {:?}", t.elapsed());
        // The snapshot's buffers (and, the first time, loading's BTF
        // copies) are freed: resident memory follows the table, not the
        // largest snapshot so far.
        crate::heap::release_freed();
        Ok(n)
    }

    /// Applies a batch of ring-buffer records, and lets go of records held
    /// for a pairing that did not come.
    pub fn on_records(&mut self, batch: &mut Vec<Result<Record, DecodeError>>) {
        let _ = self.pipeline.feed(batch, &mut self.sink);
        let _ = self.pipeline.settle_now(&mut self.sink);
    }

    /// The Prometheus exposition, refreshed from the table and kernel counters.
    pub fn metrics_text(&mut self) -> String {
        self.refresh_metrics();
        self.sink.metrics.encode()
    }

    /// Brings every scrape-time metric up to date.
    pub fn refresh_metrics(&mut self) {
        let kernel = self.counters.read();
        let sink = &mut self.sink;
        sink.metrics.refresh(
            sink.table.tally(),
            kernel,
            sink.table.evictions,
            self.pipeline.undecodable,
        );
        sink.metrics.set_learned(sink.learn.learner.iter());
        sink.metrics.set_kernel_probes(self.kernel_probes.total());
        sink.metrics.set_http_restarts(
            self.http_restarts
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        sink.metrics
            .set_containerd_failures(sink.resolver.containerd_failures());
        sink.history.expire_now();
        sink.metrics.set_history(
            sink.history.events(),
            sink.history.stories(),
            sink.history.dropped,
        );
        if let Some(c) = &self.log_counts {
            use std::sync::atomic::Ordering::Relaxed;
            sink.metrics.set_event_log(
                c.written.load(Relaxed),
                c.rate_limited.load(Relaxed),
                c.queue_full.load(Relaxed),
                c.stdout_closed.load(Relaxed),
            );
        }
        if let Some(p) = &mut self.protect {
            p.drain();
            sink.metrics.on_protect(&mut p.made, p.protected_now);
        }
        if let Some(o) = &self.otlp {
            o.refresh();
        }
    }

    pub fn health_json(&self) -> String {
        serde_json::json!({
            "status": "ok",
            "uptime_s": self.started.elapsed().as_secs(),
            "sockets": self.sink.table.len(),
            "events_processed": self.pipeline.processed,
            "degraded": self.snapshotter.degraded,
        })
        .to_string()
    }
}
