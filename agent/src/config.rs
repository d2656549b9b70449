//! The agent's configuration: `/etc/cairn/agent.toml` (or `--config`), overridden by `CAIRN_*`
//! environment variables, overridden by flags. Loading has no side effects (no directory is
//! made, no port bound): [`AgentArgs::load`] merges and validates, and every error names the
//! setting at fault.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_api::Resources;
use cairn_isolators::disk::DiskConfig;
use cairn_oci::registry::RegistryConfig;
use serde::Deserialize;

/// Default config file.
pub const DEFAULT_CONFIG: &str = "/etc/cairn/agent.toml";

/// The daemon's settings as flags and `CAIRN_*` variables; each also reads from the config
/// file under the same name (`work_dir = "..."`). Flags win over variables, variables over the
/// file, the file over the defaults shown.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AgentArgs {
    /// Config file (TOML) [default: /etc/cairn/agent.toml; a missing default file is fine].
    #[arg(long, env = "CAIRN_CONFIG")]
    pub config: Option<PathBuf>,
    /// Directory for the agent's state, images and sandboxes [default: /var/lib/cairn/agent].
    #[arg(long, env = "CAIRN_WORK_DIR")]
    pub work_dir: Option<PathBuf>,
    /// The master: `host:port[,host:port...]` (tried in turn; `https://host:port` for a master
    /// serving TLS), or a `zk://[user:password@]host:port[,...]/path` URL to follow the master
    /// elected in ZooKeeper [default: 127.0.0.1:5050].
    #[arg(long, env = "CAIRN_MASTER")]
    pub master: Option<String>,
    /// The masters serve HTTPS (for a `zk://` master, whose znodes carry no scheme; implied by
    /// `https://` addresses) [default: false].
    #[arg(long, env = "CAIRN_MASTER_TLS", num_args = 0..=1, default_missing_value = "true")]
    pub master_tls: Option<bool>,
    /// CA certificates (PEM bundle) to trust for the master's HTTPS certificate
    /// [default: the webpki roots].
    #[arg(long, env = "CAIRN_MASTER_CA")]
    pub master_ca: Option<PathBuf>,
    /// Isolators, comma-separated [default: cgroups/cpu,cgroups/mem,cgroups/pids].
    #[arg(long, env = "CAIRN_ISOLATION", value_delimiter = ',')]
    pub isolation: Option<Vec<String>>,
    /// Parent cgroup of containers; relative to the agent's own cgroup unless absolute
    /// [default: cairn].
    #[arg(long, env = "CAIRN_CGROUP_PARENT")]
    pub cgroup_parent: Option<String>,
    /// Resources to offer instead of the measured ones, Mesos text form
    /// (`cpus:4;mem:2048;disk:10000;ports:[31000-32000]`); unnamed ones stay measured
    /// [default: none].
    #[arg(long, env = "CAIRN_RESOURCES")]
    pub resources: Option<String>,
    /// Agent attributes, `name:value;name:value` (`rack:r1;zone:a`) [default: none].
    #[arg(long, env = "CAIRN_ATTRIBUTES")]
    pub attributes: Option<String>,
    /// Held back for the system, Mesos text form (`cpus:0.5;mem:1024;disk:5120`, MB) [default:
    /// mem 1 GiB and disk 5 GiB, half of each on small nodes; no cpus].
    #[arg(long, env = "CAIRN_RESERVATIONS")]
    pub reservations: Option<String>,
    /// Address the agent's HTTP API listens on [default: 0.0.0.0].
    #[arg(long, env = "CAIRN_LISTEN_IP")]
    pub listen_ip: Option<IpAddr>,
    /// Port of the agent's HTTP API [default: 5051].
    #[arg(long, env = "CAIRN_PORT")]
    pub port: Option<u16>,
    /// Hostname reported to the master [default: the kernel's hostname].
    #[arg(long, env = "CAIRN_HOSTNAME")]
    pub hostname: Option<String>,
    /// TLS certificate chain (PEM) for the HTTP API, which then serves HTTPS only; with
    /// --tls-key [default: none].
    #[arg(long, env = "CAIRN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); with --tls-cert [default: none].
    #[arg(long, env = "CAIRN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Credential file for authenticating to the master: one line `principal secret`, sent
    /// as HTTP Basic authentication on every request to the master (needed when the master
    /// sets `authenticate_agents`) [default: none].
    #[arg(long, env = "CAIRN_CREDENTIAL")]
    pub credential: Option<PathBuf>,
    /// On SIGTERM, kill every task gracefully before exiting; otherwise (the default, for
    /// upgrades) tasks keep running and the next agent re-adopts them [default: false].
    #[arg(long, env = "CAIRN_DRAIN_ON_SIGTERM", num_args = 0..=1, default_missing_value = "true")]
    pub drain_on_sigterm: Option<bool>,
    /// Seconds between heartbeats to the master (the master's own interval wins when
    /// shorter) [default: 15].
    #[arg(long, env = "CAIRN_HEARTBEAT_INTERVAL")]
    pub heartbeat_interval: Option<f64>,
    /// First delay, in seconds, before retrying (re)registration; doubles up to 60 s
    /// [default: 1].
    #[arg(long, env = "CAIRN_REGISTRATION_BACKOFF")]
    pub registration_backoff: Option<f64>,
    /// Seconds between capacity re-measurements (a change is sent to the master)
    /// [default: 60].
    #[arg(long, env = "CAIRN_RESOURCE_INTERVAL")]
    pub resource_interval: Option<f64>,
    /// Seconds between SIGTERM and SIGKILL when killing a task without a kill policy
    /// [default: 5].
    #[arg(long, env = "CAIRN_KILL_GRACE")]
    pub kill_grace: Option<f64>,
    /// First delay, in seconds, before resending an unacknowledged status update; doubles up
    /// to 10 minutes [default: 10].
    #[arg(long, env = "CAIRN_STATUS_UPDATE_RETRY")]
    pub status_update_retry: Option<f64>,
    /// `disk/du` and `disk/quota`: seconds between disk checks (`du` walks; quota reads when
    /// killing on exceed); file key `isolators.disk.watch_interval_secs` [default: 15].
    #[arg(long, env = "CAIRN_DISK_WATCH_INTERVAL")]
    pub disk_watch_interval: Option<u64>,
    /// `disk/du`: at most this many sandbox walks at once; file key
    /// `isolators.disk.du_max_concurrent_walks` [default: 2].
    #[arg(long, env = "CAIRN_DISK_DU_MAX_CONCURRENT_WALKS")]
    pub disk_du_max_concurrent_walks: Option<usize>,
    /// `disk/quota`: project ids Cairn may assign, `MIN-MAX`; file keys
    /// `isolators.disk.project_id_min` and `project_id_max` [default: 5000-10000].
    #[arg(long, env = "CAIRN_DISK_PROJECT_IDS")]
    pub disk_project_ids: Option<String>,
    /// `disk/quota`: also kill a container whose usage reaches its limit (writes beyond it
    /// fail either way); file key `isolators.disk.quota_kill_on_exceed` [default: false].
    #[arg(long, env = "CAIRN_DISK_QUOTA_KILL_ON_EXCEED", num_args = 0..=1, default_missing_value = "true")]
    pub disk_quota_kill_on_exceed: Option<bool>,
    /// Pull images that are not in the agent's store from their registries; `false` runs
    /// only images already there (imported) [default: true].
    #[arg(long, env = "CAIRN_IMAGE_PULLS", num_args = 0..=1, default_missing_value = "true")]
    pub image_pulls: Option<bool>,
    /// Registries (`host` or `host:port`, as in image references) reached over plain HTTP,
    /// comma-separated [default: none].
    #[arg(long, env = "CAIRN_INSECURE_REGISTRIES", value_delimiter = ',')]
    pub insecure_registries: Option<Vec<String>>,
    /// Docker `config.json` with registry credentials (`auths`) [default: none].
    #[arg(long, env = "CAIRN_DOCKER_CONFIG")]
    pub docker_config: Option<PathBuf>,
}

