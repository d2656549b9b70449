//! Cgroup v1 paths: where a container's cgroup lives in each hierarchy, to check that
//! deletion removed it (libcontainer removes only the leaf, and only in the hierarchies it
//! manages) and to find the caller's own cgroup.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// The v1 hierarchies mounted under `/sys/fs/cgroup` (one directory per mount point, as
/// `/proc/self/mountinfo` lists with fstype `cgroup`).
fn v1_mounts() -> Vec<PathBuf> {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    info.lines()
        .filter_map(|line| {
            // proc(5): fields ... mount point is the 5th; fstype follows the " - " separator.
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            let mount_point = pre.split_whitespace().nth(4)?;
            (fstype == "cgroup").then(|| PathBuf::from(mount_point))
        })
        .collect()
}

/// The directories of cgroup `path` in every mounted v1 hierarchy that has it.
pub fn v1_leaf_dirs(path: &Path) -> Vec<PathBuf> {
    let relative = path.strip_prefix("/").unwrap_or(path);
    v1_mounts()
        .into_iter()
        .map(|m| m.join(relative))
        .filter(|d| d.is_dir())
        .collect()
}

/// Removes cgroup `path` from every v1 hierarchy (it must hold no processes: `rmdir(2)` of
/// a cgroup fails with `EBUSY` otherwise). Missing directories are fine.
pub(crate) fn remove_v1_leaf(path: &Path) -> io::Result<()> {
    let mut first_err = None;
    for dir in v1_leaf_dirs(path) {
        if let Err(e) = fs::remove_dir(&dir) {
            if e.kind() != io::ErrorKind::NotFound {
                first_err.get_or_insert(e);
            }
        }
    }
    first_err.map_or(Ok(()), Err)
}

/// This process's cgroup in the hierarchy holding `controller` (e.g. `memory`), from
/// `/proc/self/cgroup`; `name=systemd` and the v2 entry (`0::`) can be asked for too.
pub fn own_cgroup(controller: &str) -> Option<PathBuf> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    text.lines().find_map(|line| {
        let mut parts = line.splitn(3, ':');
        let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
        controllers
            .split(',')
            .any(|c| c == controller)
            .then(|| PathBuf::from(path))
    })
}
