//! The deployment files in docs/deploy stay valid.

use std::process::Command;

const DEPLOY: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/deploy");

#[test]
fn prometheus_scrape_config_passes_promtool() {
    let out = Command::new("promtool")
        .args(["check", "config", &format!("{DEPLOY}/prometheus.yml")])
        .output()
        .expect("promtool");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn systemd_unit_verifies() {
    // Point ExecStart at the binary under test; otherwise verify the unit as shipped.
    let dir = std::env::temp_dir().join(format!("kato-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let unit = std::fs::read_to_string(format!("{DEPLOY}/kato.service")).unwrap();
    let unit = unit.replace("/usr/local/bin/kato", env!("CARGO_BIN_EXE_kato"));
    let path = dir.join("kato.service");
    std::fs::write(&path, unit).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {said}"
    );
}

#[test]
fn example_config_is_accepted_by_the_agent() {
    let text = std::fs::read_to_string(format!("{DEPLOY}/kato.toml")).unwrap();
    let cfg = keepalive_user::agent::config::Overrides::from_toml("kato.toml", &text)
        .expect("example config parses")
        .resolve();
    assert_eq!(
        cfg,
        keepalive_user::agent::config::AgentConfig::default(),
        "the example shows the defaults"
    );
}

/// `systemd-analyze security` rates the unit's exposure (0 best, 10 worst);
/// the hardening the unit promises is there.
#[test]
fn systemd_unit_is_hardened() {
    let unit = std::fs::read_to_string(format!("{DEPLOY}/kato.service")).unwrap();
    for directive in [
        "DynamicUser=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelLogs=yes",
        "ProtectClock=yes",
        "PrivateDevices=yes",
        "SystemCallArchitectures=native",
        "LimitNOFILE=",
        "RestartPreventExitStatus=2",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            unit.lines().any(|l| l.starts_with(directive)),
            "{directive} missing"
        );
    }
    let dir = std::env::temp_dir().join(format!("kato-sec-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("kato.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/kato", env!("CARGO_BIN_EXE_kato")),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=true", path.to_str().unwrap()])
        .output()
        .expect("systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for kato.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {text}"));
    assert!(level <= 3.5, "exposure {level}:\n{text}");
}

fn yaml(path: &str) -> yaml_rust2::Yaml {
    let text = std::fs::read_to_string(format!("{DEPLOY}/{path}")).unwrap();
    yaml_rust2::YamlLoader::load_from_str(&text)
        .unwrap()
        .remove(0)
}

#[test]
fn daemonset_is_locked_down() {
    let ds = yaml("daemonset.yaml");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["automountServiceAccountToken"].as_bool(), Some(false));
    let c = &pod["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_vec()
        .unwrap()
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let listen = args[args.iter().position(|a| *a == "--listen").unwrap() + 1];
    assert_eq!(listen, "[$(NODE_IP)]:7941", "IPv6-safe listen address");
    // What the template expands to parses as an address for both families.
    let cfg =
        keepalive_user::agent::config::Overrides::from_toml("t", "listen = \"[10.1.2.3]:7941\"")
            .unwrap();
    assert_eq!(cfg.listen, Some("10.1.2.3:7941".parse().unwrap()));
    for probe in ["startupProbe", "livenessProbe", "readinessProbe"] {
        let p = &c[probe];
        assert_eq!(p["httpGet"]["path"].as_str(), Some("/healthz"), "{probe}");
        let t = p["timeoutSeconds"]
            .as_i64()
            .unwrap_or_else(|| panic!("{probe} timeout"));
        assert!((1..=10).contains(&t), "{probe}: timeoutSeconds {t}");
    }
    let sc = &c["securityContext"];
    assert_eq!(sc["privileged"].as_bool(), Some(false));
    assert_eq!(sc["allowPrivilegeEscalation"].as_bool(), Some(false));
    assert_eq!(sc["readOnlyRootFilesystem"].as_bool(), Some(true));
    assert_eq!(sc["capabilities"]["drop"][0].as_str(), Some("ALL"));
    assert_eq!(sc["seccompProfile"]["type"].as_str(), Some("Localhost"));
    let profile = sc["seccompProfile"]["localhostProfile"].as_str().unwrap();
    assert!(profile.ends_with("kato-seccomp.json"), "{profile}");
    assert!(c["resources"]["limits"]["memory"].as_str().is_some());
}

/// Expands a systemd syscall group (`@system-service`) into names.
fn systemd_group(group: &str, out: &mut std::collections::BTreeSet<String>) {
    let text = String::from_utf8(
        Command::new("systemd-analyze")
            .args(["syscall-filter", group])
            .output()
            .expect("systemd-analyze")
            .stdout,
    )
    .unwrap();
    for item in text.lines().skip(1).map(str::trim) {
        if item.is_empty() || item.starts_with('#') {
            continue;
        }
        if item.starts_with('@') {
            systemd_group(item, out);
        } else {
            out.insert(item.to_owned());
        }
    }
}

