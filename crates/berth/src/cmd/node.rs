//! `berth node`: list nodes, show one, drain it, make it (in)eligible, remove it.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_api::{Client, DrainRequest, NodeDetail, NodeView};
use berth_core::{DrainState, Dur};

use super::Ctx;
use super::deploy::{progress_bar, say};
use crate::output::{self, Format, ago, table};

#[derive(Debug, clap::Subcommand)]
pub enum NodeAction {
    /// Every node: its state, and what is allocated on it beside what is used.
    Ls,
    /// One node (by id or hostname): its state, drain and live instances.
    Status { node: String },
    /// Move every instance off a node through the deployment gates (each replacement is in
    /// service before the instance it replaces stops) and take no new ones; follows the drain.
    Drain {
        node: String,
        /// Stop what is still on the node this long after the drain began (`90s`, `10m`).
        #[arg(long, value_parser = Dur::parse)]
        deadline: Option<Dur>,
        /// Return once the drain has begun.
        #[arg(long)]
        no_wait: bool,
    },
    /// Make a node placeable again, cancelling a drain in progress (same as `eligible`).
    Undrain { node: String },
    /// Make a node placeable again, cancelling a drain in progress.
    Eligible { node: String },
    /// Place no new instance on a node; what runs there stays.
    Ineligible { node: String },
    /// Remove a node and revoke its credential: its agent is refused from then on and exits.
    /// A node still connected with live instances is refused (drain it first) unless --force.
    Rm {
        node: String,
        /// Remove it even with live instances: they are replaced elsewhere, and what its agent
        /// leaves running there is out of Berth's sight.
        #[arg(long)]
        force: bool,
    },
}

