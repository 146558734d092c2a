//! Container ids to pod, namespace and container names, from containerd's
//! own API (`containerd-client`): the kubelet labels every container it
//! creates through CRI (`io.kubernetes.pod.name`, `.pod.namespace`,
//! `.container.name`, `.pod.uid`), in containerd namespace `k8s.io`; every
//! namespace is listed. One listing answers all sockets of a snapshot.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Condvar, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use containerd_client::{
    services::v1::{ListContainersRequest, ListNamespacesRequest},
    tonic::Request,
    with_namespace, Client,
};

pub const DEFAULT_SOCKET: &str = "/run/containerd/containerd.sock";
const TIMEOUT: Duration = Duration::from_secs(3);

/// What the kubelet's labels say about one container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Labels {
    /// containerd namespace (`k8s.io` for the kubelet's).
    pub namespace: String,
    pub pod: Option<String>,
    pub pod_namespace: Option<String>,
    pub container: Option<String>,
    pub pod_uid: Option<String>,
}

impl Labels {
    pub fn from_map(namespace: &str, labels: &HashMap<String, String>) -> Self {
        let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
        Labels {
            namespace: namespace.to_owned(),
            pod: get("io.kubernetes.pod.name"),
            pod_namespace: get("io.kubernetes.pod.namespace"),
            container: get("io.kubernetes.container.name"),
            pod_uid: get("io.kubernetes.pod.uid"),
        }
    }
}

async fn list_async(socket: &Path) -> Result<HashMap<String, Labels>, String> {
    let client = Client::from_path(socket)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    let namespaces = client
        .namespaces()
        .list(ListNamespacesRequest::default())
        .await
        .map_err(|e| format!("listing namespaces: {}", e.message()))?
        .into_inner()
        .namespaces;
    let mut out = HashMap::new();
    for ns in namespaces {
        let req = with_namespace!(ListContainersRequest::default(), ns.name);
        let containers = client
            .containers()
            .list(req)
            .await
            .map_err(|e| format!("listing containers of {}: {}", ns.name, e.message()))?
            .into_inner()
            .containers;
        for c in containers {
            out.insert(c.id, Labels::from_map(&ns.name, &c.labels));
        }
    }
    Ok(out)
}

/// Every container containerd knows, by id, within [`TIMEOUT`] (a runtime
/// of the calling thread's own).
fn list_within(
    rt: &tokio::runtime::Runtime,
    socket: &Path,
) -> Result<HashMap<String, Labels>, String> {
    rt.block_on(async {
        tokio::time::timeout(TIMEOUT, list_async(socket))
            .await
            .map_err(|_| format!("{}: no answer in {TIMEOUT:?}", socket.display()))?
    })
}

/// Listings at most this often while names are missing.
const RELIST_EVERY: Duration = Duration::from_secs(2);
/// Listings at least this often (containers come and go).
const REFRESH_EVERY: Duration = Duration::from_secs(30);
/// The longest pause after failures (2 s, doubling).
const MAX_BACKOFF: Duration = Duration::from_secs(60);

/// What the last listing said.
#[derive(Default)]
struct Listing {
    by_id: Arc<HashMap<String, Labels>>,
    /// Listings finished (either way): the first wait ends at 1.
    done: u64,
    error: Option<String>,
    failures: u64,
}

#[derive(Default)]
struct Shared {
    listing: Mutex<Listing>,
    changed: Condvar,
    /// A name was missed: list again at the next [`RELIST_EVERY`].
    wanted: AtomicBool,
    stop: AtomicBool,
}

/// containerd asked from a thread of its own: callers read the last
/// listing and never wait on containerd, except once, at most [`TIMEOUT`],
/// for the first. A stalled containerd costs one deadline per listing on
/// that thread, with backoff, and nothing anywhere else.
pub struct Watcher {
    shared: Arc<Shared>,
}

impl Watcher {
    pub fn start(socket: PathBuf) -> Self {
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let started = std::thread::Builder::new()
            .name("kato-containerd".into())
            .spawn(move || watch(&socket, &theirs));
        if let Err(e) = started {
            let mut l = shared
                .listing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            l.error = Some(format!("cannot start its thread: {e}"));
            l.done = 1;
        }
        Watcher { shared }
    }

    /// The last listing, waiting for the first one (at most [`TIMEOUT`]
    /// and a margin) if none has finished yet.
    pub fn current(&self) -> Arc<HashMap<String, Labels>> {
        let l = self
            .shared
            .listing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let (l, _) = self
            .shared
            .changed
            .wait_timeout_while(l, TIMEOUT + Duration::from_millis(500), |l| l.done == 0)
            .unwrap_or_else(PoisonError::into_inner);
        Arc::clone(&l.by_id)
    }

