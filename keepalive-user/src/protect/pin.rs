//! Where a running `kato protect` (or agent) leaves the record of the
//! sockets it protected for other kato processes: a pinned map on the BPF
//! filesystem, one per process (`kato-protected-PID`), removed when it
//! stops. `kato sockets` reads them to show source `kato`.

use std::path::{Path, PathBuf};

/// The BPF filesystem's usual mount point.
pub const BPFFS: &str = "/sys/fs/bpf";
const PREFIX: &str = "kato-protected-";
/// statfs(2)'s `f_type` of a BPF filesystem.
const BPF_FS_MAGIC: i64 = 0xcafe_4a11;

fn is_bpffs(dir: &Path) -> bool {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: a valid C string and a zeroed out-parameter.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0) && st.f_type == BPF_FS_MAGIC
}

/// Whether this process shares the init process's mount namespace (a
/// mount made here is the host's).
fn in_init_mount_ns() -> bool {
    match (
        std::fs::read_link("/proc/self/ns/mnt"),
        std::fs::read_link("/proc/1/ns/mnt"),
    ) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

/// The BPF filesystem to pin in: [`BPFFS`] if it is one; mounted there
/// if nothing is and this is the host's mount namespace (as systemd does at
/// boot); else none (`ip netns exec` gives its own /sys).
pub fn bpffs() -> Result<PathBuf, String> {
    let dir = Path::new(BPFFS);
    if is_bpffs(dir) {
        return Ok(dir.to_owned());
    }
    if !in_init_mount_ns() {
        return Err(format!(
            "{BPFFS} is not a BPF filesystem in this mount namespace (ip netns exec?): other kato processes will not see which sockets were protected"
        ));
    }
    if !dir.is_dir() {
        return Err(format!("{BPFFS} does not exist"));
    }
    let (src, ty) = (c"bpf", c"bpf");
    let target = std::ffi::CString::new(BPFFS).expect("no NUL");
    // SAFETY: valid C strings; no data argument.
    if unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            ty.as_ptr(),
            0,
            std::ptr::null(),
        )
    } != 0
    {
        return Err(format!(
            "mounting a BPF filesystem at {BPFFS}: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(dir.to_owned())
}

/// This process's pin in `dir`.
pub fn own(dir: &Path) -> PathBuf {
    dir.join(format!("{PREFIX}{}", std::process::id()))
}

/// Every live process's pin in `dir`; pins of processes that are gone
/// (killed before they could remove theirs) are removed.
pub fn all(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return vec![];
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name();
            let pid: u32 = name.to_str()?.strip_prefix(PREFIX)?.parse().ok()?;
            if Path::new(&format!("/proc/{pid}")).exists() {
                Some(e.path())
            } else {
                let _ = std::fs::remove_file(e.path());
                None
            }
        })
        .collect()
}
