//! A real Prometheus server (Debian's package, installed by `cargo xtask
//! setup`) scrapes the agent on loopback and sees a dead peer counted.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent::dead_peer,
    agent_support::{http_get, Agent},
    support::{require_root, Netns},
};

struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: std::path::PathBuf,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    fn start(target: SocketAddr) -> Prometheus {
        assert!(
            std::path::Path::new("/usr/bin/prometheus").exists(),
            "Debian's prometheus package is missing: `cargo xtask setup` installs it"
        );
        let dir = std::env::temp_dir().join(format!("kato-prom-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: kato\n    static_configs:\n      - targets: ['{target}']\n"
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let child = Command::new("/usr/bin/prometheus")
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("prometheus.log")).unwrap())
            .spawn()
            .expect("start prometheus");
        let p = Prometheus { child, addr, dir };
        let end = Instant::now() + Duration::from_secs(30);
        while !matches!(http_get(p.addr, "/-/ready"), Ok((200, _))) {
            assert!(
                Instant::now() < end,
                "prometheus never got ready: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// An instant query's single value, if it has one.
    fn query(&self, promql: &str) -> Option<f64> {
        let enc: String = promql
            .bytes()
            .map(|b| {
                if b.is_ascii_alphanumeric() || b"_.-".contains(&b) {
                    (b as char).to_string()
                } else {
                    format!("%{b:02X}")
                }
            })
            .collect();
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={enc}")).ok()?;
        assert_eq!(status, 200, "{promql}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"][0]["value"][1]
            .as_str()
            .map(|s| s.parse().unwrap())
    }

    fn wait(&self, promql: &str, want: f64, limit: Duration) {
        let end = Instant::now() + limit;
        loop {
            let got = self.query(promql);
            if got == Some(want) {
                return;
            }
            assert!(
                Instant::now() < end,
                "{promql} = {got:?}, expected {want}\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

#[test]
fn real_prometheus_scrapes_a_dead_peer() {
    require_root();
    let ns = Netns::new("prom");
    let agent = Agent::start(&["--netns", &ns.name]);
    let prom = Prometheus::start(agent.addr);
    prom.wait("up{job=\"kato\"}", 1.0, Duration::from_secs(20));
    dead_peer(&ns);
    // Increases over the window, exactly (increase() would extrapolate).
    let delta = |m: &str| format!("max_over_time({m}[5m]) - min_over_time({m}[5m])");
    prom.wait(
        &delta("kato_keepalive_timeouts_total"),
        1.0,
        Duration::from_secs(15),
    );
    prom.wait(
        &delta("kato_keepalive_probes_sent_total"),
        3.0,
        Duration::from_secs(15),
    );
    prom.wait(
        "kato_resets_sent_total{reason=\"TCP_KEEPALIVE_TIMEOUT\"}",
        1.0,
        Duration::from_secs(15),
    );
    prom.wait(
        "kato_dead_peer_detection_seconds_count",
        1.0,
        Duration::from_secs(15),
    );
}
