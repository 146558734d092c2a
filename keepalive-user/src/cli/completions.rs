//! `kato completions SHELL`: the shell's completion script, on stdout.

use anyhow::{Context as _, Result};
use clap::{Args, CommandFactory as _};
use clap_complete::Shell;

use super::Cli;

#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
kato completions bash > /etc/bash_completion.d/kato\n  \
kato completions zsh > \"${fpath[1]}/_kato\"\n  \
kato completions fish > ~/.config/fish/completions/kato.fish\n\n\
The Debian package installs the bash, zsh and fish scripts.")]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: Shell,
}

pub fn run(args: &CompletionsArgs) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(args.shell, &mut Cli::command(), "kato", &mut out);
    std::io::Write::write_all(&mut std::io::stdout().lock(), &out)
        .context("cannot write the completion script to stdout")
}
