//! Authentication between the real processes: a `cairn-master` with `credentials` and every
//! `authenticate_*` on, real `cairn-agent`s and the `cairn` CLI. An agent without a
//! credential, and one with a wrong secret, never register and both logs say why; an agent
//! with the right credential registers, and `cairn run` (authenticating with `--credential`)
//! runs a task on it end to end. The same over TLS: a master serving HTTPS with a certificate
//! from a CA made in the test (`openssl`); an agent without `master_ca` cannot reach it and
//! says why, one with it registers, and `cairn --master-ca` runs a task; and two TLS masters
//! elected in a real ZooKeeper, an agent given `zk://` with `master_tls` registering with the
//! leader and following the next one when it dies. Needs root (the
//! agent's containers) and the binaries built first:
//! `cargo build -p cairn-master -p cairn-agent -p cairn-cli`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use base64::Engine as _;
use cairn_testsupport::cgroups::CgroupParent;
use cairn_testsupport::{free_port, require_root, wait_until, Service, ServiceDir};
use serde_json::Value;

/// Where cargo put the binaries (`CARGO_TARGET_DIR`, else the workspace's `target`).
fn binary(name: &str) -> PathBuf {
    cairn_testsupport::bins::workspace_binary(name)
}

/// GET `url` with HTTP Basic `ops` credentials, trusting `ca` for HTTPS; the body of a 200,
/// else the status and body.
fn get_as_ops(url: &str, ca: Option<&Path>) -> Result<String, String> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(10)));
    if let Some(ca) = ca {
        let cert = ureq::tls::Certificate::from_pem(&fs::read(ca).unwrap()).unwrap();
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(std::sync::Arc::new(vec![
                    cert,
                ])))
                .build(),
        );
    }
    let agent: ureq::Agent = config.build().into();
    let token = base64::engine::general_purpose::STANDARD.encode("ops:ops-secret");
    let mut response = agent
        .get(url)
        .header("Authorization", format!("Basic {token}"))
        .call()
        .map_err(|e| format!("GET {url}: {e}"))?;
    let status = response.status().as_u16();
    let body = response.body_mut().read_to_string().unwrap_or_default();
    if status == 200 {
        Ok(body)
    } else {
        Err(format!("GET {url}: {status} {body}"))
    }
}

fn slaves(master_url: &str, ca: Option<&Path>) -> Vec<Value> {
    get_as_ops(&format!("{master_url}/state"), ca)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .and_then(|v| v["slaves"].as_array().cloned())
        .unwrap_or_default()
}

/// Starts a `cairn-agent` named `name` (own work dir, cgroup parent and port) with
/// `credential` (a file path) or none, and `extra` config lines.
fn start_agent(
    name: &str,
    dir: &Path,
    cgroups: &CgroupParent,
    master: &str,
    credential: Option<&Path>,
    extra: &str,
) -> (Service, u16) {
    let port = free_port();
    let work = dir.join(name);
    fs::create_dir_all(&work).unwrap();
    let mut config = format!(
        "work_dir = {work:?}\nmaster = \"{master}\"\ncgroup_parent = {:?}\n\
         listen_ip = \"127.0.0.1\"\nport = {port}\nheartbeat_interval = 1.0\n\
         registration_backoff = 0.2\ndrain_on_sigterm = true\n",
        cgroups.path.join(name).to_string_lossy(),
    );
    if let Some(c) = credential {
        config.push_str(&format!("credential = {c:?}\n"));
    }
    config.push_str(extra);
    let path = dir.join(format!("{name}.toml"));
    fs::write(&path, config).unwrap();
    let mut cmd = Command::new(binary("cairn-agent"));
    cmd.arg("--config").arg(&path).env("RUST_LOG", "info");
    (Service::spawn(name, cmd, dir).unwrap(), port)
}

fn show(o: &Output) -> String {
    cairn_testsupport::bins::show_output(o)
}

