//! `berth pool`: bind groups to pools, set a pool's cpu over-subscription, list the pools.

use std::process::ExitCode;

use berth_api::{PoolSettingsRequest, PoolView};

use super::Ctx;
use crate::output::{self, Format, table};

#[derive(Debug, clap::Subcommand)]
pub enum PoolAction {
    /// Every pool: nodes, bound groups, cpu and memory allocated/used/capacity, borrowed instances.
    Ls,
    /// Bind GROUP to POOLs: its apps place there first, and borrow from the shared pool
    /// (`default`) only when those are full. Running instances stay where they are.
    Set {
        group: String,
        #[arg(required = true)]
        pools: Vec<String>,
    },
    /// Unbind GROUP: its apps place in the shared pool only, as every unbound group's do.
    Unset { group: String },
    /// Let POOL's nodes take instances asking FACTOR times the cores they have (1: none).
    Oversubscribe { pool: String, factor: f64 },
}

pub async fn run(action: PoolAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let changed = match action {
        PoolAction::Ls => None,
        PoolAction::Set { group, pools } => Some(client.set_group_pools(&group, pools).await?),
        PoolAction::Unset { group } => Some(client.set_group_pools(&group, Vec::new()).await?),
        PoolAction::Oversubscribe { pool, factor } => {
            Some(client.set_pool(&pool, &PoolSettingsRequest { cpu_oversubscription: factor }).await?)
        }
    };
    let pools = client.pools().await?;
    match ctx.format {
        // A change answers with the settings it left; `ls` with the pools.
        Format::Json => match changed {
            Some(settings) => println!("{}", output::json(&settings)?),
            None => println!("{}", output::json(&pools)?),
        },
        Format::Table => println!("{}", pools_table(&pools)),
    }
    Ok(ExitCode::SUCCESS)
}

fn pools_table(pools: &[PoolView]) -> String {
    let rows = pools
        .iter()
        .map(|p| {
            let factor =
                if p.cpu_oversubscription == 1.0 { String::new() } else { format!(" (x{})", p.cpu_oversubscription) };
            vec![
                p.name.clone(),
                format!("{}/{}", p.ready, p.nodes),
                if p.groups.is_empty() { "-".into() } else { p.groups.join(",") },
                format!("{:.2}/{:.2}/{:.2}{factor}", p.cpu.allocated, p.cpu.used, p.cpu.placeable),
                format!("{:.0}/{:.0}/{:.0} MiB", p.memory.allocated, p.memory.used, p.memory.capacity),
                p.borrowed.to_string(),
            ]
        })
        .collect();
    table(&["POOL", "READY/NODES", "GROUPS", "CPU ALLOC/USED/CAP", "MEMORY ALLOC/USED/CAP", "BORROWED"], rows)
}
