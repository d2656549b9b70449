//! The agent manager: registration and re-registration, the agent's event stream,
//! heartbeats, resource updates, unreachability after the agent timeout, and reconciliation
//! of an agent that comes back.

use std::collections::BTreeSet;
use std::time::Instant;

use cairn_api::protocol::{AgentCall, AgentCallType, AgentEvent, Register, Registered};
use cairn_api::v1::mesos::TaskStatus;
use cairn_api::v1::scheduler::{Event, Failure};
use cairn_api::{AgentId, FrameworkId, Reason, Resources, Source, TaskId, TaskState};

use super::{wall_seconds, Master, Outbox};
use crate::registry::AdmittedAgent;

/// Whether the master hears from an agent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AgentHealth {
    Active,
    /// Silent for longer than the agent timeout, since this wall time.
    Unreachable {
        since: f64,
    },
}

/// An agent the master knows.
#[derive(Debug)]
pub struct Agent {
    pub id: AgentId,
    pub info: Register,
    pub total: Resources,
    pub registered_time: f64,
    pub reregistered_time: Option<f64>,
    pub last_seen: Instant,
    pub health: AgentHealth,
    pub(crate) conn: Option<Outbox<AgentEvent>>,
    /// Identifies the current subscription, so a stale stream closing does not disconnect
    /// its successor.
    pub(crate) conn_seq: u64,
    /// Events for the agent queued before it subscribed (kills from reconciliation).
    pub(crate) pending: Vec<AgentEvent>,
}

impl Agent {
    pub fn connected(&self) -> bool {
        self.conn.is_some()
    }
}

/// Why an agent call failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Invalid(String),
    #[error("agent {0} is not registered with this master (register again)")]
    NotFound(AgentId),
    #[error("agent {0} was marked gone and may not re-register")]
    Gone(AgentId),
}

/// The master's answer to an agent call.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentReply {
    Registered(Registered),
    Accepted,
}

impl Master {
    /// Handles a call from an agent (all but SUBSCRIBE, see [`Master::agent_subscribe`]).
    ///
    /// # Errors
    /// A malformed call, an unknown agent or one marked gone.
    pub fn agent_call(&mut self, call: AgentCall, now: Instant) -> Result<AgentReply, AgentError> {
        call.validate().map_err(|e| AgentError::Invalid(e.0))?;
        self.counters.messages_agent_calls += 1;
        let id = call.agent_id.clone();
        match call.kind {
            AgentCallType::Register => {
                let reg = call.register.expect("validated: register is present");
                self.register_agent(reg, now).map(AgentReply::Registered)
            }
            AgentCallType::Reregister => {
                let reg = call.register.expect("validated: register is present");
                let id = id.expect("validated: agent_id is present");
                self.reregister_agent(id, reg, now)
                    .map(AgentReply::Registered)
            }
            AgentCallType::Subscribe => Err(AgentError::Invalid(
                "SUBSCRIBE opens the event stream; it is not a plain call".into(),
            )),
            AgentCallType::Heartbeat => {
                self.touch_agent(&id.expect("validated: agent_id is present"), now)?;
                Ok(AgentReply::Accepted)
            }
            AgentCallType::UpdateResources => {
                let id = id.expect("validated: agent_id is present");
                self.touch_agent(&id, now)?;
                let update = call.update_resources.expect("validated: present");
                let total = Resources::from_wire(&update.resources)
                    .map_err(|e| AgentError::Invalid(e.to_string()))?;
                self.rescind_agent_offers(&id, now);
                self.allocator.update_agent(&id, total.clone());
                if let Some(a) = self.agents.get_mut(&id) {
                    a.total = total;
                    a.info.resources = update.resources;
                }
                Ok(AgentReply::Accepted)
            }
            AgentCallType::StatusUpdate => {
                let id = id.expect("validated: agent_id is present");
                self.touch_agent(&id, now)?;
                let update = call.status_update.expect("validated: present");
                self.status_update(&id, update.framework_id, update.status, now);
                Ok(AgentReply::Accepted)
            }
        }
    }

