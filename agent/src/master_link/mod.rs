//! The connection to the master (shared/DESIGN.md, "Agent <-> master"; protocol in
//! [`cairn_api::protocol`]). The agent initiates everything:
//!
//! 1. `REGISTER` (no id yet, or after a reboot) or `REREGISTER` (its checkpointed id and the
//!    full list of its tasks, so the master can reconcile);
//! 2. `SUBSCRIBE`: a long-lived RecordIO stream of events, handed to [`AgentCore::handle`];
//! 3. meanwhile, as separate calls: `HEARTBEAT`s, the head of every task's status stream
//!    (resent with exponential backoff until acknowledged), and `UPDATE_RESOURCES` when the
//!    re-measured capacity changes.
//!
//! When the stream ends or a call fails, the session is over: the link backs off
//! (doubling up to a minute), tries the next master, and reregisters.
//!
//! With a `credential`, every request carries it as HTTP Basic authentication (the master's
//! `authenticate_agents`); a `401` is logged as an error naming the principal, and retried
//! with the same backoff. With `master_tls` (or `https://` addresses) every request is HTTPS,
//! trusting `master_ca` (or the webpki roots).
//!
//! With a `zk://` master the link follows the leader elected in ZooKeeper
//! ([`cairn_zk::ZkDetector`], the `json.info_` znodes Mesos masters write): it waits for one,
//! and when ZooKeeper names another leader (or none) it ends the session and reregisters with
//! the new leader, with every task, so the new master can reconcile.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_api::protocol::{
    AgentCall, AgentEvent, AgentEventType, Register, Registered, StatusUpdate,
};
use cairn_api::recordio::Decoder;
use cairn_api::{AgentId, Resource};
use cairn_zk::{Detector, MasterInfo, ZkDetector};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::config::{MasterAddress, MasterTls};
use crate::status::StatusUpdateManager;

/// What the link needs from the agent.
pub trait AgentCore: Send + Sync + 'static {
    /// What to (re)register with; `tasks` only matters for reregistration.
    fn registration(&self) -> Register;
    /// The master assigned (or confirmed) this id.
    fn registered(&self, id: &AgentId);
    /// An event from the master; must not block (launches go to blocking threads).
    fn handle(&self, event: AgentEvent);
    /// The status streams.
    fn status(&self) -> &StatusUpdateManager;
    /// What the agent offers now (re-measured periodically).
    fn resources(&self) -> Vec<Resource>;
}

/// How the link behaves.
#[derive(Debug, Clone)]
pub struct LinkConfig {
    pub master: MasterAddress,
    /// The checkpointed id to reregister with (`None`: register as a new agent).
    pub agent_id: Option<AgentId>,
    pub heartbeat_interval: Duration,
    /// First retry delay after a failed session; doubles up to [`MAX_BACKOFF`].
    pub registration_backoff: Duration,
    /// First resend delay of an unacknowledged status update; doubles up to
    /// [`STATUS_RETRY_MAX`].
    pub status_retry: Duration,
    /// `principal secret` sent as HTTP Basic authentication on every request.
    pub credential: Option<(String, String)>,
    /// HTTPS to the master, trusting these roots; `None`: plain HTTP.
    pub tls: Option<MasterTls>,
}

/// Redirects followed one after another before the link backs off.
const MAX_REDIRECTS: u32 = 3;

/// The longest delay between registration attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(60);
/// Mesos's `STATUS_UPDATE_RETRY_INTERVAL_MAX` (its `_MIN`, 10 s, is the default of
/// [`LinkConfig::status_retry`]).
pub const STATUS_RETRY_MAX: Duration = Duration::from_secs(600);
/// How often the link looks for status updates and resource changes to send.
const TICK: Duration = Duration::from_millis(50);

/// Why a session ended.
#[derive(Debug, thiserror::Error)]
enum SessionError {
    #[error("{}", describe(.0))]
    Http(#[from] reqwest::Error),
    /// `401`: the master wants a (valid) credential.
    #[error("{call}: {}: {body}", match principal {
        Some(p) => format!("master rejected the agent's credential for principal '{p}'"),
        None => "master requires authentication and the agent has no `credential` set".into(),
    })]
    Unauthorized {
        call: &'static str,
        principal: Option<String>,
        body: String,
    },
    /// `307`/`308`: this master does not lead; the leader is at `to` (`host:port`).
    #[error("{call}: this master does not lead; it redirects to {to}")]
    Redirected { call: &'static str, to: String },
    #[error("{call}: master answered {status}: {body}")]
    Refused {
        call: &'static str,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("{0}")]
    Other(String),
}

/// A request error with its causes (reqwest's own message hides them: "error sending
/// request"), and what to do about an untrusted certificate.
fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if text.contains("certificate") {
        text.push_str(" (is `master_ca` set to the CA that signed the master's TLS certificate?)");
    }
    text
}

