//! Acting on leadership: which requests this master serves, and what it does when it is
//! elected or deposed (issue 7).
//!
//! - The [`Gate`] says how the API layer treats a leader-only request: serve it while this
//!   master leads and has recovered its registry; otherwise redirect it to the leader the
//!   detector names (`307`), or refuse it while there is none (`503`), as Mesos's
//!   `Master::Http::redirect` does. It also carries `master/elected` and the registry write
//!   counters for `/metrics/snapshot`.
//! - [`run`] follows this master's [`Leadership`] with ZooKeeper: on `Leading { term }` it
//!   recovers the registry from ZooKeeper (fenced on the election znode), builds a fresh
//!   [`Master`] on it and opens the gate; on losing the term it closes the gate at once and
//!   replaces the master with an empty standby, which drops every framework and agent stream
//!   (schedulers reconnect and are redirected; agents follow the detector). The contender
//!   contends again by itself.
//! - [`ZkStore`] writes the registry after each change through the fenced
//!   [`ZkRegistry::save`], newest snapshot first (group commit), off the master's lock;
//!   clients whose answer depends on a change wait for the save that covers it.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::core::{CoreConfig, Master};
use crate::election::{Election, Leadership, MasterInfo};
use crate::http::Shared;
use crate::registry::{Registrar, Registry};
use crate::zk_registry::{ZkRegistry, ZkRegistryError};

/// The least time between two registry saves (see [`ZkStore`]).
const MIN_SAVE_GAP: Duration = Duration::from_millis(100);

/// How long to wait before retrying a failed registry recovery while still leading.
const RECOVERY_RETRY: Duration = Duration::from_secs(1);

/// What the API layer does with a leader-only request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// This master leads: serve it.
    Serve,
    /// Another master leads: `307` to `http://<authority><same path>`.
    Redirect {
        /// `host:port` of the leader (its `address.hostname`, else its IP).
        authority: String,
    },
    /// No leader is known (or this master was elected but is still recovering): `503`.
    Unavailable,
}

#[derive(Debug)]
struct GateInner {
    serving: AtomicBool,
    /// This master's id in the election, so it never redirects to itself.
    self_id: String,
    leader: Option<watch::Receiver<Option<MasterInfo>>>,
    writes: AtomicU64,
    writes_fenced: AtomicU64,
    writes_failed: AtomicU64,
}

/// Whether this master serves leader-only requests, and where it sends them otherwise.
#[derive(Debug, Clone)]
pub struct Gate {
    inner: Arc<GateInner>,
}

impl Gate {
    /// A standalone master: always serving.
    pub fn leading() -> Self {
        Self::new(true, String::new(), None)
    }

    /// A contender that serves only once [`run`] opens the gate; until then requests go to
    /// the leader `leader` names.
    pub fn contending(
        self_id: impl Into<String>,
        leader: watch::Receiver<Option<MasterInfo>>,
    ) -> Self {
        Self::new(false, self_id.into(), Some(leader))
    }

    fn new(
        serving: bool,
        self_id: String,
        leader: Option<watch::Receiver<Option<MasterInfo>>>,
    ) -> Self {
        Self {
            inner: Arc::new(GateInner {
                serving: AtomicBool::new(serving),
                self_id,
                leader,
                writes: AtomicU64::new(0),
                writes_fenced: AtomicU64::new(0),
                writes_failed: AtomicU64::new(0),
            }),
        }
    }

    /// Whether this master leads and serves (`master/elected`).
    pub fn is_serving(&self) -> bool {
        self.inner.serving.load(Ordering::SeqCst)
    }

    fn set_serving(&self, serving: bool) {
        self.inner.serving.store(serving, Ordering::SeqCst);
    }

