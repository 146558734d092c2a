//! Where protect's sock_ops program attaches: the cgroup2 hierarchy's root
//! (every connection of the host), or the cgroups of the workloads a scope
//! names (`--unit`, `--pod`, `--container`).

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::MountError;
use crate::{filter::Filter, workload::Resolver};

/// Where kato mounts the cgroup2 hierarchy when none is visible (`ip
/// netns exec` remounts /sys in a mount namespace of its own, hiding it).
pub const PRIVATE_MOUNT: &str = "/run/kato/cgroup2";

/// Directories walked at most when looking for a scope's cgroups.
const MAX_WALK: usize = 100_000;

/// The cgroup2 root: where /proc/self/mountinfo shows it, else mounted at
/// [`PRIVATE_MOUNT`] (the same hierarchy: cgroup2 has one).
pub fn root() -> Result<PathBuf, MountError> {
    const MOUNTINFO: &str = "/proc/self/mountinfo";
    let mountinfo = std::fs::read_to_string(MOUNTINFO).map_err(|source| MountError::Io {
        path: MOUNTINFO,
        source,
    })?;
    if let Some(m) = crate::workload::cgroupfs::find_mount(&mountinfo) {
        return Ok(m);
    }
    std::fs::create_dir_all(PRIVATE_MOUNT).map_err(|source| MountError::Io {
        path: PRIVATE_MOUNT,
        source,
    })?;
    let target = std::ffi::CString::new(PRIVATE_MOUNT).expect("no NUL");
    let (none, fstype) = (c"none", c"cgroup2");
    // SAFETY: valid C strings; no data argument.
    let rc = unsafe {
        libc::mount(
            none.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(MountError::Mount {
            fs: "cgroup2",
            path: PRIVATE_MOUNT,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(PathBuf::from(PRIVATE_MOUNT))
}

/// The top-most cgroups under `root` whose workload `filter` selects (a
/// program on a cgroup runs for its whole subtree). The cgroup id the
/// resolver names is the directory's inode.
pub fn matching(root: &Path, filter: &Filter, resolver: &mut Resolver) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    let mut walked = 0;
    while let Some(dir) = stack.pop() {
        walked += 1;
        if walked > MAX_WALK {
            log::warn!(
                "more than {MAX_WALK} cgroups under {}: the rest not looked at",
                root.display()
            );
            break;
        }
        let Ok(meta) = std::fs::metadata(&dir) else {
            continue;
        };
        if dir != root {
            let w = resolver.resolve(meta.ino());
            if filter.matches_workload(Some(&w)) {
                found.push(dir);
                continue;
            }
        }
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        stack.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path()),
        );
    }
    found.sort();
    found
}
