//! Idempotent installation of kato's build and test dependencies.
//! Each step checks first and only acts when something is missing.

use std::process::Command;

use anyhow::{bail, Context as _, Result};

use crate::status;

/// bpf-linker must link the same LLVM major as the nightly rustc.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// Debian packages: the LLVM bpf-linker builds against, and what tests drive
/// (nft, ip, bpftool, ss/netstat, setpriv, promtool/prometheus, nginx, HAProxy,
/// PostgreSQL, Redis, tcpdump, systemd-analyze, strace, conntrack).
const PACKAGES: &[&str] = &[
    "llvm-22-dev",
    "libpolly-22-dev",
    "zlib1g-dev",
    "libzstd-dev",
    "nftables",
    "iproute2",
    "bpftool",
    "prometheus",
    "nginx",
    // The deploy tests: which system calls the agent makes.
    "strace",
    // The TLS test makes its own CA and server certificate.
    "openssl",
    // The conntrack tests compare kato with `conntrack -L`.
    "conntrack",
    // The IPVS test (in the VM) sets up a virtual service.
    "ipvsadm",
    // containerd-client compiles containerd's protobuf API at build time.
    "protobuf-compiler",
    // The workload tests run a container without any image: containerd and
    // runc, busybox-static as its root filesystem.
    "containerd",
    "runc",
    "busybox-static",
    // The real-server verdict tests: HAProxy, PostgreSQL (server, initdb,
    // psql), and tcpdump to see which end sent each reset.
    "haproxy",
    "postgresql",
    "tcpdump",
    // kato protect keeps a real server's connections alive: Redis, with its
    // own keepalive off (`tcp-keepalive 0`).
    "redis-server",
    "python3",
    // cargo xtask package: the image without a registry or daemon, and the
    // package's checks.
    "umoci",
    "lintian",
    // kato top and the tables, as a user's terminal shows them (80x24 and
    // 200x50): send-keys, capture-pane.
    "tmux",
    // On fresh machines already; listed so tests can rely on them.
    "net-tools",
    "util-linux",
    "systemd",
];

fn output(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// What only `cargo xtask bench` needs: the bpftrace peer, tracefs mounted
/// (bpftrace attaches classic tracepoints), BPF run-time statistics.
pub fn ensure_bench() -> Result<()> {
    ensure_packages(&["bpftrace", "wrk", "time"])?;
    if !std::path::Path::new("/sys/kernel/tracing/events").exists() {
        status(Command::new("mount").args(["-t", "tracefs", "nodev", "/sys/kernel/tracing"]))?;
    }
    Ok(())
}

pub fn ensure() -> Result<()> {
    nightly_rust_src()?;
    lint_tools()?;
    let llvm = nightly_llvm_major()?;
    debian_packages(llvm)?;
    bpf_linker(llvm)?;
    python_tools()?;
    Ok(())
}

/// rustfmt and clippy for the stable toolchain (`cargo xtask test` runs both).
fn lint_tools() -> Result<()> {
    let installed = output(Command::new("rustup").args(["component", "list", "--installed"]))
        .unwrap_or_default();
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    eprintln!(
        "xtask setup: adding {} to the stable toolchain",
        missing.join(" and ")
    );
    status(
        Command::new("rustup")
            .args(["component", "add"])
            .args(&missing),
    )
}

/// Python tools the tests run, pinned, in a virtual environment of their
/// own (Debian's Python refuses `pip install` outside one).
pub const VENV: &str = "target/tools/venv";
const PYTHON_TOOLS: &[(&str, &str)] = &[
    // The Kubernetes manifests against the API's schemas.
    ("kubernetes-validate", "kubernetes-validate==1.37.0"),
    // A real OTLP/HTTP receiver that prints what it gets as JSON lines.
    ("oteltap", "oteltap==1.0.0"),
];

fn python_tools() -> Result<()> {
    let bin = std::path::Path::new(VENV).join("bin");
    let missing: Vec<&str> = PYTHON_TOOLS
        .iter()
        .filter(|(exe, _)| !bin.join(exe).exists())
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if !bin.join("pip").exists() {
        ensure_packages(&["python3-venv"])?;
        status(Command::new("python3").args(["-m", "venv", VENV]))?;
    }
    eprintln!("xtask setup: installing {} into {VENV}", missing.join(" "));
    status(
        Command::new(bin.join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&missing),
    )
}

fn nightly_rust_src() -> Result<()> {
    let installed = output(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]));
    match installed {
        None => {
            eprintln!(
                "xtask setup: installing the nightly toolchain (eBPF programs need -Z build-std)"
            );
            status(Command::new("rustup").args([
                "toolchain",
                "install",
                "nightly",
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))
        }
        Some(list) if list.lines().any(|l| l.starts_with("rust-src")) => Ok(()),
        Some(_) => {
            eprintln!("xtask setup: adding rust-src to the nightly toolchain");
            status(Command::new("rustup").args([
                "component",
                "add",
                "rust-src",
                "--toolchain",
                "nightly",
            ]))
        }
    }
}

