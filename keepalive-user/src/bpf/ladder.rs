//! Probe, then degrade: loading and attaching programs by [`Hook`], and the
//! attach ladder (fentry/fexit first, tracepoints when the kernel refuses
//! trampolines or lacks a function). Runs only while the object is opened,
//! the one time kato's BTF and aya's attach targets are alive.

use aya::{
    programs::{BtfTracePoint, FEntry, FExit, Iter, Program},
    Ebpf,
};

use super::{
    attach::{AttachKind, AttachMode, AttachPath},
    hooks::{self, Hook, ProgKind},
    tidy, LoadError,
};
use crate::kernel::btf::Btf;

pub(super) struct Programs<'a> {
    pub ebpf: &'a mut Ebpf,
    /// kato's reader: which functions and tracepoints this kernel has.
    /// None for a load from the kernel cache, which attaches no tracing
    /// program (`kernel::cache`): only the tracing ladder asks.
    pub btf: Option<&'a Btf>,
    /// aya's: the attach targets program loads look up ([`super::targets`]).
    pub aya_btf: &'a aya::Btf,
}

fn program_error(hook: Hook) -> impl Fn(aya::programs::ProgramError) -> LoadError {
    move |source| LoadError::Program {
        name: hook.program(),
        tracepoint: hook.target(),
        source,
    }
}

