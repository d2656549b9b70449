//! `cairn dev`: a whole local cluster in this one process, for trying Cairn and for demos. A
//! standalone master (registry in `DIR/master`) and one agent (`DIR/agent`, containers in a
//! `cairn-dev-<pid>` cgroup) run on one tokio runtime, using the `cairn-master` and
//! `cairn-agent` crates as libraries, wired the way their daemons wire themselves.
//!
//! SIGINT or SIGTERM stops it: the agent kills every task (its drain), the master closes its
//! event streams and stops, then the cgroups and (unless `--dir` was given) the state
//! directory are removed.

mod cgroup;
mod workdir;

use std::future::IntoFuture;
use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;
use tokio::sync::watch;

use cgroup::DevCgroup;
use workdir::WorkDir;

/// How long the master may take to finish open connections once its streams are closed.
const MASTER_DRAIN: Duration = Duration::from_secs(5);
/// How long the agent may take to register before `cairn dev` gives up.
const REGISTER_TIMEOUT: Duration = Duration::from_secs(60);

/// `cairn dev`'s options.
#[derive(Debug, Clone)]
pub struct DevOptions {
    /// State directory to use and keep; a temporary one otherwise.
    pub dir: Option<PathBuf>,
    /// Master port on 127.0.0.1 (0: any free port).
    pub port: u16,
    /// Agent port on 127.0.0.1 (0: any free port).
    pub agent_port: u16,
    /// `docker save` tarballs imported into the agent's image store before it starts.
    pub import: Vec<PathBuf>,
    /// Resources the agent offers instead of the measured ones (Mesos text form).
    pub resources: Option<String>,
    /// Registries the agent pulls from over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
    /// Log the daemons' info messages (warnings only otherwise; `RUST_LOG` wins).
    pub verbose: bool,
}

