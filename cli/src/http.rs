//! The CLI's HTTP client: blocking (ureq), JSON in and out, Mesos's `307` redirects to the
//! leading master followed by hand (ureq does not re-POST a body across a redirect), and
//! errors that say which endpoint could not be reached and why. A master endpoint can carry
//! HTTP Basic credentials ([`Endpoint::with_basic_auth`]), sent with every request to it;
//! a `401` is [`HttpError::Unauthorized`], whose message says how to authenticate. An
//! `https://` master is trusted by the webpki roots, or by the CA given with
//! [`Endpoint::trusting`] (`--master-ca`).

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

/// Redirects followed before giving up (a chain longer than this is a loop).
const MAX_REDIRECTS: usize = 5;
/// Largest JSON document read (`/state` of a big cluster).
const MAX_BODY: u64 = 256 << 20;

/// Why a request failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// Nothing answered at the address (refused, no route, DNS, timeout).
    #[error("cannot reach {what} at {url}: {reason}")]
    Unreachable {
        what: &'static str,
        url: String,
        reason: String,
    },
    /// The peer answered with an error status.
    #[error("{what} at {url} answered {status}: {body}")]
    Status {
        what: &'static str,
        url: String,
        status: u16,
        body: String,
    },
    /// The answer was not the JSON expected.
    #[error("{what} at {url} sent unreadable JSON: {source}")]
    Json {
        what: &'static str,
        url: String,
        source: serde_json::Error,
    },
    /// `401`: credentials missing or refused.
    #[error("{what} at {url} {}: {body}; {}", match principal {
        Some(p) => format!("rejected the credentials of principal '{p}' (401 Unauthorized)"),
        None => "requires authentication (401 Unauthorized)".to_string(),
    }, match principal {
        Some(_) => "check --principal and --secret-file (or --credential)",
        None => "give --principal NAME --secret-file FILE, or --credential FILE (`principal secret`)",
    })]
    Unauthorized {
        what: &'static str,
        url: String,
        principal: Option<String>,
        body: String,
    },
    #[error("{what} at {url} redirected more than {MAX_REDIRECTS} times")]
    RedirectLoop { what: &'static str, url: String },
}

/// A base URL (`http://host:port`) and what it is, for messages ("master", "agent").
#[derive(Debug, Clone)]
pub struct Endpoint {
    pub base: String,
    pub what: &'static str,
    agent: ureq::Agent,
    /// The principal and the `Authorization` header value sent with every request.
    auth: Option<(String, String)>,
    /// The roots trusted for HTTPS; `None`: the webpki roots.
    roots: Option<Arc<Vec<ureq::tls::Certificate<'static>>>>,
    timeout: Option<Duration>,
}

/// `host:port` or a URL, without a trailing slash; `http://` is assumed.
pub fn normalize(url: &str) -> String {
    let url = url.trim().trim_end_matches('/');
    if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    }
}

fn agent(
    timeout: Option<Duration>,
    roots: Option<&Arc<Vec<ureq::tls::Certificate<'static>>>>,
) -> ureq::Agent {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .timeout_global(timeout)
        .timeout_connect(Some(Duration::from_secs(5)));
    if let Some(roots) = roots {
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .root_certs(ureq::tls::RootCerts::Specific(roots.clone()))
                .build(),
        );
    }
    config.build().into()
}

/// What a response looked like, before interpretation.
pub struct Answer {
    pub status: u16,
    pub url: String,
    pub headers: Vec<(String, String)>,
    pub body: Box<dyn Read + Send>,
}

impl std::fmt::Debug for Answer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Answer")
            .field("status", &self.status)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

impl Endpoint {
    /// An endpoint whose requests time out after 30 s.
    pub fn new(base: &str, what: &'static str) -> Self {
        Self {
            base: normalize(base),
            what,
            agent: agent(Some(Duration::from_secs(30)), None),
            auth: None,
            roots: None,
            timeout: Some(Duration::from_secs(30)),
        }
    }