/// The config file: the same names as the flags, in snake case. Unknown keys are errors.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    work_dir: Option<PathBuf>,
    master: Option<String>,
    master_tls: Option<bool>,
    master_ca: Option<PathBuf>,
    isolation: Option<Vec<String>>,
    cgroup_parent: Option<String>,
    resources: Option<String>,
    attributes: Option<String>,
    reservations: Option<String>,
    listen_ip: Option<IpAddr>,
    port: Option<u16>,
    hostname: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    credential: Option<PathBuf>,
    drain_on_sigterm: Option<bool>,
    heartbeat_interval: Option<f64>,
    registration_backoff: Option<f64>,
    resource_interval: Option<f64>,
    kill_grace: Option<f64>,
    status_update_retry: Option<f64>,
    image_pulls: Option<bool>,
    insecure_registries: Option<Vec<String>>,
    docker_config: Option<PathBuf>,
    isolators: Option<IsolatorsFile>,
}

/// `[isolators]` in the config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct IsolatorsFile {
    disk: Option<DiskFile>,
}

/// `[isolators.disk]` in the config file: [`DiskConfig`]'s fields, each optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DiskFile {
    watch_interval_secs: Option<u64>,
    du_max_concurrent_walks: Option<usize>,
    project_id_min: Option<u32>,
    project_id_max: Option<u32>,
    quota_kill_on_exceed: Option<bool>,
}

