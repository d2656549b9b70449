//! The master's registry: what must survive a master restart or failover. Admitted agents
//! (so a restarted agent is recognised), unreachable and gone agents, role weights and quotas.
//! Like Mesos's registrar, it holds no tasks: those are rebuilt from agents' re-registrations.
//!
//! In standalone mode the registry lives in one JSON file written atomically
//! ([`crate::durable`]); with ZooKeeper (issue 7) it lives in fenced znodes.

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_api::AgentId;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

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

/// Where the master writes its registry after each change: a [`Registrar`] saving to the
/// file ([`FileRegistry`], standalone) or to ZooKeeper (the fenced
/// [`crate::zk_registry::ZkRegistry`], through [`crate::leadership::ZkStore`]).
pub trait RegistryStore: std::fmt::Debug + Send {
    /// Marks `registry` changed: it will be saved by the writer's next round.
    fn store(&self, registry: &Registry);

    /// A ticket that resolves once every change marked so far is durably stored (or its save
    /// failed). Taken under the master's lock, awaited after releasing it.
    fn saved(&self) -> SaveTicket;
}

/// What a registry writer has done so far, in change generations.
#[derive(Debug, Clone, Default)]
struct Outcome {
    /// Every change up to this generation is durably stored.
    saved: u64,
    /// The last failed save covered changes up to this generation...
    failed: u64,
    /// ...and failed with this...
    error: String,
    /// ...in this attempt (attempts count every save, from 1).
    attempt: u64,
}

/// Why a registry change could not be confirmed as stored.
#[derive(Debug, Clone, thiserror::Error)]
#[error("the registry change was not stored: {0}")]
pub struct StoreError(pub String);

/// Resolves when the registry changes made before it was taken are stored
/// ([`RegistryStore::saved`]).
#[derive(Debug)]
pub struct SaveTicket {
    generation: u64,
    /// Only saves attempted after the ticket was taken can fail it: a change waiting behind
    /// an earlier failure waits for the retry.
    after_attempt: u64,
    outcome: Option<watch::Receiver<Outcome>>,
}

impl SaveTicket {
    /// A ticket with nothing to wait for (a master without a store).
    pub fn done() -> Self {
        Self {
            generation: 0,
            after_attempt: 0,
            outcome: None,
        }
    }

    /// Waits for the save covering this ticket's changes.
    ///
    /// # Errors
    /// The save failed (a fenced write: this master no longer leads; an I/O error), or the
    /// writer stopped before saving it (the leadership term ended).
    pub async fn wait(self) -> Result<(), StoreError> {
        let Some(mut rx) = self.outcome else {
            return Ok(());
        };
        loop {
            {
                let o = rx.borrow_and_update();
                if o.saved >= self.generation {
                    return Ok(());
                }
                if o.failed >= self.generation && o.attempt > self.after_attempt {
                    return Err(StoreError(o.error.clone()));
                }
            }
            if rx.changed().await.is_err() {
                return Err(StoreError(
                    "the registry writer stopped (this master no longer leads)".into(),
                ));
            }
        }
    }
}

/// Group commit of registry changes. A change costs a counter bump under the master's lock
/// (no copy of the registry: with 10,000 agents re-registering after a failover, a copy per
/// change held the lock long enough to starve the runtime). A background writer takes one
/// snapshot of the registry with the generation it covers, saves it off the lock, and
/// publishes the outcome; every change made before the snapshot is answered by that one
/// save, changes made meanwhile by the next round. A failed save is retried (after
/// [`RETRY_AFTER_FAILURE`]) until one succeeds.
#[derive(Debug)]
pub struct Registrar {
    /// The generation of the newest change; bumped under the master's lock.
    requested: Arc<AtomicU64>,
    wake: watch::Sender<u64>,
    outcome: watch::Receiver<Outcome>,
}

/// Takes a snapshot of the master's registry under its lock, with the generation of changes
/// it covers (read from the counter passed in, under the same lock); `None` ends the writer
/// (the master it belongs to is gone).
pub type Snapshot = Box<dyn FnMut(&AtomicU64) -> Option<(u64, Registry)> + Send>;

/// Saves one snapshot; the error text is what waiting clients are told.
pub type Save = Box<dyn FnMut(Registry) -> BoxFuture<Result<(), String>> + Send>;

