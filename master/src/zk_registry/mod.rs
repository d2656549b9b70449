//! The registry in ZooKeeper, for HA masters: the same [`Registry`] the standalone master
//! keeps on disk, stored under `<path>/registry` and written only by the leader, each write
//! fenced on the leader's election znode.
//!
//! Layout (all persistent znodes):
//! - `<path>/registry/manifest`: a [`Manifest`] naming the chunks of the current generation;
//! - `<path>/registry/chunks/<generation>-<index>`: the registry's JSON split into chunks of
//!   at most [`chunks::CHUNK_LIMIT`] bytes (see [`chunks`]).
//!
//! A save writes the new generation's chunks (each its own multi-op: the fencing check, then the
//! create), then switches to them in one multi-op: the fencing check, the manifest update at the
//! version last seen, and the deletion of the previous generation's chunks. Readers only follow
//! the manifest, so they see the old registry or the new one, never a mix. Every multi-op starts
//! with a CHECK of the leader's own election znode ([`ZkFence`]): once that znode is gone (the
//! session expired, leadership passed on), ZooKeeper refuses the whole operation and the save
//! fails with a [`FencingError`], so a deposed leader can never overwrite its successor.
//! Chunks left by a save that failed half-way belong to no manifest; the next leader removes
//! them when it recovers.

pub mod chunks;

use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use zookeeper_client::{Client, CreateMode, MultiWriteError, MultiWriteResult, MultiWriter};

use crate::election::ZkFence;
use crate::registry::{Registry, REGISTRY_VERSION};

pub use self::chunks::{EntryTooLarge, CHUNK_LIMIT};

/// The manifest format this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Most operations in one multi-op when removing stray chunks (each is a small delete).
const DELETES_PER_MULTI: usize = 500;

/// The manifest: which chunks make up the registry now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version; a newer one is refused.
    pub version: u32,
    /// Grows with every save; chunk names start with it.
    pub generation: u64,
    /// The chunks, in order.
    pub chunks: Vec<ChunkRef>,
    /// The election znode of the leader that wrote this generation.
    pub leader: String,
    /// That leader's term.
    pub term: u64,
}

/// One chunk as the manifest records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkRef {
    /// The chunk's znode name under `chunks/`.
    pub name: String,
    /// Its size in bytes.
    pub bytes: usize,
    /// FNV-1a 64 of its bytes, in hex.
    pub fnv1a64: String,
}

/// A registry write by a master that no longer leads.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry write refused: this master no longer leads ({reason}; election znode {znode}, term {term}); a deposed leader must not overwrite its successor")]
pub struct FencingError {
    /// The election znode the write was fenced on.
    pub znode: String,
    /// The term of the lost leadership.
    pub term: u64,
    /// What ZooKeeper said.
    pub reason: &'static str,
}

/// Why the registry in ZooKeeper could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ZkRegistryError {
    #[error(transparent)]
    Fencing(#[from] FencingError),
    #[error("registry in ZooKeeper: {op} {path}: {source}")]
    ZooKeeper {
        op: &'static str,
        path: String,
        #[source]
        source: zookeeper_client::Error,
    },
    #[error("registry in ZooKeeper: {path} is corrupt: {reason} (restore it from a backup)")]
    Corrupt { path: String, reason: String },
    #[error("registry in ZooKeeper: {path} has format version {found}; this cairn-master reads up to {supported} (upgrade cairn-master)")]
    TooNew {
        path: String,
        found: u32,
        supported: u32,
    },
    #[error("registry in ZooKeeper: {0}")]
    EntryTooLarge(#[from] EntryTooLarge),
    #[error(
        "registry in ZooKeeper: {path} was changed by another writer; refusing to overwrite it"
    )]
    Conflict { path: String },
}

/// What the leader knows of the stored registry between saves.
#[derive(Debug)]
struct Stored {
    manifest: Manifest,
    manifest_version: i32,
    /// The next generation to write; also bumped by failed saves so their stray chunks never
    /// collide with a retry.
    next_generation: u64,
}

/// The leader's handle on the registry in ZooKeeper.
#[derive(Debug)]
pub struct ZkRegistry {
    fence: ZkFence,
    root: String,
    stored: Mutex<Stored>,
}

