//! Event streams as HTTP bodies: a subscriber's bounded queue of typed events becomes a
//! chunked body of RecordIO-framed JSON, ending when the client goes away or the core drops
//! the queue.

use axum::body::{Body, Bytes};
use cairn_api::recordio;
use serde::Serialize;
use tokio::sync::mpsc;

/// Runs `on_close` when the response body (the event stream) is dropped: the client went
/// away, or the core closed the queue.
struct CloseGuard<F: FnMut()>(F);

impl<F: FnMut()> Drop for CloseGuard<F> {
    fn drop(&mut self) {
        (self.0)();
    }
}

/// A chunked body of RecordIO-framed JSON events from `rx`.
pub(super) fn event_stream<E: Serialize + Send + 'static>(
    mut rx: crate::core::Inbox<E>,
    on_close: impl FnMut() + Send + 'static,
) -> Body {
    let guard = CloseGuard(on_close);
    let stream = async_stream(move |tx| async move {
        let _guard = guard;
        loop {
            // Waiting only on `rx` would notice a client that went away at the next event,
            // which can be a whole heartbeat interval later; `tx.closed()` fires as soon as
            // hyper drops the body on the connection's EOF.
            let event = tokio::select! {
                event = rx.recv() => event,
                () = tx.closed() => None,
            };
            let Some(event) = event else { break };
            // Events already queued go out in the same chunk: one write and one wakeup of
            // the connection for a burst (thousands of UPDATEs a second), not one each.
            let mut frame = Vec::new();
            append_record(&mut frame, &event);
            while frame.len() < MAX_FRAME {
                let Some(event) = rx.try_recv() else { break };
                append_record(&mut frame, &event);
            }
            if frame.is_empty() {
                continue;
            }
            if tx.send(Ok(Bytes::from(frame))).await.is_err() {
                break;
            }
        }
    });
    Body::from_stream(stream)
}

/// Queued events coalesced into one chunk stop at this size (the chunk may end up one
/// event larger).
const MAX_FRAME: usize = 64 * 1024;

/// Appends `event` as one RecordIO record of JSON (an event that fails to serialize, which
/// the wire types never do, is skipped).
fn append_record(frame: &mut Vec<u8>, event: &impl Serialize) {
    if let Ok(json) = serde_json::to_vec(event) {
        frame.extend_from_slice(&recordio::encode(&json));
    }
}

/// A tiny generator: `f` feeds a channel whose receiving end is the stream.
fn async_stream<F, Fut>(f: F) -> tokio_stream_shim::ReceiverStream
where
    F: FnOnce(mpsc::Sender<Result<Bytes, std::io::Error>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    // One frame in flight: back-pressure reaches the core's bounded queue, which then
    // detects a stalled client (MESOS-7748).
    let (tx, rx) = mpsc::channel(1);
    tokio::spawn(f(tx));
    tokio_stream_shim::ReceiverStream(rx)
}

mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use axum::body::Bytes;
    use tokio::sync::mpsc;

    /// `tokio_stream::wrappers::ReceiverStream`, without the extra crate.
    #[derive(Debug)]
    pub struct ReceiverStream(pub mpsc::Receiver<Result<Bytes, std::io::Error>>);

    impl futures_core::Stream for ReceiverStream {
        type Item = Result<Bytes, std::io::Error>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.0.poll_recv(cx)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    use futures_core::Stream as _;
    use serde_json::{json, Value};

    use super::*;

    #[tokio::test]
    async fn queued_events_leave_in_one_chunk_in_order_and_the_end_is_reported() {
        let (tx, rx) = crate::core::Outbox::bounded(8);
        for n in 0..3 {
            assert!(tx.send(json!({"n": n})));
        }
        drop(tx);
        let closed = Arc::new(AtomicBool::new(false));
        let on_close = closed.clone();
        let mut data =
            event_stream(rx, move || on_close.store(true, Ordering::SeqCst)).into_data_stream();
        let mut chunks = Vec::new();
        while let Some(chunk) = std::future::poll_fn(|cx| Pin::new(&mut data).poll_next(cx)).await {
            chunks.push(chunk.unwrap());
        }
        assert_eq!(chunks.len(), 1, "{chunks:?}");
        let records = recordio::Decoder::new(1 << 20).feed(&chunks[0]).unwrap();
        let events: Vec<Value> = records
            .iter()
            .map(|r| serde_json::from_slice(r).unwrap())
            .collect();
        assert_eq!(
            events,
            vec![json!({"n": 0}), json!({"n": 1}), json!({"n": 2})]
        );
        drop(data);
        assert!(closed.load(Ordering::SeqCst));
    }
}
