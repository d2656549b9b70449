//! Network namespaces on a bridge: hosts reach each other and host-side services, `cut()`
//! isolates one, `restore()` reconnects it, and dropping leaves nothing behind.

use std::io::{BufRead, BufReader, Write};
use std::net::{IpAddr, Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::thread;
use std::time::Duration;

use cairn_testsupport::netns::{NetHost, Network, LOCK_DIR};
use cairn_testsupport::{require_command, require_root, wait_until};

fn require_netns(test: &str) -> bool {
    require_root(test) && require_command(test, "ip") && require_command(test, "busybox")
}

fn ip_output(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("run ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Whether `name` is a network interface in the host namespace.
fn link_exists(name: &str) -> bool {
    ip_output(&["-o", "link", "show"]).lines().any(|l| {
        l.split(": ")
            .nth(1)
            .is_some_and(|n| n.split('@').next() == Some(name))
    })
}

fn netns_exists(name: &str) -> bool {
    ip_output(&["netns", "list"])
        .lines()
        .any(|l| l.split_whitespace().next() == Some(name))
}

/// Sends `message` from `host` to `ip:port` with busybox nc (1 s connect timeout). True when
/// nc exits successfully, which it does once the receiver closes; it is killed after 5 s.
fn nc_send(host: &NetHost, ip: Ipv4Addr, port: u16, message: &str) -> bool {
    let mut child = host
        .command("busybox")
        .args(["nc", "-w", "1", &ip.to_string(), &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn busybox nc");
    let mut stdin = child.stdin.take().expect("nc stdin");
    let _ = stdin.write_all(message.as_bytes());
    drop(stdin);
    let exited = wait_until(Duration::from_secs(5), || {
        child.try_wait().is_ok_and(|s| s.is_some())
    });
    if !exited {
        let _ = child.kill();
    }
    let status = child.wait().expect("wait for nc");
    exited && status.success()
}

/// Accepts one connection `within` and reads one line from it, then closes it.
fn receive_line(listener: &TcpListener, within: Duration) -> Option<(IpAddr, String)> {
    listener
        .set_nonblocking(true)
        .expect("non-blocking listener");
    let mut accepted = None;
    wait_until(within, || {
        accepted = listener.accept().ok();
        accepted.is_some()
    });
    let (conn, peer) = accepted?;
    conn.set_nonblocking(false).expect("blocking connection");
    conn.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("read timeout");
    let mut line = String::new();
    BufReader::new(conn).read_line(&mut line).ok()?;
    Some((peer.ip(), line))
}

#[test]
fn netns_hosts_ping_each_other_until_cut() {
    if !require_netns("netns_hosts_ping_each_other_until_cut") {
        return;
    }
    let network = Network::new();
    let a = network.host();
    let b = network.host();
    assert_ne!(a.ip(), b.ip());
    // Each host sees only its own address (and loopback).
    let addrs = a
        .command("ip")
        .args(["-o", "-4", "addr", "show"])
        .output()
        .expect("ip in netns");
    let addrs = String::from_utf8_lossy(&addrs.stdout);
    assert!(addrs.contains(&format!("{}/24", a.ip())), "{addrs}");
    assert!(!addrs.contains(&b.ip().to_string()), "{addrs}");

    assert!(a.can_reach(b.ip()), "a cannot ping b");
    assert!(b.can_reach(a.ip()), "b cannot ping a");
    assert!(a.can_reach(network.bridge_ip()), "a cannot ping the bridge");

    b.cut();
    assert!(!a.can_reach(b.ip()), "a still reaches b after b was cut");
    assert!(!b.can_reach(a.ip()), "b still reaches a after it was cut");
    assert!(a.can_reach(network.bridge_ip()), "cutting b cut a too");

    b.restore();
    assert!(a.can_reach(b.ip()), "a cannot ping b after restore");
    assert!(b.can_reach(a.ip()), "b cannot ping a after restore");
}

#[test]
fn netns_host_reaches_service_bound_to_bridge_address() {
    if !require_netns("netns_host_reaches_service_bound_to_bridge_address") {
        return;
    }
    let network = Network::new();
    let host = network.host();
    assert_eq!(host.bridge_ip(), network.bridge_ip());
    let listener = TcpListener::bind((network.bridge_ip(), 0)).expect("bind the bridge address");
    let port = listener.local_addr().expect("listener address").port();

    let exchange = |message: &str, within: u64| {
        thread::scope(|scope| {
            let receiver = scope.spawn(|| receive_line(&listener, Duration::from_secs(within)));
            let sent = nc_send(&host, network.bridge_ip(), port, message);
            (sent, receiver.join().expect("receiver thread"))
        })
    };
    let (sent, received) = exchange("hello\n", 5);
    assert!(sent, "nc to the bridge address failed");
    let (peer, line) = received.expect("the service got no connection");
    assert_eq!(
        peer,
        IpAddr::V4(host.ip()),
        "the connection comes from the host's own address"
    );
    assert_eq!(line, "hello\n");

    host.cut();
    let (sent, received) = exchange("lost\n", 2);
    assert!(
        !sent && received.is_none(),
        "nc got through a cut: {received:?}"
    );
    host.restore();
    let (sent, received) = exchange("again\n", 5);
    assert!(sent, "nc failed after restore");
    assert_eq!(received.map(|(_, line)| line).as_deref(), Some("again\n"));
}

#[test]
fn networks_get_distinct_subnets_and_cannot_reach_each_other() {
    if !require_netns("networks_get_distinct_subnets_and_cannot_reach_each_other") {
        return;
    }
    let first = Network::new();
    let second = Network::new();
    assert_ne!(first.subnet(), second.subnet());
    assert_ne!(first.bridge_name(), second.bridge_name());
    for network in [&first, &second] {
        let octets = network.bridge_ip().octets();
        assert!(
            octets[0] == 198 && (octets[1] == 18 || octets[1] == 19),
            "{}",
            network.subnet()
        );
        assert_eq!(octets[3], 1);
        assert!(network.bridge_name().len() <= 15);
    }
    let a = first.host();
    let b = second.host();
    assert!(a.can_reach(first.bridge_ip()));
    assert!(
        !a.can_reach(b.ip()),
        "hosts on different networks reach each other"
    );
}

#[test]
fn dropping_network_and_hosts_leaves_nothing_behind() {
    if !require_netns("dropping_network_and_hosts_leaves_nothing_behind") {
        return;
    }
    let network = Network::new();
    let hosts = [network.host(), network.host()];
    let bridge = network.bridge_name().to_string();
    let names: Vec<(String, String)> = hosts
        .iter()
        .map(|h| (h.netns().to_string(), h.veth().to_string()))
        .collect();
    assert!(link_exists(&bridge));
    for (netns, veth) in &names {
        assert!(netns_exists(netns), "{netns} missing");
        assert!(link_exists(veth), "{veth} missing");
        assert!(veth.len() <= 15, "{veth} is too long for an interface name");
    }
    let lock = network.lock_path().to_path_buf();
    assert!(
        lock.starts_with(LOCK_DIR) && lock.is_file(),
        "{}",
        lock.display()
    );
    let bridge_addr = format!("{}/24", network.bridge_ip());
    // A process left running inside a namespace must not keep it alive.
    let mut sleeper = hosts[0]
        .command("busybox")
        .args(["sleep", "600"])
        .spawn()
        .expect("spawn sleep in the namespace");
    assert!(wait_until(Duration::from_secs(5), || !ip_output(&[
        "netns",
        "pids",
        &names[0].0
    ])
    .trim()
    .is_empty()));

    drop(hosts);
    drop(network);

    let status = sleeper.wait().expect("reap sleep");
    assert!(!status.success(), "sleep was not killed: {status}");
    let netns_list = ip_output(&["netns", "list"]);
    let links = ip_output(&["link", "show"]);
    for (netns, veth) in &names {
        assert!(!netns_exists(netns), "{netns} left in: {netns_list}");
        assert!(!link_exists(veth), "{veth} left in: {links}");
    }
    assert!(!link_exists(&bridge), "{bridge} left in: {links}");
    let addrs = ip_output(&["-o", "-4", "addr", "show"]);
    assert!(
        !addrs.contains(&format!("{bridge_addr} ")),
        "{bridge_addr} still on the host"
    );
    assert!(!lock.exists(), "{} was not removed", lock.display());
}
