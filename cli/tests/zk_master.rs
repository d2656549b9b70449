//! `cairn --master zk://...`: the CLI asks a real ZooKeeper which master leads and talks to
//! it (a real `cairn-master` electing itself there); a path where no master runs, and a bad
//! URL, give one clear line and exit 1.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use cairn_testsupport::zookeeper::ZooKeeper;
use cairn_testsupport::{free_port, wait_until, Service, ServiceDir};
use serde_json::Value;

fn master_bin() -> PathBuf {
    cairn_testsupport::bins::sibling_binary(
        env!("CARGO_BIN_EXE_cairn"),
        "cairn-master",
        "cairn-master",
    )
}

fn cairn(master: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cairn"))
        .arg("--master")
        .arg(master)
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn zk_master_url_finds_the_leader_and_bad_ones_fail_clearly() {
    let zk = ZooKeeper::standalone();
    let dir = ServiceDir::new("cli-zk-master");
    let port = free_port();
    let url = format!("zk://{}/cairn/cli", zk.connect_string());
    let mut cmd = Command::new(master_bin());
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--zk", &url])
        .arg("--work-dir")
        .arg(dir.path());
    let master = Service::spawn("master", cmd, dir.path()).unwrap();
    // Leading once its /health answers and ZooKeeper names it.
    assert!(
        wait_until(Duration::from_secs(60), || {
            cairn(&url, &["frameworks", "--json"]).status.success()
        }),
        "cairn never reached the master through {url}: {}",
        master.log()
    );
    let out = cairn(&url, &["agents", "--json"]);
    assert!(out.status.success(), "{out:?}");
    let agents: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(agents, Value::Array(Vec::new()));

    // No master under this path: the lookup times out with a message naming ZooKeeper.
    let empty = format!("zk://{}/cairn/nobody", zk.connect_string());
    let out = cairn(&empty, &["agents"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("finding the leading master in ZooKeeper"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");

    // A malformed URL is refused at once, naming the problem.
    let out = cairn("zk://", &["agents"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("zk://"), "{err}");
}
