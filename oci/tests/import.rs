//! Importing the test images from a `docker save` tarball and an OCI image layout.

#![allow(clippy::unwrap_used)]

use std::path::Path;

use cairn_oci::import::{import_docker_archive, import_oci_layout, ImportError};
use cairn_oci::manifest::{Compression, Platform};
use cairn_oci::reference::Reference;
use cairn_oci::store::Store;
use cairn_testsupport::images::{self, TestImages};
use cairn_testsupport::{require_command, ServiceDir};

fn have_images(test: &str) -> bool {
    require_command(test, "skopeo") && require_command(test, "umoci")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let dest = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dest);
        } else {
            std::fs::copy(e.path(), dest).unwrap();
        }
    }
}

#[test]
fn imports_docker_save_tarball() {
    if !have_images("imports_docker_save_tarball") {
        return;
    }
    let images = TestImages::get();
    let dir = ServiceDir::new("oci-import");
    let store = Store::open(dir.path().join("store")).unwrap();
    let imported = import_docker_archive(&store, &images.docker_archive, None).unwrap();
    assert_eq!(imported.len(), 1);
    let image = &imported[0];
    assert_eq!(image.reference.to_string(), images::DOCKER_ARCHIVE_REPO_TAG);
    assert_eq!(image.layers.len(), images::LATEST_LAYERS);
    let cmd = image
        .config
        .config()
        .as_ref()
        .and_then(|c| c.cmd().clone())
        .unwrap();
    assert_eq!(cmd, images::CMD.map(String::from).to_vec());
    for layer in &image.layers {
        store.verify_blob(&layer.digest).unwrap();
        let magic = &std::fs::read(&layer.path).unwrap()[..2];
        assert_eq!(
            layer.compression == Compression::Gzip,
            magic == [0x1f, 0x8b]
        );
    }
    // `busybox`-style short names find it.
    let short = Reference::parse("cairn/busybox").unwrap();
    assert_eq!(
        store.image(&short).unwrap().unwrap().manifest_digest,
        image.manifest_digest
    );
    // A second import is idempotent.
    let again = import_docker_archive(&store, &images.docker_archive, None).unwrap();
    assert_eq!(again[0].manifest_digest, image.manifest_digest);

    // Under another name.
    let name = Reference::parse("airgap.local/busybox:v1").unwrap();
    let renamed = import_docker_archive(&store, &images.docker_archive, Some(&name)).unwrap();
    assert_eq!(renamed[0].reference, name);
    assert_eq!(store.images().unwrap().len(), 2);
}

#[test]
fn imports_oci_layout() {
    if !have_images("imports_oci_layout") {
        return;
    }
    let images = TestImages::get();
    let dir = ServiceDir::new("oci-import");
    let store = Store::open(dir.path().join("store")).unwrap();
    let name = Reference::parse("cairn/busybox").unwrap();
    let imported =
        import_oci_layout(&store, &images.oci_layout, &name, &Platform::default()).unwrap();
    let by_tag = |tag: &str| {
        imported
            .iter()
            .find(|i| i.reference.tag() == Some(tag))
            .unwrap_or_else(|| panic!("{tag}"))
    };
    let latest = by_tag("latest");
    assert_eq!(
        latest.manifest_digest.to_string(),
        images.latest.manifest_digest
    );
    assert_eq!(
        latest.config_digest.to_string(),
        images.latest.config_digest
    );
    let multi = by_tag("multi");
    let layers: Vec<String> = multi.layers.iter().map(|l| l.digest.to_string()).collect();
    assert_eq!(layers, images.multi.layers);
    assert!(multi
        .layers
        .iter()
        .all(|l| l.compression == Compression::Gzip && l.path.is_file()));
    assert_eq!(by_tag("arm64").config.architecture().to_string(), "arm64");
}

#[test]
fn corrupt_or_incomplete_inputs_are_refused_and_record_nothing() {
    if !have_images("corrupt_or_incomplete_inputs_are_refused_and_record_nothing") {
        return;
    }
    let images = TestImages::get();
    let dir = ServiceDir::new("oci-import-bad");
    let store = Store::open(dir.path().join("store")).unwrap();
    let name = Reference::parse("cairn/busybox").unwrap();

    // A layout whose layer blob was altered.
    let layout = dir.path().join("layout");
    copy_dir(&images.oci_layout, &layout);
    let layer = layout
        .join("blobs/sha256")
        .join(images.latest.layers[0].trim_start_matches("sha256:"));
    let mut bytes = std::fs::read(&layer).unwrap();
    bytes[100] ^= 0xff;
    std::fs::write(&layer, bytes).unwrap();
    let err = import_oci_layout(&store, &layout, &name, &Platform::default()).unwrap_err();
    assert!(
        matches!(&err, ImportError::DigestMismatch { expected, .. } if expected.to_string() == images.latest.layers[0]),
        "{err}"
    );
    assert!(store.images().unwrap().is_empty());
    assert!(!store.has_blob(&images.latest.layers[0].parse().unwrap()));

    // A layout without index.json.
    std::fs::remove_file(layout.join("index.json")).unwrap();
    let err = import_oci_layout(&store, &layout, &name, &Platform::default()).unwrap_err();
    assert!(
        matches!(&err, ImportError::MissingEntry { entry, .. } if entry == "index.json"),
        "{err}"
    );

    // A tarball that is not a docker save.
    let not_save = dir.path().join("not-save.tar");
    let mut builder = tar::Builder::new(std::fs::File::create(&not_save).unwrap());
    let mut header = tar::Header::new_gnu();
    header.set_size(3);
    header.set_cksum();
    builder
        .append_data(&mut header, "hello.txt", &b"hi\n"[..])
        .unwrap();
    builder.finish().unwrap();
    drop(builder);
    let err = import_docker_archive(&store, &not_save, None).unwrap_err();
    assert!(
        matches!(&err, ImportError::MissingEntry { entry, .. } if entry == "manifest.json"),
        "{err}"
    );

    // A truncated docker save.
    let truncated = dir.path().join("truncated.tar");
    let full = std::fs::read(&images.docker_archive).unwrap();
    std::fs::write(&truncated, &full[..full.len() / 2]).unwrap();
    let err = import_docker_archive(&store, &truncated, None).unwrap_err();
    assert!(
        matches!(
            err,
            ImportError::Io { .. } | ImportError::MissingEntry { .. }
        ),
        "{err}"
    );
    assert!(store.images().unwrap().is_empty());
    assert!(std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none());
}