/// Where the next session goes: static addresses in turn, or the leader ZooKeeper names.
enum Masters {
    Static {
        list: Vec<String>,
        next: usize,
    },
    /// `_detector` keeps the ZooKeeper session (and so `leader`) alive.
    ZooKeeper {
        url: String,
        _detector: ZkDetector,
        leader: watch::Receiver<Option<MasterInfo>>,
    },
}

impl Masters {
    /// Must run inside the tokio runtime (the ZooKeeper detector spawns its session there).
    fn new(address: &MasterAddress) -> Result<Self, String> {
        Ok(match address {
            MasterAddress::Static(list) => Self::Static {
                list: list.clone(),
                next: 0,
            },
            MasterAddress::ZooKeeper(url) => {
                let detector =
                    ZkDetector::from_url(url).map_err(|e| format!("master {url}: {e}"))?;
                Self::ZooKeeper {
                    url: url.clone(),
                    leader: detector.leader(),
                    _detector: detector,
                }
            }
        })
    }

    /// The `host:port` to try next; with ZooKeeper, waits until a leader is elected. `None`
    /// when `shutdown` turned true meanwhile.
    async fn next(&mut self, shutdown: &mut watch::Receiver<bool>) -> Option<String> {
        match self {
            Self::Static { list, next } => {
                let master = list[*next % list.len()].clone();
                *next += 1;
                Some(master)
            }
            Self::ZooKeeper { url, leader, .. } => {
                if leader.borrow().is_none() {
                    tracing::info!(%url, "waiting for a leading master in ZooKeeper");
                }
                let found = async {
                    leader
                        .wait_for(|l| l.as_ref().and_then(MasterInfo::authority).is_some())
                        .await
                        .ok()
                        .and_then(|l| l.as_ref().and_then(MasterInfo::authority))
                };
                tokio::select! {
                    master = found => {
                        if master.is_some() {
                            tracing::info!(%url, master = master.as_deref().unwrap_or(""), "leading master detected");
                        }
                        master
                    }
                    _ = shutdown.wait_for(|s| *s) => None,
                }
            }
        }
    }

    /// With ZooKeeper, a watch that wakes when the leader is no longer `master` (another was
    /// elected, or none leads): the session with `master` must end then, as Mesos's agent
    /// drops its master when the detector names another.
    fn leader(&self) -> Option<watch::Receiver<Option<MasterInfo>>> {
        match self {
            Self::Static { .. } => None,
            Self::ZooKeeper { leader, .. } => Some(leader.clone()),
        }
    }
}

/// The `host:port` a redirect from `master` points to (its `Location` may be absolute or,
/// as Mesos's are, scheme-relative: `//host:port/path`).
fn redirect_target(scheme: &str, master: &str, resp: &reqwest::Response) -> Option<String> {
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    let base = reqwest::Url::parse(&format!("{scheme}://{master}/")).ok()?;
    let url = base.join(location).ok()?;
    // `host_str` keeps an IPv6 address's brackets.
    Some(format!(
        "{}:{}",
        url.host_str()?,
        url.port_or_known_default()?
    ))
}

/// Resolves once the leader `leader` names is no longer `master`; never without a watch.
async fn leader_moved(leader: Option<watch::Receiver<Option<MasterInfo>>>, master: &str) {
    let Some(mut leader) = leader else {
        return std::future::pending().await;
    };
    let moved = leader
        .wait_for(|l| l.as_ref().and_then(MasterInfo::authority).as_deref() != Some(master))
        .await
        .is_ok();
    if !moved {
        // The detector is gone (only at shutdown): keep the session until then.
        std::future::pending::<()>().await;
    }
}

