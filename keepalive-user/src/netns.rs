//! Network namespaces: listing them, naming one on the command line, and
//! running code inside one. The kernel's TCP iterator only walks the
//! namespace of the task that opens it, so kato enters each in turn.

use std::{
    collections::BTreeMap,
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::{Path, PathBuf},
};

use thiserror::Error;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetnsRef {
    /// Namespace inode, as `ls -l /proc/PID/ns/net` shows it.
    pub inode: u32,
    /// A file that refers to it (/run/netns/NAME or /proc/PID/ns/net).
    pub path: PathBuf,
    /// Its `ip netns` name, if it has one.
    pub name: Option<String>,
}

#[derive(Debug, Error)]
pub enum NetnsError {
    #[error("no network namespace `{0}`: give an inode number (see `ls -l /proc/PID/ns/net`), a name from `ip netns list`, or a path")]
    NotFound(String),
    #[error("cannot enter network namespace {path}: {source}")]
    Enter { path: String, source: io::Error },
}

fn inode_of(path: &Path) -> Option<u32> {
    std::fs::metadata(path).ok().map(|m| m.ino() as u32)
}

/// The namespace of this process.
pub fn current() -> io::Result<NetnsRef> {
    let path = PathBuf::from("/proc/self/ns/net");
    let inode = std::fs::metadata(&path)?.ino() as u32;
    Ok(NetnsRef {
        inode,
        path,
        name: None,
    })
}

/// Every namespace with a process in it or a name under /run/netns.
pub fn list() -> Vec<NetnsRef> {
    let mut by_inode = BTreeMap::new();
    if let Ok(dir) = std::fs::read_dir("/run/netns") {
        for e in dir.flatten() {
            let path = e.path();
            if let Some(inode) = inode_of(&path) {
                let name = e.file_name().to_string_lossy().into_owned();
                by_inode.insert(
                    inode,
                    NetnsRef {
                        inode,
                        path,
                        name: Some(name),
                    },
                );
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
            if let Some(inode) = inode_of(&path) {
                by_inode.entry(inode).or_insert(NetnsRef {
                    inode,
                    path,
                    name: None,
                });
            }
        }
    }
    by_inode.into_values().collect()
}

/// Resolves a user's `--netns`: inode number, `ip netns` name, or path.
pub fn resolve(spec: &str) -> Result<NetnsRef, NetnsError> {
    if let Ok(inode) = spec.parse::<u32>() {
        return list()
            .into_iter()
            .find(|n| n.inode == inode)
            .ok_or_else(|| NetnsError::NotFound(spec.into()));
    }
    let path = if spec.contains('/') {
        PathBuf::from(spec)
    } else {
        Path::new("/run/netns").join(spec)
    };
    let inode = inode_of(&path).ok_or_else(|| NetnsError::NotFound(spec.into()))?;
    let name = (!spec.contains('/')).then(|| spec.to_owned());
    Ok(NetnsRef { inode, path, name })
}

/// Runs `f` on a thread that has entered `ns`.
pub fn run_in<T: Send>(ns: &NetnsRef, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    let enter_err = |source| NetnsError::Enter {
        path: ns.path.display().to_string(),
        source,
    };
    let file = File::open(&ns.path).map_err(enter_err)?;
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
        assert!(list().iter().any(|n| n.inode == me.inode));
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
