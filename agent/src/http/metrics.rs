//! The agent's metrics: `/metrics/snapshot` with Mesos's names and `/metrics` in Prometheus
//! text format (`cairn_agent_` prefix, base units, counters ending in `_total`, as
//! `promtool check metrics` asks).
//!
//! Counters that outlive the containers (terminal task states, launch errors, the launch
//! latency histogram) are fed by the containerizer's events, on a thread that ends when the
//! containerizer does. Everything else is read from the agent at scrape time.

use std::collections::{BTreeMap, HashMap};
use std::sync::mpsc;
use std::time::{Instant, SystemTime};

use cairn_api::{ContainerId, Reason, TaskState};
use cairn_isolators::ResourceStatistics;
use prometheus::{
    Counter, CounterVec, Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, Opts, Registry,
    TextEncoder,
};

use super::view::{AgentInfo, ContainerView};
use crate::containerizer::{ContainerState, Event};

/// Launch latency buckets in seconds: a cached image launches in tens of milliseconds, a
/// pull may take a minute.
const LAUNCH_BUCKETS: &[f64] = &[
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

/// Metrics that accumulate over the agent's life.
#[derive(Debug, Clone)]
pub struct AgentMetrics {
    registry: Registry,
    launch_seconds: Histogram,
    terminations: CounterVec,
    launch_errors: Counter,
    destroy_errors: Counter,
}

impl AgentMetrics {
    /// Builds the accumulating metrics.
    ///
    /// # Errors
    /// A metric the prometheus crate refuses (a bug: names are constants).
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let launch_seconds = Histogram::with_opts(
            HistogramOpts::new(
                "cairn_agent_launch_duration_seconds",
                "Time from a launch request to TASK_RUNNING",
            )
            .buckets(LAUNCH_BUCKETS.to_vec()),
        )?;
        let terminations = CounterVec::new(
            Opts::new(
                "cairn_agent_task_terminations_total",
                "Tasks that reached a terminal state since the agent started, by state",
            ),
            &["state"],
        )?;
        let launch_errors = Counter::new(
            "cairn_agent_container_launch_errors_total",
            "Containers whose launch failed (REASON_CONTAINER_LAUNCH_FAILED)",
        )?;
        let destroy_errors = Counter::new(
            "cairn_agent_container_destroy_errors_total",
            "Containers whose destruction failed in a step (see the agent's log): something \
             may be left behind",
        )?;
        registry.register(Box::new(destroy_errors.clone()))?;
        registry.register(Box::new(launch_seconds.clone()))?;
        registry.register(Box::new(terminations.clone()))?;
        registry.register(Box::new(launch_errors.clone()))?;
        Ok(Self {
            registry,
            launch_seconds,
            terminations,
            launch_errors,
            destroy_errors,
        })
    }

    /// Consumes containerizer events on a thread until the containerizer goes away.
    ///
    /// # Errors
    /// The thread could not be spawned.
    pub fn observe(&self, events: mpsc::Receiver<Event>) -> std::io::Result<()> {
        let metrics = self.clone();
        std::thread::Builder::new()
            .name("agent-metrics".into())
            .spawn(move || {
                let mut launching: HashMap<ContainerId, Instant> = HashMap::new();
                for event in events {
                    metrics.record(&mut launching, &event);
                }
            })
            .map(drop)
    }

    fn record(&self, launching: &mut HashMap<ContainerId, Instant>, event: &Event) {
        match event {
            Event::Container {
                container,
                state: ContainerState::Provisioning,
                ..
            } => {
                launching.insert(container.clone(), Instant::now());
            }
            Event::Task {
                container,
                state: TaskState::Running,
                ..
            } => {
                if let Some(start) = launching.remove(container) {
                    self.launch_seconds.observe(start.elapsed().as_secs_f64());
                }
            }
            Event::Task {
                container,
                state,
                reason,
                ..
            } if is_terminal(*state) => {
                launching.remove(container);
                self.terminations.with_label_values(&[state.as_str()]).inc();
                if *reason == Some(Reason::ContainerLaunchFailed) {
                    self.launch_errors.inc();
                }
            }
            Event::DestroyFailed { .. } => self.destroy_errors.inc(),
            Event::Container { .. } | Event::Task { .. } => {}
        }
    }

    fn terminated(&self, state: TaskState) -> f64 {
        self.terminations.with_label_values(&[state.as_str()]).get()
    }
}

