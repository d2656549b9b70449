//! The agent daemon end to end: a real `cairn-agent` process against a minimal test driver
//! that speaks the agent protocol as the master side (issue 5 allows it until the master
//! exists): it accepts REGISTER/REREGISTER, serves the RecordIO event stream, sends LAUNCH and
//! KILL, records every status update and acknowledges it. Needs root for the containers; the
//! config test does not.
#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{BufRead, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_api::protocol::{
    AcknowledgeUpdate, AgentCall, AgentCallType, AgentEvent, LaunchTasks, Registered,
};
use cairn_api::v1::mesos::{MasterInfo, TaskInfo, TaskStatus};
use cairn_api::{AgentId, FrameworkId, Resources, TaskId, TaskState};
use cairn_testsupport::cgroups::CgroupParent;
use cairn_testsupport::images::TestImages;
use cairn_testsupport::require_root;

const AGENT: &str = env!("CARGO_BIN_EXE_cairn-agent");

// ---------------------------------------------------------------------------------------
// The test driver: the master side of the agent protocol over plain HTTP/1.1.

#[derive(Debug, Clone)]
struct Update {
    status: TaskStatus,
}

#[derive(Default)]
struct DriverState {
    /// (call type, agent id sent, number of tasks reported).
    registrations: Vec<(AgentCallType, Option<String>, usize)>,
    /// Every STATUS_UPDATE received, resends included.
    updates: Vec<Update>,
    stream: Option<Sender<AgentEvent>>,
    heartbeats: usize,
    /// Leave the first delivery of every update unacknowledged (to see it resent).
    drop_first: bool,
}

#[derive(Clone)]
struct Driver {
    state: Arc<Mutex<DriverState>>,
    port: u16,
}

fn read_request(sock: &mut TcpStream) -> Option<Vec<u8>> {
    let mut reader = std::io::BufReader::new(sock.try_clone().ok()?);
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse().ok()?;
            }
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    Some(body)
}

fn respond(sock: &mut TcpStream, status: &str, body: &[u8]) {
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = sock.write_all(head.as_bytes());
    let _ = sock.write_all(body);
}

fn chunk(sock: &mut TcpStream, event: &AgentEvent) -> std::io::Result<()> {
    let record = cairn_api::recordio::encode(&serde_json::to_vec(event).unwrap());
    write!(sock, "{:x}\r\n", record.len())?;
    sock.write_all(&record)?;
    sock.write_all(b"\r\n")?;
    sock.flush()
}

