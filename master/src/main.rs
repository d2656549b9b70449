//! `cairn-master`: the Cairn control plane. Parses config, builds the master, serves its
//! APIs until SIGINT/SIGTERM.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use anyhow::Context as _;
use cairn_master::config::FileConfig;
use cairn_master::election::MasterInfo;
use cairn_master::leadership::Gate;
use cairn_master::registry::Registry;
use clap::Parser;

/// The Cairn master: keeps the registry of agents and offers their resources to frameworks,
/// speaking Apache Mesos's v1 scheduler and operator HTTP APIs. Standalone (leader at once,
/// registry in WORK_DIR/registry.json) by default; with --zk, one of several masters electing
/// a leader in ZooKeeper, the registry kept there (see docs/ha.md). Every setting can also be given in the config file
/// (same name with underscores, e.g. `agent_timeout_secs = 75`) or as CAIRN_<NAME>.
#[derive(Debug, Parser)]
#[command(name = "cairn-master", version, about)]
struct Args {
    /// Config file (TOML). Missing is fine at the default path, an error elsewhere.
    #[arg(
        long,
        env = "CAIRN_MASTER_CONFIG",
        default_value = "/etc/cairn/master.toml"
    )]
    config: PathBuf,
    /// Address to serve the APIs on [default: 0.0.0.0:5050].
    #[arg(long, env = "CAIRN_LISTEN")]
    listen: Option<SocketAddr>,
    /// Hostname advertised in MasterInfo [default: the advertised IP].
    #[arg(long, env = "CAIRN_HOSTNAME")]
    hostname: Option<String>,
    /// IPv4 address advertised in MasterInfo [default: the listen IP, or 127.0.0.1].
    #[arg(long, env = "CAIRN_ADVERTISE_IP")]
    advertise_ip: Option<Ipv4Addr>,
    /// Directory for the master's state (the standalone registry) [default: /var/lib/cairn/master].
    #[arg(long, env = "CAIRN_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// Seconds without any call before an agent is marked unreachable [default: 75].
    #[arg(long, env = "CAIRN_AGENT_TIMEOUT_SECS")]
    agent_timeout_secs: Option<f64>,
    /// Seconds a newly elected (or restarted) master waits for admitted agents to re-register
    /// before marking the missing ones unreachable [default: 600].
    #[arg(long, env = "CAIRN_AGENT_REREGISTER_TIMEOUT_SECS")]
    agent_reregister_timeout_secs: Option<f64>,
    /// Seconds between the HEARTBEAT calls agents must send [default: 15].
    #[arg(long, env = "CAIRN_AGENT_HEARTBEAT_SECS")]
    agent_heartbeat_secs: Option<f64>,
    /// Seconds between HEARTBEAT events to frameworks [default: 15].
    #[arg(long, env = "CAIRN_FRAMEWORK_HEARTBEAT_SECS")]
    framework_heartbeat_secs: Option<f64>,
    /// Seconds after which unanswered offers are rescinded [default: never].
    #[arg(long, env = "CAIRN_OFFER_TIMEOUT_SECS")]
    offer_timeout_secs: Option<f64>,
    /// Seconds between periodic allocation cycles [default: 1].
    #[arg(long, env = "CAIRN_ALLOCATION_INTERVAL_SECS")]
    allocation_interval_secs: Option<f64>,
    /// Most events queued for one subscriber (a memory bound; a subscriber that takes no
    /// queued event for 30 s is disconnected sooner) [default: 100000].
    #[arg(long, env = "CAIRN_SUBSCRIBER_QUEUE")]
    subscriber_queue: Option<usize>,
    /// ZooKeeper for HA: zk://[user:password@]host:port[,host:port...]/path [default: standalone].
    #[arg(long, env = "CAIRN_ZK")]
    zk: Option<String>,
    /// ZooKeeper session timeout in seconds; a leader that loses its session steps down [default: 10].
    #[arg(long, env = "CAIRN_ZK_SESSION_TIMEOUT_SECS")]
    zk_session_timeout_secs: Option<f64>,
    /// Principals and secrets that may authenticate (HTTP Basic): JSON
    /// {"credentials":[{"principal":"p","secret":"s"}]} or lines `principal secret`
    /// [default: none].
    #[arg(long, env = "CAIRN_CREDENTIALS")]
    credentials: Option<PathBuf>,
    /// Scheduler API calls must authenticate; needs --credentials [default: false].
    #[arg(long, env = "CAIRN_AUTHENTICATE_FRAMEWORKS", num_args = 0..=1, default_missing_value = "true")]
    authenticate_frameworks: Option<bool>,
    /// Agents must authenticate (their `credential`); needs --credentials [default: false].
    #[arg(long, env = "CAIRN_AUTHENTICATE_AGENTS", num_args = 0..=1, default_missing_value = "true")]
    authenticate_agents: Option<bool>,
    /// Operator API calls that change state must authenticate; needs --credentials
    /// [default: false].
    #[arg(long, env = "CAIRN_AUTHENTICATE_HTTP_READWRITE", num_args = 0..=1, default_missing_value = "true")]
    authenticate_http_readwrite: Option<bool>,
    /// /state, /metrics, /metrics/snapshot and operator GET_* calls must authenticate; needs
    /// --credentials (/health and /version stay open) [default: false].
    #[arg(long, env = "CAIRN_AUTHENTICATE_HTTP_READONLY", num_args = 0..=1, default_missing_value = "true")]
    authenticate_http_readonly: Option<bool>,
    /// TLS certificate chain (PEM) for the APIs, which then serve HTTPS only; with --tls-key
    /// [default: none].
    #[arg(long, env = "CAIRN_TLS_CERT")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM: PKCS#8, PKCS#1 or SEC1); with --tls-cert [default: none].
    #[arg(long, env = "CAIRN_TLS_KEY")]
    tls_key: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = Args::parse();
    let default_path = args.config == std::path::Path::new("/etc/cairn/master.toml");
    let file = FileConfig::load(&args.config, !default_path)?;
    let cfg = file
        .merge(FileConfig {
            listen: args.listen,
            hostname: args.hostname,
            advertise_ip: args.advertise_ip,
            work_dir: args.work_dir,
            agent_timeout_secs: args.agent_timeout_secs,
            agent_reregister_timeout_secs: args.agent_reregister_timeout_secs,
            agent_heartbeat_secs: args.agent_heartbeat_secs,
            framework_heartbeat_secs: args.framework_heartbeat_secs,
            offer_timeout_secs: args.offer_timeout_secs,
            allocation_interval_secs: args.allocation_interval_secs,
            subscriber_queue: args.subscriber_queue,
            zk: args.zk,
            zk_session_timeout_secs: args.zk_session_timeout_secs,
            credentials: args.credentials,
            authenticate_frameworks: args.authenticate_frameworks,
            authenticate_agents: args.authenticate_agents,
            authenticate_http_readwrite: args.authenticate_http_readwrite,
            authenticate_http_readonly: args.authenticate_http_readonly,
            tls_cert: args.tls_cert,
            tls_key: args.tls_key,
        })
        .resolve()?;

    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cfg.listen))?;
    let (shared, leadership) = match cfg.zk.clone() {
        None => {
            let path = cfg.work_dir.join("registry.json");
            let (store, registry) = cairn_master::registry::FileRegistry::open(&path)?;
            let master = cairn_master::core::Master::new(cfg.core.clone(), registry, None);
            let shared = cairn_master::http::Shared::new(master)
                .with_flags(cfg.flags())
                .with_auth(cfg.auth.clone());
            let shared = if cfg.tls.is_some() {
                shared.with_https()
            } else {
                shared
            };
            let writer = cairn_master::registry::file_store(store, shared.clone());
            shared.lock().set_store(Box::new(writer));
            tracing::info!(listen = %cfg.listen, registry = %path.display(), "cairn-master serving (standalone: leading)");
            (shared, None)
        }
        Some(zk) => {
            let core = &cfg.core;
            let info = MasterInfo::new(
                cairn_master::core::uuid_text(),
                SocketAddr::new(core.ip.into(), core.port),
                core.hostname.clone(),
            );
            tracing::info!(listen = %cfg.listen, zk = %zk.url, id = %info.id, "cairn-master contending for leadership");
            let election = cairn_master::election::start(Some(zk), info.clone());
            let gate = Gate::contending(info.id, election.detector.leader());
            let standby = cairn_master::core::Master::new(core.clone(), Registry::default(), None);
            let shared = cairn_master::http::Shared::with_gate(standby, gate)
                .with_flags(cfg.flags())
                .with_auth(cfg.auth.clone());
            let shared = if cfg.tls.is_some() {
                shared.with_https()
            } else {
                shared
            };
            let task = tokio::spawn(cairn_master::leadership::run(
                election,
                shared.clone(),
                core.clone(),
            ));
            (shared, Some(task))
        }
    };
    if cfg.auth.any() {
        tracing::info!(
            frameworks = cfg.auth.frameworks,
            agents = cfg.auth.agents,
            http_readwrite = cfg.auth.http_readwrite,
            http_readonly = cfg.auth.http_readonly,
            "authentication required (HTTP Basic)"
        );
    }
    let ticker = shared.spawn_ticker(cfg.allocation_interval);
    let router = cairn_master::http::router(shared.clone());
    let served = match &cfg.tls {
        Some(tls) => {
            tracing::info!(cert = %tls.cert.display(), "serving HTTPS only");
            let listener = cairn_master::http::tls_listener(listener, tls.server.clone())
                .context("serving TLS")?;
            serve(listener, router, shared).await
        }
        None => serve(cairn_master::http::listener(listener), router, shared).await,
    };
    ticker.abort();
    if let Some(task) = leadership {
        // Dropping the election closes the ZooKeeper session, removing this master's znode.
        task.abort();
    }
    served
}

/// Serves `router` on `listener` until SIGTERM/SIGINT. The subscriber streams are closed
/// first: a graceful shutdown waits for responses to end, and an event stream never ends by
/// itself. Connections still open DRAIN later (a client not reading) are dropped.
async fn serve<L>(
    listener: L,
    router: axum::Router,
    shared: cairn_master::http::Shared,
) -> anyhow::Result<()>
where
    L: axum::serve::Listener,
    L::Addr: std::fmt::Debug,
{
    const DRAIN: std::time::Duration = std::time::Duration::from_secs(5);
    let (stopping_tx, mut stopping) = tokio::sync::watch::channel(false);
    let serve = axum::serve(listener, router).with_graceful_shutdown(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler never fails on Linux");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutting down: closing subscriber streams");
        shared.close_streams();
        let _ = stopping_tx.send(true);
    });
    tokio::select! {
        served = std::future::IntoFuture::into_future(serve) => served.context("serving the APIs")?,
        _ = async {
            let _ = stopping.wait_for(|s| *s).await;
            tokio::time::sleep(DRAIN).await;
        } => tracing::warn!("connections still open {DRAIN:?} after the signal: exiting anyway"),
    }
    Ok(())
}
