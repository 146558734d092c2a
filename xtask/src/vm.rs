//! `cargo xtask test --kernel debian-6.1`: the kernel-facing tests inside a
//! qemu VM (software emulation) booting another kernel than the host's.
//!
//! The VM has no disk: an initramfs holds busybox, the few tools the tests
//! drive (ip, nft, ss, modprobe) with their shared libraries, the kernel's
//! network modules, and the test binary and `kato` at their host paths (the
//! tests find `kato` through the compile-time CARGO_BIN_EXE_kato). The
//! result comes back on the serial console as one marker line.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context as _, Result};

use crate::{cargo, setup, status};

/// A kernel the tests can run on: a Debian package name pattern.
struct Kernel {
    name: &'static str,
    /// `apt-cache search --names-only` regex; the highest ABI number wins.
    package: &'static str,
}

const KERNELS: &[Kernel] = &[
    Kernel {
        name: "debian-6.1",
        package: r"^linux-image-6\.1\.0-[0-9]+-cloud-amd64-unsigned$",
    },
    // The only one here with fentry allowed and the reset-reason
    // tracepoint argument (6.10+ traces replies from TIME_WAIT and no socket).
    Kernel {
        name: "debian-6.12",
        package: r"^linux-image-6\.12\.[0-9]+\+deb12-cloud-amd64-unsigned$",
    },
];

/// The tests that run inside the VM (module filters of the `kernel` test):
/// the keepalive life cycle (dead peer v4/v6, healthy peer), the snapshot
/// iterators against `ss`, doctor's report of the attach path, and IPVS
/// (left out of the host run by name: the host's kernel has no ip_vs).
/// IPVS needs the ip_vs module, which only the VM's kernel has.
pub const DEFAULT_FILTERS: &[&str] = &[
    "keepalive::",
    // Probes decided in the kernel: a hash map allocated as used, from
    // the timer's program (fentry or tracepoint).
    "quiet::",
    "sockets::",
    "doctor::",
    "ipvs::",
    // Pure cgroup v2 (the host is hybrid): a unit named from a socket's cgroup.
    "workload::a_process_in_a_service_cgroup",
];

/// Kernel tests the host run leaves out (its kernel lacks the feature);
/// [`DEFAULT_FILTERS`] runs them here.
pub const HOST_SKIPS: &str = "ipvs::a_keepalive_slower_than_an_ipvs_service_is_at_risk";

/// Every test runs once per attach path (`KATO_TEST_ATTACH`): the kernel's
/// own choice (fentry on both VM kernels: `kato_build_info` in their
/// logs), then tracepoints forced. fentry forced runs with the server
/// tests: a forced fentry run of these too repeated auto's (3 min per
/// kernel of a test command that must stay under 30).
pub const ATTACH_PATHS: &[&str] = &["auto", "tracepoint"];

/// Verdicts against real servers (nginx, HAProxy, PostgreSQL, a NAT
/// router): under fentry only, forced (both VM kernels allow it, and auto
/// would fall back to tracepoints unseen; the host runs the tracepoint
/// path), for the time emulation takes.
pub const SERVER_FILTERS: &[&str] = &["truth::", "zombies::"];

/// `kato protect` changes sockets, not traces them: once, on the kernel's
/// own attach path (it loads the iterators and its sock_ops program alike
/// on every path).
pub const PROTECT_FILTERS: &[&str] = &["protect::"];

