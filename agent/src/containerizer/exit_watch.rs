//! Tells the monitor which containers ended as soon as their supervisors record it: one
//! inotify descriptor watches each container's checkpoint directory, where the supervisor
//! renames `exit.json` into place, and each watch is mapped back to its container. A short
//! task otherwise waited half the poll interval before its end was noticed (a third of its
//! life in the launch benchmark), and with a thousand containers a sweep of all of them
//! (a `stat` and a `/proc/<pid>/stat` read each) every 50 ms cost a quarter of a core. With
//! the watch the monitor sweeps only every second (for vanished supervisors and the
//! isolators' periodic checks); without inotify it sweeps at the poll interval.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use cairn_api::ContainerId;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustix::fs::inotify;

/// The exit file's name, as [`crate::checkpoint::Layout::exit_file`] places it.
const EXIT_FILE: &[u8] = b"exit.json";

#[derive(Debug)]
pub(super) struct ExitWatch {
    fd: OwnedFd,
    /// Watch descriptor -> the container whose directory it watches.
    watched: Mutex<HashMap<i32, ContainerId>>,
}

impl ExitWatch {
    /// `None` when inotify is unavailable (the monitor then only polls).
    pub(super) fn new() -> Option<Self> {
        match inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK) {
            Ok(fd) => Some(Self {
                fd,
                watched: Mutex::new(HashMap::new()),
            }),
            Err(e) => {
                tracing::warn!("inotify unavailable, exits are noticed by polling only: {e}");
                None
            }
        }
    }

    /// Watches container `id`'s checkpoint directory. The watch goes away with the directory.
    pub(super) fn watch(&self, dir: &Path, id: &ContainerId) {
        let flags = inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CLOSE_WRITE;
        match inotify::add_watch(&self.fd, dir, flags) {
            Ok(wd) => {
                self.lock().insert(wd, id.clone());
            }
            Err(e) => {
                tracing::debug!(dir = %dir.display(), "cannot watch for the exit file: {e}");
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i32, ContainerId>> {
        self.watched.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Waits until exit files appear or `timeout` passes; returns whose appeared.
    pub(super) fn wait(&self, timeout: Duration) -> Vec<ContainerId> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Vec::new();
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => return Vec::new(),
                Ok(_) => {
                    let exited = self.drain();
                    if !exited.is_empty() {
                        return exited;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    std::thread::sleep(left);
                    return Vec::new();
                }
            }
        }
    }

    /// Reads every pending event; returns the containers whose exit file appeared.
    fn drain(&self) -> Vec<ContainerId> {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        let mut exited = Vec::new();
        let mut watched = self.lock();
        while let Ok(event) = reader.next() {
            if event.events().contains(inotify::ReadFlags::IGNORED) {
                // The directory is gone (the container forgotten): so is its watch.
                watched.remove(&event.wd());
            } else if event.file_name().is_some_and(|n| n.to_bytes() == EXIT_FILE) {
                if let Some(id) = watched.get(&event.wd()) {
                    if !exited.contains(id) {
                        exited.push(id.clone());
                    }
                }
            }
        }
        exited
    }
}
