//! The syscalls behind `disk/quota`: the project attribute of an inode (`FS_IOC_FSGETXATTR` /
//! `FS_IOC_FSSETXATTR`, ioctl_xfs_fsgetxattr(2)) and project quota limits and usage
//! (quotactl(2) with `PRJQUOTA`). The only module of the crate with `unsafe` code.
//!
//! Quota commands use the generic VFS interface (`Q_GETQUOTA` / `Q_SETQUOTA`, `struct
//! if_dqblk`): since Linux 4.x both ext4 and XFS serve it through `quotactl_ops->get_dqblk`,
//! so one code path covers both. They go through `quotactl_fd(2)` (Linux 5.14) on an open
//! directory of the filesystem, falling back to `quotactl(2)` on the mount's block device on
//! older kernels.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::PathBuf;

/// `struct fsxattr` from `<linux/fs.h>`.
#[repr(C)]
#[derive(Debug, Default, Clone, Copy)]
struct FsXattr {
    xflags: u32,
    extsize: u32,
    nextents: u32,
    projid: u32,
    cowextsize: u32,
    pad: [u8; 8],
}

/// `FS_XFLAG_PROJINHERIT`: new files and directories inherit the directory's project id.
const FS_XFLAG_PROJINHERIT: u32 = 0x0000_0200;

// FS_IOC_FSGETXATTR = _IOR('X', 31, struct fsxattr); FS_IOC_FSSETXATTR = _IOW('X', 32, ...).
nix::ioctl_read!(fs_ioc_fsgetxattr, b'X', 31, FsXattr);
nix::ioctl_write_ptr!(fs_ioc_fssetxattr, b'X', 32, FsXattr);

/// `PRJQUOTA` from `<linux/quota.h>`.
const PRJQUOTA: u32 = 2;

/// `QCMD(cmd, PRJQUOTA)`: the subcommand in the high bits, the quota type in the low byte.
fn qcmd(cmd: libc::c_int) -> libc::c_int {
    // Q_GETQUOTA << 8 sets the sign bit: the kernel reads it as an unsigned int.
    let cmd = u32::from_ne_bytes(cmd.to_ne_bytes());
    i32::from_ne_bytes(((cmd << 8) | PRJQUOTA).to_ne_bytes())
}

/// An inode's project id and whether it passes it on to new children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Project {
    pub id: u32,
    pub inherit: bool,
}

/// Reads the project attribute of `file` (a directory or a regular file).
pub(crate) fn get_project(file: &File) -> io::Result<Project> {
    let mut attr = FsXattr::default();
    // SAFETY: the fd is open for the duration of the call and `attr` is a valid, writable
    // `struct fsxattr` of the size encoded in the ioctl number.
    unsafe { fs_ioc_fsgetxattr(file.as_raw_fd(), &raw mut attr) }.map_err(io::Error::from)?;
    Ok(Project {
        id: attr.projid,
        inherit: attr.xflags & FS_XFLAG_PROJINHERIT != 0,
    })
}

/// Sets the project attribute of `file`, keeping its other flags (read, modify, write, as
/// `chattr -p` does).
pub(crate) fn set_project(file: &File, project: Project) -> io::Result<()> {
    let mut attr = FsXattr::default();
    // SAFETY: as in `get_project`.
    unsafe { fs_ioc_fsgetxattr(file.as_raw_fd(), &raw mut attr) }.map_err(io::Error::from)?;
    attr.projid = project.id;
    if project.inherit {
        attr.xflags |= FS_XFLAG_PROJINHERIT;
    } else {
        attr.xflags &= !FS_XFLAG_PROJINHERIT;
    }
    // SAFETY: the fd is open and `attr` is a valid `struct fsxattr` the kernel only reads.
    unsafe { fs_ioc_fssetxattr(file.as_raw_fd(), &raw const attr) }.map_err(io::Error::from)?;
    Ok(())
}

