//! A tiny HTTP/1.1 registry fake on loopback (std::net), for tests about how the client
//! handles a misbehaving registry: 500s, hangs, truncated bodies, wrong digests. Each
//! connection gets one response and is closed.

#![allow(dead_code, clippy::unwrap_used)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use cairn_oci::digest::Digest;
use cairn_oci::manifest::media_type;

/// A request as the fake saw it.
#[derive(Debug, Clone)]
pub struct Request {
    /// Path with query string.
    pub path: String,
    /// Headers, names lower-cased.
    pub headers: Vec<(String, String)>,
}

impl Request {
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    /// The start of a `Range: bytes=N-` header.
    pub fn range_from(&self) -> Option<usize> {
        self.header("range")?
            .strip_prefix("bytes=")?
            .strip_suffix('-')?
            .parse()
            .ok()
    }
}

/// What to answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A complete response.
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// 200 with the full Content-Length, but only `sent` bytes, then the connection closes.
    Truncate { body: Vec<u8>, sent: usize },
    /// Headers and `sent` bytes of the body, then nothing (the connection stays open).
    HangAfter {
        status: u16,
        body: Vec<u8>,
        sent: usize,
    },
    /// Accept the connection and never answer.
    Hang,
}

impl Reply {
    pub fn status(status: u16) -> Self {
        Reply::Full {
            status,
            headers: vec![],
            body: vec![],
        }
    }

    pub fn ok(body: Vec<u8>, content_type: &str) -> Self {
        Reply::Full {
            status: 200,
            headers: vec![("Content-Type".into(), content_type.into())],
            body,
        }
    }

    /// 206 with `full[from..]`.
    pub fn partial(full: &[u8], from: usize) -> Self {
        Reply::Full {
            status: 206,
            headers: vec![(
                "Content-Range".into(),
                format!("bytes {from}-{}/{}", full.len() - 1, full.len()),
            )],
            body: full[from..].to_vec(),
        }
    }

    /// Sets (replaces) a header of a `Full` reply.
    pub fn set_header(&mut self, name: &str, value: &str) {
        if let Reply::Full { headers, .. } = self {
            headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            headers.push((name.into(), value.into()));
        }
    }
}

type Handler = dyn Fn(&str, &Request) -> Reply + Send + Sync;

/// The fake; stops accepting when dropped.
pub struct FakeRegistry {
    addr: String,
    requests: Arc<Mutex<Vec<Request>>>,
    stop: Arc<AtomicBool>,
}

impl FakeRegistry {
    pub fn start(handler: impl Fn(&Request) -> Reply + Send + Sync + 'static) -> Self {
        Self::start_with_addr(move |_, req| handler(req))
    }

    /// Like `start`, the handler also gets the fake's own `host:port` (for token realms).
    pub fn start_with_addr(
        handler: impl Fn(&str, &Request) -> Reply + Send + Sync + 'static,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let handler: Arc<Handler> = Arc::new(handler);
        let (reqs, stop2, addr2) = (requests.clone(), stop.clone(), addr.clone());
        thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(conn) = conn else { continue };
                let (handler, reqs, stop, addr) =
                    (handler.clone(), reqs.clone(), stop2.clone(), addr2.clone());
                thread::spawn(move || serve(conn, &*handler, &reqs, &stop, &addr));
            }
        });
        Self {
            addr,
            requests,
            stop,
        }
    }

    pub fn addr(&self) -> String {
        self.addr.clone()
    }

    pub fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeRegistry {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = TcpStream::connect(&self.addr);
    }
}

fn serve(
    mut conn: TcpStream,
    handler: &Handler,
    reqs: &Mutex<Vec<Request>>,
    stop: &AtomicBool,
    addr: &str,
) {
    let mut reader = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if reader.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).unwrap_or(0) == 0 || h.trim().is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let req = Request { path, headers };
    reqs.lock().unwrap().push(req.clone());
    let head = |status: u16, len: usize, extra: &[(String, String)]| {
        let mut s =
            format!("HTTP/1.1 {status} X\r\nContent-Length: {len}\r\nConnection: close\r\n");
        for (n, v) in extra {
            s.push_str(&format!("{n}: {v}\r\n"));
        }
        s.push_str("\r\n");
        s.into_bytes()
    };
    let hang = || {
        while !stop.load(Ordering::SeqCst) {
            thread::sleep(Duration::from_millis(50));
        }
    };
    match handler(addr, &req) {
        Reply::Full {
            status,
            headers,
            body,
        } => {
            let _ = conn.write_all(&head(status, body.len(), &headers));
            let _ = conn.write_all(&body);
        }
        Reply::Truncate { body, sent } => {
            let _ = conn.write_all(&head(200, body.len(), &[]));
            let _ = conn.write_all(&body[..sent]);
        }
        Reply::HangAfter { status, body, sent } => {
            let _ = conn.write_all(&head(status, body.len(), &[]));
            let _ = conn.write_all(&body[..sent]);
            let _ = conn.flush();
            hang();
        }
        Reply::Hang => hang(),
    }
    let _ = conn.flush();
    let _ = conn.shutdown(std::net::Shutdown::Both);
}

/// A one-layer OCI image the fake can serve as `test/img:v1`.
#[derive(Debug, Clone)]
pub struct FakeImage {
    pub config: Vec<u8>,
    pub layer: Vec<u8>,
    pub layer_digest: Digest,
    pub manifest: Vec<u8>,
}

impl FakeImage {
    pub fn new() -> Self {
        Self::with_layer_media_type(media_type::OCI_LAYER_TAR)
    }

    pub fn with_layer_media_type(layer_type: &str) -> Self {
        let config = br#"{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]},"config":{"Cmd":["/bin/true"]}}"#.to_vec();
        // Deterministic bytes, large enough to arrive in several chunks.
        let layer: Vec<u8> = (0..200_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        let layer_digest = Digest::of(&layer);
        let manifest = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": media_type::OCI_MANIFEST,
            "config": {"mediaType": media_type::OCI_CONFIG, "digest": Digest::of(&config).to_string(), "size": config.len()},
            "layers": [{"mediaType": layer_type, "digest": layer_digest.to_string(), "size": layer.len()}],
        }))
        .unwrap();
        Self {
            config,
            layer,
            layer_digest,
            manifest,
        }
    }

    /// Answers like a well-behaved registry holding this image.
    pub fn serve(&self, req: &Request) -> Reply {
        let path = req.path.as_str();
        if path == "/v2/" {
            return Reply::status(200);
        }
        let manifest_digest = Digest::of(&self.manifest);
        if path == "/v2/test/img/manifests/v1"
            || path == format!("/v2/test/img/manifests/{manifest_digest}")
        {
            let mut r = Reply::ok(self.manifest.clone(), media_type::OCI_MANIFEST);
            r.set_header("Docker-Content-Digest", &manifest_digest.to_string());
            return r;
        }
        if path == format!("/v2/test/img/blobs/{}", Digest::of(&self.config)) {
            return Reply::ok(self.config.clone(), "application/octet-stream");
        }
        if path == format!("/v2/test/img/blobs/{}", self.layer_digest) {
            return Reply::ok(self.layer.clone(), "application/octet-stream");
        }
        Reply::status(404)
    }
}
