//! cgroup backends (v2 and v1) and the cgroup isolators: `cgroups/cpu`, `cgroups/mem`,
//! `cgroups/pids` and `cgroups/io`.
//!
//! # Why hand-written cgroupfs access
//!
//! The isolators read and write cgroupfs files directly instead of going through youki's
//! `libcgroups` (in the tree through `libcontainer`) or the `cgroups-rs` crate. Both crates
//! manage a container's cgroup as a whole from an OCI resources struct, assume the cgroup sits
//! at one path in every v1 hierarchy, and hide the files we must read cheaply for usage
//! statistics (1000 containers every second) and OOM detection. The agent needs less and
//! different things: one parent cgroup below its *own* cgroup in each hierarchy (which on a
//! v1 host differs per hierarchy), `cgroup.subtree_control` only in the chain it owns, a kill
//! loop that survives fork bombs, and a handful of allocation-free reads per sample. That is a
//! few hundred lines over `std::fs`, and no cgroup job is done by two libraries: `libcgroups`
//! is used only by `libcontainer` (through `oci`) when it runs a bundle.
//!
//! # Shape
//!
//! - [`Cgroups`] is the backend trait, implemented by [`v2::CgroupsV2`] (unified hierarchy)
//!   and [`v1::CgroupsV1`] (legacy and hybrid hosts), chosen once by [`open`] from
//!   `/proc/self/mountinfo`: a host where any of cpu, memory, pids or blkio is bound to a v1
//!   hierarchy is driven through v1 (a controller lives in one hierarchy only, so on a hybrid
//!   host the v2 mount cannot enforce those).
//! - [`controller::CgroupsIsolator`] is the lifecycle shared by every cgroup isolator
//!   (create, attach, recover, cleanup); one [`controller::Controller`] per cgroup controller
//!   ([`cpu`], [`memory`], [`pids`], [`io`]) says what to write and what to read, as in Mesos's
//!   cgroups2 isolator.
//! - Every container gets `<parent>/<container id>`; the parent is configured in
//!   [`CgroupsConfig::parent`], relative to the agent's own cgroup by default.

pub mod controller;
pub mod cpu;
mod files;
pub mod io;
pub mod memory;
pub mod mount;
pub mod oom;
pub mod oom_events;
pub mod pids;
pub mod stats;
pub mod v1;
pub mod v2;

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

pub use controller::CgroupsIsolator;

/// Where and how the agent runs its containers' cgroups.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CgroupsConfig {
    /// The parent cgroup of every container. Relative (`cairn`): below the agent's own cgroup
    /// in each hierarchy (`/proc/self/cgroup`), which is what systemd delegates to a unit.
    /// Absolute (`/cairn.slice`): from the root of each hierarchy.
    pub parent: String,
    /// `pids.max` for containers whose limits carry no `pids`; `None` leaves it unlimited.
    pub default_pids_limit: Option<u64>,
    /// Kill the whole container when the OOM killer picks one of its processes
    /// (`memory.oom.group`, v2 only), as the container is one unit of failure.
    pub oom_group: bool,
    /// The mount table to detect hierarchies from (tests may point it elsewhere).
    pub mountinfo: PathBuf,
    /// The agent's own cgroup membership.
    pub proc_self_cgroup: PathBuf,
}

impl Default for CgroupsConfig {
    fn default() -> Self {
        Self {
            parent: "cairn".to_string(),
            default_pids_limit: None,
            oom_group: true,
            mountinfo: PathBuf::from("/proc/self/mountinfo"),
            proc_self_cgroup: PathBuf::from("/proc/self/cgroup"),
        }
    }
}

/// The cgroup layout of the host, detected once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CgroupVersion {
    /// Unified hierarchy only.
    V2,
    /// v1 hierarchies; `hybrid` when a cgroup2 mount exists beside them (then unused).
    V1 { hybrid: bool },
}

/// A cgroup controller an isolator uses. On v1 each is a hierarchy (possibly co-mounted);
/// on v2 they are files in the same directory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Subsystem {
    Cpu,
    /// v1 `cpuacct` (CPU time); on v2 part of `cpu`.
    CpuAcct,
    Memory,
    Pids,
    /// v2 `io`, v1 `blkio`.
    Io,
}

impl Subsystem {
    /// The v1 hierarchy name.
    pub fn v1_name(self) -> &'static str {
        match self {
            Subsystem::Cpu => "cpu",
            Subsystem::CpuAcct => "cpuacct",
            Subsystem::Memory => "memory",
            Subsystem::Pids => "pids",
            Subsystem::Io => "blkio",
        }
    }

    /// The v2 controller name (`cgroup.controllers`).
    pub fn v2_name(self) -> &'static str {
        match self {
            Subsystem::Cpu | Subsystem::CpuAcct => "cpu",
            Subsystem::Memory => "memory",
            Subsystem::Pids => "pids",
            Subsystem::Io => "io",
        }
    }
}

impl fmt::Display for Subsystem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.v1_name())
    }
}

