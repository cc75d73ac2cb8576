//! The data plane: one front door routing by Host across live instances, fed by the control
//! plane's route watch, with health checks, Lua rules and an admin API.

pub mod rules;