/// Runs the cluster until SIGINT/SIGTERM, then stops it and cleans up. Returns the exit code.
///
/// # Errors
/// Not root, a port in use, an archive that cannot be imported, the agent not registering,
/// or a failed clean-up.
pub fn run(opts: &DevOptions) -> anyhow::Result<i32> {
    if !rustix::process::geteuid().is_root() {
        anyhow::bail!(
            "cairn dev needs root: the agent runs containers in cgroups (try: sudo cairn dev)"
        );
    }
    init_logging(opts.verbose);
    let work = WorkDir::new(opts.dir.as_deref())?;
    let cgroup = DevCgroup::new();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let result = runtime.block_on(serve(opts, &work, &cgroup));
    // Threads of the agent (its status pump, the containerizer's monitor) are not tokio's and
    // end with the process; do not wait for stray blocking tasks either.
    runtime.shutdown_timeout(Duration::from_secs(2));

    let left = cgroup.remove();
    let cleaned = work.clean_up();
    let _ = std::io::stdout().flush();
    if !left.is_empty() {
        eprintln!(
            "cairn dev: cgroups still in use, not removed: {}",
            left.iter()
                .map(|d| d.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    result?;
    cleaned?;
    let kept = if work.is_temporary() {
        "removed".to_string()
    } else {
        format!("kept in {}", work.path.display())
    };
    println!("cairn dev: stopped; tasks killed, cgroups removed, state {kept}");
    Ok(if left.is_empty() { 0 } else { 1 })
}

fn init_logging(verbose: bool) {
    // libcontainer warns about every v1 controller the host lacks (net_cls, ...): noise here.
    let default = if verbose {
        "info"
    } else {
        "warn,libcgroups=error"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Resolves on SIGINT or SIGTERM. The handlers are installed when this is called, so a signal
/// arriving while the cluster starts is kept and seen once it runs.
fn signals() -> anyhow::Result<impl std::future::Future<Output = &'static str>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut int = signal(SignalKind::interrupt()).context("installing a SIGINT handler")?;
    let mut term = signal(SignalKind::terminate()).context("installing a SIGTERM handler")?;
    Ok(async move {
        tokio::select! {
            _ = int.recv() => "SIGINT",
            _ = term.recv() => "SIGTERM",
        }
    })
}

async fn serve(opts: &DevOptions, work: &WorkDir, cgroup: &DevCgroup) -> anyhow::Result<()> {
    let stop_signal = signals()?;
    tokio::pin!(stop_signal);

    let agent_dir = work.path.join("agent");
    std::fs::create_dir_all(&agent_dir)
        .with_context(|| format!("creating {}", agent_dir.display()))?;
    let images = import_images(&agent_dir, &opts.import)?;

    // The master, as cairn-master runs standalone.
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, opts.port))
        .await
        .with_context(|| {
            format!(
                "the master cannot listen on 127.0.0.1:{} (in use? try --port 0 for any free port)",
                opts.port
            )
        })?;
    let master_addr = listener.local_addr()?;
    let master_url = format!("http://{master_addr}");
    let master_dir = work.path.join("master");
    std::fs::create_dir_all(&master_dir)
        .with_context(|| format!("creating {}", master_dir.display()))?;
    let cfg = cairn_master::config::FileConfig {
        listen: Some(master_addr),
        work_dir: Some(master_dir.clone()),
        // Offers follow finished tasks quickly: this is one machine, not a busy cluster.
        allocation_interval_secs: Some(0.2),
        ..Default::default()
    }
    .resolve()?;
    let registry_path = master_dir.join("registry.json");
    let (store, registry) = cairn_master::registry::FileRegistry::open(&registry_path)?;
    let master = cairn_master::core::Master::new(cfg.core.clone(), registry, None);
    let shared = cairn_master::http::Shared::new(master).with_flags(cfg.flags());
    // As cairn-master does: registry changes answered to clients wait for the file's save.
    let writer = cairn_master::registry::file_store(store, shared.clone());
    shared.lock().set_store(Box::new(writer));
    let ticker = shared.spawn_ticker(cfg.allocation_interval);
    let (master_stop_tx, mut master_stop) = watch::channel(false);
    let closer = shared.clone();
    let master_task = tokio::spawn(
        axum::serve(
            cairn_master::http::listener(listener),
            cairn_master::http::router(shared),
        )
        .with_graceful_shutdown(async move {
            let _ = master_stop.wait_for(|s| *s).await;
            // An event stream never ends by itself; a graceful shutdown waits for it.
            closer.close_streams();
        })
        .into_future(),
    );

    // The agent, as cairn-agent runs, draining its tasks when stopped.
    let agent_port = match opts.agent_port {
        0 => free_port()?,
        p => p,
    };
    let agent_config = agent_config(work, &agent_dir, master_addr, agent_port, cgroup, opts)?;
    let daemon = cairn_agent::daemon::Daemon::build(agent_config)?;
    let (agent_stop_tx, mut agent_stop) = watch::channel(false);
    let mut agent_task = tokio::spawn(daemon.run(async move {
        let _ = agent_stop.wait_for(|s| *s).await;
    }));

    let outcome = tokio::select! {
        r = wait_registered(&master_url) => r.map(Some),
        ended = &mut agent_task => Err(agent_ended(ended)),
        s = &mut stop_signal => { eprintln!("cairn dev: {s} while starting"); Ok(None) }
    };
    let outcome = match outcome {
        Ok(Some(agent)) => {
            announce(&master_url, &agent, work, &images);
            tokio::select! {
                s = &mut stop_signal => { eprintln!("\ncairn dev: {s}: stopping"); Ok(()) }
                ended = &mut agent_task => Err(agent_ended(ended)),
            }
        }
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };

    // Stop: the agent first (it kills its tasks while the master still hears their ends),
    // then the master.
    let _ = agent_stop_tx.send(true);
    if !agent_task.is_finished() {
        match agent_task.await {
            Ok(Err(e)) => eprintln!("cairn dev: the agent stopped with an error: {e:#}"),
            Err(e) => eprintln!("cairn dev: the agent task failed: {e}"),
            Ok(Ok(())) => {}
        }
    }
    let _ = master_stop_tx.send(true);
    if tokio::time::timeout(MASTER_DRAIN, master_task)
        .await
        .is_err()
    {
        eprintln!("cairn dev: master connections still open after {MASTER_DRAIN:?}; closing");
    }
    ticker.abort();
    outcome
}

fn agent_ended(ended: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Error {
    match ended {
        Ok(Ok(())) => anyhow::anyhow!("the agent stopped unexpectedly"),
        Ok(Err(e)) => e.context("the agent stopped"),
        Err(e) => anyhow::anyhow!("the agent task failed: {e}"),
    }
}

fn agent_config(
    work: &WorkDir,
    agent_dir: &Path,
    master: SocketAddr,
    port: u16,
    cgroup: &DevCgroup,
    opts: &DevOptions,
) -> anyhow::Result<cairn_agent::config::AgentConfig> {
    // An explicit (empty) config file: /etc/cairn/agent.toml of an installed agent must not
    // leak into the local cluster.
    let config_file = work.path.join("agent.toml");
    if !config_file.exists() {
        std::fs::write(&config_file, "# cairn dev passes every setting as a flag\n")
            .with_context(|| format!("writing {}", config_file.display()))?;
    }
    let args = cairn_agent::config::AgentArgs {
        config: Some(config_file),
        work_dir: Some(agent_dir.to_path_buf()),
        master: Some(master.to_string()),
        cgroup_parent: Some(cgroup.path.to_string_lossy().into_owned()),
        resources: opts.resources.clone(),
        listen_ip: Some(Ipv4Addr::LOCALHOST.into()),
        port: Some(port),
        // The address the master hands to clients (for output, usage, images) is
        // hostname:port; the machine's name may resolve elsewhere than the loopback address
        // the agent listens on (Debian maps it to 127.0.1.1).
        hostname: Some(Ipv4Addr::LOCALHOST.to_string()),
        drain_on_sigterm: Some(true),
        registration_backoff: Some(0.2),
        kill_grace: Some(2.0),
        insecure_registries: Some(opts.insecure_registries.clone()),
        ..Default::default()
    };
    Ok(args.load()?)
}

/// Imports each archive into the agent's image store; returns every image the store holds.
fn import_images(agent_dir: &Path, archives: &[PathBuf]) -> anyhow::Result<Vec<String>> {
    let layout = cairn_agent::checkpoint::Layout::new(agent_dir);
    let store = cairn_oci::store::Store::open(layout.images())
        .with_context(|| format!("opening the image store in {}", agent_dir.display()))?;
    for archive in archives {
        // Checked first: the import's own error names the file twice over.
        if let Err(e) = std::fs::File::open(archive) {
            anyhow::bail!("--import {}: {}", archive.display(), io_reason(&e));
        }
        cairn_oci::import::import_docker_archive(&store, archive, None)
            .with_context(|| format!("importing {}", archive.display()))?;
    }
    let mut refs: Vec<String> = store
        .images()
        .context("listing the image store")?
        .iter()
        .map(|i| i.reference.to_string())
        .collect();
    refs.sort();
    Ok(refs)
}

/// An I/O error's text without Rust's ` (os error N)` suffix.
fn io_reason(e: &std::io::Error) -> String {
    let text = e.to_string();
    match text.find(" (os error") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

fn free_port() -> anyhow::Result<u16> {
    let l = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

/// Polls the master's `/state` until an agent is registered; returns its entry.
async fn wait_registered(master_url: &str) -> anyhow::Result<Value> {
    let url = format!("{master_url}/state");
    let deadline = Instant::now() + REGISTER_TIMEOUT;
    loop {
        let u = url.clone();
        let state = tokio::task::spawn_blocking(move || -> Option<Value> {
            let text = ureq::get(&u)
                .call()
                .ok()?
                .body_mut()
                .read_to_string()
                .ok()?;
            serde_json::from_str(&text).ok()
        })
        .await
        .ok()
        .flatten();
        if let Some(agent) = state
            .as_ref()
            .and_then(|s| s["slaves"].as_array())
            .and_then(|a| a.first())
        {
            return Ok(agent.clone());
        }
        if Instant::now() > deadline {
            anyhow::bail!(
                "the agent did not register with the master within {REGISTER_TIMEOUT:?} \
                 (run with --verbose to see why)"
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn announce(master_url: &str, agent: &Value, work: &WorkDir, images: &[String]) {
    let r = &agent["resources"];
    let addr = crate::cluster::agent_address(agent).unwrap_or_default();
    let fate = if work.is_temporary() {
        "removed on exit"
    } else {
        "kept"
    };
    let example = images
        .iter()
        .find(|i| i.contains("busybox"))
        .or(images.first())
        .map_or(String::new(), |i| format!("--image {i} "));
    println!("cairn dev: a local cluster is running (one master, one agent)");
    println!("  master: {master_url}");
    let mb = |name: &str| crate::run::mib(r[name].as_f64().unwrap_or(0.0));
    println!(
        "  agent:  {addr}  (cpus {}, mem {}, disk {})",
        r["cpus"].as_f64().unwrap_or(0.0),
        mb("mem"),
        mb("disk")
    );
    println!("  state:  {} ({fate})", work.path.display());
    if images.is_empty() {
        println!("  images: none (import with --import IMAGE.tar)");
    } else {
        println!("  images: {}", images.join(", "));
    }
    println!();
    println!("Use it from another shell:");
    println!("  export CAIRN_MASTER={master_url}");
    println!("  cairn agents");
    println!("  cairn run {example}-- echo hello");
    println!("  cairn ps -a");
    println!();
    println!("Ctrl-C stops it: tasks are killed, cgroups and temporary state removed.");
    let _ = std::io::stdout().flush();
}
