//! Pulls from the real local registry (`docker-registry`, anonymous and basic auth), and the
//! client's handling of misbehaving registries (500, hangs, truncation, bad digests, unknown
//! media types, bearer challenges) against a tiny loopback fake.

#![allow(clippy::unwrap_used)]

mod fake;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::prelude::BASE64_STANDARD;
use base64::Engine;
use cairn_oci::digest::Digest;
use cairn_oci::manifest::{media_type, Platform};
use cairn_oci::reference::Reference;
use cairn_oci::registry::{Credential, Progress, ProgressEvent, PullError, Puller, RegistryConfig};
use cairn_oci::store::Store;
use cairn_testsupport::images::{self, TestImages};
use cairn_testsupport::registry::Registry;
use cairn_testsupport::{require_command, ServiceDir};
use fake::{FakeImage, FakeRegistry, Reply};

fn have_registry(test: &str) -> bool {
    require_command(test, "docker-registry")
        && require_command(test, "skopeo")
        && require_command(test, "umoci")
}

fn config_for(addr: &str) -> RegistryConfig {
    RegistryConfig {
        insecure: vec![addr.to_string()],
        retry_backoff: Duration::from_millis(10),
        max_attempts: 3,
        stall_timeout: Duration::from_secs(2),
        ..RegistryConfig::default()
    }
}

fn puller(store: &Store, config: RegistryConfig) -> Puller {
    Puller::new(store.clone(), config).unwrap()
}

fn reference(addr: &str, tag: &str) -> Reference {
    Reference::parse(&format!("{addr}/{}:{tag}", images::REPOSITORY)).unwrap()
}

