//! Authentication against the real `cairn-master` process (docs/master.md,
//! "Authentication"): with `credentials` and every `authenticate_*` on, each realm refuses
//! requests without valid HTTP Basic credentials (401, `WWW-Authenticate`), admits the right
//! ones, and refuses a framework whose `FrameworkInfo.principal` is not the one it
//! authenticated as (403). A real Prometheus scrapes `/metrics` with `basic_auth`. Bad
//! settings stop the process at start, naming the setting.
#![allow(clippy::unwrap_used)]

mod support;

use std::process::Command;
use std::time::Duration;

use cairn_testsupport::prometheus::{sample_value, Prometheus, ScrapeJob};
use serde_json::{json, Value};
use support::{basic, get, post_json, request, MasterProcess, Resp, SimAgent, Stream};

const SCHED: &str = "/api/v1/scheduler";
const CREDENTIALS: &str = r#"{"credentials": [
    {"principal": "fw", "secret": "fw-secret"},
    {"principal": "agent", "secret": "agent-secret"},
    {"principal": "ops", "secret": "ops-secret"}]}"#;

fn authenticated_master() -> MasterProcess {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("credentials.json");
    std::fs::write(&creds, CREDENTIALS).unwrap();
    let m = MasterProcess::start(&format!(
        "credentials = {creds:?}\nauthenticate_frameworks = true\nauthenticate_agents = true\n\
         authenticate_http_readwrite = true\nauthenticate_http_readonly = true\n"
    ));
    // The master read the file at start; the temp dir can go.
    drop(dir);
    m
}

fn subscribe_call(principal: Option<&str>) -> Value {
    let mut info = json!({"user": "root", "name": "auth-test"});
    if let Some(p) = principal {
        info["principal"] = json!(p);
    }
    json!({"type": "SUBSCRIBE", "subscribe": {"framework_info": info}})
}

fn assert_401(r: &Resp, reason: &str) {
    assert_eq!(r.status, 401, "{}", r.text());
    assert_eq!(r.header("WWW-Authenticate"), Some("Basic realm=\"cairn\""));
    assert!(
        r.text().contains(reason),
        "{reason:?} not in {:?}",
        r.text()
    );
    assert!(!r.text().contains("secret"), "{}", r.text());
}

fn get_as(m: &MasterProcess, path: &str, auth: &str) -> Resp {
    request(m.addr, "GET", path, &[("Authorization", auth)], b"")
}

