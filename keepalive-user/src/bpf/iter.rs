//! Running the BPF iterators and decoding their records.

use std::{fs::File, io::Read as _};

use aya::programs::{iter::IterLink, Iter};
use keepalive_common::{OwnerRecord, SockRecord, OWNER_RECORD_SIZE, SOCK_RECORD_SIZE};

use super::{Bpf, Hook, LoadError};
use crate::netns::{self, NetnsRef};

/// Decodes fixed-size `T` records from an iterator's output as it arrives:
/// reads may end mid-record, and no copy of the whole output is kept
/// (100,000 sockets are 16 MB of records).
struct Records<T> {
    name: &'static str,
    size: usize,
    /// A record split across reads.
    tail: Vec<u8>,
    len: usize,
    _t: std::marker::PhantomData<T>,
}

impl<T: Copy> Records<T> {
    fn new(name: &'static str, size: usize) -> Self {
        assert_eq!(size, size_of::<T>());
        Self {
            name,
            size,
            tail: Vec::with_capacity(size),
            len: 0,
            _t: std::marker::PhantomData,
        }
    }

    fn decode(c: &[u8]) -> T {
        // SAFETY: T is a repr(C) plain-data record of `c.len()` bytes; any bits are valid.
        unsafe { std::ptr::read_unaligned(c.as_ptr().cast::<T>()) }
    }

    /// Hands every record completed by `bytes` to `each`.
    fn feed(&mut self, mut bytes: &[u8], mut each: impl FnMut(T)) {
        self.len += bytes.len();
        if !self.tail.is_empty() {
            let want = (self.size - self.tail.len()).min(bytes.len());
            self.tail.extend_from_slice(&bytes[..want]);
            bytes = &bytes[want..];
            if self.tail.len() < self.size {
                return;
            }
            each(Self::decode(&self.tail));
            self.tail.clear();
        }
        let chunks = bytes.chunks_exact(self.size);
        self.tail.extend_from_slice(chunks.remainder());
        chunks.for_each(|c| each(Self::decode(c)));
    }

    fn finish(self) -> Result<(), LoadError> {
        if !self.tail.is_empty() {
            return Err(LoadError::Torn {
                name: self.name,
                len: self.len,
                record: self.size,
            });
        }
        Ok(())
    }
}

/// Reads an iterator's file to its end, keeping what `map` makes of each
/// record. A thread of its own reads (the kernel walks its sockets and
/// runs the program in the read), this one decodes what it hands over:
/// the two overlap on two cores. At most [`IN_FLIGHT`] chunks wait.
fn read_all<T: Copy, U>(
    name: &'static str,
    size: usize,
    mut file: File,
    mut map: impl FnMut(T) -> Option<U>,
) -> Result<Vec<U>, LoadError> {
    // The kernel fills at most its 8-page seq buffer per read.
    const CHUNK: usize = 64 << 10;
    const IN_FLIGHT: usize = 8;
    let (full_tx, full_rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(IN_FLIGHT);
    let (empty_tx, empty_rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut records = Records::new(name, size);
    let mut out = Vec::new();
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> std::io::Result<()> {
            loop {
                let mut buf = empty_rx.try_recv().unwrap_or_else(|_| vec![0u8; CHUNK]);
                buf.resize(CHUNK, 0);
                let n = loop {
                    match file.read(&mut buf) {
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        r => break r?,
                    }
                };
                if n == 0 {
                    return Ok(());
                }
                buf.truncate(n);
                if full_tx.send(buf).is_err() {
                    return Ok(()); // the decoder is gone
                }
            }
        });
        for buf in full_rx {
            records.feed(&buf, |r| out.extend(map(r)));
            // Back for reuse; the reader may have finished.
            let _ = empty_tx.send(buf);
        }
        reader
            .join()
            .expect("an iterator reader panicked")
            .map_err(|source| LoadError::Iterator { name, source })
    })?;
    records.finish()?;
    Ok(out)
}

/// An attached iterator, not yet run: its file is opened (which runs it)
/// by [`Run::read`], in the namespace it should see.
pub(super) struct Run {
    name: &'static str,
    link: IterLink,
}

impl Run {
    pub(super) fn read<T: Copy, U: Send>(
        self,
        size: usize,
        ns: Option<&NetnsRef>,
        map: impl FnMut(T) -> Option<U> + Send,
    ) -> Result<Vec<U>, LoadError> {
        let name = self.name;
        let read = move || -> Result<Vec<U>, LoadError> {
            let t = std::time::Instant::now();
            let file = self.link.into_file().map_err(|e| LoadError::Iterator {
                name,
                source: std::io::Error::other(e),
            })?;
            let out = read_all(name, size, file, map);
            log::debug!("{name} read in {:?}", t.elapsed());
            out
        };
        match ns {
            Some(ns) => netns::run_in(ns, read)?,
            None => read(),
        }
    }
}

