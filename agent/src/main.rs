//! `cairn-agent`: the Cairn node daemon. Parses config, builds the daemon, runs it until
//! SIGTERM/SIGINT; everything else is in the library.

use anyhow::Context;
use clap::{Parser, Subcommand};

/// The Cairn agent: runs tasks as OCI containers on this node and reports to the master.
/// Every setting is read from the config file, then `CAIRN_*` variables, then flags.
#[derive(Debug, Parser)]
#[command(name = "cairn-agent", version, about)]
struct Args {
    #[command(flatten)]
    agent: cairn_agent::config::AgentArgs,

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
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if let Some(Command::Launch(launch)) = &args.command {
        let code = cairn_agent::launch::run(launch)?;
        std::process::exit(code);
    }
    let config = args.agent.load()?;
    if args.print_capacity {
        let (cap, offer) = cairn_agent::daemon::offer(&config)?;
        let out = serde_json::json!({ "capacity": cap, "resources": offer.to_wire() });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        let daemon = cairn_agent::daemon::Daemon::build(config)?;
        daemon.run(signal()).await
    })
}

/// Resolves on SIGTERM or SIGINT.
async fn signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
