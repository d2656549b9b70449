//! The master's HTTP layer (axum): each route parses its request into a typed call on
//! [`crate::core::Master`], and renders the result with Mesos's status codes. Nothing here
//! decides anything.
//!
//! - `POST /api/v1/scheduler`: the v1 scheduler API (SUBSCRIBE streams RecordIO events).
//! - `POST /api/v1`: the v1 operator API (and, as Mesos routes by prefix, `/api/v1/*`); its
//!   SUBSCRIBE streams RecordIO operator events.
//! - `POST /api/v1/agent`: the agent protocol ([`cairn_api::protocol`]).
//! - `GET /state` (and `/master/state`, `/state.json`), `/version`, `/health`,
//!   `/metrics/snapshot`, `/metrics` (Prometheus text).
//!
//! Routes that may have to authenticate carry [`auth`]'s middleware for their realm.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Extension, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use cairn_api::protocol::{AgentCall, AgentCallType};
use cairn_api::v1::master as op;
use cairn_api::v1::scheduler::{Call, CallType};
use cairn_api::FrameworkId;
use serde::Serialize;
use tokio::sync::Notify;

use crate::core::{AgentError, AgentReply, Master, SchedulerError, MESOS_API_VERSION};
use crate::leadership::{Gate, Route};

pub mod auth;
mod operator;
mod stream;

use operator::operator;
use stream::event_stream;

/// The master shared between request handlers and the allocation task.
#[derive(Debug, Clone)]
pub struct Shared {
    master: Arc<Mutex<Master>>,
    gate: Gate,
    allocation: Arc<AllocationRequests>,
    /// GET_FLAGS's answer when the process knows its whole configuration
    /// ([`Shared::with_flags`]); otherwise the core's settings are listed.
    flags: Option<Arc<Vec<op::Flag>>>,
    /// Who must authenticate ([`Shared::with_auth`]); nobody by default.
    auth: Arc<auth::Authenticator>,
    /// The scheme of redirects to the leader: `https` when the masters serve TLS.
    scheme: &'static str,
}

/// The master of a [`Shared`], without keeping it alive ([`Shared::downgrade`]).
#[derive(Debug, Clone)]
pub struct WeakMaster(Weak<Mutex<Master>>);

impl WeakMaster {
    /// Runs `f` on the master, or returns `None` once it is gone.
    pub fn with<T>(&self, f: impl FnOnce(&Master) -> T) -> Option<T> {
        let master = self.0.upgrade()?;
        let guard = master.lock().unwrap_or_else(|e| e.into_inner());
        Some(f(&guard))
    }
}

/// Shortest time between two event-driven allocation cycles. Calls arriving meanwhile are
/// served by the next cycle, so a burst of status updates, declines and accepts costs one
/// cycle, not one each (Mesos batches `allocate()` requests the same way). Short enough
/// that an offer after a change is not noticeably late.
pub const ALLOCATION_BATCH: Duration = Duration::from_millis(5);

/// Event-driven allocation requests: handlers mark the allocation dirty and wake the
/// allocation task ([`Shared::spawn_ticker`]); many requests before it runs are one cycle.
#[derive(Debug, Default)]
struct AllocationRequests {
    dirty: AtomicBool,
    wake: Notify,
}

impl Shared {
    /// A standalone master, serving at once.
    pub fn new(master: Master) -> Self {
        Self::with_gate(master, Gate::leading())
    }

    /// A master that serves leader-only routes as `gate` says (HA, [`crate::leadership`]).
    pub fn with_gate(master: Master, gate: Gate) -> Self {
        Self {
            master: Arc::new(Mutex::new(master)),
            gate,
            allocation: Arc::default(),
            flags: None,
            auth: Arc::default(),
            scheme: "http",
        }
    }

    /// The masters serve HTTPS: redirects to the leader say `https://`.
    #[must_use]
    pub fn with_https(mut self) -> Self {
        self.scheme = "https";
        self
    }

    /// Requires authentication as `config` says ([`auth`]).
    #[must_use]
    pub fn with_auth(mut self, config: crate::credentials::AuthConfig) -> Self {
        self.auth = Arc::new(auth::Authenticator::new(config));
        self
    }

    /// The metrics snapshot: the master's, the leadership's and the authentication
    /// failures.
    pub fn metrics_snapshot(&self) -> std::collections::BTreeMap<String, f64> {
        let mut v = self.lock().metrics_snapshot();
        self.gate().add_metrics(&mut v);
        self.auth.add_metrics(&mut v);
        v
    }

