//! File-descriptor-relative filesystem operations under one root directory.
//!
//! Every path is resolved one component at a time from the root's file descriptor with
//! `O_NOFOLLOW | O_DIRECTORY` (see openat(2)), so a symlink or a non-directory anywhere on
//! the way stops the walk instead of being followed: whatever a layer contains, nothing can
//! be created outside the root. The final component is always handled with an `*at` call on
//! the parent's descriptor that does not follow symlinks (`AT_SYMLINK_NOFOLLOW`, `O_EXCL`,
//! `O_NOFOLLOW`). Components must come from [`super::path::sanitize`] (no `..`, no `/`).
//!
//! The extractor and the copy fallback of [`crate::rootfs`] both write through this module.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::rc::Rc;

use rustix::fs::{
    self as rfs, AtFlags, Dir, FileType, Mode, OFlags, Stat, Timespec, Timestamps, XattrFlags, CWD,
};
use rustix::io::Errno;
use rustix::process::{Gid, Uid};

/// The xattr overlayfs reads to make a directory opaque (Documentation/filesystems/overlayfs.rst).
pub(crate) const OVERLAY_OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// The prefix of every xattr overlayfs interprets; never copied from a layer.
pub(crate) const OVERLAY_XATTR_PREFIX: &str = "trusted.overlay.";

/// A walk that stopped because a component on the way is not a real directory.
#[derive(Debug)]
pub(crate) enum WalkError {
    /// Component `index` is a symlink or a non-directory.
    Blocked(usize),
    Io(io::Error),
}

impl From<Errno> for WalkError {
    fn from(e: Errno) -> Self {
        WalkError::Io(e.into())
    }
}

/// A directory tree that is only ever written through descriptors relative to its root.
#[derive(Debug)]
pub(crate) struct Tree {
    root: Rc<OwnedFd>,
    /// The last directory walked to; entries of a tar are grouped by directory, so this saves
    /// most walks. Dropped whenever anything is removed, since removal can orphan it.
    last: Option<(Vec<OsString>, Rc<OwnedFd>)>,
}

impl Tree {
    /// Opens `path` (which must be a directory; the caller chose it, so symlinks in it are
    /// followed) as the root of a tree.
    pub(crate) fn open(path: &Path) -> io::Result<Tree> {
        let fd = rfs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Tree {
            root: Rc::new(fd),
            last: None,
        })
    }

    /// The root directory's descriptor.
    pub(crate) fn root(&self) -> Rc<OwnedFd> {
        Rc::clone(&self.root)
    }

    /// Opens the directory `dir` below the root without following symlinks, creating missing
    /// components (mode 0755, like Docker's `MkdirAllNewAs`) when `create` is set.
    pub(crate) fn dir(&mut self, dir: &[OsString], create: bool) -> Result<Rc<OwnedFd>, WalkError> {
        if dir.is_empty() {
            return Ok(self.root());
        }
        if let Some((path, fd)) = &self.last {
            if path.as_slice() == dir {
                return Ok(Rc::clone(fd));
            }
        }
        let mut cur = self.root();
        for (i, name) in dir.iter().enumerate() {
            let next = match open_dir_path(cur.as_fd(), name) {
                Ok(fd) => fd,
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(cur.as_fd(), name.as_os_str(), Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e.into()),
                    }
                    open_dir_path(cur.as_fd(), name).map_err(|e| classify(e, i))?
                }
                Err(e) => return Err(classify(e, i)),
            };
            cur = Rc::new(next);
        }
        self.last = Some((dir.to_vec(), Rc::clone(&cur)));
        Ok(cur)
    }

    /// Forgets the cached walk; call before anything that removes or replaces a directory.
    pub(crate) fn invalidate(&mut self) {
        self.last = None;
    }

    /// Removes `name` in `parent` whatever it is, recursively for directories, never
    /// following symlinks. Missing is fine.
    pub(crate) fn remove_all(&mut self, parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
        self.invalidate();
        remove_all_at(parent, name)
    }

    /// Removes every entry of directory `dir` for which `keep` returns false.
    pub(crate) fn clear_dir(
        &mut self,
        dir: BorrowedFd<'_>,
        mut keep: impl FnMut(&OsStr) -> bool,
    ) -> io::Result<()> {
        self.invalidate();
        let readable = open_dir_read(dir, OsStr::new("."))?;
        for name in list_dir(readable.as_fd())? {
            if !keep(&name) {
                remove_all_at(dir, &name)?;
            }
        }
        Ok(())
    }
}

