//! The agent <-> master protocol (shared/DESIGN.md, "Agent <-> master").
//!
//! The agent initiates everything, so it works across NAT and through TLS:
//!
//! 1. `POST /api/v1/agent` with [`AgentCall`] `REGISTER` (first start: no agent id) or
//!    `REREGISTER` (restart: its id and the full list of its tasks). The master answers
//!    `200` with [`Registered`] (the agent id, which the master assigns, and the heartbeat
//!    interval).
//! 2. `POST /api/v1/agent` with `SUBSCRIBE` and its agent id: a `200` chunked RecordIO stream
//!    (the framing of the scheduler API, [`crate::recordio`]) of [`AgentEvent`]s: `SUBSCRIBED`,
//!    then `LAUNCH`, `KILL`, `ACKNOWLEDGE`, `SHUTDOWN` and `HEARTBEAT`.
//! 3. `STATUS_UPDATE`, `UPDATE_RESOURCES` and `HEARTBEAT` as separate POSTs, answered `202`.
//!
//! Errors are plain-text bodies with `400` (malformed call), `404` (unknown agent id: register
//! again) or `409` (the agent was marked gone and may not come back).

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, FrameworkId, TaskId};
use crate::resources::Resource;
use crate::task_state::TaskState;
use crate::v1::mesos::{Attribute, FrameworkInfo, MasterInfo, TaskInfo, TaskStatus};

/// The HTTP path of the agent API on the master.
pub const AGENT_API_PATH: &str = "/api/v1/agent";

/// `AgentCall.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentCallType {
    Register,
    Reregister,
    Subscribe,
    StatusUpdate,
    UpdateResources,
    Heartbeat,
}

/// What an agent says about itself when (re)registering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Register {
    pub hostname: String,
    /// `host:port` of the agent's own HTTP API.
    pub address: String,
    /// Total resources the agent offers (Mesos `Resource` JSON).
    pub resources: Vec<Resource>,
    #[serde(default)]
    pub attributes: Vec<Attribute>,
    /// `/proc/sys/kernel/random/boot_id`: a changed boot id means the host rebooted and its
    /// tasks are gone.
    pub boot_id: String,
    /// The agent's Cairn version.
    #[serde(default)]
    pub version: String,
    /// Every task the agent runs (or has finished but not yet had acknowledged), for
    /// reregistration. Empty on first registration.
    #[serde(default)]
    pub tasks: Vec<AgentTask>,
}

/// A task as an agent reports it on reregistration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentTask {
    pub framework_id: FrameworkId,
    pub task: TaskInfo,
    pub state: TaskState,
    /// The latest status, not yet acknowledged, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub latest_status: Option<TaskStatus>,
}

/// `STATUS_UPDATE`: a task's new status, with its `uuid` set (Base64); retried until the
/// master forwards the framework's acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StatusUpdate {
    pub framework_id: FrameworkId,
    pub status: TaskStatus,
}

/// `UPDATE_RESOURCES`: the agent's total changed (re-measured capacity).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateResources {
    pub resources: Vec<Resource>,
}

/// A call from an agent to the master.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentCall {
    #[serde(rename = "type")]
    pub kind: AgentCallType,
    /// Set on every call except `REGISTER`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub register: Option<Register>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_update: Option<StatusUpdate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_resources: Option<UpdateResources>,
}

/// Why an agent call is malformed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct AgentCallInvalid(pub String);

impl AgentCall {
    fn of(kind: AgentCallType, agent_id: Option<AgentId>) -> Self {
        Self {
            kind,
            agent_id,
            register: None,
            status_update: None,
            update_resources: None,
        }
    }

    pub fn register(info: Register) -> Self {
        Self {
            register: Some(info),
            ..Self::of(AgentCallType::Register, None)
        }
    }

    pub fn reregister(agent_id: AgentId, info: Register) -> Self {
        Self {
            register: Some(info),
            ..Self::of(AgentCallType::Reregister, Some(agent_id))
        }
    }

    pub fn subscribe(agent_id: AgentId) -> Self {
        Self::of(AgentCallType::Subscribe, Some(agent_id))
    }

    pub fn status_update(agent_id: AgentId, update: StatusUpdate) -> Self {
        Self {
            status_update: Some(update),
            ..Self::of(AgentCallType::StatusUpdate, Some(agent_id))
        }
    }

    pub fn update_resources(agent_id: AgentId, resources: Vec<Resource>) -> Self {
        Self {
            update_resources: Some(UpdateResources { resources }),
            ..Self::of(AgentCallType::UpdateResources, Some(agent_id))
        }
    }

    pub fn heartbeat(agent_id: AgentId) -> Self {
        Self::of(AgentCallType::Heartbeat, Some(agent_id))
    }

