//! The master's core: a typed state machine over agents, frameworks, offers and tasks, driven
//! by typed calls ([`Master::scheduler_call`], [`Master::agent_call`], [`Master::tick`], ...).
//! It never sees HTTP: the API layer ([`crate::http`]) parses requests into these calls and
//! renders the results. Subscribers (framework and agent streams) are bounded channels of
//! typed events; a subscriber whose queue is full is disconnected rather than buffered
//! without bound (MESOS-7748).

mod agents;
mod frameworks;
mod offers;
mod operator;
mod tasks;
pub mod validation;
pub mod views;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cairn_api::protocol::AgentEvent;
use cairn_api::v1::mesos::{Address, MasterInfo};
use cairn_api::v1::scheduler::Event;
use cairn_api::{AgentId, FrameworkId, OfferId, TaskId};
use tokio::sync::mpsc;

pub use agents::{Agent, AgentError, AgentHealth, AgentReply};
pub use frameworks::{Framework, NewSubscription, SchedulerError, Subscription};
pub use offers::OfferEntry;
pub use tasks::TaskEntry;

use crate::allocator::{Allocator, AllocatorConfig};
use crate::registry::{Registry, RegistryStore, SaveTicket};

/// The Mesos version whose APIs Cairn speaks; reported by `/version` and in `MasterInfo`.
pub const MESOS_API_VERSION: &str = "1.11.0";

/// Settings of the core (the HTTP-facing ones live in [`crate::config`]).
#[derive(Debug, Clone)]
pub struct CoreConfig {
    /// Interval of HEARTBEAT events to frameworks (Mesos: 15 s).
    pub framework_heartbeat: Duration,
    /// Interval an agent must send HEARTBEAT calls at.
    pub agent_heartbeat: Duration,
    /// An agent silent this long is marked unreachable (Mesos's `agent_ping_timeout` x
    /// `max_agent_ping_timeouts`, 75 s).
    pub agent_timeout: Duration,
    /// How long a master that recovered its registry (a restart, or a newly elected leader)
    /// waits for admitted agents to re-register before marking the missing ones unreachable
    /// (Mesos's `--agent_reregister_timeout`, 10 minutes).
    pub agent_reregister_timeout: Duration,
    /// Outstanding offers are rescinded after this long (Mesos's `--offer_timeout`; none
    /// by default).
    pub offer_timeout: Option<Duration>,
    /// Events queued per subscriber before it is disconnected as stalled.
    pub subscriber_queue: usize,
    /// Completed tasks and frameworks kept for the APIs.
    pub max_completed_tasks: usize,
    pub max_completed_frameworks: usize,
    /// The master's advertised address.
    pub hostname: String,
    pub ip: std::net::Ipv4Addr,
    pub port: u16,
}

impl Default for CoreConfig {
    fn default() -> Self {
        Self {
            framework_heartbeat: Duration::from_secs(15),
            agent_heartbeat: Duration::from_secs(15),
            agent_timeout: Duration::from_secs(75),
            agent_reregister_timeout: Duration::from_secs(600),
            offer_timeout: None,
            subscriber_queue: crate::config::DEFAULT_SUBSCRIBER_QUEUE,
            max_completed_tasks: 1000,
            max_completed_frameworks: 50,
            hostname: "localhost".into(),
            ip: std::net::Ipv4Addr::LOCALHOST,
            port: 5050,
        }
    }
}

impl CoreConfig {
    /// The core's settings as GET_FLAGS lists them, named as the config file names them.
    pub fn flags(&self) -> Vec<cairn_api::v1::master::Flag> {
        let secs = |d: Duration| d.as_secs_f64().to_string();
        let mut flags = vec![
            ("agent_timeout_secs", secs(self.agent_timeout)),
            (
                "agent_reregister_timeout_secs",
                secs(self.agent_reregister_timeout),
            ),
            ("agent_heartbeat_secs", secs(self.agent_heartbeat)),
            ("framework_heartbeat_secs", secs(self.framework_heartbeat)),
            ("subscriber_queue", self.subscriber_queue.to_string()),
            ("hostname", self.hostname.clone()),
            ("advertise_ip", self.ip.to_string()),
        ];
        if let Some(t) = self.offer_timeout {
            flags.push(("offer_timeout_secs", secs(t)));
        }
        flags
            .into_iter()
            .map(|(name, value)| cairn_api::v1::master::Flag {
                name: name.into(),
                value: Some(value),
            })
            .collect()
    }
}

