//! The containerizer: runs each task in a container and drives it through
//! [`ContainerState`]: provisioning (image, layers, root filesystem), preparing (isolators,
//! bundle), isolating (the supervisor creates the init, isolators place it), running, and
//! destroying (kill with grace, reap, isolator cleanup in reverse, root filesystem teardown).
//!
//! It is synchronous: [`Containerizer::launch`] blocks until the task runs or failed (call it
//! from a blocking thread), and one monitor thread notices exits (the supervisors' exit files)
//! and limitations: pushed by isolators that [`Isolator::subscribe`] offers (an OOM kill, as the
//! kernel reports it) on one thread each, and polled with `watch` as the fallback. Every state
//! but PREPARING is checkpointed before it is acted on ([`crate::checkpoint`]), so
//! [`Containerizer::start`] can recover after the agent died: containers keep running under
//! their supervisors meanwhile. (Recovery destroys a PREPARING container as it destroys a
//! PROVISIONING one, so that state is kept in memory only; the cgroup path goes with ISOLATING. A
//! container's life writes its checkpoint six times, each a new file, fsyncs and a rename.)

pub mod bundle;
mod exit_watch;
mod isolation;
pub mod provision;
mod recover;
pub mod state;
mod supervise;
pub mod types;

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Condvar, Mutex, MutexGuard, PoisonError, Weak};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_api::{ContainerId, Reason, TaskId, TaskState};
use cairn_isolators::cgroups::CgroupsConfig;
use cairn_isolators::disk::DiskConfig;
use cairn_isolators::{Isolator, Limitation, Preparation, ResourceStatistics};
use cairn_oci::extract::LayerCache;
use cairn_oci::registry::RegistryConfig;
use cairn_oci::rootfs::RootfsMode;
use cairn_oci::runtime::{Runtime, RuntimeConfig, RuntimeError};
use cairn_oci::store::Store;
use nix::sys::signal::Signal;

use crate::checkpoint::{self, ContainerCheckpoint, ExitRecord, ExitStatus, Layout, ProcessRef};
use crate::supervisor::SupervisorConfig;
pub use recover::Recovery;
pub use state::ContainerState;
pub use types::{
    ContainerizerError, Event, LaunchRequest, TaskCommand, Termination, DEFAULT_KILL_GRACE,
};

/// How the containerizer is set up.
#[derive(Debug, Clone)]
pub struct ContainerizerConfig {
    /// The agent's work directory (see [`crate::checkpoint`] for its layout).
    pub work_dir: PathBuf,
    /// Isolators by name, in preparation order (`cgroups/cpu`, `cgroups/mem`, ...).
    pub isolation: Vec<String>,
    /// Where container cgroups go.
    pub cgroups: CgroupsConfig,
    /// The `disk/du` and `disk/quota` knobs (watch interval, ...).
    pub disk: DiskConfig,
    /// The `cairn-supervisor` binary.
    pub supervisor: PathBuf,
    /// Registry settings for pulls; `None` runs only images already in the local store.
    pub registry: Option<RegistryConfig>,
    /// How root filesystems are assembled.
    pub rootfs_mode: RootfsMode,
    /// How often the monitor looks for exits.
    pub poll_interval: Duration,
    /// Rotate a sandbox log beyond this many bytes.
    pub log_max_bytes: u64,
    /// Rotated log files kept per stream.
    pub log_max_files: u32,
}

impl ContainerizerConfig {
    /// Defaults for `work_dir`: `cgroups/cpu`, `cgroups/mem`, `cgroups/pids`; the supervisor
    /// next to the running binary; no pulls.
    pub fn new(work_dir: impl Into<PathBuf>) -> Self {
        let supervisor = std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("cairn-supervisor")))
            .unwrap_or_else(|| PathBuf::from("cairn-supervisor"));
        Self {
            work_dir: work_dir.into(),
            isolation: vec![
                "cgroups/cpu".into(),
                "cgroups/mem".into(),
                "cgroups/pids".into(),
            ],
            cgroups: CgroupsConfig::default(),
            disk: DiskConfig::default(),
            supervisor,
            registry: None,
            rootfs_mode: RootfsMode::Auto,
            poll_interval: Duration::from_millis(50),
            log_max_bytes: 10 * 1024 * 1024,
            log_max_files: 2,
        }
    }
}

