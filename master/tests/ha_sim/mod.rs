//! Simulated agents and a framework for the HA tests and the failover benchmark: lightweight
//! async tasks that speak the real protocols (the agent protocol of `cairn_api::protocol`, the
//! v1 scheduler API) over HTTP and find the leading master the way agents do, through a
//! `cairn_zk` detector reading the masters' `json.info_` znodes.
//!
//! - [`SimAgent`] registers, subscribes, heartbeats, answers LAUNCH with TASK_RUNNING and KILL
//!   with TASK_KILLED, resends unacknowledged updates, and after any broken session
//!   re-registers with the leader then detected, reporting all its tasks.
//! - [`SimFramework`] subscribes (PARTITION_AWARE, with a long failover timeout), launches
//!   tasks on every offer while launching is on, acknowledges updates, re-subscribes with its
//!   id after a broken session, and reconciles the tasks whose state it has not heard from
//!   the current leader.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cairn_api::protocol::{
    AgentCall, AgentEvent, AgentEventType, AgentTask, Register, Registered, StatusUpdate,
};
use cairn_api::recordio::Decoder;
use cairn_api::v1::mesos::{TaskInfo, TaskStatus};
use cairn_api::{AgentId, FrameworkId, Resource, Source, TaskId, TaskState};
use cairn_zk::MasterInfo;
use serde_json::{json, Value};
use tokio::sync::watch;

/// The leading master as a detector publishes it.
pub type Leader = watch::Receiver<Option<MasterInfo>>;

const AGENT_API: &str = "/api/v1/agent";
const SCHEDULER_API: &str = "/api/v1/scheduler";

/// An HTTP client for simulated agents and frameworks: no redirects (they follow the
/// detector), no proxy.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap()
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// `http://host:port` of the detected leader, once there is one; `None` when `stop` turns.
async fn leader_base(leader: &mut Leader, stop: &mut watch::Receiver<bool>) -> Option<String> {
    loop {
        if *stop.borrow() {
            return None;
        }
        if let Some(authority) = leader
            .borrow_and_update()
            .as_ref()
            .and_then(MasterInfo::authority)
        {
            return Some(format!("http://{authority}"));
        }
        tokio::select! {
            r = leader.changed() => if r.is_err() { return None },
            _ = stop.changed() => {}
        }
    }
}

/// Pauses `base` (plus up to as much again, so that thousands of agents spread out).
async fn backoff(base: Duration, salt: u64) {
    let jitter = base.mul_f64(f64::from(u32::try_from(salt % 1000).unwrap()) / 1000.0);
    tokio::time::sleep(base + jitter).await;
}

fn random_uuid() -> String {
    base64::engine::general_purpose::STANDARD.encode(cairn_master::core::random_bytes())
}

/// RecordIO records of a streaming response.
struct Records {
    resp: reqwest::Response,
    decoder: Decoder,
    ready: VecDeque<Vec<u8>>,
}

impl Records {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            resp,
            decoder: Decoder::new(16 << 20),
            ready: VecDeque::new(),
        }
    }

    /// The next record; `None` when the stream ends or breaks.
    async fn next(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(r) = self.ready.pop_front() {
                return Some(r);
            }
            let chunk = self.resp.chunk().await.ok()??;
            self.ready.extend(self.decoder.feed(&chunk).ok()?);
        }
    }
}

/// How long a plain call may take: a master cut off by a partition must not hang an agent
/// forever (a stream has no such limit; the calls beside it notice the partition).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