#[test]
fn every_realm_refuses_missing_or_wrong_credentials_and_admits_valid_ones() {
    let m = authenticated_master();
    let fw = basic("fw", "fw-secret");
    let ops = basic("ops", "ops-secret");

    // Always open.
    assert_eq!(get(m.addr, "/health").status, 200);
    assert_eq!(get(m.addr, "/version").status, 200);

    // Scheduler API.
    let r = post_json(m.addr, SCHED, &subscribe_call(None), &[]);
    assert_401(&r, "no credentials");
    let wrong = basic("fw", "not-it");
    let r = post_json(
        m.addr,
        SCHED,
        &subscribe_call(None),
        &[("Authorization", &wrong)],
    );
    assert_401(&r, "invalid credentials for principal 'fw'");
    assert!(!r.text().contains("not-it"));
    let r = post_json(
        m.addr,
        SCHED,
        &subscribe_call(None),
        &[("Authorization", "Basic !!!")],
    );
    assert_401(&r, "malformed");
    let r = post_json(
        m.addr,
        SCHED,
        &subscribe_call(None),
        &[("Authorization", "Bearer abc")],
    );
    assert_401(&r, "expecting Basic");
    // FrameworkInfo.principal must be the authenticated one.
    let r = post_json(
        m.addr,
        SCHED,
        &subscribe_call(Some("someone-else")),
        &[("Authorization", &fw)],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert_eq!(
        r.text(),
        "Authenticated principal 'fw' does not match principal 'someone-else' set in \
         `FrameworkInfo`"
    );
    // The right one subscribes; an unset principal becomes the authenticated one.
    let stream = Stream::open_with(
        m.addr,
        SCHED,
        &subscribe_call(None),
        &[("Authorization", &fw)],
    );
    assert_eq!(stream.status, 200);
    let framework_id = stream.next_of("SUBSCRIBED")["subscribed"]["framework_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    let sid = stream.header("Mesos-Stream-Id").unwrap().to_string();
    let state = get_as(&m, "/state", &ops).json();
    assert_eq!(state["frameworks"][0]["principal"], "fw", "{state}");
    // Its calls must come from the same principal.
    let revive = json!({"framework_id": {"value": framework_id}, "type": "REVIVE"});
    let r = post_json(
        m.addr,
        SCHED,
        &revive,
        &[("Mesos-Stream-Id", &sid), ("Authorization", &ops)],
    );
    assert_eq!(r.status, 403, "{}", r.text());
    assert!(
        r.text().contains("Authenticated principal 'ops'"),
        "{}",
        r.text()
    );
    let r = post_json(
        m.addr,
        SCHED,
        &revive,
        &[("Mesos-Stream-Id", &sid), ("Authorization", &fw)],
    );
    assert_eq!(r.status, 202, "{}", r.text());

    // Agent protocol.
    let register = json!({"type": "REGISTER", "register": {
        "hostname": "sim-agent", "address": "127.0.0.1:5051",
        "resources": cairn_api::Resources::parse("cpus:1;mem:128").unwrap().to_wire(),
        "boot_id": "b", "version": "test"}});
    let r = post_json(m.addr, "/api/v1/agent", &register, &[]);
    assert_401(&r, "no credentials");
    let agent_wrong = basic("agent", "wrong");
    let r = post_json(
        m.addr,
        "/api/v1/agent",
        &register,
        &[("Authorization", &agent_wrong)],
    );
    assert_401(&r, "invalid credentials for principal 'agent'");
    let agent = SimAgent::start_as(
        m.addr,
        "cpus:2;mem:256",
        Some(basic("agent", "agent-secret")),
    );
    assert!(!agent.id.is_empty());
    // The framework gets the agent's offer.
    stream.next_of("OFFERS");

    // Operator API: reads are readonly, writes readwrite.
    let get_state = json!({"type": "GET_STATE"});
    let r = post_json(m.addr, "/api/v1", &get_state, &[]);
    assert_401(&r, "no credentials");
    let r = post_json(m.addr, "/api/v1", &get_state, &[("Authorization", &ops)]);
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["type"], "GET_STATE");
    let weights = json!({"type": "UPDATE_WEIGHTS", "update_weights": {
        "weight_infos": [{"role": "web", "weight": 2.0}]}});
    let r = post_json(m.addr, "/api/v1", &weights, &[]);
    assert_401(&r, "no credentials");
    let r = post_json(m.addr, "/api/v1", &weights, &[("Authorization", &ops)]);
    assert_eq!(r.status, 200, "{}", r.text());
    // GET_FLAGS lists the settings, never a secret.
    let r = post_json(
        m.addr,
        "/api/v1",
        &json!({"type": "GET_FLAGS"}),
        &[("Authorization", &ops)],
    );
    let flags = r.text();
    assert!(
        flags.contains("authenticate_agents") && !flags.contains("-secret"),
        "{flags}"
    );

    // Read-only endpoints.
    for path in ["/state", "/master/state", "/metrics/snapshot", "/metrics"] {
        assert_401(&get(m.addr, path), "no credentials");
        assert_eq!(get_as(&m, path, &ops).status, 200, "{path}");
    }

    // Failures are counted by kind, in the snapshot and in Prometheus text.
    let snapshot = get_as(&m, "/metrics/snapshot", &ops).json();
    // Four 401s and two principal mismatches (403).
    assert_eq!(
        snapshot["master/authentication_failures/framework"], 6.0,
        "{snapshot}"
    );
    assert_eq!(
        snapshot["master/authentication_failures/agent"], 2.0,
        "{snapshot}"
    );
    assert_eq!(
        snapshot["master/authentication_failures/readwrite"], 1.0,
        "{snapshot}"
    );
    // GET_STATE and the four paths.
    assert_eq!(
        snapshot["master/authentication_failures/readonly"], 5.0,
        "{snapshot}"
    );
    let text = get_as(&m, "/metrics", &ops).text();
    assert!(
        text.lines()
            .any(|l| l == "cairn_master_authentication_failures_total{kind=\"agent\"} 2"),
        "{text}"
    );
    if cairn_testsupport::require_command("auth promtool", "promtool") {
        cairn_testsupport::prometheus::promtool_check_metrics(&text).unwrap();
    }
    let log = m.log();
    assert!(
        log.contains("authentication failed")
            && log.contains("invalid credentials for principal 'agent'"),
        "{log}"
    );
    assert!(!log.contains("agent-secret") && !log.contains("fw-secret"));
    drop(stream);
    drop(agent);
}

#[test]
fn prometheus_scrapes_metrics_with_basic_auth() {
    if !cairn_testsupport::require_command(
        "prometheus_scrapes_metrics_with_basic_auth",
        "prometheus",
    ) {
        return;
    }
    let m = authenticated_master();
    let target = [m.addr.to_string()];
    let prom = Prometheus::with_jobs(&[
        ScrapeJob::new("authenticated", &target).basic_auth("ops", "ops-secret"),
        ScrapeJob::new("anonymous", &target),
    ]);
    let up = prom
        .wait_for(r#"up{job="authenticated"} == 1"#, Duration::from_secs(60))
        .unwrap();
    assert_eq!(sample_value(&up), Some(1.0));
    let elected = prom
        .wait_for(
            r#"cairn_master_elected{job="authenticated"}"#,
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(sample_value(&elected), Some(1.0));
    // The job without credentials is refused: down, and counted by the master.
    let down = prom
        .wait_for(r#"up{job="anonymous"} == 0"#, Duration::from_secs(30))
        .unwrap();
    assert_eq!(sample_value(&down), Some(0.0));
    let failures = prom
        .wait_for(
            r#"cairn_master_authentication_failures_total{job="authenticated",kind="readonly"} > 0"#,
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(sample_value(&failures).unwrap() >= 1.0);
    let targets = prom.targets().to_string();
    assert!(targets.contains("401"), "{targets}");
}

#[test]
fn bad_authentication_settings_stop_the_start_naming_them() {
    // --config pointing at a missing file is an error of its own: use an empty one.
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("empty.toml");
    std::fs::write(&empty, "").unwrap();
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn-master"))
            .arg("--config")
            .arg(&empty)
            .args(["--listen", "127.0.0.1:0", "--work-dir"])
            .arg(dir.path())
            .args(args)
            .output()
            .unwrap();
        assert!(!out.status.success(), "cairn-master started with {args:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let e = run(&["--authenticate-agents"]);
    assert!(
        e.contains("authenticate_agents") && e.contains("`credentials`"),
        "{e}"
    );
    let creds = dir.path().join("creds");
    std::fs::write(&creds, "fw one\nfw-without-secret\n").unwrap();
    let e = run(&["--credentials", creds.to_str().unwrap()]);
    assert!(
        e.contains("setting credentials")
            && e.contains(creds.to_str().unwrap())
            && e.contains("line 2"),
        "{e}"
    );
    std::fs::write(
        &creds,
        r#"{"credentials": [{"principal": "fw", "secret": ""}]}"#,
    )
    .unwrap();
    let e = run(&["--credentials", creds.to_str().unwrap()]);
    assert!(e.contains("credentials[0].secret"), "{e}");
    let e = run(&["--credentials", "/nonexistent/creds"]);
    assert!(
        e.contains("setting credentials") && e.contains("/nonexistent/creds"),
        "{e}"
    );
}
