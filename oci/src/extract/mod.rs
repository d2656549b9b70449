//! Safe extraction of image layers.
//!
//! A layer is a tar stream, plain, gzip or zstd (detected from the media type and, decisively,
//! the magic bytes). [`extract_layer`] unpacks one onto a directory and guarantees that nothing
//! is written outside it, whatever the tar holds:
//!
//! - names are made relative (leading `/` stripped) and any `..` component is refused;
//! - every parent directory is opened component by component from the target's descriptor
//!   with `O_NOFOLLOW`, so an entry that goes through a symlink (`evil -> /etc` followed by
//!   `evil/passwd`, or a directory replaced by a symlink) is refused;
//! - symlinks are created verbatim and never followed; hardlinks must name an existing
//!   non-directory inside the target;
//! - device nodes and fifos are skipped unless [`ExtractOptions::allow_devices`] is set;
//! - `trusted.overlay.*` xattrs from a layer are dropped, so a layer cannot forge whiteouts.
//!
//! Whiteouts (image-spec `layer.md`) are either converted to overlayfs form, for layers kept
//! in their own directories and stacked by overlayfs ([`WhiteoutMode::Overlay`]: a 0/0
//! character device per deleted name, `trusted.overlay.opaque=y` on opaque directories), or
//! applied directly when layers are unpacked onto one directory ([`WhiteoutMode::Apply`]).
//!
//! [`LayerCache`] keeps each extracted layer under its digest, so the second container from
//! an image costs no extraction.

mod cache;
mod compression;
pub(crate) mod fsops;
mod path;
mod unpack;

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub use cache::LayerCache;
pub use compression::Compression;

/// How whiteout entries are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// The target holds this layer alone and overlayfs will stack it: write whiteouts as 0/0
    /// character devices and opaque directories as `trusted.overlay.opaque=y` (needs root).
    Overlay,
    /// The target holds the lower layers already: delete what the whiteouts name.
    Apply,
}

/// How a layer is extracted.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// How whiteouts are written; [`WhiteoutMode::Overlay`] by default.
    pub whiteouts: WhiteoutMode,
    /// Create device nodes and fifos from the layer (default: skip them, as they are a way
    /// for an image to reach host devices).
    pub allow_devices: bool,
    /// Give entries the uid/gid from the layer. `None` (default): only when running as root,
    /// since only root can chown.
    pub preserve_ownership: Option<bool>,
    /// Restore `user.*` and `security.capability` xattrs (default: yes).
    pub xattrs: bool,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        ExtractOptions {
            whiteouts: WhiteoutMode::Overlay,
            allow_devices: false,
            preserve_ownership: None,
            xattrs: true,
        }
    }
}

impl ExtractOptions {
    fn ownership(&self) -> bool {
        self.preserve_ownership
            .unwrap_or_else(|| rustix::process::geteuid().is_root())
    }
}

/// What one extraction did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LayerStats {
    /// Tar members seen (not counting PAX and GNU long-name headers).
    pub entries: u64,
    /// Regular files written.
    pub files: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Whiteouts and opaque markers handled.
    pub whiteouts: u64,
    /// Members deliberately not created: device nodes and fifos (unless allowed), unknown
    /// entry types, aufs metadata.
    pub skipped: Vec<PathBuf>,
}

/// Why a layer could not be extracted. Errors about one member name it in `entry` (as
/// written in the tar, before any sanitising).
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// The blob could not be opened.
    #[error("cannot open layer blob {path}: {source}")]
    OpenBlob { path: PathBuf, source: io::Error },
    /// The target directory could not be opened.
    #[error("cannot open extraction target {path}: {source}")]
    Target { path: PathBuf, source: io::Error },
    /// The compressed stream or the tar structure is corrupt or truncated.
    #[error("cannot read layer archive: {source}")]
    Read { source: io::Error },
    /// The media type is not a layer's.
    #[error("unsupported layer media type {media_type:?}")]
    UnsupportedMediaType { media_type: String },
    /// The blob is compressed in a format OCI layers do not use.
    #[error("unsupported layer compression {format}")]
    UnsupportedCompression { format: &'static str },
    /// A member name is unsafe or unusable.
    #[error("refusing layer entry {entry:?}: {reason}")]
    UnsafePath {
        entry: PathBuf,
        reason: &'static str,
    },
    /// A member's parent path goes through a symlink or a non-directory.
    #[error(
        "refusing layer entry {entry:?}: {component:?} on its path is a symlink or not a directory"
    )]
    ThroughSymlink { entry: PathBuf, component: PathBuf },
    /// A hardlink whose target is outside the layer, missing or a directory.
    #[error("refusing hardlink {entry:?} to {target:?}: {reason}")]
    HardlinkOutside {
        entry: PathBuf,
        target: PathBuf,
        reason: &'static str,
    },
    /// A filesystem operation on a member failed.
    #[error("cannot {op} layer entry {entry:?}: {source}")]
    Entry {
        entry: PathBuf,
        op: &'static str,
        source: io::Error,
    },
    /// The digest is not `sha256:<64 hex>` or `sha512:<128 hex>`.
    #[error("invalid layer digest {digest:?}")]
    InvalidDigest { digest: String },
    /// The blob's content does not hash to its digest.
    #[error("layer blob digest mismatch: expected {expected}, got {actual}")]
    DigestMismatch { expected: String, actual: String },
    /// The layer cache's own files could not be managed.
    #[error("layer cache: cannot {op} {path}: {source}")]
    Cache {
        op: &'static str,
        path: PathBuf,
        source: io::Error,
    },
}

impl ExtractError {
    /// The tar member this error is about, if any.
    #[must_use]
    pub fn entry(&self) -> Option<&Path> {
        match self {
            ExtractError::UnsafePath { entry, .. }
            | ExtractError::ThroughSymlink { entry, .. }
            | ExtractError::HardlinkOutside { entry, .. }
            | ExtractError::Entry { entry, .. } => Some(entry),
            _ => None,
        }
    }
}

/// Extracts the layer stream `reader` (compressed or not, per `media_type` and its magic
/// bytes; an empty media type means "sniff") onto the existing directory `target`.
///
/// On error the target is left partially written (but nothing outside it is touched):
/// extract into a scratch directory and discard it, as [`LayerCache`] does.
///
/// # Errors
/// See [`ExtractError`].
pub fn extract_layer(
    reader: impl io::Read,
    media_type: &str,
    target: &Path,
    opts: &ExtractOptions,
) -> Result<LayerStats, ExtractError> {
    let (_, mut tar) = compression::decompress(reader, media_type)?;
    let stats = unpack::unpack(&mut tar, target, opts)?;
    // Trailing zero blocks and padding after the end-of-archive marker.
    compression::drain(tar).map_err(|source| ExtractError::Read { source })?;
    Ok(stats)
}

/// [`extract_layer`] from a blob file.
///
/// # Errors
/// See [`ExtractError`].
pub fn extract_layer_file(
    blob: &Path,
    media_type: &str,
    target: &Path,
    opts: &ExtractOptions,
) -> Result<LayerStats, ExtractError> {
    let file = File::open(blob).map_err(|source| ExtractError::OpenBlob {
        path: blob.to_owned(),
        source,
    })?;
    extract_layer(file, media_type, target, opts)
}
