//! The one owner of kato's loaded eBPF object: loads it with the offsets
//! resolved from the running kernel's BTF, attaches what the command asks
//! for, and hands out the ring stream, the iterators and the counters.
//! Each command's `run` owns a [`Bpf`]; snapshots and the agent borrow it.
//! Dropping it detaches every program.

pub mod attach;
mod error;
pub mod floor;
pub mod hooks;
mod iter;
mod ladder;
pub mod proglog;
pub mod protect;
pub mod ring;
mod targets;

use std::{collections::HashSet, path::PathBuf, sync::Arc};

use aya::{
    maps::{MapData, PerCpuArray, RingBuf},
    Ebpf, EbpfLoader,
};
use keepalive_common::{
    counter,
    names::{global, map},
    WatchedFew, WATCHED_FEW_MAX,
};

pub use attach::{AttachKind, AttachMode, AttachPath};
pub use error::LoadError;
pub use hooks::Hook;

use crate::{
    caps,
    kernel::{btf::Btf, cache, KernelInfo},
};

static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/keepalive"));

/// The smallest ring a kernel accepts (one page), for commands that never
/// read events: `kato sockets` without `--watch` need not pin 8 MiB.
const IDLE_RING_BYTES: u32 = 4096;

/// Whether to load the socket-listing iterators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Iterators {
    #[default]
    Skip,
    /// Load them; where the kernel refuses, say why in [`Bpf::iterators`].
    Try,
    /// Load them or fail.
    Require,
}

#[derive(Debug, Default, Clone)]
pub struct LoadOptions {
    /// Attach the keepalive/reset programs (needs kallsyms).
    pub tracing: bool,
    /// Also attach the send/recv turn counters (HTTP keep-alive view, 6.3+).
    pub turns: bool,
    pub iterators: Iterators,
    /// Kernel BTF to resolve offsets from (default /sys/kernel/btf/vmlinux).
    pub btf: Option<PathBuf>,
    /// CONFIG_HZ, when the kernel config cannot be read.
    pub hz: Option<u32>,
    /// Ring buffer size in bytes (a power of two, at least a page); tests
    /// shrink it to provoke overruns.
    pub ring_bytes: Option<u32>,
    /// fentry, tracepoints, or the best the kernel allows.
    pub attach: AttachMode,
    /// Only namespaces given to [`Bpf::watch_netns`] make events.
    pub netns_filter: bool,
    /// Quiet mode: the kernel records FINs and closes only of sockets with
    /// keepalive on or silent for at least this long, timer runs only with
    /// keepalive on (resets always), and counts the quiet closes. None:
    /// every record (`trace --closes`, the HTTP keep-alive view, tests).
    pub quiet: Option<std::time::Duration>,
    /// Probes decided in the kernel (needs `quiet`): sent and answered
    /// counted per CPU ([`Counters::probes_sent`], [`Counters::answered`]),
    /// timer runs recorded only when they change a verdict. The agent,
    /// when its probe counters carry no per-socket labels.
    pub quiet_probes: bool,
    /// Attach no arming hooks (no `armed`/`disarmed` records): the agent
    /// reads timers from its snapshots and spares every kernel timer's
    /// start and cancel a program run.
    pub no_arming: bool,
    /// Load `kato protect`'s programs (attached by [`Bpf::protector`]);
    /// otherwise its maps are made as small as the kernel allows.
    pub protect: bool,
}

/// Kernel-side counters, summed over CPUs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counters {
    /// Events that found the ring buffer full.
    pub lost: u64,
    /// Events dropped because a kernel read failed.
    pub read_failed: u64,
    pub emitted: u64,
    /// Events of unwatched namespaces, dropped in the kernel by design.
    pub filtered: u64,
    /// Connections that closed without a record (quiet mode).
    pub quiet_closes: u64,
    /// `quiet_probes`: keepalive probes sent, and answers by the number
    /// of probes outstanding (`answered[k - 1]`; the last: that many or more).
    pub probes_sent: u64,
    pub answered: [u64; counter::ANSWERED_MAX as usize],
    /// `quiet_probes`: runs recorded because the kernel's table was full.
    pub probing_full: u64,
    /// Routine records (probes, timers armed or stopped) not written: the
    /// ring was fuller than the share kept for verdict records.
    pub shed: u64,
    /// Offset of the last kernel read that failed (on any CPU), if one did.
    pub last_failed_offset: Option<u32>,
}

/// The per-CPU `COUNTERS` map: a read-only view that the agent's HTTP side
/// may hold while the run loop owns the [`Bpf`].
pub struct CounterMap(PerCpuArray<MapData, u64>);

