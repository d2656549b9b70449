//! HTTP Basic authentication of the master's APIs, as Mesos's `--authenticate_*` flags
//! (docs/master.md, "Authentication"). Each protected route carries one middleware naming
//! its [`Realm`]; a realm that must authenticate refuses a request without valid
//! credentials with `401` and `WWW-Authenticate: Basic realm="cairn"`, and passes the
//! principal it authenticated on to the handler as a [`Principal`] extension.
//!
//! - [`Realm::Framework`]: the scheduler API (`authenticate_frameworks`);
//! - [`Realm::Agent`]: the agent protocol (`authenticate_agents`);
//! - [`Realm::ReadWrite`]: operator calls that change state (`authenticate_http_readwrite`);
//! - [`Realm::ReadOnly`]: `/state`, `/metrics/snapshot`, `/metrics` and the operator's
//!   `GET_*` and `SUBSCRIBE` calls (`authenticate_http_readonly`).
//!
//! `/health` and `/version` are always open.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use serde::Deserialize;

use super::Shared;
use crate::credentials::AuthConfig;

/// The realm named in `WWW-Authenticate`.
pub const REALM: &str = "cairn";

/// Largest operator call read to find its type (the calls are small JSON documents).
const MAX_OPERATOR_CALL: usize = 16 << 20;

/// Which setting protects a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Realm {
    Framework,
    Agent,
    ReadWrite,
    ReadOnly,
}

impl Realm {
    const ALL: [Realm; 4] = [
        Realm::Framework,
        Realm::Agent,
        Realm::ReadWrite,
        Realm::ReadOnly,
    ];

    /// The `kind` label of `cairn_master_authentication_failures_total`.
    fn label(self) -> &'static str {
        match self {
            Realm::Framework => "framework",
            Realm::Agent => "agent",
            Realm::ReadWrite => "readwrite",
            Realm::ReadOnly => "readonly",
        }
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// The principal a request authenticated as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal(pub String);

/// The settings and the failure counts.
#[derive(Debug, Default)]
pub struct Authenticator {
    config: AuthConfig,
    failures: [AtomicU64; 4],
}

/// The metrics-snapshot prefix of the failure counts (`master/authentication_failures/agent`);
/// [`crate::metrics::render`] turns them into one labelled counter.
pub const FAILURES_PREFIX: &str = "master/authentication_failures/";

impl Authenticator {
    pub fn new(config: AuthConfig) -> Self {
        Self {
            config,
            failures: Default::default(),
        }
    }

    fn required(&self, realm: Realm) -> bool {
        match realm {
            Realm::Framework => self.config.frameworks,
            Realm::Agent => self.config.agents,
            Realm::ReadWrite => self.config.http_readwrite,
            Realm::ReadOnly => self.config.http_readonly,
        }
    }

    /// Adds the failure counts to a metrics snapshot.
    pub fn add_metrics(&self, snapshot: &mut BTreeMap<String, f64>) {
        for realm in Realm::ALL {
            #[allow(clippy::cast_precision_loss)] // counts stay far below 2^53
            let n = self.failures[realm.index()].load(Ordering::Relaxed) as f64;
            snapshot.insert(format!("{FAILURES_PREFIX}{}", realm.label()), n);
        }
    }

    fn failed(&self, realm: Realm) {
        self.failures[realm.index()].fetch_add(1, Ordering::Relaxed);
    }

    /// The authenticated principal (`None` when `realm` needs no authentication), or the
    /// reason to refuse.
    fn check(&self, realm: Realm, headers: &HeaderMap) -> Result<Option<Principal>, String> {
        if !self.required(realm) {
            return Ok(None);
        }
        let Some((_, credentials)) = &self.config.credentials else {
            // Config refuses a switch without credentials; refuse rather than open up.
            return Err("the master has no credentials to check against".into());
        };
        let Some(value) = headers.get(header::AUTHORIZATION) else {
            return Err("no credentials: this request needs HTTP Basic authentication".into());
        };
        let value = value
            .to_str()
            .map_err(|_| "malformed Authorization header".to_string())?;
        let (scheme, encoded) = value.trim().split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("basic") {
            return Err(format!(
                "unsupported authentication scheme '{scheme}': expecting Basic"
            ));
        }
        let decoded = base64::engine::general_purpose::STANDARD
            .decode(encoded.trim())
            .ok()
            .and_then(|d| String::from_utf8(d).ok())
            .ok_or_else(|| "malformed Basic credentials (not base64 of UTF-8)".to_string())?;
        let Some((principal, secret)) = decoded.split_once(':') else {
            return Err("malformed Basic credentials (no ':' between principal and secret)".into());
        };
        if credentials.verify(principal, secret) {
            Ok(Some(Principal(principal.to_string())))
        } else {
            Err(format!("invalid credentials for principal '{principal}'"))
        }
    }

