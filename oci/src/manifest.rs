//! Manifests, indexes, descriptors and platforms, in both Docker (schema 2) and OCI shapes.
//!
//! Docker's schema 2 manifest and manifest list have the same JSON shape as the OCI image
//! manifest and index (the OCI spec grew out of them), so one set of types reads both; the
//! media type says which it is. Schema 1 manifests (deprecated, signed, no config blob) are
//! refused as an unknown media type.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

/// Media types this crate reads (image spec `media-types.md`, Docker's schema 2 spec).
pub mod media_type {
    /// Docker schema 2 image manifest.
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    /// Docker manifest list.
    pub const DOCKER_MANIFEST_LIST: &str =
        "application/vnd.docker.distribution.manifest.list.v2+json";
    /// OCI image manifest.
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    /// OCI image index.
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    /// Docker image config.
    pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
    /// OCI image config.
    pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
    /// Docker gzip layer.
    pub const DOCKER_LAYER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
    /// Docker foreign (non-distributable) gzip layer.
    pub const DOCKER_FOREIGN_LAYER_GZIP: &str =
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";
    /// OCI uncompressed layer.
    pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    /// OCI gzip layer.
    pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
    /// OCI zstd layer.
    pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
    /// The `Accept` header for manifest requests: every manifest kind this crate reads.
    pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
         application/vnd.docker.distribution.manifest.list.v2+json, \
         application/vnd.oci.image.manifest.v1+json, \
         application/vnd.docker.distribution.manifest.v2+json";
}

/// How a layer blob is compressed, from its media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip-compressed tar.
    Gzip,
    /// zstd-compressed tar.
    Zstd,
}

/// The compression of a layer with `media_type`, or `None` for a media type that is not a layer
/// this crate can unpack. Non-distributable OCI variants are layers like any other here.
pub fn layer_compression(media_type: &str) -> Option<Compression> {
    use self::media_type as m;
    let base = media_type.replace(".nondistributable", "");
    match base.as_str() {
        m::OCI_LAYER_TAR | "application/vnd.docker.image.rootfs.diff.tar" => {
            Some(Compression::None)
        }
        m::OCI_LAYER_GZIP | m::DOCKER_LAYER_GZIP | m::DOCKER_FOREIGN_LAYER_GZIP => {
            Some(Compression::Gzip)
        }
        m::OCI_LAYER_ZSTD | "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            Some(Compression::Zstd)
        }
        _ => None,
    }
}

/// A platform: what a manifest list entry or an image config is built for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// CPU architecture in Go's naming (`amd64`, `arm64`, `arm`, ...).
    pub architecture: String,
    /// Operating system (`linux`).
    pub os: String,
    /// CPU variant (`v7`, `v8`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
}

impl Default for Platform {
    /// `linux/amd64`, Docker's default on the hosts Cairn runs on.
    fn default() -> Self {
        Self {
            architecture: "amd64".into(),
            os: "linux".into(),
            variant: None,
        }
    }
}

impl Platform {
    /// Parses `os/arch[/variant]`, e.g. `linux/arm64/v8`; `None` when malformed.
    pub fn parse(s: &str) -> Option<Self> {
        let mut parts = s.split('/');
        let os = parts.next().filter(|p| !p.is_empty())?;
        let arch = parts.next().filter(|p| !p.is_empty())?;
        let variant = parts.next().map(str::to_string);
        if parts.next().is_some() {
            return None;
        }
        Some(Self {
            os: os.into(),
            architecture: normalise_arch(arch).into(),
            variant,
        })
    }

