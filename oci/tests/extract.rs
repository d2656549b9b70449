//! Layer extraction: formats, whiteouts in both forms, metadata, and the layer cache
//! (including the busybox test images).

mod layer_tar;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use cairn_oci::extract::{
    extract_layer, Compression, ExtractError, ExtractOptions, LayerCache, WhiteoutMode,
};
use cairn_testsupport::images::{TestImages, BUSYBOX, LAYER2_CONTENT, LAYER2_FILE, REMOVED_FILE};
use layer_tar::{check_merged, is_root, whiteout_layers, Layer};
use sha2::Digest as _;

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const DOCKER_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";

fn sample() -> Layer {
    let mut l = Layer::new();
    l.dir("etc")
        .file("etc/hostname", b"cairn\n")
        .dir_mode("bin", 0o755)
        .file_mode("bin/su", 0o4755, b"#!su")
        .symlink("bin/sh", "/bin/busybox")
        .file("a", b"shared")
        .hardlink("b", "a");
    l
}

fn check_sample(dir: &Path) {
    assert_eq!(
        fs::read(dir.join("etc/hostname")).expect("read"),
        b"cairn\n"
    );
    let su = fs::metadata(dir.join("bin/su")).expect("stat su");
    assert_eq!(su.permissions().mode() & 0o7777, 0o4755, "setuid kept");
    assert_eq!(su.mtime(), 1_600_000_000, "mtime kept");
    assert_eq!(
        fs::read_link(dir.join("bin/sh")).expect("readlink"),
        Path::new("/bin/busybox")
    );
    let (a, b) = (
        fs::metadata(dir.join("a")).expect("a"),
        fs::metadata(dir.join("b")).expect("b"),
    );
    assert_eq!(a.ino(), b.ino(), "hardlink shares the inode");
    assert_eq!(
        fs::metadata(dir.join("bin")).expect("bin").mtime(),
        1_600_000_000,
        "directory mtime set after its children"
    );
}

#[test]
fn plain_gzip_and_zstd_layers_by_media_type_and_by_magic() {
    type Encode = fn(Layer) -> Vec<u8>;
    let cases: [(&str, Encode, &str); 6] = [
        ("tar", Layer::tar, TAR),
        ("gzip", Layer::gzip, GZIP),
        ("zstd", Layer::zstd, ZSTD),
        ("docker gzip", Layer::gzip, DOCKER_GZIP),
        // Mislabelled or unlabelled: the magic bytes decide.
        ("gzip labelled tar", Layer::gzip, TAR),
        ("zstd unlabelled", Layer::zstd, ""),
    ];
    for (what, encode, media_type) in cases {
        let dir = tempfile::tempdir().expect("tempdir");
        let stats = extract_layer(
            &encode(sample())[..],
            media_type,
            dir.path(),
            &ExtractOptions::default(),
        )
        .unwrap_or_else(|e| panic!("{what}: {e}"));
        assert_eq!(stats.entries, 7, "{what}");
        check_sample(dir.path());
    }
}

#[test]
fn ownership_is_preserved_as_root_needs_root() {
    if !is_root() {
        eprintln!("skipping: chown needs root");
        return;
    }
    let mut l = Layer::new();
    l.raw(tar::EntryType::Regular, b"owned", None, 0o640, b"x");
    let mut tar = l.tar();
    // uid/gid fields of the first header (offsets 108 and 116, octal).
    tar[108..116].copy_from_slice(b"0001750\0");
    tar[116..124].copy_from_slice(b"0001751\0");
    let sum: u32 = tar[..512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    tar[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let dir = tempfile::tempdir().expect("tempdir");
    extract_layer(&tar[..], TAR, dir.path(), &ExtractOptions::default()).expect("extract");
    let md = fs::metadata(dir.path().join("owned")).expect("stat");
    assert_eq!((md.uid(), md.gid()), (1000, 1001));
}

#[test]
fn bad_streams_are_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ExtractOptions::default();
    let err = extract_layer(
        &b"{}"[..],
        "application/vnd.oci.image.config.v1+json",
        dir.path(),
        &opts,
    )
    .expect_err("not a layer");
    assert!(
        matches!(err, ExtractError::UnsupportedMediaType { .. }),
        "{err}"
    );

    let xz = [0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2];
    let err = extract_layer(&xz[..], "", dir.path(), &opts).expect_err("xz");
    assert!(
        matches!(err, ExtractError::UnsupportedCompression { format: "xz" }),
        "{err}"
    );

    let mut gz = sample().gzip();
    gz.truncate(gz.len() / 2);
    let err = extract_layer(&gz[..], GZIP, dir.path(), &opts).expect_err("truncated gzip");
    assert!(
        matches!(err, ExtractError::Read { .. } | ExtractError::Entry { .. }),
        "{err:?}"
    );

    let mut zst = sample().zstd();
    let mid = zst.len() / 2;
    zst[mid] ^= 0xff;
    zst[mid + 1] ^= 0xff;
    assert!(
        extract_layer(&zst[..], ZSTD, dir.path(), &opts).is_err(),
        "corrupt zstd"
    );
}

#[test]
fn whiteouts_applied_onto_one_directory() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opts = ExtractOptions {
        whiteouts: WhiteoutMode::Apply,
        ..ExtractOptions::default()
    };
    for layer in whiteout_layers() {
        extract_layer(&layer[..], TAR, dir.path(), &opts).expect("extract");
    }
    check_merged(dir.path());
}

