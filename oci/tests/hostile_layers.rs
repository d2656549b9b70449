//! The hostile-layer corpus: layers crafted to write outside the extraction target. Each is
//! either refused with an [`ExtractError`] naming the entry, or neutralised; in every case
//! nothing outside the target changes. The target sits three levels deep in a sandbox full
//! of sentinel files, and the sandbox (minus the target) and `/etc` are compared before and
//! after every extraction.
//!
//! The payloads aimed at `/etc/passwd` are the file's own bytes, so even a broken extractor
//! would not damage the machine running the tests.

mod layer_tar;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};

use cairn_oci::extract::{extract_layer, ExtractError, ExtractOptions, LayerStats, WhiteoutMode};
use layer_tar::{snapshot, Layer, Node};
use tar::EntryType;

struct Sandbox {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    target: PathBuf,
}

impl Sandbox {
    fn new() -> Sandbox {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().to_owned();
        fs::create_dir_all(root.join("outside/sub")).expect("mkdir");
        fs::write(root.join("outside/secret"), "sentinel\n").expect("write");
        fs::write(root.join("outside/sub/x"), "sentinel x\n").expect("write");
        fs::write(root.join("x"), "top-level x\n").expect("write");
        fs::create_dir_all(root.join("a/b/target")).expect("mkdir");
        fs::write(root.join("a/sibling"), "sentinel sibling\n").expect("write");
        fs::write(root.join("a/b/near"), "sentinel near\n").expect("write");
        symlink("/etc", root.join("a/b/etc-link")).expect("symlink");
        let target = root.join("a/b/target");
        Sandbox {
            _tmp: tmp,
            root,
            target,
        }
    }

    fn outside(&self) -> BTreeMap<PathBuf, Node> {
        snapshot(&self.root, &[&self.target])
    }
}

/// What in `/etc` a hostile layer aims at: its names, and `passwd`'s bytes and inode.
fn etc_state() -> (Vec<PathBuf>, Vec<u8>, u64, i64) {
    let mut names: Vec<_> = fs::read_dir("/etc")
        .expect("read /etc")
        .map(|e| e.expect("entry").path())
        .collect();
    names.sort();
    let md = fs::symlink_metadata("/etc/passwd").expect("stat /etc/passwd");
    (
        names,
        fs::read("/etc/passwd").expect("read /etc/passwd"),
        md.ino(),
        md.mtime(),
    )
}

fn passwd() -> Vec<u8> {
    fs::read("/etc/passwd").expect("read /etc/passwd")
}

/// Extracts `layer` in both whiteout modes, each into a fresh sandbox, checks that nothing
/// outside changed and returns the results.
fn run(
    layer: impl Fn() -> Vec<u8>,
    opts: &ExtractOptions,
) -> Vec<(Sandbox, Result<LayerStats, ExtractError>)> {
    let mut out = Vec::new();
    for mode in [WhiteoutMode::Overlay, WhiteoutMode::Apply] {
        let sb = Sandbox::new();
        let before = sb.outside();
        let etc_before = etc_state();
        let opts = ExtractOptions {
            whiteouts: mode,
            ..opts.clone()
        };
        let res = extract_layer(
            &layer()[..],
            "application/vnd.oci.image.layer.v1.tar",
            &sb.target,
            &opts,
        );
        assert_eq!(
            sb.outside(),
            before,
            "{mode:?}: something outside the target changed ({res:?})"
        );
        assert_eq!(etc_state(), etc_before, "{mode:?}: /etc changed ({res:?})");
        assert!(!Path::new("/abs").exists(), "{mode:?}: /abs was created");
        out.push((sb, res));
    }
    out
}

fn rejected(layer: impl Fn() -> Vec<u8>, entry: &str, check: impl Fn(&ExtractError) -> bool) {
    for (_, res) in run(layer, &ExtractOptions::default()) {
        let err = res.expect_err("hostile layer must be refused");
        assert_eq!(
            err.entry(),
            Some(Path::new(entry)),
            "error names the entry: {err}"
        );
        assert!(check(&err), "unexpected error kind: {err:?}");
        assert!(
            err.to_string().contains(entry),
            "message names the entry: {err}"
        );
    }
}

fn unsafe_path(e: &ExtractError) -> bool {
    matches!(e, ExtractError::UnsafePath { .. })
}

fn through_symlink(e: &ExtractError) -> bool {
    matches!(e, ExtractError::ThroughSymlink { .. })
}

fn hardlink_outside(e: &ExtractError) -> bool {
    matches!(e, ExtractError::HardlinkOutside { .. })
}

#[test]
fn parent_escape_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.file("../escape", b"pwned");
            l.tar()
        },
        "../escape",
        unsafe_path,
    );
}

#[test]
fn parent_escape_in_the_middle_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.dir("a/").file("a/../../x", b"pwned");
            l.tar()
        },
        "a/../../x",
        unsafe_path,
    );
    rejected(
        || {
            let mut l = Layer::new();
            l.file("./../x", b"pwned");
            l.tar()
        },
        "./../x",
        unsafe_path,
    );
}