impl Bpf {
    /// Attaches iterator `hook` for one run.
    pub(super) fn attach_iter(&mut self, hook: Hook) -> Result<Run, LoadError> {
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
        Ok(Run { name, link })
    }

    /// What `owner(record)` makes of every TCP socket held by a process (in
    /// every namespace), and what `decode(i, record)` makes of every TCP
    /// socket of namespace `targets[i]` (None: kato's own). The owners are
    /// read on a thread of their own while the namespaces are read here:
    /// the two walks share nothing in the kernel.
    pub fn sockets_and_owners<O: Send, S: Send>(
        &mut self,
        targets: &[Option<NetnsRef>],
        owner: impl FnMut(OwnerRecord) -> Option<O> + Send,
        mut decode: impl FnMut(usize, SockRecord) -> Option<S> + Send,
    ) -> Result<(Vec<O>, Vec<Vec<S>>), LoadError> {
        let owners = self.attach_iter(Hook::IterTaskFile)?;
        let tcp = targets
            .iter()
            .map(|_| self.attach_iter(Hook::IterTcp))
            .collect::<Result<Vec<_>, _>>()?;
        std::thread::scope(|s| {
            let owners = s.spawn(|| owners.read(OWNER_RECORD_SIZE, None, owner));
            let decode = &mut decode;
            let sockets = tcp
                .into_iter()
                .zip(targets)
                .enumerate()
                .map(|(i, (run, t))| run.read(SOCK_RECORD_SIZE, t.as_ref(), |r| decode(i, r)))
                .collect::<Result<Vec<_>, _>>();
            let owners = owners.join().expect("reading socket owners panicked");
            Ok((owners?, sockets?))
        })
    }

    /// What `owner(record)` makes of every TCP socket held by a process
    /// (in every namespace), read alone: a listing that prints sockets as
    /// it reads them needs their owners first.
    pub fn read_owners<O: Send>(
        &mut self,
        owner: impl FnMut(OwnerRecord) -> Option<O> + Send,
    ) -> Result<Vec<O>, LoadError> {
        self.attach_iter(Hook::IterTaskFile)?
            .read(OWNER_RECORD_SIZE, None, owner)
    }

    /// Hands every TCP socket record of namespace `ns` (None: kato's own)
    /// to `each` as it is read; none is kept.
    pub fn each_socket(
        &mut self,
        ns: Option<&NetnsRef>,
        mut each: impl FnMut(SockRecord) + Send,
    ) -> Result<(), LoadError> {
        let none: Vec<()> = self
            .attach_iter(Hook::IterTcp)?
            .read(SOCK_RECORD_SIZE, ns, |r| {
                each(r);
                None
            })?;
        debug_assert!(none.is_empty());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(i: u8) -> OwnerRecord {
        OwnerRecord {
            sk: u64::from(i),
            tgid: 7,
            fd: 3,
            comm: [i; 16],
            ..OwnerRecord::default()
        }
    }

    fn bytes(r: &OwnerRecord) -> Vec<u8> {
        // SAFETY: OwnerRecord is repr(C) plain data with explicit padding.
        unsafe {
            std::slice::from_raw_parts((r as *const OwnerRecord).cast::<u8>(), OWNER_RECORD_SIZE)
        }
        .to_vec()
    }

    #[test]
    fn records_split_anywhere_across_reads_decode_whole() {
        let all: Vec<u8> = (1..=5).flat_map(|i| bytes(&owner(i))).collect();
        for cut in [1, 7, 31, 32, 33, 64, 100] {
            let mut r = Records::<OwnerRecord>::new("t", OWNER_RECORD_SIZE);
            let mut got = vec![];
            for chunk in all.chunks(cut) {
                r.feed(chunk, |o| got.push(o));
            }
            r.finish().unwrap();
            assert_eq!(got, (1..=5).map(owner).collect::<Vec<_>>(), "cut {cut}");
        }
    }

    #[test]
    fn a_torn_last_record_is_an_error() {
        let mut r = Records::<OwnerRecord>::new("t", OWNER_RECORD_SIZE);
        let mut n = 0;
        r.feed(&bytes(&owner(1)), |_| n += 1);
        r.feed(&[0; 5], |_| n += 1);
        assert_eq!(n, 1);
        match r.finish() {
            Err(LoadError::Torn { len, record, .. })
                if (len, record) == (OWNER_RECORD_SIZE + 5, OWNER_RECORD_SIZE) => {}
            other => panic!("{other:?}"),
        }
    }
}
