//! Test support: the master served in-process on loopback, a raw HTTP/1.1 client (so the
//! tests see exactly what goes over the wire: status, headers, chunked RecordIO), and a
//! simulated agent speaking the agent protocol.
#![allow(dead_code, clippy::unwrap_used, clippy::missing_panics_doc)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::time::Duration;

use cairn_api::recordio::Decoder;
use cairn_master::core::{CoreConfig, Master};
use cairn_master::http::{router, Shared};
use cairn_master::registry::Registry;
use serde_json::Value;

/// A master serving on a loopback port, on its own runtime thread.
pub struct TestMaster {
    pub addr: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl TestMaster {
    pub fn start(cfg: CoreConfig, tick: Duration) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let cfg = CoreConfig {
            port: addr.port(),
            ..cfg
        };
        let shared = Shared::new(Master::new(cfg, Registry::default(), None));
        let app = router(shared.clone());
        runtime.spawn(async move {
            shared.spawn_ticker(tick);
            axum::serve(cairn_master::http::listener(listener), app)
                .await
                .unwrap();
        });
        Self {
            addr,
            _runtime: runtime,
        }
    }
}

/// An HTTP response.
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.text()))
    }
}

fn write_request(
    s: &mut TcpStream,
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) {
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
}

fn read_head(r: &mut BufReader<TcpStream>) -> (u16, Vec<(String, String)>) {
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        r.read_line(&mut h).unwrap();
        let h = h.trim_end();
        if h.is_empty() {
            break;
        }
        let (k, v) = h.split_once(':').unwrap();
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    (status, headers)
}

/// Reads one chunk of a chunked body; `None` at the end.
fn read_chunk(r: &mut BufReader<TcpStream>) -> Option<Vec<u8>> {
    let mut size = String::new();
    if r.read_line(&mut size).ok()? == 0 {
        return None;
    }
    let n = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
    let mut buf = vec![0; n + 2];
    r.read_exact(&mut buf).ok()?;
    buf.truncate(n);
    (n > 0).then_some(buf)
}

/// One request on its own connection (`Connection: close`).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Resp {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut all = headers.to_vec();
    all.push(("Connection", "close"));
    write_request(&mut s, addr, method, path, &all, body);
    let mut r = BufReader::new(s);
    let (status, headers) = read_head(&mut r);
    let chunked = headers
        .iter()
        .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let mut body = Vec::new();
    if chunked {
        while let Some(c) = read_chunk(&mut r) {
            body.extend(c);
        }
    } else {
        r.read_to_end(&mut body).unwrap();
    }
    Resp {
        status,
        headers,
        body,
    }
}

pub fn post_json(addr: SocketAddr, path: &str, body: &Value, extra: &[(&str, &str)]) -> Resp {
    let mut headers = vec![
        ("Content-Type", "application/json"),
        ("Accept", "application/json"),
    ];
    headers.extend_from_slice(extra);
    request(addr, "POST", path, &headers, body.to_string().as_bytes())
}

pub fn get(addr: SocketAddr, path: &str) -> Resp {
    request(addr, "GET", path, &[], b"")
}

/// A streaming subscription: the response head and a channel of decoded JSON records.
pub struct Stream {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub events: mpsc::Receiver<Value>,
    /// Events of other kinds seen while waiting for one kind, in order.
    skipped: std::cell::RefCell<std::collections::VecDeque<Value>>,
    socket: TcpStream,
}

impl Drop for Stream {
    /// Closes the connection, as a client going away does.
    fn drop(&mut self) {
        let _ = self.socket.shutdown(std::net::Shutdown::Both);
    }
}

impl Stream {
    pub fn open(addr: SocketAddr, path: &str, body: &Value) -> Self {
        Self::open_with(addr, path, body, &[])
    }

