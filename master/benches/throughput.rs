//! End-to-end scheduling throughput through the scheduler API: the master served in-process
//! on loopback (2 runtime threads), N simulated agents speaking the agent protocol over HTTP,
//! and one framework launching tasks as fast as offers allow, at most `tasks / agents` per
//! offer so that every agent gets its share. Agents report every launched task TASK_FINISHED
//! at once (one STATUS_UPDATE call per task, one agent's calls in sequence) and the framework
//! acknowledges each update, so every task costs the master an ACCEPT share, a status update
//! and an acknowledgement, with the allocation they trigger.
//!
//! `cargo bench -p cairn-master --bench throughput` (`-- --quick` for 5000 tasks a row instead
//! of 50 000, `-- --agents N` for one row).
//!
//! Prints a table: tasks finished per second over the run, and the launch latency (ACCEPT
//! sent by the framework to LAUNCH received by the agent) at p50 and p99.
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_master::core::CoreConfig;
use serde_json::{json, Value};
use support::{Stream, TestMaster};

const SCHED: &str = "/api/v1/scheduler";
const AGENT: &str = "/api/v1/agent";

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_idle_connections_per_host(8)
        .build()
        .into()
}

/// Posts `body`; returns the status and the response body.
fn post(
    c: &ureq::Agent,
    addr: SocketAddr,
    path: &str,
    stream: Option<&str>,
    body: &Value,
) -> (u16, String) {
    let mut req = c
        .post(format!("http://{addr}{path}"))
        .header("Content-Type", "application/json")
        .header("Accept", "application/json");
    if let Some(sid) = stream {
        req = req.header("Mesos-Stream-Id", sid);
    }
    let mut resp = req.send(body.to_string()).unwrap();
    let text = resp.body_mut().read_to_string().unwrap_or_default();
    (resp.status().as_u16(), text)
}

/// Launch times by task id, shared by the framework (sender) and the agents (receivers).
type Sent = Arc<Mutex<HashMap<String, Instant>>>;

/// One simulated agent: registers, subscribes, and answers each LAUNCH with TASK_FINISHED.
fn start_agent(addr: SocketAddr, n: usize, sent: Sent, lat: Arc<Mutex<Vec<Duration>>>) {
    let c = client();
    let res = cairn_api::Resources::parse("cpus:64;mem:262144")
        .unwrap()
        .to_wire();
    let mut resp = c
        .post(format!("http://{addr}{AGENT}"))
        .header("Content-Type", "application/json")
        .send(
            json!({"type": "REGISTER", "register": {"hostname": format!("sim-{n}"),
            "address": "127.0.0.1:5051", "resources": res, "boot_id": "b", "version": "bench"}})
            .to_string(),
        )
        .unwrap();
    let reg: Value = serde_json::from_slice(&resp.body_mut().read_to_vec().unwrap()).unwrap();
    let id = reg["agent_id"]["value"].as_str().unwrap().to_string();
    let stream = Stream::open(
        addr,
        AGENT,
        &json!({"type": "SUBSCRIBE", "agent_id": {"value": id}}),
    );
    std::thread::spawn(move || {
        let mut uuid = 0u64;
        while let Ok(e) = stream.events.recv() {
            if e["type"] != "LAUNCH" {
                continue;
            }
            let now = Instant::now();
            let fw = e["launch"]["framework_id"].clone();
            let tasks = e["launch"]["tasks"].as_array().unwrap();
            {
                let sent = sent.lock().unwrap();
                let mut lat = lat.lock().unwrap();
                for t in tasks {
                    if let Some(at) = sent.get(t["task_id"]["value"].as_str().unwrap()) {
                        lat.push(now - *at);
                    }
                }
            }
            for t in tasks {
                uuid += 1;
                let mut bytes = [0u8; 16];
                bytes[..8].copy_from_slice(&uuid.to_le_bytes());
                bytes[8] = n as u8;
                use base64::Engine as _;
                let u = base64::engine::general_purpose::STANDARD.encode(bytes);
                post(
                    &c,
                    addr,
                    AGENT,
                    None,
                    &json!({"type": "STATUS_UPDATE", "agent_id": {"value": id},
                        "status_update": {"framework_id": fw, "status": {
                            "task_id": t["task_id"], "state": "TASK_FINISHED",
                            "source": "SOURCE_EXECUTOR", "uuid": u}}}),
                );
            }
        }
    });
}

/// `master/frameworks_disconnected_stalled`, to tell a framework dropped for a full event
/// queue from other failures.
fn stalled(addr: SocketAddr) -> String {
    support::get(addr, "/metrics/snapshot").json()["master/frameworks_disconnected_stalled"]
        .to_string()
}

struct Run {
    agents: usize,
    tasks: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
    offers: u64,
}

