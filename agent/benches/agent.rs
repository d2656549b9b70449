//! The agent's issue-5 benchmark (BENCHMARKS.md "## agent"). Needs root; release build:
//!
//!     cargo bench -p cairn-agent --bench agent             # as root
//!     cargo bench -p cairn-agent --bench agent -- 300      # 300 sleeping tasks for the RSS part
//!     cargo bench -p cairn-agent --bench agent -- --short-only 300   # only 300 short host tasks
//!     cargo bench -p cairn-agent --bench agent -- --sleep-only 1000  # only 1000 sleeping tasks
//!
//! Prints launch-to-RUNNING latency of a cached image, the time to run 1000 short tasks on one
//! containerizer (host filesystem and cached image), the agent daemon's idle RSS and its RSS
//! with N running tasks (recovered from the containerizer that launched them), and the
//! private memory of each container's supervisor. Every process, cgroup and mount it makes is
//! removed before it exits.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use cairn_agent::containerizer::{
    Containerizer, ContainerizerConfig, LaunchRequest, TaskCommand, Termination,
};
use cairn_api::{ContainerId, Resources, TaskState};
use cairn_testsupport::cgroups::CgroupParent;
use cairn_testsupport::images::TestImages;

const AGENT: &str = env!("CARGO_BIN_EXE_cairn-agent");
const SUPERVISOR: &str = env!("CARGO_BIN_EXE_cairn-supervisor");
const LATENCY_RUNS: usize = 50;
const SHORT_TASKS: usize = 1000;
const CONCURRENCY: usize = 8;
const KILL_GRACE: Duration = Duration::from_millis(100);

/// A `/proc/<pid>/status` field in kB.
fn status_kb(pid: u32, field: &str) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix(field))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// Private_Clean + Private_Dirty of `/proc/<pid>/smaps_rollup`, in kB.
fn private_kb(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| -> Option<u64> {
        text.lines()
            .find_map(|l| l.strip_prefix(name))?
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .ok()
    };
    Some(field("Private_Clean:")? + field("Private_Dirty:")?)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let rank = ((p * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn ms(d: Duration) -> String {
    format!("{:.1} ms", d.as_secs_f64() * 1000.0)
}

fn mib(kb: u64) -> String {
    format!("{:.1} MiB", kb as f64 / 1024.0)
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct Bench {
    config: ContainerizerConfig,
    image: String,
    cgroups: CgroupParent,
    dir: tempfile::TempDir,
}

impl Bench {
    fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("cairn-agent-bench-")
            .tempdir()
            .unwrap();
        let cgroups = CgroupParent::new("cluster");
        let mut config = ContainerizerConfig::new(dir.path().join("work"));
        config.supervisor = PathBuf::from(SUPERVISOR);
        config.cgroups.parent = cgroups.path.to_string_lossy().into_owned();
        let store = cairn_oci::store::Store::open(dir.path().join("work/images")).unwrap();
        let images = TestImages::get();
        let imported =
            cairn_oci::import::import_docker_archive(&store, &images.docker_archive, None).unwrap();
        let image = imported[0].reference.to_string();
        Self {
            config,
            image,
            cgroups,
            dir,
        }
    }

    fn request(&self, task: &str, image: bool, argv: &[&str]) -> LaunchRequest {
        let resources = Resources::new()
            .with_scalar("cpus", 0.01)
            .unwrap()
            .with_scalar("mem", 32.0)
            .unwrap();
        let mut r = LaunchRequest::new(task, resources);
        r.image = image.then(|| self.image.clone());
        r.command = Some(TaskCommand::Argv(
            argv.iter().map(|s| (*s).to_string()).collect(),
        ));
        r
    }

    /// Starts `cairn-agent` on `work_dir` with an unreachable master; stderr to `log`.
    fn agent(&self, work_dir: &Path, log: &Path) -> Child {
        Command::new(AGENT)
            .arg("--work-dir")
            .arg(work_dir)
            .args(["--master", "127.0.0.1:1", "--listen-ip", "127.0.0.1"])
            .args(["--port", &free_port().to_string()])
            .arg("--cgroup-parent")
            .arg(&self.cgroups.path)
            .args(["--drain-on-sigterm", "false"])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(fs::File::create(log).unwrap())
            .spawn()
            .unwrap()
    }
}

fn stop(mut child: Child) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// The agent's RSS once it has settled: sampled every 250 ms for `settle`, the last sample.
fn settled_rss(child: &Child, settle: Duration) -> u64 {
    let start = Instant::now();
    let mut last = 0;
    while start.elapsed() < settle {
        std::thread::sleep(Duration::from_millis(250));
        last = status_kb(child.id(), "VmRSS:").expect("the agent is running");
    }
    last
}

/// Runs `n` tasks from `make(i)` with `CONCURRENCY` launching threads, each waiting for its
/// task's end and forgetting it; returns the total time and how many finished.
fn run_short(
    c: &Containerizer,
    n: usize,
    make: &(dyn Fn(usize) -> LaunchRequest + Sync),
) -> (Duration, usize) {
    let next = AtomicUsize::new(0);
    let finished = AtomicUsize::new(0);
    let start = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..CONCURRENCY {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                let id = c.launch(&make(i));
                let t = c.wait(&id).unwrap();
                if t.state == TaskState::Finished {
                    finished.fetch_add(1, Ordering::Relaxed);
                } else {
                    eprintln!("task {i}: {t:?}");
                }
                forget(c, &id);
            });
        }
    });
    (start.elapsed(), finished.load(Ordering::Relaxed))
}

