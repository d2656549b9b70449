//! The tar entry loop: one layer onto one directory.

use std::collections::HashSet;
use std::ffi::{OsStr, OsString};
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::FileType;
use tar::EntryType;

use super::fsops::{self, Apply, Meta, Tree, WalkError, OVERLAY_XATTR_PREFIX};
use super::path::{self, Components, Whiteout};
use super::{ExtractError, ExtractOptions, LayerStats, WhiteoutMode};

/// Unpacks the tar stream `reader` onto `target`.
pub(crate) fn unpack(
    reader: impl Read,
    target: &Path,
    opts: &ExtractOptions,
) -> Result<LayerStats, ExtractError> {
    let tree = Tree::open(target).map_err(|source| ExtractError::Target {
        path: target.to_owned(),
        source,
    })?;
    let mut u = Unpacker {
        tree,
        opts,
        how: Apply {
            ownership: opts.ownership(),
            xattrs: opts.xattrs,
        },
        written: HashSet::new(),
        dirs: Vec::new(),
        stats: LayerStats::default(),
    };
    let mut archive = tar::Archive::new(reader);
    for entry in archive
        .entries()
        .map_err(|source| ExtractError::Read { source })?
    {
        let entry = entry.map_err(|source| ExtractError::Read { source })?;
        u.entry(entry)?;
    }
    u.finish()?;
    Ok(u.stats)
}

struct Unpacker<'o> {
    tree: Tree,
    opts: &'o ExtractOptions,
    how: Apply,
    /// Paths this layer wrote: a whiteout only hides lower layers (image-spec layer.md).
    written: HashSet<Components>,
    /// Directories whose mode and mtime are applied at the end.
    dirs: Vec<(Components, Meta)>,
    stats: LayerStats,
}

fn entry_name(raw: &[u8]) -> PathBuf {
    PathBuf::from(OsStr::from_bytes(raw))
}

