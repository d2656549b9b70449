//! The read-only commands: `agents`, `ps`, `frameworks`, `top`, `logs`; and `kill`.

use std::io::Write;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context as _};
use cairn_api::v1::mesos::FrameworkInfo;
use cairn_api::v1::scheduler::{Acknowledge, CallType, EventType, Kill};
use cairn_api::{FrameworkId, TaskId};
use serde_json::{json, Value};

use crate::cluster::{self, Tail};
use crate::http::Endpoint;
use crate::run::mib;
use crate::scheduler::{Scheduler, StreamItem};
use crate::table;

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("a JSON value always serializes")
    );
}

fn res(r: &Value) -> String {
    let cpus = r["cpus"].as_f64().unwrap_or(0.0);
    let mem = r["mem"].as_f64().unwrap_or(0.0);
    let mut s = format!("cpus {cpus}, mem {}", mib(mem));
    if let Some(d) = r["disk"].as_f64().filter(|d| *d > 0.0) {
        s.push_str(&format!(", disk {}", mib(d)));
    }
    s
}

fn text(v: &Value) -> String {
    v.as_str().unwrap_or("").to_string()
}

/// `cairn agents`.
pub fn agents(master: &mut Endpoint, json_out: bool) -> anyhow::Result<()> {
    let state: Value = master.get("/state")?;
    let slaves = state["slaves"].as_array().cloned().unwrap_or_default();
    if json_out {
        let out: Vec<Value> = slaves
            .iter()
            .map(|s| {
                json!({"id": s["id"], "hostname": s["hostname"],
                       "address": cluster::agent_address(s), "active": s["active"],
                       "resources": s["resources"], "used_resources": s["used_resources"],
                       "attributes": s["attributes"], "version": s["version"],
                       "registered_time": s["registered_time"]})
            })
            .collect();
        print_json(&Value::Array(out));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = slaves
        .iter()
        .map(|s| {
            vec![
                text(&s["id"]),
                text(&s["hostname"]),
                cluster::agent_address(s).unwrap_or_default(),
                if s["active"].as_bool().unwrap_or(false) {
                    "active"
                } else {
                    "inactive"
                }
                .into(),
                res(&s["resources"]),
                res(&s["used_resources"]),
                table::age(now() - s["registered_time"].as_f64().unwrap_or(now())),
            ]
        })
        .collect();
    table::print(
        &[
            "ID",
            "HOSTNAME",
            "ADDRESS",
            "STATE",
            "RESOURCES",
            "USED",
            "AGE",
        ],
        &rows,
    );
    Ok(())
}

/// `cairn ps`: live tasks, or all with `all`.
pub fn ps(master: &mut Endpoint, all: bool, json_out: bool) -> anyhow::Result<()> {
    let state: Value = master.get("/state")?;
    let hosts: std::collections::HashMap<String, String> = state["slaves"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|s| (text(&s["id"]), text(&s["hostname"])))
        .collect();
    let tasks: Vec<Value> = cluster::all_tasks(&state)
        .into_iter()
        .filter(|t| {
            all || !t["state"]
                .as_str()
                .and_then(|s| s.parse::<cairn_api::TaskState>().ok())
                .is_some_and(cairn_api::TaskState::is_terminal)
        })
        .collect();
    let started = |t: &Value| {
        t["statuses"]
            .as_array()
            .and_then(|s| s.first())
            .and_then(|s| s["timestamp"].as_f64())
    };
    if json_out {
        let out: Vec<Value> = tasks
            .iter()
            .map(|t| {
                json!({"id": t["id"], "name": t["name"], "state": t["state"],
                       "framework_id": t["framework_id"], "framework_name": t["framework_name"],
                       "agent_id": t["slave_id"],
                       "agent_hostname": hosts.get(&text(&t["slave_id"])),
                       "resources": t["resources"], "started": started(t)})
            })
            .collect();
        print_json(&Value::Array(out));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = tasks
        .iter()
        .map(|t| {
            let agent = text(&t["slave_id"]);
            vec![
                text(&t["id"]),
                text(&t["name"]),
                text(&t["state"]).trim_start_matches("TASK_").to_string(),
                hosts.get(&agent).cloned().unwrap_or(agent),
                res(&t["resources"]),
                started(t).map_or_else(|| "-".into(), |s| table::age(now() - s)),
            ]
        })
        .collect();
    table::print(&["ID", "NAME", "STATE", "AGENT", "RESOURCES", "AGE"], &rows);
    Ok(())
}

/// `cairn frameworks`.
pub fn frameworks(master: &mut Endpoint, json_out: bool) -> anyhow::Result<()> {
    let state: Value = master.get("/state")?;
    let fws = state["frameworks"].as_array().cloned().unwrap_or_default();
    if json_out {
        let out: Vec<Value> = fws
            .iter()
            .map(|f| {
                json!({"id": f["id"], "name": f["name"], "user": f["user"], "roles": f["roles"],
                       "connected": f["connected"], "active": f["active"],
                       "tasks": f["tasks"].as_array().map_or(0, Vec::len),
                       "used_resources": f["used_resources"],
                       "registered_time": f["registered_time"]})
            })
            .collect();
        print_json(&Value::Array(out));
        return Ok(());
    }
    let rows: Vec<Vec<String>> = fws
        .iter()
        .map(|f| {
            vec![
                text(&f["id"]),
                text(&f["name"]),
                text(&f["user"]),
                text(&f["role"]),
                if f["connected"].as_bool().unwrap_or(false) {
                    "connected"
                } else {
                    "disconnected"
                }
                .into(),
                f["tasks"].as_array().map_or(0, Vec::len).to_string(),
                res(&f["used_resources"]),
                table::age(now() - f["registered_time"].as_f64().unwrap_or(now())),
            ]
        })
        .collect();
    table::print(
        &[
            "ID", "NAME", "USER", "ROLE", "STATE", "TASKS", "USED", "AGE",
        ],
        &rows,
    );
    Ok(())
}

/// `cairn top`: per-task usage from every agent's `/monitor/statistics`.
pub fn top(master: &mut Endpoint, json_out: bool, watch: Option<Duration>) -> anyhow::Result<()> {
    loop {
        let state: Value = master.get("/state")?;
        let mut entries = vec![];
        let mut unreachable = vec![];
        for s in state["slaves"].as_array().into_iter().flatten() {
            let Some(addr) = cluster::agent_address(s) else {
                continue;
            };
            let mut agent = Endpoint::new(&addr, "agent");
            match agent.get::<Value>("/monitor/statistics") {
                Ok(Value::Array(list)) => {
                    for mut e in list {
                        e["agent_hostname"] = s["hostname"].clone();
                        entries.push(e);
                    }
                }
                Ok(_) => {}
                Err(e) => unreachable.push(e.to_string()),
            }
        }
        if json_out {
            print_json(&Value::Array(entries));
            return Ok(());
        }
        if watch.is_some() {
            // Clear the screen and home the cursor (ANSI), as top(1) redraws.
            print!("\x1b[2J\x1b[H");
        }
        let rows: Vec<Vec<String>> = entries
            .iter()
            .map(|e| {
                let st = &e["statistics"];
                let cpu = st["cpus_user_time_secs"].as_f64().unwrap_or(0.0)
                    + st["cpus_system_time_secs"].as_f64().unwrap_or(0.0);
                let rss = st["mem_rss_bytes"]
                    .as_f64()
                    .or_else(|| st["mem_total_bytes"].as_f64())
                    .unwrap_or(0.0);
                let limit = st["mem_limit_bytes"].as_f64().unwrap_or(0.0);
                vec![
                    text(&e["executor_id"]),
                    text(&e["agent_hostname"]),
                    format!("{cpu:.2}"),
                    st["cpus_limit"]
                        .as_f64()
                        .map_or_else(|| "-".into(), |c| c.to_string()),
                    mib(rss / 1048576.0),
                    if limit > 0.0 {
                        mib(limit / 1048576.0)
                    } else {
                        "-".into()
                    },
                ]
            })
            .collect();
        table::print(
            &["TASK", "AGENT", "CPU SECS", "CPUS", "MEM", "MEM LIMIT"],
            &rows,
        );
        for u in &unreachable {
            eprintln!("cairn: {u}");
        }
        let Some(every) = watch else { return Ok(()) };
        let _ = std::io::stdout().flush();
        std::thread::sleep(every);
    }
}

/// `cairn logs [-f] TASK`.
pub fn logs(master: &mut Endpoint, task: &str, follow: bool, stderr: bool) -> anyhow::Result<()> {
    let mut sandbox = cluster::locate(master, task)?;
    let file = if stderr { "stderr" } else { "stdout" };
    let mut tail = Tail::new(&sandbox, file);
    loop {
        let text = tail
            .read(&mut sandbox.agent)
            .with_context(|| format!("reading {}/{file}", sandbox.directory))?;
        print!("{text}");
        let _ = std::io::stdout().flush();
        if !follow {
            return Ok(());
        }
        // Stop following once the task ended and everything was read.
        if text.is_empty() {
            let (t, _) = cluster::find_task(master, task)?;
            let ended = t["state"]
                .as_str()
                .and_then(|s| s.parse::<cairn_api::TaskState>().ok())
                .is_some_and(cairn_api::TaskState::is_terminal);
            if ended {
                let rest = tail.read(&mut sandbox.agent)?;
                print!("{rest}");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// `cairn kill TASK`. The operator API has no call to kill one task (as in Mesos), so this
/// subscribes as the task's framework (a failover: a `cairn run` still attached to it loses
/// its stream) and sends KILL, waiting for the terminal update.
pub fn kill(master: &mut Endpoint, task: &str, wait: Duration) -> anyhow::Result<()> {
    let (t, _) = cluster::find_task(master, task)?;
    let state = text(&t["state"]);
    if state
        .parse::<cairn_api::TaskState>()
        .is_ok_and(cairn_api::TaskState::is_terminal)
    {
        bail!("task {task} already ended ({state})");
    }
    let fw = FrameworkId::new(text(&t["framework_id"]));
    let fstate: Value = master.get("/state")?;
    let f = fstate["frameworks"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|f| f["id"] == fw.value.as_str())
        .cloned()
        .unwrap_or_default();
    let info = FrameworkInfo {
        id: Some(fw.clone()),
        user: text(&f["user"]),
        name: text(&f["name"]),
        role: f["role"].as_str().map(str::to_string),
        failover_timeout: f["failover_timeout"].as_f64().filter(|s| *s > 0.0),
        ..FrameworkInfo::default()
    };
    let mut sched = Scheduler::subscribe(master, info)?;
    let mut call = sched.call(CallType::Kill);
    call.kill = Some(Kill {
        task_id: TaskId::new(task),
        agent_id: t["slave_id"].as_str().map(cairn_api::AgentId::new),
    });
    sched.send(&call)?;
    let deadline = std::time::Instant::now() + wait;
    while let Some(left) = deadline.checked_duration_since(std::time::Instant::now()) {
        match sched.events.recv_timeout(left) {
            Ok(StreamItem::Event(e)) if e.kind == EventType::Update => {
                let Some(u) = e.update else { continue };
                if let (Some(uuid), Some(agent)) = (&u.status.uuid, &u.status.agent_id) {
                    let mut ack = sched.call(CallType::Acknowledge);
                    ack.acknowledge = Some(Acknowledge {
                        agent_id: agent.clone(),
                        task_id: u.status.task_id.clone(),
                        uuid: uuid.clone(),
                    });
                    let _ = sched.send(&ack);
                }
                if u.status.task_id.value == task && u.status.state.is_terminal() {
                    println!("{task} {}", u.status.state.as_str());
                    return Ok(());
                }
            }
            Ok(StreamItem::Closed(why)) => bail!("lost the master's stream: {why}"),
            Ok(_) => {}
            Err(_) => break,
        }
    }
    bail!(
        "asked to kill {task}, but it did not end within {}s",
        wait.as_secs()
    )
}
