//! The content-addressed store: GC keeps shared blobs, crashes leave nothing behind, bad
//! content and missing blobs never reach the index.

#![allow(clippy::unwrap_used)]

use cairn_oci::digest::Digest;
use cairn_oci::import::import_oci_layout;
use cairn_oci::manifest::Platform;
use cairn_oci::reference::Reference;
use cairn_oci::store::{ImageRecord, LayerRecord, Store, StoreError};
use cairn_testsupport::images::TestImages;
use cairn_testsupport::{require_command, ServiceDir};

#[test]
fn gc_removes_unreferenced_images_blobs_but_keeps_shared_ones() {
    if !require_command(
        "gc_removes_unreferenced_images_blobs_but_keeps_shared_ones",
        "umoci",
    ) {
        return;
    }
    let images = TestImages::get();
    let dir = ServiceDir::new("oci-store-gc");
    let store = Store::open(dir.path().join("store")).unwrap();
    let name = Reference::parse("cairn/busybox").unwrap();
    import_oci_layout(&store, &images.oci_layout, &name, &Platform::default()).unwrap();
    let multi = store
        .image(&name.with_tag("multi").unwrap())
        .unwrap()
        .unwrap();
    let latest = store
        .image(&name.with_tag("latest").unwrap())
        .unwrap()
        .unwrap();
    assert_eq!(
        multi.layers[0].digest, latest.layers[0].digest,
        "layer 1 is shared"
    );

    // Nothing unreferenced yet.
    assert!(store.gc().unwrap().removed.is_empty());

    assert!(store.remove_image(&multi.reference).unwrap());
    let report = store.gc().unwrap();
    let mut expected: Vec<Digest> =
        vec![multi.manifest_digest.clone(), multi.config_digest.clone()];
    expected.extend(multi.layers[1..].iter().map(|l| l.digest.clone()));
    expected.sort();
    assert_eq!(report.removed, expected);
    assert!(report.bytes_freed > 0);
    for d in &expected {
        assert!(!store.has_blob(d), "{d} removed");
    }
    // Shared layer and the other images survive, and verify.
    for l in &latest.layers {
        store.verify_blob(&l.digest).unwrap();
    }
    store.verify_blob(&latest.config_digest).unwrap();
    assert!(store.image(&latest.reference).unwrap().is_some());

    // Removing the rest empties the store.
    for image in store.images().unwrap() {
        store.remove_image(&image.reference).unwrap();
    }
    store.gc().unwrap();
    assert!(std::fs::read_dir(store.root().join("blobs/sha256"))
        .unwrap()
        .next()
        .is_none());
}

#[test]
fn crash_leftovers_are_removed_on_open_and_never_indexed() {
    let dir = ServiceDir::new("oci-store-crash");
    let root = dir.path().join("store");
    let store = Store::open(&root).unwrap();
    // A pull that died mid-download: a temp file and an in-progress writer's file.
    std::fs::write(root.join("tmp/blob-99999-0"), b"half a layer").unwrap();
    let mut writer = store.blob_writer().unwrap();
    writer.write(b"partial").unwrap();
    std::mem::forget(writer); // as if the process died: no Drop cleanup
    drop(store);
    let store = Store::open(&root).unwrap();
    assert!(std::fs::read_dir(root.join("tmp"))
        .unwrap()
        .next()
        .is_none());
    assert!(store.images().unwrap().is_empty());

    // While another writer holds the store, open leaves its temp files alone.
    let _writer = store.writer_lock().unwrap();
    std::fs::write(root.join("tmp/blob-1-1"), b"in use").unwrap();
    let _second = Store::open(&root).unwrap();
    assert!(root.join("tmp/blob-1-1").exists());
}

#[test]
fn bad_content_and_missing_blobs_never_reach_the_index() {
    let dir = ServiceDir::new("oci-store-bad");
    let store = Store::open(dir.path().join("store")).unwrap();
    let claimed = Digest::of(b"the real content");
    let err = store.put_blob(&claimed, b"something else").unwrap_err();
    assert!(
        matches!(err, StoreError::DigestMismatch { ref expected, .. } if expected == &claimed),
        "{err}"
    );
    assert!(!store.has_blob(&claimed));

    let mut writer = store.blob_writer().unwrap();
    writer.write(b"other bytes").unwrap();
    assert!(matches!(
        writer.commit(&claimed),
        Err(StoreError::DigestMismatch { .. })
    ));
    assert!(std::fs::read_dir(store.root().join("tmp"))
        .unwrap()
        .next()
        .is_none());

    // An image naming a blob that is not stored is refused; the index is unchanged.
    let config =
        br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
    let config_digest = Digest::of(config);
    store.put_blob(&config_digest, config).unwrap();
    let manifest_digest = Digest::of(b"manifest");
    store.put_blob(&manifest_digest, b"manifest").unwrap();
    let layer = Digest::of(b"never stored");
    let record = ImageRecord {
        manifest_digest,
        manifest_media_type: cairn_oci::manifest::media_type::OCI_MANIFEST.into(),
        config_digest,
        config: serde_json::from_slice(config).unwrap(),
        layers: vec![LayerRecord {
            digest: layer.clone(),
            media_type: cairn_oci::manifest::media_type::OCI_LAYER_TAR.into(),
            compression: cairn_oci::manifest::Compression::None,
            size: 12,
        }],
        source: "test".into(),
        stored_at: 0,
    };
    let r = Reference::parse("x.io/a:b").unwrap();
    let err = store.put_image(&r, record.clone()).unwrap_err();
    assert!(
        matches!(err, StoreError::MissingBlob { ref digest } if digest == &layer),
        "{err}"
    );
    assert!(store.image(&r).unwrap().is_none());

    // Once the layer is there the image is recorded, and survives reopening.
    store.put_blob(&layer, b"never stored").unwrap();
    store.put_image(&r, record).unwrap();
    let reopened = Store::open(store.root()).unwrap();
    let image = reopened.image(&r).unwrap().unwrap();
    assert_eq!(image.layers[0].path, reopened.blob_path(&layer));

    // A corrupt index is reported with its path, not silently replaced.
    std::fs::write(store.root().join("index.json"), b"{ not json").unwrap();
    let err = reopened.images().unwrap_err();
    assert!(matches!(err, StoreError::IndexCorrupt { .. }), "{err}");
    // And a newer version is refused.
    std::fs::write(
        store.root().join("index.json"),
        br#"{"version":99,"images":{}}"#,
    )
    .unwrap();
    assert!(matches!(
        reopened.images(),
        Err(StoreError::IndexVersion { found: 99, .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blob_lock_is_exclusive_across_handles() {
    let dir = ServiceDir::new("oci-store-lock");
    let root = dir.path().join("store");
    let a = Store::open(&root).unwrap();
    let b = Store::open(&root).unwrap();
    let d = Digest::of(b"x");
    let held = a.lock_blob(&d).await.unwrap();
    let waiting = tokio::spawn(async move { b.lock_blob(&d).await.map(|_| ()) });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "second handle waits for the first");
    drop(held);
    tokio::time::timeout(std::time::Duration::from_secs(5), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