impl CounterMap {
    pub fn read(&self) -> Counters {
        let arr = &self.0;
        let sum = |i: u32| arr.get(&i, 0).map(|v| v.iter().sum::<u64>()).unwrap_or(0);
        Counters {
            lost: sum(counter::LOST),
            read_failed: sum(counter::READ_FAILED),
            emitted: sum(counter::EMITTED),
            filtered: sum(counter::FILTERED),
            quiet_closes: sum(counter::QUIET_CLOSES),
            probes_sent: sum(counter::PROBES_SENT),
            answered: std::array::from_fn(|k| sum(counter::PROBES_ANSWERED + k as u32)),
            probing_full: sum(counter::PROBING_FULL),
            shed: sum(counter::SHED),
            last_failed_offset: arr
                .get(&counter::LAST_FAILED_OFFSET, 0)
                .ok()
                .and_then(|v| v.iter().copied().max())
                .and_then(|v| v.checked_sub(1))
                .and_then(|v| u32::try_from(v).ok()),
        }
    }
}

/// aya's loader, with no kernel BTF: kato's programs carry no CO-RE
/// relocations, and program loads get [`targets::for_load`] instead.
/// Stock aya 0.14's `EbpfLoader::new` parsed /sys/kernel/btf/vmlinux
/// itself (aya#1172); the copy in vendor/aya does not (vendor/README.md),
/// and `.btf(None)` keeps the loader right with either.
fn loader() -> EbpfLoader<'static> {
    let mut loader = EbpfLoader::new();
    loader.btf(None);
    loader
}

/// kato's eBPF object in the kernel.
pub struct Bpf {
    ebpf: Ebpf,
    pub kernel: KernelInfo,
    /// Set when the tracing programs are attached.
    pub attach: Option<AttachPath>,
    /// With [`Iterators::Try`]: why the kernel refused them, if it did
    /// ([`Skipped`] when not asked for).
    pub iterators: Result<(), Skipped<LoadError>>,
    counters: Arc<CounterMap>,
}

/// Why an optional part of the object is not there.
#[derive(Debug, thiserror::Error)]
pub enum Skipped<E: std::error::Error + 'static> {
    #[error("not loaded")]
    NotAsked,
    #[error(transparent)]
    Refused(E),
}

/// An error as one sentence: aya appends an empty "Verifier output:" when
/// the kernel refused before verifying.
pub(crate) fn tidy(e: &LoadError) -> String {
    let s = e.to_string();
    let s = s.trim_end();
    let s = s.strip_suffix("Verifier output:").unwrap_or(s).trim_end();
    s.strip_suffix('.').unwrap_or(s).to_owned()
}

impl Bpf {
    /// Probes the running kernel, loads the object and attaches what
    /// `opts` asks for.
    pub fn open(opts: &LoadOptions) -> Result<Self, LoadError> {
        caps::require_tracing().map_err(LoadError::Privilege)?;
        let path = opts
            .btf
            .clone()
            .unwrap_or_else(|| PathBuf::from(crate::kernel::DEFAULT_BTF));
        // Loads that attach no tracing program need nothing from the BTF
        // that the kernel cache does not keep.
        let cacheable = !opts.tracing
            && !opts.protect
            && opts.hz.is_none()
            && path == std::path::Path::new(crate::kernel::DEFAULT_BTF);
        let key = cacheable.then(|| cache::Key::running(&path)).flatten();
        if let Some(c) = key
            .as_ref()
            .and_then(|k| cache::load(k, path.clone(), Hook::ALL.len()))
        {
            log::debug!("kernel facts from {}", cache::DIR);
            let aya_btf = targets::for_load(opts.tracing, &c.target_ids);
            match Self::load(c.info, None, &aya_btf, opts) {
                Ok(bpf) => return Ok(bpf),
                // Parsed afresh below, and the entry replaced.
                Err(e) => log::debug!("loading with the kept facts failed: {e}"),
            }
        }
        let (kernel, btf) = KernelInfo::probe(Some(path), opts.hz, opts.tracing)?;
        let ids = targets::ids(&btf, &Hook::ALL);
        let facts = key.map(|k| (k, kernel.clone()));
        let bpf = Self::load(
            kernel,
            Some(&btf),
            &targets::for_load(opts.tracing, &ids),
            opts,
        )?;
        if let Some((key, kernel)) = facts {
            cache::store(key, &kernel, &ids);
        }
        Ok(bpf)
    }

    /// [`Bpf::open`] with a kernel already probed (doctor inspects its BTF
    /// first). kato's BTF is dropped by the caller, aya's attach targets at
    /// return: nothing needs them once programs are loaded.
    pub fn open_with(kernel: KernelInfo, btf: &Btf, opts: &LoadOptions) -> Result<Self, LoadError> {
        caps::require_tracing().map_err(LoadError::Privilege)?;
        Self::open_parsed(kernel, btf, opts)
    }