#[test]
fn whiteouts_converted_to_overlay_form_needs_root() {
    if !is_root() {
        eprintln!("skipping: overlay whiteouts (trusted.* xattrs) need root");
        return;
    }
    let [_, l2, _] = whiteout_layers();
    let dir = tempfile::tempdir().expect("tempdir");
    let stats =
        extract_layer(&l2[..], TAR, dir.path(), &ExtractOptions::default()).expect("extract");
    assert_eq!(stats.whiteouts, 3);
    for wh in ["usr/lib/a", "gone"] {
        let md = fs::symlink_metadata(dir.path().join(wh)).expect("whiteout exists");
        assert!(
            std::os::unix::fs::FileTypeExt::is_char_device(&md.file_type()),
            "{wh}"
        );
        assert_eq!(md.rdev(), 0, "{wh}: 0/0");
    }
    let mut buf = [0u8; 4];
    let n = rustix::fs::lgetxattr(
        dir.path().join("opt"),
        "trusted.overlay.opaque",
        &mut buf[..],
    )
    .expect("opaque xattr");
    assert_eq!(&buf[..n], b"y");
    assert!(!dir.path().join("opt/.wh..wh..opq").exists());
}

fn write_blob(dir: &Path, bytes: &[u8]) -> (std::path::PathBuf, String) {
    let digest = format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)));
    let path = dir.join(digest.replace(':', "-"));
    fs::write(&path, bytes).expect("write blob");
    (path, digest)
}

#[test]
fn cache_extracts_once_and_reuses() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (blob, digest) = write_blob(tmp.path(), &sample().gzip());
    let cache = LayerCache::new(tmp.path().join("store"));
    assert_eq!(cache.get(&digest).expect("valid digest"), None);
    let (path, stats) = cache
        .extract_with_stats(&blob, GZIP, &digest)
        .expect("extract");
    assert!(stats.is_some(), "first request extracts");
    check_sample(&path);
    let (again, stats) = cache
        .extract_with_stats(&blob, GZIP, &digest)
        .expect("cached");
    assert_eq!(
        (again.as_path(), stats),
        (path.as_path(), None),
        "second request is a cache hit"
    );
    assert_eq!(cache.get(&digest).expect("valid"), Some(path.clone()));
    let layers = tmp.path().join("store/layers");
    assert_eq!(
        fs::metadata(&layers).expect("layers").permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::read_dir(layers.join("tmp")).expect("tmp").count(),
        0,
        "no leftovers"
    );

    assert!(cache.remove(&digest).expect("remove"));
    assert!(!path.exists());
    assert!(!cache.remove(&digest).expect("remove again"));
}

#[test]
fn concurrent_requests_extract_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (blob, digest) = write_blob(tmp.path(), &sample().zstd());
    let cache = Arc::new(LayerCache::new(tmp.path().join("store")));
    let threads: Vec<_> = (0..6)
        .map(|_| {
            let (cache, blob, digest) = (Arc::clone(&cache), blob.clone(), digest.clone());
            std::thread::spawn(move || {
                cache
                    .extract_with_stats(&blob, ZSTD, &digest)
                    .expect("extract")
            })
        })
        .collect();
    let results: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("thread"))
        .collect();
    assert_eq!(
        results.iter().filter(|(_, s)| s.is_some()).count(),
        1,
        "exactly one extraction"
    );
    assert!(results.windows(2).all(|w| w[0].0 == w[1].0));
    check_sample(&results[0].0);
}

