//! Standalone election: one master, leading at once (Mesos's `StandaloneMasterContender`
//! and `StandaloneMasterDetector`). The default without `--zk`.

use tokio::sync::watch;

use super::{Contender, Detector, Leadership, MasterInfo};

/// A contender that leads from the start and never loses leadership.
#[derive(Debug)]
pub struct StandaloneContender {
    leadership: watch::Sender<Leadership>,
}

impl StandaloneContender {
    /// Leads at once, in term 1.
    pub fn new() -> Self {
        Self {
            leadership: watch::Sender::new(Leadership::Leading { term: 1 }),
        }
    }
}

impl Default for StandaloneContender {
    fn default() -> Self {
        Self::new()
    }
}

impl Contender for StandaloneContender {
    fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }
}

/// A detector told who leads: this master itself, or one appointed by configuration (an
/// agent pointed at a fixed master).
#[derive(Debug)]
pub struct StandaloneDetector {
    leader: watch::Sender<Option<MasterInfo>>,
}

impl StandaloneDetector {
    /// Detects `leader` at once.
    pub fn new(leader: Option<MasterInfo>) -> Self {
        Self {
            leader: watch::Sender::new(leader),
        }
    }

    /// Appoints a new leader (or none), as Mesos's `StandaloneMasterDetector::appoint`.
    pub fn appoint(&self, leader: Option<MasterInfo>) {
        self.leader.send_replace(leader);
    }
}

impl Detector for StandaloneDetector {
    fn leader(&self) -> watch::Receiver<Option<MasterInfo>> {
        self.leader.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leads_at_once_and_detects_the_appointed_leader() {
        let contender = StandaloneContender::new();
        assert!(contender.leadership().borrow().is_leading());
        let info = MasterInfo::new("m", "127.0.0.1:5050".parse().unwrap(), "");
        let detector = StandaloneDetector::new(Some(info.clone()));
        let mut rx = detector.leader();
        assert_eq!(rx.borrow_and_update().as_ref(), Some(&info));
        detector.appoint(None);
        assert!(rx.has_changed().unwrap());
        assert_eq!(*rx.borrow(), None);
    }
}
