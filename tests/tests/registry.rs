//! The registry service serves the test images as a container runtime would pull them: by tag
//! with the right `Accept` header, with digests that match, anonymously and with basic auth.

use std::net::TcpStream;

use cairn_testsupport::images::{self, TestImages};
use cairn_testsupport::registry::{
    Registry, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_INDEX, OCI_MANIFEST,
};
use cairn_testsupport::require_command;
use serde_json::Value;

/// The programs a registry with pushed images needs.
fn require_tools(test: &str) -> bool {
    ["docker-registry", "htpasswd", "skopeo", "umoci", "busybox"]
        .into_iter()
        .all(|program| require_command(test, program))
}

fn manifest_path(reference: &str) -> String {
    format!("/v2/{}/manifests/{reference}", images::REPOSITORY)
}

fn layer_digests(manifest: &Value) -> Vec<&str> {
    manifest["layers"]
        .as_array()
        .expect("manifest has layers")
        .iter()
        .map(|l| l["digest"].as_str().expect("layer digest"))
        .collect()
}

#[test]
fn anonymous_registry_serves_pushed_images_by_digest() {
    if !require_tools("anonymous_registry_serves_pushed_images_by_digest") {
        return;
    }
    let registry = Registry::start();
    assert_eq!(registry.get("/v2/", &[], None).status, 200);
    let test_images = TestImages::get();
    let pushed = test_images.push_to(&registry, None);
    assert_eq!(
        pushed.repository,
        format!("{}/cairn/busybox", registry.addr())
    );

    // `latest`: one layer, the config a runtime needs to run it.
    let resp = registry.get(&manifest_path("latest"), &[DOCKER_MANIFEST], None);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.content_type.as_deref(), Some(DOCKER_MANIFEST));
    assert_eq!(resp.digest.as_deref(), Some(pushed.latest.digest.as_str()));
    assert_eq!(resp.body_digest(), pushed.latest.digest);
    let manifest = resp.json();
    assert_eq!(layer_digests(&manifest).len(), images::LATEST_LAYERS);
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .expect("config digest");
    let config = registry.get(
        &format!("/v2/cairn/busybox/blobs/{config_digest}"),
        &[],
        None,
    );
    assert_eq!(config.status, 200);
    assert_eq!(config.body_digest(), config_digest);
    let config = config.json();
    assert_eq!(config["architecture"], "amd64");
    assert_eq!(config["config"]["Cmd"], serde_json::json!(images::CMD));
    assert_eq!(
        config["config"]["Env"],
        serde_json::json!([images::PATH_ENV])
    );

    // The same manifest by digest.
    let by_digest = registry.get(
        &manifest_path(&pushed.latest.digest),
        &[DOCKER_MANIFEST],
        None,
    );
    assert_eq!(by_digest.status, 200);
    assert_eq!(by_digest.body_digest(), pushed.latest.digest);

    // `multi`: three layers, the first shared with `latest`; every layer blob is there.
    let resp = registry.get(&manifest_path("multi"), &[DOCKER_MANIFEST], None);
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body_digest(), pushed.multi.digest);
    let multi = resp.json();
    let layers = layer_digests(&multi);
    assert_eq!(layers.len(), images::MULTI_LAYERS);
    assert_eq!(layers[0], layer_digests(&manifest)[0]);
    assert_eq!(
        layers,
        test_images
            .multi
            .layers
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
    );
    for layer in layers {
        let blob = registry.get(&format!("/v2/cairn/busybox/blobs/{layer}"), &[], None);
        assert_eq!(blob.status, 200, "blob {layer}");
        assert_eq!(blob.body_digest(), layer);
    }

    // The OCI copy answers with the OCI media type.
    let resp = registry.get(
        &manifest_path(images::OCI_LATEST_TAG),
        &[OCI_MANIFEST],
        None,
    );
    assert_eq!(resp.status, 200);
    assert_eq!(resp.content_type.as_deref(), Some(OCI_MANIFEST));
    assert_eq!(resp.body_digest(), pushed.oci_latest.digest);

    let tags = registry
        .get("/v2/cairn/busybox/tags/list", &[], None)
        .json();
    let mut tags: Vec<&str> = tags["tags"]
        .as_array()
        .expect("tags")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    tags.sort_unstable();
    let mut expected: Vec<&str> = pushed.all().iter().map(|p| p.tag).collect();
    expected.sort_unstable();
    assert_eq!(tags, expected);
}

