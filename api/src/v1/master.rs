//! The v1 operator API (`include/mesos/v1/master/master.proto`, `docs/operator-http-api.md`):
//! the [`Call`]s an operator POSTs to `/api/v1`, the [`Response`]s the master returns, and
//! the [`Event`]s of a SUBSCRIBE stream. Only the calls Cairn serves are modelled; other call
//! types fail to parse, naming the value.

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, FrameworkId};
use crate::resources::Resource;
use crate::task_state::TaskState;
use crate::v1::mesos::{
    AgentInfo, FrameworkInfo, MasterInfo, Offer, QuotaConfig, Task, TaskStatus, TimeInfo,
    WeightInfo,
};

/// `master::Call.Type` (the subset Cairn serves).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallType {
    Unknown,
    GetHealth,
    GetFlags,
    GetVersion,
    GetMetrics,
    GetState,
    GetAgents,
    GetFrameworks,
    GetExecutors,
    GetTasks,
    GetRoles,
    GetWeights,
    UpdateWeights,
    GetMaster,
    GetQuota,
    UpdateQuota,
    Teardown,
    Subscribe,
}

/// `master::Call.UpdateWeights`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UpdateWeights {
    #[serde(default)]
    pub weight_infos: Vec<WeightInfo>,
}

/// `master::Call.UpdateQuota`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct UpdateQuota {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    #[serde(default)]
    pub quota_configs: Vec<QuotaConfig>,
}

/// `master::Call.Teardown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Teardown {
    pub framework_id: FrameworkId,
}

/// `master::Call`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    #[serde(rename = "type")]
    pub kind: CallType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_weights: Option<UpdateWeights>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_quota: Option<UpdateQuota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub teardown: Option<Teardown>,
}

impl Call {
    pub fn new(kind: CallType) -> Self {
        Self {
            kind,
            update_weights: None,
            update_quota: None,
            teardown: None,
        }
    }
}

/// `Response.GetHealth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GetHealth {
    pub healthy: bool,
}

/// `VersionInfo`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VersionInfo {
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_date: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub git_sha: Option<String>,
}

/// `Response.GetVersion`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetVersion {
    pub version_info: VersionInfo,
}

/// `Response.GetAgents.Agent`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Agent {
    pub agent_info: AgentInfo,
    pub active: bool,
    #[serde(default)]
    pub deactivated: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_time: Option<TimeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reregistered_time: Option<TimeInfo>,
    #[serde(default)]
    pub total_resources: Vec<Resource>,
    #[serde(default)]
    pub allocated_resources: Vec<Resource>,
    #[serde(default)]
    pub offered_resources: Vec<Resource>,
}

/// `Response.GetAgents`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetAgents {
    #[serde(default)]
    pub agents: Vec<Agent>,
    #[serde(default)]
    pub recovered_agents: Vec<AgentInfo>,
}

/// `Response.GetFrameworks.Framework`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Framework {
    pub framework_info: FrameworkInfo,
    pub active: bool,
    pub connected: bool,
    #[serde(default)]
    pub recovered: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_time: Option<TimeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reregistered_time: Option<TimeInfo>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unregistered_time: Option<TimeInfo>,
    #[serde(default)]
    pub offers: Vec<Offer>,
    #[serde(default)]
    pub allocated_resources: Vec<Resource>,
    #[serde(default)]
    pub offered_resources: Vec<Resource>,
}

/// `Response.GetFrameworks`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetFrameworks {
    #[serde(default)]
    pub frameworks: Vec<Framework>,
    #[serde(default)]
    pub completed_frameworks: Vec<Framework>,
}

/// `Response.GetTasks`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetTasks {
    #[serde(default)]
    pub pending_tasks: Vec<Task>,
    #[serde(default)]
    pub tasks: Vec<Task>,
    #[serde(default)]
    pub unreachable_tasks: Vec<Task>,
    #[serde(default)]
    pub completed_tasks: Vec<Task>,
    #[serde(default)]
    pub orphan_tasks: Vec<Task>,
}

/// `Response.GetExecutors` (Cairn runs command tasks only: always empty).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GetExecutors {
    #[serde(default)]
    pub executors: Vec<serde_json::Value>,
    #[serde(default)]
    pub orphan_executors: Vec<serde_json::Value>,
}

/// `Response.GetState`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetState {
    pub get_tasks: GetTasks,
    pub get_executors: GetExecutors,
    pub get_frameworks: GetFrameworks,
    pub get_agents: GetAgents,
}

/// `Role`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Role {
    pub name: String,
    pub weight: f64,
    #[serde(default)]
    pub frameworks: Vec<FrameworkId>,
    #[serde(default)]
    pub resources: Vec<Resource>,
}

/// `Response.GetRoles`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetRoles {
    #[serde(default)]
    pub roles: Vec<Role>,
}

/// `Response.GetWeights`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetWeights {
    #[serde(default)]
    pub weight_infos: Vec<WeightInfo>,
}

/// `QuotaStatus`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct QuotaStatus {
    #[serde(default)]
    pub configs: Vec<QuotaConfig>,
}

/// `Response.GetQuota`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetQuota {
    pub status: QuotaStatus,
}

/// `Response.GetMaster`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GetMaster {
    pub master_info: MasterInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elected_time: Option<f64>,
}

/// `Flag`: one of the master's settings, as GET_FLAGS lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Flag {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

/// `Response.GetFlags`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GetFlags {
    #[serde(default)]
    pub flags: Vec<Flag>,
}

/// `Metric`: one value of the metrics snapshot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// `Response.GetMetrics`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct GetMetrics {
    #[serde(default)]
    pub metrics: Vec<Metric>,
}