async fn post(
    client: &reqwest::Client,
    base: &str,
    path: &str,
    body: String,
    stream_id: Option<&str>,
    opens_stream: bool,
) -> Option<reqwest::Response> {
    let mut req = client
        .post(format!("{base}{path}"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json")
        .body(body);
    if !opens_stream {
        req = req.timeout(CALL_TIMEOUT);
    }
    if let Some(id) = stream_id {
        req = req.header("Mesos-Stream-Id", id);
    }
    req.send().await.ok()
}

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

/// What a simulated framework knows of one of its tasks.
#[derive(Debug, Clone, PartialEq)]
pub struct FrameworkTask {
    pub agent_id: String,
    /// Every state reported, in order (updates and reconciliation answers).
    pub states: Vec<String>,
    /// The subscription in which the latest state was heard.
    pub heard_in: u64,
    /// Whether a master answered its ACCEPT `202` (a launch sent as the leader died fails).
    pub accepted: bool,
}

#[derive(Debug, Default)]
struct FrameworkState {
    id: Option<String>,
    /// Every task it ever tried to launch (ACCEPT sent), by id.
    tasks: BTreeMap<String, FrameworkTask>,
    next_task: u64,
    /// Subscriptions so far (the current one's number).
    subscription: u64,
    /// Port of the master it is subscribed with now.
    subscribed_to: Option<u16>,
}

/// A simulated framework; see the module documentation.
#[derive(Debug)]
pub struct SimFramework {
    name: String,
    tasks_per_offer: usize,
    task_resources: String,
    launching: watch::Sender<bool>,
    state: Mutex<FrameworkState>,
}

impl SimFramework {
    /// A framework launching up to `tasks_per_offer` tasks of `task_resources` per offer.
    pub fn new(name: &str, tasks_per_offer: usize, task_resources: &str) -> Arc<Self> {
        Arc::new(Self {
            name: name.into(),
            tasks_per_offer,
            task_resources: task_resources.into(),
            launching: watch::Sender::new(true),
            state: Mutex::default(),
        })
    }

    /// Starts or stops launching.
    pub fn set_launching(&self, on: bool) {
        self.launching.send_replace(on);
    }

    pub fn id(&self) -> Option<String> {
        lock(&self.state).id.clone()
    }

    /// Subscriptions so far.
    pub fn subscriptions(&self) -> u64 {
        lock(&self.state).subscription
    }

    /// The port of the master it is subscribed with now.
    pub fn subscribed_to(&self) -> Option<u16> {
        lock(&self.state).subscribed_to
    }

    /// Every task it tried to launch.
    pub fn tasks(&self) -> BTreeMap<String, FrameworkTask> {
        lock(&self.state).tasks.clone()
    }

    /// Whether every task's latest state was heard in the current subscription.
    pub fn all_heard_now(&self) -> bool {
        let state = lock(&self.state);
        state.subscribed_to.is_some()
            && state
                .tasks
                .values()
                .all(|t| t.heard_in == state.subscription)
    }

    /// Runs until `stop` turns true: one subscription after another with the detected leader.
    pub async fn run(
        self: Arc<Self>,
        client: reqwest::Client,
        mut leader: Leader,
        mut stop: watch::Receiver<bool>,
    ) {
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
            backoff(Duration::from_millis(100), 1).await;
        }
    }

    async fn session(&self, client: &reqwest::Client, base: &str) {
        let mut info = json!({"user": "root", "name": self.name, "failover_timeout": 3600.0,
            "capabilities": [{"type": "PARTITION_AWARE"}]});
        if let Some(id) = self.id() {
            info["id"] = json!({"value": id});
        }
        let call = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": info}});
        let Some(resp) = post(client, base, SCHEDULER_API, call.to_string(), None, true).await
        else {
            return;
        };
        if resp.status() != 200 {
            return;
        }
        let Some(stream_id) = resp
            .headers()
            .get("Mesos-Stream-Id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
        else {
            return;
        };
        let mut records = Records::new(resp);
        let mut reconcile = tokio::time::interval(Duration::from_millis(500));
        let mut launching = self.launching.subscribe();
        loop {
            tokio::select! {
                record = records.next() => {
                    let Some(record) = record else { return };
                    let Ok(event) = serde_json::from_slice::<Value>(&record) else { return };
                    self.handle(client, base, &stream_id, &event).await;
                }
                _ = reconcile.tick() => self.reconcile(client, base, &stream_id).await,
                _ = launching.changed() => {
                    // Offers declined while not launching come back after this revive.
                    if *launching.borrow_and_update() {
                        self.call(client, base, &stream_id, json!({"type": "REVIVE"})).await;
                    }
                }
            }
        }
    }

    /// Sends a call on the current subscription; the response status, `None` without one.
    async fn call(
        &self,
        client: &reqwest::Client,
        base: &str,
        stream_id: &str,
        mut call: Value,
    ) -> Option<u16> {
        let id = self.id()?;
        call["framework_id"] = json!({"value": id});
        let resp = post(
            client,
            base,
            SCHEDULER_API,
            call.to_string(),
            Some(stream_id),
            false,
        )
        .await?;
        Some(resp.status().as_u16())
    }

    async fn handle(&self, client: &reqwest::Client, base: &str, stream_id: &str, event: &Value) {
        match event["type"].as_str() {
            Some("SUBSCRIBED") => {
                let mut state = lock(&self.state);
                state.id = event["subscribed"]["framework_id"]["value"]
                    .as_str()
                    .map(str::to_string);
                state.subscription += 1;
                state.subscribed_to = base.rsplit(':').next().and_then(|p| p.parse().ok());
            }
            Some("OFFERS") => {
                let offers = event["offers"]["offers"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                for offer in offers {
                    self.answer_offer(client, base, stream_id, &offer).await;
                }
            }
            Some("UPDATE") => {
                let status = &event["update"]["status"];
                let task = status["task_id"]["value"].as_str().unwrap_or_default();
                let state_name = status["state"].as_str().unwrap_or_default().to_string();
                {
                    let mut state = lock(&self.state);
                    let subscription = state.subscription;
                    if let Some(t) = state.tasks.get_mut(task) {
                        t.states.push(state_name);
                        t.heard_in = subscription;
                    }
                }
                if let (Some(uuid), Some(agent)) = (
                    status["uuid"].as_str(),
                    status["agent_id"]["value"].as_str(),
                ) {
                    let ack = json!({"type": "ACKNOWLEDGE", "acknowledge": {
                        "agent_id": {"value": agent}, "task_id": {"value": task}, "uuid": uuid}});
                    self.call(client, base, stream_id, ack).await;
                }
            }
            _ => {}
        }
    }

    async fn answer_offer(
        &self,
        client: &reqwest::Client,
        base: &str,
        stream_id: &str,
        offer: &Value,
    ) {
        let offer_id = offer["id"].clone();
        let agent = offer["agent_id"]["value"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let fits = self.tasks_fitting(offer);
        if !*self.launching.borrow() || fits == 0 {
            let decline = json!({"type": "DECLINE", "decline": {"offer_ids": [offer_id],
                "filters": {"refuse_seconds": 3600.0}}});
            self.call(client, base, stream_id, decline).await;
            return;
        }
        let resources = cairn_api::Resources::parse(&self.task_resources)
            .unwrap()
            .to_wire();
        let mut infos = Vec::new();
        {
            let mut state = lock(&self.state);
            let subscription = state.subscription;
            for _ in 0..fits {
                state.next_task += 1;
                let id = format!("{}-{}", self.name, state.next_task);
                state.tasks.insert(
                    id.clone(),
                    FrameworkTask {
                        agent_id: agent.clone(),
                        states: Vec::new(),
                        // Not heard yet: reconciled until it is.
                        heard_in: subscription.wrapping_sub(1),
                        accepted: false,
                    },
                );
                infos.push(json!({"name": id, "task_id": {"value": id},
                    "agent_id": {"value": agent}, "resources": resources,
                    "command": {"value": "sleep 3600"}}));
            }
        }
        let ids: Vec<String> = infos
            .iter()
            .map(|i| i["task_id"]["value"].as_str().unwrap().to_string())
            .collect();
        let accept = json!({"type": "ACCEPT", "accept": {"offer_ids": [offer_id],
            "operations": [{"type": "LAUNCH", "launch": {"task_infos": infos}}],
            "filters": {"refuse_seconds": 0.0}}});
        if self.call(client, base, stream_id, accept).await == Some(202) {
            let mut state = lock(&self.state);
            for id in ids {
                if let Some(t) = state.tasks.get_mut(&id) {
                    t.accepted = true;
                }
            }
        }
    }

    /// How many tasks (up to `tasks_per_offer`) the offer's resources hold.
    fn tasks_fitting(&self, offer: &Value) -> usize {
        let task = cairn_api::Resources::parse(&self.task_resources).unwrap();
        let Ok(wire) = serde_json::from_value::<Vec<Resource>>(offer["resources"].clone()) else {
            return 0;
        };
        let Ok(offered) = cairn_api::Resources::from_wire(&wire) else {
            return 0;
        };
        let mut fits = self.tasks_per_offer;
        for name in task.scalar_names() {
            let need = task.scalar(name);
            if need > 0.0 {
                // Whole tasks only; the float is small and positive.
                #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
                let n = (offered.scalar(name) / need + 1e-9).floor() as usize;
                fits = fits.min(n);
            }
        }
        fits
    }

    /// Asks for the state of every task not heard from in this subscription.
    async fn reconcile(&self, client: &reqwest::Client, base: &str, stream_id: &str) {
        let tasks: Vec<Value> = {
            let state = lock(&self.state);
            state
                .tasks
                .iter()
                .filter(|(_, t)| t.heard_in != state.subscription)
                .map(|(id, t)| json!({"task_id": {"value": id}, "agent_id": {"value": t.agent_id}}))
                .collect()
        };
        if tasks.is_empty() {
            return;
        }
        let call = json!({"type": "RECONCILE", "reconcile": {"tasks": tasks}});
        self.call(client, base, stream_id, call).await;
    }
}

/// Task ids by how many agents run them: a task on two agents is a duplicate.
pub fn running_tasks(agents: &[Arc<SimAgent>]) -> BTreeMap<String, usize> {
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for agent in agents {
        for ((_, task), state) in agent.tasks() {
            if !state.is_terminal() {
                *seen.entry(task).or_default() += 1;
            }
        }
    }
    seen
}

/// The tasks whose latest state, as the framework knows it, is `state`.
pub fn tasks_in(framework: &SimFramework, state: &str) -> BTreeSet<String> {
    framework
        .tasks()
        .into_iter()
        .filter(|(_, t)| t.states.last().map(String::as_str) == Some(state))
        .map(|(id, _)| id)
        .collect()
}

/// A `cairn-master` process of an HA test or benchmark.
pub struct MasterProc {
    pub service: cairn_testsupport::Service,
    pub port: u16,
    pub ip: std::net::Ipv4Addr,
}

/// Starts master `i` (log `master-<i>-<generation>`) on a free port, electing in `zk_url`
/// (`zk://.../path`), with `extra` appended to its config file.
pub fn start_master(
    zk_url: &str,
    dir: &cairn_testsupport::ServiceDir,
    name: &str,
    session_timeout: Duration,
    extra: &str,
) -> MasterProc {
    start_master_on(
        zk_url,
        dir,
        name,
        session_timeout,
        extra,
        [127, 0, 0, 1].into(),
    )
}

/// [`start_master`] listening on (and advertising) `ip`, e.g. a test network's bridge.
pub fn start_master_on(
    zk_url: &str,
    dir: &cairn_testsupport::ServiceDir,
    name: &str,
    session_timeout: Duration,
    extra: &str,
    ip: std::net::Ipv4Addr,
) -> MasterProc {
    let port = cairn_testsupport::free_port();
    let work = dir.path().join(name);
    std::fs::create_dir_all(&work).unwrap();
    let config = work.join("master.toml");
    std::fs::write(
        &config,
        format!(
            "zk = \"{zk_url}\"\nzk_session_timeout_secs = {}\nwork_dir = \"{}\"\n{extra}\n",
            session_timeout.as_secs_f64(),
            work.display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-master"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("{ip}:{port}"))
        .env("RUST_LOG", "info");
    let service = cairn_testsupport::Service::spawn(name, cmd, dir.path()).unwrap();
    MasterProc { service, port, ip }
}

fn blocking_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into()
}

impl MasterProc {
    /// A value of `/metrics/snapshot`; `None` when the master does not answer.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let mut resp = blocking_client()
            .get(&format!(
                "http://{}:{}/metrics/snapshot",
                self.ip, self.port
            ))
            .call()
            .ok()?;
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()?;
        v[name].as_f64()
    }

    /// Whether it leads and serves (`master/elected` 1).
    pub fn elected(&self) -> bool {
        self.metric("master/elected") == Some(1.0)
    }

    /// `(status, body)` of a JSON POST; `None` when the master does not answer.
    pub fn post(&self, path: &str, body: &Value) -> Option<(u16, String)> {
        let mut resp = blocking_client()
            .post(&format!("http://{}:{}{path}", self.ip, self.port))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.body_mut().read_to_string().ok()?))
    }
}

/// Which of `masters` lead now (by `master/elected`).
pub fn leaders(masters: &[Option<MasterProc>]) -> Vec<usize> {
    masters
        .iter()
        .enumerate()
        .filter(|(_, m)| m.as_ref().is_some_and(MasterProc::elected))
        .map(|(i, _)| i)
        .collect()
}

/// Every master's log, for failure messages.
pub fn logs(masters: &[Option<MasterProc>]) -> String {
    masters
        .iter()
        .flatten()
        .map(|m| format!("--- {}\n{}", m.service.name(), m.service.log()))
        .collect()
}

/// Waits until exactly one master leads, asserting that two never do; returns it and how long
/// it took.
pub fn wait_one_leader(masters: &[Option<MasterProc>], limit: Duration) -> (usize, Duration) {
    let start = std::time::Instant::now();
    loop {
        let l = leaders(masters);
        assert!(l.len() <= 1, "two masters act as leader at once: {l:?}");
        if let [one] = l[..] {
            return (one, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "no leader after {limit:?}\n{}",
            logs(masters)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A multi-threaded runtime for the simulated agents and frameworks.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}
