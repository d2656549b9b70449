//! The v1 scheduler API (`include/mesos/v1/scheduler/scheduler.proto`,
//! `docs/scheduler-http-api.md`): the [`Call`]s a framework POSTs to `/api/v1/scheduler` and
//! the [`Event`]s the master streams back on the SUBSCRIBE connection in RecordIO.
//!
//! Both are modelled as the proto is: a `type` plus one optional sub-message per type, so
//! the JSON is exactly Mesos's. [`Call::validate`] checks what Mesos's
//! `scheduler::validation::validate` checks (the sub-message for the type is present, a
//! `framework_id` on every call but SUBSCRIBE) and names the missing field.

use serde::{Deserialize, Serialize};

use crate::ids::{AgentId, FrameworkId, OfferId, TaskId};
use crate::v1::mesos::{
    ExecutorId, Filters, FrameworkInfo, MasterInfo, Offer, TaskInfo, TaskStatus,
};

/// `Call.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum CallType {
    Unknown,
    Subscribe,
    Teardown,
    Accept,
    Decline,
    AcceptInverseOffers,
    DeclineInverseOffers,
    Revive,
    Kill,
    Shutdown,
    Acknowledge,
    AcknowledgeOperationStatus,
    Reconcile,
    ReconcileOperations,
    Message,
    Request,
    Suppress,
    UpdateFramework,
}

/// `Call.Subscribe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribe {
    pub framework_info: FrameworkInfo,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// Roles whose offers are suppressed from the start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_roles: Vec<String>,
}

/// `Offer.Operation.Type` (only LAUNCH and LAUNCH_GROUP are carried out; the others are
/// refused with a message).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum OperationType {
    Unknown,
    Launch,
    LaunchGroup,
    Reserve,
    Unreserve,
    Create,
    Destroy,
    GrowVolume,
    ShrinkVolume,
    CreateDisk,
    DestroyDisk,
}

/// `Offer.Operation.Launch`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Launch {
    #[serde(default)]
    pub task_infos: Vec<TaskInfo>,
}

/// `Offer.Operation.LaunchGroup`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LaunchGroup {
    pub executor: crate::v1::mesos::ExecutorInfo,
    pub task_group: crate::v1::mesos::TaskGroupInfo,
}

/// `Offer.Operation`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Operation {
    #[serde(rename = "type")]
    pub kind: OperationType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch: Option<Launch>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub launch_group: Option<LaunchGroup>,
}

/// `Call.Accept`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Accept {
    #[serde(default)]
    pub offer_ids: Vec<OfferId>,
    #[serde(default)]
    pub operations: Vec<Operation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
}

/// `Call.Decline`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Decline {
    #[serde(default)]
    pub offer_ids: Vec<OfferId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub filters: Option<Filters>,
}

/// `Call.Revive` / `Call.Suppress`: no roles means all the framework's roles.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Roles {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

/// `Call.Kill`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kill {
    pub task_id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
}

/// `Call.Shutdown`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shutdown {
    pub executor_id: ExecutorId,
    pub agent_id: AgentId,
}

/// `Call.Acknowledge`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Acknowledge {
    pub agent_id: AgentId,
    pub task_id: TaskId,
    /// Base64, as in the status update.
    pub uuid: String,
}

/// `Call.Reconcile.Task`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileTask {
    pub task_id: TaskId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
}

/// `Call.Reconcile`: no tasks means implicit reconciliation (all the framework's tasks).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Reconcile {
    #[serde(default)]
    pub tasks: Vec<ReconcileTask>,
}

/// `Call.Message` (scheduler to executor) and `Event.Message` (executor to scheduler).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    pub agent_id: AgentId,
    pub executor_id: ExecutorId,
    /// Base64.
    pub data: String,
}

/// `Call.UpdateFramework`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UpdateFramework {
    pub framework_info: FrameworkInfo,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub suppressed_roles: Vec<String>,
}

/// `Call`: one request to `/api/v1/scheduler`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Call {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framework_id: Option<FrameworkId>,
    #[serde(rename = "type")]
    pub kind: CallType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribe: Option<Subscribe>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accept: Option<Accept>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decline: Option<Decline>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revive: Option<Roles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suppress: Option<Roles>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kill: Option<Kill>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shutdown: Option<Shutdown>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub acknowledge: Option<Acknowledge>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reconcile: Option<Reconcile>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_framework: Option<UpdateFramework>,
}

/// Why a well-formed JSON call is not a valid call.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CallInvalid(pub String);

impl Call {
    /// A call of `kind` with no sub-message set.
    pub fn new(kind: CallType, framework_id: Option<FrameworkId>) -> Self {
        Self {
            framework_id,
            kind,
            subscribe: None,
            accept: None,
            decline: None,
            revive: None,
            suppress: None,
            kill: None,
            shutdown: None,
            acknowledge: None,
            reconcile: None,
            message: None,
            update_framework: None,
        }
    }

