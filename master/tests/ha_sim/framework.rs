//! [`SimFramework`]: a simulated framework speaking the v1 scheduler API.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_api::Resource;
use serde_json::{json, Value};
use tokio::sync::watch;

use super::{backoff, leader_base, lock, post, Leader, Records, SCHEDULER_API};

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
