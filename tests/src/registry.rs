//! A real Docker registry (Debian's `docker-registry`, distribution 2.8) on a free loopback port.
//!
//! The registry gets its own `config.yml` in a [`ServiceDir`]: it listens on 127.0.0.1 only,
//! stores blobs in that directory and allows deletes. The package's `/etc/docker/registry`
//! config is never read (it enables auth and listens on all interfaces), and `REGISTRY_*`
//! environment variables, which distribution reads as config overrides, are removed.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use base64::prelude::BASE64_STANDARD;
use base64::Engine;
use sha2::{Digest, Sha256};

use crate::{free_port, wait_until, Service, ServiceDir};

/// Media type of a Docker image manifest (schema 2).
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Media type of a Docker manifest list (one manifest per platform).
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// Media type of an OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// Media type of an OCI image index (the OCI counterpart of a manifest list).
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// How long the registry may take to answer `/v2/` (it is usually ready in ~50 ms).
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Attempts with a new port when another process took ours between probing and binding.
const START_ATTEMPTS: usize = 5;

/// A running `docker-registry`, stopped and its storage removed when dropped.
#[derive(Debug)]
pub struct Registry {
    addr: String,
    credentials: Option<(String, String)>,
    // Declared before `dir`: the process stops before its directory is removed.
    service: Service,
    dir: ServiceDir,
}

impl Registry {
    /// Starts a registry that accepts anonymous pulls and pushes.
    ///
    /// # Panics
    /// When `docker-registry` cannot be started or does not answer `/v2/` in time; the message
    /// includes its log.
    pub fn start() -> Self {
        Self::start_inner(None)
    }

    /// Starts a registry that requires HTTP basic auth as `user`/`password` for every request
    /// (an `htpasswd` file made with `htpasswd -Bbn`, bcrypt being the only scheme distribution
    /// accepts).
    ///
    /// # Panics
    /// As [`Registry::start`], and when `htpasswd` fails.
    pub fn start_with_basic_auth(user: &str, password: &str) -> Self {
        Self::start_inner(Some((user.to_string(), password.to_string())))
    }

    fn start_inner(credentials: Option<(String, String)>) -> Self {
        let dir = ServiceDir::new("registry");
        let htpasswd = credentials.as_ref().map(|(user, password)| {
            let out = Command::new("htpasswd")
                .args(["-Bbn", user, password])
                .output()
                .expect("run htpasswd (apache2-utils)");
            assert!(
                out.status.success(),
                "htpasswd -Bbn failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            let path = dir.path().join("htpasswd");
            fs::write(&path, &out.stdout).expect("write htpasswd file");
            path
        });
        let config = dir.path().join("config.yml");
        let mut last_log = String::new();
        for attempt in 1..=START_ATTEMPTS {
            let addr = format!("127.0.0.1:{}", free_port());
            fs::write(&config, config_yaml(&addr, dir.path(), htpasswd.as_deref()))
                .expect("write registry config.yml");
            let mut cmd = Command::new("docker-registry");
            cmd.arg("serve").arg(&config).current_dir(dir.path());
            for (key, _) in std::env::vars_os() {
                if key.to_string_lossy().starts_with("REGISTRY_") {
                    cmd.env_remove(key);
                }
            }
            let mut service = Service::spawn(&format!("registry-{attempt}"), cmd, dir.path())
                .expect("spawn docker-registry (run scripts/setup)");
            // The log line proves that the answer comes from this registry, not from whoever
            // may have taken the port first.
            let listening = format!("listening on {addr}");
            let mut answered = false;
            wait_until(READY_TIMEOUT, || {
                answered =
                    service.log().contains(&listening) && matches!(probe(&addr), Some(200 | 401));
                answered || !service.is_running()
            });
            if answered {
                return Self {
                    addr,
                    credentials,
                    service,
                    dir,
                };
            }
            last_log = service.log();
            let exited = !service.is_running();
            drop(service);
            // Retry only the race on the port; anything else is a real failure.
            if !(exited && last_log.contains("address already in use")) {
                break;
            }
        }
        panic!("docker-registry did not answer /v2/ at 127.0.0.1; its log:\n{last_log}");
    }

    /// `127.0.0.1:PORT`, the host part of image references (`127.0.0.1:PORT/cairn/busybox`).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The user and password of a registry started with [`Registry::start_with_basic_auth`].
    pub fn credentials(&self) -> Option<(&str, &str)> {
        self.credentials
            .as_ref()
            .map(|(u, p)| (u.as_str(), p.as_str()))
    }

    /// The directory holding `config.yml`, `htpasswd`, the log and the blob storage (`data/`).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The registry's process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.service.pid()
    }

