//! Reading the files an operator points kato at (config, web config,
//! certificates and keys, the state file): regular files only, opened
//! without blocking (a FIFO cannot hang start-up), read up to a cap (a
//! `/dev/zero` or a 1 GB file is an error, not an OOM), and the state
//! directory's file written without following links.

use std::{
    ffi::CString,
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{
            ffi::OsStrExt,
            fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
        },
    },
    path::Path,
};

use thiserror::Error;

/// Settings files (config, web config, certificates, keys) at most.
pub const MAX_SETTINGS: u64 = 1 << 20;

#[derive(Debug, Error)]
pub enum FileError {
    #[error("{path}: cannot read: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a regular file ({kind})")]
    NotRegular { path: String, kind: &'static str },
    #[error("{path}: {size} bytes is too large (at most {max})")]
    TooLarge { path: String, size: u64, max: u64 },
    #[error("{path}: not UTF-8 text")]
    NotText { path: String },
    #[error("{path}: {why}")]
    Unsafe { path: String, why: String },
}

impl FileError {
    /// The error without its path, for messages that name the file already.
    pub fn reason(&self) -> String {
        match self {
            FileError::Io { source, .. } => format!("cannot read: {source}"),
            FileError::NotRegular { kind, .. } => format!("not a regular file ({kind})"),
            FileError::TooLarge { size, max, .. } => {
                format!("{size} bytes is too large (at most {max})")
            }
            FileError::NotText { .. } => "not UTF-8 text".into(),
            FileError::Unsafe { why, .. } => why.clone(),
        }
    }
}

fn kind_of(m: &std::fs::Metadata) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    let t = m.file_type();
    if t.is_dir() {
        "a directory"
    } else if t.is_fifo() {
        "a FIFO"
    } else if t.is_socket() {
        "a socket"
    } else if t.is_char_device() {
        "a character device"
    } else if t.is_block_device() {
        "a block device"
    } else if t.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

/// The whole of an open file, if it is a regular file of at most `max`
/// bytes (checked on the descriptor, and again while reading: a file that
/// grows is cut at the cap and refused).
fn read_open(f: File, path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let name = || path.display().to_string();
    let io = |source| FileError::Io {
        path: name(),
        source,
    };
    let m = f.metadata().map_err(io)?;
    if !m.is_file() {
        return Err(FileError::NotRegular {
            path: name(),
            kind: kind_of(&m),
        });
    }
    if m.len() > max {
        return Err(FileError::TooLarge {
            path: name(),
            size: m.len(),
            max,
        });
    }
    let mut buf = Vec::with_capacity(m.len() as usize);
    f.take(max + 1).read_to_end(&mut buf).map_err(io)?;
    if buf.len() as u64 > max {
        return Err(FileError::TooLarge {
            path: name(),
            size: buf.len() as u64,
            max,
        });
    }
    Ok(buf)
}

/// A settings file's bytes: a regular file (links followed: /etc is the
/// operator's) of at most `max` bytes, opened without blocking.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, FileError> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(|source| FileError::Io {
            path: path.display().to_string(),
            source,
        })?;
    read_open(f, path, max)
}

/// As [`read_capped`], as UTF-8 text.
pub fn read_text(path: &Path, max: u64) -> Result<String, FileError> {
    String::from_utf8(read_capped(path, max)?).map_err(|_| FileError::NotText {
        path: path.display().to_string(),
    })
}

/// A directory kato keeps state in, held open: every file in it is opened
/// relative to it, never following a link, and written by replacing it
/// (a new 0600 file, then a rename), so a link or a special file planted
/// in it can neither redirect a write nor hang a read.
pub struct StateDir {
    dir: OwnedFd,
    path: std::path::PathBuf,
}

fn cstr(name: &str) -> CString {
    CString::new(name).expect("kato's own file names have no NUL")
}

