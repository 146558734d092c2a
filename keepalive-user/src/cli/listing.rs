//! `kato sockets` without `--watch`: one census, filtered, sorted, printed.
//! Each socket is held as a [`Compact`] (176 bytes, not 288) and made a
//! [`Socket`] in the block that prints it, unless every row must be a
//! `Socket` at once anyway (the fitted table measures them all first;
//! `--history` joins them with their stories): those take `Socket`s.

use std::io::Write as _;

use keepalive_user::{
    bpf::Bpf,
    census,
    filter::{self, Filter, Listed, SortKey},
    policy::Policy,
    sockets::{
        compact::Compact,
        row::Row,
        snapshot::{Snapshotter, Targets},
        Socket,
    },
    view::SocketView,
    workload::Resolver,
};

use super::{
    stories::Stories,
    table::{fitted, print_rows, RowView, Style},
    Output,
};

/// What the listing is asked to print, and how.
pub(super) struct Ask<'a> {
    pub output: Output,
    pub style: &'a Style,
    pub filter: &'a Filter,
    pub sort: SortKey,
    pub reverse: bool,
    /// `--risk` given: a policy is needed.
    pub risk: bool,
    /// `--show-kernel-addresses`.
    pub show_addresses: bool,
    /// `--history`: with stories traced by `--for`, or None to fetch them
    /// from the agent at this address.
    pub history: Option<std::net::SocketAddr>,
    pub traced: Option<Stories>,
}

/// The census this listing needs, taken, and its rows printed.
pub(super) fn once(
    ask: Ask<'_>,
    snap: &Snapshotter,
    bpf: Option<&mut Bpf>,
    targets: &Targets,
    resolver: &mut Resolver,
    policy: &mut Policy,
) -> anyhow::Result<()> {
    if ask.style.fits(ask.output) || ask.history.is_some() {
        list::<Socket>(ask, snap, bpf, targets, resolver, policy)
    } else {
        list::<Compact>(ask, snap, bpf, targets, resolver, policy)
    }
}

fn list<S: Row + Listed>(
    ask: Ask<'_>,
    snap: &Snapshotter,
    bpf: Option<&mut Bpf>,
    targets: &Targets,
    resolver: &mut Resolver,
    policy: &mut Policy,
) -> anyhow::Result<()> {
    let Ask {
        output,
        style,
        filter,
        sort,
        reverse,
        risk,
        show_addresses: show,
        history,
        traced,
    } = ask;
    let t = std::time::Instant::now();
    let mut snaps = census::take_rows::<S>(snap, bpf, targets, resolver, policy)?;
    // Settings a running `kato protect` made say so.
    keepalive_user::protect::pin::mark(snaps.iter_mut().flat_map(|n| &mut n.sockets));
    log::debug!("census taken in {:?}", t.elapsed());
    let policy = &*policy;
    if risk && policy.is_empty() {
        return Err(no_timeout());
    }
    let with_risk = !policy.is_empty();
    let all = snaps.iter().flat_map(|n| &n.sockets);
    let risk_of = |s: &S| policy.risk(&s.whole());
    let mut shown = filter::select(all, |s| s, risk_of, filter, sort);
    if reverse {
        shown.reverse();
    }
    log::debug!("selected at {:?}", t.elapsed());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if let Some(agent) = history {
        let stories = match traced {
            Some(s) => s,
            None => super::stories::fetch(agent)?,
        };
        let made: Vec<_> = shown.iter().map(|s| s.whole()).collect();
        let rows = made.iter().map(|s| view_of(s, policy, show));
        let header = style.frame.header;
        super::stories::print(&mut out, output, rows, &stories, with_risk, header)?;
        return ignore_broken_pipe(out.flush());
    }
    let r = if style.fits(output) {
        let made: Vec<_> = shown.iter().map(|s| s.whole()).collect();
        let views: Vec<SocketView<'_>> = made.iter().map(|s| view_of(s, policy, show)).collect();
        fitted(&mut out, &views, with_risk, style)
    } else {
        let row = |s: &S, f: RowView<'_>| f(&view_of(&s.whole(), policy, show));
        print_rows(&mut out, output, &shown, &row, with_risk, style)
    }
    .and_then(|()| out.flush());
    log::debug!("printed at {:?}", t.elapsed());
    // The process ends here: the kernel takes the memory back faster
    // than 100,000s of sockets' destructors would.
    drop(shown);
    std::mem::forget(snaps);
    ignore_broken_pipe(r)
}

/// A listed socket's view, with its kernel address where asked for.
fn view_of<'a>(s: &'a Socket, policy: &'a Policy, show_address: bool) -> SocketView<'a> {
    let v = SocketView::new(s, None, policy);
    if show_address {
        v.with_address()
    } else {
        v
    }
}

/// `--risk` without any idle timeout to classify against. Conntrack's
/// rules come with the snapshot, so this is known only after it.
pub(super) fn no_timeout() -> anyhow::Error {
    keepalive_user::agent::config::ConfigError {
        origin: "command line".into(),
        key: "--risk".into(),
        message: "no idle timeout to classify against: give --idle-timeout (no cloud default or conntrack applies here)".into(),
    }
    .into()
}

/// A reader that went away (`| head`) is not an error.
pub(super) fn ignore_broken_pipe(r: std::io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
