//! `zk://` URLs and the ZooKeeper settings shared by the contender, the detector and the
//! registry.
//!
//! The URL syntax is Mesos's (`zookeeper::URL::parse`):
//! `zk://[user:password@]host1:port1[,host2:port2...]/path`. Credentials enable ZooKeeper's
//! `digest` authentication; the path is where the masters elect their leader and must not be
//! `/` (Mesos refuses it too: "Expecting a (chroot) path for ZooKeeper").

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use zookeeper_client::{Acl, Acls, Client, Permission};

/// ZooKeeper's default client port, used when a server is given without one.
const DEFAULT_PORT: u16 = 2181;

/// Mesos's `MASTER_CONTENDER_ZK_SESSION_TIMEOUT` (and the detector's): 10 s.
pub const DEFAULT_SESSION_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a `zk://` URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ZkUrlError {
    #[error("ZooKeeper URL {url:?} must start with zk:// (e.g. zk://host1:2181,host2:2181/cairn)")]
    Scheme { url: String },
    #[error(
        "ZooKeeper URL {url:?} has no path: add one after the servers, e.g. zk://host:2181/cairn"
    )]
    NoPath { url: String },
    #[error("ZooKeeper URL {url:?} has path \"/\": masters need their own path, e.g. /cairn")]
    RootPath { url: String },
    #[error("ZooKeeper URL {url:?} has a bad path {path:?}: {reason}")]
    BadPath {
        url: String,
        path: String,
        reason: &'static str,
    },
    #[error("ZooKeeper URL {url:?} names no servers: put host:port[,host:port] after zk://")]
    NoServers { url: String },
    #[error("ZooKeeper URL {url:?} has a bad server {server:?}: {reason}")]
    BadServer {
        url: String,
        server: String,
        reason: &'static str,
    },
    #[error("ZooKeeper URL {url:?} has credentials without a password: write user:password@")]
    BadCredentials { url: String },
}

/// Credentials for ZooKeeper's `digest` scheme.
#[derive(Clone, PartialEq, Eq)]
pub struct ZkCredentials {
    /// The user name.
    pub user: String,
    /// The password (never printed).
    pub password: String,
}

impl fmt::Debug for ZkCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ZkCredentials")
            .field("user", &self.user)
            .field("password", &"***")
            .finish()
    }
}

/// A parsed `zk://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkUrl {
    /// `host:port` of each server.
    pub servers: Vec<String>,
    /// The election path, absolute, without a trailing `/` (e.g. `/cairn`).
    pub path: String,
    /// Digest credentials, when given.
    pub credentials: Option<ZkCredentials>,
}

impl ZkUrl {
    /// The connect string for the client, `host1:port1,host2:port2`.
    pub fn connect_string(&self) -> String {
        self.servers.join(",")
    }
}

impl fmt::Display for ZkUrl {
    /// The URL with the password masked, for logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("zk://")?;
        if let Some(credentials) = &self.credentials {
            write!(f, "{}:***@", credentials.user)?;
        }
        write!(f, "{}{}", self.servers.join(","), self.path)
    }
}

impl FromStr for ZkUrl {
    type Err = ZkUrlError;

    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let owned = || url.to_string();
        let rest = url
            .strip_prefix("zk://")
            .ok_or_else(|| ZkUrlError::Scheme { url: owned() })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => return Err(ZkUrlError::NoPath { url: owned() }),
        };
        // The password may hold '@'; host names never do.
        let (credentials, hosts) = match authority.rsplit_once('@') {
            Some((credentials, hosts)) => {
                let (user, password) = credentials
                    .split_once(':')
                    .filter(|(user, _)| !user.is_empty())
                    .ok_or_else(|| ZkUrlError::BadCredentials { url: owned() })?;
                let credentials = ZkCredentials {
                    user: user.to_string(),
                    password: password.to_string(),
                };
                (Some(credentials), hosts)
            }
            None => (None, authority),
        };
        if hosts.is_empty() {
            return Err(ZkUrlError::NoServers { url: owned() });
        }
        let servers = hosts
            .split(',')
            .map(|server| parse_server(url, server))
            .collect::<Result<Vec<_>, _>>()?;
        check_path(url, path)?;
        Ok(Self {
            servers,
            path: path.to_string(),
            credentials,
        })
    }
}

fn parse_server(url: &str, server: &str) -> Result<String, ZkUrlError> {
    let bad = |reason| ZkUrlError::BadServer {
        url: url.to_string(),
        server: server.to_string(),
        reason,
    };
    if server.is_empty() {
        return Err(bad("empty server (a stray comma?)"));
    }
    // `[v6]:port`, `host:port` or a bare host.
    let (host, port) = if let Some(v6) = server.strip_prefix('[') {
        let (host, after) = v6.split_once(']').ok_or_else(|| bad("unclosed '['"))?;
        match after {
            "" => (host, None),
            port => (
                host,
                Some(
                    port.strip_prefix(':')
                        .ok_or_else(|| bad("junk after ']'"))?,
                ),
            ),
        }
    } else {
        match server.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (server, None),
        }
    };
    if host.is_empty() {
        return Err(bad("empty host"));
    }
    let port = match port {
        None => DEFAULT_PORT,
        Some(port) => port
            .parse::<u16>()
            .ok()
            .filter(|&p| p != 0)
            .ok_or_else(|| bad("the port must be a number from 1 to 65535"))?,
    };
    Ok(if server.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

fn check_path(url: &str, path: &str) -> Result<(), ZkUrlError> {
    let bad = |reason| ZkUrlError::BadPath {
        url: url.to_string(),
        path: path.to_string(),
        reason,
    };
    if path == "/" {
        return Err(ZkUrlError::RootPath {
            url: url.to_string(),
        });
    }
    if path.ends_with('/') {
        return Err(bad("it must not end with '/'"));
    }
    for segment in path[1..].split('/') {
        match segment {
            "" => return Err(bad("it has an empty segment ('//')")),
            "." | ".." => return Err(bad("'.' and '..' are not allowed in ZooKeeper paths")),
            _ => {}
        }
    }
    if path == "/zookeeper" || path.starts_with("/zookeeper/") {
        return Err(bad("/zookeeper is reserved by ZooKeeper"));
    }
    Ok(())
}

/// How the masters use ZooKeeper: where, and with which session timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZkConfig {
    /// Servers, path and credentials.
    pub url: ZkUrl,
    /// The session timeout asked of ZooKeeper (the server bounds it to 2..20 ticks by default).
    /// A leader steps down when its session is lost (see the master's contender).
    pub session_timeout: Duration,
}