    fn touch_agent(&mut self, id: &AgentId, now: Instant) -> Result<(), AgentError> {
        match self.agents.get_mut(id) {
            Some(a) if a.health == AgentHealth::Active => {
                a.last_seen = now;
                Ok(())
            }
            _ => Err(AgentError::NotFound(id.clone())),
        }
    }

    fn registered(&self, id: &AgentId) -> Registered {
        Registered {
            agent_id: id.clone(),
            master_info: self.info.clone(),
            heartbeat_interval_seconds: self.cfg.agent_heartbeat.as_secs_f64(),
        }
    }

    /// Records the agent as admitted (and reachable). Writes the registry only when that
    /// changes it: after a failover every agent re-registers, and rewriting an unchanged
    /// registry once per agent flooded ZooKeeper (10,000 agents, 1.5 MB each time).
    fn admit(&mut self, id: &AgentId, reg: &Register) {
        let admitted = AdmittedAgent {
            id: id.clone(),
            hostname: reg.hostname.clone(),
            address: reg.address.clone(),
        };
        let changed = self.registry.agents.get(&id.value) != Some(&admitted);
        if changed {
            self.registry.agents.insert(id.value.clone(), admitted);
        }
        if self.registry.unreachable.remove(&id.value).is_some() || changed {
            self.persist();
        }
    }

    fn register_agent(&mut self, reg: Register, now: Instant) -> Result<Registered, AgentError> {
        let total =
            Resources::from_wire(&reg.resources).map_err(|e| AgentError::Invalid(e.to_string()))?;
        let n = self.next_seq();
        let id = AgentId::new(format!("{}-S{n}", self.info.id));
        self.admit(&id, &reg);
        self.allocator
            .add_agent(id.clone(), total.clone(), Vec::new());
        // Offers wait until the agent's event stream is open.
        self.allocator.deactivate_agent(&id);
        tracing::info!(agent = %id, hostname = %reg.hostname, resources = %total, "agent registered");
        self.agents.insert(
            id.clone(),
            Agent {
                id: id.clone(),
                info: reg,
                total,
                registered_time: wall_seconds(),
                reregistered_time: None,
                last_seen: now,
                health: AgentHealth::Active,
                conn: None,
                conn_seq: 0,
                pending: Vec::new(),
            },
        );
        self.counters.agent_registrations += 1;
        Ok(self.registered(&id))
    }

    /// Undoes the registration of `id` whose admission could not be stored. Its REGISTER was
    /// answered 503 and the agent registers again under a new id, so keeping this one would
    /// leave an agent that never comes back, admitted in the registry once a later save
    /// lands (Mesos admits an agent only once stored). Only a registration nothing has used
    /// yet (no event stream, never re-registered) is undone.
    pub fn forget_unstored_registration(&mut self, id: &AgentId) {
        let unused = self
            .agents
            .get(id)
            .is_some_and(|a| a.conn.is_none() && a.reregistered_time.is_none());
        if !unused {
            return;
        }
        let before = self.active_agents_watched();
        self.agents.remove(id);
        self.allocator.remove_agent(id);
        if self.registry.agents.remove(&id.value).is_some() {
            self.persist();
        }
        self.publish_removed_agents(before);
        tracing::warn!(agent = %id, "registration refused: its admission could not be stored");
    }

    fn reregister_agent(
        &mut self,
        id: AgentId,
        reg: Register,
        now: Instant,
    ) -> Result<Registered, AgentError> {
        if self.registry.gone.contains_key(&id.value) {
            return Err(AgentError::Gone(id));
        }
        let total =
            Resources::from_wire(&reg.resources).map_err(|e| AgentError::Invalid(e.to_string()))?;
        self.counters.agent_reregistrations += 1;
        let was_unreachable = self.registry.unreachable.contains_key(&id.value);
        self.admit(&id, &reg);
        if self.agents.contains_key(&id) {
            self.reconcile_known_agent(&id, reg, total, now);
        } else {
            self.recover_agent(&id, reg, total, now, was_unreachable);
        }
        Ok(self.registered(&id))
    }

