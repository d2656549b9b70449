//! [`SimAgent`]: a simulated agent speaking the agent protocol.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::protocol::{
    AgentCall, AgentEvent, AgentEventType, AgentTask, Register, Registered, StatusUpdate,
};
use cairn_api::v1::mesos::{TaskInfo, TaskStatus};
use cairn_api::{AgentId, FrameworkId, Resource, Source, TaskId, TaskState};
use tokio::sync::watch;

use super::{backoff, leader_base, lock, post, random_uuid, Leader, Records, AGENT_API};

/// A task as a simulated agent holds it.
#[derive(Debug, Clone)]
struct SimTask {
    info: TaskInfo,
    state: TaskState,
    /// The latest status while not acknowledged.
    unacked: Option<TaskStatus>,
}

#[derive(Debug, Default)]
struct AgentState {
    id: Option<AgentId>,
    tasks: BTreeMap<(FrameworkId, TaskId), SimTask>,
    /// Port of the master this agent is subscribed with now.
    subscribed_to: Option<u16>,
}

/// A simulated agent; see the module documentation.
#[derive(Debug)]
pub struct SimAgent {
    n: u64,
    resources: Vec<Resource>,
    heartbeat: Duration,
    state: Mutex<AgentState>,
    /// Successful (re)registrations.
    pub registrations: AtomicU64,
}

impl SimAgent {
    /// Agent number `n` offering `resources` (Mesos text form), heartbeating every
    /// `heartbeat`.
    pub fn new(n: u64, resources: &str, heartbeat: Duration) -> Arc<Self> {
        Arc::new(Self {
            n,
            resources: cairn_api::Resources::parse(resources).unwrap().to_wire(),
            heartbeat,
            state: Mutex::default(),
            registrations: AtomicU64::new(0),
        })
    }

    /// The id the master gave it.
    pub fn id(&self) -> Option<String> {
        lock(&self.state).id.as_ref().map(|i| i.value.clone())
    }

    /// The port of the master it is subscribed with now.
    pub fn subscribed_to(&self) -> Option<u16> {
        lock(&self.state).subscribed_to
    }

    /// Its tasks: `(framework, task) -> state`.
    pub fn tasks(&self) -> BTreeMap<(String, String), TaskState> {
        lock(&self.state)
            .tasks
            .iter()
            .map(|((f, t), task)| ((f.value.clone(), t.value.clone()), task.state))
            .collect()
    }

    /// Unacknowledged status updates.
    pub fn unacked(&self) -> usize {
        lock(&self.state)
            .tasks
            .values()
            .filter(|t| t.unacked.is_some())
            .count()
    }

    /// Runs until `stop` turns true: one session after another with the detected leader.
    pub async fn run(
        self: Arc<Self>,
        client: reqwest::Client,
        mut leader: Leader,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut failures = 0u32;
        loop {
            let Some(base) = leader_base(&mut leader, &mut stop).await else {
                return;
            };
            tokio::select! {
                () = self.session(&client, &base) => {}
                _ = stop.wait_for(|s| *s) => {}
            }
            lock(&self.state).subscribed_to = None;
            if *stop.borrow() {
                return;
            }
            failures = failures.saturating_add(1);
            let pause = Duration::from_millis(50 * 2u64.pow(failures.min(4)));
            backoff(pause, self.n.wrapping_mul(7919) + u64::from(failures)).await;
        }
    }

    fn registration(&self) -> AgentCall {
        let state = lock(&self.state);
        let register = Register {
            hostname: format!("sim-{}", self.n),
            address: "127.0.0.1:5051".into(),
            resources: self.resources.clone(),
            attributes: vec![],
            boot_id: "sim-boot".into(),
            version: "sim".into(),
            tasks: state
                .tasks
                .iter()
                .map(|((fw, _), t)| AgentTask {
                    framework_id: fw.clone(),
                    task: t.info.clone(),
                    state: t.state,
                    latest_status: t.unacked.clone(),
                })
                .collect(),
        };
        match &state.id {
            None => AgentCall::register(register),
            Some(id) => AgentCall::reregister(id.clone(), register),
        }
    }

