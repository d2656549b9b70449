//! Root filesystems: overlayfs and the copy fallback give the same tree, read-only works,
//! teardown is idempotent and needs only the container directory. Mounting needs root: the
//! tests say so in their names and skip without it.

mod layer_tar;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use cairn_oci::extract::{extract_layer, ExtractOptions, LayerCache, WhiteoutMode};
use cairn_oci::rootfs::{Rootfs, RootfsError, RootfsKind, RootfsMode, RootfsOptions};
use cairn_testsupport::images::{TestImages, BUSYBOX, LAYER2_CONTENT, LAYER2_FILE, REMOVED_FILE};
use layer_tar::{check_merged, is_root, snapshot, whiteout_layers};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

/// Lazily unmounts a path when dropped, so a failing test leaves no mount behind even if
/// the [`Rootfs`] under test is broken. Declared after the tempdir so it drops first.
struct UnmountGuard(PathBuf);

impl Drop for UnmountGuard {
    fn drop(&mut self) {
        for _ in 0..4 {
            if rustix::mount::unmount(&self.0, rustix::mount::UnmountFlags::DETACH).is_err() {
                break;
            }
        }
    }
}

fn skip_unless_root(what: &str) -> bool {
    if is_root() {
        return false;
    }
    eprintln!("skipping {what}: mounting and overlay whiteouts need root");
    true
}

/// Extracts the whiteout layers into a cache, bottom first.
fn cached_layers(root: &Path) -> Vec<PathBuf> {
    let cache = LayerCache::new(root);
    whiteout_layers()
        .iter()
        .enumerate()
        .map(|(i, tar)| {
            let blob = root.join(format!("blob{i}"));
            fs::write(&blob, tar).expect("write blob");
            let digest = format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(tar))
            );
            cache.extract(&blob, TAR, &digest).expect("extract")
        })
        .collect()
}

fn assemble(layers: &[PathBuf], dir: &Path, mode: RootfsMode, readonly: bool) -> Rootfs {
    Rootfs::assemble(layers, dir, &RootfsOptions { mode, readonly }).expect("assemble")
}

#[test]
fn overlay_and_copy_give_the_same_merged_tree_needs_root() {
    if skip_unless_root("overlay vs copy") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = cached_layers(tmp.path());
    let _g1 = UnmountGuard(tmp.path().join("c1/rootfs"));
    let _g2 = UnmountGuard(tmp.path().join("c2/rootfs"));

    let overlay = assemble(&layers, &tmp.path().join("c1"), RootfsMode::Overlay, false);
    assert_eq!(overlay.kind(), RootfsKind::Overlay);
    check_merged(overlay.path());
    let copy = assemble(&layers, &tmp.path().join("c2"), RootfsMode::Copy, false);
    assert_eq!(copy.kind(), RootfsKind::Copy);
    check_merged(copy.path());

    // And the same as applying the tars onto one directory.
    let applied = tmp.path().join("applied");
    fs::create_dir(&applied).expect("mkdir");
    let opts = ExtractOptions {
        whiteouts: WhiteoutMode::Apply,
        ..ExtractOptions::default()
    };
    for tar in whiteout_layers() {
        extract_layer(&tar[..], TAR, &applied, &opts).expect("apply");
    }
    let (o, c, a) = (
        snapshot(overlay.path(), &[]),
        snapshot(copy.path(), &[]),
        snapshot(&applied, &[]),
    );
    assert_eq!(o, c, "overlay and copy differ");
    assert_eq!(o, a, "overlay and applied extraction differ");

    // Writes go to the container's own directories, never to the shared layers.
    fs::write(overlay.path().join("etc/passwd"), "changed").expect("write through overlay");
    fs::remove_file(overlay.path().join("usr/lib/b")).expect("delete through overlay");
    assert_eq!(
        fs::read(layers[1].join("etc/passwd")).expect("layer"),
        b"root:2\n"
    );
    assert!(layers[0].join("usr/lib/b").exists());

    overlay.destroy().expect("teardown overlay");
    copy.destroy().expect("teardown copy");
    for c in ["c1", "c2"] {
        assert!(!tmp.path().join(c).exists(), "{c} removed");
    }
}