#[test]
fn agents_and_the_cli_authenticate_to_the_master_and_run_a_task() {
    let test = "auth_cluster";
    if !require_root(test) {
        return;
    }
    // Field order is drop order: services first, then cgroups, then directories.
    let master_dir = ServiceDir::new("auth-master");
    let agent_dir = ServiceDir::new("auth-agents");
    let cgroups = CgroupParent::new("auth-cluster");

    // Principals and secrets, in the text form; the agent's credential and the CLI's.
    let creds = master_dir.path().join("credentials");
    fs::write(&creds, "agent agent-secret\nops ops-secret\n").unwrap();
    let agent_credential = agent_dir.path().join("agent-credential");
    fs::write(&agent_credential, "agent agent-secret\n").unwrap();
    let wrong_credential = agent_dir.path().join("wrong-credential");
    fs::write(&wrong_credential, "agent not-the-secret\n").unwrap();
    let cli_credential = agent_dir.path().join("cli-credential");
    fs::write(&cli_credential, "ops ops-secret\n").unwrap();

    let master_port = free_port();
    let master_addr = format!("127.0.0.1:{master_port}");
    let master_cfg = master_dir.path().join("master.toml");
    fs::write(
        &master_cfg,
        format!(
            "listen = \"{master_addr}\"\nwork_dir = {:?}\nallocation_interval_secs = 0.2\n\
             agent_heartbeat_secs = 1.0\ncredentials = {creds:?}\n\
             authenticate_frameworks = true\nauthenticate_agents = true\n\
             authenticate_http_readwrite = true\nauthenticate_http_readonly = true\n",
            master_dir.path().join("work"),
        ),
    )
    .unwrap();
    let mut master_cmd = Command::new(binary("cairn-master"));
    master_cmd
        .arg("--config")
        .arg(&master_cfg)
        .env("RUST_LOG", "info");
    let mut master = Service::spawn("cairn-master", master_cmd, master_dir.path()).unwrap();
    let master_url = format!("http://{master_addr}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            !master.is_running() || get_as_ops(&format!("{master_url}/health"), None).is_ok()
        }) && master.is_running(),
        "the master did not come up:\n{}",
        master.log()
    );

    // 1. Without a credential the agent cannot register, and says why.
    let (mut anonymous, _) = start_agent(
        "anonymous",
        agent_dir.path(),
        &cgroups,
        &master_addr,
        None,
        "",
    );
    let why = "master requires authentication and the agent has no `credential` set";
    assert!(
        wait_until(Duration::from_secs(20), || anonymous.log().contains(why)),
        "the agent did not log {why:?}:\n{}",
        anonymous.log()
    );
    assert!(
        anonymous.is_running(),
        "the agent gave up:\n{}",
        anonymous.log()
    );
    assert!(
        master.log().contains("authentication failed"),
        "{}",
        master.log()
    );
    anonymous.stop(Duration::from_secs(10));

    // 2. With a wrong secret: the error names the principal, never the secret.
    let (mut wrong, _) = start_agent(
        "wrong",
        agent_dir.path(),
        &cgroups,
        &master_addr,
        Some(&wrong_credential),
        "",
    );
    let why = "master rejected the agent's credential for principal 'agent'";
    assert!(
        wait_until(Duration::from_secs(20), || wrong.log().contains(why)),
        "the agent did not log {why:?}:\n{}",
        wrong.log()
    );
    wrong.stop(Duration::from_secs(10));
    assert!(!wrong.log().contains("not-the-secret"));
    assert!(!master.log().contains("not-the-secret"));
    assert!(
        master
            .log()
            .contains("invalid credentials for principal 'agent'"),
        "{}",
        master.log()
    );
    assert!(
        slaves(&master_url, None).is_empty(),
        "{:?}",
        slaves(&master_url, None)
    );

    // 3. With the right credential it registers.
    let (agent, _) = start_agent(
        "agent",
        agent_dir.path(),
        &cgroups,
        &master_addr,
        Some(&agent_credential),
        "",
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            slaves(&master_url, None)
                .iter()
                .any(|s| s["active"] == true && s["hostname"].is_string())
        }),
        "the agent did not register: {:?}\nagent log:\n{}\nmaster log:\n{}",
        slaves(&master_url, None),
        agent.log(),
        master.log()
    );

    // 4. The CLI runs a task on it, authenticating with --credential; without, it is told how.
    let cairn = |args: &[&str]| {
        Command::new(binary("cairn"))
            .env("CAIRN_MASTER", &master_url)
            .env_remove("CAIRN_CREDENTIAL")
            .env_remove("CAIRN_PRINCIPAL")
            .env_remove("CAIRN_SECRET_FILE")
            .args(args)
            .output()
            .unwrap()
    };
    let o = cairn(&[
        "run",
        "--timeout",
        "120s",
        "--",
        "echo",
        "hello-authenticated",
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("--principal"),
        "{}",
        show(&o)
    );
    let credential = cli_credential.to_str().unwrap();
    let o = cairn(&[
        "--credential",
        credential,
        "run",
        "--timeout",
        "120s",
        "--",
        "echo",
        "hello-authenticated",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\nagent log:\n{}\nmaster log:\n{}",
        show(&o),
        agent.log(),
        master.log()
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("hello-authenticated"),
        "{}",
        show(&o)
    );
    let o = cairn(&["--credential", credential, "--json", "ps", "--all"]);
    assert_eq!(o.status.code(), Some(0), "{}", show(&o));
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("TASK_FINISHED"),
        "{}",
        show(&o)
    );
    // The framework `cairn run` registered carries the principal it authenticated as.
    let state: Value =
        serde_json::from_str(&get_as_ops(&format!("{master_url}/state"), None).unwrap()).unwrap();
    let frameworks = state["completed_frameworks"]
        .as_array()
        .into_iter()
        .chain(state["frameworks"].as_array())
        .flatten()
        .collect::<Vec<_>>();
    assert!(
        frameworks.iter().any(|f| f["principal"] == "ops"),
        "{state}"
    );
}

