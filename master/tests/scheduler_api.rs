//! The scheduler, operator and agent APIs over real HTTP on loopback: a framework (raw
//! HTTP/1.1 + RecordIO client) and a simulated agent drive a task from offer to FINISHED, and
//! bad input gets Mesos's status codes and messages.
#![allow(clippy::unwrap_used)]

mod support;

use std::io::Write;
use std::time::Duration;

use cairn_master::core::CoreConfig;
use serde_json::{json, Value};
use support::{get, post_json, SimAgent, Stream, TestMaster};

const SCHED: &str = "/api/v1/scheduler";

fn subscribe(addr: std::net::SocketAddr) -> (Stream, String, String) {
    subscribe_with(addr, json!({"user": "root", "name": "test"}))
}

fn subscribe_with(addr: std::net::SocketAddr, framework_info: Value) -> (Stream, String, String) {
    let s = Stream::open(
        addr,
        SCHED,
        &json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": framework_info}}),
    );
    assert_eq!(s.status, 200);
    assert_eq!(s.header("Content-Type"), Some("application/json"));
    assert!(s
        .header("Transfer-Encoding")
        .is_some_and(|v| v.contains("chunked")));
    let stream_id = s.header("Mesos-Stream-Id").unwrap().to_string();
    let sub = s.next_of("SUBSCRIBED");
    assert_eq!(sub["subscribed"]["heartbeat_interval_seconds"], 15.0);
    assert!(sub["subscribed"]["master_info"]["address"]["port"].is_number());
    let fw = sub["subscribed"]["framework_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    (s, stream_id, fw)
}

fn call(addr: std::net::SocketAddr, stream_id: &str, body: &Value) -> support::Resp {
    post_json(addr, SCHED, body, &[("Mesos-Stream-Id", stream_id)])
}

fn task(id: &str, agent: &str, cpus: f64) -> Value {
    json!({"name": id, "task_id": {"value": id}, "agent_id": {"value": agent},
           "resources": [{"name": "cpus", "type": "SCALAR", "scalar": {"value": cpus}},
                         {"name": "mem", "type": "SCALAR", "scalar": {"value": 64}}],
           "command": {"value": "sleep 1"}})
}

fn accept(fw: &str, offer: &str, tasks: Vec<Value>) -> Value {
    json!({"framework_id": {"value": fw}, "type": "ACCEPT", "accept": {
        "offer_ids": [{"value": offer}],
        "operations": [{"type": "LAUNCH", "launch": {"task_infos": tasks}}],
        "filters": {"refuse_seconds": 0.0}}})
}

fn offer_id(e: &Value) -> String {
    e["offers"]["offers"][0]["id"]["value"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_task_goes_from_offer_to_finished_through_the_simulated_agent() {
    let m = TestMaster::start(CoreConfig::default(), Duration::from_millis(50));
    let agent = SimAgent::start(m.addr, "cpus:4;mem:1024;ports:[31000-32000]");
    let (fstream, sid, fw) = subscribe(m.addr);

    let offers = fstream.next_of("OFFERS");
    let offer = &offers["offers"]["offers"][0];
    assert_eq!(offer["agent_id"]["value"], agent.id.as_str());
    assert_eq!(offer["framework_id"]["value"], fw.as_str());
    assert_eq!(offer["hostname"], "sim-agent");
    assert_eq!(offer["allocation_info"]["role"], "*");
    let oid = offer_id(&offers);

    let r = call(
        m.addr,
        &sid,
        &accept(&fw, &oid, vec![task("t1", &agent.id, 1.0)]),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let launch = agent.stream.next_of("LAUNCH");
    assert_eq!(launch["launch"]["tasks"][0]["task_id"]["value"], "t1");
    assert_eq!(launch["launch"]["framework_id"]["value"], fw.as_str());

    // RUNNING, forwarded with its uuid; the acknowledgement reaches the agent.
    let uuid = agent.update(&fw, "t1", "TASK_RUNNING", 1);
    let up = fstream.next_of("UPDATE");
    assert_eq!(up["update"]["status"]["state"], "TASK_RUNNING");
    assert_eq!(up["update"]["status"]["uuid"], uuid.as_str());
    assert_eq!(
        up["update"]["status"]["agent_id"]["value"],
        agent.id.as_str()
    );
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "ACKNOWLEDGE", "acknowledge": {
            "agent_id": {"value": agent.id}, "task_id": {"value": "t1"}, "uuid": uuid}}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    let ack = agent.stream.next_of("ACKNOWLEDGE");
    assert_eq!(ack["acknowledge"]["uuid"], uuid.as_str());

    // Metrics and state see the running task.
    let snap = get(m.addr, "/metrics/snapshot").json();
    assert_eq!(snap["master/tasks_running"], 1.0);
    assert_eq!(snap["master/cpus_total"], 4.0);
    assert_eq!(snap["master/cpus_used"], 1.0);
    assert_eq!(snap["master/elected"], 1.0);
    assert!(snap["allocator/mesos/allocation_run_ms"].is_number());
    for path in ["/state", "/master/state"] {
        let state = get(m.addr, path).json();
        assert_eq!(state["slaves"][0]["id"], agent.id.as_str());
        assert_eq!(state["slaves"][0]["resources"]["cpus"], 4.0);
        assert_eq!(state["slaves"][0]["used_resources"]["cpus"], 1.0);
        assert!(state["slaves"][0]["unreserved_resources"].is_object());
        assert_eq!(state["frameworks"][0]["tasks"][0]["state"], "TASK_RUNNING");
        assert_eq!(state["frameworks"][0]["used_resources"]["cpus"], 1.0);
    }

    // Explicit reconciliation: the known task and an unknown one.
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "RECONCILE", "reconcile": {"tasks": [
            {"task_id": {"value": "t1"}}, {"task_id": {"value": "nope"}}]}}),
    );
    assert_eq!(r.status, 202);
    let a = fstream.next_of("UPDATE");
    assert_eq!(a["update"]["status"]["state"], "TASK_RUNNING");
    assert_eq!(a["update"]["status"]["reason"], "REASON_RECONCILIATION");
    assert!(a["update"]["status"].get("uuid").is_none());
    let b = fstream.next_of("UPDATE");
    assert_eq!(b["update"]["status"]["task_id"]["value"], "nope");
    assert_eq!(b["update"]["status"]["state"], "TASK_LOST");
    // Implicit reconciliation: every task of the framework.
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "RECONCILE", "reconcile": {}}),
    );
    assert_eq!(r.status, 202);
    assert_eq!(
        fstream.next_of("UPDATE")["update"]["status"]["task_id"]["value"],
        "t1"
    );

    // Kill: forwarded to the agent, whose TASK_KILLED reaches the framework.
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "KILL", "kill": {"task_id": {"value": "t1"}}}),
    );
    assert_eq!(r.status, 202);
    let kill = agent.stream.next_of("KILL");
    assert_eq!(kill["kill"]["task_id"]["value"], "t1");
    agent.update(&fw, "t1", "TASK_KILLED", 2);
    assert_eq!(
        fstream.next_of("UPDATE")["update"]["status"]["state"],
        "TASK_KILLED"
    );
    let snap = get(m.addr, "/metrics/snapshot").json();
    assert_eq!(snap["master/tasks_killed"], 1.0);
    assert_eq!(snap["master/cpus_used"], 0.0);

    // A second task runs to FINISHED on a fresh offer.
    let oid = offer_id(&fstream.next_of("OFFERS"));
    call(
        m.addr,
        &sid,
        &accept(&fw, &oid, vec![task("t2", &agent.id, 1.0)]),
    );
    agent.stream.next_of("LAUNCH");
    agent.update(&fw, "t2", "TASK_RUNNING", 3);
    agent.update(&fw, "t2", "TASK_FINISHED", 4);
    let mut states = vec![];
    for _ in 0..2 {
        states.push(fstream.next_of("UPDATE")["update"]["status"]["state"].clone());
    }
    assert_eq!(states, vec![json!("TASK_RUNNING"), json!("TASK_FINISHED")]);

    // Operator API.
    let r = post_json(m.addr, "/api/v1", &json!({"type": "GET_HEALTH"}), &[]);
    assert_eq!(
        r.json(),
        json!({"type": "GET_HEALTH", "get_health": {"healthy": true}})
    );
    let r = post_json(m.addr, "/api/v1", &json!({"type": "GET_AGENTS"}), &[]).json();
    assert_eq!(
        r["get_agents"]["agents"][0]["agent_info"]["id"]["value"],
        agent.id.as_str()
    );
    let r = post_json(m.addr, "/api/v1", &json!({"type": "GET_FRAMEWORKS"}), &[]).json();
    assert_eq!(
        r["get_frameworks"]["frameworks"][0]["framework_info"]["id"]["value"],
        fw.as_str()
    );
    let r = post_json(m.addr, "/api/v1", &json!({"type": "GET_TASKS"}), &[]).json();
    assert_eq!(
        r["get_tasks"]["completed_tasks"].as_array().unwrap().len(),
        2
    );
    let r = post_json(
        m.addr,
        "/api/v1",
        &json!({"type": "UPDATE_WEIGHTS", "update_weights": {"weight_infos": [{"role": "a", "weight": 3.0}]}}),
        &[],
    );
    assert_eq!(r.status, 200, "{}", r.text());
    let r = post_json(m.addr, "/api/v1", &json!({"type": "GET_WEIGHTS"}), &[]).json();
    assert_eq!(
        r["get_weights"]["weight_infos"][0],
        json!({"role": "a", "weight": 3.0})
    );
    let r = post_json(m.addr, "/api/v1", &json!({"type": "GET_STATE"}), &[]).json();
    assert!(r["get_state"]["get_agents"]["agents"].is_array());
    let v = get(m.addr, "/version").json();
    assert_eq!(v["version"], "1.11.0");
    assert_eq!(v["version_major"], 1);

    // TEARDOWN: the stream ends and the framework is completed.
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "TEARDOWN"}),
    );
    assert_eq!(r.status, 202);
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "REVIVE"}),
    );
    assert_eq!(r.status, 400, "{}", r.text());
}