/// Whether a change of a container's record is written to its checkpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Persist {
    Checkpoint,
    /// In memory only: a later checkpoint carries it, or recovery does not need it.
    MemoryOnly,
}

/// One container as the containerizer tracks it.
#[derive(Debug)]
struct Entry {
    record: ContainerCheckpoint,
    /// The first limitation reported (by an event or `watch`), which decides the task's end.
    limitation: Option<Limitation>,
    /// When each isolator (by index) last watched it: each is polled at its own interval
    /// (`disk/du` walks every `watch_interval_secs`, not at `cgroups/mem`'s second).
    last_watch: Vec<Instant>,
    /// The monitor or a destroy owns it now.
    destroying: bool,
}

#[derive(Debug)]
struct Inner {
    config: ContainerizerConfig,
    layout: Layout,
    isolators: Vec<Box<dyn Isolator>>,
    store: Store,
    layers: LayerCache,
    runtime: Runtime,
    containers: Mutex<HashMap<ContainerId, Entry>>,
    changed: Condvar,
    listeners: Mutex<Vec<mpsc::Sender<Event>>>,
    /// Wakes the monitor when a supervisor writes an exit file.
    exit_watch: Option<exit_watch::ExitWatch>,
    stop: AtomicBool,
    /// The work directory's lock, held while this containerizer lives.
    _lock: fs::File,
}

/// Runs tasks in containers; see the module docs. Dropping it stops monitoring and leaves
/// every container running under its supervisor (as an agent restart does).
#[derive(Debug)]
pub struct Containerizer {
    inner: Arc<Inner>,
    monitor: Option<JoinHandle<()>>,
    /// One per isolator that pushes limitations ([`Isolator::subscribe`]).
    limitation_threads: Vec<JoinHandle<()>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> ContainerizerError {
    let path = path.to_path_buf();
    move |source| ContainerizerError::Io { op, path, source }
}

/// A fresh container id: 16 random hex digits.
fn new_container_id() -> ContainerId {
    let mut bytes = [0u8; 8];
    if fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut bytes))
        .is_err()
    {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        bytes = (nanos as u64 ^ u64::from(std::process::id())).to_le_bytes();
    }
    ContainerId::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// The container's cgroup when no isolator names one: `<parent>/<id>`, the parent relative
/// to our own cgroup unless absolute (as the cgroup isolators place theirs).
fn default_cgroup(config: &CgroupsConfig, id: &ContainerId) -> PathBuf {
    let parent = if config.parent.starts_with('/') {
        PathBuf::from(&config.parent)
    } else {
        cairn_oci::runtime::own_cgroup("memory")
            .or_else(|| cairn_oci::runtime::own_cgroup(""))
            .unwrap_or_else(|| PathBuf::from("/"))
            .join(&config.parent)
    };
    parent.join(id.as_str())
}

