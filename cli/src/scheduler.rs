//! A framework's connection to the master's v1 scheduler API: the SUBSCRIBE stream read on
//! its own thread into a channel of [`Event`]s, and calls POSTed with the stream's
//! `Mesos-Stream-Id` (`docs/scheduler-http-api.md`).

use std::io::Read;
use std::sync::mpsc;
use std::thread;

use cairn_api::recordio::Decoder;
use cairn_api::v1::mesos::FrameworkInfo;
use cairn_api::v1::scheduler::{Call, CallType, Event, EventType, Subscribe};
use cairn_api::FrameworkId;
use serde_json::Value;

use crate::http::{Endpoint, HttpError};

/// The scheduler API path.
pub const PATH: &str = "/api/v1/scheduler";

/// What the stream reader thread sends: events, then how the stream ended.
#[derive(Debug)]
pub enum StreamItem {
    Event(Box<Event>),
    Closed(String),
}

/// A subscribed framework.
#[derive(Debug)]
pub struct Scheduler {
    master: Endpoint,
    stream_id: String,
    pub framework_id: FrameworkId,
    pub events: mpsc::Receiver<StreamItem>,
}

/// Why subscribing failed.
#[derive(Debug, thiserror::Error)]
pub enum SubscribeError {
    #[error(transparent)]
    Http(#[from] HttpError),
    #[error("the master refused the subscription ({status}): {body}")]
    Refused { status: u16, body: String },
    #[error("the master's stream ended before SUBSCRIBED: {0}")]
    NoSubscribed(String),
}

impl Scheduler {
    /// Subscribes `info` and waits for SUBSCRIBED.
    pub fn subscribe(master: &Endpoint, info: FrameworkInfo) -> Result<Self, SubscribeError> {
        let mut stream_master = master.streaming();
        let mut call = Call::new(CallType::Subscribe, info.id.clone());
        call.subscribe = Some(Subscribe {
            framework_info: info,
            force: None,
            suppressed_roles: vec![],
        });
        let body = serde_json::to_value(&call).expect("a Call always serializes");
        let mut answer = stream_master.send("POST", PATH, &[], Some(&body))?;
        if answer.status != 200 {
            let mut text = String::new();
            let _ = (&mut answer.body).take(64 << 10).read_to_string(&mut text);
            return Err(SubscribeError::Refused {
                status: answer.status,
                body: text.trim().to_string(),
            });
        }
        let stream_id = answer.header("Mesos-Stream-Id").unwrap_or("").to_string();
        let (tx, events) = mpsc::channel();
        let mut body = answer.body;
        thread::spawn(move || {
            let mut decoder = Decoder::new(64 << 20);
            let mut buf = vec![0u8; 64 << 10];
            let end = loop {
                let n = match body.read(&mut buf) {
                    Ok(0) => break "the master closed the stream".to_string(),
                    Ok(n) => n,
                    Err(e) => break format!("reading the master's stream: {e}"),
                };
                let records = match decoder.feed(&buf[..n]) {
                    Ok(r) => r,
                    Err(e) => break e.to_string(),
                };
                for rec in records {
                    let item = match serde_json::from_slice::<Event>(&rec) {
                        Ok(e) => StreamItem::Event(Box::new(e)),
                        // An event kind this CLI does not know: skip it.
                        Err(_) => continue,
                    };
                    if tx.send(item).is_err() {
                        return;
                    }
                }
            };
            let _ = tx.send(StreamItem::Closed(end));
        });
        // The first event is SUBSCRIBED (or ERROR).
        let framework_id = loop {
            match events.recv() {
                Ok(StreamItem::Event(e)) if e.kind == EventType::Subscribed => {
                    break e.subscribed.map(|s| s.framework_id).ok_or_else(|| {
                        SubscribeError::NoSubscribed("SUBSCRIBED without a body".into())
                    })?;
                }
                Ok(StreamItem::Event(e)) if e.kind == EventType::Error => {
                    return Err(SubscribeError::NoSubscribed(
                        e.error.map(|e| e.message).unwrap_or_default(),
                    ));
                }
                Ok(StreamItem::Event(_)) => {}
                Ok(StreamItem::Closed(why)) => return Err(SubscribeError::NoSubscribed(why)),
                Err(_) => return Err(SubscribeError::NoSubscribed("reader gone".into())),
            }
        };
        // Calls go to whichever master answered the subscription.
        let mut master = master.clone();
        master.base = stream_master.base;
        Ok(Self {
            master,
            stream_id,
            framework_id,
            events,
        })
    }

    /// A call of `kind` for this framework, to fill in and [`send`](Self::send).
    pub fn call(&self, kind: CallType) -> Call {
        Call::new(kind, Some(self.framework_id.clone()))
    }

    /// POSTs `call`; the master answers `202 Accepted`.
    pub fn send(&mut self, call: &Call) -> Result<(), HttpError> {
        let body: Value = serde_json::to_value(call).expect("a Call always serializes");
        let id = self.stream_id.clone();
        self.master
            .text("POST", PATH, Some(&body), &[("Mesos-Stream-Id", &id)])
            .map(drop)
    }
}