#[test]
fn manifest_list_and_oci_index_name_amd64_and_arm64() {
    if !require_tools("manifest_list_and_oci_index_name_amd64_and_arm64") {
        return;
    }
    let registry = Registry::start();
    let pushed = TestImages::get().push_to(&registry, None);

    for (list, media_type, entries) in [
        (
            &pushed.list,
            DOCKER_MANIFEST_LIST,
            [&pushed.latest, &pushed.arm64],
        ),
        (
            &pushed.oci_index,
            OCI_INDEX,
            [&pushed.oci_latest, &pushed.oci_arm64],
        ),
    ] {
        let resp = registry.get(&manifest_path(list.tag), &[media_type], None);
        assert_eq!(resp.status, 200, "{}: {}", list.tag, resp.text());
        assert_eq!(resp.content_type.as_deref(), Some(media_type));
        assert_eq!(resp.body_digest(), list.digest);
        let body = resp.json();
        let manifests = body["manifests"].as_array().expect("manifests");
        let platforms: Vec<(&str, &str)> = manifests
            .iter()
            .map(|m| {
                let platform = &m["platform"];
                (
                    platform["os"].as_str().unwrap(),
                    platform["architecture"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            platforms,
            [("linux", "amd64"), ("linux", "arm64")],
            "{}",
            list.tag
        );

        // Each entry resolves to a manifest whose config says the same architecture.
        for (entry, image) in manifests.iter().zip(entries) {
            assert_eq!(entry["digest"], image.digest.as_str());
            assert_eq!(entry["size"], image.size);
            assert_eq!(entry["mediaType"], image.media_type);
            let manifest = registry.get(&manifest_path(&image.digest), &[image.media_type], None);
            assert_eq!(manifest.status, 200);
            assert_eq!(manifest.body_digest(), image.digest);
            let config_digest = manifest.json()["config"]["digest"]
                .as_str()
                .unwrap()
                .to_string();
            let config = registry.get(
                &format!("/v2/cairn/busybox/blobs/{config_digest}"),
                &[],
                None,
            );
            assert_eq!(
                config.json()["architecture"],
                entry["platform"]["architecture"]
            );
        }
    }
}

#[test]
fn basic_auth_registry_answers_401_without_credentials() {
    if !require_tools("basic_auth_registry_answers_401_without_credentials") {
        return;
    }
    let registry = Registry::start_with_basic_auth("cairn", "s3cret:with:colons");
    assert_eq!(
        registry.credentials(),
        Some(("cairn", "s3cret:with:colons"))
    );
    let creds = registry.credentials();

    let anonymous = registry.get("/v2/", &[], None);
    assert_eq!(anonymous.status, 401);
    assert_eq!(
        registry.get("/v2/", &[], Some(("cairn", "wrong"))).status,
        401
    );
    assert_eq!(registry.get("/v2/", &[], creds).status, 200);

    let pushed = TestImages::get().push_to(&registry, creds);
    let path = manifest_path("latest");
    let resp = registry.get(&path, &[DOCKER_MANIFEST], None);
    assert_eq!(
        resp.status,
        401,
        "a pull without credentials: {}",
        resp.text()
    );
    let resp = registry.get(&path, &[DOCKER_MANIFEST], creds);
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.digest.as_deref(), Some(pushed.latest.digest.as_str()));
    assert_eq!(resp.body_digest(), pushed.latest.digest);
    let list = registry.get(&manifest_path("list"), &[DOCKER_MANIFEST_LIST], creds);
    assert_eq!(list.status, 200);
    assert_eq!(list.body_digest(), pushed.list.digest);
}

#[test]
fn dropping_the_registry_stops_it_and_removes_its_storage() {
    if !require_tools("dropping_the_registry_stops_it_and_removes_its_storage") {
        return;
    }
    let registry = Registry::start();
    let addr = registry.addr().to_string();
    let dir = registry.dir().to_path_buf();
    let pid = registry.pid().expect("registry is running");
    assert!(dir.join("config.yml").is_file());
    assert!(
        registry.log().contains(&format!("listening on {addr}")),
        "{}",
        registry.log()
    );
    drop(registry);
    assert!(!dir.exists(), "{} was left behind", dir.display());
    assert!(
        !std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "registry {pid} still runs"
    );
    assert!(
        TcpStream::connect(&addr).is_err(),
        "something still listens on {addr}"
    );
}
