//! The master's configuration: `/etc/cairn/master.toml` (or `--config`), overridden by
//! `CAIRN_*` environment variables and flags. Loading has no side effects.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::core::CoreConfig;
use crate::credentials::{AuthConfig, Credentials};
use crate::election::{ZkConfig, ZkUrl};

/// `subscriber_queue`'s default: a memory bound only. A stalled subscriber is found by time
/// ([`crate::core::STALLED_AFTER`]); a count low enough to find it sooner cut off healthy
/// frameworks reading the reconciliation burst of a failover (thousands of updates at once),
/// and they could never re-subscribe.
pub const DEFAULT_SUBSCRIBER_QUEUE: usize = 100_000;

/// Settings in the config file; every key is optional. Unknown keys are refused, naming
/// the key.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<SocketAddr>,
    pub hostname: Option<String>,
    pub advertise_ip: Option<Ipv4Addr>,
    pub work_dir: Option<PathBuf>,
    pub agent_timeout_secs: Option<f64>,
    /// How long a recovered master waits for admitted agents to re-register before marking
    /// the missing ones unreachable.
    pub agent_reregister_timeout_secs: Option<f64>,
    pub agent_heartbeat_secs: Option<f64>,
    pub framework_heartbeat_secs: Option<f64>,
    pub offer_timeout_secs: Option<f64>,
    pub allocation_interval_secs: Option<f64>,
    pub subscriber_queue: Option<usize>,
    /// `zk://[user:password@]host:port[,host:port...]/path`: elect a leader and keep the
    /// registry in ZooKeeper (HA). Without it the master runs standalone.
    pub zk: Option<String>,
    /// The ZooKeeper session timeout; a leader that loses its session steps down.
    pub zk_session_timeout_secs: Option<f64>,
    /// Principals and secrets (Mesos's `--credentials`): JSON
    /// `{"credentials": [{"principal", "secret"}]}` or text lines `principal secret`.
    pub credentials: Option<PathBuf>,
    /// Scheduler API calls must authenticate (Mesos's `--authenticate_http_frameworks`).
    pub authenticate_frameworks: Option<bool>,
    /// Agent protocol calls must authenticate (Mesos's `--authenticate_agents`).
    pub authenticate_agents: Option<bool>,
    /// Operator calls that change state must authenticate.
    pub authenticate_http_readwrite: Option<bool>,
    /// `/state`, the metrics and operator `GET_*` calls must authenticate.
    pub authenticate_http_readonly: Option<bool>,
    /// TLS certificate chain (PEM); with `tls_key` the master serves HTTPS only.
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

/// Why the configuration is unusable.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("setting {key}: {message}")]
    Invalid { key: &'static str, message: String },
    /// `tls_cert`/`tls_key` unusable (the message names the setting and the file).
    #[error(transparent)]
    Tls(#[from] cairn_tls::TlsError),
}

/// HTTPS: the files and the server configuration read from them.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub server: std::sync::Arc<cairn_tls::rustls::ServerConfig>,
}

/// The resolved configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub work_dir: PathBuf,
    pub allocation_interval: Duration,
    pub core: CoreConfig,
    /// ZooKeeper for leader election and the registry; `None` runs standalone.
    pub zk: Option<ZkConfig>,
    /// Who must authenticate, and the credentials they are checked against.
    pub auth: AuthConfig,
    /// Serve HTTPS only, with this certificate; `None` serves plain HTTP.
    pub tls: Option<TlsConfig>,
}

impl Config {
    /// Every setting in force, for the operator API's GET_FLAGS (sorted by name; the
    /// ZooKeeper password masked).
    pub fn flags(&self) -> Vec<cairn_api::v1::master::Flag> {
        let flag = |name: &str, value: String| cairn_api::v1::master::Flag {
            name: name.into(),
            value: Some(value),
        };
        let mut flags = self.core.flags();
        flags.push(flag("listen", self.listen.to_string()));
        flags.push(flag("work_dir", self.work_dir.display().to_string()));
        flags.push(flag(
            "allocation_interval_secs",
            self.allocation_interval.as_secs_f64().to_string(),
        ));
        if let Some(zk) = &self.zk {
            flags.push(flag("zk", zk.url.to_string()));
            flags.push(flag(
                "zk_session_timeout_secs",
                zk.session_timeout.as_secs_f64().to_string(),
            ));
        }
        if let Some((path, _)) = &self.auth.credentials {
            flags.push(flag("credentials", path.display().to_string()));
        }
        if let Some(tls) = &self.tls {
            flags.push(flag("tls_cert", tls.cert.display().to_string()));
            flags.push(flag("tls_key", tls.key.display().to_string()));
        }
        for (name, on) in [
            ("authenticate_frameworks", self.auth.frameworks),
            ("authenticate_agents", self.auth.agents),
            ("authenticate_http_readwrite", self.auth.http_readwrite),
            ("authenticate_http_readonly", self.auth.http_readonly),
        ] {
            flags.push(flag(name, on.to_string()));
        }
        flags.sort_by(|a, b| a.name.cmp(&b.name));
        flags
    }
}

