//! `cairn-agent launch`: runs one task through the full containerizer on this node, in the
//! foreground, printing its container states and task statuses; for SREs checking a node and
//! for the demo. The exit code is the task's (a shell's: 128+N for signal N).

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use cairn_api::Resources;
use cairn_oci::registry::RegistryConfig;

use crate::containerizer::{
    Containerizer, ContainerizerConfig, Event, LaunchRequest, TaskCommand, DEFAULT_KILL_GRACE,
};

/// What `cairn-agent launch` was asked.
#[derive(Debug, Clone, clap::Args)]
pub struct LaunchArgs {
    /// Image reference (`busybox`, `registry:5000/app:1`); pulled unless in the local store.
    #[arg(long, conflicts_with = "image_archive")]
    pub image: Option<String>,
    /// A `docker save` tarball to import and run (its first image).
    #[arg(long)]
    pub image_archive: Option<PathBuf>,
    /// CPUs (cgroup weight; a hard quota with --cpu-hard-limit).
    #[arg(long, default_value_t = 1.0)]
    pub cpus: f64,
    /// Memory limit: bytes with a K, M or G suffix (`64M`); a plain number is MB.
    #[arg(long, default_value = "128M")]
    pub mem: String,
    /// Disk limit, as --mem; needs a disk isolator in --isolation.
    #[arg(long)]
    pub disk: Option<String>,
    /// The agent work directory (images, sandboxes, checkpoints).
    #[arg(long, env = "CAIRN_WORK_DIR", default_value = "/var/lib/cairn/agent")]
    pub work_dir: PathBuf,
    /// Isolators, comma-separated.
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "cgroups/cpu,cgroups/mem,cgroups/pids"
    )]
    pub isolation: Vec<String>,
    /// Parent cgroup of the container (relative: below this process's own cgroup).
    #[arg(long, default_value = "cairn")]
    pub cgroup_parent: String,
    /// Registries to reach over plain HTTP (`host:port`).
    #[arg(long = "insecure-registry")]
    pub insecure_registries: Vec<String>,
    /// Grace between SIGTERM and SIGKILL when interrupted (seconds).
    #[arg(long, default_value_t = DEFAULT_KILL_GRACE.as_secs_f64())]
    pub grace: f64,
    /// The command and its arguments (exec'd; use `sh -c '...'` for a shell line). Without
    /// one, the image's entrypoint and cmd run.
    #[arg(last = true)]
    pub command: Vec<String>,
}

/// Parses `64M`, `1G`, `512K`, `100` (MB) into megabytes.
///
/// # Errors
/// Not a number with an optional K/M/G suffix.
pub fn parse_megabytes(text: &str) -> anyhow::Result<f64> {
    let t = text.trim();
    let (num, scale) = match t.chars().last().map(|c| c.to_ascii_uppercase()) {
        Some('K') => (&t[..t.len() - 1], 1.0 / 1024.0),
        Some('M') => (&t[..t.len() - 1], 1.0),
        Some('G') => (&t[..t.len() - 1], 1024.0),
        _ => (t, 1.0),
    };
    let value: f64 = num
        .parse()
        .with_context(|| format!("invalid size {text:?} (expected e.g. 64M, 1G, 512K)"))?;
    if !(value.is_finite() && value > 0.0) {
        bail!("invalid size {text:?}: must be positive");
    }
    Ok(value * scale)
}

