//! The agent's core: turns the master's events into containerizer calls and containerizer
//! events into checkpointed status updates. [`crate::master_link`] drives it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};
use std::time::Duration;

use cairn_api::protocol::{AgentEvent, AgentEventType, LaunchTasks, Register};
use cairn_api::v1::mesos::{Attribute, TaskInfo};
use cairn_api::{
    AgentId, ContainerId, FrameworkId, Reason, Resource, Resources, TaskId, TaskState,
};
use tokio::sync::watch;

use crate::checkpoint::{self, Layout};
use crate::containerizer::{Containerizer, Event, LaunchRequest, TaskCommand};
use crate::http::{AgentHttpState, ContainerizerView, TaskMeta};
use crate::master_link::AgentCore;
use crate::status::{Acked, StatusUpdateManager};

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// See the module docs.
#[derive(Debug)]
pub struct Agent {
    pub(super) containerizer: Arc<Containerizer>,
    pub(super) status: StatusUpdateManager,
    pub(super) view: Arc<ContainerizerView>,
    /// What the agent offers (re-measured by the daemon).
    pub(super) offer: RwLock<Resources>,
    pub(super) hostname: String,
    /// `host:port` of the HTTP API.
    pub(super) address: String,
    pub(super) attributes: Vec<(String, String)>,
    pub(super) boot_id: String,
    pub(super) kill_grace: Duration,
    /// Where the agent id is checkpointed.
    pub(super) layout: Layout,
    /// The HTTP API's view of the agent (its id after registration).
    pub(super) http: AgentHttpState,
    /// Tasks killed before their container existed.
    pub(super) kill_pending: Mutex<HashSet<TaskId>>,
    /// Tokio runtime for blocking launches.
    pub(super) runtime: tokio::runtime::Handle,
    /// Set on `SHUTDOWN` without a framework: the agent was removed.
    pub(super) stop: watch::Sender<bool>,
}

/// The request the containerizer runs for `task`, or why it cannot run.
pub fn launch_request(task: &TaskInfo) -> Result<LaunchRequest, String> {
    if task.executor.is_some() {
        return Err("custom executors are not supported; give the task a command".into());
    }
    let resources = Resources::from_wire(&task.resources).map_err(|e| e.to_string())?;
    let mut request = LaunchRequest::new(task.task_id.as_str(), resources);
    request.image = task
        .container
        .as_ref()
        .and_then(|c| c.image_name())
        .map(str::to_string);
    if let Some(cmd) = &task.command {
        request.command = match (cmd.shell.unwrap_or(true), &cmd.value) {
            (true, Some(line)) => Some(TaskCommand::Shell(line.clone())),
            (false, _) if !cmd.arguments.is_empty() => {
                Some(TaskCommand::Argv(cmd.arguments.clone()))
            }
            (false, Some(program)) => Some(TaskCommand::Argv(vec![program.clone()])),
            (_, None) => None,
        };
        if let Some(env) = &cmd.environment {
            for v in &env.variables {
                request
                    .env
                    .insert(v.name.clone(), v.value.clone().unwrap_or_default());
            }
        }
    }
    if request.image.is_none() && request.command.is_none() {
        return Err("the task has neither an image nor a command".into());
    }
    Ok(request)
}

impl Agent {
    /// Records a containerizer event as a status update (checkpointed before it is sent).
    pub(super) fn on_event(&self, event: &Event) {
        if let Event::Task {
            container,
            task,
            state,
            reason,
            message,
        } = event
        {
            if let Err(e) = self
                .status
                .record(task, Some(container), *state, *reason, message)
            {
                tracing::error!(task = %task.as_str(), "cannot checkpoint a status update: {e}");
            }
        }
    }

    /// After a restart: brings every status stream in line with what the containerizer
    /// recovered. Tasks that ended while the agent was down get their terminal update (with
    /// the real exit status); running ones get RUNNING if it was never recorded; tasks whose
    /// container never came to be end TASK_FAILED; running containers no stream knows
    /// (orphans) are destroyed. Returns how many orphans it destroyed.
    pub(super) fn reconcile(&self) -> usize {
        let mut by_task: HashMap<TaskId, ContainerId> = HashMap::new();
        for id in self.containerizer.containers() {
            if let Some(r) = self.containerizer.record(&id) {
                by_task.insert(r.task_id, id);
            }
        }
        let mut known = HashSet::new();
        for stream in self.status.streams() {
            let task = stream.task.task_id.clone();
            self.view.register_task(
                task.clone(),
                TaskMeta {
                    framework_id: stream.framework_id.as_str().to_string(),
                    name: stream.task.name.clone(),
                },
            );
            let container = stream
                .container_id
                .clone()
                .or_else(|| by_task.get(&task).cloned());
            let result = match container {
                Some(c) if self.containerizer.record(&c).is_some() => {
                    known.insert(c.clone());
                    match self.containerizer.termination(&c) {
                        Some(t) => {
                            self.status
                                .record(&task, Some(&c), t.state, t.reason, &t.message)
                        }
                        None => self
                            .status
                            .record(&task, Some(&c), TaskState::Running, None, ""),
                    }
                }
                _ if stream.is_terminal() => Ok(None),
                _ => self.status.record(
                    &task,
                    None,
                    TaskState::Failed,
                    Some(Reason::ContainerLaunchFailed),
                    "the agent restarted before the task's container was created",
                ),
            };
            if let Err(e) = result {
                tracing::error!(task = %task.as_str(), "cannot checkpoint a status update: {e}");
            }
        }
        let mut orphans = 0;
        for id in self.containerizer.containers() {
            if known.contains(&id) {
                continue;
            }
            if self.containerizer.termination(&id).is_some() {
                // Ended, and nobody will acknowledge it any more.
                let _ = self.containerizer.forget(&id);
            } else {
                self.destroy_orphan(&id);
                orphans += 1;
            }
        }
        orphans
    }