impl ZkRegistry {
    /// Recovers the registry as a newly elected leader: creates the layout when missing, reads
    /// the manifest and its chunks, and removes chunks no manifest names. Returns the handle for
    /// later saves and the registry (empty on a new cluster).
    ///
    /// # Errors
    /// Fencing (no longer leading), ZooKeeper failures, a corrupt or too-new registry. The
    /// master must not lead without its registry: it should step down and retry.
    pub async fn recover(fence: ZkFence) -> Result<(Self, Registry), ZkRegistryError> {
        let client = session(&fence)?;
        let root = format!("{}/registry", fence.config().url.path);
        let this = Self {
            root,
            stored: Mutex::new(Stored {
                manifest: Manifest {
                    version: MANIFEST_VERSION,
                    generation: 0,
                    chunks: Vec::new(),
                    leader: fence.znode().to_string(),
                    term: fence.term(),
                },
                manifest_version: 0,
                next_generation: 1,
            }),
            fence,
        };
        let acls = this.fence.config().registry_acls();
        let dir = this.chunk_dir();
        client
            .mkdir(&dir, &CreateMode::Persistent.with_acls(acls))
            .await
            .map_err(|source| this.zk_error("create", &dir, source))?;
        let (manifest, manifest_version) = this.read_or_create_manifest(&client).await?;
        let mut parts = Vec::with_capacity(manifest.chunks.len());
        for chunk in &manifest.chunks {
            parts.push(this.read_chunk(&client, chunk).await?);
        }
        let registry = chunks::join(parts);
        // Stray chunks: from saves that failed half-way, here or under an earlier leader.
        let names = client
            .list_children(&dir)
            .await
            .map_err(|source| this.zk_error("list", &dir, source))?;
        let mut newest = manifest.generation;
        let stray: Vec<String> = names
            .into_iter()
            .filter(|name| {
                if let Some(generation) = chunk_generation(name) {
                    newest = newest.max(generation);
                }
                !manifest.chunks.iter().any(|c| c.name == *name)
            })
            .collect();
        for batch in stray.chunks(DELETES_PER_MULTI) {
            let mut writer = this.fenced_writer(&client)?;
            for name in batch {
                let path = format!("{dir}/{name}");
                writer
                    .add_delete(&path, None)
                    .map_err(|source| this.zk_error("delete", &path, source))?;
            }
            this.commit(&mut writer, "delete stray chunks of", &dir)
                .await?;
        }
        if !stray.is_empty() {
            tracing::info!(
                count = stray.len(),
                "removed registry chunks of unfinished saves"
            );
        }
        {
            let mut stored = this.stored.lock().await;
            stored.manifest = manifest;
            stored.manifest_version = manifest_version;
            stored.next_generation = newest + 1;
        }
        tracing::info!(
            agents = registry.agents.len(),
            unreachable = registry.unreachable.len(),
            gone = registry.gone.len(),
            "recovered the registry from ZooKeeper"
        );
        Ok((this, registry))
    }

