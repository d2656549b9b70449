//! `/state` and `/monitor/statistics` in Mesos's JSON shapes (`src/slave/http.cpp`,
//! `docs/endpoints/slave/state.md`, `docs/endpoints/slave/monitor/statistics.md`), so tools
//! written for Mesos agents (mesos_exporter, the web UI's agent page) read them.
//!
//! Every Cairn task runs as a Mesos command task does: its executor has the task's id.

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_api::{ContainerId, Resources};
use cairn_isolators::ResourceStatistics;
use serde_json::{json, Map, Value};

use super::view::{AgentInfo, ContainerView};

/// The Mesos version whose agent API this mirrors.
pub const MESOS_VERSION: &str = "1.11.0";

fn epoch_secs(t: SystemTime) -> f64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Resources as Mesos's agent JSON has them: scalars as numbers, ranges as `"[a-b, c-d]"`.
pub fn resources_json(r: &Resources) -> Value {
    let mut m = Map::new();
    for name in r.scalar_names() {
        m.insert(name.to_string(), json!(r.scalar(name)));
    }
    let ports = r.ranges("ports");
    if !ports.is_empty() {
        let text: Vec<String> = ports
            .iter()
            .map(|p| format!("{}-{}", p.begin, p.end))
            .collect();
        m.insert("ports".into(), json!(format!("[{}]", text.join(", "))));
    }
    Value::Object(m)
}

fn task_json(info: &AgentInfo, c: &ContainerView) -> Value {
    let state = c.task_state.as_str();
    let timestamp = epoch_secs(SystemTime::now());
    json!({
        "id": c.task_id.as_str(),
        "name": c.task_name,
        "framework_id": c.framework_id,
        "executor_id": "",
        "slave_id": info.id,
        "state": state,
        "resources": resources_json(&c.resources),
        "statuses": [{
            "state": state,
            "timestamp": timestamp,
            "container_status": {"container_id": {"value": c.container_id.as_str()}},
        }],
        "container_id": c.container_id.as_str(),
        "message": c.termination.as_ref().map(|t| t.message.clone()),
        "reason": c.termination.as_ref().and_then(|t| t.reason).map(|r| r.as_str()),
    })
}

fn executor_json(info: &AgentInfo, c: &ContainerView) -> Value {
    let task = task_json(info, c);
    let (tasks, completed) = if c.is_active() {
        (vec![task], vec![])
    } else {
        (vec![], vec![task])
    };
    json!({
        "id": c.task_id.as_str(),
        "name": format!("Command Executor (Task: {})", c.task_id.as_str()),
        "source": c.task_id.as_str(),
        "container": c.container_id.as_str(),
        "directory": c.sandbox.to_string_lossy(),
        "resources": resources_json(&c.resources),
        "labels": [],
        "tasks": tasks,
        "queued_tasks": [],
        "completed_tasks": completed,
    })
}

/// The `/state` document: running tasks under `frameworks`, ended ones (until forgotten)
/// under `completed_frameworks`, each framework with its executors.
pub fn state(info: &AgentInfo, containers: &[ContainerView]) -> Value {
    let mut live: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    let mut done: BTreeMap<&str, Vec<Value>> = BTreeMap::new();
    for c in containers {
        let bucket = if c.is_active() { &mut live } else { &mut done };
        bucket
            .entry(c.framework_id.as_str())
            .or_default()
            .push(executor_json(info, c));
    }
    let frameworks = |m: BTreeMap<&str, Vec<Value>>, completed: bool| -> Vec<Value> {
        m.into_iter()
            .map(|(id, executors)| {
                let (executors, completed_executors) = if completed {
                    (vec![], executors)
                } else {
                    (executors, vec![])
                };
                json!({
                    "id": id,
                    "name": "",
                    "hostname": info.hostname,
                    "executors": executors,
                    "completed_executors": completed_executors,
                })
            })
            .collect()
    };
    json!({
        "version": MESOS_VERSION,
        "cairn_version": env!("CARGO_PKG_VERSION"),
        "start_time": epoch_secs(info.start_time),
        "id": info.id,
        "pid": info.pid,
        "hostname": info.hostname,
        "resources": resources_json(&info.resources),
        "attributes": info.attributes,
        "frameworks": frameworks(live, false),
        "completed_frameworks": frameworks(done, true),
    })
}

/// `/monitor/statistics`: one entry per container not ended, with its usage.
pub fn statistics(
    containers: &[ContainerView],
    usage: &BTreeMap<ContainerId, ResourceStatistics>,
) -> Value {
    let entries: Vec<Value> = containers
        .iter()
        .filter(|c| c.is_active())
        .filter_map(|c| {
            let stats = usage.get(&c.container_id)?;
            Some(json!({
                "executor_id": c.task_id.as_str(),
                "executor_name": format!("Command Executor (Task: {})", c.task_id.as_str()),
                "framework_id": c.framework_id,
                "source": c.task_id.as_str(),
                "container_id": c.container_id.as_str(),
                "statistics": stats,
            }))
        })
        .collect();
    Value::Array(entries)
}