    /// Destroys a running container that no task stream knows (the agent died between
    /// launching it and checkpointing its task, or the stream was lost): nothing would ever
    /// report or kill it, and it holds resources the master does not count. Mesos's agent
    /// destroys such orphans on recovery too. Killed at once (no task asked for a grace
    /// period), then forgotten once it ended.
    fn destroy_orphan(&self, id: &ContainerId) {
        let task = self
            .containerizer
            .record(id)
            .map(|r| r.task_id.as_str().to_string())
            .unwrap_or_default();
        tracing::warn!(container = %id.as_str(), %task, "destroying an orphan container: no task stream knows it");
        if let Err(e) = self.containerizer.kill(id, Duration::ZERO) {
            tracing::warn!(container = %id.as_str(), "destroying an orphan: {e}");
            return;
        }
        let containerizer = Arc::clone(&self.containerizer);
        let id = id.clone();
        let spawned = std::thread::Builder::new()
            .name("orphan-destroy".into())
            .spawn(move || {
                if containerizer.wait(&id).is_ok() {
                    if let Err(e) = containerizer.forget(&id) {
                        tracing::warn!(container = %id.as_str(), "forgetting an orphan: {e}");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!("cannot wait for an orphan's end: {e}");
        }
    }

    fn record_or_log(&self, task: &TaskId, state: TaskState, reason: Reason, message: &str) {
        tracing::warn!(task = %task.as_str(), "{state}: {message}");
        if let Err(e) = self.status.record(task, None, state, Some(reason), message) {
            tracing::error!(task = %task.as_str(), "cannot checkpoint a status update: {e}");
        }
    }

    fn launch(self: &Arc<Self>, launch: LaunchTasks) {
        for task in launch.tasks {
            let id = task.task_id.clone();
            match self.status.track(launch.framework_id.clone(), task.clone()) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::warn!(task = %id.as_str(), "duplicate launch ignored");
                    continue;
                }
                Err(e) => {
                    tracing::error!(task = %id.as_str(), "cannot checkpoint the task: {e}");
                    continue;
                }
            }
            self.view.register_task(
                id.clone(),
                TaskMeta {
                    framework_id: launch.framework_id.as_str().to_string(),
                    name: task.name.clone(),
                },
            );
            let request = match launch_request(&task) {
                Ok(r) => r,
                Err(message) => {
                    self.record_or_log(&id, TaskState::Error, Reason::TaskInvalid, &message);
                    continue;
                }
            };
            // `allocated` already counts this task.
            let allocated = self.status.allocated();
            let offer = self
                .offer
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let scalars = |r: &Resources| {
                ["cpus", "mem", "disk"]
                    .iter()
                    .try_fold(Resources::new(), |acc, n| acc.with_scalar(n, r.scalar(n)))
                    .unwrap_or_default()
            };
            if !scalars(&offer).contains(&scalars(&allocated)) {
                let free = scalars(&offer)
                    .checked_minus(&scalars(
                        &allocated
                            .checked_minus(&request.resources)
                            .unwrap_or_default(),
                    ))
                    .unwrap_or_default();
                let message = format!(
                    "the task asks for cpus {} mem {} MB disk {} MB, more than the agent has free \
                     (cpus {} mem {} MB disk {} MB of cpus {} mem {} MB disk {} MB)",
                    request.resources.cpus(),
                    request.resources.mem_mb(),
                    request.resources.disk_mb(),
                    free.cpus(),
                    free.mem_mb(),
                    free.disk_mb(),
                    offer.cpus(),
                    offer.mem_mb(),
                    offer.disk_mb(),
                );
                self.record_or_log(&id, TaskState::Error, Reason::TaskInvalid, &message);
                continue;
            }
            let held = self.status.allocated_except(Some(&id));
            if let Some(conflict) = offer.range_conflict(&held, &request.resources) {
                let message = format!("the task's resources cannot be given: {conflict}");
                self.record_or_log(&id, TaskState::Error, Reason::TaskInvalid, &message);
                continue;
            }
            let agent = Arc::clone(self);
            self.runtime.spawn_blocking(move || {
                let container = agent.containerizer.launch(&request);
                if lock(&agent.kill_pending).remove(&id) {
                    let _ = agent.containerizer.kill(&container, agent.kill_grace);
                }
            });
        }
    }

    fn container_of(&self, task: &TaskId) -> Option<ContainerId> {
        self.status.stream(task).and_then(|s| s.container_id)
    }

    fn kill(&self, task: &TaskId, grace: Duration) {
        match self.container_of(task) {
            Some(c) => {
                if let Err(e) = self.containerizer.kill(&c, grace) {
                    tracing::warn!(task = %task.as_str(), "kill: {e}");
                }
            }
            None if self.status.stream(task).is_some_and(|s| !s.is_terminal()) => {
                lock(&self.kill_pending).insert(task.clone());
            }
            None => tracing::warn!(task = %task.as_str(), "kill: unknown task"),
        }
    }

    fn grace_of(&self, task: &TaskId) -> Duration {
        self.status
            .stream(task)
            .and_then(|s| s.task.kill_policy)
            .and_then(|k| k.grace_period)
            .map_or(self.kill_grace, |d| {
                Duration::from_nanos(u64::try_from(d.nanoseconds).unwrap_or(0))
            })
    }

    /// Kills every task not yet terminal (of `framework`, or all).
    pub(super) fn kill_all(&self, framework: Option<&FrameworkId>) {
        for s in self.status.streams() {
            if !s.is_terminal() && framework.is_none_or(|f| *f == s.framework_id) {
                self.kill(&s.task.task_id, self.grace_of(&s.task.task_id));
            }
        }
    }

    fn acknowledge(&self, task: &TaskId, uuid: &str) {
        match self.status.acknowledge(task, uuid) {
            Ok(Acked::Done(container)) => {
                // The view first: it keeps the ended task's last state (and sandbox) in
                // `/state` once the container is forgotten.
                self.view.forget_task(task, container.as_ref());
                if let Some(c) = container {
                    if let Err(e) = self.containerizer.forget(&c) {
                        tracing::warn!(task = %task.as_str(), "forget: {e}");
                    }
                }
            }
            Ok(_) => {}
            Err(e) => tracing::error!(task = %task.as_str(), "cannot checkpoint an ack: {e}"),
        }
    }

    fn handle_event(self: &Arc<Self>, event: AgentEvent) {
        match event.kind {
            AgentEventType::Launch => {
                if let Some(l) = event.launch {
                    self.launch(l);
                }
            }
            AgentEventType::Kill => {
                if let Some(k) = event.kill {
                    self.kill(&k.task_id, self.grace_of(&k.task_id));
                }
            }
            AgentEventType::Acknowledge => {
                if let Some(a) = event.acknowledge {
                    self.acknowledge(&a.task_id, &a.uuid);
                }
            }
            AgentEventType::Shutdown => {
                let s = event
                    .shutdown
                    .unwrap_or_else(|| cairn_api::protocol::ShutdownFramework {
                        framework_id: None,
                        message: String::new(),
                    });
                tracing::warn!(framework = ?s.framework_id, "SHUTDOWN from the master: {}", s.message);
                self.kill_all(s.framework_id.as_ref());
                if s.framework_id.is_none() {
                    let _ = self.stop.send(true);
                }
            }
            AgentEventType::Subscribed | AgentEventType::Heartbeat => {}
        }
    }
}

/// [`AgentCore`] over an `Arc<Agent>` (events need the `Arc` to spawn launches).
#[derive(Debug)]
pub struct Core(pub Arc<Agent>);

impl AgentCore for Core {
    fn registration(&self) -> Register {
        let a = &self.0;
        Register {
            hostname: a.hostname.clone(),
            address: a.address.clone(),
            resources: self.resources(),
            attributes: a
                .attributes
                .iter()
                .map(|(n, v)| Attribute::text(n, v))
                .collect(),
            boot_id: a.boot_id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            tasks: a.status.agent_tasks(),
        }
    }

    fn registered(&self, id: &AgentId) {
        self.0.status.set_agent_id(id.clone());
        if let Err(e) = checkpoint::save_agent_id(&self.0.layout, id) {
            tracing::error!("cannot checkpoint the agent id: {e}");
        }
        self.0.http.update_info(|i| i.id = id.as_str().to_string());
    }

    fn handle(&self, event: AgentEvent) {
        self.0.handle_event(event);
    }

    fn status(&self) -> &StatusUpdateManager {
        &self.0.status
    }

    fn resources(&self) -> Vec<Resource> {
        self.0
            .offer
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .to_wire()
    }
}

/// Attributes as `/state` shows them.
pub(super) fn attribute_map(attrs: &[(String, String)]) -> BTreeMap<String, String> {
    attrs.iter().cloned().collect()
}