#[test]
fn readonly_rootfs_refuses_writes_needs_root() {
    if skip_unless_root("read-only rootfs") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = cached_layers(tmp.path());
    for (i, mode) in [RootfsMode::Overlay, RootfsMode::Copy]
        .into_iter()
        .enumerate()
    {
        let dir = tmp.path().join(format!("ro{i}"));
        let _g = UnmountGuard(dir.join("rootfs"));
        let rootfs = assemble(&layers, &dir, mode, true);
        assert!(rootfs.readonly());
        check_merged(rootfs.path());
        let err = fs::write(rootfs.path().join("new"), "x").expect_err("read-only");
        assert_eq!(err.raw_os_error(), Some(libc_erofs()), "{mode:?}: {err}");
        if mode == RootfsMode::Overlay {
            assert!(
                !dir.join("rootfs-upper").exists(),
                "no upper dir for a read-only overlay"
            );
        }
        rootfs.destroy().expect("teardown");
        assert!(!dir.exists());
    }
}

fn libc_erofs() -> i32 {
    rustix::io::Errno::ROFS.raw_os_error()
}

#[test]
fn single_layer_overlay_works_needs_root() {
    if skip_unless_root("single-layer overlay") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = cached_layers(tmp.path());
    for readonly in [false, true] {
        let dir = tmp.path().join(format!("one-{readonly}"));
        let _g = UnmountGuard(dir.join("rootfs"));
        let rootfs = assemble(&layers[..1], &dir, RootfsMode::Overlay, readonly);
        assert_eq!(
            fs::read(rootfs.path().join("etc/passwd")).expect("read"),
            b"root:1\n"
        );
        let written = fs::write(rootfs.path().join("new"), "x");
        assert_eq!(written.is_ok(), !readonly, "{written:?}");
        rootfs.destroy().expect("teardown");
    }
}

#[test]
fn teardown_after_restart_is_idempotent_needs_root() {
    if skip_unless_root("teardown after restart") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = cached_layers(tmp.path());
    let dir = tmp.path().join("kept");
    let _g = UnmountGuard(dir.join("rootfs"));
    let path = assemble(&layers, &dir, RootfsMode::Auto, false).keep();
    assert!(path.join("etc/passwd").exists(), "kept past drop");
    fs::write(path.join("scratch"), "container wrote this").expect("write");
    // Something holds the mount busy: teardown detaches lazily.
    let busy = fs::File::open(path.join("etc/passwd")).expect("hold the mount");
    Rootfs::teardown(&dir).expect("teardown from the directory alone");
    drop(busy);
    assert!(!dir.exists());
    Rootfs::teardown(&dir).expect("second teardown is a no-op");
    // The layers are untouched.
    assert_eq!(
        fs::read(layers[1].join("etc/passwd")).expect("layer"),
        b"root:2\n"
    );
}

#[test]
fn drop_tears_down_and_assemble_refuses_to_stack_needs_root() {
    if skip_unless_root("drop teardown") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let layers = cached_layers(tmp.path());
    let dir = tmp.path().join("c");
    let _g = UnmountGuard(dir.join("rootfs"));
    {
        let rootfs = assemble(&layers, &dir, RootfsMode::Auto, false);
        let err =
            Rootfs::assemble(&layers, &dir, &RootfsOptions::default()).expect_err("already there");
        assert!(matches!(err, RootfsError::AlreadyAssembled { .. }), "{err}");
        assert!(rootfs.path().join("etc/passwd").exists());
    }
    assert!(!dir.exists(), "dropped rootfs torn down");
}

