//! Offers: made from the allocator's allocations, accepted (LAUNCH, LAUNCH_GROUP), declined
//! with filters, rescinded on timeout or when their agent goes away.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use cairn_api::protocol::{AgentEvent, LaunchTasks};
use cairn_api::v1::mesos::{
    Address, AllocationInfo, Filters, Offer, TaskInfo, TaskStatus, Url, DEFAULT_REFUSE_SECONDS,
};
use cairn_api::v1::scheduler::{Accept, Event, OperationType};
use cairn_api::{AgentId, FrameworkId, OfferId, Reason, Resources, Source, TaskState};

use super::validation::{validate_task, TaskProblem};
use super::{wall_seconds, Master};

/// An outstanding offer.
#[derive(Debug, Clone)]
pub struct OfferEntry {
    pub offer: Offer,
    pub role: String,
    pub resources: Resources,
    pub created: Instant,
}

fn refuse(filters: Option<Filters>) -> Duration {
    let secs = filters
        .and_then(|f| f.refuse_seconds)
        .unwrap_or(DEFAULT_REFUSE_SECONDS);
    // Mesos treats a negative or non-finite refusal as the default.
    if secs.is_finite() && secs >= 0.0 {
        Duration::from_secs_f64(secs.min(365.0 * 86400.0))
    } else {
        Duration::from_secs_f64(DEFAULT_REFUSE_SECONDS)
    }
}

impl Master {
    /// Runs the allocator and sends the resulting offers, one OFFERS event per framework.
    pub fn allocate(&mut self, now: Instant) {
        let started = Instant::now();
        let allocations = self.allocator.allocate(now);
        self.counters.allocation_runs += 1;
        self.counters.last_allocation_ms = started.elapsed().as_secs_f64() * 1000.0;
        let mut per_framework: BTreeMap<FrameworkId, Vec<Offer>> = BTreeMap::new();
        for a in allocations {
            let n = self.next_seq();
            let connected = self
                .frameworks
                .get(&a.framework)
                .is_some_and(|f| f.connected());
            let agent = self.agents.get(&a.agent);
            let (Some(agent), true) = (agent, connected) else {
                self.allocator
                    .recover(&a.framework, &a.agent, &a.role, &a.resources, None, now);
                continue;
            };
            let (host, port) = agent
                .info
                .address
                .rsplit_once(':')
                .map_or((agent.info.address.clone(), 5051), |(h, p)| {
                    (h.to_string(), p.parse().unwrap_or(5051))
                });
            let id = OfferId::new(format!("{}-O{n}", self.info.id));
            let offer = Offer {
                id: id.clone(),
                framework_id: a.framework.clone(),
                agent_id: a.agent.clone(),
                hostname: agent.info.hostname.clone(),
                url: Some(Url {
                    scheme: "http".into(),
                    address: Address {
                        hostname: Some(agent.info.hostname.clone()),
                        ip: Some(host),
                        port,
                    },
                    path: Some("/slave(1)".into()),
                }),
                resources: a.resources.to_wire(),
                attributes: agent.info.attributes.clone(),
                executor_ids: Vec::new(),
                allocation_info: Some(AllocationInfo {
                    role: a.role.clone(),
                }),
            };
            self.offers.insert(
                id,
                OfferEntry {
                    offer: offer.clone(),
                    role: a.role,
                    resources: a.resources,
                    created: now,
                },
            );
            per_framework.entry(a.framework).or_default().push(offer);
        }
        for (fw, offers) in per_framework {
            let ids: Vec<OfferId> = offers.iter().map(|o| o.id.clone()).collect();
            let n = offers.len() as u64;
            if self.send_event(&fw, Event::offers(offers)) {
                self.counters.offers_sent += n;
            } else {
                // Disconnecting recovered the framework's offers already; this covers the
                // framework having been gone before.
                for id in ids {
                    self.drop_offer(&id, None, now);
                }
            }
        }
    }

    /// Removes an offer and gives its resources back to the allocator.
    fn drop_offer(
        &mut self,
        id: &OfferId,
        refuse: Option<Duration>,
        now: Instant,
    ) -> Option<OfferEntry> {
        let entry = self.offers.remove(id)?;
        self.allocator.recover(
            &entry.offer.framework_id,
            &entry.offer.agent_id,
            &entry.role,
            &entry.resources,
            refuse,
            now,
        );
        Some(entry)
    }

    /// Rescinds an offer: RESCIND to its framework, resources back to the allocator.
    pub(crate) fn rescind_offer(&mut self, id: &OfferId, now: Instant) {
        if let Some(entry) = self.drop_offer(id, None, now) {
            self.counters.offers_rescinded += 1;
            self.send_event(&entry.offer.framework_id, Event::rescind(id.clone()));
        }
    }

