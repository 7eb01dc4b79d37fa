//! `ingest-service`: reads detection events from NATS JetStream and writes them to ClickHouse.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser;
use sightline_ingest::IngestConfig;
use sightline_store::Capabilities;

/// Sightline ingest service: JetStream -> ClickHouse, batched, lossless, idempotent.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML). Without it, the built-in defaults are used (local servers).
    #[arg(long, short, env = "SIGHTLINE_INGEST_CONFIG")]
    config: Option<PathBuf>,
    /// Address for /healthz, /readyz and /metrics.
    #[arg(
        long,
        env = "SIGHTLINE_INGEST_LISTEN",
        default_value = "127.0.0.1:8081"
    )]
    listen: SocketAddr,
    #[command(flatten)]
    log: sightline_runtime::LogArgs,
    /// Check the config file, print the effective config and exit.
    #[arg(long)]
    check_config: bool,
    /// Print the schema statements (migrations, then retention) for a server of this kind
    /// and exit, for review or to apply by hand.
    #[arg(long, value_name = "legacy|modern")]
    print_schema: Option<ServerKind>,
}

/// A kind of ClickHouse server.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum ServerKind {
    /// ClickHouse before 19.6: no TTL (Debian's 18.16).
    Legacy,
    /// ClickHouse 24.x and later.
    Modern,
}

/// See the workspace manifest: glibc's allocator cost ingest about a quarter of its CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init()?;
    let config: IngestConfig = sightline_runtime::load_config_or_default(args.config.as_deref())?;
    if let Some(kind) = args.print_schema {
        let caps = match kind {
            ServerKind::Legacy => Capabilities::LEGACY,
            ServerKind::Modern => Capabilities::MODERN,
        };
        let db = &config.clickhouse.database;
        for statement in sightline_store::setup::statements(db, &config.retention, caps) {
            println!("{statement};\n");
        }
        return Ok(());
    }
    if args.check_config {
        return sightline_runtime::print_config(&config);
    }
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("failed to listen on {}", args.listen))?;
    sightline_ingest::run(config, listener, sightline_runtime::shutdown_signal()).await
}