    /// An agent this master did not know (the master restarted or failed over): its tasks are
    /// taken as the truth, their frameworks recovered until they re-subscribe; tasks of
    /// frameworks torn down here are killed. When the registry had the agent unreachable (it
    /// missed the re-registration window), frameworks are told its tasks' states again, so a
    /// partition-aware one sees them RUNNING after TASK_UNREACHABLE.
    fn recover_agent(
        &mut self,
        id: &AgentId,
        reg: Register,
        total: Resources,
        now: Instant,
        was_unreachable: bool,
    ) {
        let mut used: Vec<(FrameworkId, String, Resources)> = Vec::new();
        let mut pending = Vec::new();
        for t in &reg.tasks {
            if self.is_completed_framework(&t.framework_id) {
                pending.push(AgentEvent::kill(
                    t.framework_id.clone(),
                    t.task.task_id.clone(),
                ));
                continue;
            }
            if t.state.is_terminal() {
                continue;
            }
            let fw = self.recovered_framework(&t.framework_id);
            let role = fw.first().cloned().unwrap_or_else(|| "*".into());
            let res = Resources::from_wire(&t.task.resources).unwrap_or_default();
            used.push((t.framework_id.clone(), role.clone(), res.clone()));
            self.insert_task(
                t.framework_id.clone(),
                id.clone(),
                t.task.clone(),
                role,
                res,
                t.state,
            );
            if was_unreachable {
                let mut status = t.latest_status.clone().unwrap_or_else(|| {
                    TaskStatus::new(t.task.task_id.clone(), t.state, Source::Master)
                });
                status.state = t.state;
                status.agent_id = Some(id.clone());
                status.uuid = None;
                status.reason.get_or_insert(Reason::Reconciliation);
                self.send_event(&t.framework_id, Event::update(status));
            }
        }
        self.allocator.add_agent(id.clone(), total.clone(), used);
        self.allocator.deactivate_agent(id);
        tracing::info!(agent = %id, tasks = reg.tasks.len(), "agent re-registered (recovered)");
        self.agents.insert(
            id.clone(),
            Agent {
                id: id.clone(),
                info: reg,
                total,
                registered_time: wall_seconds(),
                reregistered_time: Some(wall_seconds()),
                last_seen: now,
                health: AgentHealth::Active,
                conn: None,
                conn_seq: 0,
                pending,
            },
        );
    }

