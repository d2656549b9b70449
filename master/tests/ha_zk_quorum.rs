//! The masters against a 3-node ZooKeeper ensemble losing nodes (issue 7, "Show"): with one
//! node stopped the leader keeps leading; with two stopped (no quorum) it steps down within the
//! session timeout, and no two masters ever act as leader at once (sampled from every
//! master's `master/elected` throughout); with both back a leader is elected and writes the
//! registry again.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod ha_sim;

use std::time::{Duration, Instant};

use cairn_testsupport::zookeeper::{ZkMode, ZooKeeper};
use cairn_testsupport::{require_command, ServiceDir};
use ha_sim::{leaders, logs, start_master, wait_one_leader, MasterProc};
use serde_json::json;

/// The masters' ZooKeeper session timeout (the test ensemble's 200 ms tick allows it).
const SESSION_TIMEOUT: Duration = Duration::from_secs(2);

/// Samples who leads for `span`, asserting that never more than one master does; returns
/// each distinct sample in order.
fn observe(masters: &[Option<MasterProc>], span: Duration) -> Vec<Vec<usize>> {
    let start = Instant::now();
    let mut seen: Vec<Vec<usize>> = Vec::new();
    while start.elapsed() < span {
        let l = leaders(masters);
        assert!(
            l.len() <= 1,
            "two masters act as leader at once: {l:?}\n{}",
            logs(masters)
        );
        if seen.last() != Some(&l) {
            seen.push(l);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    seen
}

fn update_weight(leader: &MasterProc, weight: f64) -> u16 {
    let call = json!({"type": "UPDATE_WEIGHTS", "update_weights": {"weight_infos": [
        {"role": "quorum", "weight": weight}]}});
    leader
        .post("/api/v1", &call)
        .map_or(0, |(status, _)| status)
}

#[test]
fn one_zookeeper_node_down_keeps_the_leader_two_down_depose_it_and_recovery_elects_one() {
    if !require_command(
        "one_zookeeper_node_down_keeps_the_leader_two_down_depose_it_and_recovery_elects_one",
        "java",
    ) {
        return;
    }
    let mut zk = ZooKeeper::start(3);
    let url = format!("zk://{}/cairn/quorum", zk.connect_string());
    let dir = ServiceDir::new("ha-zk-quorum");
    let masters: Vec<Option<MasterProc>> = (0..3)
        .map(|i| {
            Some(start_master(
                &url,
                &dir,
                &format!("master-{i}"),
                SESSION_TIMEOUT,
                "",
            ))
        })
        .collect();
    let (leader, _) = wait_one_leader(&masters, Duration::from_secs(60));
    let leading = masters[leader].as_ref().unwrap();
    assert_eq!(update_weight(leading, 2.0), 200);

    // One follower node down: the ensemble keeps its quorum and the masters their leader.
    // (A follower: stopping ZooKeeper's own leader costs an ensemble election first.)
    let zk_followers: Vec<usize> = (0..3)
        .filter(|&i| zk.mode(i) == Some(ZkMode::Follower))
        .collect();
    assert_eq!(zk_followers.len(), 2, "a 3-node ensemble has two followers");
    zk.stop(zk_followers[0]);
    let seen = observe(&masters, SESSION_TIMEOUT * 3);
    assert_eq!(
        seen,
        vec![vec![leader]],
        "the leader changed with one ZooKeeper node down\n{}",
        logs(&masters)
    );
    assert_eq!(update_weight(leading, 3.0), 200);

    // Two down: no quorum. The leader steps down within the session timeout (its session
    // cannot be kept alive without a quorum), and nobody leads while it lasts.
    zk.stop(zk_followers[1]);
    let lost_quorum = Instant::now();
    loop {
        let l = leaders(&masters);
        assert!(
            l.len() <= 1,
            "two leaders at once: {l:?}\n{}",
            logs(&masters)
        );
        if l.is_empty() {
            break;
        }
        assert!(
            lost_quorum.elapsed() < SESSION_TIMEOUT * 5,
            "the leader still leads without a ZooKeeper quorum\n{}",
            logs(&masters)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let took = lost_quorum.elapsed();
    eprintln!("quorum lost: the leader stepped down after {took:?}");
    assert!(
        took <= SESSION_TIMEOUT + Duration::from_secs(1),
        "stepping down took {took:?}\n{}",
        logs(&masters)
    );
    let seen = observe(&masters, SESSION_TIMEOUT * 2);
    assert_eq!(
        seen,
        vec![Vec::<usize>::new()],
        "a master led without a quorum"
    );
    let log = masters[leader].as_ref().unwrap().service.log();
    assert!(log.contains("no longer the leading master"), "{log}");
    assert_ne!(update_weight(leading, 9.0), 200, "a write without a leader");

    // Both back: a leader again, serving writes to the registry.
    let restored = Instant::now();
    zk.start_node(zk_followers[0]);
    zk.start_node(zk_followers[1]);
    assert!(
        zk.wait_serving(Duration::from_secs(60)),
        "{}",
        (0..3).map(|i| zk.log(i)).collect::<String>()
    );
    let (again, _) = wait_one_leader(&masters, Duration::from_secs(60));
    eprintln!(
        "quorum restored: master {again} leads after {:?}",
        restored.elapsed()
    );
    let leading = masters[again].as_ref().unwrap();
    let writes = leading.metric("registrar/registry_writes").unwrap();
    assert_eq!(update_weight(leading, 4.0), 200);
    assert!(cairn_testsupport::wait_until(
        Duration::from_secs(10),
        || { leading.metric("registrar/registry_writes") > Some(writes) }
    ));
    let _ = observe(&masters, Duration::from_secs(1));
    drop(masters);
    drop(zk);
}
