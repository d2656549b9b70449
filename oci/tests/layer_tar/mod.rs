//! Crafting layer tarballs for tests, including entries `tar::Builder` would refuse to write
//! (`..`, absolute names, links out of the tree): headers are filled byte by byte.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tar::{EntryType, Header};

/// A layer under construction.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Default for Layer {
    fn default() -> Self {
        Layer::new()
    }
}

fn set_bytes(field: &mut [u8], value: &[u8]) {
    field.fill(0);
    let n = value.len().min(field.len());
    field[..n].copy_from_slice(&value[..n]);
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    /// Appends one member with raw name and link name (GNU long-name records when they do
    /// not fit the 100-byte fields).
    pub fn raw(
        &mut self,
        kind: EntryType,
        name: &[u8],
        link: Option<&[u8]>,
        mode: u32,
        data: &[u8],
    ) -> &mut Self {
        if name.len() > 100 {
            self.long(EntryType::GNULongName, name);
        }
        if let Some(link) = link.filter(|l| l.len() > 100) {
            self.long(EntryType::GNULongLink, link);
        }
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        set_bytes(&mut h.as_old_mut().name, name);
        if let Some(link) = link {
            set_bytes(&mut h.as_old_mut().linkname, link);
        }
        h.set_cksum();
        self.b.append(&h, data).expect("append to an in-memory tar");
        self
    }

    fn long(&mut self, kind: EntryType, value: &[u8]) {
        let mut data = value.to_vec();
        data.push(0);
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        set_bytes(&mut h.as_old_mut().name, b"././@LongLink");
        h.set_cksum();
        self.b
            .append(&h, &data[..])
            .expect("append to an in-memory tar");
    }

    pub fn dir(&mut self, name: &str) -> &mut Self {
        self.dir_mode(name, 0o755)
    }

    pub fn dir_mode(&mut self, name: &str, mode: u32) -> &mut Self {
        self.raw(EntryType::Directory, name.as_bytes(), None, mode, b"")
    }

    pub fn file(&mut self, name: &str, data: &[u8]) -> &mut Self {
        self.raw(EntryType::Regular, name.as_bytes(), None, 0o644, data)
    }

    pub fn file_mode(&mut self, name: &str, mode: u32, data: &[u8]) -> &mut Self {
        self.raw(EntryType::Regular, name.as_bytes(), None, mode, data)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Symlink,
            name.as_bytes(),
            Some(target.as_bytes()),
            0o777,
            b"",
        )
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(
            EntryType::Link,
            name.as_bytes(),
            Some(target.as_bytes()),
            0o644,
            b"",
        )
    }

    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, b"")
    }

    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        let marker = if dir.is_empty() {
            ".wh..wh..opq".to_owned()
        } else {
            format!("{dir}/.wh..wh..opq")
        };
        self.file(&marker, b"")
    }

    pub fn device(&mut self, kind: EntryType, name: &str, major: u32, minor: u32) -> &mut Self {
        let mut h = Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(0);
        h.set_mode(0o666);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_600_000_000);
        set_bytes(&mut h.as_old_mut().name, name.as_bytes());
        h.set_device_major(major)
            .expect("gnu header has device fields");
        h.set_device_minor(minor)
            .expect("gnu header has device fields");
        h.set_cksum();
        self.b
            .append(&h, &b""[..])
            .expect("append to an in-memory tar");
        self
    }

    /// A PAX extended header for the next member.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        let mut data = Vec::new();
        for (k, v) in records {
            // "<len> <key>=<value>\n" where len counts itself.
            let body = 3 + k.len() + v.len();
            let mut len = body + body.to_string().len();
            if len.to_string().len() != body.to_string().len() {
                len += 1;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.raw(EntryType::XHeader, b"./PaxHeaders/x", None, 0o644, &data)
    }

    pub fn tar(self) -> Vec<u8> {
        self.b.into_inner().expect("finish in-memory tar")
    }

    pub fn gzip(self) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(&self.tar()).expect("gzip in memory");
        enc.finish().expect("gzip in memory")
    }

    pub fn zstd(self) -> Vec<u8> {
        zstd::stream::encode_all(&self.tar()[..], 3).expect("zstd in memory")
    }
}

