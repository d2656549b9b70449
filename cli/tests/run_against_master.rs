//! The `cairn` binary against a real `cairn-master` process and a simulated agent that speaks
//! the agent protocol (register, event stream, LAUNCH, status updates held until acknowledged)
//! and serves a minimal agent HTTP API (`/state`, `/files/read`) for the task's output.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use cairn_api::recordio::Decoder;
use cairn_testsupport::{free_port, wait_until, Service, ServiceDir};
use serde_json::{json, Value};

fn master_bin() -> PathBuf {
    cairn_testsupport::bins::sibling_binary(
        env!("CARGO_BIN_EXE_cairn"),
        "cairn-master",
        "cairn-master",
    )
}

struct Master {
    url: String,
    _svc: Service,
    _dir: ServiceDir,
}

fn start_master() -> Master {
    let dir = ServiceDir::new("cli-master");
    let port = free_port();
    let mut cmd = Command::new(master_bin());
    cmd.args([
        "--listen",
        &format!("127.0.0.1:{port}"),
        "--work-dir",
        dir.path().to_str().unwrap(),
        "--allocation-interval-secs",
        "0.1",
    ]);
    let svc = Service::spawn("master", cmd, dir.path()).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(20), || ureq::get(&format!(
            "{url}/health"
        ))
        .call()
        .is_ok()),
        "master did not come up: {}",
        svc.log()
    );
    Master {
        url,
        _svc: svc,
        _dir: dir,
    }
}

fn post(url: &str, body: &Value) -> (u16, String) {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let mut r = agent
        .post(url)
        .header("Content-Type", "application/json")
        .send(body.to_string())
        .unwrap();
    (r.status().as_u16(), r.body_mut().read_to_string().unwrap())
}

/// The simulated agent's tasks' outputs, served at `/files/read`.
type Files = Arc<Mutex<HashMap<String, String>>>;

/// Serves `/state` and `/files/read` like the agent (one request per connection).
fn serve_agent_http(listener: TcpListener, agent_id: Arc<Mutex<String>>, files: Files) {
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut line = String::new();
            reader.read_line(&mut line).unwrap_or(0);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
                    break;
                }
            }
            let target = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let (path, query) = target.split_once('?').unwrap_or((&target, ""));
            let q: HashMap<&str, &str> = query
                .split('&')
                .filter_map(|kv| kv.split_once('='))
                .collect();
            let body = match path {
                "/state" => {
                    let files = files.lock().unwrap();
                    let executors: Vec<Value> = files
                        .keys()
                        .filter_map(|k| k.strip_suffix("/stdout"))
                        .map(|task| json!({"id": task, "directory": format!("/sandboxes/{task}"),
                            "tasks": [{"id": task}]}))
                        .collect();
                    json!({"id": *agent_id.lock().unwrap(),
                           "frameworks": [{"id": "f", "executors": executors}],
                           "completed_frameworks": []})
                }
                "/files/read" => {
                    let file = q.get("path").unwrap_or(&"").replace("%2F", "/");
                    let file = file.trim_start_matches("/sandboxes/");
                    let data = files.lock().unwrap().get(file).cloned().unwrap_or_default();
                    let offset: usize = q.get("offset").and_then(|o| o.parse().ok()).unwrap_or(0);
                    json!({"data": data.get(offset.min(data.len())..).unwrap_or(""), "offset": offset})
                }
                _ => json!({}),
            }
            .to_string();
            let _ = write!(
                conn,
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
}

