//! Container ids to pod, namespace and container names, from containerd's
//! own API (`containerd-client`): the kubelet labels every container it
//! creates through CRI (`io.kubernetes.pod.name`, `.pod.namespace`,
//! `.container.name`, `.pod.uid`), in containerd namespace `k8s.io`; every
//! namespace is listed. One listing answers all sockets of a snapshot.

use std::{collections::HashMap, path::Path, time::Duration};

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

/// Every container containerd knows, by id. Runs on its own thread and
/// runtime (callers may be inside one), and gives up after 3 s.
pub fn list(socket: &Path) -> Result<HashMap<String, Labels>, String> {
    let socket = socket.to_owned();
    std::thread::scope(|s| {
        s.spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            rt.block_on(async {
                tokio::time::timeout(TIMEOUT, list_async(&socket))
                    .await
                    .map_err(|_| format!("{}: no answer in {TIMEOUT:?}", socket.display()))?
            })
        })
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
        let t = std::time::Instant::now();
        assert!(list(Path::new("/nonexistent/containerd.sock")).is_err());
        assert!(t.elapsed() < Duration::from_secs(4));
    }
}