impl StateDir {
    /// Opens `path` (created 0700 if missing); it must be a directory owned
    /// by this user and writable by no one else. A link to the directory is
    /// followed (the operator names it, and systemd's `DynamicUser` makes
    /// /var/lib/kato one); links inside it never are.
    pub fn open(path: &Path) -> Result<Self, FileError> {
        let name = || path.display().to_string();
        let io = |source| FileError::Io {
            path: name(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io)?;
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| FileError::Unsafe {
            path: name(),
            why: "a NUL byte in the path".into(),
        })?;
        // SAFETY: a valid C string; the descriptor is owned below.
        let fd = unsafe {
            libc::open(
                c.as_ptr(),
                libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: just opened, owned here alone.
        let dir = unsafe { OwnedFd::from_raw_fd(fd) };
        let m = File::from(dir.try_clone().map_err(io)?)
            .metadata()
            .map_err(io)?;
        // SAFETY: geteuid has no arguments.
        let me = unsafe { libc::geteuid() };
        if m.uid() != me {
            return Err(FileError::Unsafe {
                path: name(),
                why: format!("is owned by uid {}, not kato's uid {me}", m.uid()),
            });
        }
        if m.mode() & 0o022 != 0 {
            return Err(FileError::Unsafe {
                path: name(),
                why: format!(
                    "is writable by others (mode {:o}): chmod go-w it",
                    m.mode() & 0o7777
                ),
            });
        }
        Ok(StateDir {
            dir,
            path: path.to_owned(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file `name` in the directory, at most `max` bytes; `Ok(None)`
    /// when it does not exist.
    pub fn read(&self, name: &str, max: u64) -> Result<Option<Vec<u8>>, FileError> {
        let path = self.path.join(name);
        let c = cstr(name);
        // SAFETY: a valid C string and an open directory descriptor.
        let fd = unsafe {
            libc::openat(
                self.dir.as_raw_fd(),
                c.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                Some(libc::ELOOP) => Err(FileError::NotRegular {
                    path: path.display().to_string(),
                    kind: "a symbolic link",
                }),
                _ => Err(FileError::Io {
                    path: path.display().to_string(),
                    source: e,
                }),
            };
        }
        // SAFETY: just opened, owned by the File alone.
        let f = unsafe { File::from_raw_fd(fd) };
        read_open(f, &path, max).map(Some)
    }

    /// Replaces the file `name` with `bytes`: written to a new file (mode
    /// 0600, created exclusively: whatever sat at the temporary name is
    /// removed first, a link is never followed), synced, renamed over.
    pub fn replace(&self, name: &str, bytes: &[u8]) -> Result<(), FileError> {
        let tmp = format!("{name}.tmp");
        let io = |source| FileError::Io {
            path: self.path.join(&tmp).display().to_string(),
            source,
        };
        let (c_tmp, c_name) = (cstr(&tmp), cstr(name));
        let d = self.dir.as_raw_fd();
        // SAFETY: valid C strings and an open directory descriptor. unlinkat
        // removes a planted link itself, not what it points to.
        unsafe { libc::unlinkat(d, c_tmp.as_ptr(), 0) };
        // SAFETY: as above; O_EXCL with O_CREAT never follows a link.
        let fd = unsafe {
            libc::openat(
                d,
                c_tmp.as_ptr(),
                libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
                0o600,
            )
        };
        if fd < 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        // SAFETY: just created, owned by the File alone.
        let mut f = unsafe { File::from_raw_fd(fd) };
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
        // SAFETY: valid C strings and an open directory descriptor.
        if unsafe { libc::renameat(d, c_tmp.as_ptr(), d, c_name.as_ptr()) } != 0 {
            return Err(io(std::io::Error::last_os_error()));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn scratch(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("kato-files-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn settings_files_are_capped_and_regular() {
        let d = scratch("cap");
        std::fs::create_dir_all(&d).unwrap();
        let f = d.join("a.toml");
        std::fs::write(&f, b"x = 1\n").unwrap();
        assert_eq!(read_text(&f, 100).unwrap(), "x = 1\n");
        assert!(matches!(
            read_capped(&f, 3),
            Err(FileError::TooLarge { size: 6, .. })
        ));
        assert!(matches!(
            read_capped(&d, 100),
            Err(FileError::NotRegular {
                kind: "a directory",
                ..
            })
        ));
        // A character device that never ends.
        assert!(matches!(
            read_capped(Path::new("/dev/zero"), 100),
            Err(FileError::NotRegular { .. })
        ));
        // A FIFO nobody writes: refused at once, not a hang.
        let fifo = d.join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(matches!(
            read_capped(&fifo, 100),
            Err(FileError::NotRegular { kind: "a FIFO", .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn state_dir_never_follows_links() {
        let d = scratch("state");
        let s = StateDir::open(&d).unwrap();
        assert_eq!(s.read("learned.json", 100).unwrap(), None);
        s.replace("learned.json", b"{}").unwrap();
        assert_eq!(s.read("learned.json", 100).unwrap().unwrap(), b"{}");
        let mode = std::fs::metadata(d.join("learned.json")).unwrap().mode();
        assert_eq!(mode & 0o777, 0o600);
        // A planted link at the temporary name: removed, its target untouched.
        let victim = scratch("victim");
        std::fs::write(&victim, b"precious").unwrap();
        std::os::unix::fs::symlink(&victim, d.join("learned.json.tmp")).unwrap();
        s.replace("learned.json", b"{\"a\":1}").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        // A link as the file itself: refused on read.
        std::fs::remove_file(d.join("learned.json")).unwrap();
        std::os::unix::fs::symlink(&victim, d.join("learned.json")).unwrap();
        assert!(matches!(
            s.read("learned.json", 100),
            Err(FileError::NotRegular {
                kind: "a symbolic link",
                ..
            })
        ));
        // A directory writable by others: refused.
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(StateDir::open(&d), Err(FileError::Unsafe { .. })));
        std::fs::remove_file(&victim).unwrap();
        std::fs::remove_dir_all(&d).unwrap();
    }
}