/// Collects progress events.
fn recorder() -> (Progress, Arc<Mutex<Vec<ProgressEvent>>>) {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    (
        Progress::new(move |e| sink.lock().unwrap().push(e.clone())),
        events,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_pulls_latest_multi_and_lists_anonymously() {
    if !have_registry("registry_pulls_latest_multi_and_lists_anonymously") {
        return;
    }
    let registry = Registry::start();
    let pushed = TestImages::get().push_to(&registry, None);
    let dir = ServiceDir::new("oci-pull");
    let store = Store::open(dir.path().join("store")).unwrap();
    let p = puller(&store, config_for(registry.addr()));

    let (progress, events) = recorder();
    let latest = p
        .pull(&reference(registry.addr(), "latest"), &progress)
        .await
        .unwrap();
    assert_eq!(
        latest.image.manifest_digest.to_string(),
        pushed.latest.digest
    );
    assert_eq!(latest.image.layers.len(), images::LATEST_LAYERS);
    let cmd = latest
        .image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.cmd().clone())
        .unwrap();
    assert_eq!(cmd, images::CMD.map(String::from).to_vec());
    for layer in &latest.image.layers {
        assert!(layer.path.is_file(), "{}", layer.path.display());
        assert_eq!(std::fs::metadata(&layer.path).unwrap().len(), layer.size);
        assert_eq!(layer.media_type, media_type::DOCKER_LAYER_GZIP);
    }
    let done: Vec<_> = events
        .lock()
        .unwrap()
        .iter()
        .filter_map(|e| match e {
            ProgressEvent::LayerProgress { done, total, .. } => Some((*done, *total)),
            _ => None,
        })
        .collect();
    let (last_done, total) = *done.last().expect("progress events for the layer");
    assert_eq!(last_done, total);

    let multi = p
        .pull(&reference(registry.addr(), "multi"), &Progress::none())
        .await
        .unwrap();
    assert_eq!(multi.image.layers.len(), images::MULTI_LAYERS);
    assert_eq!(multi.image.manifest_digest.to_string(), pushed.multi.digest);
    // The first layer is shared with latest: already stored.
    assert_eq!(multi.image.layers[0].digest, latest.image.layers[0].digest);

    // Manifest list and OCI index: linux/amd64 is selected.
    let list = p
        .pull(
            &reference(registry.addr(), images::LIST_TAG),
            &Progress::none(),
        )
        .await
        .unwrap();
    assert_eq!(list.image.manifest_digest.to_string(), pushed.latest.digest);
    assert_eq!(list.stats.manifests_fetched, 2);
    let index = p
        .pull(
            &reference(registry.addr(), images::OCI_INDEX_TAG),
            &Progress::none(),
        )
        .await
        .unwrap();
    assert_eq!(
        index.image.manifest_digest.to_string(),
        pushed.oci_latest.digest
    );
    assert_eq!(index.image.layers[0].media_type, media_type::OCI_LAYER_GZIP);

    // By digest.
    let by_digest = reference(registry.addr(), "latest")
        .with_digest(pushed.multi.digest.parse::<Digest>().unwrap());
    let pinned = p.pull(&by_digest, &Progress::none()).await.unwrap();
    assert_eq!(pinned.image.layers.len(), images::MULTI_LAYERS);
    assert_eq!(pinned.stats.blobs_downloaded, 0);

    // Another platform: the arm64 entry of the list.
    let arm = RegistryConfig {
        platform: Platform::parse("linux/arm64").unwrap(),
        ..config_for(registry.addr())
    };
    let arm = puller(&store, arm)
        .pull(
            &reference(registry.addr(), images::LIST_TAG),
            &Progress::none(),
        )
        .await
        .unwrap();
    assert_eq!(arm.image.manifest_digest.to_string(), pushed.arm64.digest);
    assert_eq!(arm.image.config.architecture().to_string(), "arm64");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_refuses_images_for_other_platforms_and_missing_tags() {
    if !have_registry("registry_refuses_images_for_other_platforms_and_missing_tags") {
        return;
    }
    let registry = Registry::start();
    let pushed = TestImages::get().push_to(&registry, None);
    let dir = ServiceDir::new("oci-pull");
    let store = Store::open(dir.path().join("store")).unwrap();
    let p = puller(&store, config_for(registry.addr()));

    // A single-platform arm64 image.
    let err = p
        .pull(&reference(registry.addr(), "arm64"), &Progress::none())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::PlatformMismatch { available, .. } if available[0].architecture == "arm64"),
        "{err}"
    );
    assert!(err.to_string().contains("linux/amd64"), "{err}");

    // A list with only an arm64 entry.
    let list = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": media_type::DOCKER_MANIFEST_LIST,
        "manifests": [{
            "mediaType": pushed.arm64.media_type, "digest": pushed.arm64.digest,
            "size": pushed.arm64.size, "platform": {"architecture": "arm64", "os": "linux", "variant": "v8"}
        }]
    });
    let put = registry.put(
        &format!("/v2/{}/manifests/armonly", images::REPOSITORY),
        media_type::DOCKER_MANIFEST_LIST,
        &serde_json::to_vec(&list).unwrap(),
        None,
    );
    assert_eq!(put.status, 201, "{}", put.text());
    let err = p
        .pull(&reference(registry.addr(), "armonly"), &Progress::none())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("linux/arm64/v8"), "{err}");
    assert!(matches!(err, PullError::PlatformMismatch { .. }), "{err}");

    // 404: unknown tag and unknown repository.
    let err = p
        .pull(&reference(registry.addr(), "nope"), &Progress::none())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::NotFound { url, .. } if url.ends_with("/manifests/nope")),
        "{err}"
    );
    let missing = Reference::parse(&format!("{}/no/such:latest", registry.addr())).unwrap();
    assert!(matches!(
        p.pull(&missing, &Progress::none()).await,
        Err(PullError::NotFound { .. })
    ));

    // Not marked insecure: HTTPS is tried against a plain-HTTP registry and fails.
    let strict = RegistryConfig {
        insecure: vec![],
        max_attempts: 1,
        ..config_for(registry.addr())
    };
    let err = puller(&store, strict)
        .pull(&reference(registry.addr(), "latest"), &Progress::none())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Http { url, .. } if url.starts_with("https://")),
        "{err}"
    );

    // Nothing was recorded by the failures.
    assert!(store.images().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registry_with_basic_auth_needs_the_right_credentials() {
    if !have_registry("registry_with_basic_auth_needs_the_right_credentials") {
        return;
    }
    let registry = Registry::start_with_basic_auth("cairn", "s3cret");
    let pushed = TestImages::get().push_to(&registry, registry.credentials());
    let dir = ServiceDir::new("oci-pull-auth");
    let store = Store::open(dir.path().join("store")).unwrap();
    let r = reference(registry.addr(), "multi");

    let err = puller(&store, config_for(registry.addr()))
        .pull(&r, &Progress::none())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Unauthorized {
                status: 401,
                has_credentials: false,
                ..
            }
        ),
        "{err}"
    );

    let mut wrong = config_for(registry.addr());
    wrong.credentials.insert(
        registry.addr().to_string(),
        Credential {
            username: "cairn".into(),
            password: "wrong".into(),
        },
    );
    let err = puller(&store, wrong)
        .pull(&r, &Progress::none())
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Unauthorized {
                status: 401,
                has_credentials: true,
                ..
            }
        ),
        "{err}"
    );
    assert!(err.to_string().contains("credentials rejected"), "{err}");

    // Credentials from a Docker config.json.
    let docker_config = dir.path().join("config.json");
    let auth = BASE64_STANDARD.encode("cairn:s3cret");
    std::fs::write(
        &docker_config,
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            registry.addr()
        ),
    )
    .unwrap();
    let config = config_for(registry.addr())
        .with_docker_config(&docker_config)
        .unwrap();
    let p = puller(&store, config);
    let pulled = p.pull(&r, &Progress::none()).await.unwrap();
    assert_eq!(
        pulled.image.manifest_digest.to_string(),
        pushed.multi.digest
    );
    let list = p
        .pull(
            &reference(registry.addr(), images::LIST_TAG),
            &Progress::none(),
        )
        .await
        .unwrap();
    assert_eq!(list.image.manifest_digest.to_string(), pushed.latest.digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_pull_downloads_no_blobs_and_ensure_does_no_network_io() {
    if !have_registry("second_pull_downloads_no_blobs_and_ensure_does_no_network_io") {
        return;
    }
    let registry = Registry::start();
    TestImages::get().push_to(&registry, None);
    let dir = ServiceDir::new("oci-pull-twice");
    let store = Store::open(dir.path().join("store")).unwrap();
    let p = puller(&store, config_for(registry.addr()));
    let r = reference(registry.addr(), "multi");
    let first = p.pull(&r, &Progress::none()).await.unwrap();
    assert_eq!(first.stats.blobs_downloaded, 1 + images::MULTI_LAYERS);

    let (progress, events) = recorder();
    let second = p.pull(&r, &progress).await.unwrap();
    assert_eq!(second.stats.blobs_downloaded, 0);
    assert_eq!(second.stats.blobs_cached, 1 + images::MULTI_LAYERS);
    let events = events.lock().unwrap().clone();
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, ProgressEvent::LayerProgress { .. })),
        "{events:?}"
    );
    let cached = events
        .iter()
        .filter(|e| matches!(e, ProgressEvent::LayerCached { .. }))
        .count();
    assert_eq!(cached, images::MULTI_LAYERS);

    // ensure() with the image stored: works with the registry gone.
    drop(registry);
    let reopened = puller(
        &Store::open(store.root()).unwrap(),
        config_for("127.0.0.1:1"),
    );
    let again = reopened.ensure(&r, &Progress::none()).await.unwrap();
    assert_eq!(again.stats.manifests_fetched, 0);
    assert_eq!(again.image.manifest_digest, first.image.manifest_digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_pulls_download_each_blob_once() {
    if !have_registry("concurrent_pulls_download_each_blob_once") {
        return;
    }
    let registry = Registry::start();
    TestImages::get().push_to(&registry, None);
    let dir = ServiceDir::new("oci-pull-concurrent");
    let root = dir.path().join("store");
    let r = reference(registry.addr(), "multi");
    let r2 = reference(registry.addr(), "latest");
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..6 {
        // Separate Store handles (as separate processes would have): the blob flock files
        // decide; one shared handle exercises the in-process path too.
        let store = Store::open(&root).unwrap();
        let p = puller(&store, config_for(registry.addr()));
        let r = if i % 3 == 2 { r2.clone() } else { r.clone() };
        tasks.spawn(async move { p.pull(&r, &Progress::none()).await.map(|x| x.stats) });
    }
    let mut downloaded = 0;
    while let Some(stats) = tasks.join_next().await {
        downloaded += stats.unwrap().unwrap().blobs_downloaded;
    }
    // multi: config + 3 layers; latest: its own config (layer 1 is shared).
    assert_eq!(downloaded, 1 + images::MULTI_LAYERS + 1);
}

// ---- misbehaving registries (fake) ----

fn fake_config(fake: &FakeRegistry) -> RegistryConfig {
    RegistryConfig {
        stall_timeout: Duration::from_millis(800),
        ..config_for(&fake.addr())
    }
}

fn fake_ref(fake: &FakeRegistry) -> Reference {
    Reference::parse(&format!("{}/test/img:v1", fake.addr())).unwrap()
}

async fn pull_fake(
    fake: &FakeRegistry,
    dir: &ServiceDir,
) -> (Store, Result<cairn_oci::registry::PulledImage, PullError>) {
    let store = Store::open(dir.path().join("store")).unwrap();
    let result = puller(&store, fake_config(fake))
        .pull(&fake_ref(fake), &Progress::none())
        .await;
    (store, result)
}

/// The store after a failed pull: no image, no temp files, only verified blobs.
fn assert_consistent(store: &Store) {
    assert!(store.images().unwrap().is_empty());
    let tmp: Vec<_> = std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .collect();
    assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    for entry in std::fs::read_dir(store.root().join("blobs/sha256")).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        store
            .verify_blob(&Digest::from_hex(&name).unwrap())
            .unwrap();
    }
}

