//! The artefacts `cargo xtask package` leaves in target/package/ (`cargo
//! xtask test` builds them before the tests): the .deb checked, passed
//! through lintian and installed into a throwaway root; the OCI image
//! imported into a real containerd and run the way the DaemonSet runs it;
//! the Kubernetes manifests against the API's schemas.

use std::{
    collections::BTreeSet,
    net::{SocketAddr, TcpListener},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent_support::http_get,
    prometheus::{free_port, Prometheus},
    support::{require_root, run, DeadPeer, Netns},
    workload::Containerd,
};

const VERSION: &str = env!("CARGO_PKG_VERSION");

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_owned()
}

fn artefact(name: &str) -> PathBuf {
    let p = workspace().join("target/package").join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo xtask package` first (`cargo xtask test` does)",
        p.display()
    );
    p
}

fn temp(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("kato-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Runs `cmd`, returning (success, stdout + stderr).
fn try_run(cmd: &mut Command) -> (bool, String) {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

#[test]
fn the_deb_holds_the_service_passes_lintian_and_installs_into_a_root() {
    require_root();
    let deb = artefact(&format!("kato_{VERSION}_amd64.deb"));
    let list = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for want in [
        "./usr/bin/kato",
        "./lib/systemd/system/kato.service",
        "./etc/kato/kato.toml",
        "./usr/share/kato/kato-rules.yml",
        "./usr/share/kato/kato-dashboard.json",
        "./usr/share/kato/kato-seccomp.json",
        "./usr/share/doc/kato/copyright",
        "./usr/share/doc/kato/changelog.gz",
        "./usr/share/man/man1/kato.1.gz",
        "./usr/share/man/man1/kato-agent.1.gz",
        "./usr/share/bash-completion/completions/kato",
    ] {
        assert!(
            list.lines().any(|l| l.ends_with(want)),
            "{want} not in the package:\n{list}"
        );
    }
    // Owned by root whoever built it.
    assert!(
        list.lines().all(|l| l.contains(" root/root ")),
        "not all root-owned:\n{list}"
    );
    let fields = run(Command::new("dpkg-deb").arg("-f").arg(&deb).args([
        "Package",
        "Version",
        "Architecture",
        "Depends",
    ]));
    assert!(fields.contains("Package: kato"), "{fields}");
    assert!(fields.contains(&format!("Version: {VERSION}")), "{fields}");
    assert!(fields.contains("Depends: libc6 (>= 2."), "{fields}");
    let control = temp("deb-control");
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(&control));
    assert_eq!(
        std::fs::read_to_string(control.join("conffiles")).unwrap(),
        "/etc/kato/kato.toml\n"
    );
    for script in ["postinst", "prerm", "postrm"] {
        run(Command::new("sh").arg("-n").arg(control.join(script)));
    }
    // lintian's errors fail the build; its warnings are printed here.
    let (ok, said) = try_run(
        Command::new("lintian")
            .args(["--fail-on", "error", "--allow-root"])
            .arg(&deb),
    );
    assert!(ok, "lintian: {said}");
    assert!(
        !said.lines().any(|l| l.starts_with("E:")),
        "lintian: {said}"
    );
    eprintln!("lintian says:\n{said}");

    // Installed into an empty root, scripts run without chroot (they honour
    // DPKG_ROOT: nothing is started on this host).
    let root = temp("deb-root");
    std::fs::create_dir_all(root.join("var/lib/dpkg/info")).unwrap();
    std::fs::create_dir_all(root.join("var/lib/dpkg/updates")).unwrap();
    std::fs::write(root.join("var/lib/dpkg/status"), "").unwrap();
    let dpkg = |args: &[&str]| {
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .args([
                "--force-script-chrootless",
                "--force-depends",
                "--log=/dev/null",
            ])
            .args(args))
    };
    dpkg(&["--install", deb.to_str().unwrap()]);
    let status = run(Command::new("dpkg")
        .arg(format!("--root={}", root.display()))
        .args(["--status", "kato"]));
    assert!(status.contains("Status: install ok installed"), "{status}");
    let kato = root.join("usr/bin/kato");
    let version = run(Command::new(&kato).arg("--version"));
    assert_eq!(version.trim(), format!("kato {VERSION}"));
    // Enabled the way deb-systemd-helper enables it (inside the root).
    let wants = root.join("etc/systemd/system/multi-user.target.wants/kato.service");
    assert!(
        wants.symlink_metadata().is_ok(),
        "kato.service not enabled in the root"
    );
    let unit = root.join("lib/systemd/system/kato.service");
    let text = std::fs::read_to_string(&unit).unwrap();
    assert!(
        text.contains("ExecStart=/usr/bin/kato agent"),
        "the packaged unit runs the packaged binary:\n{text}"
    );
    // Verified as installed, its ExecStart pointing into the root (the
    // root has no systemd of its own to verify against).
    let copy = root.join("kato.service");
    std::fs::write(&copy, text.replace("/usr/bin/kato", kato.to_str().unwrap())).unwrap();
    let (ok, said) = try_run(Command::new("systemd-analyze").arg("verify").arg(&copy));
    std::fs::remove_file(&copy).unwrap();
    assert!(
        ok && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
    // Purged: nothing of it is left, the conffile and the enablement included.
    dpkg(&["--purge", "kato"]);
    for gone in [kato, unit, root.join("etc/kato/kato.toml"), wants] {
        assert!(
            gone.symlink_metadata().is_err(),
            "{} left after purge",
            gone.display()
        );
    }
    let _ = std::fs::remove_dir_all(&root);
    let _ = std::fs::remove_dir_all(&control);
}

/// A JSON blob of the OCI layout in the archive, by digest.
fn blob(oci: &Path, digest: &str) -> Vec<u8> {
    let name = format!("./blobs/{}", digest.replace(':', "/"));
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(oci)
        .arg(&name)
        .output()
        .unwrap();
    assert!(out.status.success(), "no {name} in {}", oci.display());
    out.stdout
}

fn json_blob(oci: &Path, digest: &str) -> Value {
    serde_json::from_slice(&blob(oci, digest)).unwrap()
}

#[test]
fn the_image_holds_kato_and_only_what_it_needs() {
    let oci = artefact(&format!("kato-{VERSION}.oci.tar"));
    let out = Command::new("tar")
        .arg("-xOf")
        .arg(&oci)
        .arg("./index.json")
        .output()
        .unwrap();
    let index: Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = &index["manifests"][0];
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        VERSION
    );
    let manifest = json_blob(&oci, m["digest"].as_str().unwrap());
    let config = json_blob(&oci, manifest["config"]["digest"].as_str().unwrap());
    let c = &config["config"];
    assert_eq!(c["Entrypoint"][0], "/usr/bin/kato");
    assert_eq!(c["Cmd"][0], "agent");
    let labels = &c["Labels"];
    assert_eq!(labels["org.opencontainers.image.title"], "kato");
    assert_eq!(labels["org.opencontainers.image.version"], VERSION);
    assert_eq!(
        labels["org.opencontainers.image.revision"]
            .as_str()
            .map(str::len),
        Some(40),
        "{labels}"
    );
    let layers = manifest["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "one layer: {manifest}");
    let layer = temp("oci-layer");
    std::fs::write(
        layer.join("layer.tar.gz"),
        blob(&oci, layers[0]["digest"].as_str().unwrap()),
    )
    .unwrap();
    let files = run(Command::new("tar")
        .arg("-tzf")
        .arg(layer.join("layer.tar.gz")));
    let files: BTreeSet<&str> = files
        .lines()
        .map(|l| l.trim_start_matches("./").trim_end_matches('/'))
        .collect();
    assert!(files.contains("usr/bin/kato"), "{files:?}");
    assert!(files.iter().any(|f| f.ends_with("/libc.so.6")), "{files:?}");
    // No shell, no package manager, nothing else executable.
    for f in &files {
        let base = f.rsplit('/').next().unwrap();
        assert!(
            !["sh", "bash", "busybox", "dpkg", "apt", "apk"].contains(&base),
            "{f} in the image"
        );
    }
    let _ = std::fs::remove_dir_all(&layer);
}

fn daemonset() -> yaml_rust2::Yaml {
    let text = std::fs::read_to_string(workspace().join("docs/deploy/daemonset.yaml")).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap()
        .remove(0)
}

fn strs(y: &yaml_rust2::Yaml) -> Vec<String> {
    y.as_vec()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The capabilities containerd gives a container by default (which the
/// manifest's `drop: [ALL]` takes away; ctr 1.6 has no `ALL`).
const RUNTIME_DEFAULT_CAPS: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_FSETID",
    "CAP_FOWNER",
    "CAP_MKNOD",
    "CAP_NET_RAW",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETFCAP",
    "CAP_SETPCAP",
    "CAP_NET_BIND_SERVICE",
    "CAP_SYS_CHROOT",
    "CAP_KILL",
    "CAP_AUDIT_WRITE",
];

#[test]
fn the_image_runs_in_containerd_as_the_daemonset_runs_it() {
    require_root();
    let oci = artefact(&format!("kato-{VERSION}.oci.tar"));
    let ds = daemonset();
    let c = &ds["spec"]["template"]["spec"]["containers"][0];
    let image = c["image"].as_str().unwrap();
    assert!(
        image.ends_with(&format!("/kato:{VERSION}")),
        "the DaemonSet names the image this version builds: {image}"
    );
    let base = image.rsplit_once(':').unwrap().0;
    let mut ctrd = Containerd::start();
    let imported = ctrd.ctr(&[
        "images",
        "import",
        "--base-name",
        base,
        oci.to_str().unwrap(),
    ]);
    let images = ctrd.ctr(&["images", "ls", "-q"]);
    assert!(
        images.lines().any(|l| l == image),
        "import named no {image}: {imported}\n{images}"
    );

    // The manifest's security context, volumes and arguments, as ctr options.
    let sc = &c["securityContext"];
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    let caps: Vec<String> = strs(&sc["capabilities"]["add"])
        .iter()
        .map(|c| format!("CAP_{c}"))
        .collect();
    let state = temp("image-state");
    let log = state.join("task.log");
    let mut opts: Vec<String> = vec![
        "--net-host".into(),
        // hostPID: this process's namespace (this host's pid 1 may not be
        // readable, when the host is itself a sandbox).
        "--with-ns".into(),
        format!("pid:/proc/{}/ns/pid", std::process::id()),
        "--log-uri".into(),
        format!("file://{}", log.display()),
        "--seccomp".into(),
        "--seccomp-profile".into(),
        workspace()
            .join("docs/deploy/kato-seccomp.json")
            .display()
            .to_string(),
    ];
    let limit = c["resources"]["limits"]["memory"].as_str().unwrap();
    let mib: u64 = limit.strip_suffix("Mi").unwrap().parse().unwrap();
    opts.extend(["--memory-limit".into(), (mib << 20).to_string()]);
    // What the kubelet's CRI gives every container and ctr does not: its
    // own cgroup at /sys/fs/cgroup, read-only.
    opts.extend([
        "--mount".into(),
        "type=cgroup,src=cgroup,dst=/sys/fs/cgroup,options=ro:nosuid:noexec:nodev".into(),
    ]);
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    opts.push("--read-only".into());
    for cap in RUNTIME_DEFAULT_CAPS {
        if !caps.iter().any(|c| c == cap) {
            opts.extend(["--cap-drop".into(), (*cap).into()]);
        }
    }
    for cap in &caps {
        opts.extend(["--cap-add".into(), cap.clone()]);
    }
    for env in c["env"].as_vec().unwrap() {
        if let Some(v) = env["value"].as_str() {
            opts.extend([
                "--env".into(),
                format!("{}={v}", env["name"].as_str().unwrap()),
            ]);
        }
    }
    let volumes = ds["spec"]["template"]["spec"]["volumes"].as_vec().unwrap();
    for m in c["volumeMounts"].as_vec().unwrap() {
        let name = m["name"].as_str().unwrap();
        let vol = volumes
            .iter()
            .find(|v| v["name"].as_str() == Some(name))
            .unwrap();
        let host = vol["hostPath"]["path"].as_str().unwrap();
        // This test's own state directory and containerd, the host's others.
        let src = match name {
            "state" => state.display().to_string(),
            "containerd" => ctrd.sock.display().to_string(),
            _ => host.to_owned(),
        };
        let ro = if m["readOnly"].as_bool() == Some(true) {
            ":ro"
        } else {
            ""
        };
        opts.extend([
            "--mount".into(),
            format!(
                "type=bind,src={src},dst={},options=rbind{ro}",
                m["mountPath"].as_str().unwrap()
            ),
        ]);
    }
    // A namespace the agent finds at start-up, for the dead peer.
    let ns = Netns::new("pkgimg");
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = listener.local_addr().unwrap().port();
    let port = free_port();
    let hybrid = Path::new("/sys/fs/cgroup/unified/cgroup.controllers").exists();
    let args: Vec<String> = strs(&c["args"])
        .into_iter()
        .map(|a| {
            let a = a
                .replace("$(NODE_IP)", "127.0.0.1")
                .replace(":7941", &format!(":{port}"));
            // The manifest's advice for a hybrid host like this one.
            if hybrid && a == "/host/sys/fs/cgroup" {
                format!("{a}/unified")
            } else {
                a
            }
        })
        .collect();
    opts.push(image.into());
    opts.push("kato-image".into());
    // The image's entrypoint is kato: ctr takes the arguments as the
    // command, so name it again.
    opts.push("/usr/bin/kato".into());
    opts.extend(args);
    ctrd.run_args("kato-image", &opts);

    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let started = Instant::now();
    while !matches!(http_get(addr, "/healthz"), Ok((200, _))) {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the containerised agent never answered /healthz: {}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // Its bounding set: the manifest's capabilities, no more.
    let tasks = ctrd.ctr(&["task", "ls"]);
    let pid: u32 = tasks
        .lines()
        .find(|l| l.starts_with("kato-image "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or_else(|| panic!("{tasks}"));
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let bnd = status
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:"))
        .map(|h| u64::from_str_radix(h.trim(), 16).unwrap())
        .unwrap();
    let allowed = caps.iter().fold(0u64, |m, c| m | 1 << cap_number(c));
    assert_eq!(
        bnd & !allowed,
        0,
        "bounding set {bnd:#x} beyond the manifest's {caps:?}"
    );

    // A socket made on the host (before the agent's first snapshot): listed.
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let (code, body) = http_get(addr, &format!("/sockets?port={lport}")).unwrap();
        assert_eq!(code, 200, "{body}");
        let rows: Value = serde_json::from_str(&body).unwrap();
        if rows.as_array().is_some_and(|r| !r.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < until,
            "no host socket on :{lport}: {body:.2000}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(300));
    }

    // A real Prometheus scrapes it, and sees the dead peer it names.
    let prom = Prometheus::start(addr);
    prom.wait("up{job=\"kato\"}", 1.0, Duration::from_secs(30));
    let peer = DeadPeer::start(&ns, false);
    let remote = peer.remote.to_string();
    let err = peer.wait();
    assert_eq!(err.raw_os_error(), Some(110), "ETIMEDOUT: {err}");
    // The container log (the DaemonSet asks for --log-events json) names
    // the dead peer; the agent's story of that socket has its timeout.
    let until = Instant::now() + Duration::from_secs(20);
    let cookie = loop {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let found = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|e| e["event"] == "keepalive_timeout" && e["remote"] == remote.as_str());
        if let Some(e) = found {
            break e["cookie"]
                .as_u64()
                .unwrap_or_else(|| panic!("no cookie: {e}"));
        }
        assert!(
            Instant::now() < until,
            "no keepalive_timeout for {remote} in the container log:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    // containerd answered through the mounted socket, under the profile;
    // the table sized itself from the manifest's memory limit.
    let text = std::fs::read_to_string(&log).unwrap_or_default();
    assert!(
        text.contains(&format!("(memory limit {})", mib << 20))
            || text.contains(&format!("(memory limit Some({}))", mib << 20)),
        "the agent did not see the memory limit:\n{text}"
    );
    assert!(
        !text.contains("named from cgroups only"),
        "containerd unreachable from the container:\n{text}"
    );
    let (code, body) = http_get(addr, &format!("/sockets/{cookie}/history")).unwrap();
    assert_eq!(code, 200, "{body:.2000}");
    let story: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(story["remote"], remote.as_str(), "{story}");
    assert!(
        story["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"] == "keepalive_timeout"),
        "{story}"
    );
    prom.wait(
        "max_over_time(kato_keepalive_timeouts_total[5m]) - min_over_time(kato_keepalive_timeouts_total[5m])",
        1.0,
        Duration::from_secs(30),
    );
    drop(listener);
    drop(ctrd);
    let _ = std::fs::remove_dir_all(&state);
}

fn cap_number(name: &str) -> u32 {
    match name {
        "CAP_CHOWN" => 0,
        "CAP_DAC_OVERRIDE" => 1,
        "CAP_KILL" => 5,
        "CAP_SETGID" => 6,
        "CAP_SETUID" => 7,
        "CAP_NET_ADMIN" => 12,
        "CAP_SYS_PTRACE" => 19,
        "CAP_SYS_ADMIN" => 21,
        "CAP_SYSLOG" => 34,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("no number for {other}"),
    }
}

fn kubernetes_validate() -> PathBuf {
    let p = workspace().join("target/tools/venv/bin/kubernetes-validate");
    assert!(
        p.exists(),
        "{} is missing: `cargo xtask setup` installs it",
        p.display()
    );
    p
}

#[test]
fn kubernetes_manifests_validate_against_the_api_schemas() {
    let validate = kubernetes_validate();
    let manifest = workspace().join("docs/deploy/daemonset.yaml");
    let (ok, said) = try_run(
        Command::new(&validate)
            .args(["--strict", "--kubernetes-version", "1.31.0"])
            .arg(&manifest),
    );
    assert!(ok, "kubernetes-validate: {said}");
    // The validator can fail: a misspelt field is refused.
    let dir = temp("k8s-validate");
    let bad = dir.join("daemonset.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("hostPID: true"));
    std::fs::write(&bad, text.replace("hostPID: true", "hostPid: true")).unwrap();
    let (ok, said) = try_run(
        Command::new(&validate)
            .args(["--strict", "--kubernetes-version", "1.31.0"])
            .arg(&bad),
    );
    assert!(!ok, "a misspelt field passed: {said}");
    let _ = std::fs::remove_dir_all(&dir);
}
