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
                                ports(&n.node),
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
                                "PORTS",
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

/// The node's host-port range, and those of it another process holds.
fn ports(node: &berth_core::Node) -> String {
    let (low, high) = node.resources.ports;
    match node.taken_ports.len() {
        0 => format!("{low}-{high}"),
        _ => {
            let held: Vec<String> = node.taken_ports.iter().map(u16::to_string).collect();
            format!("{low}-{high} (held: {})", held.join(","))
        }
    }
}
