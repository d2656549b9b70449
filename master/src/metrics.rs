//! `/metrics`: the `/metrics/snapshot` values in Prometheus text format, named `cairn_` +
//! the Mesos name with `/` as `_`, typed as Prometheus asks:
//!
//! - Counters (values that only grow: registrations, status updates, offers sent, allocation
//!   runs, ...; [`COUNTERS`]) are `counter`s with the `_total` suffix:
//!   `master/offers_sent` is `cairn_master_offers_sent_total`.
//! - Everything else is a `gauge`. A `_total` suffix is reserved for counters (`promtool check
//!   metrics` rejects it on a gauge), so `master/cpus_total` is `cairn_master_cpus`; and
//!   milliseconds become seconds (`allocator/mesos/allocation_run_ms` is
//!   `cairn_allocator_mesos_allocation_run_seconds`).
//! - Tasks by state are two families with a `state` label, as Mesos splits them: tasks in a
//!   live state now, `cairn_master_tasks{state="TASK_RUNNING"}` (gauge), and tasks that
//!   reached a terminal state since the master started,
//!   `cairn_master_tasks_terminal_total{state="TASK_FINISHED"}` (counter).
//! - Requests refused for want of valid credentials, by the setting that required them:
//!   `cairn_master_authentication_failures_total{kind="agent"}` (counter; kinds `framework`,
//!   `agent`, `readwrite`, `readonly`; from `master/authentication_failures/<kind>`).

use std::collections::BTreeMap;
use std::str::FromStr as _;

use cairn_api::TaskState;
use prometheus::{Counter, CounterVec, Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};

/// The Mesos metrics that are counters (monotonic since the master started); the task
/// counts of terminal states (`master/tasks_finished`, ...) are counters too.
pub const COUNTERS: &[&str] = &[
    "allocator/mesos/allocation_runs",
    "master/frameworks_disconnected_stalled",
    "master/invalid_status_updates",
    "master/messages_agent_calls",
    "master/messages_decline_offers",
    "master/messages_launch_tasks",
    "master/messages_scheduler_calls",
    "master/offers_rescinded",
    "master/operator_subscribers_disconnected_stalled",
    "master/offers_sent",
    "master/slave_registrations",
    "master/slave_reregistrations",
    "master/slave_unreachable_completed",
    "master/valid_status_updates",
    "registrar/registry_writes",
    "registrar/registry_writes_failed",
    "registrar/registry_writes_fenced",
];

/// The Prometheus name of a Mesos metric (not a task count), and its value in Prometheus's
/// units.
fn prometheus_name(key: &str, value: f64, counter: bool) -> (String, f64) {
    let (base, value) = if counter {
        (format!("{key}_total"), value)
    } else if let Some(base) = key.strip_suffix("_ms") {
        (format!("{base}_seconds"), value / 1000.0)
    } else if let Some(base) = key.strip_suffix("_secs") {
        (format!("{base}_seconds"), value)
    } else if let Some(base) = key.strip_suffix("_total") {
        (base.to_string(), value)
    } else {
        (key.to_string(), value)
    };
    (format!("cairn_{}", base.replace(['/', '-'], "_")), value)
}

/// Renders a metrics snapshot as Prometheus text.
///
/// # Errors
/// A name the prometheus crate refuses (a bug: names come from [`crate::core`]).
pub fn render(snapshot: &BTreeMap<String, f64>) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let live = GaugeVec::new(
        Opts::new(
            "cairn_master_tasks",
            "Tasks in each live state now (Mesos master/tasks_<state>)",
        ),
        &["state"],
    )?;
    let terminal = CounterVec::new(
        Opts::new(
            "cairn_master_tasks_terminal_total",
            "Tasks that reached each terminal state since the master started (Mesos \
             master/tasks_<state>)",
        ),
        &["state"],
    )?;
    let auth_failures = CounterVec::new(
        Opts::new(
            "cairn_master_authentication_failures_total",
            "Requests refused for missing or invalid credentials (or a principal mismatch), by \
             the setting that required authentication",
        ),
        &["kind"],
    )?;
    for (key, value) in snapshot {
        if let Some(kind) = key.strip_prefix(crate::http::auth::FAILURES_PREFIX) {
            auth_failures.with_label_values(&[kind]).inc_by(*value);
            continue;
        }
        if let Some(state) = key.strip_prefix("master/tasks_") {
            let state = format!("TASK_{}", state.to_ascii_uppercase());
            match TaskState::from_str(&state) {
                Ok(s) if s.is_terminal() => terminal.with_label_values(&[&state]).inc_by(*value),
                _ => live.with_label_values(&[&state]).set(*value),
            }
            continue;
        }
        let counter = COUNTERS.contains(&key.as_str());
        let (name, value) = prometheus_name(key, *value, counter);
        let help = format!("Mesos metric {key}");
        if counter {
            let c = Counter::with_opts(Opts::new(name, help))?;
            c.inc_by(value);
            registry.register(Box::new(c))?;
        } else {
            let g = Gauge::with_opts(Opts::new(name, help))?;
            g.set(value);
            registry.register(Box::new(g))?;
        }
    }
    registry.register(Box::new(live))?;
    registry.register(Box::new(terminal))?;
    registry.register(Box::new(auth_failures))?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshot(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
        pairs.iter().map(|(k, v)| ((*k).to_string(), *v)).collect()
    }

    #[test]
    fn counters_get_total_and_gauges_do_not() {
        let text = render(&snapshot(&[
            ("master/offers_sent", 7.0),
            ("master/cpus_total", 4.0),
            ("allocator/mesos/allocation_run_ms", 1.5),
            ("master/tasks_running", 2.0),
            ("master/tasks_finished", 5.0),
        ]))
        .unwrap();
        for line in [
            "# TYPE cairn_master_offers_sent_total counter",
            "cairn_master_offers_sent_total 7",
            "# TYPE cairn_master_cpus gauge",
            "cairn_master_cpus 4",
            "# TYPE cairn_allocator_mesos_allocation_run_seconds gauge",
            "cairn_allocator_mesos_allocation_run_seconds 0.0015",
            "# TYPE cairn_master_tasks gauge",
            "cairn_master_tasks{state=\"TASK_RUNNING\"} 2",
            "# TYPE cairn_master_tasks_terminal_total counter",
            "cairn_master_tasks_terminal_total{state=\"TASK_FINISHED\"} 5",
        ] {
            assert!(text.lines().any(|l| l == line), "no {line:?} in\n{text}");
        }
        assert!(!text.contains("cairn_master_tasks{state=\"TASK_FINISHED\"}"));
    }

    #[test]
    fn every_listed_counter_is_reported() {
        // A renamed metric would silently turn back into a gauge; registrar/* come from the
        // leadership gate, the rest from the core.
        let m = crate::core::Master::new(
            crate::core::CoreConfig::default(),
            crate::registry::Registry::default(),
            None,
        );
        let snap = m.metrics_snapshot();
        for name in COUNTERS.iter().filter(|n| !n.starts_with("registrar/")) {
            assert!(snap.contains_key(*name), "{name} is not in the snapshot");
        }
        let gate = crate::leadership::Gate::leading();
        let mut with_gate = BTreeMap::new();
        gate.add_metrics(&mut with_gate);
        for name in COUNTERS.iter().filter(|n| n.starts_with("registrar/")) {
            assert!(with_gate.contains_key(*name), "{name} is not reported");
        }
    }
}
