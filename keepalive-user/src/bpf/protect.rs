//! `kato protect`'s side of the object: the sock_ops program attached to a
//! cgroup (new connections), the protect iterator (existing ones), the
//! rules, scope and plan maps, and the records of what changed.

use std::{os::fd::AsFd as _, path::Path};

use aya::{
    maps::{Array, HashMap, MapData, RingBuf},
    programs::{links::CgroupAttachMode, SockOps},
};
use keepalive_common::protect::{
    ProtectConf, ProtectPlan, ProtectRecord, ProtectRule, Protected, MAX_PLAN, MAX_RULES,
    PROTECT_RECORD_SIZE,
};

use keepalive_common::names::map;

use super::{Bpf, Hook, LoadError};
use crate::netns::NetnsRef;

/// Why the record of protected sockets is not pinned for other kato
/// processes (they then show kato's settings as the socket's own).
#[derive(Debug, thiserror::Error)]
pub enum PinError {
    #[error("not asked")]
    NotAsked,
    #[error("{path}: {source}")]
    Pin {
        path: std::path::PathBuf,
        source: aya::pin::PinError,
    },
    #[error("the protected map is not an LRU hash")]
    NotLru,
}

/// The maps and program names protect uses, in the object.
pub const SOCK_OPS: &str = "kato_protect_ops";
const CONF: &str = map::PROTECT_CONF;
const RULES: &str = map::PROTECT_RULES;
const CT: &str = map::PROTECT_CT;
const PLAN: &str = map::PROTECT_PLAN;
const PROTECTED: &str = map::PROTECTED;
const EVENTS: &str = map::PROTECT_EVENTS;

/// Sizes for an object that will not protect: each map at its smallest.
pub const IDLE_SIZES: [(&str, u32); 5] = [
    (RULES, 1),
    (CT, 1),
    (PLAN, 1),
    (PROTECTED, 1),
    (EVENTS, 4096),
];

/// Protect's maps, taken from the object once its programs are attached.
/// The programs and their links stay in the [`Bpf`]: dropping it detaches
/// them.
pub struct Protector {
    /// Whether the record of protected sockets is pinned for other kato
    /// processes, and where, or why not.
    pub pinned: Result<(), PinError>,
    conf: Array<MapData, ProtectConf>,
    rules: Array<MapData, ProtectRule>,
    ct: HashMap<MapData, u32, u32>,
    plan: HashMap<MapData, u64, ProtectPlan>,
    protected: HashMap<MapData, u64, Protected>,
    events: RingBuf<MapData>,
}

pub(super) fn program_error(
    name: &'static str,
    target: &'static str,
) -> impl Fn(aya::programs::ProgramError) -> LoadError {
    move |source| LoadError::Program {
        name,
        tracepoint: target,
        source,
    }
}

impl Bpf {
    /// Attaches the sock_ops program (loaded with `LoadOptions::protect`)
    /// to the cgroup directory `cgroup`: every connection established by a
    /// process in that subtree runs it. It changes nothing until
    /// [`Protector::configure`] turns it on. Dropping the [`Bpf`] detaches.
    pub fn protect_attach(&mut self, cgroup: &Path) -> Result<(), LoadError> {
        let cg = std::fs::File::open(cgroup).map_err(|source| LoadError::Cgroup {
            path: cgroup.display().to_string(),
            source,
        })?;
        let ops: &mut SockOps = self
            .ebpf
            .program_mut(SOCK_OPS)
            .ok_or(LoadError::MissingProgram { name: SOCK_OPS })?
            .try_into()
            .map_err(program_error(SOCK_OPS, "sock_ops"))?;
        if ops.fd().is_err() {
            return Err(LoadError::IteratorNotLoaded(SOCK_OPS));
        }
        // A BPF link (5.7+): it runs beside whatever else is attached there
        // (a CNI's own sock_ops programs); link_create takes no mode flags.
        ops.attach(cg.as_fd(), CgroupAttachMode::Single)
            .map_err(program_error(SOCK_OPS, "sock_ops"))?;
        Ok(())
    }

