//! Process guards for test services: stopped on drop (also on panic), logs kept on failure.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// A scratch directory for one service or test. Removed on drop, unless the thread is
/// panicking (a failing test): then it is kept and its path printed.
#[derive(Debug)]
pub struct ServiceDir {
    path: PathBuf,
    keep: bool,
}

impl ServiceDir {
    /// Creates a fresh directory named after `name` under the system temp dir
    /// (`CAIRN_TEST_TMP` overrides the parent).
    pub fn new(name: &str) -> Self {
        let parent =
            std::env::var_os("CAIRN_TEST_TMP").map_or_else(std::env::temp_dir, PathBuf::from);
        fs::create_dir_all(&parent).expect("create test temp parent");
        let dir = tempfile::Builder::new()
            .prefix(&format!("cairn-{name}-"))
            .tempdir_in(&parent)
            .expect("create service directory");
        Self {
            path: dir.keep(),
            keep: false,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Keeps the directory after drop even when the test passes.
    pub fn keep(&mut self) {
        self.keep = true;
    }
}

impl Drop for ServiceDir {
    fn drop(&mut self) {
        if self.keep || thread::panicking() {
            eprintln!("kept test directory {}", self.path.display());
        } else {
            let _ = fs::remove_dir_all(&self.path);
        }
    }
}

/// A running service process. Dropping it stops the process by PID (SIGTERM, then SIGKILL
/// after a grace period) and reaps it. Its stdout and stderr go to `<dir>/<name>.log`.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Option<Child>,
    log: PathBuf,
}

impl Service {
    /// Spawns `cmd` with stdout and stderr appended to `log_dir/<name>.log`.
    pub fn spawn(name: &str, mut cmd: Command, log_dir: &Path) -> std::io::Result<Self> {
        let log = log_dir.join(format!("{name}.log"));
        let out = File::options().create(true).append(true).open(&log)?;
        let err = out.try_clone()?;
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn()?;
        Ok(Self {
            name: name.to_string(),
            child: Some(child),
            log,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id, or `None` once the service was stopped.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The log so far (lossy UTF-8), for assertions and failure messages.
    pub fn log(&self) -> String {
        fs::read(&self.log)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(child) => matches!(child.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Sends `signal` to the process (by PID), if it is still running.
    pub fn signal(&mut self, signal: Signal) {
        if let Some(child) = self.child.as_mut() {
            if matches!(child.try_wait(), Ok(None)) {
                let pid = i32::try_from(child.id()).expect("pid fits in i32");
                let _ = kill(Pid::from_raw(pid), signal);
            }
        }
    }

    /// Stops the process: SIGTERM, then SIGKILL after `grace`; reaps it.
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if matches!(child.try_wait(), Ok(None)) {
            let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits in i32"));
            let _ = kill(pid, Signal::SIGTERM);
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline && matches!(child.try_wait(), Ok(None)) {
                thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
        }
        let _ = child.wait();
    }

    /// Kills the process with SIGKILL at once and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
        if thread::panicking() {
            eprintln!("service {} log: {}", self.name, self.log.display());
        }
    }
}

/// Polls `ready` every 50 ms until it returns true or `timeout` passes.
pub fn wait_until(timeout: Duration, mut ready: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if ready() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Skips `test` with a printed reason, or fails it when `CAIRN_TESTS_STRICT` is set
/// (`scripts/test` sets it, so CI never passes by skipping).
fn skip(test: &str, reason: &str) -> bool {
    if std::env::var_os("CAIRN_TESTS_STRICT").is_some() {
        panic!("{test} cannot run: {reason} (CAIRN_TESTS_STRICT is set)");
    }
    eprintln!("skipping {test}: {reason}");
    false
}

/// True when running as root; otherwise skips `test` (see [`skip`]).
pub fn require_root(test: &str) -> bool {
    nix::unistd::geteuid().is_root() || skip(test, "needs root (CI runs it as root)")
}

/// True when `program` is on PATH; otherwise skips `test` (`scripts/setup` installs every
/// program the tests use).
pub fn require_command(test: &str, program: &str) -> bool {
    let found = std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()));
    found
        || skip(
            test,
            &format!("{program} is not installed (run scripts/setup)"),
        )
}
