//! From ring-buffer bytes to what kato reports, interpreted once:
//! [`Record`] (decoded) -> [`Derived`] kinds (per-socket history) ->
//! [`Observation`] (named: reset reason, errno and cause, idle times, how
//! the connection ended, owner) -> every [`Sink`].

pub mod closes;
pub mod derive;
pub mod memory;
pub mod names;
pub mod observation;
pub mod pipeline;
pub mod record;

#[cfg(test)]
pub(crate) mod fixture;

pub use closes::{Closed, ClosedBy};
pub use derive::{Derived, Deriver, Kind};
pub use names::{Errno, ErrorCause, ResetReason, ResetReasons, SocketError, ETIMEDOUT};
pub use observation::{Observation, Reuse, ReusedBy};
pub use pipeline::{Pipeline, Sink};
pub use record::{DecodeError, Record, RecordKind};
