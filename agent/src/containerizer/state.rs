//! The container state machine, after Mesos's `MesosContainerizer` (`provisioning ->
//! preparing -> isolating -> fetching -> running -> destroying`, without fetching). Every
//! allowed transition is in [`ContainerState::can_become`] and nowhere else.

use serde::{Deserialize, Serialize};

/// Where a container is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ContainerState {
    /// Pulling or importing the image, extracting layers, assembling the root filesystem.
    Provisioning,
    /// Isolators set up cgroups and quotas; the bundle is written.
    Preparing,
    /// The supervisor created the container's init; isolators place it; it has not run yet.
    Isolating,
    /// The task's command runs.
    Running,
    /// Killing, reaping and cleaning up. Terminal: the container is gone afterwards.
    Destroying,
}

impl ContainerState {
    /// Whether `self -> next` is allowed. Any state may go to `Destroying` (a failed launch,
    /// a kill, an exit); otherwise the order is fixed.
    pub fn can_become(self, next: ContainerState) -> bool {
        use ContainerState::{Destroying, Isolating, Preparing, Provisioning, Running};
        matches!(
            (self, next),
            (Provisioning, Preparing)
                | (Preparing, Isolating)
                | (Isolating, Running)
                | (Provisioning | Preparing | Isolating | Running, Destroying)
        )
    }

    /// Mesos's name, e.g. `PROVISIONING`.
    pub fn as_str(self) -> &'static str {
        match self {
            ContainerState::Provisioning => "PROVISIONING",
            ContainerState::Preparing => "PREPARING",
            ContainerState::Isolating => "ISOLATING",
            ContainerState::Running => "RUNNING",
            ContainerState::Destroying => "DESTROYING",
        }
    }
}

impl std::fmt::Display for ContainerState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::ContainerState::*;

    #[test]
    fn transitions_follow_the_lifecycle() {
        assert!(Provisioning.can_become(Preparing));
        assert!(Preparing.can_become(Isolating));
        assert!(Isolating.can_become(Running));
        for s in [Provisioning, Preparing, Isolating, Running] {
            assert!(s.can_become(Destroying), "{s}");
        }
        assert!(!Running.can_become(Provisioning));
        assert!(!Provisioning.can_become(Running));
        assert!(!Destroying.can_become(Running));
        assert!(!Destroying.can_become(Destroying));
    }
}
