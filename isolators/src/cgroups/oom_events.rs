//! Event-driven OOM detection: one background thread per memory isolator (one per agent, not
//! one per container) waits on every container's OOM notification in one epoll set, and
//! reports each container's OOM kill once, as soon as the kernel has counted it.
//!
//! - v2: a change of any counter in `memory.events` "generates a file modified event"
//!   (Documentation/admin-guide/cgroup-v2.rst, `memory.events`; the kernel calls
//!   `cgroup_file_notify`, at most once per 10 ms per file), which inotify reports as
//!   `IN_MODIFY`. One inotify instance holds one watch per container; on each event the thread
//!   reads `oom_kill`. `max` and `high` events wake it too; each costs one small read.
//! - v1: the classic OOM notification (Documentation/admin-guide/cgroup-v1/memory.rst,
//!   "10. OOM Control"): an eventfd is registered by writing
//!   `"<eventfd> <fd of memory.oom_control>"` to `cgroup.event_control`. The kernel signals it
//!   when the cgroup goes under OOM, which is *before* the OOM killer picks a victim
//!   (`mem_cgroup_oom` notifies, then calls `mem_cgroup_out_of_memory`), and when the cgroup is
//!   removed. So after a signal the thread re-reads `oom_kill` every [`RECHECK`] for up to
//!   [`RECHECK_FOR`], and reports only a kill the kernel counted: an OOM can also end without
//!   one (a process exits or frees memory). Kernels before 4.13 have no `oom_kill`; there
//!   `under_oom` stands in (see [`super::oom::oom_kills`]).
//!
//! A limitation goes out exactly once per container, through whichever path gets it first:
//! when the event arrives it is sent to the subscribers ([`OomEvents::subscribe`]), or, with
//! none listening, recorded for the next [`OomEvents::claim`] (the isolator's `watch`). `watch`
//! still reads the counter itself while nothing was recorded, so a container whose
//! notification could not be registered is still covered by polling. Registration also checks
//! the counter once, so a kill that happened while the agent was down (recovery) is reported.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use cairn_api::ContainerId;
use nix::errno::Errno;
use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify, WatchDescriptor};
use std::os::fd::AsRawFd;

use super::{files, oom, CgroupError, CgroupVersion};
use crate::isolator::Limitation;

/// How often a v1 cgroup is re-read after its OOM notification, until the kill is counted.
pub const RECHECK: Duration = Duration::from_millis(10);
/// How long after a v1 OOM notification a kill is waited for.
pub const RECHECK_FOR: Duration = Duration::from_secs(2);

/// The name of the notifier thread (in `/proc/<pid>/task/*/comm`).
pub const THREAD_NAME: &str = "cairn-oom";

/// epoll tokens: the wake-up eventfd, the inotify instance (v2), then one per v1 eventfd.
const WAKE: u64 = 0;
const INOTIFY: u64 = 1;
const FIRST_TOKEN: u64 = 2;

/// Where a container's limitation stands; shared by the event thread and `watch`.
#[derive(Debug)]
enum Delivery {
    /// No kill seen yet.
    Pending,
    /// Seen by the event thread with nobody subscribed: `watch` returns it.
    Recorded(Limitation),
    /// Delivered (to a subscriber or by `watch`): never again.
    Reported,
}

/// How the kernel tells us about one container.
#[derive(Debug)]
enum Source {
    /// An inotify watch on `memory.events`.
    V2(WatchDescriptor),
    /// An eventfd registered with `cgroup.event_control`, in the epoll set under `token`.
    V1 { event: EventFd, token: u64 },
}

#[derive(Debug)]
struct Entry {
    id: ContainerId,
    /// The container's memory cgroup.
    dir: PathBuf,
    /// The hard limit reported in the message (updated by `update`).
    limit: AtomicU64,
    source: Source,
    delivery: Mutex<Delivery>,
}

#[derive(Debug, Default)]
struct Table {
    by_id: HashMap<ContainerId, Arc<Entry>>,
    by_wd: HashMap<WatchDescriptor, Arc<Entry>>,
    by_token: HashMap<u64, Arc<Entry>>,
    next_token: u64,
}

