//! The `cairn` binary against a real `cairn-master` serving HTTPS with a certificate from a CA
//! made in the test (`openssl`; docs/cli.md, "TLS"): `--master-ca` (or `CAIRN_MASTER_CA`)
//! makes it work; without it the error is one line pointing at `--master-ca`; a file that is
//! not a PEM bundle is named.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use cairn_testsupport::tls::TestCa;
use cairn_testsupport::{free_port, require_command, wait_until, Service, ServiceDir};

fn master_bin() -> PathBuf {
    cairn_testsupport::bins::sibling_binary(
        env!("CARGO_BIN_EXE_cairn"),
        "cairn-master",
        "cairn-master",
    )
}

fn cairn(master: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.env("CAIRN_MASTER", master)
        .env_remove("CAIRN_MASTER_CA")
        .env_remove("CAIRN_CREDENTIAL")
        .args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

fn show(o: &Output) -> String {
    cairn_testsupport::bins::show_output(o)
}

#[test]
fn commands_reach_an_https_master_trusting_the_given_ca() {
    if !require_command("cli_tls", "openssl") {
        return;
    }
    let dir = ServiceDir::new("cli-tls-master");
    let ca = TestCa::new(dir.path());
    let port = free_port();
    let mut cmd = Command::new(master_bin());
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--work-dir"])
        .arg(dir.path().join("work"))
        .arg("--tls-cert")
        .arg(&ca.cert)
        .arg("--tls-key")
        .arg(&ca.key);
    let svc = Service::spawn("master", cmd, dir.path()).unwrap();
    let url = format!("https://127.0.0.1:{port}");
    let ca_path = ca.ca.to_str().unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || cairn(
            &url,
            &["--master-ca", ca_path, "agents"],
            &[]
        )
        .status
        .success()),
        "the CLI never reached the HTTPS master: {}",
        svc.log()
    );
    let o = cairn(&url, &["--json", "agents"], &[("CAIRN_MASTER_CA", ca_path)]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout).trim(),
        "[]",
        "{}",
        show(&o)
    );

    let o = cairn(&url, &["agents"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{}", show(&o));
    assert!(
        stderr.contains(&format!("cannot reach master at {url}"))
            && stderr.contains("UnknownIssuer")
            && stderr.contains("--master-ca FILE"),
        "{}",
        show(&o)
    );

    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM\n").unwrap();
    let o = cairn(
        &url,
        &["--master-ca", garbage.to_str().unwrap(), "agents"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains(&format!(
            "--master-ca {}: no PEM certificate in the file",
            garbage.display()
        )),
        "{}",
        show(&o)
    );
}

/// An HTTPS client trusting `ca` that reports redirects instead of following them.
fn https_client(ca: &std::path::Path) -> ureq::Agent {
    let cert = ureq::tls::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
    ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .max_redirects(0)
        .tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                    cert,
                ])))
                .build(),
        )
        .build()
        .into()
}

/// `master/elected` of the HTTPS master on `port`, trusting `ca`.
fn elected(port: u16, ca: &std::path::Path) -> bool {
    https_client(ca)
        .get(format!("https://127.0.0.1:{port}/metrics/snapshot"))
        .call()
        .ok()
        .and_then(|mut r| r.body_mut().read_to_string().ok())
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .is_some_and(|v| v["master/elected"] == 1.0)
}

#[test]
fn zk_masters_serving_tls_are_found_with_master_tls_and_redirect_to_https() {
    if !require_command("cli_tls_zk", "openssl") {
        return;
    }
    let zk = cairn_testsupport::zookeeper::ZooKeeper::standalone();
    let dir = ServiceDir::new("cli-tls-zk");
    let ca = TestCa::new(dir.path());
    let zk_url = format!("zk://{}/cairn/tls", zk.connect_string());
    let mut masters = Vec::new();
    for i in 0..2 {
        let port = free_port();
        let mut cmd = Command::new(master_bin());
        cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--zk", &zk_url])
            .arg("--work-dir")
            .arg(dir.path().join(format!("work-{i}")))
            .arg("--tls-cert")
            .arg(&ca.cert)
            .arg("--tls-key")
            .arg(&ca.key);
        let svc = Service::spawn(&format!("master-{i}"), cmd, dir.path()).unwrap();
        masters.push((svc, port));
    }
    let leader = {
        let mut found = None;
        assert!(
            wait_until(Duration::from_secs(60), || {
                found = masters.iter().position(|(_, p)| elected(*p, &ca.ca));
                found.is_some()
            }),
            "no master was elected: {} {}",
            masters[0].0.log(),
            masters[1].0.log()
        );
        found.unwrap()
    };
    let follower_port = masters[1 - leader].1;
    let ca_path = ca.ca.to_str().unwrap();

    // Through ZooKeeper: the leader's znode carries no scheme; --master-tls says https.
    let o = cairn(
        &zk_url,
        &["--master-tls", "--master-ca", ca_path, "--json", "agents"],
        &[],
    );
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    // Without --master-tls the CLI speaks plain HTTP to a TLS master: refused, one line.
    let o = cairn(&zk_url, &["--master-ca", ca_path, "agents"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    // The follower redirects the operator API to https:// on the leader...
    let resp = https_client(&ca.ca)
        .post(format!("https://127.0.0.1:{follower_port}/api/v1"))
        .header("Content-Type", "application/json")
        .send(r#"{"type": "GET_HEALTH"}"#)
        .unwrap();
    assert_eq!(resp.status().as_u16(), 307);
    let location = resp.headers()["Location"].to_str().unwrap().to_string();
    assert_eq!(
        location,
        format!("https://127.0.0.1:{}/api/v1", masters[leader].1)
    );
    // ... which the CLI follows: `cairn run` subscribes through the follower and, with no
    // agent in the cluster, waits for an offer until its timeout.
    let o = cairn(
        &format!("https://127.0.0.1:{follower_port}"),
        &[
            "--master-ca",
            ca_path,
            "run",
            "--timeout",
            "1s",
            "--",
            "true",
        ],
        &[],
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        o.status.code() == Some(1) && stderr.contains("no agent"),
        "{}",
        show(&o)
    );
}
