//! What the master's contender and the detectors share about ZooKeeper sessions and the
//! election group: the group's znode names, when a session counts as lost, retry pacing, and
//! errors.
//!
//! A session is lost at once on a terminal state (expired, closed, auth failed) and after
//! [`DISCONNECT_GRACE`] of the session timeout of uninterrupted disconnection. The client
//! notices a dead connection at the latest 2/5 of the session timeout after it last heard from
//! the server (zookeeper-client's read timeout), so a session is given up at most 0.9 session
//! timeouts after the server last heard it, ahead of any expiry: a leader that steps down then
//! never overlaps its successor.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use zookeeper_client::{Client, SessionState, StateWatcher};

/// The label Mesos gives JSON `MasterInfo` members (`MASTER_INFO_JSON_LABEL`); znodes are
/// `<label>_<seq>`.
pub const MASTER_INFO_JSON_LABEL: &str = "json.info";

/// The prefix of election znodes, `json.info_`.
pub const ELECTION_PREFIX: &str = "json.info_";

/// How long a disconnected session may try to reconnect, as a fraction of the session timeout,
/// before it counts as lost (see the module documentation).
pub const DISCONNECT_GRACE: (u32, u32) = (1, 2);

/// Longest pause between attempts to open a session.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Why a contender or detector could not take part in the election. Each is logged and retried
/// with a new session; none stops a contender or detector.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ZkError {
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

/// Maps a client error of `op` on `path` to a [`ZkError`].
pub fn zk_err(op: &'static str, path: &str) -> impl FnOnce(zookeeper_client::Error) -> ZkError {
    let path = path.to_string();
    move |source| ZkError::ZooKeeper { op, path, source }
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SessionEnd {
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

/// A future that resolves when a session is lost; see [`watch_session`].
pub type Lost = Pin<Box<dyn Future<Output = SessionEnd> + Send>>;

/// Watches `client`'s session: resolves once it is lost (module documentation).
pub fn watch_session(client: &Client) -> Lost {
    let grace = client.session_timeout() * DISCONNECT_GRACE.0 / DISCONNECT_GRACE.1;
    Box::pin(session_lost(client.state_watcher(), grace))
}

/// Runs `fut` unless the session is lost first.
///
/// # Errors
/// The session was lost before `fut` finished: how it ended.
pub async fn unless_lost<F: Future>(lost: &mut Lost, fut: F) -> Result<F::Output, SessionEnd> {
    tokio::select! {
        end = lost.as_mut() => Err(end),
        out = fut => Ok(out),
    }
}

/// Exponential backoff between session attempts, 50 ms up to one second.
#[derive(Debug)]
pub struct Backoff(Duration);

impl Backoff {
    /// Starts at 50 ms.
    pub fn new() -> Self {
        Self(Duration::from_millis(50))
    }

    /// Sleeps, then doubles the next pause.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(MAX_BACKOFF);
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new()
    }
}

/// Errors worth retrying within the same session (the session itself is watched separately).
pub fn transient(e: &zookeeper_client::Error) -> bool {
    matches!(
        e,
        zookeeper_client::Error::ConnectionLoss | zookeeper_client::Error::Timeout
    )
}

/// A short pause before retrying a request that failed while reconnecting.
pub async fn pause() {
    tokio::time::sleep(Duration::from_millis(100)).await;
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