    pub(crate) fn rescind_agent_offers(&mut self, agent: &AgentId, now: Instant) {
        let ids: Vec<OfferId> = self
            .offers
            .values()
            .filter(|o| &o.offer.agent_id == agent)
            .map(|o| o.offer.id.clone())
            .collect();
        for id in ids {
            self.rescind_offer(&id, now);
        }
    }

    /// Recovers a framework's offers without telling it (it disconnected or failed over).
    pub(crate) fn recover_framework_offers(&mut self, fw: &FrameworkId, now: Instant) {
        let ids: Vec<OfferId> = self
            .offers
            .values()
            .filter(|o| &o.offer.framework_id == fw)
            .map(|o| o.offer.id.clone())
            .collect();
        for id in ids {
            self.drop_offer(&id, None, now);
        }
    }

    /// Rescinds offers older than the offer timeout.
    pub(crate) fn expire_offers(&mut self, now: Instant) {
        let Some(timeout) = self.cfg.offer_timeout else {
            return;
        };
        let ids: Vec<OfferId> = self
            .offers
            .values()
            .filter(|o| now.duration_since(o.created) >= timeout)
            .map(|o| o.offer.id.clone())
            .collect();
        for id in ids {
            self.rescind_offer(&id, now);
        }
    }

    /// DECLINE: the offers' resources go back, not re-offered to this framework on those
    /// agents for `refuse_seconds` (default 5).
    pub(crate) fn decline(
        &mut self,
        fw: &FrameworkId,
        ids: &[OfferId],
        filters: Option<Filters>,
        now: Instant,
    ) {
        let refuse = refuse(filters);
        for id in ids {
            if self
                .offers
                .get(id)
                .is_some_and(|o| &o.offer.framework_id == fw)
            {
                self.drop_offer(id, Some(refuse), now);
                self.counters.offers_declined += 1;
            }
        }
    }

    /// Sends a master-generated update for a task that never launched.
    fn reject_task(
        &mut self,
        fw: &FrameworkId,
        task: &TaskInfo,
        state: TaskState,
        reason: Reason,
        message: String,
    ) {
        let mut status = TaskStatus::new(task.task_id.clone(), state, Source::Master);
        status.reason = Some(reason);
        status.message = Some(message);
        status.agent_id = Some(task.agent_id.clone());
        status.timestamp = Some(wall_seconds());
        tracing::info!(framework = %fw, task = %task.task_id, state = %state, message = status.message.as_deref().unwrap_or(""), "task rejected");
        self.send_event(fw, Event::update(status));
    }

