//! `cargo xtask package`: the Debian package and the OCI image, from this
//! checkout, with nothing but what `cargo xtask setup` installs (dpkg-deb,
//! umoci, strip). Timestamps come from the last commit (SOURCE_DATE_EPOCH),
//! so two builds of one commit can be compared (docs/deploy.md says what
//! differs).

use std::{
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::status;

pub const OUT: &str = "target/package";
const VERSION: &str = env!("CARGO_PKG_VERSION");
/// The image's name in the archive's index (`ctr images import` and
/// `skopeo copy oci-archive:` take it from there).
pub const IMAGE_TAG: &str = VERSION;

/// Builds kato (`profile`: `release`, or `dev` for the tests' quicker
/// build of the same recipe) and both artefacts.
pub fn run(profile: &str) -> Result<()> {
    let epoch = source_date_epoch()?;
    let out = PathBuf::from(OUT);
    fs::create_dir_all(&out)?;
    let mut build = crate::cargo();
    build
        .args(["build", "--package", "keepalive-user", "--profile", profile])
        .env("SOURCE_DATE_EPOCH", &epoch);
    let dir = if profile == "dev" { "debug" } else { profile };
    // A release has no build paths in it: every rustc (the eBPF object's
    // too, which aya-build compiles with flags of its own) runs through a
    // wrapper that remaps them, in a target directory of its own (other
    // flags: a rebuild). The tests' dev build keeps the shared one.
    let built = if profile == "dev" {
        PathBuf::from(format!("target/{dir}/kato"))
    } else {
        build
            .env("RUSTC_WRAPPER", remap_wrapper(&out)?)
            .env("CARGO_TARGET_DIR", "target/package-build");
        PathBuf::from(format!("target/package-build/{dir}/kato"))
    };
    status(&mut build)?;
    // Stripped: no symbols or debug sections, which also carry build paths.
    let bin = out.join("kato");
    status(
        Command::new("strip")
            .args(["--strip-all", "--remove-section=.comment", "-o"])
            .arg(&bin)
            .arg(&built),
    )?;
    let deb = deb(&bin, &out, &epoch)?;
    let oci = oci(&bin, &out, &epoch)?;
    eprintln!("xtask package: {} and {}", deb.display(), oci.display());
    Ok(())
}

/// A RUSTC_WRAPPER adding `--remap-path-prefix` for the checkout, cargo's
/// registry and rustup's sources (the eBPF build compiles `core` from them).
fn remap_wrapper(out: &Path) -> Result<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let cargo_home = std::env::var("CARGO_HOME").unwrap_or_else(|_| format!("{home}/.cargo"));
    let rustup_home = std::env::var("RUSTUP_HOME").unwrap_or_else(|_| format!("{home}/.rustup"));
    let ws = std::env::current_dir()?;
    let script = format!(
        "#!/bin/sh\n# cargo xtask package: no build paths in what ships.\n\
         exec \"$@\" --remap-path-prefix={}=/build/kato --remap-path-prefix={cargo_home}=/build/cargo --remap-path-prefix={rustup_home}=/build/rustup\n",
        ws.display()
    );
    let path = fs::canonicalize(out)?.join("rustc-remap");
    fs::write(&path, script)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// The last commit's time, or SOURCE_DATE_EPOCH when set (a tarball build).
fn source_date_epoch() -> Result<String> {
    if let Ok(e) = std::env::var("SOURCE_DATE_EPOCH") {
        return Ok(e);
    }
    let out = Command::new("git")
        .args(["log", "-1", "--format=%ct"])
        .output()
        .context("git")?;
    ensure!(
        out.status.success(),
        "not a git checkout: set SOURCE_DATE_EPOCH to the release's time"
    );
    Ok(String::from_utf8(out.stdout)?.trim().to_owned())
}

fn revision() -> String {
    Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn fresh(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("cannot remove {}", dir.display()))?;
    }
    fs::create_dir_all(dir)?;
    Ok(())
}