#[test]
fn agents_and_the_cli_reach_a_tls_master_trusting_its_ca() {
    let test = "auth_cluster_tls";
    if !require_root(test) || !cairn_testsupport::require_command(test, "openssl") {
        return;
    }
    let master_dir = ServiceDir::new("tls-master");
    let agent_dir = ServiceDir::new("tls-agents");
    let cgroups = CgroupParent::new("tls-cluster");
    let ca = cairn_testsupport::tls::TestCa::new(master_dir.path());
    let creds = master_dir.path().join("credentials");
    fs::write(&creds, "agent agent-secret\nops ops-secret\n").unwrap();
    let agent_credential = agent_dir.path().join("agent-credential");
    fs::write(&agent_credential, "agent agent-secret\n").unwrap();
    let cli_credential = agent_dir.path().join("cli-credential");
    fs::write(&cli_credential, "ops ops-secret\n").unwrap();

    let master_port = free_port();
    let master_addr = format!("127.0.0.1:{master_port}");
    let master_cfg = master_dir.path().join("master.toml");
    fs::write(
        &master_cfg,
        format!(
            "listen = \"{master_addr}\"\nwork_dir = {:?}\nallocation_interval_secs = 0.2\n\
             agent_heartbeat_secs = 1.0\ncredentials = {creds:?}\n\
             authenticate_frameworks = true\nauthenticate_agents = true\n\
             authenticate_http_readonly = true\ntls_cert = {:?}\ntls_key = {:?}\n",
            master_dir.path().join("work"),
            ca.cert,
            ca.key,
        ),
    )
    .unwrap();
    let mut master_cmd = Command::new(binary("cairn-master"));
    master_cmd
        .arg("--config")
        .arg(&master_cfg)
        .env("RUST_LOG", "info");
    let mut master = Service::spawn("cairn-master", master_cmd, master_dir.path()).unwrap();
    let master_url = format!("https://{master_addr}");
    assert!(
        wait_until(Duration::from_secs(20), || {
            !master.is_running()
                || get_as_ops(&format!("{master_url}/health"), Some(&ca.ca)).is_ok()
        }) && master.is_running(),
        "the master did not come up:\n{}",
        master.log()
    );

    // 1. Without `master_ca` the agent does not trust the master and says what to set.
    let (mut untrusting, _) = start_agent(
        "untrusting",
        agent_dir.path(),
        &cgroups,
        &master_url,
        Some(&agent_credential),
        "",
    );
    let why = "is `master_ca` set to the CA that signed the master's TLS certificate?";
    assert!(
        wait_until(Duration::from_secs(20), || untrusting.log().contains(why)),
        "the agent did not log {why:?}:\n{}",
        untrusting.log()
    );
    untrusting.stop(Duration::from_secs(10));
    assert!(slaves(&master_url, Some(&ca.ca)).is_empty());

    // 2. With it, the agent registers over HTTPS.
    let (agent, _) = start_agent(
        "agent",
        agent_dir.path(),
        &cgroups,
        &master_url,
        Some(&agent_credential),
        &format!("master_ca = {:?}\n", ca.ca),
    );
    assert!(
        wait_until(Duration::from_secs(30), || {
            slaves(&master_url, Some(&ca.ca))
                .iter()
                .any(|s| s["active"] == true)
        }),
        "the agent did not register over TLS\nagent log:\n{}\nmaster log:\n{}",
        agent.log(),
        master.log()
    );

    // 3. The CLI: without --master-ca it is told to give it; with it, a task runs.
    let cairn = |args: &[&str]| {
        Command::new(binary("cairn"))
            .env("CAIRN_MASTER", &master_url)
            .env("CAIRN_CREDENTIAL", &cli_credential)
            .env_remove("CAIRN_MASTER_CA")
            .env_remove("CAIRN_PRINCIPAL")
            .env_remove("CAIRN_SECRET_FILE")
            .args(args)
            .output()
            .unwrap()
    };
    let o = cairn(&["agents"]);
    assert_eq!(o.status.code(), Some(1), "{}", show(&o));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("--master-ca") && stderr.trim_end().lines().count() == 1,
        "{}",
        show(&o)
    );
    let ca_path = ca.ca.to_str().unwrap();
    let o = cairn(&[
        "--master-ca",
        ca_path,
        "run",
        "--timeout",
        "120s",
        "--",
        "echo",
        "hello-over-tls",
    ]);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{}\nagent log:\n{}\nmaster log:\n{}",
        show(&o),
        agent.log(),
        master.log()
    );
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("hello-over-tls"),
        "{}",
        show(&o)
    );
}

