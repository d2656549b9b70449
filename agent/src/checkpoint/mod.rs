//! Checkpoints: what the agent must know after a restart to re-adopt its containers.
//!
//! Every file is a typed serde struct with a `version` field, written atomically
//! ([`durable::write_atomic`]). Layout under the agent's work directory:
//!
//! ```text
//! <work_dir>/meta/agent.json                    AgentCheckpoint: agent id, boot id
//! <work_dir>/meta/containers/<id>/container.json ContainerCheckpoint (the agent writes it)
//! <work_dir>/meta/containers/<id>/supervisor.json the supervisor's config (the agent)
//! <work_dir>/meta/containers/<id>/exit.json     ExitRecord (the supervisor writes it)
//! <work_dir>/meta/quarantine/<id>/              a container whose checkpoint was unreadable
//! <work_dir>/sandboxes/<id>/                    the task's sandbox: stdout, stderr
//! <work_dir>/containers/<id>/                   the bundle: config.json, rootfs/
//! <work_dir>/runtime/<id>/                      libcontainer's state
//! <work_dir>/images/                            the image store and extracted layers
//! ```

pub use cairn_durable as durable;

use std::fs;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use cairn_api::{AgentId, ContainerId, TaskId};
use cairn_isolators::ContainerLimits;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::containerizer::state::ContainerState;
use crate::containerizer::types::Termination;

/// The version of every checkpoint struct written by this code.
pub const VERSION: u32 = 1;

/// Why a checkpoint could not be read or written. Always names the file.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// A file operation failed.
    #[error("checkpoint: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The file is not valid JSON of the expected shape.
    #[error("checkpoint: {path} is corrupt: {source}")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    /// The file was written by an incompatible version.
    #[error("checkpoint: {path} has version {found}, this agent reads version {VERSION}")]
    Version { path: PathBuf, found: u32 },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> CheckpointError {
    let path = path.to_path_buf();
    move |source| CheckpointError::Io { op, path, source }
}

/// Where everything of the agent lives below its work directory (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The work directory itself.
    pub work_dir: PathBuf,
}

impl Layout {
    /// The layout below `work_dir`.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        Self {
            work_dir: work_dir.into(),
        }
    }

    /// `meta/`: checkpoints.
    pub fn meta(&self) -> PathBuf {
        self.work_dir.join("meta")
    }

    /// `meta/agent.json`.
    pub fn agent_file(&self) -> PathBuf {
        self.meta().join("agent.json")
    }

    /// `meta/containers/`.
    pub fn containers_meta(&self) -> PathBuf {
        self.meta().join("containers")
    }

    /// `meta/containers/<id>/`.
    pub fn container_meta(&self, id: &ContainerId) -> PathBuf {
        self.containers_meta().join(id.as_str())
    }

    /// `meta/containers/<id>/container.json`.
    pub fn container_file(&self, id: &ContainerId) -> PathBuf {
        self.container_meta(id).join("container.json")
    }

    /// `meta/containers/<id>/exit.json`, written by the supervisor.
    pub fn exit_file(&self, id: &ContainerId) -> PathBuf {
        self.container_meta(id).join("exit.json")
    }

    /// `meta/containers/<id>/supervisor.json`.
    pub fn supervisor_file(&self, id: &ContainerId) -> PathBuf {
        self.container_meta(id).join("supervisor.json")
    }

    /// `meta/quarantine/`.
    pub fn quarantine(&self) -> PathBuf {
        self.meta().join("quarantine")
    }

    /// `sandboxes/` (also the disk isolators' work directory).
    pub fn sandboxes(&self) -> PathBuf {
        self.work_dir.join("sandboxes")
    }

    /// `sandboxes/<id>/`.
    pub fn sandbox(&self, id: &ContainerId) -> PathBuf {
        self.sandboxes().join(id.as_str())
    }

    /// `containers/`.
    pub fn bundles(&self) -> PathBuf {
        self.work_dir.join("containers")
    }

    /// `containers/<id>/`: the bundle (config.json and rootfs).
    pub fn bundle(&self, id: &ContainerId) -> PathBuf {
        self.bundles().join(id.as_str())
    }

    /// `runtime/`: libcontainer's state root.
    pub fn runtime(&self) -> PathBuf {
        self.work_dir.join("runtime")
    }

    /// `images/`: the image store and the layer cache.
    pub fn images(&self) -> PathBuf {
        self.work_dir.join("images")
    }
}

