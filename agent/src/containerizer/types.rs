//! What goes into a launch and what comes out of a container.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_api::{ContainerId, Reason, Resources, TaskId, TaskState};
use cairn_isolators::ContainerLimits;
use serde::{Deserialize, Serialize};

use super::state::ContainerState;
use crate::checkpoint::ExitStatus;

/// The task's command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskCommand {
    /// Run through `/bin/sh -c` (Mesos `CommandInfo.shell = true`).
    Shell(String),
    /// Exec these arguments directly; the first is looked up in `PATH`.
    Argv(Vec<String>),
}

/// One task to run.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchRequest {
    /// The task.
    pub task_id: TaskId,
    /// An image reference; `None` runs the command on the host filesystem (read-only) with
    /// the sandbox as working directory, like a Mesos command task.
    pub image: Option<String>,
    /// The command; `None` runs the image's entrypoint and cmd.
    pub command: Option<TaskCommand>,
    /// What the task may use: `cpus`, `mem` (MB), `disk` (MB).
    pub resources: Resources,
    /// Extra environment.
    pub env: BTreeMap<String, String>,
}

impl LaunchRequest {
    /// A request for `task_id` with `resources` and nothing else.
    pub fn new(task_id: impl Into<String>, resources: Resources) -> Self {
        Self {
            task_id: TaskId::new(task_id),
            image: None,
            command: None,
            resources,
            env: BTreeMap::new(),
        }
    }

    /// The container limits its resources ask for.
    pub fn limits(&self) -> ContainerLimits {
        let mb = |v: f64| (v * 1024.0 * 1024.0).round() as u64;
        let disk = self.resources.disk_mb();
        ContainerLimits {
            cpus: self.resources.cpus(),
            mem_bytes: mb(self.resources.mem_mb()),
            disk_bytes: (disk > 0.0).then(|| mb(disk)),
            ..ContainerLimits::default()
        }
    }
}

/// How a task ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Termination {
    /// `TASK_FINISHED`, `TASK_FAILED`, `TASK_KILLED` or `TASK_ERROR`.
    pub state: TaskState,
    /// Why, when it did not simply finish.
    pub reason: Option<Reason>,
    /// For humans: the exit code, the limitation, the launch error.
    pub message: String,
    /// The init's exit status, when it ran.
    pub exit: Option<ExitStatus>,
}

impl Termination {
    pub(crate) fn launch_failed(message: impl Into<String>) -> Self {
        Self {
            state: TaskState::Failed,
            reason: Some(Reason::ContainerLaunchFailed),
            message: message.into(),
            exit: None,
        }
    }

    pub(crate) fn invalid(message: impl Into<String>) -> Self {
        Self {
            state: TaskState::Error,
            reason: Some(Reason::TaskInvalid),
            message: message.into(),
            exit: None,
        }
    }

    /// The exit code a shell would show (`0` finished, `128+N` for signal N, `1` otherwise).
    pub fn exit_code(&self) -> i32 {
        match (self.exit, self.state) {
            (Some(e), _) => e.shell_code(),
            (None, TaskState::Finished) => 0,
            _ => 1,
        }
    }
}

/// What the containerizer reports as containers move.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A container reached a state.
    Container {
        container: ContainerId,
        task: TaskId,
        state: ContainerState,
    },
    /// A task status: `TASK_STARTING`, `TASK_RUNNING`, then a terminal one.
    Task {
        container: ContainerId,
        task: TaskId,
        state: TaskState,
        reason: Option<Reason>,
        message: String,
    },
    /// A step of destroying the container failed (it is logged too); the task's status is
    /// unaffected, but something may be left on the node: a cgroup, a mount, a directory.
    DestroyFailed {
        container: ContainerId,
        task: TaskId,
        /// Each failed step and why.
        message: String,
    },
}

/// Why the containerizer itself (not one task) failed.
#[derive(Debug, thiserror::Error)]
pub enum ContainerizerError {
    /// The isolators could not be built or recovered.
    #[error(transparent)]
    Isolators(#[from] cairn_isolators::IsolatorError),
    /// The image store could not be opened.
    #[error("image store: {0}")]
    Store(#[from] cairn_oci::store::StoreError),
    /// The runtime's state root could not be made.
    #[error(transparent)]
    Runtime(#[from] cairn_oci::runtime::RuntimeError),
    /// A checkpoint could not be read or written.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// A directory of the work dir could not be made or listed.
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// Another containerizer (agent) holds the work directory.
    #[error("the work directory is in use by another agent (lock {0} is held)")]
    Locked(std::path::PathBuf),
    /// No container with this id.
    #[error("no container {0}")]
    Unknown(ContainerId),
}

/// Default grace between SIGTERM and SIGKILL (Mesos's `--executor_shutdown_grace_period`).
pub const DEFAULT_KILL_GRACE: Duration = Duration::from_secs(5);