fn is_terminal(state: TaskState) -> bool {
    matches!(
        state,
        TaskState::Finished
            | TaskState::Failed
            | TaskState::Killed
            | TaskState::Error
            | TaskState::Lost
            | TaskState::Dropped
            | TaskState::Gone
            | TaskState::GoneByOperator
    )
}

/// What one scrape reads from the agent.
#[derive(Debug, Clone)]
pub struct Sample<'a> {
    pub info: &'a AgentInfo,
    pub containers: &'a [ContainerView],
    /// Usage of the active containers.
    pub usage: &'a BTreeMap<ContainerId, ResourceStatistics>,
}

impl Sample<'_> {
    fn uptime(&self) -> f64 {
        SystemTime::now()
            .duration_since(self.info.start_time)
            .map_or(0.0, |d| d.as_secs_f64())
    }

    /// `cpus`, `mem` (MB), `disk` (MB) allocated to tasks not ended.
    fn used(&self, name: &str) -> f64 {
        self.containers
            .iter()
            .filter(|c| c.is_active())
            .map(|c| c.resources.scalar(name))
            .sum()
    }

    fn count(&self, state: TaskState) -> f64 {
        self.containers
            .iter()
            .filter(|c| c.is_active() && c.task_state == state)
            .count() as f64
    }
}

fn percent(used: f64, total: f64) -> f64 {
    if total > 0.0 {
        used / total
    } else {
        0.0
    }
}

/// `/metrics/snapshot`: Mesos agent metric names. Gauges (`tasks_running`, ...) count tasks
/// now; `tasks_finished` and the other terminal states count since the agent started.
pub fn snapshot(metrics: &AgentMetrics, s: &Sample<'_>) -> BTreeMap<String, f64> {
    let mut m = BTreeMap::new();
    let mut put = |k: &str, v: f64| {
        m.insert(k.to_string(), v);
    };
    for (key, state) in [
        ("staging", TaskState::Staging),
        ("starting", TaskState::Starting),
        ("running", TaskState::Running),
        ("killing", TaskState::Killing),
    ] {
        put(&format!("slave/tasks_{key}"), s.count(state));
    }
    for (key, state) in [
        ("finished", TaskState::Finished),
        ("failed", TaskState::Failed),
        ("killed", TaskState::Killed),
        ("lost", TaskState::Lost),
        ("error", TaskState::Error),
        ("gone", TaskState::Gone),
    ] {
        put(&format!("slave/tasks_{key}"), metrics.terminated(state));
    }
    let r = &s.info.resources;
    for name in ["cpus", "mem", "disk"] {
        let (total, used) = (r.scalar(name), s.used(name));
        put(&format!("slave/{name}_total"), total);
        put(&format!("slave/{name}_used"), used);
        put(&format!("slave/{name}_percent"), percent(used, total));
    }
    let active = s.containers.iter().filter(|c| c.is_active()).count() as f64;
    put("slave/executors_running", active);
    put("slave/uptime_secs", s.uptime());
    put("slave/recovery_errors", s.info.recovery.quarantined as f64);
    put("slave/container_launch_errors", metrics.launch_errors.get());
    put(
        "containerizer/mesos/container_destroy_errors",
        metrics.destroy_errors.get(),
    );
    m
}

fn gauge(registry: &Registry, name: &str, help: &str, value: f64) -> prometheus::Result<()> {
    let g = Gauge::new(name, help)?;
    g.set(value);
    registry.register(Box::new(g))
}

