//! The framework manager: SUBSCRIBE (new, re-subscription and failover), the subscription
//! stream, disconnection and the failover timeout, teardown, UPDATE_FRAMEWORK, and the
//! dispatch of the other scheduler calls with Mesos's checks and status codes.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use base64::Engine as _;
use cairn_api::protocol::AgentEvent;
use cairn_api::v1::master;
use cairn_api::v1::mesos::{FrameworkInfo, TaskStatus};
use cairn_api::v1::scheduler::{Call, CallType, Event, Subscribe, Subscribed, UpdateFramework};
use cairn_api::{AgentId, FrameworkId, Reason, Source, TaskState};

use super::{wall_seconds, Master, Outbox};

/// A framework's live subscription stream.
#[derive(Debug)]
pub struct Subscription {
    /// The `Mesos-Stream-Id` every non-SUBSCRIBE call must carry.
    pub stream_id: String,
    pub(crate) outbox: Outbox<Event>,
}

/// A framework the master knows.
#[derive(Debug)]
pub struct Framework {
    pub id: FrameworkId,
    pub info: FrameworkInfo,
    pub roles: Vec<String>,
    pub subscription: Option<Subscription>,
    pub registered_time: f64,
    pub reregistered_time: Option<f64>,
    pub unregistered_time: Option<f64>,
    /// When a disconnected framework is torn down.
    pub failover_deadline: Option<Instant>,
    /// Known only from agents' task reports (the master restarted); not yet re-subscribed.
    pub recovered: bool,
    pub suppressed: BTreeSet<String>,
}

impl Framework {
    pub fn connected(&self) -> bool {
        self.subscription.is_some()
    }
}

/// A scheduler call refused, with the status Mesos answers it with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SchedulerError {
    /// 400.
    #[error("{0}")]
    BadRequest(String),
    /// 403.
    #[error("{0}")]
    Forbidden(String),
}

/// A new subscription: the framework id, the stream id, and the event stream.
#[derive(Debug)]
pub struct NewSubscription {
    pub framework_id: FrameworkId,
    pub stream_id: String,
    pub events: super::Inbox<Event>,
}

fn validate_role(role: &str) -> Result<(), String> {
    if role.is_empty()
        || role == "."
        || role == ".."
        || role.starts_with('-')
        || role.starts_with('/')
        || role.ends_with('/')
        || role
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\')
    {
        return Err(format!("Role '{role}' is invalid"));
    }
    Ok(())
}

/// Mesos's `validateFrameworkInfo` essentials.
fn validate_framework_info(info: &FrameworkInfo) -> Result<(), String> {
    let multi = info.has_capability("MULTI_ROLE");
    if multi && info.role.is_some() {
        return Err(
            "'FrameworkInfo.role' must not be set when the framework is MULTI_ROLE capable".into(),
        );
    }
    if !multi && !info.roles.is_empty() {
        return Err(
            "'FrameworkInfo.roles' must not be set when the framework is not MULTI_ROLE capable"
                .into(),
        );
    }
    for role in info.effective_roles() {
        validate_role(&role)?;
    }
    let mut seen = BTreeSet::new();
    if let Some(dup) = info.roles.iter().find(|r| !seen.insert(r.as_str())) {
        return Err(format!(
            "'FrameworkInfo.roles' contains duplicate role '{dup}'"
        ));
    }
    if let Some(t) = info.failover_timeout {
        if !t.is_finite() || t < 0.0 {
            return Err(format!(
                "Invalid failover_timeout {t}: must be a non-negative number of seconds"
            ));
        }
    }
    Ok(())
}

impl Master {
    pub(crate) fn is_completed_framework(&self, id: &FrameworkId) -> bool {
        self.completed_frameworks.iter().any(|f| &f.id == id)
    }

    /// The roles of a framework known only from an agent's task report, creating it as
    /// recovered (inactive until it re-subscribes) when new.
    pub(crate) fn recovered_framework(&mut self, id: &FrameworkId) -> Vec<String> {
        if let Some(f) = self.frameworks.get(id) {
            return f.roles.clone();
        }
        let roles = vec!["*".to_string()];
        self.allocator
            .add_framework(id.clone(), roles.clone(), Vec::new());
        self.allocator.deactivate_framework(id);
        self.frameworks.insert(
            id.clone(),
            Framework {
                id: id.clone(),
                info: FrameworkInfo {
                    id: Some(id.clone()),
                    ..FrameworkInfo::default()
                },
                roles: roles.clone(),
                subscription: None,
                registered_time: wall_seconds(),
                reregistered_time: None,
                unregistered_time: None,
                failover_deadline: None,
                recovered: true,
                suppressed: BTreeSet::new(),
            },
        );
        self.publish_framework(id, true);
        roles
    }

