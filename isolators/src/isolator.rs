//! The isolator contract: recover, prepare, isolate, watch, update, usage, cleanup.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::mpsc::Receiver;
use std::time::Duration;

use cairn_api::{ContainerId, Reason};
use serde::{Deserialize, Serialize};

/// What a container is allowed, derived from its task's resources and the agent's config.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ContainerLimits {
    /// The `cpus` resource: proportional weight always, a CFS quota when
    /// `cpu_hard_limits` is set.
    pub cpus: f64,
    /// Enforce `cpus` as a hard CFS quota (`cpu.max` / `cpu.cfs_quota_us`).
    pub cpu_hard_limits: bool,
    /// The `mem` resource in bytes: the hard limit (`memory.max` / `limit_in_bytes`).
    pub mem_bytes: u64,
    /// Optional soft limit (`memory.high`), in bytes.
    pub mem_soft_bytes: Option<u64>,
    /// Allow swap up to this many bytes beyond `mem_bytes`; `None` disables swap (the default).
    pub swap_bytes: Option<u64>,
    /// Process limit (`pids.max`).
    pub pids: Option<u64>,
    /// The `disk` resource in bytes (sandbox and writable layer).
    pub disk_bytes: Option<u64>,
    /// Proportional io weight (1..=10000, cgroup v2 semantics).
    pub io_weight: Option<u16>,
    /// Per-device bandwidth limits `(major, minor, read_bps, write_bps)`.
    pub io_bps: Vec<(u64, u64, Option<u64>, Option<u64>)>,
}

/// What an isolator contributes to a container's launch. The containerizer merges every
/// isolator's preparation; `oci` renders it into the spec.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Preparation {
    /// The container's cgroup path relative to the cgroup mount (for `linux.cgroupsPath`).
    pub cgroup_path: Option<String>,
    /// Bind mounts `(host source, container destination, read_only)`.
    pub mounts: Vec<(PathBuf, PathBuf, bool)>,
    /// Namespaces to create, by OCI name (`pid`, `mount`, `ipc`, `uts`, `network`, `cgroup`).
    pub namespaces: Vec<String>,
    /// Environment variables for the task.
    pub env: BTreeMap<String, String>,
}

impl Preparation {
    /// Merges `other` into `self`; later isolators add to, never remove from, earlier ones.
    pub fn merge(&mut self, other: Preparation) {
        if other.cgroup_path.is_some() {
            self.cgroup_path = other.cgroup_path;
        }
        self.mounts.extend(other.mounts);
        for ns in other.namespaces {
            if !self.namespaces.contains(&ns) {
                self.namespaces.push(ns);
            }
        }
        self.env.extend(other.env);
    }
}

/// A hard limit the container hit; the containerizer ends its task TASK_FAILED with
/// [`Limitation::reason`] and [`Limitation::message`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limitation {
    /// `REASON_CONTAINER_LIMITATION_MEMORY` or `REASON_CONTAINER_LIMITATION_DISK`.
    pub reason: Reason,
    /// Human-readable, with the usage and the limit, e.g.
    /// `"memory limit exceeded: 67108864 of 67108864 bytes used, oom_kill 1"`.
    pub message: String,
}

/// A container the agent knows after a restart, handed to [`Isolator::recover`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecoveredContainer {
    pub id: ContainerId,
    pub limits: ContainerLimits,
}

/// Usage statistics in the shape of Mesos's `ResourceStatistics` (field names as in its
/// JSON, so `/monitor/statistics` can serve them as they are). Each isolator fills its part.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ResourceStatistics {
    /// Seconds since the Unix epoch when the sample was taken.
    pub timestamp: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub processes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub threads: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_user_time_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_system_time_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_limit: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_nr_periods: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_nr_throttled: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cpus_throttled_time_secs: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_total_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_anon_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_file_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_rss_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_cache_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_max_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_soft_limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mem_swap_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_limit_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_used_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blkio_read_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub blkio_write_bytes: Option<u64>,
}

impl ResourceStatistics {
    /// Fills every field `self` lacks from `other` (isolators report disjoint parts).
    pub fn merge(&mut self, other: &ResourceStatistics) {
        macro_rules! take {
            ($($f:ident),*) => { $(if self.$f.is_none() { self.$f = other.$f; })* };
        }
        take!(
            processes,
            threads,
            cpus_user_time_secs,
            cpus_system_time_secs,
            cpus_limit,
            cpus_nr_periods,
            cpus_nr_throttled,
            cpus_throttled_time_secs,
            mem_total_bytes,
            mem_anon_bytes,
            mem_file_bytes,
            mem_rss_bytes,
            mem_cache_bytes,
            mem_max_bytes,
            mem_limit_bytes,
            mem_soft_limit_bytes,
            mem_swap_bytes,
            disk_limit_bytes,
            disk_used_bytes,
            blkio_read_bytes,
            blkio_write_bytes
        );
        if self.timestamp == 0.0 {
            self.timestamp = other.timestamp;
        }
    }
}

