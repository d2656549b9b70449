//! Tasks: status updates from agents forwarded to frameworks (with their uuid), kills,
//! acknowledgements forwarded to agents, and reconciliation (explicit and implicit).

use std::time::Instant;

use cairn_api::protocol::{AcknowledgeUpdate, AgentEvent};
use cairn_api::v1::mesos::{TaskInfo, TaskStatus};
use cairn_api::v1::scheduler::{Event, ReconcileTask};
use cairn_api::{AgentId, FrameworkId, Reason, Resources, Source, TaskId, TaskState};

use super::agents::AgentHealth;
use super::{wall_seconds, Master};

/// How many statuses of a task are kept for the APIs.
const MAX_STATUSES: usize = 10;

/// A task the master knows.
#[derive(Debug, Clone)]
pub struct TaskEntry {
    pub framework_id: FrameworkId,
    pub agent_id: AgentId,
    pub info: TaskInfo,
    pub role: String,
    pub resources: Resources,
    pub state: TaskState,
    pub statuses: Vec<TaskStatus>,
    /// The uuid of the latest update that awaits acknowledgement.
    pub latest_uuid: Option<String>,
}

impl Master {
    pub(crate) fn insert_task(
        &mut self,
        fw: FrameworkId,
        agent: AgentId,
        info: TaskInfo,
        role: String,
        resources: Resources,
        state: TaskState,
    ) {
        let key = (fw.clone(), info.task_id.clone());
        self.tasks.insert(
            key.clone(),
            TaskEntry {
                framework_id: fw,
                agent_id: agent,
                info,
                role,
                resources,
                state,
                statuses: Vec::new(),
                latest_uuid: None,
            },
        );
        self.publish_task_added(&key);
    }

    /// Counts a task reaching the terminal `state` (`master/tasks_<state>`).
    pub(crate) fn count_terminal(&mut self, state: TaskState) {
        *self
            .counters
            .tasks_terminal
            .entry(state.as_str())
            .or_default() += 1;
    }

    pub(crate) fn push_completed_task(&mut self, t: TaskEntry) {
        self.completed_tasks.push_back(t);
        while self.completed_tasks.len() > self.cfg.max_completed_tasks {
            self.completed_tasks.pop_front();
        }
    }

    /// Moves a task to `state`; a task leaving the live states gives its resources back.
    pub(crate) fn set_task_state(
        &mut self,
        key: &(FrameworkId, TaskId),
        state: TaskState,
        status: TaskStatus,
        now: Instant,
    ) {
        let Some(t) = self.tasks.get_mut(key) else {
            return;
        };
        let was_terminal = t.state.is_terminal();
        t.state = state;
        t.statuses.push(status);
        if t.statuses.len() > MAX_STATUSES {
            t.statuses.remove(0);
        }
        if !was_terminal && state.is_terminal() {
            let (agent, role, res) = (t.agent_id.clone(), t.role.clone(), t.resources.clone());
            self.allocator
                .recover(&key.0, &agent, &role, &res, None, now);
            self.count_terminal(state);
        }
        self.publish_task_updated(key);
    }

    /// A master-generated update (no uuid: not acknowledged) moving a task to `state`.
    pub(crate) fn master_update(
        &mut self,
        key: &(FrameworkId, TaskId),
        state: TaskState,
        reason: Reason,
        message: &str,
        now: Instant,
    ) {
        let Some(agent) = self.tasks.get(key).map(|t| t.agent_id.clone()) else {
            return;
        };
        let mut status = TaskStatus::new(key.1.clone(), state, Source::Master);
        status.reason = Some(reason);
        status.message = Some(message.to_string());
        status.agent_id = Some(agent);
        status.timestamp = Some(wall_seconds());
        self.set_task_state(key, state, status.clone(), now);
        if state.is_terminal() {
            if let Some(t) = self.tasks.remove(key) {
                self.push_completed_task(t);
            }
        }
        self.send_event(&key.0, Event::update(status));
    }

    /// STATUS_UPDATE from an agent: recorded and forwarded to the framework with its uuid.
    pub(crate) fn status_update(
        &mut self,
        agent: &AgentId,
        fw: FrameworkId,
        mut status: TaskStatus,
        now: Instant,
    ) {
        status.agent_id = Some(agent.clone());
        status.timestamp.get_or_insert_with(wall_seconds);
        let key = (fw.clone(), status.task_id.clone());
        if self.is_completed_framework(&fw) {
            // Nobody will acknowledge it: stop the agent retrying, and stop the task.
            self.counters.invalid_status_updates += 1;
            if let Some(uuid) = status.uuid.clone() {
                self.send_agent(
                    agent,
                    AgentEvent::acknowledge(AcknowledgeUpdate {
                        framework_id: fw.clone(),
                        task_id: key.1.clone(),
                        uuid,
                    }),
                );
            }
            if !status.state.is_terminal() {
                self.send_agent(agent, AgentEvent::kill(fw, key.1));
            }
            return;
        }
        match self.tasks.get_mut(&key) {
            Some(t) if &t.agent_id == agent => {
                t.latest_uuid = status.uuid.clone();
                let state = status.state;
                self.set_task_state(&key, state, status.clone(), now);
                self.counters.valid_status_updates += 1;
            }
            Some(_) => {
                self.counters.invalid_status_updates += 1;
                tracing::warn!(agent = %agent, task = %key.1, "status update from an agent that does not run the task: ignored");
                return;
            }
            None if self.frameworks.contains_key(&fw) => {
                // The task is not known here (yet): still forwarded, the framework decides.
                self.counters.valid_status_updates += 1;
            }
            None => {
                self.counters.invalid_status_updates += 1;
                return;
            }
        }
        self.send_event(&fw, Event::update(status));
    }