/// What one VM boot runs: each filter under its attach paths.
pub type Runs = Vec<(String, Vec<&'static str>)>;

/// The default runs: [`DEFAULT_FILTERS`] under every attach path, then
/// [`SERVER_FILTERS`] under the kernel's own.
pub fn default_runs() -> Runs {
    DEFAULT_FILTERS
        .iter()
        .map(|f| ((*f).to_owned(), ATTACH_PATHS.to_vec()))
        .chain(
            SERVER_FILTERS
                .iter()
                .map(|f| ((*f).to_owned(), vec!["fentry"])),
        )
        .chain(
            PROTECT_FILTERS
                .iter()
                .map(|f| ((*f).to_owned(), vec!["auto"])),
        )
        .collect()
}

/// Host tools copied into the VM with their libraries: the network tools,
/// and the real servers and observers the server tests drive.
const TOOLS: &[&str] = &[
    "/usr/sbin/ip",
    "/usr/sbin/nft",
    "/usr/bin/ss",
    "/usr/bin/kmod",
    "/usr/bin/setpriv",
    "/usr/sbin/ipvsadm",
    "/usr/sbin/nginx",
    "/usr/sbin/haproxy",
    "/usr/bin/tcpdump",
    "/usr/sbin/conntrack",
    "/usr/sbin/bpftool",
    "/usr/bin/redis-server",
];

/// PostgreSQL's binaries (Debian's, by major version) and the share
/// directory `initdb` reads; found at build time.
fn postgres_dirs() -> Vec<PathBuf> {
    let mut dirs = vec![];
    for base in ["/usr/lib/postgresql", "/usr/share/postgresql"] {
        if let Ok(rd) = std::fs::read_dir(base) {
            dirs.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
    }
    dirs
}

/// Accounts the servers run as (PostgreSQL refuses root).
/// tcpdump drops to its own user even when told otherwise.
const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\npostgres:x:101:104::/var/lib/postgresql:/bin/sh\ntcpdump:x:102:105::/nonexistent:/bin/false\nnobody:x:65534:65534::/nonexistent:/bin/false\n";
const GROUP: &str = "root:x:0:\npostgres:x:104:\ntcpdump:x:105:\nnogroup:x:65534:\n";

/// Module trees the tests need (veth, nf_tables, conntrack and what they use).
const MODULE_DIRS: &[&str] = &[
    "kernel/net",
    "kernel/lib",
    "kernel/crypto",
    "kernel/drivers/net",
];

const MARKER: &str = "KATO-VM-RC=";
/// A full run takes about 4 minutes; a hung guest fails well before CI's limit.
const BOOT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

pub fn names() -> Vec<&'static str> {
    KERNELS.iter().map(|k| k.name).collect()
}

/// Runs the kernel tests of `runs` (each filter separately, one
/// namespace-creating test at a time, under each of its attach paths) in a
/// VM booting `kernel`.
pub fn test(kernel: &str, runs: &Runs) -> Result<()> {
    prepare(kernel, runs)?.boot()
}

/// Every kernel's VM at once: the images are made one after the other,
/// then the VMs boot together (one vCPU each; the host's cores are idle
/// by then), which halves the test command's longest stage.
pub fn test_all(runs: &Runs) -> Result<()> {
    let vms = names()
        .into_iter()
        .map(|k| prepare(k, runs))
        .collect::<Result<Vec<_>>>()?;
    let results: Vec<Result<()>> = std::thread::scope(|s| {
        let running: Vec<_> = vms.iter().map(|vm| s.spawn(|| vm.boot())).collect();
        running
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| bail!("a VM's thread panicked")))
            .collect()
    });
    let failed: Vec<String> = results
        .into_iter()
        .filter_map(|r| r.err().map(|e| format!("{e:#}")))
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        bail!("{}", failed.join("; "))
    }
}

/// A VM ready to boot: its kernel and its initramfs.
pub struct Vm {
    vmlinuz: PathBuf,
    initramfs: PathBuf,
    release: String,
}

impl Vm {
    fn boot(&self) -> Result<()> {
        boot(&self.vmlinuz, &self.initramfs, &self.release)
    }
}

/// Unpacks `kernel` and builds its initramfs (in target/vm/KERNEL/).
fn prepare(kernel: &str, runs: &Runs) -> Result<Vm> {
    let k = KERNELS
        .iter()
        .find(|k| k.name == kernel)
        .with_context(|| format!("unknown --kernel {kernel}; known: {}", names().join(", ")))?;
    setup::ensure_packages(&["qemu-system-x86", "cpio", "busybox-static", "kmod"])?;
    let dir = PathBuf::from("target/vm").join(k.name);
    std::fs::create_dir_all(&dir)?;
    let root = unpack_kernel(k, &dir)?;
    let release = only_entry(&root.join("lib/modules"))?;
    let test_bin = build_tests()?;
    let kato =
        std::fs::canonicalize("target/debug/kato").context("target/debug/kato (build first)")?;
    let rootfs = dir.join("rootfs");
    assemble(&rootfs, &root, &release, &test_bin, &kato, runs)?;
    status(
        Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet > ../initramfs.cpio")
            .current_dir(&rootfs),
    )?;
    Ok(Vm {
        vmlinuz: root.join("boot").join(format!("vmlinuz-{release}")),
        initramfs: dir.join("initramfs.cpio"),
        release,
    })
}

