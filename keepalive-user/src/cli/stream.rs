//! `kato sockets --sort none`: each socket printed as the kernel's iterator
//! hands it over, in the kernel's order, as `ss` prints; no row is held,
//! so a million sockets cost what their owners and conntrack entries do
//! (see [`Stream`]). Only where nothing needs every row first: a pipe's
//! fixed table or JSON, not the fitted table, `--reverse` or `--history`.

use std::io::Write as _;

use keepalive_user::{
    bpf::Bpf,
    policy::Policy,
    sockets::{snapshot::Targets, stream::Stream},
    view::{json, sockets as render},
    workload::Resolver,
};

use super::{
    listing::{ignore_broken_pipe, no_timeout, view_of, Ask},
    table::listed_at,
    Output,
};

/// Bytes of output gathered before a write.
const FLUSH_AT: usize = 64 << 10;

/// Can `ask` be printed as the sockets are read?
pub(super) fn streams(ask: &Ask<'_>) -> bool {
    ask.sort == keepalive_user::filter::SortKey::None
        && !ask.reverse
        && !ask.style.fits(ask.output)
        && ask.history.is_none()
}

/// Output gathered in a buffer, written when it fills; the first write
/// error stops the rest (a reader gone after `| head`).
struct Out {
    buf: Vec<u8>,
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
            let mut stdout = std::io::stdout();
            self.err = stdout
                .write_all(&self.buf)
                .and_then(|()| stdout.flush())
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
