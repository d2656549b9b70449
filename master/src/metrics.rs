//! `/metrics`: the `/metrics/snapshot` values in Prometheus text format, named `cairn_` +
//! the Mesos name with `/` as `_` (`master/cpus_used` is `cairn_master_cpus_used`). Task
//! counts by state are also one family with a `state` label (`cairn_master_tasks{state=
//! "TASK_RUNNING"}`), and milliseconds become seconds, as Prometheus's conventions ask. The
//! values are gauges, and a `_total` suffix is reserved for counters (`promtool check
//! metrics` rejects it on a gauge), so `master/cpus_total` is `cairn_master_cpus`.

use std::collections::BTreeMap;

use prometheus::{Encoder, Gauge, GaugeVec, Opts, Registry, TextEncoder};

/// Renders a metrics snapshot as Prometheus text.
///
/// # Errors
/// A name the prometheus crate refuses (a bug: names come from [`crate::core`]).
pub fn render(snapshot: &BTreeMap<String, f64>) -> Result<String, prometheus::Error> {
    let registry = Registry::new();
    let tasks = GaugeVec::new(
        Opts::new("cairn_master_tasks", "Tasks known to the master, by state"),
        &["state"],
    )?;
    for (key, value) in snapshot {
        if let Some(state) = key.strip_prefix("master/tasks_") {
            tasks
                .with_label_values(&[&format!("TASK_{}", state.to_ascii_uppercase())])
                .set(*value);
            continue;
        }
        let (name, value) = if let Some(base) = key.strip_suffix("_ms") {
            (format!("{base}_seconds"), value / 1000.0)
        } else if let Some(base) = key.strip_suffix("_secs") {
            (format!("{base}_seconds"), *value)
        } else if let Some(base) = key.strip_suffix("_total") {
            (base.to_string(), *value)
        } else {
            (key.clone(), *value)
        };
        let name = format!("cairn_{}", name.replace(['/', '-'], "_"));
        let gauge = Gauge::with_opts(Opts::new(name, format!("Mesos metric {key}")))?;
        gauge.set(value);
        registry.register(Box::new(gauge))?;
    }
    registry.register(Box::new(tasks))?;
    let mut out = Vec::new();
    TextEncoder::new().encode(&registry.gather(), &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}