#[test]
fn absolute_path_is_made_relative() {
    for (sb, res) in run(
        || {
            let mut l = Layer::new();
            l.file("/abs/path", b"inside");
            l.tar()
        },
        &ExtractOptions::default(),
    ) {
        res.expect("absolute names are neutralised");
        assert_eq!(
            fs::read(sb.target.join("abs/path")).expect("read"),
            b"inside"
        );
    }
}

#[test]
fn write_through_absolute_symlink_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.symlink("evil", "/etc").file("evil/passwd", &passwd());
            l.tar()
        },
        "evil/passwd",
        |e| matches!(e, ExtractError::ThroughSymlink { component, .. } if component == Path::new("evil")),
    );
}

#[test]
fn write_through_relative_escaping_symlink_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.symlink("link", "../../..")
                .file("link/outside/secret", b"pwned");
            l.tar()
        },
        "link/outside/secret",
        through_symlink,
    );
    // Deeper: the symlink is not the first component.
    rejected(
        || {
            let mut l = Layer::new();
            l.dir("d").symlink("d/up", "../..").file("d/up/x", b"pwned");
            l.tar()
        },
        "d/up/x",
        through_symlink,
    );
}

#[test]
fn escaping_symlinks_alone_are_kept_verbatim_and_never_followed() {
    let opts = ExtractOptions::default();
    for (sb, res) in run(
        || {
            let mut l = Layer::new();
            l.symlink("link", "../../..").symlink("evil", "/etc");
            l.tar()
        },
        &opts,
    ) {
        res.expect("a symlink by itself is harmless");
        assert_eq!(
            fs::read_link(sb.target.join("link")).expect("readlink"),
            Path::new("../../..")
        );
        assert_eq!(
            fs::read_link(sb.target.join("evil")).expect("readlink"),
            Path::new("/etc")
        );
    }
}

#[test]
fn hardlink_to_absolute_host_file_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.hardlink("hl", "/etc/passwd");
            l.tar()
        },
        "hl",
        hardlink_outside,
    );
}

#[test]
fn hardlink_to_parent_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.hardlink("hl", "../outside");
            l.tar()
        },
        "hl",
        hardlink_outside,
    );
    rejected(
        || {
            let mut l = Layer::new();
            l.hardlink("hl", "../../../outside/secret");
            l.tar()
        },
        "hl",
        hardlink_outside,
    );
}

#[test]
fn hardlink_through_symlink_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.symlink("s", "/etc").hardlink("hl", "s/passwd");
            l.tar()
        },
        "hl",
        hardlink_outside,
    );
}

#[test]
fn hardlink_to_a_symlink_links_the_symlink_itself() {
    for (sb, res) in run(
        || {
            let mut l = Layer::new();
            l.symlink("s", "/etc/passwd").hardlink("h", "s");
            l.tar()
        },
        &ExtractOptions::default(),
    ) {
        res.expect("linking a symlink inside the layer is harmless");
        assert_eq!(
            fs::read_link(sb.target.join("h")).expect("h is a symlink"),
            Path::new("/etc/passwd")
        );
    }
}

#[test]
fn directory_replaced_by_symlink_then_written_through_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.dir("d")
                .file("d/f", b"ok")
                .symlink("d", "/etc")
                .file("d/passwd", &passwd());
            l.tar()
        },
        "d/passwd",
        through_symlink,
    );
    rejected(
        || {
            let mut l = Layer::new();
            l.dir("d")
                .dir("d/e")
                .symlink("d/e", "../../../outside")
                .file("d/e/secret", b"pwned");
            l.tar()
        },
        "d/e/secret",
        through_symlink,
    );
}

#[test]
fn entries_replacing_symlinks_replace_the_link_not_its_target() {
    for (sb, res) in run(
        || {
            let mut l = Layer::new();
            l.symlink("evil", "/etc/passwd").file("evil", &passwd());
            l.symlink("d", "/etc").dir("d").file("d/passwd", b"inside");
            l.tar()
        },
        &ExtractOptions::default(),
    ) {
        res.expect("replacing a symlink is fine");
        let md = fs::symlink_metadata(sb.target.join("evil")).expect("lstat");
        assert!(md.is_file(), "evil is now a regular file");
        assert!(fs::symlink_metadata(sb.target.join("d"))
            .expect("lstat")
            .is_dir());
        assert_eq!(
            fs::read(sb.target.join("d/passwd")).expect("read"),
            b"inside"
        );
    }
}

