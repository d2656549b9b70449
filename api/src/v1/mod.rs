//! Apache Mesos's v1 HTTP APIs as JSON, to the letter of `include/mesos/v1/*.proto` rendered
//! the way Mesos renders protobuf as JSON: field names as in the proto, enums by name, `bytes`
//! as Base64 text, ids as `{"value": ...}` objects, optional fields left out when unset.
//!
//! - [`mesos`]: the shared messages (`FrameworkInfo`, `TaskInfo`, `Offer`, `TaskStatus`,
//!   `MasterInfo`, ...).
//! - [`scheduler`]: the scheduler API's `Call` and `Event` (`/api/v1/scheduler`).
//! - [`master`]: the operator API's `Call` and `Response` (`/api/v1`).
//!
//! Unknown JSON fields are ignored on input (as Mesos's own JSON-to-protobuf conversion does
//! for fields a newer client sends); unknown enum values are refused, so a call type Cairn
//! does not know is a parse error that names the value.

pub mod master;
pub mod mesos;
pub mod scheduler;