/// Runs the task; returns its exit code.
///
/// # Errors
/// The containerizer cannot start, the archive cannot be imported, or bad arguments.
pub fn run(args: &LaunchArgs) -> anyhow::Result<i32> {
    let mut resources = Resources::new()
        .with_scalar("cpus", args.cpus)?
        .with_scalar("mem", parse_megabytes(&args.mem).context("--mem")?)?;
    if let Some(disk) = &args.disk {
        resources = resources.with_scalar("disk", parse_megabytes(disk).context("--disk")?)?;
    }
    let mut config = ContainerizerConfig::new(&args.work_dir);
    config.isolation.clone_from(&args.isolation);
    config.cgroups.parent.clone_from(&args.cgroup_parent);
    config.registry = Some(RegistryConfig {
        insecure: args.insecure_registries.clone(),
        ..RegistryConfig::default()
    });
    let (containerizer, recovery) =
        Containerizer::start(config).context("starting the containerizer")?;
    for (id, err) in &recovery.quarantined {
        eprintln!("warning: quarantined container {id}: {err}");
    }
    let image = match (&args.image, &args.image_archive) {
        (Some(image), _) => Some(image.clone()),
        (None, Some(archive)) => {
            let images =
                cairn_oci::import::import_docker_archive(containerizer.store(), archive, None)
                    .with_context(|| format!("importing {}", archive.display()))?;
            let first = images
                .first()
                .with_context(|| format!("{} holds no image", archive.display()))?;
            println!("imported {} from {}", first.reference, archive.display());
            Some(first.reference.to_string())
        }
        (None, None) => None,
    };
    let mut request = LaunchRequest::new("launch", resources);
    request.image = image;
    request.command = (!args.command.is_empty()).then(|| TaskCommand::Argv(args.command.clone()));

    let start = Instant::now();
    let events = containerizer.subscribe();
    let printer = std::thread::spawn(move || {
        for event in events {
            let at = start.elapsed().as_secs_f64();
            match event {
                Event::Container { state, .. } => println!("{at:7.3}s container {state}"),
                Event::DestroyFailed { message, .. } => {
                    println!("{at:7.3}s destroy failed: {message}");
                }
                Event::Task {
                    state,
                    reason,
                    message,
                    ..
                } => {
                    let reason = reason.map(|r| format!(" {r}")).unwrap_or_default();
                    let message = if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {message}")
                    };
                    println!("{at:7.3}s task {state}{reason}{message}");
                    if state.is_terminal() {
                        return;
                    }
                }
            }
        }
    });
    let containerizer = Arc::new(containerizer);
    let current = Arc::new(Mutex::new(None));
    interrupt_kills(
        &containerizer,
        &current,
        Duration::from_secs_f64(args.grace.max(0.0)),
    );
    let id = containerizer.launch(&request);
    *current
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(id.clone());
    if containerizer.termination(&id).is_none()
        && containerizer.record(&id).is_some_and(|r| r.kill_requested)
    {
        let _ = containerizer.kill(&id, Duration::ZERO);
    }
    let termination = containerizer.wait(&id)?;
    let _ = printer.join();
    let sandbox = containerizer.layout().sandbox(&id);
    for stream in ["stdout", "stderr"] {
        print_tail(&sandbox.join(stream), stream);
    }
    println!("sandbox: {}", sandbox.display());
    containerizer.forget(&id)?;
    Ok(termination.exit_code())
}

/// Prints the last 4 KiB of a sandbox log, if it has any.
fn print_tail(path: &std::path::Path, name: &str) {
    const TAIL: usize = 4096;
    let Ok(bytes) = std::fs::read(path) else {
        return;
    };
    if bytes.is_empty() {
        return;
    }
    let start = bytes.len().saturating_sub(TAIL);
    println!("--- {name} ---");
    print!("{}", String::from_utf8_lossy(&bytes[start..]));
    if !bytes.ends_with(b"\n") {
        println!();
    }
}

/// Ctrl-C (or SIGTERM) kills the task with grace instead of leaving it behind.
fn interrupt_kills(
    containerizer: &Arc<Containerizer>,
    current: &Arc<Mutex<Option<cairn_api::ContainerId>>>,
    grace: Duration,
) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if set.thread_block().is_err() {
        return;
    }
    let containerizer = Arc::clone(containerizer);
    let current = Arc::clone(current);
    std::thread::spawn(move || loop {
        if set.wait().is_err() {
            return;
        }
        let id = current
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        if let Some(id) = id {
            eprintln!("interrupted: killing the task (grace {grace:?})");
            let _ = containerizer.kill(&id, grace);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_to_megabytes() {
        assert_eq!(parse_megabytes("64M").unwrap(), 64.0);
        assert_eq!(parse_megabytes("1g").unwrap(), 1024.0);
        assert_eq!(parse_megabytes("512K").unwrap(), 0.5);
        assert_eq!(parse_megabytes("100").unwrap(), 100.0);
        assert!(parse_megabytes("lots").is_err());
        assert!(parse_megabytes("-1M").is_err());
    }
}
