//! The agent daemon (`cairn-agent` with no subcommand), in the three phases of shared/STYLE.md:
//! [`crate::config`] loads settings without side effects; [`Daemon::build`] wires the parts
//! (containerizer recovery, status streams, capacity, HTTP state); [`Daemon::run`] binds the
//! HTTP API, connects to the master and serves until SIGTERM/SIGINT.
//!
//! On SIGTERM containers keep running under their supervisors (the default, for upgrades: the
//! next agent re-adopts them); with `drain_on_sigterm` every task is killed with its grace
//! period first.

mod agent;

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use cairn_api::{Range, Resources};
use tokio::sync::watch;

use crate::capacity::{self, NodeCapacity, Reservation};
use crate::checkpoint::{self, Layout};
use crate::config::AgentConfig;
use crate::containerizer::{Containerizer, ContainerizerConfig};
use crate::http::{AgentHttpState, AgentInfo, ContainerizerView, RecoveryStats};
use crate::master_link::{self, LinkConfig};
use crate::status::StatusUpdateManager;
pub use agent::{launch_request, Agent};

const MIB: f64 = 1024.0 * 1024.0;

/// The system reservation the config asks for (MB in Mesos text form).
pub fn reservation(config: &AgentConfig) -> Reservation {
    let mut r = Reservation::default();
    if let Some(res) = &config.reservations {
        let bytes = |mb: f64| (mb > 0.0).then_some((mb * MIB) as u64);
        r.mem_bytes = bytes(res.mem_mb()).or(r.mem_bytes);
        r.disk_bytes = bytes(res.disk_mb()).or(r.disk_bytes);
        r.cpus = res.cpus();
    }
    r
}

/// What the agent offers: measured capacity minus the reservation, with the configured
/// overrides in place of the measured figures they name.
///
/// # Errors
/// Measuring failed.
pub fn offer(config: &AgentConfig) -> anyhow::Result<(NodeCapacity, Resources)> {
    let cap = capacity::measure(&config.work_dir).context("measuring the node's capacity")?;
    let measured = cap.offerable(&reservation(config))?;
    let Some(over) = &config.resources else {
        return Ok((cap, measured));
    };
    let mut out = Resources::new();
    let mut names: Vec<&str> = measured.scalar_names().collect();
    names.extend(over.scalar_names());
    names.sort_unstable();
    names.dedup();
    for name in names {
        let v = if over.scalar_names().any(|n| n == name) {
            over.scalar(name)
        } else {
            measured.scalar(name)
        };
        out = out.with_scalar(name, v)?;
    }
    let ports: &[Range] = if over.ranges("ports").is_empty() {
        measured.ranges("ports")
    } else {
        over.ranges("ports")
    };
    out = out.with_ranges("ports", ports)?;
    Ok((cap, out))
}

/// The containerizer's settings from the agent's: work directory, isolators, cgroup parent,
/// the disk isolators' knobs and image pulls.
pub fn containerizer_config(config: &AgentConfig) -> ContainerizerConfig {
    let mut cz = ContainerizerConfig::new(&config.work_dir);
    cz.isolation.clone_from(&config.isolation);
    cz.cgroups.parent.clone_from(&config.cgroup_parent);
    cz.disk = config.disk.clone();
    cz.registry = config.registry.clone();
    cz
}

/// The built daemon, ready to run.
#[derive(Debug)]
pub struct Daemon {
    config: AgentConfig,
    agent: Arc<Agent>,
    http: AgentHttpState,
    stop: watch::Receiver<bool>,
    recovered_id: Option<cairn_api::AgentId>,
    /// HTTPS for the API when `tls_cert` and `tls_key` are set.
    tls: Option<Arc<crate::http::tls::ServerConfig>>,
}