/// Why a cgroup operation failed, with the file and the operation.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("{op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot parse {what} from {text:?}")]
    Parse {
        path: PathBuf,
        what: &'static str,
        text: String,
    },
    #[error("no cgroup hierarchy carries the {0} controller (see /proc/self/mountinfo)")]
    NotMounted(&'static str),
    #[error("the {controller} controller is not available in {path} (cgroup.controllers)")]
    ControllerUnavailable {
        controller: &'static str,
        path: PathBuf,
    },
    #[error("{remaining} processes still in {path} after repeated SIGKILL")]
    Unkillable { path: PathBuf, remaining: usize },
    #[error("{0:?} cannot be a cgroup name (empty, `.`/`..`, `/`, or a `cgroup.` prefix)")]
    InvalidName(String),
}

/// A cgroup backend: v1 or v2 cgroupfs below one parent cgroup the agent owns. Container
/// cgroups are `<parent>/<name>`; every method is about those and nothing else.
pub trait Cgroups: Send + Sync + fmt::Debug {
    /// The layout this backend drives.
    fn version(&self) -> CgroupVersion;

    /// Makes sure the parent exists and `subsystems` are usable in its children: v1 creates
    /// the parent in each hierarchy; v2 enables the controllers in `cgroup.subtree_control`
    /// from the agent's own cgroup down to the parent (never above it).
    ///
    /// # Errors
    /// A hierarchy is missing, a controller is unavailable, or cgroupfs refused a write.
    fn enable(&self, subsystems: &[Subsystem]) -> Result<(), CgroupError>;

    /// The directory of container `name` for `subsystem` (v2: the same for all).
    fn dir(&self, subsystem: Subsystem, name: &str) -> PathBuf;

    /// The container's cgroup path relative to the hierarchy's root (`linux.cgroupsPath`).
    fn relative_path(&self, subsystem: Subsystem, name: &str) -> String;

    /// Creates the container's cgroup for `subsystem`; succeeds when it exists.
    ///
    /// # Errors
    /// The directory could not be made.
    fn create(&self, subsystem: Subsystem, name: &str) -> Result<PathBuf, CgroupError>;

    /// Moves process `pid` into the container's cgroup for `subsystem`.
    ///
    /// # Errors
    /// The cgroup does not exist or the kernel refused the move.
    fn attach(&self, subsystem: Subsystem, name: &str, pid: u32) -> Result<(), CgroupError>;

    /// Kills every process in the container's cgroup for `subsystem` (and its descendants)
    /// and removes the directories. Succeeds when the cgroup does not exist.
    ///
    /// # Errors
    /// Processes survived the kill loop, or a directory could not be removed.
    fn destroy(&self, subsystem: Subsystem, name: &str) -> Result<(), CgroupError>;

    /// The names of the container cgroups below the parent in `subsystem`'s hierarchy.
    ///
    /// # Errors
    /// The parent cannot be listed.
    fn containers(&self, subsystem: Subsystem) -> Result<Vec<String>, CgroupError>;
}

/// Checks that `name` can be a cgroup directory name below the parent.
///
/// # Errors
/// [`CgroupError::InvalidName`].
pub fn check_name(name: &str) -> Result<(), CgroupError> {
    if name.is_empty()
        || name == "."
        || name == ".."
        || name.contains('/')
        || name.contains('\0')
        || name.starts_with("cgroup.")
        || name.len() > 255
    {
        return Err(CgroupError::InvalidName(name.to_string()));
    }
    Ok(())
}

/// Detects the host's cgroup layout and opens the matching backend below `config.parent`.
/// Has no side effects: nothing is created until [`Cgroups::enable`].
///
/// # Errors
/// The mount table or `/proc/self/cgroup` cannot be read, or no cgroup hierarchy is mounted.
pub fn open(config: &CgroupsConfig) -> Result<Arc<dyn Cgroups>, CgroupError> {
    let mountinfo = files::read_string(&config.mountinfo)?;
    let own = files::read_string(&config.proc_self_cgroup)?;
    let mounts = mount::parse_mountinfo(&mountinfo);
    let own = mount::parse_proc_cgroup(&own);
    let v1_controllers = [
        Subsystem::Cpu,
        Subsystem::Memory,
        Subsystem::Pids,
        Subsystem::Io,
    ];
    let has_v1 = mounts.iter().any(|m| {
        !m.v2
            && v1_controllers
                .iter()
                .any(|s| m.controllers.iter().any(|c| c == s.v1_name()))
    });
    if has_v1 {
        let hybrid = mounts.iter().any(|m| m.v2);
        Ok(Arc::new(v1::CgroupsV1::new(
            &mounts,
            &own,
            &config.parent,
            hybrid,
        )))
    } else {
        let v2 = mounts
            .iter()
            .find(|m| m.v2)
            .ok_or(CgroupError::NotMounted("cgroup2"))?;
        Ok(Arc::new(v2::CgroupsV2::new(v2, &own, &config.parent)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_cannot_be_cgroups_are_refused() {
        for bad in ["", ".", "..", "a/b", "cgroup.procs"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        check_name("c0ffee-1.task_2").unwrap();
    }
}
