//! Leader election against a real ZooKeeper: one leader among three contenders, Mesos's znode
//! format, failover when the leader's session is closed or expired, and a 3-node ensemble
//! losing and regaining its quorum.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cairn_master::election::{
    pack_ip, Contender, Detector, MasterInfo, ZkConfig, ZkContender, ZkDetector,
};
use cairn_testsupport::require_command;
use cairn_testsupport::zookeeper::ZooKeeper;
use tokio::runtime::Runtime;
use zookeeper_client as zk;

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

fn config(zk: &ZooKeeper, session_timeout: Duration) -> ZkConfig {
    let url = format!("zk://{}/cairn/ha", zk.connect_string());
    ZkConfig::new(url.parse().expect("a valid zk:// URL")).with_session_timeout(session_timeout)
}

fn info(i: u16) -> MasterInfo {
    MasterInfo::new(
        format!("master-{i}"),
        format!("127.0.0.1:{}", 5050 + i).parse().unwrap(),
        format!("m{i}.example"),
    )
}

/// Polls `ready` every 20 ms until it holds or `limit` passes; returns the time it took.
fn wait_for(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    start.elapsed()
}

fn leaders(contenders: &[Option<ZkContender>]) -> Vec<usize> {
    contenders
        .iter()
        .enumerate()
        .filter(|(_, c)| {
            c.as_ref()
                .is_some_and(|c| c.leadership().borrow().is_leading())
        })
        .map(|(i, _)| i)
        .collect()
}

/// Expires a session the way ZooKeeper does for a master that went silent: another client
/// takes the session over and closes it; the owner learns on its next contact that it expired.
/// The owner may win the session back before the close goes out, so this retries until `lost`
/// holds, and returns when the close that worked was sent.
fn expire(
    rt: &Runtime,
    zk: &ZooKeeper,
    session: &zk::SessionInfo,
    lost: impl Fn() -> bool,
) -> Instant {
    for _ in 0..20 {
        let thief = rt.block_on(
            zk::Client::connector()
                .with_session(session.clone())
                .with_session_timeout(Duration::from_secs(1))
                .connect(&zk.connect_string()),
        );
        let closed = Instant::now();
        if let Ok(thief) = thief {
            drop(thief);
            if wait_until(Duration::from_secs(2), &lost) {
                return closed;
            }
        }
    }
    panic!("could not expire session {:?}", session.id());
}

/// Polls `ready` every 20 ms for up to `limit`.
fn wait_until(limit: Duration, ready: impl Fn() -> bool) -> bool {
    let start = Instant::now();
    while !ready() {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// The children of the election path and the smallest one's JSON, as pymesos reads them
/// (none and `null` before the first master joined).
async fn znodes(zk: &ZooKeeper) -> (Vec<String>, serde_json::Value) {
    let client = zk::Client::connect(&zk.connect_string()).await.unwrap();
    let mut children = match client.list_children("/cairn/ha").await {
        Err(zk::Error::NoNode) => return (Vec::new(), serde_json::Value::Null),
        listed => listed.unwrap(),
    };
    children.sort();
    let Some(first) = children.first() else {
        return (children, serde_json::Value::Null);
    };
    let (data, _) = client
        .get_data(&format!("/cairn/ha/{first}"))
        .await
        .unwrap();
    (children, serde_json::from_slice(&data).unwrap())
}

#[test]
fn zk_three_contenders_elect_one_leader_and_fail_over() {
    if !require_command("zk_three_contenders_elect_one_leader_and_fail_over", "java") {
        return;
    }
    let zk = ZooKeeper::standalone();
    let rt = runtime();
    let _guard = rt.enter();
    let session_timeout = Duration::from_secs(4);
    let config = config(&zk, session_timeout);

    let mut contenders: Vec<Option<ZkContender>> = Vec::new();
    for i in 0..3 {
        contenders.push(Some(ZkContender::start(config.clone(), info(i))));
        // Join in order, so the sequence numbers follow the indices.
        wait_for(Duration::from_secs(20), "the contender to join", || {
            rt.block_on(znodes(&zk)).0.len() == usize::from(i) + 1
        });
    }
    let detector = ZkDetector::start(config.clone());
    wait_for(Duration::from_secs(20), "one leader", || {
        leaders(&contenders).len() == 1
    });
    assert_eq!(leaders(&contenders), [0], "the oldest znode leads");
    wait_for(
        Duration::from_secs(10),
        "the detector to see master-0",
        || detector.leader().borrow().as_ref().map(|l| l.id.clone()) == Some("master-0".into()),
    );
    // Followers stay followers while the leader lives.
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leaders(&contenders), [0]);

    // The znodes: only json.info_<seq> children, the smallest holding Mesos's MasterInfo JSON.
    let (children, json) = rt.block_on(znodes(&zk));
    assert_eq!(children.len(), 3, "{children:?}");
    for child in &children {
        let seq = child
            .strip_prefix("json.info_")
            .expect("only json.info_ children");
        assert!(
            seq.len() == 10 && seq.bytes().all(|b| b.is_ascii_digit()),
            "{child}"
        );
    }
    let keys: BTreeSet<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        BTreeSet::from(["id", "ip", "port", "pid", "hostname", "version", "address"])
    );
    assert_eq!(json["id"], "master-0");
    assert_eq!(json["ip"], u64::from(pack_ip("127.0.0.1".parse().unwrap())));
    assert_eq!(
        json["ip"], 16_777_343,
        "127.0.0.1 packed in network byte order"
    );
    assert_eq!(json["port"], 5050);
    assert_eq!(json["pid"], "master@127.0.0.1:5050");
    assert_eq!(json["hostname"], "m0.example");
    assert_eq!(json["version"], env!("CARGO_PKG_VERSION"));
    // What pymesos reads: address.ip as text and address.port as a number.
    assert_eq!(
        json["address"],
        serde_json::json!({"hostname": "m0.example", "ip": "127.0.0.1", "port": 5050})
    );
    let parsed: MasterInfo = serde_json::from_value(json).unwrap();
    assert_eq!(parsed, info(0));

    // Close the leader's session (the master stops): the next in line leads at once.
    let closed = Instant::now();
    contenders[0] = None;
    let took = wait_for(
        session_timeout + Duration::from_secs(1),
        "master-1 to lead",
        || leaders(&contenders) == [1],
    );
    eprintln!("failover after closing the leader's session: {took:?}");
    wait_for(
        Duration::from_secs(5),
        "the detector to see master-1",
        || detector.leader().borrow().as_ref().map(|l| l.id.clone()) == Some("master-1".into()),
    );
    assert!(closed.elapsed() < session_timeout + Duration::from_secs(6));

    // Expire the new leader's session: it reports "not leader" and master-2 leads.
    let leadership1 = contenders[1].as_ref().unwrap().leadership();
    let session = contenders[1].as_ref().unwrap().session().unwrap();
    let expired = expire(&rt, &zk, &session, || !leadership1.borrow().is_leading());
    wait_for(
        session_timeout + Duration::from_secs(1),
        "master-2 to lead",
        || leaders(&contenders) == [2],
    );
    eprintln!(
        "failover after expiring the leader's session: {:?}",
        expired.elapsed()
    );
    assert!(expired.elapsed() <= session_timeout + Duration::from_secs(1));
    wait_for(
        Duration::from_secs(5),
        "the detector to see master-2",
        || detector.leader().borrow().as_ref().map(|l| l.id.clone()) == Some("master-2".into()),
    );
    // master-1 rejoined with a new session, behind master-2.
    wait_for(Duration::from_secs(10), "master-1 to contend again", || {
        rt.block_on(znodes(&zk)).0.len() == 2
    });
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(leaders(&contenders), [2]);

    // With every master gone the detector reports no leader.
    contenders.clear();
    wait_for(Duration::from_secs(5), "no leader", || {
        detector.leader().borrow().is_none()
    });
}