fn classify(e: Errno, index: usize) -> WalkError {
    match e {
        // O_NOFOLLOW on a symlink gives ELOOP; O_DIRECTORY on anything else gives ENOTDIR.
        Errno::LOOP | Errno::NOTDIR => WalkError::Blocked(index),
        e => WalkError::Io(e.into()),
    }
}

fn open_dir_path(parent: BorrowedFd<'_>, name: &OsStr) -> Result<OwnedFd, Errno> {
    rfs::openat(
        parent,
        name,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// Opens a directory for reading (listing, xattrs, fchmod), never through a symlink.
pub(crate) fn open_dir_read(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    Ok(rfs::openat(
        parent,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// The names in a directory opened for reading, without `.` and `..`.
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in Dir::read_from(dir)? {
        let entry = entry?;
        let name = entry.file_name().to_bytes();
        if name != b"." && name != b".." {
            names.push(OsStr::from_bytes(name).to_os_string());
        }
    }
    Ok(names)
}

/// `lstat` of `name` in `parent`; `None` when it does not exist.
pub(crate) fn stat_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<Option<Stat>> {
    match rfs::statat(parent, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// The type of a stat result.
pub(crate) fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

fn remove_all_at(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let Some(st) = stat_at(parent, name)? else {
        return Ok(());
    };
    if file_type(&st) == FileType::Directory {
        let dir = open_dir_read(parent, name)?;
        for child in list_dir(dir.as_fd())? {
            remove_all_at(dir.as_fd(), &child)?;
        }
        ignore_missing(rfs::unlinkat(parent, name, AtFlags::REMOVEDIR))
    } else {
        ignore_missing(rfs::unlinkat(parent, name, AtFlags::empty()))
    }
}

fn ignore_missing(r: Result<(), Errno>) -> io::Result<()> {
    match r {
        Ok(()) | Err(Errno::NOENT) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Creates a new regular file `name` in `parent` (which must not exist), mode 0600 until the
/// caller applies the real mode.
pub(crate) fn create_file(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<File> {
    let fd = rfs::openat(
        parent,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// Opens an existing regular file for reading without following a symlink.
pub(crate) fn open_file_read(path: &Path) -> io::Result<File> {
    let fd = rfs::openat(
        CWD,
        path,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    Ok(File::from(fd))
}

/// Ownership, permissions, times and xattrs of one entry.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meta {
    pub(crate) mode: u32,
    pub(crate) uid: u32,
    pub(crate) gid: u32,
    pub(crate) mtime_sec: i64,
    pub(crate) mtime_nsec: u32,
    pub(crate) xattrs: Vec<(OsString, Vec<u8>)>,
}

impl Meta {
    fn times(&self) -> Timestamps {
        let ts = Timespec {
            tv_sec: self.mtime_sec,
            tv_nsec: i64::from(self.mtime_nsec),
        };
        Timestamps {
            last_access: ts,
            last_modification: ts,
        }
    }

    fn mode(&self) -> Mode {
        Mode::from_raw_mode(self.mode & 0o7777)
    }
}

/// What of [`Meta`] to apply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Apply {
    pub(crate) ownership: bool,
    pub(crate) xattrs: bool,
}

/// Applies ownership, xattrs, mode and mtime to an open regular file. Order matters: chown
/// clears setuid bits and `security.capability` (chown(2)), so those come after it.
pub(crate) fn apply_fd(fd: BorrowedFd<'_>, meta: &Meta, how: Apply) -> io::Result<()> {
    if how.ownership {
        rfs::fchown(
            fd,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )?;
    }
    rfs::fchmod(fd, meta.mode())?;
    if how.xattrs {
        for (name, value) in &meta.xattrs {
            set_xattr_lenient(rfs::fsetxattr(
                fd,
                name.as_os_str(),
                value,
                XattrFlags::empty(),
            ))?;
        }
    }
    rfs::futimens(fd, &meta.times())?;
    Ok(())
}

/// Ownership and xattrs for a directory now; mode and mtime come later (see
/// [`apply_dir_late`]) so a read-only directory can still be filled and its mtime is not
/// disturbed by its children.
pub(crate) fn apply_dir_early(dir: BorrowedFd<'_>, meta: &Meta, how: Apply) -> io::Result<()> {
    if how.ownership {
        rfs::fchown(
            dir,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
        )?;
    }
    if how.xattrs {
        for (name, value) in &meta.xattrs {
            set_xattr_lenient(rfs::fsetxattr(
                dir,
                name.as_os_str(),
                value,
                XattrFlags::empty(),
            ))?;
        }
    }
    Ok(())
}

/// Mode and mtime of a directory, once everything below it is written.
pub(crate) fn apply_dir_late(dir: BorrowedFd<'_>, meta: &Meta) -> io::Result<()> {
    rfs::fchmod(dir, meta.mode())?;
    rfs::futimens(dir, &meta.times())?;
    Ok(())
}

/// Ownership and mtime of a symlink, device or fifo (`name` in `parent`), without following
/// it. Symlinks have no mode of their own; xattrs on them are not allowed outside `trusted.`
/// and `security.`, so they are not set.
pub(crate) fn apply_at(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    meta: &Meta,
    how: Apply,
    symlink: bool,
) -> io::Result<()> {
    if how.ownership {
        rfs::chownat(
            parent,
            name,
            Some(Uid::from_raw(meta.uid)),
            Some(Gid::from_raw(meta.gid)),
            AtFlags::SYMLINK_NOFOLLOW,
        )?;
    }
    if !symlink {
        // fchmodat cannot refuse to follow (AT_SYMLINK_NOFOLLOW is EOPNOTSUPP before Linux
        // 6.6's fchmodat2), but the entry was just created here as a non-symlink.
        rfs::chmodat(parent, name, meta.mode(), AtFlags::empty())?;
    }
    rfs::utimensat(parent, name, &meta.times(), AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(())
}

/// Filesystems without xattr support, or xattr names a filesystem refuses, are not worth
/// failing a layer for ("where sensible").
fn set_xattr_lenient(r: Result<(), Errno>) -> io::Result<()> {
    match r {
        Ok(()) | Err(Errno::NOTSUP | Errno::PERM) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Marks directory `name` in `parent` (or `parent` itself when `name` is `.`) opaque for
/// overlayfs.
pub(crate) fn set_opaque(dir: BorrowedFd<'_>) -> io::Result<()> {
    let readable = open_dir_read(dir, OsStr::new("."))?;
    Ok(rfs::fsetxattr(
        &readable,
        OVERLAY_OPAQUE_XATTR,
        b"y",
        XattrFlags::empty(),
    )?)
}

/// Creates an overlayfs whiteout (a 0/0 character device) named `name` in `parent`.
pub(crate) fn make_whiteout(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    Ok(rfs::mknodat(
        parent,
        name,
        FileType::CharacterDevice,
        Mode::empty(),
        rfs::makedev(0, 0),
    )?)
}

/// Creates a device node or fifo.
pub(crate) fn make_node(
    parent: BorrowedFd<'_>,
    name: &OsStr,
    kind: FileType,
    major: u32,
    minor: u32,
) -> io::Result<()> {
    Ok(rfs::mknodat(
        parent,
        name,
        kind,
        Mode::from_raw_mode(0o600),
        rfs::makedev(major, minor),
    )?)
}

/// Creates a symlink; its target is stored verbatim and never followed here.
pub(crate) fn make_symlink(parent: BorrowedFd<'_>, name: &OsStr, target: &OsStr) -> io::Result<()> {
    Ok(rfs::symlinkat(target, parent, name)?)
}

/// Creates directory `name` in `parent` (mode 0700 until its real mode is applied).
pub(crate) fn make_dir(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    match rfs::mkdirat(parent, name, Mode::from_raw_mode(0o700)) {
        Ok(()) | Err(Errno::EXIST) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// Hard-links `src_name` in `src_parent` as `name` in `parent`, never following a symlink.
pub(crate) fn make_hardlink(
    src_parent: BorrowedFd<'_>,
    src_name: &OsStr,
    parent: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    Ok(rfs::linkat(
        src_parent,
        src_name,
        parent,
        name,
        AtFlags::empty(),
    )?)
}

/// The xattrs of `path` (not following a symlink), values included.
pub(crate) fn read_xattrs(path: &Path) -> io::Result<Vec<(OsString, Vec<u8>)>> {
    let mut names = vec![0u8; 4096];
    let len = match rfs::llistxattr(path, &mut names[..]) {
        Ok(len) => len,
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(Errno::RANGE) => {
            let need = rfs::llistxattr(path, &mut [0u8; 0][..])?;
            names.resize(need, 0);
            rfs::llistxattr(path, &mut names[..])?
        }
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for name in names[..len].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let name = OsStr::from_bytes(name).to_os_string();
        let mut value = vec![0u8; 256];
        let n = match rfs::lgetxattr(path, name.as_os_str(), &mut value[..]) {
            Ok(n) => n,
            Err(Errno::RANGE) => {
                let need = rfs::lgetxattr(path, name.as_os_str(), &mut [0u8; 0][..])?;
                value.resize(need, 0);
                rfs::lgetxattr(path, name.as_os_str(), &mut value[..])?
            }
            Err(Errno::NODATA) => continue,
            Err(e) => return Err(e.into()),
        };
        value.truncate(n);
        out.push((name, value));
    }
    Ok(out)
}
