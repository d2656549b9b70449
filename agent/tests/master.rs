//! The agent against a real `cairn-master` process: the protocol as the master really speaks
//! it, not the test driver of `daemon.rs`. Needs root (the agent's containerizer and a tmpfs
//! mount) and the master binary built first (`cargo build -p cairn-master`; `cargo test
//! --workspace` builds it).
#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use cairn_testsupport::cgroups::CgroupParent;
use cairn_testsupport::{free_port, require_root, wait_until, Service, ServiceDir};
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_cairn-agent");

/// The `cairn-master` binary next to ours (same target directory and profile).
fn master_binary() -> PathBuf {
    let path = Path::new(AGENT).with_file_name("cairn-master");
    assert!(
        path.is_file(),
        "{} is missing: run `cargo build -p cairn-master` first",
        path.display()
    );
    path
}

fn get_json(url: &str) -> Option<Value> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut resp = agent.get(url).call().ok()?;
    if resp.status().as_u16() != 200 {
        return None;
    }
    serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()
}

struct Master {
    service: Service,
    port: u16,
}

impl Master {
    /// A master on a free port with its own work directory under `dir`; `extra` is appended
    /// to its config (`zk = "zk://..."` for an HA one).
    fn start(dir: &ServiceDir, name: &str, extra: &str) -> Self {
        let port = free_port();
        let work = dir.path().join(name);
        fs::create_dir_all(&work).unwrap();
        let config = work.join("master.toml");
        fs::write(
            &config,
            format!(
                "listen = \"127.0.0.1:{port}\"\nwork_dir = {:?}\nallocation_interval_secs = 0.2\n\
                 agent_heartbeat_secs = 1.0\n{extra}",
                work.join("state"),
            ),
        )
        .unwrap();
        let mut cmd = Command::new(master_binary());
        cmd.arg("--config").arg(&config).env("RUST_LOG", "info");
        let service = Service::spawn(name, cmd, dir.path()).unwrap();
        Self { service, port }
    }

    fn state(&self) -> Option<Value> {
        get_json(&format!("http://127.0.0.1:{}/state", self.port))
    }

    /// The agents this master lists.
    fn agents(&self) -> Vec<Value> {
        self.state()
            .and_then(|s| s["slaves"].as_array().cloned())
            .unwrap_or_default()
    }
}

/// The agent process, its config written under `dir`.
fn start_agent(dir: &ServiceDir, config: &str) -> Service {
    let path = dir.path().join("agent.toml");
    fs::write(&path, config).unwrap();
    let mut cmd = Command::new(AGENT);
    cmd.arg("--config").arg(&path).env("RUST_LOG", "info");
    Service::spawn("cairn-agent", cmd, dir.path()).unwrap()
}

/// The common part of an agent config: work dir, cgroup parent, HTTP port, fast timings.
fn agent_config(work: &Path, cgroups: &CgroupParent, master: &str) -> String {
    format!(
        "work_dir = {work:?}\nmaster = \"{master}\"\ncgroup_parent = {:?}\n\
         listen_ip = \"127.0.0.1\"\nport = {}\nheartbeat_interval = 1.0\n\
         registration_backoff = 0.2\nresources = \"cpus:2;mem:1024\"\n",
        cgroups.path.to_string_lossy(),
        free_port(),
    )
}

