//! `kato protect`: keepalive switched on or tightened on other processes'
//! TCP connections, so that they probe well before their path's idle
//! timeout. New connections at ACTIVE/PASSIVE_ESTABLISHED (sock_ops on a
//! cgroup), existing ones from the `iter/tcp` walk (userspace names them
//! by cookie in `PROTECT_PLAN`). Never loosens: each value is the smaller
//! of the socket's own and the wanted one (`keepalive_common::protect`).

use core::ffi::c_void;

use aya_ebpf::{
    bindings::{seq_file, BPF_F_NO_PREALLOC},
    helpers::{
        bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_seq_write, bpf_setsockopt, bpf_skc_to_tcp_sock,
    },
    macros::{map, sock_ops},
    maps::{Array, HashMap, LruHashMap, RingBuf},
    programs::SockOpsContext,
};
use keepalive_common::{
    counter,
    protect::{
        origin, outcome, tighten, wanted, Keepalive, ProtectConf, ProtectPlan, ProtectRecord,
        ProtectRule, Protected, MAX_PLAN, MAX_RULES, MAX_SCOPE, PROTECT_RECORD_SIZE,
    },
};

use crate::{
    bump, conf,
    iter::iconf,
    sock::{load, load16},
    WATCHED_NETNS,
};

/// Slot 0: on/off, rule count, scope, HZ (userspace rewrites it).
#[map]
static PROTECT_CONF: Array<ProtectConf> = Array::with_max_entries(1, 0);

/// The idle-timeout rules, `PROTECT_CONF.rules` of them.
#[map]
static PROTECT_RULES: Array<ProtectRule> = Array::with_max_entries(MAX_RULES, 0);

/// Per namespace inode: its conntrack established timeout (ms), for the
/// namespaces whose conntrack tracks flows.
#[map]
static PROTECT_CT: HashMap<u32, u32> = HashMap::with_max_entries(4096, 0);

/// Existing sockets to protect, by cookie (the iterator's work list).
#[map]
static PROTECT_PLAN: HashMap<u64, ProtectPlan> =
    HashMap::with_max_entries(MAX_PLAN, BPF_F_NO_PREALLOC);

/// What protect set, by socket cookie (`kato sockets`: source `kato`).
#[map]
static PROTECTED: LruHashMap<u64, Protected> = LruHashMap::with_max_entries(65_536, 0);

/// Records of new connections changed (existing ones go to the iterator's
/// file).
#[map]
static PROTECT_EVENTS: RingBuf = RingBuf::with_byte_size(256 << 10, 0);

const AF_INET: u16 = 2;
const AF_INET6: u16 = 10;
const SOL_SOCKET: i32 = 1;
const SO_KEEPALIVE: i32 = 9;
const SOL_TCP: i32 = 6;
const TCP_KEEPIDLE: i32 = 4;
const TCP_KEEPINTVL: i32 = 5;
const TCP_ESTABLISHED: u8 = 1;
const ACTIVE_ESTABLISHED: u32 = 4;
const PASSIVE_ESTABLISHED: u32 = 5;

#[sock_ops]
pub fn kato_protect_ops(ctx: SockOpsContext) -> u32 {
    match try_protect_ops(&ctx) {
        Ok(()) | Err(_) => 1,
    }
}

