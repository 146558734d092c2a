//! What kato resolved about the running kernel, kept in /run for the next
//! listing of the same boot by the same binary. Parsing the kernel's BTF
//! was ~40% of a small host's `kato sockets` (25 of 64 ms): the offsets,
//! the iterators' configuration and the attach targets' ids it yields do
//! not change until the kernel or kato does.
//!
//! Only loads that attach no tracing program use it (the tracing ladder
//! asks the BTF which hooks exist). A file that is missing, stale, not
//! root's, writable by others or malformed is ignored: the BTF is parsed.

use std::{
    collections::BTreeMap,
    fs,
    io::{Read as _, Write as _},
    os::unix::fs::{DirBuilderExt as _, MetadataExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
};

use keepalive_common::{IterConfig, KernelConfig};
use serde::{Deserialize, Serialize};

use super::KernelInfo;

/// Its own directory: /run/kato itself may be made 0755 by `kato protect`
/// (its private cgroup2 mount point).
pub const DIR: &str = "/run/kato/facts";
const FILE: &str = "kernel.json";
/// An entry is ~2 KB.
const MAX_BYTES: u64 = 64 << 10;

/// The entry's layout; a change to what is kept changes it.
const FORMAT: u32 = 1;

/// The running kernel and binary: a cache entry is good only for these.
/// The binary is named by its file's identity and change time (which no
/// copy, package or rebuild keeps, unlike its mtime) and kato's version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    format: u32,
    version: String,
    boot_id: String,
    release: String,
    btf_bytes: u64,
    exe_dev: u64,
    exe_ino: u64,
    exe_bytes: u64,
    exe_ctime_ns: i128,
}

impl Key {
    /// None where any part cannot be read (then nothing is cached).
    pub fn running(btf: &Path) -> Option<Self> {
        let exe = fs::metadata("/proc/self/exe").ok()?;
        Some(Key {
            format: FORMAT,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            boot_id: fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .ok()?
                .trim()
                .to_owned(),
            release: super::release(),
            btf_bytes: fs::metadata(btf).ok()?.len(),
            exe_dev: exe.dev(),
            exe_ino: exe.ino(),
            exe_bytes: exe.len(),
            exe_ctime_ns: i128::from(exe.ctime()) * 1_000_000_000 + i128::from(exe.ctime_nsec()),
        })
    }
}

