//! How many sockets the agent's table holds by default: what half of its
//! cgroup's memory limit affords, at a budget of 1 KiB per socket (the
//! bench measures ~780 B), between 10,000 and 1,000,000. An explicit
//! `table_capacity` wins.

use std::path::{Path, PathBuf};

/// Bytes budgeted per tracked socket.
pub const PER_SOCKET: u64 = 1024;
pub const MIN: usize = 10_000;
pub const MAX: usize = 1_000_000;

/// The default capacity for a memory limit (None: unlimited).
pub fn for_limit(limit: Option<u64>) -> usize {
    match limit {
        None => MAX,
        Some(l) => usize::try_from(l / 2 / PER_SOCKET)
            .unwrap_or(MAX)
            .clamp(MIN, MAX),
    }
}

/// A limit file's value: `max` (v2) or a near-`u64::MAX` page-rounded
/// number (v1) mean none.
fn parse_limit(text: &str) -> Option<u64> {
    let t = text.trim();
    if t == "max" {
        return None;
    }
    t.parse::<u64>().ok().filter(|&v| v < (1 << 62))
}

/// The tightest memory limit on `path` and its ancestors below `mount`.
fn tightest(mount: &Path, path: &str, file: &str) -> Option<u64> {
    let mut dir: PathBuf = mount.join(path.trim_start_matches('/'));
    let mut best: Option<u64> = None;
    loop {
        if let Some(v) = std::fs::read_to_string(dir.join(file))
            .ok()
            .and_then(|t| parse_limit(&t))
        {
            best = Some(best.map_or(v, |b| b.min(v)));
        }
        if dir == mount || !dir.pop() || !dir.starts_with(mount) {
            return best;
        }
    }
}

/// This process's memory limit from `/proc/self/cgroup` text, under the
/// cgroup mounts at `root` (/sys/fs/cgroup): v2 (pure, or hybrid at
/// `unified/`) and v1's memory controller.
pub fn memory_limit(proc_cgroup: &str, root: &Path) -> Option<u64> {
    let mut limits = vec![];
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        if ctrl.is_empty() {
            for mount in [root.to_path_buf(), root.join("unified")] {
                limits.extend(tightest(&mount, path, "memory.max"));
            }
        } else if ctrl.split(',').any(|c| c == "memory") {
            limits.extend(tightest(
                &root.join("memory"),
                path,
                "memory.limit_in_bytes",
            ));
        }
    }
    limits.into_iter().min()
}

/// The default for this process.
pub fn default_capacity() -> (usize, Option<u64>) {
    let text = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let limit = memory_limit(&text, Path::new("/sys/fs/cgroup"));
    (for_limit(limit), limit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_follows_half_the_limit() {
        assert_eq!(for_limit(None), MAX);
        assert_eq!(for_limit(Some(256 << 20)), 131_072);
        assert_eq!(for_limit(Some(1 << 20)), MIN, "floor");
        assert_eq!(for_limit(Some(64 << 30)), MAX, "ceiling");
    }

    #[test]
    fn reads_v2_v1_and_hybrid_fixtures() {
        let root = std::env::temp_dir().join(format!("kato-cg-{}", std::process::id()));
        let w = |p: &str, v: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, v).unwrap();
        };
        // v2: the parent is tighter than the leaf.
        w("kubepods.slice/memory.max", "536870912\n");
        w("kubepods.slice/pod1/kato/memory.max", "max\n");
        assert_eq!(
            memory_limit("0::/kubepods.slice/pod1/kato\n", &root),
            Some(512 << 20)
        );
        // Hybrid: v2 at unified/, v1 memory controller beside it.
        w("unified/svc/memory.max", "max\n");
        w("memory/svc/memory.limit_in_bytes", "268435456\n");
        assert_eq!(
            memory_limit("4:memory:/svc\n0::/svc\n", &root),
            Some(256 << 20)
        );
        // v1 unlimited.
        w("memory/free/memory.limit_in_bytes", "9223372036854771712\n");
        assert_eq!(memory_limit("4:memory:/free\n", &root), None);
        assert_eq!(memory_limit("", &root), None);
        let _ = std::fs::remove_dir_all(root);
    }
}
