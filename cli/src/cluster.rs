//! Finding things in the cluster from the master's `/state` and the agents' `/state`: an
//! agent's HTTP address, the agent and sandbox directory of a task, and reading sandbox files
//! through `/files/read` (Mesos's `{data, offset}`).

use serde::Deserialize;
use serde_json::Value;

use crate::http::{Endpoint, HttpError};

/// Why a task's output could not be found.
#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("no task {0:?} is known to the master")]
    NoTask(String),
    #[error("agent {0} of the task is not registered with the master")]
    NoAgent(String),
    #[error("agent {agent} has no sandbox for task {task:?} (it may have been garbage-collected)")]
    NoSandbox { agent: String, task: String },
}

/// The agent's `host:port` from its `/state` entry (`pid` is `slave(1)@host:port`).
pub fn agent_address(slave: &Value) -> Option<String> {
    if let Some(pid) = slave["pid"].as_str() {
        if let Some((_, addr)) = pid.split_once('@') {
            return Some(addr.to_string());
        }
    }
    let host = slave["hostname"].as_str()?;
    Some(format!("{host}:{}", slave["port"].as_u64().unwrap_or(5051)))
}

/// Every task in the master's `/state` (running and completed, of live and completed
/// frameworks), each with its framework's name added as `framework_name`.
pub fn all_tasks(state: &Value) -> Vec<Value> {
    let mut out = Vec::new();
    for list in ["frameworks", "completed_frameworks"] {
        for f in state[list].as_array().into_iter().flatten() {
            for kind in ["tasks", "unreachable_tasks", "completed_tasks"] {
                for t in f[kind].as_array().into_iter().flatten() {
                    let mut t = t.clone();
                    t["framework_name"] = f["name"].clone();
                    out.push(t);
                }
            }
        }
    }
    out
}

/// Where a task runs: its agent's endpoint and its sandbox directory.
#[derive(Debug)]
pub struct Sandbox {
    pub agent: Endpoint,
    pub directory: String,
}

/// The task's framework id and agent address from the master's `/state`.
pub fn find_task(master: &mut Endpoint, task: &str) -> Result<(Value, String), LocateError> {
    let state: Value = master.get("/state")?;
    // A task id may be reused after it ended: prefer a live one.
    let tasks = all_tasks(&state);
    let t = tasks
        .iter()
        .find(|t| t["id"] == task && !is_terminal(&t["state"]))
        .or_else(|| tasks.iter().rev().find(|t| t["id"] == task))
        .ok_or_else(|| LocateError::NoTask(task.to_string()))?
        .clone();
    let agent_id = t["slave_id"].as_str().unwrap_or("").to_string();
    let addr = state["slaves"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["id"] == agent_id.as_str())
        .and_then(agent_address)
        .ok_or(LocateError::NoAgent(agent_id))?;
    Ok((t, addr))
}

fn is_terminal(state: &Value) -> bool {
    state
        .as_str()
        .and_then(|s| s.parse::<cairn_api::TaskState>().ok())
        .is_some_and(cairn_api::TaskState::is_terminal)
}

/// The task's sandbox on the agent at `addr` (from the agent's `/state`).
pub fn sandbox_on(addr: &str, task: &str) -> Result<Sandbox, LocateError> {
    let mut agent = Endpoint::new(addr, "agent");
    let state: Value = agent.get("/state")?;
    for list in ["frameworks", "completed_frameworks"] {
        for f in state[list].as_array().into_iter().flatten() {
            for kind in ["executors", "completed_executors"] {
                for e in f[kind].as_array().into_iter().flatten() {
                    let has = |k: &str| {
                        e[k].as_array()
                            .into_iter()
                            .flatten()
                            .any(|t| t["id"] == task)
                    };
                    if e["id"] == task || has("tasks") || has("completed_tasks") {
                        if let Some(dir) = e["directory"].as_str() {
                            return Ok(Sandbox {
                                agent,
                                directory: dir.to_string(),
                            });
                        }
                    }
                }
            }
        }
    }
    Err(LocateError::NoSandbox {
        agent: addr.to_string(),
        task: task.to_string(),
    })
}

/// Finds `task` through the master, then its sandbox on its agent.
pub fn locate(master: &mut Endpoint, task: &str) -> Result<Sandbox, LocateError> {
    let (_, addr) = find_task(master, task)?;
    sandbox_on(&addr, task)
}

#[derive(Debug, Deserialize)]
struct ReadAnswer {
    data: String,
    offset: u64,
}

/// One sandbox file read incrementally.
#[derive(Debug)]
pub struct Tail {
    path: String,
    pub offset: u64,
}

impl Tail {
    pub fn new(sandbox: &Sandbox, file: &str) -> Self {
        Self {
            path: format!("{}/{file}", sandbox.directory),
            offset: 0,
        }
    }

    /// Whatever was appended since the last read (empty when nothing was). A file that does
    /// not exist yet reads as empty.
    pub fn read(&mut self, agent: &mut Endpoint) -> Result<String, HttpError> {
        let mut out = String::new();
        loop {
            let path = format!(
                "/files/read?path={}&offset={}&length=65536",
                encode(&self.path),
                self.offset
            );
            let answer: ReadAnswer = match agent.get(&path) {
                Ok(a) => a,
                Err(HttpError::Status { status: 404, .. }) => return Ok(out),
                Err(e) => return Err(e),
            };
            if answer.data.is_empty() {
                return Ok(out);
            }
            self.offset = answer.offset + answer.data.len() as u64;
            out.push_str(&answer.data);
        }
    }
}

/// Percent-encodes a query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
