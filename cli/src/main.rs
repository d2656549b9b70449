//! `cairn`: the Cairn command-line tool.

mod size;

use clap::{Parser, Subcommand};

/// Cairn: run containers on a cluster, and look at it.
#[derive(Debug, Parser)]
#[command(name = "cairn", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check a resource request and print it in Mesos's resource form (the building block of
    /// `cairn run`, which follows with the master's scheduler API).
    Resources {
        /// CPUs, e.g. 0.5.
        #[arg(long, default_value_t = 1.0)]
        cpus: f64,
        /// Memory, e.g. 256M or 1G (a bare number is MiB).
        #[arg(long, default_value = "128M", value_parser = size::parse_mb)]
        mem: f64,
        /// Disk, e.g. 1G.
        #[arg(long, value_parser = size::parse_mb)]
        disk: Option<f64>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Resources { cpus, mem, disk } => {
            let mut r = cairn_api::Resources::new()
                .with_scalar("cpus", cpus)?
                .with_scalar("mem", mem)?;
            if let Some(disk) = disk {
                r = r.with_scalar("disk", disk)?;
            }
            println!("{r}");
        }
    }
    Ok(())
}
