//! The agent lifecycle as a framework sees it: an agent that stops calling is marked
//! unreachable after the agent timeout (TASK_UNREACHABLE to PARTITION_AWARE frameworks,
//! TASK_LOST to others); when it re-registers its tasks run again, tasks the master does not
//! know are killed and tasks the agent lost are TASK_LOST (TASK_GONE after a reboot), each
//! reported once. With the real `cairn-master` binary: SIGTERM ends it promptly while
//! subscribers are connected, and a restarted standalone master (same registry file) takes
//! the agent back with its id and rebuilds its tasks from the agent's report.
#![allow(clippy::unwrap_used)]

mod support;

use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use cairn_master::core::CoreConfig;
use serde_json::{json, Value};
use support::{get, post_json, SimAgent, Stream, TestMaster};

const SCHED: &str = "/api/v1/scheduler";
const AGENT: &str = "/api/v1/agent";

struct Framework {
    addr: SocketAddr,
    stream: Stream,
    sid: String,
    id: String,
}

impl Framework {
    fn subscribe(addr: SocketAddr, info: &Value) -> Self {
        let stream = Stream::open(
            addr,
            SCHED,
            &json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": info}}),
        );
        assert_eq!(stream.status, 200);
        let sid = stream.header("Mesos-Stream-Id").unwrap().to_string();
        let id = stream.next_of("SUBSCRIBED")["subscribed"]["framework_id"]["value"]
            .as_str()
            .unwrap()
            .to_string();
        Self {
            addr,
            stream,
            sid,
            id,
        }
    }

    fn call(&self, body: &Value) -> support::Resp {
        post_json(self.addr, SCHED, body, &[("Mesos-Stream-Id", &self.sid)])
    }

    /// Launches `tasks` (1 cpu each) on the next offer, refusing the rest for an hour so
    /// other frameworks get it.
    fn launch(&self, agent: &str, tasks: &[&str]) {
        let offers = self.stream.next_of("OFFERS");
        let oid = offers["offers"]["offers"][0]["id"]["value"].clone();
        let infos: Vec<Value> = tasks
            .iter()
            .map(|t| {
                json!({"name": t, "task_id": {"value": t}, "agent_id": {"value": agent},
                   "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1.0}}],
                   "command": {"value": "sleep 600"}})
            })
            .collect();
        let r = self.call(
            &json!({"framework_id": {"value": self.id}, "type": "ACCEPT",
            "accept": {"offer_ids": [{"value": oid}],
                "operations": [{"type": "LAUNCH", "launch": {"task_infos": infos}}],
                "filters": {"refuse_seconds": 3600.0}}}),
        );
        assert_eq!(r.status, 202, "{}", r.text());
    }

    /// The next UPDATE's (task, state).
    fn update(&self) -> (String, String) {
        let s = self.stream.next_of("UPDATE")["update"]["status"].clone();
        (
            s["task_id"]["value"].as_str().unwrap().to_string(),
            s["state"].as_str().unwrap().to_string(),
        )
    }

    /// The next `n` UPDATEs, sorted.
    fn updates(&self, n: usize) -> Vec<(String, String)> {
        let mut v: Vec<_> = (0..n).map(|_| self.update()).collect();
        v.sort();
        v
    }

    /// Asserts no UPDATE arrives within `quiet`.
    fn no_more_updates(&self, quiet: Duration) {
        let deadline = Instant::now() + quiet;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            if let Ok(e) = self.stream.events.recv_timeout(left) {
                assert_ne!(
                    e["type"], "UPDATE",
                    "a duplicated or unexpected update: {e}"
                );
            }
        }
    }
}

fn pair(task: &str, state: &str) -> (String, String) {
    (task.to_string(), state.to_string())
}

fn agent_task(fw: &str, task: &str, state: &str) -> Value {
    json!({"framework_id": {"value": fw}, "state": state, "task": {
        "name": task, "task_id": {"value": task}, "agent_id": {"value": "ignored"},
        "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1.0}}],
        "command": {"value": "sleep 600"}}})
}

fn reregister(addr: SocketAddr, id: &str, boot_id: &str, tasks: &[Value]) -> support::Resp {
    let res = cairn_api::Resources::parse("cpus:4;mem:1024")
        .unwrap()
        .to_wire();
    post_json(
        addr,
        AGENT,
        &json!({"type": "REREGISTER", "agent_id": {"value": id}, "register": {
            "hostname": "sim-agent", "address": "127.0.0.1:5051", "resources": res,
            "boot_id": boot_id, "version": "test", "tasks": tasks}}),
        &[],
    )
}