impl Daemon {
    /// Starts the containerizer (recovering its containers), reads back the status streams
    /// and reconciles them, and measures the node. Call inside a tokio runtime.
    ///
    /// # Errors
    /// The work directory, the containerizer, a checkpoint, or measuring failed.
    pub fn build(config: AgentConfig) -> anyhow::Result<Self> {
        // Before anything starts: a bad certificate or key stops the start, naming it.
        let tls = match &config.tls {
            Some((cert, key)) => Some(crate::http::tls::server_config(cert, key)?),
            None => None,
        };
        let layout = Layout::new(&config.work_dir);
        let (containerizer, recovery) = Containerizer::start(containerizer_config(&config))
            .context("starting the containerizer")?;
        for (id, err) in &recovery.quarantined {
            tracing::warn!(container = %id.as_str(), "quarantined: {err}");
        }
        tracing::info!(
            adopted = recovery.adopted.len(),
            terminated = recovery.terminated.len(),
            orphans = recovery.orphans.len(),
            "recovered"
        );
        let containerizer = Arc::new(containerizer);
        // Subscribe before reconciling, so an exit in between is seen by one or the other.
        let events = containerizer.subscribe();
        let status_dir = layout.meta().join("status");
        let boot_id = checkpoint::boot_id()?;
        if let Some(previous) =
            checkpoint::read::<checkpoint::AgentCheckpoint>(&layout.agent_file())?
        {
            if previous.boot_id != boot_id && status_dir.exists() {
                // The host rebooted: the tasks of that boot are gone and the agent registers
                // as a new one (Mesos); their updates would name tasks the master removed.
                tracing::warn!(
                    "the host rebooted since the last run: dropping the old status streams"
                );
                std::fs::remove_dir_all(&status_dir)
                    .with_context(|| format!("removing {}", status_dir.display()))?;
            }
        }
        let status =
            StatusUpdateManager::open(status_dir).context("reading the status update streams")?;
        let recovered_id = checkpoint::recover_agent_id(&layout)?;
        if let Some(id) = &recovered_id {
            status.set_agent_id(id.clone());
        }
        let (cap, resources) = offer(&config)?;
        let hostname = config.hostname.clone().unwrap_or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| "localhost".into())
        });
        let address = format!("{hostname}:{}", config.port);
        let view = Arc::new(ContainerizerView::new(Arc::clone(&containerizer)));
        let http = AgentHttpState::new(
            view.clone(),
            AgentInfo {
                id: recovered_id
                    .as_ref()
                    .map(|i| i.as_str().to_string())
                    .unwrap_or_default(),
                hostname: hostname.clone(),
                pid: format!("slave(1)@{}:{}", config.listen_ip, config.port),
                capacity: cap,
                resources: resources.clone(),
                attributes: agent::attribute_map(&config.attributes),
                start_time: SystemTime::now(),
                recovery: RecoveryStats::from(&recovery),
            },
        )?;
        let (stop_tx, stop) = watch::channel(false);
        let agent = Arc::new(Agent {
            containerizer,
            status,
            view,
            offer: RwLock::new(resources),
            hostname,
            address,
            attributes: config.attributes.clone(),
            boot_id,
            kill_grace: config.kill_grace,
            layout,
            http: http.clone(),
            kill_pending: Mutex::new(Default::default()),
            runtime: tokio::runtime::Handle::current(),
            stop: stop_tx,
        });
        let pump = Arc::clone(&agent);
        std::thread::Builder::new()
            .name("status-pump".into())
            .spawn(move || {
                for event in events {
                    pump.on_event(&event);
                }
            })?;
        let orphans = agent.reconcile();
        if orphans > 0 {
            agent.http.update_info(|i| {
                i.recovery.adopted = i.recovery.adopted.saturating_sub(orphans);
                i.recovery.orphans += orphans;
            });
        }
        Ok(Self {
            config,
            agent,
            http,
            stop,
            recovered_id,
            tls,
        })
    }

    /// Serves until `shutdown` resolves (a signal) or the master removes the agent; then
    /// drains if configured. Containers otherwise keep running.
    ///
    /// # Errors
    /// The HTTP port cannot be bound.
    pub async fn run(
        self,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let Self {
            config,
            agent,
            http,
            mut stop,
            recovered_id,
            tls,
        } = self;
        let addr = std::net::SocketAddr::new(config.listen_ip, config.port);
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding the HTTP API to {addr} (setting `port`)"))?;
        let (done_tx, done) = watch::channel(false);
        let mut http_done = done.clone();
        let stopped = async move {
            let _ = http_done.wait_for(|d| *d).await;
        };
        let app = crate::http::router(http);
        let server = match tls {
            Some(tls) => {
                let listener = crate::http::tls::TlsListener::new(listener, tls)?;
                tracing::info!(%addr, "HTTPS API listening");
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await;
                })
            }
            None => {
                tracing::info!(%addr, "HTTP API listening");
                tokio::spawn(async move {
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(stopped)
                        .await;
                })
            }
        };
        let link = tokio::spawn(master_link::run(
            Arc::new(agent::Core(Arc::clone(&agent))),
            LinkConfig {
                master: config.master.clone(),
                agent_id: recovered_id,
                heartbeat_interval: config.heartbeat_interval,
                registration_backoff: config.registration_backoff,
                status_retry: config.status_update_retry,
                credential: config.credential.clone(),
                tls: config.master_tls.clone(),
            },
            done.clone(),
        ));
        let remeasure = {
            let agent = Arc::clone(&agent);
            let config = config.clone();
            let mut done = done.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(config.resource_interval);
                every.tick().await;
                loop {
                    tokio::select! {
                        _ = every.tick() => {}
                        _ = done.wait_for(|d| *d) => return,
                    }
                    let c = config.clone();
                    match tokio::task::spawn_blocking(move || offer(&c)).await {
                        Ok(Ok((cap, res))) => {
                            *agent
                                .offer
                                .write()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = res.clone();
                            agent.http.update_info(|i| {
                                i.capacity = cap;
                                i.resources = res;
                            });
                        }
                        Ok(Err(e)) => tracing::warn!("re-measuring capacity: {e:#}"),
                        Err(e) => tracing::warn!("re-measuring capacity: {e}"),
                    }
                }
            })
        };
        tokio::select! {
            () = shutdown => tracing::info!("signalled"),
            _ = stop.wait_for(|s| *s) => tracing::warn!("removed by the master"),
        }
        if config.drain_on_sigterm || *stop.borrow() {
            tracing::info!("draining: killing every task");
            let a = Arc::clone(&agent);
            tokio::task::spawn_blocking(move || drain(&a)).await?;
            // Give the link a moment to deliver the terminal updates (they are checkpointed
            // either way).
            tokio::time::sleep(Duration::from_millis(500)).await;
        } else {
            tracing::info!("leaving containers running for the next agent");
        }
        let _ = done_tx.send(true);
        let _ = tokio::join!(server, link, remeasure);
        Ok(())
    }
}

/// Kills every task gracefully and waits for their containers to end.
fn drain(agent: &Agent) {
    agent.kill_all(None);
    for id in agent.containerizer.containers() {
        let _ = agent.containerizer.wait(&id);
    }
}
