//! Locks: `flock(2)` files for exclusion across processes, keyed async mutexes within one.
//!
//! flock locks belong to an open file description, so two opens in one process exclude each
//! other too; the in-process mutexes are there so that waiting tasks park on a future instead of
//! blocking runtime threads, and so that a second pull of a blob in the same process waits for
//! the first and then finds the blob stored.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};

use nix::fcntl::{Flock, FlockArg};

use super::StoreError;

/// A held `flock`; released when dropped.
#[derive(Debug)]
pub struct FileLock {
    _lock: Flock<File>,
    path: PathBuf,
}

impl FileLock {
    /// Blocks until `path` (created if missing) is locked shared or exclusive.
    pub fn acquire(path: &Path, exclusive: bool) -> Result<Self, StoreError> {
        Self::take(
            path,
            if exclusive {
                FlockArg::LockExclusive
            } else {
                FlockArg::LockShared
            },
        )
        .map(|l| l.expect("a blocking flock either locks or fails"))
    }

    /// Locks `path` exclusively if nobody holds it; `None` when someone does.
    pub fn try_exclusive(path: &Path) -> Result<Option<Self>, StoreError> {
        Self::take(path, FlockArg::LockExclusiveNonblock)
    }

    fn take(path: &Path, arg: FlockArg) -> Result<Option<Self>, StoreError> {
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(StoreError::io("open lock file", path))?;
        match Flock::lock(file, arg) {
            Ok(lock) => Ok(Some(Self {
                _lock: lock,
                path: path.to_path_buf(),
            })),
            Err((_, nix::errno::Errno::EWOULDBLOCK)) => Ok(None),
            Err((_, source)) => Err(StoreError::Lock {
                path: path.to_path_buf(),
                source,
            }),
        }
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Async mutexes by key, created on demand and dropped when nobody holds or waits for them.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    map: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Waits for the lock of `key`.
    pub async fn lock(&self, key: &str) -> tokio::sync::OwnedMutexGuard<()> {
        let mutex = {
            let mut map = self
                .map
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.retain(|_, w| w.strong_count() > 0);
            if let Some(m) = map.get(key).and_then(Weak::upgrade) {
                m
            } else {
                let m = Arc::new(tokio::sync::Mutex::new(()));
                map.insert(key.to_string(), Arc::downgrade(&m));
                m
            }
        };
        mutex.lock_owned().await
    }
}
