//! HTTP keep-alive against a real nginx (Debian's package) with
//! `keepalive_timeout 2s` and `keepalive_requests 3`: kato must reveal both
//! numbers from the connections alone, and catch a client reusing a
//! connection nginx has just closed.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::{
    agent_support::{sample, Agent},
    support::{require_root, Netns},
};

struct Nginx {
    child: Child,
    dir: std::path::PathBuf,
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its worker; SIGKILL would orphan it.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx(ns: &Netns) -> Nginx {
    assert!(
        std::path::Path::new("/usr/sbin/nginx").exists(),
        "Debian's nginx package is missing: `cargo xtask setup` installs it"
    );
    let dir = std::env::temp_dir().join(format!("kato-nginx-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("tmp")).unwrap();
    let d = dir.display();
    let conf = format!(
        "daemon off; master_process off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
         events {{ worker_connections 64; }}\n\
         http {{\n  access_log off;\n  client_body_temp_path {d}/tmp; proxy_temp_path {d}/tmp; fastcgi_temp_path {d}/tmp;\n  \
         uwsgi_temp_path {d}/tmp; scgi_temp_path {d}/tmp;\n  keepalive_timeout 2s;\n  keepalive_requests 3;\n  \
         server {{ listen 127.0.0.1:8080; location / {{ return 200 \"ok\\n\"; }} }}\n}}\n"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns.name,
            "/usr/sbin/nginx",
            "-p",
            &dir.display().to_string(),
            "-c",
            "nginx.conf",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let n = Nginx { child, dir };
    // Ready when it accepts connections.
    let end = Instant::now() + Duration::from_secs(10);
    let ready = ns.spawn(move || loop {
        if TcpStream::connect("127.0.0.1:8080").is_ok() || Instant::now() > end {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    });
    ready.join().unwrap();
    n
}

/// One request on `s`; returns the response's `Connection` header value.
fn get(s: &mut TcpStream) -> String {
    s.write_all(b"GET / HTTP/1.1\r\nHost: kato\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut connection = String::new();
    let mut line = String::new();
    loop {
        line.clear();
        r.read_line(&mut line).unwrap();
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("connection: ") {
            connection = v.trim().to_owned();
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = [0u8; 3];
    r.read_exact(&mut body).unwrap();
    assert_eq!(&body, b"ok\n");
    connection
}

fn eof(s: &mut TcpStream) -> Duration {
    let t = Instant::now();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0, "server closed");
    t.elapsed()
}

#[test]
fn nginx_keepalive_timeout_max_requests_and_stale_reuse() {
    require_root();
    let ns = Netns::new("nginx");
    let _nginx = nginx(&ns);
    let agent = Agent::start(&[
        "--netns",
        &ns.name,
        "--http-keepalive",
        "--snapshot-interval",
        "500ms",
    ]);
    let trace = crate::servers::Trace::start(&["--netns", &ns.inode.to_string()]);

    let worker = ns.spawn(|| {
        let to = "127.0.0.1:8080";
        // keepalive_requests 3: the third response closes the connection.
        let mut a = TcpStream::connect(to).unwrap();
        assert_eq!(get(&mut a), "keep-alive");
        assert_eq!(get(&mut a), "keep-alive");
        assert_eq!(get(&mut a), "close");
        eof(&mut a);
        // keepalive_timeout 2s: one request, then nginx closes the idle connection.
        let mut b = TcpStream::connect(to).unwrap();
        get(&mut b);
        let waited = eof(&mut b);
        // Stale reuse: one request, then a second one just after nginx closed.
        let mut c = TcpStream::connect(to).unwrap();
        get(&mut c);
        // 0.5 s past nginx's 2 s: a busy CI machine can run its timer late,
        // and then the write is served, not a stale reuse (seen once).
        std::thread::sleep(Duration::from_millis(2500));
        // The write goes out (the FIN only closed nginx's sending side as far
        // as this socket knows); nginx's kernel answers with a reset. Reads
        // would keep returning EOF; the next write reports the reset.
        c.write_all(b"GET / HTTP/1.1\r\nHost: kato\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let reuse = c.write_all(b"GET / HTTP/1.1\r\nHost: kato\r\n\r\n");
        drop((a, b, c));
        (waited, reuse)
    });
    let (waited, reuse) = worker.join().unwrap();
    assert!(
        (1.9..2.6).contains(&waited.as_secs_f64()),
        "nginx closed the idle connection after {waited:?}"
    );
    let err = reuse.expect_err("the reused connection was reset");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
        ),
        "{err}"
    );

    // The stale reuse, as kato trace reports it.
    let end = Instant::now() + Duration::from_secs(10);
    let stale = loop {
        let v = trace
            .events
            .recv_timeout(end.saturating_duration_since(Instant::now()))
            .expect("stale_reuse event");
        // The client's side (nginx's own, the side that closed, comes first).
        if v["event"] == "stale_reuse" && v["reused_by"] == "local" {
            break v;
        }
    };
    let gap = stale["reuse_after_s"].as_f64().unwrap();
    assert!(
        (2.2..2.8).contains(&gap),
        "reused after {gap} s idle: {stale}"
    );
    assert_eq!(
        stale["state"], "CLOSE_WAIT",
        "the peer's FIN had arrived: {stale}"
    );
    drop(trace);

    // What the agent learnt: nginx's keepalive_timeout and keepalive_requests.
    let srv = |le: &str| {
        format!("kato_connection_exchanges_bucket{{closed_by=\"local_fin\",port=\"8080\",side=\"server\",le=\"{le}\"}}")
    };
    let cli_all = "kato_connection_exchanges_bucket{closed_by=\"peer_fin\",port=\"8080\",side=\"client\",le=\"+Inf\"}";
    let m = agent.wait_metrics(Duration::from_secs(5), |m| {
        sample(m, &srv("+Inf")) == 3.0
            && sample(m, cli_all) == 3.0
            && sample(m, "kato_stale_reuse_total{port=\"8080\",side=\"client\"}") == 1.0
    });
    assert_eq!(
        sample(&m, &srv("1")),
        2.0,
        "two connections served one request each"
    );
    assert_eq!(sample(&m, &srv("2")), 2.0);
    assert_eq!(
        sample(&m, &srv("3")),
        1.0 + 2.0,
        "one served keepalive_requests = 3"
    );
    let idle = |le: &str| {
        sample(&m, &format!("kato_connection_idle_before_close_seconds_bucket{{closed_by=\"local_fin\",port=\"8080\",side=\"server\",le=\"{le}\"}}"))
    };
    assert_eq!(idle("0.25"), 1.0, "the request limit closes at once");
    assert_eq!(idle("1.5"), 1.0);
    assert_eq!(idle("3"), 3.0, "the two idle ones closed after ~2 s");
    let sum = sample(&m, "kato_connection_idle_before_close_seconds_sum{closed_by=\"local_fin\",port=\"8080\",side=\"server\"}");
    assert!(
        (3.8..5.4).contains(&sum),
        "idle before nginx closed: {sum} s in all"
    );
    // The client side sees the same from the other end: the peer closed.
    let cli = |le: &str| {
        sample(&m, &format!("kato_connection_exchanges_bucket{{closed_by=\"peer_fin\",port=\"8080\",side=\"client\",le=\"{le}\"}}"))
    };
    assert_eq!((cli("1"), cli("3"), cli("+Inf")), (2.0, 3.0, 3.0), "{m}");
}
