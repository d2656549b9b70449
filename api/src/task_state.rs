//! Task states, status-update sources and reasons, with Mesos's names and numbers
//! (`TaskState`, `TaskStatus.Source` and `TaskStatus.Reason` in `mesos/v1/mesos.proto`).
//! The JSON form is the name (`"TASK_RUNNING"`), as in Mesos's v1 JSON API.

use serde::{Deserialize, Serialize};

macro_rules! mesos_enum {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident = $num:literal => $text:literal,)+ }) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        pub enum $name {
            $($(#[$vdoc])* #[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in declaration order.
            pub const ALL: &'static [Self] = &[$(Self::$variant,)+];

            /// The protobuf enum number Mesos uses.
            pub fn number(self) -> i32 {
                match self { $(Self::$variant => $num,)+ }
            }

            /// The value with this protobuf number, if any.
            pub fn from_number(n: i32) -> Option<Self> {
                match n { $($num => Some(Self::$variant),)+ _ => None }
            }

            /// The Mesos name, e.g. `TASK_RUNNING`.
            pub fn as_str(self) -> &'static str {
                match self { $(Self::$variant => $text,)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                Self::ALL
                    .iter()
                    .copied()
                    .find(|v| v.as_str() == s)
                    .ok_or_else(|| format!("unknown {} {s:?}", stringify!($name)))
            }
        }
    };
}

mesos_enum!(
    /// The state of a task.
    TaskState {
        Staging = 6 => "TASK_STAGING",
        Starting = 0 => "TASK_STARTING",
        Running = 1 => "TASK_RUNNING",
        Killing = 8 => "TASK_KILLING",
        Finished = 2 => "TASK_FINISHED",
        Failed = 3 => "TASK_FAILED",
        Killed = 4 => "TASK_KILLED",
        Error = 7 => "TASK_ERROR",
        Lost = 5 => "TASK_LOST",
        Dropped = 9 => "TASK_DROPPED",
        Unreachable = 10 => "TASK_UNREACHABLE",
        Gone = 11 => "TASK_GONE",
        GoneByOperator = 12 => "TASK_GONE_BY_OPERATOR",
        Unknown = 13 => "TASK_UNKNOWN",
    }
);

impl TaskState {
    /// Whether no further state can follow (Mesos's `protobuf::isTerminalState`).
    /// `TASK_UNREACHABLE` is not terminal: the task may come back.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            Self::Finished
                | Self::Failed
                | Self::Killed
                | Self::Error
                | Self::Lost
                | Self::Dropped
                | Self::Gone
                | Self::GoneByOperator
        )
    }
}

mesos_enum!(
    /// Who produced a status update.
    Source {
        Master = 0 => "SOURCE_MASTER",
        Agent = 1 => "SOURCE_AGENT",
        Executor = 2 => "SOURCE_EXECUTOR",
    }
);