/// What a tree looks like: one line per path, for equality checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir {
        mode: u32,
        uid: u32,
        gid: u32,
    },
    File {
        mode: u32,
        uid: u32,
        gid: u32,
        content: Vec<u8>,
        mtime: i64,
    },
    Symlink {
        target: PathBuf,
    },
    Whiteout,
    Other {
        mode: u32,
        rdev: u64,
    },
}

/// Every path below `root` (not following symlinks), `root` itself excluded; `skip` subtrees
/// are left out.
pub fn snapshot(root: &Path, skip: &[&Path]) -> BTreeMap<PathBuf, Node> {
    let mut out = BTreeMap::new();
    walk(root, root, skip, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, skip: &[&Path], out: &mut BTreeMap<PathBuf, Node>) {
    let mut entries: Vec<_> = fs::read_dir(dir)
        .expect("read_dir")
        .map(|e| e.expect("dir entry").path())
        .collect();
    entries.sort();
    for path in entries {
        if skip.iter().any(|s| *s == path) {
            continue;
        }
        let md = fs::symlink_metadata(&path).expect("lstat");
        let rel = path.strip_prefix(root).expect("below root").to_owned();
        let ft = md.file_type();
        let node = if ft.is_dir() {
            walk(root, &path, skip, out);
            Node::Dir {
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
            }
        } else if ft.is_file() {
            Node::File {
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                content: fs::read(&path).expect("read file"),
                mtime: md.mtime(),
            }
        } else if ft.is_symlink() {
            Node::Symlink {
                target: fs::read_link(&path).expect("readlink"),
            }
        } else if ft.is_char_device() && md.rdev() == 0 {
            Node::Whiteout
        } else {
            Node::Other {
                mode: md.mode(),
                rdev: md.rdev(),
            }
        };
        out.insert(rel, node);
    }
}

/// Whether the process may create devices, chown and set `trusted.` xattrs.
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// Three layers: replace, delete, opaque directory, delete-then-recreate.
pub fn whiteout_layers() -> [Vec<u8>; 3] {
    let mut l1 = Layer::new();
    l1.dir("etc")
        .file("etc/passwd", b"root:1\n")
        .dir("opt")
        .dir("opt/keep")
        .file("opt/keep/x", b"x")
        .file("opt/y", b"y")
        .dir("usr")
        .dir("usr/lib")
        .file("usr/lib/a", b"a1")
        .file("usr/lib/b", b"b1")
        .dir("data")
        .file("data/old", b"old")
        .file("gone", b"gone")
        .dir_mode("tmp", 0o1777);
    let mut l2 = Layer::new();
    l2.dir("etc")
        .file("etc/passwd", b"root:2\n")
        .dir("opt")
        .opaque("opt")
        .file("opt/new", b"new")
        .dir("usr")
        .dir("usr/lib")
        .whiteout("usr/lib/a")
        .file("data", b"data is a file now")
        .whiteout("gone");
    let mut l3 = Layer::new();
    l3.dir("usr")
        .dir("usr/lib")
        .file("usr/lib/a", b"a3")
        .whiteout("data")
        // A whiteout for a file this same layer adds: the file stays (image-spec layer.md).
        .file("etc-new", b"kept")
        .whiteout("etc-new");
    [l1.tar(), l2.tar(), l3.tar()]
}

/// The merged view of [`whiteout_layers`].
pub fn check_merged(root: &Path) {
    let read = |p: &str| fs::read(root.join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
    let absent = |p: &str| {
        assert!(
            fs::symlink_metadata(root.join(p)).is_err(),
            "{p} should be gone"
        )
    };
    assert_eq!(read("etc/passwd"), b"root:2\n");
    assert_eq!(read("opt/new"), b"new");
    absent("opt/keep");
    absent("opt/y");
    assert_eq!(read("usr/lib/a"), b"a3");
    assert_eq!(read("usr/lib/b"), b"b1");
    absent("data");
    absent("gone");
    assert_eq!(read("etc-new"), b"kept");
    let tmp = fs::metadata(root.join("tmp")).expect("tmp");
    assert_eq!(tmp.permissions().mode() & 0o7777, 0o1777);
}