    /// ACKNOWLEDGE: forwarded to the agent; a terminal task acknowledged is completed.
    pub(crate) fn acknowledge(
        &mut self,
        fw: &FrameworkId,
        agent: &AgentId,
        task: &TaskId,
        uuid: &str,
        _now: Instant,
    ) {
        let key = (fw.clone(), task.clone());
        if let Some(t) = self.tasks.get_mut(&key) {
            if t.latest_uuid.as_deref() == Some(uuid) {
                t.latest_uuid = None;
                if t.state.is_terminal() {
                    if let Some(t) = self.tasks.remove(&key) {
                        self.push_completed_task(t);
                    }
                }
            }
        }
        self.send_agent(
            agent,
            AgentEvent::acknowledge(AcknowledgeUpdate {
                framework_id: fw.clone(),
                task_id: task.clone(),
                uuid: uuid.to_string(),
            }),
        );
    }

    /// KILL: forwarded to the task's agent; an unknown task gets TASK_LOST (TASK_UNKNOWN for
    /// PARTITION_AWARE frameworks), as Mesos does.
    pub(crate) fn kill(
        &mut self,
        fw: &FrameworkId,
        task: &TaskId,
        agent: Option<&AgentId>,
        _now: Instant,
    ) {
        let key = (fw.clone(), task.clone());
        if let Some(t) = self.tasks.get(&key) {
            if !t.state.is_terminal() {
                let agent = t.agent_id.clone();
                self.send_agent(&agent, AgentEvent::kill(fw.clone(), task.clone()));
            }
            return;
        }
        let partition_aware = self
            .frameworks
            .get(fw)
            .is_some_and(|f| f.info.has_capability("PARTITION_AWARE"));
        let state = if partition_aware {
            TaskState::Unknown
        } else {
            TaskState::Lost
        };
        let mut status = TaskStatus::new(task.clone(), state, Source::Master);
        status.reason = Some(Reason::Reconciliation);
        status.message = Some("Attempted to kill an unknown task".into());
        status.agent_id = agent.cloned();
        status.timestamp = Some(wall_seconds());
        self.send_event(fw, Event::update(status));
    }

    fn reconcile_status(&self, t: &super::TaskEntry) -> TaskStatus {
        let mut status =
            t.statuses.last().cloned().unwrap_or_else(|| {
                TaskStatus::new(t.info.task_id.clone(), t.state, Source::Master)
            });
        status.state = t.state;
        status.source = Some(Source::Master);
        status.reason = Some(Reason::Reconciliation);
        status.message = Some("Reconciliation: Latest task state".into());
        status.agent_id = Some(t.agent_id.clone());
        status.uuid = None;
        status.timestamp = Some(wall_seconds());
        status
    }

    /// RECONCILE: the latest state of the named tasks (explicit) or of all the framework's
    /// tasks (implicit, no tasks named). Reconciliation updates carry no uuid.
    pub(crate) fn reconcile(&mut self, fw: &FrameworkId, tasks: &[ReconcileTask], _now: Instant) {
        let mut updates = Vec::new();
        if tasks.is_empty() {
            for (k, t) in &self.tasks {
                if &k.0 == fw {
                    updates.push(self.reconcile_status(t));
                }
            }
        } else {
            let partition_aware = self
                .frameworks
                .get(fw)
                .is_some_and(|f| f.info.has_capability("PARTITION_AWARE"));
            for rt in tasks {
                if let Some(t) = self.tasks.get(&(fw.clone(), rt.task_id.clone())) {
                    updates.push(self.reconcile_status(t));
                    continue;
                }
                // Unknown task: Mesos's answers by what is known of the agent.
                let agent = rt.agent_id.as_ref().and_then(|a| self.agents.get(a));
                let in_registry = |map: &std::collections::BTreeMap<String, f64>| {
                    rt.agent_id
                        .as_ref()
                        .is_some_and(|a| map.contains_key(&a.value))
                };
                let (state, message) = match agent {
                    // Not re-registered since the master recovered: no answer until it does
                    // or the re-registration window closes.
                    None if rt
                        .agent_id
                        .as_ref()
                        .is_some_and(|a| self.awaiting_reregistration(a)) =>
                    {
                        continue
                    }
                    None if in_registry(&self.registry.unreachable) => (
                        TaskState::Unreachable,
                        "Reconciliation: Task is unreachable",
                    ),
                    Some(a) if a.health == AgentHealth::Active => (
                        TaskState::Gone,
                        "Reconciliation: Task is unknown to the agent",
                    ),
                    Some(_) => (
                        TaskState::Unreachable,
                        "Reconciliation: Task is unreachable",
                    ),
                    None => (TaskState::Unknown, "Reconciliation: Task is unknown"),
                };
                let state = if partition_aware {
                    state
                } else {
                    TaskState::Lost
                };
                let mut status = TaskStatus::new(rt.task_id.clone(), state, Source::Master);
                status.reason = Some(Reason::Reconciliation);
                status.message = Some(message.into());
                status.agent_id = rt.agent_id.clone();
                status.timestamp = Some(wall_seconds());
                updates.push(status);
            }
        }
        for s in updates {
            self.send_event(fw, Event::update(s));
        }
    }
}
