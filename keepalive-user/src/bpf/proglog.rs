//! The programs' rare paths (a failed kernel read) reported through
//! aya-log, off unless asked for: `RUST_LOG=kato::ebpf=debug`.

use aya::Ebpf;
use log::{Log, Metadata, Record};

/// Where the programs' log lines appear (`RUST_LOG=kato::ebpf=debug`).
pub const TARGET: &str = "kato::ebpf";

/// aya-log-common's `Level::Debug`: the only level the programs use.
const DEBUG: u8 = 4;

/// `AYA_LOG_LEVEL` to load: debug when that target is enabled, else 0
/// (nothing: the verifier removes the log code from every program).
pub fn level() -> u8 {
    if log::log_enabled!(target: TARGET, log::Level::Debug) {
        DEBUG
    } else {
        0
    }
}

/// Forwards aya-log records under [`TARGET`], whatever module logged them.
struct Retarget;

impl Log for Retarget {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        log::logger().enabled(&Metadata::builder().level(m.level()).target(TARGET).build())
    }

    fn log(&self, r: &Record<'_>) {
        log::logger().log(
            &Record::builder()
                .args(*r.args())
                .level(r.level())
                .target(TARGET)
                .file(r.file())
                .line(r.line())
                .build(),
        );
    }

    fn flush(&self) {}
}

/// With logging on, drains the programs' log ring on the current tokio
/// runtime for as long as it runs.
pub fn start(ebpf: &mut Ebpf) {
    let Ok(rt) = tokio::runtime::Handle::try_current() else {
        log::debug!(target: TARGET, "no async runtime: program logs are not read");
        return;
    };
    let logger = match aya_log::EbpfLogger::init_with_logger(ebpf, Retarget) {
        Ok(l) => l,
        Err(e) => {
            log::warn!(target: TARGET, "program logs unavailable: {e}");
            return;
        }
    };
    let _guard = rt.enter();
    // SAFETY: the logger owns its ring's map fd and keeps it open for as
    // long as the AsyncFd holds it; nothing else closes or reuses that fd.
    let Ok(mut fd) = (unsafe {
        tokio::io::unix::AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE)
    }) else {
        return;
    };
    rt.spawn(async move {
        while let Ok(mut guard) = fd.readable_mut().await {
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
}
