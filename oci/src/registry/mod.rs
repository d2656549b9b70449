//! Pulling images with the Registry HTTP API v2 (distribution's `spec/api.md`, the OCI
//! distribution spec).
//!
//! Our own client on `reqwest` rather than the `oci-client` crate: the store needs control
//! that `oci-client` does not give — blobs streamed straight into the store's temp files and
//! hashed on the way, `Range` resume of a partial blob on the next attempt, per-blob locks
//! so that concurrent pulls fetch a blob once, per-chunk stall timeouts, retries with backoff
//! on 5xx/resets, and progress per layer. The protocol surface we need (challenge auth,
//! manifests, blobs) is small.
//!
//! Plain HTTP is used only for registries listed in [`RegistryConfig::insecure`]; everything
//! else is HTTPS with the webpki root store. (Docker also trusts 127.0.0.0/8 implicitly; we
//! do not: an operator marks a registry insecure on purpose.)

mod auth;
mod error;
mod fetch;
mod progress;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::CONTENT_TYPE;

pub use auth::{
    load_docker_config, normalise_registry_key, parse_challenge, Challenge, Credential,
};
pub use error::PullError;
pub use progress::{Progress, ProgressEvent};

use self::fetch::Target;
use crate::digest::Digest;
use crate::manifest::{
    media_type, parse_manifest, select_platform, ImageManifest, Manifest, Platform,
};
use crate::reference::Reference;
use crate::store::{Image, ImageRecord, Store, StoreError};

/// How to reach registries. Loading it has no side effects; [`Puller::new`] builds the client.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Registries (`host` or `host:port`, as in references) reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Credentials by registry (`docker.io`, `host:port`); see [`load_docker_config`].
    pub credentials: HashMap<String, Credential>,
    /// The platform to select from manifest lists; images for others are refused.
    pub platform: Platform,
    /// Layers downloaded at once (Docker's default is 3).
    pub max_concurrent_downloads: usize,
    /// Attempts per request on transient failures (5xx, 429, resets, truncation).
    pub max_attempts: u32,
    /// First retry delay; doubled on each further attempt.
    pub retry_backoff: Duration,
    /// A request fails with [`PullError::Timeout`] when no response or body bytes arrive for
    /// this long.
    pub stall_timeout: Duration,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self {
            insecure: Vec::new(),
            credentials: HashMap::new(),
            platform: Platform::default(),
            max_concurrent_downloads: 3,
            max_attempts: 5,
            retry_backoff: Duration::from_millis(200),
            stall_timeout: Duration::from_secs(60),
            connect_timeout: Duration::from_secs(10),
        }
    }
}

impl RegistryConfig {
    /// Adds the credentials of a Docker `config.json` (entries already set are kept).
    ///
    /// # Errors
    /// [`PullError::Credentials`] when the file cannot be read or is malformed.
    pub fn with_docker_config(mut self, path: &Path) -> Result<Self, PullError> {
        for (k, v) in load_docker_config(path)? {
            self.credentials.entry(k).or_insert(v);
        }
        Ok(self)
    }
}

/// What a pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullStats {
    /// Blobs (config and layers) downloaded.
    pub blobs_downloaded: usize,
    /// Blobs found in the store.
    pub blobs_cached: usize,
    /// Manifests fetched from the registry (0 when the image was already stored).
    pub manifests_fetched: usize,
}

/// The result of a pull.
#[derive(Debug, Clone)]
pub struct PulledImage {
    /// The stored image.
    pub image: Image,
    /// What it took.
    pub stats: PullStats,
}

/// Pulls images into a [`Store`]. Cheap to clone; clones share the HTTP connection pool and
/// cached tokens.
#[derive(Debug, Clone)]
pub struct Puller {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    store: Store,
    config: RegistryConfig,
    /// `Authorization` values by `registry/repository`, from answered challenges.
    auth: Mutex<HashMap<String, String>>,
}