#[tokio::test]
async fn fake_server_error_500_is_retried_then_reported() {
    let image = FakeImage::new();
    let fake = FakeRegistry::start(move |_req| Reply::status(500));
    let dir = ServiceDir::new("oci-fake");
    let (store, res) = pull_fake(&fake, &dir).await;
    let err = res.unwrap_err();
    assert!(
        matches!(
            err,
            PullError::Server {
                status: 500,
                attempts: 3,
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(fake.requests().len(), 3);
    assert_consistent(&store);
    drop(image);
}

#[tokio::test]
async fn fake_hanging_registry_times_out() {
    let fake = FakeRegistry::start(|_req| Reply::Hang);
    let dir = ServiceDir::new("oci-fake");
    let started = std::time::Instant::now();
    let (store, res) = pull_fake(&fake, &dir).await;
    let err = res.unwrap_err();
    assert!(
        matches!(&err, PullError::Timeout { url, .. } if url.contains("/manifests/v1")),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_consistent(&store);
}

#[tokio::test]
async fn fake_layer_hanging_midway_times_out() {
    let image = FakeImage::new();
    let layer = image.layer_digest.clone();
    let fake = FakeRegistry::start(move |req| {
        if req.path.ends_with(&layer.to_string()) {
            return Reply::HangAfter {
                status: 200,
                body: image.layer.clone(),
                sent: 10,
            };
        }
        image.serve(req)
    });
    let dir = ServiceDir::new("oci-fake");
    let (store, res) = pull_fake(&fake, &dir).await;
    let err = res.unwrap_err();
    assert!(
        matches!(&err, PullError::Timeout { url, .. } if url.contains("/blobs/")),
        "{err}"
    );
    assert_consistent(&store);
}

#[tokio::test]
async fn fake_truncated_layer_is_retried_and_reported() {
    let image = FakeImage::new();
    let layer = image.layer_digest.clone();
    let fake = FakeRegistry::start(move |req| {
        if req.path.ends_with(&layer.to_string()) {
            // Content-Length promises everything, the connection closes after half.
            return Reply::Truncate {
                body: image.layer.clone(),
                sent: image.layer.len() / 2,
            };
        }
        image.serve(req)
    });
    let dir = ServiceDir::new("oci-fake");
    let (store, res) = pull_fake(&fake, &dir).await;
    let err = res.unwrap_err();
    assert!(matches!(err, PullError::Truncated { .. }), "{err}");
    assert_consistent(&store);
}

#[tokio::test]
async fn fake_truncated_layer_resumes_with_range() {
    let image = FakeImage::new();
    let layer = image.layer_digest.clone();
    let full = image.layer.clone();
    let fake = FakeRegistry::start(move |req| {
        if req.path.ends_with(&layer.to_string()) {
            if let Some(from) = req.range_from() {
                return Reply::partial(&full, from);
            }
            return Reply::Truncate {
                body: full.clone(),
                sent: 1000,
            };
        }
        image.serve(req)
    });
    let dir = ServiceDir::new("oci-fake");
    let (store, res) = pull_fake(&fake, &dir).await;
    let pulled = res.unwrap();
    assert_eq!(pulled.stats.blobs_downloaded, 2);
    let ranges: Vec<_> = fake
        .requests()
        .iter()
        .filter_map(|r| r.header("range"))
        .collect();
    assert_eq!(ranges, vec!["bytes=1000-".to_string()]);
    store.verify_blob(&pulled.image.layers[0].digest).unwrap();
}

#[tokio::test]
async fn fake_layer_digest_mismatch_is_refused() {
    let image = FakeImage::new();
    let layer = image.layer_digest.clone();
    let fake = FakeRegistry::start(move |req| {
        if req.path.ends_with(&layer.to_string()) {
            let mut evil = image.layer.clone();
            evil[7] ^= 0xff;
            return Reply::ok(evil, "application/octet-stream");
        }
        image.serve(req)
    });
    let dir = ServiceDir::new("oci-fake");
    let (store, res) = pull_fake(&fake, &dir).await;
    let err = res.unwrap_err();
    assert!(
        matches!(&err, PullError::DigestMismatch { expected, .. } if expected == &fake_layer(&fake)),
        "{err}"
    );
    assert!(!store.has_blob(&fake_layer(&fake)));
    assert_consistent(&store);
}

fn fake_layer(_fake: &FakeRegistry) -> Digest {
    FakeImage::new().layer_digest
}

#[tokio::test]
async fn fake_manifest_digest_mismatch_is_refused() {
    let image = FakeImage::new();
    let fake = FakeRegistry::start(move |req| {
        let mut reply = image.serve(req);
        if req.path.contains("/manifests/") {
            reply.set_header(
                "Docker-Content-Digest",
                &Digest::of(b"something else").to_string(),
            );
        }
        reply
    });
    let dir = ServiceDir::new("oci-fake");
    let (store, res) = pull_fake(&fake, &dir).await;
    let err = res.unwrap_err();
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{err}");
    assert_consistent(&store);

    // A digest-pinned reference whose manifest hashes to something else.
    let image = FakeImage::new();
    let fake = FakeRegistry::start(move |req| {
        if req.path.contains("/manifests/") {
            return Reply::ok(image.manifest.clone(), media_type::OCI_MANIFEST);
        }
        image.serve(req)
    });
    let pinned = fake_ref(&fake).with_digest(Digest::of(b"pinned"));
    let store = Store::open(dir.path().join("store2")).unwrap();
    let err = puller(&store, fake_config(&fake))
        .pull(&pinned, &Progress::none())
        .await
        .unwrap_err();
    assert!(matches!(err, PullError::DigestMismatch { .. }), "{err}");
}

#[tokio::test]
async fn fake_unknown_media_types_are_refused() {
    let image = FakeImage::with_layer_media_type("application/x-rar");
    let fake = FakeRegistry::start(move |req| image.serve(req));
    let dir = ServiceDir::new("oci-fake");
    let (store, res) = pull_fake(&fake, &dir).await;
    let err = res.unwrap_err();
    assert!(err.to_string().contains("application/x-rar"), "{err}");
    assert!(matches!(err, PullError::Manifest { .. }), "{err}");
    assert_consistent(&store);

    let image = FakeImage::new();
    let fake = FakeRegistry::start(move |req| {
        let mut reply = image.serve(req);
        if req.path.contains("/manifests/") {
            reply.set_header(
                "Content-Type",
                "application/vnd.docker.distribution.manifest.v1+prettyjws",
            );
        }
        reply
    });
    let (_store, res) = pull_fake(&fake, &ServiceDir::new("oci-fake")).await;
    let err = res.unwrap_err();
    assert!(err.to_string().contains("manifest.v1+prettyjws"), "{err}");
}

#[tokio::test]
async fn fake_bearer_challenge_fetches_a_token() {
    let image = FakeImage::new();
    let seen = Arc::new(Mutex::new(HashMap::<String, String>::new()));
    let seen2 = seen.clone();
    let fake = FakeRegistry::start_with_addr(move |addr, req| {
        if req.path.starts_with("/token") {
            seen2
                .lock()
                .unwrap()
                .insert("token-query".into(), req.path.clone());
            let basic = req.header("authorization").unwrap_or_default();
            if basic != format!("Basic {}", BASE64_STANDARD.encode("u:p")) {
                return Reply::status(401);
            }
            return Reply::ok(br#"{"token":"tok123"}"#.to_vec(), "application/json");
        }
        if req.header("authorization").as_deref() != Some("Bearer tok123") {
            let mut r = Reply::status(401);
            r.set_header(
                "WWW-Authenticate",
                &format!(r#"Bearer realm="http://{addr}/token",service="fake",scope="repository:test/img:pull""#),
            );
            return r;
        }
        image.serve(req)
    });
    let dir = ServiceDir::new("oci-fake");
    let store = Store::open(dir.path().join("store")).unwrap();
    let mut config = fake_config(&fake);
    config.credentials.insert(
        fake.addr(),
        Credential {
            username: "u".into(),
            password: "p".into(),
        },
    );
    let pulled = puller(&store, config)
        .pull(&fake_ref(&fake), &Progress::none())
        .await
        .unwrap();
    assert_eq!(pulled.stats.blobs_downloaded, 2);
    let query = seen.lock().unwrap()["token-query"].clone();
    assert!(
        query.contains("service=fake") && query.contains("scope=repository%3Atest%2Fimg%3Apull"),
        "{query}"
    );
    // One challenge, then the token is reused for every later request.
    let challenges = fake
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/token"))
        .count();
    assert_eq!(challenges, 1);

    // Without credentials the token endpoint refuses: Unauthorized.
    let store = Store::open(dir.path().join("store2")).unwrap();
    let err = puller(&store, fake_config(&fake))
        .pull(&fake_ref(&fake), &Progress::none())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, PullError::Unauthorized { url, has_credentials: false, .. } if url.contains("/token")),
        "{err}"
    );
}
