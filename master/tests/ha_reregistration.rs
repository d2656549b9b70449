//! The re-registration window after a failover (issue 7, Build 3), with a real ZooKeeper and
//! real `cairn-master` processes: a new leader recovers the registry and waits
//! `agent_reregister_timeout_secs` for the admitted agents; an agent that is down by then is
//! marked unreachable in the registry (a partition-aware framework reconciling its task hears
//! TASK_UNREACHABLE), the next leader finds it unreachable in the registry rather than
//! marking it again, and when the agent comes back its task is RUNNING again.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod ha_sim;

use std::time::{Duration, Instant};

use cairn_testsupport::zookeeper::ZooKeeper;
use cairn_testsupport::{require_command, wait_until, ServiceDir};
use cairn_zk::{Detector, ZkConfig, ZkDetector};
use ha_sim::{logs, runtime, start_master, wait_one_leader, MasterProc, SimAgent, SimFramework};
use tokio::sync::watch;

const SESSION_TIMEOUT: Duration = Duration::from_secs(2);
const WINDOW: Duration = Duration::from_secs(3);

/// The latest state the framework knows of each task on `agent`.
fn states_on(framework: &SimFramework, agent: &SimAgent) -> Vec<Vec<String>> {
    let Some(id) = agent.id() else {
        return Vec::new();
    };
    framework
        .tasks()
        .into_values()
        .filter(|t| t.agent_id == id)
        .map(|t| t.states)
        .collect()
}

fn last_is(states: &[Vec<String>], state: &str) -> bool {
    !states.is_empty()
        && states
            .iter()
            .all(|s| s.last().map(String::as_str) == Some(state))
}

#[test]
fn agents_missing_after_the_reregistration_window_are_unreachable_in_the_registry() {
    if !require_command(
        "agents_missing_after_the_reregistration_window_are_unreachable_in_the_registry",
        "java",
    ) {
        return;
    }
    let zk = ZooKeeper::standalone();
    let url = format!("zk://{}/cairn/window", zk.connect_string());
    let dir = ServiceDir::new("ha-reregistration");
    let config = format!(
        "allocation_interval_secs = 0.2\nagent_heartbeat_secs = 1\nagent_timeout_secs = 600\n\
         agent_reregister_timeout_secs = {}",
        WINDOW.as_secs_f64()
    );
    let mut masters: Vec<Option<MasterProc>> = (0..3)
        .map(|i| {
            Some(start_master(
                &url,
                &dir,
                &format!("master-{i}"),
                SESSION_TIMEOUT,
                &config,
            ))
        })
        .collect();

    let rt = runtime(2);
    let _guard = rt.enter();
    let detector = ZkDetector::start(
        ZkConfig::new(url.parse().unwrap()).with_session_timeout(SESSION_TIMEOUT),
    );
    let client = ha_sim::http_client();
    let (stop_tx, stop) = watch::channel(false);
    let (stop_b_tx, stop_b) = watch::channel(false);
    let stays = SimAgent::new(0, "cpus:1;mem:1024", Duration::from_secs(1));
    let leaves = SimAgent::new(1, "cpus:1;mem:1024", Duration::from_secs(1));
    rt.spawn(
        stays
            .clone()
            .run(client.clone(), detector.leader(), stop.clone()),
    );
    let b_run = rt.spawn(
        leaves
            .clone()
            .run(client.clone(), detector.leader(), stop_b),
    );
    let framework = SimFramework::new("window", 1, "cpus:0.1;mem:16");
    rt.spawn(
        framework
            .clone()
            .run(client.clone(), detector.leader(), stop.clone()),
    );

    // Both agents run tasks.
    let (first, _) = wait_one_leader(&masters, Duration::from_secs(60));
    assert!(
        wait_until(Duration::from_secs(30), || {
            last_is(&states_on(&framework, &stays), "TASK_RUNNING")
                && last_is(&states_on(&framework, &leaves), "TASK_RUNNING")
        }),
        "tasks not running on both agents\n{}",
        logs(&masters)
    );
    framework.set_launching(false);
    assert!(wait_until(Duration::from_secs(30), || framework.all_heard_now()));

    // One agent goes down, then the leader: the new leader waits WINDOW for agents.
    stop_b_tx.send_replace(true);
    rt.block_on(b_run).unwrap();
    masters[first].take().unwrap().service.kill();
    let (second, _) = wait_one_leader(&masters, Duration::from_secs(30));
    let elected = Instant::now();
    let new_leader = masters[second].as_ref().unwrap();
    assert!(wait_until(Duration::from_secs(30), || stays
        .subscribed_to()
        == Some(new_leader.port)));
    // While the window is open nothing is marked.
    if elected.elapsed() < WINDOW / 2 {
        assert_eq!(
            new_leader.metric("master/slave_unreachable_completed"),
            Some(0.0)
        );
    }
    // Once it closes the missing agent is unreachable, and reconciling its task says so.
    assert!(
        wait_until(Duration::from_secs(30), || new_leader
            .metric("master/slave_unreachable_completed")
            == Some(1.0)),
        "the missing agent was not marked unreachable\n{}",
        logs(&masters)
    );
    assert!(
        elected.elapsed() >= WINDOW,
        "marked before the window closed"
    );
    assert!(
        wait_until(Duration::from_secs(30), || last_is(
            &states_on(&framework, &leaves),
            "TASK_UNREACHABLE"
        )),
        "{:?}\n{}",
        states_on(&framework, &leaves),
        logs(&masters)
    );
    assert!(last_is(&states_on(&framework, &stays), "TASK_RUNNING"));

    // The next leader recovers the agent as unreachable from the registry: nothing to mark
    // when its own window closes.
    masters[second].take().unwrap().service.kill();
    let (third, _) = wait_one_leader(&masters, Duration::from_secs(30));
    let third_elected = Instant::now();
    let last_leader = masters[third].as_ref().unwrap();
    assert!(wait_until(Duration::from_secs(30), || stays
        .subscribed_to()
        == Some(last_leader.port)));
    std::thread::sleep((WINDOW + Duration::from_secs(1)).saturating_sub(third_elected.elapsed()));
    assert_eq!(
        last_leader.metric("master/slave_unreachable_completed"),
        Some(0.0),
        "the registry did not record the agent unreachable\n{}",
        logs(&masters)
    );
    assert!(wait_until(Duration::from_secs(30), || {
        framework.subscribed_to() == Some(last_leader.port) && framework.all_heard_now()
    }));
    assert!(last_is(&states_on(&framework, &leaves), "TASK_UNREACHABLE"));

    // The agent comes back: its task is RUNNING again, after TASK_UNREACHABLE.
    let (_restart_tx, restart) = watch::channel(false);
    rt.spawn(
        leaves
            .clone()
            .run(client.clone(), detector.leader(), restart),
    );
    assert!(
        wait_until(Duration::from_secs(30), || last_is(
            &states_on(&framework, &leaves),
            "TASK_RUNNING"
        )),
        "{:?}\n{}",
        states_on(&framework, &leaves),
        logs(&masters)
    );
    for states in states_on(&framework, &leaves) {
        let unreachable = states.iter().position(|s| s == "TASK_UNREACHABLE").unwrap();
        assert!(
            states[unreachable..].iter().any(|s| s == "TASK_RUNNING"),
            "{states:?}"
        );
    }
    stop_tx.send_replace(true);
    drop(_restart_tx);
    drop(detector);
    drop(_guard);
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(masters);
    drop(zk);
}
