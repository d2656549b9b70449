//! Network namespaces joined by a Linux bridge: each test process gets its own IP address, and
//! a test can cut one off the network and restore it.
//!
//! A [`Network`] is a bridge in the host namespace holding the first address of a /24 taken
//! from the RFC 2544 benchmarking range 198.18.0.0/15 (reserved for tests, never routed). Each
//! [`NetHost`] is a named namespace (`ip netns add cairn-<pid>-<n>`) with `lo` up and an `eth0`
//! whose veth peer (`cv<pid>-<n>`) is a port of the bridge. Host-side services bind to the
//! bridge address ([`Network::bridge_ip`]); processes started with [`NetHost::command`] run in
//! the namespace.
//!
//! Parallel test processes never share a /24: each one holds an `flock(2)` on
//! `/run/cairn-tests/net-<index>.lock` while its network lives, and subnets that already have
//! an address or route on the host are skipped. Interface names carry the process id, so they
//! are unique without coordination, and stay within the kernel's 15 characters (IFNAMSIZ).
//! Only interfaces and namespaces made here are ever changed or deleted.

use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use nix::fcntl::{Flock, FlockArg};

use crate::wait_until;

/// The RFC 2544 benchmarking range the subnets are cut from: 198.18.0.0/15.
pub const RANGE: (Ipv4Addr, u8) = (Ipv4Addr::new(198, 18, 0, 0), 15);
/// The prefix length of each network's subnet.
pub const PREFIX_LEN: u8 = 24;
/// Where the per-subnet lock files live.
pub const LOCK_DIR: &str = "/run/cairn-tests";
/// Number of /24 subnets in [`RANGE`].
const SUBNETS: u32 = 512;
/// Longest interface name the kernel accepts (IFNAMSIZ minus the NUL).
const IFNAME_MAX: usize = 15;

/// Numbers networks and hosts of this process, for unique names.
static NEXT_ID: AtomicU32 = AtomicU32::new(0);
/// Counts the subnets this process leased.
static LEASES: AtomicU32 = AtomicU32::new(0);

/// A bridge with its own /24; create hosts on it with [`Network::host`]. Dropping the network
/// and all its hosts removes the bridge and releases the subnet.
#[derive(Debug)]
pub struct Network {
    bridge: Arc<Bridge>,
}

#[derive(Debug)]
struct Bridge {
    name: String,
    ip: Ipv4Addr,
    next_host: AtomicU32,
    /// The namespaces of the live hosts, to clear their neighbour caches on restore.
    hosts: Mutex<Vec<String>>,
    created: bool,
    // Fields drop after `Drop::drop` deleted the bridge: the subnet is free only then.
    lease: SubnetLease,
}

impl Network {
    /// Creates a bridge `cb<pid>-<n>` with address `198.18.x.1/24` (or `198.19.x.1/24`).
    ///
    /// # Panics
    /// When not root, when `ip` fails, or when all 512 subnets are taken.
    pub fn new() -> Self {
        let name = format!(
            "cb{}-{}",
            std::process::id(),
            NEXT_ID.fetch_add(1, Ordering::Relaxed)
        );
        assert!(
            name.len() <= IFNAME_MAX,
            "bridge name {name} is longer than {IFNAME_MAX}"
        );
        let lease = SubnetLease::acquire();
        let addr = host_addr(lease.index, 1);
        let mut bridge = Bridge {
            name,
            ip: addr,
            next_host: AtomicU32::new(2),
            hosts: Mutex::new(Vec::new()),
            created: false,
            lease,
        };
        // Bridge ports forward at once: no STP, no forwarding delay after a port comes up.
        let name = &bridge.name;
        ip(&format!(
            "link add {name} type bridge forward_delay 0 stp_state 0"
        ));
        bridge.created = true;
        // From here on, a panic drops `bridge`, which deletes it.
        ip(&format!("addr add {addr}/{PREFIX_LEN} dev {name}"));
        ip(&format!("link set {name} up"));
        Self {
            bridge: Arc::new(bridge),
        }
    }

    /// Creates a namespace on this network with the next free address of the subnet.
    ///
    /// # Panics
    /// When `ip` fails, the subnet's 253 host addresses are used up, or the new host does not
    /// reach the bridge within 10 s (checked with busybox `ping`).
    pub fn host(&self) -> NetHost {
        let n = self.bridge.next_host.fetch_add(1, Ordering::Relaxed);
        let last = u8::try_from(n)
            .ok()
            .filter(|&n| n < 255)
            .expect("at most 253 hosts per network");
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let pid = std::process::id();
        let mut host = NetHost {
            network: Arc::clone(&self.bridge),
            netns: format!("cairn-{pid}-{id}"),
            veth: format!("cv{pid}-{id}"),
            ip: host_addr(self.bridge.lease.index, last),
            netns_created: false,
            veth_created: false,
        };
        assert!(
            host.veth.len() <= IFNAME_MAX,
            "veth name {} is too long",
            host.veth
        );
        let (netns, veth, bridge) = (&host.netns, &host.veth, &self.bridge.name);
        ip(&format!("netns add {netns}"));
        host.netns_created = true;
        self.bridge.hosts().push(netns.clone());
        // The peer is created inside the namespace, so its name cannot clash on the host.
        ip(&format!(
            "link add {veth} type veth peer name eth0 netns {netns}"
        ));
        host.veth_created = true;
        ip(&format!("link set {veth} master {bridge} up"));
        ip(&format!("-n {netns} link set lo up"));
        ip(&format!(
            "-n {netns} addr add {}/{PREFIX_LEN} dev eth0",
            host.ip
        ));
        ip(&format!("-n {netns} link set eth0 up"));
        host.wait_until_connected();
        host
    }