impl Containerizer {
    /// Builds the isolators, opens the image store, recovers the containers checkpointed
    /// under the work directory, and starts monitoring.
    ///
    /// # Errors
    /// Unknown isolators, a store or work directory that cannot be opened, or isolators that
    /// cannot recover. A corrupt container checkpoint is not an error: that container is
    /// quarantined and listed in [`Recovery::quarantined`].
    pub fn start(config: ContainerizerConfig) -> Result<(Self, Recovery), ContainerizerError> {
        let layout = Layout::new(&config.work_dir);
        for dir in [
            layout.containers_meta(),
            layout.sandboxes(),
            layout.bundles(),
            layout.images(),
        ] {
            fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        }
        // One containerizer per work directory: a second one would "recover" (and destroy)
        // the first one's launches in flight.
        let lock_path = layout.meta().join("containerizer.lock");
        let lock_file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err("open", &lock_path))?;
        if rustix::fs::flock(
            &lock_file,
            rustix::fs::FlockOperation::NonBlockingLockExclusive,
        )
        .is_err()
        {
            return Err(ContainerizerError::Locked(lock_path));
        }
        let isolators = isolation::build(&config, &layout.sandboxes())?;
        let store = Store::open(layout.images())?;
        let runtime = Runtime::new(RuntimeConfig {
            state_root: layout.runtime(),
            cgroup_parent: PathBuf::from("/"),
        })?;
        let inner = Arc::new(Inner {
            _lock: lock_file,
            layers: LayerCache::new(layout.images()),
            config,
            layout,
            isolators,
            store,
            runtime,
            containers: Mutex::new(HashMap::new()),
            changed: Condvar::new(),
            listeners: Mutex::new(Vec::new()),
            exit_watch: exit_watch::ExitWatch::new(),
            stop: AtomicBool::new(false),
        });
        let recovery = recover::recover(&inner)?;
        // Subscribed after recovery, so every event names a container we track: one seen
        // before (or while no thread listens) is kept by the isolator for the next `watch`.
        let mut limitation_threads = Vec::new();
        for (index, iso) in inner.isolators.iter().enumerate() {
            let Some(events) = iso.subscribe() else {
                continue;
            };
            let weak = Arc::downgrade(&inner);
            let thread = std::thread::Builder::new()
                .name(format!("containerizer-limits-{index}"))
                .spawn(move || isolation::limitation_events(&weak, &events))
                .map_err(io_err("spawn limitation thread", Path::new("-")))?;
            limitation_threads.push(thread);
        }
        let weak = Arc::downgrade(&inner);
        let interval = inner.config.poll_interval;
        let monitor = std::thread::Builder::new()
            .name("containerizer-monitor".into())
            .spawn(move || monitor(&weak, interval))
            .map_err(io_err("spawn monitor thread", Path::new("-")))?;
        Ok((
            Self {
                inner,
                monitor: Some(monitor),
                limitation_threads,
            },
            recovery,
        ))
    }

    /// The layout of the work directory.
    pub fn layout(&self) -> &Layout {
        &self.inner.layout
    }

    /// The image store (for imports).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Events from now on: container states and task statuses.
    pub fn subscribe(&self) -> mpsc::Receiver<Event> {
        let (tx, rx) = mpsc::channel();
        lock(&self.inner.listeners).push(tx);
        rx
    }

    /// Launches `request`'s task in a new container; blocks until it runs or has failed (its
    /// [`Termination`] is then ready). Returns the container's id.
    pub fn launch(&self, request: &LaunchRequest) -> ContainerId {
        let id = new_container_id();
        self.inner.launch(&id, request);
        id
    }

    /// Kills the container: SIGTERM to its init, SIGKILL after `grace` if it still runs. Its
    /// task ends `TASK_KILLED`. Returns at once; [`Containerizer::wait`] for the end.
    ///
    /// # Errors
    /// [`ContainerizerError::Unknown`].
    pub fn kill(&self, id: &ContainerId, grace: Duration) -> Result<(), ContainerizerError> {
        self.inner.kill(id, grace)
    }

    /// Blocks until the container's task ended; returns how.
    ///
    /// # Errors
    /// [`ContainerizerError::Unknown`].
    pub fn wait(&self, id: &ContainerId) -> Result<Termination, ContainerizerError> {
        let mut containers = lock(&self.inner.containers);
        loop {
            let entry = containers
                .get(id)
                .ok_or_else(|| ContainerizerError::Unknown(id.clone()))?;
            if let Some(t) = &entry.record.termination {
                return Ok(t.clone());
            }
            containers = self
                .inner
                .changed
                .wait(containers)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// How the container's task ended, if it did.
    pub fn termination(&self, id: &ContainerId) -> Option<Termination> {
        lock(&self.inner.containers)
            .get(id)
            .and_then(|e| e.record.termination.clone())
    }

    /// The container's checkpointed record (state, pids, cgroup, paths).
    pub fn record(&self, id: &ContainerId) -> Option<ContainerCheckpoint> {
        lock(&self.inner.containers)
            .get(id)
            .map(|e| e.record.clone())
    }

    /// The containers known, running or ended.
    pub fn containers(&self) -> Vec<ContainerId> {
        lock(&self.inner.containers).keys().cloned().collect()
    }

    /// The container's usage, merged from every isolator.
    ///
    /// # Errors
    /// [`ContainerizerError::Unknown`] or an isolator's error.
    pub fn usage(&self, id: &ContainerId) -> Result<ResourceStatistics, ContainerizerError> {
        if !lock(&self.inner.containers).contains_key(id) {
            return Err(ContainerizerError::Unknown(id.clone()));
        }
        let mut stats = ResourceStatistics::default();
        for iso in &self.inner.isolators {
            stats.merge(&iso.usage(id)?);
        }
        Ok(stats)
    }

    /// Forgets an ended container: removes its checkpoint (call once its terminal status is
    /// acknowledged). Its sandbox stays for the operator (garbage collected separately).
    ///
    /// # Errors
    /// [`ContainerizerError::Unknown`] for a running or unknown container.
    pub fn forget(&self, id: &ContainerId) -> Result<(), ContainerizerError> {
        let mut containers = lock(&self.inner.containers);
        match containers.get(id) {
            Some(e) if e.record.termination.is_some() => {}
            _ => return Err(ContainerizerError::Unknown(id.clone())),
        }
        // Remove the directory before the entry, so a failure can be retried. The supervisor
        // may still be writing its last files (it exits after the container), which makes
        // `remove_dir_all` race with a new entry (ENOTEMPTY): try again a few times.
        let dir = self.inner.layout.container_meta(id);
        let mut attempt = 0;
        loop {
            match fs::remove_dir_all(&dir) {
                Ok(()) => break,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) if e.kind() == std::io::ErrorKind::DirectoryNotEmpty && attempt < 10 => {
                    attempt += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => return Err(io_err("remove", &dir)(e)),
            }
        }
        containers.remove(id);
        Ok(())
    }
}

impl Drop for Containerizer {
    fn drop(&mut self) {
        self.inner.stop.store(true, Ordering::Release);
        if let Some(handle) = self.monitor.take() {
            let _ = handle.join();
        }
        for handle in self.limitation_threads.drain(..) {
            let _ = handle.join();
        }
    }
}

impl Inner {
    fn emit(&self, event: &Event) {
        lock(&self.listeners).retain(|tx| tx.send(event.clone()).is_ok());
    }

    fn emit_task(&self, id: &ContainerId, task: &TaskId, t: &Termination) {
        self.emit(&Event::Task {
            container: id.clone(),
            task: task.clone(),
            state: t.state,
            reason: t.reason,
            message: t.message.clone(),
        });
    }

    /// Changes the record under the lock and checkpoints it.
    fn update(
        &self,
        id: &ContainerId,
        f: impl FnOnce(&mut ContainerCheckpoint),
    ) -> Option<ContainerCheckpoint> {
        self.change(id, f, Persist::Checkpoint)
    }

    /// Changes the record under the lock; writes the checkpoint if `persist` says so.
    fn change(
        &self,
        id: &ContainerId,
        f: impl FnOnce(&mut ContainerCheckpoint),
        persist: Persist,
    ) -> Option<ContainerCheckpoint> {
        let record = {
            let mut containers = lock(&self.containers);
            let entry = containers.get_mut(id)?;
            f(&mut entry.record);
            entry.record.clone()
        };
        if persist == Persist::Checkpoint {
            if let Err(e) = checkpoint::write(&self.layout.container_file(id), &record) {
                tracing::error!(container = %id, error = %e, "checkpoint failed");
            }
        }
        self.changed.notify_all();
        Some(record)
    }

    /// Have the monitor woken when this container's exit file appears.
    fn watch_exit(&self, id: &ContainerId) {
        if let Some(w) = &self.exit_watch {
            w.watch(&self.layout.container_meta(id), id);
        }
    }

    /// The record as it is now (no checkpoint written).
    fn current(&self, id: &ContainerId) -> Option<ContainerCheckpoint> {
        lock(&self.containers).get(id).map(|e| e.record.clone())
    }

    /// Moves the container to `next` if the state machine allows it (checkpointed).
    fn transition(&self, id: &ContainerId, next: ContainerState) -> bool {
        self.transition_with(id, next, |_| {}, Persist::Checkpoint)
    }

    /// Moves the container to `next` if the state machine allows it, applying `change` to
    /// the record in the same step (one checkpoint write for both).
    fn transition_with(
        &self,
        id: &ContainerId,
        next: ContainerState,
        change: impl FnOnce(&mut ContainerCheckpoint),
        persist: Persist,
    ) -> bool {
        let mut allowed = false;
        let record = self.change(
            id,
            |r| {
                allowed = r.state.can_become(next);
                if allowed {
                    r.state = next;
                    change(r);
                }
            },
            persist,
        );
        if let (true, Some(r)) = (allowed, record) {
            self.emit(&Event::Container {
                container: id.clone(),
                task: r.task_id,
                state: next,
            });
        }
        allowed
    }

    fn launch(&self, id: &ContainerId, request: &LaunchRequest) {
        let record = ContainerCheckpoint {
            version: checkpoint::VERSION,
            container_id: id.clone(),
            task_id: request.task_id.clone(),
            state: ContainerState::Provisioning,
            limits: request.limits(),
            image: request.image.clone(),
            cgroup: None,
            bundle: self.layout.bundle(id),
            sandbox: self.layout.sandbox(id),
            supervisor: None,
            init: None,
            kill_requested: false,
            termination: None,
        };
        lock(&self.containers).insert(
            id.clone(),
            Entry {
                record: record.clone(),
                limitation: None,
                last_watch: vec![Instant::now(); self.isolators.len()],
                destroying: false,
            },
        );
        self.update(id, |_| {});
        // The checkpoint made the directory the supervisor will write the exit file into.
        self.watch_exit(id);
        self.emit(&Event::Container {
            container: id.clone(),
            task: request.task_id.clone(),
            state: ContainerState::Provisioning,
        });
        self.emit(&Event::Task {
            container: id.clone(),
            task: request.task_id.clone(),
            state: TaskState::Starting,
            reason: None,
            message: String::new(),
        });
        match self.run_launch(id, request, &record) {
            Ok(()) => {
                let killed = lock(&self.containers)
                    .get(id)
                    .is_some_and(|e| e.record.kill_requested);
                if killed {
                    self.signal(id, Signal::SIGKILL);
                }
                // A command that ended before it was RUNNING here: the monitor skipped its
                // exit file then, and would find it only at its next sweep.
                if self.layout.exit_file(id).exists() {
                    self.finish_once(id);
                }
            }
            Err(t) => self.destroy(id, t),
        }
    }

    fn run_launch(
        &self,
        id: &ContainerId,
        request: &LaunchRequest,
        record: &ContainerCheckpoint,
    ) -> Result<(), Termination> {
        let sandbox = &record.sandbox;
        fs::create_dir_all(sandbox).map_err(|e| {
            Termination::launch_failed(format!("create sandbox {}: {e}", sandbox.display()))
        })?;
        // Provisioning: the layers; the supervisor assembles the root filesystem below.
        let (image_config, plan) = match &request.image {
            Some(reference) => {
                let image =
                    provision::image(&self.store, self.config.registry.as_ref(), reference)?;
                let plan = provision::image_plan(&self.layers, &image, self.config.rootfs_mode)?;
                (Some(image.config), plan)
            }
            None => (None, provision::host_plan(&record.bundle)?),
        };
        // Preparing: every isolator; destroy cleans all of them up whatever happens here.
        // Not checkpointed: recovery destroys a PREPARING container exactly as a PROVISIONING
        // one, so the write would only cost a launch (each is a file created and fsynced).
        self.transition_with(id, ContainerState::Preparing, |_| {}, Persist::MemoryOnly);
        let mut preparation = Preparation::default();
        for iso in &self.isolators {
            let prepared = iso.prepare(id, &record.limits).map_err(|e| {
                Termination::launch_failed(format!("cannot prepare {}: {e}", iso.name()))
            })?;
            preparation.merge(prepared);
        }
        let cgroup = preparation
            .cgroup_path
            .clone()
            .map_or_else(|| default_cgroup(&self.config.cgroups, id), PathBuf::from);
        // Checkpointed with ISOLATING below, before anything uses it.
        self.change(id, |r| r.cgroup = Some(cgroup.clone()), Persist::MemoryOnly);
        let supervisor_config = SupervisorConfig {
            version: checkpoint::VERSION,
            container_id: id.clone(),
            bundle: record.bundle.clone(),
            state_root: self.layout.runtime(),
            cgroup_parent: cgroup
                .parent()
                .map_or_else(|| "/".into(), Path::to_path_buf),
            stdout: sandbox.join("stdout"),
            stderr: sandbox.join("stderr"),
            exit_file: self.layout.exit_file(id),
            log_max_bytes: self.config.log_max_bytes,
            log_max_files: self.config.log_max_files,
            rootfs: Some(plan),
        };
        let prepared = supervise::spawn(
            &self.config.supervisor,
            &self.layout.supervisor_file(id),
            &supervisor_config,
            &sandbox.join("supervisor.log"),
        )
        .map_err(|m| Termination::launch_failed(format!("cannot create the container: {m}")))?;
        // Destroy waits for it (dropping `prepared` on an error below makes it exit);
        // checkpointed with ISOLATING. A restart before that finds the container PREPARING
        // and destroys it, and the supervisor exits on its own when the agent's pipe closes.
        self.change(
            id,
            |r| r.supervisor = Some(prepared.supervisor),
            Persist::MemoryOnly,
        );
        let rootfs = record.bundle.join(provision::ROOTFS_DIR);
        let rendered = bundle::render(&bundle::BundleInput {
            id,
            task_id: &request.task_id,
            image: image_config.as_ref(),
            rootfs: &rootfs,
            rootfs_view: &prepared.view(&rootfs),
            bundle: &record.bundle,
            command: request.command.as_ref(),
            sandbox,
            limits: &record.limits,
            env: &request.env,
            preparation: &preparation,
            cgroup: &cgroup,
        });
        if let Err(t) = rendered {
            // The rootfs is read through the supervisor: without it, "command not found"
            // would blame the task for the supervisor's death.
            if !prepared.supervisor.is_alive() {
                return Err(Termination::launch_failed(
                    "the container's supervisor exited while the bundle was rendered \
                     (see supervisor.log in the sandbox)",
                ));
            }
            return Err(t);
        }
        // Isolating: the supervisor creates the init; isolators place it before it runs.
        self.transition(id, ContainerState::Isolating);
        let pending = prepared
            .create()
            .map_err(|m| Termination::launch_failed(format!("cannot create the container: {m}")))?;
        self.update(id, |r| r.init = Some(pending.init));
        for iso in &self.isolators {
            if let Err(e) = iso.isolate(id, pending.init.pid) {
                pending.abort();
                return Err(Termination::launch_failed(format!(
                    "cannot isolate with {}: {e}",
                    iso.name()
                )));
            }
        }
        pending
            .start()
            .map_err(|m| Termination::launch_failed(format!("cannot start the container: {m}")))?;
        self.transition(id, ContainerState::Running);
        self.emit(&Event::Task {
            container: id.clone(),
            task: request.task_id.clone(),
            state: TaskState::Running,
            reason: None,
            message: String::new(),
        });
        Ok(())
    }

    /// Sends `signal` to the container's init if it is still that process.
    fn signal(&self, id: &ContainerId, signal: Signal) {
        let init = lock(&self.containers).get(id).and_then(|e| e.record.init);
        if let Some(init) = init.filter(ProcessRef::is_alive) {
            let pid = nix::unistd::Pid::from_raw(i32::try_from(init.pid).unwrap_or(i32::MAX));
            let _ = nix::sys::signal::kill(pid, signal);
        }
    }

    fn kill(self: &Arc<Self>, id: &ContainerId, grace: Duration) -> Result<(), ContainerizerError> {
        let state = lock(&self.containers)
            .get(id)
            .map(|e| (e.record.state, e.record.termination.is_some()))
            .ok_or_else(|| ContainerizerError::Unknown(id.clone()))?;
        if state.1 {
            return Ok(());
        }
        self.update(id, |r| r.kill_requested = true);
        self.emit(&Event::Task {
            container: id.clone(),
            task: lock(&self.containers)
                .get(id)
                .map(|e| e.record.task_id.clone())
                .unwrap_or_else(|| TaskId::new("")),
            state: TaskState::Killing,
            reason: None,
            message: String::new(),
        });
        if state.0 != ContainerState::Running {
            // The launch kills it once it runs (or fails on its own).
            return Ok(());
        }
        self.signal(id, Signal::SIGTERM);
        let inner = Arc::clone(self);
        let id = id.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + grace;
            while Instant::now() < deadline {
                if inner.layout.exit_file(&id).exists() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            inner.signal(&id, Signal::SIGKILL);
        });
        Ok(())
    }

    /// The task's end from what is known: a limitation wins, then a kill request, then the
    /// exit status.
    fn termination_of(
        limitation: Option<Limitation>,
        kill_requested: bool,
        exit: Option<ExitStatus>,
    ) -> Termination {
        if let Some(l) = limitation {
            return Termination {
                state: TaskState::Failed,
                reason: Some(l.reason),
                message: l.message,
                exit,
            };
        }
        let (state, reason, message) = match exit {
            _ if kill_requested => (TaskState::Killed, None, "killed by request".to_string()),
            Some(ExitStatus::Exited(0)) => (
                TaskState::Finished,
                None,
                "command exited with status 0".to_string(),
            ),
            Some(ExitStatus::Exited(code)) => (
                TaskState::Failed,
                None,
                format!("command exited with status {code}"),
            ),
            Some(ExitStatus::Signaled(sig)) => (
                TaskState::Failed,
                None,
                format!(
                    "command terminated by signal {}",
                    Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.to_string())
                ),
            ),
            Some(ExitStatus::Aborted) => (
                TaskState::Failed,
                Some(Reason::ContainerLaunchFailed),
                "the launch was aborted before the command ran".to_string(),
            ),
            None => (
                TaskState::Failed,
                Some(Reason::ExecutorTerminated),
                "the container's supervisor ended without recording an exit status".to_string(),
            ),
        };
        Termination {
            state,
            reason,
            message,
            exit,
        }
    }

    /// Finishes a RUNNING container whose init ended, unless another thread already is (the
    /// monitor and a launch can both notice the same exit).
    fn finish_once(&self, id: &ContainerId) {
        let claimed = match lock(&self.containers).get_mut(id) {
            Some(e)
                if !e.destroying
                    && e.record.termination.is_none()
                    && e.record.state == ContainerState::Running =>
            {
                e.destroying = true;
                true
            }
            _ => false,
        };
        if claimed {
            self.finish(id);
        }
    }

    /// The container's init ended (or its supervisor is gone): decide the task's end and
    /// destroy the container.
    fn finish(&self, id: &ContainerId) {
        let exit = checkpoint::read::<ExitRecord>(&self.layout.exit_file(id))
            .unwrap_or_else(|e| {
                tracing::error!(container = %id, error = %e, "unreadable exit file");
                None
            })
            .map(|r| r.status);
        let mut limitation = lock(&self.containers)
            .get(id)
            .and_then(|e| e.limitation.clone());
        if limitation.is_none() {
            limitation = self.isolators.iter().find_map(|iso| match iso.watch(id) {
                Ok(l) => l,
                Err(e) => {
                    tracing::warn!(container = %id, error = %e, "watch failed");
                    None
                }
            });
        }
        let kill_requested = lock(&self.containers)
            .get(id)
            .is_some_and(|e| e.record.kill_requested);
        let t = Self::termination_of(limitation, kill_requested, exit);
        self.destroy(id, t);
    }

    /// Destroys the container and records `termination`: kills what runs, deletes the
    /// runtime's container, cleans up every isolator in reverse order, tears down the root
    /// filesystem. Every step runs even when one before it failed.
    fn destroy(&self, id: &ContainerId, termination: Termination) {
        {
            let mut containers = lock(&self.containers);
            if let Some(e) = containers.get_mut(id) {
                e.destroying = true;
            }
        }
        self.transition(id, ContainerState::Destroying);
        let Some(record) = self.current(id) else {
            return;
        };
        let exit_file = self.layout.exit_file(id);
        if record.supervisor.is_some_and(|s| s.is_alive()) {
            if !exit_file.exists() {
                self.signal(id, Signal::SIGKILL);
            }
            if let Some(supervisor) = record.supervisor {
                supervisor.wait_gone(Duration::from_secs(10));
            }
        } else {
            // No supervisor to reap it: kill whatever is left of the container.
            self.signal(id, Signal::SIGKILL);
        }
        let mut failed: Vec<String> = Vec::new();
        match self.runtime.load(id.as_str()) {
            Ok(container) => {
                if let Err(e) = container.delete(true) {
                    tracing::warn!(container = %id, error = %e, "runtime delete failed");
                    failed.push(format!("runtime delete: {e}"));
                }
            }
            Err(RuntimeError::NotFound(_)) => {}
            Err(e) => {
                tracing::warn!(container = %id, error = %e, "runtime load failed");
                failed.push(format!("runtime load: {e}"));
            }
        }
        for iso in self.isolators.iter().rev() {
            if let Err(e) = iso.cleanup(id) {
                tracing::warn!(container = %id, isolator = iso.name(), error = %e, "cleanup failed");
                failed.push(format!("{} cleanup: {e}", iso.name()));
            }
        }
        if let Err(e) = provision::teardown(&record.bundle) {
            tracing::warn!(container = %id, error = %e, "rootfs teardown failed");
            failed.push(format!("rootfs teardown: {e}"));
        }
        if !failed.is_empty() {
            self.emit(&Event::DestroyFailed {
                container: id.clone(),
                task: record.task_id.clone(),
                message: failed.join("; "),
            });
        }
        self.update(id, |r| r.termination = Some(termination.clone()));
        self.emit_task(id, &record.task_id, &termination);
    }

    /// One pass of the monitor: exits, vanished supervisors, periodic limitations.
    fn poll(&self) {
        let now = Instant::now();
        let mut due = Vec::new();
        {
            let mut containers = lock(&self.containers);
            for (id, e) in containers.iter_mut() {
                if e.destroying
                    || e.record.termination.is_some()
                    || e.record.state != ContainerState::Running
                {
                    continue;
                }
                // Already limited: killed, waiting for the exit; nothing more to find.
                let mut watch = Vec::new();
                if e.limitation.is_none() {
                    for (i, iso) in self.isolators.iter().enumerate() {
                        let due = iso.watch_interval().is_some_and(|every| {
                            e.last_watch
                                .get(i)
                                .is_none_or(|last| now.duration_since(*last) >= every)
                        });
                        if due {
                            if let Some(last) = e.last_watch.get_mut(i) {
                                *last = now;
                            }
                            watch.push(i);
                        }
                    }
                }
                due.push((id.clone(), e.record.supervisor, watch));
            }
        }
        for (id, supervisor, watch) in due {
            let ended =
                self.layout.exit_file(&id).exists() || supervisor.is_some_and(|s| !s.is_alive());
            if ended {
                self.finish_once(&id);
                continue;
            }
            for i in watch {
                if let Ok(Some(l)) = self.isolators[i].watch(&id) {
                    self.limited(&id, l);
                    break;
                }
            }
        }
    }
}