    /// Protect's maps (once), the record of protected sockets pinned at
    /// `pin` for other kato processes where given.
    pub fn protector(&mut self, pin: Option<&Path>) -> Result<Protector, LoadError> {
        let take = |ebpf: &mut aya::Ebpf, name: &'static str| {
            ebpf.take_map(name).ok_or(LoadError::Map(name))
        };
        let e = &mut self.ebpf;
        let protected = take(e, PROTECTED)?;
        let pinned = match (&protected, pin) {
            (_, None) => Err(PinError::NotAsked),
            (aya::maps::Map::LruHashMap(data), Some(path)) => {
                let _ = std::fs::remove_file(path);
                data.pin(path).map_err(|source| PinError::Pin {
                    path: path.to_owned(),
                    source,
                })
            }
            _ => Err(PinError::NotLru),
        };
        Ok(Protector {
            pinned,
            conf: Array::try_from(take(e, CONF)?).map_err(|_| LoadError::Map(CONF))?,
            rules: Array::try_from(take(e, RULES)?).map_err(|_| LoadError::Map(RULES))?,
            ct: HashMap::try_from(take(e, CT)?).map_err(|_| LoadError::Map(CT))?,
            plan: HashMap::try_from(take(e, PLAN)?).map_err(|_| LoadError::Map(PLAN))?,
            protected: HashMap::try_from(protected).map_err(|_| LoadError::Map(PROTECTED))?,
            events: RingBuf::try_from(take(e, EVENTS)?).map_err(|_| LoadError::Map(EVENTS))?,
        })
    }

    /// Applies `plan` (socket cookie -> settings) to the existing sockets of
    /// namespace `ns` (None: this one) in one walk, and returns what the
    /// kernel did with each socket it found. Plans beyond [`MAX_PLAN`] go
    /// in several walks.
    pub fn protect_existing(
        &mut self,
        protector: &mut Protector,
        ns: Option<&NetnsRef>,
        plan: &[(u64, ProtectPlan)],
    ) -> Result<Vec<ProtectRecord>, LoadError> {
        let mut out = Vec::new();
        for chunk in plan.chunks(MAX_PLAN as usize) {
            for (cookie, p) in chunk {
                protector
                    .plan
                    .insert(cookie, p, 0)
                    .map_err(|_| LoadError::Map(PLAN))?;
            }
            let run = self.attach_iter(Hook::IterProtect)?;
            let got = run.read(PROTECT_RECORD_SIZE, ns, Some::<ProtectRecord>);
            for (cookie, _) in chunk {
                let _ = protector.plan.remove(cookie);
            }
            out.extend(got?);
        }
        Ok(out)
    }
}

impl Protector {
    /// Writes the rules, the per-namespace conntrack timeouts and then the
    /// settings (last: `conf.on` switches the sock_ops program on).
    pub fn configure(
        &mut self,
        conf: &ProtectConf,
        rules: &[ProtectRule],
        conntrack: &[(u32, u32)],
    ) -> Result<(), LoadError> {
        let rules = &rules[..rules.len().min(MAX_RULES as usize)];
        for (i, r) in rules.iter().enumerate() {
            self.rules
                .set(i as u32, r, 0)
                .map_err(|_| LoadError::Map(RULES))?;
        }
        let stale: Vec<u32> = self
            .ct
            .keys()
            .filter_map(Result::ok)
            .filter(|ns| !conntrack.iter().any(|(n, _)| n == ns))
            .collect();
        for ns in stale {
            let _ = self.ct.remove(&ns);
        }
        for (ns, ms) in conntrack {
            self.ct.insert(ns, ms, 0).map_err(|_| LoadError::Map(CT))?;
        }
        let conf = ProtectConf {
            rules: rules.len() as u32,
            n_ct: conntrack.len() as u32,
            ..*conf
        };
        self.conf.set(0, conf, 0).map_err(|_| LoadError::Map(CONF))
    }

    /// Records of new connections changed since the last call.
    pub fn drain(&mut self) -> Vec<ProtectRecord> {
        let mut out = Vec::new();
        while let Some(item) = self.events.next() {
            if item.len() == size_of::<ProtectRecord>() {
                // SAFETY: a repr(C) plain-data record of exactly this size.
                out.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) });
            }
        }
        out
    }

    /// What protect set on the socket with this cookie, if it did.
    pub fn protected(&self, cookie: u64) -> Option<Protected> {
        self.protected.get(&cookie, 0).ok()
    }
}
