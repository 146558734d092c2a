//! `kato sockets` to a pipe's fixed table or JSON (not the fitted table or
//! `--history`, which need every row as a `Socket`): the sockets joined as
//! the kernel's iterator hands them over (see [`Stream`]), then
//! - `--sort none`: each printed at once, in the kernel's order, as `ss`
//!   prints; no row is held, so a million sockets cost what their owners
//!   and conntrack entries do;
//! - sorted: each kept packed (~61 bytes, [`Packed`]) with a sort key (16
//!   bytes for the sorts by address, the default, 24 for the rest), the
//!   keys sorted, the rows printed in their order.

use std::io::Write as _;

use keepalive_user::{
    bpf::Bpf,
    filter::{Filter, PackedKey, SortKey},
    policy::Policy,
    sockets::{
        snapshot::Targets,
        stream::{Joins, Stream},
    },
    view::{json, sockets as render},
    workload::Resolver,
};

use super::{
    listing::{ignore_broken_pipe, no_timeout, rows_out, stdout_whole, view_of, Ask},
    table::{listed_at, print_rows, RowView},
    Output,
};

/// Bytes of output gathered before a write.
const FLUSH_AT: usize = 64 << 10;

/// Can `ask` be printed from the sockets as they are read, packed or not?
pub(super) fn streams(ask: &Ask<'_>) -> bool {
    !ask.style.fits(ask.output) && ask.history.is_none()
}

/// Can `ask` be printed as the sockets are read, holding none?
fn holds_none(ask: &Ask<'_>) -> bool {
    ask.sort == SortKey::None && !ask.reverse
}

/// Output gathered in a buffer, written when it fills ([`stdout_whole`]:
/// not searched for newlines); the first write error stops the rest (a
/// reader gone after `| head`).
struct Out {
    buf: Vec<u8>,
    to: Box<dyn std::io::Write + Send>,
    err: Option<std::io::Error>,
}

impl Out {
    fn write(&mut self, f: impl FnOnce(&mut Vec<u8>)) {
        if self.err.is_some() {
            return;
        }
        f(&mut self.buf);
        if self.buf.len() >= FLUSH_AT {
            self.flush();
        }
    }

    fn flush(&mut self) {
        if self.err.is_none() {
            self.err = self
                .to
                .write_all(&self.buf)
                .and_then(|()| self.to.flush())
                .err();
        }
        self.buf.clear();
    }
}

pub(super) fn print(
    ask: &Ask<'_>,
    bpf: &mut Bpf,
    targets: &Targets,
    resolver: &mut Resolver,
    policy: &mut Policy,
) -> anyhow::Result<()> {
    if !holds_none(ask) {
        return if ask.sort.primary_free() {
            sorted::<[u64; 2]>(ask, bpf, targets, resolver, policy)
        } else {
            sorted::<[u64; 3]>(ask, bpf, targets, resolver, policy)
        };
    }
    let t = std::time::Instant::now();
    let stream = Stream::prepare(bpf, targets, policy)?;
    log::debug!("owners and conntrack read in {:?}", t.elapsed());
    if ask.risk && policy.is_empty() {
        return Err(no_timeout());
    }
    let policy = &*policy;
    let with_risk = !policy.is_empty();
    let frame = ask.style.frame;
    let rows = json::Rows::new(&listed_at());
    let mut out = Out {
        buf: Vec::with_capacity(2 * FLUSH_AT),
        to: stdout_whole(),
        err: None,
    };
    match ask.output {
        Output::Json => out.write(|b| b.push(b'[')),
        Output::Table if frame.header => out.write(|b| {
            b.extend_from_slice(render::header(with_risk).as_bytes());
            b.push(b'\n');
        }),
        Output::Table => {}
    }
    let mut first = true;
    let mut line = String::with_capacity(256);
    stream.each(bpf, targets, resolver, |s| {
        if !ask.filter.matches(&s, || policy.risk(&s)) {
            return;
        }
        let v = view_of(&s, None, policy, ask.show_addresses);
        match ask.output {
            Output::Json => out.write(|b| rows.push(b, first, &v)),
            Output::Table => {
                line.clear();
                render::write_row(&mut line, &v, with_risk);
                line.push('\n');
                out.write(|b| b.extend_from_slice(line.as_bytes()));
            }
        }
        first = false;
    })?;
    match ask.output {
        Output::Json => out.write(|b| b.extend_from_slice(b"]\n")),
        Output::Table if frame.legend => {
            out.write(|b| b.extend_from_slice(format!("\n{}\n", render::FOOTNOTE).as_bytes()));
        }
        Output::Table => {}
    }
    out.flush();
    log::debug!("printed at {:?}", t.elapsed());
    ignore_broken_pipe(out.err.map_or(Ok(()), Err))
}

/// The sockets packed as read, then printed in the order asked for; the
/// sort keys held as `K` (16 bytes where the primary key is always 0).
fn sorted<K: PackedKey>(
    ask: &Ask<'_>,
    bpf: &mut Bpf,
    targets: &Targets,
    resolver: &mut Resolver,
    policy: &mut Policy,
) -> anyhow::Result<()> {
    let t = std::time::Instant::now();
    let joins = Joins::prepare(targets, policy)?;
    if ask.risk && policy.is_empty() {
        return Err(no_timeout());
    }
    let policy = &*policy;
    let (filter, sort) = (ask.filter, ask.sort);
    // The owners are read beside the sockets and joined after: the owner's
    // part of the filter, and the key of `--sort pid`, wait for them.
    let later = filter.needs_owner() || sort == SortKey::Pid;
    let before = Filter {
        pids: vec![],
        comms: vec![],
        ..filter.clone()
    };
    let mut keys: Vec<K> = Vec::new();
    // Keyed on the row as it will print (times to the millisecond).
    let rows = joins.pack(
        bpf,
        targets,
        resolver,
        |s| before.matches(s, || policy.risk(s)),
        |c, a| keys.push(K::pack(sort.packed(c, a))),
    )?;
    if later {
        let owner = Filter {
            pids: filter.pids.clone(),
            comms: filter.comms.clone(),
            ..Filter::default()
        };
        keys.retain_mut(|k| {
            let a = SortKey::index(k);
            let c = rows.get(a);
            *k = K::pack(sort.packed(&c, a));
            owner.matches(&c, || None)
        });
    }
    log::debug!("{} rows keyed at {:?}", keys.len(), t.elapsed());
    sort.sort_packed(&mut keys, |a| sort.key_of(&rows.get(a)));
    if ask.reverse {
        keys.reverse();
    }
    log::debug!("sorted at {:?}", t.elapsed());
    let show = ask.show_addresses;
    let views = |part: &[K], f: RowView<'_>| {
        rows.warm(part.iter().map(SortKey::index));
        for k in part {
            f(&view_of(
                &rows.get(SortKey::index(k)).socket(),
                None,
                policy,
                show,
            ));
        }
    };
    let mut out = rows_out();
    let with_risk = !policy.is_empty();
    let r = print_rows(&mut out, ask.output, &keys, &views, with_risk, ask.style)
        .and_then(|()| out.flush());
    log::debug!("printed at {:?}", t.elapsed());
    // The process ends here: the kernel takes the memory back faster
    // than the tables' destructors would.
    std::mem::forget(rows);
    ignore_broken_pipe(r)
}