    /// An agent the master knows came back (after being unreachable, or after the agent
    /// process restarted): tasks the master does not know are killed, tasks the agent no
    /// longer has are TASK_LOST (TASK_GONE when the host rebooted), the others resume with
    /// the state the agent reports.
    fn reconcile_known_agent(
        &mut self,
        id: &AgentId,
        reg: Register,
        total: Resources,
        now: Instant,
    ) {
        let Some(agent) = self.agents.get(id) else {
            return;
        };
        let rebooted = agent.info.boot_id != reg.boot_id;
        let reported: BTreeSet<(FrameworkId, TaskId)> = reg
            .tasks
            .iter()
            .map(|t| (t.framework_id.clone(), t.task.task_id.clone()))
            .collect();
        let mut pending = Vec::new();
        // Tasks the agent reports.
        for t in &reg.tasks {
            let key = (t.framework_id.clone(), t.task.task_id.clone());
            match self.tasks.get(&key) {
                Some(task) if &task.agent_id == id => {
                    if task.state != t.state {
                        let mut status = t.latest_status.clone().unwrap_or_else(|| {
                            TaskStatus::new(key.1.clone(), t.state, Source::Master)
                        });
                        status.state = t.state;
                        status.agent_id = Some(id.clone());
                        status.uuid = None;
                        status.reason.get_or_insert(Reason::Reconciliation);
                        self.set_task_state(&key, t.state, status.clone(), now);
                        self.send_event(&key.0, Event::update(status));
                    }
                }
                _ => pending.push(AgentEvent::kill(key.0.clone(), key.1.clone())),
            }
        }
        // Tasks the master has on this agent that the agent does not report.
        let missing: Vec<(FrameworkId, TaskId)> = self
            .tasks
            .iter()
            .filter(|(k, t)| &t.agent_id == id && !reported.contains(*k) && !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect();
        for key in missing {
            let (state, reason, message) = if rebooted {
                (
                    TaskState::Gone,
                    Reason::AgentRestarted,
                    "the agent's host rebooted",
                )
            } else {
                (
                    TaskState::Lost,
                    Reason::Reconciliation,
                    "the agent no longer has this task",
                )
            };
            self.master_update(&key, state, reason, message, now);
        }
        let was_unreachable = self
            .agents
            .get(id)
            .is_some_and(|a| a.health != AgentHealth::Active);
        self.allocator.update_agent(id, total.clone());
        if let Some(agent) = self.agents.get_mut(id) {
            agent.info = reg;
            agent.total = total;
            agent.health = AgentHealth::Active;
            agent.last_seen = now;
            agent.reregistered_time = Some(wall_seconds());
            agent.pending.extend(pending);
        }
        tracing::info!(agent = %id, was_unreachable, rebooted, "agent re-registered");
    }

    /// Opens the agent's event stream: SUBSCRIBED first, then queued events. Replaces an
    /// earlier stream of the same agent.
    ///
    /// # Errors
    /// The agent is unknown or unreachable (it must re-register first).
    pub fn agent_subscribe(
        &mut self,
        id: &AgentId,
        now: Instant,
    ) -> Result<(u64, super::Inbox<AgentEvent>), AgentError> {
        self.touch_agent(id, now)?;
        let registered = self.registered(id);
        let (outbox, rx) = Outbox::bounded(self.cfg.subscriber_queue);
        let seq = self.next_seq();
        let agent = self
            .agents
            .get_mut(id)
            .expect("touched above: the agent exists");
        outbox.send(AgentEvent::subscribed(registered));
        for e in agent.pending.drain(..) {
            outbox.send(e);
        }
        agent.conn = Some(outbox);
        agent.conn_seq = seq;
        self.allocator.activate_agent(id);
        tracing::info!(agent = %id, "agent subscribed");
        Ok((seq, rx))
    }

    /// The agent's stream `seq` closed (the agent went away or the connection broke).
    pub fn agent_stream_closed(&mut self, id: &AgentId, seq: u64) {
        if let Some(a) = self.agents.get_mut(id) {
            if a.conn_seq == seq && a.conn.is_some() {
                a.conn = None;
                self.allocator.deactivate_agent(id);
                tracing::info!(agent = %id, "agent stream closed");
            }
        }
    }

    /// Marks agents silent for longer than the agent timeout unreachable.
    pub(crate) fn check_agents(&mut self, now: Instant) {
        let timeout = self.cfg.agent_timeout;
        let silent: Vec<AgentId> = self
            .agents
            .values()
            .filter(|a| {
                a.health == AgentHealth::Active && now.duration_since(a.last_seen) > timeout
            })
            .map(|a| a.id.clone())
            .collect();
        for id in silent {
            self.mark_unreachable(&id, now);
        }
    }

    /// Whether `id` is admitted in the recovered registry but has not re-registered with this
    /// master yet, while the re-registration window is open. Its tasks are unknown until it
    /// does; reconciliation does not answer for them meanwhile (as Mesos).
    pub(crate) fn awaiting_reregistration(&self, id: &AgentId) -> bool {
        self.reregister_deadline.is_some()
            && self.registry.agents.contains_key(&id.value)
            && !self.agents.contains_key(id)
            && !self.registry.unreachable.contains_key(&id.value)
            && !self.registry.gone.contains_key(&id.value)
    }

    /// Closes the re-registration window once its deadline passed: admitted agents that did
    /// not re-register are marked unreachable in the registry (one write), and every framework
    /// gets a FAILURE event for each. Their tasks are unknown to this master (the registry
    /// holds no tasks); reconciling one names the agent and is answered TASK_UNREACHABLE
    /// (TASK_LOST without PARTITION_AWARE). An agent that comes back later re-registers and
    /// its tasks are reported again.
    pub(crate) fn close_reregistration_window(&mut self, now: Instant) {
        match self.reregister_deadline {
            Some(deadline) if now >= deadline => {}
            _ => return,
        }
        let missing: Vec<AgentId> = self
            .registry
            .agents
            .values()
            .map(|a| a.id.clone())
            .filter(|id| self.awaiting_reregistration(id))
            .collect();
        self.reregister_deadline = None;
        if missing.is_empty() {
            return;
        }
        let since = wall_seconds();
        for id in &missing {
            self.registry.unreachable.insert(id.value.clone(), since);
        }
        self.counters.agents_unreachable_marked += missing.len() as u64;
        self.persist();
        tracing::warn!(
            agents = missing.len(),
            window = ?self.cfg.agent_reregister_timeout,
            "admitted agents did not re-register within the re-registration window: marked unreachable"
        );
        let fws: Vec<FrameworkId> = self.frameworks.keys().cloned().collect();
        for id in &missing {
            for fw in &fws {
                self.send_event(
                    fw,
                    Event::failure(Failure {
                        agent_id: Some(id.clone()),
                        executor_id: None,
                        status: None,
                    }),
                );
            }
        }
    }

    /// Marks an agent unreachable: its offers are rescinded, its tasks reported
    /// TASK_UNREACHABLE (TASK_LOST to frameworks that are not PARTITION_AWARE, as Mesos
    /// does), and every framework gets a FAILURE event for it.
    pub fn mark_unreachable(&mut self, id: &AgentId, now: Instant) {
        let since = wall_seconds();
        let Some(agent) = self.agents.get_mut(id) else {
            return;
        };
        tracing::warn!(agent = %id, "agent unreachable: no call within the agent timeout");
        agent.health = AgentHealth::Unreachable { since };
        agent.conn = None;
        self.counters.agents_unreachable_marked += 1;
        self.registry.unreachable.insert(id.value.clone(), since);
        self.persist();
        self.allocator.deactivate_agent(id);
        self.rescind_agent_offers(id, now);
        let keys: Vec<(FrameworkId, TaskId)> = self
            .tasks
            .iter()
            .filter(|(_, t)| &t.agent_id == id && !t.state.is_terminal())
            .map(|(k, _)| k.clone())
            .collect();
        for key in keys {
            let mut status = TaskStatus::new(key.1.clone(), TaskState::Unreachable, Source::Master);
            status.agent_id = Some(id.clone());
            status.reason = Some(Reason::AgentDisconnected);
            status.message = Some("the agent is unreachable".into());
            status.timestamp = Some(since);
            if let Some(t) = self.tasks.get_mut(&key) {
                t.state = TaskState::Unreachable;
                t.statuses.push(status.clone());
            }
            let partition_aware = self
                .frameworks
                .get(&key.0)
                .is_some_and(|f| f.info.has_capability("PARTITION_AWARE"));
            if !partition_aware {
                status.state = TaskState::Lost;
                status.reason = Some(Reason::AgentRemoved);
            }
            self.send_event(&key.0, Event::update(status));
        }
        let fws: Vec<FrameworkId> = self.frameworks.keys().cloned().collect();
        for fw in fws {
            self.send_event(
                &fw,
                Event::failure(Failure {
                    agent_id: Some(id.clone()),
                    executor_id: None,
                    status: None,
                }),
            );
        }
    }
}

#[cfg(test)]
mod reregistration_window_tests {
    use std::time::Duration;

