//! Leader election on ZooKeeper, compatible with Mesos's `ZooKeeperMasterContender` (the
//! detector, [`cairn_zk::ZkDetector`], and the session rules both follow are in `cairn-zk`).
//!
//! Each master joins the group at `<path>` with an ephemeral sequential znode
//! `<path>/json.info_<seq>` holding its [`MasterInfo`] JSON (Mesos's `MASTER_INFO_JSON_LABEL`,
//! `zookeeper::Group::join`). The member with the lowest sequence leads. A contender that does
//! not lead watches only its predecessor (no herd effect when the leader goes); the leader
//! watches its own znode.
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

use std::sync::{Arc, Mutex, Weak};

use cairn_zk::session::{
    election_members, pause, transient, unless_lost, watch_session, zk_err, Backoff, SessionEnd,
};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use zookeeper_client::{Client, CreateMode, EventType, MultiWriter, SessionInfo};

use super::{Contender, Leadership, MasterInfo};
pub use cairn_zk::session::{DISCONNECT_GRACE, ELECTION_PREFIX, MASTER_INFO_JSON_LABEL};
pub use cairn_zk::{
    ZkConfig, ZkCredentials, ZkDetector, ZkUrl, ZkUrlError, DEFAULT_SESSION_TIMEOUT,
};

/// Why a contender could not take part in the election (logged and retried; shared with the
/// detector in `cairn-zk`).
pub type ContenderError = cairn_zk::ZkError;

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
