//! `cairn dev` (a real master and a real agent in one process, real containers from the
//! busybox test image) driven by the `cairn` binary: `cairn logs -f` follows a running task's
//! output and ends when the task does; Ctrl-C during `cairn run` kills the task; `cairn
//! images` lists the agent's store; `cairn top` shows a running task's limits; bad input to
//! `cairn dev` fails clearly; SIGTERM stops the cluster, killing what still runs and removing
//! its cgroups and state directory.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn_testsupport::images::TestImages;
use cairn_testsupport::{require_root, wait_until};
use rustix::process::{kill_process, Pid, Signal};
use serde_json::Value;

const IMAGE: &str = "docker.io/cairn/busybox:latest";
const WAIT: Duration = Duration::from_secs(60);

fn cairn() -> Command {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
}

fn signal(child: &Child, sig: Signal) {
    let pid = Pid::from_raw(i32::try_from(child.id()).unwrap()).unwrap();
    let _ = kill_process(pid, sig);
}

/// Waits for `child` to exit, up to `limit`.
fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// A running `cairn dev`, output in files; stopped with SIGINT (then SIGKILL) when dropped.
struct Dev {
    child: Child,
    url: String,
    out: tempfile::TempDir,
}

impl Dev {
    fn start() -> Self {
        let images = TestImages::get();
        let out = tempfile::tempdir().unwrap();
        let child = cairn()
            .args(["dev", "--port", "0", "--agent-port", "0", "--import"])
            .arg(&images.docker_archive)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(out.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(out.path().join("stderr")).unwrap())
            .spawn()
            .unwrap();
        let mut dev = Self {
            child,
            url: String::new(),
            out,
        };
        let up = wait_until(WAIT, || dev.stdout().contains("\nCtrl-C stops it"));
        assert!(up, "cairn dev did not come up:\n{}", dev.output());
        dev.url = dev
            .stdout()
            .lines()
            .find_map(|l| l.trim().strip_prefix("master: ").map(str::to_string))
            .unwrap();
        dev
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(self.out.path().join("stdout")).unwrap_or_default()
    }

    fn output(&self) -> String {
        let err = std::fs::read_to_string(self.out.path().join("stderr")).unwrap_or_default();
        format!("--- stdout\n{}--- stderr\n{err}", self.stdout())
    }

    fn state_dir(&self) -> PathBuf {
        let out = self.stdout();
        let line = out.lines().find_map(|l| l.trim().strip_prefix("state:"));
        PathBuf::from(line.unwrap().split_whitespace().next().unwrap())
    }

    /// The cluster's cgroup parent, in every hierarchy where it exists.
    fn cgroups(&self) -> Vec<PathBuf> {
        let name = format!("cairn-dev-{}", self.child.id());
        let mut found = Vec::new();
        let mut stack = vec![PathBuf::from("/sys/fs/cgroup")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    if e.file_name().to_string_lossy() == name {
                        found.push(e.path());
                    } else {
                        stack.push(e.path());
                    }
                }
            }
        }
        found
    }

    /// Container cgroups below the cluster's parent.
    fn container_cgroups(&self) -> Vec<PathBuf> {
        self.cgroups()
            .iter()
            .flat_map(|d| std::fs::read_dir(d).into_iter().flatten().flatten())
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect()
    }

    fn cli(&self) -> Command {
        let mut c = cairn();
        c.env("CAIRN_MASTER", &self.url);
        c
    }

    fn task_state(&self, id: &str) -> String {
        let out = self.cli().args(["ps", "-a", "--json"]).output().unwrap();
        let tasks: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        tasks
            .as_array()
            .into_iter()
            .flatten()
            .find(|t| t["id"] == id)
            .map(|t| t["state"].as_str().unwrap_or_default().to_string())
            .unwrap_or_default()
    }

    /// The task's sandbox directory on this host, from the agent's `/state`.
    fn sandbox(&self, id: &str) -> PathBuf {
        let state: Value = get_json(&format!("{}/state", self.url));
        let pid = state["slaves"][0]["pid"].as_str().unwrap();
        let agent_port = pid.rsplit(':').next().unwrap();
        let agent: Value = get_json(&format!("http://127.0.0.1:{agent_port}/state"));
        agent["frameworks"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|f| f["executors"].as_array().into_iter().flatten())
            .find(|e| e["id"] == id)
            .and_then(|e| e["directory"].as_str())
            .map(PathBuf::from)
            .unwrap_or_else(|| panic!("no sandbox for {id} in the agent's state: {agent}"))
    }
}

