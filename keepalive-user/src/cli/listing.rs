//! `kato sockets` without `--watch`: one census, filtered, sorted, printed.
//! Each socket is held as a [`Compact`] (176 bytes, not 288) and made a
//! [`Socket`] in the block that prints it, unless every row must be a
//! `Socket` at once anyway (the fitted table measures them all first;
//! `--history` joins them with their stories): those take `Socket`s.

use std::io::Write as _;

use keepalive_user::{
    bpf::Bpf,
    census,
    filter::{self, Filter, Listed},
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
    sockets::{ignore_broken_pipe, SocketsArgs},
    stories::Stories,
    table::{fitted, print_rows, RowView, Style},
    Output,
};

/// What the listing is asked to print, and how.
pub(super) struct Ask<'a> {
    pub args: &'a SocketsArgs,
    pub output: Output,
    pub style: &'a Style,
    pub filter: &'a Filter,
    /// Stories traced by `--for`, or None to fetch them from the agent.
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
    if ask.style.fits(ask.output) || ask.args.history {
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
        args,
        output,
        style,
        filter,
        traced,
    } = ask;
    let t = std::time::Instant::now();
    let mut snaps = census::take_rows::<S>(snap, bpf, targets, resolver, policy)?;
    // Settings a running `kato protect` made say so.
    keepalive_user::protect::pin::mark(snaps.iter_mut().flat_map(|n| &mut n.sockets));
    log::debug!("census taken in {:?}", t.elapsed());
    let policy = &*policy;
    if !args.risk.is_empty() && policy.is_empty() {
        return Err(super::sockets::no_timeout());
    }
    let with_risk = !policy.is_empty();
    let show = args.show_kernel_addresses;
    let all = snaps.iter().flat_map(|n| &n.sockets);
    let risk = |s: &S| policy.risk(&s.whole());
    let mut shown = filter::select(all, |s| s, risk, filter, args.sort);
    if args.reverse {
        shown.reverse();
    }
    log::debug!("selected at {:?}", t.elapsed());
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    if args.history {
        let stories = match traced {
            Some(s) => s,
            None => super::stories::fetch(args.agent)?,
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
