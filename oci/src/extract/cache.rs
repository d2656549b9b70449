//! Extracted layers, cached by digest.
//!
//! Layout under the cache root (the agent passes its image store directory):
//!
//! ```text
//! <root>/layers/                     mode 0700: layers hold setuid binaries
//!   sha256/<hex>/rootfs/             the extracted tree (overlayfs-form whiteouts)
//!   sha256/<hex>/extracted.json      completion marker, written before the rename
//!   sha256/<hex>.lock                flock(2) held while one process extracts it
//!   tmp/sha256-<hex>-<pid>-<n>/      extraction in progress
//! ```
//!
//! A layer is extracted into `tmp/`, its marker written, and the directory renamed into
//! place, so a crash leaves either nothing or a complete layer (stale `tmp/` directories are
//! removed by the next extraction of that digest). Concurrent requests for one digest, from
//! threads or processes, serialise on the lock file and all but the first find it done.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::FlockOperation;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{extract_layer, ExtractError, ExtractOptions, LayerStats};

const MARKER: &str = "extracted.json";
const MARKER_VERSION: u32 = 1;

/// The completion marker of a cached layer.
#[derive(Debug, Serialize, Deserialize)]
struct Marker {
    version: u32,
    digest: String,
    media_type: String,
    entries: u64,
    files: u64,
    bytes: u64,
}

/// A cache of extracted layers under one root directory. Cheap to create: nothing is
/// touched on disk until the first extraction.
#[derive(Debug, Clone)]
pub struct LayerCache {
    dir: PathBuf,
    opts: ExtractOptions,
}

static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A validated digest: algorithm and lower-case hex.
struct Digest<'a> {
    algo: &'a str,
    hex: &'a str,
}

fn parse_digest(digest: &str) -> Result<Digest<'_>, ExtractError> {
    let invalid = || ExtractError::InvalidDigest {
        digest: digest.to_owned(),
    };
    let (algo, hex) = digest.split_once(':').ok_or_else(invalid)?;
    let len = match algo {
        "sha256" => 64,
        "sha512" => 128,
        _ => return Err(invalid()),
    };
    // Only lower-case hex: the digest becomes a directory name.
    if hex.len() != len
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err(invalid());
    }
    Ok(Digest { algo, hex })
}

impl LayerCache {
    /// A cache under `root` (layers go to `<root>/layers/`), extracting with overlayfs-form
    /// whiteouts and default options.
    #[must_use]
    pub fn new(root: impl Into<PathBuf>) -> LayerCache {
        LayerCache {
            dir: root.into().join("layers"),
            opts: ExtractOptions::default(),
        }
    }

    /// The same cache with other extraction options. The whiteout mode is always
    /// [`super::WhiteoutMode::Overlay`]: cached layers are stacked, never merged in place.
    #[must_use]
    pub fn with_options(mut self, opts: ExtractOptions) -> LayerCache {
        self.opts = ExtractOptions {
            whiteouts: super::WhiteoutMode::Overlay,
            ..opts
        };
        self
    }

    fn layer_dir(&self, d: &Digest<'_>) -> PathBuf {
        self.dir.join(d.algo).join(d.hex)
    }

    /// The extracted tree of `digest` if it is in the cache.
    ///
    /// # Errors
    /// [`ExtractError::InvalidDigest`].
    pub fn get(&self, digest: &str) -> Result<Option<PathBuf>, ExtractError> {
        let d = parse_digest(digest)?;
        let dir = self.layer_dir(&d);
        Ok(dir.join(MARKER).is_file().then(|| dir.join("rootfs")))
    }

    /// Extracts the layer blob at `blob` (of `media_type`, with content digest `digest`)
    /// unless it is cached, and returns the directory holding its tree. The blob is
    /// verified against `digest` while it is read; a mismatch caches nothing.
    ///
    /// Blocks while another thread or process extracts the same digest.
    ///
    /// # Errors
    /// See [`ExtractError`]; after any error nothing of this layer is left in the cache.
    pub fn extract(
        &self,
        blob: &Path,
        media_type: &str,
        digest: &str,
    ) -> Result<PathBuf, ExtractError> {
        self.extract_with_stats(blob, media_type, digest)
            .map(|(path, _)| path)
    }

