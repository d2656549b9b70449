//! The persisted image index: which references the store holds and what they are made of.

use std::collections::BTreeMap;

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::manifest::Compression;

/// The version this build writes; older versions are migrated on read.
pub const INDEX_VERSION: u32 = 1;

/// `index.json` at the store root, replaced atomically on every change.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IndexFile {
    /// Format version ([`INDEX_VERSION`]).
    pub version: u32,
    /// Images by normalised reference (`registry/repo:tag` or `registry/repo@sha256:...`).
    pub images: BTreeMap<String, ImageRecord>,
}

impl Default for IndexFile {
    fn default() -> Self {
        Self {
            version: INDEX_VERSION,
            images: BTreeMap::new(),
        }
    }
}

/// One image as stored: its manifest, parsed config and ordered layers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Digest of the image manifest (for a manifest list: of the selected platform's manifest).
    pub manifest_digest: Digest,
    /// Media type of that manifest.
    pub manifest_media_type: String,
    /// Digest of the image config blob.
    pub config_digest: Digest,
    /// The parsed image config.
    pub config: ImageConfiguration,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// Where the image came from (`registry`, `docker-archive`, `oci-layout`).
    pub source: String,
    /// When it was stored, seconds since the epoch.
    pub stored_at: u64,
}

/// One layer of an image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    /// The layer blob's digest (of the compressed bytes, as in the manifest).
    pub digest: Digest,
    /// Its media type as the manifest states it.
    pub media_type: String,
    /// Its compression, derived from the media type.
    pub compression: Compression,
    /// Its size in bytes.
    pub size: u64,
}

impl ImageRecord {
    /// Every blob this image keeps alive: manifest, config and layers.
    pub fn blobs(&self) -> impl Iterator<Item = &Digest> {
        [&self.manifest_digest, &self.config_digest]
            .into_iter()
            .chain(self.layers.iter().map(|l| &l.digest))
    }
}