/// Downloads (once) and unpacks the newest matching kernel package.
fn unpack_kernel(k: &Kernel, dir: &Path) -> Result<PathBuf> {
    let list = Command::new("apt-cache")
        .args(["search", "--names-only", k.package])
        .output()?;
    let mut names: Vec<String> = String::from_utf8_lossy(&list.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect();
    names.sort_by_key(|n| abi(n));
    // Downloaded .debs in `dir`, highest ABI number last.
    let debs = || -> Vec<PathBuf> {
        let mut debs: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "deb"))
            .collect();
        debs.sort_by_key(|p| abi(&p.file_name().unwrap_or_default().to_string_lossy()));
        debs
    };
    let named = |name: &str| {
        debs().into_iter().find(|p| {
            p.file_name()
                .and_then(|f| f.to_str())
                .is_some_and(|f| f.starts_with(&format!("{name}_")))
        })
    };
    let deb = match names.last() {
        Some(name) => match named(name) {
            Some(p) => p,
            None => {
                eprintln!("xtask vm: downloading {name}");
                status(
                    Command::new("apt-get")
                        .args(["download", name])
                        .current_dir(dir),
                )?;
                named(name).context("apt-get download left no .deb")?
            }
        },
        // No package index (offline): a kernel downloaded earlier still works.
        None => debs().pop().with_context(|| {
            format!("no Debian package matches {} (apt-get update?)", k.package)
        })?,
    };
    let root = dir.join(deb.file_stem().context("deb name")?);
    if !root.join("boot").exists() {
        status(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
    }
    Ok(root)
}

/// The number that orders a kernel package among its kind:
/// `linux-image-6.1.0-54-cloud-amd64-unsigned` → 54 (Debian's ABI),
/// `linux-image-6.12.113+deb12-cloud-amd64-unsigned` → 113 (the patch level).
fn abi(name: &str) -> u32 {
    let version = name.strip_prefix("linux-image-").unwrap_or(name);
    let abi = version.split('-').nth(1).and_then(|n| n.parse().ok());
    abi.or_else(|| {
        version
            .split(['+', '-'])
            .next()?
            .split('.')
            .nth(2)?
            .parse()
            .ok()
    })
    .unwrap_or(0)
}

fn only_entry(dir: &Path) -> Result<String> {
    let mut entries =
        std::fs::read_dir(dir)?.filter_map(|e| e.ok()?.file_name().into_string().ok());
    let first = entries
        .next()
        .with_context(|| format!("{} is empty", dir.display()))?;
    ensure!(
        entries.next().is_none(),
        "{} holds more than one kernel",
        dir.display()
    );
    Ok(first)
}

/// Builds the `kernel` test binary and returns its path.
fn build_tests() -> Result<PathBuf> {
    crate::build(false)?;
    let out = cargo()
        .args([
            "test",
            "--package",
            "keepalive-user",
            "--test",
            "kernel",
            "--no-run",
            "--message-format=json",
        ])
        .stderr(Stdio::inherit())
        .output()?;
    ensure!(out.status.success(), "building the kernel tests failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| {
            l.contains("\"reason\":\"compiler-artifact\"") && l.contains("\"name\":\"kernel\"")
        })
        .find_map(|l| {
            let rest = &l[l.find("\"executable\":\"")? + 14..];
            Some(PathBuf::from(&rest[..rest.find('"')?]))
        })
        .context("cargo did not report the kernel test executable")
}