/// A connection the rules do not name costs the op check, the settings
/// lookup, the context's own fields and the rule loop: the socket is read
/// (its namespace, cgroup, keepalive) only for one they do.
#[inline(always)]
fn try_protect_ops(ctx: &SockOpsContext) -> Result<(), u32> {
    let op = ctx.op();
    if op != ACTIVE_ESTABLISHED && op != PASSIVE_ESTABLISHED {
        return Ok(());
    }
    let conf = PROTECT_CONF.get(0).ok_or(0u32)?;
    if conf.on == 0 {
        return Ok(());
    }
    let mut r = ProtectRecord {
        origin: origin::NEW,
        ..ProtectRecord::default()
    };
    // The 4-tuple from the context (its fields, no socket reads).
    r.family = ctx.family() as u16;
    r.sport = ctx.local_port() as u16;
    r.dport = u32::from_be(ctx.remote_port()) as u16;
    if r.family == AF_INET6 {
        // Word by word: the verifier takes only 4-byte loads of these.
        let mut w = [0u32; 4];
        let mut i = 0;
        while i < 4 {
            // SAFETY: the context is the kernel's `struct bpf_sock_ops`.
            w[i] = unsafe { core::ptr::read_volatile(&raw const (*ctx.ops).remote_ip6[i]) };
            i += 1;
        }
        r.daddr = v6(w);
    } else {
        r.daddr = mapped(ctx.remote_ip4());
    }
    if !in_scope(conf, &r) {
        return Ok(());
    }
    let path = path_rule(conf, &r);
    if path.is_none() && conf.n_ct == 0 {
        return Ok(());
    }
    // SAFETY: the context is the kernel's `struct bpf_sock_ops`.
    let sk = unsafe { (*ctx.ops).__bindgen_anon_2.sk } as *mut c_void;
    if sk.is_null() {
        return Ok(());
    }
    let tp = unsafe { bpf_skc_to_tcp_sock(sk) } as u64;
    if tp == 0 {
        return Ok(());
    }
    fill_tuple(&mut r, tp);
    let netns = r.netns;
    if conf.netns_filter != 0 && unsafe { WATCHED_NETNS.get(&netns) }.is_none() {
        return Ok(());
    }
    let Some((timeout_ms, source)) = with_conntrack(path, netns) else {
        return Ok(());
    };
    r.timeout_ms = timeout_ms;
    r.source = source;
    r.before = keepalive_of(tp, conf.hz);
    let Some(after) = tighten(r.before, wanted(timeout_ms)) else {
        bump(counter::PROTECT_TIGHT);
        return Ok(());
    };
    r.after = after;
    // SAFETY: the context is a full socket at ESTABLISHED.
    r.cookie = unsafe { bpf_get_socket_cookie(ctx.ops.cast()) };
    if conf.dry_run != 0 {
        r.outcome = outcome::WOULD_SET;
    } else {
        (r.outcome, r.error) = apply(ctx.ops.cast(), &r);
    }
    finish(&r);
    let Some(mut slot) = PROTECT_EVENTS.reserve::<ProtectRecord>(0) else {
        bump(counter::PROTECT_LOST);
        return Ok(());
    };
    r.ts_ns = unsafe { bpf_ktime_get_ns() };
    slot.write(r);
    slot.submit(0);
    Ok(())
}

/// Counts the outcome and remembers a change by cookie.
#[inline(always)]
fn finish(r: &ProtectRecord) {
    match r.outcome {
        outcome::SET => {
            bump(counter::PROTECT_SET);
            let p = Protected {
                after: r.after,
                timeout_ms: r.timeout_ms,
                source: r.source,
                _pad: [0; 3],
            };
            let cookie = r.cookie;
            let _ = PROTECTED.insert(&cookie, &p, 0);
        }
        outcome::FAILED => bump(counter::PROTECT_FAILED),
        _ => {}
    }
}

/// Sets what `r.after` changes on `sk` (a sock_ops context, or a BTF
/// socket under the iterator's lock): idle and interval first, so that
/// switching keepalive on arms the timer with them.
#[inline(always)]
fn apply(sk: *mut c_void, r: &ProtectRecord) -> (u8, i32) {
    let set = |level: i32, name: i32, value: u32| -> i32 {
        let mut v = value as i32;
        // SAFETY: a 4-byte int option on a socket the kernel handed us.
        unsafe { bpf_setsockopt(sk, level, name, (&raw mut v).cast(), 4) as i32 }
    };
    let mut err = 0;
    if r.after.idle_s != r.before.idle_s {
        err = set(SOL_TCP, TCP_KEEPIDLE, r.after.idle_s);
    }
    if err == 0 && r.after.intvl_s != r.before.intvl_s {
        err = set(SOL_TCP, TCP_KEEPINTVL, r.after.intvl_s);
    }
    if err == 0 && r.before.on == 0 {
        err = set(SOL_SOCKET, SO_KEEPALIVE, 1);
    }
    if err == 0 {
        (outcome::SET, 0)
    } else {
        (outcome::FAILED, err)
    }
}