impl Unpacker<'_> {
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let raw = entry.path_bytes().into_owned();
        let name = entry_name(&raw);
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            EntryType::XGlobalHeader
                | EntryType::XHeader
                | EntryType::GNULongName
                | EntryType::GNULongLink
        ) {
            return Ok(());
        }
        self.stats.entries += 1;
        let comps = path::sanitize(&raw).map_err(|p| ExtractError::UnsafePath {
            entry: name.clone(),
            reason: p.reason(),
        })?;
        let meta = self.meta(&mut entry, &name)?;

        let Some((last, parent_comps)) = comps.split_last() else {
            // `./` or `/`: the root directory itself.
            if kind == EntryType::Directory {
                let root = self.tree.root();
                let root = fsops::open_dir_read(root.as_fd(), OsStr::new("."))
                    .map_err(io_err(&name, "open"))?;
                fsops::apply_dir_early(root.as_fd(), &meta, self.how)
                    .map_err(io_err(&name, "set metadata of"))?;
                self.dirs.push((Vec::new(), meta));
                return Ok(());
            }
            return Err(ExtractError::UnsafePath {
                entry: name,
                reason: "names the target root",
            });
        };

        match path::whiteout(last) {
            Whiteout::None => {}
            Whiteout::Opaque => return self.opaque(parent_comps, &name),
            Whiteout::Delete(victim) => return self.delete(parent_comps, victim, &name),
            Whiteout::AufsMeta => {
                self.stats.skipped.push(name);
                return Ok(());
            }
            Whiteout::Invalid => {
                return Err(ExtractError::UnsafePath {
                    entry: name,
                    reason: "invalid whiteout name",
                })
            }
        }

        let parent = self.parent(parent_comps, &name, true)?;
        let existing = fsops::stat_at(parent.as_fd(), last).map_err(io_err(&name, "stat"))?;
        let is_dir = kind == EntryType::Directory;
        if let Some(st) = &existing {
            let existing_dir = fsops::file_type(st) == FileType::Directory;
            // A directory over a directory merges; anything else replaces (Docker's
            // UnpackLayer, GNU tar's default --overwrite for non-directories).
            if !(is_dir && existing_dir) {
                if kind == EntryType::Link && self.is_self_link(&entry, &comps)? {
                    return Ok(());
                }
                self.tree
                    .remove_all(parent.as_fd(), last)
                    .map_err(io_err(&name, "replace"))?;
            }
        }
        // The walk cache may have been dropped by the removal; the descriptor stays valid.
        let parent = parent.as_fd();

        match kind {
            EntryType::Directory => {
                fsops::make_dir(parent, last).map_err(io_err(&name, "create directory"))?;
                let dir =
                    fsops::open_dir_read(parent, last).map_err(io_err(&name, "open directory"))?;
                fsops::apply_dir_early(dir.as_fd(), &meta, self.how)
                    .map_err(io_err(&name, "set metadata of"))?;
                self.dirs.push((comps.clone(), meta));
            }
            EntryType::Regular | EntryType::Continuous | EntryType::GNUSparse => {
                let mut file = fsops::create_file(parent, last).map_err(io_err(&name, "create"))?;
                let n = io::copy(&mut entry, &mut file).map_err(|source| ExtractError::Entry {
                    entry: name.clone(),
                    op: "write",
                    source,
                })?;
                self.stats.files += 1;
                self.stats.bytes += n;
                fsops::apply_fd(file.as_fd(), &meta, self.how)
                    .map_err(io_err(&name, "set metadata of"))?;
            }
            EntryType::Symlink => {
                let target = entry
                    .link_name_bytes()
                    .ok_or_else(|| ExtractError::UnsafePath {
                        entry: name.clone(),
                        reason: "symlink without a target",
                    })?;
                // Stored verbatim: inside the container an absolute or `..` target resolves
                // against the container's root. Nothing here ever follows it.
                fsops::make_symlink(parent, last, OsStr::from_bytes(&target))
                    .map_err(io_err(&name, "create symlink"))?;
                fsops::apply_at(parent, last, &meta, self.how, true)
                    .map_err(io_err(&name, "set metadata of"))?;
            }
            EntryType::Link => self.hardlink(&entry, parent, last, &name)?,
            EntryType::Char | EntryType::Block | EntryType::Fifo => {
                if !self.opts.allow_devices {
                    tracing::debug!(entry = %name.display(), "skipping device node or fifo");
                    self.stats.skipped.push(name);
                    return Ok(());
                }
                let (ft, major, minor) = match kind {
                    EntryType::Char => (
                        FileType::CharacterDevice,
                        dev(&entry, &name, true)?,
                        dev(&entry, &name, false)?,
                    ),
                    EntryType::Block => (
                        FileType::BlockDevice,
                        dev(&entry, &name, true)?,
                        dev(&entry, &name, false)?,
                    ),
                    _ => (FileType::Fifo, 0, 0),
                };
                fsops::make_node(parent, last, ft, major, minor)
                    .map_err(io_err(&name, "create node"))?;
                fsops::apply_at(parent, last, &meta, self.how, false)
                    .map_err(io_err(&name, "set metadata of"))?;
            }
            other => {
                tracing::debug!(entry = %name.display(), ?other, "skipping unsupported tar entry type");
                self.stats.skipped.push(name);
                return Ok(());
            }
        }
        self.written.insert(comps);
        Ok(())
    }

    /// Opens the parent directory of an entry, refusing to go through a symlink.
    fn parent(
        &mut self,
        parent: &[OsString],
        name: &Path,
        create: bool,
    ) -> Result<std::rc::Rc<std::os::fd::OwnedFd>, ExtractError> {
        self.tree.dir(parent, create).map_err(|e| match e {
            WalkError::Blocked(i) => ExtractError::ThroughSymlink {
                entry: name.to_owned(),
                component: parent[..=i].iter().collect(),
            },
            WalkError::Io(source) => ExtractError::Entry {
                entry: name.to_owned(),
                op: "open parent of",
                source,
            },
        })
    }

    fn meta<R: Read>(
        &self,
        entry: &mut tar::Entry<'_, R>,
        name: &Path,
    ) -> Result<Meta, ExtractError> {
        let h = entry.header();
        let bad = |source| ExtractError::Entry {
            entry: name.to_owned(),
            op: "parse header of",
            source,
        };
        let mut meta = Meta {
            mode: h.mode().map_err(bad)?,
            uid: u32::try_from(h.uid().map_err(bad)?).unwrap_or(u32::MAX),
            gid: u32::try_from(h.gid().map_err(bad)?).unwrap_or(u32::MAX),
            mtime_sec: i64::try_from(h.mtime().map_err(bad)?).unwrap_or(0),
            mtime_nsec: 0,
            xattrs: Vec::new(),
        };
        if let Some(pax) = entry.pax_extensions().map_err(bad)? {
            for ext in pax {
                let ext = ext.map_err(bad)?;
                let key = ext.key_bytes();
                if key == b"mtime" {
                    apply_pax_mtime(&mut meta, ext.value_bytes());
                } else if let Some(xattr) = key.strip_prefix(b"SCHILY.xattr.") {
                    if self.opts.xattrs && xattr_allowed(xattr) {
                        meta.xattrs.push((
                            OsStr::from_bytes(xattr).to_owned(),
                            ext.value_bytes().to_vec(),
                        ));
                    }
                }
            }
        }
        Ok(meta)
    }

    fn opaque(&mut self, dir: &[OsString], name: &Path) -> Result<(), ExtractError> {
        self.stats.whiteouts += 1;
        let fd = self.parent(dir, name, true)?;
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                fsops::set_opaque(fd.as_fd()).map_err(io_err(name, "mark opaque"))
            }
            WhiteoutMode::Apply => {
                let written = &self.written;
                let mut child = dir.to_vec();
                self.tree
                    .clear_dir(fd.as_fd(), |c| {
                        child.push(c.to_owned());
                        let keep = written.contains(&child);
                        child.pop();
                        keep
                    })
                    .map_err(io_err(name, "clear opaque directory for"))
            }
        }
    }

    fn delete(
        &mut self,
        dir: &[OsString],
        victim: &OsStr,
        name: &Path,
    ) -> Result<(), ExtractError> {
        self.stats.whiteouts += 1;
        let mut victim_path = dir.to_vec();
        victim_path.push(victim.to_owned());
        if self.written.contains(&victim_path) {
            return Ok(());
        }
        match self.opts.whiteouts {
            WhiteoutMode::Overlay => {
                let fd = self.parent(dir, name, true)?;
                if fsops::stat_at(fd.as_fd(), victim)
                    .map_err(io_err(name, "stat"))?
                    .is_some()
                {
                    self.tree
                        .remove_all(fd.as_fd(), victim)
                        .map_err(io_err(name, "replace"))?;
                }
                fsops::make_whiteout(fd.as_fd(), victim)
                    .map_err(io_err(name, "create whiteout for"))
            }
            WhiteoutMode::Apply => {
                // Nothing to delete below a missing parent; never create one.
                let fd = match self.tree.dir(dir, false) {
                    Ok(fd) => fd,
                    Err(WalkError::Io(e)) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                    Err(WalkError::Blocked(i)) => {
                        return Err(ExtractError::ThroughSymlink {
                            entry: name.to_owned(),
                            component: dir[..=i].iter().collect(),
                        })
                    }
                    Err(WalkError::Io(source)) => {
                        return Err(ExtractError::Entry {
                            entry: name.to_owned(),
                            op: "open parent of",
                            source,
                        })
                    }
                };
                self.tree
                    .remove_all(fd.as_fd(), victim)
                    .map_err(io_err(name, "apply whiteout"))
            }
        }
    }

    /// A hardlink to itself (seen in some tars) is a no-op rather than a delete.
    fn is_self_link<R: Read>(
        &self,
        entry: &tar::Entry<'_, R>,
        comps: &Components,
    ) -> Result<bool, ExtractError> {
        let Some(target) = entry.link_name_bytes() else {
            return Ok(false);
        };
        Ok(path::sanitize(&target).is_ok_and(|t| &t == comps))
    }

    fn hardlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        parent: std::os::fd::BorrowedFd<'_>,
        last: &OsStr,
        name: &Path,
    ) -> Result<(), ExtractError> {
        let raw = entry
            .link_name_bytes()
            .ok_or_else(|| ExtractError::UnsafePath {
                entry: name.to_owned(),
                reason: "hardlink without a target",
            })?;
        let target = entry_name(&raw);
        let outside = |reason| ExtractError::HardlinkOutside {
            entry: name.to_owned(),
            target: target.clone(),
            reason,
        };
        // Link names are member names: same rules, so `/etc/passwd` means `<target>/etc/passwd`.
        let comps = path::sanitize(&raw).map_err(|p| outside(p.reason()))?;
        let Some((src_last, src_dir)) = comps.split_last() else {
            return Err(outside("names the target root"));
        };
        let src = match self.tree.dir(src_dir, false) {
            Ok(fd) => fd,
            Err(WalkError::Blocked(_)) => return Err(outside("path goes through a symlink")),
            Err(WalkError::Io(e)) if e.kind() == io::ErrorKind::NotFound => {
                return Err(outside("target does not exist in the layer"))
            }
            Err(WalkError::Io(source)) => {
                return Err(ExtractError::Entry {
                    entry: name.to_owned(),
                    op: "open link target of",
                    source,
                })
            }
        };
        match fsops::stat_at(src.as_fd(), src_last).map_err(io_err(name, "stat link target of"))? {
            None => return Err(outside("target does not exist in the layer")),
            Some(st) if fsops::file_type(&st) == FileType::Directory => {
                return Err(outside("target is a directory"))
            }
            Some(_) => {}
        }
        fsops::make_hardlink(src.as_fd(), src_last, parent, last)
            .map_err(io_err(name, "create hardlink"))
    }

    /// Applies directory modes and mtimes, deepest first, skipping any directory a later
    /// entry removed or replaced (and never following what replaced it).
    fn finish(&mut self) -> Result<(), ExtractError> {
        let mut dirs = std::mem::take(&mut self.dirs);
        dirs.sort_by_key(|d| std::cmp::Reverse(d.0.len()));
        self.tree.invalidate();
        for (comps, meta) in dirs {
            let name: PathBuf = comps.iter().collect();
            let fd = match self.tree.dir(&comps, false) {
                Ok(fd) => fd,
                Err(WalkError::Blocked(_)) => continue,
                Err(WalkError::Io(e)) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(WalkError::Io(source)) => {
                    return Err(ExtractError::Entry {
                        entry: name,
                        op: "open directory",
                        source,
                    })
                }
            };
            let dir = fsops::open_dir_read(fd.as_fd(), OsStr::new("."))
                .map_err(io_err(&name, "open directory"))?;
            fsops::apply_dir_late(dir.as_fd(), &meta).map_err(io_err(&name, "set mode of"))?;
        }
        Ok(())
    }
}