fn assemble(
    rootfs: &Path,
    kernel_root: &Path,
    release: &str,
    test_bin: &Path,
    kato: &Path,
    runs: &Runs,
) -> Result<()> {
    if rootfs.exists() {
        std::fs::remove_dir_all(rootfs)?;
    }
    for d in [
        "bin", "sbin", "proc", "sys", "dev", "tmp", "run", "etc", "boot", "var",
    ] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    let modules = format!("lib/modules/{release}");
    for sub in MODULE_DIRS {
        let to = rootfs.join(&modules).join(sub);
        std::fs::create_dir_all(to.parent().unwrap())?;
        status(
            Command::new("cp")
                .arg("-a")
                .arg(kernel_root.join(&modules).join(sub))
                .arg(&to),
        )?;
    }
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        std::fs::copy(
            kernel_root.join(&modules).join(f),
            rootfs.join(&modules).join(f),
        )?;
    }
    // Loaded uncompressed: Debian's 6.12 ships .ko.xz, and what the
    // guest's modprobe hands the kernel must be plain ELF.
    status(
        Command::new("find")
            .arg(rootfs.join(&modules))
            .args(["-name", "*.ko.xz", "-exec", "xz", "-d", "{}", "+"]),
    )?;
    status(Command::new("depmod").arg("-b").arg(rootfs).arg(release))?;
    // CONFIG_HZ for kato (Debian kernels have no /proc/config.gz).
    let config = format!("boot/config-{release}");
    std::fs::copy(kernel_root.join(&config), rootfs.join(&config))?;
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))
        .context("busybox (busybox-static)")?;
    for tool in TOOLS {
        copy_with_libs(rootfs, Path::new(tool))?;
    }
    for dir in postgres_dirs() {
        let to = under(rootfs, &dir);
        std::fs::create_dir_all(to.parent().unwrap())?;
        status(Command::new("cp").arg("-a").arg(&dir).arg(&to))?;
        for bin in std::fs::read_dir(dir.join("bin"))
            .into_iter()
            .flatten()
            .flatten()
        {
            copy_libs(rootfs, &bin.path())?;
        }
    }
    std::fs::write(rootfs.join("etc/passwd"), PASSWD)?;
    std::fs::write(rootfs.join("etc/group"), GROUP)?;
    std::os::unix::fs::symlink("/usr/bin/kmod", rootfs.join("sbin/modprobe"))?;
    for bin in [test_bin, kato] {
        let to = under(rootfs, bin);
        std::fs::create_dir_all(to.parent().unwrap())?;
        // Debug info is most of their size and the VM reads it from RAM.
        status(
            Command::new("objcopy")
                .arg("--strip-debug")
                .arg(bin)
                .arg(&to),
        )?;
        copy_libs(rootfs, bin)?;
    }
    std::fs::create_dir_all(under(rootfs, &std::fs::canonicalize("keepalive-user")?))?;
    let init = rootfs.join("init");
    std::fs::write(&init, init_script(test_bin, runs))?;
    status(Command::new("chmod").arg("+x").arg(&init))
}

/// `path` inside `rootfs`, at the same absolute location.
fn under(rootfs: &Path, path: &Path) -> PathBuf {
    rootfs.join(path.strip_prefix("/").unwrap_or(path))
}

fn copy_with_libs(rootfs: &Path, bin: &Path) -> Result<()> {
    let to = under(rootfs, bin);
    std::fs::create_dir_all(to.parent().unwrap())?;
    std::fs::copy(bin, &to).with_context(|| format!("copying {}", bin.display()))?;
    copy_libs(rootfs, bin)
}

/// Copies the shared libraries `ldd` lists for `bin` (and the loader).
fn copy_libs(rootfs: &Path, bin: &Path) -> Result<()> {
    let out = Command::new("ldd").arg(bin).output()?;
    for lib in String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let lib = Path::new(lib);
        let to = under(rootfs, lib);
        if !to.exists() {
            std::fs::create_dir_all(to.parent().unwrap())?;
            std::fs::copy(lib, &to).with_context(|| format!("copying {}", lib.display()))?;
        }
    }
    Ok(())
}

