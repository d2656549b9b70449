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
//! With ZooKeeper ([`zookeeper`]) each master writes Mesos's ephemeral sequential znodes
//! `<path>/json.info_<seq>` holding [`MasterInfo`] JSON, so Mesos tooling finds the leader.
//! Standalone ([`standalone`]) the one master leads at once.

use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub mod standalone;
mod zk_url;
pub mod zookeeper;

pub use self::standalone::{StandaloneContender, StandaloneDetector};
pub use self::zookeeper::{
    ContenderError, ZkConfig, ZkContender, ZkCredentials, ZkDetector, ZkFence, ZkUrl, ZkUrlError,
};

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

/// Finds the leading master (Mesos's `MasterDetector`).
pub trait Detector: fmt::Debug + Send + Sync {
    /// The leading master, now and as it changes; `None` while there is none (or while the
    /// detector cannot reach ZooKeeper).
    fn leader(&self) -> watch::Receiver<Option<MasterInfo>>;
}

/// A network address as Mesos's `Address` message renders it in JSON.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Address {
    /// The master's hostname.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    /// The IP address as text (`10.0.0.1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    /// The port.
    pub port: i32,
}

/// A master's identity and address, as Mesos's `MasterInfo` protobuf rendered to JSON by
/// `JSON::protobuf` (Mesos's `ZooKeeperMasterContender` writes exactly this into its znode).
/// Fields keep Mesos's names and order; unknown fields (`domain`, `capabilities`) written by
/// Mesos masters are ignored when reading.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MasterInfo {
    /// The master's unique id (a new one on each start).
    pub id: String,
    /// The IPv4 address packed as Mesos packs it: `in_addr.s_addr` (network byte order) read
    /// as a host-order `uint32` on little-endian hosts, so `10.0.0.1` is `16777226`. 0 for IPv6.
    pub ip: u32,
    /// The port the master's HTTP API listens on.
    pub port: u32,
    /// The libprocess pid, `master@<ip>:<port>`.
    #[serde(default)]
    pub pid: String,
    /// The master's hostname.
    #[serde(default)]
    pub hostname: String,
    /// The software version of the master.
    #[serde(default)]
    pub version: String,
    /// The address clients should use (pymesos reads `address.ip` and `address.port`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<Address>,
}

impl MasterInfo {
    /// Describes the master with `id` serving at `addr`, known as `hostname` (the IP address
    /// when empty), running this build's version.
    pub fn new(id: impl Into<String>, addr: SocketAddr, hostname: impl Into<String>) -> Self {
        let ip_text = addr.ip().to_string();
        let mut hostname = hostname.into();
        if hostname.is_empty() {
            hostname.clone_from(&ip_text);
        }
        let pid = match addr.ip() {
            IpAddr::V4(_) => format!("master@{ip_text}:{}", addr.port()),
            IpAddr::V6(_) => format!("master@[{ip_text}]:{}", addr.port()),
        };
        Self {
            id: id.into(),
            ip: pack_ip(addr.ip()),
            port: u32::from(addr.port()),
            pid,
            hostname: hostname.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            address: Some(Address {
                hostname: Some(hostname),
                ip: Some(ip_text),
                port: i32::from(addr.port()),
            }),
        }
    }

    /// Where to reach the master: `address.ip`/`address.port` when present (what pymesos and
    /// Mesos's HTTP clients use), else the packed `ip` and `port`.
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        if let Some(address) = &self.address {
            if let Some(ip) = address
                .ip
                .as_deref()
                .and_then(|ip| ip.parse::<IpAddr>().ok())
            {
                let port = u16::try_from(address.port).ok()?;
                return Some(SocketAddr::new(ip, port));
            }
        }
        let port = u16::try_from(self.port).ok()?;
        Some(SocketAddr::new(unpack_ip(self.ip).into(), port))
    }

    /// The JSON Mesos writes into the election znode.
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a MasterInfo of strings and numbers always serialises")
    }
}

/// Packs an IPv4 address as Mesos does: the network-order bytes as a little-endian `u32`
/// (Mesos stores `s_addr` unchanged on x86). IPv6 has no packed form: 0.
pub fn pack_ip(ip: IpAddr) -> u32 {
    match ip {
        IpAddr::V4(v4) => u32::from_le_bytes(v4.octets()),
        IpAddr::V6(_) => 0,
    }
}

/// The inverse of [`pack_ip`].
pub fn unpack_ip(packed: u32) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(packed.to_le_bytes())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn master_info_json_matches_mesos() {
        let info = MasterInfo::new("m-1", "10.0.0.1:5050".parse().unwrap(), "node1");
        let json: serde_json::Value = serde_json::from_slice(&info.to_json()).unwrap();
        assert_eq!(
            json,
            serde_json::json!({
                "id": "m-1",
                "ip": 16_777_226,
                "port": 5050,
                "pid": "master@10.0.0.1:5050",
                "hostname": "node1",
                "version": env!("CARGO_PKG_VERSION"),
                "address": {"hostname": "node1", "ip": "10.0.0.1", "port": 5050},
            })
        );
        // Field order follows MasterInfo's field numbers, like Mesos's JSON::protobuf.
        let text = String::from_utf8(info.to_json()).unwrap();
        assert!(text.starts_with("{\"id\":\"m-1\",\"ip\":16777226,\"port\":5050,\"pid\""));
    }

    #[test]
    fn reads_a_mesos_masters_znode() {
        // As a Mesos 1.x master writes it, with fields Cairn does not use.
        let mesos = br#"{"address":{"hostname":"m1.example","ip":"192.168.1.7","port":5050},
            "capabilities":[{"type":"AGENT_UPDATE"}],"hostname":"m1.example",
            "id":"2f4c-5050-1","ip":117549248,"pid":"master@192.168.1.7:5050","port":5050,
            "version":"1.11.0"}"#;
        let info: MasterInfo = serde_json::from_slice(mesos).unwrap();
        assert_eq!(unpack_ip(info.ip).to_string(), "192.168.1.7");
        assert_eq!(
            info.socket_addr(),
            Some("192.168.1.7:5050".parse().unwrap())
        );
        let minimal: MasterInfo =
            serde_json::from_slice(br#"{"id":"x","ip":16777343,"port":5050}"#).unwrap();
        assert_eq!(
            minimal.socket_addr(),
            Some("127.0.0.1:5050".parse().unwrap())
        );
    }

    #[test]
    fn hostname_defaults_to_the_ip() {
        let info = MasterInfo::new("m", "127.0.0.1:1".parse().unwrap(), "");
        assert_eq!(info.hostname, "127.0.0.1");
        assert_eq!(info.ip, pack_ip("127.0.0.1".parse().unwrap()));
        assert_eq!(info.ip, 0x0100_007f);
    }
}
