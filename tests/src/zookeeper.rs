//! ZooKeeper for tests: a standalone server or an ensemble of real `QuorumPeerMain` JVMs.
//!
//! Each node runs `java … org.apache.zookeeper.server.quorum.QuorumPeerMain zoo.cfg` from
//! Debian's `zookeeper` package, with its own free client, quorum and election ports, its own
//! data directory and `myid`, and its log in the ensemble's [`ServiceDir`]. Readiness is the
//! `srvr` four-letter word answering a `Mode:` line: `ruok` answers `imok` even while a node
//! has no quorum, `srvr` says "not currently serving requests" then.
//!
//! Nodes are indexed from 0; node `i` has `myid` `i + 1` (ZooKeeper server ids start at 1).

use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::ports::free_port;
use crate::service::{wait_until, Service, ServiceDir};

/// Where Debian installs the ZooKeeper jars and their dependencies.
const JAVA_DIR: &str = "/usr/share/java";

/// How long a node may take to come up (JVM start, election) on a loaded 2-core machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times a start is retried on fresh ports when a port was taken meanwhile.
const BIND_ATTEMPTS: usize = 3;

/// The role a node reports in the `Mode:` line of `srvr`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ZkMode {
    /// A single server without an ensemble.
    Standalone,
    /// The ensemble's leader: it orders all writes.
    Leader,
    /// A voting member that follows the leader.
    Follower,
    /// A non-voting member.
    Observer,
}

impl ZkMode {
    fn parse(srvr: &str) -> Option<Self> {
        let mode = srvr
            .lines()
            .find_map(|line| line.strip_prefix("Mode:"))?
            .trim();
        match mode {
            "standalone" => Some(Self::Standalone),
            "leader" => Some(Self::Leader),
            "follower" => Some(Self::Follower),
            "observer" => Some(Self::Observer),
            _ => None,
        }
    }
}

impl fmt::Display for ZkMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Standalone => "standalone",
            Self::Leader => "leader",
            Self::Follower => "follower",
            Self::Observer => "observer",
        })
    }
}

/// Options for starting ZooKeeper; see [`ZooKeeper::builder`].
#[derive(Debug, Clone)]
pub struct ZkBuilder {
    nodes: usize,
    client_address: IpAddr,
    tick_time: Duration,
}

impl Default for ZkBuilder {
    fn default() -> Self {
        Self {
            nodes: 1,
            client_address: IpAddr::V4(Ipv4Addr::LOCALHOST),
            tick_time: Duration::from_millis(200),
        }
    }
}

impl ZkBuilder {
    /// How many nodes: 1 (the default) runs a standalone server, more an ensemble.
    pub fn nodes(mut self, nodes: usize) -> Self {
        assert!(nodes >= 1, "a ZooKeeper needs at least one node");
        self.nodes = nodes;
        self
    }

    /// The address the client ports bind to (`clientPortAddress`), 127.0.0.1 by default: for
    /// example a veth or bridge address on the host that a network namespace can reach. The
    /// quorum and election ports stay on 127.0.0.1. An unspecified address (0.0.0.0, ::) binds
    /// all interfaces and is reached through loopback.
    pub fn client_address(mut self, address: IpAddr) -> Self {
        self.client_address = address;
        self
    }

    /// ZooKeeper's time unit (`tickTime`), 200 ms by default so sessions can be short. The
    /// negotiated session timeout lies between 2 ticks and 60 s; `initLimit` and `syncLimit`
    /// are scaled so that followers get at least 10 s and 5 s on a loaded machine.
    pub fn tick_time(mut self, tick: Duration) -> Self {
        assert!(
            tick >= Duration::from_millis(10),
            "tickTime below 10 ms is not useful"
        );
        self.tick_time = tick;
        self
    }