impl Puller {
    /// Builds the HTTP client.
    ///
    /// # Errors
    /// [`PullError::Client`] when the TLS backend cannot be set up.
    pub fn new(store: Store, config: RegistryConfig) -> Result<Self, PullError> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("cairn/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(config.connect_timeout)
            .build()
            .map_err(PullError::Client)?;
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                store,
                config,
                auth: Mutex::default(),
            }),
        })
    }

    /// The store images are pulled into.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Returns the stored image for `reference` without any network I/O, or pulls it
    /// (Docker's `missing` pull policy, what `docker run` does).
    ///
    /// # Errors
    /// As [`Puller::pull`].
    pub async fn ensure(
        &self,
        reference: &Reference,
        progress: &Progress,
    ) -> Result<PulledImage, PullError> {
        let store_err = |source| PullError::Store {
            reference: Box::new(reference.clone()),
            source,
        };
        if let Some(image) = self.inner.store.image(reference).map_err(store_err)? {
            return Ok(PulledImage {
                image,
                stats: PullStats::default(),
            });
        }
        self.pull(reference, progress).await
    }

    /// Resolves `reference` at its registry (the manifest is always fetched, so a moved tag
    /// is followed) and stores the image, downloading only the blobs not yet stored.
    /// Concurrent pulls of one reference in this process resolve it once; blobs are fetched
    /// once across processes.
    ///
    /// # Errors
    /// A [`PullError`] naming the reference and what failed; no image is recorded then.
    pub async fn pull(
        &self,
        reference: &Reference,
        progress: &Progress,
    ) -> Result<PulledImage, PullError> {
        let store = self.inner.store.clone();
        let store_err = |source: StoreError| PullError::Store {
            reference: Box::new(reference.clone()),
            source,
        };
        let _one = store.lock_key(&format!("pull:{reference}")).await;
        let writer_store = store.clone();
        let _writer = tokio::task::spawn_blocking(move || writer_store.writer_lock())
            .await
            .expect("flock task does not panic")
            .map_err(store_err)?;
        let target = Target { reference };
        let mut stats = PullStats::default();

        let (mut manifest_digest, mut manifest_type, mut parsed) = self
            .fetch_manifest(&target, &reference.manifest_ref(), reference.digest())
            .await?;
        stats.manifests_fetched += 1;
        let from_index = matches!(parsed, Manifest::Index(_));
        if let Manifest::Index(index) = &parsed {
            let wanted = &self.inner.config.platform;
            let desc = select_platform(index, wanted).map_err(|available| {
                PullError::PlatformMismatch {
                    reference: Box::new(reference.clone()),
                    wanted: wanted.clone(),
                    available,
                }
            })?;
            let digest = desc.digest.clone();
            (manifest_digest, manifest_type, parsed) = self
                .fetch_manifest(&target, &digest.to_string(), Some(&digest))
                .await?;
            stats.manifests_fetched += 1;
        }
        let Manifest::Image(manifest) = parsed else {
            return Err(PullError::Manifest {
                reference: Box::new(reference.clone()),
                url: self.manifest_url(reference, &manifest_digest.to_string()),
                source: crate::manifest::ManifestError::UnknownMediaType {
                    media_type: format!("{manifest_type} (an index inside an index)"),
                },
            });
        };
        progress.emit(ProgressEvent::Resolved {
            reference: reference.clone(),
            manifest_digest: manifest_digest.clone(),
            layers: manifest
                .layers
                .iter()
                .map(|l| (l.digest.clone(), l.size))
                .collect(),
        });

        // The config first: it is small, and says whether the image is for our platform.
        let config_digest = manifest.config.digest.clone();
        let fetched = self
            .fetch_blob(
                &target,
                &config_digest,
                manifest.config.size,
                progress,
                false,
            )
            .await?;
        count(&mut stats, fetched);
        let config_bytes = store.read_blob(&config_digest).map_err(store_err)?;
        if !from_index {
            self.check_platform(reference, &config_bytes)?;
        }
        self.fetch_layers(reference, &manifest, progress, &mut stats)
            .await?;

        let manifest_bytes = store.read_blob(&manifest_digest).map_err(store_err)?;
        drop(manifest_bytes);
        let record = ImageRecord::new(
            manifest_digest,
            &manifest_type,
            &manifest,
            &config_bytes,
            "registry",
        )
        .map_err(store_err)?;
        let image = store.put_image(reference, record).map_err(store_err)?;
        Ok(PulledImage { image, stats })
    }

    /// Fetches all layers, at most `max_concurrent_downloads` at once; the first error
    /// cancels the rest.
    async fn fetch_layers(
        &self,
        reference: &Reference,
        manifest: &ImageManifest,
        progress: &Progress,
        stats: &mut PullStats,
    ) -> Result<(), PullError> {
        let permits = Arc::new(tokio::sync::Semaphore::new(
            self.inner.config.max_concurrent_downloads.max(1),
        ));
        let mut tasks = tokio::task::JoinSet::new();
        for layer in &manifest.layers {
            let (this, reference, progress, permits) = (
                self.clone(),
                reference.clone(),
                progress.clone(),
                permits.clone(),
            );
            let (digest, size) = (layer.digest.clone(), layer.size);
            tasks.spawn(async move {
                let _permit = permits
                    .acquire_owned()
                    .await
                    .expect("the semaphore is never closed");
                this.fetch_blob(
                    &Target {
                        reference: &reference,
                    },
                    &digest,
                    size,
                    &progress,
                    true,
                )
                .await
            });
        }
        while let Some(joined) = tasks.join_next().await {
            let fetched = joined.expect("layer download tasks do not panic")?;
            count(stats, fetched);
        }
        Ok(())
    }

    /// GETs a manifest, verifies its digest (against the reference's digest when pinned,
    /// else against `Docker-Content-Digest`), stores it as a blob and parses it.
    async fn fetch_manifest(
        &self,
        target: &Target<'_>,
        manifest_ref: &str,
        pinned: Option<&Digest>,
    ) -> Result<(Digest, String, Manifest), PullError> {
        let reference = target.reference;
        let url = self.manifest_url(reference, manifest_ref);
        let resp = self
            .get(target, &url, Some(media_type::MANIFEST_ACCEPT), None)
            .await?;
        let content_type = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let header_digest = resp
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<Digest>().ok());
        let body = tokio::time::timeout(self.inner.config.stall_timeout, resp.bytes())
            .await
            .map_err(|_| PullError::Timeout {
                reference: Box::new(reference.clone()),
                url: url.clone(),
                secs: self.inner.config.stall_timeout.as_secs(),
            })?
            .map_err(|source| PullError::Http {
                reference: Box::new(reference.clone()),
                url: url.clone(),
                source,
            })?;
        let actual = Digest::of(&body);
        if let Some(expected) = pinned.or(header_digest.as_ref()) {
            if expected != &actual {
                return Err(PullError::DigestMismatch {
                    reference: Box::new(reference.clone()),
                    url,
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        let parsed = parse_manifest(content_type.as_deref(), &body).map_err(|source| {
            PullError::Manifest {
                reference: Box::new(reference.clone()),
                url: url.clone(),
                source,
            }
        })?;
        let media = match (&parsed, content_type.as_deref()) {
            (_, Some(ct)) if !ct.is_empty() => {
                ct.split(';').next().unwrap_or(ct).trim().to_string()
            }
            (Manifest::Image(m), _) => m
                .media_type
                .clone()
                .unwrap_or_else(|| media_type::OCI_MANIFEST.into()),
            (Manifest::Index(i), _) => i
                .media_type
                .clone()
                .unwrap_or_else(|| media_type::OCI_INDEX.into()),
        };
        if matches!(parsed, Manifest::Image(_)) {
            self.inner
                .store
                .put_blob(&actual, &body)
                .map_err(|source| PullError::Store {
                    reference: Box::new(reference.clone()),
                    source,
                })?;
        }
        Ok((actual, media, parsed))
    }

    /// Refuses a single-platform image whose config names another OS or architecture.
    fn check_platform(&self, reference: &Reference, config: &[u8]) -> Result<(), PullError> {
        #[derive(serde::Deserialize)]
        struct ConfigPlatform {
            #[serde(default)]
            architecture: String,
            #[serde(default)]
            os: String,
            #[serde(default)]
            variant: Option<String>,
        }
        let Ok(p) = serde_json::from_slice::<ConfigPlatform>(config) else {
            return Ok(()); // ImageRecord::new reports a malformed config precisely.
        };
        let found = Platform {
            architecture: p.architecture,
            os: p.os,
            variant: p.variant,
        };
        let wanted = &self.inner.config.platform;
        if found.os.is_empty() || wanted.matches(&found) {
            Ok(())
        } else {
            Err(PullError::PlatformMismatch {
                reference: Box::new(reference.clone()),
                wanted: wanted.clone(),
                available: vec![found],
            })
        }
    }

    fn credential(&self, reference: &Reference) -> Option<Credential> {
        self.inner
            .config
            .credentials
            .get(reference.registry())
            .cloned()
    }

    /// `http(s)://host/v2/<repository>/`.
    fn base_url(&self, reference: &Reference) -> String {
        let insecure = self
            .inner
            .config
            .insecure
            .iter()
            .any(|h| normalise_registry_key(h) == reference.registry());
        let scheme = if insecure { "http" } else { "https" };
        format!(
            "{scheme}://{}/v2/{}/",
            reference.api_host(),
            reference.repository()
        )
    }

    fn manifest_url(&self, reference: &Reference, manifest_ref: &str) -> String {
        format!("{}manifests/{manifest_ref}", self.base_url(reference))
    }
}

fn count(stats: &mut PullStats, fetched: bool) {
    if fetched {
        stats.blobs_downloaded += 1;
    } else {
        stats.blobs_cached += 1;
    }
}