    /// [`Stream::open`] with `extra` headers (`Authorization`).
    pub fn open_with(addr: SocketAddr, path: &str, body: &Value, extra: &[(&str, &str)]) -> Self {
        let mut s = TcpStream::connect(addr).unwrap();
        let socket = s.try_clone().unwrap();
        let mut headers = vec![
            ("Content-Type", "application/json"),
            ("Accept", "application/json"),
        ];
        headers.extend_from_slice(extra);
        write_request(
            &mut s,
            addr,
            "POST",
            path,
            &headers,
            body.to_string().as_bytes(),
        );
        let mut r = BufReader::new(s);
        let (status, headers) = read_head(&mut r);
        let (tx, events) = mpsc::channel();
        std::thread::spawn(move || {
            let mut d = Decoder::new(16 << 20);
            while let Some(chunk) = read_chunk(&mut r) {
                for rec in d.feed(&chunk).unwrap() {
                    if tx.send(serde_json::from_slice(&rec).unwrap()).is_err() {
                        return;
                    }
                }
            }
        });
        Self {
            status,
            headers,
            events,
            skipped: std::cell::RefCell::default(),
            socket,
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The next event of `kind`, skipping HEARTBEATs and other kinds.
    pub fn next_of(&self, kind: &str) -> Value {
        {
            let mut skipped = self.skipped.borrow_mut();
            if let Some(i) = skipped.iter().position(|e| e["type"] == kind) {
                return skipped.remove(i).unwrap();
            }
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let e = self
                .events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {kind} event within 20 s"));
            if e["type"] == kind {
                return e;
            }
            if e["type"] != "HEARTBEAT" {
                self.skipped.borrow_mut().push_back(e);
            }
        }
    }
}

/// A simulated agent: registers, subscribes, and posts calls.
pub struct SimAgent {
    pub addr: SocketAddr,
    pub id: String,
    pub stream: Stream,
    /// The `Authorization` header sent with every call, if any.
    auth: Option<String>,
}

/// The `Authorization` header value of HTTP Basic authentication.
pub fn basic(principal: &str, secret: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{principal}:{secret}"))
    )
}

impl SimAgent {
    pub fn start(addr: SocketAddr, resources: &str) -> Self {
        Self::start_as(addr, resources, None)
    }

    /// A simulated agent authenticating with `auth` (an `Authorization` value, [`basic`]).
    pub fn start_as(addr: SocketAddr, resources: &str, auth: Option<String>) -> Self {
        let extra: Vec<(&str, &str)> = auth
            .as_deref()
            .map(|a| vec![("Authorization", a)])
            .unwrap_or_default();
        let res = cairn_api::Resources::parse(resources).unwrap().to_wire();
        let r = post_json(
            addr,
            "/api/v1/agent",
            &serde_json::json!({"type": "REGISTER", "register": {
                "hostname": "sim-agent", "address": "127.0.0.1:5051",
                "resources": res, "boot_id": "boot-1", "version": "test"}}),
            &extra,
        );
        assert_eq!(r.status, 200, "{}", r.text());
        let id = r.json()["agent_id"]["value"].as_str().unwrap().to_string();
        let stream = Stream::open_with(
            addr,
            "/api/v1/agent",
            &serde_json::json!({"type": "SUBSCRIBE", "agent_id": {"value": id}}),
            &extra,
        );
        assert_eq!(stream.status, 200);
        stream.next_of("SUBSCRIBED");
        Self {
            addr,
            id,
            stream,
            auth,
        }
    }

    /// Posts a status update for `task` of `framework`; returns its uuid (Base64).
    pub fn update(&self, framework: &str, task: &str, state: &str, n: u8) -> String {
        use base64::Engine as _;
        let uuid = base64::engine::general_purpose::STANDARD.encode([n; 16]);
        let r = post_json(
            self.addr,
            "/api/v1/agent",
            &serde_json::json!({"type": "STATUS_UPDATE", "agent_id": {"value": self.id},
                "status_update": {"framework_id": {"value": framework}, "status": {
                    "task_id": {"value": task}, "state": state, "source": "SOURCE_EXECUTOR",
                    "uuid": uuid}}}),
            &self
                .auth
                .as_deref()
                .map(|a| vec![("Authorization", a)])
                .unwrap_or_default(),
        );
        assert_eq!(r.status, 202, "{}", r.text());
        uuid
    }
}

/// Polls `ok` for up to 20 s.
pub fn wait(mut ok: impl FnMut() -> bool) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while std::time::Instant::now() < deadline {
        if ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// `cairn-master` as a process on a free loopback port with `config` (TOML, without
/// `listen` and `work_dir`) in a temp dir; killed (by its PID) on drop.
pub struct MasterProcess {
    pub addr: SocketAddr,
    child: std::process::Child,
    dir: tempfile::TempDir,
}

impl MasterProcess {
    pub fn start(config: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let port = cairn_testsupport::ports::free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        let path = dir.path().join("master.toml");
        std::fs::write(
            &path,
            format!(
                "listen = \"{addr}\"\nwork_dir = {:?}\nallocation_interval_secs = 0.05\n{config}",
                dir.path().join("work")
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("master.log")).unwrap();
        let child = std::process::Command::new(env!("CARGO_BIN_EXE_cairn-master"))
            .arg("--config")
            .arg(&path)
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let mut m = Self { addr, child, dir };
        assert!(
            wait(|| m.child.try_wait().unwrap().is_none() && request_ok(addr, "/health")),
            "cairn-master did not serve on {addr}:\n{}",
            m.log()
        );
        m
    }

    /// What the master logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("master.log")).unwrap_or_default()
    }

    pub fn dir(&self) -> &std::path::Path {
        self.dir.path()
    }
}

fn request_ok(addr: SocketAddr, path: &str) -> bool {
    TcpStream::connect(addr).is_ok() && get(addr, path).status == 200
}

impl Drop for MasterProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
