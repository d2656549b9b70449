//! Wakes the monitor as soon as a supervisor records an exit, instead of at its next poll:
//! one inotify descriptor watches each container's checkpoint directory, where the supervisor
//! renames `exit.json` into place. A short task otherwise waited half the poll interval (25 ms
//! on average) before its end was noticed, which was a third of its life in the launch
//! benchmark. The poll stays as the fallback (and still finds vanished supervisors), so an
//! inotify failure costs only that latency.

use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use rustix::fs::inotify;

/// The exit file's name, as [`crate::checkpoint::Layout::exit_file`] places it.
const EXIT_FILE: &[u8] = b"exit.json";

#[derive(Debug)]
pub(super) struct ExitWatch {
    fd: OwnedFd,
}

impl ExitWatch {
    /// `None` when inotify is unavailable (the monitor then only polls).
    pub(super) fn new() -> Option<Self> {
        match inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK) {
            Ok(fd) => Some(Self { fd }),
            Err(e) => {
                tracing::warn!("inotify unavailable, exits are noticed by polling only: {e}");
                None
            }
        }
    }

    /// Watches a container's checkpoint directory. The watch goes away with the directory.
    pub(super) fn watch(&self, dir: &Path) {
        let flags = inotify::WatchFlags::MOVED_TO | inotify::WatchFlags::CLOSE_WRITE;
        if let Err(e) = inotify::add_watch(&self.fd, dir, flags) {
            tracing::debug!(dir = %dir.display(), "cannot watch for the exit file: {e}");
        }
    }

    /// Waits until an exit file appears or `timeout` passes.
    pub(super) fn wait(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
            let mut fds = [PollFd::new(self.fd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) => return,
                Ok(_) => {
                    if self.drain() {
                        return;
                    }
                }
                Err(nix::errno::Errno::EINTR) => {}
                Err(_) => {
                    std::thread::sleep(left);
                    return;
                }
            }
        }
    }

    /// Reads every pending event; true when one was an exit file.
    fn drain(&self) -> bool {
        let mut buf = [MaybeUninit::<u8>::uninit(); 4096];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        let mut exited = false;
        while let Ok(event) = reader.next() {
            if event.file_name().is_some_and(|n| n.to_bytes() == EXIT_FILE) {
                exited = true;
            }
        }
        exited
    }
}
