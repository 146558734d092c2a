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
