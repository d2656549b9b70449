//! Read-only views of the master for the operator API (`GET_*` responses), `/state` (Mesos's
//! field names: `slaves`, `frameworks`, `tasks`, `used_resources`, ...) and
//! `/metrics/snapshot` (Mesos's metric names).

use std::collections::BTreeMap;

use cairn_api::v1::master as op;
use cairn_api::v1::mesos::{AgentInfo, QuotaConfig, Task, TimeInfo, WeightInfo};
use cairn_api::{AgentId, FrameworkId, Resources, TaskState};
use serde_json::{json, Map, Value};

use super::agents::AgentHealth;
use super::tasks::TaskEntry;
use super::{Agent, Framework, Master, MESOS_API_VERSION};

fn time_info(secs: f64) -> TimeInfo {
    TimeInfo {
        nanoseconds: (secs * 1e9) as i64,
    }
}

/// Resources as `/state` writes them: `{"cpus": 2, "mem": 1024, "ports": "[31000-32000]"}`.
pub fn resources_object(r: &Resources) -> Value {
    let mut m = Map::new();
    for name in ["cpus", "disk", "gpus", "mem"] {
        m.insert(name.into(), json!(r.scalar(name)));
    }
    for res in r.to_wire() {
        if let Some(s) = res.scalar {
            m.insert(res.name, json!(s.value));
        } else if let Some(rs) = res.ranges {
            let parts: Vec<String> = rs
                .range
                .iter()
                .map(|x| format!("{}-{}", x.begin, x.end))
                .collect();
            m.insert(res.name, json!(format!("[{}]", parts.join(", "))));
        }
    }
    Value::Object(m)
}

pub(crate) fn task_view(t: &TaskEntry) -> Task {
    Task {
        name: t.info.name.clone(),
        task_id: t.info.task_id.clone(),
        framework_id: t.framework_id.clone(),
        executor_id: None,
        agent_id: t.agent_id.clone(),
        state: t.state,
        resources: t.resources.to_wire(),
        statuses: t.statuses.clone(),
        status_update_state: t.statuses.last().map(|s| s.state),
        status_update_uuid: t.latest_uuid.clone(),
        labels: t.info.labels.clone(),
        container: t.info.container.clone(),
        user: None,
    }
}

impl Master {
    /// Resources of live tasks, per agent.
    fn used_on(&self, agent: &AgentId) -> Resources {
        self.tasks
            .values()
            .filter(|t| &t.agent_id == agent && !t.state.is_terminal())
            .fold(Resources::new(), |acc, t| acc.plus(&t.resources))
    }

    fn offered_on(&self, agent: &AgentId) -> Resources {
        self.offers
            .values()
            .filter(|o| &o.offer.agent_id == agent)
            .fold(Resources::new(), |acc, o| acc.plus(&o.resources))
    }

    fn used_by(&self, fw: &FrameworkId) -> Resources {
        self.tasks
            .values()
            .filter(|t| &t.framework_id == fw && !t.state.is_terminal())
            .fold(Resources::new(), |acc, t| acc.plus(&t.resources))
    }

    fn offered_to(&self, fw: &FrameworkId) -> Resources {
        self.offers
            .values()
            .filter(|o| &o.offer.framework_id == fw)
            .fold(Resources::new(), |acc, o| acc.plus(&o.resources))
    }

    fn agent_info(a: &Agent) -> AgentInfo {
        AgentInfo {
            hostname: a.info.hostname.clone(),
            port: a
                .info
                .address
                .rsplit_once(':')
                .and_then(|(_, p)| p.parse().ok()),
            resources: a.total.to_wire(),
            attributes: a.info.attributes.clone(),
            id: Some(a.id.clone()),
        }
    }

    /// An agent as GET_AGENTS and AGENT_ADDED show it.
    pub(crate) fn agent_view(&self, a: &Agent) -> op::Agent {
        op::Agent {
            agent_info: Self::agent_info(a),
            active: a.connected(),
            deactivated: !a.connected(),
            version: Some(a.info.version.clone()),
            pid: Some(format!("slave(1)@{}", a.info.address)),
            registered_time: Some(time_info(a.registered_time)),
            reregistered_time: a.reregistered_time.map(time_info),
            total_resources: a.total.to_wire(),
            allocated_resources: self.used_on(&a.id).to_wire(),
            offered_resources: self.offered_on(&a.id).to_wire(),
        }
    }

    pub fn get_agents(&self) -> op::GetAgents {
        op::GetAgents {
            agents: self
                .agents
                .values()
                .filter(|a| a.health == AgentHealth::Active)
                .map(|a| self.agent_view(a))
                .collect(),
            recovered_agents: Vec::new(),
        }
    }

