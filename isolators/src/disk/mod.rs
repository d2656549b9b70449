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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_api::ContainerId;
use serde::{Deserialize, Serialize};

pub use du::{DuIsolator, DuOptions};
pub use quota::{QuotaIsolator, QuotaOptions};

use crate::{Isolator, IsolatorError};

/// The operator's knobs of both disk isolators (`[isolators.disk]` in the agent config).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DiskConfig {
    /// Seconds between `watch` polls: `disk/du` walks every sandbox this often, `disk/quota`
    /// reads quotas this often when `quota_kill_on_exceed` is on (Mesos's
    /// `--container_disk_watch_interval`, 15 s).
    pub watch_interval_secs: u64,
    /// `disk/du`: at most this many sandbox walks at once.
    pub du_max_concurrent_walks: usize,
    /// `disk/quota`: the first project id it may assign (Mesos's `--xfs_project_range`).
    pub project_id_min: u32,
    /// `disk/quota`: the last project id it may assign.
    pub project_id_max: u32,
    /// `disk/quota`: also report a DISK limitation, so the container is killed, when its usage
    /// reaches the limit (writes beyond it fail either way).
    pub quota_kill_on_exceed: bool,
}

impl Default for DiskConfig {
    fn default() -> Self {
        let du = DuOptions::default();
        let quota = QuotaOptions::default();
        Self {
            watch_interval_secs: du.interval.as_secs(),
            du_max_concurrent_walks: du.max_concurrent_walks,
            project_id_min: *quota.project_ids.start(),
            project_id_max: *quota.project_ids.end(),
            quota_kill_on_exceed: quota.kill_on_exceed,
        }
    }
}

impl DiskConfig {
    pub fn du_options(&self) -> DuOptions {
        DuOptions {
            interval: Duration::from_secs(self.watch_interval_secs.max(1)),
            max_concurrent_walks: self.du_max_concurrent_walks.max(1),
        }
    }

    pub fn quota_options(&self) -> QuotaOptions {
        QuotaOptions {
            project_ids: self.project_id_min..=self.project_id_max,
            kill_on_exceed: self.quota_kill_on_exceed,
            watch_interval: Duration::from_secs(self.watch_interval_secs.max(1)),
        }
    }
}

/// Builds `disk/du` for the sandboxes under `work_dir` (for the registry).
///
/// # Errors
/// None today; the signature matches the registry's builders.
pub fn build_du(work_dir: &Path, config: &DiskConfig) -> Result<Box<dyn Isolator>, IsolatorError> {
    Ok(Box::new(DuIsolator::new(work_dir, config.du_options())))
}

/// Builds `disk/quota` for the sandboxes under `work_dir` (for the registry).
///
/// # Errors
/// [`IsolatorError::Unsupported`] when `work_dir`'s filesystem cannot enforce project quotas.
pub fn build_quota(
    work_dir: &Path,
    config: &DiskConfig,
) -> Result<Box<dyn Isolator>, IsolatorError> {
    Ok(Box::new(QuotaIsolator::new(
        work_dir,
        config.quota_options(),
    )?))
}

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
    fn config_defaults_match_mesos_and_parse_from_toml_shaped_json() {
        let config = DiskConfig::default();
        assert_eq!(config.du_options(), DuOptions::default());
        assert_eq!(config.quota_options(), QuotaOptions::default());
        let config: DiskConfig =
            serde_json::from_str(r#"{"watch_interval_secs": 5, "quota_kill_on_exceed": true}"#)
                .unwrap();
        assert_eq!(config.du_options().interval, Duration::from_secs(5));
        assert!(config.quota_options().kill_on_exceed);
        assert_eq!(config.quota_options().project_ids, 5000..=10000);
    }

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