    /// Answers GET_FLAGS with `flags` (the binary's resolved [`crate::config::Config`]).
    #[must_use]
    pub fn with_flags(mut self, flags: Vec<op::Flag>) -> Self {
        self.flags = Some(Arc::new(flags));
        self
    }

    /// Whether this master serves, and where it redirects otherwise.
    pub fn gate(&self) -> &Gate {
        &self.gate
    }

    /// Replaces the master's state (a new leadership term, or stepping down). The old state
    /// is dropped outside the lock; its subscriber streams end.
    pub fn replace(&self, master: Master) {
        let old = std::mem::replace(&mut *self.lock(), master);
        drop(old);
    }

    /// Locks the master; a handler that panicked while holding it leaves the state as it
    /// was at the panic, which is still the best state there is.
    pub fn lock(&self) -> MutexGuard<'_, Master> {
        self.master.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle that does not keep the master alive, for tasks the master owns (its registry
    /// writer): holding a [`Shared`] there would keep the master, and so the task, forever.
    pub fn downgrade(&self) -> WeakMaster {
        WeakMaster(Arc::downgrade(&self.master))
    }

    /// Ends every subscriber stream ([`Master::close_subscribers`]), so a graceful
    /// shutdown can finish.
    pub fn close_streams(&self) {
        self.lock().close_subscribers();
    }

    /// Asks for an allocation cycle soon: something changed that may make resources
    /// offerable (a framework subscribed or revived, an offer was declined, a task ended,
    /// an agent registered). Cheap; requests coalesce.
    pub fn request_allocation(&self) {
        // Already dirty: the allocation task has been woken and has not started the cycle
        // (it clears the flag before locking the master), so that cycle sees this change.
        if !self.allocation.dirty.swap(true, Ordering::AcqRel) {
            self.allocation.wake.notify_one();
        }
    }

    /// The allocation task, until the process ends: [`Master::tick`] (timeouts,
    /// heartbeats and a full allocation) every `interval`, and between ticks an allocation
    /// cycle after changes ([`Shared::request_allocation`]), at most one per
    /// [`ALLOCATION_BATCH`] or per the last cycle's own duration, whichever is longer (so
    /// allocation never holds the master more than half the time).
    pub fn spawn_ticker(&self, interval: Duration) -> tokio::task::JoinHandle<()> {
        let shared = self.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(interval);
            every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut next_cycle = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    _ = every.tick() => {
                        shared.allocation.dirty.store(false, Ordering::Release);
                        shared.lock().tick(Instant::now());
                    }
                    () = shared.allocation.wake.notified() => {
                        tokio::time::sleep_until(next_cycle).await;
                        // Let handlers already running finish first: their changes join
                        // this cycle instead of waiting for the next.
                        tokio::task::yield_now().await;
                        if !shared.allocation.dirty.swap(false, Ordering::AcqRel) {
                            continue;
                        }
                        let started = Instant::now();
                        shared.lock().allocate(started);
                        next_cycle = tokio::time::Instant::now() + started.elapsed().max(ALLOCATION_BATCH);
                    }
                }
            }
        })
    }
}

/// The master's listener with `TCP_NODELAY` on every connection it accepts: an event
/// stream writes many small chunks, and with Nagle's algorithm each would wait for the
/// previous one's (delayed, up to 40 ms) acknowledgement. Serve with
/// `axum::serve(http::listener(l), router(shared))`.
pub fn listener(
    listener: tokio::net::TcpListener,
) -> impl axum::serve::Listener<Io = tokio::net::TcpStream, Addr = std::net::SocketAddr> {
    use axum::serve::ListenerExt as _;
    listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("cannot set TCP_NODELAY on a connection: {e}");
        }
    })
}

/// The master's HTTPS listener (`tls_cert`, `tls_key`): [`cairn_tls::TlsListener`], which
/// also sets `TCP_NODELAY` on every connection. Call inside the tokio runtime.
///
/// # Errors
/// The listener has no local address.
pub fn tls_listener(
    listener: tokio::net::TcpListener,
    config: Arc<cairn_tls::rustls::ServerConfig>,
) -> std::io::Result<cairn_tls::TlsListener> {
    cairn_tls::TlsListener::new(listener, config)
}