fn dev<R: Read>(entry: &tar::Entry<'_, R>, name: &Path, major: bool) -> Result<u32, ExtractError> {
    let h = entry.header();
    let v = if major {
        h.device_major()
    } else {
        h.device_minor()
    };
    v.map(Option::unwrap_or_default)
        .map_err(|source| ExtractError::Entry {
            entry: name.to_owned(),
            op: "parse device of",
            source,
        })
}

/// Xattrs worth restoring from a layer: `user.*`, and file capabilities (ping, ...).
/// Never `trusted.overlay.*`, which would let a layer forge whiteouts or redirects, nor
/// other `trusted.` or `security.` names (SELinux labels belong to the host's policy).
fn xattr_allowed(name: &[u8]) -> bool {
    if name.starts_with(OVERLAY_XATTR_PREFIX.as_bytes()) {
        return false;
    }
    name.starts_with(b"user.") || name == b"security.capability"
}

/// PAX `mtime` is decimal seconds with an optional fraction (POSIX pax, "mtime").
fn apply_pax_mtime(meta: &mut Meta, value: &[u8]) {
    let Ok(text) = std::str::from_utf8(value) else {
        return;
    };
    let (secs, frac) = text.split_once('.').unwrap_or((text, ""));
    let Ok(secs) = secs.parse::<i64>() else {
        return;
    };
    meta.mtime_sec = secs;
    let digits: String = frac.chars().take(9).collect();
    if !digits.is_empty() && digits.chars().all(|c| c.is_ascii_digit()) {
        let scale = 10u32.pow(9 - u32::try_from(digits.len()).unwrap_or(9));
        meta.mtime_nsec = digits.parse::<u32>().unwrap_or(0) * scale;
    }
}

fn io_err<'a>(entry: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> ExtractError + 'a {
    move |source| ExtractError::Entry {
        entry: entry.to_owned(),
        op,
        source,
    }
}
