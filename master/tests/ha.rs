//! HA masters against a real ZooKeeper: three `cairn-master` processes elect one leader, the
//! others redirect the APIs to it; a killed leader is replaced within the session timeout plus
//! 1 s; a paused leader that resumes after being deposed stops acting and cannot write the
//! registry (issue 7).

// Helpers outside #[test] functions unwrap too: a failure there is a test failure.
#![allow(clippy::unwrap_used)]

use std::process::Command;
use std::time::{Duration, Instant};

use cairn_testsupport::zookeeper::ZooKeeper;
use cairn_testsupport::{free_port, require_command, Service, ServiceDir};
use serde_json::{json, Value};

/// The masters' ZooKeeper session timeout (the test ensemble's 200 ms tick allows it).
const SESSION_TIMEOUT: Duration = Duration::from_secs(2);

struct Master {
    service: Service,
    port: u16,
}

fn start_master(zk: &ZooKeeper, dir: &ServiceDir, i: usize) -> Master {
    let port = free_port();
    let work = dir.path().join(format!("master-{i}"));
    std::fs::create_dir_all(&work).unwrap();
    let config = work.join("master.toml");
    std::fs::write(
        &config,
        format!(
            "zk = \"zk://{}/cairn/ha\"\nzk_session_timeout_secs = {}\nwork_dir = \"{}\"\n",
            zk.connect_string(),
            SESSION_TIMEOUT.as_secs_f64(),
            work.display()
        ),
    )
    .unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn-master"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("127.0.0.1:{port}"))
        .env("RUST_LOG", "info");
    let service = Service::spawn(&format!("master-{i}"), cmd, dir.path()).unwrap();
    Master { service, port }
}

fn client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into()
}

/// `(status, Location, body)` of a JSON POST, or `None` when the master does not answer.
fn post(port: u16, path: &str, body: &Value) -> Option<(u16, Option<String>, String)> {
    let mut resp = client()
        .post(&format!("http://127.0.0.1:{port}{path}"))
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .ok()?;
    let location = resp
        .headers()
        .get("Location")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let status = resp.status().as_u16();
    Some((status, location, resp.body_mut().read_to_string().ok()?))
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut resp = client()
        .get(&format!("http://127.0.0.1:{port}{path}"))
        .call()
        .ok()?;
    resp.body_mut().read_to_string().ok()
}

fn metric(port: u16, name: &str) -> Option<f64> {
    let v: Value = serde_json::from_str(&get(port, "/metrics/snapshot")?).ok()?;
    v[name].as_f64()
}

fn elected(port: u16) -> bool {
    metric(port, "master/elected") == Some(1.0)
}

fn leaders(masters: &[Master], alive: &[usize]) -> Vec<usize> {
    alive
        .iter()
        .copied()
        .filter(|&i| elected(masters[i].port))
        .collect()
}

/// Waits until exactly one of `alive` leads; returns it and the time it took.
fn wait_leader(masters: &[Master], alive: &[usize], limit: Duration) -> (usize, Duration) {
    let start = Instant::now();
    loop {
        let l = leaders(masters, alive);
        if l.len() == 1 {
            return (l[0], start.elapsed());
        }
        assert!(
            l.len() <= 1,
            "two masters act as leader at once: {l:?}\n{}",
            logs(masters)
        );
        assert!(
            start.elapsed() < limit,
            "no leader among {alive:?} after {limit:?}\n{}",
            logs(masters)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn logs(masters: &[Master]) -> String {
    masters
        .iter()
        .map(|m| format!("--- {}\n{}", m.service.name(), m.service.log()))
        .collect()
}

fn subscribe() -> Value {
    json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "test", "name": "ha"}}})
}

fn update_weight(weight: f64) -> Value {
    json!({"type": "UPDATE_WEIGHTS", "update_weights": {"weight_infos": [{"role": "ha", "weight": weight}]}})
}

fn weight(port: u16) -> Option<f64> {
    let (status, _, body) = post(port, "/api/v1", &json!({"type": "GET_WEIGHTS"}))?;
    assert_eq!(status, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    v["get_weights"]["weight_infos"]
        .as_array()?
        .iter()
        .find(|w| w["role"] == "ha")
        .and_then(|w| w["weight"].as_f64())
}

fn signal(master: &Master, sig: &str) {
    let pid = master.service.pid().unwrap().to_string();
    let ok = Command::new("kill")
        .args([sig, &pid])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} {pid}");
}

/// Checks the non-leaders redirect to the leader and report master/elected 0.
fn check_followers(masters: &[Master], alive: &[usize], leader: usize) {
    let expected = format!("http://127.0.0.1:{}/api/v1/scheduler", masters[leader].port);
    for &i in alive.iter().filter(|&&i| i != leader) {
        let (status, location, body) =
            post(masters[i].port, "/api/v1/scheduler", &subscribe()).unwrap();
        assert_eq!(status, 307, "master {i}: {body}");
        assert_eq!(location.as_deref(), Some(expected.as_str()), "master {i}");
        assert_eq!(metric(masters[i].port, "master/elected"), Some(0.0));
        // Local endpoints still answer locally.
        assert!(get(masters[i].port, "/health").is_some());
        assert!(get(masters[i].port, "/version").is_some());
    }
}