    /// [`LayerCache::extract`], also returning what the extraction did (`None` when the
    /// layer was already cached).
    ///
    /// # Errors
    /// See [`ExtractError`].
    pub fn extract_with_stats(
        &self,
        blob: &Path,
        media_type: &str,
        digest: &str,
    ) -> Result<(PathBuf, Option<LayerStats>), ExtractError> {
        let d = parse_digest(digest)?;
        let dir = self.layer_dir(&d);
        if dir.join(MARKER).is_file() {
            return Ok((dir.join("rootfs"), None));
        }
        self.prepare_dirs(&d)?;
        let _lock = self.lock(&d)?;
        // Someone else may have finished while we waited for the lock.
        if dir.join(MARKER).is_file() {
            return Ok((dir.join("rootfs"), None));
        }
        // A directory without a marker is from an interrupted removal: never trust it.
        remove_if_exists(&dir)?;
        self.remove_stale_tmp(&d)?;

        let tmp = self.dir.join("tmp").join(format!(
            "{}-{}-{}-{}",
            d.algo,
            d.hex,
            std::process::id(),
            TMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let guard = TmpGuard(tmp.clone());
        let rootfs = tmp.join("rootfs");
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&rootfs)
            .map_err(cache_err("create", &rootfs))?;
        let file = File::open(blob).map_err(|source| ExtractError::OpenBlob {
            path: blob.to_owned(),
            source,
        })?;
        let mut reader = HashingReader::new(file, d.algo);
        let stats = extract_layer(&mut reader, media_type, &rootfs, &self.opts)?;
        let actual = format!("{}:{}", d.algo, reader.finish());
        if actual != digest {
            return Err(ExtractError::DigestMismatch {
                expected: digest.to_owned(),
                actual,
            });
        }
        let marker = Marker {
            version: MARKER_VERSION,
            digest: digest.to_owned(),
            media_type: media_type.to_owned(),
            entries: stats.entries,
            files: stats.files,
            bytes: stats.bytes,
        };
        let marker_path = tmp.join(MARKER);
        let mut f = File::create(&marker_path).map_err(cache_err("write", &marker_path))?;
        let json = serde_json::to_vec_pretty(&marker).map_err(|e| ExtractError::Cache {
            op: "encode",
            path: marker_path.clone(),
            source: io::Error::other(e),
        })?;
        f.write_all(&json)
            .map_err(cache_err("write", &marker_path))?;
        // The tree must be on disk before the rename publishes it (ext4 and xfs order data
        // only for the renamed file itself): one syncfs covers every file just written.
        rustix::fs::syncfs(&f).map_err(|e| cache_err("sync", &tmp)(e.into()))?;
        drop(f);
        fs::rename(&tmp, &dir).map_err(cache_err("publish", &dir))?;
        std::mem::forget(guard);
        if let Some(parent) = dir.parent() {
            if let Ok(p) = File::open(parent) {
                let _ = p.sync_all();
            }
        }
        tracing::debug!(
            digest,
            entries = stats.entries,
            bytes = stats.bytes,
            "extracted layer"
        );
        Ok((dir.join("rootfs"), Some(stats)))
    }

    /// Removes a cached layer (for garbage collection). Returns whether it was there. The
    /// caller makes sure no root filesystem still stacks it.
    ///
    /// # Errors
    /// [`ExtractError::InvalidDigest`] or [`ExtractError::Cache`].
    pub fn remove(&self, digest: &str) -> Result<bool, ExtractError> {
        let d = parse_digest(digest)?;
        let dir = self.layer_dir(&d);
        if !dir.exists() {
            return Ok(false);
        }
        let _lock = self.lock(&d)?;
        // Drop the marker first: a crash mid-removal leaves an unmarked directory, which
        // the next extraction discards.
        match fs::remove_file(dir.join(MARKER)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(cache_err("remove", &dir)(e)),
        }
        remove_if_exists(&dir)?;
        Ok(true)
    }

    fn prepare_dirs(&self, d: &Digest<'_>) -> Result<(), ExtractError> {
        if !self.dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(cache_err("create", &self.dir))?;
            fs::set_permissions(&self.dir, fs::Permissions::from_mode(0o700))
                .map_err(cache_err("chmod", &self.dir))?;
        }
        for sub in [self.dir.join(d.algo), self.dir.join("tmp")] {
            fs::create_dir_all(&sub).map_err(cache_err("create", &sub))?;
        }
        Ok(())
    }

    fn lock(&self, d: &Digest<'_>) -> Result<File, ExtractError> {
        let path = self.dir.join(d.algo).join(format!("{}.lock", d.hex));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(cache_err("open lock", &path))?;
        // flock locks belong to the open file description, so two threads of one process
        // exclude each other just like two processes.
        rustix::fs::flock(&file, FlockOperation::LockExclusive)
            .map_err(|e| cache_err("lock", &path)(e.into()))?;
        Ok(file)
    }

    fn remove_stale_tmp(&self, d: &Digest<'_>) -> Result<(), ExtractError> {
        let tmp = self.dir.join("tmp");
        let prefix = format!("{}-{}-", d.algo, d.hex);
        let entries = fs::read_dir(&tmp).map_err(cache_err("list", &tmp))?;
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy().starts_with(&prefix) {
                remove_if_exists(&entry.path())?;
            }
        }
        Ok(())
    }
}

fn remove_if_exists(path: &Path) -> Result<(), ExtractError> {
    // remove_dir_all does not follow symlinks (std's fix for CVE-2022-21658).
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(cache_err("remove", path)(e)),
    }
}

fn cache_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ExtractError + 'a {
    move |source| ExtractError::Cache {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Removes an extraction directory unless disarmed with `mem::forget`.
struct TmpGuard(PathBuf);

impl Drop for TmpGuard {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Hashes everything read through it.
enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

struct HashingReader<R> {
    inner: R,
    hasher: Hasher,
}

impl<R: Read> HashingReader<R> {
    fn new(inner: R, algo: &str) -> Self {
        let hasher = if algo == "sha512" {
            Hasher::Sha512(sha2::Sha512::new())
        } else {
            Hasher::Sha256(sha2::Sha256::new())
        };
        HashingReader { inner, hasher }
    }

    /// Reads what is left (the decompressor may stop before the end) and returns the hex
    /// digest.
    fn finish(mut self) -> String {
        let _ = io::copy(&mut self, &mut io::sink());
        match self.hasher {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match &mut self.hasher {
            Hasher::Sha256(h) => h.update(&buf[..n]),
            Hasher::Sha512(h) => h.update(&buf[..n]),
        }
        Ok(n)
    }
}