/// "LLVM version: 22.1.4" from `rustc +nightly -vV` → 22.
fn nightly_llvm_major() -> Result<u32> {
    let text = output(Command::new("rustup").args(["run", "nightly", "rustc", "-vV"]))
        .context("cannot run the nightly rustc (`rustup run nightly rustc -vV`)")?;
    text.lines()
        .find_map(|l| l.strip_prefix("LLVM version: "))
        .and_then(|v| v.split('.').next()?.parse().ok())
        .context("nightly rustc did not report its LLVM version")
}

fn debian_packages(llvm: u32) -> Result<()> {
    let wanted: Vec<String> = PACKAGES
        .iter()
        .map(|p| p.replace("22", &llvm.to_string()))
        .collect();
    let wanted: Vec<&str> = wanted.iter().map(String::as_str).collect();
    ensure_packages(&wanted)
}

pub fn ensure_packages(wanted: &[&str]) -> Result<()> {
    let missing: Vec<&&str> = wanted
        .iter()
        .filter(|p| {
            output(Command::new("dpkg-query").args(["-W", "-f=${Status}", p]))
                .is_none_or(|s| !s.contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = missing.iter().map(|s| **s).collect();
    eprintln!(
        "xtask setup: installing Debian packages: {}",
        names.join(" ")
    );
    if Command::new("apt-get").arg("--version").output().is_err() {
        bail!(
            "apt-get is not available; install these packages by hand: {}",
            names.join(" ")
        );
    }
    status(Command::new("apt-get").args(["update", "-qq"]))
        .context("apt-get update failed (are you root?)")?;
    status(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&names)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
    .context("apt-get install failed (are you root?)")
}

/// The LLVM major bpf-linker is linked against, from the libLLVM it loads.
fn linked_llvm_major(bin: &str) -> Option<u32> {
    llvm_major_from_ldd(&output(Command::new("ldd").arg(bin))?)
}

/// `libLLVM.so.22.1 => ...` or `libLLVM-22.so => ...` in ldd output → 22.
fn llvm_major_from_ldd(ldd: &str) -> Option<u32> {
    ldd.lines().find_map(|l| {
        let name = l.split_whitespace().next()?;
        let rest = name.strip_prefix("libLLVM")?;
        let digits: String = rest
            .trim_start_matches(['-', '.', 's', 'o'])
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

fn bpf_linker(llvm: u32) -> Result<()> {
    let which = output(Command::new("sh").args(["-c", "command -v bpf-linker"]))
        .map(|s| s.trim().to_owned());
    if let Some(bin) = which.as_deref().filter(|b| !b.is_empty()) {
        let works = Command::new(bin)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
        match linked_llvm_major(bin) {
            Some(m) if works && m == llvm => return Ok(()),
            Some(m) => eprintln!(
                "xtask setup: {bin} links LLVM {m}, nightly rustc uses LLVM {llvm}: rebuilding"
            ),
            None => eprintln!("xtask setup: cannot tell which LLVM {bin} links: rebuilding"),
        }
    } else {
        eprintln!(
            "xtask setup: bpf-linker not found: building it against LLVM {llvm} (about 75 s)"
        );
    }
    let prefix = format!("/usr/lib/llvm-{llvm}");
    let path = format!("{prefix}/bin:{}", std::env::var("PATH").unwrap_or_default());
    status(
        crate::cargo()
            .args([
                "install",
                "--locked",
                "--force",
                "bpf-linker",
                "--version",
                BPF_LINKER_VERSION,
            ])
            .args([
                "--no-default-features",
                "--features",
                &format!("llvm-{llvm}"),
            ])
            .env("PATH", path),
    )
    .with_context(|| {
        format!("building bpf-linker against LLVM {llvm} failed (needs llvm-{llvm}-dev)")
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn llvm_major_from_ldd_output() {
        let debian = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibLLVM.so.22.1 => /usr/lib/llvm-22/lib/libLLVM.so.22.1 (0x00007fc5)\n";
        assert_eq!(super::llvm_major_from_ldd(debian), Some(22));
        let rust =
            "\tlibLLVM-21-rust-1.90.0-nightly.so => /x/lib/libLLVM-21-rust-1.90.0-nightly.so\n";
        assert_eq!(super::llvm_major_from_ldd(rust), Some(21));
        assert_eq!(
            super::llvm_major_from_ldd("\tlibc.so.6 => /lib/libc.so.6\n"),
            None
        );
    }
}