#[test]
fn zk_ensemble_quorum_loss_steps_the_leader_down_and_recovers() {
    if !require_command(
        "zk_ensemble_quorum_loss_steps_the_leader_down_and_recovers",
        "java",
    ) {
        return;
    }
    let mut zk = ZooKeeper::start(3);
    let rt = runtime();
    let _guard = rt.enter();
    let session_timeout = Duration::from_secs(6);
    let config = config(&zk, session_timeout);
    let contenders: Vec<Option<ZkContender>> = (0..2)
        .map(|i| Some(ZkContender::start(config.clone(), info(i))))
        .collect();
    wait_for(Duration::from_secs(30), "one leader", || {
        leaders(&contenders).len() == 1
    });
    let leader = leaders(&contenders)[0];
    let mut leadership = contenders[leader].as_ref().unwrap().leadership();
    leadership.borrow_and_update();

    // One node down (a follower, so the ensemble keeps its leader): no leader change at all.
    let zk_leader = zk.leader().expect("the ensemble has a leader");
    let follower = (0..3).find(|&i| i != zk_leader).unwrap();
    zk.stop(follower);
    std::thread::sleep(session_timeout + Duration::from_secs(1));
    assert!(
        !leadership.has_changed().unwrap(),
        "leadership flapped with one ZooKeeper node down"
    );
    assert_eq!(leaders(&contenders), [leader]);

    // Two nodes down: no quorum; the leader steps down within the session timeout.
    let stopped = Instant::now();
    zk.stop(zk_leader);
    let took = wait_for(session_timeout, "the leader to step down", || {
        leaders(&contenders).is_empty()
    });
    eprintln!(
        "stepped down {took:?} after the stop returned, {:?} after it began",
        stopped.elapsed()
    );
    assert!(stopped.elapsed() <= session_timeout + Duration::from_millis(500));

    // Quorum back: a leader is elected again.
    zk.start_node(follower);
    zk.start_node(zk_leader);
    assert!(
        zk.wait_serving(Duration::from_secs(60)),
        "the ensemble serves again"
    );
    let back = Instant::now();
    wait_for(
        3 * session_timeout + Duration::from_secs(10),
        "a new leader",
        || leaders(&contenders).len() == 1,
    );
    eprintln!("re-elected {:?} after the quorum returned", back.elapsed());
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(leaders(&contenders).len(), 1, "exactly one leader");
}