#[test]
fn cache_refuses_bad_digests_and_keeps_nothing_on_failure() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (blob, digest) = write_blob(tmp.path(), &sample().gzip());
    let cache = LayerCache::new(tmp.path().join("store"));
    for bad in ["sha256:../../etc", "md5:abc", "sha256:ABC", "nocolon"] {
        let err = cache.extract(&blob, GZIP, bad).expect_err("invalid digest");
        assert!(
            matches!(err, ExtractError::InvalidDigest { .. }),
            "{bad}: {err}"
        );
    }
    let wrong = format!("sha256:{}", "0".repeat(64));
    let err = cache.extract(&blob, GZIP, &wrong).expect_err("mismatch");
    assert!(matches!(err, ExtractError::DigestMismatch { .. }), "{err}");
    assert_eq!(cache.get(&wrong).expect("valid"), None);

    let (hostile, hostile_digest) = write_blob(tmp.path(), &{
        let mut l = Layer::new();
        l.file("ok", b"ok").file("../escape", b"x");
        l.tar()
    });
    let err = cache
        .extract(&hostile, TAR, &hostile_digest)
        .expect_err("hostile");
    assert_eq!(err.entry(), Some(Path::new("../escape")));
    assert_eq!(cache.get(&hostile_digest).expect("valid"), None);
    let layers = tmp.path().join("store/layers");
    assert_eq!(
        fs::read_dir(layers.join("tmp")).expect("tmp").count(),
        0,
        "failed extractions cleaned"
    );
    assert!(!layers.join("sha256").join(&hostile_digest[7..]).exists());
    // The good blob still extracts after all that.
    cache.extract(&blob, GZIP, &digest).expect("extract");
}

#[test]
fn compression_detection() {
    assert_eq!(
        Compression::sniff(&[0x1f, 0x8b, 8]).expect("gzip"),
        Compression::Gzip
    );
    assert_eq!(
        Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd]).expect("zstd"),
        Compression::Zstd
    );
    assert_eq!(
        Compression::sniff(b"etc/\0\0").expect("tar"),
        Compression::None
    );
    assert_eq!(
        Compression::from_media_type(ZSTD).expect("zstd"),
        Some(Compression::Zstd)
    );
    assert_eq!(Compression::from_media_type("").expect("empty"), None);
}

#[test]
fn busybox_test_image_layers_extract_and_cache_needs_root() {
    if !is_root() {
        eprintln!("skipping: the busybox image is owned by root and has overlay whiteouts");
        return;
    }
    let images = TestImages::get();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = LayerCache::new(tmp.path());
    let base = &images.latest.layers[0];
    let t = Instant::now();
    let (dir, stats) = cache
        .extract_with_stats(&images.blob(base), GZIP, base)
        .expect("extract busybox");
    let cold = t.elapsed();
    let t = Instant::now();
    let (again, hit) = cache
        .extract_with_stats(&images.blob(base), GZIP, base)
        .expect("cached");
    let warm = t.elapsed();
    let stats = stats.expect("first extraction");
    eprintln!(
        "busybox layer: {} entries, {} bytes; extraction {cold:?}, cached request {warm:?}",
        stats.entries, stats.bytes
    );
    assert!(hit.is_none());
    assert_eq!(dir, again);
    let busybox = dir.join(BUSYBOX.trim_start_matches('/'));
    assert!(
        fs::metadata(&busybox)
            .expect("busybox")
            .permissions()
            .mode()
            & 0o111
            != 0
    );
    assert_eq!(
        fs::read(&busybox).expect("read extracted busybox"),
        fs::read(BUSYBOX).expect("read host busybox")
    );

    // The whiteout layer of `multi` in overlay form.
    for digest in &images.multi.layers {
        cache
            .extract(&images.blob(digest), GZIP, digest)
            .expect("extract multi layer");
    }
    let top = cache
        .get(images.multi.layers.last().expect("layers"))
        .expect("valid")
        .expect("cached");
    let removed =
        fs::symlink_metadata(top.join(REMOVED_FILE.trim_start_matches('/'))).expect("whiteout");
    assert_eq!(removed.rdev(), 0);
    assert!(std::os::unix::fs::FileTypeExt::is_char_device(
        &removed.file_type()
    ));
    let mid = cache
        .get(&images.multi.layers[1])
        .expect("valid")
        .expect("cached");
    assert_eq!(
        fs::read(mid.join(LAYER2_FILE.trim_start_matches('/'))).expect("layer 2 file"),
        LAYER2_CONTENT.as_bytes()
    );
}
