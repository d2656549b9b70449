//! Disk isolators, after Mesos's `disk/xfs` and `disk/du`.
//!
//! Each container's disk is its sandbox: the directory `<work_dir>/<container id>` that the
//! containerizer owns (creates before launch, garbage-collects after). Both isolators take the
//! agent's sandbox root as `work_dir` when they are built, so the [`crate::Isolator`] contract
//! needs no extra field; the `disk` resource arrives as [`crate::ContainerLimits::disk_bytes`].
//!
//! - [`QuotaIsolator`] (`disk/quota`) enforces the limit with a project quota: the sandbox gets
//!   a project id with the inherit flag, and the project a block hard limit, so writes beyond it
//!   fail (`EDQUOT` on ext4, `ENOSPC` on XFS). It needs XFS mounted with `prjquota`, or ext4
//!   made with `-O quota,project` and mounted with `prjquota`. Like Mesos's
//!   `--enforce_container_disk_quota`, it only reports a limitation (and so gets the container
//!   killed) when the operator asks for it with [`QuotaOptions::kill_on_exceed`].
//! - [`DuIsolator`] (`disk/du`) works anywhere: it walks the sandbox periodically (`du -k -s
//!   -x`) and reports a limitation when usage passes the limit, which makes the containerizer
//!   kill the container.
//!
//! Neither ever removes or changes the sandbox's contents; `cleanup` removes only what the
//! isolator added (the quota and the directory's project attribute).

mod du;
mod mounts;
mod quota;
#[allow(unsafe_code)]
mod sys;
mod walk;

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_api::ContainerId;

pub use du::{DuIsolator, DuOptions};
pub use quota::{QuotaIsolator, QuotaOptions};

use crate::IsolatorError;

/// The sandbox of container `id` under `work_dir`. Rejects ids that are not a single plain
/// path component (empty, `.`, `..`, or containing `/` or NUL), which could escape `work_dir`.
///
/// # Errors
/// [`IsolatorError::Invalid`] naming the id.
pub fn container_dir(
    isolator: &'static str,
    op: &'static str,
    work_dir: &Path,
    id: &ContainerId,
) -> Result<PathBuf, IsolatorError> {
    let value = id.as_str();
    if value.is_empty() || value == "." || value == ".." || value.contains(['/', '\0']) {
        return Err(IsolatorError::Invalid {
            isolator,
            op,
            container: value.to_string(),
            problem: "container id is not a valid directory name".to_string(),
        });
    }
    Ok(work_dir.join(value))
}

/// The project id of `dir` and whether it passes it on to new children (what `lsattr -p -d`
/// shows), for operators and tests. `disk/quota` assigns ids only from its configured range.
///
/// # Errors
/// `dir` cannot be opened, or its filesystem has no project attribute (`FS_IOC_FSGETXATTR`).
pub fn directory_project(dir: &Path) -> std::io::Result<(u32, bool)> {
    let project = sys::get_project(&std::fs::File::open(dir)?)?;
    Ok((project.id, project.inherit))
}

/// The message of a disk limitation, with usage and limit, in the style of the memory one.
pub(crate) fn limitation_message(used: u64, limit: u64) -> String {
    format!("disk limit exceeded: {used} of {limit} bytes used")
}

/// Seconds since the epoch, for [`crate::ResourceStatistics::timestamp`].
pub(crate) fn now_secs() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

pub(crate) fn io_error(
    isolator: &'static str,
    op: &'static str,
    id: &ContainerId,
    source: std::io::Error,
) -> IsolatorError {
    IsolatorError::Io {
        isolator,
        op,
        container: id.to_string(),
        source,
    }
}

pub(crate) fn unknown(isolator: &'static str, op: &'static str, id: &ContainerId) -> IsolatorError {
    IsolatorError::Invalid {
        isolator,
        op,
        container: id.to_string(),
        problem: "unknown container".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_dirs_stay_under_the_work_dir() {
        let root = Path::new("/var/lib/cairn/sandboxes");
        assert_eq!(
            container_dir("disk/du", "prepare", root, &ContainerId::new("c-1")).unwrap(),
            root.join("c-1")
        );
        for bad in ["", ".", "..", "a/b", "../x"] {
            assert!(
                container_dir("disk/du", "prepare", root, &ContainerId::new(bad)).is_err(),
                "{bad:?}"
            );
        }
    }
}
