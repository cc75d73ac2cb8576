//! `berth server ls`: the servers sharing the store, and which one leads.

use std::process::ExitCode;

use berth_api::ClusterView;

use super::Ctx;
use crate::output::{self, Format, ago, table};

#[derive(Debug, clap::Subcommand)]
pub enum ServerAction {
    /// Every server sharing the store: its API, whether it leads, when it was last seen.
    Ls,
}

pub async fn run(action: ServerAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match action {
        ServerAction::Ls => {
            let view = ctx.client()?.cluster().await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&view)?),
                Format::Table => println!("{}", servers_table(&view)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn servers_table(view: &ClusterView) -> String {
    let rows = view
        .servers
        .iter()
        .map(|s| {
            let mut role =
                if s.leader { format!("leader since {}", ago(view.since.unwrap_or(0))) } else { "follower".into() };
            if s.id == view.self_id {
                role.push_str(" (answered)");
            }
            vec![s.id.clone(), s.api.clone(), role, ago(s.last_seen)]
        })
        .collect();
    table(&["SERVER", "API", "ROLE", "LAST SEEN"], rows)
}