    /// How to treat a leader-only request now.
    pub fn route(&self) -> Route {
        if self.is_serving() {
            return Route::Serve;
        }
        let Some(leader) = &self.inner.leader else {
            return Route::Unavailable;
        };
        let leader = leader.borrow();
        match leader.as_ref() {
            Some(info) if info.id != self.inner.self_id => info
                .authority()
                .map_or(Route::Unavailable, |authority| Route::Redirect {
                    authority,
                }),
            _ => Route::Unavailable,
        }
    }

    /// Adds `master/elected` (1 only while serving as leader) and the registry write counters
    /// to a `/metrics/snapshot`.
    pub fn add_metrics(&self, snapshot: &mut BTreeMap<String, f64>) {
        let count = |c: &AtomicU64| {
            #[allow(clippy::cast_precision_loss)] // counters stay far below 2^53
            let v = c.load(Ordering::Relaxed) as f64;
            v
        };
        snapshot.insert(
            "master/elected".into(),
            if self.is_serving() { 1.0 } else { 0.0 },
        );
        snapshot.insert(
            "registrar/registry_writes".into(),
            count(&self.inner.writes),
        );
        snapshot.insert(
            "registrar/registry_writes_fenced".into(),
            count(&self.inner.writes_fenced),
        );
        snapshot.insert(
            "registrar/registry_writes_failed".into(),
            count(&self.inner.writes_failed),
        );
    }
}

/// The registry store of a leader with ZooKeeper: a [`Registrar`] (group commit) whose writer
/// takes one snapshot of this term's master's registry and saves it through the fenced
/// [`ZkRegistry`]. Clients waiting on a change are answered after the fenced write succeeded;
/// a fenced write (this master no longer leads) is logged, counted, changes nothing in
/// ZooKeeper and fails the waiting clients.
#[derive(Debug)]
pub struct ZkStore;

impl ZkStore {
    /// Starts the writer for the master of this term, which [`WriterBinding::bind`] names
    /// once it exists; the writer ends when the registrar is dropped (with its master) or
    /// when `shared` holds another master (the term ended).
    pub fn spawn(registry: ZkRegistry, gate: Gate, shared: Shared) -> (Registrar, WriterBinding) {
        let binding = WriterBinding(Arc::new(std::sync::OnceLock::new()));
        let master_id = binding.0.clone();
        let registry = Arc::new(registry);
        let snapshot = move |counter: &AtomicU64| {
            let master = shared.lock();
            // Only this term's master: after a step-down `shared` holds a standby whose
            // empty registry must never be written.
            (master_id.get() == Some(&master.info().id))
                .then(|| (counter.load(Ordering::SeqCst), master.registry.clone()))
        };
        let save = move |snapshot: Registry| {
            let registry = registry.clone();
            let gate = gate.clone();
            Box::pin(async move {
                match registry.save(&snapshot).await {
                    Ok(()) => {
                        gate.inner.writes.fetch_add(1, Ordering::Relaxed);
                        Ok(())
                    }
                    Err(ZkRegistryError::Fencing(e)) => {
                        gate.inner.writes_fenced.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("registry write fenced: {e}");
                        Err(format!(
                            "registry write fenced (this master no longer leads): {e}"
                        ))
                    }
                    Err(e) => {
                        gate.inner.writes_failed.fetch_add(1, Ordering::Relaxed);
                        tracing::error!("cannot save the registry: {e}");
                        Err(e.to_string())
                    }
                }
            }) as _
        };
        // Leave ZooKeeper at least as long as a save took before the next one: back-to-back
        // saves of a large registry outran the followers and exhausted a small ensemble's
        // heap. Changes made meanwhile coalesce into the next save.
        let registrar = Registrar::spawn(Box::new(snapshot), Box::new(save), MIN_SAVE_GAP);
        (registrar, binding)
    }
}

/// Names the master whose registry a [`ZkStore`] writer saves (see [`ZkStore::spawn`]).
#[derive(Debug)]
pub struct WriterBinding(Arc<std::sync::OnceLock<String>>);