impl Drop for Dev {
    fn drop(&mut self) {
        if self.child.try_wait().unwrap().is_none() {
            signal(&self.child, Signal::INT);
            if wait_exit(&mut self.child, WAIT).is_none() {
                signal(&self.child, Signal::KILL);
                let _ = self.child.wait();
            }
        }
    }
}

fn get_json(url: &str) -> Value {
    let text = ureq::get(url)
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    serde_json::from_str(&text).unwrap()
}

/// A detached task that prints `line 1`, waits for a `done` file in its sandbox, then prints
/// `line 2`: `cairn logs -f` must show the first line while the task still runs, the second
/// once it is released, and end by itself after the task does.
fn logs_follow_prints_output_as_it_comes_and_ends_with_the_task(dev: &Dev) {
    let script = "echo line 1; while [ ! -e \"$MESOS_SANDBOX/done\" ]; do sleep 0.1; done; \
                  echo line 2";
    let out = dev
        .cli()
        .args([
            "run", "-d", "--name", "follow", "--image", IMAGE, "--", script,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "cairn run -d: {out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(id.starts_with("follow-"), "cairn run -d printed {id:?}");

    let mut logs = dev
        .cli()
        .args(["logs", "-f", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, lines) = mpsc::channel();
    let stdout = logs.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    assert_eq!(lines.recv_timeout(WAIT).unwrap(), "line 1");
    // The task is held until released: the first line came while it ran.
    assert_eq!(dev.task_state(&id), "TASK_RUNNING");
    assert!(
        logs.try_wait().unwrap().is_none(),
        "cairn logs -f ended while the task runs"
    );
    std::fs::write(dev.sandbox(&id).join("done"), "").unwrap();
    assert_eq!(lines.recv_timeout(WAIT).unwrap(), "line 2");
    let status = wait_exit(&mut logs, WAIT).expect("cairn logs -f did not end with the task");
    assert!(status.success(), "cairn logs -f: {status}");
    assert_eq!(dev.task_state(&id), "TASK_FINISHED");
}

/// SIGINT (Ctrl-C) to an attached `cairn run` asks the master to kill the task: the run exits
/// 130, the task ends TASK_KILLED, its container's cgroup goes away.
fn ctrl_c_during_run_kills_the_task(dev: &Dev) {
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut run = dev
        .cli()
        .args([
            "run", "--name", "sleeper", "--image", IMAGE, "--", "sleep", "300",
        ])
        .stdout(Stdio::null())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    let stderr = || std::fs::read_to_string(err.path()).unwrap_or_default();
    assert!(
        wait_until(WAIT, || stderr().contains("TASK_RUNNING")),
        "the sleeper did not start: {}",
        stderr()
    );
    let id = stderr()
        .split_whitespace()
        .find(|w| w.starts_with("sleeper-"))
        .unwrap()
        .to_string();
    assert!(!dev.container_cgroups().is_empty(), "no container cgroup");
    signal(&run, Signal::INT);
    let status = wait_exit(&mut run, WAIT).expect("cairn run did not exit after SIGINT");
    assert_eq!(status.code(), Some(130), "{}", stderr());
    assert!(
        stderr().contains(&format!("interrupted, killing task {id}")),
        "{}",
        stderr()
    );
    assert!(
        wait_until(WAIT, || dev.task_state(&id) == "TASK_KILLED"),
        "task {id} is {} after the Ctrl-C",
        dev.task_state(&id)
    );
    assert!(
        wait_until(WAIT, || dev.container_cgroups().is_empty()),
        "container cgroups left after the kill: {:?}",
        dev.container_cgroups()
    );
}

/// `cairn images` lists the image `cairn dev --import` put in the agent's store, as a table
/// and as JSON; an unknown `--agent` is an error.
fn images_lists_the_agents_store(dev: &Dev) {
    let out = dev.cli().args(["images"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.starts_with("AGENT"), "{table}");
    assert!(table.contains(IMAGE), "{table}");

    let out = dev.cli().args(["images", "--json"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let images: Value = serde_json::from_slice(&out.stdout).unwrap();
    let busybox = images
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["reference"] == IMAGE)
        .unwrap_or_else(|| panic!("{images}"));
    assert!(busybox["digest"].as_str().unwrap().starts_with("sha256:"));
    assert_eq!(busybox["layers"], 1);
    assert!(busybox["size"].as_u64().unwrap() > 0);

    let out = dev
        .cli()
        .args(["images", "--agent", "no-such-agent"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no agent \"no-such-agent\""));
}

fn temp_dev_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with("cairn-dev-"))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    dirs
}

/// A second `cairn dev` on the first one's master port, and one with an archive that does
/// not exist, fail with one line naming the problem, exit 1, and leave no directory behind.
fn bad_input_fails_clearly_and_leaves_nothing(dev: &Dev) {
    let before = temp_dev_dirs();
    let port = dev.url.rsplit(':').next().unwrap();
    let out = cairn()
        .args(["dev", "--port", port, "--agent-port", "0"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("cannot listen on 127.0.0.1:{port} (in use?")),
        "{err}"
    );

    let out = cairn()
        .args(["dev", "--port", "0", "--agent-port", "0", "--import"])
        .arg("/nonexistent/image.tar")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("--import /nonexistent/image.tar: No such file or directory"),
        "{err}"
    );
    assert_eq!(
        temp_dev_dirs(),
        before,
        "a failed cairn dev left its directory"
    );
}

/// `cairn top` reads the agent's `/monitor/statistics`: the running task with its limits
/// (`cairn run`'s defaults: 0.1 CPU, 128 MiB).
fn top_shows_the_running_task_with_its_limits(dev: &Dev, id: &str) {
    let out = dev.cli().args(["top", "--json"]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let entries: Value = serde_json::from_slice(&out.stdout).unwrap();
    let entry = entries
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["executor_id"] == id)
        .unwrap_or_else(|| panic!("{id} not in cairn top: {entries}"));
    let stats = &entry["statistics"];
    assert_eq!(stats["mem_limit_bytes"], 128 * 1024 * 1024, "{entry}");
    assert_eq!(stats["cpus_limit"], 0.1, "{entry}");

    let out = dev.cli().args(["top"]).output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success() && table.starts_with("TASK"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(id) && l.contains("128 MiB")),
        "{table}"
    );
}

/// SIGTERM stops `cairn dev`: the still running detached task is killed (its cgroup, and so
/// its processes, gone), the cgroup parent and the temporary state directory are removed.
fn sigterm_stops_the_cluster_and_cleans_up(mut dev: Dev) {
    let out = dev
        .cli()
        .args([
            "run", "-d", "--name", "idle", "--image", IMAGE, "--", "sleep", "300",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "cairn run -d: {out:?}");
    let id = String::from_utf8(out.stdout).unwrap().trim().to_string();
    assert!(!dev.container_cgroups().is_empty(), "no container cgroup");
    top_shows_the_running_task_with_its_limits(&dev, &id);
    let state = dev.state_dir();
    assert!(state.join("agent").is_dir(), "{}", dev.output());

    signal(&dev.child, Signal::TERM);
    let status = wait_exit(&mut dev.child, WAIT).expect("cairn dev did not stop on SIGTERM");
    assert!(status.success(), "cairn dev: {status}\n{}", dev.output());
    assert!(
        dev.stdout()
            .contains("cairn dev: stopped; tasks killed, cgroups removed, state removed"),
        "{}",
        dev.output()
    );
    assert!(!state.exists(), "{} is still there", state.display());
    assert_eq!(dev.cgroups(), Vec::<PathBuf>::new(), "cgroups left");
    assert!(
        ureq::get(&format!("{}/health", dev.url)).call().is_err(),
        "the master still answers"
    );
}

#[test]
fn dev_cluster_serves_images_logs_top_and_ctrl_c_then_cleans_up() {
    if !require_root("dev_cluster_serves_images_logs_top_and_ctrl_c_then_cleans_up") {
        return;
    }
    let dev = Dev::start();
    images_lists_the_agents_store(&dev);
    bad_input_fails_clearly_and_leaves_nothing(&dev);
    logs_follow_prints_output_as_it_comes_and_ends_with_the_task(&dev);
    ctrl_c_during_run_kills_the_task(&dev);
    sigterm_stops_the_cluster_and_cleans_up(dev);
}
