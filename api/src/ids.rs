//! Identifiers in Mesos's JSON shape: `{"value": "..."}`.

use std::fmt;

use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        pub struct $name {
            pub value: String,
        }

        impl $name {
            pub fn new(value: impl Into<String>) -> Self {
                Self { value: value.into() }
            }

            pub fn as_str(&self) -> &str {
                &self.value
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.value)
            }
        }
    };
}

id_type!(
    /// An agent's id, assigned by the master at first registration and kept across agent
    /// restarts (but not across host reboots).
    AgentId
);
id_type!(
    /// A framework's id, assigned by the master at first subscription.
    FrameworkId
);
id_type!(
    /// A task's id, chosen by its framework; unique within the framework.
    TaskId
);
id_type!(
    /// An offer's id, assigned by the master.
    OfferId
);
id_type!(
    /// A container's id, assigned by the agent.
    ContainerId
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_use_mesos_value_objects() {
        let id = TaskId::new("web-1");
        assert_eq!(serde_json::to_string(&id).unwrap(), r#"{"value":"web-1"}"#);
        let back: TaskId = serde_json::from_str(r#"{"value":"web-1"}"#).unwrap();
        assert_eq!(back, id);
        assert_eq!(id.to_string(), "web-1");
    }
}
