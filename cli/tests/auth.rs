//! The `cairn` binary against a real `cairn-master` process that requires authentication
//! (docs/cli.md, "Authentication"): without credentials a command fails with one line saying
//! how to give them; wrong ones name the principal; `--principal`/`--secret-file`,
//! `--credential` and the `CAIRN_*` variables all work.
#![allow(clippy::unwrap_used, clippy::missing_panics_doc)]

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use cairn_testsupport::{free_port, wait_until, Service, ServiceDir};

fn master_bin() -> PathBuf {
    cairn_testsupport::bins::sibling_binary(
        env!("CARGO_BIN_EXE_cairn"),
        "cairn-master",
        "cairn-master",
    )
}

fn cairn(dir: &ServiceDir, master: &str, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cairn"));
    cmd.current_dir(dir.path())
        .env("CAIRN_MASTER", master)
        .env_remove("CAIRN_PRINCIPAL")
        .env_remove("CAIRN_SECRET_FILE")
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
fn commands_authenticate_with_principal_and_secret_or_a_credential_file() {
    let dir = ServiceDir::new("cli-auth-master");
    // Text form of the credentials file.
    std::fs::write(dir.path().join("credentials"), "ops ops-secret\n").unwrap();
    std::fs::write(dir.path().join("secret"), "ops-secret\n").unwrap();
    std::fs::write(dir.path().join("wrong"), "nope\n").unwrap();
    std::fs::write(dir.path().join("credential"), "ops ops-secret\n").unwrap();
    let port = free_port();
    let mut cmd = Command::new(master_bin());
    cmd.args(["--listen", &format!("127.0.0.1:{port}"), "--work-dir"])
        .arg(dir.path().join("work"))
        .arg("--credentials")
        .arg(dir.path().join("credentials"))
        .args([
            "--authenticate-frameworks",
            "--authenticate-http-readonly",
            "--authenticate-http-readwrite",
        ]);
    let svc = Service::spawn("master", cmd, dir.path()).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    assert!(
        wait_until(Duration::from_secs(20), || ureq::get(&format!(
            "{url}/health"
        ))
        .call()
        .is_ok()),
        "master did not come up: {}",
        svc.log()
    );

    // No credentials: one line, suggesting the flags.
    let o = cairn(&dir, &url, &["agents"], &[]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(stderr.trim_end().lines().count(), 1, "{}", show(&o));
    assert!(
        stderr.contains("requires authentication (401 Unauthorized)")
            && stderr.contains("--principal")
            && stderr.contains("--secret-file")
            && stderr.contains("--credential"),
        "{}",
        show(&o)
    );

    // A wrong secret names the principal, never the secret.
    let o = cairn(
        &dir,
        &url,
        &["--principal", "ops", "--secret-file", "wrong", "agents"],
        &[],
    );
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("rejected the credentials of principal 'ops'") && !stderr.contains("nope"),
        "{}",
        show(&o)
    );
    assert_eq!(stderr.trim_end().lines().count(), 1, "{}", show(&o));

    // The right ones, three ways.
    for (args, env) in [
        (
            vec!["--principal", "ops", "--secret-file", "secret", "agents"],
            vec![],
        ),
        (vec!["--credential", "credential", "agents"], vec![]),
        (
            vec!["agents"],
            vec![("CAIRN_PRINCIPAL", "ops"), ("CAIRN_SECRET_FILE", "secret")],
        ),
        (vec!["frameworks"], vec![("CAIRN_CREDENTIAL", "credential")]),
        (
            vec!["--json", "ps"],
            vec![("CAIRN_CREDENTIAL", "credential")],
        ),
    ] {
        let o = cairn(&dir, &url, &args, &env);
        assert_eq!(o.status.code(), Some(0), "{args:?} {env:?}: {}", show(&o));
    }

    // Half-given credentials are usage errors.
    let o = cairn(&dir, &url, &["--principal", "ops", "agents"], &[]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--principal needs --secret-file"),
        "{}",
        show(&o)
    );
    let o = cairn(
        &dir,
        &url,
        &["--credential", "credential", "--principal", "ops", "agents"],
        &[],
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("not both"),
        "{}",
        show(&o)
    );
}
