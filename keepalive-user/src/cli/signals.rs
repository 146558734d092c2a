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

/// While held, a thread of its own exits the process (code 0, after
/// printing `said`) on SIGINT or SIGTERM: for work that blocks the runtime's
/// thread. Dropping it stops the thread.
pub struct ExitOnShutdown {
    done: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

pub fn exit_on_shutdown(said: &'static str) -> ExitOnShutdown {
    let (done, mut cancelled) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("kato-signals".into())
        .spawn(move || {
            // It holds nothing the work needs.
            let _ = keepalive_user::caps::drop_all_on_this_thread();
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let Ok(stop) = shutdown() else { return };
                tokio::select! {
                    () = stop => {
                        eprintln!("{said}");
                        // Exiting closes every program, map and link.
                        std::process::exit(0);
                    }
                    _ = &mut cancelled => {}
                }
            });
        })
        .ok();
    ExitOnShutdown {
        done: Some(done),
        thread,
    }
}

impl Drop for ExitOnShutdown {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            let _ = d.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
