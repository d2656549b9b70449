//! Leader election: who leads among the masters, and how everyone else finds out.
//!
//! Two traits, after Mesos's `MasterContender` and `MasterDetector`, each with a standalone and
//! a ZooKeeper backend, chosen once at start-up ([`start`]):
//!
//! - a [`Contender`] says whether *this* master leads, as a [`tokio::sync::watch`] stream of
//!   [`Leadership`]. The master acts (offers, API writes, registry writes) only while it reads
//!   [`Leadership::Leading`], and stops the moment it reads [`Leadership::NotLeading`];
//! - a [`Detector`] says *which* master leads, as a watch stream of `Option<`[`MasterInfo`]`>`,
//!   for redirects (`307` to the leader, `503` without one) and for agents.
//!
//! The detectors, [`MasterInfo`] and `zk://` URLs live in the `cairn-zk` crate, shared with
//! the agent and the CLI.
//!
//! With ZooKeeper ([`zookeeper`]) each master writes Mesos's ephemeral sequential znodes
//! `<path>/json.info_<seq>` holding [`MasterInfo`] JSON, so Mesos tooling finds the leader.
//! Standalone ([`standalone`]) the one master leads at once.

use std::fmt;
use std::sync::Arc;

use tokio::sync::watch;

pub mod standalone;
pub mod zookeeper;

// What agents and the CLI also need to find the leader lives in `cairn-zk`; re-exported so
// the master's code and tests name it from one place.
pub use cairn_zk::{
    pack_ip, unpack_ip, Address, Detector, MasterInfo, StandaloneDetector, ZkConfig, ZkCredentials,
    ZkDetector, ZkUrl, ZkUrlError,
};

pub use self::standalone::StandaloneContender;
pub use self::zookeeper::{ContenderError, ZkContender, ZkFence};

/// Whether this master leads now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leadership {
    /// Not leading: contending behind another master, or (re)connecting to ZooKeeper.
    NotLeading,
    /// Leading. `term` grows with every new leadership (with ZooKeeper it is the sequence
    /// number of this master's election znode), so logs and metrics can tell terms apart.
    Leading {
        /// The leadership's term.
        term: u64,
    },
}

impl Leadership {
    /// Whether this is [`Leadership::Leading`].
    pub fn is_leading(self) -> bool {
        matches!(self, Self::Leading { .. })
    }
}

/// A master contending for leadership (Mesos's `MasterContender`).
pub trait Contender: fmt::Debug + Send + Sync {
    /// This master's leadership, now and as it changes. The value is
    /// [`Leadership::NotLeading`] until this master is elected, and turns back to it at once
    /// when leadership is lost (with ZooKeeper: the session expired or was cut for too long);
    /// the contender then contends again by itself.
    fn leadership(&self) -> watch::Receiver<Leadership>;
}

/// The election backend in use: a contender and a detector of the same kind.
#[derive(Debug, Clone)]
pub struct Election {
    /// Whether this master leads.
    pub contender: Arc<dyn Contender>,
    /// Which master leads.
    pub detector: Arc<dyn Detector>,
    /// The ZooKeeper contender when ZooKeeper is used: the registry fences its writes on it.
    pub zookeeper: Option<Arc<ZkContender>>,
}

/// Chooses the backend once: ZooKeeper when `zk` is given, standalone otherwise. Must be
/// called inside a tokio runtime (the ZooKeeper backend spawns its sessions' tasks).
pub fn start(zk: Option<ZkConfig>, info: MasterInfo) -> Election {
    match zk {
        Some(config) => {
            let contender = Arc::new(ZkContender::start(config.clone(), info));
            Election {
                contender: contender.clone(),
                detector: Arc::new(ZkDetector::start(config)),
                zookeeper: Some(contender),
            }
        }
        None => Election {
            contender: Arc::new(StandaloneContender::new()),
            detector: Arc::new(StandaloneDetector::new(Some(info))),
            zookeeper: None,
        },
    }
}
