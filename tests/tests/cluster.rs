//! The real pair: a `cairn-master` and a `cairn-agent` process talking to each other, driven
//! by a real Mesos scheduler library (pymesos, `.cache/pymesos-venv` from `scripts/setup`) and
//! scraped by a real Prometheus. Needs root (the agent's containers) and the binaries built
//! first: `cargo build -p cairn-master -p cairn-agent`.
//!
//! One scenario, in order: the agent registers and the master's `/state` lists it with the
//! resources the agent measured; pymesos subscribes, takes the offer and launches five tasks
//! (`echo hi`, `exit 3`, a `sleep 60` it kills, the busybox image, a long `sleep`) which end
//! FINISHED, FAILED, KILLED, FINISHED, and (acknowledged, reconciled); while the long sleep runs
//! Prometheus scrapes both `/metrics` and answers the agent count, the running tasks and the
//! container's memory usage.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use cairn_testsupport::cgroups::CgroupParent;
use cairn_testsupport::images::TestImages;
use cairn_testsupport::prometheus::{promtool_check_metrics, Prometheus};
use cairn_testsupport::{
    free_port, require_command, require_root, wait_until, Service, ServiceDir,
};
use serde_json::Value;

/// Where cargo put the binaries (`CARGO_TARGET_DIR`, else the workspace's `target`).
fn binary(name: &str) -> PathBuf {
    cairn_testsupport::bins::workspace_binary(name)
}

fn venv_python() -> Option<PathBuf> {
    let cache = std::env::var_os("CAIRN_CACHE").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.cache"),
        PathBuf::from,
    );
    let py = cache.join("pymesos-venv/bin/python");
    py.is_file().then_some(py)
}

fn get(url: &str) -> Result<String, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)))
        .build()
        .into();
    let mut response = agent
        .get(url)
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("GET {url}: {e}"))?;
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("GET {url}: {status} {body}"))
    }
}

fn get_json(url: &str) -> Result<Value, String> {
    serde_json::from_str(&get(url)?).map_err(|e| format!("GET {url}: not JSON: {e}"))
}

// ---------------------------------------------------------------------------------------
// A cgroup parent below the test's own cgroup (as agent/tests/daemon.rs does), removed on drop.

// ---------------------------------------------------------------------------------------
// The scheduler: pymesos in a child process whose stdout lines arrive on a channel.

struct Scheduler {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Scheduler {
    fn start(python: &Path, master: &str, image: &str) -> Self {
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("pymesos/cluster_scheduler.py");
        let mut child = Command::new(python)
            .arg(&script)
            .arg(master)
            .arg(image)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for the line `line` (exactly), keeping every line seen.
    fn wait_line(&mut self, line: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.seen.iter().any(|l| l == line) {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    eprintln!("scheduler: {l}");
                    self.seen.push(l);
                }
                Err(e) => panic!(
                    "scheduler never printed {line:?} ({e}); it printed:\n{}",
                    self.seen.join("\n")
                ),
            }
        }
    }

