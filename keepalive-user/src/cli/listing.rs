//! `kato sockets` without `--watch` where the sockets cannot be printed
//! as they are read (`super::stream`): the fitted table (a terminal,
//! `--wide`, `--columns`, several namespaces to a pipe) measures every
//! row first, `--history` joins them with their stories, and the
//! sock_diag source has no iterator to stream from. One census, filtered,
//! sorted, printed. Each socket is held as a [`Compact`] (176 bytes, not
//! 288) and made a [`Socket`] in the block that prints it, unless every
//! row must be a `Socket` at once anyway (the fitted table, `--history`).

use std::io::Write as _;

use keepalive_user::{
    bpf::Bpf,
    census,
    filter::{self, Filter, Listed, SortKey},
    policy::Policy,
    sockets::{
        compact::Compact,
        row::Row,
        snapshot::{NetnsSnapshot, Snapshotter, Targets},
        table::Counts,
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
    let t = std::time::Instant::now();
    let show = ask.show_addresses;
    if !ask.style.fits(ask.output) && ask.history.is_none() {
        let mut out = rows_out();
        let snaps = take::<Compact>(&ask, snap, bpf, targets, resolver, policy)?;
        let policy = &*policy;
        let shown = select(&snaps, &ask, policy);
        log::debug!("selected at {:?}", t.elapsed());
        let views = |part: &[&Compact], f: RowView<'_>| {
            for c in part {
                f(&view_of(&c.socket(), None, policy, show));
            }
        };
        let with_risk = !policy.is_empty();
        let r = print_rows(&mut out, ask.output, &shown, &views, with_risk, ask.style)
            .and_then(|()| out.flush());
        log::debug!("printed at {:?}", t.elapsed());
        // The process ends here: the kernel takes the memory back faster
        // than 100,000s of sockets' destructors would.
        drop(shown);
        std::mem::forget(snaps);
        return ignore_broken_pipe(r);
    }
    let snaps = take::<Socket>(&ask, snap, bpf, targets, resolver, policy)?;
    let policy = &*policy;
    let shown = select(&snaps, &ask, policy);
    log::debug!("selected at {:?}", t.elapsed());
    let with_risk = !policy.is_empty();
    let views = shown.iter().map(|s| view_of(s, None, policy, show));
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    let r = match ask.history {
        Some(agent) => {
            let stories = match ask.traced {
                Some(s) => s,
                None => super::stories::fetch(agent)?,
            };
            let header = ask.style.frame.header;
            super::stories::print(&mut out, ask.output, views, &stories, with_risk, header)?;
            out.flush()
        }
        None => {
            let views: Vec<SocketView<'_>> = views.collect();
            fitted(&mut out, &views, with_risk, ask.style).and_then(|()| out.flush())
        }
    };
    log::debug!("printed at {:?}", t.elapsed());
    drop(shown);
    std::mem::forget(snaps);
    ignore_broken_pipe(r)
}

/// The census as `S` rows, marked where `kato protect` set their settings.
fn take<S: Row>(
    ask: &Ask<'_>,
    snap: &Snapshotter,
    bpf: Option<&mut Bpf>,
    targets: &Targets,
    resolver: &mut Resolver,
    policy: &mut Policy,
) -> anyhow::Result<Vec<NetnsSnapshot<S>>> {
    let t = std::time::Instant::now();
    let mut snaps = census::take_rows::<S>(snap, bpf, targets, resolver, policy)?;
    keepalive_user::protect::pin::mark(snaps.iter_mut().flat_map(|n| &mut n.sockets));
    log::debug!("census taken in {:?}", t.elapsed());
    if ask.risk && policy.is_empty() {
        return Err(no_timeout());
    }
    Ok(snaps)
}

/// The rows asked for, in the order asked for.
fn select<'s, S: Row + Listed>(
    snaps: &'s [NetnsSnapshot<S>],
    ask: &Ask<'_>,
    policy: &Policy,
) -> Vec<&'s S> {
    let all = snaps.iter().flat_map(|n| &n.sockets);
    let risk = |s: &S| policy.risk(&s.whole());
    let mut shown = filter::select(all, |s| s, risk, ask.filter, ask.sort);
    if ask.reverse {
        shown.reverse();
    }
    shown
}

/// A listed socket's view (with kato's counts under `--watch`), with its
/// kernel address where asked for.
pub(super) fn view_of<'a>(
    s: &'a Socket,
    counts: Option<&'a Counts>,
    policy: &'a Policy,
    show_address: bool,
) -> SocketView<'a> {
    let v = SocketView::new(s, counts, policy);
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

/// Standard output for output gathered in blocks: a duplicate of fd 1
/// where there is one, so that each block (a megabyte of JSON) is written
/// whole; stdout's own LineWriter searches every write for its last
/// newline first. Nothing is written to `std::io::stdout()` before.
pub(super) fn stdout_whole() -> Box<dyn std::io::Write + Send> {
    use std::os::fd::AsFd as _;
    match std::io::stdout().as_fd().try_clone_to_owned() {
        Ok(fd) => Box::new(std::fs::File::from(fd)),
        // Closed (`>&-`): stdout's own handling of that.
        Err(_) => Box::new(std::io::stdout()),
    }
}

/// [`stdout_whole`], buffered for the few small writes around the blocks.
pub(super) fn rows_out() -> std::io::BufWriter<Box<dyn std::io::Write + Send>> {
    std::io::BufWriter::with_capacity(64 << 10, stdout_whole())
}

/// A reader that went away (`| head`) is not an error.
pub(super) fn ignore_broken_pipe(r: std::io::Result<()>) -> anyhow::Result<()> {
    match r {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => Ok(r?),
    }
}