/// Why an isolator operation failed. Carries the container, the operation and the cause.
#[derive(Debug, thiserror::Error)]
pub enum IsolatorError {
    #[error("{isolator}: {op} of container {container}: {source}")]
    Io {
        isolator: &'static str,
        op: &'static str,
        container: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{isolator}: {op} of container {container}: {problem}")]
    Invalid {
        isolator: &'static str,
        op: &'static str,
        container: String,
        problem: String,
    },
    #[error("{isolator}: {op} of container {container}: {source}")]
    Cgroup {
        isolator: &'static str,
        op: &'static str,
        container: String,
        #[source]
        source: crate::cgroups::CgroupError,
    },
    #[error("unknown isolator {0:?} (known: {1})")]
    UnknownIsolator(String, String),
    #[error("{isolator}: not supported on this host: {problem}")]
    Unsupported {
        isolator: &'static str,
        problem: String,
    },
}

/// Mesos's isolator lifecycle. Every method may be called for containers the isolator does
/// not know (after a crash between steps): such calls succeed and do nothing, except
/// `isolate`, `update` and `usage`, which return an error naming the container.
pub trait Isolator: Send + Sync + std::fmt::Debug {
    /// The name used in the agent config, e.g. `cgroups/mem`.
    fn name(&self) -> &'static str;

    /// After an agent restart: re-attach to the containers the agent recovered, and clean up
    /// anything of this isolator's that belongs to none of them (orphans).
    ///
    /// # Errors
    /// State that cannot be read; the agent refuses to start rather than lose track.
    fn recover(&self, containers: &[RecoveredContainer]) -> Result<(), IsolatorError>;

    /// Before launch: set up what the container needs (create its cgroup, set limits, assign
    /// a quota) and describe what the launch must include.
    ///
    /// # Errors
    /// The limits cannot be applied; the containerizer then cleans up and fails the launch.
    fn prepare(
        &self,
        id: &ContainerId,
        limits: &ContainerLimits,
    ) -> Result<Preparation, IsolatorError>;

    /// After the container's init exists (`pid`), before it runs user code.
    ///
    /// # Errors
    /// The process could not be placed under isolation.
    fn isolate(&self, id: &ContainerId, pid: u32) -> Result<(), IsolatorError>;

    /// Checks whether the container hit a hard limit. Called when the container exits and
    /// periodically; returns the limitation at most once per container.
    ///
    /// # Errors
    /// The limit state cannot be read.
    fn watch(&self, id: &ContainerId) -> Result<Option<Limitation>, IsolatorError>;

    /// Resizes a running container.
    ///
    /// # Errors
    /// The new limits cannot be applied (the old ones stay).
    fn update(&self, id: &ContainerId, limits: &ContainerLimits) -> Result<(), IsolatorError>;

    /// This isolator's part of the container's usage statistics.
    ///
    /// # Errors
    /// The statistics cannot be read.
    fn usage(&self, id: &ContainerId) -> Result<ResourceStatistics, IsolatorError>;

    /// Removes everything this isolator made for the container. Idempotent; succeeds for
    /// unknown containers. The containerizer calls it for every isolator, in reverse order,
    /// also after a failed prepare.
    ///
    /// # Errors
    /// Something could not be removed (the agent retries at the next cleanup).
    fn cleanup(&self, id: &ContainerId) -> Result<(), IsolatorError>;

    /// How often `watch` should be polled for this isolator's limitations; `None` when it only
    /// needs to be checked when the container exits.
    fn watch_interval(&self) -> Option<Duration> {
        None
    }

    /// Limitations as they happen, for isolators that learn of them from kernel events
    /// (`cgroups/mem`: OOM kills, see `cgroups::oom_events`): a new receiver of
    /// `(container, limitation)` for every limitation from now on. A limitation delivered here
    /// is not returned again by [`Isolator::watch`] (each is reported once); one seen while
    /// nobody is subscribed is returned by the next `watch`. `None` (the default): poll
    /// `watch`.
    fn subscribe(&self) -> Option<Receiver<(ContainerId, Limitation)>> {
        None
    }
}
