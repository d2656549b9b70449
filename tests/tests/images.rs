//! The busybox test images: built once into the cache, with the layers, whiteout, config and
//! docker-save tarball the rest of the test suite relies on.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::thread;

use cairn_testsupport::images::{self, TestImages};
use cairn_testsupport::{require_command, require_root, ServiceDir};
use serde_json::Value;

fn require_tools(test: &str) -> bool {
    ["umoci", "skopeo", "busybox", "tar"]
        .into_iter()
        .all(|program| require_command(test, program))
}

/// Runs `cmd`, asserts success, returns stdout.
fn output(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

fn tar_entries(args: &[&str], file: &Path) -> Vec<String> {
    output(Command::new("tar").args(args).arg(file))
        .lines()
        .map(str::to_string)
        .collect()
}

fn config(test_images: &TestImages, image: &images::OciImage) -> Value {
    let bytes = fs::read(test_images.blob(&image.config_digest)).expect("read config blob");
    serde_json::from_slice(&bytes).expect("config is JSON")
}

#[test]
fn oci_layout_has_latest_multi_and_arm64() {
    if !require_tools("oci_layout_has_latest_multi_and_arm64") {
        return;
    }
    let test_images = TestImages::get();
    assert!(test_images.oci_layout.join("oci-layout").is_file());

    assert_eq!(test_images.latest.layers.len(), images::LATEST_LAYERS);
    assert_eq!(test_images.arm64.layers, test_images.latest.layers);
    assert_eq!(test_images.multi.layers.len(), images::MULTI_LAYERS);
    assert_eq!(test_images.multi.layers[0], test_images.latest.layers[0]);
    assert_eq!(test_images.latest.architecture, "amd64");
    assert_eq!(test_images.arm64.architecture, "arm64");

    let latest = config(test_images, &test_images.latest);
    assert_eq!(latest["os"], "linux");
    assert_eq!(latest["config"]["Cmd"], serde_json::json!(images::CMD));
    assert_eq!(
        latest["config"]["Env"],
        serde_json::json!([images::PATH_ENV])
    );
    assert_eq!(latest["config"]["WorkingDir"], "/");
    let multi = config(test_images, &test_images.multi);
    assert_eq!(
        multi["rootfs"]["diff_ids"].as_array().map(Vec::len),
        Some(images::MULTI_LAYERS)
    );

    // Layer 1 is the busybox userland, relative to `.`.
    let base = tar_entries(&["-tzf"], &test_images.blob(&test_images.latest.layers[0]));
    for entry in [
        "bin/busybox",
        "bin/sh",
        "bin/ls",
        "etc/passwd",
        "etc/group",
        "tmp/",
    ] {
        assert!(
            base.iter().any(|e| e == entry),
            "{entry} missing from layer 1"
        );
    }
    // Layer 2 adds two files, layer 3 deletes one of them with a whiteout.
    let layer2 = tar_entries(&["-tzf"], &test_images.blob(&test_images.multi.layers[1]));
    assert!(
        layer2.contains(&images::LAYER2_FILE[1..].to_string()),
        "{layer2:?}"
    );
    assert!(
        layer2.contains(&images::REMOVED_FILE[1..].to_string()),
        "{layer2:?}"
    );
    let layer3 = tar_entries(&["-tzf"], &test_images.blob(&test_images.multi.layers[2]));
    assert!(
        layer3.iter().any(|e| e == images::WHITEOUT_ENTRY),
        "{layer3:?}"
    );
    assert!(
        !layer3.iter().any(|e| e == &images::LAYER2_FILE[1..]),
        "{layer3:?}"
    );
}

#[test]
fn docker_archive_has_manifest_json_and_layers() {
    if !require_tools("docker_archive_has_manifest_json_and_layers") {
        return;
    }
    let test_images = TestImages::get();
    let archive = &test_images.docker_archive;
    let entries = tar_entries(&["-tf"], archive);
    assert!(entries.iter().any(|e| e == "manifest.json"), "{entries:?}");
    let manifest = output(
        Command::new("tar")
            .arg("-xOf")
            .arg(archive)
            .arg("manifest.json"),
    );
    let manifest: Value = serde_json::from_str(&manifest).expect("manifest.json is JSON");
    let image = &manifest.as_array().expect("manifest.json is a list")[0];
    assert_eq!(
        image["RepoTags"],
        serde_json::json!([images::DOCKER_ARCHIVE_REPO_TAG])
    );
    let config = image["Config"].as_str().expect("Config");
    assert!(
        entries.iter().any(|e| e == config),
        "{config} missing from {entries:?}"
    );
    let layers = image["Layers"].as_array().expect("Layers");
    assert_eq!(layers.len(), images::LATEST_LAYERS);
    for layer in layers {
        let layer = layer.as_str().expect("layer path");
        assert!(
            entries.iter().any(|e| e == layer),
            "{layer} missing from {entries:?}"
        );
    }
}

#[test]
fn images_are_built_once_by_concurrent_callers() {
    if !require_tools("images_are_built_once_by_concurrent_callers") {
        return;
    }
    // A cache of our own, so this test builds instead of finding the shared cache.
    let cache = ServiceDir::new("image-cache");
    let builds: Vec<TestImages> = thread::scope(|s| {
        let handles: Vec<_> = (0..3)
            .map(|_| s.spawn(|| TestImages::get_in(cache.path())))
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("build thread"))
            .collect()
    });
    // umoci stamps creation times into configs: separate builds would differ in digests.
    for build in &builds[1..] {
        assert_eq!(build.dir, builds[0].dir);
        assert_eq!(
            build.latest.manifest_digest,
            builds[0].latest.manifest_digest
        );
        assert_eq!(build.multi.manifest_digest, builds[0].multi.manifest_digest);
    }
    let name = builds[0]
        .dir
        .file_name()
        .expect("cache dir name")
        .to_string_lossy()
        .into_owned();
    assert!(
        name.starts_with(&format!("images-v{}-", images::FORMAT_VERSION)),
        "{name}"
    );
    // Only the finished image directory and its lock file: no temporary build left over.
    let mut left: Vec<String> = fs::read_dir(cache.path())
        .expect("list cache")
        .map(|e| {
            e.expect("cache entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    left.sort();
    assert_eq!(left, [name.clone(), format!("{name}.lock")]);
    // Blobs are world-readable, for tests that drop privileges.
    let blob = builds[0].blob(&builds[0].latest.layers[0]);
    let mode = fs::metadata(&blob)
        .expect("blob metadata")
        .permissions()
        .mode();
    assert_eq!(mode & 0o444, 0o444, "{} mode {mode:o}", blob.display());
    // A later call finds the cache.
    let again = TestImages::get_in(cache.path());
    assert_eq!(
        again.latest.manifest_digest,
        builds[0].latest.manifest_digest
    );
}

#[test]
fn unpacked_multi_image_runs_its_command_in_a_chroot() {
    if !require_root("unpacked_multi_image_runs_its_command_in_a_chroot")
        || !require_tools("unpacked_multi_image_runs_its_command_in_a_chroot")
        || !require_command(
            "unpacked_multi_image_runs_its_command_in_a_chroot",
            "chroot",
        )
    {
        return;
    }
    let test_images = TestImages::get();
    let dir = ServiceDir::new("unpack");
    let bundle = dir.path().join("bundle");
    output(
        Command::new("umoci")
            .args(["unpack", "--image"])
            .arg(format!("{}:multi", test_images.oci_layout.display()))
            .arg(&bundle),
    );
    let rootfs = bundle.join("rootfs");
    let stdout = output(Command::new("chroot").arg(&rootfs).args(images::CMD));
    assert_eq!(stdout, images::EXPECTED_OUTPUT);

    let layer2 = fs::read_to_string(rootfs.join(&images::LAYER2_FILE[1..])).expect("layer 2 file");
    assert_eq!(layer2, images::LAYER2_CONTENT);
    assert!(
        !rootfs.join(&images::REMOVED_FILE[1..]).exists(),
        "the whiteout was not applied"
    );
    let tmp_mode = fs::metadata(rootfs.join("tmp"))
        .expect("/tmp")
        .permissions()
        .mode();
    assert_eq!(tmp_mode & 0o7777, 0o1777);
    // The applets and users that tests use.
    let id = output(
        Command::new("chroot")
            .arg(&rootfs)
            .args(["/bin/sh", "-c", "id nobody"]),
    );
    assert!(
        id.starts_with("uid=65534(nobody) gid=65534(nobody)"),
        "{id}"
    );
    let script = "cd /tmp && echo x > f && cat f && ls f && env | grep -q ^PATH= && true && \
                  ! false && sleep 0 && echo ok";
    let out = output(Command::new("chroot").arg(&rootfs).args([
        "/bin/env",
        "-i",
        "PATH=/bin",
        "/bin/sh",
        "-c",
        script,
    ]));
    assert_eq!(out, "x\nf\nok\n");
}
