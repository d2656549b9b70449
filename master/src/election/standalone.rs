//! Standalone election: one master, leading at once (Mesos's `StandaloneMasterContender`;
//! the detector, [`cairn_zk::StandaloneDetector`], is told the master itself). The default
//! without `--zk`.

use tokio::sync::watch;

use super::{Contender, Leadership};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leads_at_once() {
        let contender = StandaloneContender::new();
        assert!(contender.leadership().borrow().is_leading());
    }
}