/// Family, ports, addresses (IPv4 as `::ffff:a.b.c.d`), namespace and
/// cgroup of a BTF `struct tcp_sock *`.
#[inline(always)]
fn fill_tuple(r: &mut ProtectRecord, tp: u64) {
    r.family = load::<u16>(tp, conf!(skc_family));
    r.sport = load::<u16>(tp, conf!(skc_num));
    r.dport = u16::from_be(load::<u16>(tp, conf!(skc_dport)));
    if r.family == AF_INET6 {
        r.saddr = load16(tp, conf!(skc_v6_rcv_saddr));
        r.daddr = load16(tp, conf!(skc_v6_daddr));
    } else {
        r.saddr = mapped(load::<u32>(tp, conf!(skc_rcv_saddr)));
        r.daddr = mapped(load::<u32>(tp, conf!(skc_daddr)));
    }
    let net = load::<u64>(tp, conf!(skc_net));
    if net != 0 {
        r.netns = load::<u32>(net, conf!(net_inum));
    }
    if conf!(sk_cgrp) != 0 {
        let cgrp = load::<u64>(tp, conf!(sk_cgrp));
        if cgrp != 0 {
            let kn = load::<u64>(cgrp, conf!(cgroup_kn));
            if kn != 0 {
                r.cgroup_id = load::<u64>(kn, conf!(kn_id));
            }
        }
    }
}

/// An IPv6 address from the context's four network-order words.
#[inline(always)]
fn v6(words: [u32; 4]) -> [u8; 16] {
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        a[i * 4..i * 4 + 4].copy_from_slice(&words[i].to_ne_bytes());
        i += 1;
    }
    a
}

/// An IPv4 address (network order, as stored) as `::ffff:a.b.c.d`.
#[inline(always)]
fn mapped(v4: u32) -> [u8; 16] {
    let mut a = [0u8; 16];
    a[10] = 0xff;
    a[11] = 0xff;
    a[12..].copy_from_slice(&v4.to_ne_bytes());
    a
}

/// The port and address scope (the namespace is checked where the socket
/// is read).
#[inline(always)]
fn in_scope(conf: &ProtectConf, r: &ProtectRecord) -> bool {
    if r.family != AF_INET && r.family != AF_INET6 {
        return false;
    }
    if conf.n_ports != 0 {
        let mut hit = false;
        let mut i = 0;
        while i < MAX_SCOPE {
            if (i as u32) < conf.n_ports && (conf.ports[i] == r.sport || conf.ports[i] == r.dport) {
                hit = true;
            }
            i += 1;
        }
        if !hit {
            return false;
        }
    }
    if conf.n_addrs != 0 {
        let mut hit = false;
        let mut i = 0;
        while i < MAX_SCOPE {
            if (i as u32) < conf.n_addrs && conf.addrs[i] == r.daddr {
                hit = true;
            }
            i += 1;
        }
        if !hit {
            return false;
        }
    }
    true
}

/// The most specific path rule for the flow (declared first), as
/// `policy::Policy::lookup` picks it: `(specificity + 1, timeout ms, source)`.
#[inline(always)]
fn path_rule(conf: &ProtectConf, r: &ProtectRecord) -> Option<(u32, u32, u8)> {
    let (mut best, mut best_t, mut best_src) = (0u32, 0u32, 0u8);
    let n = conf.rules.min(MAX_RULES);
    let mut i = 0u32;
    while i < MAX_RULES {
        if i >= n {
            break;
        }
        if let Some(rule) = PROTECT_RULES.get(i) {
            if matches(rule, r) && rule.specificity + 1 > best {
                best = rule.specificity + 1;
                best_t = rule.timeout_ms;
                best_src = rule.source;
            }
        }
        i += 1;
    }
    (best != 0).then_some((best, best_t, best_src))
}

/// The rule that decides, as `policy::Policy::rule_for_flow` does: the
/// namespace's conntrack timeout where it is shorter than the path rule,
/// or where that was only assumed or learned. `(timeout ms, source)`.
#[inline(always)]
fn with_conntrack(path: Option<(u32, u32, u8)>, netns: u32) -> Option<(u32, u8)> {
    // SAFETY: a plain lookup; the value is copied out.
    let ct = unsafe { PROTECT_CT.get(&netns) }.copied();
    // `policy::RuleSource` codes (`protect::rules::source_code`).
    const CLOUD_ASSUMED: u8 = 1;
    const CONNTRACK: u8 = 2;
    const LEARNED: u8 = 3;
    match (path, ct) {
        (Some((_, t, src)), Some(c)) if c < t || src == CLOUD_ASSUMED || src == LEARNED => {
            Some((c, CONNTRACK))
        }
        (Some((_, t, src)), _) => Some((t, src)),
        (None, Some(c)) => Some((c, CONNTRACK)),
        (None, None) => None,
    }
}

