//! `kato agent-http` (hidden): the agent's HTTP process, started by the
//! agent itself (`agent::supervise`), never by hand.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::Args;
use keepalive_user::agent::{
    httpd::{self, HttpdConfig},
    otlp::Endpoint,
};

#[derive(Debug, Args)]
pub struct AgentHttpArgs {
    #[arg(long)]
    pub listen: SocketAddr,
    #[arg(long)]
    pub web_config: Option<PathBuf>,
    #[arg(long)]
    pub allowed_host: Vec<String>,
    #[arg(long)]
    pub max_connections: usize,
    #[arg(long)]
    pub max_renders: usize,
    /// The socket pairs' descriptors it inherited.
    #[arg(long, value_delimiter = ',')]
    pub fds: Vec<i32>,
    /// The pipe whose end means the engine is gone.
    #[arg(long)]
    pub lifeline: i32,
    /// Where the OTLP exporter posts (none: no exporter).
    #[arg(long)]
    pub otlp_endpoint: Option<Endpoint>,
    /// Milliseconds between metrics exports.
    #[arg(long, default_value_t = 60_000)]
    pub otlp_interval_ms: u64,
}

pub async fn run(a: AgentHttpArgs) -> anyhow::Result<()> {
    httpd::run(HttpdConfig {
        listen: a.listen,
        web_config: a.web_config,
        allowed_hosts: a.allowed_host,
        max_connections: a.max_connections,
        max_renders: a.max_renders,
        fds: a.fds,
        lifeline: a.lifeline,
        otlp: a
            .otlp_endpoint
            .map(|e| (e, Duration::from_millis(a.otlp_interval_ms))),
    })
    .await
}
