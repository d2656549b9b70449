//! The per-container supervisor (DESIGN.md, "Supervision"): a small process, one per
//! container, that is the parent of the container's init and outlives the agent.
//!
//! The agent starts `cairn-supervisor <config>` with a pipe on its stdin and stdout. The
//! supervisor forks once and the first process exits (so the agent reaps it at once and the
//! supervisor is re-parented to init), calls `setsid(2)` (its own session and process group:
//! a signal to the agent's group does not reach it), then speaks a line protocol:
//!
//! 1. it enters a mount namespace of its own (a slave of the node's: the node's mounts and
//!    unmounts reach it, its own mounts do not leave it), assembles the container's root
//!    filesystem there as the config's [`RootfsPlan`] says, and writes [`Message::Prepared`]
//!    with its pid. The agent reads the root filesystem through `/proc/<pid>/root` to render
//!    the bundle (the image's users, the command's path), then writes `create`. The mounts
//!    live as long as the namespace: they go away with the supervisor and its container, even
//!    when the agent is not there to unmount them;
//! 2. it creates the container through `oci`'s runtime (libcontainer clones the init as its
//!    child) and writes [`Message::Created`] with the init's pid, or [`Message::Failed`];
//! 3. the agent places the pid under its isolators and writes `start`; the supervisor starts
//!    the container and answers [`Message::Started`]. End of file instead of `create` or
//!    `start` (the agent died or gave up) deletes the container and records
//!    [`ExitStatus::Aborted`];
//! 4. it copies the container's stdout and stderr into the sandbox with size-based rotation
//!    until the init exits, reaps it, and writes the exit status atomically to the exit file
//!    in the agent's checkpoint directory. It does not delete the container: the agent still
//!    reads the container's cgroup (an OOM kill) before it destroys it.
//!
//! It is single-threaded, as libcontainer's raw `clone(2)` wants.

pub mod logs;

use std::fs::File;
use std::io::{self, BufRead, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_api::ContainerId;
use cairn_oci::runtime::{Container, Output, Runtime, RuntimeConfig};
use nix::fcntl::{fcntl, FcntlArg, OFlag};
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use serde::{Deserialize, Serialize};

use crate::checkpoint::{self, ExitRecord, ExitStatus};
use crate::containerizer::provision::RootfsPlan;
use logs::RotatingLog;

/// What the agent tells a supervisor (written to `meta/containers/<id>/supervisor.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SupervisorConfig {
    pub version: u32,
    pub container_id: ContainerId,
    /// The bundle (holding `config.json`).
    pub bundle: PathBuf,
    /// libcontainer's state root.
    pub state_root: PathBuf,
    /// The cgroup parent the bundle's `linux.cgroupsPath` is below.
    pub cgroup_parent: PathBuf,
    /// The sandbox's `stdout` file.
    pub stdout: PathBuf,
    /// The sandbox's `stderr` file.
    pub stderr: PathBuf,
    /// Where the exit status goes.
    pub exit_file: PathBuf,
    /// Rotate a log file beyond this many bytes (0: never).
    pub log_max_bytes: u64,
    /// Rotated files kept per stream.
    pub log_max_files: u32,
    /// The root filesystem to assemble in the supervisor's mount namespace (`None`: the
    /// bundle's is ready, and the supervisor stays in the agent's namespace).
    #[serde(default)]
    pub rootfs: Option<RootfsPlan>,
}

/// One line from the supervisor to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Message {
    /// The root filesystem is assembled in the mount namespace of the supervisor `pid`.
    Prepared { pid: u32 },
    /// The init exists (in its namespaces and cgroup) and waits for `start`.
    Created { pid: u32 },
    /// The command is running.
    Started,
    /// Creating or starting failed; nothing is left of the container.
    Failed { message: String },
}

/// The line the agent sends once the bundle is written.
pub const CREATE: &str = "create";
/// The line the agent sends to let the command run.
pub const START: &str = "start";

