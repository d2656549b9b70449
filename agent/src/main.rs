//! `cairn-agent`: the Cairn node daemon.

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;

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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.print_capacity {
        let cap = cairn_agent::capacity::measure(&args.work_dir)
            .context("measuring the node's capacity")?;
        let offer = cap.offerable(&cairn_agent::capacity::Reservation::default())?;
        let out = serde_json::json!({ "capacity": cap, "resources": offer.to_wire() });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    anyhow::bail!("the agent daemon is not implemented yet; try --print-capacity")
}
