//! The detectors against a real ZooKeeper: a leader written the way Mesos masters write it
//! (ephemeral sequential `json.info_` znodes) is found by `ZkDetector` and `find_leader`, the
//! lowest sequence wins, a leader change and "no leader" are followed, and a path without
//! masters is reported as no leader after the timeout.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::time::Duration;

use cairn_testsupport::require_command;
use cairn_testsupport::zookeeper::ZooKeeper;
use cairn_zk::{find_leader, wait_for_leader, Detector, FindLeaderError, MasterInfo, ZkDetector};
use zookeeper_client::{Acls, Client, CreateMode};

/// A Mesos 1.x master's znode content, with fields Cairn does not use.
const MESOS_MASTER: &[u8] =
    br#"{"address":{"hostname":"m1.example","ip":"192.168.1.7","port":5050},
    "capabilities":[{"type":"AGENT_UPDATE"}],"hostname":"m1.example","id":"mesos-1",
    "ip":117549248,"pid":"master@192.168.1.7:5050","port":5050,"version":"1.11.0"}"#;

async fn join(client: &Client, path: &str, data: &[u8]) -> String {
    let mode = CreateMode::EphemeralSequential.with_acls(Acls::anyone_all());
    let (_, seq) = client
        .create(&format!("{path}/json.info_"), data, &mode)
        .await
        .unwrap();
    format!("{path}/json.info_{seq}")
}

#[test]
fn detectors_follow_the_lowest_json_info_znode() {
    if !require_command("detectors_follow_the_lowest_json_info_znode", "java") {
        return;
    }
    let zk = ZooKeeper::standalone();
    let url = format!("zk://{}/cairn/detect", zk.connect_string());

    // No master yet: the blocking lookup reports it, naming the URL.
    let err = find_leader(&url, Duration::from_millis(500)).unwrap_err();
    assert!(matches!(err, FindLeaderError::NoLeader { .. }), "{err}");
    assert!(err.to_string().contains("/cairn/detect"), "{err}");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (client, first, mut leader, detector) = rt.block_on(async {
        let client = Client::connector()
            .with_session_timeout(Duration::from_secs(4))
            .connect(&zk.connect_string())
            .await
            .unwrap();
        client
            .mkdir(
                "/cairn/detect",
                &CreateMode::Persistent.with_acls(Acls::anyone_all()),
            )
            .await
            .unwrap();
        // Other children (the registry) are not members.
        client
            .create(
                "/cairn/detect/registry",
                b"",
                &CreateMode::Persistent.with_acls(Acls::anyone_all()),
            )
            .await
            .unwrap();
        let detector = ZkDetector::from_url(&url).unwrap();
        let mut leader = detector.leader();
        let first = join(&client, "/cairn/detect", MESOS_MASTER).await;
        let cairn = MasterInfo::new("cairn-2", "127.0.0.1:5051".parse().unwrap(), "");
        join(&client, "/cairn/detect", &cairn.to_json()).await;
        let found = wait_for_leader(&mut leader, Duration::from_secs(20))
            .await
            .unwrap();
        assert_eq!(found.id, "mesos-1");
        assert_eq!(found.authority().as_deref(), Some("m1.example:5050"));
        (client, first, leader, detector)
    });

    // The blocking form, from outside any runtime, finds the same leader.
    let found = find_leader(&url, Duration::from_secs(20)).unwrap();
    assert_eq!(
        found.socket_addr(),
        Some("192.168.1.7:5050".parse().unwrap())
    );

    rt.block_on(async {
        // The leader leaves: the next one is detected.
        client.delete(&first, None).await.unwrap();
        let next = tokio::time::timeout(
            Duration::from_secs(20),
            leader.wait_for(|l| l.as_ref().is_some_and(|i| i.id == "cairn-2")),
        )
        .await
        .is_ok_and(|r| r.is_ok());
        assert!(next, "the next leader was not detected");
        // The last one leaves (its session closes): no leader.
        drop(client);
        let none = tokio::time::timeout(Duration::from_secs(20), leader.wait_for(Option::is_none))
            .await
            .is_ok_and(|r| r.is_ok());
        assert!(none, "no-leader was not detected");
        drop(detector);
    });
    rt.shutdown_timeout(Duration::from_secs(5));
    drop(zk);
}