/// Copies `from` to `root/to` with `mode`, making the directories.
fn put(root: &Path, to: &str, from: &Path, mode: u32) -> Result<()> {
    let dst = root.join(to.trim_start_matches('/'));
    fs::create_dir_all(dst.parent().context("no parent")?)?;
    fs::copy(from, &dst).with_context(|| format!("cannot copy {}", from.display()))?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn write(root: &Path, to: &str, text: &[u8], mode: u32) -> Result<()> {
    let dst = root.join(to.trim_start_matches('/'));
    fs::create_dir_all(dst.parent().context("no parent")?)?;
    fs::write(&dst, text)?;
    fs::set_permissions(&dst, fs::Permissions::from_mode(mode))?;
    Ok(())
}

fn output(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .output()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8(out.stdout)?)
}

/// The newest GLIBC_x.y symbol version the binary needs: its libc6 dependency.
fn glibc_needed(bin: &Path) -> Result<String> {
    let syms = output(Command::new("objdump").arg("-T").arg(bin))?;
    syms.split(|c: char| c.is_whitespace() || c == '(' || c == ')')
        .filter_map(|w| w.strip_prefix("GLIBC_"))
        .filter_map(|v| {
            let parts: Option<Vec<u32>> = v.split('.').map(|p| p.parse().ok()).collect();
            parts.map(|p| (p, v.to_owned()))
        })
        .max()
        .map(|(_, v)| v)
        .context("the binary names no GLIBC symbol version")
}

const COPYRIGHT: &str = "\
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: kato
Source: the kato repository (this package is built by `cargo xtask package`)

Files: *
Copyright: 2026 the kato developers
License: MIT or Apache-2.0