    /// Passes `request` on when it may, with its [`Principal`]; answers `401` otherwise.
    async fn admit(&self, realm: Realm, mut request: Request, next: Next) -> Response {
        match self.check(realm, request.headers()) {
            Ok(principal) => {
                if let Some(p) = principal {
                    request.extensions_mut().insert(p);
                }
                next.run(request).await
            }
            Err(reason) => {
                self.failed(realm);
                tracing::warn!(
                    realm = realm.label(),
                    path = %request.uri().path(),
                    "authentication failed: {reason}"
                );
                unauthorized(&reason)
            }
        }
    }

    /// Checks an authenticated framework's principal against the one in its `FrameworkInfo`
    /// (Mesos's `master/http.cpp`): a different one is `403`; an unset one becomes the
    /// authenticated principal.
    pub(super) fn framework_principal(
        &self,
        authenticated: Option<&Principal>,
        info_principal: &mut Option<String>,
    ) -> Result<(), Box<Response>> {
        let Some(Principal(p)) = authenticated else {
            return Ok(());
        };
        match info_principal {
            Some(fp) if fp != p => {
                self.failed(Realm::Framework);
                Err(Box::new(forbidden(format!(
                    "Authenticated principal '{p}' does not match principal '{fp}' set in \
                     `FrameworkInfo`"
                ))))
            }
            Some(_) => Ok(()),
            None => {
                *info_principal = Some(p.clone());
                Ok(())
            }
        }
    }

    /// A call on a subscribed framework by another principal than the one it subscribed as
    /// is `403`.
    pub(super) fn same_framework_principal(
        &self,
        authenticated: Option<&Principal>,
        subscribed: Option<&str>,
    ) -> Result<(), Box<Response>> {
        match (authenticated, subscribed) {
            (Some(Principal(p)), Some(fp)) if p != fp => {
                self.failed(Realm::Framework);
                Err(Box::new(forbidden(format!(
                    "Authenticated principal '{p}' does not match principal '{fp}' used to \
                     subscribe"
                ))))
            }
            _ => Ok(()),
        }
    }
}

fn unauthorized(reason: &str) -> Response {
    let mut resp = (
        StatusCode::UNAUTHORIZED,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        format!("{reason}\n"),
    )
        .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"cairn\""),
    );
    resp
}

fn forbidden(message: String) -> Response {
    (
        StatusCode::FORBIDDEN,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message,
    )
        .into_response()
}

/// Middleware of the scheduler API.
pub(super) async fn framework(
    State(shared): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    shared.auth.admit(Realm::Framework, request, next).await
}

/// Middleware of the agent protocol.
pub(super) async fn agent(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    shared.auth.admit(Realm::Agent, request, next).await
}

/// Middleware of the read-only endpoints (`/state`, the metrics).
pub(super) async fn readonly(
    State(shared): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    shared.auth.admit(Realm::ReadOnly, request, next).await
}

/// Middleware of the operator API: `GET_*` and `SUBSCRIBE` read, every other call (and a
/// body that is not a call: the handler refuses it) writes.
pub(super) async fn operator(
    State(shared): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    if !shared.auth.required(Realm::ReadOnly) && !shared.auth.required(Realm::ReadWrite) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let bytes = match axum::body::to_bytes(body, MAX_OPERATOR_CALL).await {
        Ok(b) => b,
        Err(e) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("cannot read the request body: {e}"),
            )
                .into_response()
        }
    };
    #[derive(Deserialize)]
    struct Kind {
        #[serde(rename = "type")]
        kind: Option<String>,
    }
    let reads = serde_json::from_slice::<Kind>(&bytes)
        .ok()
        .and_then(|k| k.kind)
        .is_some_and(|k| k.starts_with("GET_") || k == "SUBSCRIBE");
    let realm = if reads {
        Realm::ReadOnly
    } else {
        Realm::ReadWrite
    };
    let request = Request::from_parts(parts, axum::body::Body::from(bytes));
    shared.auth.admit(realm, request, next).await
}
