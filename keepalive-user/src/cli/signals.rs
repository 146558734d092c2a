//! SIGINT/SIGTERM handling shared by the long-running subcommands.

use std::future::Future;

use anyhow::Context as _;
use tokio::signal::unix::{signal, SignalKind};

/// Registers the handlers now (not on first poll, which would leave a
/// window after start-up where a signal kills the process mid-flight) and
/// returns a future that resolves on the first SIGINT or SIGTERM.
pub fn shutdown() -> anyhow::Result<impl Future<Output = ()>> {
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
