//! `kato top`: `kato sockets --watch` arranged for watching a host: only
//! connections, the ones probing a silent peer first, refreshed in place,
//! fitted to the terminal with the summary line.

use clap::{Args, Parser as _};

use super::{sockets::SocketsArgs, Cli, Command};

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
sudo kato top                              this namespace, every 2 s\n  \
sudo kato top --all-netns --interval 5s    every namespace, every 5 s\n  \
sudo kato top --idle-timeout 350s          with the risk against a 350 s NAT\n\n\
It is `kato sockets --watch INTERVAL --sort probes --state connected` and takes what \
that takes after `--`: `kato top -- --port 5432 --columns local,foreign,keepalive,idle,unans`.")]
pub struct TopArgs {
    /// How often to refresh (2s, 500ms, or seconds).
    #[arg(long, value_name = "DURATION", default_value = "2s")]
    pub interval: String,
    /// Network namespace (name, path, self or inode; repeatable).
    #[arg(long, value_name = "NETNS")]
    pub netns: Vec<String>,
    /// Every network namespace on the host.
    #[arg(long, conflicts_with = "netns")]
    pub all_netns: bool,
    /// A middlebox idle timeout (repeatable), as for `kato sockets`.
    #[arg(long, value_name = "RULE")]
    pub idle_timeout: Vec<String>,
    /// More `kato sockets` flags.
    #[arg(last = true, value_name = "SOCKETS FLAGS")]
    pub more: Vec<String>,
}

/// The `kato sockets` arguments `kato top` stands for.
pub fn sockets_args(a: &TopArgs) -> Result<SocketsArgs, clap::Error> {
    let mut argv: Vec<String> = [
        "kato",
        "sockets",
        "--watch",
        &a.interval,
        "--sort",
        "probes",
    ]
    .map(str::to_owned)
    .into();
    argv.extend(["--state".into(), "connected".into()]);
    for n in &a.netns {
        argv.extend(["--netns".into(), n.clone()]);
    }
    if a.all_netns {
        argv.push("--all-netns".into());
    }
    for r in &a.idle_timeout {
        argv.extend(["--idle-timeout".into(), r.clone()]);
    }
    argv.extend(a.more.iter().cloned());
    match Cli::try_parse_from(argv)?.command {
        Command::Sockets(s) => Ok(s),
        _ => unreachable!("parsed as sockets"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_is_a_watching_listing_of_connections_probing_first() {
        let Command::Top(t) =
            Cli::try_parse_from(["kato", "top", "--netns", "blue", "--", "--port", "5432"])
                .unwrap()
                .command
        else {
            panic!("not top")
        };
        let s = sockets_args(&t).unwrap();
        assert_eq!(s.watch, Some(std::time::Duration::from_secs(2)));
        assert_eq!(s.netns, ["blue"]);
        assert_eq!(s.ends.port, [5432]);
        assert_eq!(s.sort, keepalive_user::filter::SortKey::Probes);
        let bad = Cli::try_parse_from(["kato", "top", "--interval", "soon"]).unwrap();
        let Command::Top(t) = bad.command else {
            panic!()
        };
        assert!(sockets_args(&t).is_err());
    }
}
