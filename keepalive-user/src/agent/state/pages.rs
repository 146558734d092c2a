//! What the HTTP process reads of the agent's state: `/metrics`,
//! `/healthz`, and `/sockets` pages made a chunk of the table at a time, so
//! that no page holds the lock the records and the census need for long.

use std::sync::Mutex;

use super::AgentState;
use crate::{
    agent::{
        history::StoryKey,
        http::{Backend, PageJson, SocketsQuery},
        otlp::{Outcome, Signal},
    },
    filter::Key,
    view::{SocketRow, SocketView},
};

/// Table entries a `/sockets` page filters per hold of the lock.
const PAGE_CHUNK: usize = 4096;

impl AgentState {
    /// The entries of one chunk of namespace `netns` (see
    /// [`SocketTable::chunk`]) that `q` selects, with their sort keys;
    /// and where the next chunk starts (None: the namespace is done).
    /// Entries are filtered and keyed as they are (see [`crate::filter::Listed`]);
    /// only a risk filter makes one a `Socket`, to classify it.
    fn page_keys(
        &self,
        q: &SocketsQuery,
        netns: u32,
        after: Option<u64>,
        keyed: &mut Vec<(Key, u32, u64)>,
    ) -> Option<u64> {
        let sink = &self.sink;
        let (entries, done) = sink.table.chunk(netns, after, PAGE_CHUNK);
        let last = entries.last().map(|e| e.socket.sock);
        keyed.extend(entries.into_iter().filter_map(|e| {
            let c = &e.socket;
            q.filter
                .matches(c, || sink.policy.risk(&c.socket()))
                .then(|| (q.sort.key_of(c), netns, c.sock))
        }));
        if done {
            None
        } else {
            last
        }
    }

    /// The rows of `page` that are still in the table, made views.
    /// With `history`, each with its story (`null` where there is none).
    fn page_rows(&self, page: &[(Key, u32, u64)], history: bool) -> Vec<SocketRow> {
        let sink = &self.sink;
        page.iter()
            .filter_map(|&(_, ns, sk)| {
                let e = sink.table.get(ns, sk)?;
                let (socket, counts) = (e.socket.socket(), sink.table.counts(e));
                let v = SocketView::new(&socket, Some(&counts), &sink.policy);
                let mut row = SocketRow::of(&v, Some(&counts));
                if history {
                    row.history = Some(
                        sink.history
                            .live_json(ns, sk, e.socket.socket_cookie())
                            .unwrap_or_else(|| "null".into()),
                    );
                }
                Some(row)
            })
            .collect()
    }
}

impl Backend for Mutex<AgentState> {
    fn otlp(&self, signal: Signal, done: &[Outcome]) -> (usize, Vec<u8>) {
        let mut state = self.lock().expect("lock");
        if signal == Signal::Metrics {
            state.refresh_metrics();
        }
        let state = &*state;
        match &state.otlp {
            Some(src) => src.answer(signal, done, || state.sink.metrics.gather()),
            // Not configured: nothing to send (the exporter is not started).
            None => (0, vec![]),
        }
    }

    fn metrics(&self) -> String {
        self.lock().expect("lock").metrics_text()
    }

    fn health(&self) -> String {
        self.lock().expect("lock").health_json()
    }

    fn history(&self, key: StoryKey) -> Option<String> {
        let mut state = self.lock().expect("lock");
        let sink = &mut state.sink;
        let table = &sink.table;
        sink.history.story_json(key, |ns, sk| {
            table.get(ns, sk).and_then(|e| e.socket.socket_cookie())
        })
    }

    /// One page of the table, filtered and sorted. The table is read a
    /// chunk at a time, the lock let go between chunks and while sorting:
    /// a page never holds up the records and snapshots for more than one
    /// chunk. Like a netlink dump (`ss`), a page is not one instant: a
    /// socket that comes or goes meanwhile may or may not be in it.
    fn sockets(&self, q: &SocketsQuery) -> PageJson {
        let mut keyed = vec![];
        let spaces = self.lock().expect("lock").sink.table.namespaces();
        for ns in spaces {
            let mut after = None;
            loop {
                let state = self.lock().expect("lock");
                after = state.page_keys(q, ns, after, &mut keyed);
                drop(state);
                if after.is_none() {
                    break;
                }
            }
        }
        // The kernel address breaks ties: pages follow one order.
        keyed.sort_unstable_by_key(|a| (a.0, a.2));
        let total = keyed.len();
        let end = q.offset.saturating_add(q.limit).min(total);
        let page = keyed.get(q.offset.min(total)..end).unwrap_or_default();
        let rows = self.lock().expect("lock").page_rows(page, q.history);
        PageJson::of(rows, total, (end < total).then_some(end))
    }
}
