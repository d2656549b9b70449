//! The master's registry: what must survive a master restart or failover. Admitted agents
//! (so a restarted agent is recognised), unreachable and gone agents, role weights and quotas.
//! Like Mesos's registrar, it holds no tasks: those are rebuilt from agents' re-registrations.
//!
//! In standalone mode the registry lives in one JSON file written atomically
//! ([`crate::durable`]); with ZooKeeper (issue 7) it lives in fenced znodes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use cairn_api::AgentId;
use serde::{Deserialize, Serialize};

use crate::durable;

/// The on-disk format version this build writes and reads.
pub const REGISTRY_VERSION: u32 = 1;

/// Everything the registry holds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Registry {
    /// Format version; a newer version than [`REGISTRY_VERSION`] is refused, not guessed at.
    pub version: u32,
    /// Agents admitted to the cluster, by id.
    pub agents: BTreeMap<String, AdmittedAgent>,
    /// Agents marked unreachable, with the time (seconds since the epoch) they were marked.
    pub unreachable: BTreeMap<String, f64>,
    /// Agents marked gone by an operator; they may never re-register.
    pub gone: BTreeMap<String, f64>,
    /// Role weights for weighted DRF (absent = 1.0).
    pub weights: BTreeMap<String, f64>,
    /// Role quotas in Mesos's `--resources` text form, guarantee and limit.
    pub quotas: BTreeMap<String, Quota>,
}

/// An agent the master admitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AdmittedAgent {
    pub id: AgentId,
    pub hostname: String,
    /// `host:port` of the agent's HTTP API.
    pub address: String,
}

/// A role's quota: resources guaranteed and the most it may be allocated.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quota {
    pub guarantee: String,
    pub limit: String,
}

/// Why the registry could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("registry {path} is corrupt: {source} (restore it from a backup, or move it aside to start with an empty registry)")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("registry {path} has format version {found}; this cairn-master reads up to {REGISTRY_VERSION} (upgrade cairn-master)")]
    TooNew { path: PathBuf, found: u32 },
}

/// Where the master writes its registry after each change: the file ([`FileRegistry`],
/// standalone) or ZooKeeper (the fenced [`crate::zk_registry::ZkRegistry`], through
/// [`crate::leadership::ZkStore`]). A failed write is the store's to log and count; the
/// master's in-memory state stays authoritative until the next successful write.
pub trait RegistryStore: std::fmt::Debug + Send {
    /// Stores (or queues for storing) `registry`.
    fn store(&self, registry: &Registry);
}

impl RegistryStore for FileRegistry {
    fn store(&self, registry: &Registry) {
        if let Err(e) = self.save(registry) {
            tracing::error!("cannot save the registry: {e}");
        }
    }
}

/// The standalone registry: one JSON file, replaced atomically on every change.
#[derive(Debug)]
pub struct FileRegistry {
    path: PathBuf,
}

impl FileRegistry {
    /// Opens (or starts) the registry at `path`, creating its directory, removing temp files
    /// a crash left, and returning what was stored (empty when the file does not exist yet).
    ///
    /// # Errors
    /// An unreadable, corrupt or too-new file. The master refuses to start rather than forget
    /// admitted agents.
    pub fn open(path: &Path) -> Result<(Self, Registry), RegistryError> {
        let io_err = |source| RegistryError::Io {
            path: path.to_path_buf(),
            source,
        };
        let dir = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(io_err)?;
        durable::remove_stale_temps(dir).map_err(io_err)?;
        let registry = match std::fs::read(path) {
            Ok(bytes) => {
                let registry: Registry =
                    serde_json::from_slice(&bytes).map_err(|source| RegistryError::Corrupt {
                        path: path.to_path_buf(),
                        source,
                    })?;
                if registry.version > REGISTRY_VERSION {
                    return Err(RegistryError::TooNew {
                        path: path.to_path_buf(),
                        found: registry.version,
                    });
                }
                registry
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Registry {
                version: REGISTRY_VERSION,
                ..Registry::default()
            },
            Err(e) => return Err(io_err(e)),
        };
        Ok((
            Self {
                path: path.to_path_buf(),
            },
            registry,
        ))
    }

    /// Stores `registry`, replacing the previous content atomically and durably.
    ///
    /// # Errors
    /// Any I/O failure; the previous content is then still in place.
    pub fn save(&self, registry: &Registry) -> Result<(), RegistryError> {
        let mut bytes = serde_json::to_vec_pretty(registry)
            .expect("a registry of strings and numbers always serialises");
        bytes.push(b'\n');
        durable::write_atomic(&self.path, &bytes).map_err(|source| RegistryError::Io {
            path: self.path.clone(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Registry {
        let mut r = Registry {
            version: REGISTRY_VERSION,
            ..Registry::default()
        };
        r.agents.insert(
            "a1".into(),
            AdmittedAgent {
                id: AgentId::new("a1"),
                hostname: "node1".into(),
                address: "10.0.0.1:5051".into(),
            },
        );
        r.weights.insert("analytics".into(), 3.0);
        r.quotas.insert(
            "web".into(),
            Quota {
                guarantee: "cpus:2".into(),
                limit: "cpus:4".into(),
            },
        );
        r
    }

    #[test]
    fn survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master/registry.json");
        let (store, empty) = FileRegistry::open(&path).unwrap();
        assert!(empty.agents.is_empty());
        store.save(&sample()).unwrap();
        drop(store);
        let (_, back) = FileRegistry::open(&path).unwrap();
        assert_eq!(back, sample());
    }

    #[test]
    fn corrupt_and_too_new_files_are_refused_with_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        std::fs::write(&path, b"{\"version\": 1, \"agents\": ").unwrap();
        let err = FileRegistry::open(&path).unwrap_err().to_string();
        assert!(
            err.contains("corrupt") && err.contains("registry.json"),
            "{err}"
        );
        std::fs::write(&path, b"{\"version\": 99}").unwrap();
        let err = FileRegistry::open(&path).unwrap_err().to_string();
        assert!(err.contains("version 99"), "{err}");
    }
}
