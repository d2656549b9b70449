//! The v1 operator API against a real master over HTTP, with simulated agents and a
//! framework: GET_FLAGS and GET_METRICS in Mesos's shape, and the SUBSCRIBE event stream
//! (SUBSCRIBED with the whole state, then the changes as they happen, HEARTBEATs, and a
//! stalled subscriber dropped without affecting another).
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_master::core::CoreConfig;
use serde_json::{json, Value};
use support::{get, post_json, SimAgent, Stream, TestMaster};

const OPERATOR: &str = "/api/v1";
const SCHED: &str = "/api/v1/scheduler";

fn operator(addr: SocketAddr, body: &Value) -> Value {
    let r = post_json(addr, OPERATOR, body, &[]);
    assert_eq!(r.status, 200, "{}", r.text());
    r.json()
}

/// A framework subscribed over the scheduler API: its stream, stream id and framework id.
fn framework(addr: SocketAddr, name: &str) -> (Stream, String, String) {
    let s = Stream::open(
        addr,
        SCHED,
        &json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {
            "user": "root", "name": name, "failover_timeout": 60.0}}}),
    );
    let sid = s.header("Mesos-Stream-Id").unwrap().to_string();
    let fw = s.next_of("SUBSCRIBED")["subscribed"]["framework_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    (s, sid, fw)
}

fn scheduler_call(addr: SocketAddr, sid: &str, body: &Value) {
    let r = post_json(addr, SCHED, body, &[("Mesos-Stream-Id", sid)]);
    assert_eq!(r.status, 202, "{}", r.text());
}

fn launch(addr: SocketAddr, sid: &str, fw: &str, offers: &Value, task: &str, agent: &str) {
    let offer = &offers["offers"]["offers"][0]["id"];
    scheduler_call(
        addr,
        sid,
        &json!({"framework_id": {"value": fw}, "type": "ACCEPT", "accept": {
            "offer_ids": [offer], "filters": {"refuse_seconds": 0.0},
            "operations": [{"type": "LAUNCH", "launch": {"task_infos": [
                {"name": task, "task_id": {"value": task}, "agent_id": {"value": agent},
                 "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": 1.0}},
                               {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}],
                 "command": {"value": "sleep 60"}}]}}]}}),
    );
}

fn flag<'a>(flags: &'a Value, name: &str) -> &'a Value {
    flags
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["name"] == name)
        .unwrap_or_else(|| panic!("no flag {name} in {flags}"))
}

#[test]
fn get_flags_and_get_metrics_answer_in_mesos_shape() {
    let m = TestMaster::start(
        CoreConfig {
            agent_timeout: Duration::from_secs(42),
            ..CoreConfig::default()
        },
        Duration::from_millis(50),
    );
    let _agent = SimAgent::start(m.addr, "cpus:2;mem:512");

    let r = operator(m.addr, &json!({"type": "GET_FLAGS"}));
    assert_eq!(r["type"], "GET_FLAGS", "{r}");
    let flags = &r["get_flags"]["flags"];
    assert_eq!(flag(flags, "agent_timeout_secs")["value"], "42", "{flags}");
    assert_eq!(
        flag(flags, "subscriber_queue")["value"],
        "100000",
        "{flags}"
    );

    let r = operator(
        m.addr,
        &json!({"type": "GET_METRICS", "get_metrics": {"timeout": {"nanoseconds": 5_000_000_000u64}}}),
    );
    assert_eq!(r["type"], "GET_METRICS", "{r}");
    let metrics = r["get_metrics"]["metrics"].as_array().unwrap();
    let metric = |name: &str| {
        metrics
            .iter()
            .find(|m| m["name"] == name)
            .unwrap_or_else(|| panic!("no metric {name} in {r}"))["value"]
            .as_f64()
            .unwrap()
    };
    assert_eq!(metric("master/elected"), 1.0);
    assert_eq!(metric("master/slaves_active"), 1.0);
    assert_eq!(metric("master/cpus_total"), 2.0);
    assert_eq!(metric("master/slave_registrations"), 1.0);
    // The same values as /metrics/snapshot.
    let snapshot = get(m.addr, "/metrics/snapshot").json();
    assert_eq!(
        metrics.len(),
        snapshot.as_object().unwrap().len(),
        "{r}\n{snapshot}"
    );

    // An unknown call type is still refused, naming it.
    let bad = post_json(m.addr, OPERATOR, &json!({"type": "GET_NOTHING"}), &[]);
    assert_eq!(bad.status, 400, "{}", bad.text());
    assert!(bad.text().contains("GET_NOTHING"), "{}", bad.text());
}