/// `/metrics`: the Prometheus text exposition.
///
/// # Errors
/// A metric the prometheus crate refuses (a bug: names are constants).
pub fn render(metrics: &AgentMetrics, s: &Sample<'_>) -> prometheus::Result<String> {
    let reg = Registry::new();
    let info = s.info;
    let cap = &info.capacity;
    const MB: f64 = 1024.0 * 1024.0;
    for (name, help, value) in [
        (
            "cairn_agent_node_cpus",
            "CPUs the node has for the agent (affinity, quota)",
            cap.cpus,
        ),
        (
            "cairn_agent_node_memory_bytes",
            "Memory the node has (MemTotal, cgroup limit)",
            cap.mem_bytes as f64,
        ),
        (
            "cairn_agent_node_disk_bytes",
            "Size of the work directory's filesystem",
            cap.disk_bytes as f64,
        ),
        (
            "cairn_agent_capacity_cpus",
            "CPUs the agent offers",
            info.resources.cpus(),
        ),
        (
            "cairn_agent_capacity_memory_bytes",
            "Memory the agent offers",
            info.resources.mem_mb() * MB,
        ),
        (
            "cairn_agent_capacity_disk_bytes",
            "Disk the agent offers",
            info.resources.disk_mb() * MB,
        ),
        (
            "cairn_agent_allocated_cpus",
            "CPUs allocated to tasks not ended",
            s.used("cpus"),
        ),
        (
            "cairn_agent_allocated_memory_bytes",
            "Memory allocated to tasks not ended",
            s.used("mem") * MB,
        ),
        (
            "cairn_agent_allocated_disk_bytes",
            "Disk allocated to tasks not ended",
            s.used("disk") * MB,
        ),
        (
            "cairn_agent_uptime_seconds",
            "Seconds since the agent started",
            s.uptime(),
        ),
    ] {
        gauge(&reg, name, help, value)?;
    }
    let tasks = GaugeVec::new(
        Opts::new("cairn_agent_tasks", "Tasks not ended, by state"),
        &["state"],
    )?;
    for state in [
        TaskState::Staging,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Killing,
    ] {
        tasks
            .with_label_values(&[state.as_str()])
            .set(s.count(state));
    }
    reg.register(Box::new(tasks))?;
    let recovered = GaugeVec::new(
        Opts::new(
            "cairn_agent_recovered_containers",
            "Containers found at the agent's start, by outcome",
        ),
        &["outcome"],
    )?;
    let rs = info.recovery;
    for (outcome, n) in [
        ("adopted", rs.adopted),
        ("terminated", rs.terminated),
        ("quarantined", rs.quarantined),
        ("orphan", rs.orphans),
    ] {
        recovered.with_label_values(&[outcome]).set(n as f64);
    }
    reg.register(Box::new(recovered))?;
    render_usage(&reg, s)?;
    let mut families = metrics.registry.gather();
    families.extend(reg.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let mut out = Vec::new();
    TextEncoder::new().encode(&families, &mut out)?;
    Ok(String::from_utf8_lossy(&out).into_owned())
}

/// Per-container usage, labelled with the container, its task and framework.
fn render_usage(reg: &Registry, s: &Sample<'_>) -> prometheus::Result<()> {
    let labels = &["container_id", "task_id", "framework_id"];
    let cpu = CounterVec::new(
        Opts::new(
            "cairn_agent_container_cpu_seconds_total",
            "CPU time the container used, by mode (user, system)",
        ),
        &["container_id", "task_id", "framework_id", "mode"],
    )?;
    let mem = GaugeVec::new(
        Opts::new(
            "cairn_agent_container_memory_bytes",
            "Memory the container uses now (its cgroup's usage)",
        ),
        labels,
    )?;
    let mem_limit = GaugeVec::new(
        Opts::new(
            "cairn_agent_container_memory_limit_bytes",
            "The container's memory limit",
        ),
        labels,
    )?;
    for c in s.containers.iter().filter(|c| c.is_active()) {
        let Some(u) = s.usage.get(&c.container_id) else {
            continue;
        };
        let l = [
            c.container_id.as_str(),
            c.task_id.as_str(),
            c.framework_id.as_str(),
        ];
        for (mode, secs) in [
            ("user", u.cpus_user_time_secs),
            ("system", u.cpus_system_time_secs),
        ] {
            if let Some(secs) = secs {
                cpu.with_label_values(&[l[0], l[1], l[2], mode])
                    .inc_by(secs);
            }
        }
        if let Some(bytes) = u.mem_total_bytes.or(u.mem_rss_bytes) {
            mem.with_label_values(&l).set(bytes as f64);
        }
        if let Some(bytes) = u.mem_limit_bytes {
            mem_limit.with_label_values(&l).set(bytes as f64);
        }
    }
    reg.register(Box::new(cpu))?;
    reg.register(Box::new(mem))?;
    reg.register(Box::new(mem_limit))
}
