//! The agent's HTTP API (issue 5, item 8). Each route parses its request into a typed query,
//! runs it against an [`AgentView`] on a blocking thread (the containerizer and cgroup reads
//! are synchronous), and renders the answer; the containerizer never sees HTTP.
//!
//! - `/state`, `/slave(1)/state`: Mesos's agent state JSON ([`state`]);
//! - `/monitor/statistics`, `/slave(1)/monitor/statistics`: usage per container;
//! - `/metrics/snapshot`: Mesos metric names; `/metrics`: Prometheus text ([`metrics`]);
//! - `/files/read`, `/files/browse`: sandbox files, confined to the sandboxes ([`files`]);
//! - `/images`: the images in the agent's store, `{"images": [{reference, digest, layers,
//!   size}]}` (`cairn images`);
//! - `/pulls`: image pulls in progress, `{"pulls": [{reference, layers, layers_done,
//!   bytes_total, bytes_done, started}]}` (`cairn run`'s progress);
//! - `/health`: 200 while the agent serves.

pub mod files;
pub mod metrics;
pub mod state;
pub mod tls;
pub mod view;

use std::collections::BTreeMap;
use std::sync::{Arc, PoisonError, RwLock};

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use cairn_api::ContainerId;
use cairn_isolators::ResourceStatistics;
use serde::Deserialize;

pub use files::{FilesError, ReadFile};
pub use metrics::AgentMetrics;
pub use view::{
    AgentInfo, AgentView, ContainerView, ContainerizerView, ImageView, RecoveryStats, TaskMeta,
};

/// What the routes read: the agent's containers, its identity, its metrics.
#[derive(Clone)]
pub struct AgentHttpState {
    view: Arc<dyn AgentView>,
    info: Arc<RwLock<AgentInfo>>,
    metrics: AgentMetrics,
}

impl std::fmt::Debug for AgentHttpState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentHttpState")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

/// Why the HTTP state could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HttpStateError {
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot spawn the metrics thread: {0}")]
    Spawn(#[from] std::io::Error),
}

impl AgentHttpState {
    /// Wires the view and the agent's info, and starts counting the view's container events
    /// (launch latency, terminal states) from now on.
    ///
    /// # Errors
    /// See [`HttpStateError`].
    pub fn new(view: Arc<dyn AgentView>, info: AgentInfo) -> Result<Self, HttpStateError> {
        let metrics = AgentMetrics::new()?;
        metrics.observe(view.subscribe())?;
        Ok(Self {
            view,
            info: Arc::new(RwLock::new(info)),
            metrics,
        })
    }

    /// Changes the agent's info (the id after registration, re-measured resources).
    pub fn update_info(&self, f: impl FnOnce(&mut AgentInfo)) {
        f(&mut self.info.write().unwrap_or_else(PoisonError::into_inner));
    }

    fn info(&self) -> AgentInfo {
        self.info
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The containers and the usage of those not ended.
    fn sample(
        &self,
    ) -> (
        Vec<ContainerView>,
        BTreeMap<ContainerId, ResourceStatistics>,
    ) {
        let containers = self.view.containers();
        let usage = containers
            .iter()
            .filter(|c| c.is_active())
            .filter_map(|c| Some((c.container_id.clone(), self.view.usage(&c.container_id)?)))
            .collect();
        (containers, usage)
    }
}

/// The agent's routes; the daemon serves them (and may merge its own).
pub fn router(state: AgentHttpState) -> Router {
    Router::new()
        .route("/health", get(|| async { "OK" }))
        .route("/state", get(get_state))
        .route("/slave(1)/state", get(get_state))
        .route("/monitor/statistics", get(get_statistics))
        .route("/slave(1)/monitor/statistics", get(get_statistics))
        .route("/metrics/snapshot", get(get_snapshot))
        .route("/metrics", get(get_metrics))
        .route("/files/read", get(get_read))
        .route("/files/browse", get(get_browse))
        .route("/images", get(get_images))
        .route("/pulls", get(get_pulls))
        .with_state(state)
}

/// Runs `f` on a blocking thread; a panic there is a 500.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("handler failed: {e}"),
        )
            .into_response()
    })
}

