//! Who owns a socket, in the words of the person paged: the systemd unit,
//! the container and its runtime, the Kubernetes pod. From the socket's own
//! cgroup id (eBPF reads it from the socket: timer events run in softirq,
//! where the current task means nothing) to its cgroup path (`cgroupfs`),
//! what the path says (`path`), and the kubelet's labels in containerd
//! (`containerd`).

pub mod cgroupfs;
pub mod containerd;
pub mod path;

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use serde::{Serialize, Serializer};

pub use path::{Qos, Runtime};

/// One cgroup, named.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Workload {
    /// The cgroup's path under the cgroup2 mount (None: a cgroup gone
    /// before it was looked up).
    pub cgroup: Option<String>,
    pub unit: Option<String>,
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    pub pod_uid: Option<String>,
    pub qos: Option<Qos>,
    pub pod: Option<String>,
    pub pod_namespace: Option<String>,
    pub container: Option<String>,
}

impl Workload {
    /// The WORKLOAD column: `shop/checkout-7d9f/api`, `containerd:0123456789ab`,
    /// `nginx.service`, or `-`.
    pub fn short(&self) -> String {
        let mut s = String::new();
        self.short_into(&mut s);
        s
    }

    /// [`Workload::short`], appended to `out`.
    pub fn short_into(&self, out: &mut String) {
        match (
            &self.pod_namespace,
            &self.pod,
            &self.container_id,
            &self.unit,
        ) {
            (Some(ns), Some(pod), _, _) => {
                for (i, part) in [Some(ns), Some(pod), self.container.as_ref()]
                    .into_iter()
                    .flatten()
                    .enumerate()
                {
                    if i > 0 {
                        out.push('/');
                    }
                    out.push_str(part);
                }
            }
            (_, _, Some(id), _) => {
                out.push_str(self.runtime.map_or("container", Runtime::name));
                out.push(':');
                out.push_str(id.get(..12).unwrap_or(id));
            }
            (_, _, _, Some(u)) => out.push_str(u),
            _ => out.push('-'),
        }
    }
}

/// A socket's workload as JSON fields beside its others, null where unknown.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Named(pub Option<Arc<Workload>>);

impl Serialize for Named {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let w = self.0.as_deref();
        let mut st = s.serialize_struct("Workload", 8)?;
        st.serialize_field("cgroup", &w.and_then(|w| w.cgroup.as_deref()))?;
        st.serialize_field("unit", &w.and_then(|w| w.unit.as_deref()))?;
        st.serialize_field("container_id", &w.and_then(|w| w.container_id.as_deref()))?;
        st.serialize_field("runtime", &w.and_then(|w| w.runtime))?;
        st.serialize_field("pod", &w.and_then(|w| w.pod.as_deref()))?;
        st.serialize_field("pod_namespace", &w.and_then(|w| w.pod_namespace.as_deref()))?;
        st.serialize_field("container", &w.and_then(|w| w.container.as_deref()))?;
        st.serialize_field("pod_uid", &w.and_then(|w| w.pod_uid.as_deref()))?;
        st.end()
    }
}

/// Names cgroups, caching each (ids are never reused) up to a bound.
pub struct Resolver {
    cgroups: cgroupfs::Cgroups,
    /// containerd, asked from its own thread (None: not asked).
    containerd: Option<containerd::Watcher>,
    /// Each cgroup's workload, and for one not fully named yet when to ask
    /// again (an unknown cgroup, a container containerd did not list).
    cache: HashMap<u64, (Arc<Workload>, Option<Instant>)>,
}

/// Cgroups remembered at most; past it the cache starts over.
const MAX_CACHED: usize = 65_536;
/// A cgroup not fully named is asked again at most this often: every
/// socket of it names it meanwhile from the cache (100,000 sockets of an
/// unknown cgroup made 100,000 lookups and copies).
const RETRY_EVERY: Duration = Duration::from_secs(1);

impl Resolver {
    pub fn new(containerd: Option<PathBuf>) -> Self {
        Self::with_cgroups(cgroupfs::Cgroups::new(), containerd)
    }

    pub fn with_cgroups(cgroups: cgroupfs::Cgroups, containerd: Option<PathBuf>) -> Self {
        Resolver {
            cgroups,
            containerd: containerd.map(containerd::Watcher::start),
            cache: HashMap::new(),
        }
    }

    pub fn cgroup_root(&self) -> Option<&std::path::Path> {
        self.cgroups.root()
    }