#[test]
fn subscribe_streams_the_state_then_every_change() {
    let m = TestMaster::start(
        CoreConfig {
            framework_heartbeat: Duration::from_millis(300),
            ..CoreConfig::default()
        },
        Duration::from_millis(50),
    );
    let first = SimAgent::start(m.addr, "cpus:2;mem:512");
    let ops = Stream::open(m.addr, OPERATOR, &json!({"type": "SUBSCRIBE"}));
    assert_eq!(ops.status, 200);
    assert_eq!(ops.header("Content-Type"), Some("application/json"));
    let subscribed = ops.next_of("SUBSCRIBED");
    let state = &subscribed["subscribed"]["get_state"];
    assert_eq!(
        state["get_agents"]["agents"][0]["agent_info"]["id"]["value"], first.id,
        "{subscribed}"
    );
    assert!(state["get_frameworks"]["frameworks"]
        .as_array()
        .unwrap()
        .is_empty());
    assert_eq!(subscribed["subscribed"]["heartbeat_interval_seconds"], 0.3);
    ops.next_of("HEARTBEAT");

    // A framework subscribes and launches a task, which starts running.
    let (fstream, sid, fw) = framework(m.addr, "watched");
    let added = ops.next_of("FRAMEWORK_ADDED");
    assert_eq!(
        added["framework_added"]["framework"]["framework_info"]["id"]["value"], fw,
        "{added}"
    );
    assert_eq!(added["framework_added"]["framework"]["connected"], true);
    launch(
        m.addr,
        &sid,
        &fw,
        &fstream.next_of("OFFERS"),
        "t1",
        &first.id,
    );
    let task = ops.next_of("TASK_ADDED");
    assert_eq!(
        task["task_added"]["task"]["task_id"]["value"], "t1",
        "{task}"
    );
    assert_eq!(task["task_added"]["task"]["state"], "TASK_STAGING");
    assert_eq!(task["task_added"]["task"]["framework_id"]["value"], fw);
    first.update(&fw, "t1", "TASK_RUNNING", 1);
    let updated = ops.next_of("TASK_UPDATED");
    assert_eq!(
        updated["task_updated"]["state"], "TASK_RUNNING",
        "{updated}"
    );
    assert_eq!(updated["task_updated"]["framework_id"]["value"], fw);
    assert_eq!(updated["task_updated"]["status"]["task_id"]["value"], "t1");

    // Another agent registers.
    let second = SimAgent::start(m.addr, "cpus:1;mem:256");
    let agent = ops.next_of("AGENT_ADDED");
    assert_eq!(
        agent["agent_added"]["agent"]["agent_info"]["id"]["value"], second.id,
        "{agent}"
    );
    assert_eq!(
        agent["agent_added"]["agent"]["agent_info"]["hostname"],
        "sim-agent"
    );

    // The framework changes its name, then tears itself down: its task is killed.
    scheduler_call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "UPDATE_FRAMEWORK", "update_framework": {
            "framework_info": {"user": "root", "name": "renamed", "id": {"value": fw},
                               "failover_timeout": 60.0}}}),
    );
    let renamed = ops.next_of("FRAMEWORK_UPDATED");
    assert_eq!(
        renamed["framework_updated"]["framework"]["framework_info"]["name"], "renamed",
        "{renamed}"
    );
    scheduler_call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "TEARDOWN"}),
    );
    let killed = ops.next_of("TASK_UPDATED");
    assert_eq!(killed["task_updated"]["state"], "TASK_KILLED", "{killed}");
    assert_eq!(
        killed["task_updated"]["status"]["reason"],
        "REASON_FRAMEWORK_REMOVED"
    );
    let removed = ops.next_of("FRAMEWORK_REMOVED");
    assert_eq!(
        removed["framework_removed"]["framework_info"]["id"]["value"], fw,
        "{removed}"
    );
    // Heartbeats keep coming while nothing happens.
    ops.next_of("HEARTBEAT");
    assert_eq!(
        get(m.addr, "/metrics/snapshot").json()["master/operator_event_stream_subscribers"],
        1.0
    );
    drop(fstream);
}