fn send(msg: &Message) {
    let mut out = io::stdout().lock();
    let line = serde_json::to_string(msg).unwrap_or_else(|_| "{}".into());
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

fn record_exit(config: &SupervisorConfig, status: ExitStatus) {
    let record = ExitRecord {
        version: checkpoint::VERSION,
        container_id: config.container_id.clone(),
        status,
        finished_at: now(),
    };
    if let Err(e) = checkpoint::write(&config.exit_file, &record) {
        eprintln!("cairn-supervisor: {e}");
    }
}

/// Detaches from the agent: forks (the parent exits at once) and starts a new session.
#[allow(unsafe_code)]
fn detach() -> io::Result<()> {
    // SAFETY: the supervisor is single-threaded here (nothing has spawned a thread yet), so
    // the child may run arbitrary code after fork(2).
    match unsafe { nix::unistd::fork() }.map_err(io::Error::from)? {
        nix::unistd::ForkResult::Parent { .. } => std::process::exit(0),
        nix::unistd::ForkResult::Child => {}
    }
    nix::unistd::setsid().map_err(io::Error::from)?;
    Ok(())
}

/// Points fds 0 and 1 at `/dev/null`, closing the agent's end of the protocol pipes.
fn close_protocol() {
    if let Ok(null) = File::options().read(true).write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(null.as_raw_fd(), 0);
        let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
    }
}

/// Runs the supervisor with the config at `config_path`; returns the process exit code.
pub fn run(config_path: &Path) -> i32 {
    let config: SupervisorConfig = match checkpoint::read(config_path) {
        Ok(Some(c)) => c,
        Ok(None) => {
            send(&Message::Failed {
                message: format!("no supervisor config at {}", config_path.display()),
            });
            return 2;
        }
        Err(e) => {
            send(&Message::Failed {
                message: e.to_string(),
            });
            return 2;
        }
    };
    if let Err(e) = detach() {
        send(&Message::Failed {
            message: format!("cannot detach: {e}"),
        });
        return 1;
    }
    match supervise(&config) {
        Ok(()) => 0,
        Err(message) => {
            eprintln!("cairn-supervisor: {}: {message}", config.container_id);
            send(&Message::Failed { message });
            1
        }
    }
}

fn pipe() -> Result<(File, OwnedFd), String> {
    let (r, w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| format!("pipe: {e}"))?;
    Ok((File::from(r), w))
}

/// Moves the supervisor into a mount namespace of its own, a recursive slave of the node's
/// (so unmounting a node's filesystem is not held up by a copy of it here).
fn enter_mount_namespace() -> Result<(), String> {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| format!("cannot create a mount namespace: {e}"))?;
    nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_SLAVE | nix::mount::MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| format!("cannot make the mount namespace a slave of the node's: {e}"))
}

/// Reads the agent's next line; true when it is `expected` (anything else, end of file
/// included, means the agent gave up on the container).
fn agent_says(expected: &str) -> bool {
    let mut line = String::new();
    let _ = io::stdin().lock().read_line(&mut line);
    line.trim() == expected
}

