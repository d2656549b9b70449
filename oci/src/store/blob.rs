//! Writing one blob: into a temp file, hashed on the way, verified, fsynced, renamed into place.

use std::fs::File;
use std::io::{Seek, Write};
use std::path::{Path, PathBuf};

use sha2::{Digest as _, Sha256};

use super::StoreError;
use crate::digest::Digest;

/// A blob being written. Nothing is visible under `blobs/` until [`BlobWriter::commit`]
/// verified the digest; dropping the writer removes the temp file.
#[derive(Debug)]
pub struct BlobWriter {
    file: File,
    tmp: PathBuf,
    blobs_dir: PathBuf,
    hasher: Sha256,
    len: u64,
}

impl BlobWriter {
    pub(super) fn create(tmp: PathBuf, blobs_dir: PathBuf) -> Result<Self, StoreError> {
        let file = File::options()
            .create_new(true)
            .write(true)
            .open(&tmp)
            .map_err(StoreError::io("create temp blob", &tmp))?;
        Ok(Self {
            file,
            tmp,
            blobs_dir,
            hasher: Sha256::new(),
            len: 0,
        })
    }

    /// Appends `bytes`.
    ///
    /// # Errors
    /// [`StoreError::Io`] when the write fails.
    pub fn write(&mut self, bytes: &[u8]) -> Result<(), StoreError> {
        self.file
            .write_all(bytes)
            .map_err(StoreError::io("write temp blob", &self.tmp))?;
        self.hasher.update(bytes);
        self.len += bytes.len() as u64;
        Ok(())
    }

    /// Bytes written so far (where a resumed download continues).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// The digest of what was written so far.
    pub fn digest(&self) -> Digest {
        Digest::from_hasher(self.hasher.clone())
    }

    /// Whether nothing was written yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Discards what was written, to start over (a server that ignored a `Range`).
    ///
    /// # Errors
    /// [`StoreError::Io`] when truncating fails.
    pub fn reset(&mut self) -> Result<(), StoreError> {
        self.file
            .set_len(0)
            .map_err(StoreError::io("truncate temp blob", &self.tmp))?;
        self.file
            .rewind()
            .map_err(StoreError::io("seek temp blob", &self.tmp))?;
        self.hasher = Sha256::new();
        self.len = 0;
        Ok(())
    }

    /// Verifies that the content hashes to `expected`, then fsyncs and renames it to
    /// `blobs/sha256/<hex>` (and fsyncs the directory, so the rename survives a crash).
    ///
    /// # Errors
    /// [`StoreError::DigestMismatch`] (the temp file is removed), or [`StoreError::Io`].
    pub fn commit(self, expected: &Digest) -> Result<PathBuf, StoreError> {
        let actual = Digest::from_hasher(self.hasher.clone());
        if &actual != expected {
            return Err(StoreError::DigestMismatch {
                expected: expected.clone(),
                actual,
            });
        }
        self.file
            .sync_all()
            .map_err(StoreError::io("fsync temp blob", &self.tmp))?;
        let dest = self.blobs_dir.join(expected.hex());
        std::fs::rename(&self.tmp, &dest).map_err(StoreError::io("rename blob into", &dest))?;
        sync_dir(&self.blobs_dir)?;
        // The temp path no longer exists; Drop's remove_file fails quietly.
        Ok(dest)
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.tmp);
    }
}

/// fsyncs a directory so that renames and unlinks in it are durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(StoreError::io("fsync directory", dir))
}
