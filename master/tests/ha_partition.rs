//! A partitioned agent (issue 7, "Show"): an agent in its own network namespace (the test
//! network of `cairn-testsupport::netns`) runs tasks of a partition-aware framework under a
//! leader elected through ZooKeeper; its veth is cut for longer than the agent timeout, so the
//! leader marks it unreachable and the framework hears TASK_UNREACHABLE for its tasks; the
//! veth restored, the agent re-registers, the tasks are RUNNING again, and nothing is
//! duplicated (each task still on the one agent, listed once by the leader).

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod ha_sim;

use std::sync::Arc;
use std::time::Duration;

use cairn_testsupport::netns::Network;
use cairn_testsupport::zookeeper::ZooKeeper;
use cairn_testsupport::{require_command, require_root, wait_until, ServiceDir};
use cairn_zk::{Detector, ZkConfig, ZkDetector};
use ha_sim::{
    logs, running_tasks, runtime, start_master_on, wait_one_leader, MasterProc, SimAgent,
    SimFramework,
};
use serde_json::{json, Value};
use tokio::sync::watch;

const SESSION_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs `agent` on a thread inside network namespace `netns`, so every socket it opens lives
/// there; returns when `stop` turns true.
fn run_in_netns(
    netns: &str,
    agent: Arc<SimAgent>,
    leader: ha_sim::Leader,
    stop: watch::Receiver<bool>,
) -> std::thread::JoinHandle<()> {
    let path = format!("/run/netns/{netns}");
    std::thread::spawn(move || {
        let ns = std::fs::File::open(&path).unwrap();
        nix::sched::setns(ns, nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(agent.run(ha_sim::http_client(), leader, stop));
    })
}

fn task_states(framework: &SimFramework) -> Vec<Vec<String>> {
    framework.tasks().into_values().map(|t| t.states).collect()
}

fn all_last(framework: &SimFramework, state: &str) -> bool {
    let states = task_states(framework);
    !states.is_empty()
        && states
            .iter()
            .all(|s| s.last().map(String::as_str) == Some(state))
}

#[test]
fn a_cut_agent_is_unreachable_then_running_again_with_nothing_duplicated() {
    let name = "a_cut_agent_is_unreachable_then_running_again_with_nothing_duplicated";
    if !require_root(name) || !require_command(name, "java") || !require_command(name, "ip") {
        return;
    }
    let network = Network::new();
    let host = network.host();
    let zk = ZooKeeper::standalone();
    let url = format!("zk://{}/cairn/partition", zk.connect_string());
    let dir = ServiceDir::new("ha-partition");
    let config = "allocation_interval_secs = 0.2\nagent_heartbeat_secs = 1\nagent_timeout_secs = 3";
    let masters: Vec<Option<MasterProc>> = (0..2)
        .map(|i| {
            Some(start_master_on(
                &url,
                &dir,
                &format!("master-{i}"),
                SESSION_TIMEOUT,
                config,
                network.bridge_ip(),
            ))
        })
        .collect();
    let (leader, _) = wait_one_leader(&masters, Duration::from_secs(60));
    let leading = masters[leader].as_ref().unwrap();

    let rt = runtime(2);
    let _guard = rt.enter();
    let detector = ZkDetector::start(
        ZkConfig::new(url.parse().unwrap()).with_session_timeout(SESSION_TIMEOUT),
    );
    let (stop_tx, stop) = watch::channel(false);
    let agent = SimAgent::new(0, "cpus:1;mem:1024", Duration::from_secs(1));
    let agent_thread = run_in_netns(host.netns(), agent.clone(), detector.leader(), stop.clone());
    let framework = SimFramework::new("partition", 2, "cpus:0.2;mem:64");
    rt.spawn(
        framework
            .clone()
            .run(ha_sim::http_client(), detector.leader(), stop.clone()),
    );

    // The agent, from its namespace, runs the framework's tasks.
    assert!(
        wait_until(Duration::from_secs(30), || agent.subscribed_to()
            == Some(leading.port)
            && all_last(&framework, "TASK_RUNNING")),
        "{:?}\n{}",
        task_states(&framework),
        logs(&masters)
    );
    framework.set_launching(false);
    assert!(wait_until(Duration::from_secs(30), || framework.all_heard_now()));
    let launched = framework.tasks().len();

    // Cut longer than the agent timeout: unreachable.
    host.cut();
    assert!(
        wait_until(Duration::from_secs(30), || all_last(
            &framework,
            "TASK_UNREACHABLE"
        )),
        "{:?}\n{}",
        task_states(&framework),
        logs(&masters)
    );
    assert_eq!(
        leading.metric("master/slaves_unreachable"),
        Some(1.0),
        "{}",
        logs(&masters)
    );

    // Restored: RUNNING again, the same tasks, each once.
    host.restore();
    assert!(
        wait_until(Duration::from_secs(60), || all_last(
            &framework,
            "TASK_RUNNING"
        )),
        "{:?}\n{}",
        task_states(&framework),
        logs(&masters)
    );
    assert_eq!(framework.tasks().len(), launched);
    let running = running_tasks(std::slice::from_ref(&agent));
    assert_eq!(running.len(), launched);
    assert!(running.values().all(|n| *n == 1));
    let (status, body) = leading
        .post("/api/v1", &json!({"type": "GET_TASKS"}))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let listed: Vec<&Value> = v["get_tasks"]["tasks"].as_array().unwrap().iter().collect();
    assert_eq!(listed.len(), launched, "{body}");
    assert!(
        listed.iter().all(|t| t["state"] == "TASK_RUNNING"),
        "{body}"
    );
    for states in task_states(&framework) {
        let unreachable = states.iter().position(|s| s == "TASK_UNREACHABLE").unwrap();
        assert_eq!(states.last().map(String::as_str), Some("TASK_RUNNING"));
        assert!(unreachable > 0, "{states:?}");
    }

    stop_tx.send_replace(true);
    agent_thread.join().unwrap();
    drop(detector);
    drop(_guard);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(masters);
    drop(zk);
    drop(host);
    drop(network);
}
