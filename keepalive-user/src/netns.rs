//! Network namespaces: listing them, naming one on the command line, and
//! running code inside one. The kernel's TCP iterator only walks the
//! namespace of the task that opens it, so kato enters each in turn.
//!
//! A reference holds the namespace open from the moment it is listed or
//! resolved: entering it later cannot fail because the process that made
//! it exited, nor because the caller has since dropped the capabilities
//! that reading other users' `/proc/PID/ns/net` needs.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use thiserror::Error;

#[derive(Debug, Clone)]
pub struct NetnsRef {
    /// Namespace inode, as `ls -l /proc/PID/ns/net` shows it.
    pub inode: u32,
    /// The file it was opened from (/run/netns/NAME or /proc/PID/ns/net).
    pub path: PathBuf,
    /// Its `ip netns` name, if it has one.
    pub name: Option<String>,
    /// The open namespace (shared by clones).
    file: Arc<File>,
}

impl PartialEq for NetnsRef {
    fn eq(&self, other: &Self) -> bool {
        self.inode == other.inode
    }
}

impl Eq for NetnsRef {}

impl NetnsRef {
    /// Opens `path`; None when it is gone (or not readable).
    fn open(path: PathBuf, name: Option<String>) -> Option<Self> {
        let file = File::open(&path).ok()?;
        let inode = file.metadata().ok()?.ino() as u32;
        Some(NetnsRef {
            inode,
            path,
            name,
            file: Arc::new(file),
        })
    }
}

/// Every namespace found, and how many vanished while being listed.
#[derive(Debug, Default)]
pub struct Listing {
    pub namespaces: Vec<NetnsRef>,
    /// Found in /proc or /run/netns but gone before kato could open it.
    pub vanished: usize,
}

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("no network namespace `{0}`: give an inode number (see `ls -l /proc/PID/ns/net`), a name from `ip netns list`, a path, or self")]
    NotFound(String),
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: String, source: io::Error },
}

fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// The namespace of this process.
pub fn current() -> io::Result<NetnsRef> {
    NetnsRef::open(PathBuf::from("/proc/self/ns/net"), None)
        .ok_or_else(|| io::Error::other("cannot open /proc/self/ns/net"))
}

/// Every namespace with a process in it or a name under /run/netns, each
/// held open.
pub fn list() -> Listing {
    let mut by_inode = BTreeMap::new();
    let mut vanished = 0;
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            match NetnsRef::open(e.path(), Some(name)) {
                Some(n) => {
                    by_inode.insert(n.inode, n);
                }
                None => vanished += 1,
            }
        }
    }
    if let Ok(procs) = std::fs::read_dir("/proc") {
        for p in procs.flatten() {
            if !p
                .file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
            {
                continue;
            }
            let path = p.path().join("ns/net");
            // Most processes share a few namespaces: stat first, open new ones only.
            match inode_of(&path) {
                Some(inode) if by_inode.contains_key(&inode) => {}
                Some(_) => match NetnsRef::open(path, None) {
                    Some(n) => {
                        by_inode.entry(n.inode).or_insert(n);
                    }
                    None => vanished += 1,
                },
                // Exited between readdir and stat: it had no namespace of its own to lose.
                None => {}
            }
        }
    }
    Listing {
        namespaces: by_inode.into_values().collect(),
        vanished,
    }
}

/// Resolves a user's `--netns`: inode number, `ip netns` name, or path.
pub fn resolve(spec: &str) -> Result<NetnsRef, NetnsError> {
    if spec == "self" {
        return current().map_err(|_| NetnsError::NotFound(spec.into()));
    }
    if let Ok(inode) = spec.parse::<u32>() {
        return list()
            .namespaces
            .into_iter()
            .find(|n| n.inode == inode)
            .ok_or_else(|| NetnsError::NotFound(spec.into()));
    }
    let path = if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    };
    let name = (!spec.contains('/')).then(|| spec.to_owned());
    NetnsRef::open(path, name).ok_or_else(|| NetnsError::NotFound(spec.into()))
}

/// Runs `f` on a thread that has entered `ns`.
pub fn run_in<T: Send>(ns: &NetnsRef, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let enter_err = |source| NetnsError::Enter {
        path: ns.path.display().to_string(),
        source,
    };
    let file = &ns.file;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall on a valid fd; affects only this thread.
            if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(enter_err(io::Error::last_os_error()));
            }
            Ok(f())
        })
        .join()
        .expect("netns thread panicked")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_is_listed_and_resolvable_by_inode() {
        let me = current().unwrap();
        assert!(list().namespaces.iter().any(|n| n.inode == me.inode));
        assert_eq!(resolve(&me.inode.to_string()).unwrap().inode, me.inode);
        assert_eq!(resolve("/proc/self/ns/net").unwrap().inode, me.inode);
    }

    #[test]
    fn unknown_netns_is_named() {
        let err = resolve("no-such-namespace").unwrap_err();
        assert!(err.to_string().contains("`no-such-namespace`"), "{err}");
        assert!(resolve("4294967295").is_err());
    }
}