    pub(crate) fn framework_view(&self, f: &Framework) -> op::Framework {
        op::Framework {
            framework_info: f.info.clone(),
            active: f.connected(),
            connected: f.connected(),
            recovered: f.recovered,
            registered_time: Some(time_info(f.registered_time)),
            reregistered_time: f.reregistered_time.map(time_info),
            unregistered_time: f.unregistered_time.map(time_info),
            offers: self
                .offers
                .values()
                .filter(|o| o.offer.framework_id == f.id)
                .map(|o| o.offer.clone())
                .collect(),
            allocated_resources: self.used_by(&f.id).to_wire(),
            offered_resources: self.offered_to(&f.id).to_wire(),
        }
    }

    pub fn get_frameworks(&self) -> op::GetFrameworks {
        op::GetFrameworks {
            frameworks: self
                .frameworks
                .values()
                .map(|f| self.framework_view(f))
                .collect(),
            completed_frameworks: self
                .completed_frameworks
                .iter()
                .map(|f| self.framework_view(f))
                .collect(),
        }
    }

    pub fn get_tasks(&self) -> op::GetTasks {
        let mut out = op::GetTasks::default();
        for t in self.tasks.values() {
            match t.state {
                TaskState::Unreachable => out.unreachable_tasks.push(task_view(t)),
                s if s.is_terminal() => out.completed_tasks.push(task_view(t)),
                _ => out.tasks.push(task_view(t)),
            }
        }
        out.completed_tasks
            .extend(self.completed_tasks.iter().map(task_view));
        out
    }

    pub fn get_state(&self) -> op::GetState {
        op::GetState {
            get_tasks: self.get_tasks(),
            get_executors: op::GetExecutors::default(),
            get_frameworks: self.get_frameworks(),
            get_agents: self.get_agents(),
        }
    }

    pub fn weights(&self) -> BTreeMap<String, f64> {
        self.registry.weights.clone()
    }

    pub fn get_weights(&self) -> op::GetWeights {
        op::GetWeights {
            weight_infos: self
                .registry
                .weights
                .iter()
                .map(|(role, weight)| WeightInfo {
                    role: role.clone(),
                    weight: *weight,
                })
                .collect(),
        }
    }

    pub fn get_roles(&self) -> op::GetRoles {
        let mut roles: BTreeMap<String, op::Role> = BTreeMap::new();
        let role = |name: &str| -> op::Role {
            op::Role {
                name: name.to_string(),
                weight: self.registry.weights.get(name).copied().unwrap_or(1.0),
                frameworks: Vec::new(),
                resources: Vec::new(),
            }
        };
        for name in self.registry.weights.keys() {
            roles.insert(name.clone(), role(name));
        }
        for f in self.frameworks.values() {
            for r in &f.roles {
                roles
                    .entry(r.clone())
                    .or_insert_with(|| role(r))
                    .frameworks
                    .push(f.id.clone());
            }
        }
        let mut used: BTreeMap<String, Resources> = BTreeMap::new();
        for t in self.tasks.values().filter(|t| !t.state.is_terminal()) {
            let e = used.entry(t.role.clone()).or_default();
            *e = e.plus(&t.resources);
        }
        for (name, r) in used {
            roles
                .entry(name.clone())
                .or_insert_with(|| role(&name))
                .resources = r.to_wire();
        }
        op::GetRoles {
            roles: roles.into_values().collect(),
        }
    }

    pub fn get_quota(&self) -> op::GetQuota {
        let quantities = |text: &str| {
            let r = Resources::parse(text).unwrap_or_default();
            r.to_wire()
                .into_iter()
                .filter_map(|res| res.scalar.map(|s| (res.name, s)))
                .collect()
        };
        op::GetQuota {
            status: op::QuotaStatus {
                configs: self
                    .registry
                    .quotas
                    .iter()
                    .map(|(role, q)| QuotaConfig {
                        role: role.clone(),
                        guarantees: quantities(&q.guarantee),
                        limits: quantities(&q.limit),
                    })
                    .collect(),
            },
        }
    }

    pub fn get_master(&self) -> op::GetMaster {
        op::GetMaster {
            master_info: self.info.clone(),
            start_time: Some(self.start_time),
            elected_time: Some(self.start_time),
        }
    }