/// The agent itself: its id and the boot it was assigned in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentCheckpoint {
    pub version: u32,
    pub agent_id: AgentId,
    /// `/proc/sys/kernel/random/boot_id` when the id was assigned: after a reboot the agent
    /// registers as a new agent (Mesos: a rebooted agent's tasks are gone).
    pub boot_id: String,
}

/// A container as the agent last recorded it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ContainerCheckpoint {
    pub version: u32,
    pub container_id: ContainerId,
    /// The task it runs.
    pub task_id: TaskId,
    /// The last state reached.
    pub state: ContainerState,
    /// What it may use.
    pub limits: ContainerLimits,
    /// Its image reference, `None` for a command task on the host filesystem.
    pub image: Option<String>,
    /// `linux.cgroupsPath`.
    pub cgroup: Option<PathBuf>,
    /// The bundle directory (holding `rootfs/`).
    pub bundle: PathBuf,
    /// The sandbox directory.
    pub sandbox: PathBuf,
    /// The supervisor's pid and its start time (clock ticks since boot, `/proc/<pid>/stat`
    /// field 22), which together survive pid reuse.
    pub supervisor: Option<ProcessRef>,
    /// The container's init (host pid and start time).
    pub init: Option<ProcessRef>,
    /// A kill was requested: the task ends `TASK_KILLED`, whatever its exit status.
    pub kill_requested: bool,
    /// How the task ended, once the container is destroyed; kept until the agent forgets the
    /// container (after the master acknowledged the terminal update).
    pub termination: Option<Termination>,
}

/// A process identified beyond its pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_time: u64,
}

impl ProcessRef {
    /// The process `pid` as it is now, `None` if it does not exist.
    pub fn of(pid: u32) -> Option<Self> {
        start_time(pid).map(|start_time| Self { pid, start_time })
    }

    /// Whether this very process still exists (not a later one with the same pid). A zombie
    /// counts as gone.
    pub fn is_alive(&self) -> bool {
        let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", self.pid)) else {
            return false;
        };
        let Some(fields) = stat_fields(&stat) else {
            return false;
        };
        // Field 3 (state) is index 0, field 22 (starttime) index 19.
        fields.first() != Some(&"Z")
            && fields.get(19).and_then(|t| t.parse().ok()) == Some(self.start_time)
    }

    /// Waits until this process is gone, at most `timeout`; true if it is. Wakes at its exit
    /// through a pidfd (Linux 5.3), else polls every 10 ms.
    pub fn wait_gone(&self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let pidfd = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .and_then(|pid| {
                rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()).ok()
            });
        // Checked after opening: if this very process still exists now, the pidfd is its.
        while self.is_alive() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            match &pidfd {
                Some(fd) => {
                    let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
                    let mut fds = [nix::poll::PollFd::new(
                        fd.as_fd(),
                        nix::poll::PollFlags::POLLIN,
                    )];
                    let _ = nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms));
                }
                None => std::thread::sleep(left.min(Duration::from_millis(10))),
            }
        }
        true
    }
}

/// Fields of `/proc/<pid>/stat` after the command (`proc(5)`: the command is in parentheses
/// and may itself hold spaces and parentheses); field 3 (state) is index 0.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

fn start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Field 22 (starttime) is index 19 after the command.
    stat_fields(&stat)?.get(19)?.parse().ok()
}

/// How a container's init ended, as its supervisor recorded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// Exited with this code.
    Exited(i32),
    /// Killed by this signal number.
    Signaled(i32),
    /// Never started: the agent went away before it said start.
    Aborted,
}

impl ExitStatus {
    /// The shell's convention: the code, or 128 + the signal.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled(s) => 128 + s,
            ExitStatus::Aborted => 128,
        }
    }
}

/// The supervisor's record of the end of its container.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitRecord {
    pub version: u32,
    pub container_id: ContainerId,
    pub status: ExitStatus,
    /// Seconds since the Unix epoch.
    pub finished_at: f64,
}

