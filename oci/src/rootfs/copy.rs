//! The copy fallback: layers merged into one directory the way overlayfs would show them.
//!
//! Layers are applied bottom to top. In each, a 0/0 character device deletes what lower
//! layers had at its path, a directory with `trusted.overlay.opaque=y` first loses what lower
//! layers put in it, a directory over a directory merges, and anything else replaces what was
//! there (overlayfs.rst, "whiteouts and opaque directories"). The destination is written only
//! through [`crate::extract::fsops`], so symlinks that earlier layers left in it are never
//! followed; sources are read without following symlinks either.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::fs::{self, Metadata};
use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::fs::FileType;

use super::RootfsError;
use crate::extract::fsops::{
    self, Apply, Meta, Tree, WalkError, OVERLAY_OPAQUE_XATTR, OVERLAY_XATTR_PREFIX,
};

type Components = Vec<OsString>;

struct Merger<'a> {
    tree: Tree,
    how: Apply,
    layer: &'a Path,
    /// Directory modes and mtimes, applied at the end (the topmost layer's win).
    dirs: BTreeMap<Components, Meta>,
    /// Hardlinked inodes of the current layer already copied, to link again.
    links: HashMap<(u64, u64), Components>,
}

/// Copies `layers` (bottom first) into the empty directory `dst`.
pub(super) fn merge(layers: &[PathBuf], dst: &Path) -> Result<(), RootfsError> {
    let tree = Tree::open(dst).map_err(super::io_err("open", dst))?;
    let how = Apply {
        ownership: rustix::process::geteuid().is_root(),
        xattrs: true,
    };
    let mut m = Merger {
        tree,
        how,
        layer: Path::new(""),
        dirs: BTreeMap::new(),
        links: HashMap::new(),
    };
    for layer in layers {
        m.layer = layer;
        m.links.clear();
        let fail = |source| RootfsError::Copy {
            layer: layer.clone(),
            entry: PathBuf::from("."),
            source,
        };
        if has_opaque(layer).map_err(fail)? {
            let root = m.tree.root();
            m.tree.clear_dir(root.as_fd(), |_| false).map_err(fail)?;
        }
        let mut rel = Vec::new();
        m.copy_dir(layer, &mut rel)?;
    }
    m.finish()
}

