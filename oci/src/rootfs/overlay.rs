//! overlayfs mounts and unmounts (Documentation/filesystems/overlayfs.rst).

use std::fs;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
use rustix::io::Errno;
use rustix::mount::{MountFlags, UnmountFlags};

use super::{io_err, RootfsError, UPPER_DIR, WORK_DIR};

/// The mount data of mount(2) is one page, NUL included.
const MAX_OPTIONS: usize = 4095;

/// Whether trying overlayfs is worth it: mounting needs root (CAP_SYS_ADMIN).
pub(super) fn available() -> bool {
    rustix::process::geteuid().is_root()
}

/// Escapes a path for overlay options: `,` separates options and `:` lower layers; both
/// (and `\`) are taken literally when preceded by `\`.
fn escape(path: &Path, out: &mut Vec<u8>) {
    for &b in path.as_os_str().as_bytes() {
        if matches!(b, b'\\' | b',' | b':') {
            out.push(b'\\');
        }
        out.push(b);
    }
}

/// The overlay options for `layers` (bottom first). overlayfs lists `lowerdir` top first:
/// "the rightmost lower layer is the bottom".
fn options(layers: &[PathBuf], upper: Option<(&Path, &Path)>) -> Vec<u8> {
    let mut data = b"lowerdir=".to_vec();
    for (i, layer) in layers.iter().rev().enumerate() {
        if i > 0 {
            data.push(b':');
        }
        escape(layer, &mut data);
    }
    if let Some((upper, work)) = upper {
        data.extend_from_slice(b",upperdir=");
        escape(upper, &mut data);
        data.extend_from_slice(b",workdir=");
        escape(work, &mut data);
    }
    data
}

/// Mounts the overlay of `layers` on `target` (created here), with an upper and work
/// directory in `container_dir` unless `readonly`.
pub(super) fn mount(
    layers: &[PathBuf],
    container_dir: &Path,
    target: &Path,
    readonly: bool,
) -> Result<(), RootfsError> {
    // Absolute paths: a relative lowerdir would resolve against our working directory.
    let layers = layers
        .iter()
        .map(|l| fs::canonicalize(l).map_err(io_err("resolve", l)))
        .collect::<Result<Vec<_>, _>>()?;
    let container_dir =
        fs::canonicalize(container_dir).map_err(io_err("resolve", container_dir))?;
    let (upper, work) = (container_dir.join(UPPER_DIR), container_dir.join(WORK_DIR));
    // Without an upper directory overlayfs is read-only by construction, but it needs at
    // least two lower layers then (EINVAL otherwise); one layer gets an upper directory and
    // MS_RDONLY instead.
    let with_upper = !readonly || layers.len() < 2;
    let data = if with_upper {
        options(&layers, Some((&upper, &work)))
    } else {
        options(&layers, None)
    };
    if data.len() > MAX_OPTIONS {
        return Err(RootfsError::TooManyLayers {
            layers: layers.len(),
            len: data.len(),
        });
    }
    let data = std::ffi::CString::new(data).map_err(|_| RootfsError::Io {
        op: "encode overlay options for",
        path: target.to_owned(),
        source: io::Error::from(io::ErrorKind::InvalidInput),
    })?;
    let mut dirs = vec![target];
    if with_upper {
        dirs.extend([upper.as_path(), work.as_path()]);
    }
    for dir in dirs {
        fs::DirBuilder::new()
            .mode(0o755)
            .create(dir)
            .map_err(io_err("create", dir))?;
    }
    let flags = if readonly {
        MountFlags::RDONLY
    } else {
        MountFlags::empty()
    };
    rustix::mount::mount("overlay", target, "overlay", flags, data.as_c_str()).map_err(|e| {
        RootfsError::Mount {
            target: target.to_owned(),
            layers: layers.len(),
            source: e.into(),
        }
    })
}

/// Makes `path` read-only by bind-mounting it over itself and remounting the bind
/// read-only (mount(8), "bind mount operation ... read-only").
pub(super) fn bind_readonly(path: &Path) -> Result<(), RootfsError> {
    let fail = |source: Errno| RootfsError::Mount {
        target: path.to_owned(),
        layers: 0,
        source: source.into(),
    };
    rustix::mount::mount_bind(path, path).map_err(fail)?;
    rustix::mount::mount_remount(path, MountFlags::BIND | MountFlags::RDONLY, "").map_err(fail)
}

/// Whether `path` is the root of a mount (statx's `STATX_ATTR_MOUNT_ROOT`, Linux 5.8).
pub(super) fn is_mount_point(path: &Path) -> bool {
    statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    )
    .is_ok_and(|st| {
        let root = StatxAttributes::MOUNT_ROOT;
        st.stx_attributes_mask.contains(root) && st.stx_attributes.contains(root)
    })
}

/// Unmounts everything stacked on `path`, lazily (`MNT_DETACH`) when a mount is busy.
pub(super) fn unmount_all(path: &Path) -> Result<(), RootfsError> {
    // A copy made read-only has one bind mount; an overlay one mount. A few more rounds
    // cover mounts a runtime may have left on top.
    for _ in 0..16 {
        if !is_mount_point(path) {
            return Ok(());
        }
        match rustix::mount::unmount(path, UnmountFlags::NOFOLLOW) {
            Ok(()) => {}
            Err(Errno::BUSY) => {
                tracing::warn!(path = %path.display(), "rootfs busy, detaching it lazily");
                rustix::mount::unmount(path, UnmountFlags::NOFOLLOW | UnmountFlags::DETACH)
                    .map_err(|e| RootfsError::Unmount {
                        path: path.to_owned(),
                        source: e.into(),
                    })?;
            }
            Err(Errno::INVAL | Errno::NOENT) => return Ok(()),
            Err(e) => {
                return Err(RootfsError::Unmount {
                    path: path.to_owned(),
                    source: e.into(),
                })
            }
        }
    }
    if is_mount_point(path) {
        return Err(RootfsError::StillMounted {
            path: path.to_owned(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lowerdir_lists_the_top_layer_first_and_escapes_separators() {
        let layers = [
            PathBuf::from("/l/bottom"),
            PathBuf::from("/l/mid,dle"),
            PathBuf::from("/l/t:op"),
        ];
        let data = options(&layers, Some((Path::new("/c/up"), Path::new("/c/work"))));
        assert_eq!(
            String::from_utf8(data).expect("ascii"),
            r"lowerdir=/l/t\:op:/l/mid\,dle:/l/bottom,upperdir=/c/up,workdir=/c/work"
        );
    }
}