impl FileConfig {
    /// Reads `path`; a missing default file is an empty config.
    ///
    /// # Errors
    /// An unreadable file, bad TOML, an unknown key or a wrong type (the message names it).
    pub fn load(path: &Path, required: bool) -> Result<Self, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| ConfigError::Parse {
                path: path.to_path_buf(),
                message: e.to_string(),
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => Ok(Self::default()),
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// Applies `over` (from flags and environment) on top of `self`.
    #[must_use]
    pub fn merge(self, over: FileConfig) -> Self {
        Self {
            listen: over.listen.or(self.listen),
            hostname: over.hostname.or(self.hostname),
            advertise_ip: over.advertise_ip.or(self.advertise_ip),
            work_dir: over.work_dir.or(self.work_dir),
            agent_timeout_secs: over.agent_timeout_secs.or(self.agent_timeout_secs),
            agent_reregister_timeout_secs: over
                .agent_reregister_timeout_secs
                .or(self.agent_reregister_timeout_secs),
            agent_heartbeat_secs: over.agent_heartbeat_secs.or(self.agent_heartbeat_secs),
            framework_heartbeat_secs: over
                .framework_heartbeat_secs
                .or(self.framework_heartbeat_secs),
            offer_timeout_secs: over.offer_timeout_secs.or(self.offer_timeout_secs),
            allocation_interval_secs: over
                .allocation_interval_secs
                .or(self.allocation_interval_secs),
            subscriber_queue: over.subscriber_queue.or(self.subscriber_queue),
            zk: over.zk.or(self.zk),
            zk_session_timeout_secs: over
                .zk_session_timeout_secs
                .or(self.zk_session_timeout_secs),
            credentials: over.credentials.or(self.credentials),
            authenticate_frameworks: over
                .authenticate_frameworks
                .or(self.authenticate_frameworks),
            authenticate_agents: over.authenticate_agents.or(self.authenticate_agents),
            authenticate_http_readwrite: over
                .authenticate_http_readwrite
                .or(self.authenticate_http_readwrite),
            authenticate_http_readonly: over
                .authenticate_http_readonly
                .or(self.authenticate_http_readonly),
            tls_cert: over.tls_cert.or(self.tls_cert),
            tls_key: over.tls_key.or(self.tls_key),
        }
    }

    /// Checks values and fills defaults.
    ///
    /// # Errors
    /// A value out of range, naming its key.
    pub fn resolve(self) -> Result<Config, ConfigError> {
        fn secs(key: &'static str, v: Option<f64>, default: f64) -> Result<Duration, ConfigError> {
            let v = v.unwrap_or(default);
            if !v.is_finite() || v <= 0.0 {
                return Err(ConfigError::Invalid {
                    key,
                    message: format!("{v} is not a positive number of seconds"),
                });
            }
            Ok(Duration::from_secs_f64(v))
        }
        let listen = self
            .listen
            .unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 5050)));
        let ip = self.advertise_ip.unwrap_or(match listen.ip() {
            std::net::IpAddr::V4(ip) if !ip.is_unspecified() => ip,
            _ => Ipv4Addr::LOCALHOST,
        });
        let subscriber_queue = self.subscriber_queue.unwrap_or(DEFAULT_SUBSCRIBER_QUEUE);
        if subscriber_queue == 0 {
            return Err(ConfigError::Invalid {
                key: "subscriber_queue",
                message: "must be at least 1".into(),
            });
        }
        let zk = match &self.zk {
            Some(url) => {
                let url: ZkUrl = url.parse().map_err(|e| ConfigError::Invalid {
                    key: "zk",
                    message: format!("{e}"),
                })?;
                let mut zk = ZkConfig::new(url);
                if let Some(v) = self.zk_session_timeout_secs {
                    zk = zk.with_session_timeout(secs("zk_session_timeout_secs", Some(v), 0.0)?);
                }
                Some(zk)
            }
            None => None,
        };
        let auth = self.auth()?;
        let tls = match (&self.tls_cert, &self.tls_key) {
            (None, None) => None,
            (Some(cert), Some(key)) => Some(TlsConfig {
                cert: cert.clone(),
                key: key.clone(),
                server: cairn_tls::server_config(cert, key)?,
            }),
            (Some(_), None) => {
                return Err(ConfigError::Invalid {
                    key: "tls_key",
                    message: "tls_cert is set without tls_key".into(),
                })
            }
            (None, Some(_)) => {
                return Err(ConfigError::Invalid {
                    key: "tls_cert",
                    message: "tls_key is set without tls_cert".into(),
                })
            }
        };
        let core = CoreConfig {
            framework_heartbeat: secs(
                "framework_heartbeat_secs",
                self.framework_heartbeat_secs,
                15.0,
            )?,
            agent_heartbeat: secs("agent_heartbeat_secs", self.agent_heartbeat_secs, 15.0)?,
            agent_timeout: secs("agent_timeout_secs", self.agent_timeout_secs, 75.0)?,
            agent_reregister_timeout: secs(
                "agent_reregister_timeout_secs",
                self.agent_reregister_timeout_secs,
                600.0,
            )?,
            offer_timeout: self
                .offer_timeout_secs
                .map(|v| secs("offer_timeout_secs", Some(v), 0.0))
                .transpose()?,
            subscriber_queue,
            hostname: self.hostname.unwrap_or_else(|| ip.to_string()),
            ip,
            port: listen.port(),
            ..CoreConfig::default()
        };
        Ok(Config {
            listen,
            work_dir: self
                .work_dir
                .unwrap_or_else(|| PathBuf::from("/var/lib/cairn/master")),
            allocation_interval: secs(
                "allocation_interval_secs",
                self.allocation_interval_secs,
                1.0,
            )?,
            core,
            zk,
            auth,
            tls,
        })
    }

    /// The `credentials` file, read and checked, and the `authenticate_*` switches; a switch
    /// on without `credentials` is an error naming both.
    fn auth(&self) -> Result<AuthConfig, ConfigError> {
        let credentials = match &self.credentials {
            Some(path) => {
                let c = Credentials::load(path).map_err(|e| ConfigError::Invalid {
                    key: "credentials",
                    message: e.to_string(),
                })?;
                Some((path.clone(), std::sync::Arc::new(c)))
            }
            None => None,
        };
        let auth = AuthConfig {
            credentials,
            frameworks: self.authenticate_frameworks.unwrap_or(false),
            agents: self.authenticate_agents.unwrap_or(false),
            http_readwrite: self.authenticate_http_readwrite.unwrap_or(false),
            http_readonly: self.authenticate_http_readonly.unwrap_or(false),
        };
        if auth.credentials.is_none() {
            for (key, on) in [
                ("authenticate_frameworks", auth.frameworks),
                ("authenticate_agents", auth.agents),
                ("authenticate_http_readwrite", auth.http_readwrite),
                ("authenticate_http_readonly", auth.http_readonly),
            ] {
                if on {
                    return Err(ConfigError::Invalid {
                        key,
                        message: "is true but `credentials` (the file of principals and \
                                  secrets to check against) is not set"
                            .into(),
                    });
                }
            }
        }
        Ok(auth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_list_every_setting_sorted_with_the_zk_password_masked() {
        let cfg = FileConfig {
            zk: Some("zk://cairn:s3cret@h1:2181/cairn".into()),
            offer_timeout_secs: Some(30.0),
            ..FileConfig::default()
        }
        .resolve()
        .unwrap();
        let flags = cfg.flags();
        let value = |name: &str| {
            flags
                .iter()
                .find(|f| f.name == name)
                .and_then(|f| f.value.clone())
                .unwrap_or_else(|| panic!("no flag {name} in {flags:?}"))
        };
        assert_eq!(value("zk"), "zk://cairn:***@h1:2181/cairn");
        assert_eq!(value("offer_timeout_secs"), "30");
        assert_eq!(value("listen"), "0.0.0.0:5050");
        assert_eq!(value("allocation_interval_secs"), "1");
        assert!(flags.windows(2).all(|w| w[0].name < w[1].name), "{flags:?}");
        assert!(!format!("{flags:?}").contains("s3cret"));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("master.toml");
        std::fs::write(&p, "listen = \"127.0.0.1:1\"\nagent_timeout = 3\n").unwrap();
        let e = FileConfig::load(&p, true).unwrap_err().to_string();
        assert!(e.contains("agent_timeout"), "{e}");
        let e = FileConfig {
            agent_timeout_secs: Some(-1.0),
            ..FileConfig::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("agent_timeout_secs"), "{e}");
        assert!(FileConfig::load(&dir.path().join("none.toml"), false).is_ok());
    }

    #[test]
    fn authentication_needs_credentials_and_bad_files_are_named() {
        let cfg = FileConfig::default().resolve().unwrap();
        assert!(!cfg.auth.any() && cfg.auth.credentials.is_none());
        for key in [
            "authenticate_frameworks",
            "authenticate_agents",
            "authenticate_http_readwrite",
            "authenticate_http_readonly",
        ] {
            let text = format!("{key} = true\n");
            let file: FileConfig = toml::from_str(&text).unwrap();
            let e = file.resolve().unwrap_err().to_string();
            assert!(e.contains(key) && e.contains("`credentials`"), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let creds = dir.path().join("credentials");
        std::fs::write(&creds, "fw s3cret\nbroken\n").unwrap();
        let e = FileConfig {
            credentials: Some(creds.clone()),
            ..FileConfig::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("setting credentials: "), "{e}");
        assert!(
            e.contains(&creds.display().to_string()) && e.contains("line 2"),
            "{e}"
        );
        assert!(!e.contains("s3cret"), "{e}");
        let e = FileConfig {
            credentials: Some(dir.path().join("missing")),
            authenticate_agents: Some(true),
            ..FileConfig::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("setting credentials") && e.contains("missing"),
            "{e}"
        );

        std::fs::write(&creds, "fw s3cret\n").unwrap();
        let cfg = FileConfig {
            credentials: Some(creds.clone()),
            authenticate_frameworks: Some(true),
            authenticate_http_readonly: Some(true),
            ..FileConfig::default()
        }
        .resolve()
        .unwrap();
        assert!(cfg.auth.frameworks && cfg.auth.http_readonly);
        assert!(!cfg.auth.agents && !cfg.auth.http_readwrite);
        let flags = format!("{:?}", cfg.flags());
        assert!(
            flags.contains("authenticate_frameworks") && !flags.contains("s3cret"),
            "{flags}"
        );
    }

    #[test]
    fn tls_needs_both_files_and_bad_ones_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "not PEM\n").unwrap();
        let resolve = |cert: Option<&Path>, key: Option<&Path>| {
            FileConfig {
                tls_cert: cert.map(Path::to_path_buf),
                tls_key: key.map(Path::to_path_buf),
                ..FileConfig::default()
            }
            .resolve()
            .map(|c| c.tls.is_some())
            .map_err(|e| e.to_string())
        };
        assert_eq!(resolve(None, None), Ok(false));
        let e = resolve(Some(&garbage), None).unwrap_err();
        assert!(e.contains("tls_key") && e.contains("without"), "{e}");
        let e = resolve(None, Some(&garbage)).unwrap_err();
        assert!(e.contains("tls_cert") && e.contains("without"), "{e}");
        let e = resolve(Some(&garbage), Some(&garbage)).unwrap_err();
        assert!(e.contains("`tls_cert`") && e.contains("garbage.pem"), "{e}");
        let e = resolve(Some(&dir.path().join("missing.pem")), Some(&garbage)).unwrap_err();
        assert!(e.contains("`tls_cert`") && e.contains("missing.pem"), "{e}");
    }

    #[test]
    fn zk_selects_ha_and_bad_urls_are_named() {
        assert!(FileConfig::default().resolve().unwrap().zk.is_none());
        let cfg = FileConfig {
            zk: Some("zk://h1:2181,h2:2181/cairn".into()),
            zk_session_timeout_secs: Some(2.0),
            ..FileConfig::default()
        }
        .resolve()
        .unwrap();
        let zk = cfg.zk.unwrap();
        assert_eq!(zk.url.path, "/cairn");
        assert_eq!(zk.session_timeout, Duration::from_secs(2));
        let e = FileConfig {
            zk: Some("http://h1/cairn".into()),
            ..FileConfig::default()
        }
        .resolve()
        .unwrap_err()
        .to_string();
        assert!(e.contains("setting zk"), "{e}");
    }
}