/// How often the monitor sweeps every container when inotify reports exits: vanished
/// supervisors and the isolators' periodic checks (`cgroups/mem` watches every second) need
/// no more.
const SWEEP_WITH_EXIT_WATCH: Duration = Duration::from_secs(1);

fn monitor(inner: &Weak<Inner>, interval: Duration) {
    let mut last_sweep: Option<Instant> = None;
    let mut exited = Vec::new();
    loop {
        let Some(inner) = inner.upgrade() else { return };
        if inner.stop.load(Ordering::Acquire) {
            return;
        }
        let every = if inner.exit_watch.is_some() {
            interval.max(SWEEP_WITH_EXIT_WATCH)
        } else {
            interval
        };
        if last_sweep.is_none_or(|at| at.elapsed() >= every) {
            inner.poll();
            last_sweep = Some(Instant::now());
        } else {
            for id in exited.drain(..) {
                inner.finish_once(&id);
            }
        }
        // Until an exit file appears or the sweep is due (held at most `interval`: a dropped
        // containerizer joins this thread after setting `stop`).
        let next_sweep = last_sweep.map_or(Duration::ZERO, |at| every.saturating_sub(at.elapsed()));
        match &inner.exit_watch {
            Some(w) => exited = w.wait(next_sweep.min(interval)),
            None => std::thread::sleep(next_sweep),
        }
        drop(inner);
    }
}
