//! Starting a container through its supervisor (see [`crate::supervisor`]).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

use crate::checkpoint::{self, ProcessRef};
use crate::supervisor::{Message, SupervisorConfig, START};

/// A supervisor that created its container and waits for `start`.
#[derive(Debug)]
pub struct Pending {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The supervisor (after it detached).
    pub supervisor: Option<ProcessRef>,
    /// The container's init.
    pub init: ProcessRef,
}

fn read_message(stdout: &mut BufReader<ChildStdout>) -> Result<Message, String> {
    let mut line = String::new();
    match stdout.read_line(&mut line) {
        Ok(0) => {
            Err("the supervisor exited without a word (see supervisor.log in the sandbox)".into())
        }
        Ok(_) => serde_json::from_str(&line)
            .map_err(|e| format!("the supervisor said {:?}: {e}", line.trim())),
        Err(e) => Err(format!("reading from the supervisor: {e}")),
    }
}

/// The parent of `pid`: for the container's init, its supervisor (libcontainer clones the
/// init with `CLONE_PARENT`).
fn parent_of(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// Writes the supervisor's config and starts it; returns once the container is created.
pub fn spawn(
    program: &Path,
    config_path: &Path,
    config: &SupervisorConfig,
    log: &Path,
) -> Result<Pending, String> {
    checkpoint::write(config_path, config).map_err(|e| e.to_string())?;
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(|e| format!("open {}: {e}", log.display()))?;
    let mut child = Command::new(program)
        .arg(config_path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .process_group(0)
        .spawn()
        .map_err(|e| format!("cannot run the supervisor {}: {e}", program.display()))?;
    let stdin = child.stdin.take().ok_or("no supervisor stdin")?;
    let mut stdout = BufReader::new(child.stdout.take().ok_or("no supervisor stdout")?);
    // The first process exits right after forking the real supervisor: reap it.
    let _ = child.wait();
    match read_message(&mut stdout)? {
        Message::Created { pid } => {
            let init = ProcessRef::of(pid)
                .ok_or_else(|| format!("the container's init {pid} vanished before start"))?;
            let supervisor = parent_of(pid).and_then(ProcessRef::of);
            Ok(Pending {
                stdin,
                stdout,
                supervisor,
                init,
            })
        }
        Message::Failed { message } => Err(message),
        Message::Started => Err("the supervisor started before it was asked to".into()),
    }
}

impl Pending {
    /// Lets the command run; returns once it is started.
    pub fn start(mut self) -> Result<(), String> {
        writeln!(self.stdin, "{START}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("telling the supervisor to start: {e}"))?;
        match read_message(&mut self.stdout)? {
            Message::Started => Ok(()),
            Message::Failed { message } => Err(message),
            Message::Created { .. } => Err("the supervisor created twice".into()),
        }
    }

    /// Gives up before start: the supervisor deletes the container and exits.
    pub fn abort(self) {
        drop(self.stdin);
    }
}
