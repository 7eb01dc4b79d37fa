//! `query-service`: the HTTP API over the events in ClickHouse.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use sightline_query::QueryConfig;

/// Sightline query service: historical detection events over HTTP.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Without it, the built-in defaults are used (local servers).
    #[arg(long, short, env = "SIGHTLINE_QUERY_CONFIG")]
    config: Option<PathBuf>,
    /// Address the API listens on.
    #[arg(long, env = "SIGHTLINE_QUERY_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    log: sightline_runtime::LogArgs,
    /// Check the config file, print the effective config and exit.
    #[arg(long)]
    check_config: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init()?;
    let config: QueryConfig = sightline_runtime::load_config_or_default(args.config.as_deref())?;
    if args.check_config {
        return sightline_runtime::print_config(&config);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    sightline_query::run(config, listener, sightline_runtime::shutdown_signal()).await
}