#[test]
fn an_agent_follows_tls_masters_elected_in_zookeeper() {
    let test = "auth_cluster_tls_zk";
    if !require_root(test)
        || !cairn_testsupport::require_command(test, "openssl")
        || !cairn_testsupport::require_command(test, "java")
    {
        return;
    }
    // Drop order (reverse of declaration): agent, masters, ZooKeeper, cgroups, directories.
    let master_dir = ServiceDir::new("tls-zk-masters");
    let agent_dir = ServiceDir::new("tls-zk-agent");
    let cgroups = CgroupParent::new("tls-zk");
    let zk = cairn_testsupport::zookeeper::ZooKeeper::standalone();
    let zk_url = format!("zk://{}/cairn/tls", zk.connect_string());
    let ca = cairn_testsupport::tls::TestCa::new(master_dir.path());
    let creds = master_dir.path().join("credentials");
    fs::write(&creds, "agent agent-secret\nops ops-secret\n").unwrap();
    let agent_credential = agent_dir.path().join("agent-credential");
    fs::write(&agent_credential, "agent agent-secret\n").unwrap();

    let mut masters: Vec<(Service, String)> = (0..2)
        .map(|i| {
            let addr = format!("127.0.0.1:{}", free_port());
            let cfg = master_dir.path().join(format!("master-{i}.toml"));
            fs::write(
                &cfg,
                format!(
                    "listen = \"{addr}\"\nwork_dir = {:?}\nzk = \"{zk_url}\"\n\
                     zk_session_timeout_secs = 2.0\nagent_heartbeat_secs = 1.0\n\
                     credentials = {creds:?}\nauthenticate_agents = true\n\
                     tls_cert = {:?}\ntls_key = {:?}\n",
                    master_dir.path().join(format!("work-{i}")),
                    ca.cert,
                    ca.key,
                ),
            )
            .unwrap();
            let mut cmd = Command::new(binary("cairn-master"));
            cmd.arg("--config").arg(&cfg).env("RUST_LOG", "info");
            let svc = Service::spawn(&format!("master-{i}"), cmd, master_dir.path()).unwrap();
            (svc, format!("https://{addr}"))
        })
        .collect();
    let elected = |url: &str| {
        get_as_ops(&format!("{url}/metrics/snapshot"), Some(&ca.ca))
            .ok()
            .and_then(|t| serde_json::from_str::<Value>(&t).ok())
            .is_some_and(|v| v["master/elected"] == 1.0)
    };
    let mut leader = None;
    assert!(
        wait_until(Duration::from_secs(60), || {
            leader = masters.iter().position(|(_, url)| elected(url));
            leader.is_some()
        }),
        "no master was elected:\n{}\n{}",
        masters[0].0.log(),
        masters[1].0.log()
    );
    let first = leader.unwrap();
    let other = 1 - first;

    // ZooKeeper's entries carry no scheme: `master_tls` says the masters serve HTTPS.
    let (agent, _) = start_agent(
        "agent",
        agent_dir.path(),
        &cgroups,
        &zk_url,
        Some(&agent_credential),
        &format!("master_tls = true\nmaster_ca = {:?}\n", ca.ca),
    );
    let urls: Vec<String> = masters.iter().map(|(_, url)| url.clone()).collect();
    let registered_with = |i: usize| {
        slaves(&urls[i], Some(&ca.ca))
            .iter()
            .any(|s| s["active"] == true)
    };
    assert!(
        wait_until(Duration::from_secs(60), || registered_with(first)),
        "the agent did not register with the TLS leader\nagent log:\n{}\nmaster log:\n{}",
        agent.log(),
        masters[first].0.log()
    );

    // An agent given both masters, the one that does not lead first: it follows that one's
    // redirect to the leader keeping its credential (an HTTP client that follows redirects
    // itself drops the Authorization header on the way to another host, and the leader then
    // refuses the agent as if its credential were wrong).
    let addrs: Vec<&str> = urls
        .iter()
        .map(|u| u.trim_start_matches("https://"))
        .collect();
    let (listed, _) = start_agent(
        "listed",
        agent_dir.path(),
        &cgroups,
        &format!("https://{},https://{}", addrs[other], addrs[first]),
        Some(&agent_credential),
        &format!(
            "master_ca = {:?}
",
            ca.ca
        ),
    );
    let active_agents = |i: usize| {
        slaves(&urls[i], Some(&ca.ca))
            .iter()
            .filter(|s| s["active"] == true)
            .count()
    };
    assert!(
        wait_until(Duration::from_secs(60), || active_agents(first) == 2),
        "the agent given a list of masters did not register with the leader\nagent log:\n{}",
        listed.log()
    );
    assert!(
        !listed.log().contains("rejected the agent's credential"),
        "the credential was lost on the redirect:\n{}",
        listed.log()
    );
    assert!(
        listed.log().contains("following its redirect"),
        "{}",
        listed.log()
    );
    drop(listed);

    // The leader dies; the agent follows the new one, over TLS, with its credential.
    masters[first].0.kill();
    assert!(
        wait_until(Duration::from_secs(60), || registered_with(other)),
        "the agent did not follow the new TLS leader\nagent log:\n{}\nmaster log:\n{}",
        agent.log(),
        masters[other].0.log()
    );
    drop(agent);
    masters.clear();
    drop(zk);
}