/// Where the master is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MasterAddress {
    /// Static `host:port` addresses, tried in turn.
    Static(Vec<String>),
    /// A ZooKeeper URL (`zk://host:port[,host:port]/path`, checked): the agent follows the
    /// master elected there.
    ZooKeeper(String),
}

/// How the agent reaches a master that serves HTTPS.
#[derive(Debug, Clone, Default)]
pub struct MasterTls {
    /// The roots to trust (`master_ca`); empty: the webpki roots.
    pub ca: Vec<cairn_tls::CertificateDer<'static>>,
}

/// The validated configuration.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub work_dir: PathBuf,
    pub master: MasterAddress,
    /// HTTPS to the master, and what to trust; `None`: plain HTTP.
    pub master_tls: Option<MasterTls>,
    pub isolation: Vec<String>,
    pub cgroup_parent: String,
    pub resources: Option<Resources>,
    pub attributes: Vec<(String, String)>,
    pub reservations: Option<Resources>,
    pub listen_ip: IpAddr,
    pub port: u16,
    pub hostname: Option<String>,
    pub tls: Option<(PathBuf, PathBuf)>,
    pub credential: Option<(String, String)>,
    pub drain_on_sigterm: bool,
    pub heartbeat_interval: Duration,
    pub registration_backoff: Duration,
    pub resource_interval: Duration,
    pub kill_grace: Duration,
    pub status_update_retry: Duration,
    /// The `disk/du` and `disk/quota` knobs, handed to the containerizer.
    pub disk: DiskConfig,
    /// How images missing from the store are pulled; `None` when pulls are off.
    pub registry: Option<RegistryConfig>,
}