/// Every system call the agent makes (start-up, snapshots of every
/// namespace while one comes and goes, every endpoint, shutdown), seen by
/// strace, is allowed by the DaemonSet's seccomp profile and by the
/// systemd unit's SystemCallFilter.
#[test]
fn seccomp_profile_and_unit_filter_allow_every_syscall_the_agent_makes() {
    crate::support::require_root();
    let trace = std::env::temp_dir().join(format!("kato-strace-{}", std::process::id()));
    // Learned timeouts saved: mkdir, write, rename.
    let state = std::env::temp_dir().join(format!("kato-strace-state-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&state);
    let mut child = Command::new("strace")
        .args([
            "-f",
            "-qq",
            "-o",
            trace.to_str().unwrap(),
            env!("CARGO_BIN_EXE_kato"),
        ])
        .args([
            "agent",
            "--listen",
            "127.0.0.1:0",
            "--snapshot-interval",
            "200ms",
            "--state-dir",
            state.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("strace");
    // Held open to the end: kato's last line must not meet a closed pipe.
    let mut stderr = child.stderr.take().unwrap();
    let addr = crate::agent_support::read_banner(&mut stderr);
    let ns = crate::support::Netns::new("strace");
    for path in ["/metrics", "/sockets", "/healthz", "/", "/nope"] {
        let (status, _) = crate::agent_support::http_get(addr, path).unwrap();
        assert!(status == 200 || status == 404, "{path}: {status}");
    }
    let (status, _, _) = crate::agent_support::http_request(
        addr,
        &format!("GET /metrics HTTP/1.1\r\nHost: {addr}\r\nAccept-Encoding: gzip\r\nConnection: close\r\n\r\n"),
    )
    .unwrap();
    assert_eq!(status, 200);
    std::thread::sleep(std::time::Duration::from_millis(600));
    drop(ns);
    std::thread::sleep(std::time::Duration::from_millis(400));
    // SIGTERM to kato itself (strace would detach on its own).
    let kato: i32 = std::fs::read_to_string(format!("/proc/{0}/task/{0}/children", child.id()))
        .unwrap()
        .split_whitespace()
        .next()
        .expect("kato under strace")
        .parse()
        .unwrap();
    unsafe { libc::kill(kato, libc::SIGTERM) };
    assert!(child.wait().unwrap().success());
    let text = std::fs::read_to_string(&trace).unwrap();
    let _ = std::fs::remove_file(&trace);
    assert!(
        state.join("learned.json").exists(),
        "the agent saved its state"
    );
    let _ = std::fs::remove_dir_all(&state);
    let mut seen = std::collections::BTreeSet::new();
    for line in text.lines() {
        // "PID name(args...) = r" or "PID <... name resumed>..."
        let rest = line.split_once(' ').map_or(line, |(_, r)| r).trim_start();
        let name = rest
            .strip_prefix("<... ")
            .map_or(rest, |r| r)
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .next()
            .unwrap_or_default();
        if !name.is_empty() && !rest.starts_with("+++") && !rest.starts_with("---") {
            seen.insert(name.to_owned());
        }
    }
    assert!(seen.contains("bpf") && seen.contains("setns"), "{seen:?}");
    let profile: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{DEPLOY}/kato-seccomp.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(profile["defaultAction"], "SCMP_ACT_ERRNO");
    let allowed: std::collections::BTreeSet<String> = profile["syscalls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["action"] == "SCMP_ACT_ALLOW")
        .flat_map(|r| r["names"].as_array().unwrap())
        .map(|n| n.as_str().unwrap().to_owned())
        .collect();
    let missing: Vec<&String> = seen.iter().filter(|s| !allowed.contains(*s)).collect();
    assert!(missing.is_empty(), "the seccomp profile lacks {missing:?}");
    // The unit's own SystemCallFilter line, groups expanded.
    let unit_file = std::fs::read_to_string(format!("{DEPLOY}/kato.service")).unwrap();
    let mut unit = std::collections::BTreeSet::new();
    for item in unit_file
        .lines()
        .find_map(|l| l.strip_prefix("SystemCallFilter="))
        .expect("a SystemCallFilter line")
        .split_whitespace()
    {
        if item.starts_with('@') {
            systemd_group(item, &mut unit);
        } else {
            unit.insert(item.to_owned());
        }
    }
    // execve: strace's own start of kato, before any filter would apply.
    let missing: Vec<&String> = seen
        .iter()
        .filter(|s| !unit.contains(*s) && *s != "execve")
        .collect();
    assert!(missing.is_empty(), "SystemCallFilter lacks {missing:?}");
}

/// The alerting rules pass promtool's checks and their own unit tests
/// (each alert fires on the series it is about, and only then).
#[test]
fn alerting_rules_pass_promtool_tests() {
    for args in [
        vec!["check", "rules", "kato-rules.yml"],
        vec!["test", "rules", "kato-rules.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(&args)
            .current_dir(DEPLOY)
            .output()
            .expect("promtool");
        assert!(
            out.status.success(),
            "promtool {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Every metric the rules use is one the agent exports.
    let rules = std::fs::read_to_string(format!("{DEPLOY}/kato-rules.yml")).unwrap();
    let metrics =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/metrics.md"))
            .unwrap();
    for name in rules
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("kato_"))
    {
        assert!(
            metrics.contains(&format!("`{name}`")),
            "{name} is not in docs/metrics.md"
        );
    }
}
