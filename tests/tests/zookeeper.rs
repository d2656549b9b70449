//! A real ZooKeeper: a standalone server takes writes, and a 3-node ensemble keeps taking
//! writes with one node down, refuses them without a quorum, and takes them again once the
//! quorum is back.

use std::time::Duration;

use cairn_testsupport::require_command;
use cairn_testsupport::zookeeper::{ZkEnsemble, ZkMode, ZooKeeper};
use tokio::runtime::Runtime;
use tokio::time::timeout;
use zookeeper_client as zk;

/// A multi-threaded runtime, so the client's session keeps pinging while the test thread
/// blocks on starting and killing nodes.
fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("build a tokio runtime")
}

async fn connect(zk: &ZooKeeper) -> zk::Client {
    zk::Client::connector()
        .with_session_timeout(Duration::from_secs(10))
        .connect(&zk.connect_string())
        .await
        .unwrap_or_else(|e| panic!("connect to {}: {e}", zk.connect_string()))
}

/// Creates `path` with `data`, giving up after `limit`.
async fn write(
    client: &zk::Client,
    path: &str,
    data: &[u8],
    limit: Duration,
) -> Result<(), String> {
    let options = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    match timeout(limit, client.create(path, data, &options)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("create {path}: {e}")),
        Err(_) => Err(format!("create {path}: no answer within {limit:?}")),
    }
}

#[test]
fn zookeeper_standalone_accepts_write_and_read() {
    if !require_command("zookeeper_standalone_accepts_write_and_read", "java") {
        return;
    }
    let zk = ZooKeeper::standalone();
    assert_eq!(zk.len(), 1);
    assert_eq!(zk.mode(0), Some(ZkMode::Standalone));
    assert!(
        zk.connect_string().starts_with("127.0.0.1:"),
        "{}",
        zk.connect_string()
    );

    runtime().block_on(async {
        let client = connect(&zk).await;
        write(&client, "/cairn", b"hello", Duration::from_secs(10))
            .await
            .expect("write");
        let (data, stat) = client.get_data("/cairn").await.expect("read /cairn");
        assert_eq!(data, b"hello");
        assert_eq!(stat.version, 0);
    });
}

#[test]
fn zookeeper_ensemble_needs_a_quorum_for_writes() {
    if !require_command("zookeeper_ensemble_needs_a_quorum_for_writes", "java") {
        return;
    }
    let mut zk = ZkEnsemble::start(3);
    let leader = zk.leader().expect("a started ensemble has a leader");
    for i in (0..3).filter(|&i| i != leader) {
        assert_eq!(zk.mode(i), Some(ZkMode::Follower), "node {i}");
    }
    let rt = runtime();
    let client = rt.block_on(connect(&zk));
    rt.block_on(write(
        &client,
        "/before",
        b"3 of 3",
        Duration::from_secs(10),
    ))
    .expect("write with all nodes up");

    // One node down (the leader, the harder case): the other two elect a leader and serve.
    zk.kill(leader);
    assert!(
        zk.wait_serving(Duration::from_secs(30)),
        "2 of 3 nodes did not elect a leader"
    );
    let survivors: Vec<usize> = (0..3).filter(|&i| i != leader).collect();
    assert!(survivors
        .iter()
        .any(|&i| zk.mode(i) == Some(ZkMode::Leader)));
    rt.block_on(write(
        &client,
        "/one-down",
        b"2 of 3",
        Duration::from_secs(20),
    ))
    .expect("write with one node killed");

    // Two nodes down: the last one has no quorum, stops serving, and writes fail.
    zk.kill(survivors[0]);
    let last = survivors[1];
    assert!(
        cairn_testsupport::wait_until(Duration::from_secs(20), || zk.mode(last).is_none()),
        "the last node still serves without a quorum: {:?}",
        zk.four_letter_word(last, "srvr")
    );
    let refused = rt.block_on(write(
        &client,
        "/two-down",
        b"1 of 3",
        Duration::from_secs(5),
    ));
    assert!(
        refused.is_err(),
        "a write succeeded with two of three nodes killed"
    );

    // Both back: the quorum returns and writes go through again. A new session: the old one
    // may have expired meanwhile, and dropping it first means the refused write is never
    // resent.
    drop(client);
    zk.start_node(leader);
    zk.start_node(survivors[0]);
    assert!(
        zk.wait_serving(Duration::from_secs(30)),
        "restarted ensemble does not serve"
    );
    rt.block_on(async {
        let client = connect(&zk).await;
        write(&client, "/again", b"3 of 3", Duration::from_secs(20))
            .await
            .expect("write");
        let (data, _) = client.get_data("/one-down").await.expect("read /one-down");
        assert_eq!(data, b"2 of 3", "a write acknowledged by a quorum survives");
        let refused = client
            .check_stat("/two-down")
            .await
            .expect("stat /two-down");
        assert!(refused.is_none(), "the refused write must not appear later");
    });
}