    use cairn_api::protocol::AgentCall;

    use super::*;
    use crate::core::CoreConfig;
    use crate::registry::Registry;

    fn admitted(ids: &[&str]) -> Registry {
        let mut registry = Registry::default();
        for id in ids {
            registry.agents.insert(
                (*id).to_string(),
                AdmittedAgent {
                    id: AgentId::new(*id),
                    hostname: (*id).to_string(),
                    address: "127.0.0.1:5051".into(),
                },
            );
        }
        registry
    }

    fn reregister(m: &mut Master, id: &str, now: Instant) {
        let reg = Register {
            hostname: id.into(),
            address: "127.0.0.1:5051".into(),
            resources: Resources::parse("cpus:1;mem:128").unwrap().to_wire(),
            attributes: vec![],
            boot_id: "b".into(),
            version: "test".into(),
            tasks: vec![],
        };
        m.agent_call(AgentCall::reregister(AgentId::new(id), reg), now)
            .unwrap();
    }

    #[test]
    fn agents_missing_when_the_window_closes_are_marked_unreachable_once() {
        let cfg = CoreConfig {
            agent_reregister_timeout: Duration::from_secs(30),
            ..CoreConfig::default()
        };
        let start = Instant::now();
        let mut m = Master::new(cfg, admitted(&["back", "missing", "gone"]), None);
        m.registry.gone.insert("gone".into(), 1.0);
        reregister(&mut m, "back", start);
        assert!(m.awaiting_reregistration(&AgentId::new("missing")));
        assert!(!m.awaiting_reregistration(&AgentId::new("back")));
        assert!(!m.awaiting_reregistration(&AgentId::new("gone")));

        // Still open: nothing marked.
        m.close_reregistration_window(start + Duration::from_secs(1));
        assert!(m.registry.unreachable.is_empty());

        let closed = start + Duration::from_secs(31);
        m.close_reregistration_window(closed);
        let unreachable: Vec<&String> = m.registry.unreachable.keys().collect();
        assert_eq!(unreachable, ["missing"]);
        assert_eq!(m.counters.agents_unreachable_marked, 1);
        assert!(!m.awaiting_reregistration(&AgentId::new("missing")));

        // Closing again changes nothing; the missing agent may still come back.
        m.close_reregistration_window(closed + Duration::from_secs(60));
        assert_eq!(m.counters.agents_unreachable_marked, 1);
        reregister(&mut m, "missing", closed);
        assert!(m.registry.unreachable.is_empty());
        assert!(m.agents.contains_key(&AgentId::new("missing")));
    }

