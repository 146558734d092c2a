//! Which process owns a socket: its inode matched against /proc/*/fd, the way
//! `netstat -p` does it. Timer events run in softirq, where the current task
//! is unrelated to the socket, so the inode is the only reliable link.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Owner {
    pub pid: u32,
    pub comm: std::sync::Arc<str>,
}

/// Inode → owner, refreshed by a full /proc scan at most once per `min_rescan`.
pub struct OwnerCache {
    map: HashMap<u64, Owner>,
    last_scan: Option<Instant>,
    min_rescan: Duration,
}

impl Default for OwnerCache {
    fn default() -> Self {
        Self {
            map: HashMap::new(),
            last_scan: None,
            min_rescan: Duration::from_millis(500),
        }
    }
}

/// Parses the target of a /proc/PID/fd link: `socket:[12345]`.
pub fn socket_inode(link: &str) -> Option<u64> {
    link.strip_prefix("socket:[")?
        .strip_suffix(']')?
        .parse()
        .ok()
}

fn scan() -> HashMap<u64, Owner> {
    let mut map = HashMap::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return map;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let mut comm: Option<std::sync::Arc<str>> = None;
        for fd in fds.flatten() {
            let Ok(target) = std::fs::read_link(fd.path()) else {
                continue;
            };
            let Some(ino) = target.to_str().and_then(socket_inode) else {
                continue;
            };
            let comm = comm.get_or_insert_with(|| {
                std::fs::read_to_string(p.path().join("comm"))
                    .map(|c| c.trim_end().into())
                    .unwrap_or_else(|_| "".into())
            });
            map.entry(ino).or_insert_with(|| Owner {
                pid,
                comm: comm.clone(),
            });
        }
    }
    map
}

impl OwnerCache {
    pub fn lookup(&mut self, ino: u64) -> Option<Owner> {
        if ino == 0 {
            return None;
        }
        if let Some(o) = self.map.get(&ino) {
            return Some(o.clone());
        }
        if self
            .last_scan
            .is_some_and(|t| t.elapsed() < self.min_rescan)
        {
            return None;
        }
        self.map = scan();
        self.last_scan = Some(Instant::now());
        self.map.get(&ino).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_socket_links() {
        assert_eq!(socket_inode("socket:[12345]"), Some(12345));
        assert_eq!(socket_inode("pipe:[12345]"), None);
        assert_eq!(socket_inode("socket:[x]"), None);
    }

    #[test]
    fn finds_own_socket() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let link = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
        let ino = socket_inode(link.to_str().unwrap()).unwrap();
        let owner = OwnerCache::default().lookup(ino).unwrap();
        assert_eq!(owner.pid, std::process::id());
    }
}