/// Launches `n` sleeping tasks concurrently; returns their ids and the time it took.
fn launch_sleepers(
    b: &Bench,
    c: &Containerizer,
    n: usize,
    first: usize,
) -> (Vec<ContainerId>, Duration) {
    let next = AtomicUsize::new(first);
    let n = first + n;
    let start = Instant::now();
    let ids = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CONCURRENCY)
            .map(|_| {
                s.spawn(|| {
                    let mut ids = Vec::new();
                    loop {
                        let i = next.fetch_add(1, Ordering::Relaxed);
                        if i >= n {
                            break ids;
                        }
                        let req = b.request(&format!("sleep-{i}"), true, &["sleep", "3600"]);
                        ids.push(c.launch(&req));
                    }
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap())
            .collect::<Vec<_>>()
    });
    (ids, start.elapsed())
}

/// Forgets an ended container. `forget` can race the supervisor's last writes into the
/// container's metadata directory (ENOTEMPTY after the entry is already dropped): the
/// directory is then removed again here, and the race counted.
fn forget(c: &Containerizer, id: &ContainerId) {
    let Err(e) = c.forget(id) else { return };
    if FORGET_RETRIES.fetch_add(1, Ordering::Relaxed) == 0 {
        eprintln!("forget {}: {e} (removing it again)", id.as_str());
    }
    let dir = c.layout().container_meta(id);
    for _ in 0..50 {
        match fs::remove_dir_all(&dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => return,
        }
    }
    eprintln!("forget {}: {} left", id.as_str(), dir.display());
}

static FORGET_RETRIES: AtomicUsize = AtomicUsize::new(0);

/// Writes a status stream per container (task launched by framework `bench`, RUNNING in
/// `ids`' container), as the daemon's launch would have.
fn track_as_daemon_tasks(c: &Containerizer, ids: &[ContainerId]) {
    let status =
        cairn_agent::status::StatusUpdateManager::open(c.layout().meta().join("status")).unwrap();
    for id in ids {
        let task = c.record(id).unwrap().task_id;
        let info: cairn_api::v1::mesos::TaskInfo = serde_json::from_value(serde_json::json!({
            "name": task.as_str(),
            "task_id": {"value": task.as_str()},
            "agent_id": {"value": "bench"},
            "resources": [],
        }))
        .unwrap();
        status
            .track(cairn_api::FrameworkId::new("bench"), info)
            .unwrap();
        status
            .record(&task, Some(id), TaskState::Running, None, "")
            .unwrap();
    }
}