/// All the master's routes. The scheduler, operator and agent APIs are leader-only: a master
/// that does not lead redirects them ([`leader_only`]); the rest answer locally.
pub fn router(shared: Shared) -> Router {
    let readonly = middleware::from_fn_with_state(shared.clone(), auth::readonly);
    let scheduler = post(scheduler).layer(middleware::from_fn_with_state(
        shared.clone(),
        auth::framework,
    ));
    let operator = post(operator).layer(middleware::from_fn_with_state(
        shared.clone(),
        auth::operator,
    ));
    let state = get(state).layer(readonly.clone());
    let leader_only_routes = Router::new()
        .route("/api/v1/scheduler", scheduler.clone())
        .route("/master/api/v1/scheduler", scheduler)
        .route(
            cairn_api::protocol::AGENT_API_PATH,
            post(agent).layer(middleware::from_fn_with_state(shared.clone(), auth::agent)),
        )
        .route("/api/v1", operator.clone())
        .route("/api/v1/{*rest}", operator.clone())
        .route("/master/api/v1", operator)
        .route_layer(middleware::from_fn_with_state(shared.clone(), leader_only));
    Router::new()
        .merge(leader_only_routes)
        .route("/state", state.clone())
        .route("/state.json", state.clone())
        .route("/master/state", state.clone())
        .route("/master/state.json", state)
        .route("/version", get(version))
        .route("/health", get(health))
        .route("/master/health", get(health))
        .route("/metrics/snapshot", get(snapshot).layer(readonly.clone()))
        .route("/metrics", get(prometheus).layer(readonly))
        .with_state(shared)
}

/// Mesos's `redirect` for a master that does not lead: `307 Temporary Redirect` to the same
/// path on the leader, or `503` while no leader is known.
async fn leader_only(State(shared): State<Shared>, request: Request, next: Next) -> Response {
    match shared.gate().route() {
        Route::Serve => next.run(request).await,
        Route::Redirect { authority } => {
            let path = request
                .uri()
                .path_and_query()
                .map_or("/", axum::http::uri::PathAndQuery::as_str);
            let location = format!("{}://{authority}{path}", shared.scheme);
            match HeaderValue::from_str(&location) {
                Ok(v) => (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, v)]).into_response(),
                Err(_) => text(StatusCode::SERVICE_UNAVAILABLE, "No leader elected"),
            }
        }
        Route::Unavailable => text(StatusCode::SERVICE_UNAVAILABLE, "No leader elected"),
    }
}

fn text(status: StatusCode, message: impl Into<String>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        message.into(),
    )
        .into_response()
}

fn json_response(value: &impl Serialize) -> Response {
    match serde_json::to_vec(value) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "application/json")],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Mesos's content negotiation: the body must be JSON (protobuf is not served: 415), and
/// the response type the client accepts must include JSON (406).
fn check_media(headers: &HeaderMap) -> Result<(), Box<Response>> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type.starts_with("application/json") {
        return Err(Box::new(text(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Expecting 'Content-Type' of application/json (Cairn does not serve \
                 application/x-protobuf); got {content_type:?}"
            ),
        )));
    }
    if let Some(accept) = headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()) {
        let ok = accept.split(',').any(|a| {
            let a = a.trim();
            a.starts_with("application/json")
                || a.starts_with("*/*")
                || a.starts_with("application/*")
        });
        if !ok {
            return Err(Box::new(text(
                StatusCode::NOT_ACCEPTABLE,
                format!("Expecting 'Accept' to allow application/json; got {accept:?}"),
            )));
        }
    }
    Ok(())
}

async fn scheduler(
    State(shared): State<Shared>,
    principal: Option<Extension<auth::Principal>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let principal = principal.map(|Extension(p)| p);
    if let Err(r) = check_media(&headers) {
        return *r;
    }
    let call: Call = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Failed to convert JSON into Call protobuf: {e}"),
            )
        }
    };
    let now = Instant::now();
    if call.kind == CallType::Subscribe {
        if let Err(e) = call.validate() {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Failed to validate scheduler::Call: {e}"),
            );
        }
        let mut sub = call.subscribe.expect("validated: subscribe is present");
        if let Err(r) = shared
            .auth
            .framework_principal(principal.as_ref(), &mut sub.framework_info.principal)
        {
            return *r;
        }
        let result = shared.lock().subscribe(call.framework_id, sub, now);
        shared.request_allocation();
        return match result {
            Ok(s) => {
                let fw: FrameworkId = s.framework_id.clone();
                let stream_id = s.stream_id.clone();
                let closer = shared.clone();
                let body = event_stream(s.events, move || {
                    closer
                        .lock()
                        .framework_disconnected(&fw, &stream_id, Instant::now());
                    // Its offers were recovered: others may have them.
                    closer.request_allocation();
                });
                let mut resp = Response::new(body);
                let h = resp.headers_mut();
                h.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                if let Ok(v) = HeaderValue::from_str(&s.stream_id) {
                    h.insert("Mesos-Stream-Id", v);
                }
                resp
            }
            Err(e) => scheduler_error(e),
        };
    }
    let stream_id = headers
        .get("Mesos-Stream-Id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let result = {
        let mut master = shared.lock();
        if principal.is_some() {
            let subscribed = call
                .framework_id
                .as_ref()
                .and_then(|id| master.framework_principal(id));
            if let Err(r) = shared
                .auth
                .same_framework_principal(principal.as_ref(), subscribed.as_deref())
            {
                return *r;
            }
        }
        master.scheduler_call(call, stream_id.as_deref(), now)
    };
    shared.request_allocation();
    match result {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e) => scheduler_error(e),
    }
}