License: MIT or Apache-2.0
 kato is dual-licensed: use it under the MIT license or the Apache
 License, Version 2.0, at your option.
 .
 On Debian systems the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.
 .
 MIT: Permission is hereby granted, free of charge, to any person obtaining
 a copy of this software and associated documentation files (the
 \"Software\"), to deal in the Software without restriction, including
 without limitation the rights to use, copy, modify, merge, publish,
 distribute, sublicense, and/or sell copies of the Software, and to permit
 persons to whom the Software is furnished to do so, subject to the
 following conditions: The above copyright notice and this permission
 notice shall be included in all copies or substantial portions of the
 Software. THE SOFTWARE IS PROVIDED \"AS IS\", WITHOUT WARRANTY OF ANY
 KIND, EXPRESS OR IMPLIED.
";

/// What dh_installsystemd would write: the unit enabled and started on a
/// first install, restarted on upgrade; deb-systemd-helper honours
/// DPKG_ROOT, and nothing is started when installing into another root.
const POSTINST: &str = "#!/bin/sh
set -e
if [ \"$1\" = configure ] || [ \"$1\" = abort-upgrade ] || [ \"$1\" = abort-deconfigure ] || [ \"$1\" = abort-remove ]; then
\tdeb-systemd-helper unmask kato.service >/dev/null || true
\tif deb-systemd-helper --quiet was-enabled kato.service; then
\t\tdeb-systemd-helper enable kato.service >/dev/null || true
\telse
\t\tdeb-systemd-helper update-state kato.service >/dev/null || true
\tfi
\tif [ -z \"${DPKG_ROOT:-}\" ] && [ -d /run/systemd/system ]; then
\t\tsystemctl --system daemon-reload >/dev/null || true
\t\tif [ -n \"$2\" ]; then action=restart; else action=start; fi
\t\tdeb-systemd-invoke $action kato.service >/dev/null || true
\tfi
fi
";

const PRERM: &str = "#!/bin/sh
set -e
if [ -z \"${DPKG_ROOT:-}\" ] && [ \"$1\" = remove ] && [ -d /run/systemd/system ]; then
\tdeb-systemd-invoke stop kato.service >/dev/null || true
fi
";

/// On purge also the learned idle timeouts (the unit's StateDirectory;
/// with DynamicUser systemd keeps it under /var/lib/private).
const POSTRM: &str = "#!/bin/sh
set -e
if [ -z \"${DPKG_ROOT:-}\" ] && [ -d /run/systemd/system ]; then
\tsystemctl --system daemon-reload >/dev/null || true
fi
if [ \"$1\" = remove ] && command -v deb-systemd-helper >/dev/null; then
\tdeb-systemd-helper mask kato.service >/dev/null || true
fi
if [ \"$1\" = purge ]; then
\tif command -v deb-systemd-helper >/dev/null; then
\t\tdeb-systemd-helper purge kato.service >/dev/null || true
\t\tdeb-systemd-helper unmask kato.service >/dev/null || true
\tfi
\trm -rf \"${DPKG_ROOT:-}/var/lib/private/kato\" \"${DPKG_ROOT:-}/var/lib/kato\"
fi
";

fn gzip(path: &Path) -> Result<()> {
    // -n: no name or time in the header.
    status(Command::new("gzip").args(["-9nf"]).arg(path))
}

fn deb(bin: &Path, out: &Path, epoch: &str) -> Result<PathBuf> {
    let root = out.join("deb");
    fresh(&root)?;
    put(&root, "/usr/bin/kato", bin, 0o755)?;
    let unit = fs::read_to_string("docs/deploy/kato.service")?;
    ensure!(
        unit.matches("/usr/local/bin/kato").count() == 1,
        "docs/deploy/kato.service: expected one ExecStart=/usr/local/bin/kato"
    );
    let unit = unit
        .replace("/usr/local/bin/kato", "/usr/bin/kato")
        .replace("# /etc/systemd/system/kato.service\n", "");
    write(
        &root,
        "/lib/systemd/system/kato.service",
        unit.as_bytes(),
        0o644,
    )?;
    put(
        &root,
        "/etc/kato/kato.toml",
        Path::new("docs/deploy/kato.toml"),
        0o644,
    )?;
    for f in [
        "kato-rules.yml",
        "kato-dashboard.json",
        "kato-seccomp.json",
        "prometheus.yml",
        "daemonset.yaml",
    ] {
        put(
            &root,
            &format!("/usr/share/kato/{f}"),
            &Path::new("docs/deploy").join(f),
            0o644,
        )?;
    }
    let doc = "/usr/share/doc/kato";
    write(
        &root,
        &format!("{doc}/copyright"),
        COPYRIGHT.as_bytes(),
        0o644,
    )?;
    let date = output(Command::new("date").args(["-R", "-u", "-d", &format!("@{epoch}")]))?;
    let changelog = format!(
        "kato ({VERSION}) unstable; urgency=medium\n\n  * Built by cargo xtask package from commit {}.\n\n -- kato developers <kato@example.org>  {}\n",
        &revision()[..12.min(revision().len())],
        date.trim()
    );
    // A native package (no Debian revision): changelog, not changelog.Debian.
    write(
        &root,
        &format!("{doc}/changelog"),
        changelog.as_bytes(),
        0o644,
    )?;
    gzip(&root.join("usr/share/doc/kato/changelog"))?;
    // yaml-rust2 (the web config's parser) carries libyaml's messages, which
    // lintian takes for a copy of libyaml; kato links no C YAML library.
    write(
        &root,
        "/usr/share/lintian/overrides/kato",
        b"kato: embedded-library libyaml [usr/bin/kato]\n",
        0o644,
    )?;
    put(
        &root,
        &format!("{doc}/deploy.md"),
        Path::new("docs/deploy.md"),
        0o644,
    )?;
    gzip(&root.join("usr/share/doc/kato/deploy.md"))?;
    // Manual pages and completions, from the binary itself.
    let man = root.join("usr/share/man/man1");
    fs::create_dir_all(&man)?;
    status(Command::new(bin).arg("man").arg("--dir").arg(&man))?;
    for page in fs::read_dir(&man)? {
        let page = page?.path();
        fs::set_permissions(&page, fs::Permissions::from_mode(0o644))?;
        gzip(&page)?;
    }
    for (shell, to) in [
        ("bash", "/usr/share/bash-completion/completions/kato"),
        ("zsh", "/usr/share/zsh/vendor-completions/_kato"),
        ("fish", "/usr/share/fish/vendor_completions.d/kato.fish"),
    ] {
        let script = output(Command::new(bin).args(["completions", shell]))?;
        write(&root, to, script.as_bytes(), 0o644)?;
    }
    // Every directory 0755 whatever the umask.
    status(
        Command::new("find")
            .arg(&root)
            .args(["-type", "d", "-exec", "chmod", "0755", "{}", "+"]),
    )?;
    let md5sums = output(
        Command::new("sh")
            .arg("-c")
            .arg("find usr lib -type f | LC_ALL=C sort | xargs md5sum")
            .current_dir(&root),
    )?;
    let size_kib = output(
        Command::new("du")
            .args(["-sk", "--apparent-size"])
            .arg(&root),
    )?;
    let size_kib = size_kib.split_whitespace().next().unwrap_or("0");
    let control = format!(
        "Package: kato\n\
         Version: {VERSION}\n\
         Architecture: amd64\n\
         Maintainer: kato developers <kato@example.org>\n\
         Installed-Size: {size_kib}\n\
         Depends: libc6 (>= {}), libgcc-s1\n\
         Section: net\n\
         Priority: optional\n\
         Description: TCP keepalive observer for Linux (eBPF)\n \
         kato watches the kernel's TCP keepalive timer and reset paths with eBPF\n \
         and reports, per connection, keepalive probes, dead peers, resets and\n \
         their reasons, and connections a NAT or load balancer will forget.\n \
         It lists sockets like ss, traces events live, runs as a node agent\n \
         serving Prometheus metrics, and can keep idle connections alive.\n",
        glibc_needed(bin)?
    );
    write(&root, "/DEBIAN/control", control.as_bytes(), 0o644)?;
    write(&root, "/DEBIAN/conffiles", b"/etc/kato/kato.toml\n", 0o644)?;
    write(&root, "/DEBIAN/md5sums", md5sums.as_bytes(), 0o644)?;
    write(&root, "/DEBIAN/postinst", POSTINST.as_bytes(), 0o755)?;
    write(&root, "/DEBIAN/prerm", PRERM.as_bytes(), 0o755)?;
    write(&root, "/DEBIAN/postrm", POSTRM.as_bytes(), 0o755)?;
    let deb = out.join(format!("kato_{VERSION}_amd64.deb"));
    status(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "-Zxz", "--build"])
            .arg(&root)
            .arg(&deb)
            .env("SOURCE_DATE_EPOCH", epoch),
    )?;
    Ok(deb)
}

/// The shared libraries the binary loads, as ldd resolves them (glibc and
/// libgcc_s: Rust's std links them dynamically).
fn libraries(bin: &Path) -> Result<Vec<String>> {
    let ldd = output(Command::new("ldd").arg(bin))?;
    Ok(ldd
        .lines()
        .filter_map(|l| {
            let path = match l.split_once("=>") {
                Some((_, right)) => right.split_whitespace().next()?,
                None => l.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| path.to_owned())
        })
        .collect())
}

fn umoci(args: &[&str]) -> Result<()> {
    status(Command::new("umoci").args(args))
}

/// A FROM-scratch image: kato, the libraries it loads, its copyright; no
/// shell, no package manager. Entrypoint kato, command `agent` (the
/// DaemonSet gives its own arguments).
fn oci(bin: &Path, out: &Path, epoch: &str) -> Result<PathBuf> {
    let layout = out.join("oci");
    let bundle = out.join("oci-bundle");
    let _ = fs::remove_dir_all(&layout);
    let _ = fs::remove_dir_all(&bundle);
    let image = format!("{}:{IMAGE_TAG}", layout.display());
    let created = output(Command::new("date").args([
        "-u",
        "-d",
        &format!("@{epoch}"),
        "+%Y-%m-%dT%H:%M:%SZ",
    ]))?;
    let created = created.trim();
    umoci(&["init", "--layout", &layout.display().to_string()])?;
    umoci(&["new", "--image", &image])?;
    umoci(&["unpack", "--image", &image, &bundle.display().to_string()])?;
    let rootfs = bundle.join("rootfs");
    put(&rootfs, "/usr/bin/kato", bin, 0o755)?;
    for lib in libraries(bin)? {
        put(&rootfs, &lib, Path::new(&lib), 0o755)?;
    }
    write(
        &rootfs,
        "/usr/share/doc/kato/copyright",
        COPYRIGHT.as_bytes(),
        0o644,
    )?;
    // Mount points of the DaemonSet, present on a read-only root.
    for d in [
        "var/lib/kato",
        "run/netns",
        "host/sys/fs/cgroup",
        "host/run/containerd",
        "tmp",
    ] {
        fs::create_dir_all(rootfs.join(d))?;
    }
    status(
        Command::new("find")
            .arg(&rootfs)
            .args(["-type", "d", "-exec", "chmod", "0755", "{}", "+"]),
    )?;
    // The layer's times: the commit's.
    status(Command::new("find").arg(&rootfs).args([
        "-exec",
        "touch",
        "-h",
        "-d",
        &format!("@{epoch}"),
        "{}",
        "+",
    ]))?;
    let b = bundle.display().to_string();
    umoci(&[
        "repack",
        "--image",
        &image,
        "--history.created",
        created,
        &b,
    ])?;
    let revision = revision();
    let labels = [
        ("org.opencontainers.image.title", "kato"),
        (
            "org.opencontainers.image.description",
            "TCP keepalive observer for Linux (eBPF): dead peers, resets, idle kills",
        ),
        ("org.opencontainers.image.version", VERSION),
        ("org.opencontainers.image.revision", &revision),
        ("org.opencontainers.image.created", created),
        ("org.opencontainers.image.licenses", "MIT OR Apache-2.0"),
        ("org.opencontainers.image.vendor", "the kato developers"),
    ];
    let mut config: Vec<String> = vec![
        "config".into(),
        "--image".into(),
        image.clone(),
        "--created".into(),
        created.into(),
        "--history.created".into(),
        created.into(),
        "--os".into(),
        "linux".into(),
        "--architecture".into(),
        "amd64".into(),
        "--config.entrypoint".into(),
        "/usr/bin/kato".into(),
        "--config.cmd".into(),
        "agent".into(),
        "--config.user".into(),
        "0:0".into(),
        "--config.workingdir".into(),
        "/".into(),
        "--config.env".into(),
        "RUST_LOG=info".into(),
    ];
    for (k, v) in labels {
        config.push("--config.label".into());
        config.push(format!("{k}={v}"));
        config.push("--manifest.annotation".into());
        config.push(format!("{k}={v}"));
    }
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    umoci(&config)?;
    umoci(&["gc", "--layout", &layout.display().to_string()])?;
    let _ = fs::remove_dir_all(&bundle);
    let oci = out.join(format!("kato-{VERSION}.oci.tar"));
    status(
        Command::new("tar")
            .args([
                "--sort=name",
                "--format=gnu",
                &format!("--mtime=@{epoch}"),
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-C",
            ])
            .arg(&layout)
            .arg("-cf")
            .arg(fs::canonicalize(out)?.join(oci.file_name().context("name")?))
            .arg("."),
    )?;
    Ok(oci)
}