fn supervise(config: &SupervisorConfig) -> Result<(), String> {
    if let Some(plan) = &config.rootfs {
        enter_mount_namespace()?;
        plan.assemble(&config.bundle)?;
        send(&Message::Prepared {
            pid: std::process::id(),
        });
        if !agent_says(CREATE) {
            record_exit(config, ExitStatus::Aborted);
            close_protocol();
            return Ok(());
        }
    }
    let mut stdout_log =
        RotatingLog::open(&config.stdout, config.log_max_bytes, config.log_max_files)
            .map_err(|e| format!("open {}: {e}", config.stdout.display()))?;
    let mut stderr_log =
        RotatingLog::open(&config.stderr, config.log_max_bytes, config.log_max_files)
            .map_err(|e| format!("open {}: {e}", config.stderr.display()))?;
    let (out_r, out_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let runtime = Runtime::new(RuntimeConfig {
        state_root: config.state_root.clone(),
        cgroup_parent: config.cgroup_parent.clone(),
    })
    .map_err(|e| e.to_string())?;
    // The runtime opens outputs by path; a pipe's /proc/self/fd link opens the same pipe.
    let fd_path = |fd: &OwnedFd| Output::File(format!("/proc/self/fd/{}", fd.as_raw_fd()).into());
    let mut container = runtime
        .create(
            config.container_id.as_str(),
            &config.bundle,
            &fd_path(&out_w),
            &fd_path(&err_w),
        )
        .map_err(|e| e.to_string())?;
    drop((out_w, err_w));
    // Block SIGCHLD only now: the init (already cloned) must not inherit a blocked mask.
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGCHLD);
    nix::sys::signal::sigprocmask(SigmaskHow::SIG_BLOCK, Some(&mask), None)
        .map_err(|e| format!("block SIGCHLD: {e}"))?;
    let mut sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
        .map_err(|e| format!("signalfd: {e}"))?;

    let pid = container
        .pid()
        .and_then(|p| u32::try_from(p).ok())
        .unwrap_or(0);
    send(&Message::Created { pid });
    if !agent_says(START) {
        // The agent went away (or changed its mind) before the command ran.
        let _ = container.delete(true);
        record_exit(config, ExitStatus::Aborted);
        close_protocol();
        return Ok(());
    }
    if let Err(e) = container.start() {
        let message = e.to_string();
        let _ = container.delete(true);
        return Err(message);
    }
    send(&Message::Started);
    close_protocol();

    let status = pump(
        &mut container,
        &mut sfd,
        out_r,
        err_r,
        &mut stdout_log,
        &mut stderr_log,
    );
    record_exit(config, status);
    Ok(())
}

fn status_of(s: cairn_oci::runtime::ExitStatus) -> ExitStatus {
    match s {
        cairn_oci::runtime::ExitStatus::Exited(c) => ExitStatus::Exited(c),
        cairn_oci::runtime::ExitStatus::Signaled(sig) => ExitStatus::Signaled(sig as i32),
    }
}

/// Copies the container's output into the logs until its init exits; returns how it ended.
fn pump(
    container: &mut Container,
    sfd: &mut SignalFd,
    mut out_r: File,
    mut err_r: File,
    stdout_log: &mut RotatingLog,
    stderr_log: &mut RotatingLog,
) -> ExitStatus {
    let mut buf = [0u8; 16 * 1024];
    let mut open = [true, true];
    loop {
        if let Ok(Some(s)) = container.try_wait() {
            // The init is gone (and with its pid namespace, every process in it): take what
            // is left in the pipes without blocking.
            for (r, log) in [
                (&mut out_r, &mut *stdout_log),
                (&mut err_r, &mut *stderr_log),
            ] {
                let _ = fcntl(r.as_raw_fd(), FcntlArg::F_SETFL(OFlag::O_NONBLOCK));
                while let Ok(n @ 1..) = r.read(&mut buf) {
                    let _ = log.write(&buf[..n]);
                }
            }
            return status_of(s);
        }
        let mut fds = vec![PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if open[0] {
            fds.push(PollFd::new(out_r.as_fd(), PollFlags::POLLIN));
        }
        if open[1] {
            fds.push(PollFd::new(err_r.as_fd(), PollFlags::POLLIN));
        }
        if poll(&mut fds, PollTimeout::from(1000u16)).is_err() {
            continue;
        }
        let ready: Vec<bool> = fds
            .iter()
            .map(|f| f.revents().is_some_and(|r| !r.is_empty()))
            .collect();
        drop(fds);
        let mut i = 1;
        for (idx, (r, log)) in [
            (&mut out_r, &mut *stdout_log),
            (&mut err_r, &mut *stderr_log),
        ]
        .into_iter()
        .enumerate()
        {
            if !open[idx] {
                continue;
            }
            if ready[i] {
                match r.read(&mut buf) {
                    Ok(0) => open[idx] = false,
                    Ok(n) => {
                        let _ = log.write(&buf[..n]);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => open[idx] = false,
                }
            }
            i += 1;
        }
        if ready[0] {
            while let Ok(Some(_)) = sfd.read_signal() {}
        }
    }
}