#[inline(always)]
fn matches(rule: &ProtectRule, r: &ProtectRecord) -> bool {
    if rule.port != 0 && rule.port != r.dport && rule.port != r.sport {
        return false;
    }
    let half = |b: &[u8; 16], i: usize| {
        let mut w = [0u8; 8];
        w.copy_from_slice(&b[i * 8..i * 8 + 8]);
        u64::from_ne_bytes(w)
    };
    let diff = ((half(&rule.addr, 0) ^ half(&r.daddr, 0)) & half(&rule.mask, 0))
        | ((half(&rule.addr, 1) ^ half(&r.daddr, 1)) & half(&rule.mask, 1));
    diff == 0
}

/// The keepalive settings in force on a BTF `struct tcp_sock *`: its own,
/// else its namespace's sysctls, in seconds.
#[inline(always)]
fn keepalive_of(tp: u64, hz: u32) -> Keepalive {
    let hz = if hz == 0 { 250 } else { hz };
    let mut k = Keepalive::default();
    let flags = load::<u64>(tp, iconf!(skc_flags));
    if flags & (1u64 << (iconf!(sock_keepopen_bit) & 63)) != 0 {
        k.on = 1;
    }
    let net = load::<u64>(tp, conf!(skc_net));
    let (mut time, mut intvl, mut probes) = (
        load::<u32>(tp, iconf!(tp_keepalive_time)),
        load::<u32>(tp, iconf!(tp_keepalive_intvl)),
        load::<u8>(tp, iconf!(tp_keepalive_probes)),
    );
    if time != 0 {
        k.own |= 1;
    }
    if intvl != 0 {
        k.own |= 2;
    }
    if probes != 0 {
        k.own |= 4;
    }
    if net != 0 {
        if time == 0 {
            time = load::<u32>(net, iconf!(net_ka_time));
        }
        if intvl == 0 {
            intvl = load::<u32>(net, iconf!(net_ka_intvl));
        }
        if probes == 0 {
            probes = load::<u8>(net, iconf!(net_ka_probes));
        }
    }
    k.idle_s = time / hz;
    k.intvl_s = intvl / hz;
    k.cnt = probes;
    k
}

/// `iter/tcp` over a namespace: every ESTABLISHED socket whose cookie
/// userspace put in `PROTECT_PLAN` is tightened, and a record written to
/// the iterator's file for each (the kernel holds the socket's lock here).
#[no_mangle]
#[link_section = "iter/tcp"]
pub fn kato_iter_protect(ctx: *mut c_void) -> i32 {
    let _ = unsafe { try_iter_protect(ctx) };
    0
}

#[inline(always)]
unsafe fn try_iter_protect(ctx: *mut c_void) -> Result<(), u32> {
    let meta = unsafe { *(ctx as *const u64) };
    let sk = unsafe { *(ctx as *const u64).add(1) };
    if sk == 0 || meta == 0 {
        return Ok(());
    }
    if load::<u8>(sk, conf!(skc_state)) != TCP_ESTABLISHED {
        return Ok(());
    }
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut c_void) };
    // SAFETY: a plain lookup; the value is copied out.
    let Some(plan) = (unsafe { PROTECT_PLAN.get(&cookie) }).copied() else {
        return Ok(());
    };
    let tp = unsafe { bpf_skc_to_tcp_sock(sk as *mut c_void) } as u64;
    if tp == 0 {
        return Ok(());
    }
    let hz = PROTECT_CONF.get(0).map_or(0, |c| c.hz);
    let mut r = ProtectRecord {
        origin: origin::EXISTING,
        cookie,
        timeout_ms: plan.timeout_ms,
        source: plan.source,
        ..ProtectRecord::default()
    };
    fill_tuple(&mut r, tp);
    r.before = keepalive_of(tp, hz);
    match tighten(r.before, plan.idle_s) {
        None => {
            bump(counter::PROTECT_TIGHT);
            r.after = r.before;
            r.outcome = outcome::TIGHT_ALREADY;
        }
        Some(after) => {
            r.after = after;
            if plan.dry_run != 0 {
                r.outcome = outcome::WOULD_SET;
            } else {
                (r.outcome, r.error) = apply(tp as *mut c_void, &r);
            }
        }
    }
    finish(&r);
    r.ts_ns = unsafe { bpf_ktime_get_ns() };
    let seq = unsafe { *(meta as *const *mut seq_file) };
    unsafe { bpf_seq_write(seq, (&raw const r).cast(), PROTECT_RECORD_SIZE as u32) };
    Ok(())
}
