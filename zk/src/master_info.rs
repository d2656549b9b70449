//! [`MasterInfo`]: a master's identity and address, as Mesos writes it into its election
//! znodes (`<path>/json.info_<seq>`).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use serde::{Deserialize, Serialize};

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

    /// `host:port` as Mesos redirects to the master: `address.hostname` when set, else the IP
    /// (`[v6]` bracketed). For URLs: `format!("http://{}/api/v1", info.authority()?)`.
    pub fn authority(&self) -> Option<String> {
        let addr = self.socket_addr()?;
        let host = self
            .address
            .as_ref()
            .and_then(|a| a.hostname.clone())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| addr.ip().to_string());
        // An IPv6 literal (the default hostname of an IPv6 master) needs brackets.
        let host = match host.parse::<std::net::Ipv6Addr>() {
            Ok(_) => format!("[{host}]"),
            Err(_) => host,
        };
        Some(format!("{host}:{}", addr.port()))
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
pub fn unpack_ip(packed: u32) -> Ipv4Addr {
    Ipv4Addr::from(packed.to_le_bytes())
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
        assert_eq!(info.authority().as_deref(), Some("m1.example:5050"));
        let minimal: MasterInfo =
            serde_json::from_slice(br#"{"id":"x","ip":16777343,"port":5050}"#).unwrap();
        assert_eq!(
            minimal.socket_addr(),
            Some("127.0.0.1:5050".parse().unwrap())
        );
        assert_eq!(minimal.authority().as_deref(), Some("127.0.0.1:5050"));
    }

    #[test]
    fn hostname_defaults_to_the_ip() {
        let info = MasterInfo::new("m", "127.0.0.1:1".parse().unwrap(), "");
        assert_eq!(info.hostname, "127.0.0.1");
        assert_eq!(info.ip, pack_ip("127.0.0.1".parse().unwrap()));
        assert_eq!(info.ip, 0x0100_007f);
        let v6 = MasterInfo::new("m", "[::1]:5050".parse().unwrap(), "");
        assert_eq!(v6.pid, "master@[::1]:5050");
        assert_eq!(v6.ip, 0);
        assert_eq!(v6.authority().as_deref(), Some("[::1]:5050"));
    }
}
