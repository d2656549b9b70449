//! Leader election on ZooKeeper, compatible with Mesos's `ZooKeeperMasterContender` and
//! `ZooKeeperMasterDetector`.
//!
//! Each master joins the group at `<path>` with an ephemeral sequential znode
//! `<path>/json.info_<seq>` holding its [`MasterInfo`] JSON (Mesos's `MASTER_INFO_JSON_LABEL`,
//! `zookeeper::Group::join`). The member with the lowest sequence leads. A contender that does
//! not lead watches only its predecessor (no herd effect when the leader goes); the leader
//! watches its own znode. Detectors list the children and read the lowest `json.info_*`, as
//! Mesos's `LeaderDetector` and pymesos do.
//!
//! Session loss: ZooKeeper deletes a session's ephemeral znodes when the session expires, and a
//! successor may lead from then on. A leader must therefore stop acting *before* the server can
//! expire it. The client notices a dead connection at the latest 2/5 of the session timeout
//! after it last heard from the server (zookeeper-client's read timeout); the leader then gives
//! ZooKeeper [`DISCONNECT_GRACE`] (half the session timeout) to reconnect, so it steps down at
//! most 0.9 session timeouts after the server last heard it, ahead of any expiry. A session that
//! is expired, closed or refused steps down at once. After stepping down the contender drops the
//! session (its znode goes with it) and joins again with a new one. Registry writes are fenced
//! on top of this ([`ZkFence`]), so even a leader that missed all of the above cannot write.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use zookeeper_client::{
    Client, CreateMode, EventType, MultiWriter, SessionInfo, SessionState, StateWatcher,
};

pub use super::zk_url::{ZkConfig, ZkCredentials, ZkUrl, ZkUrlError, DEFAULT_SESSION_TIMEOUT};
use super::{Contender, Detector, Leadership, MasterInfo};

/// The label Mesos gives JSON `MasterInfo` members (`MASTER_INFO_JSON_LABEL`); znodes are
/// `<label>_<seq>`.
pub const MASTER_INFO_JSON_LABEL: &str = "json.info";

/// The prefix of election znodes, `json.info_`.
pub const ELECTION_PREFIX: &str = "json.info_";

/// How long a disconnected session may try to reconnect, as a fraction of the session timeout,
/// before its master stops leading (see the module documentation).
pub const DISCONNECT_GRACE: (u32, u32) = (1, 2);

/// Longest pause between attempts to open a session.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why a contender or detector could not take part in the election. Each is logged and retried
/// with a new session; none stops the contender.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ContenderError {
    #[error("cannot open a ZooKeeper session with {servers}: {source}")]
    Connect {
        servers: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("ZooKeeper {op} {path}: {source}")]
    ZooKeeper {
        op: &'static str,
        path: String,
        #[source]
        source: zookeeper_client::Error,
    },
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SessionEnd {
    /// Expired, closed or refused by ZooKeeper.
    Terminated(SessionState),
    /// Disconnected for longer than the grace.
    Disconnected(Duration),
    /// The election znode disappeared while the session lived.
    ZnodeGone,
}

/// Resolves when the session behind `states` must be considered lost: at once on a terminal
/// state, or after `grace` of uninterrupted disconnection.
async fn session_lost(mut states: StateWatcher, grace: Duration) -> SessionEnd {
    let mut state = states.state();
    loop {
        if state.is_terminated() {
            return SessionEnd::Terminated(state);
        }
        state = if state == SessionState::Disconnected {
            match tokio::time::timeout(grace, states.changed()).await {
                Ok(state) => state,
                Err(_) => return SessionEnd::Disconnected(grace),
            }
        } else {
            states.changed().await
        };
    }
}

type Lost = Pin<Box<dyn Future<Output = SessionEnd> + Send>>;

fn watch_session(client: &Client) -> Lost {
    let grace = client.session_timeout() * DISCONNECT_GRACE.0 / DISCONNECT_GRACE.1;
    Box::pin(session_lost(client.state_watcher(), grace))
}

/// Runs `fut` unless the session is lost first.
async fn unless_lost<F: Future>(lost: &mut Lost, fut: F) -> Result<F::Output, SessionEnd> {
    tokio::select! {
        end = lost.as_mut() => Err(end),
        out = fut => Ok(out),
    }
}

/// Exponential backoff between session attempts, 50 ms up to [`MAX_BACKOFF`].
#[derive(Debug)]
struct Backoff(Duration);

impl Backoff {
    fn new() -> Self {
        Self(Duration::from_millis(50))
    }

    async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }
}