/// Counters for `/metrics/snapshot` (Mesos's names live in [`views`]).
#[derive(Debug, Clone, Default)]
pub struct Counters {
    pub valid_status_updates: u64,
    pub invalid_status_updates: u64,
    pub offers_declined: u64,
    pub offers_rescinded: u64,
    pub offers_sent: u64,
    pub tasks_launched: u64,
    pub frameworks_disconnected_stalled: u64,
    pub agent_registrations: u64,
    pub agent_reregistrations: u64,
    pub agents_unreachable_marked: u64,
    pub allocation_runs: u64,
    pub last_allocation_ms: f64,
    /// Tasks that reached each terminal state (by Mesos name), since the master started:
    /// Mesos's `master/tasks_finished`, `master/tasks_failed`, ... counters.
    pub tasks_terminal: BTreeMap<&'static str, u64>,
    pub operator_subscribers_disconnected_stalled: u64,
    pub messages_scheduler_calls: u64,
    pub messages_agent_calls: u64,
}

/// How long queued events may wait without the subscriber taking any before it counts as
/// stalled and is disconnected (MESOS-7748). A busy but healthy subscriber (a framework
/// reading a reconciliation burst of thousands of updates after a failover) keeps taking
/// events and is never cut off for the burst's size; one whose connection stopped moving is
/// found within this time, whatever the event rate.
pub const STALLED_AFTER: Duration = Duration::from_secs(30);

/// When a subscriber's reader was last caught up or took events.
#[derive(Debug)]
struct Progress {
    base: Instant,
    at_ms: AtomicU64,
}

impl Progress {
    fn new() -> Self {
        Self {
            base: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.base.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        self.base
            .elapsed()
            .saturating_sub(Duration::from_millis(self.at_ms.load(Ordering::Relaxed)))
    }
}

/// An event queue to one subscriber: at most `capacity` events (the memory bound), and
/// never events waiting longer than [`STALLED_AFTER`] for a reader that takes none.
#[derive(Debug)]
pub struct Outbox<E> {
    tx: mpsc::Sender<E>,
    progress: Arc<Progress>,
    stalled_after: Duration,
}

/// The receiving end of an [`Outbox`]; taking events tells the outbox the reader moves.
#[derive(Debug)]
pub struct Inbox<E> {
    rx: mpsc::Receiver<E>,
    progress: Arc<Progress>,
}

impl<E> Inbox<E> {
    /// The next event; `None` once the outbox is dropped.
    pub async fn recv(&mut self) -> Option<E> {
        let event = self.rx.recv().await;
        self.progress.touch();
        event
    }

    /// The next event if one is queued.
    pub fn try_recv(&mut self) -> Option<E> {
        let event = self.rx.try_recv().ok();
        if event.is_some() {
            self.progress.touch();
        }
        event
    }
}

impl<E> Outbox<E> {
    /// A queue holding up to `capacity` events, and its receiving end.
    pub fn bounded(capacity: usize) -> (Self, Inbox<E>) {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let progress = Arc::new(Progress::new());
        (
            Self {
                tx,
                progress: progress.clone(),
                stalled_after: STALLED_AFTER,
            },
            Inbox { rx, progress },
        )
    }

    /// The same with a shorter stall time, for tests.
    #[cfg(test)]
    fn stalling_after(mut self, after: Duration) -> Self {
        self.stalled_after = after;
        self
    }

    /// Queues `event`; false when the subscriber is gone or stalled (its queue full, or
    /// events waiting longer than [`STALLED_AFTER`] without the reader taking any).
    pub fn send(&self, event: E) -> bool {
        let queued = self.tx.max_capacity() - self.tx.capacity();
        if queued == 0 {
            // The reader is caught up: the wait of the events from now on starts here.
            self.progress.touch();
        } else if self.progress.idle() > self.stalled_after {
            return false;
        }
        self.tx.try_send(event).is_ok()
    }

    /// The subscriber went away (its stream was dropped).
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

/// The master.
#[derive(Debug)]
pub struct Master {
    pub(crate) cfg: CoreConfig,
    pub(crate) info: MasterInfo,
    pub(crate) start_time: f64,
    seq: u64,
    pub(crate) agents: BTreeMap<AgentId, Agent>,
    pub(crate) frameworks: BTreeMap<FrameworkId, Framework>,
    pub(crate) completed_frameworks: VecDeque<Framework>,
    pub(crate) offers: HashMap<OfferId, OfferEntry>,
    pub(crate) tasks: BTreeMap<(FrameworkId, TaskId), TaskEntry>,
    pub(crate) completed_tasks: VecDeque<TaskEntry>,
    /// Operator SUBSCRIBE streams ([`operator`]).
    operators: Vec<Outbox<cairn_api::v1::master::Event>>,
    pub(crate) allocator: Allocator,
    pub(crate) registry: Registry,
    store: Option<Box<dyn RegistryStore>>,
    pub(crate) counters: Counters,
    last_heartbeat: Instant,
    /// When the re-registration window of the recovered registry closes; `None` once closed.
    pub(crate) reregister_deadline: Option<Instant>,
}

/// Seconds since the epoch, as Mesos's timestamps.
pub fn wall_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

/// 16 random-enough bytes from the standard library's randomly keyed hasher, the clock and
/// a counter: ids and update uuids need uniqueness, not secrecy.
pub fn random_bytes() -> [u8; 16] {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut out = [0u8; 16];
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(n);
        h.write_usize(i);
        h.write_u128(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos()),
        );
        chunk.copy_from_slice(&h.finish().to_le_bytes());
    }
    out
}