    #[test]
    fn reconciliation_waits_for_the_window_then_answers_unreachable() {
        use cairn_api::v1::mesos::{FrameworkCapability, FrameworkInfo};
        use cairn_api::v1::scheduler::{EventType, ReconcileTask, Subscribe};

        let start = Instant::now();
        let mut m = Master::new(CoreConfig::default(), admitted(&["missing"]), None);
        let info = FrameworkInfo {
            user: "u".into(),
            name: "f".into(),
            capabilities: vec![FrameworkCapability {
                kind: "PARTITION_AWARE".into(),
            }],
            ..FrameworkInfo::default()
        };
        let sub = m
            .subscribe(
                None,
                Subscribe {
                    framework_info: info,
                    force: None,
                    suppressed_roles: vec![],
                },
                start,
            )
            .unwrap();
        let mut events = sub.events;
        assert_eq!(events.try_recv().unwrap().kind, EventType::Subscribed);
        let task = [ReconcileTask {
            task_id: TaskId::new("t1"),
            agent_id: Some(AgentId::new("missing")),
        }];

        // Window open: the agent may still bring the task back; no answer yet.
        m.reconcile(&sub.framework_id, &task, start);
        assert!(events.try_recv().is_none());

        let closed = Instant::now() + m.cfg.agent_reregister_timeout;
        m.close_reregistration_window(closed);
        let failure = events.try_recv().unwrap();
        assert_eq!(failure.kind, EventType::Failure);
        m.reconcile(&sub.framework_id, &task, closed);
        let status = events.try_recv().unwrap().update.unwrap().status;
        assert_eq!(status.state, TaskState::Unreachable);
        assert_eq!(status.agent_id, Some(AgentId::new("missing")));
    }
}
