//! `berth top` and `berth app NAME top`: resource use, live.

use std::process::ExitCode;
use std::time::Duration;

use berth_api::{CapacityUsage, Usage};

use super::Ctx;
use crate::output::{self, Format, table};

#[derive(Debug, Clone, Copy, clap::Args)]
pub struct TopArgs {
    /// Print once and exit (what `-o json` always does, and what a pipe gets unless `--watch`).
    #[arg(long, conflicts_with = "watch")]
    pub once: bool,
    /// Keep printing when the output is not a terminal: one snapshot after another, plain text.
    #[arg(long)]
    pub watch: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 2)]
    pub every: u64,
}

fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{v:.1} {}", UNITS[unit]) }
}

fn share(part: f64, whole: f64) -> String {
    if whole > 0.0 { format!("{:.0}%", part / whole * 100.0) } else { "-".into() }
}

fn capacity_rows(items: &[&CapacityUsage]) -> Vec<Vec<String>> {
    items
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                format!("{:.2} / {:.2} ({})", c.cpu_allocated, c.cpu_cores, share(c.cpu_allocated, c.cpu_cores)),
                format!("{:.2} ({})", c.cpu_used, share(c.cpu_used, c.cpu_cores)),
                format!(
                    "{} / {} ({})",
                    bytes(c.memory_allocated_bytes),
                    bytes(c.memory_bytes),
                    share(c.memory_allocated_bytes as f64, c.memory_bytes as f64)
                ),
                format!(
                    "{} ({})",
                    bytes(c.memory_used_bytes),
                    share(c.memory_used_bytes as f64, c.memory_bytes as f64)
                ),
            ]
        })
        .collect()
}

fn render(u: &Usage, app: Option<&str>) -> String {
    let mut out = String::new();
    if app.is_none() {
        let mut items: Vec<&CapacityUsage> = u.nodes.iter().collect();
        items.push(&u.cluster);
        out.push_str(&table(
            &["NODE", "CPU ALLOCATED", "CPU USED", "MEMORY ALLOCATED", "MEMORY USED"],
            capacity_rows(&items),
        ));
        out.push_str("\n\n");
    }
    let rows = u
        .apps
        .iter()
        .map(|a| {
            vec![
                a.app.clone(),
                a.instances.to_string(),
                format!("{:.1}%", a.cpu_percent),
                bytes(a.memory_bytes),
                if a.memory_limit_bytes > 0 { bytes(a.memory_limit_bytes) } else { "-".into() },
                format!("{} / {}", bytes(a.block_read_bytes), bytes(a.block_write_bytes)),
                format!("{} / {}", bytes(a.net_rx_bytes), bytes(a.net_tx_bytes)),
                a.restarts.to_string(),
            ]
        })
        .collect();
    out.push_str(&table(&["APP", "INSTANCES", "CPU", "MEMORY", "LIMIT", "DISK R/W", "NET RX/TX", "RESTARTS"], rows));
    if app.is_some() {
        let rows = u
            .instances
            .iter()
            .map(|i| {
                vec![
                    i.instance.clone(),
                    i.node.clone(),
                    format!("{:.1}%", i.cpu_percent),
                    bytes(i.memory_bytes),
                    i.memory_limit_bytes.map_or("-".into(), bytes),
                    format!("{} / {}", bytes(i.block_read_bytes), bytes(i.block_write_bytes)),
                    match (i.net_rx_bytes, i.net_tx_bytes) {
                        (Some(rx), Some(tx)) => format!("{} / {}", bytes(rx), bytes(tx)),
                        _ => "-".into(),
                    },
                ]
            })
            .collect();
        out.push_str("\n\n");
        out.push_str(&table(&["INSTANCE", "NODE", "CPU", "MEMORY", "LIMIT", "DISK R/W", "NET RX/TX"], rows));
    }
    out
}

/// Shows use: the whole cluster, or one app's instances. On a terminal it redraws until `q` or
/// Ctrl-C, like top; into a pipe or a file it prints one snapshot (`--watch`: one after another,
/// with no screen-control codes).
pub async fn run(args: TopArgs, app: Option<&str>, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let client = ctx.client()?;
    let live = ctx.format == Format::Table && !args.once && std::io::stdout().is_terminal();
    let watch = ctx.format == Format::Table && !args.once && (live || args.watch);
    // Keys arrive one by one, unechoed, while the view is live; restored however it ends.
    let keys = if live { crate::terminal::Keys::start() } else { None };
    let every = Duration::from_secs(args.every.max(1));
    loop {
        let usage = client.usage(app).await?;
        match ctx.format {
            Format::Json => {
                println!("{}", output::json(&usage)?);
                return Ok(ExitCode::SUCCESS);
            }
            Format::Table if !watch => {
                println!("{}", render(&usage, app));
                return Ok(ExitCode::SUCCESS);
            }
            // Clear the screen and draw again, like top.
            Format::Table if live => {
                println!("\x1b[2J\x1b[H{}\n(q to quit)", render(&usage, app));
            }
            Format::Table => println!("{}\n{}", output::clock_ms(berth_server::now_ms()), render(&usage, app)),
        }
        let quit = async {
            match &keys {
                Some(k) => k.quit().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = quit => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    drop(keys);
    if live {
        println!();
    }
    Ok(ExitCode::SUCCESS)
}