#[test]
fn bad_input_gets_mesos_codes_and_messages() {
    let m = TestMaster::start(CoreConfig::default(), Duration::from_millis(50));
    let agent = SimAgent::start(m.addr, "cpus:2;mem:512");
    let (fstream, sid, fw) = subscribe(m.addr);

    let r = support::request(
        m.addr,
        "POST",
        SCHED,
        &[("Content-Type", "application/json")],
        b"{not json",
    );
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("Failed to convert JSON into Call"),
        "{}",
        r.text()
    );
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "FLY"}),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("FLY"), "{}", r.text());
    let r = post_json(
        m.addr,
        SCHED,
        &json!({"framework_id": {"value": fw}, "type": "REVIVE"}),
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("Mesos-Stream-Id"), "{}", r.text());
    let r = call(
        m.addr,
        "wrong",
        &json!({"framework_id": {"value": fw}, "type": "REVIVE"}),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("didn't match"), "{}", r.text());
    let r = call(m.addr, &sid, &json!({"type": "REVIVE"}));
    assert_eq!(r.status, 400);
    assert!(r.text().contains("framework_id"), "{}", r.text());
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "KILL"}),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("'kill'"), "{}", r.text());
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": "nobody"}, "type": "REVIVE"}),
    );
    assert_eq!(r.status, 400);
    assert!(
        r.text().contains("Framework cannot be found"),
        "{}",
        r.text()
    );
    let r = support::request(
        m.addr,
        "POST",
        SCHED,
        &[("Content-Type", "text/plain")],
        b"{}",
    );
    assert_eq!(r.status, 415);
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "ACKNOWLEDGE", "acknowledge": {
            "agent_id": {"value": agent.id}, "task_id": {"value": "t"}, "uuid": "not-a-uuid"}}),
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("uuid"), "{}", r.text());

    // Overcommit, reused task id, no command: TASK_ERROR naming the problem; the valid
    // task in the same ACCEPT still launches.
    let oid = offer_id(&fstream.next_of("OFFERS"));
    let mut no_cmd = task("nocmd", &agent.id, 0.1);
    no_cmd.as_object_mut().unwrap().remove("command");
    let r = call(
        m.addr,
        &sid,
        &accept(
            &fw,
            &oid,
            vec![
                task("ok", &agent.id, 1.0),
                task("ok", &agent.id, 0.5),
                task("big", &agent.id, 8.0),
                no_cmd,
            ],
        ),
    );
    assert_eq!(r.status, 202);
    let mut messages = vec![];
    for _ in 0..3 {
        let s = fstream.next_of("UPDATE")["update"]["status"].clone();
        assert_eq!(s["state"], "TASK_ERROR");
        assert_eq!(s["reason"], "REASON_TASK_INVALID");
        assert_eq!(s["source"], "SOURCE_MASTER");
        messages.push(s["message"].as_str().unwrap().to_string());
    }
    assert!(messages[0].contains("duplicate ID: ok"), "{messages:?}");
    assert!(messages[1].contains("greater than offered"), "{messages:?}");
    assert!(messages[2].contains("CommandInfo"), "{messages:?}");
    assert_eq!(
        agent.stream.next_of("LAUNCH")["launch"]["tasks"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The used offer again (it no longer exists): TASK_LOST with REASON_INVALID_OFFERS.
    call(
        m.addr,
        &sid,
        &accept(&fw, &oid, vec![task("late", &agent.id, 0.1)]),
    );
    let s = fstream.next_of("UPDATE")["update"]["status"].clone();
    assert_eq!(s["state"], "TASK_LOST");
    assert_eq!(s["reason"], "REASON_INVALID_OFFERS");
    assert!(
        s["message"].as_str().unwrap().contains("no longer valid"),
        "{s}"
    );
    // The task id "ok" is in use: reusing it later is refused too.
    let oid = offer_id(&fstream.next_of("OFFERS"));
    call(
        m.addr,
        &sid,
        &accept(&fw, &oid, vec![task("ok", &agent.id, 0.1)]),
    );
    let s = fstream.next_of("UPDATE")["update"]["status"].clone();
    assert!(
        s["message"].as_str().unwrap().contains("duplicate ID"),
        "{s}"
    );

    // Operator: unknown call and bad weights.
    let r = post_json(m.addr, "/api/v1", &json!({"type": "DANCE"}), &[]);
    assert_eq!(r.status, 400);
    let r = post_json(
        m.addr,
        "/api/v1",
        &json!({"type": "UPDATE_WEIGHTS", "update_weights": {"weight_infos": [{"role": "a", "weight": -1}]}}),
        &[],
    );
    assert_eq!(r.status, 400);
    assert!(r.text().contains("weight"), "{}", r.text());
    // Agent protocol: unknown agent.
    let r = post_json(
        m.addr,
        "/api/v1/agent",
        &json!({"type": "HEARTBEAT", "agent_id": {"value": "x"}}),
        &[],
    );
    assert_eq!(r.status, 404);
}

#[test]
fn offers_are_rescinded_after_the_offer_timeout_and_calls_need_a_subscription() {
    let m = TestMaster::start(
        CoreConfig {
            offer_timeout: Some(Duration::from_millis(300)),
            ..CoreConfig::default()
        },
        Duration::from_millis(50),
    );
    let agent = SimAgent::start(m.addr, "cpus:1;mem:256");
    // A failover timeout keeps the framework known after it disconnects: without one it is
    // torn down at once, and calls then get 400 "Framework cannot be found", as in Mesos.
    let (fstream, sid, fw) = subscribe_with(
        m.addr,
        json!({"user": "root", "name": "test", "failover_timeout": 60.0}),
    );
    let oid = offer_id(&fstream.next_of("OFFERS"));
    let r = fstream.next_of("RESCIND");
    assert_eq!(r["rescind"]["offer_id"]["value"], oid.as_str());
    call(
        m.addr,
        &sid,
        &accept(&fw, &oid, vec![task("t", &agent.id, 0.5)]),
    );
    let s = fstream.next_of("UPDATE")["update"]["status"].clone();
    assert_eq!(s["reason"], "REASON_INVALID_OFFERS");

    // The subscription closes: further calls are 403 until it re-subscribes.
    drop(fstream);
    assert!(support::wait(|| {
        call(
            m.addr,
            &sid,
            &json!({"framework_id": {"value": fw}, "type": "REVIVE"}),
        )
        .status
            == 403
    }));
}

#[test]
fn a_stalled_subscriber_is_disconnected_instead_of_buffered() {
    let m = TestMaster::start(
        CoreConfig {
            subscriber_queue: 16,
            ..CoreConfig::default()
        },
        Duration::from_millis(20),
    );
    let agent = SimAgent::start(m.addr, "cpus:1;mem:256");
    // A framework that subscribes and then never reads its stream.
    let mut raw = std::net::TcpStream::connect(m.addr).unwrap();
    let body = json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": {"user": "u", "name": "stalled"}}}).to_string();
    write!(
        raw,
        "POST {SCHED} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let fw = {
        assert!(support::wait(|| get(m.addr, "/state").json()["frameworks"]
            [0]["id"]
            .is_string()));
        get(m.addr, "/state").json()["frameworks"][0]["id"]
            .as_str()
            .unwrap()
            .to_string()
    };
    // Big updates for it, far more than the socket buffers and the queue hold.
    let big = "x".repeat(256 * 1024);
    for i in 0..200u32 {
        let r = post_json(
            m.addr,
            "/api/v1/agent",
            &json!({"type": "STATUS_UPDATE", "agent_id": {"value": agent.id},
                "status_update": {"framework_id": {"value": fw}, "status": {
                    "task_id": {"value": format!("t{i}")}, "state": "TASK_RUNNING",
                    "message": big, "uuid": "AAECAwQFBgcICQoLDA0ODw=="}}}),
            &[],
        );
        assert_eq!(r.status, 202);
        if get(m.addr, "/metrics/snapshot").json()["master/frameworks_disconnected_stalled"] == 1.0
        {
            break;
        }
    }
    let snap = get(m.addr, "/metrics/snapshot").json();
    assert_eq!(snap["master/frameworks_disconnected_stalled"], 1.0);
    assert_eq!(snap["master/frameworks_connected"], 0.0);
    drop(raw);
}

/// Allocation follows changes without waiting for the periodic cycle (an hour here): a
/// subscription, an ACCEPT's unused remainder and a finished task's resources are each
/// offered again by the event-driven, batched allocation alone.
#[test]
fn changes_are_offered_without_waiting_for_the_periodic_allocation() {
    let m = TestMaster::start(CoreConfig::default(), Duration::from_secs(3600));
    let agent = SimAgent::start(m.addr, "cpus:2;mem:1024");
    let (s, sid, fw) = subscribe(m.addr);
    let first = s.next_of("OFFERS");
    let r = call(
        m.addr,
        &sid,
        &accept(&fw, &offer_id(&first), vec![task("t1", &agent.id, 1.0)]),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    agent.stream.next_of("LAUNCH");
    let cpus = |e: &Value| -> f64 {
        e["offers"]["offers"][0]["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["name"] == "cpus")
            .map(|r| r["scalar"]["value"].as_f64().unwrap())
            .sum()
    };
    let remainder = s.next_of("OFFERS");
    assert_eq!(cpus(&remainder), 1.0, "{remainder}");
    let r = call(
        m.addr,
        &sid,
        &json!({"framework_id": {"value": fw}, "type": "DECLINE", "decline": {
            "offer_ids": [{"value": offer_id(&remainder)}], "filters": {"refuse_seconds": 0.0}}}),
    );
    assert_eq!(r.status, 202, "{}", r.text());
    assert_eq!(cpus(&s.next_of("OFFERS")), 1.0);
    agent.update(&fw, "t1", "TASK_FINISHED", 1);
    // The outstanding offer holds the other cpu; the finished task's comes on its own.
    let freed = s.next_of("OFFERS");
    assert_eq!(cpus(&freed), 1.0, "{freed}");
    let snapshot = get(m.addr, "/metrics/snapshot").json();
    assert!(
        snapshot["allocator/mesos/allocation_runs"]
            .as_f64()
            .unwrap()
            >= 4.0
    );
}
