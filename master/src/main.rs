//! `cairn-master`: the Cairn control plane.

use std::path::PathBuf;

use clap::Parser;

/// The Cairn master: elects a leader, keeps the registry, offers resources to frameworks.
#[derive(Debug, Parser)]
#[command(name = "cairn-master", version, about)]
struct Args {
    /// Directory for the master's state (the standalone registry).
    #[arg(long, env = "CAIRN_WORK_DIR", default_value = "/var/lib/cairn/master")]
    work_dir: PathBuf,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let path = args.work_dir.join("registry.json");
    let (_store, registry) = cairn_master::registry::FileRegistry::open(&path)?;
    anyhow::bail!(
        "registry at {} holds {} agents; the master's APIs are not implemented yet",
        path.display(),
        registry.agents.len()
    )
}