impl Programs<'_> {
    fn btf(&self) -> &Btf {
        self.btf
            .expect("loads that attach tracing programs parse the BTF (kernel::cache)")
    }

    /// Loads and attaches one program where its [`Hook`] says.
    fn attach_one(&mut self, hook: Hook) -> Result<(), LoadError> {
        let (name, target, kind) = hook.spec();
        if matches!(kind, ProgKind::FEntry | ProgKind::FExit) {
            self.btf()
                .function_args(target)
                .map_err(|source| LoadError::NoFunction {
                    name: target,
                    source,
                })?;
        }
        let err = program_error(hook);
        let btf = self.aya_btf;
        match (kind, self.ebpf.program_mut(name)) {
            (ProgKind::TpBtf, Some(Program::BtfTracePoint(p))) => {
                p.load(target, btf).map_err(&err)?;
                p.attach().map_err(&err)?;
            }
            (ProgKind::FEntry, Some(Program::FEntry(p))) => {
                p.load(target, btf).map_err(&err)?;
                p.attach().map_err(&err)?;
            }
            (ProgKind::FExit, Some(Program::FExit(p))) => {
                p.load(target, btf).map_err(&err)?;
                p.attach().map_err(&err)?;
            }
            (ProgKind::Iter, Some(Program::Iter(p))) => p.load(target, btf).map_err(&err)?,
            _ => return Err(LoadError::MissingProgram { name }),
        }
        Ok(())
    }

    pub fn attach_all(&mut self, group: &[Hook]) -> Result<(), LoadError> {
        group.iter().try_for_each(|&h| self.attach_one(h))
    }

    /// Loads both iterators (they attach when run): fails where the kernel
    /// has no BPF iterators or refuses these. Each is verified on a thread of
    /// its own: the verifier walks the kernel's types for every plain load,
    /// tens of milliseconds that `kato sockets` would otherwise wait twice.
    /// `kato protect`'s programs: the iterator that walks existing
    /// connections and the sock_ops program for new ones (attached later,
    /// to a cgroup, by `Bpf::protector`).
    pub fn load_protect(&mut self) -> Result<(), LoadError> {
        let (name, target, _) = Hook::IterProtect.spec();
        let iter: &mut Iter = self
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { name })?
            .try_into()
            .map_err(super::protect::program_error(name, target))?;
        iter.load(target, self.aya_btf)
            .map_err(super::protect::program_error(name, target))?;
        let ops: &mut aya::programs::SockOps = self
            .ebpf
            .program_mut(super::protect::SOCK_OPS)
            .ok_or(LoadError::MissingProgram {
                name: super::protect::SOCK_OPS,
            })?
            .try_into()
            .map_err(super::protect::program_error(
                super::protect::SOCK_OPS,
                "sock_ops",
            ))?;
        ops.load().map_err(super::protect::program_error(
            super::protect::SOCK_OPS,
            "sock_ops",
        ))
    }

    pub fn load_iterators(&mut self) -> Result<(), LoadError> {
        let btf = self.aya_btf;
        let iters: Vec<(Hook, &mut Iter)> = self
            .ebpf
            .programs_mut()
            .filter_map(|(name, p)| {
                let hook = hooks::ITERATORS.into_iter().find(|h| h.program() == name)?;
                match p {
                    Program::Iter(p) => Some((hook, p)),
                    _ => None,
                }
            })
            .collect();
        if iters.len() != hooks::ITERATORS.len() {
            let missing = hooks::ITERATORS
                .into_iter()
                .find(|h| !iters.iter().any(|(i, _)| i == h))
                .map_or("iterator", |h| h.program());
            return Err(LoadError::MissingProgram { name: missing });
        }
        std::thread::scope(|s| {
            let loads: Vec<_> = iters
                .into_iter()
                .map(|(hook, p)| {
                    s.spawn(move || p.load(hook.target(), btf).map_err(program_error(hook)))
                })
                .collect();
            loads
                .into_iter()
                .try_for_each(|h| h.join().expect("an iterator load panicked"))
        })
    }

    /// Unloads (and so detaches) a group; for undoing a partial path.
    fn unload_all(&mut self, group: &[Hook]) {
        for &h in group {
            let _ = match self.ebpf.program_mut(h.program()) {
                Some(Program::FEntry(p)) => FEntry::unload(p),
                Some(Program::FExit(p)) => FExit::unload(p),
                Some(Program::BtfTracePoint(p)) => BtfTracePoint::unload(p),
                Some(Program::Iter(p)) => Iter::unload(p),
                _ => Ok(()),
            };
        }
    }

    /// `sock:inet_sk_error_report` where the kernel has it; says which.
    fn attach_error_report(&mut self) -> Result<&'static str, LoadError> {
        let hook = Hook::InetSkErrorReport;
        if self.btf().tracepoint_args(hook.target()).is_err() {
            return Ok(" (no sock:inet_sk_error_report before 5.13: no socket_error events)");
        }
        self.attach_one(hook)?;
        Ok(", sock:inet_sk_error_report")
    }

    /// `arming`: also see keepalive timers armed and disarmed.
    pub fn attach_tracing(
        &mut self,
        mode: AttachMode,
        arming: bool,
    ) -> Result<AttachPath, LoadError> {
        match mode {
            AttachMode::Tracepoint => {
                self.tracepoint_path("forced with --attach tracepoint".into(), arming)
            }
            AttachMode::Fentry => self
                .fentry_path("forced with --attach fentry".into(), arming)
                .map_err(|e| LoadError::FentryRefused(Box::new(e))),
            AttachMode::Auto => {
                match self.fentry_path("the kernel accepts fentry/fexit trampolines".into(), arming)
                {
                    Ok(p) => Ok(p),
                    Err(e) => {
                        let e = tidy(&e);
                        log::info!("fentry path unavailable, using tracepoints: {e}");
                        self.unload_all(&hooks::FENTRY_PATH);
                        self.unload_all(&hooks::FENTRY_ACTIVE_RESETS);
                        self.unload_all(&hooks::FENTRY_ARMING);
                        self.unload_all(&hooks::TRACEPOINT_ARMING);
                        self.unload_all(&hooks::TCP_TRACEPOINTS);
                        self.unload_all(&hooks::FENTRY_TRACEPOINTS);
                        self.unload_all(&[Hook::InetSkErrorReport]);
                        self.tracepoint_path(format!("fentry/fexit unavailable: {e}"), arming)
                    }
                }
            }
        }
    }

    fn tracepoint_path(&mut self, why: String, arming: bool) -> Result<AttachPath, LoadError> {
        self.attach_all(&hooks::TRACEPOINT_PATH)?;
        let timers = if arming {
            self.attach_all(&hooks::TRACEPOINT_ARMING)?;
            "timer:timer_start/expire_entry/expire_exit/cancel"
        } else {
            "timer:timer_expire_entry/expire_exit (arming not watched: timers from snapshots)"
        };
        Ok(AttachPath {
            kind: AttachKind::TpBtf,
            detail: format!(
                "BTF tracepoints {timers} (every kernel timer, filtered on tcp_keepalive_timer), \
                 tcp:tcp_send_reset (active and reply resets), tcp:tcp_receive_reset, sock:inet_sock_set_state{}",
                self.attach_error_report()?
            ),
            why,
        })
    }

    fn fentry_path(&mut self, why: String, arming: bool) -> Result<AttachPath, LoadError> {
        self.attach_all(&hooks::FENTRY_PATH)?;
        let reason_at = self
            .btf()
            .function_reason_arg("tcp_send_active_reset")
            .ok()
            .flatten();
        self.attach_one(hooks::active_reset(reason_at))?;
        let out_of_line = hooks::FENTRY_ARMING
            .iter()
            .all(|h| self.btf().function_args(h.target()).is_ok());
        let arming = if !arming {
            "not watched (timers from snapshots)"
        } else if out_of_line {
            self.attach_all(&hooks::FENTRY_ARMING)?;
            "fexit inet_csk_reset_keepalive_timer, fentry inet_csk_delete_keepalive_timer"
        } else {
            // Inlined on this kernel: arming is seen on the timer tracepoints.
            self.attach_all(&hooks::TRACEPOINT_ARMING)?;
            "timer:timer_start/cancel (filtered; the arming functions are inlined on this kernel)"
        };
        self.attach_all(&hooks::TCP_TRACEPOINTS)?;
        self.attach_all(&hooks::FENTRY_TRACEPOINTS)?;
        let errors = self.attach_error_report()?;
        Ok(AttachPath {
            kind: AttachKind::Fentry,
            detail: format!(
                "fentry/fexit tcp_keepalive_timer, fentry tcp_send_active_reset; arming: {arming}; \
                 tcp:tcp_send_reset (reply resets), tcp:tcp_receive_reset, sock:inet_sock_set_state{errors}"
            ),
            why,
        })
    }
}
