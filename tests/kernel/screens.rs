//! kato as a user's terminal shows it: tmux panes of 80x24 and 200x50
//! (send-keys, capture-pane). Nothing wraps, the header stays on screen,
//! and `kato top` answers its keys and gives the terminal back.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    habits::connected,
    support::{require_root, Netns},
};

const KATO: &str = env!("CARGO_BIN_EXE_kato");
/// A tmux server of the tests' own.
const SOCKET: &str = "kato-tests";

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .arg("-L")
        .arg(SOCKET)
        .args(args)
        .output()
        .expect("tmux (cargo xtask setup installs it)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A detached tmux session of `cols` x `rows` running `cmd`, then saying
/// how it exited (and staying, to be read).
struct Pane {
    name: String,
    cols: usize,
}

impl Pane {
    fn start(tag: &str, cols: usize, rows: usize, cmd: &str) -> Pane {
        let name = format!("kato-{}-{tag}-{cols}x{rows}", std::process::id());
        let script = format!("{cmd}; echo \"exited $?\"; sleep 600");
        tmux(&[
            "new-session",
            "-d",
            "-s",
            &name,
            "-x",
            &cols.to_string(),
            "-y",
            &rows.to_string(),
            &script,
        ]);
        Pane { name, cols }
    }

    /// The screen, wrapped lines joined (so a wrap shows as a long line).
    fn screen(&self) -> String {
        tmux(&["capture-pane", "-p", "-J", "-t", &self.name])
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys", "-t", &self.name];
        args.extend(keys);
        tmux(&args);
    }

    /// The screen once `done` holds for it, failing after `limit`.
    fn until(&self, limit: Duration, done: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + limit;
        loop {
            let s = self.screen();
            if done(&s) {
                return s;
            }
            assert!(
                Instant::now() < end,
                "{}: not seen in {limit:?}:\n{s}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// No line wider than the pane: nothing wrapped.
    fn fits(&self, screen: &str) {
        for line in screen.lines() {
            assert!(
                line.chars().count() <= self.cols,
                "{} columns, a line of {}:\n{screen}",
                self.cols,
                line.chars().count()
            );
        }
    }
}

impl Drop for Pane {
    fn drop(&mut self) {
        tmux(&["kill-session", "-t", &self.name]);
    }
}

const SIZES: [(usize, usize); 2] = [(80, 24), (200, 50)];

#[test]
fn kato_top_fits_the_terminal_and_answers_its_keys() {
    require_root();
    let ns = Netns::new("top");
    // A connection probing every second: events for the lower pane.
    let (_l, client, _s) = connected(&ns, |c| crate::support::keepalive(c, 1, 1, 9));
    let port = client.peer_addr().unwrap().port().to_string();
    for (cols, rows) in SIZES {
        let pane = Pane::start(
            "top",
            cols,
            rows,
            &format!("{KATO} top --netns {} --interval 1s", ns.name),
        );
        let s = pane.until(Duration::from_secs(15), |s| {
            s.contains("probe_sent") && s.contains("ESTABLISHED")
        });
        pane.fits(&s);
        let lines: Vec<&str> = s.lines().collect();
        assert!(lines[0].starts_with("kato top"), "{s}");
        assert!(lines[1].starts_with("2 sockets: 2 established"), "{s}");
        assert!(
            lines[2].contains("Local Address"),
            "the header on screen:\n{s}"
        );
        assert!(!s.contains("LISTEN"), "connections only:\n{s}");
        assert!(s.contains("last events"), "{s}");
        assert!(s.contains("q quit"), "the keys:\n{s}");
        assert_eq!(lines.len(), rows, "the whole screen is drawn:\n{s}");

        pane.keys(&["s"]);
        pane.until(Duration::from_secs(5), |s| s.contains("by idle"));
        pane.keys(&["/", &port, "Enter"]);
        let s = pane.until(Duration::from_secs(5), |s| {
            s.contains(&format!("filter \"{port}\""))
        });
        assert!(s.contains("ESTABLISHED"), "both ends have the port:\n{s}");
        pane.keys(&["/", "nothing-matches", "Enter"]);
        let s = pane.until(Duration::from_secs(5), |s| {
            s.contains("filter \"nothing-matches\"") && s.contains("  0 of ")
        });
        assert!(!s.contains("ESTABLISHED"), "{s}");
        pane.keys(&["c", "p"]);
        pane.until(Duration::from_secs(5), |s| s.contains("PAUSED"));
        pane.keys(&["?"]);
        pane.until(Duration::from_secs(5), |s| {
            s.contains("next / previous order")
        });
        pane.keys(&["q"]);
        // The terminal given back: the shell's screen, the exit code.
        let s = pane.until(Duration::from_secs(5), |s| s.contains("exited 0"));
        assert!(
            !s.contains("last events"),
            "the alternate screen is gone:\n{s}"
        );
    }
    // Bad input: one line, exit 2, before the screen is taken.
    let out = Command::new(KATO)
        .args(["top", "--interval", "soon"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn sockets_watch_and_trace_fit_80x24_and_200x50() {
    require_root();
    let ns = Netns::new("screens");
    let _held = connected(&ns, |c| crate::support::keepalive(c, 1, 1, 9));
    for (cols, rows) in SIZES {
        let sockets = Pane::start(
            "sockets",
            cols,
            rows,
            &format!("{KATO} sockets --netns {}", ns.name),
        );
        let s = sockets.until(Duration::from_secs(15), |s| s.contains("exited 0"));
        sockets.fits(&s);
        assert!(s.lines().next().unwrap().contains("Local Address"), "{s}");
        assert!(s.contains("3 sockets: 2 established"), "{s}");

        let watch = Pane::start(
            "watch",
            cols,
            rows,
            &format!("{KATO} sockets --watch 1 --netns {}", ns.name),
        );
        // Two refreshes drawn in place: the header still on top.
        let first = watch.until(Duration::from_secs(15), |s| s.contains("Local Address"));
        let s = watch.until(Duration::from_secs(15), |s| {
            s.lines().next() != first.lines().next() && s.contains("Local Address")
        });
        watch.fits(&s);
        assert!(s.starts_with("Every 1.0s: kato sockets"), "{s}");

        let trace = Pane::start(
            "trace",
            cols,
            rows,
            &format!("{KATO} trace --netns {}", ns.name),
        );
        let s = trace.until(Duration::from_secs(15), |s| {
            s.matches("probe_sent").count() >= 2
        });
        trace.fits(&s);
        let header = s.lines().find(|l| l.contains("EVENT")).unwrap_or_default();
        assert!(header.contains("EVENT") && header.contains("REMOTE"), "{s}");
        if cols >= 200 {
            assert!(
                header.contains("REASON") && header.contains("PID/COMM"),
                "{s}"
            );
        }
    }
}
