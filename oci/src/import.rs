//! Importing images from disk, for air-gapped fleets: `docker save` tarballs and OCI image
//! layouts. Every blob is hashed on the way into the store, so a corrupt file is refused
//! before any image names it.

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Component, Path, PathBuf};

use serde::Deserialize;

use crate::digest::Digest;
use crate::manifest::{
    media_type, parse_manifest, select_platform, Descriptor, ImageManifest, Manifest,
    ManifestError, Platform,
};
use crate::reference::{Reference, ReferenceError};
use crate::store::{BlobWriter, Image, ImageRecord, Store, StoreError};

/// The OCI layout annotation naming a tag (image spec `image-layout.md`).
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Why an import failed. The store is left as it was, apart from unreferenced blobs.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Reading the archive or layout failed.
    #[error("import {path}: {op}: {source}")]
    Io {
        /// What was being read.
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// A file the format requires is absent.
    #[error("import {path}: missing {entry}")]
    MissingEntry {
        /// The archive or layout.
        path: PathBuf,
        /// The missing entry (`manifest.json`, a layer path, a blob).
        entry: String,
    },
    /// A JSON file of the format does not parse.
    #[error("import {path}: malformed {entry}: {source}")]
    BadJson {
        /// The archive or layout.
        path: PathBuf,
        /// The file.
        entry: String,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A manifest in an OCI layout is unreadable or of an unknown media type.
    #[error("import {path}: manifest {digest}: {source}")]
    Manifest {
        /// The layout.
        path: PathBuf,
        /// The manifest.
        digest: Digest,
        /// What was wrong.
        source: ManifestError,
    },
    /// A blob's content does not match its digest.
    #[error("import {path}: {entry} should have digest {expected} but has {actual}")]
    DigestMismatch {
        /// The archive or layout.
        path: PathBuf,
        /// The blob's entry.
        entry: String,
        /// The digest it is named by.
        expected: Digest,
        /// The digest of its content.
        actual: Digest,
    },
    /// An image name in the archive (`RepoTags`, `ref.name`) is not a valid reference.
    #[error("import {path}: {source}")]
    Reference {
        /// The archive or layout.
        path: PathBuf,
        /// What was wrong with the name.
        source: ReferenceError,
    },
    /// The archive names no image and no reference was given to store it under.
    #[error("import {path}: the image has no name (RepoTags is empty); give a reference")]
    Unnamed {
        /// The archive.
        path: PathBuf,
    },
    /// An index in the layout has no manifest for the wanted platform.
    #[error("import {path}: no image for {wanted} (available: {available:?})")]
    NoMatchingPlatform {
        /// The layout.
        path: PathBuf,
        /// The platform asked for.
        wanted: Platform,
        /// The platforms the index offers.
        available: Vec<Platform>,
    },
    /// Writing to the store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ImportError + 'a {
    move |source| ImportError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// One image in a `docker save` `manifest.json`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ArchiveManifest {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// A file of the archive spooled into the store's temp dir.
struct Spooled {
    writer: BlobWriter,
    magic: [u8; 4],
}

/// Imports every image of a `docker save` tarball (plain tar: `manifest.json`, a config JSON
/// and one tar per layer, in the legacy `<id>/layer.tar` or the newer `blobs/sha256/` shape).
/// Images are stored under their `RepoTags`, or under `name` when given (for untagged saves).
/// Layer media types are derived from the layer bytes (gzip, zstd or plain tar), and a
/// synthesised OCI manifest gives each image its manifest digest.
///
/// # Errors
/// [`ImportError`] naming the archive and entry; nothing is recorded for a bad archive.
pub fn import_docker_archive(
    store: &Store,
    archive: &Path,
    name: Option<&Reference>,
) -> Result<Vec<Image>, ImportError> {
    let _writer = store.writer_lock()?;
    let file = File::open(archive).map_err(io_err("open", archive))?;
    let mut tar = tar::Archive::new(file);
    let mut files: HashMap<String, Spooled> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut json: HashMap<String, Vec<u8>> = HashMap::new();
    for entry in tar.entries().map_err(io_err("read tar", archive))? {
        let mut entry = entry.map_err(io_err("read tar entry", archive))?;
        let path = entry
            .path()
            .map_err(io_err("read tar entry path", archive))?;
        let path = normalise(&path);
        let kind = entry.header().entry_type();
        if kind.is_symlink() || kind.is_hard_link() {
            if let Ok(Some(target)) = entry.link_name() {
                let base = if kind.is_symlink() {
                    Path::new(&path)
                        .parent()
                        .unwrap_or(Path::new(""))
                        .join(target)
                } else {
                    target.into_owned()
                };
                links.insert(path, normalise(&base));
            }
            continue;
        }
        if !kind.is_file() {
            continue;
        }
        if path.ends_with(".json") && entry.size() < 16 << 20 {
            let mut bytes = Vec::new();
            entry
                .read_to_end(&mut bytes)
                .map_err(io_err("read tar entry", archive))?;
            json.insert(path, bytes);
            continue;
        }
        let mut writer = store.blob_writer()?;
        let mut magic = [0u8; 4];
        let mut buf = vec![0u8; 256 << 10];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(io_err("read tar entry", archive))?;
            if n == 0 {
                break;
            }
            if writer.len() < 4 {
                let at = usize::try_from(writer.len()).expect("less than 4");
                let take = (4 - at).min(n);
                magic[at..at + take].copy_from_slice(&buf[..take]);
            }
            writer.write(&buf[..n])?;
        }
        files.insert(path, Spooled { writer, magic });
    }
    let resolve = |p: &str| -> String {
        let mut p = normalise(Path::new(p));
        for _ in 0..8 {
            match links.get(&p) {
                Some(t) => p.clone_from(t),
                None => break,
            }
        }
        p
    };
    let missing = |entry: &str| ImportError::MissingEntry {
        path: archive.to_path_buf(),
        entry: entry.to_string(),
    };
    let manifest_bytes = json
        .get("manifest.json")
        .ok_or_else(|| missing("manifest.json"))?;
    let manifests: Vec<ArchiveManifest> =
        serde_json::from_slice(manifest_bytes).map_err(|source| ImportError::BadJson {
            path: archive.to_path_buf(),
            entry: "manifest.json".into(),
            source,
        })?;
    // Check every image before storing any, so a bad archive records nothing.
    let mut plans = Vec::new();
    for m in &manifests {
        let refs: Vec<Reference> = match (name, &m.repo_tags) {
            (Some(n), _) => vec![n.clone()],
            (None, Some(tags)) if !tags.is_empty() => tags
                .iter()
                .map(|t| Reference::parse(t))
                .collect::<Result<_, _>>()
                .map_err(|source| ImportError::Reference {
                    path: archive.to_path_buf(),
                    source,
                })?,
            _ => {
                return Err(ImportError::Unnamed {
                    path: archive.to_path_buf(),
                })
            }
        };
        let config_path = resolve(&m.config);
        let config = match json.get(&config_path) {
            Some(bytes) => bytes.clone(),
            None => return Err(missing(&m.config)),
        };
        let mut layers = Vec::new();
        for l in &m.layers {
            let p = resolve(l);
            let spooled = files.get(&p).ok_or_else(|| missing(l))?;
            let media = match spooled.magic {
                [0x1f, 0x8b, _, _] => media_type::OCI_LAYER_GZIP,
                [0x28, 0xb5, 0x2f, 0xfd] => media_type::OCI_LAYER_ZSTD,
                _ => media_type::OCI_LAYER_TAR,
            };
            layers.push(Descriptor {
                media_type: media.into(),
                digest: spooled.writer.digest(),
                size: spooled.writer.len(),
                platform: None,
                annotations: None,
            });
        }
        let manifest = ImageManifest {
            schema_version: 2,
            media_type: Some(media_type::OCI_MANIFEST.into()),
            config: Descriptor {
                media_type: media_type::OCI_CONFIG.into(),
                digest: Digest::of(&config),
                size: config.len() as u64,
                platform: None,
                annotations: None,
            },
            layers,
        };
        let manifest_json = serde_json::to_vec(&manifest).expect("a manifest serialises");
        let manifest_digest = Digest::of(&manifest_json);
        let record = ImageRecord::new(
            manifest_digest.clone(),
            media_type::OCI_MANIFEST,
            &manifest,
            &config,
            "docker-archive",
        )?;
        plans.push((
            refs,
            record,
            manifest_json,
            manifest_digest,
            config,
            m.layers.clone(),
        ));
    }
    let mut images = Vec::new();
    for (refs, record, manifest_json, manifest_digest, config, layer_paths) in plans {
        for p in layer_paths {
            let p = resolve(&p);
            if let Some(spooled) = files.remove(&p) {
                let digest = spooled.writer.digest();
                if !store.has_blob(&digest) {
                    spooled.writer.commit(&digest)?;
                }
            }
        }
        store.put_blob(&record.config_digest, &config)?;
        store.put_blob(&manifest_digest, &manifest_json)?;
        for r in refs {
            images.push(store.put_image(&r, record.clone())?);
        }
    }
    Ok(images)
}

/// `a/./b/../c` -> `a/c`, without touching the filesystem (tar paths are archive-relative).
fn normalise(p: &Path) -> String {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(s) => out.push(s.to_string_lossy().into_owned()),
            Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out.join("/")
}

/// Imports the images of an OCI image layout directory (`oci-layout`, `index.json`,
/// `blobs/sha256/`). Each `index.json` entry with an `org.opencontainers.image.ref.name`
/// annotation is stored as `name` with that tag (or as the annotation itself when it is a
/// full reference); an entry without one is stored as `name`. Indexes are resolved to the
/// manifest for `platform`.
///
/// # Errors
/// [`ImportError`] naming the layout and the blob; images checked before are still recorded.
pub fn import_oci_layout(
    store: &Store,
    layout: &Path,
    name: &Reference,
    platform: &Platform,
) -> Result<Vec<Image>, ImportError> {
    let _writer = store.writer_lock()?;
    let index_path = layout.join("index.json");
    let index_bytes = std::fs::read(&index_path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImportError::MissingEntry {
            path: layout.to_path_buf(),
            entry: "index.json".into(),
        },
        _ => io_err("read", &index_path)(e),
    })?;
    let index: crate::manifest::ImageIndex =
        serde_json::from_slice(&index_bytes).map_err(|source| ImportError::BadJson {
            path: layout.to_path_buf(),
            entry: "index.json".into(),
            source,
        })?;
    let mut images = Vec::new();
    for entry in &index.manifests {
        let reference = match entry
            .annotations
            .as_ref()
            .and_then(|a| a.get(REF_NAME_ANNOTATION))
        {
            Some(tag) if tag.contains(['/', ':', '@']) => Reference::parse(tag),
            Some(tag) => name.with_tag(tag),
            None => Ok(name.clone()),
        }
        .map_err(|source| ImportError::Reference {
            path: layout.to_path_buf(),
            source,
        })?;
        let (digest, manifest, media) = resolve_layout_manifest(store, layout, entry, platform)?;
        copy_blob(store, layout, &manifest.config.digest)?;
        for layer in &manifest.layers {
            copy_blob(store, layout, &layer.digest)?;
        }
        let config = store.read_blob(&manifest.config.digest)?;
        let record = ImageRecord::new(digest, &media, &manifest, &config, "oci-layout")?;
        images.push(store.put_image(&reference, record)?);
    }
    Ok(images)
}

