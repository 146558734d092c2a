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

/// As [`shutdown`], for the agent: SIGHUP (a daemon's "reload") is logged
/// and ignored instead of killing it without a word; settings apply on a
/// restart.
pub fn agent_shutdown() -> anyhow::Result<impl Future<Output = ()>> {
    let stop = shutdown()?;
    let mut hup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
    Ok(async move {
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => return,
                _ = hup.recv() => log::warn!(
                    "SIGHUP ignored: kato agent reads its settings at start; restart it to apply changes"
                ),
            }
        }
    })
}
