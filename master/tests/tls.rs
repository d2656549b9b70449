//! HTTPS on the real `cairn-master` (docs/master.md, "TLS"): with `tls_cert` and `tls_key`
//! (a server certificate from a CA made in the test with `openssl`) it serves HTTPS only; a
//! client trusting the CA is served, one without it fails the handshake, and plain HTTP gets
//! nothing. Unusable files stop the start naming the setting. Needs `openssl`.
#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use cairn_testsupport::tls::TestCa;
use cairn_testsupport::{free_port, require_command, wait_until};

/// An HTTPS client trusting `ca` (or the webpki roots when `None`).
fn client(ca: Option<&Path>) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)));
    if let Some(ca) = ca {
        let pem = std::fs::read(ca).unwrap();
        let cert = ureq::tls::Certificate::from_pem(&pem).unwrap();
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(Arc::new(vec![cert])))
                .build(),
        );
    }
    config.build().into()
}

fn get(agent: &ureq::Agent, url: &str) -> Result<(u16, String), String> {
    let mut r = agent.get(url).call().map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.body_mut().read_to_string().unwrap_or_default()))
}

struct Master {
    child: Child,
    port: u16,
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn master(dir: &Path, args: &[&str]) -> Master {
    let port = free_port();
    let child = Command::new(env!("CARGO_BIN_EXE_cairn-master"))
        .arg("--config")
        .arg(dir.join("empty.toml"))
        .args(["--listen", &format!("127.0.0.1:{port}"), "--work-dir"])
        .arg(dir.join("work"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Master { child, port }
}

#[test]
fn the_master_serves_https_only_to_clients_trusting_its_ca() {
    if !require_command("master_tls", "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.toml"), "").unwrap();
    let ca = TestCa::new(dir.path());
    let m = master(
        dir.path(),
        &[
            "--tls-cert",
            ca.cert.to_str().unwrap(),
            "--tls-key",
            ca.key.to_str().unwrap(),
        ],
    );
    let https = format!("https://127.0.0.1:{}", m.port);
    let trusting = client(Some(&ca.ca));
    assert!(
        wait_until(Duration::from_secs(20), || get(
            &trusting,
            &format!("{https}/health")
        )
        .is_ok_and(|(s, _)| s == 200)),
        "the master did not serve HTTPS on {https}"
    );
    let (status, body) = get(&trusting, &format!("{https}/state")).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"slaves\""), "{body}");
    // The operator API over HTTPS, listing the TLS settings.
    let mut r = trusting
        .post(format!("{https}/api/v1"))
        .header("Content-Type", "application/json")
        .send(r#"{"type": "GET_FLAGS"}"#)
        .unwrap();
    let flags = r.body_mut().read_to_string().unwrap();
    assert!(
        flags.contains("tls_cert") && flags.contains("cert.pem"),
        "{flags}"
    );

    // Without the CA the handshake fails on the certificate.
    let e = get(&client(None), &format!("{https}/health")).unwrap_err();
    assert!(
        e.contains("UnknownIssuer") || e.contains("certificate"),
        "{e}"
    );
    // Plain HTTP is not served.
    let plain = get(
        &client(None),
        &format!("http://127.0.0.1:{}/health", m.port),
    );
    assert!(
        !matches!(plain, Ok((200, _))),
        "plain HTTP was served: {plain:?}"
    );
}

#[test]
fn unusable_tls_files_stop_the_start_naming_the_setting() {
    if !require_command("master_tls_files", "openssl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("empty.toml"), "").unwrap();
    let ca = TestCa::new(dir.path());
    let other_dir = dir.path().join("other");
    std::fs::create_dir(&other_dir).unwrap();
    let other = TestCa::new(&other_dir);
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not PEM\n").unwrap();
    let s = |p: &Path| p.to_str().unwrap().to_string();
    for (args, named) in [
        (vec!["--tls-cert".into(), s(&ca.cert)], "tls_key"),
        (vec!["--tls-key".into(), s(&ca.key)], "tls_cert"),
        (
            vec![
                "--tls-cert".into(),
                s(&garbage),
                "--tls-key".into(),
                s(&ca.key),
            ],
            "`tls_cert`",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&ca.cert),
                "--tls-key".into(),
                s(&garbage),
            ],
            "`tls_key`",
        ),
        (
            vec![
                "--tls-cert".into(),
                s(&ca.cert),
                "--tls-key".into(),
                s(&other.key),
            ],
            "`tls_cert` and `tls_key`",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_cairn-master"))
            .arg("--config")
            .arg(dir.path().join("empty.toml"))
            .args(["--listen", "127.0.0.1:0", "--work-dir"])
            .arg(dir.path().join("work"))
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "started with {args:?}");
        assert!(
            stderr.contains(named),
            "{args:?}: {named:?} not in {stderr}"
        );
    }
}
