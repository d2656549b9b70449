//! Finding Cairn's leading master, shared by the master, the agent and the CLI.
//!
//! Masters elect a leader in ZooKeeper exactly as Mesos masters do: each writes an ephemeral
//! sequential znode `<path>/json.info_<seq>` holding its [`MasterInfo`] as JSON, and the lowest
//! sequence leads. So Mesos's detectors and clients (pymesos, mesos-go, the mesos CLI) find a
//! Cairn leader, and this crate finds a Mesos one.
//!
//! - [`ZkUrl`] parses Mesos's `zk://[user:password@]host:port[,host:port]/path`; [`ZkConfig`]
//!   adds the session timeout and opens sessions (with `digest` auth when credentials are
//!   given);
//! - a [`Detector`] says which master leads as a [`tokio::sync::watch`] stream of
//!   `Option<MasterInfo>`: [`ZkDetector`] follows ZooKeeper, [`StandaloneDetector`] is told;
//! - [`find_leader`] is the one-shot, blocking form for command-line tools;
//! - [`session`] holds what the master's contender shares with the detector (when a session
//!   counts as lost, the election group's names, retry pacing).
//!
//! ```no_run
//! # async fn example() -> Result<(), cairn_zk::ZkUrlError> {
//! use cairn_zk::{wait_for_leader, Detector, ZkDetector};
//! use std::time::Duration;
//!
//! let detector = ZkDetector::from_url("zk://10.0.0.1:2181,10.0.0.2:2181/cairn")?;
//! let mut leader = detector.leader();
//! if let Some(info) = wait_for_leader(&mut leader, Duration::from_secs(10)).await {
//!     let base = format!("http://{}", info.authority().unwrap_or_default());
//!     println!("leader at {base}");
//! }
//! // `leader.changed().await` then wakes on every leader change (or loss: `None`).
//! # Ok(()) }
//! ```

pub mod detector;
pub mod master_info;
pub mod session;
pub mod url;

pub use detector::{
    find_leader, wait_for_leader, Detector, FindLeaderError, StandaloneDetector, ZkDetector,
};
pub use master_info::{pack_ip, unpack_ip, Address, MasterInfo};
pub use session::ZkError;
pub use url::{ZkConfig, ZkCredentials, ZkUrl, ZkUrlError, DEFAULT_SESSION_TIMEOUT};