fn kill_all(c: &Containerizer, ids: &[ContainerId]) -> Vec<Termination> {
    for id in ids {
        let _ = c.kill(id, KILL_GRACE);
    }
    ids.iter()
        .filter_map(|id| {
            let t = c.wait(id).ok()?;
            forget(c, id);
            Some(t)
        })
        .collect()
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("agent bench: skipped (needs root for cgroups, mounts and namespaces)");
        return;
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let sleepers: usize = args.iter().find_map(|a| a.parse().ok()).unwrap_or(1000);
    let b = Bench::new();
    // `--short-only N`: just N short host-filesystem tasks, for profiling that part.
    if let Some(i) = args.iter().position(|a| a == "--short-only") {
        let n = args
            .get(i + 1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(SHORT_TASKS);
        let (c, _) = Containerizer::start(b.config.clone()).unwrap();
        let (took, ok) = run_short(&c, n, &|i| {
            b.request(&format!("short-{i}"), false, &["/bin/true"])
        });
        println!(
            "{n} tasks (host filesystem, /bin/true), {CONCURRENCY} in flight: {:.2} s, {:.0} tasks/s, {ok} finished",
            took.as_secs_f64(),
            n as f64 / took.as_secs_f64()
        );
        return;
    }
    // `--sleep-only N`: just N sleeping tasks, with the time each tenth took, then killed.
    if let Some(i) = args.iter().position(|a| a == "--sleep-only") {
        let n = args
            .get(i + 1)
            .and_then(|a| a.parse().ok())
            .unwrap_or(SHORT_TASKS);
        let (c, _) = Containerizer::start(b.config.clone()).unwrap();
        let mut ids = Vec::new();
        let start = Instant::now();
        for tenth in 0..10 {
            let t = Instant::now();
            let (mut part, _) = launch_sleepers(&b, &c, n / 10, tenth * (n / 10));
            println!(
                "sleepers {}..{}: {:.2} s",
                ids.len(),
                ids.len() + part.len(),
                t.elapsed().as_secs_f64()
            );
            ids.append(&mut part);
        }
        println!(
            "{} sleeping tasks launched in {:.2} s",
            ids.len(),
            start.elapsed().as_secs_f64()
        );
        kill_all(&c, &ids);
        return;
    }
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut row = |name: &str, value: String| {
        println!("{name:<58} {value}");
        rows.push((name.to_string(), value));
    };

    // 1. The daemon, idle: fresh work dir, a master that refuses connections.
    let idle_dir = b.dir.path().join("idle");
    fs::create_dir_all(&idle_dir).unwrap();
    let agent = b.agent(&idle_dir, &b.dir.path().join("idle.log"));
    let idle = settled_rss(&agent, Duration::from_secs(5));
    stop(agent);
    row("agent daemon idle RSS (VmRSS, 5 s after start)", mib(idle));

    // 2. Launch-to-RUNNING of the cached image: `launch` returns once the task runs.
    let (c, _) = Containerizer::start(b.config.clone()).unwrap();
    let events = c.subscribe();
    let mut latencies = Vec::new();
    for i in 0..LATENCY_RUNS + 3 {
        let req = b.request(&format!("lat-{i}"), true, &["sleep", "3600"]);
        let start = Instant::now();
        let id = c.launch(&req);
        let took = start.elapsed();
        let running = events.try_iter().any(|e| {
            matches!(e, cairn_agent::containerizer::Event::Task { ref container, state: TaskState::Running, .. } if *container == id)
        });
        assert!(
            running,
            "lat-{i} did not reach TASK_RUNNING: {:?}",
            c.termination(&id)
        );
        if i >= 3 {
            latencies.push(took);
        }
        kill_all(&c, &[id]);
    }
    drop(events);
    latencies.sort();
    row(
        &format!("launch-to-RUNNING, cached busybox, {LATENCY_RUNS} runs: median"),
        ms(percentile(&latencies, 0.5)),
    );
    row("launch-to-RUNNING: p99", ms(percentile(&latencies, 0.99)));

    // 3. 1000 short tasks, CONCURRENCY launches in flight.
    for (label, image, argv) in [
        ("host filesystem, /bin/true", false, ["/bin/true"]),
        ("cached busybox image, true", true, ["true"]),
    ] {
        let (took, ok) = run_short(&c, SHORT_TASKS, &|i| {
            b.request(&format!("short-{i}"), image, &argv)
        });
        row(
            &format!("{SHORT_TASKS} tasks ({label}), {CONCURRENCY} in flight"),
            format!(
                "{:.2} s, {:.0} tasks/s, {ok} finished",
                took.as_secs_f64(),
                SHORT_TASKS as f64 / took.as_secs_f64()
            ),
        );
    }

    // 4. N sleeping tasks: supervisor memory, then the daemon's RSS once it recovered them.
    let (ids, took) = launch_sleepers(&b, &c, sleepers, 0);
    let running: Vec<_> = ids
        .iter()
        .filter(|id| c.termination(id).is_none())
        .cloned()
        .collect();
    row(
        &format!("{sleepers} sleeping tasks (cached image) launched"),
        format!("{:.2} s, {} running", took.as_secs_f64(), running.len()),
    );
    let mut private: Vec<u64> = running
        .iter()
        .filter_map(|id| c.record(id)?.supervisor)
        .filter_map(|p| private_kb(p.pid))
        .collect();
    private.sort_unstable();
    if !private.is_empty() {
        row(
            "supervisor private memory (Private_Clean+Dirty), median",
            format!(
                "{} kB (min {} kB, max {} kB, {} supervisors)",
                private[private.len() / 2],
                private[0],
                private[private.len() - 1],
                private.len()
            ),
        );
    }
    row(
        &format!(
            "benchmark process (in-process containerizer) RSS, {} tasks",
            running.len()
        ),
        mib(status_kb(std::process::id(), "VmRSS:").unwrap_or(0)),
    );
    // Hand the running containers to the daemon (as an agent restart does), with the status
    // streams a daemon would have made for them: without one a container is an orphan, and
    // the daemon destroys it on recovery.
    track_as_daemon_tasks(&c, &running);
    drop(c);
    let log = b.dir.path().join("loaded.log");
    let agent = b.agent(&b.config.work_dir, &log);
    let loaded = settled_rss(&agent, Duration::from_secs(10));
    let recovered = fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains("recovered"))
        .map(str::to_string)
        .unwrap_or_default();
    stop(agent);
    row(
        &format!(
            "agent daemon RSS with {} running tasks (recovered)",
            running.len()
        ),
        mib(loaded),
    );
    println!("  daemon log: {}", recovered.trim());

    // Take them back and end them.
    let (c, _) = Containerizer::start(b.config.clone()).unwrap();
    let left = c.containers();
    let ended = kill_all(&c, &left);
    println!("  cleanup: {} containers killed", ended.len());
    drop(c);

    println!(
        "  forget retries (ENOTEMPTY race): {}",
        FORGET_RETRIES.load(Ordering::Relaxed)
    );
    println!("\n| measurement | value |\n|---|---|");
    for (name, value) in &rows {
        println!("| {name} | {value} |");
    }
}
