//! Errors of the content-addressed store.

use std::path::PathBuf;

use crate::digest::Digest;
use crate::reference::Reference;

/// What went wrong in the store; each variant names the path, digest or reference involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("store: {op} {path}: {source}")]
    Io {
        /// What was being done (`create`, `rename`, `fsync`, ...).
        op: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Content did not hash to the digest it was stored under. Nothing was stored.
    #[error("digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// The digest the content was supposed to have.
        expected: Digest,
        /// What it actually hashed to.
        actual: Digest,
    },
    /// A blob an image needs is not in the store.
    #[error("blob {digest} is missing from the store")]
    MissingBlob {
        /// The missing blob.
        digest: Digest,
    },
    /// The image index on disk does not parse.
    #[error("image index {path} is corrupt: {source}")]
    IndexCorrupt {
        /// `index.json`.
        path: PathBuf,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// The image index was written by a newer Cairn.
    #[error("image index {path} has version {found}, this build reads up to {supported}")]
    IndexVersion {
        /// `index.json`.
        path: PathBuf,
        /// The version on disk.
        found: u32,
        /// The newest version this build reads.
        supported: u32,
    },
    /// An image config blob is not a valid OCI/Docker image config.
    #[error("image config {digest} is malformed: {source}")]
    BadConfig {
        /// The config blob.
        digest: Digest,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// No image with this reference is in the store.
    #[error("image {reference} is not in the store")]
    UnknownImage {
        /// The reference asked for.
        reference: Reference,
    },
    /// Taking a lock file failed.
    #[error("store: lock {path}: {source}")]
    Lock {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: nix::errno::Errno,
    },
}

impl StoreError {
    pub(crate) fn io(
        op: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { op, path, source }
    }
}