/// `master::Response`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Response {
    #[serde(rename = "type")]
    pub kind: CallType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_health: Option<GetHealth>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_version: Option<GetVersion>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_state: Option<GetState>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_agents: Option<GetAgents>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_frameworks: Option<GetFrameworks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_executors: Option<GetExecutors>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_tasks: Option<GetTasks>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_roles: Option<GetRoles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_weights: Option<GetWeights>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_master: Option<GetMaster>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_quota: Option<GetQuota>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_flags: Option<GetFlags>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub get_metrics: Option<GetMetrics>,
}

impl Response {
    /// A response of `kind` with no body set; fill in the one field for the type.
    pub fn new(kind: CallType) -> Self {
        Self {
            kind,
            get_health: None,
            get_version: None,
            get_state: None,
            get_agents: None,
            get_frameworks: None,
            get_executors: None,
            get_tasks: None,
            get_roles: None,
            get_weights: None,
            get_master: None,
            get_quota: None,
            get_flags: None,
            get_metrics: None,
        }
    }
}

/// `master::Event.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Unknown,
    Subscribed,
    TaskAdded,
    TaskUpdated,
    AgentAdded,
    AgentRemoved,
    FrameworkAdded,
    FrameworkUpdated,
    FrameworkRemoved,
    Heartbeat,
}

/// `Event.Subscribed`: the first event of a stream, with the whole state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    pub get_state: GetState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_seconds: Option<f64>,
}

/// `Event.TaskAdded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskAdded {
    pub task: Task,
}

/// `Event.TaskUpdated`: `status` is the update that moved the task, `state` its state now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskUpdated {
    pub framework_id: FrameworkId,
    pub status: TaskStatus,
    pub state: TaskState,
}

/// `Event.AgentAdded`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentAdded {
    pub agent: Agent,
}

/// `Event.AgentRemoved`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRemoved {
    pub agent_id: AgentId,
}

/// `Event.FrameworkAdded` and `Event.FrameworkUpdated`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameworkEvent {
    pub framework: Framework,
}

/// `Event.FrameworkRemoved`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FrameworkRemoved {
    pub framework_info: FrameworkInfo,
}

/// `master::Event`: one record of an operator SUBSCRIBE stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Subscribed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_added: Option<TaskAdded>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_updated: Option<TaskUpdated>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_added: Option<AgentAdded>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_removed: Option<AgentRemoved>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_added: Option<FrameworkEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_updated: Option<FrameworkEvent>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_removed: Option<FrameworkRemoved>,
}

impl Event {
    fn of(kind: EventType) -> Self {
        Self {
            kind,
            subscribed: None,
            task_added: None,
            task_updated: None,
            agent_added: None,
            agent_removed: None,
            framework_added: None,
            framework_updated: None,
            framework_removed: None,
        }
    }

    pub fn subscribed(get_state: GetState, heartbeat_interval_seconds: f64) -> Self {
        Self {
            subscribed: Some(Subscribed {
                get_state,
                heartbeat_interval_seconds: Some(heartbeat_interval_seconds),
            }),
            ..Self::of(EventType::Subscribed)
        }
    }

    pub fn heartbeat() -> Self {
        Self::of(EventType::Heartbeat)
    }

    pub fn task_added(task: Task) -> Self {
        Self {
            task_added: Some(TaskAdded { task }),
            ..Self::of(EventType::TaskAdded)
        }
    }

    pub fn task_updated(framework_id: FrameworkId, status: TaskStatus, state: TaskState) -> Self {
        Self {
            task_updated: Some(TaskUpdated {
                framework_id,
                status,
                state,
            }),
            ..Self::of(EventType::TaskUpdated)
        }
    }

    pub fn agent_added(agent: Agent) -> Self {
        Self {
            agent_added: Some(AgentAdded { agent }),
            ..Self::of(EventType::AgentAdded)
        }
    }

    pub fn agent_removed(agent_id: AgentId) -> Self {
        Self {
            agent_removed: Some(AgentRemoved { agent_id }),
            ..Self::of(EventType::AgentRemoved)
        }
    }

    pub fn framework_added(framework: Framework) -> Self {
        Self {
            framework_added: Some(FrameworkEvent { framework }),
            ..Self::of(EventType::FrameworkAdded)
        }
    }

    pub fn framework_updated(framework: Framework) -> Self {
        Self {
            framework_updated: Some(FrameworkEvent { framework }),
            ..Self::of(EventType::FrameworkUpdated)
        }
    }

    pub fn framework_removed(framework_info: FrameworkInfo) -> Self {
        Self {
            framework_removed: Some(FrameworkRemoved { framework_info }),
            ..Self::of(EventType::FrameworkRemoved)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn calls_and_responses_use_mesos_names() {
        let call: Call = serde_json::from_value(json!({"type": "UPDATE_WEIGHTS",
            "update_weights": {"weight_infos": [{"role": "a", "weight": 3.0}]}}))
        .unwrap();
        assert_eq!(call.update_weights.unwrap().weight_infos[0].weight, 3.0);
        let mut r = Response::new(CallType::GetHealth);
        r.get_health = Some(GetHealth { healthy: true });
        assert_eq!(
            serde_json::to_value(r).unwrap(),
            json!({"type": "GET_HEALTH", "get_health": {"healthy": true}})
        );
        let quota: Call = serde_json::from_value(json!({"type": "UPDATE_QUOTA", "update_quota":
            {"quota_configs": [{"role": "r", "guarantees": {"cpus": {"value": 1}}, "limits": {}}]}}))
        .unwrap();
        assert_eq!(quota.update_quota.unwrap().quota_configs[0].role, "r");
    }
}