    /// The registry's log so far.
    pub fn log(&self) -> String {
        self.service.log()
    }

    /// `GET` `path` (e.g. `/v2/cairn/busybox/manifests/latest`) with the given `Accept` media
    /// types, authenticating with `creds` when given. Any HTTP status is returned, not an error.
    ///
    /// # Panics
    /// When the registry cannot be reached at all.
    pub fn get(
        &self,
        path: &str,
        accept: &[&str],
        creds: Option<(&str, &str)>,
    ) -> RegistryResponse {
        let mut req = agent().get(format!("{}{path}", self.url()));
        if !accept.is_empty() {
            req = req.header("Accept", accept.join(", "));
        }
        if let Some(auth) = creds.map(basic_auth) {
            req = req.header("Authorization", auth);
        }
        RegistryResponse::from(req.call().unwrap_or_else(|e| panic!("GET {path}: {e}")))
    }

    /// `PUT` `body` with `content_type` to `path` (e.g. a manifest to
    /// `/v2/cairn/busybox/manifests/list`), authenticating with `creds` when given.
    ///
    /// # Panics
    /// When the registry cannot be reached at all.
    pub fn put(
        &self,
        path: &str,
        content_type: &str,
        body: &[u8],
        creds: Option<(&str, &str)>,
    ) -> RegistryResponse {
        let mut req = agent()
            .put(format!("{}{path}", self.url()))
            .header("Content-Type", content_type);
        if let Some(auth) = creds.map(basic_auth) {
            req = req.header("Authorization", auth);
        }
        RegistryResponse::from(req.send(body).unwrap_or_else(|e| panic!("PUT {path}: {e}")))
    }
}

/// A registry's answer, read completely.
#[derive(Debug, Clone)]
pub struct RegistryResponse {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: Option<String>,
    /// The `Docker-Content-Digest` header (`sha256:...`).
    pub digest: Option<String>,
    /// The body.
    pub body: Vec<u8>,
}

impl RegistryResponse {
    /// The body parsed as JSON.
    ///
    /// # Panics
    /// When the body is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "registry answered {} with non-JSON ({e}): {}",
                self.status,
                self.text()
            )
        })
    }

    /// The body as (lossy) UTF-8, for messages.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    /// The content digest of the body, `sha256:<hex>`: for a manifest, its digest.
    pub fn body_digest(&self) -> String {
        sha256_digest(&self.body)
    }
}

impl From<ureq::http::Response<ureq::Body>> for RegistryResponse {
    fn from(mut resp: ureq::http::Response<ureq::Body>) -> Self {
        let header = |name: &str| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let content_type = header("Content-Type");
        let digest = header("Docker-Content-Digest");
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_vec()
            .expect("read registry response body");
        Self {
            status,
            content_type,
            digest,
            body,
        }
    }
}

/// `sha256:<hex>` of `bytes`, the form registries and OCI use for content digests.
pub fn sha256_digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

fn basic_auth((user, password): (&str, &str)) -> String {
    format!(
        "Basic {}",
        BASE64_STANDARD.encode(format!("{user}:{password}"))
    )
}

/// An HTTP client that returns 4xx/5xx as responses (tests assert on them).
fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// The status of `GET /v2/`, or `None` while nothing answers.
fn probe(addr: &str) -> Option<u16> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into();
    agent
        .get(format!("http://{addr}/v2/"))
        .call()
        .ok()
        .map(|r| r.status().as_u16())
}

fn config_yaml(addr: &str, dir: &Path, htpasswd: Option<&Path>) -> String {
    // Without an `auth` section the registry is anonymous. Reference:
    // https://distribution.github.io/distribution/about/configuration/
    let auth = htpasswd.map_or_else(String::new, |path| {
        format!(
            "auth:\n  htpasswd:\n    realm: cairn-test\n    path: {}\n",
            path.display()
        )
    });
    format!(
        "\
version: 0.1
log:
  level: info
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {storage}
  delete:
    enabled: true
  maintenance:
    uploadpurging:
      enabled: false
http:
  addr: {addr}
  secret: cairn-test-registry
{auth}",
        storage = dir.join("data").display(),
    )
}