    fn open_parsed(kernel: KernelInfo, btf: &Btf, opts: &LoadOptions) -> Result<Self, LoadError> {
        Self::load(
            kernel,
            Some(btf),
            &targets::for_load(opts.tracing, &targets::ids(btf, &Hook::ALL)),
            opts,
        )
    }

    /// Loads with the facts in `kernel` and the attach targets in
    /// `aya_btf`; `btf` (None: from the kernel cache) is asked which
    /// tracing hooks exist.
    fn load(
        kernel: KernelInfo,
        btf: Option<&Btf>,
        aya_btf: &aya::Btf,
        opts: &LoadOptions,
    ) -> Result<Self, LoadError> {
        if opts.tracing && kernel.config.keepalive_fn == 0 {
            return Err(LoadError::NotForTracing);
        }
        let t = std::time::Instant::now();
        let mut loader = loader();
        let ring = match opts.ring_bytes {
            Some(bytes) => Some(bytes),
            None if !opts.tracing => Some(IDLE_RING_BYTES),
            None => None,
        };
        if let Some(bytes) = ring {
            loader.map_max_entries(map::EVENTS, bytes);
        }
        if !opts.protect {
            for (name, size) in protect::IDLE_SIZES {
                loader.map_max_entries(name, size);
            }
        }
        if !opts.tracing {
            // No tracing program runs: its tables (~13 MB of preallocated
            // LRU entries) would be created for nothing. WATCHED_NETNS
            // stays: protect watches its namespaces without tracing.
            for name in [map::OWNERS, map::PORT_OWNERS]
                .into_iter()
                .chain(map::PRIVATE)
            {
                loader.map_max_entries(name, 1);
            }
        }
        let config = keepalive_common::KernelConfig {
            netns_filter: u32::from(opts.netns_filter),
            quiet: u32::from(opts.quiet.is_some()),
            quiet_idle_jiffies: opts.quiet.map_or(0, |d| {
                (d.as_secs_f64() * f64::from(kernel.hz)).min(f64::from(u32::MAX / 2)) as u32
            }),
            turns: u32::from(opts.turns),
            quiet_probes: u32::from(opts.quiet_probes && opts.quiet.is_some()),
            shed_at: keepalive_common::shed_at(ring.unwrap_or(keepalive_common::EVENTS_RING_BYTES)),
            ..kernel.config
        };
        let log_level = proglog::level();
        let mut ebpf = loader
            .override_global(global::CONFIG, &config, true)
            .override_global(global::ITER_CONFIG, &kernel.iter_config, true)
            .override_global(global::LOG_LEVEL, &log_level, true)
            .load(OBJECT)?;
        if log_level != 0 {
            proglog::start(&mut ebpf);
        }
        log::debug!("object loaded at {:?}", t.elapsed());
        let counters = ebpf
            .take_map(map::COUNTERS)
            .and_then(|m| PerCpuArray::try_from(m).ok())
            .ok_or(LoadError::Map(map::COUNTERS))?;
        let mut progs = ladder::Programs {
            ebpf: &mut ebpf,
            btf,
            aya_btf,
        };
        let attach = if opts.tracing {
            let path = progs.attach_tracing(opts.attach, !opts.no_arming)?;
            log::debug!("attached via {}: {}", path.kind.name(), path.detail);
            if opts.turns {
                progs.attach_all(&hooks::TURNS)?;
            }
            Some(path)
        } else {
            None
        };
        let iterators = match opts.iterators {
            Iterators::Skip => Err(Skipped::NotAsked),
            Iterators::Try => progs.load_iterators().map_err(Skipped::Refused),
            Iterators::Require => Ok(progs.load_iterators()?),
        };
        if opts.protect {
            progs.load_protect()?;
        }
        log::debug!("attached at {:?}", t.elapsed());
        Ok(Self {
            ebpf,
            kernel,
            attach,
            iterators,
            counters: Arc::new(CounterMap(counters)),
        })
    }

    fn ring(&mut self) -> Result<RingBuf<MapData>, LoadError> {
        let map = self
            .ebpf
            .take_map(map::EVENTS)
            .ok_or(LoadError::Map(map::EVENTS))?;
        RingBuf::try_from(map).map_err(|_| LoadError::Map(map::EVENTS))
    }

    /// The event stream; the ring can be taken once (this or
    /// [`Bpf::events_thread`]).
    pub fn events(&mut self) -> Result<ring::EventStream, LoadError> {
        ring::EventStream::new(self.ring()?).map_err(LoadError::Reader)
    }

    /// The events, drained by a thread of their own.
    pub fn events_thread(&mut self) -> Result<ring::RingThread, LoadError> {
        ring::RingThread::spawn(self.ring()?).map_err(LoadError::Reader)
    }