    fn finish(mut self) -> (bool, Vec<String>) {
        let deadline = Instant::now() + Duration::from_secs(90);
        let status = loop {
            while let Ok(l) = self.lines.try_recv() {
                eprintln!("scheduler: {l}");
                self.seen.push(l);
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                break self.child.wait().unwrap();
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        // The reader thread ends at EOF: collect the rest.
        while let Ok(l) = self.lines.recv_timeout(Duration::from_secs(2)) {
            eprintln!("scheduler: {l}");
            self.seen.push(l);
        }
        (status.success(), std::mem::take(&mut self.seen))
    }
}

impl Drop for Scheduler {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

// ---------------------------------------------------------------------------------------

/// Imports the busybox archive into the agent's image store with the agent's own
/// `cairn-agent launch --image-archive` (running `true` once in it); returns the reference.
fn import_busybox(agent_bin: &Path, work: &Path, cgroups: &CgroupParent) -> String {
    let images = TestImages::get();
    let out = Command::new(agent_bin)
        .arg("launch")
        .arg("--image-archive")
        .arg(&images.docker_archive)
        .arg("--work-dir")
        .arg(work)
        .arg("--cgroup-parent")
        .arg(cgroups.path.join("import"))
        .arg("--mem")
        .arg("32M")
        .arg("--")
        .arg("true")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "cairn-agent launch --image-archive failed:\n{stdout}\n{stderr}"
    );
    stdout
        .lines()
        .chain(stderr.lines())
        .find_map(|l| l.strip_prefix("imported ")?.split(' ').next())
        .unwrap_or_else(|| panic!("no `imported` line:\n{stdout}\n{stderr}"))
        .to_string()
}

fn scalar(resources: &Value, name: &str) -> Option<f64> {
    resources.get(name)?.as_f64()
}

#[test]
fn real_master_and_agent_run_pymesos_tasks_and_prometheus_sees_them() {
    let test = "cluster";
    if !require_root(test) || !require_command(test, "prometheus") {
        return;
    }
    let Some(python) = venv_python() else {
        assert!(
            std::env::var_os("CAIRN_TESTS_STRICT").is_none(),
            "{test} cannot run: pymesos venv missing (CAIRN_TESTS_STRICT is set)"
        );
        eprintln!("skipping {test}: pymesos venv missing (run scripts/setup)");
        return;
    };
    let master_bin = binary("cairn-master");
    let agent_bin = binary("cairn-agent");

    // Field order is drop order: services first, then cgroups, then directories.
    let master_dir = ServiceDir::new("cluster-master");
    let agent_dir = ServiceDir::new("cluster-agent");
    let cgroups = CgroupParent::new("cluster");
    let work = agent_dir.path().join("work");
    let image = import_busybox(&agent_bin, &work, &cgroups);

    // The master, standalone, on a free port.
    let master_port = free_port();
    let master_addr = format!("127.0.0.1:{master_port}");
    let master_cfg = master_dir.path().join("master.toml");
    fs::write(
        &master_cfg,
        format!(
            "listen = \"{master_addr}\"\nwork_dir = {:?}\nallocation_interval_secs = 0.2\n\
             agent_heartbeat_secs = 1.0\nframework_heartbeat_secs = 5.0\n",
            master_dir.path().join("work"),
        ),
    )
    .unwrap();
    let mut master_cmd = Command::new(&master_bin);
    master_cmd
        .arg("--config")
        .arg(&master_cfg)
        .env("RUST_LOG", "info");
    let mut master = Service::spawn("cairn-master", master_cmd, master_dir.path()).unwrap();
    let master_url = format!("http://{master_addr}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            !master.is_running() || get(&format!("{master_url}/health")).is_ok()
        }) && master.is_running(),
        "the master did not come up:\n{}",
        master.log()
    );

    // The agent, measured resources, its own work dir and cgroup parent.
    let agent_port = free_port();
    let agent_url = format!("http://127.0.0.1:{agent_port}");
    let agent_cfg = agent_dir.path().join("agent.toml");
    fs::write(
        &agent_cfg,
        format!(
            "work_dir = {work:?}\nmaster = \"{master_addr}\"\ncgroup_parent = {:?}\n\
             listen_ip = \"127.0.0.1\"\nport = {agent_port}\nheartbeat_interval = 1.0\n\
             registration_backoff = 0.2\ndrain_on_sigterm = true\n",
            cgroups.path.join("agent").to_string_lossy(),
        ),
    )
    .unwrap();
    let mut agent_cmd = Command::new(&agent_bin);
    agent_cmd
        .arg("--config")
        .arg(&agent_cfg)
        .env("RUST_LOG", "info");
    let mut agent = Service::spawn("cairn-agent", agent_cmd, agent_dir.path()).unwrap();

    // 1. The agent registers; the master lists it with the resources it measured.
    let mut master_state = Value::Null;
    let registered = wait_until(Duration::from_secs(30), || {
        if !agent.is_running() {
            return true;
        }
        master_state = get_json(&format!("{master_url}/state")).unwrap_or(Value::Null);
        master_state["slaves"]
            .as_array()
            .is_some_and(|s| s.len() == 1 && s[0]["active"] != false)
    });
    assert!(
        registered && agent.is_running(),
        "the agent did not register: master /state {master_state}\nagent log:\n{}\nmaster log:\n{}",
        agent.log(),
        master.log()
    );
    let agent_state = get_json(&format!("{agent_url}/state")).unwrap();
    let slave = &master_state["slaves"][0];
    assert_eq!(
        slave["id"], agent_state["id"],
        "master and agent disagree on the agent id"
    );
    for name in ["cpus", "mem", "disk"] {
        let (m, a) = (
            scalar(&slave["resources"], name),
            scalar(&agent_state["resources"], name),
        );
        assert!(
            m.is_some() && (m.unwrap() - a.unwrap_or(-1.0)).abs() < 1e-6,
            "{name}: master lists {m:?}, the agent measured {a:?}\nmaster: {slave}\nagent: {}",
            agent_state["resources"]
        );
    }
    assert!(scalar(&slave["resources"], "cpus").unwrap() > 0.0);
    assert!(scalar(&slave["resources"], "mem").unwrap() > 0.0);

