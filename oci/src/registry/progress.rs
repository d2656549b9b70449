//! Progress events of a pull, for the CLI's progress bars and for tests.

use std::fmt;
use std::sync::Arc;

use crate::digest::Digest;
use crate::reference::Reference;

/// Something that happened during a pull.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProgressEvent {
    /// The manifest was resolved; these layers (digest, size) will be fetched or found.
    Resolved {
        /// The image.
        reference: Reference,
        /// Its platform manifest.
        manifest_digest: Digest,
        /// Its layers, bottom first.
        layers: Vec<(Digest, u64)>,
    },
    /// A layer was already in the store; nothing is downloaded.
    LayerCached {
        /// The layer.
        digest: Digest,
        /// Its size.
        size: u64,
    },
    /// Bytes of a layer arrived.
    LayerProgress {
        /// The layer.
        digest: Digest,
        /// Bytes so far.
        done: u64,
        /// Total bytes.
        total: u64,
    },
    /// A layer download failed transiently and is retried (resumed where possible).
    LayerRetry {
        /// The layer.
        digest: Digest,
        /// The attempt about to start (2 for the first retry).
        attempt: u32,
        /// Why.
        reason: String,
    },
    /// A layer was downloaded, verified and stored.
    LayerDone {
        /// The layer.
        digest: Digest,
        /// Its size.
        size: u64,
    },
}

/// Where progress events go: nowhere, or a callback (which may forward into a channel).
#[derive(Clone, Default)]
pub struct Progress(Option<Callback>);

type Callback = Arc<dyn Fn(&ProgressEvent) + Send + Sync>;

impl Progress {
    /// Discards events.
    pub fn none() -> Self {
        Self(None)
    }

    /// Calls `f` for each event, from the downloading tasks (keep it quick).
    pub fn new(f: impl Fn(&ProgressEvent) + Send + Sync + 'static) -> Self {
        Self(Some(Arc::new(f)))
    }

    /// Sends events into an unbounded channel.
    pub fn channel() -> (Self, tokio::sync::mpsc::UnboundedReceiver<ProgressEvent>) {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        (Self::new(move |e| drop(tx.send(e.clone()))), rx)
    }

    pub(crate) fn emit(&self, event: ProgressEvent) {
        if let Some(f) = &self.0 {
            f(&event);
        }
    }
}

impl fmt::Debug for Progress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(if self.0.is_some() {
            "Progress(callback)"
        } else {
            "Progress(none)"
        })
    }
}