    /// `/state`, in Mesos's shape.
    pub fn state_json(&self) -> Value {
        let slaves: Vec<Value> = self
            .agents
            .values()
            .filter(|a| a.health == AgentHealth::Active)
            .map(|a| {
                let used = self.used_on(&a.id);
                let offered = self.offered_on(&a.id);
                let attrs: Map<String, Value> = a
                    .info
                    .attributes
                    .iter()
                    .map(|x| (x.name.clone(), x.value_text()))
                    .collect();
                json!({
                    "id": a.id.value,
                    "pid": format!("slave(1)@{}", a.info.address),
                    "hostname": a.info.hostname,
                    "port": Self::agent_info(a).port,
                    "registered_time": a.registered_time,
                    "reregistered_time": a.reregistered_time,
                    "resources": resources_object(&a.total),
                    "used_resources": resources_object(&used),
                    "offered_resources": resources_object(&offered),
                    "reserved_resources": {},
                    "unreserved_resources": resources_object(&a.total),
                    "attributes": attrs,
                    "active": a.connected(),
                    "deactivated": !a.connected(),
                    "version": a.info.version,
                    "capabilities": [],
                })
            })
            .collect();
        let task_json = |t: &TaskEntry| {
            json!({
                "id": t.info.task_id.value,
                "name": t.info.name,
                "framework_id": t.framework_id.value,
                "executor_id": "",
                "slave_id": t.agent_id.value,
                "agent_id": t.agent_id.value,
                "state": t.state,
                "resources": resources_object(&t.resources),
                "role": t.role,
                "statuses": t.statuses.iter().map(|s| json!({"state": s.state, "timestamp": s.timestamp})).collect::<Vec<_>>(),
                "container": t.info.container,
            })
        };
        let framework_json = |f: &Framework, completed: bool| {
            let mut tasks = Vec::new();
            let mut unreachable = Vec::new();
            let mut done = Vec::new();
            for t in self.tasks.values().filter(|t| t.framework_id == f.id) {
                match t.state {
                    TaskState::Unreachable => unreachable.push(task_json(t)),
                    s if s.is_terminal() => done.push(task_json(t)),
                    _ => tasks.push(task_json(t)),
                }
            }
            done.extend(
                self.completed_tasks
                    .iter()
                    .filter(|t| t.framework_id == f.id)
                    .map(task_json),
            );
            let used = if completed {
                Resources::new()
            } else {
                self.used_by(&f.id)
            };
            let offered = if completed {
                Resources::new()
            } else {
                self.offered_to(&f.id)
            };
            let offers: Vec<Value> = self
                .offers
                .values()
                .filter(|o| o.offer.framework_id == f.id)
                .map(|o| {
                    json!({"id": o.offer.id.value, "framework_id": f.id.value,
                           "slave_id": o.offer.agent_id.value,
                           "resources": resources_object(&o.resources)})
                })
                .collect();
            json!({
                "id": f.id.value,
                "name": f.info.name,
                "pid": Value::Null,
                "user": f.info.user,
                "hostname": f.info.hostname.clone().unwrap_or_default(),
                "webui_url": f.info.webui_url.clone().unwrap_or_default(),
                "principal": f.info.principal,
                "role": f.roles.first().cloned().unwrap_or_else(|| "*".into()),
                "roles": f.roles,
                "capabilities": f.info.capabilities.iter().map(|c| c.kind.clone()).collect::<Vec<_>>(),
                "failover_timeout": f.info.failover_timeout.unwrap_or(0.0),
                "checkpoint": f.info.checkpoint.unwrap_or(false),
                "active": f.connected(),
                "connected": f.connected(),
                "recovered": f.recovered,
                "registered_time": f.registered_time,
                "reregistered_time": f.reregistered_time,
                "unregistered_time": f.unregistered_time.unwrap_or(0.0),
                "resources": resources_object(&used.plus(&offered)),
                "used_resources": resources_object(&used),
                "offered_resources": resources_object(&offered),
                "tasks": tasks,
                "unreachable_tasks": unreachable,
                "completed_tasks": done,
                "offers": offers,
                "executors": [],
                "completed_executors": [],
            })
        };
        let leader = format!("master@{}:{}", self.cfg.ip, self.cfg.port);
        json!({
            "version": MESOS_API_VERSION,
            "cairn_version": env!("CARGO_PKG_VERSION"),
            "build_date": "",
            "build_time": 0.0,
            "build_user": "",
            "start_time": self.start_time,
            "elected_time": self.start_time,
            "id": self.info.id,
            "pid": leader,
            "hostname": self.cfg.hostname,
            "activated_slaves": self.agents.values().filter(|a| a.health == AgentHealth::Active && a.connected()).count(),
            "deactivated_slaves": self.agents.values().filter(|a| a.health == AgentHealth::Active && !a.connected()).count(),
            "unreachable_slaves": self.agents.values().filter(|a| a.health != AgentHealth::Active).count(),
            "leader": leader,
            "leader_info": self.info,
            "flags": {},
            "slaves": slaves,
            "frameworks": self.frameworks.values().map(|f| framework_json(f, false)).collect::<Vec<_>>(),
            "completed_frameworks": self.completed_frameworks.iter().map(|f| framework_json(f, true)).collect::<Vec<_>>(),
            "orphan_tasks": [],
            "unregistered_frameworks": [],
        })
    }

