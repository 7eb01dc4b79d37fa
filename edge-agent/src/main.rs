//! `edge-agent`: turns what a camera host sees into detection events and publishes them.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use sightline_edge_agent::AgentConfig;

/// Sightline edge agent: cameras -> detection events -> NATS JetStream.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Config file (TOML).
    #[arg(
        long,
        short,
        env = "SIGHTLINE_EDGE_CONFIG",
        global = true,
        default_value = "/etc/sightline/edge-agent.toml"
    )]
    config: PathBuf,
    /// Log filter (tracing EnvFilter syntax), e.g. `info` or `sightline_edge_agent=debug`.
    #[arg(long, env = "SIGHTLINE_LOG", default_value = "info", global = true)]
    log: String,
    /// Log as JSON lines instead of text.
    #[arg(long, env = "SIGHTLINE_LOG_JSON", global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Validate the config file and print the effective config.
    CheckConfig,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    sightline_runtime::init_tracing(&args.log, args.log_json)?;
    let config = AgentConfig::load(&args.config)?;
    match args.command.unwrap_or(Command::Run) {
        Command::CheckConfig => {
            println!(
                "{}",
                toml::to_string_pretty(&config).context("failed to print config")?
            );
            Ok(())
        }
        Command::Run => {
            sightline_edge_agent::run(config, sightline_runtime::shutdown_signal()).await?;
            Ok(())
        }
    }
}