/// PID 1 of the VM: mounts, loads the modules, runs every filter under
/// every attach path, prints the marker and powers off.
fn init_script(test_bin: &Path, runs: &Runs) -> String {
    let bin = test_bin.display();
    let mut script = String::new();
    // Every path a run asks for (the server tests' fentry too), in order.
    let mut paths: Vec<&str> = ATTACH_PATHS.to_vec();
    for p in runs.iter().flat_map(|(_, a)| a) {
        if !paths.contains(p) {
            paths.push(p);
        }
    }
    for path in paths {
        for (f, _) in runs.iter().filter(|(_, a)| a.contains(&path)) {
            script += &format!(
                "echo \"KATO-VM: attach={path} tests={f}\"\nKATO_TEST_ATTACH={path} {bin} --test-threads=1 {f} || rc=1\n"
            );
        }
    }
    let runs = script;
    format!(
        r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
# The host's iproute2 before busybox's applets of the same names.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
# PostgreSQL's shared memory.
mkdir -p /dev/shm && mount -t tmpfs shm /dev/shm
# No tmpfs on /tmp: the initramfs is writable already, and a checkout under
# /tmp (the binaries sit at their host paths) would be hidden by it.
mount -t tmpfs run /run
mkdir -p /run/netns /sys/fs/bpf
ln -s /run /var/run
mount -t bpf bpf /sys/fs/bpf
# Pure cgroup v2, as on current distributions (this host is hybrid).
mount -t cgroup2 cgroup2 /sys/fs/cgroup
echo /sbin/modprobe > /proc/sys/kernel/modprobe
for m in veth nf_tables nft_reject_inet nft_ct nft_nat nft_masq nf_conntrack nf_conntrack_netlink ip_vs ip_vs_rr dummy; do modprobe $m || echo "KATO-VM: modprobe $m failed"; done
ip link set lo up
cd {cwd}
echo "KATO-VM: kernel $(uname -r), $(nproc) CPUs"
rc=0
{runs}echo "{MARKER}$rc"
poweroff -f
"#,
        cwd = std::fs::canonicalize("keepalive-user")
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "/".into()),
    )
}

/// Boots the VM and streams its console; the marker line gives the result.
fn boot(vmlinuz: &Path, initramfs: &Path, release: &str) -> Result<()> {
    eprintln!("xtask vm: booting {release} under qemu (TCG)");
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            "tcg",
            "-cpu",
            "max",
            // One vCPU: with two, a starved vCPU thread on this 2-core host
            // once stalled RCU in the guest (soft lockup) until the timeout.
            "-smp",
            "1",
            "-m",
            "2048",
            "-nographic",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args(["-append", "console=ttyS0 panic=-1 quiet"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .context("cannot start qemu-system-x86_64")?;
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    // Two VMs print at once: each line says whose it is.
    let tag = release.split('-').next().unwrap_or(release).to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // Serial consoles end lines with \r\n.
            let line = line.trim_end_matches('\r').to_owned();
            println!("[vm {tag}] {line}");
            if let Some(rc) = line.strip_prefix(MARKER) {
                let _ = tx.send(rc.trim().parse::<i32>().unwrap_or(-1));
            }
        }
    });
    let start = Instant::now();
    let rc = rx.recv_timeout(BOOT_TIMEOUT);
    let _ = child.wait_timeout_or_kill(Duration::from_secs(30));
    match rc {
        Ok(0) => {
            eprintln!(
                "xtask vm: every test passed on {release} ({:.0?})",
                start.elapsed()
            );
            Ok(())
        }
        Ok(rc) => bail!("kernel tests failed inside the {release} VM (rc {rc})"),
        Err(_) => bail!("the {release} VM printed no result within {BOOT_TIMEOUT:?}"),
    }
}

trait WaitTimeout {
    fn wait_timeout_or_kill(&mut self, limit: Duration) -> std::io::Result<()>;
}

impl WaitTimeout for std::process::Child {
    /// Waits for poweroff; kills qemu if the guest hangs after the marker.
    fn wait_timeout_or_kill(&mut self, limit: Duration) -> std::io::Result<()> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if self.try_wait()?.is_some() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        self.kill()?;
        self.wait().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn abi_number_from_package_name() {
        assert_eq!(super::abi("linux-image-6.1.0-54-cloud-amd64-unsigned"), 54);
        assert_eq!(super::abi("linux-image-6.1.0-9-cloud-amd64-unsigned"), 9);
        assert_eq!(
            super::abi("linux-image-6.12.113+deb12-cloud-amd64-unsigned"),
            113
        );
        assert_eq!(super::abi("garbage"), 0);
    }
}
