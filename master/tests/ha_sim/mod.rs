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
// Each test binary uses part of this module.
#![allow(
    dead_code,
    unused_imports,
    clippy::unwrap_used,
    clippy::missing_panics_doc
)]

mod agent;
mod framework;
mod masters;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cairn_api::recordio::Decoder;
use cairn_zk::MasterInfo;
use tokio::sync::watch;

pub use self::agent::SimAgent;
pub use self::framework::{FrameworkTask, SimFramework};
pub use self::masters::{
    leaders, logs, start_master, start_master_on, wait_one_leader, MasterProc,
};

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

/// A multi-threaded runtime for the simulated agents and frameworks.
pub fn runtime(threads: usize) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .unwrap()
}
