//! `berth router ls` and `berth router rm ID`: the routers the control plane hears from, and
//! removing one (its credential revoked, so it stops serving and exits).

use std::process::ExitCode;

use berth_api::RouterView;

use super::Ctx;
use crate::output::{self, Format, table};

#[derive(Debug, clap::Subcommand)]
pub enum RouterAction {
    /// Every router heard from: its zone, admin address, the table it serves, when last heard.
    Ls,
    /// Remove a router: its credential is revoked, and the router exits instead of serving a
    /// table it no longer follows. It may join again only with the join token.
    Rm {
        /// The router's id, as `berth router ls` shows it.
        id: String,
    },
}

pub async fn run(action: RouterAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match action {
        RouterAction::Ls => {
            let routers = client.routers().await?.value;
            match ctx.format {
                Format::Json => println!("{}", output::json(&routers)?),
                Format::Table => println!("{}", routers_table(&routers)),
            }
        }
        RouterAction::Rm { id } => {
            client.remove_router(&id).await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&serde_json::json!({"id": id, "revoked": true}))?),
                Format::Table => println!("removed router {id}; its credential is revoked and it stops serving"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn routers_table(routers: &[RouterView]) -> String {
    let rows = routers
        .iter()
        .map(|r| {
            let state = if r.live { "live" } else { "silent" };
            let heard = format!("{:.1}s ago", r.seen_ms_ago as f64 / 1000.0);
            vec![r.id.clone(), state.to_string(), r.zone.clone(), r.admin.clone(), r.index.to_string(), heard]
        })
        .collect();
    table(&["ROUTER", "STATE", "ZONE", "ADMIN", "INDEX", "HEARD"], rows)
}