    /// Starts every node and waits until all serve (an ensemble has elected a leader).
    ///
    /// # Panics
    /// When java or the jars are missing, or a node does not serve in time (the panic message
    /// carries the tail of each node's log; the directory is kept).
    pub fn start(self) -> ZooKeeper {
        let classpath = classpath().unwrap_or_else(|e| panic!("cannot start ZooKeeper: {e}"));
        for attempt in 1..=BIND_ATTEMPTS {
            let mut zk = ZooKeeper::prepare(&self, classpath.clone());
            for i in 0..zk.len() {
                zk.spawn(i);
            }
            if zk.wait_serving(START_TIMEOUT) {
                return zk;
            }
            if attempt < BIND_ATTEMPTS && zk.any_log_contains("Address already in use") {
                eprintln!("ZooKeeper: a port was taken, retrying on new ports");
                continue;
            }
            panic!(
                "ZooKeeper did not serve within {START_TIMEOUT:?}\n{}",
                zk.log_tails()
            );
        }
        unreachable!("the last attempt returns or panics")
    }
}

/// One ZooKeeper server process and its ports.
#[derive(Debug)]
struct Node {
    myid: usize,
    client_port: u16,
    quorum_port: u16,
    election_port: u16,
    config: PathBuf,
    service: Option<Service>,
}

/// A running ZooKeeper: one standalone server or an ensemble, stopped and removed on drop.
///
/// [`ZkEnsemble`] is the same type; the name reads better for `ZkEnsemble::start(3)`.
#[derive(Debug)]
pub struct ZooKeeper {
    nodes: Vec<Node>,
    client_address: IpAddr,
    classpath: OsString,
    log4j: PathBuf,
    // Last: dropped after the nodes were killed, and kept when a test panics.
    dir: ServiceDir,
}

/// A ZooKeeper ensemble: the same type as [`ZooKeeper`].
pub type ZkEnsemble = ZooKeeper;

impl ZooKeeper {
    /// Options: node count, client bind address, tick time.
    pub fn builder() -> ZkBuilder {
        ZkBuilder::default()
    }

    /// Starts a standalone server on a free loopback port and waits until it serves.
    pub fn standalone() -> Self {
        Self::builder().start()
    }

    /// Starts an ensemble of `nodes` servers on 127.0.0.1 (each on its own free client,
    /// quorum and election ports) and waits until it has elected a leader and all serve.
    pub fn start(nodes: usize) -> Self {
        Self::builder().nodes(nodes).start()
    }

    /// Writes every node's configuration on fresh ports; starts nothing.
    fn prepare(options: &ZkBuilder, classpath: OsString) -> Self {
        let dir = ServiceDir::new("zk");
        let log4j = dir.path().join("log4j.properties");
        fs::write(&log4j, LOG4J_PROPERTIES).expect("write log4j.properties");
        let mut nodes: Vec<Node> = (1..=options.nodes)
            .map(|myid| Node {
                myid,
                client_port: free_port(),
                quorum_port: free_port(),
                election_port: free_port(),
                config: dir.path().join(format!("node-{myid}")).join("zoo.cfg"),
                service: None,
            })
            .collect();
        // A single node gets no `server.N` lines: that is ZooKeeper's standalone mode.
        let servers: String = if nodes.len() > 1 {
            nodes
                .iter()
                .map(|n| {
                    format!(
                        "server.{}=127.0.0.1:{}:{}\n",
                        n.myid, n.quorum_port, n.election_port
                    )
                })
                .collect()
        } else {
            String::new()
        };
        let tick = u64::try_from(options.tick_time.as_millis()).expect("tick time fits in u64");
        // Followers must connect and sync within initLimit ticks and keep up within syncLimit
        // ticks; a JVM starting on a loaded 2-core machine needs seconds, not ticks.
        let init_limit = 10_000u64.div_ceil(tick).max(10);
        let sync_limit = 5_000u64.div_ceil(tick).max(5);
        for node in &mut nodes {
            let node_dir = node.config.parent().expect("zoo.cfg has a parent");
            let data = node_dir.join("data");
            fs::create_dir_all(&data).expect("create ZooKeeper data directory");
            fs::write(data.join("myid"), format!("{}\n", node.myid)).expect("write myid");
            let config = format!(
                "tickTime={tick}\n\
                 initLimit={init_limit}\n\
                 syncLimit={sync_limit}\n\
                 maxSessionTimeout=60000\n\
                 dataDir={data}\n\
                 clientPort={client_port}\n\
                 clientPortAddress={address}\n\
                 maxClientCnxns=0\n\
                 admin.enableServer=false\n\
                 4lw.commands.whitelist=srvr,stat,mntr,ruok\n\
                 forceSync=no\n\
                 preAllocSize=1024\n\
                 {servers}",
                data = data.display(),
                client_port = node.client_port,
                address = options.client_address,
            );
            fs::write(&node.config, config).expect("write zoo.cfg");
        }
        Self {
            nodes,
            client_address: options.client_address,
            classpath,
            log4j,
            dir,
        }
    }

