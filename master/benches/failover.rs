//! Failover time with many agents (issue 7): a real 3-node ZooKeeper ensemble, three
//! `cairn-master` processes, and 10,000 lightweight simulated agents in this process (async
//! tasks speaking the real agent protocol over HTTP, finding the leader through a `cairn-zk`
//! detector, as `master/tests/ha_sim` does for the HA tests). Once every agent is subscribed
//! with the leader, the leader is killed with SIGKILL; the benchmark measures the time from the
//! kill to a new leader serving, and to every agent re-registered and subscribed with it.
//!
//! `cargo bench -p cairn-master --bench failover` (`-- --agents 1000 --rounds 1` for a short
//! run; `--session-timeout <secs>`, 10 by default as Mesos's, at most 20 with the ensemble's
//! 1 s tick here). Shorter timeouts make failover faster but, on a loaded machine, let
//! ZooKeeper sessions drop while 10,000 agents re-register (seen with 4 s on 2 busy cores).
//!
//! Prints a table: per round, the time to the new leader and to all agents re-registered (from
//! the kill, and from the election).
#![allow(clippy::unwrap_used, clippy::cast_precision_loss)]

#[path = "../tests/ha_sim/mod.rs"]
mod ha_sim;

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_testsupport::zookeeper::ZooKeeper;
use cairn_testsupport::{require_command, ServiceDir};
use cairn_zk::{Detector, ZkConfig, ZkDetector};
use ha_sim::{logs, runtime, start_master, wait_one_leader, MasterProc, SimAgent};
use tokio::sync::watch;

struct Options {
    agents: u64,
    rounds: usize,
    session_timeout: Duration,
}

fn options() -> Options {
    let mut o = Options {
        agents: 10_000,
        rounds: 3,
        session_timeout: Duration::from_secs(10),
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    while i < args.len() {
        let value = || {
            args.get(i + 1)
                .unwrap_or_else(|| panic!("{} needs a value", args[i]))
        };
        match args[i].as_str() {
            "--agents" => o.agents = value().parse().expect("--agents takes a number"),
            "--rounds" => o.rounds = value().parse().expect("--rounds takes a number"),
            "--session-timeout" => {
                o.session_timeout = Duration::from_secs_f64(
                    value().parse().expect("--session-timeout takes seconds"),
                );
            }
            // `cargo bench` passes --bench.
            _ => {
                i += 1;
                continue;
            }
        }
        i += 2;
    }
    o
}

/// Waits until every agent is subscribed with the master on `port`; how long it took.
fn all_with(agents: &[Arc<SimAgent>], port: u16, limit: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if agents.iter().all(|a| a.subscribed_to() == Some(port)) {
            return Some(start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

fn main() {
    if !require_command("failover bench", "java") {
        return;
    }
    let o = options();
    // A 1 s tick allows session timeouts up to 20 s (the tests' 200 ms tick stops at 4 s).
    let zk = ZooKeeper::builder()
        .nodes(3)
        .tick_time(Duration::from_secs(1))
        .start();
    let url = format!("zk://{}/cairn/bench", zk.connect_string());
    let dir = ServiceDir::new("failover-bench");
    let config = "agent_heartbeat_secs = 15\nsubscriber_queue = 1000";
    let start = |name: String| start_master(&url, &dir, &name, o.session_timeout, config);
    let mut masters: Vec<Option<MasterProc>> = (0..3)
        .map(|i| Some(start(format!("master-{i}-0"))))
        .collect();
    let (mut leader, _) = wait_one_leader(&masters, Duration::from_secs(60));

    let rt = runtime(2);
    let _guard = rt.enter();
    let detector = ZkDetector::start(
        ZkConfig::new(url.parse().unwrap()).with_session_timeout(o.session_timeout),
    );
    let (stop_tx, stop) = watch::channel(false);
    let client = ha_sim::http_client();
    let agents: Vec<Arc<SimAgent>> = (0..o.agents)
        .map(|n| SimAgent::new(n, "cpus:8;mem:32768", Duration::from_secs(15)))
        .collect();
    for agent in &agents {
        rt.spawn(
            agent
                .clone()
                .run(client.clone(), detector.leader(), stop.clone()),
        );
    }
    let port = masters[leader].as_ref().unwrap().port;
    let registered = all_with(&agents, port, Duration::from_secs(600))
        .unwrap_or_else(|| panic!("agents did not all register\n{}", logs(&masters)));
    println!(
        "{} agents registered and subscribed in {} (session timeout {})",
        o.agents,
        secs(registered),
        secs(o.session_timeout)
    );

    println!();
    println!("| round | agents | new leader serving after kill | all agents re-registered after kill | after election |");
    println!("|---|---|---|---|---|");
    for round in 1..=o.rounds {
        let killed = Instant::now();
        masters[leader].take().unwrap().service.kill();
        let (next, _) = wait_one_leader(&masters, o.session_timeout * 10);
        let elected = killed.elapsed();
        let next_port = masters[next].as_ref().unwrap().port;
        let after_election = all_with(&agents, next_port, Duration::from_secs(600))
            .unwrap_or_else(|| panic!("agents did not all re-register\n{}", logs(&masters)));
        let all = killed.elapsed();
        println!(
            "| {round} | {} | {} | {} | {} |",
            o.agents,
            secs(elected),
            secs(all),
            secs(after_election)
        );
        // The killed master comes back as a follower for the next round.
        masters[leader] = Some(start(format!("master-{leader}-{round}")));
        leader = next;
        std::thread::sleep(Duration::from_secs(2));
    }
    stop_tx.send_replace(true);
    drop(detector);
    drop(_guard);
    rt.shutdown_timeout(Duration::from_secs(10));
    drop(masters);
    drop(zk);
}