pub async fn run(action: NodeAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match action {
        NodeAction::Ls => {
            let nodes = client.nodes().await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&nodes)?),
                Format::Table => println!("{}", nodes_table(&nodes)),
            }
            Ok(ExitCode::SUCCESS)
        }
        NodeAction::Status { node } => {
            show(&client.node(&node).await?, ctx)?;
            Ok(ExitCode::SUCCESS)
        }
        NodeAction::Drain { node, deadline, no_wait } => {
            let started = client.drain_node(&node, &DrainRequest { deadline }).await?;
            if no_wait {
                show(&started, ctx)?;
                return Ok(ExitCode::SUCCESS);
            }
            let done = follow_drain(&client, &started, ctx).await?;
            show(&done, ctx)?;
            let ok = done.view.node.drain.as_ref().is_some_and(|d| d.state == DrainState::Complete);
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
        NodeAction::Undrain { node } | NodeAction::Eligible { node } => {
            show(&client.set_eligibility(&node, true).await?, ctx)?;
            Ok(ExitCode::SUCCESS)
        }
        NodeAction::Ineligible { node } => {
            show(&client.set_eligibility(&node, false).await?, ctx)?;
            Ok(ExitCode::SUCCESS)
        }
        NodeAction::Rm { node, force } => {
            let removed = client.remove_node(&node, force).await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&removed)?),
                Format::Table => {
                    println!("removed node {} ({}); its credential is revoked", removed.hostname, removed.id);
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Follows a drain to its end, saying how many instances are left as that changes.
async fn follow_drain(client: &Client, started: &NodeDetail, ctx: &Ctx) -> anyhow::Result<NodeDetail> {
    let pb = progress_bar();
    let id = started.view.node.id.clone();
    let began = Instant::now();
    let mut index = 0;
    let mut detail = started.clone();
    let mut said = None;
    loop {
        let Some(drain) = detail.view.node.drain.clone() else { anyhow::bail!("node {id} has no drain") };
        let left = detail.live.len();
        let line = format!(
            "draining {}: {} of {} moved, {left} left",
            detail.view.node.hostname,
            drain.instances.saturating_sub(left),
            drain.instances
        );
        if said.as_ref() != Some(&line) {
            if ctx.format == Format::Table {
                say(&pb, format!("{:>5.1}s {line}", began.elapsed().as_secs_f64()));
            }
            pb.set_message(line.clone());
            said = Some(line);
        }
        if !drain.is_running() {
            pb.finish_and_clear();
            return Ok(detail);
        }
        let answer = client.node_after(&id, index, Duration::from_secs(5)).await?;
        index = answer.index;
        detail = answer.value;
    }
}

fn show(detail: &NodeDetail, ctx: &Ctx) -> anyhow::Result<()> {
    match ctx.format {
        Format::Json => println!("{}", output::json(detail)?),
        Format::Table => {
            let n = &detail.view.node;
            let mut out = nodes_table(std::slice::from_ref(&detail.view));
            out.push('\n');
            if let Some(d) = &n.drain {
                let deadline =
                    d.deadline_at.map(|at| format!(", deadline {}", output::clock_ms(at))).unwrap_or_default();
                let left = detail.live.len();
                let line = match d.state {
                    DrainState::Running => format!(
                        "drain: running since {}{deadline}: {} of {} moved, {left} left",
                        ago(d.started_at),
                        d.instances.saturating_sub(left),
                        d.instances
                    ),
                    DrainState::Complete => {
                        format!("drain: complete, {} instance(s) moved off, {}", d.instances, ended(d))
                    }
                    DrainState::DeadlineReached => {
                        format!("drain: deadline reached; what was left was stopped, {}", ended(d))
                    }
                    DrainState::Cancelled => format!("drain: cancelled, {}", ended(d)),
                };
                out.push_str(&format!("\n{line}\n"));
            }
            let rows: Vec<Vec<String>> = detail
                .live
                .iter()
                .map(|v| {
                    let i = &v.instance;
                    let mut state = i.state.to_string();
                    if v.unreachable {
                        state = format!("unknown (last {})", i.state);
                    }
                    if i.desired == berth_core::Desired::Stop {
                        state.push_str(" (stopping)");
                    }
                    vec![
                        i.id.clone(),
                        i.app.clone(),
                        format!("v{}", i.version),
                        state,
                        v.address.clone().unwrap_or_else(|| "-".into()),
                    ]
                })
                .collect();
            if !rows.is_empty() {
                out.push_str(&format!("\n{}\n", table(&["INSTANCE", "APP", "VERSION", "STATE", "ADDRESS"], rows)));
            }
            print!("{out}");
        }
    }
    Ok(())
}

fn ended(d: &berth_core::Drain) -> String {
    d.ended_at.map(ago).unwrap_or_default()
}

fn nodes_table(nodes: &[NodeView]) -> String {
    let rows = nodes
        .iter()
        .map(|n| {
            let drivers: Vec<String> = n.node.drivers.iter().map(|d| d.to_string()).collect();
            vec![
                n.node.id.clone(),
                n.node.hostname.clone(),
                n.node.address.clone(),
                // An engine that stopped answering says so beside the state.
                match n.node.drivers_down.iter().map(ToString::to_string).collect::<Vec<_>>() {
                    down if down.is_empty() => n.state.to_string(),
                    down => format!("{} ({} down)", n.state, down.join(", ")),
                },
                drivers.join(","),
                format!("{:.2}/{:.2}/{}", n.allocated.cpu, n.used.cpu, n.node.resources.cpu),
                format!("{}/{}/{} MiB", n.allocated.memory, n.used.memory, n.node.resources.memory),
                n.instances.to_string(),
                ports(&n.node),
                ago(n.node.last_heartbeat),
            ]
        })
        .collect();
    table(
        &[
            "NODE",
            "HOSTNAME",
            "ADDRESS",
            "STATE",
            "DRIVERS",
            "CPU ALLOC/USED/CAP",
            "MEMORY ALLOC/USED/CAP",
            "INSTANCES",
            "PORTS",
            "HEARTBEAT",
        ],
        rows,
    )
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