/// A bad setting, named.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {path}: {message}")]
    File { path: PathBuf, message: String },
    #[error("invalid setting `{key}`: {message}")]
    Invalid { key: &'static str, message: String },
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

fn seconds(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    if !(v.is_finite() && v >= 0.0) {
        return Err(invalid(key, format!("{v} is not a number of seconds >= 0")));
    }
    Ok(Duration::from_secs_f64(v))
}

fn positive_seconds(key: &'static str, v: f64) -> Result<Duration, ConfigError> {
    let d = seconds(key, v)?;
    if d.is_zero() {
        return Err(invalid(key, "must be more than 0"));
    }
    Ok(d)
}

fn readable(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    std::fs::metadata(path)
        .map(|_| ())
        .map_err(|e| invalid(key, format!("{}: {e}", path.display())))
}

/// Image pulls: flags over the file over the defaults (pulls on, HTTPS only, anonymous).
fn registry_config(a: &AgentArgs, f: &FileConfig) -> Result<Option<RegistryConfig>, ConfigError> {
    if !a.image_pulls.or(f.image_pulls).unwrap_or(true) {
        return Ok(None);
    }
    let insecure = a
        .insecure_registries
        .clone()
        .or_else(|| f.insecure_registries.clone())
        .unwrap_or_default();
    if let Some(bad) = insecure
        .iter()
        .find(|r| r.is_empty() || r.contains('/') || r.contains("://"))
    {
        return Err(invalid(
            "insecure_registries",
            format!("{bad:?} is not a registry host or host:port"),
        ));
    }
    let mut config = RegistryConfig {
        insecure,
        ..RegistryConfig::default()
    };
    if let Some(path) = a.docker_config.clone().or_else(|| f.docker_config.clone()) {
        config = config
            .with_docker_config(&path)
            .map_err(|e| invalid("docker_config", e.to_string()))?;
    }
    Ok(Some(config))
}

/// Parses `zk://...` or `host:port[,host:port]`.
/// The master's address, and whether its static addresses say `https://` (all or none may).
fn parse_master(text: &str) -> Result<(MasterAddress, bool), ConfigError> {
    let text = text.trim();
    if text.starts_with("zk://") {
        text.parse::<cairn_zk::ZkUrl>()
            .map_err(|e| invalid("master", e.to_string()))?;
        return Ok((MasterAddress::ZooKeeper(text.to_string()), false));
    }
    let mut out = Vec::new();
    let mut schemes = std::collections::BTreeSet::new();
    for part in text.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (https, part) = if let Some(rest) = part.strip_prefix("https://") {
            (true, rest.trim_end_matches('/'))
        } else if let Some(rest) = part.strip_prefix("http://") {
            (false, rest.trim_end_matches('/'))
        } else {
            (false, part)
        };
        schemes.insert(https);
        let ok = part
            .rsplit_once(':')
            .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
        if !ok {
            return Err(invalid(
                "master",
                format!("{part:?} is not host:port or a zk:// URL"),
            ));
        }
        out.push(part.to_string());
    }
    if out.is_empty() {
        return Err(invalid("master", "empty"));
    }
    if schemes.len() > 1 {
        return Err(invalid("master", "mixes http:// and https:// addresses"));
    }
    Ok((MasterAddress::Static(out), schemes.contains(&true)))
}

/// `MIN-MAX` project ids.
fn parse_project_ids(text: &str) -> Result<(u32, u32), ConfigError> {
    let key = "disk_project_ids";
    let (min, max) = text
        .split_once('-')
        .ok_or_else(|| invalid(key, format!("{text:?} is not MIN-MAX")))?;
    let id = |t: &str| {
        t.trim()
            .parse::<u32>()
            .map_err(|e| invalid(key, format!("{t:?}: {e}")))
    };
    Ok((id(min)?, id(max)?))
}

/// The disk isolators' settings: flags over `[isolators.disk]` over [`DiskConfig::default`].
fn disk_config(a: &AgentArgs, f: Option<DiskFile>) -> Result<DiskConfig, ConfigError> {
    let f = f.unwrap_or_default();
    let default = DiskConfig::default();
    let (flag_min, flag_max) = match &a.disk_project_ids {
        Some(text) => {
            let (min, max) = parse_project_ids(text)?;
            (Some(min), Some(max))
        }
        None => (None, None),
    };
    let disk = DiskConfig {
        watch_interval_secs: a
            .disk_watch_interval
            .or(f.watch_interval_secs)
            .unwrap_or(default.watch_interval_secs),
        du_max_concurrent_walks: a
            .disk_du_max_concurrent_walks
            .or(f.du_max_concurrent_walks)
            .unwrap_or(default.du_max_concurrent_walks),
        project_id_min: flag_min
            .or(f.project_id_min)
            .unwrap_or(default.project_id_min),
        project_id_max: flag_max
            .or(f.project_id_max)
            .unwrap_or(default.project_id_max),
        quota_kill_on_exceed: a
            .disk_quota_kill_on_exceed
            .or(f.quota_kill_on_exceed)
            .unwrap_or(default.quota_kill_on_exceed),
    };
    if disk.watch_interval_secs == 0 {
        return Err(invalid(
            "isolators.disk.watch_interval_secs",
            "must be at least 1",
        ));
    }
    if disk.du_max_concurrent_walks == 0 {
        return Err(invalid(
            "isolators.disk.du_max_concurrent_walks",
            "must be at least 1",
        ));
    }
    if disk.project_id_min == 0 || disk.project_id_min > disk.project_id_max {
        return Err(invalid(
            "isolators.disk.project_id_min",
            format!(
                "project ids {}-{} must be a non-empty range above 0",
                disk.project_id_min, disk.project_id_max
            ),
        ));
    }
    Ok(disk)
}

