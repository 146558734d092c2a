//! The kernel type ids aya's program loads ask for, without parsing the
//! kernel's BTF a second time.
//!
//! aya finds a program's attach target (`btf_trace_*` for a BTF tracepoint,
//! a function for fentry/fexit, `bpf_iter_*` for an iterator) by name in an
//! `aya::Btf` and hands the kernel nothing but its type id. Parsing
//! /sys/kernel/btf/vmlinux into an `aya::Btf` costs tens of megabytes and
//! milliseconds; kato's own reader has already parsed it, so aya gets a BTF
//! whose only named types sit at the kernel's ids of those targets, every
//! other id a bare placeholder. kato's programs carry no CO-RE relocations
//! (Rust eBPF emits none), the only other use aya has for kernel BTF.

use aya::{Btf as AyaBtf, Endianness};

use super::{hooks::ProgKind, Hook};
use crate::kernel::btf::{Btf, Target};

/// BTF_KIND_* (include/uapi/linux/btf.h).
const KIND_PTR: u32 = 2;
const KIND_TYPEDEF: u32 = 8;
const KIND_FUNC: u32 = 12;

impl Hook {
    /// What aya looks up in the kernel's BTF to load this program.
    pub fn attach_target(self) -> Target<'static> {
        let target = self.target();
        match self.kind() {
            ProgKind::TpBtf => Target::Typedef(format!("btf_trace_{target}").into()),
            ProgKind::FEntry | ProgKind::FExit => Target::Func(target.into()),
            ProgKind::Iter => Target::Func(format!("bpf_iter_{target}").into()),
        }
    }
}

#[cfg(test)]
/// An `aya::Btf` that answers aya's lookups for `hooks` as the kernel's own
/// would: each target the kernel has, at its id. Targets the kernel lacks
/// are left out, so aya reports them as unknown, as with the full BTF.
pub fn for_hooks(btf: &Btf, hooks: &[Hook]) -> AyaBtf {
    for_ids(hooks, &ids(btf, hooks))
}

/// The kernel's id of each hook's attach target (None: the kernel lacks it).
pub fn ids(btf: &Btf, hooks: &[Hook]) -> Vec<Option<u32>> {
    let targets: Vec<Target<'static>> = hooks.iter().map(|h| h.attach_target()).collect();
    btf.target_ids(&targets)
}

/// [`for_ids`] for the hooks of every [`Hook::ALL`] a load may look up:
/// all for tracing, else the iterators (protect's among them), the only
/// other programs with an attach target. aya's table holds a type for
/// every id up to the highest target's (~36 bytes each): on 6.18 the
/// fentry targets sit near id 113,000, the iterators near 64,000, so a
/// listing's start-up holds about half.
pub fn for_load(tracing: bool, all_ids: &[Option<u32>]) -> AyaBtf {
    let ids: Vec<Option<u32>> = Hook::ALL
        .iter()
        .zip(all_ids)
        .map(|(h, id)| id.filter(|_| tracing || h.kind() == ProgKind::Iter))
        .collect();
    for_ids(&Hook::ALL, &ids)
}

