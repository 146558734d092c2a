//! Where a running `kato protect` (or agent) leaves the record of the
//! sockets it protected for other kato processes: a pinned map on the BPF
//! filesystem, one per process (`kato-protected-PID`), removed when it
//! stops. `kato sockets` reads them to show source `kato`.

use std::path::{Path, PathBuf};

use super::MountError;

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

/// The BPF filesystem to pin in: [`BPFFS`] if it is one, else mounted
/// there (as systemd does at boot). Under `ip netns exec`, whose /sys is a
/// mount of its own, only kato processes in the same mount namespace see
/// the pin.
pub fn bpffs() -> Result<PathBuf, MountError> {
    let dir = Path::new(BPFFS);
    if is_bpffs(dir) {
        return Ok(dir.to_owned());
    }
    if !dir.is_dir() {
        return Err(MountError::Missing(BPFFS));
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
        return Err(MountError::Mount {
            fs: "bpf",
            path: BPFFS,
            source: std::io::Error::last_os_error(),
        });
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

/// Marks the keepalive settings that a running protect (any process's
/// pin in [`BPFFS`]) set on `sockets` as [`ValueSource::Kato`](crate::sockets::ValueSource::Kato).
/// Nothing to mark (no pins, or no BPF filesystem here) is not an error.
pub fn mark<'a, S: crate::sockets::row::Row + 'a>(sockets: impl Iterator<Item = &'a mut S>) {
    let pins = Pins::open();
    if pins.0.is_empty() {
        return;
    }
    for s in sockets {
        pins.mark(s);
    }
}

/// The running protects' pinned maps, opened once for a listing's rows.
pub struct Pins(
    Vec<aya::maps::HashMap<aya::maps::MapData, u64, keepalive_common::protect::Protected>>,
);

impl Pins {
    pub fn open() -> Self {
        use aya::maps::{HashMap, Map, MapData};
        Self(
            all(Path::new(BPFFS))
                .into_iter()
                .filter_map(|p| MapData::from_pin(&p).ok())
                .filter_map(|d| HashMap::try_from(Map::LruHashMap(d)).ok())
                .collect(),
        )
    }

    /// [`mark`] for one socket.
    pub fn mark<S: crate::sockets::row::Row>(&self, s: &mut S) {
        if self.0.is_empty() {
            return;
        }
        s.mark_protected(|cookie: u64| {
            let p = self.0.iter().find_map(|m| m.get(&cookie, 0).ok())?;
            Some((p.after.idle_s, p.after.intvl_s))
        });
    }
}