    /// Mesos's structural validation of a scheduler call (`master/validation.cpp`,
    /// `scheduler::call::validate`), with its messages.
    ///
    /// # Errors
    /// The first problem found.
    pub fn validate(&self) -> Result<(), CallInvalid> {
        let missing = |field: &str| Err(CallInvalid(format!("Expecting '{field}' to be present")));
        if self.kind == CallType::Subscribe {
            let Some(sub) = &self.subscribe else {
                return missing("subscribe");
            };
            if let (Some(a), Some(b)) = (&self.framework_id, &sub.framework_info.id) {
                if a != b {
                    return Err(CallInvalid(
                        "'framework_id' differs from 'subscribe.framework_info.id'".into(),
                    ));
                }
            }
            return Ok(());
        }
        if self.framework_id.is_none() {
            return missing("framework_id");
        }
        match self.kind {
            CallType::Accept if self.accept.is_none() => missing("accept"),
            CallType::Decline if self.decline.is_none() => missing("decline"),
            CallType::Kill if self.kill.is_none() => missing("kill"),
            CallType::Shutdown if self.shutdown.is_none() => missing("shutdown"),
            CallType::Acknowledge if self.acknowledge.is_none() => missing("acknowledge"),
            CallType::Message if self.message.is_none() => missing("message"),
            CallType::UpdateFramework if self.update_framework.is_none() => {
                missing("update_framework")
            }
            CallType::Unknown => Err(CallInvalid("Expecting 'type' to be present".into())),
            _ => Ok(()),
        }
    }
}

/// `Event.Type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum EventType {
    Unknown,
    Subscribed,
    Offers,
    InverseOffers,
    Rescind,
    RescindInverseOffer,
    Update,
    UpdateOperationStatus,
    Message,
    Failure,
    Error,
    Heartbeat,
}

/// `Event.Subscribed`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscribed {
    pub framework_id: FrameworkId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub heartbeat_interval_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master_info: Option<MasterInfo>,
}

/// `Event.Offers`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Offers {
    #[serde(default)]
    pub offers: Vec<Offer>,
}

/// `Event.Rescind`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rescind {
    pub offer_id: OfferId,
}

/// `Event.Update`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Update {
    pub status: TaskStatus,
}

/// `Event.Failure`: an agent (or an executor on it) failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Failure {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<AgentId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub executor_id: Option<ExecutorId>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<i32>,
}

/// `Event.Error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEvent {
    pub message: String,
}

/// `Event`: one record on the SUBSCRIBE stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    #[serde(rename = "type")]
    pub kind: EventType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subscribed: Option<Subscribed>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offers: Option<Offers>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rescind: Option<Rescind>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update: Option<Update>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<Failure>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorEvent>,
}

impl Event {
    fn of(kind: EventType) -> Self {
        Self {
            kind,
            subscribed: None,
            offers: None,
            rescind: None,
            update: None,
            message: None,
            failure: None,
            error: None,
        }
    }

    pub fn subscribed(s: Subscribed) -> Self {
        Self {
            subscribed: Some(s),
            ..Self::of(EventType::Subscribed)
        }
    }

    pub fn offers(offers: Vec<Offer>) -> Self {
        Self {
            offers: Some(Offers { offers }),
            ..Self::of(EventType::Offers)
        }
    }

    pub fn rescind(offer_id: OfferId) -> Self {
        Self {
            rescind: Some(Rescind { offer_id }),
            ..Self::of(EventType::Rescind)
        }
    }

    pub fn update(status: TaskStatus) -> Self {
        Self {
            update: Some(Update { status }),
            ..Self::of(EventType::Update)
        }
    }

    pub fn message(message: Message) -> Self {
        Self {
            message: Some(message),
            ..Self::of(EventType::Message)
        }
    }

    pub fn failure(failure: Failure) -> Self {
        Self {
            failure: Some(failure),
            ..Self::of(EventType::Failure)
        }
    }

    pub fn error(message: impl Into<String>) -> Self {
        Self {
            error: Some(ErrorEvent {
                message: message.into(),
            }),
            ..Self::of(EventType::Error)
        }
    }

    pub fn heartbeat() -> Self {
        Self::of(EventType::Heartbeat)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn accept_with_launch_parses_from_mesos_json() {
        let call: Call = serde_json::from_value(json!({
            "framework_id": {"value": "F1"}, "type": "ACCEPT",
            "accept": {"offer_ids": [{"value": "O1"}],
                       "operations": [{"type": "LAUNCH", "launch": {"task_infos": [
                           {"name": "t", "task_id": {"value": "t1"}, "agent_id": {"value": "S1"},
                            "resources": [], "command": {"value": "true"}}]}}],
                       "filters": {"refuse_seconds": 30.0}}
        }))
        .unwrap();
        call.validate().unwrap();
        let accept = call.accept.unwrap();
        assert_eq!(accept.filters.unwrap().refuse_seconds, Some(30.0));
        assert_eq!(accept.operations[0].kind, OperationType::Launch);
    }

    #[test]
    fn unknown_call_types_are_refused_by_name() {
        let err = serde_json::from_value::<Call>(json!({"type": "FLY"})).unwrap_err();
        assert!(err.to_string().contains("FLY"), "{err}");
    }

    #[test]
    fn validation_names_the_missing_field() {
        let call = Call::new(CallType::Kill, Some(FrameworkId::new("F")));
        assert_eq!(
            call.validate().unwrap_err().0,
            "Expecting 'kill' to be present"
        );
        let call = Call::new(CallType::Revive, None);
        assert_eq!(
            call.validate().unwrap_err().0,
            "Expecting 'framework_id' to be present"
        );
    }

    #[test]
    fn events_write_mesos_json() {
        assert_eq!(
            serde_json::to_value(Event::heartbeat()).unwrap(),
            json!({"type": "HEARTBEAT"})
        );
        assert_eq!(
            serde_json::to_value(Event::rescind(OfferId::new("O1"))).unwrap(),
            json!({"type": "RESCIND", "rescind": {"offer_id": {"value": "O1"}}})
        );
        assert_eq!(
            serde_json::to_value(Event::error("bad")).unwrap(),
            json!({"type": "ERROR", "error": {"message": "bad"}})
        );
    }
}
