//! `kato man`: manual pages in roff, from the same definitions as `--help`
//! (so they cannot drift from it).

use std::path::PathBuf;

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory as _};

use super::Cli;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
kato man | man -l -                  read kato(1) without installing it\n  \
kato man --dir /usr/local/share/man/man1   kato.1 and one page per command (kato-trace.1, ...)")]
pub struct ManArgs {
    /// Write kato.1 and one page per command into this directory instead
    /// of kato.1 on stdout.
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

pub fn run(args: &ManArgs) -> Result<()> {
    let cmd = Cli::command();
    match &args.dir {
        Some(dir) => clap_mangen::generate_to(cmd, dir)
            .with_context(|| format!("cannot write manual pages into {}", dir.display())),
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cmd)
                .render(&mut out)
                .context("cannot render the manual page")?;
            std::io::Write::write_all(&mut std::io::stdout().lock(), &out)
                .context("cannot write the manual page to stdout")
        }
    }
}
