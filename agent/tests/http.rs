//! The agent's HTTP API over a real containerizer running busybox tasks (host cgroups v1),
//! scraped by a real Prometheus. Needs root; skips with a printed reason otherwise.
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cairn_agent::containerizer::{Containerizer, ContainerizerConfig, LaunchRequest, TaskCommand};
use cairn_agent::http::{
    self, AgentHttpState, AgentInfo, ContainerizerView, RecoveryStats, TaskMeta,
};
use cairn_api::{Resources, TaskState};
use cairn_testsupport::cgroups::CgroupParent;
use cairn_testsupport::images::TestImages;
use cairn_testsupport::prometheus::{promtool_check_metrics, sample_value, Prometheus};
use cairn_testsupport::require_root;
use serde_json::Value;

/// A client that returns error statuses instead of failing on them.
struct Client {
    base: String,
    agent: ureq::Agent,
}

impl Client {
    fn get(&self, path: &str, query: &[(&str, &str)]) -> (u16, String) {
        let mut req = self.agent.get(format!("{}{path}", self.base));
        for (k, v) in query {
            req = req.query(*k, *v);
        }
        let mut resp = req.call().unwrap();
        let status = resp.status().as_u16();
        (status, resp.body_mut().read_to_string().unwrap())
    }

    fn json(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let (status, body) = self.get(path, query);
        assert_eq!(status, 200, "{path}: {body}");
        serde_json::from_str(&body).unwrap()
    }
}

fn request(image: &str, task: &str, cmd: &str) -> LaunchRequest {
    let resources = Resources::new()
        .with_scalar("cpus", 0.1)
        .unwrap()
        .with_scalar("mem", 32.0)
        .unwrap();
    let mut r = LaunchRequest::new(task, resources);
    r.image = Some(image.to_string());
    r.command = Some(TaskCommand::Shell(cmd.to_string()));
    r
}

/// Every task of `state` in `/state`, as `(framework list, task id, state)`.
fn tasks_in(state: &Value, list: &str, tasks: &str) -> Vec<(String, String)> {
    state[list]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            let key = if list == "frameworks" {
                "executors"
            } else {
                "completed_executors"
            };
            f[key].as_array().unwrap().clone()
        })
        .flat_map(|e| e[tasks].as_array().unwrap().clone())
        .map(|t| {
            (
                t["id"].as_str().unwrap().to_string(),
                t["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn http_api_serves_state_statistics_files_and_metrics_needs_root() {
    if !require_root("http_api") {
        return;
    }
    let images = TestImages::get();
    let dir = tempfile::Builder::new()
        .prefix("cairn-agent-http-")
        .tempdir()
        .unwrap();
    let cgroups = CgroupParent::new("http");
    let work = dir.path().join("work");
    let mut config = ContainerizerConfig::new(&work);
    config.supervisor = PathBuf::from(env!("CARGO_BIN_EXE_cairn-supervisor"));
    config.cgroups.parent = cgroups.path.to_string_lossy().into_owned();
    let store = cairn_oci::store::Store::open(work.join("images")).unwrap();
    let imported =
        cairn_oci::import::import_docker_archive(&store, &images.docker_archive, None).unwrap();
    let image = imported[0].reference.to_string();

    let (c, recovery) = Containerizer::start(config).unwrap();
    let c = Arc::new(c);
    let view = Arc::new(ContainerizerView::new(Arc::clone(&c)));
    let info = AgentInfo {
        id: "agent-S0".into(),
        hostname: "localhost".into(),
        pid: "slave(1)@127.0.0.1:5051".into(),
        capacity: cairn_agent::capacity::measure(&work).unwrap(),
        resources: Resources::parse("cpus:2;mem:1024;disk:2048;ports:[31000-32000]").unwrap(),
        attributes: BTreeMap::from([("rack".to_string(), "r1".to_string())]),
        start_time: SystemTime::now(),
        recovery: RecoveryStats::from(&recovery),
    };
    let state = AgentHttpState::new(view.clone(), info).unwrap();

    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(async move { axum::serve(listener, http::router(state)).await });
    let client = Client {
        base: format!("http://{addr}"),
        agent: ureq::Agent::config_builder()
            .proxy(None)
            .http_status_as_error(false)
            .build()
            .into(),
    };

    for (task, fw) in [("sleeper", "fw-1"), ("echoer", "fw-2")] {
        view.register_task(
            cairn_api::TaskId::new(task),
            TaskMeta {
                framework_id: fw.into(),
                name: format!("{task} task"),
            },
        );
    }
    let echo = c.launch(&request(
        &image,
        "echoer",
        "echo hello from cairn; echo line two",
    ));
    assert_eq!(c.wait(&echo).unwrap().state, TaskState::Finished);
    let sleeper = c.launch(&request(&image, "sleeper", "sleep 600"));
    assert!(c.termination(&sleeper).is_none(), "the sleeper ended");

    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        check(&client, &c, &echo, &sleeper, &addr.to_string());
    }));

    c.kill(&sleeper, Duration::from_secs(1)).unwrap();
    assert_eq!(c.wait(&sleeper).unwrap().state, TaskState::Killed);
    drop(rt);
    drop(view);
    drop(c);
    let work_s = dir.path().to_string_lossy().into_owned();
    let mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_string))
        .filter(|m| m.starts_with(&work_s))
        .collect();
    assert!(mounts.is_empty(), "mounts left: {mounts:?}");
    assert!(
        cgroups.leftovers().is_empty(),
        "cgroups left: {:?}",
        cgroups.leftovers()
    );
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