    /// Checks that the call carries what its type needs, naming what is missing.
    ///
    /// # Errors
    /// The first missing field.
    pub fn validate(&self) -> Result<(), AgentCallInvalid> {
        let missing = |f: &str| Err(AgentCallInvalid(format!("expecting '{f}' to be present")));
        if self.kind != AgentCallType::Register && self.agent_id.is_none() {
            return missing("agent_id");
        }
        match self.kind {
            AgentCallType::Register | AgentCallType::Reregister if self.register.is_none() => {
                missing("register")
            }
            AgentCallType::StatusUpdate => match &self.status_update {
                None => missing("status_update"),
                Some(u) if u.status.uuid.is_none() => missing("status_update.status.uuid"),
                Some(_) => Ok(()),
            },
            AgentCallType::UpdateResources if self.update_resources.is_none() => {
                missing("update_resources")
            }
            _ => Ok(()),
        }
    }
}

/// The master's answer to `REGISTER` / `REREGISTER`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Registered {
    pub agent_id: AgentId,
    pub master_info: MasterInfo,
    /// How often the agent must send `HEARTBEAT`; the master marks it unreachable after
    /// its agent timeout without any call.
    pub heartbeat_interval_seconds: f64,
}

/// `AgentEvent.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum AgentEventType {
    Subscribed,
    Launch,
    Kill,
    Acknowledge,
    Shutdown,
    Heartbeat,
}

/// `LAUNCH`: run these tasks for this framework (one task, or a task group).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchTasks {
    pub framework_id: FrameworkId,
    pub framework_info: FrameworkInfo,
    pub tasks: Vec<TaskInfo>,
    /// Whether the tasks are a group (LAUNCH_GROUP): launched together, and when one fails
    /// the others are killed.
    #[serde(default)]
    pub group: bool,
}

/// `KILL`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KillTask {
    pub framework_id: FrameworkId,
    pub task_id: TaskId,
}

/// `ACKNOWLEDGE`: the framework acknowledged the update with this uuid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcknowledgeUpdate {
    pub framework_id: FrameworkId,
    pub task_id: TaskId,
    /// Base64, as in the update.
    pub uuid: String,
}

/// `SHUTDOWN`: kill every task of the framework (or, without a framework, the agent's tasks
/// and stop: the agent was removed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShutdownFramework {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_id: Option<FrameworkId>,
    #[serde(default)]
    pub message: String,
}

/// An event on the agent's subscription stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentEvent {
    #[serde(rename = "type")]
    pub kind: AgentEventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Registered>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<LaunchTasks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<KillTask>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge: Option<AcknowledgeUpdate>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<ShutdownFramework>,
}

impl AgentEvent {
    fn of(kind: AgentEventType) -> Self {
        Self {
            kind,
            subscribed: None,
            launch: None,
            kill: None,
            acknowledge: None,
            shutdown: None,
        }
    }

    pub fn subscribed(r: Registered) -> Self {
        Self {
            subscribed: Some(r),
            ..Self::of(AgentEventType::Subscribed)
        }
    }

    pub fn launch(l: LaunchTasks) -> Self {
        Self {
            launch: Some(l),
            ..Self::of(AgentEventType::Launch)
        }
    }

    pub fn kill(framework_id: FrameworkId, task_id: TaskId) -> Self {
        Self {
            kill: Some(KillTask {
                framework_id,
                task_id,
            }),
            ..Self::of(AgentEventType::Kill)
        }
    }

    pub fn acknowledge(a: AcknowledgeUpdate) -> Self {
        Self {
            acknowledge: Some(a),
            ..Self::of(AgentEventType::Acknowledge)
        }
    }

    pub fn shutdown(framework_id: Option<FrameworkId>, message: impl Into<String>) -> Self {
        Self {
            shutdown: Some(ShutdownFramework {
                framework_id,
                message: message.into(),
            }),
            ..Self::of(AgentEventType::Shutdown)
        }
    }

    pub fn heartbeat() -> Self {
        Self::of(AgentEventType::Heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task_state::Source;
    use serde_json::json;

    #[test]
    fn calls_round_trip_and_validate() {
        let call = AgentCall::register(Register {
            hostname: "n1".into(),
            address: "127.0.0.1:5051".into(),
            resources: vec![],
            attributes: vec![],
            boot_id: "b".into(),
            version: "0.1.0".into(),
            tasks: vec![],
        });
        call.validate().unwrap();
        let text = serde_json::to_string(&call).unwrap();
        assert!(text.starts_with(r#"{"type":"REGISTER""#), "{text}");
        assert_eq!(serde_json::from_str::<AgentCall>(&text).unwrap(), call);

        let status = TaskStatus::new(TaskId::new("t"), TaskState::Running, Source::Executor);
        let update = AgentCall::status_update(
            AgentId::new("S1"),
            StatusUpdate {
                framework_id: FrameworkId::new("F"),
                status,
            },
        );
        assert_eq!(
            update.validate().unwrap_err().0,
            "expecting 'status_update.status.uuid' to be present"
        );
        assert!(AgentCall::heartbeat(AgentId::new("S1")).validate().is_ok());
    }

    #[test]
    fn events_are_tagged_by_type() {
        let e = AgentEvent::kill(FrameworkId::new("F"), TaskId::new("t"));
        assert_eq!(
            serde_json::to_value(e).unwrap(),
            json!({"type": "KILL", "kill": {"framework_id": {"value": "F"}, "task_id": {"value": "t"}}})
        );
    }
}