    /// Spawns node `i`'s JVM without waiting.
    fn spawn(&mut self, i: usize) {
        let node = &self.nodes[i];
        let mut cmd = Command::new("java");
        cmd.args([
            "-Xms16m",
            "-Xmx256m",
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",
        ])
        // No hsperfdata files in /tmp, no log4j MBean.
        .args(["-XX:-UsePerfData", "-Dzookeeper.jmx.log4j.disable=true"])
        .arg(format!(
            "-Dlog4j.configuration=file:{}",
            self.log4j.display()
        ))
        .arg(format!("-Dzookeeper.myid={}", node.myid))
        .arg("-cp")
        .arg(&self.classpath)
        .arg("org.apache.zookeeper.server.quorum.QuorumPeerMain")
        .arg(&node.config);
        let name = format!("zk-{}", node.myid);
        let service = Service::spawn(&name, cmd, self.dir.path())
            .unwrap_or_else(|e| panic!("spawn java for ZooKeeper node {i}: {e}"));
        self.nodes[i].service = Some(service);
    }

    /// The number of nodes.
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Always false: a ZooKeeper has at least one node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The directory holding each node's `zoo.cfg`, data and log.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The address a client reaches node `i` at.
    pub fn client_addr(&self, i: usize) -> SocketAddr {
        let ip = match self.client_address {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        SocketAddr::new(ip, self.nodes[i].client_port)
    }

    /// The connect string for all nodes, `127.0.0.1:p1,127.0.0.1:p2,…` (in node order, with
    /// the configured client address).
    pub fn connect_string(&self) -> String {
        (0..self.len())
            .map(|i| self.client_addr(i).to_string())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// Sends a four-letter word (`srvr`, `stat`, `mntr` or `ruok`: the whitelisted ones) to
    /// node `i` and returns its answer, or `None` when the node does not answer.
    pub fn four_letter_word(&self, i: usize, word: &str) -> Option<String> {
        let mut stream =
            TcpStream::connect_timeout(&self.client_addr(i), Duration::from_secs(1)).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        stream
            .set_write_timeout(Some(Duration::from_secs(2)))
            .ok()?;
        stream.write_all(word.as_bytes()).ok()?;
        let mut answer = String::new();
        stream.read_to_string(&mut answer).ok()?;
        Some(answer)
    }

    /// Node `i`'s role, or `None` when it is down or not serving (no quorum, electing).
    pub fn mode(&self, i: usize) -> Option<ZkMode> {
        ZkMode::parse(&self.four_letter_word(i, "srvr")?)
    }

    /// The index of the node that is leader now, if any.
    pub fn leader(&self) -> Option<usize> {
        (0..self.len()).find(|&i| self.mode(i) == Some(ZkMode::Leader))
    }

    /// Whether node `i`'s process was started and not stopped or killed since.
    pub fn is_started(&self, i: usize) -> bool {
        self.nodes[i].service.is_some()
    }

    /// Waits until every started node serves and, in an ensemble, one of them leads.
    pub fn wait_serving(&mut self, timeout: Duration) -> bool {
        wait_until(timeout, || {
            let started: Vec<usize> = (0..self.len()).filter(|&i| self.is_started(i)).collect();
            let modes: Vec<Option<ZkMode>> = started.iter().map(|&i| self.mode(i)).collect();
            if modes.iter().any(Option::is_none) {
                // Stop early when a process died (a port was taken, a bad config).
                return self.any_exited();
            }
            !started.is_empty() && (self.len() == 1 || modes.contains(&Some(ZkMode::Leader)))
        }) && !self.any_exited()
    }

    fn any_exited(&mut self) -> bool {
        self.nodes
            .iter_mut()
            .any(|n| n.service.as_mut().is_some_and(|s| !s.is_running()))
    }

    /// Starts node `i` again (after [`stop`](Self::stop) or [`kill`](Self::kill)) on the same
    /// ports and data, and waits until its client port answers. It serves only once it has
    /// joined a quorum: use [`wait_serving`](Self::wait_serving) for that.
    ///
    /// # Panics
    /// When node `i` is already running, or its process exits or does not answer in time.
    pub fn start_node(&mut self, i: usize) {
        assert!(!self.is_started(i), "ZooKeeper node {i} is already running");
        self.spawn(i);
        let up = wait_until(START_TIMEOUT, || {
            self.four_letter_word(i, "srvr")
                .is_some_and(|a| !a.is_empty())
                || !self.nodes[i]
                    .service
                    .as_mut()
                    .is_some_and(Service::is_running)
        });
        let running = self.nodes[i]
            .service
            .as_mut()
            .is_some_and(Service::is_running);
        assert!(
            up && running,
            "ZooKeeper node {i} did not come up\n{}",
            self.log_tails()
        );
    }

    /// Stops node `i` gracefully (SIGTERM, then SIGKILL after 5 s). Its data is kept.
    pub fn stop(&mut self, i: usize) {
        if let Some(mut service) = self.nodes[i].service.take() {
            service.stop(Duration::from_secs(5));
        }
    }

    /// Kills node `i` with SIGKILL, as a crash would. Its data is kept.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut service) = self.nodes[i].service.take() {
            service.kill();
        }
    }