/// Where quotactl commands for one filesystem go.
#[derive(Debug)]
pub(crate) enum QuotaTarget {
    /// `quotactl_fd(2)` on a directory of the filesystem, opened for each call (keeping it
    /// open would pin the mount).
    Dir(PathBuf),
    /// `quotactl(2)` on the filesystem's block device.
    Device(CString),
}

/// A project's usage and block hard limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ProjectQuota {
    pub used_bytes: u64,
    pub inodes: u64,
    /// 0 when the project has no hard limit.
    pub hard_limit_bytes: u64,
}

/// Units of `dqb_bhardlimit` (`QIF_DQBLKSIZE`).
const QIF_DQBLKSIZE: u64 = 1024;

fn empty_dqblk() -> libc::dqblk {
    libc::dqblk {
        dqb_bhardlimit: 0,
        dqb_bsoftlimit: 0,
        dqb_curspace: 0,
        dqb_ihardlimit: 0,
        dqb_isoftlimit: 0,
        dqb_curinodes: 0,
        dqb_btime: 0,
        dqb_itime: 0,
        dqb_valid: 0,
    }
}

impl QuotaTarget {
    fn quotactl(&self, cmd: libc::c_int, id: u32, dq: &mut libc::dqblk) -> io::Result<()> {
        let id = libc::c_int::try_from(id)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "project id too large"))?;
        let data = std::ptr::from_mut(dq).cast::<libc::c_char>();
        let rc = match self {
            Self::Dir(path) => {
                let dir = File::open(path)?;
                // SAFETY: the fd is open; `data` points to a valid `struct if_dqblk` (libc's
                // `dqblk` has its layout) that the kernel reads (Q_SETQUOTA) or fills
                // (Q_GETQUOTA) and that outlives the call.
                unsafe {
                    libc::syscall(
                        libc::SYS_quotactl_fd,
                        libc::c_long::from(dir.as_raw_fd()),
                        libc::c_long::from(qcmd(cmd)),
                        libc::c_long::from(id),
                        data,
                    )
                }
            }
            // SAFETY: `device` is a NUL-terminated path; `data` as above.
            Self::Device(device) => {
                libc::c_long::from(unsafe { libc::quotactl(qcmd(cmd), device.as_ptr(), id, data) })
            }
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The usage and limit of project `id` (zeros for a project never used).
    pub(crate) fn get(&self, id: u32) -> io::Result<ProjectQuota> {
        let mut dq = empty_dqblk();
        match self.quotactl(libc::Q_GETQUOTA, id, &mut dq) {
            Ok(()) => Ok(ProjectQuota {
                used_bytes: dq.dqb_curspace,
                inodes: dq.dqb_curinodes,
                hard_limit_bytes: dq.dqb_bhardlimit.saturating_mul(QIF_DQBLKSIZE),
            }),
            // XFS answers ENOENT for an id without a dquot yet: nothing used, no limit.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(ProjectQuota {
                used_bytes: 0,
                inodes: 0,
                hard_limit_bytes: 0,
            }),
            Err(e) => Err(e),
        }
    }

    /// Sets project `id`'s block hard limit to `bytes` rounded up to KiB (0 removes the
    /// limit); the soft limit is cleared.
    pub(crate) fn set_limit(&self, id: u32, bytes: u64) -> io::Result<()> {
        let mut dq = empty_dqblk();
        dq.dqb_bhardlimit = bytes.div_ceil(QIF_DQBLKSIZE);
        dq.dqb_valid = libc::QIF_BLIMITS;
        self.quotactl(libc::Q_SETQUOTA, id, &mut dq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qcmd_matches_the_c_macro() {
        // QCMD(Q_GETQUOTA, PRJQUOTA) = 0x80000702 as a C int.
        assert_eq!(
            qcmd(libc::Q_GETQUOTA),
            i32::from_ne_bytes(0x8000_0702_u32.to_ne_bytes())
        );
        assert_eq!(std::mem::size_of::<FsXattr>(), 28);
    }
}
