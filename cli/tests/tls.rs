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
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_cairn")).with_file_name("cairn-master");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let ok = Command::new(cargo)
            .args(["build", "-p", "cairn-master"])
            .status()
            .unwrap();
        assert!(ok.success(), "building cairn-master");
    }
    bin
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
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
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