fn scheduler_error(e: SchedulerError) -> Response {
    match e {
        SchedulerError::BadRequest(m) => text(StatusCode::BAD_REQUEST, m),
        SchedulerError::Forbidden(m) => text(StatusCode::FORBIDDEN, m),
    }
}

async fn agent(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if let Err(r) = check_media(&headers) {
        return *r;
    }
    let call: AgentCall = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("malformed agent call: {e}"),
            )
        }
    };
    let now = Instant::now();
    if call.kind == AgentCallType::Subscribe {
        let Some(id) = call.agent_id else {
            return text(
                StatusCode::BAD_REQUEST,
                "expecting 'agent_id' to be present",
            );
        };
        let result = shared.lock().agent_subscribe(&id, now);
        return match result {
            Ok((seq, rx)) => {
                let closer = shared.clone();
                let body = event_stream(rx, move || closer.lock().agent_stream_closed(&id, seq));
                let mut resp = Response::new(body);
                resp.headers_mut().insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
                resp
            }
            Err(e) => agent_error(&e),
        };
    }
    // A first REGISTER (not a REREGISTER) refused for want of storage is undone.
    let registering = call.kind == AgentCallType::Register;
    let (result, saved) = {
        let mut master = shared.lock();
        let result = master.handle_agent_call(call, now);
        // An admission is answered only once the registry holds it (as Mesos's registrar
        // does): a master crash right after the answer must not lose the agent. The wait is
        // outside the lock; registrations arriving meanwhile share the next save.
        let saved =
            matches!(result, Ok(AgentReply::Registered(_))).then(|| master.registry_saved());
        (result, saved)
    };
    shared.request_allocation();
    if let Some(saved) = saved {
        if let Err(e) = saved.wait().await {
            if let (true, Ok(AgentReply::Registered(r))) = (registering, &result) {
                shared.lock().forget_unstored_registration(&r.agent_id);
            }
            return store_error(&e);
        }
    }
    match result {
        Ok(AgentReply::Registered(r)) => json_response(&r),
        Ok(AgentReply::Accepted) => StatusCode::ACCEPTED.into_response(),
        Err(e) => agent_error(&e),
    }
}

/// A change that could not be stored is not confirmed: `503`, so the client retries (and,
/// when this master was deposed, finds the new leader).
pub(crate) fn store_error(e: &crate::registry::StoreError) -> Response {
    text(StatusCode::SERVICE_UNAVAILABLE, e.to_string())
}

fn agent_error(e: &AgentError) -> Response {
    let status = match e {
        AgentError::Invalid(_) => StatusCode::BAD_REQUEST,
        AgentError::NotFound(_) => StatusCode::NOT_FOUND,
        AgentError::Gone(_) => StatusCode::CONFLICT,
    };
    text(status, e.to_string())
}

async fn version() -> Response {
    let parts: Vec<u64> = MESOS_API_VERSION
        .split('.')
        .filter_map(|p| p.parse().ok())
        .collect();
    json_response(&serde_json::json!({
        "version": MESOS_API_VERSION,
        "version_major": parts.first(),
        "version_minor": parts.get(1),
        "version_patch": parts.get(2),
        "cairn_version": env!("CARGO_PKG_VERSION"),
        "build_date": "",
        "build_time": 0.0,
        "build_user": "",
    }))
}

async fn health() -> Response {
    StatusCode::OK.into_response()
}

async fn state(State(shared): State<Shared>) -> Response {
    let v = shared.lock().state_json();
    json_response(&v)
}

async fn snapshot(State(shared): State<Shared>) -> Response {
    json_response(&shared.metrics_snapshot())
}

async fn prometheus(State(shared): State<Shared>) -> Response {
    let snapshot = shared.metrics_snapshot();
    match crate::metrics::render(&snapshot) {
        Ok(body) => (
            StatusCode::OK,
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            body,
        )
            .into_response(),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}