/// The election members among `children`, lowest sequence first. Other children (the
/// `registry`, Mesos's `log_replicas`) are ignored, as Mesos's group ignores other labels.
pub fn election_members(children: &[String]) -> Vec<(u64, String)> {
    let mut members: Vec<(u64, String)> = children
        .iter()
        .filter_map(|child| {
            let seq = child.strip_prefix(ELECTION_PREFIX)?.parse::<u64>().ok()?;
            Some((seq, child.clone()))
        })
        .collect();
    members.sort();
    members
}

fn zk_err(op: &'static str, path: &str) -> impl FnOnce(zookeeper_client::Error) -> ContenderError {
    let path = path.to_string();
    move |source| ContenderError::ZooKeeper { op, path, source }
}

/// Proof of leadership for fenced writes: the leader's session and its election znode. Every
/// registry write is a multi-op that starts with [`ZkFence::add_check`], so it fails as a whole
/// once the znode is gone (session expired, leadership lost) or was replaced.
#[derive(Debug, Clone)]
pub struct ZkFence {
    client: Weak<Client>,
    config: ZkConfig,
    znode: String,
    version: i32,
    term: u64,
}

impl ZkFence {
    /// The election znode, `<path>/json.info_<seq>`.
    pub fn znode(&self) -> &str {
        &self.znode
    }

    /// The leadership's term (the znode's sequence number).
    pub fn term(&self) -> u64 {
        self.term
    }

    /// The ZooKeeper settings of the election.
    pub fn config(&self) -> &ZkConfig {
        &self.config
    }

    /// The leader's session, while the contender still holds it.
    pub fn client(&self) -> Option<Arc<Client>> {
        self.client.upgrade()
    }

    /// Adds the fencing check (the election znode exists at the version seen when elected) as
    /// an operation of `writer`; put it first.
    ///
    /// # Errors
    /// The znode path is invalid for the client (cannot happen for a fence made by a contender).
    pub fn add_check(&self, writer: &mut MultiWriter<'_>) -> Result<(), zookeeper_client::Error> {
        writer.add_check_version(&self.znode, self.version)
    }
}

#[derive(Debug, Default)]
struct Shared {
    fence: Mutex<Option<ZkFence>>,
    session: Mutex<Option<SessionInfo>>,
}

/// A master contending through ZooKeeper. Contends from [`ZkContender::start`] until dropped;
/// dropping it closes its session, which removes its znode at once.
#[derive(Debug)]
pub struct ZkContender {
    leadership: watch::Receiver<Leadership>,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl ZkContender {
    /// Starts contending on behalf of `info`. Returns at once; watch
    /// [`Contender::leadership`] for the outcome. Must be called inside a tokio runtime.
    pub fn start(config: ZkConfig, info: MasterInfo) -> Self {
        let (tx, leadership) = watch::channel(Leadership::NotLeading);
        let shared = Arc::new(Shared::default());
        let task = tokio::spawn(contend(config, info, tx, shared.clone()));
        Self {
            leadership,
            shared,
            task,
        }
    }

    /// The fence for registry writes while this master leads; `None` otherwise.
    pub fn fence(&self) -> Option<ZkFence> {
        lock(&self.shared.fence).clone()
    }

    /// The current session, for diagnostics and fault injection in tests.
    pub fn session(&self) -> Option<SessionInfo> {
        lock(&self.shared.session).clone()
    }
}

impl Contender for ZkContender {
    fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }
}

impl Drop for ZkContender {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded values are plain data: a panic elsewhere cannot leave them half-updated.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Steps down when dropped, however the session ends (error, loss, task abort).
struct StepDown<'a> {
    tx: &'a watch::Sender<Leadership>,
    shared: &'a Shared,
}

impl StepDown<'_> {
    fn lead(&self, fence: ZkFence) {
        let term = fence.term;
        *lock(&self.shared.fence) = Some(fence);
        let leading = Leadership::Leading { term };
        if self
            .tx
            .send_if_modified(|l| std::mem::replace(l, leading) != leading)
        {
            tracing::info!(term, "elected leading master");
        }
    }
}

impl Drop for StepDown<'_> {
    fn drop(&mut self) {
        // Fence first: nothing may write once anyone can read NotLeading.
        lock(&self.shared.fence).take();
        *lock(&self.shared.session) = None;
        if self.tx.send_if_modified(|l| {
            std::mem::replace(l, Leadership::NotLeading) != Leadership::NotLeading
        }) {
            tracing::warn!("no longer the leading master");
        }
    }
}

