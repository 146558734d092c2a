//! Who may hold one of the endpoint's connections. Every connection is
//! accepted at once and takes a slot; when the slots are full (or its
//! source holds its share), the newcomer takes the slot of the connection
//! that has waited longest without a request in flight: first one that has
//! never completed a request (a half-open TLS handshake, a client that
//! never sent a head), then an idle keep-alive one. Nothing that has not
//! authenticated can keep a scrape or `/healthz` out; only requests in
//! flight hold their slots, and those are bounded by their own deadlines.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, PoisonError,
    },
    time::Instant,
};

use tokio::task::AbortHandle;

/// One connection, as its task and the table share it.
#[derive(Debug)]
pub struct Conn {
    /// Requests in flight (a service call not yet answered).
    busy: AtomicU32,
    /// A request was answered on it (it got past TLS and the head).
    served: AtomicBool,
    /// Milliseconds since the table's start, at the last activity.
    last_ms: AtomicU64,
    epoch: Instant,
}

impl Conn {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// A request arrived.
    pub fn begin(&self) {
        self.busy.fetch_add(1, Ordering::Relaxed);
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Its response head is ready.
    pub fn end(&self) {
        self.busy.fetch_sub(1, Ordering::Relaxed);
        self.served.store(true, Ordering::Relaxed);
        self.last_ms.store(self.now_ms(), Ordering::Relaxed);
    }
}

struct Entry {
    ip: IpAddr,
    conn: Arc<Conn>,
    abort: Option<AbortHandle>,
}

struct Table {
    next: u64,
    entries: HashMap<u64, Entry>,
}

pub struct Slots {
    table: Mutex<Table>,
    max: usize,
    per_source: usize,
    epoch: Instant,
    /// Connections closed to make room (for tests and logs).
    pub evicted: AtomicU64,
}

/// A connection's hold on its slot, given back on drop.
pub struct Slot {
    slots: Arc<Slots>,
    id: u64,
    pub conn: Arc<Conn>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.slots.lock().entries.remove(&self.id);
    }
}

impl Slots {
    /// `max` connections, at most `per_source` from one address.
    pub fn new(max: usize, per_source: usize) -> Arc<Self> {
        Arc::new(Slots {
            table: Mutex::new(Table {
                next: 0,
                entries: HashMap::new(),
            }),
            max: max.max(1),
            per_source: per_source.clamp(1, max.max(1)),
            epoch: Instant::now(),
            evicted: AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A slot for a connection from `ip`, making room if needed; `None`
    /// when every slot it could take has a request in flight.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Option<Slot> {
        let mut t = self.lock();
        let from_ip = t.entries.values().filter(|e| e.ip == ip).count();
        if from_ip >= self.per_source {
            self.evict(&mut t, Some(ip))?;
        }
        if t.entries.len() >= self.max {
            self.evict(&mut t, None)?;
        }
        let conn = Arc::new(Conn {
            busy: AtomicU32::new(0),
            served: AtomicBool::new(false),
            last_ms: AtomicU64::new(self.epoch.elapsed().as_millis() as u64),
            epoch: self.epoch,
        });
        let id = t.next;
        t.next += 1;
        t.entries.insert(
            id,
            Entry {
                ip,
                conn: Arc::clone(&conn),
                abort: None,
            },
        );
        Some(Slot {
            slots: Arc::clone(self),
            id,
            conn,
        })
    }

    /// How to close the connection of `slot` if its slot is taken.
    pub fn set_abort(&self, slot: u64, abort: AbortHandle) {
        if let Some(e) = self.lock().entries.get_mut(&slot) {
            e.abort = Some(abort);
        }
    }

    /// Closes the connection (of `ip`, if given) that has waited longest
    /// with no request in flight, never-served ones first.
    fn evict(&self, t: &mut Table, ip: Option<IpAddr>) -> Option<()> {
        let (&id, _) = t
            .entries
            .iter()
            .filter(|(_, e)| ip.is_none_or(|ip| e.ip == ip))
            .filter(|(_, e)| e.abort.is_some() && e.conn.busy.load(Ordering::Relaxed) == 0)
            .min_by_key(|(_, e)| {
                (
                    e.conn.served.load(Ordering::Relaxed),
                    e.conn.last_ms.load(Ordering::Relaxed),
                )
            })?;
        let e = t.entries.remove(&id)?;
        if let Some(a) = e.abort {
            a.abort();
        }
        self.evicted.fetch_add(1, Ordering::Relaxed);
        Some(())
    }

    /// Connections holding a slot now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Slot {
    pub fn id(&self) -> u64 {
        self.id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    /// Slots whose connections can be closed: a task that never ends.
    fn held(slots: &Arc<Slots>, rt: &tokio::runtime::Runtime, from: &str) -> Option<Slot> {
        let s = slots.admit(ip(from))?;
        let task = rt.spawn(std::future::pending::<()>());
        slots.set_abort(s.id(), task.abort_handle());
        Some(s)
    }

    #[test]
    fn newcomers_take_the_slots_of_the_unserved_then_the_idle() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let slots = Slots::new(3, 3);
        let served = held(&slots, &rt, "10.0.0.1").unwrap();
        served.conn.begin();
        served.conn.end();
        let busy = held(&slots, &rt, "10.0.0.2").unwrap();
        busy.conn.begin();
        let half_open = held(&slots, &rt, "10.0.0.3").unwrap();
        // Full: the never-served one goes first, even though it is newer.
        let a = held(&slots, &rt, "10.0.0.4").unwrap();
        assert_eq!(slots.evicted.load(Ordering::Relaxed), 1);
        assert_eq!(slots.len(), 3);
        drop(half_open); // its slot was already given away: no double free
        assert_eq!(slots.len(), 3);
        // Next: `a` (never served) before the idle served one.
        let _b = held(&slots, &rt, "10.0.0.5").unwrap();
        assert!(slots
            .lock()
            .entries
            .values()
            .any(|e| Arc::ptr_eq(&e.conn, &served.conn)));
        drop(a);
        // Every slot busy: no room.
        let only_busy = Slots::new(1, 1);
        let b = held(&only_busy, &rt, "10.0.0.1").unwrap();
        b.conn.begin();
        assert!(held(&only_busy, &rt, "10.0.0.2").is_none());
        drop(busy);
    }

    #[test]
    fn one_source_cannot_take_every_slot() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let slots = Slots::new(8, 2);
        let _a = held(&slots, &rt, "10.0.0.9").unwrap();
        let _b = held(&slots, &rt, "10.0.0.9").unwrap();
        let _c = held(&slots, &rt, "10.0.0.9").unwrap();
        assert_eq!(
            slots.len(),
            2,
            "the third from one source took its own oldest"
        );
        let _d = held(&slots, &rt, "10.0.0.8").unwrap();
        assert_eq!(slots.len(), 3);
    }
}