#[test]
fn an_agent_that_falls_silent_is_removed_and_its_tasks_become_unreachable() {
    let m = TestMaster::start(
        CoreConfig {
            agent_timeout: Duration::from_secs(2),
            ..CoreConfig::default()
        },
        Duration::from_millis(50),
    );
    let ops = Stream::open(m.addr, OPERATOR, &json!({"type": "SUBSCRIBE"}));
    ops.next_of("SUBSCRIBED");
    let agent = SimAgent::start(m.addr, "cpus:2;mem:512");
    ops.next_of("AGENT_ADDED");
    let (fstream, sid, fw) = framework(m.addr, "partitioned");
    launch(
        m.addr,
        &sid,
        &fw,
        &fstream.next_of("OFFERS"),
        "t1",
        &agent.id,
    );
    agent.update(&fw, "t1", "TASK_RUNNING", 1);
    // The simulated agent sends no heartbeats: after 2 s it is unreachable.
    let removed = ops.next_of("AGENT_REMOVED");
    assert_eq!(
        removed["agent_removed"]["agent_id"]["value"], agent.id,
        "{removed}"
    );
    let unreachable = loop {
        let e = ops.next_of("TASK_UPDATED");
        if e["task_updated"]["state"] == "TASK_UNREACHABLE" {
            break e;
        }
    };
    assert_eq!(
        unreachable["task_updated"]["status"]["task_id"]["value"],
        "t1"
    );
    drop(fstream);
}

#[test]
fn a_stalled_operator_subscriber_is_dropped_and_others_keep_streaming() {
    let m = TestMaster::start(
        CoreConfig {
            subscriber_queue: 16,
            ..CoreConfig::default()
        },
        Duration::from_millis(50),
    );
    // One operator subscribes and never reads; another reads.
    let mut stalled = std::net::TcpStream::connect(m.addr).unwrap();
    let body = json!({"type": "SUBSCRIBE"}).to_string();
    write!(
        stalled,
        "POST {OPERATOR} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let reader = Stream::open(m.addr, OPERATOR, &json!({"type": "SUBSCRIBE"}));
    reader.next_of("SUBSCRIBED");
    assert!(support::wait(|| get(m.addr, "/metrics/snapshot").json()
        ["master/operator_event_stream_subscribers"]
        == 2.0));
    let (fstream, sid, fw) = framework(m.addr, "busy");
    // Big FRAMEWORK_UPDATED events, far more than the socket buffers and the queue hold.
    let big = "x".repeat(256 * 1024);
    let snapshot = || get(m.addr, "/metrics/snapshot").json();
    for i in 0..200u32 {
        scheduler_call(
            m.addr,
            &sid,
            &json!({"framework_id": {"value": fw}, "type": "UPDATE_FRAMEWORK", "update_framework": {
                "framework_info": {"user": "root", "name": format!("{i}{big}"), "id": {"value": fw},
                                   "failover_timeout": 60.0}}}),
        );
        if snapshot()["master/operator_subscribers_disconnected_stalled"] == 1.0 {
            break;
        }
    }
    let snap = snapshot();
    assert_eq!(
        snap["master/operator_subscribers_disconnected_stalled"], 1.0,
        "{snap}"
    );
    assert_eq!(snap["master/operator_event_stream_subscribers"], 1.0);
    // The reading subscriber still gets every change.
    scheduler_call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "UPDATE_FRAMEWORK", "update_framework": {
            "framework_info": {"user": "root", "name": "last", "id": {"value": fw},
                               "failover_timeout": 60.0}}}),
    );
    loop {
        let e = reader.next_of("FRAMEWORK_UPDATED");
        if e["framework_updated"]["framework"]["framework_info"]["name"] == "last" {
            break;
        }
    }
    drop(stalled);
    drop(fstream);
}