impl Driver {
    fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let driver = Self {
            state: Arc::default(),
            port,
        };
        let d = driver.clone();
        std::thread::spawn(move || {
            for sock in listener.incoming().flatten() {
                let d = d.clone();
                std::thread::spawn(move || d.serve(sock));
            }
        });
        driver
    }

    fn serve(&self, mut sock: TcpStream) {
        let Some(body) = read_request(&mut sock) else {
            return;
        };
        let call: AgentCall = serde_json::from_slice(&body).unwrap();
        call.validate().unwrap();
        match call.kind {
            AgentCallType::Register | AgentCallType::Reregister => {
                let tasks = call.register.as_ref().map_or(0, |r| r.tasks.len());
                let id = call
                    .agent_id
                    .clone()
                    .unwrap_or_else(|| AgentId::new("agent-1"));
                self.state.lock().unwrap().registrations.push((
                    call.kind,
                    call.agent_id.map(|a| a.as_str().to_string()),
                    tasks,
                ));
                let answer = Registered {
                    agent_id: id,
                    master_info: MasterInfo {
                        id: "test-driver".into(),
                        ip: 16_777_343,
                        port: self.port,
                        pid: None,
                        hostname: None,
                        version: None,
                        address: None,
                    },
                    heartbeat_interval_seconds: 1.0,
                };
                respond(&mut sock, "200 OK", &serde_json::to_vec(&answer).unwrap());
            }
            AgentCallType::Subscribe => {
                let head = "HTTP/1.1 200 OK\r\nContent-Type: application/recordio\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n";
                if sock.write_all(head.as_bytes()).is_err() {
                    return;
                }
                let (tx, rx) = mpsc::channel();
                self.state.lock().unwrap().stream = Some(tx);
                for event in rx {
                    if chunk(&mut sock, &event).is_err() {
                        return;
                    }
                }
            }
            AgentCallType::StatusUpdate => {
                let update = call.status_update.unwrap();
                let mut s = self.state.lock().unwrap();
                let first = !s
                    .updates
                    .iter()
                    .any(|u| u.status.uuid == update.status.uuid);
                s.updates.push(Update {
                    status: update.status.clone(),
                });
                if first && s.drop_first {
                    drop(s);
                    respond(&mut sock, "202 Accepted", b"");
                    return;
                }
                // Acknowledge at once, as a framework would.
                if let Some(tx) = &s.stream {
                    let _ = tx.send(AgentEvent::acknowledge(AcknowledgeUpdate {
                        framework_id: update.framework_id,
                        task_id: update.status.task_id.clone(),
                        uuid: update.status.uuid.clone().unwrap(),
                    }));
                }
                drop(s);
                respond(&mut sock, "202 Accepted", b"");
            }
            AgentCallType::Heartbeat => {
                self.state.lock().unwrap().heartbeats += 1;
                respond(&mut sock, "202 Accepted", b"");
            }
            AgentCallType::UpdateResources => respond(&mut sock, "202 Accepted", b""),
        }
    }

    fn send(&self, event: AgentEvent) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(tx) = &self.state.lock().unwrap().stream {
                if tx.send(event.clone()).is_ok() {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "the agent never subscribed");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn forget_stream(&self) {
        self.state.lock().unwrap().stream = None;
    }

    /// The distinct updates (by uuid) of each task, in the order first received.
    fn distinct(&self) -> BTreeMap<String, Vec<TaskStatus>> {
        let s = self.state.lock().unwrap();
        let mut out: BTreeMap<String, Vec<TaskStatus>> = BTreeMap::new();
        for u in &s.updates {
            let list = out
                .entry(u.status.task_id.as_str().to_string())
                .or_default();
            if !list.iter().any(|x| x.uuid == u.status.uuid) {
                list.push(u.status.clone());
            }
        }
        out
    }

    fn wait_for(&self, what: &str, timeout: Duration, f: impl Fn(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !f(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}: {:#?}",
                self.distinct()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn latest(&self, task: &str) -> Option<TaskState> {
        self.distinct()
            .get(task)
            .and_then(|l| l.last())
            .map(|s| s.state)
    }
}

// ---------------------------------------------------------------------------------------
// Fixture: a cgroup parent below ours (as the containerizer tests do), a work dir with the
// busybox image imported, and the agent process.

struct AgentProcess {
    child: Child,
}

impl AgentProcess {
    fn start(config: &Path, log: &Path) -> Self {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap();
        let child = Command::new(AGENT)
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child }
    }

    fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn terminate(&mut self) -> std::process::ExitStatus {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap()),
            nix::sys::signal::Signal::SIGTERM,
        )
        .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "the agent ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.kill9();
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn task(id: &str, image: &str, script: &str, mem: f64) -> TaskInfo {
    let resources = Resources::new()
        .with_scalar("cpus", 0.05)
        .unwrap()
        .with_scalar("mem", mem)
        .unwrap();
    serde_json::from_value(serde_json::json!({
        "name": id,
        "task_id": {"value": id},
        "agent_id": {"value": "agent-1"},
        "resources": resources.to_wire(),
        "command": {"shell": true, "value": script},
        "container": {"type": "MESOS", "mesos": {"image": {"type": "DOCKER", "docker": {"name": image}}}},
        "kill_policy": {"grace_period": {"nanoseconds": 100_000_000}},
    }))
    .unwrap()
}

/// [`task`] also asking for `ports` (an inclusive range).
fn task_with_ports(id: &str, image: &str, script: &str, ports: (u64, u64)) -> TaskInfo {
    let mut t = task(id, image, script, 16.0);
    let resources = Resources::from_wire(&t.resources)
        .unwrap()
        .with_ranges(
            "ports",
            &[cairn_api::resources::Range {
                begin: ports.0,
                end: ports.1,
            }],
        )
        .unwrap();
    t.resources = resources.to_wire();
    t
}

fn launch(driver: &Driver, tasks: Vec<TaskInfo>) {
    driver.send(AgentEvent::launch(LaunchTasks {
        framework_id: FrameworkId::new("fw"),
        framework_info: serde_json::from_value(serde_json::json!({"user": "root", "name": "test"}))
            .unwrap(),
        tasks,
        group: false,
    }));
}

/// The container id a status names.
fn container_of(driver: &Driver, task: &str) -> String {
    driver.distinct()[task]
        .iter()
        .find_map(|s| s.container_status.as_ref()?.container_id.clone())
        .unwrap()
        .as_str()
        .to_string()
}

fn init_pid(work: &Path, container: &str) -> u32 {
    let v: serde_json::Value = serde_json::from_slice(
        &fs::read(work.join(format!("meta/containers/{container}/container.json"))).unwrap(),
    )
    .unwrap();
    u32::try_from(v["init"]["pid"].as_u64().unwrap()).unwrap()
}

/// No task got two distinct updates (uuids) for the same state, and the states per task
/// are exactly `expected`.
fn assert_exact(driver: &Driver, expected: &HashMap<String, Vec<TaskState>>) {
    let got = driver.distinct();
    for (task, states) in expected {
        let seen: Vec<TaskState> = got
            .get(task)
            .map(|l| l.iter().map(|s| s.state).collect())
            .unwrap_or_default();
        assert_eq!(&seen, states, "task {task}: {:#?}", got.get(task));
    }
}

/// Everything one scenario needs; fields drop in order (agent, then cgroups, then the dir).
struct Setup {
    agent: AgentProcess,
    driver: Driver,
    _cgroups: CgroupParent,
    image: String,
    work: PathBuf,
    config: PathBuf,
    log: PathBuf,
    /// The agent's HTTP API port.
    port: u16,
    _dir: tempfile::TempDir,
}

static SERIAL: Mutex<()> = Mutex::new(());

impl Setup {
    fn new(name: &str, extra_config: &str) -> Self {
        let images = TestImages::get();
        let dir = tempfile::Builder::new()
            .prefix(&format!("cairn-daemon-{name}-"))
            .tempdir()
            .unwrap();
        let cgroups = CgroupParent::new(name);
        let work = dir.path().join("work");
        let store = cairn_oci::store::Store::open(work.join("images")).unwrap();
        let image = cairn_oci::import::import_docker_archive(&store, &images.docker_archive, None)
            .unwrap()[0]
            .reference
            .to_string();
        drop(store);
        let driver = Driver::start();
        let config = dir.path().join("agent.toml");
        let port = free_port();
        fs::write(
            &config,
            format!(
                "work_dir = {work:?}\nmaster = \"127.0.0.1:{}\"\ncgroup_parent = {:?}\n\
                 listen_ip = \"127.0.0.1\"\nport = {port}\nheartbeat_interval = 1.0\n\
                 registration_backoff = 0.2\nresources = \"cpus:8;mem:4096;disk:4096\"\n\
                 {pulls}{extra_config}",
                driver.port,
                cgroups.path.to_string_lossy(),
                // Hermetic unless a scenario configures pulls: an image missing from the
                // store fails at once instead of being looked up on Docker Hub.
                pulls = if extra_config.contains("image_pulls") {
                    ""
                } else {
                    "image_pulls = false\n"
                },
            ),
        )
        .unwrap();
        let log = dir.path().join("agent.log");
        let agent = AgentProcess::start(&config, &log);
        Self {
            agent,
            driver,
            _cgroups: cgroups,
            image,
            work,
            config,
            log,
            port,
            _dir: dir,
        }
    }

    /// The agent's `/state`.
    fn state(&self) -> serde_json::Value {
        let url = format!("http://127.0.0.1:{}/state", self.port);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match ureq::get(&url).call() {
                Ok(mut r) => {
                    return serde_json::from_str(&r.body_mut().read_to_string().unwrap()).unwrap()
                }
                Err(e) => {
                    assert!(Instant::now() < deadline, "GET {url}: {e}: {}", self.log());
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
    }

    fn restart(&mut self) {
        self.agent = AgentProcess::start(&self.config, &self.log);
    }

    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until every status stream ended (its terminal update acknowledged).
    fn wait_streams_done(&self) {
        let streams = self.work.join("meta/status");
        let deadline = Instant::now() + Duration::from_secs(10);
        while fs::read_dir(&streams).unwrap().count() > 0 {
            assert!(Instant::now() < deadline, "streams left: {}", self.log());
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

#[test]
fn tasks_run_survive_a_kill_9_and_every_update_arrives_once() {
    if !require_root("daemon_tasks") {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut setup = Setup::new("tasks", "");
    let (driver, image, work) = (
        setup.driver.clone(),
        setup.image.clone(),
        setup.work.clone(),
    );

    // 1. Eight tasks run and finish; each update is acknowledged.
    let short: Vec<String> = (0..8).map(|i| format!("short-{i}")).collect();
    launch(
        &driver,
        short
            .iter()
            .map(|id| task(id, &image, "sleep 0.5; echo hello", 16.0))
            .collect(),
    );
    // One asking for more than the agent has; one asking for a port another task holds
    // (launched together, so the first still runs), one for a port outside the agent's.
    launch(&driver, vec![task("greedy", &image, "true", 1_000_000.0)]);
    launch(
        &driver,
        vec![
            task_with_ports("port-a", &image, "sleep 1", (31000, 31001)),
            task_with_ports("port-b", &image, "true", (31001, 31001)),
            task_with_ports("port-80", &image, "true", (80, 80)),
        ],
    );
    let refused = ["greedy", "port-b", "port-80"];
    driver.wait_for("9 FINISHED and 3 ERROR", Duration::from_secs(120), |d| {
        short
            .iter()
            .chain(std::iter::once(&"port-a".to_string()))
            .all(|t| d.latest(t) == Some(TaskState::Finished))
            && refused
                .iter()
                .all(|t| d.latest(t) == Some(TaskState::Error))
    });
    for (id, why) in [
        ("greedy", "more than the agent has free"),
        ("port-b", "ports [31001-31001] are held by another task"),
        (
            "port-80",
            "ports [80-80] are not all within the agent's ports [31000-32000]",
        ),
    ] {
        let update = &driver.distinct()[id][0];
        assert!(
            update.message.as_deref().unwrap_or("").contains(why),
            "{id}: {update:?}"
        );
    }
    let mut expected: HashMap<String, Vec<TaskState>> = short
        .iter()
        .map(|t| {
            (
                t.clone(),
                vec![TaskState::Starting, TaskState::Running, TaskState::Finished],
            )
        })
        .collect();
    for id in refused {
        expected.insert(id.into(), vec![TaskState::Error]);
    }
    expected.insert(
        "port-a".into(),
        vec![TaskState::Starting, TaskState::Running, TaskState::Finished],
    );
    assert_exact(&driver, &expected);
    // Acknowledged terminal updates end their streams.
    setup.wait_streams_done();

    // 2. Six tasks running; kill -9 the agent; three exit while it is down.
    let long: Vec<String> = (0..3).map(|i| format!("long-{i}")).collect();
    let exiting: Vec<String> = (0..3).map(|i| format!("exiting-{i}")).collect();
    let mut batch: Vec<TaskInfo> = long
        .iter()
        .map(|id| task(id, &image, "sleep 3600", 16.0))
        .collect();
    for (i, id) in exiting.iter().enumerate() {
        let code = 3 + i;
        batch.push(task(
            id,
            &image,
            &format!("while [ ! -e \"$MESOS_SANDBOX/go\" ]; do sleep 0.1; done; exit {code}"),
            16.0,
        ));
    }
    launch(&driver, batch);
    driver.wait_for("6 RUNNING", Duration::from_secs(120), |d| {
        long.iter()
            .chain(&exiting)
            .all(|t| d.latest(t) == Some(TaskState::Running))
    });
    let pids: HashMap<String, u32> = long
        .iter()
        .map(|t| (t.clone(), init_pid(&work, &container_of(&driver, t))))
        .collect();
    setup.agent.kill9();
    driver.forget_stream();
    for t in &exiting {
        let c = container_of(&driver, t);
        fs::write(work.join(format!("sandboxes/{c}/go")), b"").unwrap();
    }
    for t in &exiting {
        let exit = work.join(format!(
            "meta/containers/{}/exit.json",
            container_of(&driver, t)
        ));
        let deadline = Instant::now() + Duration::from_secs(30);
        while !exit.exists() {
            assert!(Instant::now() < deadline, "{t} did not exit");
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    setup.restart();
    driver.wait_for("the exits reported", Duration::from_secs(60), |d| {
        exiting
            .iter()
            .all(|t| d.latest(t) == Some(TaskState::Failed))
    });
    {
        let s = driver.state.lock().unwrap();
        let last = s.registrations.last().unwrap();
        assert_eq!(last.0, AgentCallType::Reregister, "{:?}", s.registrations);
        assert_eq!(last.1.as_deref(), Some("agent-1"));
        assert_eq!(last.2, 6, "reregistration lists every task");
        assert!(s.heartbeats > 0);
    }
    for (i, t) in exiting.iter().enumerate() {
        let failed = driver.distinct()[t].last().unwrap().clone();
        assert_eq!(
            failed.message.as_deref(),
            Some(format!("command exited with status {}", 3 + i).as_str()),
            "{failed:?}"
        );
    }
    for (t, pid) in &pids {
        assert_eq!(driver.latest(t), Some(TaskState::Running));
        assert!(Path::new(&format!("/proc/{pid}")).exists(), "{t} died");
        assert_eq!(init_pid(&work, &container_of(&driver, t)), *pid);
    }

    // 3. Kill the long ones; then stop the agent (default: containers would stay).
    for t in &long {
        driver.send(AgentEvent::kill(
            FrameworkId::new("fw"),
            TaskId::new(t.as_str()),
        ));
    }
    driver.wait_for("3 KILLED", Duration::from_secs(60), |d| {
        long.iter().all(|t| d.latest(t) == Some(TaskState::Killed))
    });
    for t in &long {
        expected.insert(
            t.clone(),
            vec![
                TaskState::Starting,
                TaskState::Running,
                TaskState::Killing,
                TaskState::Killed,
            ],
        );
    }
    for t in &exiting {
        expected.insert(
            t.clone(),
            vec![TaskState::Starting, TaskState::Running, TaskState::Failed],
        );
    }
    setup.wait_streams_done();
    // No update lost, none duplicated (by uuid), in order per task.
    assert_exact(&driver, &expected);
    assert!(setup.agent.terminate().success(), "{}", setup.log());
}

#[test]
fn sigterm_leaves_tasks_running_drain_kills_them_and_a_lost_master_is_rejoined() {
    if !require_root("daemon_sigterm") {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut setup = Setup::new("sigterm", "");
    let (driver, image) = (setup.driver.clone(), setup.image.clone());
    launch(
        &driver,
        vec![
            task("stays", &image, "sleep 3600", 16.0),
            task("no-image", "cairn-test/does-not-exist:1", "true", 16.0),
        ],
    );
    driver.wait_for(
        "RUNNING and a failed launch",
        Duration::from_secs(60),
        |d| {
            d.latest("stays") == Some(TaskState::Running)
                && d.latest("no-image").is_some_and(TaskState::is_terminal)
        },
    );
    let failed = driver.distinct()["no-image"].last().unwrap().clone();
    assert_eq!(failed.state, TaskState::Failed, "{failed:?}");
    assert_eq!(
        failed.reason,
        Some(cairn_api::Reason::ContainerLaunchFailed)
    );
    let pid = init_pid(&setup.work, &container_of(&driver, "stays"));

    // The master goes away (the stream closes): the agent reregisters with its id.
    let before = driver.state.lock().unwrap().registrations.len();
    driver.forget_stream();
    driver.wait_for("a reregistration", Duration::from_secs(30), |d| {
        d.state.lock().unwrap().registrations.len() > before
    });
    assert_eq!(
        driver.state.lock().unwrap().registrations.last().unwrap().0,
        AgentCallType::Reregister
    );

    // Default SIGTERM: the task keeps running.
    assert!(setup.agent.terminate().success(), "{}", setup.log());
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        Path::new(&format!("/proc/{pid}")).exists(),
        "SIGTERM killed the task"
    );

    // With drain: SIGTERM kills it gracefully first, and the update is delivered.
    let text = fs::read_to_string(&setup.config).unwrap();
    fs::write(&setup.config, format!("{text}drain_on_sigterm = true\n")).unwrap();
    driver.forget_stream();
    setup.restart();
    driver.wait_for("the agent back", Duration::from_secs(30), |d| {
        d.state.lock().unwrap().stream.is_some()
    });
    assert!(setup.agent.terminate().success(), "{}", setup.log());
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "drain left the task"
    );
    assert_eq!(
        driver.latest("stays"),
        Some(TaskState::Killed),
        "{}",
        setup.log()
    );
    assert_exact(
        &driver,
        &HashMap::from([(
            "stays".to_string(),
            vec![
                TaskState::Starting,
                TaskState::Running,
                TaskState::Killing,
                TaskState::Killed,
            ],
        )]),
    );
}

#[test]
fn an_unacknowledged_update_is_resent_and_the_next_waits_for_its_ack() {
    if !require_root("daemon_resend") {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let setup = Setup::new("resend", "status_update_retry = 0.3\n");
    let (driver, image) = (setup.driver.clone(), setup.image.clone());
    driver.state.lock().unwrap().drop_first = true;
    launch(&driver, vec![task("resent", &image, "true", 16.0)]);
    driver.wait_for("FINISHED", Duration::from_secs(60), |d| {
        d.latest("resent") == Some(TaskState::Finished)
    });
    setup.wait_streams_done();
    assert_exact(
        &driver,
        &HashMap::from([(
            "resent".to_string(),
            vec![TaskState::Starting, TaskState::Running, TaskState::Finished],
        )]),
    );
    // Each update arrived at least twice (the first delivery went unacknowledged), and the
    // next one only after the previous was delivered again (and so acknowledged).
    let arrivals: Vec<String> = driver
        .state
        .lock()
        .unwrap()
        .updates
        .iter()
        .map(|u| u.status.uuid.clone().unwrap())
        .collect();
    let mut order: Vec<&String> = Vec::new();
    for uuid in &arrivals {
        if order.last() != Some(&uuid) {
            assert!(!order.contains(&uuid), "out of order: {arrivals:?}");
            order.push(uuid);
        }
    }
    assert_eq!(order.len(), 3, "{arrivals:?}");
    for uuid in order {
        assert!(
            arrivals.iter().filter(|u| *u == uuid).count() >= 2,
            "{arrivals:?}"
        );
    }
}

/// `(framework id, task id)` of every task `/state` lists as running.
fn running_tasks(state: &serde_json::Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for fw in state["frameworks"].as_array().unwrap() {
        for ex in fw["executors"].as_array().unwrap() {
            for t in ex["tasks"].as_array().unwrap() {
                assert_eq!(t["framework_id"], fw["id"], "{t}");
                out.push((
                    fw["id"].as_str().unwrap().to_string(),
                    t["id"].as_str().unwrap().to_string(),
                ));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn the_disk_settings_reach_the_disk_isolator() {
    if !require_root("daemon_disk") {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    // disk/du with a 1 s watch interval instead of the default 15 s.
    let setup = Setup::new(
        "disk",
        "isolation = [\"cgroups/cpu\", \"cgroups/mem\", \"cgroups/pids\", \"disk/du\"]\n\
         [isolators.disk]\nwatch_interval_secs = 1\n",
    );
    let (driver, image) = (setup.driver.clone(), setup.image.clone());
    let mut filler = task(
        "filler",
        &image,
        "dd if=/dev/zero of=\"$MESOS_SANDBOX/fill\" bs=1048576 count=30; sleep 3600",
        16.0,
    );
    filler.resources = Resources::from_wire(&filler.resources)
        .unwrap()
        .with_scalar("disk", 10.0)
        .unwrap()
        .to_wire();
    let launched = Instant::now();
    launch(&driver, vec![filler]);
    driver.wait_for("the filler FAILED", Duration::from_secs(60), |d| {
        d.latest("filler").is_some_and(TaskState::is_terminal)
    });
    let took = launched.elapsed();
    let failed = driver.distinct()["filler"].last().unwrap().clone();
    assert_eq!(failed.state, TaskState::Failed, "{failed:?}");
    assert_eq!(
        failed.reason,
        Some(cairn_api::Reason::ContainerLimitationDisk),
        "{failed:?}"
    );
    // The first check of a container comes one watch interval after its launch: with the
    // default (15 s) it could not have ended this soon. Not a speed assertion: the margin to
    // the 1 s interval is the whole of 11 s.
    assert!(
        took < Duration::from_secs(12),
        "killed after {took:?}: the configured 1 s watch interval was not used\n{}",
        setup.log()
    );
    setup.wait_streams_done();
}

/// Launches `sleep 3600` in a container of `setup`'s work directory behind the (stopped)
/// agent's back, as if it had died after launching a task but before checkpointing it;
/// returns the container id and its init pid.
fn launch_behind_the_agents_back(setup: &Setup) -> (String, u32) {
    let mut config = cairn_agent::containerizer::ContainerizerConfig::new(&setup.work);
    config.supervisor = PathBuf::from(env!("CARGO_BIN_EXE_cairn-supervisor"));
    config.cgroups.parent = setup._cgroups.path.to_string_lossy().into_owned();
    let (containerizer, _) = cairn_agent::containerizer::Containerizer::start(config).unwrap();
    let resources = Resources::new()
        .with_scalar("cpus", 0.05)
        .unwrap()
        .with_scalar("mem", 16.0)
        .unwrap();
    let mut request = cairn_agent::containerizer::LaunchRequest::new("orphan", resources);
    request.image = Some(setup.image.clone());
    request.command = Some(cairn_agent::containerizer::TaskCommand::Shell(
        "sleep 3600".into(),
    ));
    let id = containerizer.launch(&request);
    assert!(
        containerizer.termination(&id).is_none(),
        "{:?}",
        containerizer.termination(&id)
    );
    // Dropping the containerizer leaves the container running under its supervisor.
    drop(containerizer);
    let id = id.as_str().to_string();
    let pid = init_pid(&setup.work, &id);
    (id, pid)
}

#[test]
fn recovery_destroys_containers_no_task_knows_and_state_keeps_frameworks() {
    if !require_root("daemon_orphans") {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut setup = Setup::new("orphans", "");
    let (driver, image, work) = (
        setup.driver.clone(),
        setup.image.clone(),
        setup.work.clone(),
    );
    launch(&driver, vec![task("kept", &image, "sleep 3600", 16.0)]);
    driver.wait_for("kept RUNNING", Duration::from_secs(60), |d| {
        d.latest("kept") == Some(TaskState::Running)
    });
    let kept = container_of(&driver, "kept");
    let kept_pid = init_pid(&work, &kept);
    // `/state` files the task under the framework that launched it.
    let expected = vec![("fw".to_string(), "kept".to_string())];
    assert_eq!(running_tasks(&setup.state()), expected);

    setup.agent.kill9();
    driver.forget_stream();
    let (orphan, orphan_pid) = launch_behind_the_agents_back(&setup);
    assert!(Path::new(&format!("/proc/{orphan_pid}")).exists());

    setup.restart();
    driver.wait_for("the agent back", Duration::from_secs(30), |d| {
        d.state.lock().unwrap().stream.is_some()
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let orphan_meta = work.join(format!("meta/containers/{orphan}"));
    while Path::new(&format!("/proc/{orphan_pid}")).exists() || orphan_meta.exists() {
        assert!(
            Instant::now() < deadline,
            "the orphan {orphan} (pid {orphan_pid}) was left: {}",
            setup.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(setup.log().contains("destroying an orphan container"));
    // The known task is untouched, still under its framework after the restart; the orphan
    // was never reported to the master.
    assert!(
        Path::new(&format!("/proc/{kept_pid}")).exists(),
        "kept died"
    );
    assert_eq!(init_pid(&work, &kept), kept_pid);
    assert_eq!(running_tasks(&setup.state()), expected);
    assert!(!driver.distinct().contains_key("orphan"));

    driver.send(AgentEvent::kill(
        FrameworkId::new("fw"),
        TaskId::new("kept"),
    ));
    driver.wait_for("kept KILLED", Duration::from_secs(60), |d| {
        d.latest("kept") == Some(TaskState::Killed)
    });
    setup.wait_streams_done();
    // Acknowledged and its container forgotten, the ended task stays in `/state` as a
    // completed one, under its framework and with its sandbox, so `cairn logs` finds it.
    let state = setup.state();
    let completed: Vec<(String, String, String)> = state["completed_frameworks"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| {
            f["completed_executors"]
                .as_array()
                .unwrap()
                .iter()
                .map(|e| {
                    let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
                    (s(&f["id"]), s(&e["id"]), s(&e["directory"]))
                })
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(
        completed
            .iter()
            .any(|(fw, task, dir)| fw == "fw" && task == "kept" && Path::new(dir).is_dir()),
        "{state:#}"
    );
    assert!(running_tasks(&state).is_empty(), "{state:#}");
    assert!(setup.agent.terminate().success(), "{}", setup.log());
}

/// A self-signed certificate for 127.0.0.1 and its key, as PEM files in `dir`.
fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
        ])
        .args(["-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"])
        .args(["-addext", "subjectAltName=IP:127.0.0.1"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (cert, key)
}

/// `curl` over HTTPS trusting only `ca`: the body, or the error.
fn curl_https(ca: &Path, url: &str) -> Result<String, String> {
    let out = Command::new("curl")
        .args([
            "-sS",
            "--fail",
            "--max-time",
            "5",
            "--noproxy",
            "*",
            "--cacert",
        ])
        .arg(ca)
        .arg(url)
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn the_api_serves_https_with_the_configured_certificate() {
    let test = "daemon_tls";
    if !require_root(test)
        || !cairn_testsupport::require_command(test, "openssl")
        || !cairn_testsupport::require_command(test, "curl")
    {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(certs.path());
    let mut setup = Setup::new("tls", &format!("tls_cert = {cert:?}\ntls_key = {key:?}\n"));
    let base = format!("https://127.0.0.1:{}", setup.port);
    let mut last = Err(String::new());
    let deadline = Instant::now() + Duration::from_secs(30);
    while last.is_err() && Instant::now() < deadline {
        last = curl_https(&cert, &format!("{base}/health"));
        if last.is_err() {
            std::thread::sleep(Duration::from_millis(200));
        }
    }
    assert!(last.is_ok(), "no HTTPS: {last:?}\n{}", setup.log());
    // The same API: `/state` in Mesos's shape, over TLS.
    let state: serde_json::Value =
        serde_json::from_str(&curl_https(&cert, &format!("{base}/slave(1)/state")).unwrap())
            .unwrap();
    assert_eq!(state["version"], "1.11.0", "{state}");
    assert!(setup.log().contains("HTTPS API listening"));
    // Plain HTTP is not served on that port.
    let plain = ureq::get(&format!("http://127.0.0.1:{}/health", setup.port)).call();
    assert!(plain.is_err(), "plain HTTP answered: {plain:?}");
    assert!(setup.agent.terminate().success(), "{}", setup.log());
}

#[test]
fn unusable_tls_files_fail_the_start_naming_the_setting() {
    if !cairn_testsupport::require_command("daemon_tls_files", "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = self_signed(dir.path());
    let garbage = dir.path().join("garbage.pem");
    fs::write(&garbage, "not PEM\n").unwrap();
    let (other_cert, _) = {
        let other = dir.path().join("other");
        fs::create_dir(&other).unwrap();
        self_signed(&other)
    };
    for (cert, key, named) in [
        (&garbage, &key, "`tls_cert`"),
        (&cert, &garbage, "`tls_key`"),
        (&other_cert, &key, "`tls_cert` and `tls_key`"),
        (&dir.path().join("missing.pem"), &key, "`tls_cert`"),
    ] {
        let config = dir.path().join("agent.toml");
        fs::write(
            &config,
            format!(
                "work_dir = {:?}\ntls_cert = {cert:?}\ntls_key = {key:?}\n",
                dir.path().join("work")
            ),
        )
        .unwrap();
        let out = Command::new(AGENT)
            .arg("--config")
            .arg(&config)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {cert:?} {key:?}");
        assert!(stderr.contains(named), "{named} not in: {stderr}");
    }
}

#[test]
fn a_bad_config_key_fails_the_start_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    fs::write(&config, "wrok_dir = \"/tmp/x\"\n").unwrap();
    let out = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("wrok_dir"), "{stderr}");

    fs::write(&config, "port = 0\nheartbeat_interval = -1.0\n").unwrap();
    let out = Command::new(AGENT)
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("heartbeat_interval"));

    // A flag names its own key too, and --help documents the defaults.
    let out = Command::new(AGENT)
        .args(["--config", "/nonexistent/agent.toml"])
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/agent.toml"));
    let help = Command::new(AGENT).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for s in [
        "--work-dir",
        "[default: 5051]",
        "CAIRN_MASTER",
        "--drain-on-sigterm",
        "--disk-watch-interval",
        "TLS",
    ] {
        assert!(help.contains(s), "{s} missing from --help:\n{help}");
    }
}

#[test]
fn an_image_missing_from_the_store_is_pulled_from_its_registry() {
    if !require_root("daemon_pull") {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let registry = cairn_testsupport::registry::Registry::start();
    let pushed = TestImages::get().push_to(&registry, None);
    let setup = Setup::new(
        "pull",
        &format!(
            "image_pulls = true\ninsecure_registries = [{:?}]\n",
            registry.addr()
        ),
    );
    let driver = setup.driver.clone();
    // `multi` (three layers) is only in the registry; the imported image is `latest`.
    let pulled = pushed.multi.reference.clone();
    launch(
        &driver,
        vec![
            task(
                "pulled",
                &pulled,
                "echo pulled-ok > \"$MESOS_SANDBOX/out\"",
                16.0,
            ),
            task(
                "missing",
                &format!("{}/cairn/not-there:1", registry.addr()),
                "true",
                16.0,
            ),
        ],
    );
    driver.wait_for("both tasks ended", Duration::from_secs(120), |d| {
        d.latest("pulled").is_some_and(TaskState::is_terminal)
            && d.latest("missing").is_some_and(TaskState::is_terminal)
    });
    let distinct = driver.distinct();
    let done = distinct["pulled"].last().unwrap();
    assert_eq!(done.state, TaskState::Finished, "{done:?}\n{}", setup.log());
    let missing = distinct["missing"].last().unwrap();
    assert_eq!(missing.state, TaskState::Failed, "{missing:?}");
    assert_eq!(
        missing.reason,
        Some(cairn_api::Reason::ContainerLaunchFailed)
    );
    assert!(
        missing
            .message
            .as_deref()
            .unwrap_or("")
            .contains("not-there"),
        "the failure names the image: {missing:?}"
    );
    // The pulled image is in the agent's store now, next to the imported one.
    let url = format!("http://127.0.0.1:{}/images", setup.port);
    let images: serde_json::Value = serde_json::from_str(
        &ureq::get(&url)
            .call()
            .unwrap()
            .body_mut()
            .read_to_string()
            .unwrap(),
    )
    .unwrap();
    let references: Vec<&str> = images["images"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|i| i["reference"].as_str())
        .collect();
    assert!(references.contains(&pulled.as_str()), "{references:?}");
    assert!(
        registry.log().contains("/v2/cairn/busybox/manifests/multi"),
        "the registry served the pull"
    );
    setup.wait_streams_done();
}

#[test]
fn bad_image_settings_fail_the_start_naming_them() {
    let dir = tempfile::tempdir().unwrap();
    for (file, key) in [
        (
            "insecure_registries = [\"http://r:5000\"]\n",
            "insecure_registries",
        ),
        (
            "docker_config = \"/nonexistent/config.json\"\n",
            "docker_config",
        ),
        ("image_pulls = \"yes\"\n", "image_pulls"),
    ] {
        let config = dir.path().join("agent.toml");
        fs::write(&config, format!("work_dir = {:?}\n{file}", dir.path())).unwrap();
        // --print-capacity: a start that wrongly accepted the file would exit, not serve.
        let out = Command::new(AGENT)
            .arg("--config")
            .arg(&config)
            .arg("--print-capacity")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{file}: started");
        assert!(stderr.contains(key), "{file}: {stderr}");
    }
}

#[test]
fn after_a_host_reboot_the_agent_registers_as_a_new_agent_without_the_old_tasks() {
    if !require_root("daemon_reboot") {
        return;
    }
    let _serial = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut setup = Setup::new("reboot", "");
    let (driver, image, work) = (
        setup.driver.clone(),
        setup.image.clone(),
        setup.work.clone(),
    );
    launch(
        &driver,
        vec![task("before-reboot", &image, "sleep 3600", 16.0)],
    );
    driver.wait_for("RUNNING", Duration::from_secs(60), |d| {
        d.latest("before-reboot") == Some(TaskState::Running)
    });
    let container = container_of(&driver, "before-reboot");
    let record: serde_json::Value = serde_json::from_slice(
        &fs::read(work.join(format!("meta/containers/{container}/container.json"))).unwrap(),
    )
    .unwrap();

    // A reboot, as the agent sees it: it stopped, every process of the last boot is gone,
    // and `/proc/sys/kernel/random/boot_id` differs from the one in its checkpoint.
    assert!(setup.agent.terminate().success(), "{}", setup.log());
    for who in ["supervisor", "init"] {
        let pid = record[who]["pid"].as_i64().unwrap();
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
    let agent_file = work.join("meta/agent.json");
    let mut checkpoint: serde_json::Value =
        serde_json::from_slice(&fs::read(&agent_file).unwrap()).unwrap();
    checkpoint["boot_id"] = "a-previous-boot".into();
    fs::write(&agent_file, serde_json::to_vec(&checkpoint).unwrap()).unwrap();
    let registrations = driver.state.lock().unwrap().registrations.len();
    let updates = driver.distinct()["before-reboot"].len();
    driver.forget_stream();
    setup.restart();

    driver.wait_for("a registration", Duration::from_secs(30), |d| {
        d.state.lock().unwrap().registrations.len() > registrations
    });
    let (kind, id, tasks) = driver
        .state
        .lock()
        .unwrap()
        .registrations
        .last()
        .unwrap()
        .clone();
    assert_eq!(
        (kind, id, tasks),
        (AgentCallType::Register, None, 0),
        "after a reboot the agent must register anew, without an id or tasks: {}",
        setup.log()
    );
    assert!(
        setup.log().contains("the host rebooted since the last run"),
        "{}",
        setup.log()
    );
    // The old boot's task is not reported again, nor listed.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(driver.distinct()["before-reboot"].len(), updates);
    let state = setup.state();
    assert!(
        !state.to_string().contains("before-reboot"),
        "the old boot's task is still listed: {state}"
    );
    assert!(!work.join(format!("meta/containers/{container}")).exists());
}