/// An `aya::Btf` that answers aya's lookups for `hooks` as the kernel's own
/// would, from ids already found ([`ids`], or the kernel cache): each
/// target the kernel has, at its id.
pub fn for_ids(hooks: &[Hook], ids: &[Option<u32>]) -> AyaBtf {
    let named: Vec<(u32, Target<'static>)> = ids
        .iter()
        .zip(hooks)
        .filter_map(|(id, h)| Some(((*id)?, h.attach_target())))
        .collect();
    AyaBtf::parse(&raw(&named), Endianness::default())
        .expect("aya parses the BTF kato writes for it")
}

/// Raw BTF: types 1..=max(id), the `named` ones at their ids, placeholders
/// (unnamed pointers to void) everywhere else.
fn raw(named: &[(u32, Target<'_>)]) -> Vec<u8> {
    let max = named.iter().map(|(id, _)| *id).max().unwrap_or(0);
    let mut strings = vec![0u8];
    let mut at: Vec<(u32, u32, u32)> = named
        .iter()
        .map(|(id, t)| {
            let (kind, name) = match t {
                Target::Func(n) => (KIND_FUNC, n),
                Target::Typedef(n) => (KIND_TYPEDEF, n),
            };
            let off = strings.len() as u32;
            strings.extend_from_slice(name.as_bytes());
            strings.push(0);
            (*id, kind, off)
        })
        .collect();
    at.sort_unstable();
    let mut types = Vec::with_capacity(max as usize * 12);
    let mut next = at.iter().peekable();
    for id in 1..=max {
        let (name_off, kind) = match next.next_if(|(i, _, _)| *i == id) {
            Some(&(_, kind, off)) => (off, kind),
            None => (0, KIND_PTR),
        };
        // Several targets at one id (not in a real kernel): the first wins.
        while next.next_if(|(i, _, _)| *i == id).is_some() {}
        for word in [name_off, kind << 24, 0] {
            types.extend_from_slice(&word.to_le_bytes());
        }
    }
    let mut out = Vec::with_capacity(24 + types.len() + strings.len());
    out.extend_from_slice(&0xeb9f_u16.to_le_bytes());
    out.extend_from_slice(&[1, 0]); // version, flags
    for word in [
        24,
        0,
        types.len() as u32,
        types.len() as u32,
        strings.len() as u32,
    ] {
        out.extend_from_slice(&word.to_le_bytes());
    }
    out.extend_from_slice(&types);
    out.extend_from_slice(&strings);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf::fixture;

    #[test]
    fn aya_finds_each_target_at_the_kernels_id() {
        let btf = Btf::parse(&fixture::kernel_like()).unwrap();
        let hooks = [
            Hook::TcpSendReset,
            Hook::FentryKeepaliveTimer,
            Hook::FentrySendActiveReset,
        ];
        let aya = for_hooks(&btf, &hooks);
        for h in hooks {
            let (name, kind) = match h.attach_target() {
                Target::Func(n) => (n, aya_obj::btf::BtfKind::Func),
                Target::Typedef(n) => (n, aya_obj::btf::BtfKind::Typedef),
            };
            let want = btf.target_ids(&[h.attach_target()])[0].expect("in the fixture");
            assert_eq!(
                aya.id_by_type_name_kind(&name, kind).unwrap(),
                want,
                "{h:?}"
            );
        }
    }

    #[test]
    fn a_load_that_traces_nothing_finds_only_the_iterators() {
        let btf = Btf::parse(&fixture::kernel_like()).unwrap();
        let ids = ids(&btf, &Hook::ALL);
        let named = |aya: &AyaBtf, h: Hook| {
            match h.attach_target() {
                Target::Func(n) => aya.id_by_type_name_kind(&n, aya_obj::btf::BtfKind::Func),
                Target::Typedef(n) => aya.id_by_type_name_kind(&n, aya_obj::btf::BtfKind::Typedef),
            }
            .is_ok()
        };
        let (listing, tracing) = (for_load(false, &ids), for_load(true, &ids));
        for (h, id) in Hook::ALL.into_iter().zip(&ids) {
            let iter = h.kind() == ProgKind::Iter;
            assert_eq!(named(&listing, h), iter && id.is_some(), "{h:?}");
            assert_eq!(named(&tracing, h), id.is_some(), "{h:?}");
        }
        assert!(
            ids.iter().flatten().count() > 2,
            "the fixture has tracing targets"
        );
    }

    #[test]
    fn targets_the_kernel_lacks_stay_unknown() {
        let btf = Btf::parse(&fixture::kernel_like()).unwrap();
        let aya = for_hooks(&btf, &[Hook::IterTcp, Hook::TcpSendReset]);
        assert!(aya
            .id_by_type_name_kind("bpf_iter_tcp", aya_obj::btf::BtfKind::Func)
            .is_err());
        assert!(aya
            .id_by_type_name_kind("btf_trace_tcp_send_reset", aya_obj::btf::BtfKind::Typedef)
            .is_ok());
    }
}
