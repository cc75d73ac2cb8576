//! `berth node ls`.

use std::process::ExitCode;

use super::Ctx;
use crate::output::{self, Format, ago, table};

#[derive(Debug, clap::Subcommand)]
pub enum NodeAction {
    /// Every node, with what is allocated on it.
    Ls,
}

pub async fn run(action: NodeAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match action {
        NodeAction::Ls => {
            let nodes = ctx.client()?.nodes().await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&nodes)?),
                Format::Table => {
                    let rows = nodes
                        .iter()
                        .map(|n| {
                            let drivers: Vec<String> = n.node.drivers.iter().map(|d| d.to_string()).collect();
                            vec![
                                n.node.id.clone(),
                                n.node.hostname.clone(),
                                n.node.address.clone(),
                                format!("{:?}", n.node.status).to_lowercase(),
                                drivers.join(","),
                                format!("{:.2}/{}", n.allocated.cpu, n.node.resources.cpu),
                                format!("{}/{} MiB", n.allocated.memory, n.node.resources.memory),
                                n.instances.to_string(),
                                ago(n.node.last_heartbeat),
                            ]
                        })
                        .collect();
                    println!(
                        "{}",
                        table(
                            &[
                                "NODE",
                                "HOSTNAME",
                                "ADDRESS",
                                "STATUS",
                                "DRIVERS",
                                "CPU",
                                "MEMORY",
                                "INSTANCES",
                                "HEARTBEAT"
                            ],
                            rows
                        )
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
