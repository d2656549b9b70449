//! Failover under load (issue 7, "Show"): a real 3-node ZooKeeper ensemble, three
//! `cairn-master` processes, simulated agents speaking the agent protocol and a framework
//! launching tasks continuously, all finding the leader through the masters' `json.info_`
//! znodes. The leader is killed with SIGKILL five times in a row (and restarted as a
//! follower each time): a new leader serves within the session timeout plus 1 s, every agent
//! re-registers with it, the framework re-subscribes with its id, and at the end every task
//! the framework tried to launch is accounted for exactly once: running on exactly one agent
//! and known once to the leader, or reported to the framework in a terminal state (a launch
//! the dying leader accepted but never delivered).

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod ha_sim;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_testsupport::zookeeper::ZooKeeper;
use cairn_testsupport::{require_command, wait_until, ServiceDir};
use cairn_zk::{Detector, ZkConfig, ZkDetector};
use ha_sim::{
    logs, running_tasks, runtime, start_master, tasks_in, wait_one_leader, MasterProc, SimAgent,
    SimFramework,
};
use serde_json::{json, Value};
use tokio::sync::watch;

/// The masters' ZooKeeper session timeout (the test ensemble's 200 ms tick allows it).
const SESSION_TIMEOUT: Duration = Duration::from_secs(2);
const AGENTS: u64 = 4;
const ROUNDS: usize = 5;
const MASTER_CONFIG: &str =
    "allocation_interval_secs = 0.2\nagent_heartbeat_secs = 1\nagent_reregister_timeout_secs = 120";

/// The leader's tasks by id: how many times each is listed, and its state.
fn leader_tasks(leader: &MasterProc) -> Vec<(String, String)> {
    let (status, body) = leader
        .post("/api/v1", &json!({"type": "GET_TASKS"}))
        .unwrap();
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    let mut out = Vec::new();
    for list in [
        "tasks",
        "unreachable_tasks",
        "completed_tasks",
        "orphan_tasks",
    ] {
        for t in v["get_tasks"][list].as_array().into_iter().flatten() {
            out.push((
                t["task_id"]["value"].as_str().unwrap().to_string(),
                t["state"].as_str().unwrap_or_default().to_string(),
            ));
        }
    }
    out
}