    /// The principal a known framework subscribed with, if any (checked against the
    /// authenticated principal of its calls).
    #[must_use]
    pub fn framework_principal(&self, id: &FrameworkId) -> Option<String> {
        self.frameworks
            .get(id)
            .and_then(|f| f.info.principal.clone())
    }

    /// SUBSCRIBE: a new framework, or a known one re-subscribing (failover). A second
    /// subscription replaces the first, whose stream gets an ERROR event and closes.
    ///
    /// # Errors
    /// 400 for an invalid FrameworkInfo, 403 for a framework that was torn down.
    pub fn subscribe(
        &mut self,
        call_framework_id: Option<FrameworkId>,
        sub: Subscribe,
        now: Instant,
    ) -> Result<NewSubscription, SchedulerError> {
        self.counters.messages_scheduler_calls += 1;
        let mut info = sub.framework_info;
        validate_framework_info(&info).map_err(SchedulerError::BadRequest)?;
        if let (Some(a), Some(b)) = (&call_framework_id, &info.id) {
            if a != b {
                return Err(SchedulerError::BadRequest(
                    "'framework_id' differs from 'subscribe.framework_info.id'".into(),
                ));
            }
        }
        let requested = info.id.clone().or(call_framework_id);
        if let Some(id) = &requested {
            if self.is_completed_framework(id) {
                return Err(SchedulerError::Forbidden(format!(
                    "Framework {id} has been removed"
                )));
            }
        }
        let id = requested.unwrap_or_else(|| {
            let n = self.next_seq();
            FrameworkId::new(format!("{}-{n:04}", self.info.id))
        });
        info.id = Some(id.clone());
        let roles = info.effective_roles();
        let stream_id = super::uuid_text();
        let (outbox, events) = Outbox::bounded(self.cfg.subscriber_queue);
        outbox.send(Event::subscribed(Subscribed {
            framework_id: id.clone(),
            heartbeat_interval_seconds: Some(self.cfg.framework_heartbeat.as_secs_f64()),
            master_info: Some(self.info.clone()),
        }));
        let subscription = Subscription {
            stream_id: stream_id.clone(),
            outbox,
        };
        let suppressed: BTreeSet<String> = sub.suppressed_roles.into_iter().collect();
        let added = !self.frameworks.contains_key(&id);
        if let Some(f) = self.frameworks.get_mut(&id) {
            if let Some(old) = f.subscription.take() {
                old.outbox.send(Event::error("Framework failed over"));
            }
            f.info = info;
            f.roles = roles.clone();
            f.subscription = Some(subscription);
            f.reregistered_time = Some(wall_seconds());
            f.failover_deadline = None;
            f.recovered = false;
            f.suppressed = suppressed.clone();
            // The new scheduler instance does not know the old one's offers.
            self.recover_framework_offers(&id, now);
            self.allocator.update_framework(&id, roles.clone());
            self.allocator.activate_framework(&id);
            tracing::info!(framework = %id, "framework re-subscribed");
        } else {
            let used: Vec<(AgentId, String, cairn_api::Resources)> = Vec::new();
            self.allocator
                .add_framework(id.clone(), roles.clone(), used);
            tracing::info!(framework = %id, name = %info.name, "framework subscribed");
            self.frameworks.insert(
                id.clone(),
                Framework {
                    id: id.clone(),
                    info,
                    roles: roles.clone(),
                    subscription: Some(subscription),
                    registered_time: wall_seconds(),
                    reregistered_time: None,
                    unregistered_time: None,
                    failover_deadline: None,
                    recovered: false,
                    suppressed: suppressed.clone(),
                },
            );
        }
        self.allocator.revive(&id, None);
        if !suppressed.is_empty() {
            let list: Vec<String> = suppressed.into_iter().collect();
            self.allocator.suppress(&id, Some(&list));
        }
        self.publish_framework(&id, added);
        Ok(NewSubscription {
            framework_id: id,
            stream_id,
            events,
        })
    }