/// Follows `entry` (through an index, by platform) to an image manifest, storing each
/// manifest blob on the way.
fn resolve_layout_manifest(
    store: &Store,
    layout: &Path,
    entry: &Descriptor,
    platform: &Platform,
) -> Result<(Digest, ImageManifest, String), ImportError> {
    let mut desc = entry.clone();
    // An index may nest indexes; two levels is more than any tool writes.
    for _ in 0..4 {
        copy_blob(store, layout, &desc.digest)?;
        let bytes = store.read_blob(&desc.digest)?;
        let ct = Some(desc.media_type.as_str()).filter(|m| !m.is_empty());
        let parsed = parse_manifest(ct, &bytes).map_err(|source| ImportError::Manifest {
            path: layout.to_path_buf(),
            digest: desc.digest.clone(),
            source,
        })?;
        match parsed {
            Manifest::Image(m) => {
                let media = m
                    .media_type
                    .clone()
                    .unwrap_or_else(|| desc.media_type.clone());
                return Ok((desc.digest, m, media));
            }
            Manifest::Index(idx) => {
                desc = select_platform(&idx, platform)
                    .map_err(|available| ImportError::NoMatchingPlatform {
                        path: layout.to_path_buf(),
                        wanted: platform.clone(),
                        available,
                    })?
                    .clone();
            }
        }
    }
    Err(ImportError::MissingEntry {
        path: layout.to_path_buf(),
        entry: format!("an image manifest under {}", entry.digest),
    })
}

/// Copies `blobs/sha256/<hex>` of the layout into the store, verifying its digest.
fn copy_blob(store: &Store, layout: &Path, digest: &Digest) -> Result<(), ImportError> {
    if store.has_blob(digest) {
        return Ok(());
    }
    let entry = format!("blobs/sha256/{}", digest.hex());
    let src = layout.join(&entry);
    let mut file = File::open(&src).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => ImportError::MissingEntry {
            path: layout.to_path_buf(),
            entry: entry.clone(),
        },
        _ => io_err("open", &src)(e),
    })?;
    let mut writer = store.blob_writer()?;
    let mut buf = vec![0u8; 256 << 10];
    loop {
        let n = file.read(&mut buf).map_err(io_err("read", &src))?;
        if n == 0 {
            break;
        }
        writer.write(&buf[..n])?;
    }
    let actual = writer.digest();
    if &actual != digest {
        return Err(ImportError::DigestMismatch {
            path: layout.to_path_buf(),
            entry,
            expected: digest.clone(),
            actual,
        });
    }
    writer.commit(digest)?;
    Ok(())
}