#[derive(Debug)]
struct Shared {
    version: CgroupVersion,
    epoll: Epoll,
    /// v2 only.
    inotify: Option<Inotify>,
    /// Written by [`OomEvents`]'s drop to stop the thread.
    wake: EventFd,
    stop: AtomicBool,
    table: Mutex<Table>,
    subscribers: Mutex<Vec<Sender<(ContainerId, Limitation)>>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn nix_err(op: &'static str, path: &Path, e: Errno) -> CgroupError {
    files::io_err(op, path, std::io::Error::from(e))
}

/// The OOM notifier of one memory isolator: its thread, epoll set and registrations. Dropping
/// it stops the thread and closes every descriptor it holds.
#[derive(Debug)]
pub struct OomEvents {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl OomEvents {
    /// Starts the notifier thread for cgroups of `version`.
    ///
    /// # Errors
    /// The epoll set, the wake-up eventfd or (v2) the inotify instance cannot be created, or
    /// the thread cannot be spawned.
    pub fn start(version: CgroupVersion) -> Result<Self, CgroupError> {
        let here = Path::new("(oom notifier)");
        let epoll = Epoll::new(EpollCreateFlags::EPOLL_CLOEXEC)
            .map_err(|e| nix_err("epoll_create", here, e))?;
        let wake = EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
            .map_err(|e| nix_err("eventfd", here, e))?;
        epoll
            .add(&wake, EpollEvent::new(EpollFlags::EPOLLIN, WAKE))
            .map_err(|e| nix_err("epoll_ctl", here, e))?;
        let inotify = if version == CgroupVersion::V2 {
            let inotify = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK)
                .map_err(|e| nix_err("inotify_init", here, e))?;
            epoll
                .add(&inotify, EpollEvent::new(EpollFlags::EPOLLIN, INOTIFY))
                .map_err(|e| nix_err("epoll_ctl", here, e))?;
            Some(inotify)
        } else {
            None
        };
        let shared = Arc::new(Shared {
            version,
            epoll,
            inotify,
            wake,
            stop: AtomicBool::new(false),
            table: Mutex::new(Table {
                next_token: FIRST_TOKEN,
                ..Table::default()
            }),
            subscribers: Mutex::default(),
        });
        let thread_shared = shared.clone();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || thread_shared.run())
            .map_err(|e| files::io_err("spawn", here, e))?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// A new receiver of every limitation the notifier sees from now on, as
    /// `(container, limitation)`. A limitation sent to a receiver is not returned by `watch`.
    pub fn subscribe(&self) -> Receiver<(ContainerId, Limitation)> {
        let (tx, rx) = channel();
        lock(&self.shared.subscribers).push(tx);
        rx
    }

    /// Watches container `id`'s memory cgroup `dir` (limited to `limit` bytes) for OOM kills,
    /// and checks it once now. Registering a known container only updates its limit.
    ///
    /// # Errors
    /// The kernel refused the watch or the eventfd registration (the caller falls back to
    /// polling).
    pub fn register(&self, id: &ContainerId, dir: &Path, limit: u64) -> Result<(), CgroupError> {
        let entry = {
            let mut table = lock(&self.shared.table);
            if let Some(e) = table.by_id.get(id) {
                if e.dir == dir {
                    e.limit.store(limit, Ordering::Release);
                    return Ok(());
                }
            }
            let entry = Arc::new(Entry {
                id: id.clone(),
                dir: dir.to_path_buf(),
                limit: AtomicU64::new(limit),
                source: self.watch_source(&mut table, dir)?,
                delivery: Mutex::new(Delivery::Pending),
            });
            match &entry.source {
                Source::V2(wd) => table.by_wd.insert(*wd, entry.clone()),
                Source::V1 { event, token } => {
                    table.by_token.insert(*token, entry.clone());
                    // Added while the table is locked: the thread never sees an unknown token.
                    if let Err(e) = self
                        .shared
                        .epoll
                        .add(event, EpollEvent::new(EpollFlags::EPOLLIN, *token))
                    {
                        table.by_token.remove(token);
                        return Err(nix_err("epoll_ctl", dir, e));
                    }
                    None
                }
            };
            if let Some(old) = table.by_id.insert(id.clone(), entry.clone()) {
                // The same id at another directory (a new backend): forget the old watch.
                self.shared.forget(&mut table, &old);
            }
            entry
        };
        // A kill counted before the watch existed (while the agent was down) has no event.
        self.shared.fire(&entry);
        Ok(())
    }