    /// The subscription stream `stream_id` of `fw` closed or stalled: the framework is
    /// disconnected, its offers recovered, and its failover timeout starts.
    pub fn framework_disconnected(&mut self, fw: &FrameworkId, stream_id: &str, now: Instant) {
        let Some(f) = self.frameworks.get_mut(fw) else {
            return;
        };
        if f.subscription
            .as_ref()
            .is_none_or(|s| s.stream_id != stream_id)
        {
            return;
        }
        f.subscription = None;
        f.unregistered_time = Some(wall_seconds());
        let timeout = f.info.failover_timeout.unwrap_or(0.0);
        f.failover_deadline = Some(now + Duration::from_secs_f64(timeout.clamp(0.0, 1e9)));
        tracing::info!(framework = %fw, failover_timeout = timeout, "framework disconnected");
        self.allocator.deactivate_framework(fw);
        self.recover_framework_offers(fw, now);
        self.publish_framework(fw, false);
    }

    /// Tears down frameworks whose failover timeout elapsed.
    pub(crate) fn expire_frameworks(&mut self, now: Instant) {
        let expired: Vec<FrameworkId> = self
            .frameworks
            .values()
            .filter(|f| f.subscription.is_none() && f.failover_deadline.is_some_and(|d| d <= now))
            .map(|f| f.id.clone())
            .collect();
        for id in expired {
            tracing::info!(framework = %id, "framework failover timeout elapsed: tearing it down");
            self.remove_framework(&id, now);
        }
    }

    /// Removes a framework: its tasks are killed on their agents, its offers recovered, its
    /// stream closed. It is kept among the completed frameworks and may not re-subscribe.
    ///
    /// # Errors
    /// The framework is unknown.
    pub fn remove_framework(&mut self, id: &FrameworkId, now: Instant) -> bool {
        if !self.frameworks.contains_key(id) {
            return false;
        }
        self.recover_framework_offers(id, now);
        let keys: Vec<_> = self
            .tasks
            .keys()
            .filter(|(f, _)| f == id)
            .cloned()
            .collect();
        let mut agents = BTreeSet::new();
        for key in keys {
            if let Some(mut t) = self.tasks.remove(&key) {
                agents.insert(t.agent_id.clone());
                if !t.state.is_terminal() {
                    self.allocator
                        .recover(id, &t.agent_id, &t.role, &t.resources, None, now);
                    t.state = TaskState::Killed;
                    self.count_terminal(TaskState::Killed);
                    let mut status =
                        TaskStatus::new(key.1.clone(), TaskState::Killed, Source::Master);
                    status.reason = Some(Reason::FrameworkRemoved);
                    status.message = Some("Framework removed".into());
                    status.agent_id = Some(t.agent_id.clone());
                    status.timestamp = Some(wall_seconds());
                    t.statuses.push(status.clone());
                    self.publish(|_| {
                        Some(master::Event::task_updated(
                            id.clone(),
                            status,
                            TaskState::Killed,
                        ))
                    });
                }
                self.push_completed_task(t);
            }
        }
        for agent in agents {
            self.send_agent(
                &agent,
                AgentEvent::shutdown(Some(id.clone()), "framework removed"),
            );
        }
        self.allocator.remove_framework(id);
        if let Some(mut f) = self.frameworks.remove(id) {
            f.subscription = None;
            f.unregistered_time = Some(wall_seconds());
            self.publish(|_| Some(master::Event::framework_removed(f.info.clone())));
            self.completed_frameworks.push_back(f);
            while self.completed_frameworks.len() > self.cfg.max_completed_frameworks {
                self.completed_frameworks.pop_front();
            }
        }
        true
    }

    fn update_framework(
        &mut self,
        id: &FrameworkId,
        u: UpdateFramework,
    ) -> Result<(), SchedulerError> {
        let mut info = u.framework_info;
        if info.id.as_ref() != Some(id) {
            return Err(SchedulerError::BadRequest(
                "'framework_info.id' is not set or differs from 'framework_id'".into(),
            ));
        }
        validate_framework_info(&info).map_err(SchedulerError::BadRequest)?;
        info.id = Some(id.clone());
        let roles = info.effective_roles();
        let f = self.frameworks.get_mut(id).expect("checked by the caller");
        f.info = info;
        f.roles = roles.clone();
        f.suppressed = u.suppressed_roles.iter().cloned().collect();
        self.allocator.update_framework(id, roles);
        self.allocator.revive(id, None);
        if !u.suppressed_roles.is_empty() {
            self.allocator.suppress(id, Some(&u.suppressed_roles));
        }
        self.publish_framework(id, false);
        Ok(())
    }