async fn contend(
    config: ZkConfig,
    info: MasterInfo,
    tx: watch::Sender<Leadership>,
    shared: Arc<Shared>,
) {
    let mut backoff = Backoff::new();
    loop {
        match contend_in_session(&config, &info, &tx, &shared).await {
            Ok(end) => {
                tracing::warn!(?end, url = %config.url, "ZooKeeper session lost; contending again with a new session");
                backoff = Backoff::new();
            }
            Err(e) => tracing::warn!(error = %e, "election attempt failed; retrying"),
        }
        backoff.wait().await;
    }
}

/// One session's part in the election: join, then follow or lead until the session is lost.
async fn contend_in_session(
    config: &ZkConfig,
    info: &MasterInfo,
    tx: &watch::Sender<Leadership>,
    shared: &Shared,
) -> Result<SessionEnd, ContenderError> {
    let step_down = StepDown { tx, shared };
    let client = Arc::new(
        config
            .connect()
            .await
            .map_err(|source| ContenderError::Connect {
                servers: config.url.connect_string(),
                source,
            })?,
    );
    *lock(&shared.session) = Some(client.session().clone());
    let mut lost = watch_session(&client);
    let path = config.url.path.as_str();
    let acls = config.election_acls();
    let parent = CreateMode::Persistent.with_acls(acls);
    match unless_lost(&mut lost, client.mkdir(path, &parent)).await {
        Err(end) => return Ok(end),
        Ok(result) => result.map_err(zk_err("create", path))?,
    }
    let prefix = format!("{path}/{ELECTION_PREFIX}");
    let data = info.to_json();
    let mode = CreateMode::EphemeralSequential.with_acls(acls);
    let (_, seq) = match unless_lost(&mut lost, client.create(&prefix, &data, &mode)).await {
        Err(end) => return Ok(end),
        Ok(result) => result.map_err(zk_err("create", &prefix))?,
    };
    let name = format!("{ELECTION_PREFIX}{seq}");
    let znode = format!("{path}/{name}");
    let term = u64::try_from(seq.into_i64()).unwrap_or_default();
    tracing::info!(%znode, session = %client.session_id(), "joined the master election");
    loop {
        let children = match unless_lost(&mut lost, client.list_children(path)).await {
            Err(end) => return Ok(end),
            Ok(Ok(children)) => children,
            Ok(Err(e)) if transient(&e) => {
                pause().await;
                continue;
            }
            Ok(Err(e)) => return Err(zk_err("list", path)(e)),
        };
        let members = election_members(&children);
        let Some(position) = members.iter().position(|(_, n)| *n == name) else {
            tracing::warn!(%znode, "election znode disappeared");
            return Ok(SessionEnd::ZnodeGone);
        };
        // The leader watches its own znode, a follower its predecessor's.
        let watched = match position.checked_sub(1) {
            None => znode.clone(),
            Some(before) => format!("{path}/{}", members[before].1),
        };
        let (stat, watcher) =
            match unless_lost(&mut lost, client.check_and_watch_stat(&watched)).await {
                Err(end) => return Ok(end),
                Ok(Ok(found)) => found,
                Ok(Err(e)) if transient(&e) => {
                    pause().await;
                    continue;
                }
                Ok(Err(e)) => return Err(zk_err("watch", &watched)(e)),
            };
        let Some(stat) = stat else {
            // The predecessor left (or our own znode is gone: seen on the next listing).
            continue;
        };
        if position == 0 {
            step_down.lead(ZkFence {
                client: Arc::downgrade(&client),
                config: config.clone(),
                znode: znode.clone(),
                version: stat.version,
                term,
            });
        } else {
            tracing::info!(%znode, predecessor = %watched, "contending; watching the predecessor");
        }
        let event = match unless_lost(&mut lost, watcher.changed()).await {
            Err(end) => return Ok(end),
            Ok(event) => event,
        };
        if event.event_type == EventType::Session && event.session_state.is_terminated() {
            return Ok(SessionEnd::Terminated(event.session_state));
        }
    }
}

/// Errors worth retrying within the same session (the session itself is watched separately).
fn transient(e: &zookeeper_client::Error) -> bool {
    matches!(
        e,
        zookeeper_client::Error::ConnectionLoss | zookeeper_client::Error::Timeout
    )
}