    /// Stops node `i` gracefully and starts it again (see [`start_node`](Self::start_node)).
    pub fn restart(&mut self, i: usize) {
        self.stop(i);
        self.start_node(i);
    }

    /// Node `i`'s log (all its runs), for assertions and failure messages.
    pub fn log(&self, i: usize) -> String {
        let path = self
            .dir
            .path()
            .join(format!("zk-{}.log", self.nodes[i].myid));
        fs::read(path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    fn any_log_contains(&self, needle: &str) -> bool {
        (0..self.len()).any(|i| self.log(i).contains(needle))
    }

    /// The last lines of every node's log, for panic messages.
    fn log_tails(&self) -> String {
        let mut out = String::new();
        for i in 0..self.len() {
            let log = self.log(i);
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(30)..].join("\n");
            out.push_str(&format!(
                "--- node {i} (zk-{}.log) ---\n{tail}\n",
                self.nodes[i].myid
            ));
        }
        out
    }
}

impl Drop for ZooKeeper {
    fn drop(&mut self) {
        // The data is thrown away, so there is nothing to shut down gracefully.
        for i in 0..self.len() {
            self.kill(i);
        }
    }
}

/// Logs to stdout, which [`Service`] appends to the node's log file.
const LOG4J_PROPERTIES: &str = "\
log4j.rootLogger=INFO, CONSOLE
log4j.appender.CONSOLE=org.apache.log4j.ConsoleAppender
log4j.appender.CONSOLE.layout=org.apache.log4j.PatternLayout
log4j.appender.CONSOLE.layout.ConversionPattern=%d{ISO8601} [myid:%X{myid}] %-5p [%t:%C{1}@%L] - %m%n
";

/// The classpath for `QuorumPeerMain` from Debian's jars. `zookeeper.jar`'s manifest names
/// its runtime dependencies (netty, jetty, commons-cli, metrics, snappy …) in `Class-Path`;
/// the jute records, the slf4j API and a logging backend are added here explicitly.
fn classpath() -> Result<OsString, String> {
    let dir = Path::new(JAVA_DIR);
    let require = |name: &str| {
        find_jar(dir, name).ok_or_else(|| {
            format!("{name}.jar not found in {JAVA_DIR} (install the zookeeper package)")
        })
    };
    let mut jars = vec![
        require("zookeeper")?,
        require("zookeeper-jute")?,
        require("slf4j-api")?,
    ];
    // The first available slf4j backend; without one slf4j falls back to no logging at all.
    let backends: [&[&str]; 3] = [
        &["slf4j-log4j12", "log4j-1.2"],
        &["slf4j-reload4j", "reload4j"],
        &["slf4j-simple"],
    ];
    if let Some(backend) = backends
        .iter()
        .map(|names| {
            names
                .iter()
                .map(|n| find_jar(dir, n))
                .collect::<Option<Vec<_>>>()
        })
        .find_map(|found| found)
    {
        jars.extend(backend);
    }
    std::env::join_paths(jars).map_err(|e| format!("bad ZooKeeper classpath: {e}"))
}

/// `dir/name.jar`, or the newest versioned `dir/name-<version>.jar`.
fn find_jar(dir: &Path, name: &str) -> Option<PathBuf> {
    let plain = dir.join(format!("{name}.jar"));
    if plain.is_file() {
        return Some(plain);
    }
    let prefix = format!("{name}-");
    let mut versioned: Vec<PathBuf> = fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .map(|entry| entry.path())
        .filter(|path| {
            path.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.strip_prefix(&prefix).is_some_and(|version| {
                    version.starts_with(|c: char| c.is_ascii_digit()) && version.ends_with(".jar")
                })
            })
        })
        .collect();
    versioned.sort();
    versioned.pop()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_srvr_modes() {
        let srvr = "Zookeeper version: 3.8.0\nLatency min/avg/max: 0/0.0/0\nMode: follower\n";
        assert_eq!(ZkMode::parse(srvr), Some(ZkMode::Follower));
        assert_eq!(ZkMode::parse("Mode: leader\n"), Some(ZkMode::Leader));
        assert_eq!(
            ZkMode::parse("Mode: standalone\n"),
            Some(ZkMode::Standalone)
        );
        let not_serving = "This ZooKeeper instance is not currently serving requests\n";
        assert_eq!(ZkMode::parse(not_serving), None);
    }

    #[test]
    fn finds_plain_and_versioned_jars() {
        let dir = tempfile::tempdir().expect("temp dir");
        fs::write(dir.path().join("zookeeper-jute-3.8.0.jar"), "").expect("write jar");
        fs::write(dir.path().join("zookeeper-3.8.0.jar"), "").expect("write jar");
        fs::write(dir.path().join("zookeeper-3.9.1.jar"), "").expect("write jar");
        let found = find_jar(dir.path(), "zookeeper").expect("versioned jar");
        assert_eq!(
            found.file_name().and_then(|n| n.to_str()),
            Some("zookeeper-3.9.1.jar")
        );
        fs::write(dir.path().join("zookeeper.jar"), "").expect("write jar");
        let found = find_jar(dir.path(), "zookeeper").expect("plain jar");
        assert_eq!(
            found.file_name().and_then(|n| n.to_str()),
            Some("zookeeper.jar")
        );
        assert_eq!(find_jar(dir.path(), "netty"), None);
    }
}