    /// Every scheduler call but SUBSCRIBE, with Mesos's checks in Mesos's order
    /// (`master/http.cpp`, `Master::Http::scheduler`): the call is valid, the framework
    /// exists (400), is subscribed (403), and the stream id matches (400).
    ///
    /// # Errors
    /// The refusal and its status.
    pub fn scheduler_call(
        &mut self,
        call: Call,
        stream_id: Option<&str>,
        now: Instant,
    ) -> Result<(), SchedulerError> {
        call.validate().map_err(|e| {
            SchedulerError::BadRequest(format!("Failed to validate scheduler::Call: {e}"))
        })?;
        let id = call
            .framework_id
            .clone()
            .expect("validated: framework_id is present");
        let Some(f) = self.frameworks.get(&id) else {
            return Err(SchedulerError::BadRequest(
                "Framework cannot be found".into(),
            ));
        };
        let Some(sub) = &f.subscription else {
            return Err(SchedulerError::Forbidden(
                "Framework is not subscribed".into(),
            ));
        };
        let Some(stream_id) = stream_id else {
            return Err(SchedulerError::BadRequest(
                "All non-subscribe calls should include the 'Mesos-Stream-Id' header".into(),
            ));
        };
        if stream_id != sub.stream_id {
            return Err(SchedulerError::BadRequest(format!(
                "The stream ID '{stream_id}' included in this request didn't match the stream ID \
                 currently associated with framework ID '{id}'"
            )));
        }
        self.counters.messages_scheduler_calls += 1;
        match call.kind {
            CallType::Subscribe => unreachable!("SUBSCRIBE is handled by Master::subscribe"),
            CallType::Teardown => {
                self.remove_framework(&id, now);
            }
            CallType::Accept => {
                let accept = call.accept.expect("validated: accept is present");
                self.accept(&id, accept, now);
            }
            CallType::Decline => {
                let decline = call.decline.expect("validated: decline is present");
                self.decline(&id, &decline.offer_ids, decline.filters, now);
            }
            CallType::Revive => {
                let roles = call.revive.map(|r| r.roles).unwrap_or_default();
                self.allocator
                    .revive(&id, (!roles.is_empty()).then_some(roles.as_slice()));
                if let Some(f) = self.frameworks.get_mut(&id) {
                    if roles.is_empty() {
                        f.suppressed.clear();
                    } else {
                        roles.iter().for_each(|r| {
                            f.suppressed.remove(r);
                        });
                    }
                }
            }
            CallType::Suppress => {
                let roles = call.suppress.map(|r| r.roles).unwrap_or_default();
                self.allocator
                    .suppress(&id, (!roles.is_empty()).then_some(roles.as_slice()));
                if let Some(f) = self.frameworks.get_mut(&id) {
                    let all = if roles.is_empty() {
                        f.roles.clone()
                    } else {
                        roles
                    };
                    f.suppressed.extend(all);
                }
            }
            CallType::Kill => {
                let kill = call.kill.expect("validated: kill is present");
                self.kill(&id, &kill.task_id, kill.agent_id.as_ref(), now);
            }
            CallType::Acknowledge => {
                let ack = call.acknowledge.expect("validated: acknowledge is present");
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(&ack.uuid)
                    .ok()
                    .filter(|b| b.len() == 16)
                    .ok_or_else(|| {
                        SchedulerError::BadRequest(format!(
                            "Failed to validate scheduler::Call: 'acknowledge.uuid' {:?} is not a Base64 UUID of 16 bytes",
                            ack.uuid
                        ))
                    })?;
                drop(bytes);
                self.acknowledge(&id, &ack.agent_id, &ack.task_id, &ack.uuid, now);
            }
            CallType::Reconcile => {
                let tasks = call.reconcile.map(|r| r.tasks).unwrap_or_default();
                self.reconcile(&id, &tasks, now);
            }
            CallType::UpdateFramework => {
                let u = call
                    .update_framework
                    .expect("validated: update_framework is present");
                self.update_framework(&id, u)?;
            }
            // No custom executors in Cairn: executor messages and shutdowns have no receiver
            // (Mesos, too, delivers MESSAGE without guarantees). REQUEST is ignored by
            // Mesos's own allocator; inverse offers and operation feedback are not used.
            CallType::Message
            | CallType::Shutdown
            | CallType::Request
            | CallType::AcceptInverseOffers
            | CallType::DeclineInverseOffers
            | CallType::AcknowledgeOperationStatus
            | CallType::ReconcileOperations => {}
            CallType::Unknown => {
                return Err(SchedulerError::BadRequest(
                    "Expecting 'type' to be present".into(),
                ))
            }
        }
        Ok(())
    }
}