/// A tmpfs mounted for the test, unmounted on drop.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size: &str) -> Self {
        fs::create_dir_all(at).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mounting a tmpfs at {}", at.display());
        Self(at.to_path_buf())
    }

    fn resize(&self, size: &str) {
        let ok = Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(&self.0)
            .status()
            .unwrap()
            .success();
        assert!(ok, "resizing the tmpfs at {}", self.0.display());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

fn disk_of(agent: &Value) -> Option<f64> {
    agent["resources"]["disk"].as_f64()
}

#[test]
fn a_remeasured_capacity_reaches_a_real_master() {
    if !require_root("agent_update_resources") {
        return;
    }
    // Drop order (reverse of declaration): agent, master, mount, cgroups, directory.
    let dir = ServiceDir::new("agent-update-resources");
    let cgroups = CgroupParent::new("update-resources");
    let work = dir.path().join("work");
    // The work directory on a 2 GiB tmpfs: the agent's disk is its size, minus 512 MB held
    // back; growing the tmpfs is a capacity change the agent must notice and report.
    let tmpfs = Tmpfs::mount(&work, "2g");
    let master = Master::start(&dir, "master", "");
    let config = format!(
        "{}reservations = \"disk:512\"\nresource_interval = 0.5\n",
        agent_config(&work, &cgroups, &format!("127.0.0.1:{}", master.port))
    );
    let mut agent = start_agent(&dir, &config);

    let mut agents = Vec::new();
    let registered = wait_until(Duration::from_secs(60), || {
        agents = master.agents();
        !agent.is_running() || agents.len() == 1
    });
    assert!(
        registered && agent.is_running(),
        "the agent did not register: {agents:?}\nagent log:\n{}\nmaster log:\n{}",
        agent.log(),
        master.service.log()
    );
    assert_eq!(disk_of(&agents[0]), Some(1536.0), "{}", agents[0]);

    tmpfs.resize("3g");
    let updated = wait_until(Duration::from_secs(60), || {
        agents = master.agents();
        agents.first().and_then(disk_of) == Some(2560.0)
    });
    assert!(
        updated,
        "the master still lists {agents:?}\nagent log:\n{}\nmaster log:\n{}",
        agent.log(),
        master.service.log()
    );
    assert!(agent.log().contains("UPDATE_RESOURCES"), "{}", agent.log());
    // Still the same agent, still active; cpus and mem as configured.
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0]["resources"]["cpus"].as_f64(), Some(2.0));
    assert_eq!(agents[0]["resources"]["mem"].as_f64(), Some(1024.0));
    drop(agent);
    drop(master);
    drop(tmpfs);
    drop(cgroups);
}

/// Whether the master at `port` says it leads.
fn elected(port: u16) -> bool {
    get_json(&format!("http://127.0.0.1:{port}/metrics/snapshot"))
        .is_some_and(|m| m["master/elected"].as_f64() == Some(1.0))
}

#[test]
fn a_zk_agent_registers_with_the_elected_master_and_follows_a_new_leader() {
    let test = "agent_zk_leader";
    if !require_root(test) || !cairn_testsupport::require_command(test, "java") {
        return;
    }
    // Drop order (reverse of declaration): agent, masters, ZooKeeper, cgroups, directory.
    let dir = ServiceDir::new("agent-zk");
    let cgroups = CgroupParent::new("agent-zk");
    let zk = cairn_testsupport::zookeeper::ZooKeeper::standalone();
    let url = format!("zk://{}/cairn/agent-zk", zk.connect_string());
    let master_config = format!("zk = \"{url}\"\nzk_session_timeout_secs = 2.0\n");
    let mut masters: Vec<Master> = (0..2)
        .map(|i| Master::start(&dir, &format!("master-{i}"), &master_config))
        .collect();
    let mut leader = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            leader = masters.iter().position(|m| elected(m.port));
            leader.is_some()
        }),
        "no master was elected:\n{}\n{}",
        masters[0].service.log(),
        masters[1].service.log()
    );
    let first = leader.unwrap();
    let other = 1 - first;

    let work = dir.path().join("work");
    let mut agent = start_agent(&dir, &agent_config(&work, &cgroups, &url));
    // It registers with the leader ZooKeeper names (a follower would only redirect).
    let mut agents = Vec::new();
    let registered = wait_until(Duration::from_secs(60), || {
        agents = masters[first].agents();
        !agent.is_running() || agents.len() == 1
    });
    assert!(
        registered && agent.is_running(),
        "the agent did not register with the leader: {agents:?}\nagent log:\n{}",
        agent.log()
    );
    let id = agents[0]["id"].as_str().unwrap().to_string();
    assert!(
        agent.log().contains("leading master detected"),
        "{}",
        agent.log()
    );

    // The leader dies; ZooKeeper elects the other; the agent reregisters there, same id.
    masters[first].service.kill();
    let followed = wait_until(Duration::from_secs(60), || {
        agents = masters[other].agents();
        agents.len() == 1 && agents[0]["active"] != false
    });
    assert!(
        followed,
        "the agent did not follow the new leader: {agents:?}\nagent log:\n{}\nmaster log:\n{}",
        agent.log(),
        masters[other].service.log()
    );
    assert_eq!(agents[0]["id"].as_str(), Some(id.as_str()), "{agents:?}");
    assert!(elected(masters[other].port));
    drop(agent);
    masters.clear();
    drop(zk);
    drop(cgroups);
}