    /// Makes exactly `inodes` the namespaces whose sockets make events
    /// (with [`LoadOptions::netns_filter`]; otherwise every namespace does).
    pub fn watch_netns(&mut self, inodes: &HashSet<u32>) -> Result<(), LoadError> {
        let map = self
            .ebpf
            .map_mut(map::WATCHED_NETNS)
            .ok_or(LoadError::Map(map::WATCHED_NETNS))?;
        let mut m: aya::maps::HashMap<&mut MapData, u32, u8> =
            aya::maps::HashMap::try_from(map).map_err(|_| LoadError::Map(map::WATCHED_NETNS))?;
        let stale: Vec<u32> = m
            .keys()
            .filter_map(Result::ok)
            .filter(|k| !inodes.contains(k))
            .collect();
        for k in stale {
            let _ = m.remove(&k);
        }
        for &k in inodes {
            m.insert(k, 1, 0)
                .map_err(|_| LoadError::Map("WATCHED_NETNS (full)"))?;
        }
        // A few are also kept in one array slot, compared in place.
        let mut few = WatchedFew {
            len: u32::MAX,
            ..WatchedFew::default()
        };
        if inodes.len() <= WATCHED_FEW_MAX {
            let mut sorted: Vec<u32> = inodes.iter().copied().collect();
            sorted.sort_unstable();
            few.len = sorted.len() as u32;
            few.inums[..sorted.len()].copy_from_slice(&sorted);
        }
        let map = self
            .ebpf
            .map_mut(map::WATCHED_FEW)
            .ok_or(LoadError::Map(map::WATCHED_FEW))?;
        let mut a: aya::maps::Array<&mut MapData, WatchedFew> =
            aya::maps::Array::try_from(map).map_err(|_| LoadError::Map(map::WATCHED_FEW))?;
        if a.get(&0, 0).ok() != Some(few) {
            a.set(0, few, 0)
                .map_err(|_| LoadError::Map(map::WATCHED_FEW))?;
        }
        Ok(())
    }

    /// Tells the programs who owns the sockets of a task walk, for the
    /// records they make once the owner let go or in softirq: each
    /// listener's owner by namespace and port (its children's, until one
    /// is seen in a system call), and connected sockets' owners (accepted
    /// ones are named from their listener: the kernel forgets only the
    /// entries it made when they close). Bounded by the maps' LRU.
    pub fn seed_owners(
        &mut self,
        owners: &[keepalive_common::OwnerRecord],
    ) -> Result<(), LoadError> {
        use keepalive_common::{port_key, OwnerSlot};
        const LISTEN: u8 = 10;
        for (map, listeners) in [(map::PORT_OWNERS, true), (map::OWNERS, false)] {
            let m = self.ebpf.map_mut(map).ok_or(LoadError::Map(map))?;
            let mut m: aya::maps::HashMap<&mut MapData, u64, OwnerSlot> =
                aya::maps::HashMap::try_from(m).map_err(|_| LoadError::Map(map))?;
            for o in owners {
                let key = match (listeners, o.state == LISTEN) {
                    (true, true) => port_key(o.netns, o.sport),
                    (false, false) if o.passive == 0 => o.sk,
                    _ => continue,
                };
                let slot = OwnerSlot {
                    tgid: o.tgid,
                    _pad0: 0,
                    comm: o.comm,
                };
                // An LRU map takes every insert (evicting the oldest).
                let _ = m.insert(key, slot, 0);
            }
        }
        Ok(())
    }

    /// The task walk alone: every TCP socket held by a process, in every
    /// namespace.
    pub fn owners(&mut self) -> Result<Vec<keepalive_common::OwnerRecord>, LoadError> {
        self.read_owners(Some)
    }

    pub fn counters(&self) -> Counters {
        self.counters.read()
    }

    /// A handle on the counters that outlives borrows of `self`.
    pub fn counter_map(&self) -> Arc<CounterMap> {
        Arc::clone(&self.counters)
    }
}

#[cfg(test)]
mod tests {
    use keepalive_common::names::map;

    /// Every map name userspace opens exists in the compiled object, and
    /// the object has no map nobody knows of.
    #[test]
    fn map_names_match_the_object() {
        let obj = aya_obj::Object::parse(super::OBJECT).expect("the compiled object parses");
        let mut found: Vec<&str> = obj
            .maps
            .keys()
            .map(String::as_str)
            .filter(|n| !n.starts_with('.') && !n.starts_with("AYA_"))
            .collect();
        found.sort_unstable();
        let mut known: Vec<&str> = map::OPENED.iter().chain(&map::PRIVATE).copied().collect();
        known.sort_unstable();
        assert_eq!(found, known);
    }
}
