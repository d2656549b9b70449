//! `cairn-master` processes for the HA tests and the failover benchmark.

use std::time::Duration;

use serde_json::Value;

/// A `cairn-master` process of an HA test or benchmark.
pub struct MasterProc {
    pub service: cairn_testsupport::Service,
    pub port: u16,
    pub ip: std::net::Ipv4Addr,
}

/// Starts master `i` (log `master-<i>-<generation>`) on a free port, electing in `zk_url`
/// (`zk://.../path`), with `extra` appended to its config file.
pub fn start_master(
    zk_url: &str,
    dir: &cairn_testsupport::ServiceDir,
    name: &str,
    session_timeout: Duration,
    extra: &str,
) -> MasterProc {
    start_master_on(
        zk_url,
        dir,
        name,
        session_timeout,
        extra,
        [127, 0, 0, 1].into(),
    )
}

/// [`start_master`] listening on (and advertising) `ip`, e.g. a test network's bridge.
pub fn start_master_on(
    zk_url: &str,
    dir: &cairn_testsupport::ServiceDir,
    name: &str,
    session_timeout: Duration,
    extra: &str,
    ip: std::net::Ipv4Addr,
) -> MasterProc {
    let port = cairn_testsupport::free_port();
    let work = dir.path().join(name);
    std::fs::create_dir_all(&work).unwrap();
    let config = work.join("master.toml");
    std::fs::write(
        &config,
        format!(
            "zk = \"{zk_url}\"\nzk_session_timeout_secs = {}\nwork_dir = \"{}\"\n{extra}\n",
            session_timeout.as_secs_f64(),
            work.display()
        ),
    )
    .unwrap();
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-master"));
    cmd.arg("--config")
        .arg(&config)
        .arg("--listen")
        .arg(format!("{ip}:{port}"))
        .env("RUST_LOG", "info");
    let service = cairn_testsupport::Service::spawn(name, cmd, dir.path()).unwrap();
    MasterProc { service, port, ip }
}

fn blocking_client() -> ureq::Agent {
    ureq::Agent::config_builder()
        .proxy(None)
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(Some(Duration::from_secs(2)))
        .build()
        .into()
}

impl MasterProc {
    /// A value of `/metrics/snapshot`; `None` when the master does not answer.
    pub fn metric(&self, name: &str) -> Option<f64> {
        let mut resp = blocking_client()
            .get(&format!(
                "http://{}:{}/metrics/snapshot",
                self.ip, self.port
            ))
            .call()
            .ok()?;
        let v: Value = serde_json::from_str(&resp.body_mut().read_to_string().ok()?).ok()?;
        v[name].as_f64()
    }

    /// Whether it leads and serves (`master/elected` 1).
    pub fn elected(&self) -> bool {
        self.metric("master/elected") == Some(1.0)
    }

    /// `(status, body)` of a JSON POST; `None` when the master does not answer.
    pub fn post(&self, path: &str, body: &Value) -> Option<(u16, String)> {
        let mut resp = blocking_client()
            .post(&format!("http://{}:{}{path}", self.ip, self.port))
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .ok()?;
        let status = resp.status().as_u16();
        Some((status, resp.body_mut().read_to_string().ok()?))
    }
}

/// Which of `masters` lead now (by `master/elected`).
pub fn leaders(masters: &[Option<MasterProc>]) -> Vec<usize> {
    masters
        .iter()
        .enumerate()
        .filter(|(_, m)| m.as_ref().is_some_and(MasterProc::elected))
        .map(|(i, _)| i)
        .collect()
}

/// Every master's log, for failure messages.
pub fn logs(masters: &[Option<MasterProc>]) -> String {
    masters
        .iter()
        .flatten()
        .map(|m| format!("--- {}\n{}", m.service.name(), m.service.log()))
        .collect()
}

/// Waits until exactly one master leads, asserting that two never do; returns it and how long
/// it took.
pub fn wait_one_leader(masters: &[Option<MasterProc>], limit: Duration) -> (usize, Duration) {
    let start = std::time::Instant::now();
    loop {
        let l = leaders(masters);
        assert!(l.len() <= 1, "two masters act as leader at once: {l:?}");
        if let [one] = l[..] {
            return (one, start.elapsed());
        }
        assert!(
            start.elapsed() < limit,
            "no leader after {limit:?}\n{}",
            logs(masters)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
