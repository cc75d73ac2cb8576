//! `berth events [-f]`.

use std::process::ExitCode;
use std::time::Duration;

use berth_core::Event;

use super::{Ctx, resolve};
use crate::output::{self, Format, table};

#[derive(Debug, clap::Args)]
pub struct EventsArgs {
    /// Keep printing new events as they happen.
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only this app's events (NAME or GROUP/NAME).
    #[arg(long)]
    app: Option<String>,
    /// How many recent events to show first.
    #[arg(short = 'n', long, default_value_t = 50)]
    tail: usize,
}

/// The most specific thing an event is about.
fn subject(e: &Event) -> String {
    e.instance.clone().or_else(|| e.app.clone()).or_else(|| e.node.clone()).unwrap_or_default()
}

fn level(e: &Event) -> String {
    format!("{:?}", e.level).to_lowercase()
}

fn line(e: &Event) -> String {
    let subject = subject(e);
    format!("{}  {:<5} {:<18} {:<28} {}", output::clock(e.time), level(e), e.kind, subject, e.message)
}

pub async fn run(args: EventsArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    let app = match &args.app {
        Some(name) => Some(resolve(&client, name).await?),
        None => None,
    };
    let keep = |e: &Event| app.as_ref().is_none_or(|a| e.app.as_deref() == Some(a.as_str()));
    let mut all: Vec<Event> = Vec::new();
    let mut after = 0;
    loop {
        let page = client.events(after, 10_000).await?;
        let Some(last) = page.last() else { break };
        after = last.seq;
        all.extend(page.into_iter().filter(|e| keep(e)));
    }
    let recent: Vec<&Event> = all.iter().skip(all.len().saturating_sub(args.tail)).collect();
    match (ctx.format, args.follow) {
        (Format::Json, false) => println!("{}", output::json(&recent)?),
        (Format::Json, true) => recent.iter().try_for_each(|e| serde_json::to_string(e).map(|s| println!("{s}")))?,
        (Format::Table, false) => {
            let rows = recent
                .iter()
                .map(|e| vec![output::clock(e.time), level(e), e.kind.clone(), subject(e), e.message.clone()])
                .collect();
            println!("{}", table(&["TIME", "LEVEL", "KIND", "SUBJECT", "MESSAGE"], rows));
        }
        (Format::Table, true) => recent.iter().for_each(|e| println!("{}", line(e))),
    }
    if !args.follow {
        return Ok(ExitCode::SUCCESS);
    }
    let wait = Duration::from_secs(30);
    let fetch = |after, index| client.events_after(after, index, wait);
    super::follow::follow(
        after,
        fetch,
        |e: &Event| e.seq,
        |e| {
            if keep(e) {
                match ctx.format {
                    Format::Json => println!("{}", serde_json::to_string(e)?),
                    Format::Table => println!("{}", line(e)),
                }
            }
            Ok(())
        },
    )
    .await
}
