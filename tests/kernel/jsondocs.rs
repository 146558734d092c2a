//! docs/json.md and docs/events.md against what kato prints: every field
//! of the real output is documented, and every documented field is
//! printed (the ones that need a flag with that flag).

use std::{collections::BTreeSet, process::Command};

use serde_json::Value;

use crate::{
    habits::connected,
    support::{require_root, Netns},
};

const KATO: &str = env!("CARGO_BIN_EXE_kato");

fn doc(name: &str) -> String {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../docs")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The field names of the first table after `from` (a heading or a line's
/// start): each row's first cell, every backticked name in it (`[]` off).
fn fields(doc: &str, from: &str) -> BTreeSet<String> {
    let at = doc
        .find(from)
        .unwrap_or_else(|| panic!("no `{from}` in the doc"));
    let mut names = BTreeSet::new();
    let mut in_table = false;
    for line in doc[at..].lines().skip(1) {
        if !line.starts_with('|') {
            if in_table {
                break;
            }
            continue;
        }
        in_table = true;
        let cell = line.split('|').nth(1).unwrap_or_default();
        for (i, part) in cell.split('`').enumerate() {
            // Odd parts sit between backticks.
            if i % 2 == 1 {
                names.insert(part.trim_end_matches("[]").to_owned());
            }
        }
    }
    // The header and separator rows hold no backticks.
    names
}

fn keys(v: &Value) -> BTreeSet<String> {
    v.as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .cloned()
        .collect()
}

fn kato(args: &[&str]) -> String {
    let out = Command::new(KATO).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "kato {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[track_caller]
fn same(what: &str, documented: &BTreeSet<String>, printed: &BTreeSet<String>) {
    let undocumented: Vec<_> = printed.difference(documented).collect();
    let unprinted: Vec<_> = documented.difference(printed).collect();
    assert!(
        undocumented.is_empty() && unprinted.is_empty(),
        "{what}: printed but not documented {undocumented:?}; documented but not printed {unprinted:?}"
    );
}

#[test]
fn every_json_field_is_documented_and_every_documented_field_is_printed() {
    require_root();
    let ns = Netns::new("jsondocs");
    let _held = connected(&ns, |c| crate::support::keepalive(c, 1, 1, 9));
    let json = doc("json.md");

    // Sockets: the union of every row's keys (a listener and two ends),
    // `sock` with its flag, `history` with --history.
    let rows: Value = serde_json::from_str(&kato(&[
        "sockets",
        "--netns",
        &ns.name,
        "--json",
        "--idle-timeout",
        "350s",
        "--show-kernel-addresses",
    ]))
    .unwrap();
    let mut printed: BTreeSet<String> = rows.as_array().unwrap().iter().flat_map(keys).collect();
    let told: Value = serde_json::from_str(&kato(&[
        "sockets",
        "--netns",
        &ns.name,
        "--json",
        "--history",
        "--for",
        "3s",
    ]))
    .unwrap();
    let told = told.as_array().unwrap();
    printed.extend(told.iter().flat_map(keys));
    same("a socket", &fields(&json, "## A socket"), &printed);

    // A story: the one of the connection probing every second.
    let story = told
        .iter()
        .map(|r| &r["history"])
        .find(|h| h.is_object())
        .unwrap_or_else(|| panic!("no story among {told:?}"));
    same("a story", &fields(&json, "## A story"), &keys(story));
    let step: BTreeSet<String> = story["events"][0]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let row = fields(&json, "## A story");
    assert!(row.contains("events"));
    for k in &step {
        assert!(
            json.contains(&format!("`{k}`")),
            "a story's event field `{k}` is not in json.md"
        );
    }

    // Doctor.
    let d: Value = serde_json::from_str(&kato(&["doctor", "-o", "json"])).unwrap();
    same(
        "kato doctor",
        &fields(&json, "## `kato doctor -o json`"),
        &keys(&d),
    );

    // Trace: an event line (`sock` with its flag).
    let lines = kato(&[
        "trace",
        "--netns",
        &ns.name,
        "--count",
        "2",
        "-o",
        "json",
        "--show-kernel-addresses",
    ]);
    let printed: BTreeSet<String> = lines
        .lines()
        .flat_map(|l| keys(&serde_json::from_str(l).unwrap()))
        .collect();
    let documented = fields(&doc("events.md"), "| Field | Type | Meaning |");
    same("a trace event", &documented, &printed);
}
