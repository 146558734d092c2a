//! A real Prometheus server (Debian's package, installed by `cargo xtask
//! setup`) scrapes the agent on loopback and sees a dead peer counted.

use std::{
    net::{SocketAddr, TcpListener},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{
    agent_support::{http_get, Agent},
    support::{dead_peer, require_root, Netns},
};

pub(crate) struct Prometheus {
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

pub(crate) fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Prometheus {
    pub(crate) fn start(target: SocketAddr) -> Prometheus {
        Self::start_with(&format!(
            "  - job_name: kato\n    static_configs:\n      - targets: ['{target}']\n"
        ))
    }

    /// Prometheus with these `scrape_configs` entries.
    fn start_with(scrape_configs: &str) -> Prometheus {
        assert!(
            std::path::Path::new("/usr/bin/prometheus").exists(),
            "Debian's prometheus package is missing: `cargo xtask setup` installs it"
        );
        static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "kato-prom-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n{scrape_configs}"
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

    /// An instant query's `data.result` (empty while Prometheus does not
    /// answer).
    fn result(&self, promql: &str) -> Vec<Value> {
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
        let Ok((status, body)) = http_get(self.addr, &format!("/api/v1/query?query={enc}")) else {
            return vec![];
        };
        assert_eq!(status, 200, "{promql}: {body}");
        let v: Value = serde_json::from_str(&body).unwrap();
        v["data"]["result"].as_array().cloned().unwrap_or_default()
    }

    /// An instant query's single value, if it has one.
    fn query(&self, promql: &str) -> Option<f64> {
        self.result(promql)
            .first()
            .and_then(|r| r["value"][1].as_str())
            .map(|s| s.parse().unwrap())
    }

    /// How many series an instant query returns.
    fn series(&self, promql: &str) -> usize {
        self.result(promql).len()
    }

    pub(crate) fn wait(&self, promql: &str, want: f64, limit: Duration) {
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

fn openssl(dir: &std::path::Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA, a server certificate for 127.0.0.1 and `dir/web.yml` asking for
/// TLS and basic auth (user `prom`, `password`); the CA is `dir/ca.crt`.
pub(crate) fn tls_web_config(dir: &std::path::Path, password: &str) {
    std::fs::create_dir_all(dir).unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    openssl(
        dir,
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-keyout",
                "ca.key",
                "-out",
                "ca.crt",
                "-subj",
                "/CN=kato test CA",
                "-days",
                "1",
            ],
        ]
        .concat(),
    );
    openssl(
        dir,
        &[
            &["req"][..],
            &ec,
            &[
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
                "-subj",
                "/CN=127.0.0.1",
            ],
        ]
        .concat(),
    );
    std::fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "1",
            "-extfile",
            "ext.cnf",
        ],
    );
    let hash = bcrypt::hash(password, 4).unwrap();
    // Relative paths: from the web config's own directory.
    std::fs::write(
        dir.join("web.yml"),
        format!("tls_server_config:\n  cert_file: server.crt\n  key_file: server.key\nbasic_auth_users:\n  prom: {hash}\n"),
    )
    .unwrap();
}

/// A real Prometheus scrapes the agent over TLS with basic auth, as the
/// exporter-toolkit web config says; without the password, or without
/// TLS, it cannot.
#[test]
fn prometheus_scrapes_over_tls_with_basic_auth() {
    require_root();
    let dir = std::env::temp_dir().join(format!("kato-tls-{}", std::process::id()));
    tls_web_config(&dir, "s3cret");
    let web = dir.join("web.yml");
    let (agent, _log) = Agent::start_logged(
        &["--netns", "self", "--web-config", web.to_str().unwrap()],
        "warn",
    );
    let target = agent.addr;
    let ca = dir.join("ca.crt");
    let ca = ca.display();
    let prom = Prometheus::start_with(&format!(
        "  - job_name: kato\n    scheme: https\n    tls_config: {{ca_file: '{ca}'}}\n    basic_auth: {{username: prom, password: s3cret}}\n    static_configs:\n      - targets: ['{target}']\n\
         \x20 - job_name: wrong_password\n    scheme: https\n    tls_config: {{ca_file: '{ca}'}}\n    basic_auth: {{username: prom, password: guess}}\n    static_configs:\n      - targets: ['{target}']\n\
         \x20 - job_name: plain_http\n    static_configs:\n      - targets: ['{target}']\n"
    ));
    prom.wait("up{job=\"kato\"}", 1.0, Duration::from_secs(30));
    prom.wait(
        "kato_build_info{job=\"kato\"}",
        1.0,
        Duration::from_secs(10),
    );
    prom.wait("up{job=\"wrong_password\"}", 0.0, Duration::from_secs(10));
    prom.wait("up{job=\"plain_http\"}", 0.0, Duration::from_secs(10));
    drop(prom);
    drop(agent);
    let _ = std::fs::remove_dir_all(&dir);
}

/// docs/deploy/kato-dashboard.json: every panel's query, evaluated by a real
/// Prometheus scraping a real agent that saw an abortive close, returns at
/// least one series.
#[test]
fn every_dashboard_panel_query_returns_a_series() {
    require_root();
    let ns = Netns::new("dash");
    let path = format!("/run/netns/{}", ns.name);
    // A listener held for the whole test (so the namespace has sockets to
    // gauge), and an abortive close (SO_LINGER 0): a reset sent with the
    // kernel's reason, a reset received after idling, ECONNRESET.
    let (hold_tx, hold_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let holder = ns.spawn(move || {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        ready_tx.send(()).unwrap();
        let _ = hold_rx.recv();
        drop(l);
    });
    ready_rx.recv().unwrap();
    // A declared timeout shorter than the 50 ms the connection idles: its
    // reset is evidence of an idle kill.
    let agent = Agent::start(&["--netns", &path, "--idle-timeout", "10ms"]);
    ns.spawn(|| {
        use std::io::Read as _;
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (mut s, _) = l.accept().unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let linger = libc::linger {
            l_onoff: 1,
            l_linger: 0,
        };
        let rc = unsafe {
            libc::setsockopt(
                std::os::fd::AsRawFd::as_raw_fd(&c),
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                (&raw const linger).cast(),
                size_of::<libc::linger>() as u32,
            )
        };
        assert_eq!(rc, 0);
        drop(c);
        let _ = s.read(&mut [0u8; 8]);
    })
    .join()
    .unwrap();
    let prom = Prometheus::start(agent.addr);
    prom.wait("sum(kato_resets_sent_total)", 1.0, Duration::from_secs(30));
    prom.wait(
        "sum(kato_idle_kills_suspected_total)",
        1.0,
        Duration::from_secs(10),
    );
    // Rates need two samples in their window.
    std::thread::sleep(Duration::from_secs(3));
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/deploy/kato-dashboard.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let panels = dash["panels"].as_array().unwrap();
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for p in panels {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "1m");
            assert!(
                prom.series(&expr) > 0,
                "panel {:?}: `{expr}` returned no series",
                p["title"]
            );
        }
    }
    hold_tx.send(()).unwrap();
    holder.join().unwrap();
}