#[test]
fn kill_9_the_leader_under_load_five_times_and_account_for_every_task() {
    if !require_command(
        "kill_9_the_leader_under_load_five_times_and_account_for_every_task",
        "java",
    ) {
        return;
    }
    let zk = ZooKeeper::start(3);
    let url = format!("zk://{}/cairn/failover", zk.connect_string());
    let dir = ServiceDir::new("ha-failover");
    let start = |name: String| start_master(&url, &dir, &name, SESSION_TIMEOUT, MASTER_CONFIG);
    let mut masters: Vec<Option<MasterProc>> = (0..3)
        .map(|i| Some(start(format!("master-{i}-0"))))
        .collect();

    let rt = runtime(2);
    let _guard = rt.enter();
    let detector = ZkDetector::start(
        ZkConfig::new(url.parse().unwrap()).with_session_timeout(SESSION_TIMEOUT),
    );
    let (stop_tx, stop) = watch::channel(false);
    let client = ha_sim::http_client();
    let agents: Vec<Arc<SimAgent>> = (0..AGENTS)
        .map(|n| SimAgent::new(n, "cpus:1000;mem:1000000", Duration::from_secs(1)))
        .collect();
    for agent in &agents {
        rt.spawn(
            agent
                .clone()
                .run(client.clone(), detector.leader(), stop.clone()),
        );
    }
    let framework = SimFramework::new("ha", 2, "cpus:0.01;mem:1");
    rt.spawn(
        framework
            .clone()
            .run(client.clone(), detector.leader(), stop.clone()),
    );

    let (mut leader, _) = wait_one_leader(&masters, Duration::from_secs(60));
    let mut agent_ids = Vec::new();
    let mut framework_id = None;
    for round in 1..=ROUNDS {
        let port = masters[leader].as_ref().unwrap().port;
        assert!(
            wait_until(Duration::from_secs(30), || {
                agents.iter().all(|a| a.subscribed_to() == Some(port))
                    && framework.subscribed_to() == Some(port)
            }),
            "round {round}: agents or framework not with the leader on port {port}\n{}",
            logs(&masters)
        );
        if round == 1 {
            agent_ids = agents.iter().map(|a| a.id().unwrap()).collect();
            framework_id = framework.id();
        }
        // Under load: the framework keeps launching up to the kill.
        let launched = framework.tasks().len();
        assert!(
            wait_until(Duration::from_secs(30), || framework.tasks().len()
                >= launched + 20),
            "round {round}: the framework launches nothing\n{}",
            logs(&masters)
        );

        let killed = Instant::now();
        masters[leader].take().unwrap().service.kill();
        let (next, _) = wait_one_leader(&masters, SESSION_TIMEOUT * 10);
        let elected_after = killed.elapsed();
        let next_port = masters[next].as_ref().unwrap().port;
        assert!(
            wait_until(Duration::from_secs(30), || agents
                .iter()
                .all(|a| a.subscribed_to() == Some(next_port))),
            "round {round}: agents did not re-register with the new leader\n{}",
            logs(&masters)
        );
        let agents_after = killed.elapsed();
        assert!(
            wait_until(Duration::from_secs(30), || framework.subscribed_to()
                == Some(next_port)),
            "round {round}: the framework did not re-subscribe\n{}",
            logs(&masters)
        );
        eprintln!(
            "round {round}: kill -9 of master on port {port}: new leader serving after \
             {elected_after:?}, all {AGENTS} agents re-registered after {agents_after:?}, \
             {} tasks launched so far",
            framework.tasks().len()
        );
        assert!(
            elected_after <= SESSION_TIMEOUT + Duration::from_secs(1),
            "round {round}: failover took {elected_after:?}\n{}",
            logs(&masters)
        );
        masters[leader] = Some(start(format!("master-{leader}-{round}")));
        leader = next;
    }

    // Stop launching and let every task's state be heard from the last leader.
    framework.set_launching(false);
    assert!(
        wait_until(Duration::from_secs(60), || framework.all_heard_now()
            && agents.iter().all(|a| a.unacked() == 0)),
        "task states not settled\n{}",
        logs(&masters)
    );
    // The same agents and framework throughout: ids kept across five leaders.
    let ids: Vec<String> = agents.iter().map(|a| a.id().unwrap()).collect();
    assert_eq!(ids, agent_ids);
    assert_eq!(framework.id(), framework_id);
    assert!(framework.subscriptions() > ROUNDS as u64);

    let tasks = framework.tasks();
    let running_on_agents = running_tasks(&agents);
    let duplicated: Vec<_> = running_on_agents.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "tasks on two agents: {duplicated:?}");
    let running = tasks_in(&framework, "TASK_RUNNING");
    let on_agents: std::collections::BTreeSet<String> = running_on_agents.keys().cloned().collect();
    assert_eq!(
        running, on_agents,
        "tasks the framework has RUNNING differ from tasks the agents run"
    );
    // A task once RUNNING is still RUNNING: none lost.
    for (id, t) in &tasks {
        if t.states.iter().any(|s| s == "TASK_RUNNING") {
            assert_eq!(
                t.states.last().map(String::as_str),
                Some("TASK_RUNNING"),
                "{id}: {:?}",
                t.states
            );
        }
    }
    // The leader lists each running task exactly once, RUNNING.
    let listed = leader_tasks(masters[leader].as_ref().unwrap());
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for (id, state) in &listed {
        *counts.entry(id.as_str()).or_default() += 1;
        if running.contains(id) {
            assert_eq!(state, "TASK_RUNNING", "{id}");
        }
    }
    for id in &running {
        assert_eq!(counts.get(id.as_str()), Some(&1), "{id} listed {counts:?}");
    }
    // The others never ran: each was reported to the framework in a terminal state (their
    // ACCEPT went to a leader as it died, or the leader accepted it and died before the LAUNCH
    // reached the agent).
    let never_ran: Vec<(&String, &ha_sim::FrameworkTask)> = tasks
        .iter()
        .filter(|(id, _)| !running.contains(*id))
        .collect();
    for (id, t) in &never_ran {
        let last = t.states.last().map(String::as_str).unwrap_or_default();
        assert!(
            matches!(
                last,
                "TASK_GONE" | "TASK_DROPPED" | "TASK_LOST" | "TASK_UNKNOWN"
            ),
            "{id} is neither running nor reported lost: {:?}",
            t.states
        );
    }
    let accepted_lost = never_ran.iter().filter(|(_, t)| t.accepted).count();
    eprintln!(
        "{} tasks launched over {ROUNDS} failovers: {} running, each once; {} never ran and \
         were reported terminal ({} of them after a 202 from the dying leader)",
        tasks.len(),
        running.len(),
        never_ran.len(),
        accepted_lost
    );
    stop_tx.send_replace(true);
    drop(detector);
    drop(_guard);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(masters);
    drop(zk);
}