    /// Trusts `certs` (and only them) for HTTPS.
    #[must_use]
    pub fn trusting(mut self, certs: &[cairn_tls::CertificateDer<'static>]) -> Self {
        let roots: Vec<_> = certs
            .iter()
            .map(|c| ureq::tls::Certificate::from_der(c.as_ref()).to_owned())
            .collect();
        let roots = Arc::new(roots);
        self.agent = agent(self.timeout, Some(&roots));
        self.roots = Some(roots);
        self
    }

    /// Sends `principal:secret` as HTTP Basic authentication with every request.
    #[must_use]
    pub fn with_basic_auth(mut self, principal: &str, secret: &str) -> Self {
        use base64::Engine as _;
        let token =
            base64::engine::general_purpose::STANDARD.encode(format!("{principal}:{secret}"));
        self.auth = Some((principal.to_string(), format!("Basic {token}")));
        self
    }

    /// The same endpoint without a request timeout (for streams).
    pub fn streaming(&self) -> Self {
        Self {
            base: self.base.clone(),
            what: self.what,
            agent: agent(None, self.roots.as_ref()),
            auth: self.auth.clone(),
            roots: self.roots.clone(),
            timeout: None,
        }
    }

    fn unreachable(&self, url: &str, e: &ureq::Error) -> HttpError {
        let reason = match e {
            ureq::Error::Io(io) => match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connection refused".to_string(),
                _ => io.to_string(),
            },
            ureq::Error::HostNotFound => "host not found".to_string(),
            ureq::Error::Timeout(_) => "timed out".to_string(),
            other => other.to_string(),
        };
        // rustls (through an I/O error): "invalid peer certificate: UnknownIssuer".
        let reason = if reason.contains("certificate") && self.what == "master" {
            format!(
                "{reason} (is the master's TLS certificate signed by a CA given with \
                 --master-ca FILE?)"
            )
        } else {
            reason
        };
        // The origin, not the path: "cannot reach master at http://10.0.0.1:5050".
        let origin = url
            .find("://")
            .and_then(|i| url[i + 3..].find('/').map(|j| &url[..i + 3 + j]))
            .unwrap_or(url);
        HttpError::Unreachable {
            what: self.what,
            url: origin.to_string(),
            reason,
        }
    }

    /// Sends a request to `path`, following `307`/`308` (the body is re-sent), and returns
    /// the final answer whatever its status. Redirects move `base` to the new authority so
    /// later calls go straight to the leader.
    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Result<Answer, HttpError> {
        let mut url = format!("{}{path}", self.base);
        for _ in 0..=MAX_REDIRECTS {
            let result = if method == "GET" {
                let mut req = self.agent.get(&url);
                if let Some((_, auth)) = &self.auth {
                    req = req.header("Authorization", auth);
                }
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.call()
            } else {
                let mut req = self
                    .agent
                    .post(&url)
                    .header("Content-Type", "application/json")
                    .header("Accept", "application/json");
                if let Some((_, auth)) = &self.auth {
                    req = req.header("Authorization", auth);
                }
                for (k, v) in headers {
                    req = req.header(*k, *v);
                }
                req.send(body.map(Value::to_string).unwrap_or_default())
            };
            let resp = result.map_err(|e| self.unreachable(&url, &e))?;
            let status = resp.status().as_u16();
            let hdrs: Vec<(String, String)> = resp
                .headers()
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or("").to_string()))
                .collect();
            if matches!(status, 301 | 302 | 307 | 308) {
                if let Some((_, loc)) = hdrs
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("location"))
                {
                    // Mesos writes `//host:port/path` (same scheme); Cairn writes
                    // `http://host:port/path` (`https://` when the masters serve TLS).
                    let loc = if loc.starts_with("//") {
                        let scheme = if url.starts_with("https:") {
                            "https"
                        } else {
                            "http"
                        };
                        format!("{scheme}:{loc}")
                    } else {
                        loc.clone()
                    };
                    if let Some(base) = loc.strip_suffix(path) {
                        self.base = base.to_string();
                    }
                    url = loc;
                    continue;
                }
            }
            if status == 401 {
                let mut text = String::new();
                let _ = resp
                    .into_body()
                    .into_reader()
                    .take(64 << 10)
                    .read_to_string(&mut text);
                return Err(HttpError::Unauthorized {
                    what: self.what,
                    url,
                    principal: self.auth.as_ref().map(|(p, _)| p.clone()),
                    // One line: the master's reason, without its trailing newline.
                    body: text.split_whitespace().collect::<Vec<_>>().join(" "),
                });
            }
            let body: Box<dyn Read + Send> = Box::new(resp.into_body().into_reader());
            return Ok(Answer {
                status,
                url,
                headers: hdrs,
                body,
            });
        }
        Err(HttpError::RedirectLoop {
            what: self.what,
            url,
        })
    }

    /// A request whose answer must be 2xx; returns the body text.
    pub fn text(
        &mut self,
        method: &str,
        path: &str,
        body: Option<&Value>,
        extra: &[(&str, &str)],
    ) -> Result<String, HttpError> {
        let mut answer = self.send(method, path, extra, body)?;
        let mut text = String::new();
        let _ = (&mut answer.body).take(MAX_BODY).read_to_string(&mut text);
        if !(200..300).contains(&answer.status) {
            return Err(HttpError::Status {
                what: self.what,
                url: answer.url,
                status: answer.status,
                body: text.trim().to_string(),
            });
        }
        Ok(text)
    }

    /// GET `path` as JSON.
    pub fn get<T: DeserializeOwned>(&mut self, path: &str) -> Result<T, HttpError> {
        let text = self.text("GET", path, None, &[])?;
        self.parse(path, &text)
    }

    fn parse<T: DeserializeOwned>(&self, path: &str, text: &str) -> Result<T, HttpError> {
        serde_json::from_str(text).map_err(|source| HttpError::Json {
            what: self.what,
            url: format!("{}{path}", self.base),
            source,
        })
    }
}
