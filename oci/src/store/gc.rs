//! Garbage collection: remove blobs that no stored image references.

use std::collections::HashSet;
use std::fs;

use super::{blob, FileLock, Store, StoreError};
use crate::digest::Digest;

/// What a GC run removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Blobs removed.
    pub removed: Vec<Digest>,
    /// Bytes freed by removing them.
    pub bytes_freed: u64,
    /// Blobs kept (referenced by some image).
    pub kept: usize,
}

impl Store {
    /// Removes every blob no image in the index references, leftover temp files, and lock
    /// files of blobs that no longer exist. Waits for running pulls and imports to finish
    /// (they hold `store.lock` shared), so a blob fetched for an image not yet recorded is safe.
    ///
    /// # Errors
    /// Lock, index and I/O errors; blobs removed before the error stay removed, which is
    /// consistent (they were unreferenced).
    pub fn gc(&self) -> Result<GcReport, StoreError> {
        let _exclusive = FileLock::acquire(&self.store_lock_path(), true)?;
        let index = self.read_index()?;
        let live: HashSet<&Digest> = index.images.values().flat_map(|r| r.blobs()).collect();
        let mut report = GcReport::default();
        let dir = &self.inner.blobs;
        for entry in fs::read_dir(dir).map_err(StoreError::io("read directory", dir))? {
            let entry = entry.map_err(StoreError::io("read directory", dir))?;
            let path = entry.path();
            let name = entry.file_name();
            let digest = name.to_str().and_then(|n| Digest::from_hex(n).ok());
            if let Some(d) = &digest {
                if live.contains(d) {
                    report.kept += 1;
                    continue;
                }
            }
            let size = entry.metadata().map_or(0, |m| m.len());
            fs::remove_file(&path).map_err(StoreError::io("remove blob", &path))?;
            report.bytes_freed += size;
            if let Some(d) = digest {
                report.removed.push(d);
            }
        }
        blob::sync_dir(dir)?;
        self.clean_tmp()?;
        let locks = &self.inner.locks;
        for entry in fs::read_dir(locks).map_err(StoreError::io("read directory", locks))? {
            let path = entry
                .map_err(StoreError::io("read directory", locks))?
                .path();
            let stale = path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_prefix("blob-")?.strip_suffix(".lock"))
                .and_then(|hex| Digest::from_hex(hex).ok())
                .is_some_and(|d| !self.has_blob(&d));
            if stale {
                let _ = fs::remove_file(&path);
            }
        }
        report.removed.sort();
        Ok(report)
    }
}