    /// Containers known to containerd at the last listing.
    pub fn containers_known(&self) -> usize {
        self.containerd.as_ref().map_or(0, |w| w.current().len())
    }

    /// The last containerd failure, for doctor.
    pub fn containerd_error(&self) -> Option<String> {
        self.containerd
            .as_ref()
            .and_then(containerd::Watcher::error)
    }

    /// containerd listings that failed since start.
    pub fn containerd_failures(&self) -> u64 {
        self.containerd
            .as_ref()
            .map_or(0, containerd::Watcher::failures)
    }

    /// A container's labels from the last listing; a miss asks for a new
    /// one (on the watcher's thread: this never waits on containerd).
    fn labels(&self, id: &str) -> Option<containerd::Labels> {
        let w = self.containerd.as_ref()?;
        let l = w.current().get(id).cloned();
        if l.is_none() {
            w.want();
        }
        l
    }

    /// The workload of cgroup `id`. A cgroup not found, or a container
    /// containerd did not (yet) know, is asked again a second later;
    /// everything else is cached for good.
    pub fn resolve(&mut self, id: u64) -> Arc<Workload> {
        match self.cache.get(&id) {
            Some((w, None)) => return Arc::clone(w),
            Some((w, Some(retry))) if retry.elapsed() < RETRY_EVERY => return Arc::clone(w),
            _ => {}
        }
        if self.cache.len() >= MAX_CACHED {
            self.cache.clear();
        }
        let Some(cg) = self.cgroups.path(id).map(str::to_owned) else {
            let w = Arc::new(Workload::default());
            self.cache
                .insert(id, (Arc::clone(&w), Some(Instant::now())));
            return w;
        };
        let p = path::parse(&cg);
        let mut w = Workload {
            cgroup: Some(cg),
            unit: p.unit,
            container_id: p.container_id,
            runtime: p.runtime,
            pod_uid: p.pod_uid,
            qos: p.qos,
            ..Workload::default()
        };
        let mut complete = true;
        if w.container_id.is_none() {
            if let Some((_, id)) = &p.ctr_candidate {
                if let Some(l) = self.labels(id) {
                    w.container_id = Some(id.clone());
                    w.runtime = Some(Runtime::Containerd);
                    apply(&mut w, &l);
                }
            }
        } else if let Some(cid) = w.container_id.clone() {
            match self.labels(&cid) {
                Some(l) => {
                    w.runtime = w.runtime.or(Some(Runtime::Containerd));
                    apply(&mut w, &l);
                }
                None => complete = self.containerd.is_none(),
            }
        }
        let w = Arc::new(w);
        let retry = (!complete).then(Instant::now);
        self.cache.insert(id, (Arc::clone(&w), retry));
        w
    }
}

fn apply(w: &mut Workload, l: &containerd::Labels) {
    w.pod = l.pod.clone();
    w.pod_namespace = l.pod_namespace.clone();
    w.container = l.container.clone();
    w.pod_uid = w.pod_uid.take().or_else(|| l.pod_uid.clone());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_names() {
        let mut w = Workload {
            unit: Some("nginx.service".into()),
            ..Workload::default()
        };
        assert_eq!(w.short(), "nginx.service");
        w.container_id = Some("0123456789abcdef0123".into());
        w.runtime = Some(Runtime::Docker);
        assert_eq!(w.short(), "docker:0123456789ab");
        w.pod = Some("checkout-7d9f".into());
        w.pod_namespace = Some("shop".into());
        assert_eq!(w.short(), "shop/checkout-7d9f");
        w.container = Some("api".into());
        assert_eq!(w.short(), "shop/checkout-7d9f/api");
        assert_eq!(Workload::default().short(), "-");
    }

    #[test]
    fn resolves_through_a_cgroup_tree() {
        let dir = std::env::temp_dir().join(format!("kato-wl-{}", std::process::id()));
        let unit = dir.join("system.slice/shop.service");
        std::fs::create_dir_all(&unit).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&unit).unwrap());
        let mut r = Resolver::with_cgroups(cgroupfs::Cgroups::at(Some(dir.clone())), None);
        let w = r.resolve(ino);
        assert_eq!(
            (w.cgroup.as_deref(), w.short().as_str()),
            (Some("/system.slice/shop.service"), "shop.service")
        );
        let json = serde_json::to_value(Named(Some(w))).unwrap();
        assert_eq!(json["unit"], "shop.service");
        assert!(json["pod"].is_null());
        assert!(serde_json::to_value(Named(None)).unwrap()["unit"].is_null());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
