//! `berth audit`: who changed what, from where and when, refused attempts included.

use std::process::ExitCode;
use std::time::Duration;

use berth_core::Dur;
use berth_core::audit::{AuditEntry, Outcome};

use super::Ctx;
use crate::output::{self, Format, table};

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only what was done in this group.
    #[arg(long)]
    group: Option<String>,
    /// Only entries this recent: 30m, 1h, 7d (default: all that are kept).
    #[arg(long, value_parser = super::platform::parse_dur)]
    since: Option<Dur>,
    /// Keep printing new entries as they are written.
    #[arg(short = 'f', long)]
    follow: bool,
}

fn what(e: &AuditEntry) -> String {
    match (&e.outcome, &e.reason) {
        (Outcome::Done, _) => "done".into(),
        (outcome, Some(reason)) => format!("{} ({}): {reason}", outcome.as_str(), e.status),
        (outcome, None) => format!("{} ({})", outcome.as_str(), e.status),
    }
}

fn actor(e: &AuditEntry) -> String {
    match &e.actor_id {
        Some(id) => format!("{} ({id})", e.actor),
        None => e.actor.clone(),
    }
}

fn row(e: &AuditEntry) -> Vec<String> {
    let mut outcome = what(e);
    if e.suppressed > 0 {
        outcome.push_str(&format!(" [+{} refused attempts not written]", e.suppressed));
    }
    vec![
        output::clock(e.at),
        actor(e),
        e.address.clone(),
        e.action.clone(),
        e.target.clone().unwrap_or_else(|| "-".into()),
        outcome,
    ]
}

const HEADERS: [&str; 6] = ["TIME", "ACTOR", "ADDRESS", "ACTION", "TARGET", "OUTCOME"];

pub async fn run(args: AuditArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let group = args.group.as_deref();
    let since = args.since.map(|d| berth_core::now_ms() - d.as_duration().as_millis() as i64);
    let mut all: Vec<AuditEntry> = Vec::new();
    let mut after = 0;
    let mut since_once = since;
    loop {
        let page = client.audit(after, since_once.take(), group, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page);
    }
    match (ctx.format, args.follow) {
        (Format::Json, false) => println!("{}", output::json(&all)?),
        (Format::Json, true) => all.iter().try_for_each(|e| serde_json::to_string(e).map(|s| println!("{s}")))?,
        (Format::Table, false) => println!("{}", table(&HEADERS, all.iter().map(row).collect())),
        (Format::Table, true) => all.iter().for_each(|e| println!("{}", row(e).join("  "))),
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let wait = Duration::from_secs(30);
    let fetch = |after, index| client.audit_after(after, group, index, wait);
    super::follow::follow(
        after,
        fetch,
        |e: &AuditEntry| e.seq,
        |e| {
            match ctx.format {
                Format::Json => println!("{}", serde_json::to_string(e)?),
                Format::Table => println!("{}", row(e).join("  ")),
            }
            Ok(())
        },
    )
    .await
}
