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

fn main() -> anyhow::Result<()> {
    // At least four workers, also on a two-core pod: decoding a page of 20,000 rows holds a
    // worker for a while, and the probes must still find one free (docs/benchmarks.md).
    let workers = std::thread::available_parallelism().map_or(4, |n| n.get().max(4));
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()?
        .block_on(serve())
}

async fn serve() -> anyhow::Result<()> {
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