    // 2 and 3. pymesos launches command tasks and a busybox task on the real agent.
    let mut scheduler = Scheduler::start(&python, &master_addr, &image);
    scheduler.wait_line("waiting", Duration::from_secs(120));

    // 4. While c-long sleeps: Prometheus scrapes both.
    let prometheus = Prometheus::start(&[master_addr.clone(), format!("127.0.0.1:{agent_port}")]);
    let timeout = Duration::from_secs(30);
    let agents = prometheus
        .wait_for("cairn_master_slaves_active", timeout)
        .unwrap();
    assert_eq!(
        cairn_testsupport::prometheus::sample_value(&agents),
        Some(1.0),
        "{agents}"
    );
    let running = prometheus
        .wait_for(r#"cairn_agent_tasks{state="TASK_RUNNING"} == 1"#, timeout)
        .unwrap();
    assert_eq!(
        cairn_testsupport::prometheus::sample_value(&running),
        Some(1.0),
        "{running}"
    );
    let master_running = prometheus
        .wait_for(r#"cairn_master_tasks{state="TASK_RUNNING"} == 1"#, timeout)
        .unwrap();
    assert!(!master_running.as_array().unwrap().is_empty());
    let memory = prometheus
        .wait_for(
            r#"cairn_agent_container_memory_bytes{task_id="c-long"} > 0"#,
            timeout,
        )
        .unwrap();
    assert!(
        cairn_testsupport::prometheus::sample_value(&memory).unwrap() > 0.0,
        "{memory}"
    );
    // Both expositions pass promtool, as the real agent and master serve them mid-run.
    for url in [&agent_url, &master_url] {
        let text = get(&format!("{url}/metrics")).unwrap();
        promtool_check_metrics(&text).unwrap_or_else(|e| panic!("{url}/metrics: {e}"));
    }
    drop(prometheus);

    // Let the scheduler kill c-long and finish.
    writeln!(scheduler.child.stdin.as_mut().unwrap(), "go").unwrap();
    let (ok, seen) = scheduler.finish();
    let text = seen.join("\n");
    assert!(
        ok,
        "the scheduler failed:\n{text}\nagent log:\n{}",
        agent.log()
    );
    for line in [
        "launch c-echo",
        "update c-echo TASK_RUNNING",
        "update c-echo TASK_FINISHED",
        "update c-exit TASK_FAILED",
        "update c-sleep TASK_RUNNING",
        "update c-sleep TASK_KILLED",
        "update c-image TASK_RUNNING",
        "update c-image TASK_FINISHED",
        "reconciled c-long TASK_RUNNING",
        "update c-long TASK_KILLED",
        // Acknowledged terminal tasks are forgotten: TASK_LOST, as in Mesos.
        "reconciled c-echo TASK_LOST",
    ] {
        assert!(
            seen.iter().any(|l| l.starts_with(line)),
            "missing {line:?} in:\n{text}"
        );
    }
    assert!(
        seen.iter()
            .any(|l| l.starts_with("update c-exit TASK_FAILED") && l.contains("status 3")),
        "c-exit did not fail with its exit status:\n{text}"
    );

    // The task outputs stay in their sandboxes (the agent forgets acknowledged tasks, the
    // sandboxes remain), readable through the agent's /files/read.
    let outputs: Vec<String> = fs::read_dir(work.join("sandboxes"))
        .unwrap()
        .flatten()
        .filter_map(|e| {
            let id = e.file_name().into_string().ok()?;
            let url = format!("{agent_url}/files/read?path={id}/stdout&offset=0&length=4096");
            get_json(&url).ok()?["data"].as_str().map(str::to_string)
        })
        .collect();
    assert!(
        outputs.iter().any(|o| o.contains("hi")),
        "no `hi` in the sandboxes: {outputs:?}"
    );
    assert!(
        outputs.iter().any(|o| o.contains("hello from busybox")),
        "no busybox output in the sandboxes: {outputs:?}"
    );

    // Every acknowledged stream is done on the agent; the master has no task running.
    assert!(
        wait_until(Duration::from_secs(15), || fs::read_dir(
            work.join("meta/status")
        )
        .map_or(true, |d| d.count() == 0)),
        "status streams left on the agent (unacknowledged updates)\n{}",
        agent.log()
    );

    // Stop the agent with drain, so no container outlives the test.
    agent.stop(Duration::from_secs(20));
    master.stop(Duration::from_secs(10));
    let leftover: Vec<_> = fs::read_dir(work.join("meta/containers"))
        .map(|d| d.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(leftover.is_empty(), "containers left: {leftover:?}");
    drop(cgroups);
}
