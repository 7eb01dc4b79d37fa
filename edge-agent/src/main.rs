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
    /// Rotate the data directory now (while the agent is stopped; a running agent takes
    /// `POST /v1/rotate` on its status endpoint).
    Rotate {
        /// Rotate even below the 90 % trigger: the oldest eligible day goes, then more while
        /// usage is above 80 %.
        #[arg(long)]
        force: bool,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    args.log.init()?;
    let config: AgentConfig = sightline_runtime::load_config(&args.config)?;
    match args.command.unwrap_or(Command::Run) {
        Command::CheckConfig => sightline_runtime::print_config(&config),
        Command::Rotate { force } => rotate(&config, force),
        Command::Run => {
            sightline_edge_agent::run(config, sightline_runtime::shutdown_signal()).await?;
            Ok(())
        }
    }
}

/// Rotates with the agent stopped: opens the buffer directly.
fn rotate(config: &AgentConfig, force: bool) -> anyhow::Result<()> {
    use sightline_edge_agent::buffer::{Buffer, worker::BUFFER_FILE};
    use sightline_edge_agent::daylog::DayLogs;

    let dir = &config.storage.data_dir;
    let (mut buffer, _) = Buffer::open(&dir.join(BUFFER_FILE)).map_err(|e| {
        let hint = match config.status.enabled {
            true => format!(
                " If the agent is running, use: curl -X POST -H 'X-Sightline-Confirm: rotate' 'http://{}/v1/rotate?force={force}'",
                config.status.listen
            ),
            false => String::new(),
        };
        anyhow::anyhow!("{e}.{hint}")
    })?;
    let now = sightline_runtime::now();
    let rotation = config.storage.budget().rotate(
        dir,
        &mut buffer,
        &mut DayLogs::new(dir),
        now.as_millis(),
        force,
    )?;
    println!("{}", serde_json::to_string_pretty(&rotation)?);
    Ok(())
}
