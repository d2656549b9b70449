//! Starting a container through its supervisor (see [`crate::supervisor`]).

use std::fs::OpenOptions;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};

use crate::checkpoint::{self, ProcessRef};
use crate::supervisor::{Message, SupervisorConfig, CREATE, START};

/// A supervisor that assembled the root filesystem in its mount namespace and waits for
/// `create` (the bundle).
#[derive(Debug)]
pub struct Prepared {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    /// The supervisor (after it detached).
    pub supervisor: ProcessRef,
}

/// A supervisor that created its container and waits for `start`.
#[derive(Debug)]
pub struct Pending {
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
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

/// Writes the supervisor's config (which must hold a root filesystem plan) and starts it;
/// returns once the root filesystem is assembled.
pub fn spawn(
    program: &Path,
    config_path: &Path,
    config: &SupervisorConfig,
    log: &Path,
) -> Result<Prepared, String> {
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
        Message::Prepared { pid } => {
            let supervisor = ProcessRef::of(pid)
                .ok_or_else(|| format!("the supervisor {pid} vanished after preparing"))?;
            Ok(Prepared {
                stdin,
                stdout,
                supervisor,
            })
        }
        Message::Failed { message } => Err(message),
        other => Err(format!("the supervisor said {other:?} before preparing")),
    }
}

impl Prepared {
    /// Where the agent reads `path` as the supervisor's mount namespace has it (the
    /// assembled root filesystem is mounted only there).
    #[must_use]
    pub fn view(&self, path: &Path) -> std::path::PathBuf {
        let mut view = std::path::PathBuf::from(format!("/proc/{}/root", self.supervisor.pid));
        view.push(path.strip_prefix("/").unwrap_or(path));
        view
    }

    /// Lets the supervisor create the container from the bundle; returns once it exists.
    pub fn create(mut self) -> Result<Pending, String> {
        writeln!(self.stdin, "{CREATE}")
            .and_then(|()| self.stdin.flush())
            .map_err(|e| format!("telling the supervisor to create: {e}"))?;
        match read_message(&mut self.stdout)? {
            Message::Created { pid } => {
                let init = ProcessRef::of(pid)
                    .ok_or_else(|| format!("the container's init {pid} vanished before start"))?;
                Ok(Pending {
                    stdin: self.stdin,
                    stdout: self.stdout,
                    init,
                })
            }
            Message::Failed { message } => Err(message),
            other => Err(format!("the supervisor said {other:?} instead of creating")),
        }
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
            other => Err(format!("the supervisor said {other:?} instead of starting")),
        }
    }

    /// Gives up before start: the supervisor deletes the container and exits.
    pub fn abort(self) {
        drop(self.stdin);
    }
}