/// The file's contents.
#[derive(Debug, Serialize, Deserialize)]
struct Entry {
    key: Key,
    /// `KernelConfig` and `IterConfig` as their bytes, hex.
    config: String,
    iter_config: String,
    hz: u32,
    reset_reasons: BTreeMap<u32, String>,
    keepalive_timer: String,
    /// The attach targets' BTF ids, in `Hook::ALL` order (null: absent).
    target_ids: Vec<Option<u32>>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The bytes of a plain value (`Pod`: integers, explicit padding).
fn bytes_of<T: aya::Pod>(v: &T) -> &[u8] {
    // SAFETY: a Pod value has no uninitialized bytes.
    unsafe { std::slice::from_raw_parts((v as *const T).cast::<u8>(), size_of::<T>()) }
}

fn from_bytes<T: aya::Pod + Default>(b: &[u8]) -> Option<T> {
    if b.len() != size_of::<T>() {
        return None;
    }
    let mut v = T::default();
    // SAFETY: any bit pattern is a valid value of these integer structs;
    // the length was checked.
    unsafe { std::ptr::copy_nonoverlapping(b.as_ptr(), (&mut v as *mut T).cast::<u8>(), b.len()) };
    Some(v)
}

/// What a load needs from the BTF, without the BTF.
pub struct Cached {
    pub info: KernelInfo,
    pub target_ids: Vec<Option<u32>>,
}

fn encode(key: Key, info: &KernelInfo, target_ids: &[Option<u32>]) -> String {
    let entry = Entry {
        key,
        config: hex(bytes_of(&info.config)),
        iter_config: hex(bytes_of(&info.iter_config)),
        hz: info.hz,
        reset_reasons: info.reset_reasons.clone(),
        keepalive_timer: info.keepalive_timer.to_owned(),
        target_ids: target_ids.to_vec(),
    };
    serde_json::to_string(&entry).expect("a cache entry serializes")
}

/// The entry in `text`, if it is for `key` and whole.
fn decode(text: &str, key: &Key, btf_path: PathBuf, targets: usize) -> Option<Cached> {
    let e: Entry = serde_json::from_str(text).ok()?;
    if &e.key != key || e.target_ids.len() != targets || e.hz == 0 {
        return None;
    }
    let keepalive_timer = super::offsets::TIMER_PLACES
        .into_iter()
        .find(|p| *p == e.keepalive_timer)?;
    Some(Cached {
        info: KernelInfo {
            release: e.key.release.clone(),
            btf_path,
            config: from_bytes::<KernelConfig>(&unhex(&e.config)?)?,
            iter_config: from_bytes::<IterConfig>(&unhex(&e.iter_config)?)?,
            hz: e.hz,
            reset_reasons: e.reset_reasons,
            keepalive_timer,
        },
        target_ids: e.target_ids,
    })
}

/// Root's, and writable by root alone.
fn trusted(m: &fs::Metadata) -> bool {
    trusted_mode(m.uid(), m.mode())
}

fn trusted_mode(uid: u32, mode: u32) -> bool {
    uid == 0 && mode & 0o022 == 0
}

/// The cached facts for `key`, when /run holds a good entry.
pub fn load(key: &Key, btf_path: PathBuf, targets: usize) -> Option<Cached> {
    let dir = Path::new(DIR);
    let path = dir.join(FILE);
    if !fs::symlink_metadata(dir).is_ok_and(|d| d.is_dir() && trusted(&d)) {
        return None;
    }
    // Not a link (O_NOFOLLOW), never a FIFO's wait (O_NONBLOCK), root's
    // regular file as opened, and read no further than an entry can be.
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .ok()?;
    let f = file.metadata().ok()?;
    if !f.is_file() || !trusted(&f) {
        return None;
    }
    let mut text = String::new();
    file.take(MAX_BYTES + 1).read_to_string(&mut text).ok()?;
    if text.len() as u64 > MAX_BYTES {
        return None;
    }
    let c = decode(&text, key, btf_path, targets);
    if c.is_none() {
        log::debug!("{}: not for this kernel or binary, ignored", path.display());
    }
    c
}

/// Keeps `info` and `target_ids` for the next load (best effort: a failure
/// only costs the next load a parse).
pub fn store(key: Key, info: &KernelInfo, target_ids: &[Option<u32>]) {
    let text = encode(key, info, target_ids);
    let dir = Path::new(DIR);
    let tmp = dir.join(format!(".{FILE}.{}", std::process::id()));
    let r = (|| -> std::io::Result<()> {
        fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(dir)?;
        // Only into a directory a later load would trust.
        if !fs::symlink_metadata(dir).is_ok_and(|d| d.is_dir() && trusted(&d)) {
            return Err(std::io::Error::other("the directory is not root's alone"));
        }
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)?;
        f.write_all(text.as_bytes())?;
        drop(f);
        fs::rename(&tmp, dir.join(FILE))
    })();
    if let Err(e) = r {
        let _ = fs::remove_file(&tmp);
        log::debug!("{DIR}/{FILE} not written: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> Key {
        Key {
            format: FORMAT,
            version: "0.1.0".into(),
            boot_id: "b".into(),
            release: "6.18.0".into(),
            btf_bytes: 6_000_000,
            exe_dev: 2049,
            exe_ino: 1234,
            exe_bytes: 20_000_000,
            exe_ctime_ns: 1_700_000_000_000_000_000,
        }
    }

    fn info() -> KernelInfo {
        KernelInfo {
            release: "6.18.0".into(),
            btf_path: PathBuf::from("/sys/kernel/btf/vmlinux"),
            config: KernelConfig {
                sk_timer: 512,
                keepalive_fn: u64::MAX,
                sk_copy_off: [1, 2, 3, 4, 5, 6, 7, 8],
                shed_at: 3 << 20,
                ..KernelConfig::default()
            },
            iter_config: IterConfig::default(),
            hz: 250,
            reset_reasons: BTreeMap::from([(15, "TCP_KEEPALIVE_TIMEOUT".to_owned())]),
            keepalive_timer: super::super::offsets::TIMER_PLACES[1],
        }
    }

    #[test]
    fn an_entry_reads_back_whole() {
        let ids = vec![Some(11415), None, Some(63714)];
        let text = encode(key(), &info(), &ids);
        let c = decode(&text, &key(), PathBuf::from("/sys/kernel/btf/vmlinux"), 3).unwrap();
        let i = info();
        assert_eq!(c.info.config, i.config);
        assert_eq!(c.info.iter_config, i.iter_config);
        assert_eq!(
            (
                c.info.hz,
                &c.info.reset_reasons,
                c.info.keepalive_timer,
                &c.info.release
            ),
            (i.hz, &i.reset_reasons, i.keepalive_timer, &i.release)
        );
        assert_eq!(c.target_ids, ids);
    }

    #[test]
    fn another_boot_binary_or_hook_list_is_not_used() {
        let text = encode(key(), &info(), &[Some(1)]);
        let p = || PathBuf::from("/x");
        for other in [
            Key {
                boot_id: "c".into(),
                ..key()
            },
            Key {
                exe_ctime_ns: 1,
                ..key()
            },
            Key {
                exe_ino: 1,
                ..key()
            },
            Key {
                version: "0.2.0".into(),
                ..key()
            },
            Key {
                btf_bytes: 1,
                ..key()
            },
        ] {
            assert!(decode(&text, &other, p(), 1).is_none());
        }
        assert!(decode(&text, &key(), p(), 2).is_none());
        assert!(decode(&text, &key(), p(), 1).is_some());
    }

    #[test]
    fn only_roots_files_that_only_root_writes_are_trusted() {
        assert!(trusted_mode(0, 0o100600));
        assert!(trusted_mode(0, 0o040700));
        assert!(trusted_mode(0, 0o100644));
        assert!(!trusted_mode(0, 0o100620));
        assert!(!trusted_mode(0, 0o100602));
        assert!(!trusted_mode(0, 0o041777));
        assert!(!trusted_mode(1000, 0o100600));
    }

    #[test]
    fn torn_or_altered_entries_are_not_used() {
        let text = encode(key(), &info(), &[Some(1)]);
        let p = || PathBuf::from("/x");
        assert!(decode(&text[..text.len() - 1], &key(), p(), 1).is_none());
        let short = text.replacen("\"config\":\"", "\"config\":\"00", 1);
        assert!(decode(&short, &key(), p(), 1).is_none());
        let odd = text.replacen("\"config\":\"", "\"config\":\"0", 1);
        assert!(decode(&odd, &key(), p(), 1).is_none());
        let place = text.replace("sock.sk_timer", "sock.elsewhere");
        assert!(decode(&place, &key(), p(), 1).is_none());
    }
}
