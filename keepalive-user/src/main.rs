//! `kato`: the command-line entry point.

mod cli;

use clap::Parser as _;

use cli::{Cli, Command};

fn main() -> std::process::ExitCode {
    keepalive_user::heap::tune();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kato: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match cli.command {
            Command::Trace(args) => cli::trace::run(args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Sockets(args) => cli::sockets::run(args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Top(args) => cli::top::run(args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Agent(args) => cli::agent::run(args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::Doctor(args) => cli::doctor::run(&args),
            Command::History(args) => {
                cli::history::run(&args).map(|()| std::process::ExitCode::SUCCESS)
            }
            Command::Completions(args) => {
                cli::completions::run(&args).map(|()| std::process::ExitCode::SUCCESS)
            }
            Command::Man(args) => cli::man::run(&args).map(|()| std::process::ExitCode::SUCCESS),
            Command::Protect(args) => cli::protect::run(args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::BenchFloor(args) => cli::bench_floor::run(args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS),
            Command::AgentHttp(args) => cli::agent_http::run(args)
                .await
                .map(|()| std::process::ExitCode::SUCCESS),
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // One sentence (the context chain), no backtrace.
            eprintln!("kato: {}", cli::one_line(&e));
            // Bad configuration is a usage error, like a bad flag.
            if e.downcast_ref::<keepalive_user::agent::config::ConfigError>()
                .is_some()
                || matches!(
                    e.downcast_ref::<keepalive_user::netns::NetnsError>(),
                    Some(keepalive_user::netns::NetnsError::NotFound(_))
                )
            {
                return std::process::ExitCode::from(2);
            }
            std::process::ExitCode::FAILURE
        }
    }
}