#[test]
fn missing_layer_is_an_error_and_leaves_nothing() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("c");
    let err = Rootfs::assemble(&[tmp.path().join("nope")], &dir, &RootfsOptions::default())
        .expect_err("missing layer");
    assert!(matches!(err, RootfsError::MissingLayer { .. }), "{err}");
    assert!(!dir.exists());
}

#[test]
fn busybox_multi_image_rootfs_needs_root() {
    if skip_unless_root("busybox rootfs") {
        return;
    }
    let images = TestImages::get();
    let tmp = tempfile::tempdir().expect("tempdir");
    let cache = LayerCache::new(tmp.path().join("store"));
    let layers: Vec<PathBuf> = images
        .multi
        .layers
        .iter()
        .map(|d| cache.extract(&images.blob(d), GZIP, d).expect("extract"))
        .collect();
    let mut trees = Vec::new();
    for (i, mode) in [RootfsMode::Overlay, RootfsMode::Copy]
        .into_iter()
        .enumerate()
    {
        let dir = tmp.path().join(format!("c{i}"));
        let _g = UnmountGuard(dir.join("rootfs"));
        let rootfs = assemble(&layers, &dir, mode, false);
        let root = rootfs.path();
        let busybox = root.join(BUSYBOX.trim_start_matches('/'));
        assert!(
            fs::metadata(&busybox).expect("busybox").mode() & 0o111 != 0,
            "{mode:?}"
        );
        assert_eq!(
            fs::read(root.join(LAYER2_FILE.trim_start_matches('/'))).expect("layer 2 file"),
            LAYER2_CONTENT.as_bytes()
        );
        assert!(
            fs::symlink_metadata(root.join(REMOVED_FILE.trim_start_matches('/'))).is_err(),
            "{mode:?}: whiteout-deleted file is visible"
        );
        trees.push(snapshot(root, &[]));
        rootfs.destroy().expect("teardown");
    }
    assert_eq!(
        trees[0], trees[1],
        "overlay and copy of the busybox image differ"
    );
}

#[test]
fn a_lower_symlink_under_an_upper_directory_is_replaced_not_followed_needs_root() {
    if skip_unless_root("symlink replaced by a directory") {
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let sentinel = tmp.path().join("sentinel");
    fs::create_dir(&sentinel).expect("mkdir");
    fs::write(sentinel.join("keep"), "sentinel").expect("write");
    let before = snapshot(&sentinel, &[]);
    let cache = LayerCache::new(tmp.path().join("store"));
    let mut l1 = layer_tar::Layer::new();
    l1.symlink("evil", sentinel.to_str().expect("utf-8 temp path"));
    let mut l2 = layer_tar::Layer::new();
    l2.file("evil/passwd", b"inside")
        .file("evil/keep", b"inside too");
    let layers: Vec<PathBuf> = [l1.tar(), l2.tar()]
        .iter()
        .enumerate()
        .map(|(i, tar)| {
            let blob = tmp.path().join(format!("blob{i}"));
            fs::write(&blob, tar).expect("write blob");
            let digest = format!(
                "sha256:{}",
                hex::encode(<sha2::Sha256 as sha2::Digest>::digest(tar))
            );
            cache.extract(&blob, TAR, &digest).expect("extract")
        })
        .collect();
    for (i, mode) in [RootfsMode::Overlay, RootfsMode::Copy]
        .into_iter()
        .enumerate()
    {
        let dir = tmp.path().join(format!("c{i}"));
        let _g = UnmountGuard(dir.join("rootfs"));
        let rootfs = assemble(&layers, &dir, mode, false);
        let evil = rootfs.path().join("evil");
        assert!(
            fs::symlink_metadata(&evil).expect("evil").is_dir(),
            "{mode:?}"
        );
        assert_eq!(fs::read(evil.join("keep")).expect("read"), b"inside too");
        rootfs.destroy().expect("teardown");
        assert_eq!(
            snapshot(&sentinel, &[]),
            before,
            "{mode:?}: sentinel changed"
        );
    }
}
