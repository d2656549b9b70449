//! The operator event stream (`POST /api/v1` SUBSCRIBE, Mesos's `master::Event`): SUBSCRIBED
//! with the whole GET_STATE, then TASK_ADDED, TASK_UPDATED, AGENT_ADDED, AGENT_REMOVED,
//! FRAMEWORK_ADDED, FRAMEWORK_UPDATED, FRAMEWORK_REMOVED and HEARTBEAT. Each subscriber has a
//! bounded queue like a framework's; one that falls behind is dropped, not buffered
//! (MESOS-7748). Events are only built while someone listens.

use std::collections::BTreeSet;
use std::time::Instant;

use cairn_api::protocol::AgentCall;
use cairn_api::v1::master as op;
use cairn_api::{AgentId, FrameworkId, TaskId, TaskState};

use super::agents::{AgentError, AgentHealth, AgentReply};
use super::views::task_view;
use super::{Master, Outbox};

impl Master {
    /// SUBSCRIBE from an operator: a stream that starts with SUBSCRIBED (the state now, and
    /// the heartbeat interval) and a HEARTBEAT, then follows every change.
    pub fn operator_subscribe(&mut self) -> super::Inbox<op::Event> {
        let (outbox, events) = Outbox::bounded(self.cfg.subscriber_queue);
        let interval = self.cfg.framework_heartbeat.as_secs_f64();
        outbox.send(op::Event::subscribed(self.get_state(), interval));
        outbox.send(op::Event::heartbeat());
        self.operators.push(outbox);
        tracing::info!(
            subscribers = self.operators.len(),
            "operator subscribed to the event stream"
        );
        events
    }

    /// Operator subscribers now (Mesos's `master/operator_event_stream_subscribers`).
    pub(crate) fn operator_subscribers(&self) -> usize {
        self.operators.len()
    }

    /// Sends the event `build` makes to every operator subscriber (nothing is built when
    /// there are none). A subscriber that went away is forgotten; one whose queue is full is
    /// dropped as stalled, which ends its stream.
    pub(crate) fn publish(&mut self, build: impl FnOnce(&Self) -> Option<op::Event>) {
        if self.operators.is_empty() {
            return;
        }
        let Some(event) = build(self) else { return };
        let mut stalled = 0;
        self.operators.retain(|o| {
            if o.is_closed() {
                return false;
            }
            let sent = o.send(event.clone());
            stalled += u64::from(!sent);
            sent
        });
        if stalled > 0 {
            tracing::warn!(
                stalled,
                "operator subscriber is stalled (event queue full): disconnecting it"
            );
            self.counters.operator_subscribers_disconnected_stalled += stalled;
        }
    }

    pub(crate) fn publish_task_added(&mut self, key: &(FrameworkId, TaskId)) {
        self.publish(|m| {
            m.tasks
                .get(key)
                .map(|t| op::Event::task_added(task_view(t)))
        });
    }

    /// TASK_UPDATED with the task's latest status.
    pub(crate) fn publish_task_updated(&mut self, key: &(FrameworkId, TaskId)) {
        self.publish(|m| {
            let t = m.tasks.get(key)?;
            let status = t.statuses.last()?.clone();
            Some(op::Event::task_updated(key.0.clone(), status, t.state))
        });
    }

    pub(crate) fn publish_framework(&mut self, id: &FrameworkId, added: bool) {
        self.publish(|m| {
            let view = m.framework_view(m.frameworks.get(id)?);
            Some(if added {
                op::Event::framework_added(view)
            } else {
                op::Event::framework_updated(view)
            })
        });
    }

    /// [`Master::agent_call`], telling operator subscribers about an agent that registered,
    /// or re-registered while not active here (a new master, or back from unreachable):
    /// AGENT_ADDED.
    ///
    /// # Errors
    /// As [`Master::agent_call`].
    pub fn handle_agent_call(
        &mut self,
        call: AgentCall,
        now: Instant,
    ) -> Result<AgentReply, AgentError> {
        let was_active = call
            .agent_id
            .as_ref()
            .and_then(|id| self.agents.get(id))
            .is_some_and(|a| a.health == AgentHealth::Active);
        let reply = self.agent_call(call, now);
        if let Ok(AgentReply::Registered(r)) = &reply {
            if !was_active {
                let id = r.agent_id.clone();
                self.publish(|m| Some(op::Event::agent_added(m.agent_view(m.agents.get(&id)?))));
            }
        }
        reply
    }

    /// The active agents, when operators listen: [`Master::publish_removed_agents`] tells
    /// them which of these the periodic checks removed.
    pub(crate) fn active_agents_watched(&self) -> Option<BTreeSet<AgentId>> {
        (!self.operators.is_empty()).then(|| {
            self.agents
                .values()
                .filter(|a| a.health == AgentHealth::Active)
                .map(|a| a.id.clone())
                .collect()
        })
    }

    /// AGENT_REMOVED for each agent of `before` that is no longer active (marked
    /// unreachable), and TASK_UPDATED for its tasks, now TASK_UNREACHABLE.
    pub(crate) fn publish_removed_agents(&mut self, before: Option<BTreeSet<AgentId>>) {
        let Some(before) = before else { return };
        for id in before {
            if self
                .agents
                .get(&id)
                .is_some_and(|a| a.health == AgentHealth::Active)
            {
                continue;
            }
            self.publish(|_| Some(op::Event::agent_removed(id.clone())));
            let keys: Vec<(FrameworkId, TaskId)> = self
                .tasks
                .iter()
                .filter(|(_, t)| t.agent_id == id && t.state == TaskState::Unreachable)
                .map(|(k, _)| k.clone())
                .collect();
            for key in keys {
                self.publish_task_updated(&key);
            }
        }
    }
}