/// How long the writer waits before retrying a failed save.
pub const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(1);

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl Registrar {
    /// Starts the writer. After each save it pauses at least `min_gap` (changes made
    /// meanwhile coalesce into the next save). It ends when the registrar is dropped (with
    /// its master) or `snapshot` returns `None`; tickets still waiting then fail.
    pub fn spawn(mut snapshot: Snapshot, mut save: Save, min_gap: Duration) -> Self {
        let requested = Arc::new(AtomicU64::new(0));
        let (wake, mut rx) = watch::channel(0u64);
        let (outcome_tx, outcome) = watch::channel(Outcome::default());
        let counter = requested.clone();
        tokio::spawn(async move {
            let mut attempt = 0;
            loop {
                let unsaved = counter.load(Ordering::SeqCst) > outcome_tx.borrow().saved;
                if unsaved {
                    // A failed save to retry; stop when the registrar is gone.
                    if rx.has_changed().is_err() {
                        break;
                    }
                } else if rx.changed().await.is_err() {
                    break;
                }
                rx.borrow_and_update();
                let Some((generation, registry)) = snapshot(&counter) else {
                    break;
                };
                if outcome_tx.borrow().saved >= generation {
                    continue;
                }
                attempt += 1;
                let started = tokio::time::Instant::now();
                let result = save(registry).await;
                let mut pause = started.elapsed().max(min_gap);
                outcome_tx.send_modify(|o| match result {
                    Ok(()) => o.saved = generation,
                    Err(e) => {
                        pause = pause.max(RETRY_AFTER_FAILURE);
                        o.failed = generation;
                        o.error = e;
                        o.attempt = attempt;
                    }
                });
                tokio::time::sleep(pause).await;
            }
        });
        Self {
            requested,
            wake,
            outcome,
        }
    }
}

impl RegistryStore for Registrar {
    fn store(&self, _registry: &Registry) {
        self.requested.fetch_add(1, Ordering::SeqCst);
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn saved(&self) -> SaveTicket {
        SaveTicket {
            generation: self.requested.load(Ordering::SeqCst),
            after_attempt: self.outcome.borrow().attempt,
            outcome: Some(self.outcome.clone()),
        }
    }
}

/// The standalone store: a [`Registrar`] writing `file` (atomically, fsynced) with the
/// registry of the master in `shared`, on a blocking thread so no runtime thread waits on
/// the disk.
pub fn file_store(file: FileRegistry, shared: crate::http::Shared) -> Registrar {
    let file = Arc::new(file);
    // Weak: the master owns this writer's registrar, and the writer must end with it.
    let master = shared.downgrade();
    Registrar::spawn(
        Box::new(move |counter: &AtomicU64| {
            master.with(|m| (counter.load(Ordering::SeqCst), m.registry.clone()))
        }),
        Box::new(move |registry| {
            let file = file.clone();
            Box::pin(async move {
                let saved = tokio::task::spawn_blocking(move || file.save(&registry)).await;
                match saved {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => {
                        tracing::error!("cannot save the registry: {e}");
                        Err(e.to_string())
                    }
                    Err(e) => Err(format!("registry writer panicked: {e}")),
                }
            })
        }),
        Duration::ZERO,
    )
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

    #[tokio::test]
    async fn the_file_writer_saves_for_its_master_and_ends_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("registry.json");
        let (file, registry) = FileRegistry::open(&path).unwrap();
        let master = crate::core::Master::new(crate::core::CoreConfig::default(), registry, None);
        let shared = crate::http::Shared::new(master);
        let writer = file_store(file, shared.clone());
        shared.lock().set_store(Box::new(writer));
        let saved = {
            let mut m = shared.lock();
            m.registry.weights.insert("analytics".into(), 2.0);
            m.persist();
            m.registry_saved()
        };
        saved.wait().await.unwrap();
        let (_, on_disk) = FileRegistry::open(&path).unwrap();
        assert_eq!(on_disk.weights.get("analytics"), Some(&2.0));
        // The writer holds its master weakly: dropping the last handle frees the master (and
        // with it the registrar, which ends the writer).
        let weak = shared.downgrade();
        drop(shared);
        assert!(
            weak.with(|_| ()).is_none(),
            "the registry writer kept its master alive"
        );
    }
}