mesos_enum!(
    /// Why a task reached its state (`TaskStatus.Reason`).
    Reason {
        CommandExecutorFailed = 0 => "REASON_COMMAND_EXECUTOR_FAILED",
        ContainerLaunchFailed = 21 => "REASON_CONTAINER_LAUNCH_FAILED",
        ContainerLimitation = 19 => "REASON_CONTAINER_LIMITATION",
        /// The container used more disk than its `disk` resource.
        ContainerLimitationDisk = 20 => "REASON_CONTAINER_LIMITATION_DISK",
        /// The container was OOM-killed at its `mem` limit.
        ContainerLimitationMemory = 8 => "REASON_CONTAINER_LIMITATION_MEMORY",
        ContainerPreempted = 17 => "REASON_CONTAINER_PREEMPTED",
        ContainerUpdateFailed = 22 => "REASON_CONTAINER_UPDATE_FAILED",
        ExecutorRegistrationTimeout = 23 => "REASON_EXECUTOR_REGISTRATION_TIMEOUT",
        ExecutorReregistrationTimeout = 24 => "REASON_EXECUTOR_REREGISTRATION_TIMEOUT",
        ExecutorTerminated = 1 => "REASON_EXECUTOR_TERMINATED",
        ExecutorUnregistered = 2 => "REASON_EXECUTOR_UNREGISTERED",
        FrameworkRemoved = 3 => "REASON_FRAMEWORK_REMOVED",
        GcError = 4 => "REASON_GC_ERROR",
        InvalidFrameworkId = 5 => "REASON_INVALID_FRAMEWORKID",
        InvalidOffers = 6 => "REASON_INVALID_OFFERS",
        IoSwitchboardExited = 27 => "REASON_IO_SWITCHBOARD_EXITED",
        MasterDisconnected = 7 => "REASON_MASTER_DISCONNECTED",
        Reconciliation = 9 => "REASON_RECONCILIATION",
        ResourcesUnknown = 18 => "REASON_RESOURCES_UNKNOWN",
        AgentDisconnected = 10 => "REASON_AGENT_DISCONNECTED",
        AgentRemoved = 11 => "REASON_AGENT_REMOVED",
        AgentRestarted = 12 => "REASON_AGENT_RESTARTED",
        AgentUnknown = 13 => "REASON_AGENT_UNKNOWN",
        TaskCheckStatusUpdated = 28 => "REASON_TASK_CHECK_STATUS_UPDATED",
        TaskHealthCheckStatusUpdated = 29 => "REASON_TASK_HEALTH_CHECK_STATUS_UPDATED",
        TaskGroupInvalid = 25 => "REASON_TASK_GROUP_INVALID",
        TaskGroupUnauthorized = 26 => "REASON_TASK_GROUP_UNAUTHORIZED",
        TaskInvalid = 14 => "REASON_TASK_INVALID",
        TaskUnauthorized = 15 => "REASON_TASK_UNAUTHORIZED",
        TaskUnknown = 16 => "REASON_TASK_UNKNOWN",
        TaskKilledDuringLaunch = 30 => "REASON_TASK_KILLED_DURING_LAUNCH",
    }
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_keep_mesos_numbers_and_names() {
        assert_eq!(TaskState::Staging.number(), 6);
        assert_eq!(TaskState::Starting.number(), 0);
        assert_eq!(TaskState::Unreachable.number(), 10);
        assert_eq!(TaskState::from_number(7), Some(TaskState::Error));
        assert_eq!(TaskState::from_number(99), None);
        assert_eq!(
            serde_json::to_string(&TaskState::Running).unwrap(),
            r#""TASK_RUNNING""#
        );
        assert_eq!("TASK_KILLED".parse::<TaskState>(), Ok(TaskState::Killed));
        assert!("TASK_NOPE"
            .parse::<TaskState>()
            .unwrap_err()
            .contains("TASK_NOPE"));
    }

    #[test]
    fn numbers_are_unique() {
        let mut seen = std::collections::HashSet::new();
        assert!(TaskState::ALL.iter().all(|s| seen.insert(s.number())));
        let mut seen = std::collections::HashSet::new();
        assert!(Reason::ALL.iter().all(|r| seen.insert(r.number())));
    }

    #[test]
    fn terminal_states_follow_mesos() {
        assert!(TaskState::Finished.is_terminal());
        assert!(TaskState::Gone.is_terminal());
        assert!(!TaskState::Running.is_terminal());
        assert!(!TaskState::Unreachable.is_terminal());
        assert!(!TaskState::Killing.is_terminal());
    }

    #[test]
    fn limitation_reasons_keep_mesos_numbers() {
        assert_eq!(Reason::ContainerLimitationMemory.number(), 8);
        assert_eq!(Reason::ContainerLimitationDisk.number(), 20);
        assert_eq!(Reason::ContainerLaunchFailed.number(), 21);
        assert_eq!(
            serde_json::to_string(&Reason::ContainerLimitationMemory).unwrap(),
            r#""REASON_CONTAINER_LIMITATION_MEMORY""#
        );
    }
}
