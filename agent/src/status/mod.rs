//! The status update manager (Mesos's `TaskStatusUpdateManager`): at-least-once, in-order
//! delivery of task status updates to the master.
//!
//! Every task the agent accepts gets a stream file, `<work_dir>/meta/status/<hex task id>.json`
//! ([`TaskStream`], typed and versioned, rewritten atomically). An update is appended to its
//! stream — and the file made durable — *before* anyone may send it; only the head of each
//! stream is sent, and it stays the head until the master acknowledges its uuid. The stream is
//! removed once its terminal update is acknowledged. After an agent restart the streams are
//! read back and their heads are resent, so no update is lost; the uuid is assigned once and
//! stored, so a resend is recognisably the same update, never a new one.

use std::collections::{BTreeMap, VecDeque};
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_api::protocol::AgentTask;
use cairn_api::v1::mesos::{ContainerStatus, TaskInfo, TaskStatus};
use cairn_api::{AgentId, ContainerId, FrameworkId, Reason, Resources, Source, TaskId, TaskState};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, CheckpointError, VERSION};

/// One task's updates, as checkpointed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskStream {
    pub version: u32,
    pub framework_id: FrameworkId,
    /// The task as the master sent it (for reregistration).
    pub task: TaskInfo,
    /// Its container, once the containerizer named one.
    pub container_id: Option<ContainerId>,
    /// The state of the latest update recorded (acknowledged or not).
    pub latest_state: Option<TaskState>,
    /// Updates not yet acknowledged, oldest first; the first is the one in flight.
    pub pending: VecDeque<TaskStatus>,
}

impl TaskStream {
    /// The task has reached a terminal state (its last update may still be pending).
    pub fn is_terminal(&self) -> bool {
        self.latest_state.is_some_and(TaskState::is_terminal)
    }
}

/// What an acknowledgement did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Acked {
    /// No pending update of that task has this uuid (a duplicate or stale ack): ignored.
    Ignored,
    /// The head was acknowledged; the next one (if any) may be sent.
    Next,
    /// The terminal update was acknowledged: the stream is gone, the container may be forgotten.
    Done(Option<ContainerId>),
}

/// Why the manager failed; always names the file.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("status: cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// See the module docs.
#[derive(Debug)]
pub struct StatusUpdateManager {
    dir: PathBuf,
    agent_id: Mutex<Option<AgentId>>,
    streams: Mutex<BTreeMap<TaskId, TaskStream>>,
}

fn hex(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// A fresh update uuid: 16 random bytes, Base64 (as Mesos's `TaskStatus.uuid` in JSON).
pub fn new_uuid() -> String {
    let mut bytes = [0u8; 16];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos ^ u128::from(std::process::id())).to_le_bytes();
    }
    base64(&bytes)
}

fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl StatusUpdateManager {
    /// Opens (creating) `dir` and reads back every stream left by a previous run.
    ///
    /// # Errors
    /// The directory cannot be made or listed, or a stream file is unreadable (named).
    pub fn open(dir: impl Into<PathBuf>) -> Result<Self, StatusError> {
        let dir = dir.into();
        let io = |op, path: &Path| {
            let path = path.to_path_buf();
            move |source| StatusError::Io { op, path, source }
        };
        fs::create_dir_all(&dir).map_err(io("create", &dir))?;
        let _ = checkpoint::durable::remove_stale_temps(&dir);
        let mut streams = BTreeMap::new();
        for entry in fs::read_dir(&dir).map_err(io("list", &dir))? {
            let path = entry.map_err(io("list", &dir))?.path();
            if path.extension().is_none_or(|e| e != "json") {
                continue;
            }
            if let Some(stream) = checkpoint::read::<TaskStream>(&path)? {
                streams.insert(stream.task.task_id.clone(), stream);
            }
        }
        Ok(Self {
            dir,
            agent_id: Mutex::new(None),
            streams: Mutex::new(streams),
        })
    }

    /// The agent id stamped on updates recorded from now on.
    pub fn set_agent_id(&self, id: AgentId) {
        *lock(&self.agent_id) = Some(id);
    }

    fn path(&self, task: &TaskId) -> PathBuf {
        self.dir.join(format!("{}.json", hex(task.as_str())))
    }

    fn save(&self, stream: &TaskStream) -> Result<(), StatusError> {
        Ok(checkpoint::write(&self.path(&stream.task.task_id), stream)?)
    }

    /// Starts a stream for a task the agent accepted. A task id already tracked is refused
    /// (`false`): the master sent a duplicate launch.
    ///
    /// # Errors
    /// The stream cannot be written.
    pub fn track(&self, framework_id: FrameworkId, task: TaskInfo) -> Result<bool, StatusError> {
        let mut streams = lock(&self.streams);
        if streams.contains_key(&task.task_id) {
            return Ok(false);
        }
        let stream = TaskStream {
            version: VERSION,
            framework_id,
            task,
            container_id: None,
            latest_state: None,
            pending: VecDeque::new(),
        };
        self.save(&stream)?;
        streams.insert(stream.task.task_id.clone(), stream);
        Ok(true)
    }

    /// Records a new update for `task` (durably), to be sent after the ones before it. Does
    /// nothing (returns `None`) for an untracked task or one already terminal.
    ///
    /// # Errors
    /// The stream cannot be written; the update is then not recorded.
    pub fn record(
        &self,
        task: &TaskId,
        container: Option<&ContainerId>,
        state: TaskState,
        reason: Option<Reason>,
        message: &str,
    ) -> Result<Option<TaskStatus>, StatusError> {
        let mut streams = lock(&self.streams);
        let Some(stream) = streams.get_mut(task) else {
            return Ok(None);
        };
        if stream.is_terminal() || stream.latest_state == Some(state) {
            return Ok(None);
        }
        let mut next = stream.clone();
        if let Some(c) = container {
            next.container_id = Some(c.clone());
        }
        let source = if state == TaskState::Error || next.container_id.is_none() {
            Source::Agent
        } else {
            Source::Executor
        };
        let mut status = TaskStatus::new(task.clone(), state, source);
        status.reason = reason;
        status.message = (!message.is_empty()).then(|| message.to_string());
        status.agent_id.clone_from(&lock(&self.agent_id));
        status.timestamp = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs_f64());
        status.uuid = Some(new_uuid());
        status.container_status = next.container_id.clone().map(|c| ContainerStatus {
            container_id: Some(c),
            executor_pid: None,
        });
        next.latest_state = Some(state);
        next.pending.push_back(status.clone());
        self.save(&next)?;
        *stream = next;
        Ok(Some(status))
    }

    /// The master acknowledged `uuid` of `task`.
    ///
    /// # Errors
    /// The stream cannot be rewritten or removed.
    pub fn acknowledge(&self, task: &TaskId, uuid: &str) -> Result<Acked, StatusError> {
        let mut streams = lock(&self.streams);
        let Some(stream) = streams.get_mut(task) else {
            return Ok(Acked::Ignored);
        };
        if stream.pending.front().and_then(|s| s.uuid.as_deref()) != Some(uuid) {
            return Ok(Acked::Ignored);
        }
        let mut next = stream.clone();
        next.pending.pop_front();
        if next.pending.is_empty() && next.is_terminal() {
            let path = self.path(task);
            match fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(StatusError::Io {
                        op: "remove",
                        path,
                        source: e,
                    })
                }
                _ => {}
            }
            let container = next.container_id.clone();
            streams.remove(task);
            return Ok(Acked::Done(container));
        }
        self.save(&next)?;
        *stream = next;
        Ok(Acked::Next)
    }

    /// The update to send now for every task that has one: the head of its stream.
    pub fn heads(&self) -> Vec<(FrameworkId, TaskStatus)> {
        lock(&self.streams)
            .values()
            .filter_map(|s| Some((s.framework_id.clone(), s.pending.front()?.clone())))
            .collect()
    }

    /// A copy of `task`'s stream.
    pub fn stream(&self, task: &TaskId) -> Option<TaskStream> {
        lock(&self.streams).get(task).cloned()
    }

    /// Every stream.
    pub fn streams(&self) -> Vec<TaskStream> {
        lock(&self.streams).values().cloned().collect()
    }

    /// Every task, for reregistration: its latest state and first unacknowledged status.
    pub fn agent_tasks(&self) -> Vec<AgentTask> {
        lock(&self.streams)
            .values()
            .map(|s| AgentTask {
                framework_id: s.framework_id.clone(),
                task: s.task.clone(),
                state: s.latest_state.unwrap_or(TaskState::Staging),
                latest_status: s.pending.back().cloned(),
            })
            .collect()
    }

    /// What the tasks not yet terminal were given.
    pub fn allocated(&self) -> Resources {
        self.allocated_except(None)
    }

    /// What the tasks not yet terminal were given, but `except`.
    pub fn allocated_except(&self, except: Option<&TaskId>) -> Resources {
        lock(&self.streams)
            .values()
            .filter(|s| !s.is_terminal() && Some(&s.task.task_id) != except)
            .filter_map(|s| Resources::from_wire(&s.task.resources).ok())
            .fold(Resources::new(), |acc, r| acc.plus(&r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> TaskInfo {
        serde_json::from_value(serde_json::json!({
            "name": id, "task_id": {"value": id}, "agent_id": {"value": "A"},
            "resources": Resources::parse("cpus:0.5;mem:32").unwrap().to_wire(),
        }))
        .unwrap()
    }

    #[test]
    fn uuids_are_base64_of_16_bytes() {
        assert_eq!(base64(b"any carnal pleas"), "YW55IGNhcm5hbCBwbGVhcw==");
        assert_eq!(new_uuid().len(), 24);
        assert_ne!(new_uuid(), new_uuid());
    }

    #[test]
    fn updates_are_sent_in_order_until_acked_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let m = StatusUpdateManager::open(dir.path()).unwrap();
        let t = TaskId::new("t1");
        assert!(m.track(FrameworkId::new("F"), task("t1")).unwrap());
        assert!(!m.track(FrameworkId::new("F"), task("t1")).unwrap());
        let c = ContainerId::new("c1");
        let running = m
            .record(&t, Some(&c), TaskState::Running, None, "")
            .unwrap()
            .unwrap();
        // The same state twice is one update.
        assert!(m
            .record(&t, None, TaskState::Running, None, "")
            .unwrap()
            .is_none());
        let finished = m
            .record(&t, None, TaskState::Finished, None, "exit 0")
            .unwrap()
            .unwrap();
        assert_eq!(m.allocated().cpus(), 0.0);
        assert_eq!(m.heads(), vec![(FrameworkId::new("F"), running.clone())]);

        // A restart reads the same streams back, uuids included.
        drop(m);
        let m = StatusUpdateManager::open(dir.path()).unwrap();
        assert_eq!(m.heads()[0].1.uuid, running.uuid);
        assert_eq!(
            m.acknowledge(&t, finished.uuid.as_deref().unwrap())
                .unwrap(),
            Acked::Ignored
        );
        assert_eq!(
            m.acknowledge(&t, running.uuid.as_deref().unwrap()).unwrap(),
            Acked::Next
        );
        assert_eq!(m.heads()[0].1.uuid, finished.uuid);
        assert_eq!(
            m.acknowledge(&t, finished.uuid.as_deref().unwrap())
                .unwrap(),
            Acked::Done(Some(c))
        );
        assert!(m.heads().is_empty());
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
