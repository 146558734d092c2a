//! `kato protect`: keepalive switched on, or tightened, on other
//! processes' TCP connections whose path forgets idle flows sooner than
//! their keepalive would probe. The kernel does the setting
//! (`bpf_setsockopt`: sock_ops for new connections, the `iter/tcp` walk
//! for existing ones); this module says which rules and which sockets, and
//! decodes what was done. It never loosens a setting: each value becomes
//! the smaller of the socket's own and a third of the path's timeout.

pub mod cgroup;
pub mod change;
pub mod pin;
pub mod plan;
pub mod rules;

pub use change::{Change, Origin, Outcome, Settings};

/// A filesystem protect needs (cgroup2, bpf) that is neither mounted nor
/// mountable.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{path}: {source}")]
    Io {
        path: &'static str,
        source: std::io::Error,
    },
    #[error("{0} does not exist")]
    Missing(&'static str),
    #[error("no {fs} filesystem is mounted, and mounting one at {path} failed: {source}")]
    Mount {
        fs: &'static str,
        path: &'static str,
        source: std::io::Error,
    },
}
