//! Pulls in progress, for `GET /pulls` and `cairn run`'s progress display.
//!
//! One table per process: an agent process runs one containerizer, and a pull is of an image,
//! not of a container (two launches of the same missing image wait on one store lock and show
//! as one pull).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use cairn_oci::registry::{Progress, ProgressEvent};
use serde::Serialize;

/// A pull as `/pulls` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PullStatus {
    /// The image reference being pulled.
    pub reference: String,
    /// Layers in the image; 0 until the manifest is resolved.
    pub layers: usize,
    /// Layers stored (downloaded and verified, or found in the store).
    pub layers_done: usize,
    /// Bytes of all layers.
    pub bytes_total: u64,
    /// Bytes stored or downloaded so far.
    pub bytes_done: u64,
    /// Unix seconds when the pull started.
    pub started: u64,
}

#[derive(Debug, Default)]
struct Entry {
    status: PullStatus,
    /// Bytes downloaded so far per layer still in flight.
    in_flight: BTreeMap<String, u64>,
    /// Pulls of this reference in progress (the same image launched twice at once).
    users: usize,
}

static PULLS: Mutex<BTreeMap<String, Entry>> = Mutex::new(BTreeMap::new());

fn table() -> MutexGuard<'static, BTreeMap<String, Entry>> {
    // A panic while holding the lock leaves figures at worst stale: keep serving them.
    PULLS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The pulls in progress now, by reference.
pub fn in_progress() -> Vec<PullStatus> {
    table()
        .values()
        .map(|e| {
            let mut s = e.status.clone();
            s.bytes_done += e.in_flight.values().sum::<u64>();
            s
        })
        .collect()
}

/// Registers a pull of `reference` until the returned guard drops; the [`Progress`] feeds it.
pub fn track(reference: &str) -> (Progress, PullGuard) {
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    table()
        .entry(reference.to_string())
        .or_insert_with(|| Entry {
            status: PullStatus {
                reference: reference.to_string(),
                started,
                ..PullStatus::default()
            },
            ..Entry::default()
        })
        .users += 1;
    let key: Arc<str> = reference.into();
    let progress_key = Arc::clone(&key);
    let progress = Progress::new(move |event| record(&progress_key, event));
    (progress, PullGuard(key))
}

fn record(reference: &str, event: &ProgressEvent) {
    let mut table = table();
    let Some(entry) = table.get_mut(reference) else {
        return;
    };
    match event {
        ProgressEvent::Resolved { layers, .. } => {
            entry.status.layers = layers.len();
            entry.status.bytes_total = layers.iter().map(|(_, size)| size).sum();
        }
        ProgressEvent::LayerProgress { digest, done, .. } => {
            entry.in_flight.insert(digest.to_string(), *done);
        }
        ProgressEvent::LayerCached { digest, size } | ProgressEvent::LayerDone { digest, size } => {
            entry.in_flight.remove(&digest.to_string());
            entry.status.layers_done += 1;
            entry.status.bytes_done += size;
        }
        ProgressEvent::LayerRetry { .. } => {}
    }
}

/// Removes its pull from [`in_progress`] when the last user of it is done.
#[derive(Debug)]
pub struct PullGuard(Arc<str>);

impl Drop for PullGuard {
    fn drop(&mut self) {
        let mut table = table();
        if let Some(entry) = table.get_mut(&*self.0) {
            entry.users -= 1;
            if entry.users == 0 {
                table.remove(&*self.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_oci::digest::Digest;
    use cairn_oci::reference::Reference;

    fn digest(n: u8) -> Digest {
        Digest::of(&[n])
    }

    #[test]
    fn a_pull_counts_layers_and_bytes_and_is_gone_when_done() {
        let reference = "registry.test/progress:1";
        // `record` is what the Progress callback runs for each event.
        let (_progress, guard) = track(reference);
        let (_second, second_guard) = track(reference);
        let layers = vec![(digest(1), 100), (digest(2), 50)];
        record(
            reference,
            &ProgressEvent::Resolved {
                reference: Reference::parse(reference).unwrap(),
                manifest_digest: digest(9),
                layers,
            },
        );
        record(
            reference,
            &ProgressEvent::LayerCached {
                digest: digest(2),
                size: 50,
            },
        );
        record(
            reference,
            &ProgressEvent::LayerProgress {
                digest: digest(1),
                done: 30,
                total: 100,
            },
        );
        let now = in_progress();
        let s = now.iter().find(|s| s.reference == reference).unwrap();
        assert_eq!(
            (s.layers, s.layers_done, s.bytes_done, s.bytes_total),
            (2, 1, 80, 150)
        );
        record(
            reference,
            &ProgressEvent::LayerDone {
                digest: digest(1),
                size: 100,
            },
        );
        let s = in_progress()
            .into_iter()
            .find(|s| s.reference == reference)
            .unwrap();
        assert_eq!((s.layers_done, s.bytes_done), (2, 150));
        drop(guard);
        assert!(in_progress().iter().any(|s| s.reference == reference));
        drop(second_guard);
        assert!(!in_progress().iter().any(|s| s.reference == reference));
    }
}