/// Writes `value` as JSON to `path` atomically, creating the directory.
///
/// # Errors
/// [`CheckpointError::Io`] naming the file.
pub fn write<T: Serialize>(path: &Path, value: &T) -> Result<(), CheckpointError> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    }
    let bytes = serde_json::to_vec_pretty(value).map_err(|source| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        source,
    })?;
    durable::write_atomic(path, &bytes).map_err(io_err("write", path))
}

/// Reads a versioned checkpoint; `Ok(None)` when the file does not exist.
///
/// # Errors
/// [`CheckpointError::Corrupt`] or [`CheckpointError::Version`] naming the file.
pub fn read<T: DeserializeOwned>(path: &Path) -> Result<Option<T>, CheckpointError> {
    let bytes = match fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("read", path)(e)),
    };
    #[derive(Deserialize)]
    struct Versioned {
        version: u32,
    }
    let corrupt = |source| CheckpointError::Corrupt {
        path: path.to_path_buf(),
        source,
    };
    let v: Versioned = serde_json::from_slice(&bytes).map_err(corrupt)?;
    if v.version != VERSION {
        return Err(CheckpointError::Version {
            path: path.to_path_buf(),
            found: v.version,
        });
    }
    serde_json::from_slice(&bytes).map(Some).map_err(corrupt)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`).
///
/// # Errors
/// The file cannot be read.
pub fn boot_id() -> Result<String, CheckpointError> {
    let path = Path::new("/proc/sys/kernel/random/boot_id");
    fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(io_err("read", path))
}

/// The agent id to re-register with: the checkpointed one when it was assigned in this boot;
/// `None` on first start or after a reboot (the agent then registers as a new agent).
///
/// # Errors
/// A corrupt `agent.json` (named), which the agent refuses to guess past.
pub fn recover_agent_id(layout: &Layout) -> Result<Option<AgentId>, CheckpointError> {
    let current = boot_id()?;
    Ok(read::<AgentCheckpoint>(&layout.agent_file())?
        .filter(|c| c.boot_id == current)
        .map(|c| c.agent_id))
}

/// Records the agent id assigned by the master, with this boot's id.
///
/// # Errors
/// The file cannot be written.
pub fn save_agent_id(layout: &Layout, agent_id: &AgentId) -> Result<(), CheckpointError> {
    write(
        &layout.agent_file(),
        &AgentCheckpoint {
            version: VERSION,
            agent_id: agent_id.clone(),
            boot_id: boot_id()?,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_id_survives_restarts_but_not_reboots() {
        let dir = tempfile::tempdir().unwrap();
        let layout = Layout::new(dir.path());
        assert_eq!(recover_agent_id(&layout).unwrap(), None);
        save_agent_id(&layout, &AgentId::new("a1")).unwrap();
        assert_eq!(recover_agent_id(&layout).unwrap(), Some(AgentId::new("a1")));
        let mut c: AgentCheckpoint = read(&layout.agent_file()).unwrap().unwrap();
        c.boot_id = "another-boot".into();
        write(&layout.agent_file(), &c).unwrap();
        assert_eq!(recover_agent_id(&layout).unwrap(), None);
    }

    #[test]
    fn corrupt_and_future_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("container.json");
        fs::write(&path, b"{\"version\": 1, \"container_id\"").unwrap();
        let err = read::<ContainerCheckpoint>(&path).unwrap_err();
        assert!(matches!(err, CheckpointError::Corrupt { .. }));
        assert!(err.to_string().contains("container.json"), "{err}");
        fs::write(&path, b"{\"version\": 9}").unwrap();
        let err = read::<ContainerCheckpoint>(&path).unwrap_err();
        assert!(
            matches!(err, CheckpointError::Version { found: 9, .. }),
            "{err}"
        );
        assert!(read::<ExitRecord>(&dir.path().join("missing"))
            .unwrap()
            .is_none());
    }

    #[test]
    fn our_own_process_is_alive_and_a_wrong_start_time_is_not() {
        let me = ProcessRef::of(std::process::id()).unwrap();
        assert!(me.is_alive());
        let other = ProcessRef {
            start_time: me.start_time + 1,
            ..me
        };
        assert!(!other.is_alive());
    }
}
