//! Finding the leading master (Mesos's `MasterDetector`): [`ZkDetector`] reads the election
//! group in ZooKeeper, [`StandaloneDetector`] is told who leads.

use std::fmt;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use zookeeper_client::EventType;

use crate::master_info::MasterInfo;
use crate::session::{
    election_members, pause, transient, unless_lost, watch_session, zk_err, Backoff, SessionEnd,
    ZkError,
};
use crate::url::{ZkConfig, ZkUrl, ZkUrlError};

/// Finds the leading master (Mesos's `MasterDetector`).
pub trait Detector: fmt::Debug + Send + Sync {
    /// The leading master, now and as it changes; `None` while there is none (or while the
    /// detector cannot reach ZooKeeper).
    fn leader(&self) -> watch::Receiver<Option<MasterInfo>>;
}

/// Waits until `leader` names a master, at most `timeout`; `None` when none was named in time.
/// The value seen is marked as seen, so a later [`watch::Receiver::changed`] waits for the
/// next change.
pub async fn wait_for_leader(
    leader: &mut watch::Receiver<Option<MasterInfo>>,
    timeout: Duration,
) -> Option<MasterInfo> {
    let found = tokio::time::timeout(timeout, leader.wait_for(Option::is_some)).await;
    match found {
        Ok(Ok(info)) => info.clone(),
        // Timed out, or the detector is gone.
        _ => None,
    }
}

/// Why [`find_leader`] found no leader.
#[derive(Debug, thiserror::Error)]
pub enum FindLeaderError {
    #[error(transparent)]
    Url(#[from] ZkUrlError),
    #[error("cannot start a runtime to ask ZooKeeper: {0}")]
    Runtime(#[from] std::io::Error),
    #[error("no leading master in {url} after {timeout:?} (is ZooKeeper reachable, are masters running?)")]
    NoLeader { url: String, timeout: Duration },
}

/// Finds the leading master once, blocking: parses `url` (`zk://host:port[,...]/path`), opens
/// a session and waits at most `timeout` for a leader. For command-line tools; must not be
/// called from inside a tokio runtime (it runs its own).
///
/// # Errors
/// The URL is invalid, or no leader was found within `timeout`.
pub fn find_leader(url: &str, timeout: Duration) -> Result<MasterInfo, FindLeaderError> {
    let url: ZkUrl = url.parse()?;
    let shown = url.to_string();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let found = runtime.block_on(async {
        let detector = ZkDetector::start(ZkConfig::new(url));
        wait_for_leader(&mut detector.leader(), timeout).await
    });
    found.ok_or(FindLeaderError::NoLeader {
        url: shown,
        timeout,
    })
}

/// A detector told who leads: a master itself, or one appointed by configuration (an agent
/// pointed at a fixed master).
#[derive(Debug)]
pub struct StandaloneDetector {
    leader: watch::Sender<Option<MasterInfo>>,
}

impl StandaloneDetector {
    /// Detects `leader` at once.
    pub fn new(leader: Option<MasterInfo>) -> Self {
        Self {
            leader: watch::Sender::new(leader),
        }
    }

    /// Appoints a new leader (or none), as Mesos's `StandaloneMasterDetector::appoint`.
    pub fn appoint(&self, leader: Option<MasterInfo>) {
        self.leader.send_replace(leader);
    }
}

impl Detector for StandaloneDetector {
    fn leader(&self) -> watch::Receiver<Option<MasterInfo>> {
        self.leader.subscribe()
    }
}

/// Finds the leading master through ZooKeeper, with its own session (as Mesos's detector):
/// lists `<path>`, reads the lowest `json.info_<seq>` child, and watches the children for the
/// next change. Detects from [`ZkDetector::start`] until dropped; reconnects by itself.
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

    /// Parses `url` (`zk://[user:password@]host:port[,...]/path`) and starts detecting with
    /// Mesos's default session timeout. Must be called inside a tokio runtime.
    ///
    /// # Errors
    /// The URL is invalid; the error names what is wrong with it.
    pub fn from_url(url: &str) -> Result<Self, ZkUrlError> {
        Ok(Self::start(ZkConfig::new(url.parse()?)))
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
) -> Result<SessionEnd, ZkError> {
    let client = config.connect().await.map_err(|source| ZkError::Connect {
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
    fn standalone_detects_the_appointed_leader() {
        let info = MasterInfo::new("m", "127.0.0.1:5050".parse().unwrap(), "");
        let detector = StandaloneDetector::new(Some(info.clone()));
        let mut rx = detector.leader();
        assert_eq!(rx.borrow_and_update().as_ref(), Some(&info));
        detector.appoint(None);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), None);
    }

    #[tokio::test]
    async fn wait_for_leader_times_out_without_one() {
        let detector = StandaloneDetector::new(None);
        let mut rx = detector.leader();
        assert_eq!(
            wait_for_leader(&mut rx, Duration::from_millis(20)).await,
            None
        );
        let info = MasterInfo::new("m", "127.0.0.1:5050".parse().unwrap(), "");
        detector.appoint(Some(info.clone()));
        assert_eq!(
            wait_for_leader(&mut rx, Duration::from_secs(5)).await,
            Some(info)
        );
    }

    #[test]
    fn bad_urls_are_refused_before_connecting() {
        let err = find_leader("http://h:2181/cairn", Duration::from_secs(1)).unwrap_err();
        assert!(err.to_string().contains("must start with zk://"), "{err}");
    }
}