fn parse_attributes(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    text.split(';')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|e| match e.split_once(':') {
            Some((n, v)) if !n.trim().is_empty() => Ok((n.trim().into(), v.trim().into())),
            _ => Err(invalid("attributes", format!("{e:?} is not name:value"))),
        })
        .collect()
}

/// A TOML error's message, prefixed with the key of the line it points at when the message
/// does not name it (type errors: `invalid type: string "x", expected u16`).
fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let message = e.message().trim().to_string();
    let key = e.span().and_then(|span| {
        let start = text[..span.start.min(text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let line = text[start..].lines().next()?;
        let (key, _) = line.split_once('=')?;
        Some(key.trim().trim_matches('"').to_string())
    });
    match key {
        Some(k) if !k.is_empty() && !message.contains(&k) => format!("`{k}`: {message}"),
        _ => message,
    }
}

impl AgentArgs {
    /// Reads the config file and merges it under these flags, then validates.
    ///
    /// # Errors
    /// An unreadable or malformed file, an unknown key, or an invalid value, naming it.
    pub fn load(&self) -> Result<AgentConfig, ConfigError> {
        let path = self
            .config
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_CONFIG));
        let file = match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str::<FileConfig>(&text).map_err(|e| ConfigError::File {
                path: path.clone(),
                message: toml_message(&text, &e),
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && self.config.is_none() => {
                FileConfig::default()
            }
            Err(e) => {
                return Err(ConfigError::File {
                    path,
                    message: e.to_string(),
                })
            }
        };
        self.merge(file)
    }

    fn merge(&self, f: FileConfig) -> Result<AgentConfig, ConfigError> {
        let a = self.clone();
        let registry = registry_config(&a, &f)?;
        let disk = disk_config(&a, f.isolators.and_then(|i| i.disk))?;
        let work_dir = a
            .work_dir
            .or(f.work_dir)
            .unwrap_or_else(|| PathBuf::from("/var/lib/cairn/agent"));
        if !work_dir.is_absolute() {
            return Err(invalid("work_dir", "must be an absolute path"));
        }
        let (master, https) =
            parse_master(a.master.or(f.master).as_deref().unwrap_or("127.0.0.1:5050"))?;
        let master_tls = match (
            https || a.master_tls.or(f.master_tls).unwrap_or(false),
            a.master_ca.or(f.master_ca),
        ) {
            (false, None) => None,
            (false, Some(_)) => {
                return Err(invalid(
                    "master_ca",
                    "is set but the master is reached over plain HTTP (give https:// master \
                     addresses, or master_tls = true with a zk:// master)",
                ))
            }
            (true, ca) => Some(MasterTls {
                ca: match ca {
                    Some(path) => {
                        cairn_tls::ca_bundle("master_ca", &path).map_err(|e| match e {
                            cairn_tls::TlsError::Ca { path, message, .. } => {
                                invalid("master_ca", format!("{}: {message}", path.display()))
                            }
                            other => invalid("master_ca", other.to_string()),
                        })?
                    }
                    None => Vec::new(),
                },
            }),
        };
        let isolation = a.isolation.or(f.isolation).unwrap_or_else(|| {
            ["cgroups/cpu", "cgroups/mem", "cgroups/pids"]
                .map(String::from)
                .to_vec()
        });
        for name in &isolation {
            if !cairn_isolators::registry::known().contains(&name.as_str()) {
                return Err(invalid("isolation", format!("unknown isolator {name:?}")));
            }
        }
        let cgroup_parent = a
            .cgroup_parent
            .or(f.cgroup_parent)
            .unwrap_or_else(|| "cairn".into());
        if cgroup_parent.is_empty() || cgroup_parent.split('/').any(|c| c == "..") {
            return Err(invalid(
                "cgroup_parent",
                "must be a non-empty path without '..'",
            ));
        }
        let parse_res = |key, text: Option<String>| {
            text.map(|t| Resources::parse(&t).map_err(|e| invalid(key, e.to_string())))
                .transpose()
        };
        let resources = parse_res("resources", a.resources.or(f.resources))?;
        let reservations = parse_res("reservations", a.reservations.or(f.reservations))?;
        let attributes = parse_attributes(&a.attributes.or(f.attributes).unwrap_or_default())?;
        let tls = match (a.tls_cert.or(f.tls_cert), a.tls_key.or(f.tls_key)) {
            (None, None) => None,
            (Some(c), Some(k)) => {
                readable("tls_cert", &c)?;
                readable("tls_key", &k)?;
                Some((c, k))
            }
            (Some(_), None) => return Err(invalid("tls_key", "tls_cert is set without tls_key")),
            (None, Some(_)) => return Err(invalid("tls_cert", "tls_key is set without tls_cert")),
        };
        let credential = match a.credential.or(f.credential) {
            None => None,
            Some(path) => {
                let text = std::fs::read_to_string(&path)
                    .map_err(|e| invalid("credential", format!("{}: {e}", path.display())))?;
                let mut words = text.split_whitespace();
                match (words.next(), words.next(), words.next()) {
                    (Some(p), Some(s), None) => Some((p.to_string(), s.to_string())),
                    _ => {
                        return Err(invalid(
                            "credential",
                            format!("{} must hold `principal secret`", path.display()),
                        ))
                    }
                }
            }
        };
        let hostname = a.hostname.or(f.hostname);
        if hostname.as_deref().is_some_and(str::is_empty) {
            return Err(invalid("hostname", "empty"));
        }
        Ok(AgentConfig {
            work_dir,
            master,
            master_tls,
            isolation,
            cgroup_parent,
            resources,
            attributes,
            reservations,
            listen_ip: a
                .listen_ip
                .or(f.listen_ip)
                .unwrap_or(IpAddr::from([0, 0, 0, 0])),
            port: a.port.or(f.port).unwrap_or(5051),
            hostname,
            tls,
            credential,
            drain_on_sigterm: a.drain_on_sigterm.or(f.drain_on_sigterm).unwrap_or(false),
            heartbeat_interval: positive_seconds(
                "heartbeat_interval",
                a.heartbeat_interval
                    .or(f.heartbeat_interval)
                    .unwrap_or(15.0),
            )?,
            registration_backoff: positive_seconds(
                "registration_backoff",
                a.registration_backoff
                    .or(f.registration_backoff)
                    .unwrap_or(1.0),
            )?,
            resource_interval: positive_seconds(
                "resource_interval",
                a.resource_interval.or(f.resource_interval).unwrap_or(60.0),
            )?,
            kill_grace: seconds("kill_grace", a.kill_grace.or(f.kill_grace).unwrap_or(5.0))?,
            status_update_retry: positive_seconds(
                "status_update_retry",
                a.status_update_retry
                    .or(f.status_update_retry)
                    .unwrap_or(10.0),
            )?,
            disk,
            registry,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml_text: &str, args: AgentArgs) -> Result<AgentConfig, ConfigError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agent.toml");
        std::fs::write(&path, toml_text).unwrap();
        AgentArgs {
            config: Some(path),
            ..args
        }
        .load()
    }

    #[test]
    fn file_then_flags_then_defaults() {
        let c = load(
            "work_dir = \"/w\"\nport = 6000\nmaster = \"m1:5050, m2:5050\"\n",
            AgentArgs {
                port: Some(7000),
                ..AgentArgs::default()
            },
        )
        .unwrap();
        assert_eq!(c.work_dir, PathBuf::from("/w"));
        assert_eq!(c.port, 7000);
        assert_eq!(
            c.master,
            MasterAddress::Static(vec!["m1:5050".into(), "m2:5050".into()])
        );
        assert!(!c.drain_on_sigterm);
        assert_eq!(c.heartbeat_interval, Duration::from_secs(15));
        let zk = load("master = \"zk://z1:2181/cairn\"", AgentArgs::default()).unwrap();
        assert_eq!(
            zk.master,
            MasterAddress::ZooKeeper("zk://z1:2181/cairn".into())
        );
    }

    #[test]
    fn disk_settings_from_the_file_and_flags() {
        let c = load("", AgentArgs::default()).unwrap();
        assert_eq!(c.disk, DiskConfig::default());
        let c = load(
            "[isolators.disk]\nwatch_interval_secs = 2\nproject_id_min = 100\n\
             project_id_max = 200\nquota_kill_on_exceed = true\n",
            AgentArgs {
                disk_du_max_concurrent_walks: Some(4),
                disk_project_ids: Some("300-400".into()),
                ..AgentArgs::default()
            },
        )
        .unwrap();
        assert_eq!(
            c.disk,
            DiskConfig {
                watch_interval_secs: 2,
                du_max_concurrent_walks: 4,
                project_id_min: 300,
                project_id_max: 400,
                quota_kill_on_exceed: true,
            }
        );
        for (text, key) in [
            (
                "[isolators.disk]\nwatch_interval_secs = 0",
                "watch_interval_secs",
            ),
            ("[isolators.disk]\nwatch_interval = 3", "watch_interval"),
            (
                "[isolators.disk]\nproject_id_min = 9\nproject_id_max = 8",
                "project_id_min",
            ),
            (
                "[isolators.disk]\ndu_max_concurrent_walks = 0",
                "du_max_concurrent_walks",
            ),
            ("[isolators.net]\n", "net"),
        ] {
            let e = load(text, AgentArgs::default()).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
        let e = load(
            "",
            AgentArgs {
                disk_project_ids: Some("5000".into()),
                ..AgentArgs::default()
            },
        )
        .unwrap_err();
        assert!(e.to_string().contains("disk_project_ids"), "{e}");
    }

    #[test]
    fn https_masters_and_the_master_ca() {
        let c = load(
            "master = \"https://m1:5050,https://m2:5050/\"",
            AgentArgs::default(),
        )
        .unwrap();
        assert_eq!(
            c.master,
            MasterAddress::Static(vec!["m1:5050".into(), "m2:5050".into()])
        );
        assert!(c.master_tls.is_some_and(|t| t.ca.is_empty()));
        let c = load("master = \"http://m1:5050\"", AgentArgs::default()).unwrap();
        assert!(c.master_tls.is_none());
        let c = load(
            "master = \"zk://z1:2181/cairn\"\nmaster_tls = true",
            AgentArgs::default(),
        )
        .unwrap();
        assert!(c.master_tls.is_some());
        let e = load("master = \"https://m1:5050,m2:5050\"", AgentArgs::default()).unwrap_err();
        assert!(e.to_string().contains("mixes http:// and https://"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let garbage = dir.path().join("ca.pem");
        std::fs::write(&garbage, "not PEM\n").unwrap();
        let text = format!("master = \"m1:5050\"\nmaster_ca = {garbage:?}");
        let e = load(&text, AgentArgs::default()).unwrap_err().to_string();
        assert!(e.contains("master_ca") && e.contains("plain HTTP"), "{e}");
        let text = format!("master = \"https://m1:5050\"\nmaster_ca = {garbage:?}");
        let e = load(&text, AgentArgs::default()).unwrap_err().to_string();
        assert_eq!(
            e,
            format!(
                "invalid setting `master_ca`: {}: no PEM certificate in the file",
                garbage.display()
            )
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = load("wrok_dir = \"/w\"", AgentArgs::default()).unwrap_err();
        assert!(e.to_string().contains("wrok_dir"), "{e}");
        let e = load("port = \"x\"", AgentArgs::default()).unwrap_err();
        assert!(e.to_string().contains("port"), "{e}");
        for (text, key) in [
            ("master = \"nohost\"", "master"),
            ("master = \"zk://z1:2181\"", "master"),
            ("isolation = [\"cgroups/bogus\"]", "isolation"),
            ("resources = \"cpus:x\"", "resources"),
            ("heartbeat_interval = 0.0", "heartbeat_interval"),
            ("tls_cert = \"/nonexistent\"", "tls_key"),
            ("credential = \"/nonexistent\"", "credential"),
        ] {
            let e = load(text, AgentArgs::default()).unwrap_err();
            assert!(e.to_string().contains(key), "{text}: {e}");
        }
    }
}