    /// One session: (re)register, subscribe, serve events until the stream breaks.
    async fn session(&self, client: &reqwest::Client, base: &str) {
        let call = serde_json::to_string(&self.registration()).unwrap();
        let Some(resp) = post(client, base, AGENT_API, call, None, false).await else {
            return;
        };
        if resp.status() != 200 {
            return;
        }
        let Ok(body) = resp.bytes().await else {
            return;
        };
        let Ok(registered) = serde_json::from_slice::<Registered>(&body) else {
            return;
        };
        let id = registered.agent_id.clone();
        lock(&self.state).id = Some(id.clone());
        let subscribe = serde_json::to_string(&AgentCall::subscribe(id.clone())).unwrap();
        let Some(resp) = post(client, base, AGENT_API, subscribe, None, true).await else {
            return;
        };
        if resp.status() != 200 {
            return;
        }
        let mut records = Records::new(resp);
        let Some(first) = records.next().await else {
            return;
        };
        match serde_json::from_slice::<AgentEvent>(&first) {
            Ok(e) if e.kind == AgentEventType::Subscribed => {}
            _ => return,
        }
        lock(&self.state).subscribed_to = Some(registered.master_info.port);
        self.registrations.fetch_add(1, Ordering::Relaxed);
        // Updates not acknowledged before are sent again to the new master.
        let resend: Vec<(FrameworkId, TaskStatus)> = lock(&self.state)
            .tasks
            .iter()
            .filter_map(|((fw, _), t)| Some((fw.clone(), t.unacked.clone()?)))
            .collect();
        for (fw, status) in resend {
            self.send_update(client, base, &id, fw, status).await;
        }
        let mut heartbeat = tokio::time::interval(self.heartbeat);
        heartbeat.tick().await;
        loop {
            tokio::select! {
                record = records.next() => {
                    let Some(record) = record else { return };
                    let Ok(event) = serde_json::from_slice::<AgentEvent>(&record) else { return };
                    self.handle(client, base, &id, event).await;
                }
                _ = heartbeat.tick() => {
                    let call = serde_json::to_string(&AgentCall::heartbeat(id.clone())).unwrap();
                    match post(client, base, AGENT_API, call, None, false).await {
                        Some(r) if r.status() == 202 => {}
                        _ => return,
                    }
                }
            }
        }
    }

    async fn handle(&self, client: &reqwest::Client, base: &str, id: &AgentId, event: AgentEvent) {
        let mut updates = Vec::new();
        match event.kind {
            AgentEventType::Launch => {
                let launch = event.launch.unwrap();
                let mut state = lock(&self.state);
                for task in launch.tasks {
                    let key = (launch.framework_id.clone(), task.task_id.clone());
                    let status = self.status(&task.task_id, id, TaskState::Running);
                    state.tasks.insert(
                        key,
                        SimTask {
                            info: task,
                            state: TaskState::Running,
                            unacked: Some(status.clone()),
                        },
                    );
                    updates.push((launch.framework_id.clone(), status));
                }
            }
            AgentEventType::Kill => {
                let kill = event.kill.unwrap();
                let mut state = lock(&self.state);
                if let Some(t) = state
                    .tasks
                    .get_mut(&(kill.framework_id.clone(), kill.task_id.clone()))
                {
                    let status = self.status(&kill.task_id, id, TaskState::Killed);
                    t.state = TaskState::Killed;
                    t.unacked = Some(status.clone());
                    updates.push((kill.framework_id, status));
                }
            }
            AgentEventType::Acknowledge => {
                let ack = event.acknowledge.unwrap();
                let mut state = lock(&self.state);
                let key = (ack.framework_id, ack.task_id);
                if let Some(t) = state.tasks.get_mut(&key) {
                    if t.unacked.as_ref().and_then(|s| s.uuid.as_deref()) == Some(&ack.uuid) {
                        t.unacked = None;
                        // Acknowledged terminal tasks are forgotten, as a real agent does.
                        if t.state.is_terminal() {
                            state.tasks.remove(&key);
                        }
                    }
                }
            }
            _ => {}
        }
        for (fw, status) in updates {
            self.send_update(client, base, id, fw, status).await;
        }
    }

    fn status(&self, task: &TaskId, agent: &AgentId, state: TaskState) -> TaskStatus {
        let mut status = TaskStatus::new(task.clone(), state, Source::Executor);
        status.agent_id = Some(agent.clone());
        status.uuid = Some(random_uuid());
        status
    }

    async fn send_update(
        &self,
        client: &reqwest::Client,
        base: &str,
        id: &AgentId,
        framework_id: FrameworkId,
        status: TaskStatus,
    ) {
        let call = AgentCall::status_update(
            id.clone(),
            StatusUpdate {
                framework_id,
                status,
            },
        );
        // A failed send is retried on the next session (the update stays unacknowledged).
        let _ = post(
            client,
            base,
            AGENT_API,
            serde_json::to_string(&call).unwrap(),
            None,
            false,
        )
        .await;
    }
}
