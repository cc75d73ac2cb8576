//! Pure planning: from a snapshot of desired and actual state and `now`, the actions that move
//! actual toward desired, each with its reason. No I/O, no clock.

pub mod constraints;
pub mod deploy;
pub mod heartbeat;
pub mod jobs;
pub mod place;
pub mod preview;
pub mod quarantine;
pub mod quota;
pub mod reconcile;
pub mod rolling;

pub use place::{Placement, place};
pub use reconcile::{Action, Pending, Plan, Settings, Snapshot, reconcile};
