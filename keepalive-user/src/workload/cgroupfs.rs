//! cgroup v2 ids to paths. A cgroup's id is its directory's inode number
//! on the cgroup2 mount (kernfs), so one walk of the hierarchy maps every
//! live cgroup; an id not seen is looked up by walking again (at most once
//! a second). Pure v2 hosts mount it at /sys/fs/cgroup, hybrid ones at
//! /sys/fs/cgroup/unified; /proc/self/mountinfo says which.

use std::{
    collections::HashMap,
    os::unix::fs::DirEntryExt,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

/// Directories walked at most (a node with more cgroups is not a node).
const MAX_CGROUPS: usize = 200_000;
const REWALK_EVERY: Duration = Duration::from_secs(1);

/// The cgroup2 mount point in mountinfo text: /sys/fs/cgroup before others.
pub fn find_mount(mountinfo: &str) -> Option<PathBuf> {
    let mut found: Vec<&str> = mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next()? == "cgroup2").then(|| pre.split_whitespace().nth(4))?
        })
        .collect();
    found.sort_by_key(|m| (*m != "/sys/fs/cgroup", m.len()));
    found.first().map(PathBuf::from)
}

pub struct Cgroups {
    pub root: Option<PathBuf>,
    by_id: HashMap<u64, String>,
    walked: Option<Instant>,
}

impl Cgroups {
    pub fn new() -> Self {
        let root = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|m| find_mount(&m));
        Self::at(root)
    }

    pub fn at(root: Option<PathBuf>) -> Self {
        Cgroups {
            root,
            by_id: HashMap::new(),
            walked: None,
        }
    }

    /// The path (`/system.slice/nginx.service`) of cgroup `id`, if it lives.
    pub fn path(&mut self, id: u64) -> Option<&str> {
        if !self.by_id.contains_key(&id) && self.walked.is_none_or(|t| t.elapsed() >= REWALK_EVERY)
        {
            self.walk();
        }
        self.by_id.get(&id).map(String::as_str)
    }

    fn walk(&mut self) {
        self.walked = Some(Instant::now());
        let Some(root) = self.root.clone() else {
            return;
        };
        let mut by_id = HashMap::with_capacity(self.by_id.len().max(64));
        if let Ok(m) = std::fs::metadata(&root) {
            by_id.insert(std::os::unix::fs::MetadataExt::ino(&m), "/".to_owned());
        }
        let mut stack = vec![(root.clone(), String::new())];
        while let Some((dir, rel)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for e in entries.flatten() {
                if !e.file_type().is_ok_and(|t| t.is_dir()) {
                    continue;
                }
                if by_id.len() >= MAX_CGROUPS {
                    log::warn!(
                        "more than {MAX_CGROUPS} cgroups under {}: the rest stay unnamed",
                        root.display()
                    );
                    self.by_id = by_id;
                    return;
                }
                let path = format!("{rel}/{}", e.file_name().to_string_lossy());
                by_id.insert(e.ino(), path.clone());
                stack.push((e.path(), path));
            }
        }
        self.by_id = by_id;
    }

    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }
}

impl Default for Cgroups {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_cgroup2_mount_on_pure_and_hybrid_hosts() {
        let hybrid = "25 1 0:22 / /sys/fs/cgroup ro,nosuid - tmpfs tmpfs ro,mode=755\n\
            26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw,nsdelegate\n\
            27 25 0:24 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n";
        assert_eq!(find_mount(hybrid), Some("/sys/fs/cgroup/unified".into()));
        let pure = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n40 1 0:26 / /mnt/cg rw - cgroup2 cgroup2 rw\n";
        assert_eq!(find_mount(pure), Some("/sys/fs/cgroup".into()));
        assert_eq!(find_mount("1 0 0:1 / / rw - ext4 /dev/sda rw\n"), None);
    }

    #[test]
    fn ids_are_directory_inodes() {
        let dir = std::env::temp_dir().join(format!("kato-cg-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("system.slice/nginx.service")).unwrap();
        let ino = std::os::unix::fs::MetadataExt::ino(
            &std::fs::metadata(dir.join("system.slice/nginx.service")).unwrap(),
        );
        let mut c = Cgroups::at(Some(dir.clone()));
        assert_eq!(c.path(ino), Some("/system.slice/nginx.service"));
        assert_eq!(c.path(1), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