fn run(agents: usize, total: u64) -> Run {
    let m = TestMaster::start(CoreConfig::default(), Duration::from_secs(1));
    let addr = m.addr;
    let sent: Sent = Arc::default();
    let lat: Arc<Mutex<Vec<Duration>>> = Arc::default();
    for n in 0..agents {
        start_agent(addr, n, sent.clone(), lat.clone());
    }
    let fstream = Stream::open(
        addr,
        SCHED,
        &json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "bench", "name": "bench"}}}),
    );
    let sid = fstream.header("Mesos-Stream-Id").unwrap().to_string();
    let fw = fstream.next_of("SUBSCRIBED")["subscribed"]["framework_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();

    // Acknowledgements on their own thread, as a scheduler driver does.
    let (ack_tx, ack_rx) = mpsc::channel::<Value>();
    let finished = Arc::new(AtomicU64::new(0));
    {
        let (sid, fw, finished) = (sid.clone(), fw.clone(), finished.clone());
        std::thread::spawn(move || {
            let c = client();
            while let Ok(s) = ack_rx.recv() {
                post(
                    &c,
                    addr,
                    SCHED,
                    Some(&sid),
                    &json!({"framework_id": {"value": fw}, "type": "ACKNOWLEDGE", "acknowledge": {
                        "agent_id": s["agent_id"], "task_id": s["task_id"], "uuid": s["uuid"]}}),
                );
                finished.fetch_add(1, Ordering::Relaxed);
            }
        });
    }

    let per_agent = total.div_ceil(agents as u64);
    let c = client();
    let start = Instant::now();
    let mut launched = 0u64;
    let mut offers = 0u64;
    let mut finished_seen = 0u64;
    while finished_seen < total {
        let Ok(e) = fstream.events.recv_timeout(Duration::from_secs(30)) else {
            panic!(
                "stalled: {launched} launched, {finished_seen} finished (subscribers \
                 disconnected as stalled: {})",
                stalled(addr)
            );
        };
        match e["type"].as_str() {
            Some("UPDATE") => {
                let s = &e["update"]["status"];
                assert_eq!(s["state"], "TASK_FINISHED", "{e}");
                finished_seen += 1;
                ack_tx.send(s.clone()).unwrap();
            }
            Some("OFFERS") => {
                for o in e["offers"]["offers"].as_array().unwrap() {
                    offers += 1;
                    let scalar = |name: &str| -> f64 {
                        o["resources"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .filter(|r| r["name"] == name)
                            .map(|r| r["scalar"]["value"].as_f64().unwrap())
                            .sum()
                    };
                    // Tasks of cpus:0.01;mem:8, as many as fit and are still wanted, but at
                    // most an agent's share of the run per offer: the first offer of an agent
                    // fits every task, and piling all of them onto one agent would leave the
                    // other agents (and their status updates) idle.
                    let fit = ((scalar("cpus") / 0.01 + 1e-6).floor() as u64)
                        .min((scalar("mem") / 8.0) as u64)
                        .min(per_agent)
                        .min(total - launched);
                    let now = Instant::now();
                    let infos: Vec<Value> = (0..fit)
                        .map(|i| {
                            let id = format!("t{}", launched + i);
                            json!({"name": id, "task_id": {"value": id}, "agent_id": o["agent_id"],
                                "resources": [
                                    {"name": "cpus", "type": "SCALAR", "scalar": {"value": 0.01}},
                                    {"name": "mem", "type": "SCALAR", "scalar": {"value": 8}}],
                                "command": {"value": "true"}})
                        })
                        .collect();
                    {
                        let mut sent = sent.lock().unwrap();
                        for t in &infos {
                            sent.insert(t["task_id"]["value"].as_str().unwrap().into(), now);
                        }
                    }
                    launched += fit;
                    let ops = if infos.is_empty() {
                        json!([])
                    } else {
                        json!([{"type": "LAUNCH", "launch": {"task_infos": infos}}])
                    };
                    let (status, text) = post(
                        &c,
                        addr,
                        SCHED,
                        Some(&sid),
                        &json!({"framework_id": {"value": fw}, "type": "ACCEPT", "accept": {
                            "offer_ids": [o["id"]], "operations": ops,
                            "filters": {"refuse_seconds": 0.0}}}),
                    );
                    assert_eq!(
                        status,
                        202,
                        "ACCEPT: {text} (subscribers disconnected as stalled: {})",
                        stalled(addr)
                    );
                }
            }
            _ => {}
        }
    }
    let secs = start.elapsed().as_secs_f64();
    while finished.load(Ordering::Relaxed) < total {
        std::thread::sleep(Duration::from_millis(1));
    }
    let mut lat = lat.lock().unwrap().clone();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    Run {
        agents,
        tasks: total,
        secs,
        p50: pct(0.50),
        p99: pct(0.99),
        offers,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let total = if quick { 5_000 } else { 50_000 };
    // `--agents N`: that row only.
    let rows: Vec<usize> = match args.iter().position(|a| a == "--agents") {
        Some(i) => vec![args[i + 1].parse().expect("--agents takes a number")],
        None => vec![1, 10, 100],
    };
    println!("| agents | tasks | seconds | tasks/s | offers | launch p50 ms | launch p99 ms |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for agents in rows {
        let r = run(agents, total);
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {:.2} | {:.2} |",
            r.agents,
            r.tasks,
            r.secs,
            r.tasks as f64 / r.secs,
            r.offers,
            r.p50.as_secs_f64() * 1e3,
            r.p99.as_secs_f64() * 1e3
        );
    }
}
