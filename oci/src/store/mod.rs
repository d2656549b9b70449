//! The content-addressed image store under the agent's work directory.
//!
//! ```text
//! <root>/blobs/sha256/<hex>   manifests, configs and layers, by digest, shared between images
//! <root>/index.json           IndexFile: reference -> manifest, parsed config, ordered layers
//! <root>/tmp/                 blobs being written; whatever is here after a crash is garbage
//! <root>/locks/               flock files: store.lock, index.lock, blob-<hex>.lock
//! ```
//!
//! Invariants that make crashes harmless: a blob appears under `blobs/` only by `rename` after
//! its digest was verified and its content fsynced; `index.json` is replaced by `rename` of a
//! fsynced temp file, and names an image only after all its blobs are in place. So a crash
//! leaves at most files in `tmp/` (removed by the next [`Store::open`]) and unreferenced blobs
//! (removed by [`Store::gc`]).
//!
//! Writers (pulls, imports) hold `store.lock` shared for their whole run and `blob-<hex>.lock`
//! exclusive while fetching a blob, so the same blob is fetched once across processes; GC and
//! the temp cleanup in `open` hold `store.lock` exclusive, so they never remove a blob or temp
//! file that a running pull is about to reference.

mod blob;
mod error;
mod gc;
mod index;
mod lock;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use oci_spec::image::ImageConfiguration;

pub use blob::BlobWriter;
pub use error::StoreError;
pub use gc::GcReport;
pub use index::{ImageRecord, IndexFile, LayerRecord, INDEX_VERSION};
pub use lock::{FileLock, KeyedLocks};

use crate::digest::Digest;
use crate::manifest::{layer_compression, Compression, ImageManifest};
use crate::reference::Reference;

/// A handle on one store directory. Cheap to clone; clones share in-process locks.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    blobs: PathBuf,
    tmp: PathBuf,
    locks: PathBuf,
    index: PathBuf,
    keyed: KeyedLocks,
}

/// An image in the store, ready for bundle generation and layer extraction.
#[derive(Debug, Clone)]
pub struct Image {
    /// The reference it is stored under.
    pub reference: Reference,
    /// Digest of its (platform) manifest.
    pub manifest_digest: Digest,
    /// Digest of its config blob.
    pub config_digest: Digest,
    /// The parsed config (entrypoint, cmd, env, user, working dir, ...).
    pub config: ImageConfiguration,
    /// Layers, bottom first.
    pub layers: Vec<Layer>,
}

/// One layer blob on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layer {
    /// Digest of the blob (compressed bytes).
    pub digest: Digest,
    /// Media type from the manifest.
    pub media_type: String,
    /// Compression, from the media type.
    pub compression: Compression,
    /// Size in bytes.
    pub size: u64,
    /// `<root>/blobs/sha256/<hex>`; read-only by convention, shared with other images.
    pub path: PathBuf,
}

/// A held blob lock: in-process mutex plus `blob-<hex>.lock`.
#[derive(Debug)]
pub struct BlobGuard {
    _file: FileLock,
    _task: tokio::sync::OwnedMutexGuard<()>,
}