/// Runs the link until `shutdown` turns true.
pub async fn run(
    core: Arc<dyn AgentCore>,
    config: LinkConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let client = match MasterClient::new(&config) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!("cannot build the HTTP client: {e}");
            return;
        }
    };
    let mut masters = match Masters::new(&config.master) {
        Ok(m) => m,
        Err(e) => {
            tracing::error!("{e}");
            return;
        }
    };
    let mut link = Link {
        client,
        core,
        agent_id: config.agent_id.clone(),
        config,
    };
    let mut backoff = link.config.registration_backoff;
    // Where a non-leading master's redirect points, tried next without waiting; a chain of
    // redirects longer than MAX_REDIRECTS (masters disagreeing) waits like any failure.
    let mut redirected: Option<String> = None;
    let mut hops = 0;
    while !*shutdown.borrow() {
        let master = match redirected.take() {
            Some(leader) => leader,
            None => match masters.next(&mut shutdown).await {
                Some(m) => m,
                None => break,
            },
        };
        match link.session(&master, &mut shutdown, masters.leader()).await {
            Ok(true) => backoff = link.config.registration_backoff,
            Ok(false) => {}
            Err(SessionError::Redirected { to, .. }) if hops < MAX_REDIRECTS => {
                tracing::info!(%master, leader = %to, "not the leading master: following its redirect");
                hops += 1;
                redirected = Some(to);
                continue;
            }
            Err(e @ SessionError::Unauthorized { .. }) => {
                tracing::error!(%master, "master session ended: {e}; retrying in {backoff:?}");
            }
            Err(e) => tracing::warn!(%master, "master session ended: {e}"),
        }
        hops = 0;
        if *shutdown.borrow() {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Requests to the master: over HTTP or HTTPS, with the agent's credential.
#[derive(Clone)]
struct MasterClient {
    http: reqwest::Client,
    scheme: &'static str,
    credential: Option<(String, String)>,
}

impl MasterClient {
    fn new(config: &LinkConfig) -> Result<Self, reqwest::Error> {
        // Redirects are followed by the session loop, not by reqwest: reqwest drops the
        // Authorization header on a redirect to another host, and the leader would then
        // refuse the agent as if its credential were wrong.
        let mut builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .redirect(reqwest::redirect::Policy::none());
        if let Some(tls) = &config.tls {
            builder = builder.https_only(true);
            if !tls.ca.is_empty() {
                // Trust only the configured CA, not also every public one.
                builder = builder.tls_built_in_root_certs(false);
                for der in &tls.ca {
                    builder = builder.add_root_certificate(reqwest::Certificate::from_der(der)?);
                }
            }
        }
        Ok(Self {
            http: builder.build()?,
            scheme: if config.tls.is_some() {
                "https"
            } else {
                "http"
            },
            credential: config.credential.clone(),
        })
    }

    async fn post(
        &self,
        master: &str,
        call: &AgentCall,
        name: &'static str,
    ) -> Result<reqwest::Response, SessionError> {
        let url = format!(
            "{}://{master}{}",
            self.scheme,
            cairn_api::protocol::AGENT_API_PATH
        );
        let mut request = self
            .http
            .post(url)
            .header("content-type", "application/json")
            .body(serde_json::to_vec(call).map_err(|e| SessionError::Other(e.to_string()))?);
        if let Some((principal, secret)) = &self.credential {
            request = request.basic_auth(principal, Some(secret));
        }
        let resp = request.send().await?;
        if resp.status().is_redirection() {
            if let Some(to) = redirect_target(self.scheme, master, &resp) {
                return Err(SessionError::Redirected { call: name, to });
            }
        }
        if !resp.status().is_success() {
            let status = resp.status();
            let body = resp.text().await.unwrap_or_default();
            if status == reqwest::StatusCode::UNAUTHORIZED {
                return Err(SessionError::Unauthorized {
                    call: name,
                    principal: self.credential.as_ref().map(|(p, _)| p.clone()),
                    body: body.trim().to_string(),
                });
            }
            return Err(SessionError::Refused {
                call: name,
                status,
                body,
            });
        }
        Ok(resp)
    }
}

struct Link {
    client: MasterClient,
    core: Arc<dyn AgentCore>,
    agent_id: Option<AgentId>,
    config: LinkConfig,
}

/// Resend bookkeeping of one update (by uuid).
#[derive(Debug, Clone, Copy)]
struct Retry {
    next: Instant,
    delay: Duration,
}

impl Link {
    async fn post(
        &self,
        master: &str,
        call: &AgentCall,
        name: &'static str,
    ) -> Result<reqwest::Response, SessionError> {
        self.client.post(master, call, name).await
    }

    /// One session: (re)register, subscribe, serve the stream. `Ok(true)` when it got as far
    /// as subscribing (the backoff resets), `Ok(false)` when asked to register anew.
    async fn session(
        &mut self,
        master: &str,
        shutdown: &mut watch::Receiver<bool>,
        leader: Option<watch::Receiver<Option<MasterInfo>>>,
    ) -> Result<bool, SessionError> {
        let moved = leader_moved(leader, master);
        tokio::pin!(moved);
        let mut info = self.core.registration();
        let call = match &self.agent_id {
            Some(id) => AgentCall::reregister(id.clone(), info),
            None => {
                info.tasks.clear();
                AgentCall::register(info)
            }
        };
        let name = if self.agent_id.is_some() {
            "REREGISTER"
        } else {
            "REGISTER"
        };
        let registered: Registered = match self.post(master, &call, name).await {
            Ok(r) => {
                let body = r.bytes().await?;
                serde_json::from_slice(&body)
                    .map_err(|e| SessionError::Other(format!("{name}: malformed answer: {e}")))?
            }
            Err(SessionError::Refused { status, body, .. })
                if self.agent_id.is_some() && matches!(status.as_u16(), 404 | 409) =>
            {
                tracing::warn!(%master, "master refused our reregistration ({status}: {body}); registering as a new agent");
                self.agent_id = None;
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let id = registered.agent_id.clone();
        tracing::info!(%master, agent_id = %id.as_str(), "{name}ED");
        self.core.registered(&id);
        self.agent_id = Some(id.clone());

        let mut stream = self
            .post(master, &AgentCall::subscribe(id.clone()), "SUBSCRIBE")
            .await?;
        let mut heartbeat_every = self.config.heartbeat_interval;
        if registered.heartbeat_interval_seconds > 0.0 {
            heartbeat_every = heartbeat_every.min(Duration::from_secs_f64(
                registered.heartbeat_interval_seconds,
            ));
        }
        let mut heartbeat = tokio::time::interval(heartbeat_every);
        let mut tick = tokio::time::interval(TICK);
        let mut decoder = Decoder::new(64 * 1024 * 1024);
        let mut retries: HashMap<String, Retry> = HashMap::new();
        let mut sent_resources = self.core.resources();
        loop {
            tokio::select! {
                chunk = stream.chunk() => {
                    let Some(chunk) = chunk? else {
                        return Err(SessionError::Other("the master closed the event stream".into()));
                    };
                    let records = decoder
                        .feed(&chunk)
                        .map_err(|e| SessionError::Other(e.to_string()))?;
                    for record in records {
                        match serde_json::from_slice::<AgentEvent>(&record) {
                            Ok(e) if matches!(e.kind, AgentEventType::Heartbeat | AgentEventType::Subscribed) => {}
                            Ok(e) => self.core.handle(e),
                            Err(e) => tracing::warn!("ignoring a malformed event: {e}"),
                        }
                    }
                }
                _ = heartbeat.tick() => {
                    self.spawn_post(master, AgentCall::heartbeat(id.clone()), "HEARTBEAT");
                }
                _ = tick.tick() => {
                    self.send_statuses(master, &id, &mut retries);
                    let now = self.core.resources();
                    if now != sent_resources {
                        tracing::info!("capacity changed; sending UPDATE_RESOURCES");
                        self.spawn_post(master, AgentCall::update_resources(id.clone(), now.clone()), "UPDATE_RESOURCES");
                        sent_resources = now;
                    }
                }
                _ = shutdown.changed() => return Ok(true),
                () = &mut moved => {
                    tracing::warn!(%master, "the leading master changed; reregistering with the new one");
                    return Ok(true);
                }
            }
        }
    }

    /// Sends every stream head not sent yet, or whose resend is due.
    fn send_statuses(&self, master: &str, id: &AgentId, retries: &mut HashMap<String, Retry>) {
        let now = Instant::now();
        let heads = self.core.status().heads();
        retries.retain(|uuid, _| heads.iter().any(|(_, s)| s.uuid.as_deref() == Some(uuid)));
        for (framework_id, status) in heads {
            let Some(uuid) = status.uuid.clone() else {
                continue;
            };
            let retry = match retries.get(&uuid) {
                None => Retry {
                    next: now + self.config.status_retry,
                    delay: self.config.status_retry,
                },
                Some(r) if r.next <= now => {
                    let delay = (r.delay * 2).min(STATUS_RETRY_MAX);
                    Retry {
                        next: now + delay,
                        delay,
                    }
                }
                Some(_) => continue,
            };
            retries.insert(uuid, retry);
            let call = AgentCall::status_update(
                id.clone(),
                StatusUpdate {
                    framework_id,
                    status,
                },
            );
            self.spawn_post(master, call, "STATUS_UPDATE");
        }
    }

    fn spawn_post(&self, master: &str, call: AgentCall, name: &'static str) {
        let client = self.client.clone();
        let master = master.to_string();
        tokio::spawn(async move {
            if let Err(e) = client.post(&master, &call, name).await {
                tracing::warn!(%master, "{e}");
            }
        });
    }
}