    /// Whether an image for `other` runs where `self` is wanted: same OS and architecture,
    /// and the same variant when `self` names one.
    pub fn matches(&self, other: &Platform) -> bool {
        self.os == other.os
            && normalise_arch(&self.architecture) == normalise_arch(&other.architecture)
            && self
                .variant
                .as_ref()
                .is_none_or(|v| other.variant.as_ref() == Some(v))
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Go's names for the architectures that `uname -m` spells differently.
fn normalise_arch(arch: &str) -> &str {
    match arch {
        "x86_64" | "x86-64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// A content descriptor: what a manifest says about one blob or sub-manifest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    /// The media type of the referenced content.
    #[serde(default)]
    pub media_type: String,
    /// Its digest.
    pub digest: Digest,
    /// Its size in bytes.
    pub size: u64,
    /// For index entries: the platform of the referenced manifest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    /// Free-form annotations (`org.opencontainers.image.ref.name` in OCI layouts).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
}

/// An image manifest: one config blob and the ordered layers, bottom first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    /// 2 for both Docker schema 2 and OCI.
    pub schema_version: u32,
    /// The manifest's media type when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The image config blob.
    pub config: Descriptor,
    /// Layer blobs, bottom first.
    pub layers: Vec<Descriptor>,
}

/// A manifest list / image index: one manifest per platform.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    /// 2.
    pub schema_version: u32,
    /// The index's media type when it states one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    /// The platform manifests.
    pub manifests: Vec<Descriptor>,
}

/// A manifest body of either kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Manifest {
    /// A single-platform image manifest.
    Image(ImageManifest),
    /// A manifest list or OCI index.
    Index(ImageIndex),
}

/// Why a manifest body could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// The manifest (or one of its layers) has a media type this crate does not read.
    #[error("unknown media type {media_type:?}")]
    UnknownMediaType {
        /// The media type.
        media_type: String,
    },
    /// The body is not the JSON the media type promises.
    #[error("malformed {media_type} manifest: {source}")]
    Malformed {
        /// The media type it was read as.
        media_type: String,
        /// The JSON error.
        source: serde_json::Error,
    },
}

/// The `mediaType` field of a JSON body, if any.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    #[serde(default)]
    media_type: Option<String>,
    #[serde(default)]
    manifests: Option<serde_json::Value>,
    #[serde(default)]
    schema_version: Option<u32>,
}

/// Parses a manifest body. The media type is the HTTP `Content-Type` when given (registries
/// state it), else the body's `mediaType`, else (OCI allows omitting it) the body's shape.
/// Every layer's media type must be one [`layer_compression`] knows.
///
/// # Errors
/// [`ManifestError::UnknownMediaType`] for schema 1, unknown manifest or layer media types;
/// [`ManifestError::Malformed`] for bodies that do not parse.
pub fn parse_manifest(content_type: Option<&str>, body: &[u8]) -> Result<Manifest, ManifestError> {
    use media_type as m;
    let probe: Probe = serde_json::from_slice(body).map_err(|source| ManifestError::Malformed {
        media_type: content_type.unwrap_or("unknown").to_string(),
        source,
    })?;
    let content_type = content_type
        .map(|c| c.split(';').next().unwrap_or(c).trim())
        .filter(|c| !c.is_empty() && *c != "application/json" && *c != "text/plain");
    let media_type = match (content_type, &probe.media_type) {
        (Some(c), _) => c.to_string(),
        (None, Some(t)) => t.clone(),
        (None, None) if probe.schema_version == Some(1) => {
            "application/vnd.docker.distribution.manifest.v1+json".to_string()
        }
        (None, None) if probe.manifests.is_some() => m::OCI_INDEX.to_string(),
        (None, None) => m::OCI_MANIFEST.to_string(),
    };
    let malformed = |source| ManifestError::Malformed {
        media_type: media_type.clone(),
        source,
    };
    match media_type.as_str() {
        m::DOCKER_MANIFEST | m::OCI_MANIFEST => {
            let manifest: ImageManifest = serde_json::from_slice(body).map_err(malformed)?;
            for layer in &manifest.layers {
                if layer_compression(&layer.media_type).is_none() {
                    return Err(ManifestError::UnknownMediaType {
                        media_type: layer.media_type.clone(),
                    });
                }
            }
            Ok(Manifest::Image(manifest))
        }
        m::DOCKER_MANIFEST_LIST | m::OCI_INDEX => Ok(Manifest::Index(
            serde_json::from_slice(body).map_err(malformed)?,
        )),
        _ => Err(ManifestError::UnknownMediaType { media_type }),
    }
}

