//! The registry in a real ZooKeeper: 50,000 agents round-trip through chunks, a deposed leader
//! cannot write (fencing) while its successor can, digest auth protects the znodes, and an
//! agent's admission is answered only once its fenced write succeeded.

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::{Duration, Instant};

use cairn_api::AgentId;
use cairn_master::core::{CoreConfig, Master};
use cairn_master::election::{Contender, Detector, MasterInfo, ZkConfig, ZkContender, ZkDetector};
use cairn_master::http::{router, Shared};
use cairn_master::leadership::ZkStore;
use cairn_master::registry::{AdmittedAgent, Quota, Registry, REGISTRY_VERSION};
use cairn_master::zk_registry::{ZkRegistry, ZkRegistryError, CHUNK_LIMIT};
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

fn config(url: &str) -> ZkConfig {
    ZkConfig::new(url.parse().expect("a valid zk:// URL"))
        .with_session_timeout(Duration::from_secs(4))
}

fn info(i: u16) -> MasterInfo {
    MasterInfo::new(
        format!("master-{i}"),
        format!("127.0.0.1:{}", 5050 + i).parse().unwrap(),
        "",
    )
}

fn wait_for(limit: Duration, what: &str, mut ready: impl FnMut() -> bool) {
    let start = Instant::now();
    while !ready() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_leading(contender: &ZkContender) {
    wait_for(Duration::from_secs(20), "leadership", || {
        contender.leadership().borrow().is_leading()
    });
}

fn registry(agents: usize, tag: &str) -> Registry {
    let mut r = Registry {
        version: REGISTRY_VERSION,
        ..Registry::default()
    };
    for i in 0..agents {
        let id = format!("{tag}-agent-{i:06}");
        r.agents.insert(
            id.clone(),
            AdmittedAgent {
                id: AgentId::new(&id),
                hostname: format!("node-{i}.rack-{}.example.com", i % 40),
                address: format!("10.{}.{}.{}:5051", i / 65_536, i / 256 % 256, i % 256),
            },
        );
        if i % 50 == 0 {
            r.unreachable.insert(id.clone(), 1_700_000_000.25);
        }
        if i % 500 == 0 {
            r.gone.insert(id, 1_700_000_100.0);
        }
    }
    r.weights.insert("analytics".into(), 3.0);
    r.quotas.insert(
        "web".into(),
        Quota {
            guarantee: "cpus:2;mem:1024".into(),
            limit: "cpus:4;mem:2048".into(),
        },
    );
    r
}

#[test]
fn zk_registry_round_trips_50000_agents_in_chunks() {
    if !require_command("zk_registry_round_trips_50000_agents_in_chunks", "java") {
        return;
    }
    let zk = ZooKeeper::standalone();
    let rt = runtime();
    let _guard = rt.enter();
    let contender = ZkContender::start(
        config(&format!("zk://{}/cairn", zk.connect_string())),
        info(0),
    );
    wait_leading(&contender);
    let fence = contender.fence().expect("a leader has a fence");

    rt.block_on(async {
        let (store, empty) = ZkRegistry::recover(fence.clone()).await.unwrap();
        assert!(empty.agents.is_empty());
        assert_eq!(empty.version, REGISTRY_VERSION);

        let big = registry(50_000, "big");
        let started = Instant::now();
        store.save(&big).await.unwrap();
        let saved = started.elapsed();
        let manifest = store.manifest().await;
        assert!(
            manifest.chunks.len() >= 5,
            "{} chunks",
            manifest.chunks.len()
        );
        assert!(manifest.chunks.iter().all(|c| c.bytes <= CHUNK_LIMIT));
        assert_eq!(manifest.leader, fence.znode());

        let started = Instant::now();
        let (_, back) = ZkRegistry::recover(fence.clone()).await.unwrap();
        eprintln!(
            "50,000 agents: {} chunks, {} bytes, saved in {saved:?}, recovered in {:?}",
            manifest.chunks.len(),
            manifest.chunks.iter().map(|c| c.bytes).sum::<usize>(),
            started.elapsed()
        );
        assert_eq!(back, big);

        // A smaller registry replaces it, and the old generation's chunks are gone.
        let small = registry(10, "small");
        store.save(&small).await.unwrap();
        let client = zk::Client::connect(&zk.connect_string()).await.unwrap();
        let mut chunks = client
            .list_children("/cairn/registry/chunks")
            .await
            .unwrap();
        chunks.sort();
        let named: Vec<String> = store
            .manifest()
            .await
            .chunks
            .iter()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(chunks, named);
        let (_, back) = ZkRegistry::recover(fence.clone()).await.unwrap();
        assert_eq!(back, small);

        // Stray chunks of an unfinished save are removed on recovery.
        let stray = "/cairn/registry/chunks/00000000000000099999-00000";
        let open = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
        client.create(stray, b"{}", &open).await.unwrap();
        let (_, back) = ZkRegistry::recover(fence.clone()).await.unwrap();
        assert_eq!(back, small);
        assert_eq!(client.check_stat(stray).await.unwrap(), None);

        // The election path holds only the election znodes and the registry.
        let mut children = client.list_children("/cairn").await.unwrap();
        children.sort();
        assert_eq!(children.len(), 2, "{children:?}");
        assert!(children[0].starts_with("json.info_"));
        assert_eq!(children[1], "registry");
    });
}

#[test]
fn zk_registry_deposed_leader_cannot_write() {
    if !require_command("zk_registry_deposed_leader_cannot_write", "java") {
        return;
    }
    let zk = ZooKeeper::standalone();
    let rt = runtime();
    let _guard = rt.enter();
    let config = config(&format!("zk://{}/cairn", zk.connect_string()));
    let a = ZkContender::start(config.clone(), info(0));
    wait_leading(&a);
    let b = ZkContender::start(config.clone(), info(1));
    wait_for(Duration::from_secs(20), "b to join", || {
        b.session().is_some()
    });
    let fence_a = a.fence().unwrap();
    let (store_a, _) = rt.block_on(ZkRegistry::recover(fence_a.clone())).unwrap();
    rt.block_on(store_a.save(&registry(3, "a"))).unwrap();

    // A deposed leader whose session still works: it holds on to its client (as a leader that
    // has not yet noticed), but its election znode is gone and b leads.
    let client_a = fence_a.client().expect("a's session is open");
    let admin = rt
        .block_on(zk::Client::connect(&zk.connect_string()))
        .unwrap();
    rt.block_on(admin.delete(fence_a.znode(), None)).unwrap();
    wait_leading(&b);
    let (store_b, recovered) = rt
        .block_on(ZkRegistry::recover(b.fence().unwrap()))
        .unwrap();
    assert_eq!(recovered, registry(3, "a"));

    let err = rt
        .block_on(store_a.save(&registry(1, "stale")))
        .unwrap_err();
    assert!(matches!(err, ZkRegistryError::Fencing(_)), "{err:?}");
    let message = err.to_string();
    assert!(
        message.contains("no longer leads") && message.contains(fence_a.znode()),
        "{message}"
    );
    rt.block_on(store_b.save(&registry(4, "b"))).unwrap();
    let (_, now) = rt
        .block_on(ZkRegistry::recover(b.fence().unwrap()))
        .unwrap();
    assert_eq!(now, registry(4, "b"), "the successor's write stands");
    drop(client_a);

    // A leader whose session expired (paused past its timeout) cannot write either.
    let session = b.session().unwrap();
    let stepped_down = || !b.leadership().borrow().is_leading();
    for attempt in 1..=20 {
        // Another client takes the session over and closes it; b may win it back first.
        let thief = rt.block_on(
            zk::Client::connector()
                .with_session(session.clone())
                .with_session_timeout(Duration::from_secs(1))
                .connect(&zk.connect_string()),
        );
        drop(thief);
        let start = Instant::now();
        while !stepped_down() && start.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if stepped_down() {
            break;
        }
        assert!(attempt < 20, "could not expire b's session");
    }
    let err = rt.block_on(store_b.save(&registry(5, "late"))).unwrap_err();
    assert!(matches!(err, ZkRegistryError::Fencing(_)), "{err:?}");
    // Whoever leads next still finds b's last write.
    wait_for(Duration::from_secs(20), "a new leader", || {
        a.leadership().borrow().is_leading() || b.leadership().borrow().is_leading()
    });
    let fence = a.fence().or_else(|| b.fence()).unwrap();
    let (_, last) = rt.block_on(ZkRegistry::recover(fence)).unwrap();
    assert_eq!(last, registry(4, "b"));
}

#[test]
fn zk_digest_auth_protects_election_and_registry() {
    if !require_command("zk_digest_auth_protects_election_and_registry", "java") {
        return;
    }
    let zk = ZooKeeper::standalone();
    let rt = runtime();
    let _guard = rt.enter();
    let secured = config(&format!("zk://cairn:s3cret@{}/secure", zk.connect_string()));
    let contender = ZkContender::start(secured.clone(), info(0));
    wait_leading(&contender);
    let fence = contender.fence().unwrap();
    rt.block_on(async {
        let (store, _) = ZkRegistry::recover(fence.clone()).await.unwrap();
        store.save(&registry(2, "s")).await.unwrap();

        let anonymous = zk::Client::connect(&zk.connect_string()).await.unwrap();
        // Anyone may read the election znode (Mesos's EVERYONE_READ_CREATOR_ALL)...
        let (acls, _) = anonymous.get_acl(fence.znode()).await.unwrap();
        let described: Vec<(String, String, bool)> = acls
            .iter()
            .map(|a| {
                (
                    a.scheme().to_string(),
                    a.id().to_string(),
                    a.permission() == zk::Permission::ALL,
                )
            })
            .collect();
        assert_eq!(described.len(), 2, "{described:?}");
        assert_eq!(described[0], ("world".into(), "anyone".into(), false));
        assert_eq!(described[1].0, "digest");
        assert!(described[1].1.starts_with("cairn:") && described[1].2);
        anonymous.get_data(fence.znode()).await.unwrap();
        // ...but not change it, nor read the registry.
        let err = anonymous
            .set_data(fence.znode(), b"{}", None)
            .await
            .unwrap_err();
        assert_eq!(err, zk::Error::NoAuth);
        let err = anonymous
            .get_data("/secure/registry/manifest")
            .await
            .unwrap_err();
        assert_eq!(err, zk::Error::NoAuth);
    });
    // A detector without credentials still finds the leader.
    let open = config(&format!("zk://{}/secure", zk.connect_string()));
    let detector = ZkDetector::start(open);
    wait_for(
        Duration::from_secs(10),
        "the detector to see the leader",
        || detector.leader().borrow().as_ref().map(|l| l.id.clone()) == Some("master-0".into()),
    );
}

/// The agents stored in ZooKeeper now, read straight from the znodes (the manifest, then the
/// chunks it names).
fn agents_in_zookeeper(rt: &Runtime, connect: &str) -> std::collections::BTreeSet<String> {
    rt.block_on(async {
        let client = zk::Client::connect(connect).await.unwrap();
        let (manifest, _) = client.get_data("/cairn/registry/manifest").await.unwrap();
        let manifest: cairn_master::zk_registry::Manifest =
            serde_json::from_slice(&manifest).unwrap();
        let mut agents = std::collections::BTreeSet::new();
        for chunk in &manifest.chunks {
            let path = format!("/cairn/registry/chunks/{}", chunk.name);
            let (data, _) = client.get_data(&path).await.unwrap();
            let part: Registry = serde_json::from_slice(&data).unwrap();
            agents.extend(part.agents.into_keys());
        }
        agents
    })
}

fn register(addr: std::net::SocketAddr, hostname: &str) -> support::Resp {
    let res = cairn_api::Resources::parse("cpus:4;mem:1024")
        .unwrap()
        .to_wire();
    support::post_json(
        addr,
        "/api/v1/agent",
        &serde_json::json!({"type": "REGISTER", "register": {
            "hostname": hostname, "address": "127.0.0.1:5051", "resources": res,
            "boot_id": "boot-1", "version": "test"}}),
        &[],
    )
}

#[test]
fn zk_admission_is_answered_only_after_its_fenced_write_and_refused_once_deposed() {
    if !require_command(
        "zk_admission_is_answered_only_after_its_fenced_write",
        "java",
    ) {
        return;
    }
    let zk = ZooKeeper::standalone();
    let rt = runtime();
    let _guard = rt.enter();
    let contender = ZkContender::start(
        config(&format!("zk://{}/cairn", zk.connect_string())),
        info(0),
    );
    wait_leading(&contender);
    let fence = contender.fence().unwrap();

    // This term's master, its registry saved through the fenced ZooKeeper store, served on
    // loopback. The gate always serves: only the store can refuse.
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    let cfg = CoreConfig {
        port: addr.port(),
        ..CoreConfig::default()
    };
    let shared = Shared::new(Master::new(cfg.clone(), Registry::default(), None));
    let (store, recovered) = rt.block_on(ZkRegistry::recover(fence.clone())).unwrap();
    let (writer, binding) = ZkStore::spawn(store, shared.gate().clone(), shared.clone());
    let master = Master::with_store(cfg, recovered, Box::new(writer));
    binding.bind(&master.info().id);
    shared.replace(master);
    let app = router(shared.clone());
    rt.spawn(async move {
        axum::serve(cairn_master::http::listener(listener), app)
            .await
            .unwrap();
    });

    // Concurrent registrations share fenced writes; each 200 is already in the znodes.
    let connect = zk.connect_string();
    std::thread::scope(|s| {
        for i in 0..8 {
            let (rt, connect) = (&rt, &connect);
            s.spawn(move || {
                for j in 0..4 {
                    let r = register(addr, &format!("host-{i}-{j}"));
                    assert_eq!(r.status, 200, "{}", r.text());
                    let id = r.json()["agent_id"]["value"].as_str().unwrap().to_string();
                    assert!(
                        agents_in_zookeeper(rt, connect).contains(&id),
                        "agent {id} was answered 200 but is not in ZooKeeper"
                    );
                }
            });
        }
    });
    let stored = agents_in_zookeeper(&rt, &connect);
    assert_eq!(stored.len(), 32);

    // Deposed (its election znode gone) while it still believes it leads: the fenced write
    // is rejected, so the agent is told 503, not admitted.
    let admin = rt.block_on(zk::Client::connect(&connect)).unwrap();
    rt.block_on(admin.delete(fence.znode(), None)).unwrap();
    let r = register(addr, "after-deposition");
    assert_eq!(r.status, 503, "{}", r.text());
    assert!(r.text().contains("no longer leads"), "{}", r.text());
    assert_eq!(agents_in_zookeeper(&rt, &connect), stored);
}
