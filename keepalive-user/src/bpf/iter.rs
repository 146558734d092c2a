//! Running the BPF iterators and decoding their records.

use std::io::Read as _;

use aya::programs::Iter;
use keepalive_common::{OwnerRecord, SockRecord, OWNER_RECORD_SIZE, SOCK_RECORD_SIZE};

use super::{Bpf, Hook, LoadError};
use crate::netns::{self, NetnsRef};

/// Decodes a whole number of `T` records.
fn records<T: Copy + Default>(
    name: &'static str,
    bytes: &[u8],
    size: usize,
) -> Result<Vec<T>, LoadError> {
    if !bytes.len().is_multiple_of(size) {
        return Err(LoadError::Torn {
            name,
            len: bytes.len(),
            record: size,
        });
    }
    Ok(bytes
        .chunks_exact(size)
        // SAFETY: T is a repr(C) plain-data record of `size` bytes; any bits are valid.
        .map(|c| unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<T>()) })
        .collect())
}

impl Bpf {
    /// Runs iterator `hook` (in namespace `ns`, for netns-scoped ones) and
    /// returns its raw output.
    fn run_iter(&mut self, hook: Hook, ns: Option<&NetnsRef>) -> Result<Vec<u8>, LoadError> {
        let (name, kind, _) = hook.spec();
        let err = |source| LoadError::Program {
            name,
            tracepoint: kind,
            source,
        };
        let prog: &mut Iter = self
            .ebpf
            .program_mut(name)
            .ok_or(LoadError::MissingProgram { name })?
            .try_into()
            .map_err(err)?;
        if prog.fd().is_err() {
            return Err(LoadError::IteratorNotLoaded(name));
        }
        let id = prog.attach().map_err(err)?;
        let link = prog.take_link(id).map_err(err)?;
        let io = |source| LoadError::Iterator { name, source };
        let read = move || -> Result<Vec<u8>, LoadError> {
            let mut file = link.into_file().map_err(|e| io(std::io::Error::other(e)))?;
            let mut buf = Vec::new();
            file.read_to_end(&mut buf).map_err(io)?;
            Ok(buf)
        };
        match ns {
            Some(ns) => netns::run_in(ns, read)?,
            None => read(),
        }
    }

    /// Every TCP socket of namespace `ns` (default: kato's own).
    pub fn tcp_sockets(&mut self, ns: Option<&NetnsRef>) -> Result<Vec<SockRecord>, LoadError> {
        let bytes = self.run_iter(Hook::IterTcp, ns)?;
        records(Hook::IterTcp.program(), &bytes, SOCK_RECORD_SIZE)
    }

    /// Every TCP socket held by a process, in every namespace.
    pub fn socket_owners(&mut self) -> Result<Vec<OwnerRecord>, LoadError> {
        let bytes = self.run_iter(Hook::IterTaskFile, None)?;
        records(Hook::IterTaskFile.program(), &bytes, OWNER_RECORD_SIZE)
    }
}