    /// The bridge's address: host-side services bind here to be reachable from the hosts.
    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.bridge.ip
    }

    /// The bridge's interface name (`cb<pid>-<n>`).
    pub fn bridge_name(&self) -> &str {
        &self.bridge.name
    }

    /// The lock file that reserves the subnet for this network while it lives.
    pub fn lock_path(&self) -> &Path {
        &self.bridge.lease.path
    }

    /// The subnet, e.g. `198.18.7.0/24`.
    pub fn subnet(&self) -> String {
        format!("{}/{PREFIX_LEN}", host_addr(self.bridge.lease.index, 0))
    }
}

impl Default for Network {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        if self.created {
            ip_quiet(&format!("link del {}", self.name));
        }
    }
}

/// A network namespace attached to a [`Network`], with its own address on `eth0`. Dropping it
/// kills any process still inside and removes the namespace and its veth pair.
#[derive(Debug)]
pub struct NetHost {
    network: Arc<Bridge>,
    netns: String,
    veth: String,
    ip: Ipv4Addr,
    netns_created: bool,
    veth_created: bool,
}

impl NetHost {
    /// The host's address on the network.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The bridge's address, reachable from the host (see [`Network::bridge_ip`]).
    pub fn bridge_ip(&self) -> Ipv4Addr {
        self.network.ip
    }

    /// The namespace's name, as in `ip netns list` (`cairn-<pid>-<n>`).
    pub fn netns(&self) -> &str {
        &self.netns
    }

    /// The host-side end of the veth pair (`cv<pid>-<n>`), a port of the bridge.
    pub fn veth(&self) -> &str {
        &self.veth
    }

    /// A command running `program` inside the namespace (`ip netns exec NAME program`, which
    /// execs `program` in place, so the child's PID is the program's). Add arguments as usual.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.netns]).arg(program);
        cmd
    }

    /// Whether one ping from this host to `ip` is answered within a second (busybox `ping`).
    pub fn can_reach(&self, ip: Ipv4Addr) -> bool {
        self.command("busybox")
            .args(["ping", "-c", "1", "-W", "1", &ip.to_string()])
            .output()
            .is_ok_and(|out| out.status.success())
    }

    /// Cuts the host off the network: its bridge port (the host-side veth) goes down, so no
    /// packet gets in or out; `lo` inside still works.
    ///
    /// # Panics
    /// When `ip` fails.
    pub fn cut(&self) {
        ip(&format!("link set {} down", self.veth));
    }

    /// Undoes [`NetHost::cut`] and waits until the host reaches the bridge again.
    ///
    /// # Panics
    /// When `ip` fails or the host does not reach the bridge within 10 s.
    pub fn restore(&self) {
        ip(&format!("link set {} up", self.veth));
        // While cut, the neighbours' ARP entries for this host (and its entries for them) went
        // INCOMPLETE or FAILED; an INCOMPLETE entry re-probes only once a second, which would
        // lose the first packets after restore. Forget them, so the next packet asks at once.
        let ip = self.ip;
        for netns in self.network.hosts().iter().filter(|&n| n != &self.netns) {
            ip_quiet(&format!("-n {netns} neigh flush to {ip}"));
        }
        ip_quiet(&format!("-n {} neigh flush dev eth0", self.netns));
        ip_quiet(&format!("neigh flush dev {} to {ip}", self.network.name));
        self.wait_until_connected();
    }

    /// Waits until the host exchanges packets with the bridge. Link state alone is not
    /// enough: carrier changes reach the bridge port and the namespace's `eth0` queue through
    /// the kernel's linkwatch work, which is rate-limited to one run per second, so the first
    /// ARP request after `ip link set up` can still be dropped (seen with parallel tests).
    fn wait_until_connected(&self) {
        let connected = wait_until(Duration::from_secs(10), || self.can_reach(self.bridge_ip()));
        assert!(
            connected,
            "{} ({}) does not reach the bridge {}",
            self.netns,
            self.ip,
            self.bridge_ip()
        );
    }
}

impl Drop for NetHost {
    fn drop(&mut self) {
        if self.netns_created {
            // A process left inside would keep the namespace (and its veth) alive after its
            // name is deleted; all of them were started by the test through this host.
            if let Ok(out) = Command::new("ip")
                .args(["netns", "pids", &self.netns])
                .output()
            {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    if let Ok(pid) = pid.parse::<i32>() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid),
                            nix::sys::signal::Signal::SIGKILL,
                        );
                    }
                }
            }
        }
        if self.veth_created {
            // Deleting one end deletes the pair, even while the namespace lingers.
            ip_quiet(&format!("link del {}", self.veth));
        }
        if self.netns_created {
            ip_quiet(&format!("netns del {}", self.netns));
            self.network.hosts().retain(|n| n != &self.netns);
        }
    }
}

