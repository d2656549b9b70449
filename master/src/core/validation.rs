//! Task validation, following Mesos's `master/validation.cpp` (`task::validate`): a problem
//! becomes a TASK_ERROR update with REASON_TASK_INVALID and a message naming it, and never
//! affects other tasks.

use std::collections::{BTreeMap, BTreeSet};

use cairn_api::v1::mesos::{ContainerType, TaskInfo};
use cairn_api::{AgentId, FrameworkId, Reason, Resources, TaskId};

use super::tasks::TaskEntry;

/// Why a task is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskProblem {
    pub reason: Reason,
    pub message: String,
}

fn invalid(message: String) -> TaskProblem {
    TaskProblem {
        reason: Reason::TaskInvalid,
        message,
    }
}

fn validate_id(id: &TaskId) -> Result<(), TaskProblem> {
    let v = &id.value;
    if v.is_empty() {
        return Err(invalid("TaskID must not be empty".into()));
    }
    if v.len() > 255 {
        return Err(invalid(format!(
            "TaskID '{v}' is longer than 255 characters"
        )));
    }
    if v == "." || v == ".." {
        return Err(invalid(format!("TaskID '{v}' is disallowed")));
    }
    if v.contains('/') || v.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(format!(
            "TaskID '{v}' contains '/', whitespace or control characters"
        )));
    }
    Ok(())
}

/// Checks `task` for launch on `agent` with `available` resources left in the offers, and
/// returns its resources.
///
/// # Errors
/// The first problem found, with Mesos's wording where Mesos has one.
pub fn validate_task(
    task: &TaskInfo,
    framework: &FrameworkId,
    agent: &AgentId,
    available: &Resources,
    known: &BTreeMap<(FrameworkId, TaskId), TaskEntry>,
    launching: &BTreeSet<TaskId>,
) -> Result<Resources, TaskProblem> {
    validate_id(&task.task_id)?;
    if known.contains_key(&(framework.clone(), task.task_id.clone()))
        || launching.contains(&task.task_id)
    {
        return Err(invalid(format!("Task has duplicate ID: {}", task.task_id)));
    }
    if &task.agent_id != agent {
        return Err(invalid(format!(
            "Task uses invalid agent: {} (the offers are for agent {agent})",
            task.agent_id
        )));
    }
    if task.executor.is_some() {
        return Err(invalid(
            "Custom executors are not supported: Cairn runs the task's CommandInfo or image \
             itself (remove 'executor')"
                .into(),
        ));
    }
    let image = task.container.as_ref().and_then(|c| c.image_name());
    if let Some(c) = &task.container {
        if c.kind == ContainerType::Mesos
            && c.mesos.as_ref().and_then(|m| m.image.as_ref()).is_some()
            && image.is_none_or(str::is_empty)
        {
            return Err(invalid(
                "'ContainerInfo.mesos.image' must name a Docker image ('docker.name')".into(),
            ));
        }
        if c.kind == ContainerType::Docker && image.is_none_or(str::is_empty) {
            return Err(invalid(
                "'ContainerInfo.docker.image' must be set for a DOCKER container".into(),
            ));
        }
    }
    match &task.command {
        None if image.is_none() => {
            return Err(invalid(
                "Task should have at least one of CommandInfo or a container image present".into(),
            ))
        }
        Some(cmd)
            if cmd.shell.unwrap_or(true)
                && cmd.value.as_deref().is_none_or(str::is_empty)
                && image.is_none() =>
        {
            return Err(invalid(
                "'CommandInfo.value' must be set when 'CommandInfo.shell' is true".into(),
            ))
        }
        _ => {}
    }
    if let Some(d) = task.kill_policy.and_then(|k| k.grace_period) {
        if d.nanoseconds < 0 {
            return Err(invalid(
                "Task's 'kill_policy.grace_period' must be non-negative".into(),
            ));
        }
    }
    if task.max_completion_time.is_some_and(|d| d.nanoseconds < 0) {
        return Err(invalid(
            "Task's 'max_completion_time' must be non-negative".into(),
        ));
    }
    let resources = Resources::from_wire(&task.resources)
        .map_err(|e| invalid(format!("Task uses invalid resources: {e}")))?;
    if resources.cpus() <= 0.0 && resources.mem_mb() <= 0.0 {
        return Err(invalid(format!(
            "Task {} uses no cpus and no mem: it must ask for some",
            task.task_id
        )));
    }
    if !available.contains(&resources) {
        return Err(invalid(format!(
            "Task {} attempted to use {resources} which is greater than offered {available}",
            task.task_id
        )));
    }
    Ok(resources)
}