fn check(
    client: &Client,
    c: &Containerizer,
    echo: &cairn_api::ContainerId,
    sleeper: &cairn_api::ContainerId,
    addr: &str,
) {
    assert_eq!(client.get("/health", &[]).0, 200);

    // /images: the imported busybox image, as the store has it.
    let stored = &c.store().images().unwrap()[0];
    let images = client.json("/images", &[]);
    assert_eq!(
        images["images"],
        serde_json::json!([{
            "reference": stored.reference.to_string(),
            "digest": stored.manifest_digest.to_string(),
            "layers": stored.layers.len(),
            "size": stored.layers.iter().map(|l| l.size).sum::<u64>(),
        }]),
        "{images}"
    );
    assert!(stored.layers.iter().map(|l| l.size).sum::<u64>() > 0);

    // /state and its Mesos alias: the sleeper running under fw-1, the echo finished.
    for path in ["/state", "/slave(1)/state"] {
        let state = client.json(path, &[]);
        assert_eq!(state["id"], "agent-S0");
        assert_eq!(state["pid"], "slave(1)@127.0.0.1:5051");
        assert_eq!(state["resources"]["cpus"], 2.0);
        assert_eq!(state["resources"]["ports"], "[31000-32000]");
        assert_eq!(state["attributes"]["rack"], "r1");
        assert!(state["start_time"].as_f64().unwrap() > 0.0);
        assert_eq!(
            tasks_in(&state, "frameworks", "tasks"),
            vec![("sleeper".to_string(), "TASK_RUNNING".to_string())],
            "{state:#}"
        );
        assert_eq!(
            tasks_in(&state, "completed_frameworks", "completed_tasks"),
            vec![("echoer".to_string(), "TASK_FINISHED".to_string())],
            "{state:#}"
        );
        assert_eq!(state["frameworks"][0]["id"], "fw-1");
    }

    // /monitor/statistics: memory of the running container.
    for path in ["/monitor/statistics", "/slave(1)/monitor/statistics"] {
        let stats = client.json(path, &[]);
        let entries = stats.as_array().unwrap();
        assert_eq!(entries.len(), 1, "{stats:#}");
        assert_eq!(entries[0]["executor_id"], "sleeper");
        assert_eq!(entries[0]["framework_id"], "fw-1");
        assert_eq!(entries[0]["source"], "sleeper");
        let s = &entries[0]["statistics"];
        assert!(s["mem_total_bytes"].as_u64().unwrap() > 0, "{stats:#}");
        assert_eq!(s["mem_limit_bytes"].as_u64(), Some(32 * 1024 * 1024));
        assert!(s["timestamp"].as_f64().unwrap() > 0.0);
    }

    // /files/read: the echo's stdout, by the sandbox directory /state reports.
    let sandbox = c.layout().sandbox(echo);
    let stdout = sandbox.join("stdout").to_string_lossy().into_owned();
    let all = client.json("/files/read", &[("path", &stdout), ("offset", "0")]);
    assert_eq!(all["data"], "hello from cairn\nline two\n");
    assert_eq!(all["offset"], 0);
    let len = client.json("/files/read", &[("path", &stdout), ("offset", "-1")]);
    assert_eq!(len["offset"], 26);
    assert_eq!(len["data"], "");
    let part = client.json(
        "/files/read",
        &[("path", &stdout), ("offset", "6"), ("length", "4")],
    );
    assert_eq!(
        (part["data"].as_str(), part["offset"].as_u64()),
        (Some("from"), Some(6))
    );
    let rel = format!("{}/stdout", echo.as_str());
    let by_rel = client.json("/files/read", &[("path", &rel), ("offset", "17")]);
    assert_eq!(by_rel["data"], "line two\n");
    let listing = client.json("/files/browse", &[("path", &sandbox.to_string_lossy())]);
    assert!(
        listing
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["path"] == stdout.as_str() && e["size"] == 26),
        "{listing:#}"
    );

    // Escapes are refused with a message.
    std::os::unix::fs::symlink("/etc/passwd", sandbox.join("passwd")).unwrap();
    let link = sandbox.join("passwd").to_string_lossy().into_owned();
    let dotdot = format!("{}/../../../../../../etc/passwd", echo.as_str());
    for path in [
        "../../etc/passwd",
        dotdot.as_str(),
        "/etc/passwd",
        link.as_str(),
        &format!("{}/passwd", echo.as_str()),
    ] {
        let (status, body) = client.get("/files/read", &[("path", path), ("offset", "0")]);
        assert_eq!(status, 403, "{path}: {body}");
        assert!(body.contains("outside the sandboxes"), "{path}: {body}");
        assert!(!body.contains("root:"), "{path} leaked: {body}");
    }
    let missing = format!("{}/nothing", echo.as_str());
    assert_eq!(client.get("/files/read", &[("path", &missing)]).0, 404);

    // /metrics/snapshot: Mesos names.
    let snap = client.json("/metrics/snapshot", &[]);
    assert_eq!(snap["slave/tasks_running"], 1.0, "{snap:#}");
    assert_eq!(snap["slave/tasks_finished"], 1.0, "{snap:#}");
    assert_eq!(snap["slave/tasks_failed"], 0.0);
    assert_eq!(snap["slave/tasks_killed"], 0.0);
    assert_eq!(snap["slave/cpus_total"], 2.0);
    assert!((snap["slave/cpus_used"].as_f64().unwrap() - 0.1).abs() < 1e-9);
    assert_eq!(snap["slave/mem_total"], 1024.0);
    assert_eq!(snap["slave/mem_used"], 32.0);
    assert_eq!(snap["slave/disk_total"], 2048.0);
    assert!(snap["slave/uptime_secs"].as_f64().unwrap() > 0.0);
    assert_eq!(snap["containerizer/mesos/container_destroy_errors"], 0.0);

    // /metrics: promtool is happy, and a real Prometheus scrapes it.
    let (status, text) = client.get("/metrics", &[]);
    assert_eq!(status, 200);
    promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert!(
        text.contains("cairn_agent_launch_duration_seconds_count 2"),
        "{text}"
    );
    let prom = Prometheus::start(&[addr.to_string()]);
    let running = prom
        .wait_for(
            r#"cairn_agent_tasks{state="TASK_RUNNING"} == 1"#,
            Duration::from_secs(60),
        )
        .unwrap();
    assert_eq!(sample_value(&running), Some(1.0));
    let mem = prom
        .wait_for(
            &format!(
                r#"cairn_agent_container_memory_bytes{{task_id="sleeper",framework_id="fw-1",container_id="{}"}} > 0"#,
                sleeper.as_str()
            ),
            Duration::from_secs(30),
        )
        .unwrap();
    assert!(sample_value(&mem).unwrap() > 0.0);
    let finished = prom
        .wait_for(
            r#"cairn_agent_task_terminations_total{state="TASK_FINISHED"}"#,
            Duration::from_secs(30),
        )
        .unwrap();
    assert_eq!(sample_value(&finished), Some(1.0));
}
