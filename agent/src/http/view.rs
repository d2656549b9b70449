//! What the HTTP API reads from the agent: [`AgentView`], the containers and their usage, and
//! [`AgentInfo`], the agent's identity and resources. [`ContainerizerView`] adapts a real
//! [`Containerizer`]; the daemon tells it which framework each task belongs to.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::mpsc;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::SystemTime;

use cairn_api::{ContainerId, Resources, TaskId, TaskState};
use cairn_isolators::ResourceStatistics;

use crate::capacity::NodeCapacity;
use crate::checkpoint::ContainerCheckpoint;
use crate::containerizer::{ContainerState, Containerizer, Event, Recovery, Termination};

/// One container (and its task) as the HTTP API shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerView {
    pub container_id: ContainerId,
    pub task_id: TaskId,
    /// The framework that launched the task; empty when the daemon did not say.
    pub framework_id: String,
    /// The task's name; its id when the daemon did not say.
    pub task_name: String,
    pub state: ContainerState,
    /// The task's state as Mesos would report it now.
    pub task_state: TaskState,
    /// What the task may use: `cpus`, `mem` (MB), `disk` (MB).
    pub resources: Resources,
    pub sandbox: PathBuf,
    /// How the task ended, once it did.
    pub termination: Option<Termination>,
}

impl ContainerView {
    /// Still running (or about to): not ended yet.
    pub fn is_active(&self) -> bool {
        self.termination.is_none()
    }
}

/// The agent as the HTTP API reads it. Implemented by [`ContainerizerView`]; a test may
/// implement it over anything.
pub trait AgentView: Send + Sync + 'static {
    /// Every container known, running or ended (until forgotten).
    fn containers(&self) -> Vec<ContainerView>;
    /// The container's usage now; `None` when it is gone or cannot be measured.
    fn usage(&self, id: &ContainerId) -> Option<ResourceStatistics>;
    /// The directory holding every sandbox: `/files` serves nothing outside it.
    fn sandboxes(&self) -> PathBuf;
    /// Container events from now on (for the launch latency histogram and task counters).
    fn subscribe(&self) -> mpsc::Receiver<Event>;
    /// The images in the agent's store (`/images`); a view without a store has none.
    ///
    /// # Errors
    /// The store cannot be read (the message says why).
    fn images(&self) -> Result<Vec<ImageView>, String> {
        Ok(Vec::new())
    }
}

/// An image in the agent's store, as `/images` lists it (`cairn images`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ImageView {
    /// The reference it is stored under (`docker.io/library/busybox:latest`).
    pub reference: String,
    /// Its manifest's digest.
    pub digest: String,
    /// Number of layers.
    pub layers: usize,
    /// Bytes of its layer blobs as stored (compressed).
    pub size: u64,
}

/// Who launched a task, as the daemon knows from the master's `RunTask`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskMeta {
    pub framework_id: String,
    pub name: String,
}

/// Ended tasks kept in `/state` after their containers are forgotten, newest last, so
/// `cairn logs` and Mesos tools still find their sandboxes (Mesos keeps completed executors
/// the same way, bounded). In memory only: a restarted agent lists none.
pub const MAX_COMPLETED: usize = 1000;

/// [`AgentView`] over a real [`Containerizer`].
#[derive(Debug)]
pub struct ContainerizerView {
    containerizer: Arc<Containerizer>,
    tasks: RwLock<HashMap<TaskId, TaskMeta>>,
    completed: RwLock<VecDeque<ContainerView>>,
}

impl ContainerizerView {
    pub fn new(containerizer: Arc<Containerizer>) -> Self {
        Self {
            containerizer,
            tasks: RwLock::new(HashMap::new()),
            completed: RwLock::new(VecDeque::new()),
        }
    }

    /// Records the task's framework and name (call before or after launching it).
    pub fn register_task(&self, task: TaskId, meta: TaskMeta) {
        self.tasks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(task, meta);
    }

    /// Drops what [`Self::register_task`] recorded. Call it before the task's ended
    /// `container` is forgotten: its last view is kept among the [`MAX_COMPLETED`]
    /// completed tasks.
    pub fn forget_task(&self, task: &TaskId, container: Option<&ContainerId>) {
        let meta = self
            .tasks
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(task);
        let ended = container
            .and_then(|id| self.containerizer.record(id))
            .map(|r| view_of(r, meta.as_ref()))
            .filter(|v| !v.is_active());
        if let Some(view) = ended {
            let mut completed = self
                .completed
                .write()
                .unwrap_or_else(PoisonError::into_inner);
            completed.retain(|c| c.task_id != *task);
            completed.push_back(view);
            while completed.len() > MAX_COMPLETED {
                completed.pop_front();
            }
        }
    }