/// Registers with the master and plays tasks by their command: `echo X` prints X and
/// finishes, `exit N` fails with status N, `hog` is killed for exceeding its memory limit,
/// anything else keeps running until KILLed. Each update waits for the previous one's
/// acknowledgement, as the real agent's status update manager does.
fn start_sim_agent(master: &str, resources: &str) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let files: Files = Arc::default();
    let id_slot = Arc::new(Mutex::new(String::new()));
    serve_agent_http(listener, id_slot.clone(), files.clone());
    let res = cairn_api::Resources::parse(resources).unwrap().to_wire();
    let api = format!("{master}/api/v1/agent");
    let (status, text) = post(
        &api,
        &json!({"type": "REGISTER", "register": {"hostname": "sim-agent", "address": addr.to_string(),
            "resources": res, "boot_id": "boot-1", "version": "test"}}),
    );
    assert_eq!(status, 200, "{text}");
    let id = serde_json::from_str::<Value>(&text).unwrap()["agent_id"]["value"]
        .as_str()
        .unwrap()
        .to_string();
    *id_slot.lock().unwrap() = id.clone();
    let mut resp = ureq::post(&api)
        .header("Content-Type", "application/json")
        .send(json!({"type": "SUBSCRIBE", "agent_id": {"value": id}}).to_string())
        .unwrap();
    let agent_id = id.clone();
    std::thread::spawn(move || {
        let mut body = resp.body_mut().as_reader();
        let mut decoder = Decoder::new(16 << 20);
        let mut buf = vec![0; 65536];
        let mut n_update = 0u8;
        // task id -> (framework id, pending updates after the one awaiting its ack)
        let mut pending: HashMap<String, (String, Vec<Value>)> = HashMap::new();
        let send = |fw: &str, status: &Value, n: &mut u8| {
            *n += 1;
            let mut status = status.clone();
            status["uuid"] = base64::engine::general_purpose::STANDARD
                .encode([*n; 16])
                .into();
            status["source"] = "SOURCE_EXECUTOR".into();
            post(
                &api,
                &json!({"type": "STATUS_UPDATE", "agent_id": {"value": agent_id},
                "status_update": {"framework_id": {"value": fw}, "status": status}}),
            );
        };
        loop {
            let Ok(n) = body.read(&mut buf) else { return };
            if n == 0 {
                return;
            }
            for rec in decoder.feed(&buf[..n]).unwrap() {
                let e: Value = serde_json::from_slice(&rec).unwrap();
                match e["type"].as_str().unwrap_or("") {
                    "LAUNCH" => {
                        let fw = e["launch"]["framework_id"]["value"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        for t in e["launch"]["tasks"].as_array().unwrap() {
                            let tid = t["task_id"]["value"].as_str().unwrap().to_string();
                            let cmd = t["command"]["value"].as_str().unwrap_or("").to_string();
                            let st =
                                |state: &str| json!({"task_id": {"value": tid}, "state": state});
                            let mut later = vec![];
                            if let Some(text) = cmd.strip_prefix("echo ") {
                                files
                                    .lock()
                                    .unwrap()
                                    .insert(format!("{tid}/stdout"), format!("{text}\n"));
                                let mut s = st("TASK_FINISHED");
                                s["message"] = "command exited with status 0".into();
                                later.push(s);
                            } else if let Some(code) = cmd.strip_prefix("exit ") {
                                let mut s = st("TASK_FAILED");
                                s["message"] = format!("command exited with status {code}").into();
                                later.push(s);
                            } else if cmd == "hog" {
                                let mut s = st("TASK_FAILED");
                                s["message"] = "memory limit exceeded: 67108864 of 67108864 bytes used, oom_kill 1".into();
                                s["reason"] = "REASON_CONTAINER_LIMITATION_MEMORY".into();
                                s["source"] = "SOURCE_AGENT".into();
                                later.push(s);
                            }
                            send(&fw, &st("TASK_RUNNING"), &mut n_update);
                            pending.insert(tid, (fw.clone(), later));
                        }
                    }
                    "KILL" => {
                        // The task's RUNNING was acknowledged by then: answer at once.
                        let tid = e["kill"]["task_id"]["value"].as_str().unwrap().to_string();
                        if let Some((fw, _)) = pending.get(&tid) {
                            let killed = json!({"task_id": {"value": tid}, "state": "TASK_KILLED"});
                            send(&fw.clone(), &killed, &mut n_update);
                        }
                    }
                    "ACKNOWLEDGE" => {
                        let tid = e["acknowledge"]["task_id"]["value"]
                            .as_str()
                            .unwrap()
                            .to_string();
                        if let Some((fw, later)) = pending.get_mut(&tid) {
                            if !later.is_empty() {
                                let next = later.remove(0);
                                send(&fw.clone(), &next, &mut n_update);
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    });
    id
}

fn cairn(master: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .env("CAIRN_MASTER", master)
        .args(args)
        .output()
        .unwrap()
}

fn show(o: &Output) -> String {
    cairn_testsupport::bins::show_output(o)
}

#[test]
fn run_prints_states_and_output_and_returns_the_tasks_exit_code() {
    let m = start_master();
    start_sim_agent(&m.url, "cpus:4;mem:1024;disk:10000");

    let o = cairn(&m.url, &["run", "--mem", "64M", "--", "echo", "hi"]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        stderr.contains("TASK_RUNNING") && stderr.contains("TASK_FINISHED"),
        "{}",
        show(&o)
    );
    assert_eq!(String::from_utf8_lossy(&o.stdout), "hi\n", "{}", show(&o));

    let o = cairn(&m.url, &["run", "--", "exit 3"]);
    assert_eq!(o.status.code(), Some(3), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("TASK_FAILED"),
        "{}",
        show(&o)
    );

    let o = cairn(&m.url, &["run", "--mem", "256M", "--", "hog"]);
    assert_eq!(o.status.code(), Some(137), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("killed: memory limit 256 MiB exceeded"),
        "{}",
        show(&o)
    );

    // A task bigger than any agent: said so after the timeout.
    let o = cairn(
        &m.url,
        &[
            "run",
            "--cpus",
            "64",
            "--timeout",
            "2s",
            "--",
            "echo",
            "big",
        ],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no agent could fit"),
        "{}",
        show(&o)
    );

    // A detached task keeps running; ps shows it; kill ends it.
    let o = cairn(
        &m.url,
        &[
            "run", "--detach", "--name", "sleeper", "--", "sleep", "1000",
        ],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let task = String::from_utf8_lossy(&o.stdout).trim().to_string();
    assert!(task.starts_with("sleeper-"), "{}", show(&o));
    let o = cairn(&m.url, &["ps", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let ps: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(ps[0]["id"], task.as_str(), "{ps}");
    assert_eq!(ps[0]["state"], "TASK_RUNNING", "{ps}");
    let o = cairn(&m.url, &["ps"]);
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("RUNNING"),
        "{}",
        show(&o)
    );
    let o = cairn(&m.url, &["kill", &task]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("TASK_KILLED"),
        "{}",
        show(&o)
    );

    let o = cairn(&m.url, &["agents", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    let agents: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(agents[0]["hostname"], "sim-agent", "{agents}");
    assert_eq!(agents[0]["resources"]["cpus"], 4.0, "{agents}");
    let o = cairn(&m.url, &["frameworks", "--json"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    serde_json::from_slice::<Value>(&o.stdout).unwrap();
    let o = cairn(&m.url, &["ps", "--all", "--json"]);
    let all: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert!(all.as_array().unwrap().len() >= 4, "{all}");
}

#[test]
fn bad_input_gets_clear_errors_and_exit_codes() {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let o = cairn(&url, &["ps"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        stderr.trim(),
        format!("cairn: cannot reach master at {url}: connection refused"),
        "{}",
        show(&o)
    );
    let o = cairn(&url, &["run", "--mem", "12XB", "--", "true"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("--mem") && stderr.contains("12XB"),
        "{}",
        show(&o)
    );
    let o = cairn(&url, &["ps", "--bogus"]);
    assert_eq!(o.status.code(), Some(2), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--bogus"),
        "{}",
        show(&o)
    );
    let o = cairn(&url, &["completions", "bash"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("cairn"));
}
