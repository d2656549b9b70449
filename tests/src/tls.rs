//! A test certificate authority made with the `openssl` CLI: a CA certificate (the bundle a
//! client is told to trust) and a server certificate it signed for `127.0.0.1` and
//! `localhost`, as PEM files in a directory. ECDSA P-256, valid for a day.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The CA and one server certificate, as PEM files.
#[derive(Debug, Clone)]
pub struct TestCa {
    /// The CA's certificate: what clients trust (`master_ca`, `--master-ca`).
    pub ca: PathBuf,
    /// The server's certificate chain (`tls_cert`).
    pub cert: PathBuf,
    /// The server's private key (`tls_key`).
    pub key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl runs (see require_command)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestCa {
    /// Makes a CA and a server certificate for 127.0.0.1 in `dir` (`ca.pem`, `cert.pem`,
    /// `key.pem`; the CA's key stays in `ca.key`). Needs `openssl` on PATH.
    pub fn new(dir: &Path) -> Self {
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        let mut ca_args = vec!["req", "-x509"];
        ca_args.extend(ec);
        ca_args.extend([
            "-days",
            "1",
            "-subj",
            "/CN=cairn-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(dir, &ca_args);
        let mut req = vec!["req", "-new"];
        req.extend(ec);
        req.extend([
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            "key.pem",
            "-out",
            "server.csr",
        ]);
        openssl(dir, &req);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\n\
             keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(
            dir,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.pem",
                "-CAkey",
                "ca.key",
                "-set_serial",
                "2",
                "-days",
                "1",
                "-extfile",
                "server.ext",
                "-out",
                "cert.pem",
            ],
        );
        Self {
            ca: dir.join("ca.pem"),
            cert: dir.join("cert.pem"),
            key: dir.join("key.pem"),
        }
    }
}