#[test]
fn zk_masters_elect_one_leader_redirect_fail_over_and_fence_a_deposed_leader() {
    if !require_command(
        "zk_masters_elect_one_leader_redirect_fail_over_and_fence_a_deposed_leader",
        "java",
    ) {
        return;
    }
    let zk = ZooKeeper::standalone();
    let dir = ServiceDir::new("ha-masters");
    let mut masters: Vec<Master> = (0..3).map(|i| start_master(&zk, &dir, i)).collect();
    let all = [0, 1, 2];

    // One leader; the others redirect the scheduler API to it.
    let (first, _) = wait_leader(&masters, &all, Duration::from_secs(30));
    // Give the followers time to see the leader through their detectors.
    cairn_testsupport::wait_until(Duration::from_secs(5), || {
        all.iter().filter(|&&i| i != first).all(|&i| {
            post(masters[i].port, "/api/v1/scheduler", &subscribe())
                .is_some_and(|(s, _, _)| s == 307)
        })
    });
    check_followers(&masters, &all, first);
    assert_eq!(leaders(&masters, &all), vec![first]);
    let prom = get(masters[first].port, "/metrics").unwrap();
    assert!(prom.contains("cairn_master_elected 1"), "{prom}");

    // The leader writes the registry through ZooKeeper.
    let (status, _, body) = post(masters[first].port, "/api/v1", &update_weight(2.0)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(cairn_testsupport::wait_until(
        Duration::from_secs(5),
        || { metric(masters[first].port, "registrar/registry_writes") >= Some(1.0) }
    ));
    let writes_before = metric(masters[first].port, "registrar/registry_writes").unwrap();

    // Pause the leader past its session timeout: another master takes over.
    signal(&masters[first], "-STOP");
    let others: Vec<usize> = all.iter().copied().filter(|&i| i != first).collect();
    let (second, _) = wait_leader(&masters, &others, SESSION_TIMEOUT * 5);
    let (status, _, body) = post(masters[second].port, "/api/v1", &update_weight(3.0)).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(cairn_testsupport::wait_until(
        Duration::from_secs(5),
        || { metric(masters[second].port, "registrar/registry_writes") >= Some(1.0) }
    ));

    // Resume the deposed leader and have it try to write at once: it must not act as leader
    // (307/503), or if it still accepts the call in the instant before it notices, the write
    // must be fenced, never reach ZooKeeper.
    signal(&masters[first], "-CONT");
    let deposed = masters[first].port;
    let (status, _, body) = post(deposed, "/api/v1", &update_weight(5.0)).unwrap();
    assert!(matches!(status, 200 | 307 | 503), "{status}: {body}");
    let resumed = Instant::now();
    assert!(
        cairn_testsupport::wait_until(Duration::from_secs(2), || metric(deposed, "master/elected")
            == Some(0.0)),
        "the deposed leader still reports master/elected 1\n{}",
        logs(&masters)
    );
    eprintln!(
        "deposed leader stepped down {:?} after SIGCONT",
        resumed.elapsed()
    );
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        metric(deposed, "registrar/registry_writes"),
        Some(writes_before),
        "the deposed leader wrote the registry\n{}",
        logs(&masters)
    );
    if status == 200 {
        let refused = metric(deposed, "registrar/registry_writes_fenced").unwrap()
            + metric(deposed, "registrar/registry_writes_failed").unwrap();
        assert!(refused >= 1.0, "{}", logs(&masters));
    }
    let (status, location, _) = post(deposed, "/api/v1/scheduler", &subscribe()).unwrap();
    assert_eq!(status, 307);
    assert_eq!(
        location,
        Some(format!(
            "http://127.0.0.1:{}/api/v1/scheduler",
            masters[second].port
        ))
    );
    assert_eq!(leaders(&masters, &all), vec![second]);

    // kill -9 the leader: a new one serves within the session timeout plus 1 s, with the
    // registry the last real leader wrote (weight 3, not the deposed leader's 5).
    let killed = Instant::now();
    masters[second].service.kill();
    let rest: Vec<usize> = all.iter().copied().filter(|&i| i != second).collect();
    let (third, _) = wait_leader(&masters, &rest, SESSION_TIMEOUT * 5);
    let took = killed.elapsed();
    eprintln!("failover after kill -9: new leader serving after {took:?}");
    assert!(
        took <= SESSION_TIMEOUT + Duration::from_secs(1),
        "failover took {took:?}\n{}",
        logs(&masters)
    );
    assert_eq!(weight(masters[third].port), Some(3.0));
    check_followers(&masters, &rest, third);
    drop(masters);
    drop(zk);
}
