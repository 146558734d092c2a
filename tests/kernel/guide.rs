//! The docs' samples are what kato prints today: each scenario script in
//! docs/scenarios (namespaces made and removed, real sockets, the real
//! binary) runs, and its output must match the blocks README.md and
//! docs/guide.md show for it, times, ports and pids aside.
//! `KATO_WRITE_SAMPLES=1` rewrites the blocks from this run instead.

use std::{collections::BTreeSet, path::PathBuf, process::Command};

use crate::support::require_root;

const KATO: &str = env!("CARGO_BIN_EXE_kato");
const SCENARIOS: [&str; 6] = [
    "dead-peer.sh",
    "conntrack.sh",
    "nat-kill.sh",
    "zombie.sh",
    "keepalive-race.sh",
    "protect.sh",
];
const DOCS: [&str; 2] = ["README.md", "docs/guide.md"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The marker a block follows.
fn marker(script: &str) -> String {
    format!("<!-- scenario: {script} -->")
}

/// A line with its numbers (times, ports, pids, counts) and spacing
/// (column widths follow them) made alike.
fn shape(line: &str) -> String {
    let mut out = String::new();
    let mut last = ' ';
    for c in line.trim().chars() {
        let c = if c.is_ascii_digit() { 'N' } else { c };
        if (c == 'N' && last == 'N') || (c.is_whitespace() && last.is_whitespace()) {
            continue;
        }
        out.push(if c.is_whitespace() { ' ' } else { c });
        last = c;
    }
    out
}

/// Each distinct line shape, in the order it first appears: how many
/// probes a run happens to show may vary, what happens in which order may
/// not.
fn shapes(text: &str) -> Vec<String> {
    let mut seen = BTreeSet::new();
    text.lines()
        .map(shape)
        .filter(|l| !l.is_empty() && seen.insert(l.clone()))
        .collect()
}

/// The blocks after `script`'s markers in `doc`: (start, end) byte ranges
/// of their contents, the `$ sudo sh ...` line first.
fn blocks(doc: &str, script: &str) -> Vec<(usize, usize)> {
    let mut found = vec![];
    let m = marker(script);
    let mut from = 0;
    while let Some(at) = doc[from..].find(&m) {
        let fence = from
            + at
            + doc[from + at..]
                .find("```")
                .expect("a fence after the marker");
        let start = fence + doc[fence..].find('\n').unwrap() + 1;
        let end = start + doc[start..].find("```").expect("a closing fence");
        found.push((start, end));
        from = end;
    }
    found
}

fn run(script: &str) -> String {
    // A scenario that hangs fails here instead of holding the test run.
    let out = Command::new("timeout")
        .args(["120", "sh"])
        .arg(root().join("docs/scenarios").join(script))
        .env("KATO", KATO)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script}: {:?}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

#[test]
fn scenarios_print_what_the_docs_show() {
    require_root();
    let write = std::env::var_os("KATO_WRITE_SAMPLES").is_some();
    let mut docs: Vec<(PathBuf, String)> = DOCS
        .iter()
        .map(|d| {
            let p = root().join(d);
            let text = std::fs::read_to_string(&p).unwrap();
            (p, text)
        })
        .collect();
    let mut drift = vec![];
    for script in SCENARIOS {
        let printed = run(script);
        let command = format!("$ sudo sh docs/scenarios/{script}\n");
        let mut shown = 0;
        for (path, text) in &mut docs {
            // Back to front, so that rewriting keeps the earlier ranges.
            for (start, end) in blocks(text, script).into_iter().rev() {
                shown += 1;
                let block = &text[start..end];
                let sample = block.strip_prefix(&command).unwrap_or_else(|| {
                    panic!(
                        "{}: a {script} block must start with `{command}`",
                        path.display()
                    )
                });
                if write {
                    text.replace_range(start..end, &format!("{command}{printed}"));
                } else if shapes(sample) != shapes(&printed) {
                    drift.push(format!(
                        "{} ({script}):\n  the doc: {:#?}\n  printed now: {:#?}",
                        path.display(),
                        shapes(sample),
                        shapes(&printed)
                    ));
                }
            }
        }
        assert!(
            shown > 0,
            "no doc shows {script} (a `{}` block)",
            marker(script)
        );
    }
    if write {
        for (path, text) in &docs {
            std::fs::write(path, text).unwrap();
        }
    }
    assert!(
        drift.is_empty(),
        "the docs' samples drifted from what kato prints (KATO_WRITE_SAMPLES=1 rewrites them):\n{}",
        drift.join("\n")
    );
}

#[test]
fn shapes_ignore_numbers_and_spacing() {
    assert_eq!(
        shape("17:52:10.309924 probe_sent    127.0.0.1:47088  1.00s"),
        shape("06:42:05.658605 probe_sent 127.0.0.1:5591 12.00s ")
    );
    assert_ne!(shape("probe_sent"), shape("probe_sent2"));
}