impl ZkConfig {
    /// `url` with Mesos's default session timeout (10 s).
    pub fn new(url: ZkUrl) -> Self {
        Self {
            url,
            session_timeout: DEFAULT_SESSION_TIMEOUT,
        }
    }

    /// The same with another session timeout.
    #[must_use]
    pub fn with_session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// Opens a new session (with digest auth when configured). Retries the servers until the
    /// session timeout passes.
    ///
    /// # Errors
    /// No server answered in time, or authentication failed.
    pub async fn connect(&self) -> Result<Client, zookeeper_client::Error> {
        let mut connector = Client::connector().with_session_timeout(self.session_timeout);
        if let Some(credentials) = &self.url.credentials {
            let auth = format!("{}:{}", credentials.user, credentials.password);
            connector = connector.with_auth("digest", auth.as_bytes());
        }
        connector.connect(&self.url.connect_string()).await
    }

    /// ACLs for the election znodes: open without credentials; with them, readable by anyone
    /// (so Mesos tooling finds the leader without credentials) and writable only by the masters'
    /// identity, as Mesos's `EVERYONE_READ_CREATOR_ALL`.
    pub fn election_acls(&self) -> Acls<'static> {
        static EVERYONE_READ_CREATOR_ALL: [Acl; 2] = [
            Acl::new_const(Permission::READ, "world", "anyone"),
            Acl::new_const(Permission::ALL, "auth", ""),
        ];
        if self.url.credentials.is_some() {
            Acls::new(&EVERYONE_READ_CREATOR_ALL)
        } else {
            Acls::anyone_all()
        }
    }

    /// ACLs for the registry znodes: open without credentials; with them, only the masters'
    /// identity may read or write (the registry names every agent).
    pub fn registry_acls(&self) -> Acls<'static> {
        if self.url.credentials.is_some() {
            Acls::creator_all()
        } else {
            Acls::anyone_all()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_mesos_style_urls() {
        let url: ZkUrl = "zk://user:p@ss:w0rd@host1:2181,host2:2182/cairn/prod"
            .parse()
            .unwrap();
        assert_eq!(url.servers, ["host1:2181", "host2:2182"]);
        assert_eq!(url.path, "/cairn/prod");
        let credentials = url.credentials.clone().unwrap();
        assert_eq!(
            (credentials.user.as_str(), credentials.password.as_str()),
            ("user", "p@ss:w0rd")
        );
        assert_eq!(
            url.to_string(),
            "zk://user:***@host1:2181,host2:2182/cairn/prod"
        );
        assert!(!format!("{url:?}").contains("w0rd"));

        let url: ZkUrl = "zk://10.0.0.1,[::1]:2183,[fe80::1]/m".parse().unwrap();
        assert_eq!(
            url.servers,
            ["10.0.0.1:2181", "[::1]:2183", "[fe80::1]:2181"]
        );
        assert_eq!(
            url.connect_string(),
            "10.0.0.1:2181,[::1]:2183,[fe80::1]:2181"
        );
        assert!(url.credentials.is_none());
    }

    #[test]
    fn refuses_bad_urls_naming_the_problem() {
        let cases = [
            ("http://h:2181/cairn", "must start with zk://"),
            ("zk://h:2181", "has no path"),
            ("zk://h:2181/", "has path \"/\""),
            ("zk://h:2181/cairn/", "must not end with '/'"),
            ("zk://h:2181/a//b", "empty segment"),
            ("zk://h:2181/a/../b", "'..'"),
            ("zk:///cairn", "names no servers"),
            ("zk://h:2181,,h2:2181/cairn", "stray comma"),
            ("zk://h:99999/cairn", "from 1 to 65535"),
            ("zk://h:x/cairn", "from 1 to 65535"),
            ("zk://:2181/cairn", "empty host"),
            ("zk://user@h:2181/cairn", "without a password"),
            ("zk://[::1/cairn", "unclosed"),
        ];
        for (url, expected) in cases {
            let err = url.parse::<ZkUrl>().unwrap_err().to_string();
            assert!(err.contains(expected), "{url}: {err}");
        }
    }

    #[test]
    fn acls_follow_credentials() {
        let open = ZkConfig::new("zk://h/c".parse().unwrap());
        assert_eq!(open.session_timeout, DEFAULT_SESSION_TIMEOUT);
        assert_eq!(open.election_acls()[0].scheme(), "world");
        assert!(open.registry_acls()[0].permission().has(Permission::ALL));
        let secured = ZkConfig::new("zk://u:p@h/c".parse().unwrap());
        let acls = secured.election_acls();
        assert_eq!(acls.len(), 2);
        assert_eq!(
            (acls[0].scheme(), acls[0].permission()),
            ("world", Permission::READ)
        );
        assert_eq!(
            (acls[1].scheme(), acls[1].permission()),
            ("auth", Permission::ALL)
        );
        assert_eq!(secured.registry_acls()[0].scheme(), "auth");
    }
}
