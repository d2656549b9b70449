//! `POST /api/v1`: the v1 operator API. Synchronous calls answer a `master::Response`;
//! SUBSCRIBE answers a stream of `master::Event`s ([`crate::core::Master::operator_subscribe`]).

use std::time::Instant;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use cairn_api::v1::master as op;

use super::stream::event_stream;
use super::{check_media, json_response, text, Shared};
use crate::core::MESOS_API_VERSION;

pub(super) async fn operator(
    State(shared): State<Shared>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err(r) = check_media(&headers) {
        return *r;
    }
    let call: op::Call = match serde_json::from_slice(&body) {
        Ok(c) => c,
        Err(e) => {
            return text(
                StatusCode::BAD_REQUEST,
                format!("Failed to convert JSON into Call protobuf: {e}"),
            )
        }
    };
    let now = Instant::now();
    if call.kind == op::CallType::Subscribe {
        let events = shared.lock().operator_subscribe();
        let mut resp = Response::new(event_stream(events, || {}));
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        return resp;
    }
    let mut saved = None;
    let response = answer(&shared, call, now, &mut saved);
    // A registry change is confirmed only once it is stored; the wait is outside the lock.
    if let Some(saved) = saved {
        if let Err(e) = saved.wait().await {
            return super::store_error(&e);
        }
    }
    response
}

/// Answers a (non-streaming) operator call under the master's lock; a call that changed the
/// registry leaves in `saved` the save to wait for before its answer counts.
fn answer(
    shared: &Shared,
    call: op::Call,
    now: Instant,
    saved: &mut Option<crate::registry::SaveTicket>,
) -> Response {
    let mut m = shared.lock();
    let mut r = op::Response::new(call.kind);
    match call.kind {
        op::CallType::Subscribe => unreachable!("answered with a stream above"),
        op::CallType::GetFlags => {
            let flags = match &shared.flags {
                Some(f) => f.as_ref().clone(),
                None => m.config().flags(),
            };
            r.get_flags = Some(op::GetFlags { flags });
        }
        op::CallType::GetMetrics => {
            let mut snapshot = m.metrics_snapshot();
            shared.gate().add_metrics(&mut snapshot);
            shared.auth.add_metrics(&mut snapshot);
            r.get_metrics = Some(op::GetMetrics {
                metrics: snapshot
                    .into_iter()
                    .map(|(name, value)| op::Metric {
                        name,
                        value: Some(value),
                    })
                    .collect(),
            });
        }
        op::CallType::GetHealth => r.get_health = Some(op::GetHealth { healthy: true }),
        op::CallType::GetVersion => {
            r.get_version = Some(op::GetVersion {
                version_info: version_info(),
            });
        }
        op::CallType::GetState => r.get_state = Some(m.get_state()),
        op::CallType::GetAgents => r.get_agents = Some(m.get_agents()),
        op::CallType::GetFrameworks => r.get_frameworks = Some(m.get_frameworks()),
        op::CallType::GetExecutors => r.get_executors = Some(op::GetExecutors::default()),
        op::CallType::GetTasks => r.get_tasks = Some(m.get_tasks()),
        op::CallType::GetRoles => r.get_roles = Some(m.get_roles()),
        op::CallType::GetWeights => r.get_weights = Some(m.get_weights()),
        op::CallType::GetQuota => r.get_quota = Some(m.get_quota()),
        op::CallType::GetMaster => r.get_master = Some(m.get_master()),
        op::CallType::UpdateWeights => {
            let Some(u) = call.update_weights else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Expecting 'update_weights' to be present",
                );
            };
            shared.request_allocation();
            if let Err(e) = m.update_weights(&u.weight_infos) {
                return text(StatusCode::BAD_REQUEST, e.0);
            }
            *saved = Some(m.registry_saved());
            return StatusCode::OK.into_response();
        }
        op::CallType::UpdateQuota => {
            let Some(u) = call.update_quota else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Expecting 'update_quota' to be present",
                );
            };
            shared.request_allocation();
            if let Err(e) = m.update_quota(&u.quota_configs) {
                return text(StatusCode::BAD_REQUEST, e.0);
            }
            *saved = Some(m.registry_saved());
            return StatusCode::OK.into_response();
        }
        op::CallType::Teardown => {
            let Some(t) = call.teardown else {
                return text(
                    StatusCode::BAD_REQUEST,
                    "Expecting 'teardown' to be present",
                );
            };
            shared.request_allocation();
            return if m.remove_framework(&t.framework_id, now) {
                StatusCode::OK.into_response()
            } else {
                text(
                    StatusCode::BAD_REQUEST,
                    format!("No framework found with specified ID: {}", t.framework_id),
                )
            };
        }
        op::CallType::Unknown => {
            return text(StatusCode::BAD_REQUEST, "Expecting 'type' to be present");
        }
    }
    drop(m);
    json_response(&r)
}

fn version_info() -> op::VersionInfo {
    op::VersionInfo {
        version: MESOS_API_VERSION.into(),
        build_date: None,
        build_time: Some(0.0),
        build_user: None,
        git_sha: None,
    }
}