async fn get_state(State(s): State<AgentHttpState>) -> Response {
    match blocking(move || state::state(&s.info(), &s.view.containers())).await {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn get_images(State(s): State<AgentHttpState>) -> Response {
    match blocking(move || s.view.images()).await {
        Ok(Ok(images)) => Json(serde_json::json!({ "images": images })).into_response(),
        Ok(Err(e)) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("reading the image store: {e}"),
        )
            .into_response(),
        Err(r) => r,
    }
}

async fn get_pulls() -> Response {
    let pulls = crate::containerizer::provision::pulls::in_progress();
    Json(serde_json::json!({ "pulls": pulls })).into_response()
}

async fn get_statistics(State(s): State<AgentHttpState>) -> Response {
    let answer = blocking(move || {
        let (containers, usage) = s.sample();
        state::statistics(&containers, &usage)
    })
    .await;
    match answer {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn get_snapshot(State(s): State<AgentHttpState>) -> Response {
    let answer = blocking(move || {
        let info = s.info();
        let containers = s.view.containers();
        let usage = BTreeMap::new();
        let sample = metrics::Sample {
            info: &info,
            containers: &containers,
            usage: &usage,
        };
        metrics::snapshot(&s.metrics, &sample)
    })
    .await;
    match answer {
        Ok(v) => Json(v).into_response(),
        Err(r) => r,
    }
}

async fn get_metrics(State(s): State<AgentHttpState>) -> Response {
    let answer = blocking(move || {
        let info = s.info();
        let (containers, usage) = s.sample();
        let sample = metrics::Sample {
            info: &info,
            containers: &containers,
            usage: &usage,
        };
        metrics::render(&s.metrics, &sample)
    })
    .await;
    match answer {
        Ok(Ok(text)) => (
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}")).into_response(),
        Err(r) => r,
    }
}

/// `/files/read` query parameters, as Mesos names them.
#[derive(Debug, Deserialize)]
struct ReadParams {
    path: Option<String>,
    offset: Option<i64>,
    length: Option<u64>,
}

/// `/files/browse` query parameters.
#[derive(Debug, Deserialize)]
struct BrowseParams {
    path: Option<String>,
}

fn files_error(e: &FilesError) -> Response {
    let status = match e {
        FilesError::Forbidden(_) => StatusCode::FORBIDDEN,
        FilesError::NotFound(_) => StatusCode::NOT_FOUND,
        FilesError::BadRequest(_) => StatusCode::BAD_REQUEST,
        FilesError::Io { source, .. } if source.raw_os_error() == Some(libc::ELOOP) => {
            // O_NOFOLLOW met a symlink on the last component.
            StatusCode::FORBIDDEN
        }
        FilesError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            StatusCode::NOT_FOUND
        }
        FilesError::Io { .. } => StatusCode::INTERNAL_SERVER_ERROR,
    };
    (status, e.to_string()).into_response()
}

async fn get_read(State(s): State<AgentHttpState>, Query(q): Query<ReadParams>) -> Response {
    let call = ReadFile {
        path: q.path.unwrap_or_default(),
        offset: q.offset.unwrap_or(0),
        length: q.length,
    };
    match blocking(move || files::read(&s.view.sandboxes(), &call)).await {
        Ok(Ok(answer)) => Json(answer).into_response(),
        Ok(Err(e)) => files_error(&e),
        Err(r) => r,
    }
}

async fn get_browse(State(s): State<AgentHttpState>, Query(q): Query<BrowseParams>) -> Response {
    let path = q.path.unwrap_or_default();
    match blocking(move || files::browse(&s.view.sandboxes(), &path)).await {
        Ok(Ok(entries)) => Json(entries).into_response(),
        Ok(Err(e)) => files_error(&e),
        Err(r) => r,
    }
}
