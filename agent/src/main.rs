//! `cairn-agent`: the Cairn node daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The Cairn agent: runs tasks as OCI containers on this node.
#[derive(Debug, Parser)]
#[command(name = "cairn-agent", version, about)]
struct Args {
    /// Directory for the agent's state, images and sandboxes.
    #[arg(long, env = "CAIRN_WORK_DIR", default_value = "/var/lib/cairn/agent")]
    work_dir: PathBuf,

    /// Print the node's measured capacity and the resources the agent would offer, as JSON,
    /// then exit.
    #[arg(long)]
    print_capacity: bool,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run one task through the containerizer in the foreground, printing its states; the
    /// exit code is the task's.
    Launch(cairn_agent::launch::LaunchArgs),
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Launch(launch)) = &args.command {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
        let code = cairn_agent::launch::run(launch)?;
        std::process::exit(code);
    }
    if args.print_capacity {
        let cap = cairn_agent::capacity::measure(&args.work_dir)
            .context("measuring the node's capacity")?;
        let offer = cap.offerable(&cairn_agent::capacity::Reservation::default())?;
        let out = serde_json::json!({ "capacity": cap, "resources": offer.to_wire() });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    anyhow::bail!("the agent daemon is not implemented yet; try --print-capacity or launch")
}