impl Bridge {
    fn hosts(&self) -> std::sync::MutexGuard<'_, Vec<String>> {
        // A panic while holding the lock cannot leave the list inconsistent (push or retain).
        self.hosts
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The exclusive use of one /24 of [`RANGE`] by this process: a held `flock` on its lock file.
#[derive(Debug)]
struct SubnetLease {
    index: u32,
    path: PathBuf,
    lock: Option<Flock<File>>,
}

impl SubnetLease {
    fn acquire() -> Self {
        fs::create_dir_all(LOCK_DIR).unwrap_or_else(|e| panic!("create {LOCK_DIR}: {e}"));
        let in_use = subnets_in_use();
        // Start at a different place per process so parallel test processes rarely contend,
        // and move on with each network so this process does not reuse a subnet it just freed.
        let start = (std::process::id() + LEASES.fetch_add(1, Ordering::Relaxed)) % SUBNETS;
        for index in (0..SUBNETS).map(|k| (start + k) % SUBNETS) {
            if in_use.contains(&index) {
                continue;
            }
            let path = Path::new(LOCK_DIR).join(format!("net-{index}.lock"));
            let Ok(file) = File::options()
                .create(true)
                .truncate(false)
                .write(true)
                .open(&path)
            else {
                continue;
            };
            let Ok(mut lock) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
                continue;
            };
            // The previous owner unlinks the file before unlocking; if it did so between our
            // open and our lock, we hold a lock on a file nobody else will ever open.
            let same = match (lock.metadata(), fs::metadata(&path)) {
                (Ok(held), Ok(named)) => held.dev() == named.dev() && held.ino() == named.ino(),
                _ => false,
            };
            if !same {
                continue;
            }
            let _ = lock.set_len(0);
            let _ = writeln!(lock, "{}", std::process::id());
            return Self {
                index,
                path,
                lock: Some(lock),
            };
        }
        panic!("no free /24 left in 198.18.0.0/15 (see {LOCK_DIR})");
    }
}

impl Drop for SubnetLease {
    fn drop(&mut self) {
        // Unlink while still holding the lock (see `acquire` for why that is safe).
        let _ = fs::remove_file(&self.path);
        drop(self.lock.take());
    }
}

/// The subnet indexes of [`RANGE`] that have an address or a route in the host namespace
/// (someone else's network: never reuse it).
fn subnets_in_use() -> Vec<u32> {
    let mut text = String::new();
    let queries: [&[&str]; 2] = [
        &["-o", "-4", "addr", "show"],
        &["-4", "route", "show", "table", "all"],
    ];
    for args in queries {
        let out = Command::new("ip")
            .args(args)
            .output()
            .expect("run ip (iproute2)");
        text.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    text.split_whitespace()
        .filter_map(|token| token.split('/').next()?.parse::<Ipv4Addr>().ok())
        .filter_map(subnet_index)
        .collect()
}

/// The index of the /24 of [`RANGE`] holding `addr`, if it is in the range.
fn subnet_index(addr: Ipv4Addr) -> Option<u32> {
    let offset = u32::from(addr).checked_sub(u32::from(RANGE.0))?;
    let index = offset >> 8;
    (index < SUBNETS).then_some(index)
}

/// Address `last` of subnet `index`.
fn host_addr(index: u32, last: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(RANGE.0) + (index << 8) + u32::from(last))
}

/// Runs `ip ARGS` (split at whitespace: names and addresses here never contain any); panics
/// with its stderr when it fails.
fn ip(args: &str) {
    let out = Command::new("ip")
        .args(args.split_whitespace())
        .output()
        .expect("run ip (iproute2)");
    assert!(
        out.status.success(),
        "ip {args} failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

/// Runs `ip ARGS` during cleanup: failures are reported, not raised.
fn ip_quiet(args: &str) {
    match Command::new("ip").args(args.split_whitespace()).output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => eprintln!(
            "cleanup: ip {args} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ),
        Err(e) => eprintln!("cleanup: ip {args}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_cover_the_benchmarking_range() {
        assert_eq!(host_addr(0, 1), Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(host_addr(255, 2), Ipv4Addr::new(198, 18, 255, 2));
        assert_eq!(host_addr(256, 1), Ipv4Addr::new(198, 19, 0, 1));
        assert_eq!(host_addr(511, 254), Ipv4Addr::new(198, 19, 255, 254));
        assert_eq!(subnet_index(Ipv4Addr::new(198, 19, 3, 7)), Some(259));
        assert_eq!(subnet_index(Ipv4Addr::new(198, 20, 0, 1)), None);
        assert_eq!(subnet_index(Ipv4Addr::new(198, 17, 255, 255)), None);
        assert_eq!(subnet_index(Ipv4Addr::new(10, 0, 0, 1)), None);
    }
}
