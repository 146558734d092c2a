//! `cargo xtask fuzz`: libFuzzer via cargo fuzz over every parser of
//! untrusted input. `cargo xtask test` runs each briefly; the bench longer.

use std::process::Command;

use anyhow::{Context as _, Result};

use crate::status;

pub const TARGETS: [&str; 7] = [
    "decode_event",
    "parse_config",
    "parse_btf",
    "parse_rule",
    "http_head",
    "parse_web_config",
    "parse_conntrack",
];
/// Seconds per target in `cargo xtask test`.
pub const CI_SECS: u64 = 5;
const CARGO_FUZZ_VERSION: &str = "0.13.2";

fn ensure_cargo_fuzz() -> Result<()> {
    let have = Command::new("cargo")
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have {
        eprintln!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION}");
        status(crate::cargo().args([
            "install",
            "--locked",
            "cargo-fuzz",
            "--version",
            CARGO_FUZZ_VERSION,
        ]))
        .context("installing cargo-fuzz")?;
    }
    Ok(())
}

/// Every target for `secs` seconds each: optimized, under AddressSanitizer.
pub fn run(secs: u64) -> Result<()> {
    run_with(secs, &[])
}

/// The test command's short run: unoptimized, overflow checks on, no
/// sanitizer. Building every dependency optimized (one codegen unit) and
/// instrumented took 6 min of a 39 min test run on this machine; this
/// build takes 2.5, and a few seconds per target find the same panics.
pub fn quick() -> Result<()> {
    run_with(CI_SECS, &["--dev", "--sanitizer", "none"])
}

fn run_with(secs: u64, build: &[&str]) -> Result<()> {
    ensure_cargo_fuzz()?;
    for t in TARGETS {
        // A finding fails the run and leaves the input in fuzz/artifacts/.
        status(
            Command::new("rustup")
                .args(["run", "nightly", "cargo", "fuzz", "run"])
                .args(build)
                .args([t, "--", &format!("-max_total_time={secs}")]),
        )
        .with_context(|| {
            format!("fuzz target {t} found a failure (input in fuzz/artifacts/{t}/)")
        })?;
    }
    Ok(())
}