    /// Stores `registry` as the new generation, atomically for readers and fenced on this
    /// master's leadership. Saves are serialised.
    ///
    /// # Errors
    /// [`ZkRegistryError::Fencing`] when this master no longer leads (nothing was changed);
    /// ZooKeeper failures (the previous registry is then still in place).
    pub async fn save(&self, registry: &Registry) -> Result<(), ZkRegistryError> {
        let mut stored = self.stored.lock().await;
        let client = session(&self.fence)?;
        let parts = chunks::split(registry, CHUNK_LIMIT)?;
        let generation = stored.next_generation;
        stored.next_generation += 1;
        let dir = self.chunk_dir();
        let mut refs = Vec::with_capacity(parts.len());
        for (index, bytes) in parts.iter().enumerate() {
            let name = format!("{generation:020}-{index:05}");
            let path = format!("{dir}/{name}");
            let mut writer = self.fenced_writer(&client)?;
            writer
                .add_create(
                    &path,
                    bytes,
                    &CreateMode::Persistent.with_acls(self.fence.config().registry_acls()),
                )
                .map_err(|source| self.zk_error("create", &path, source))?;
            self.commit(&mut writer, "create", &path).await?;
            refs.push(ChunkRef {
                name,
                bytes: bytes.len(),
                fnv1a64: format!("{:016x}", chunks::fnv1a64(bytes)),
            });
        }
        let manifest = Manifest {
            version: MANIFEST_VERSION,
            generation,
            chunks: refs,
            leader: self.fence.znode().to_string(),
            term: self.fence.term(),
        };
        let manifest_path = self.manifest_path();
        let mut writer = self.fenced_writer(&client)?;
        writer
            .add_set_data(
                &manifest_path,
                &to_json(&manifest),
                Some(stored.manifest_version),
            )
            .map_err(|source| self.zk_error("write", &manifest_path, source))?;
        for old in &stored.manifest.chunks {
            let path = format!("{dir}/{}", old.name);
            writer
                .add_delete(&path, None)
                .map_err(|source| self.zk_error("delete", &path, source))?;
        }
        let version = match self.commit(&mut writer, "write", &manifest_path).await {
            Ok(results) => results.into_iter().find_map(|r| match r {
                MultiWriteResult::SetData { stat } => Some(stat.version),
                _ => None,
            }),
            Err(ZkRegistryError::ZooKeeper {
                source: zookeeper_client::Error::ConnectionLoss,
                ..
            }) => {
                // The switch may or may not have happened: the manifest says which.
                let (data, stat) = client
                    .get_data(&manifest_path)
                    .await
                    .map_err(|source| self.zk_error("read", &manifest_path, source))?;
                let current: Manifest = self.parse(&manifest_path, &data)?;
                if current.generation != generation || current.leader != self.fence.znode() {
                    return Err(self.zk_error(
                        "write",
                        &manifest_path,
                        zookeeper_client::Error::ConnectionLoss,
                    ));
                }
                Some(stat.version)
            }
            Err(e) => return Err(e),
        };
        stored.manifest_version =
            version.unwrap_or_else(|| stored.manifest_version.saturating_add(1));
        stored.manifest = manifest;
        Ok(())
    }

    /// The fence this registry's writes are checked against.
    pub fn fence(&self) -> &ZkFence {
        &self.fence
    }

    /// The manifest of the registry as last recovered or saved.
    pub async fn manifest(&self) -> Manifest {
        self.stored.lock().await.manifest.clone()
    }

    /// `<path>/registry`.
    pub fn root(&self) -> &str {
        &self.root
    }

    fn manifest_path(&self) -> String {
        format!("{}/manifest", self.root)
    }

    fn chunk_dir(&self) -> String {
        format!("{}/chunks", self.root)
    }

    fn zk_error(
        &self,
        op: &'static str,
        path: &str,
        source: zookeeper_client::Error,
    ) -> ZkRegistryError {
        fencing(&self.fence, &source).map_or_else(
            || ZkRegistryError::ZooKeeper {
                op,
                path: path.to_string(),
                source,
            },
            ZkRegistryError::Fencing,
        )
    }