#[test]
fn device_nodes_and_fifos_are_skipped_by_default() {
    let layer = || {
        let mut l = Layer::new();
        l.dir("dev")
            .device(EntryType::Char, "dev/mem", 1, 1)
            .device(EntryType::Block, "dev/sda", 8, 0)
            .device(EntryType::Fifo, "fifo", 0, 0)
            .device(EntryType::Char, "dev/fake-whiteout", 0, 0);
        l.tar()
    };
    for (sb, res) in run(layer, &ExtractOptions::default()) {
        let stats = res.expect("devices are skipped, not fatal");
        for name in ["dev/mem", "dev/sda", "fifo", "dev/fake-whiteout"] {
            assert!(
                fs::symlink_metadata(sb.target.join(name)).is_err(),
                "{name} was created"
            );
            assert!(
                stats.skipped.contains(&PathBuf::from(name)),
                "{name} reported as skipped"
            );
        }
    }
}

#[test]
fn device_nodes_are_created_when_allowed_needs_root() {
    if !layer_tar::is_root() {
        eprintln!("skipping: creating device nodes needs root");
        return;
    }
    let opts = ExtractOptions {
        allow_devices: true,
        ..ExtractOptions::default()
    };
    let layer = || {
        let mut l = Layer::new();
        l.device(EntryType::Char, "null", 1, 3)
            .device(EntryType::Fifo, "fifo", 0, 0);
        l.tar()
    };
    for (sb, res) in run(layer, &opts) {
        res.expect("devices allowed");
        let md = fs::symlink_metadata(sb.target.join("null")).expect("null created");
        assert_eq!(md.rdev(), rustix::fs::makedev(1, 3));
        assert!(fs::symlink_metadata(sb.target.join("fifo")).is_ok());
    }
}

#[test]
fn whiteout_with_parent_component_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.file("../.wh.x", b"");
            l.tar()
        },
        "../.wh.x",
        unsafe_path,
    );
    rejected(
        || {
            let mut l = Layer::new();
            l.file("a/../../.wh.x", b"");
            l.tar()
        },
        "a/../../.wh.x",
        unsafe_path,
    );
    rejected(
        || {
            let mut l = Layer::new();
            l.file(".wh..", b"");
            l.tar()
        },
        ".wh..",
        unsafe_path,
    );
}

#[test]
fn whiteout_through_symlink_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.symlink("s", "../../outside").whiteout("s/secret");
            l.tar()
        },
        "s/.wh.secret",
        through_symlink,
    );
    rejected(
        || {
            let mut l = Layer::new();
            l.symlink("s", "../../outside").opaque("s");
            l.tar()
        },
        "s/.wh..wh..opq",
        through_symlink,
    );
}

#[test]
fn overlong_names_are_refused() {
    let long_component = "n".repeat(300);
    rejected(
        || {
            let mut l = Layer::new();
            l.file(&long_component, b"x");
            l.tar()
        },
        &long_component,
        unsafe_path,
    );
    let long_path = "d/".repeat(2100) + "f";
    rejected(
        || {
            let mut l = Layer::new();
            l.file(&long_path, b"x");
            l.tar()
        },
        &long_path,
        unsafe_path,
    );
}

#[test]
fn long_names_that_fit_are_extracted() {
    let name = format!("{}/{}", "a".repeat(200), "b".repeat(250));
    let target = format!("{}/{}", "c".repeat(120), "t");
    for (sb, res) in run(
        || {
            let mut l = Layer::new();
            l.file(&name, b"long").symlink("s", &target);
            l.tar()
        },
        &ExtractOptions::default(),
    ) {
        res.expect("long but valid names");
        assert_eq!(fs::read(sb.target.join(&name)).expect("read"), b"long");
        assert_eq!(
            fs::read_link(sb.target.join("s")).expect("readlink"),
            Path::new(&target)
        );
    }
}

#[test]
fn entry_naming_the_root_as_a_file_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.file("./", b"x");
            l.tar()
        },
        "./",
        unsafe_path,
    );
}

#[test]
fn hardlink_to_directory_is_refused() {
    rejected(
        || {
            let mut l = Layer::new();
            l.dir("d").hardlink("h", "d");
            l.tar()
        },
        "h",
        hardlink_outside,
    );
}

#[test]
fn overlay_xattrs_from_the_layer_are_dropped_needs_root() {
    if !layer_tar::is_root() {
        eprintln!("skipping: trusted.* xattrs need root");
        return;
    }
    let layer = || {
        let mut l = Layer::new();
        l.pax(&[
            ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ("SCHILY.xattr.user.note", b"kept"),
        ])
        .dir("d");
        l.tar()
    };
    for (sb, res) in run(layer, &ExtractOptions::default()) {
        res.expect("xattrs are filtered, not fatal");
        let d = sb.target.join("d");
        let mut buf = [0u8; 16];
        assert!(
            rustix::fs::lgetxattr(&d, "trusted.overlay.opaque", &mut buf[..]).is_err(),
            "forged opaque xattr"
        );
        let n = rustix::fs::lgetxattr(&d, "user.note", &mut buf[..]).expect("user xattr kept");
        assert_eq!(&buf[..n], b"kept");
    }
}