/// A UUID-shaped text id (`8-4-4-4-12` hex).
pub fn uuid_text() -> String {
    let b = random_bytes();
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

impl Master {
    /// A master with the given registry (admitted agents, weights, quotas) and the store
    /// its changes are saved to (none: kept in memory only).
    pub fn new(cfg: CoreConfig, registry: Registry, store: Option<Box<dyn RegistryStore>>) -> Self {
        let id = uuid_text();
        let info = MasterInfo {
            id: id.clone(),
            ip: cairn_api::v1::mesos::ipv4_to_mesos(cfg.ip),
            port: cfg.port,
            pid: Some(format!("master@{}:{}", cfg.ip, cfg.port)),
            hostname: Some(cfg.hostname.clone()),
            version: Some(MESOS_API_VERSION.into()),
            address: Some(Address {
                hostname: Some(cfg.hostname.clone()),
                ip: Some(cfg.ip.to_string()),
                port: cfg.port,
            }),
        };
        let mut allocator = Allocator::new(AllocatorConfig::default());
        allocator.set_weights(registry.weights.clone());
        for (role, q) in &registry.quotas {
            if let (Ok(g), Ok(l)) = (
                cairn_api::Resources::parse(&q.guarantee),
                cairn_api::Resources::parse(&q.limit),
            ) {
                allocator.set_quota(role, g, Some(l));
            }
        }
        let reregister_deadline = Some(Instant::now() + cfg.agent_reregister_timeout);
        Self {
            cfg,
            info,
            start_time: wall_seconds(),
            seq: 0,
            agents: BTreeMap::new(),
            frameworks: BTreeMap::new(),
            completed_frameworks: VecDeque::new(),
            offers: HashMap::new(),
            tasks: BTreeMap::new(),
            completed_tasks: VecDeque::new(),
            operators: Vec::new(),
            allocator,
            registry,
            store,
            counters: Counters::default(),
            last_heartbeat: Instant::now(),
            reregister_deadline,
        }
    }

    /// A master whose registry changes go to `store` (with ZooKeeper: the fenced registry).
    pub fn with_store(cfg: CoreConfig, registry: Registry, store: Box<dyn RegistryStore>) -> Self {
        Self::new(cfg, registry, Some(store))
    }

    /// Sets the store registry changes are saved to from now on (standalone: the file
    /// writer, which needs the master already shared).
    pub fn set_store(&mut self, store: Box<dyn RegistryStore>) {
        self.store = Some(store);
    }

    /// A ticket resolving once every registry change made so far is durably stored. Take it
    /// under the lock, release the lock, then await it before answering the client.
    pub fn registry_saved(&self) -> SaveTicket {
        self.store
            .as_ref()
            .map_or_else(SaveTicket::done, |s| s.saved())
    }

    pub fn info(&self) -> &MasterInfo {
        &self.info
    }

    pub fn config(&self) -> &CoreConfig {
        &self.cfg
    }

    /// The next number in the master's id sequences.
    pub(crate) fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Marks the registry changed for its store's writer (group commit, see
    /// [`crate::registry::Registrar`]). Clients whose answer depends on the change wait for
    /// [`Master::registry_saved`]; a failed write is logged and reported to them.
    pub(crate) fn persist(&self) {
        if let Some(store) = &self.store {
            store.store(&self.registry);
        }
    }

    /// Periodic work: allocation, offer timeouts, agent health, framework failover timeouts,
    /// heartbeats. Called by the runtime every allocation interval; between ticks, changes
    /// only trigger (batched) [`Master::allocate`] cycles.
    pub fn tick(&mut self, now: Instant) {
        let watched = self.active_agents_watched();
        self.check_agents(now);
        self.close_reregistration_window(now);
        self.publish_removed_agents(watched);
        self.expire_frameworks(now);
        self.expire_offers(now);
        if now.duration_since(self.last_heartbeat) >= self.cfg.framework_heartbeat {
            self.last_heartbeat = now;
            self.heartbeat_all();
        }
        self.allocate(now);
    }

    fn heartbeat_all(&mut self) {
        let ids: Vec<FrameworkId> = self.frameworks.keys().cloned().collect();
        for id in ids {
            self.send_event(&id, Event::heartbeat());
        }
        for agent in self.agents.values_mut() {
            if let Some(c) = &agent.conn {
                if !c.send(AgentEvent::heartbeat()) {
                    agent.conn = None;
                }
            }
        }
        self.publish(|_| Some(cairn_api::v1::master::Event::heartbeat()));
    }

    /// Ends every subscriber stream (frameworks and agents) by dropping its queue, as the
    /// process shuts down: an HTTP server draining gracefully waits for responses to end,
    /// and an event stream otherwise never does.
    pub fn close_subscribers(&mut self) {
        for f in self.frameworks.values_mut() {
            f.subscription = None;
        }
        for a in self.agents.values_mut() {
            a.conn = None;
        }
        self.operators.clear();
    }

    /// Sends `event` to a framework's stream; a gone or stalled subscriber is disconnected.
    pub(crate) fn send_event(&mut self, fw: &FrameworkId, event: Event) -> bool {
        let Some(f) = self.frameworks.get_mut(fw) else {
            return false;
        };
        let Some(sub) = &f.subscription else {
            return false;
        };
        if sub.outbox.send(event) {
            return true;
        }
        let stream = sub.stream_id.clone();
        tracing::warn!(framework = %fw, "framework subscriber is gone or stalled: disconnecting it");
        self.counters.frameworks_disconnected_stalled += 1;
        self.framework_disconnected(fw, &stream, Instant::now());
        false
    }

    /// Sends `event` to an agent's stream; false when it is not connected (or stalled, and
    /// then disconnected).
    pub(crate) fn send_agent(&mut self, agent: &AgentId, event: AgentEvent) -> bool {
        let Some(a) = self.agents.get_mut(agent) else {
            return false;
        };
        let Some(conn) = &a.conn else {
            return false;
        };
        if conn.send(event) {
            return true;
        }
        tracing::warn!(agent = %agent, "agent subscriber is gone or stalled: disconnecting it");
        a.conn = None;
        self.allocator.deactivate_agent(agent);
        false
    }
}

/// Why an operator call was refused (400).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OperatorError(pub String);

impl Master {
    /// UPDATE_WEIGHTS: stored in the registry and given to the allocator.
    ///
    /// # Errors
    /// A weight that is not a positive number, or an empty role.
    pub fn update_weights(
        &mut self,
        infos: &[cairn_api::v1::mesos::WeightInfo],
    ) -> Result<(), OperatorError> {
        for w in infos {
            if w.role.is_empty() || !w.weight.is_finite() || w.weight <= 0.0 {
                return Err(OperatorError(format!(
                    "Invalid weight {} for role '{}': weights must be positive numbers for non-empty roles",
                    w.weight, w.role
                )));
            }
        }
        for w in infos {
            self.registry.weights.insert(w.role.clone(), w.weight);
        }
        self.persist();
        self.allocator.set_weights(self.registry.weights.clone());
        Ok(())
    }

    /// UPDATE_QUOTA: guarantees and limits per role, stored and given to the allocator.
    ///
    /// # Errors
    /// A negative quantity, or a guarantee above its limit.
    pub fn update_quota(
        &mut self,
        configs: &[cairn_api::v1::mesos::QuotaConfig],
    ) -> Result<(), OperatorError> {
        let text = |q: &cairn_api::v1::mesos::ResourceQuantities| {
            q.iter()
                .map(|(n, s)| format!("{n}:{}", s.value))
                .collect::<Vec<_>>()
                .join(";")
        };
        let mut parsed = Vec::new();
        for c in configs {
            if c.role.is_empty() || c.role == "*" {
                return Err(OperatorError(format!("Invalid quota role '{}'", c.role)));
            }
            let g = cairn_api::Resources::parse(&text(&c.guarantees)).map_err(|e| {
                OperatorError(format!("Invalid guarantees for role '{}': {e}", c.role))
            })?;
            let l = cairn_api::Resources::parse(&text(&c.limits))
                .map_err(|e| OperatorError(format!("Invalid limits for role '{}': {e}", c.role)))?;
            for name in g.scalar_names() {
                if c.limits.contains_key(name) && g.scalar(name) > l.scalar(name) {
                    return Err(OperatorError(format!(
                        "Role '{}': guarantee of {name} ({}) exceeds its limit ({})",
                        c.role,
                        g.scalar(name),
                        l.scalar(name)
                    )));
                }
            }
            parsed.push((c.role.clone(), text(&c.guarantees), text(&c.limits), g, l));
        }
        for (role, gt, lt, g, l) in parsed {
            self.allocator
                .set_quota(&role, g, (!l.is_empty()).then_some(l));
            self.registry.quotas.insert(
                role,
                crate::registry::Quota {
                    guarantee: gt,
                    limit: lt,
                },
            );
        }
        self.persist();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