    fn fenced_writer<'c>(&self, client: &'c Client) -> Result<MultiWriter<'c>, ZkRegistryError> {
        let mut writer = client.new_multi_writer();
        self.fence
            .add_check(&mut writer)
            .map_err(|source| self.zk_error("check", self.fence.znode(), source))?;
        Ok(writer)
    }

    /// Commits a fenced multi-op: a failed check (operation 0) is a [`FencingError`], a failed
    /// version check on `path` a conflict.
    async fn commit(
        &self,
        writer: &mut MultiWriter<'_>,
        op: &'static str,
        path: &str,
    ) -> Result<Vec<MultiWriteResult>, ZkRegistryError> {
        match writer.commit().await {
            Ok(results) => Ok(results),
            Err(MultiWriteError::OperationFailed { index: 0, source }) => {
                Err(ZkRegistryError::Fencing(FencingError {
                    znode: self.fence.znode().to_string(),
                    term: self.fence.term(),
                    reason: match source {
                        zookeeper_client::Error::NoNode => "its election znode is gone",
                        zookeeper_client::Error::BadVersion => "its election znode was changed",
                        _ => "the fencing check failed",
                    },
                }))
            }
            Err(MultiWriteError::OperationFailed {
                source: zookeeper_client::Error::BadVersion,
                ..
            }) => Err(ZkRegistryError::Conflict {
                path: path.to_string(),
            }),
            Err(MultiWriteError::OperationFailed { source, .. })
            | Err(MultiWriteError::RequestFailed { source }) => {
                Err(self.zk_error(op, path, source))
            }
        }
    }

    async fn read_or_create_manifest(
        &self,
        client: &Client,
    ) -> Result<(Manifest, i32), ZkRegistryError> {
        let path = self.manifest_path();
        loop {
            match client.get_data(&path).await {
                Ok((data, stat)) => {
                    let manifest: Manifest = self.parse(&path, &data)?;
                    if manifest.version > MANIFEST_VERSION {
                        return Err(ZkRegistryError::TooNew {
                            path,
                            found: manifest.version,
                            supported: MANIFEST_VERSION,
                        });
                    }
                    return Ok((manifest, stat.version));
                }
                Err(zookeeper_client::Error::NoNode) => {
                    let stored = self.stored.lock().await;
                    let mut writer = self.fenced_writer(client)?;
                    writer
                        .add_create(
                            &path,
                            &to_json(&stored.manifest),
                            &CreateMode::Persistent.with_acls(self.fence.config().registry_acls()),
                        )
                        .map_err(|source| self.zk_error("create", &path, source))?;
                    match self.commit(&mut writer, "create", &path).await {
                        Ok(_) => return Ok((stored.manifest.clone(), 0)),
                        // Created meanwhile: read it.
                        Err(ZkRegistryError::ZooKeeper {
                            source: zookeeper_client::Error::NodeExists,
                            ..
                        }) => {}
                        Err(e) => return Err(e),
                    }
                }
                Err(source) => return Err(self.zk_error("read", &path, source)),
            }
        }
    }

    async fn read_chunk(
        &self,
        client: &Client,
        chunk: &ChunkRef,
    ) -> Result<Registry, ZkRegistryError> {
        let path = format!("{}/{}", self.chunk_dir(), chunk.name);
        let (data, _) = client.get_data(&path).await.map_err(|source| {
            if source == zookeeper_client::Error::NoNode {
                ZkRegistryError::Corrupt {
                    path: path.clone(),
                    reason: "the manifest names this chunk but it does not exist".into(),
                }
            } else {
                self.zk_error("read", &path, source)
            }
        })?;
        let hash = format!("{:016x}", chunks::fnv1a64(&data));
        if data.len() != chunk.bytes || hash != chunk.fnv1a64 {
            return Err(ZkRegistryError::Corrupt {
                path,
                reason: format!(
                    "{} bytes with FNV-1a {hash}, the manifest says {} bytes with {}",
                    data.len(),
                    chunk.bytes,
                    chunk.fnv1a64
                ),
            });
        }
        let part: Registry = self.parse(&path, &data)?;
        if part.version > REGISTRY_VERSION {
            return Err(ZkRegistryError::TooNew {
                path,
                found: part.version,
                supported: REGISTRY_VERSION,
            });
        }
        Ok(part)
    }

    fn parse<T: serde::de::DeserializeOwned>(
        &self,
        path: &str,
        data: &[u8],
    ) -> Result<T, ZkRegistryError> {
        serde_json::from_slice(data).map_err(|e| ZkRegistryError::Corrupt {
            path: path.to_string(),
            reason: e.to_string(),
        })
    }
}

/// The leader's session, or a fencing error once the contender has let it go.
fn session(fence: &ZkFence) -> Result<std::sync::Arc<Client>, FencingError> {
    fence.client().ok_or_else(|| FencingError {
        znode: fence.znode().to_string(),
        term: fence.term(),
        reason: "its ZooKeeper session was lost",
    })
}

/// Session errors that mean the leadership is over.
fn fencing(fence: &ZkFence, source: &zookeeper_client::Error) -> Option<FencingError> {
    let reason = match source {
        zookeeper_client::Error::SessionExpired => "its ZooKeeper session expired",
        zookeeper_client::Error::ClientClosed => "its ZooKeeper session was closed",
        _ => return None,
    };
    Some(FencingError {
        znode: fence.znode().to_string(),
        term: fence.term(),
        reason,
    })
}

/// The generation a chunk's name starts with.
fn chunk_generation(name: &str) -> Option<u64> {
    name.split_once('-')?.0.parse().ok()
}

fn to_json<T: Serialize>(value: &T) -> Vec<u8> {
    serde_json::to_vec(value).expect("manifests of strings and numbers always serialise")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_names_carry_their_generation() {
        assert_eq!(chunk_generation("00000000000000000042-00003"), Some(42));
        assert_eq!(chunk_generation("junk"), None);
    }
}
