//! `/metrics` scraped by a real Prometheus: with a simulated agent registered and a framework
//! running tasks, PromQL queries see the agents, the offered and used resources, and tasks by
//! state; `promtool check metrics` accepts the exposition. Needs `prometheus` and `promtool`
//! on PATH (ENVIRONMENT.md); skips with a reason otherwise.
#![allow(clippy::unwrap_used)]

mod support;

use std::time::Duration;

use cairn_master::core::CoreConfig;
use cairn_testsupport::prometheus::{promtool_check_metrics, Prometheus};
use serde_json::{json, Value};
use support::{get, post_json, SimAgent, Stream, TestMaster};

const SCHED: &str = "/api/v1/scheduler";

fn have(tool: &str) -> bool {
    std::process::Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

fn task(id: &str, agent: &str, cpus: f64) -> Value {
    json!({"name": id, "task_id": {"value": id}, "agent_id": {"value": agent},
           "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                         {"name": "mem", "type": "SCALAR", "scalar": {"value": 128}}],
           "command": {"value": "sleep 60"}})
}

#[test]
fn prometheus_scrapes_agents_resources_and_tasks_by_state() {
    if !have("prometheus") || !have("promtool") {
        eprintln!("skipping: prometheus or promtool is not on PATH (see ENVIRONMENT.md)");
        return;
    }
    let m = TestMaster::start(CoreConfig::default(), Duration::from_millis(50));
    let agent = SimAgent::start(m.addr, "cpus:4;mem:1024");
    let fstream = Stream::open(
        m.addr,
        SCHED,
        &json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "root", "name": "metrics"}}}),
    );
    let sid = fstream.header("Mesos-Stream-Id").unwrap().to_string();
    let fw = fstream.next_of("SUBSCRIBED")["subscribed"]["framework_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    let offers = fstream.next_of("OFFERS");
    let oid = offers["offers"]["offers"][0]["id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    // Three tasks of 1 cpu: one RUNNING, one FINISHED, one left STAGING; the spare cpu is
    // offered again.
    let r = post_json(
        m.addr,
        SCHED,
        &json!({"framework_id": {"value": fw}, "type": "ACCEPT", "accept": {
            "offer_ids": [{"value": oid}],
            "operations": [{"type": "LAUNCH", "launch": {"task_infos": [
                task("run", &agent.id, 1.0), task("done", &agent.id, 1.0),
                task("stage", &agent.id, 1.0)]}}],
            "filters": {"refuse_seconds": 0.0}}}),
        &[("Mesos-Stream-Id", &sid)],
    );
    assert_eq!(r.status, 202, "{}", r.text());
    agent.stream.next_of("LAUNCH");
    agent.update(&fw, "run", "TASK_RUNNING", 1);
    agent.update(&fw, "done", "TASK_RUNNING", 2);
    agent.update(&fw, "done", "TASK_FINISHED", 3);
    // The spare cpu and the finished task's come back as offers.
    assert!(support::wait(|| {
        get(m.addr, "/metrics/snapshot").json()["master/cpus_offered"] == 2.0
    }));

    let exposition = get(m.addr, "/metrics");
    assert_eq!(exposition.status, 200);
    assert!(
        exposition
            .header("Content-Type")
            .is_some_and(|v| v.starts_with("text/plain; version=0.0.4")),
        "{:?}",
        exposition.headers
    );
    let text = exposition.text();
    promtool_check_metrics(&text).unwrap();
    // Counters are counters with `_total`, gauges are gauges (promtool accepts a gauge
    // without a suffix, so the types are checked here).
    for line in [
        "# TYPE cairn_master_slave_registrations_total counter",
        "# TYPE cairn_master_messages_launch_tasks_total counter",
        "# TYPE cairn_master_valid_status_updates_total counter",
        "# TYPE cairn_allocator_mesos_allocation_runs_total counter",
        "# TYPE cairn_master_tasks_terminal_total counter",
        "# TYPE cairn_master_tasks gauge",
        "# TYPE cairn_master_cpus gauge",
        "# TYPE cairn_master_slaves_active gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
    }
    let snapshot = get(m.addr, "/metrics/snapshot").json();
    assert_eq!(snapshot["master/tasks_finished"], 1.0, "{snapshot}");
    assert_eq!(snapshot["master/slave_registrations"], 1.0, "{snapshot}");

    let prom = Prometheus::start(&[m.addr.to_string()]);
    let at = Duration::from_secs(60);
    let value = |expr: &str| {
        let result = prom.wait_for(expr, at).unwrap();
        cairn_testsupport::prometheus::sample_value(&result).unwrap()
    };
    assert_eq!(value("cairn_master_slaves_active"), 1.0);
    assert_eq!(value("cairn_master_slaves_connected"), 1.0);
    assert_eq!(value("cairn_master_cpus"), 4.0);
    assert_eq!(value("cairn_master_cpus_used"), 2.0);
    assert_eq!(value("cairn_master_cpus_offered"), 2.0);
    assert_eq!(value("cairn_master_mem_used"), 256.0);
    assert_eq!(value(r#"cairn_master_tasks{state="TASK_RUNNING"}"#), 1.0);
    assert_eq!(value(r#"cairn_master_tasks{state="TASK_STAGING"}"#), 1.0);
    assert_eq!(
        value(r#"cairn_master_tasks_terminal_total{state="TASK_FINISHED"}"#),
        1.0
    );
    assert_eq!(value("cairn_master_elected"), 1.0);
    assert_eq!(value("cairn_master_frameworks_connected"), 1.0);
    assert_eq!(value("cairn_master_slave_registrations_total"), 1.0);
    assert_eq!(value("cairn_master_messages_launch_tasks_total"), 3.0);
    // Live tasks by state sum to the tasks still running or staging.
    assert_eq!(value("sum(cairn_master_tasks)"), 2.0);
    drop(fstream);
}