    /// A container was not in the listing: list again soon.
    pub fn want(&self) {
        self.shared.wanted.store(true, Ordering::Relaxed);
    }

    /// The last listing's error, if it failed.
    pub fn error(&self) -> Option<String> {
        self.shared
            .listing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .error
            .clone()
    }

    /// Listings that failed since start.
    pub fn failures(&self) -> u64 {
        self.shared
            .listing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .failures
    }
}

impl Drop for Watcher {
    /// Not joined: a listing in flight ends within its deadline.
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        self.shared.changed.notify_all();
    }
}

fn watch(socket: &Path, shared: &Shared) {
    // Started before the agent drops what it keeps: this thread needs no
    // capability at all.
    if let Err(e) = crate::caps::drop_all_on_this_thread() {
        log::warn!("containerd thread: dropping capabilities: {e}");
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let mut l = shared
                .listing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            l.error = Some(format!("cannot start its runtime: {e}"));
            l.done = 1;
            shared.changed.notify_all();
            return;
        }
    };
    let mut backoff = RELIST_EVERY;
    while !shared.stop.load(Ordering::Relaxed) {
        shared.wanted.store(false, Ordering::Relaxed);
        let listed = list_within(&rt, socket);
        let pause = {
            let mut l = shared
                .listing
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            l.done += 1;
            let pause = match listed {
                Ok(m) => {
                    l.by_id = Arc::new(m);
                    l.error = None;
                    backoff = RELIST_EVERY;
                    RELIST_EVERY
                }
                Err(e) => {
                    if l.error.is_none() {
                        log::info!("containerd: {e} (containers named from cgroups only)");
                    }
                    l.error = Some(e);
                    l.failures += 1;
                    let pause = backoff;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    pause
                }
            };
            shared.changed.notify_all();
            pause
        };
        // Sleep `pause`, then on until a name is wanted or REFRESH_EVERY.
        let since = Instant::now();
        let mut l = shared
            .listing
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        loop {
            if shared.stop.load(Ordering::Relaxed) {
                return;
            }
            let waited = since.elapsed();
            if waited >= pause && (shared.wanted.load(Ordering::Relaxed) || waited >= REFRESH_EVERY)
            {
                break;
            }
            let next = if waited < pause {
                pause - waited
            } else {
                RELIST_EVERY
            };
            l = shared
                .changed
                .wait_timeout(l, next)
                .unwrap_or_else(PoisonError::into_inner)
                .0;
        }
    }
}

/// One listing now, within [`TIMEOUT`], for callers that need it at once.
pub fn list(socket: &Path) -> Result<HashMap<String, Labels>, String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let socket = socket.to_owned();
    // Its own thread: callers may be inside a runtime.
    std::thread::scope(|s| {
        s.spawn(move || list_within(&rt, &socket))
            .join()
            .unwrap_or_else(|_| Err("containerd client thread panicked".into()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_labels() {
        let m: HashMap<String, String> = [
            ("io.kubernetes.pod.name", "checkout-7d9f"),
            ("io.kubernetes.pod.namespace", "shop"),
            ("io.kubernetes.container.name", "api"),
            ("io.kubernetes.pod.uid", ""),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
        let l = Labels::from_map("k8s.io", &m);
        assert_eq!(
            (
                l.pod.as_deref(),
                l.pod_namespace.as_deref(),
                l.container.as_deref(),
                l.pod_uid
            ),
            (Some("checkout-7d9f"), Some("shop"), Some("api"), None)
        );
    }

    #[test]
    fn absent_containerd_is_an_error_not_a_hang() {
        let t = Instant::now();
        assert!(list(Path::new("/nonexistent/containerd.sock")).is_err());
        assert!(t.elapsed() < Duration::from_secs(4));
    }

    /// A containerd that accepts and never answers: the first read waits
    /// one deadline, every later one returns at once.
    #[test]
    fn a_stalled_containerd_costs_one_deadline() {
        let dir = std::env::temp_dir().join(format!("kato-ctrd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let sock = dir.join("stalled.sock");
        let _ = std::fs::remove_file(&sock);
        let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
        // Accepted by the kernel's backlog, never read.
        let w = Watcher::start(sock.clone());
        let t = Instant::now();
        assert!(w.current().is_empty());
        let first = t.elapsed();
        assert!(first <= TIMEOUT + Duration::from_secs(1), "{first:?}");
        assert!(w.error().is_some());
        let t = Instant::now();
        for _ in 0..100 {
            w.want();
            assert!(w.current().is_empty());
        }
        assert!(
            t.elapsed() < Duration::from_millis(100),
            "{:?}",
            t.elapsed()
        );
        drop((w, listener));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
