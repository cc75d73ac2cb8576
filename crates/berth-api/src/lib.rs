//! The `/v1` HTTP contract between server, agents and the CLI: request and response bodies by
//! resource, the error body, and a typed client. Documented in `docs/openapi.yaml`.

mod alerts;
mod apps;
mod client;
mod cluster;
mod error;
mod exec;
pub mod exec_stream;
mod groups;
mod jobs;
pub mod join;
mod logs;
mod nodes;
mod routes;
mod secrets;
mod tokens;
mod usage;

pub use alerts::*;
pub use apps::*;
pub use client::*;
pub use cluster::*;
pub use error::*;
pub use exec::*;
pub use groups::*;
pub use jobs::*;
pub use logs::*;
pub use nodes::*;
pub use routes::*;
pub use secrets::*;
pub use tokens::*;
pub use usage::*;