    /// ACCEPT: validates the offers (all exist, belong to the framework, and are on one
    /// agent) and each task against what is left of them; launches the valid tasks on the
    /// agent and gives the rest back with the call's filter. Invalid offers drop every task
    /// (TASK_DROPPED to PARTITION_AWARE frameworks, TASK_LOST otherwise, with
    /// REASON_INVALID_OFFERS); an invalid task gets TASK_ERROR with REASON_TASK_INVALID.
    pub(crate) fn accept(&mut self, fw: &FrameworkId, accept: Accept, now: Instant) {
        let tasks_of = |accept: &Accept| -> Vec<(TaskInfo, bool)> {
            accept
                .operations
                .iter()
                .flat_map(|op| match op.kind {
                    OperationType::Launch => op
                        .launch
                        .as_ref()
                        .map(|l| l.task_infos.iter().map(|t| (t.clone(), false)).collect())
                        .unwrap_or_default(),
                    OperationType::LaunchGroup => op
                        .launch_group
                        .as_ref()
                        .map(|g| {
                            g.task_group
                                .tasks
                                .iter()
                                .map(|t| (t.clone(), true))
                                .collect()
                        })
                        .unwrap_or_default(),
                    _ => Vec::new(),
                })
                .collect()
        };
        // Offers first (Mesos's `validation::offer::validate`).
        let mut problem = None;
        if accept.offer_ids.is_empty() {
            problem = Some("No offers specified".to_string());
        }
        let mut agent: Option<AgentId> = None;
        let mut seen = std::collections::BTreeSet::new();
        for id in &accept.offer_ids {
            if !seen.insert(id.clone()) {
                problem.get_or_insert(format!("Duplicate offer {id} in ACCEPT"));
                continue;
            }
            match self.offers.get(id) {
                None => {
                    problem.get_or_insert(format!("Offer {id} is no longer valid"));
                }
                Some(o) if &o.offer.framework_id != fw => {
                    problem.get_or_insert(format!("Offer {id} is not for framework {fw}"));
                }
                Some(o) => match &agent {
                    Some(a) if a != &o.offer.agent_id => {
                        problem.get_or_insert(format!(
                            "Aggregated offers must belong to one single agent: offer {id} is on {}",
                            o.offer.agent_id
                        ));
                    }
                    _ => agent = Some(o.offer.agent_id.clone()),
                },
            }
        }
        let partition_aware = self
            .frameworks
            .get(fw)
            .is_some_and(|f| f.info.has_capability("PARTITION_AWARE"));
        if let Some(problem) = problem {
            // Valid offers among them are given back (Mesos removes them too).
            for id in &accept.offer_ids {
                if self
                    .offers
                    .get(id)
                    .is_some_and(|o| &o.offer.framework_id == fw)
                {
                    self.drop_offer(id, None, now);
                }
            }
            let state = if partition_aware {
                TaskState::Dropped
            } else {
                TaskState::Lost
            };
            for (task, _) in tasks_of(&accept) {
                self.reject_task(fw, &task, state, Reason::InvalidOffers, problem.clone());
            }
            return;
        }
        let agent = agent.expect("at least one valid offer");
        let mut remaining = Resources::new();
        let mut role = String::from("*");
        for id in &accept.offer_ids {
            if let Some(o) = self.offers.remove(id) {
                remaining = remaining.plus(&o.resources);
                role = o.role;
            }
        }
        let agent_usable = self.agents.get(&agent).is_some_and(|a| a.connected());
        let framework_info = self
            .frameworks
            .get(fw)
            .map(|f| f.info.clone())
            .unwrap_or_default();
        for op in &accept.operations {
            let (tasks, group) = match op.kind {
                OperationType::Launch => (
                    op.launch
                        .as_ref()
                        .map(|l| l.task_infos.clone())
                        .unwrap_or_default(),
                    false,
                ),
                OperationType::LaunchGroup => (
                    op.launch_group
                        .as_ref()
                        .map(|g| g.task_group.tasks.clone())
                        .unwrap_or_default(),
                    true,
                ),
                other => {
                    let name = serde_json::to_value(other)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default();
                    tracing::info!(framework = %fw, operation = %name, "unsupported offer operation ignored");
                    self.send_event(
                        fw,
                        Event::error(format!("Offer operation {name} is not supported by Cairn")),
                    );
                    continue;
                }
            };
            // Validate the whole group (or each task) before launching anything.
            let mut launch = Vec::new();
            let mut budget = remaining.clone();
            let mut group_problem: Option<TaskProblem> = None;
            let mut ids_in_op = std::collections::BTreeSet::new();
            for task in &tasks {
                let res = match validate_task(task, fw, &agent, &budget, &self.tasks, &ids_in_op) {
                    Ok(res) => res,
                    Err(p) => {
                        if group {
                            group_problem.get_or_insert(p);
                        } else {
                            self.reject_task(fw, task, TaskState::Error, p.reason, p.message);
                        }
                        continue;
                    }
                };
                ids_in_op.insert(task.task_id.clone());
                budget = budget
                    .checked_minus(&res)
                    .expect("validated: the task fits the offer");
                launch.push((task.clone(), res));
            }
            if let Some(p) = group_problem {
                for task in &tasks {
                    self.reject_task(
                        fw,
                        task,
                        TaskState::Error,
                        Reason::TaskGroupInvalid,
                        p.message.clone(),
                    );
                }
                continue;
            }
            if launch.is_empty() {
                continue;
            }
            if !agent_usable {
                let state = if partition_aware {
                    TaskState::Dropped
                } else {
                    TaskState::Lost
                };
                for (task, _) in &launch {
                    self.reject_task(
                        fw,
                        task,
                        state,
                        Reason::AgentDisconnected,
                        format!("Agent {agent} is not connected"),
                    );
                }
                continue;
            }
            remaining = budget;
            for (task, res) in &launch {
                self.insert_task(
                    fw.clone(),
                    agent.clone(),
                    task.clone(),
                    role.clone(),
                    res.clone(),
                    TaskState::Staging,
                );
                self.counters.tasks_launched += 1;
            }
            let tasks: Vec<TaskInfo> = launch.into_iter().map(|(t, _)| t).collect();
            self.send_agent(
                &agent,
                AgentEvent::launch(LaunchTasks {
                    framework_id: fw.clone(),
                    framework_info: framework_info.clone(),
                    tasks,
                    group,
                }),
            );
        }
        if !remaining.is_empty() {
            self.allocator.recover(
                fw,
                &agent,
                &role,
                &remaining,
                Some(refuse(accept.filters)),
                now,
            );
        }
    }
}
