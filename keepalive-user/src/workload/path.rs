//! What a cgroup v2 path says about who runs in it: a systemd unit, a
//! container (docker, containerd's CRI or ctr, CRI-O, podman) and a
//! Kubernetes pod with its QoS class. Both cgroup drivers: systemd's
//! (`kubepods-burstable-pod<uid>.slice/cri-containerd-<id>.scope`) and
//! cgroupfs (`/kubepods/burstable/pod<uid>/<id>`).

use serde::Serialize;

/// The container runtime a cgroup's name shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    Docker,
    Containerd,
    Crio,
    Podman,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Docker => "docker",
            Runtime::Containerd => "containerd",
            Runtime::Crio => "crio",
            Runtime::Podman => "podman",
        }
    }
}

/// A Kubernetes pod's QoS class, from its slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

/// Everything the path alone tells.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FromPath {
    /// The innermost systemd service or scope that is not a container's.
    pub unit: Option<String>,
    pub container_id: Option<String>,
    pub runtime: Option<Runtime>,
    pub pod_uid: Option<String>,
    pub qos: Option<Qos>,
    /// `/<namespace>/<id>`: what ctr (and containerd without a cgroup
    /// parent) makes; a container only if containerd knows the id.
    pub ctr_candidate: Option<(String, String)>,
}

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<prefix><64 hex>.scope` (systemd driver) or `<prefix><64 hex>`.
fn scoped<'a>(c: &'a str, prefix: &str) -> Option<&'a str> {
    let id = c.strip_prefix(prefix)?;
    let id = id.strip_suffix(".scope").unwrap_or(id);
    is_container_id(id).then_some(id)
}

fn pod_uid(c: &str) -> Option<(String, Option<Qos>)> {
    // systemd: kubepods-pod<uid>.slice, kubepods-<qos>-pod<uid>.slice (uid with _)
    if let Some(rest) = c
        .strip_prefix("kubepods-")
        .and_then(|r| r.strip_suffix(".slice"))
    {
        let (qos, uid) = match rest.split_once("-pod") {
            Some(("burstable", u)) => (Some(Qos::Burstable), u),
            Some(("besteffort", u)) => (Some(Qos::BestEffort), u),
            _ => (Some(Qos::Guaranteed), rest.strip_prefix("pod")?),
        };
        return Some((uid.replace('_', "-"), qos));
    }
    // cgroupfs: pod<uid>
    let uid = c.strip_prefix("pod")?;
    (uid.len() == 36 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| (uid.to_owned(), None))
}

pub fn parse(path: &str) -> FromPath {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let mut w = FromPath::default();
    let mut kube = false;
    for (i, c) in parts.iter().enumerate() {
        if *c == "kubepods" || *c == "kubepods.slice" {
            kube = true;
            continue;
        }
        if kube && w.pod_uid.is_none() {
            match *c {
                "burstable" => {
                    w.qos = Some(Qos::Burstable);
                    continue;
                }
                "besteffort" => {
                    w.qos = Some(Qos::BestEffort);
                    continue;
                }
                "kubepods-burstable.slice" | "kubepods-besteffort.slice" => continue,
                _ => {}
            }
            if let Some((uid, qos)) = pod_uid(c) {
                w.pod_uid = Some(uid);
                w.qos = w.qos.or(qos).or(Some(Qos::Guaranteed));
                continue;
            }
        }
        let container = [
            ("docker-", Runtime::Docker),
            ("cri-containerd-", Runtime::Containerd),
            ("crio-", Runtime::Crio),
            ("libpod-", Runtime::Podman),
        ]
        .into_iter()
        .find_map(|(p, r)| scoped(c, p).map(|id| (id, r)));
        if let Some((id, r)) = container {
            w.container_id = Some(id.to_owned());
            w.runtime = Some(r);
            continue;
        }
        // cgroupfs driver: the container's own directory is its id.
        if is_container_id(c)
            && (w.pod_uid.is_some() || parts.get(i.wrapping_sub(1)) == Some(&"docker"))
        {
            w.container_id = Some((*c).to_owned());
            if parts.get(i.wrapping_sub(1)) == Some(&"docker") {
                w.runtime = Some(Runtime::Docker);
            }
            continue;
        }
        if (c.ends_with(".service") || c.ends_with(".scope")) && !c.starts_with("crio-conmon-") {
            w.unit = Some((*c).to_owned());
        }
    }
    if let [ns, id] = parts.as_slice() {
        let plain =
            |c: &str| !(c.ends_with(".slice") || c.ends_with(".service") || c.ends_with(".scope"));
        if w.container_id.is_none() && plain(ns) && plain(id) {
            w.ctr_candidate = Some(((*ns).to_owned(), (*id).to_owned()));
        }
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    #[test]
    fn systemd_units() {
        let w = parse("/system.slice/nginx.service");
        assert_eq!(
            (w.unit.as_deref(), w.container_id),
            (Some("nginx.service"), None)
        );
        assert_eq!(
            parse("/user.slice/user-1000.slice/session-3.scope")
                .unit
                .as_deref(),
            Some("session-3.scope")
        );
        assert_eq!(parse("/").unit, None);
        assert_eq!(
            parse("/system.slice/containerd.service/x").unit.as_deref(),
            Some("containerd.service")
        );
    }

    #[test]
    fn containers_of_every_runtime() {
        for (path, rt) in [
            (format!("/system.slice/docker-{ID}.scope"), Runtime::Docker),
            (format!("/docker/{ID}"), Runtime::Docker),
            (format!("/machine.slice/libpod-{ID}.scope"), Runtime::Podman),
            (format!("/system.slice/crio-{ID}.scope"), Runtime::Crio),
        ] {
            let w = parse(&path);
            assert_eq!(
                (w.container_id.as_deref(), w.runtime, w.unit),
                (Some(ID), Some(rt), None),
                "{path}"
            );
        }
        let w = parse(&format!("/system.slice/crio-conmon-{ID}.scope"));
        assert_eq!(
            (w.container_id, w.unit),
            (None, None),
            "conmon is not the container"
        );
    }

    #[test]
    fn kubernetes_pods_under_both_drivers() {
        let w = parse(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1b2c3d4e_0000_4000_8000_123456789abc.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(
            w.pod_uid.as_deref(),
            Some("1b2c3d4e-0000-4000-8000-123456789abc")
        );
        assert_eq!(
            (w.qos, w.runtime, w.container_id.as_deref()),
            (Some(Qos::Burstable), Some(Runtime::Containerd), Some(ID))
        );
        let g = parse(&format!("/kubepods.slice/kubepods-pod1b2c3d4e_0000_4000_8000_123456789abc.slice/cri-containerd-{ID}.scope"));
        assert_eq!(g.qos, Some(Qos::Guaranteed));
        let f = parse(&format!(
            "/kubepods/besteffort/pod1b2c3d4e-0000-4000-8000-123456789abc/{ID}"
        ));
        assert_eq!(
            (
                f.qos,
                f.pod_uid.as_deref(),
                f.container_id.as_deref(),
                f.runtime
            ),
            (
                Some(Qos::BestEffort),
                Some("1b2c3d4e-0000-4000-8000-123456789abc"),
                Some(ID),
                None
            )
        );
        let fg = parse("/kubepods/pod1b2c3d4e-0000-4000-8000-123456789abc");
        assert_eq!(fg.qos, Some(Qos::Guaranteed));
    }

    #[test]
    fn ctr_paths_are_candidates_only() {
        assert_eq!(
            parse("/k8s.io/kato-test-1").ctr_candidate,
            Some(("k8s.io".into(), "kato-test-1".into()))
        );
        assert_eq!(parse("/user.slice/user-0.slice").ctr_candidate, None);
        assert_eq!(parse("/a/b/c").ctr_candidate, None);
    }
}