    /// `/metrics/snapshot`, with Mesos's names (`master/...`, `allocator/mesos/...`).
    pub fn metrics_snapshot(&self) -> BTreeMap<String, f64> {
        let mut m = BTreeMap::new();
        let mut put = |k: &str, v: f64| {
            m.insert(k.to_string(), v);
        };
        put("master/elected", 1.0);
        put(
            "master/uptime_secs",
            super::wall_seconds() - self.start_time,
        );
        let active: Vec<&Agent> = self
            .agents
            .values()
            .filter(|a| a.health == AgentHealth::Active)
            .collect();
        put(
            "master/slaves_connected",
            active.iter().filter(|a| a.connected()).count() as f64,
        );
        put(
            "master/slaves_disconnected",
            active.iter().filter(|a| !a.connected()).count() as f64,
        );
        put(
            "master/slaves_active",
            active.iter().filter(|a| a.connected()).count() as f64,
        );
        put(
            "master/slaves_inactive",
            active.iter().filter(|a| !a.connected()).count() as f64,
        );
        put(
            "master/slaves_unreachable",
            (self.agents.len() - active.len()) as f64,
        );
        put(
            "master/slave_registrations",
            self.counters.agent_registrations as f64,
        );
        put(
            "master/slave_reregistrations",
            self.counters.agent_reregistrations as f64,
        );
        put(
            "master/slave_unreachable_completed",
            self.counters.agents_unreachable_marked as f64,
        );
        let total = active
            .iter()
            .fold(Resources::new(), |acc, a| acc.plus(&a.total));
        let used = self
            .tasks
            .values()
            .filter(|t| !t.state.is_terminal() && t.state != TaskState::Unreachable)
            .fold(Resources::new(), |acc, t| acc.plus(&t.resources));
        let offered = self
            .offers
            .values()
            .fold(Resources::new(), |acc, o| acc.plus(&o.resources));
        for name in ["cpus", "mem", "disk", "gpus"] {
            let t = total.scalar(name);
            let u = used.scalar(name);
            put(&format!("master/{name}_total"), t);
            put(&format!("master/{name}_used"), u);
            put(
                &format!("master/{name}_percent"),
                if t > 0.0 { u / t } else { 0.0 },
            );
            put(&format!("master/{name}_offered"), offered.scalar(name));
        }
        put(
            "master/frameworks_connected",
            self.frameworks.values().filter(|f| f.connected()).count() as f64,
        );
        put(
            "master/frameworks_disconnected",
            self.frameworks.values().filter(|f| !f.connected()).count() as f64,
        );
        put(
            "master/frameworks_active",
            self.frameworks.values().filter(|f| f.connected()).count() as f64,
        );
        put(
            "master/frameworks_inactive",
            self.frameworks.values().filter(|f| !f.connected()).count() as f64,
        );
        put("master/outstanding_offers", self.offers.len() as f64);
        put(
            "master/operator_event_stream_subscribers",
            self.operator_subscribers() as f64,
        );
        put(
            "master/operator_subscribers_disconnected_stalled",
            self.counters.operator_subscribers_disconnected_stalled as f64,
        );
        // As Mesos: live states are gauges of the tasks in them now, terminal states count
        // the tasks that ever reached them (the completed-task list is bounded).
        let mut by_state: BTreeMap<&str, f64> =
            TaskState::ALL.iter().map(|s| (s.as_str(), 0.0)).collect();
        for t in self.tasks.values().filter(|t| !t.state.is_terminal()) {
            *by_state.entry(t.state.as_str()).or_default() += 1.0;
        }
        for (state, n) in &self.counters.tasks_terminal {
            by_state.insert(state, *n as f64);
        }
        for (state, n) in by_state {
            let name = state.trim_start_matches("TASK_").to_ascii_lowercase();
            put(&format!("master/tasks_{name}"), n);
        }
        put(
            "master/valid_status_updates",
            self.counters.valid_status_updates as f64,
        );
        put(
            "master/invalid_status_updates",
            self.counters.invalid_status_updates as f64,
        );
        put(
            "master/messages_decline_offers",
            self.counters.offers_declined as f64,
        );
        put(
            "master/messages_launch_tasks",
            self.counters.tasks_launched as f64,
        );
        put(
            "master/offers_rescinded",
            self.counters.offers_rescinded as f64,
        );
        put("master/offers_sent", self.counters.offers_sent as f64);
        put(
            "master/frameworks_disconnected_stalled",
            self.counters.frameworks_disconnected_stalled as f64,
        );
        put(
            "master/messages_scheduler_calls",
            self.counters.messages_scheduler_calls as f64,
        );
        put(
            "master/messages_agent_calls",
            self.counters.messages_agent_calls as f64,
        );
        put(
            "allocator/mesos/allocation_runs",
            self.counters.allocation_runs as f64,
        );
        put(
            "allocator/mesos/allocation_run_ms",
            self.counters.last_allocation_ms,
        );
        m
    }
}