    /// Makes the kernel's notification for `dir`: an inotify watch (v2) or a registered
    /// eventfd (v1).
    fn watch_source(&self, table: &mut Table, dir: &Path) -> Result<Source, CgroupError> {
        match (&self.shared.inotify, self.shared.version) {
            (Some(inotify), _) => {
                let events = dir.join("memory.events");
                let wd = inotify
                    .add_watch(&events, AddWatchFlags::IN_MODIFY)
                    .map_err(|e| nix_err("inotify_add_watch", &events, e))?;
                Ok(Source::V2(wd))
            }
            (None, _) => {
                let control = dir.join("memory.oom_control");
                let file = File::open(&control).map_err(|e| files::io_err("open", &control, e))?;
                let event = EventFd::from_value_and_flags(
                    0,
                    EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK,
                )
                .map_err(|e| nix_err("eventfd", &control, e))?;
                // The kernel takes its own references during the write; `file` may close after.
                files::write(
                    &dir.join("cgroup.event_control"),
                    &format!("{} {}", event.as_raw_fd(), file.as_raw_fd()),
                )?;
                let token = table.next_token;
                table.next_token += 1;
                Ok(Source::V1 { event, token })
            }
        }
    }

    /// Stops watching `id` (before its cgroup is removed: v1 signals the eventfd on removal).
    /// Unknown ids are fine.
    pub fn deregister(&self, id: &ContainerId) {
        let mut table = lock(&self.shared.table);
        if let Some(entry) = table.by_id.remove(id) {
            self.shared.forget(&mut table, &entry);
        }
    }

    /// Whether `id` is registered.
    pub fn is_registered(&self, id: &ContainerId) -> bool {
        lock(&self.shared.table).by_id.contains_key(id)
    }

    /// `watch` for a registered container: the limitation the event thread recorded, else
    /// `fallback` (reading the counter); at most once per container either way. `None` when
    /// `id` is not registered (the caller keeps its own once-flag).
    pub fn claim<E>(
        &self,
        id: &ContainerId,
        fallback: impl FnOnce() -> Result<Option<Limitation>, E>,
    ) -> Option<Result<Option<Limitation>, E>> {
        let entry = lock(&self.shared.table).by_id.get(id).cloned()?;
        let mut delivery = lock(&entry.delivery);
        Some(
            match std::mem::replace(&mut *delivery, Delivery::Reported) {
                Delivery::Reported => Ok(None),
                Delivery::Recorded(l) => Ok(Some(l)),
                Delivery::Pending => {
                    let found = fallback();
                    if !matches!(found, Ok(Some(_))) {
                        *delivery = Delivery::Pending;
                    }
                    found
                }
            },
        )
    }
}

impl Drop for OomEvents {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        let _ = self.shared.wake.write(1);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Shared {
    /// Removes `entry`'s kernel notification (the table entry by id is already gone).
    fn forget(&self, table: &mut Table, entry: &Entry) {
        match &entry.source {
            Source::V2(wd) => {
                table.by_wd.remove(wd);
                if let Some(inotify) = &self.inotify {
                    // EINVAL: the watch went with its cgroup already (IN_IGNORED).
                    let _ = inotify.rm_watch(*wd);
                }
            }
            Source::V1 { event, token } => {
                table.by_token.remove(token);
                let _ = self.epoll.delete(event);
                // The eventfd closes when the last Arc<Entry> drops; the kernel then drops
                // its registration (the eventfd's POLLHUP removes the memcg event).
            }
        }
    }