    /// The containerizer's containers, with what the daemon registered of their tasks.
    fn live(&self) -> Vec<ContainerView> {
        let tasks = self.tasks.read().unwrap_or_else(PoisonError::into_inner);
        self.containerizer
            .containers()
            .into_iter()
            .filter_map(|id| self.containerizer.record(&id))
            .map(|r| {
                let meta = tasks.get(&r.task_id);
                view_of(r, meta)
            })
            .collect()
    }
}

/// A container's record as the HTTP API shows it, with its task's framework and name.
fn view_of(r: ContainerCheckpoint, meta: Option<&TaskMeta>) -> ContainerView {
    let meta = meta.cloned().unwrap_or_default();
    let mut resources = Resources::new();
    let mb = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    for (name, value) in [
        ("cpus", r.limits.cpus),
        ("mem", mb(r.limits.mem_bytes)),
        ("disk", r.limits.disk_bytes.map_or(0.0, mb)),
    ] {
        resources = resources
            .clone()
            .with_scalar(name, value)
            .unwrap_or(resources);
    }
    ContainerView {
        task_state: task_state(r.state, r.kill_requested, r.termination.as_ref()),
        task_name: if meta.name.is_empty() {
            r.task_id.as_str().to_string()
        } else {
            meta.name
        },
        framework_id: meta.framework_id,
        container_id: r.container_id,
        task_id: r.task_id,
        state: r.state,
        resources,
        sandbox: r.sandbox,
        termination: r.termination,
    }
}

/// The task state Mesos would report for a container in `state`.
fn task_state(state: ContainerState, kill_requested: bool, t: Option<&Termination>) -> TaskState {
    match (t, state) {
        (Some(t), _) => t.state,
        (None, _) if kill_requested => TaskState::Killing,
        (None, ContainerState::Running | ContainerState::Destroying) => TaskState::Running,
        (None, _) => TaskState::Starting,
    }
}

impl AgentView for ContainerizerView {
    fn containers(&self) -> Vec<ContainerView> {
        let mut out = self.live();
        let completed = self
            .completed
            .read()
            .unwrap_or_else(PoisonError::into_inner);
        // A container whose forget failed is still live: list it once.
        let live: HashSet<ContainerId> = out.iter().map(|c| c.container_id.clone()).collect();
        out.extend(
            completed
                .iter()
                .filter(|c| !live.contains(&c.container_id))
                .cloned(),
        );
        out.sort_by(|a, b| a.task_id.as_str().cmp(b.task_id.as_str()));
        out
    }

    fn usage(&self, id: &ContainerId) -> Option<ResourceStatistics> {
        self.containerizer.usage(id).ok()
    }

    fn sandboxes(&self) -> PathBuf {
        self.containerizer.layout().sandboxes()
    }

    fn subscribe(&self) -> mpsc::Receiver<Event> {
        self.containerizer.subscribe()
    }

    fn images(&self) -> Result<Vec<ImageView>, String> {
        let images = self
            .containerizer
            .store()
            .images()
            .map_err(|e| e.to_string())?;
        let mut out: Vec<ImageView> = images
            .into_iter()
            .map(|i| ImageView {
                reference: i.reference.to_string(),
                digest: i.manifest_digest.to_string(),
                layers: i.layers.len(),
                size: i.layers.iter().map(|l| l.size).sum(),
            })
            .collect();
        out.sort_by(|a, b| a.reference.cmp(&b.reference));
        Ok(out)
    }
}

/// What recovery found at start, for `/metrics`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RecoveryStats {
    pub adopted: usize,
    pub terminated: usize,
    pub quarantined: usize,
    pub orphans: usize,
}

impl From<&Recovery> for RecoveryStats {
    fn from(r: &Recovery) -> Self {
        Self {
            adopted: r.adopted.len(),
            terminated: r.terminated.len(),
            quarantined: r.quarantined.len(),
            orphans: r.orphans.len(),
        }
    }
}

/// The agent's identity and resources, as `/state` and the metrics show them.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentInfo {
    /// The agent id the master assigned (empty before registration).
    pub id: String,
    pub hostname: String,
    /// Mesos's libprocess pid, `slave(1)@<ip>:<port>`.
    pub pid: String,
    /// What the node measured.
    pub capacity: NodeCapacity,
    /// What the agent offers (capacity minus reservations, plus ports).
    pub resources: Resources,
    pub attributes: BTreeMap<String, String>,
    pub start_time: SystemTime,
    pub recovery: RecoveryStats,
}