/// The entry of `index` for `wanted`, or the platforms the index does offer.
///
/// # Errors
/// The list of available platforms when none matches.
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    wanted: &Platform,
) -> Result<&'a Descriptor, Vec<Platform>> {
    // Entries without a platform (attestations, unknown/unknown) are never selected.
    index
        .manifests
        .iter()
        .find(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p)))
        .ok_or_else(|| {
            index
                .manifests
                .iter()
                .filter_map(|d| d.platform.clone())
                .collect()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desc(platform: Option<&str>) -> Descriptor {
        Descriptor {
            media_type: media_type::OCI_MANIFEST.into(),
            digest: Digest::of(platform.unwrap_or("").as_bytes()),
            size: 1,
            platform: platform.and_then(Platform::parse),
            annotations: None,
        }
    }

    #[test]
    fn selects_platform() {
        let index = ImageIndex {
            schema_version: 2,
            media_type: None,
            manifests: vec![
                desc(None),
                desc(Some("linux/arm64/v8")),
                desc(Some("linux/amd64")),
            ],
        };
        let got = select_platform(&index, &Platform::default()).unwrap();
        assert_eq!(got.platform, Platform::parse("linux/amd64"));
        let got = select_platform(&index, &Platform::parse("linux/aarch64").unwrap()).unwrap();
        assert_eq!(got.platform, Platform::parse("linux/arm64/v8"));
        let err = select_platform(&index, &Platform::parse("linux/s390x").unwrap()).unwrap_err();
        assert_eq!(err.len(), 2);
    }

    #[test]
    fn parses_by_content_type_body_or_shape() {
        let cfg = format!(
            r#"{{"mediaType":"x","digest":"{}","size":1}}"#,
            Digest::of(b"")
        );
        let layer = |mt: &str| {
            format!(
                r#"{{"mediaType":"{mt}","digest":"{}","size":1}}"#,
                Digest::of(b"")
            )
        };
        let body = format!(
            r#"{{"schemaVersion":2,"config":{cfg},"layers":[{}]}}"#,
            layer(media_type::OCI_LAYER_GZIP)
        );
        assert!(matches!(
            parse_manifest(None, body.as_bytes()),
            Ok(Manifest::Image(_))
        ));
        let body = r#"{"schemaVersion":2,"manifests":[]}"#;
        assert!(matches!(
            parse_manifest(None, body.as_bytes()),
            Ok(Manifest::Index(_))
        ));
        let err = parse_manifest(Some("application/x-what"), body.as_bytes()).unwrap_err();
        assert!(
            matches!(err, ManifestError::UnknownMediaType { .. }),
            "{err}"
        );
        let bad = format!(
            r#"{{"schemaVersion":2,"config":{cfg},"layers":[{}]}}"#,
            layer("application/x-rar")
        );
        let err = parse_manifest(Some(media_type::OCI_MANIFEST), bad.as_bytes()).unwrap_err();
        assert!(err.to_string().contains("application/x-rar"), "{err}");
        let v1 = r#"{"schemaVersion":1,"fsLayers":[]}"#;
        assert!(matches!(
            parse_manifest(None, v1.as_bytes()),
            Err(ManifestError::UnknownMediaType { .. })
        ));
    }

    #[test]
    fn layer_media_types() {
        use media_type as m;
        assert_eq!(
            layer_compression(m::DOCKER_LAYER_GZIP),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression(m::OCI_LAYER_ZSTD),
            Some(Compression::Zstd)
        );
        assert_eq!(layer_compression(m::OCI_LAYER_TAR), Some(Compression::None));
        assert_eq!(
            layer_compression("application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"),
            Some(Compression::Gzip)
        );
        assert_eq!(layer_compression("text/plain"), None);
    }
}