    /// Checks `entry`'s OOM kill counter and delivers the limitation. Returns whether the
    /// container is still pending (no kill counted).
    fn fire(&self, entry: &Entry) -> bool {
        let mut delivery = lock(&entry.delivery);
        if !matches!(*delivery, Delivery::Pending) {
            return false;
        }
        match oom::check(
            self.version,
            &entry.dir,
            entry.limit.load(Ordering::Acquire),
        ) {
            Ok(Some(limitation)) => {
                tracing::info!(container = %entry.id, message = %limitation.message, "oom kill");
                let mut subscribers = lock(&self.subscribers);
                subscribers.retain(|s| s.send((entry.id.clone(), limitation.clone())).is_ok());
                *delivery = if subscribers.is_empty() {
                    Delivery::Recorded(limitation)
                } else {
                    Delivery::Reported
                };
                false
            }
            Ok(None) => true,
            Err(e) => {
                // The cgroup is going away (cleanup races the event): nothing to report.
                tracing::debug!(container = %entry.id, error = %e, "oom check failed");
                false
            }
        }
    }

    /// The thread: waits for notifications and checks the containers they name.
    fn run(&self) {
        let mut events = [EpollEvent::empty(); 32];
        // v1 containers notified under OOM whose kill is not counted yet, until a deadline.
        let mut pending: Vec<(Arc<Entry>, Instant)> = Vec::new();
        loop {
            let timeout = if pending.is_empty() {
                EpollTimeout::NONE
            } else {
                EpollTimeout::try_from(RECHECK).unwrap_or(EpollTimeout::ZERO)
            };
            let n = match self.epoll.wait(&mut events, timeout) {
                Ok(n) => n,
                Err(Errno::EINTR) => 0,
                Err(e) => {
                    tracing::error!(error = %e, "epoll_wait failed; oom events stop (watch polls)");
                    return;
                }
            };
            if self.stop.load(Ordering::Acquire) {
                return;
            }
            for ev in &events[..n] {
                match ev.data() {
                    WAKE => {
                        let _ = self.wake.read();
                    }
                    INOTIFY => self.inotify_events(),
                    token => {
                        let entry = lock(&self.table).by_token.get(&token).cloned();
                        if let Some(entry) = entry {
                            if let Source::V1 { event, .. } = &entry.source {
                                let _ = event.read(); // reset the counter (non-blocking)
                            }
                            if self.fire(&entry) {
                                pending.push((entry, Instant::now() + RECHECK_FOR));
                            }
                        }
                    }
                }
            }
            let now = Instant::now();
            pending.retain(|(entry, deadline)| {
                let registered = lock(&self.table).by_id.contains_key(&entry.id);
                registered && now < *deadline && self.fire(entry)
            });
        }
    }

    /// Drains the inotify queue and checks the containers whose `memory.events` changed.
    fn inotify_events(&self) {
        let Some(inotify) = &self.inotify else { return };
        loop {
            let events = match inotify.read_events() {
                Ok(events) if !events.is_empty() => events,
                Ok(_) | Err(Errno::EAGAIN) => return,
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "reading inotify events failed");
                    return;
                }
            };
            for ev in events {
                if ev.mask.contains(AddWatchFlags::IN_Q_OVERFLOW) {
                    // Events were lost: check every container.
                    let all: Vec<_> = lock(&self.table).by_id.values().cloned().collect();
                    for entry in all {
                        self.fire(&entry);
                    }
                    continue;
                }
                let entry = {
                    let mut table = lock(&self.table);
                    if ev.mask.contains(AddWatchFlags::IN_IGNORED) {
                        // The cgroup was removed under us; the watch is gone.
                        table.by_wd.remove(&ev.wd);
                        None
                    } else {
                        table.by_wd.get(&ev.wd).cloned()
                    }
                };
                if let Some(entry) = entry {
                    self.fire(&entry);
                }
            }
        }
    }
}