fn has_opaque(path: &Path) -> io::Result<bool> {
    let mut buf = [0u8; 4];
    match rustix::fs::lgetxattr(path, OVERLAY_OPAQUE_XATTR, &mut buf[..]) {
        Ok(n) => Ok(&buf[..n] == b"y"),
        Err(rustix::io::Errno::NODATA | rustix::io::Errno::NOTSUP) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn meta_of(path: &Path, md: &Metadata) -> io::Result<Meta> {
    let xattrs = if md.file_type().is_symlink() {
        Vec::new()
    } else {
        fsops::read_xattrs(path)?
            .into_iter()
            .filter(|(name, _)| {
                !name
                    .as_encoded_bytes()
                    .starts_with(OVERLAY_XATTR_PREFIX.as_bytes())
            })
            .collect()
    };
    Ok(Meta {
        mode: md.mode(),
        uid: md.uid(),
        gid: md.gid(),
        mtime_sec: md.mtime(),
        mtime_nsec: u32::try_from(md.mtime_nsec()).unwrap_or(0),
        xattrs,
    })
}

impl Merger<'_> {
    fn fail<'p>(&self, rel: &'p [OsString]) -> impl FnOnce(io::Error) -> RootfsError + 'p {
        let layer = self.layer.to_owned();
        move |source| RootfsError::Copy {
            layer,
            entry: rel.iter().collect(),
            source,
        }
    }

    fn dst_dir(
        &mut self,
        rel: &[OsString],
    ) -> Result<std::rc::Rc<std::os::fd::OwnedFd>, RootfsError> {
        self.tree.dir(rel, false).map_err(|e| {
            let source = match e {
                WalkError::Blocked(_) => io::Error::from(io::ErrorKind::NotADirectory),
                WalkError::Io(e) => e,
            };
            self.fail(rel)(source)
        })
    }

    fn copy_dir(&mut self, src: &Path, rel: &mut Components) -> Result<(), RootfsError> {
        let mut names: Vec<OsString> = fs::read_dir(src)
            .and_then(|it| it.map(|e| e.map(|e| e.file_name())).collect())
            .map_err(self.fail(rel))?;
        names.sort();
        for name in names {
            let spath = src.join(&name);
            rel.push(name);
            self.copy_entry(&spath, rel)?;
            rel.pop();
        }
        Ok(())
    }

    fn copy_entry(&mut self, spath: &Path, rel: &mut Components) -> Result<(), RootfsError> {
        let md = fs::symlink_metadata(spath).map_err(self.fail(rel))?;
        let (parent_rel, name) = rel.split_at(rel.len() - 1);
        let name = name[0].clone();
        let parent = self.dst_dir(parent_rel)?;
        let parent = parent.as_fd();
        let ft = md.file_type();
        if ft.is_char_device() && md.rdev() == 0 {
            return self.tree.remove_all(parent, &name).map_err(self.fail(rel));
        }
        let existing = fsops::stat_at(parent, &name).map_err(self.fail(rel))?;
        let existing_dir = existing
            .as_ref()
            .is_some_and(|st| fsops::file_type(st) == FileType::Directory);
        let meta = meta_of(spath, &md).map_err(self.fail(rel))?;
        if ft.is_dir() {
            if existing_dir {
                if has_opaque(spath).map_err(self.fail(rel))? {
                    let dir = fsops::open_dir_read(parent, &name).map_err(self.fail(rel))?;
                    self.tree
                        .clear_dir(dir.as_fd(), |_| false)
                        .map_err(self.fail(rel))?;
                }
            } else {
                if existing.is_some() {
                    self.tree
                        .remove_all(parent, &name)
                        .map_err(self.fail(rel))?;
                }
                fsops::make_dir(parent, &name).map_err(self.fail(rel))?;
            }
            let dir = fsops::open_dir_read(parent, &name).map_err(self.fail(rel))?;
            fsops::apply_dir_early(dir.as_fd(), &meta, self.how).map_err(self.fail(rel))?;
            self.dirs.insert(rel.clone(), meta);
            return self.copy_dir(spath, rel);
        }
        if existing.is_some() {
            self.tree
                .remove_all(parent, &name)
                .map_err(self.fail(rel))?;
        }
        if ft.is_file() {
            if md.nlink() > 1 && self.link_again(&md, parent, rel)? {
                return Ok(());
            }
            let mut src = fsops::open_file_read(spath).map_err(self.fail(rel))?;
            let mut dst = fsops::create_file(parent, &name).map_err(self.fail(rel))?;
            io::copy(&mut src, &mut dst).map_err(self.fail(rel))?;
            fsops::apply_fd(dst.as_fd(), &meta, self.how).map_err(self.fail(rel))?;
            if md.nlink() > 1 {
                self.links.insert((md.dev(), md.ino()), rel.clone());
            }
        } else if ft.is_symlink() {
            let target = fs::read_link(spath).map_err(self.fail(rel))?;
            fsops::make_symlink(parent, &name, target.as_os_str()).map_err(self.fail(rel))?;
            fsops::apply_at(parent, &name, &meta, self.how, true).map_err(self.fail(rel))?;
        } else {
            let kind = FileType::from_raw_mode(md.mode());
            let dev = md.rdev();
            let (major, minor) = (rustix::fs::major(dev), rustix::fs::minor(dev));
            fsops::make_node(parent, &name, kind, major, minor).map_err(self.fail(rel))?;
            fsops::apply_at(parent, &name, &meta, self.how, false).map_err(self.fail(rel))?;
        }
        Ok(())
    }

    /// Links `rel` to an earlier copy of the same inode from this layer, if still there.
    fn link_again(
        &mut self,
        md: &Metadata,
        parent: std::os::fd::BorrowedFd<'_>,
        rel: &[OsString],
    ) -> Result<bool, RootfsError> {
        let Some(first) = self.links.get(&(md.dev(), md.ino())).cloned() else {
            return Ok(false);
        };
        let (first_name, first_dir) = first.split_last().expect("a copied entry has a name");
        let Ok(src_dir) = self.tree.dir(first_dir, false) else {
            return Ok(false);
        };
        let name = rel.last().expect("a copied entry has a name");
        Ok(fsops::make_hardlink(src_dir.as_fd(), first_name, parent, name).is_ok())
    }

    fn finish(mut self) -> Result<(), RootfsError> {
        self.tree.invalidate();
        let dirs = std::mem::take(&mut self.dirs);
        // Deepest first, so setting a parent's mtime is the last change to it.
        let mut dirs: Vec<_> = dirs.into_iter().collect();
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
        for (rel, meta) in dirs {
            let Ok(fd) = self.tree.dir(&rel, false) else {
                continue;
            };
            let dir = fsops::open_dir_read(fd.as_fd(), std::ffi::OsStr::new("."))
                .map_err(self.fail(&rel))?;
            fsops::apply_dir_late(dir.as_fd(), &meta).map_err(self.fail(&rel))?;
        }
        Ok(())
    }
}