impl WriterBinding {
    /// Binds the writer to the master with `id` (its `MasterInfo` id).
    pub fn bind(self, id: &str) {
        let _ = self.0.set(id.to_string());
    }
}

/// Waits until this master's leadership is no longer `Leading { term }` (or the contender
/// is gone).
async fn lost(leadership: &mut watch::Receiver<Leadership>, term: u64) {
    loop {
        if *leadership.borrow_and_update() != (Leadership::Leading { term }) {
            return;
        }
        if leadership.changed().await.is_err() {
            return;
        }
    }
}

/// Follows this master's leadership with ZooKeeper until the contender ends (see the module
/// docs). Returns at once for a standalone election, which leads from the start.
pub async fn run(election: Election, shared: Shared, cfg: CoreConfig) {
    let Some(zk) = election.zookeeper.clone() else {
        return;
    };
    let gate = shared.gate().clone();
    let mut leadership = election.contender.leadership();
    loop {
        let term = loop {
            if let Leadership::Leading { term } = *leadership.borrow_and_update() {
                break term;
            }
            if leadership.changed().await.is_err() {
                return;
            }
        };
        let Some(fence) = zk.fence().filter(|f| f.term() == term) else {
            // Published before its fence, or already lost: look again shortly.
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        tracing::info!(
            term,
            "elected leader: recovering the registry from ZooKeeper"
        );
        let recovered = tokio::select! {
            r = ZkRegistry::recover(fence) => r,
            () = lost(&mut leadership, term) => {
                tracing::warn!(term, "lost leadership while recovering the registry");
                continue;
            }
        };
        let (store, registry) = match recovered {
            Ok(r) => r,
            Err(e) => {
                // A master must not lead without its registry: retry while still leading.
                tracing::error!(term, "cannot recover the registry: {e}; retrying");
                tokio::time::sleep(RECOVERY_RETRY).await;
                continue;
            }
        };
        let (writer, binding) = ZkStore::spawn(store, gate.clone(), shared.clone());
        let master = Master::with_store(cfg.clone(), registry, Box::new(writer));
        binding.bind(&master.info().id);
        shared.replace(master);
        gate.set_serving(true);
        tracing::info!(term, "leading: serving the APIs");
        lost(&mut leadership, term).await;
        // Stop acting at once: the gate first (no more writes), then the state (no offers,
        // every subscriber stream ends).
        gate.set_serving(false);
        shared.replace(Master::new(cfg.clone(), Registry::default(), None));
        tracing::warn!(
            term,
            "lost leadership: stopped acting as leader, dropped all subscriber streams; contending again"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: &str, addr: &str, hostname: &str) -> MasterInfo {
        MasterInfo::new(id, addr.parse().unwrap(), hostname)
    }

    #[test]
    fn routes_follow_the_detected_leader() {
        assert_eq!(Gate::leading().route(), Route::Serve);
        let (tx, rx) = watch::channel(None);
        let gate = Gate::contending("me", rx);
        assert_eq!(gate.route(), Route::Unavailable);
        tx.send_replace(Some(info("other", "10.0.0.2:5050", "m2.example")));
        assert_eq!(
            gate.route(),
            Route::Redirect {
                authority: "m2.example:5050".into()
            }
        );
        // Elected but still recovering: never a redirect to itself.
        tx.send_replace(Some(info("me", "10.0.0.1:5050", "")));
        assert_eq!(gate.route(), Route::Unavailable);
        gate.set_serving(true);
        assert_eq!(gate.route(), Route::Serve);
        let mut m = BTreeMap::new();
        gate.add_metrics(&mut m);
        assert_eq!(m["master/elected"], 1.0);
    }

    #[test]
    fn authority_falls_back_to_the_ip() {
        let mut i = info("x", "10.0.0.3:5051", "");
        i.address.as_mut().unwrap().hostname = None;
        assert_eq!(i.authority().unwrap(), "10.0.0.3:5051");
    }
}
