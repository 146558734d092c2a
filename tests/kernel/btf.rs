//! The BTF resolver against the running kernel, cross-checked with bpftool.

use std::{collections::HashMap, process::Command};

use keepalive_user::kernel::{btf::Btf, DEFAULT_BTF};

use crate::support::run;

/// `STRUCT 'name'` → member → bit offset, from `bpftool btf dump` text.
fn bpftool_members() -> HashMap<(String, String), u32> {
    let text = run(Command::new("bpftool").args(["btf", "dump", "file", DEFAULT_BTF]));
    let mut out = HashMap::new();
    let mut current: Option<String> = None;
    for line in text.lines() {
        if !line.starts_with('\t') {
            current = line
                .split_once("] STRUCT '")
                .and_then(|(_, rest)| rest.split_once('\''))
                .map(|(name, _)| name.to_owned());
            continue;
        }
        let Some(s) = &current else { continue };
        let mut parts = line.trim().splitn(2, '\'');
        let (Some(""), Some(rest)) = (parts.next(), parts.next()) else {
            continue;
        };
        let Some((member, rest)) = rest.split_once('\'') else {
            continue;
        };
        if let Some(bits) = rest.split("bits_offset=").nth(1) {
            let bits: u32 = bits.split_whitespace().next().unwrap().parse().unwrap();
            out.entry((s.clone(), member.to_owned())).or_insert(bits);
        }
    }
    out
}

#[test]
fn offsets_agree_with_bpftool() {
    let btf = Btf::from_file(DEFAULT_BTF.as_ref()).expect("kernel BTF parses");
    let want = bpftool_members();
    for (ty, field) in [
        ("sock", "sk_timer"),
        ("sock", "sk_err"),
        ("sock", "sk_socket"),
        ("sock", "__sk_common"),
        ("timer_list", "function"),
        ("timer_list", "expires"),
        ("inet_connection_sock", "icsk_probes_out"),
        ("socket_alloc", "vfs_inode"),
        ("inode", "i_ino"),
        ("tcp_sock", "keepalive_time"),
    ] {
        let bits = want
            .get(&(ty.to_owned(), field.to_owned()))
            .unwrap_or_else(|| panic!("bpftool shows no {ty}.{field}"));
        assert_eq!(
            btf.field(ty, field).unwrap().offset * 8,
            *bits,
            "{ty}.{field}"
        );
    }
}

#[test]
fn running_kernel_resolves_every_offset() {
    let btf = Btf::from_file(DEFAULT_BTF.as_ref()).unwrap();
    let c = keepalive_user::kernel::offsets::resolve(&btf, 1).expect("all fields present");
    // sock_common sits at the start of struct sock; the timer well after it.
    assert!(c.skc_family < 64 && c.sk_timer > 64, "{c:?}");
    assert_eq!(c.has_reset_reason, 1, "6.12+ kernels pass sk_rst_reason");
}

/// aya's program loads get kato's attach-target BTF, not a parse of their
/// own: every hook's target must sit at the id aya's full parse of the
/// running kernel's BTF gives it (present on this kernel or absent in both).
#[test]
fn attach_target_ids_agree_with_ayas_own_parse() {
    use aya_obj::btf::BtfKind;
    use keepalive_user::{bpf::Hook, kernel::btf::Target};
    let btf = Btf::from_file(DEFAULT_BTF.as_ref()).unwrap();
    let full = aya::Btf::from_sys_fs().expect("aya parses the kernel's BTF");
    let targets: Vec<Target<'static>> = Hook::ALL.iter().map(|h| h.attach_target()).collect();
    let ours = btf.target_ids(&targets);
    let mut found = 0;
    for ((hook, target), ours) in Hook::ALL.iter().zip(&targets).zip(ours) {
        let theirs = match target {
            Target::Func(n) => full.id_by_type_name_kind(n, BtfKind::Func),
            Target::Typedef(n) => full.id_by_type_name_kind(n, BtfKind::Typedef),
        }
        .ok();
        assert_eq!(ours, theirs, "{hook:?}: {target:?}");
        found += usize::from(ours.is_some());
    }
    // Every tracepoint and both iterators exist on any kernel kato supports.
    assert!(found >= 10, "only {found} targets found");
}
