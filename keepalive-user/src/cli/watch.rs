//! What `kato sockets --watch` and `kato top` share: the programs loaded
//! once, keepalive events applied to a table as they come, and a census
//! every period (the records made before it applied first, as in the
//! agent).

use std::ops::ControlFlow;

use anyhow::Context as _;
use keepalive_user::{
    bpf::{ring::EventStream, Bpf},
    events::{DecodeError, Observation, Pipeline, Record, ResetReasons, Sink},
    filter::{self, Filter, SortKey},
    policy::Policy,
    sockets::{
        snapshot::{Snapshotter, Targets},
        table::{Counts, SocketTable},
        Socket,
    },
    workload::Resolver,
};

pub struct Watch {
    pub bpf: Bpf,
    stream: EventStream,
    pipeline: Pipeline,
    pub table: SocketTable,
    snap: Snapshotter,
    targets: Targets,
    resolver: Resolver,
    /// The idle-timeout policy, conntrack's rules refreshed by each census.
    pub policy: Policy,
    batch: Vec<Result<Record, DecodeError>>,
    /// The namespaces shown (None: all): events of others are not applied,
    /// so the table holds only what the census covers.
    only: Option<Vec<u32>>,
}

/// Takes no observation: for a watch that only keeps the table.
pub struct Nothing;

impl Sink for Nothing {
    fn observe(&mut self, _: &Observation<'_>) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }
}

/// The table, then another sink, see every observation of the namespaces
/// shown.
struct Tee<'a, S>(&'a mut SocketTable, &'a mut S, Option<&'a [u32]>);

impl<S: Sink> Sink for Tee<'_, S> {
    fn observe(&mut self, obs: &Observation<'_>) -> ControlFlow<()> {
        if self.2.is_some_and(|only| !only.contains(&obs.record.netns)) {
            return ControlFlow::Continue(());
        }
        let _ = self.1.observe(obs);
        self.0.observe(obs)
    }
}

impl Watch {
    /// `bpf` opened with tracing on; `only`: the namespaces shown (None:
    /// every one).
    pub fn new(
        mut bpf: Bpf,
        snap: Snapshotter,
        (targets, only): (Targets, Option<Vec<u32>>),
        resolver: Resolver,
        policy: Policy,
    ) -> anyhow::Result<Self> {
        let stream = bpf.events()?;
        let pipeline = Pipeline::new(
            bpf.kernel.hz,
            ResetReasons(bpf.kernel.reset_reasons.clone()),
        );
        Ok(Watch {
            bpf,
            stream,
            pipeline,
            table: SocketTable::new(1 << 20),
            snap,
            targets,
            resolver,
            policy,
            batch: Vec::new(),
            only,
        })
    }

    /// Waits for records (cancel-safe: what came stays for [`Watch::apply`]).
    pub async fn wait(&mut self) -> anyhow::Result<()> {
        self.stream
            .next_batch(&mut self.batch)
            .await
            .context("reading the event ring buffer")
    }

    /// Applies the records read to the table, `also` seeing each.
    pub fn apply(&mut self, also: &mut impl Sink) {
        let mut tee = Tee(&mut self.table, also, self.only.as_deref());
        let _ = self.pipeline.feed(&mut self.batch, &mut tee);
        let _ = self.pipeline.settle_now(&mut tee);
    }

    /// A census, after every record made before it.
    pub fn census(&mut self, also: &mut impl Sink) -> anyhow::Result<()> {
        self.stream.drain_now(&mut self.batch);
        self.apply(also);
        let mut snaps = keepalive_user::census::take(
            &self.snap,
            Some(&mut self.bpf),
            &self.targets,
            &mut self.resolver,
            &mut self.policy,
        )?;
        keepalive_user::protect::pin::mark(snaps.iter_mut().flat_map(|n| &mut n.sockets));
        for n in snaps {
            self.table.apply_snapshot(n.inode, n.sockets, |_, _| None);
        }
        Ok(())
    }

    /// The table's sockets `filter` selects, sorted by `sort`.
    pub fn rows(&self, filter: &Filter, sort: SortKey, reverse: bool) -> Vec<(Socket, Counts)> {
        let all: Vec<(Socket, Counts)> = self.table.iter().collect();
        let mut shown: Vec<(Socket, Counts)> =
            filter::select(all.iter(), |r| &r.0, |s| self.policy.risk(s), filter, sort)
                .into_iter()
                .cloned()
                .collect();
        if reverse {
            shown.reverse();
        }
        shown
    }
}