/// A short pause before retrying a request that failed while reconnecting.
async fn pause() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Finds the leading master through ZooKeeper, with its own session (as Mesos's detector).
/// Detects from [`ZkDetector::start`] until dropped.
#[derive(Debug)]
pub struct ZkDetector {
    leader: watch::Receiver<Option<MasterInfo>>,
    task: JoinHandle<()>,
}

impl ZkDetector {
    /// Starts detecting. Returns at once with `None` as the leader until one is read. Must be
    /// called inside a tokio runtime.
    pub fn start(config: ZkConfig) -> Self {
        let (tx, leader) = watch::channel(None);
        let task = tokio::spawn(detect(config, tx));
        Self { leader, task }
    }
}

impl Detector for ZkDetector {
    fn leader(&self) -> watch::Receiver<Option<MasterInfo>> {
        self.leader.clone()
    }
}

impl Drop for ZkDetector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn publish(tx: &watch::Sender<Option<MasterInfo>>, leader: Option<MasterInfo>) {
    tx.send_if_modified(|current| {
        if *current == leader {
            return false;
        }
        match &leader {
            Some(info) => {
                tracing::info!(pid = %info.pid, id = %info.id, "detected a new leading master")
            }
            None => tracing::info!("no leading master detected"),
        }
        *current = leader;
        true
    });
}

async fn detect(config: ZkConfig, tx: watch::Sender<Option<MasterInfo>>) {
    let mut backoff = Backoff::new();
    loop {
        match detect_in_session(&config, &tx).await {
            Ok(end) => {
                tracing::warn!(?end, url = %config.url, "detector lost its ZooKeeper session");
                backoff = Backoff::new();
            }
            Err(e) => tracing::warn!(error = %e, "leader detection failed; retrying"),
        }
        publish(&tx, None);
        backoff.wait().await;
    }
}

async fn detect_in_session(
    config: &ZkConfig,
    tx: &watch::Sender<Option<MasterInfo>>,
) -> Result<SessionEnd, ContenderError> {
    let client = config
        .connect()
        .await
        .map_err(|source| ContenderError::Connect {
            servers: config.url.connect_string(),
            source,
        })?;
    let mut lost = watch_session(&client);
    let path = config.url.path.as_str();
    loop {
        let watcher = match unless_lost(&mut lost, client.list_and_watch_children(path)).await {
            Err(end) => return Ok(end),
            Ok(Ok((children, watcher))) => {
                let members = election_members(&children);
                match members.first() {
                    None => publish(tx, None),
                    Some((_, name)) => {
                        let znode = format!("{path}/{name}");
                        match unless_lost(&mut lost, client.get_data(&znode)).await {
                            Err(end) => return Ok(end),
                            // Gone meanwhile: the children watch fires next.
                            Ok(Err(zookeeper_client::Error::NoNode)) => {}
                            Ok(Err(e)) if transient(&e) => {
                                pause().await;
                                continue;
                            }
                            Ok(Err(e)) => return Err(zk_err("read", &znode)(e)),
                            Ok(Ok((data, _))) => match serde_json::from_slice(&data) {
                                Ok(info) => publish(tx, Some(info)),
                                Err(e) => {
                                    tracing::error!(%znode, error = %e, "leading master's znode is not MasterInfo JSON");
                                    publish(tx, None);
                                }
                            },
                        }
                    }
                }
                watcher
            }
            Ok(Err(zookeeper_client::Error::NoNode)) => {
                // No master ever joined: wait for the path to appear.
                publish(tx, None);
                match unless_lost(&mut lost, client.check_and_watch_stat(path)).await {
                    Err(end) => return Ok(end),
                    Ok(Ok((Some(_), _))) => continue,
                    Ok(Ok((None, watcher))) => watcher,
                    Ok(Err(e)) if transient(&e) => {
                        pause().await;
                        continue;
                    }
                    Ok(Err(e)) => return Err(zk_err("watch", path)(e)),
                }
            }
            Ok(Err(e)) if transient(&e) => {
                pause().await;
                continue;
            }
            Ok(Err(e)) => return Err(zk_err("list", path)(e)),
        };
        match unless_lost(&mut lost, watcher.changed()).await {
            Err(end) => return Ok(end),
            Ok(event)
                if event.event_type == EventType::Session
                    && event.session_state.is_terminated() =>
            {
                return Ok(SessionEnd::Terminated(event.session_state))
            }
            Ok(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_are_json_info_children_by_sequence() {
        let children: Vec<String> = [
            "json.info_0000000012",
            "registry",
            "log_replicas",
            "json.info_0000000003",
            "info_0000000001",
            "json.info_0000000010",
        ]
        .map(String::from)
        .to_vec();
        let members = election_members(&children);
        let names: Vec<&str> = members.iter().map(|(_, n)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "json.info_0000000003",
                "json.info_0000000010",
                "json.info_0000000012"
            ]
        );
        assert_eq!(members[0].0, 3);
    }
}