/// HEARTBEAT calls for `id` every 200 ms until dropped, as a live agent sends them.
struct Heartbeats(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Heartbeats {
    fn start(addr: SocketAddr, id: &str) -> Self {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let id = id.to_string();
        std::thread::spawn(move || {
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                post_json(
                    addr,
                    AGENT,
                    &json!({"type": "HEARTBEAT", "agent_id": {"value": id}}),
                    &[],
                );
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        Self(stop)
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

fn agent_stream(addr: SocketAddr, id: &str) -> Stream {
    let s = Stream::open(
        addr,
        AGENT,
        &json!({"type": "SUBSCRIBE", "agent_id": {"value": id}}),
    );
    assert_eq!(s.status, 200);
    s.next_of("SUBSCRIBED");
    s
}

#[test]
fn a_silent_agent_becomes_unreachable_and_is_reconciled_when_it_returns() {
    let m = TestMaster::start(
        CoreConfig {
            agent_timeout: Duration::from_secs(1),
            ..CoreConfig::default()
        },
        Duration::from_millis(50),
    );
    let agent = SimAgent::start(m.addr, "cpus:4;mem:1024");
    let aware = Framework::subscribe(
        m.addr,
        &json!({"user": "root", "name": "aware", "capabilities": [{"type": "PARTITION_AWARE"}]}),
    );
    aware.launch(&agent.id, &["a1", "a2"]);
    let plain = Framework::subscribe(m.addr, &json!({"user": "root", "name": "plain"}));
    plain.launch(&agent.id, &["b1"]);
    for (fw, t, n) in [(&aware, "a1", 1), (&aware, "a2", 2), (&plain, "b1", 3)] {
        agent.update(&fw.id, t, "TASK_RUNNING", n);
        assert_eq!(fw.update(), pair(t, "TASK_RUNNING"));
    }

    // The agent falls silent: after the 1 s timeout its tasks are unreachable.
    let silent = Instant::now();
    assert_eq!(
        aware.updates(2),
        vec![
            pair("a1", "TASK_UNREACHABLE"),
            pair("a2", "TASK_UNREACHABLE")
        ]
    );
    assert!(silent.elapsed() >= Duration::from_millis(900));
    assert_eq!(plain.update(), pair("b1", "TASK_LOST"));
    let failure = plain.stream.next_of("FAILURE");
    assert_eq!(failure["failure"]["agent_id"]["value"], agent.id.as_str());
    let snap = get(m.addr, "/metrics/snapshot").json();
    assert_eq!(snap["master/slaves_unreachable"], 1.0);
    assert_eq!(snap["master/tasks_unreachable"], 3.0);
    // An unreachable agent's calls are refused until it re-registers.
    let r = post_json(
        m.addr,
        AGENT,
        &json!({"type": "HEARTBEAT", "agent_id": {"value": agent.id}}),
        &[],
    );
    assert_eq!(r.status, 404, "{}", r.text());

    // It comes back with a1, b1 and a task the master never launched; a2 is gone.
    let r = reregister(
        m.addr,
        &agent.id,
        "boot-1",
        &[
            agent_task(&aware.id, "a1", "TASK_RUNNING"),
            agent_task(&plain.id, "b1", "TASK_RUNNING"),
            agent_task(&aware.id, "stray", "TASK_RUNNING"),
        ],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["agent_id"]["value"], agent.id.as_str());
    let _alive = Heartbeats::start(m.addr, &agent.id);
    assert_eq!(
        aware.updates(2),
        vec![pair("a1", "TASK_RUNNING"), pair("a2", "TASK_LOST")]
    );
    assert_eq!(plain.update(), pair("b1", "TASK_RUNNING"));
    let stream = agent_stream(m.addr, &agent.id);
    let kill = stream.next_of("KILL");
    assert_eq!(kill["kill"]["task_id"]["value"], "stray");
    assert_eq!(kill["kill"]["framework_id"]["value"], aware.id.as_str());

    // Nothing is reported twice, and the master's view matches the agent's.
    aware.no_more_updates(Duration::from_secs(1));
    plain.no_more_updates(Duration::from_millis(100));
    while let Ok(e) = stream.events.recv_timeout(Duration::from_millis(300)) {
        assert_ne!(e["type"], "KILL", "a second kill: {e}");
    }
    let snap = get(m.addr, "/metrics/snapshot").json();
    assert_eq!(snap["master/slaves_unreachable"], 0.0);
    assert_eq!(snap["master/slaves_active"], 1.0);
    assert_eq!(snap["master/tasks_running"], 2.0);
    assert_eq!(snap["master/tasks_lost"], 1.0);
    assert_eq!(snap["master/tasks_unreachable"], 0.0);
}

#[test]
fn an_agent_back_after_a_reboot_reports_missing_tasks_gone() {
    let m = TestMaster::start(
        CoreConfig {
            agent_timeout: Duration::from_secs(1),
            ..CoreConfig::default()
        },
        Duration::from_millis(50),
    );
    let agent = SimAgent::start(m.addr, "cpus:4;mem:1024");
    let fw = Framework::subscribe(
        m.addr,
        &json!({"user": "root", "name": "aware", "capabilities": [{"type": "PARTITION_AWARE"}]}),
    );
    fw.launch(&agent.id, &["t1"]);
    agent.update(&fw.id, "t1", "TASK_RUNNING", 1);
    assert_eq!(fw.update(), pair("t1", "TASK_RUNNING"));
    assert_eq!(fw.update(), pair("t1", "TASK_UNREACHABLE"));
    let r = reregister(m.addr, &agent.id, "boot-2", &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(fw.update(), pair("t1", "TASK_GONE"));
    fw.no_more_updates(Duration::from_millis(500));
}

/// `cairn-master` as a process on a free loopback port, standalone, with its registry in
/// `work_dir`.
struct Process {
    child: Child,
    addr: SocketAddr,
}

impl Process {
    fn start(work_dir: &std::path::Path) -> Self {
        let port = cairn_testsupport::ports::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let config = work_dir.join("master.toml");
        std::fs::write(&config, "").unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(work_dir.join("master.log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_cairn-master"))
            .arg("--config")
            .arg(&config)
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--work-dir")
            .arg(work_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        assert!(
            support::wait(|| std::net::TcpStream::connect(addr).is_ok()),
            "cairn-master did not listen on {addr}"
        );
        Self { child, addr }
    }

    /// SIGTERM, and how long the process took to exit (panics after 10 s, killing it).
    fn terminate(&mut self) -> Duration {
        let start = Instant::now();
        let ok = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(ok.success());
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "cairn-master exited with {status}");
                return start.elapsed();
            }
            if start.elapsed() > Duration::from_secs(10) {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("cairn-master did not exit within 10 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

#[test]
fn sigterm_with_subscribers_connected_exits_and_a_restart_takes_the_agent_back() {
    let dir = tempfile::tempdir().unwrap();
    let mut master = Process::start(dir.path());
    let agent = SimAgent::start(master.addr, "cpus:4;mem:1024");
    let fw = Framework::subscribe(
        master.addr,
        &json!({"user": "root", "name": "restart", "failover_timeout": 3600.0}),
    );
    fw.launch(&agent.id, &["t1"]);
    agent.update(&fw.id, "t1", "TASK_RUNNING", 1);
    assert_eq!(fw.update(), pair("t1", "TASK_RUNNING"));

    // Both streams are open: SIGTERM closes them and the process exits.
    let took = master.terminate();
    eprintln!("cairn-master exited {took:?} after SIGTERM");
    assert!(fw
        .stream
        .events
        .recv_timeout(Duration::from_secs(5))
        .is_err());

    // The restarted master knows the agent's id from its registry, but no tasks: those
    // come from the agent when it re-registers.
    let master = Process::start(dir.path());
    let state = get(master.addr, "/state").json();
    assert_eq!(state["slaves"], json!([]));
    assert_eq!(state["frameworks"], json!([]));
    let r = reregister(
        master.addr,
        &agent.id,
        "boot-1",
        &[agent_task(&fw.id, "t1", "TASK_RUNNING")],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["agent_id"]["value"], agent.id.as_str());
    let _stream = agent_stream(master.addr, &agent.id);
    let state = get(master.addr, "/state").json();
    assert_eq!(state["slaves"][0]["id"], agent.id.as_str());
    assert_eq!(state["slaves"][0]["used_resources"]["cpus"], 1.0);
    let task = &state["frameworks"][0]["tasks"][0];
    assert_eq!(task["id"], "t1");
    assert_eq!(task["state"], "TASK_RUNNING");
    assert_eq!(task["slave_id"], agent.id.as_str());

    // The framework fails over to the new master with its id and reconciles t1.
    let again = Stream::open(
        master.addr,
        SCHED,
        &json!({"type": "SUBSCRIBE", "framework_id": {"value": fw.id}, "subscribe": {
            "framework_info": {"user": "root", "name": "restart", "id": {"value": fw.id},
                "failover_timeout": 3600.0}}}),
    );
    assert_eq!(again.status, 200);
    let sub = again.next_of("SUBSCRIBED");
    assert_eq!(sub["subscribed"]["framework_id"]["value"], fw.id.as_str());
    let sid = again.header("Mesos-Stream-Id").unwrap().to_string();
    let r = post_json(
        master.addr,
        SCHED,
        &json!({"framework_id": {"value": fw.id}, "type": "RECONCILE", "reconcile": {}}),
        &[("Mesos-Stream-Id", &sid)],
    );
    assert_eq!(r.status, 202);
    let s = again.next_of("UPDATE")["update"]["status"].clone();
    assert_eq!(s["task_id"]["value"], "t1");
    assert_eq!(s["state"], "TASK_RUNNING");
    drop(agent);
}

fn register(addr: SocketAddr, hostname: &str) -> support::Resp {
    let res = cairn_api::Resources::parse("cpus:4;mem:1024")
        .unwrap()
        .to_wire();
    post_json(
        addr,
        AGENT,
        &json!({"type": "REGISTER", "register": {
            "hostname": hostname, "address": "127.0.0.1:5051", "resources": res,
            "boot_id": "boot-1", "version": "test"}}),
        &[],
    )
}

/// The agents in the standalone registry file as it is on disk now.
fn agents_on_disk(work_dir: &std::path::Path) -> Value {
    let bytes = std::fs::read(work_dir.join("registry.json")).unwrap();
    serde_json::from_slice::<Value>(&bytes).unwrap()["agents"].clone()
}

#[test]
fn an_admission_is_answered_only_once_the_registry_file_holds_it() {
    let dir = tempfile::tempdir().unwrap();
    let master = Process::start(dir.path());
    let addr = master.addr;
    // Concurrent registrations share saves (group commit); each answer must find its agent
    // in the file the moment it arrives.
    let threads: Vec<_> = (0..16)
        .map(|i| {
            let work_dir = dir.path().to_path_buf();
            std::thread::spawn(move || {
                for j in 0..5 {
                    let r = register(addr, &format!("host-{i}-{j}"));
                    assert_eq!(r.status, 200, "{}", r.text());
                    let id = r.json()["agent_id"]["value"].as_str().unwrap().to_string();
                    let on_disk = agents_on_disk(&work_dir);
                    assert_eq!(
                        on_disk[&id]["hostname"],
                        format!("host-{i}-{j}"),
                        "agent {id} was answered 200 but is not in the registry file"
                    );
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(agents_on_disk(dir.path()).as_object().unwrap().len(), 80);

    // The operator's weights are confirmed the same way.
    let r = post_json(
        addr,
        "/api/v1",
        &json!({"type": "UPDATE_WEIGHTS", "update_weights": {
            "weight_infos": [{"role": "analytics", "weight": 2.5}]}}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let bytes = std::fs::read(dir.path().join("registry.json")).unwrap();
    let on_disk: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(on_disk["weights"]["analytics"], 2.5);
}

#[test]
fn a_registration_the_registry_file_cannot_store_is_refused_not_admitted() {
    let dir = tempfile::tempdir().unwrap();
    let master = Process::start(dir.path());
    let before = register(master.addr, "stored");
    assert_eq!(before.status, 200, "{}", before.text());
    // A directory where the file was: the atomic rename over it fails (even for root).
    let path = dir.path().join("registry.json");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("keep"), b"").unwrap();
    let r = register(master.addr, "unstored");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("registry"), "{}", r.text());
    let r = post_json(
        master.addr,
        "/api/v1",
        &json!({"type": "UPDATE_QUOTA", "update_quota": {"quota_configs": [
            {"role": "web", "guarantees": {"cpus": {"value": 1.0}}, "limits": {"cpus": {"value": 2.0}}}]}}),
        &[],
    );
    assert_eq!(r.status, 503, "{}", r.text());
    // Once the disk takes writes again, the writer's retry stores everything pending: a
    // re-registration that changes nothing waits for it and is answered 200.
    std::fs::remove_dir_all(&path).unwrap();
    let id = before.json()["agent_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    let r = post_json(
        master.addr,
        AGENT,
        &json!({"type": "REREGISTER", "agent_id": {"value": id}, "register": {
            "hostname": "stored", "address": "127.0.0.1:5051",
            "resources": cairn_api::Resources::parse("cpus:4;mem:1024").unwrap().to_wire(),
            "boot_id": "boot-1", "version": "test"}}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let on_disk = std::fs::read(dir.path().join("registry.json")).unwrap();
    let on_disk: Value = serde_json::from_slice(&on_disk).unwrap();
    assert_eq!(on_disk["quotas"]["web"]["limit"], "cpus:2");
    let r = register(master.addr, "after");
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["agent_id"]["value"].as_str().unwrap().to_string();
    assert_eq!(agents_on_disk(dir.path())[&id]["hostname"], "after");
    // The refused registration was undone: neither the file nor the master has it.
    let hostnames = |agents: &[Value]| -> Vec<String> {
        let mut h: Vec<String> = agents
            .iter()
            .filter_map(|a| a["hostname"].as_str().map(str::to_string))
            .collect();
        h.sort();
        h
    };
    let on_disk: Vec<Value> = agents_on_disk(dir.path())
        .as_object()
        .unwrap()
        .values()
        .cloned()
        .collect();
    assert_eq!(hostnames(&on_disk), ["after", "stored"]);
    let state = support::get(master.addr, "/state").json();
    assert_eq!(
        hostnames(state["slaves"].as_array().unwrap()),
        ["after", "stored"]
    );
}
