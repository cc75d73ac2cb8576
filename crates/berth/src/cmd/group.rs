//! `berth group`: each group's quota and what it allows, beside what its apps reserve.

use std::process::ExitCode;

use berth_api::{GroupRequest, GroupView};
use berth_core::groups::Allow;

use super::Ctx;
use crate::output::{self, Format, table};

#[derive(Debug, clap::Subcommand)]
pub enum GroupAction {
    /// Every group: quota beside usage, and what it allows.
    Ls,
    /// Make a group with a quota (admins).
    Create(GroupArgs),
    /// Change what is given of a group's quota or allowances, making it if need be (admins).
    Set(GroupArgs),
}

#[derive(Debug, clap::Args)]
pub struct GroupArgs {
    name: String,
    /// Cores its apps may reserve at once (instances times each one's cpu).
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory its apps may reserve at once: 512MiB, 16GiB.
    #[arg(long, value_parser = parse_mib)]
    memory: Option<u64>,
    /// Instances it may run at once, deployments' extra ones included.
    #[arg(long)]
    instances: Option<u32>,
    /// What its apps may ask beyond the usual: privileged, host-network (comma-separated; an
    /// empty value allows neither).
    #[arg(long, value_delimiter = ',', value_parser = parse_allow, num_args = 0..)]
    allow: Option<Vec<Allow>>,
}

fn parse_mib(text: &str) -> Result<u64, String> {
    let bytes = super::platform::parse_size(text)?;
    if bytes < 1 << 20 {
        return Err(format!("`{text}` is less than 1MiB"));
    }
    Ok(bytes >> 20)
}

fn parse_allow(text: &str) -> Result<Allow, String> {
    match text {
        "privileged" => Ok(Allow::Privileged),
        "host-network" => Ok(Allow::HostNetwork),
        other => Err(format!("`{other}`: expected privileged or host-network")),
    }
}

pub async fn run(action: GroupAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let changed = match action {
        GroupAction::Ls => None,
        GroupAction::Create(args) => Some((args, true)),
        GroupAction::Set(args) => Some((args, false)),
    };
    if let Some((args, create)) = changed {
        let req = GroupRequest {
            name: None,
            cpu: args.cpu,
            memory: args.memory,
            instances: args.instances,
            allow: args.allow.map(|a| a.into_iter().collect()),
        };
        let view = client.set_group(&args.name, &req, create).await?;
        match ctx.format {
            Format::Json => println!("{}", output::json(&view)?),
            Format::Table => println!("{}", groups_table(&[view])),
        }
        return Ok(ExitCode::SUCCESS);
    }
    let groups = client.groups().await?;
    match ctx.format {
        Format::Json => println!("{}", output::json(&groups)?),
        Format::Table => println!("{}", groups_table(&groups)),
    }
    Ok(ExitCode::SUCCESS)
}

fn groups_table(groups: &[GroupView]) -> String {
    let of = |used: String, quota: Option<String>| format!("{used}/{}", quota.unwrap_or_else(|| "-".into()));
    let rows = groups
        .iter()
        .map(|g| {
            vec![
                g.name.clone(),
                g.apps.to_string(),
                of(format!("{:.2}", g.usage.cpu), g.quota.cpu.map(|c| format!("{c:.2}"))),
                of(format!("{}MiB", g.usage.memory), g.quota.memory.map(|m| format!("{m}MiB"))),
                of(g.usage.instances.to_string(), g.quota.instances.map(|i| i.to_string())),
                if g.allow.is_empty() {
                    "-".into()
                } else {
                    g.allow.iter().map(|a| a.as_str()).collect::<Vec<_>>().join(",")
                },
            ]
        })
        .collect();
    table(&["GROUP", "APPS", "CPU USED/QUOTA", "MEMORY USED/QUOTA", "INSTANCES USED/QUOTA", "ALLOWS"], rows)
}
