//! `kato protect` in the agent (`protect = true`): the sock_ops program on
//! the cgroup hierarchy's root for new connections of the watched
//! namespaces, and at every census the existing ones that need it. The
//! HTTP side has no way to change any of it: the rules are the agent's
//! policy, set at start and refined by what each census finds.

use std::collections::{HashMap, HashSet};

use keepalive_common::protect::ProtectConf;

use crate::{
    bpf::{protect::Protector, Bpf, LoadError},
    filter::Filter,
    netns::NetnsRef,
    policy::{Policy, RuleSource},
    protect::{self, Change, Outcome},
    sockets::{snapshot::NetnsSnapshot, Socket, ValueSource},
};

/// Cookies of sockets protected, kept at most (pruned to the census).
const MAX_DONE: usize = 1 << 20;

pub struct AgentProtect {
    protector: Protector,
    conf: ProtectConf,
    /// Sockets protect set, by cookie, and the idle/interval it set.
    done: HashMap<u64, (u32, u32)>,
    /// Changes made since the metrics last took them, by rule source.
    pub made: HashMap<RuleSource, u64>,
    /// Sockets of the last census carrying settings protect made.
    pub protected_now: usize,
    /// The pin for other kato processes, removed on drop.
    pin: Option<std::path::PathBuf>,
}

impl AgentProtect {
    /// Attaches to the cgroup root and turns protect on with `policy`'s
    /// rules, before the first census: no connection opened from then on
    /// is missed. `netns_filter`: only the watched namespaces.
    pub fn start(bpf: &mut Bpf, policy: &Policy, netns_filter: bool) -> Result<Self, LoadError> {
        let root = protect::cgroup::root().map_err(LoadError::Mount)?;
        bpf.protect_attach(&root)?;
        let pin = protect::pin::bpffs().map(|d| protect::pin::own(&d));
        let protector = bpf.protector(pin.as_ref().ok().map(std::path::PathBuf::as_path))?;
        if let Err(e) = pin
            .as_ref()
            .map(drop)
            .map_err(ToString::to_string)
            .and(protector.pinned.as_ref().map_err(ToString::to_string))
        {
            log::info!("protect: record not pinned ({e}); kato sockets will show kato's settings as the socket's");
        }
        let conf = ProtectConf {
            on: 1,
            netns_filter: u32::from(netns_filter),
            hz: bpf.kernel.hz,
            ..ProtectConf::default()
        };
        let mut p = AgentProtect {
            protector,
            conf,
            done: HashMap::new(),
            made: HashMap::new(),
            protected_now: 0,
            pin: pin.ok(),
        };
        p.configure(policy)?;
        log::info!("protect: on, attached at {}", root.display());
        Ok(p)
    }

    fn configure(&mut self, policy: &Policy) -> Result<(), LoadError> {
        let (rules, ct) = protect::rules::compile_policy(policy);
        self.protector.configure(&self.conf, &rules, &ct)
    }

    fn count(&mut self, c: &Change) {
        if c.outcome == Outcome::Set {
            *self.made.entry(c.source).or_default() += 1;
            if self.done.len() < MAX_DONE {
                self.done
                    .insert(c.cookie, (c.after.idle_s, c.after.interval_s));
            }
        }
    }

    /// New connections changed since the last call (logged at debug).
    pub fn drain(&mut self) {
        for r in self.protector.drain() {
            match Change::from_record(&r) {
                Ok(c) => {
                    log::debug!(
                        "protect: {:?} {} -> {} {} -> {}",
                        c.outcome,
                        c.local,
                        c.remote,
                        c.before,
                        c.after
                    );
                    self.count(&c);
                }
                Err(e) => log::warn!("protect: {e}"),
            }
        }
    }

    /// After a census: the rules it refined, the existing connections that
    /// need protecting (per namespace), and the settings protect made
    /// marked as kato's on the census's sockets.
    pub fn after_census(
        &mut self,
        bpf: &mut Bpf,
        targets: &[Option<NetnsRef>],
        snaps: &mut [NetnsSnapshot],
        policy: &Policy,
    ) {
        self.drain();
        if let Err(e) = self.configure(policy) {
            log::warn!("protect: updating the rules: {e}");
        }
        for (snap, target) in snaps.iter().zip(targets) {
            let planned = protect::plan::plan(
                snap.sockets.iter(),
                policy,
                &Filter::default(),
                false,
                &self.done.keys().copied().collect::<HashSet<_>>(),
            );
            if planned.is_empty() {
                continue;
            }
            let plan: Vec<_> = planned.iter().map(|p| (p.cookie, p.plan)).collect();
            match bpf.protect_existing(&mut self.protector, target.as_ref(), &plan) {
                Ok(records) => {
                    for r in &records {
                        match Change::from_record(r) {
                            Ok(c) => self.count(&c),
                            Err(e) => log::warn!("protect: {e}"),
                        }
                    }
                }
                Err(e) => log::warn!("protect: namespace {}: {e}", snap.inode),
            }
        }
        // Sockets gone since are forgotten; the rest say whose settings.
        let alive: HashSet<u64> = snaps
            .iter()
            .flat_map(|s| &s.sockets)
            .filter_map(|s| s.cookie)
            .collect();
        self.done.retain(|c, _| alive.contains(c));
        self.protected_now = 0;
        for s in snaps.iter_mut().flat_map(|n| &mut n.sockets) {
            // Changed by this very census's walk: the snapshot predates it.
            if let (Some(&(idle, intvl)), Some(k)) = (
                s.cookie.and_then(|c| self.done.get(&c)),
                s.keepalive.as_mut(),
            ) {
                if !k.enabled || k.idle_s.value != idle {
                    k.enabled = true;
                    k.idle_s = crate::sockets::Effective {
                        value: idle,
                        source: ValueSource::Kato,
                    };
                    k.interval_s = crate::sockets::Effective {
                        value: intvl,
                        source: ValueSource::Kato,
                    };
                }
            }
            if mark(s, &self.done) {
                self.protected_now += 1;
            }
        }
    }
}

/// Marks `s`'s keepalive idle and interval as kato's where protect set
/// them (and they still hold); whether it did.
fn mark(s: &mut Socket, done: &HashMap<u64, (u32, u32)>) -> bool {
    let (Some(cookie), Some(k)) = (s.cookie, s.keepalive.as_mut()) else {
        return false;
    };
    let Some(&(idle, intvl)) = done.get(&cookie) else {
        return false;
    };
    let mut any = false;
    let enabled = k.enabled;
    for (setting, value) in [(&mut k.idle_s, idle), (&mut k.interval_s, intvl)] {
        if enabled && setting.value == value && setting.source != ValueSource::Sysctl {
            setting.source = ValueSource::Kato;
            any = true;
        }
    }
    any
}

impl Drop for AgentProtect {
    fn drop(&mut self) {
        if let Some(p) = &self.pin {
            let _ = std::fs::remove_file(p);
        }
    }
}