impl Store {
    /// Opens (creating if needed) the store at `root`. When no other process is using it,
    /// removes the temp files a crashed pull or import left behind.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the directories cannot be created.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, StoreError> {
        let root = root.into();
        let inner = Inner {
            blobs: root.join("blobs").join("sha256"),
            tmp: root.join("tmp"),
            locks: root.join("locks"),
            index: root.join("index.json"),
            root,
            keyed: KeyedLocks::default(),
        };
        for dir in [&inner.blobs, &inner.tmp, &inner.locks] {
            fs::create_dir_all(dir).map_err(StoreError::io("create directory", dir))?;
        }
        let store = Self {
            inner: Arc::new(inner),
        };
        if let Some(_exclusive) = FileLock::try_exclusive(&store.store_lock_path())? {
            store.clean_tmp()?;
        }
        Ok(store)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// Where the blob `digest` is (or would be) stored.
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.inner.blobs.join(digest.hex())
    }

    /// Whether the blob is stored (blobs only appear complete and verified).
    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Reads a whole blob (for manifests and configs; layers are read by path).
    ///
    /// # Errors
    /// [`StoreError::MissingBlob`] or [`StoreError::Io`].
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>, StoreError> {
        let path = self.blob_path(digest);
        fs::read(&path).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => StoreError::MissingBlob {
                digest: digest.clone(),
            },
            _ => StoreError::Io {
                op: "read blob",
                path,
                source: e,
            },
        })
    }

    /// Re-hashes a stored blob (for `fsck`-style checks).
    ///
    /// # Errors
    /// [`StoreError::DigestMismatch`] when the file was altered on disk.
    pub fn verify_blob(&self, digest: &Digest) -> Result<(), StoreError> {
        use sha2::Digest as _;
        let path = self.blob_path(digest);
        let mut file = fs::File::open(&path).map_err(StoreError::io("open blob", &path))?;
        let mut hasher = sha2::Sha256::new();
        std::io::copy(&mut file, &mut hasher).map_err(StoreError::io("read blob", &path))?;
        let actual = Digest::from_hasher(hasher);
        if &actual == digest {
            Ok(())
        } else {
            Err(StoreError::DigestMismatch {
                expected: digest.clone(),
                actual,
            })
        }
    }

    /// A writer for a new blob in `tmp/`; [`BlobWriter::commit`] verifies and publishes it.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the temp file cannot be created.
    pub fn blob_writer(&self) -> Result<BlobWriter, StoreError> {
        // Process-wide, so that several handles on one root never pick the same name.
        static COUNTER: AtomicU64 = AtomicU64::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let tmp = self
            .inner
            .tmp
            .join(format!("blob-{}-{n}", std::process::id()));
        BlobWriter::create(tmp, self.inner.blobs.clone())
    }

    /// Stores `bytes` as the blob `expected` (a no-op when already stored).
    ///
    /// # Errors
    /// [`StoreError::DigestMismatch`] when `bytes` hash to something else; nothing is stored.
    pub fn put_blob(&self, expected: &Digest, bytes: &[u8]) -> Result<PathBuf, StoreError> {
        let actual = Digest::of(bytes);
        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        if self.has_blob(expected) {
            return Ok(self.blob_path(expected));
        }
        let mut writer = self.blob_writer()?;
        writer.write(bytes)?;
        writer.commit(expected)
    }

    /// Blocks until this process may write to the store (shared with other writers, exclusive
    /// of GC). Hold it for the whole pull or import.
    ///
    /// # Errors
    /// [`StoreError::Lock`] or [`StoreError::Io`].
    pub fn writer_lock(&self) -> Result<FileLock, StoreError> {
        FileLock::acquire(&self.store_lock_path(), false)
    }

    /// Waits (without blocking the runtime) until this task alone may fetch `digest`, across
    /// tasks and processes. Check [`Store::has_blob`] again once it is held.
    ///
    /// # Errors
    /// [`StoreError::Lock`] or [`StoreError::Io`].
    pub async fn lock_blob(&self, digest: &Digest) -> Result<BlobGuard, StoreError> {
        let task = self.inner.keyed.lock(&format!("blob:{digest}")).await;
        let path = self.inner.locks.join(format!("blob-{}.lock", digest.hex()));
        let file = tokio::task::spawn_blocking(move || FileLock::acquire(&path, true))
            .await
            .expect("flock task does not panic")?;
        Ok(BlobGuard {
            _file: file,
            _task: task,
        })
    }

    /// An in-process mutex by name, e.g. one per reference so that two concurrent pulls of one
    /// image resolve it once.
    pub async fn lock_key(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        self.inner.keyed.lock(key).await
    }

    /// The stored image for `reference`: by exact reference, or for a digest reference, any
    /// image of the same repository with that manifest digest.
    ///
    /// # Errors
    /// [`StoreError`] when the index cannot be read.
    pub fn image(&self, reference: &Reference) -> Result<Option<Image>, StoreError> {
        let index = self.read_index()?;
        if let Some(record) = index.images.get(&reference.to_string()) {
            return Ok(Some(self.to_image(reference.clone(), record)));
        }
        if let Some(digest) = reference.digest() {
            let name = reference.name();
            for (key, record) in &index.images {
                let same_repo = key.parse::<Reference>().is_ok_and(|r| r.name() == name);
                if same_repo && &record.manifest_digest == digest {
                    return Ok(Some(self.to_image(reference.clone(), record)));
                }
            }
        }
        Ok(None)
    }

    /// All stored images.
    ///
    /// # Errors
    /// [`StoreError`] when the index cannot be read.
    pub fn images(&self) -> Result<Vec<Image>, StoreError> {
        let index = self.read_index()?;
        Ok(index
            .images
            .iter()
            .filter_map(|(k, r)| Some(self.to_image(k.parse().ok()?, r)))
            .collect())
    }

    /// Records `record` under `reference`, after checking that every blob it names is stored.
    ///
    /// # Errors
    /// [`StoreError::MissingBlob`] (the index is unchanged), or I/O and lock errors.
    pub fn put_image(
        &self,
        reference: &Reference,
        record: ImageRecord,
    ) -> Result<Image, StoreError> {
        if let Some(missing) = record.blobs().find(|d| !self.has_blob(d)) {
            return Err(StoreError::MissingBlob {
                digest: missing.clone(),
            });
        }
        let image = self.to_image(reference.clone(), &record);
        self.update_index(|index| {
            index.images.insert(reference.to_string(), record);
        })?;
        Ok(image)
    }

    /// Forgets `reference`; its blobs stay until [`Store::gc`]. Returns whether it was stored.
    ///
    /// # Errors
    /// I/O and lock errors.
    pub fn remove_image(&self, reference: &Reference) -> Result<bool, StoreError> {
        let mut removed = false;
        self.update_index(|index| removed = index.images.remove(&reference.to_string()).is_some())?;
        Ok(removed)
    }

    /// Reads `index.json` (an empty index when it does not exist yet).
    ///
    /// # Errors
    /// [`StoreError::IndexCorrupt`], [`StoreError::IndexVersion`] or [`StoreError::Io`].
    pub fn read_index(&self) -> Result<IndexFile, StoreError> {
        let path = &self.inner.index;
        let bytes = match fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(IndexFile::default()),
            Err(e) => return Err(StoreError::io("read", path)(e)),
        };
        #[derive(serde::Deserialize)]
        struct Version {
            version: u32,
        }
        let version: Version =
            serde_json::from_slice(&bytes).map_err(|source| StoreError::IndexCorrupt {
                path: path.clone(),
                source,
            })?;
        if version.version > INDEX_VERSION {
            return Err(StoreError::IndexVersion {
                path: path.clone(),
                found: version.version,
                supported: INDEX_VERSION,
            });
        }
        serde_json::from_slice(&bytes).map_err(|source| StoreError::IndexCorrupt {
            path: path.clone(),
            source,
        })
    }

    /// Read-modify-write of `index.json` under `index.lock`, replaced atomically.
    fn update_index(&self, change: impl FnOnce(&mut IndexFile)) -> Result<(), StoreError> {
        let _lock = FileLock::acquire(&self.inner.locks.join("index.lock"), true)?;
        let mut index = self.read_index()?;
        change(&mut index);
        index.version = INDEX_VERSION;
        let bytes = serde_json::to_vec_pretty(&index).expect("the index serialises to JSON");
        let tmp = self
            .inner
            .tmp
            .join(format!("index-{}.json", std::process::id()));
        let write = || -> std::io::Result<()> {
            let mut f = fs::File::create(&tmp)?;
            std::io::Write::write_all(&mut f, &bytes)?;
            f.sync_all()
        };
        write().map_err(StoreError::io("write", &tmp))?;
        fs::rename(&tmp, &self.inner.index).map_err(StoreError::io("rename", &self.inner.index))?;
        blob::sync_dir(&self.inner.root)
    }

    fn to_image(&self, reference: Reference, record: &ImageRecord) -> Image {
        Image {
            reference,
            manifest_digest: record.manifest_digest.clone(),
            config_digest: record.config_digest.clone(),
            config: record.config.clone(),
            layers: record
                .layers
                .iter()
                .map(|l| Layer {
                    digest: l.digest.clone(),
                    media_type: l.media_type.clone(),
                    compression: l.compression,
                    size: l.size,
                    path: self.blob_path(&l.digest),
                })
                .collect(),
        }
    }

    fn store_lock_path(&self) -> PathBuf {
        self.inner.locks.join("store.lock")
    }

    /// Removes everything in `tmp/`. Callers hold `store.lock` exclusively.
    fn clean_tmp(&self) -> Result<usize, StoreError> {
        let dir = &self.inner.tmp;
        let mut removed = 0;
        for entry in fs::read_dir(dir).map_err(StoreError::io("read directory", dir))? {
            let path = entry.map_err(StoreError::io("read directory", dir))?.path();
            let res = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            res.map_err(StoreError::io("remove temp file", &path))?;
            removed += 1;
        }
        Ok(removed)
    }
}

impl ImageRecord {
    /// Builds the record of an image from its manifest and raw config blob.
    ///
    /// # Errors
    /// [`StoreError::BadConfig`] when the config does not parse as an image config.
    pub fn new(
        manifest_digest: Digest,
        manifest_media_type: &str,
        manifest: &ImageManifest,
        config_bytes: &[u8],
        source: &str,
    ) -> Result<Self, StoreError> {
        let config: ImageConfiguration =
            serde_json::from_slice(config_bytes).map_err(|source| StoreError::BadConfig {
                digest: manifest.config.digest.clone(),
                source,
            })?;
        let layers = manifest
            .layers
            .iter()
            .map(|l| LayerRecord {
                digest: l.digest.clone(),
                media_type: l.media_type.clone(),
                // parse_manifest refused unknown layer types; plain tar is the safe reading.
                compression: layer_compression(&l.media_type).unwrap_or(Compression::None),
                size: l.size,
            })
            .collect();
        let stored_at = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            manifest_digest,
            manifest_media_type: manifest_media_type.to_string(),
            config_digest: manifest.config.digest.clone(),
            config,
            layers,
            source: source.to_string(),
            stored_at,
        })
    }
}
