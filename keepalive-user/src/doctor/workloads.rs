//! What kato could name: sockets by systemd unit, container and pod, and
//! which runtimes it found.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::{sockets::Socket, workload::Resolver};

#[derive(Debug, Default, Serialize)]
pub struct WorkloadReport {
    /// The cgroup2 mount kato maps cgroup ids under (null: none found).
    pub cgroup_root: Option<String>,
    /// Sockets seen with a cgroup id (full sockets; 0 on kernels without
    /// socket cgroup data).
    pub sockets_with_cgroup: usize,
    /// Of those, named by pod, by container (without a pod), by unit.
    pub by_pod: usize,
    pub by_container: usize,
    pub by_unit: usize,
    /// Containers per runtime, as their cgroups (and containerd) say.
    pub runtimes: BTreeMap<&'static str, usize>,
    /// containerd: how many containers it listed, or why it could not.
    pub containerd: String,
}

pub fn report<'a>(r: &mut Resolver, sockets: impl Iterator<Item = &'a Socket>) -> WorkloadReport {
    let mut rep = WorkloadReport {
        cgroup_root: r.cgroup_root().map(|p| p.display().to_string()),
        ..WorkloadReport::default()
    };
    let mut containers = std::collections::HashSet::new();
    for s in sockets {
        let Some(w) = s.workload.0.as_deref() else {
            continue;
        };
        rep.sockets_with_cgroup += 1;
        if w.pod.is_some() {
            rep.by_pod += 1;
        } else if w.container_id.is_some() {
            rep.by_container += 1;
        } else if w.unit.is_some() {
            rep.by_unit += 1;
        }
        if let (Some(id), Some(rt)) = (&w.container_id, w.runtime) {
            if containers.insert(id.clone()) {
                *rep.runtimes.entry(rt.name()).or_default() += 1;
            }
        }
    }
    rep.containerd = match &r.containerd_error() {
        Some(e) => format!("not reachable ({e}): containers are named by id only"),
        None if r.containers_known() > 0 => format!("{} containers listed", r.containers_known()),
        None => "not asked (no container sockets) or no containers".into(),
    };
    rep
}
