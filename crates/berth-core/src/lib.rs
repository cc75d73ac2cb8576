//! Berth's vocabulary: the app spec and the records the platform keeps. Pure types, no I/O.

pub mod access;
pub mod audit;
pub mod duration;
pub mod groups;
pub mod hosts;
pub mod job;
pub mod model;
pub mod output;
mod process;
pub mod reason;
pub mod retry;
pub mod schedule;
pub mod spec;

pub use duration::{Dur, ago};
pub use job::{Job, JobSpec, Run, RunOf, RunState, SpecDoc};
pub use model::*;
pub use output::{Carries, Output};
pub use process::{lock, now_ms};
pub use reason::{Exit, Reason};
pub use spec::{AlertMetric, AlertRule, AppSpec, SpecError, SpecErrors, Strategy};
