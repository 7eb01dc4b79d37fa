//! `edge-agent`: turns what a camera host sees into detection events and publishes them.

use std::path::PathBuf;

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
    #[command(flatten)]
    log: sightline_runtime::LogArgs,
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
    args.log.init()?;
    let config: AgentConfig = sightline_runtime::load_config(&args.config)?;
    match args.command.unwrap_or(Command::Run) {
        Command::CheckConfig => sightline_runtime::print_config(&config),
        Command::Run => {
            sightline_edge_agent::run(config, sightline_runtime::shutdown_signal()).await?;
            Ok(())
        }
    }
}
