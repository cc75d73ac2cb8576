//! `berth alerts`: what fires now and what fired lately.

use std::process::ExitCode;

use super::Ctx;
use crate::output::{self, Format, ago, table};

pub async fn run(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let list = ctx.client()?.alerts().await?;
    match ctx.format {
        Format::Json => println!("{}", output::json(&list)?),
        Format::Table => {
            let rows = |alerts: &[berth_api::Alert]| -> Vec<Vec<String>> {
                alerts
                    .iter()
                    .map(|a| {
                        vec![
                            format!("{:?}", a.status).to_lowercase(),
                            a.name.clone(),
                            a.app.clone().or_else(|| a.node.clone()).unwrap_or_default(),
                            ago(a.started_at),
                            a.resolved_at.map(ago).unwrap_or_default(),
                            a.text.clone(),
                        ]
                    })
                    .collect()
            };
            let headers = ["STATUS", "ALERT", "SUBJECT", "SINCE", "RESOLVED", "TEXT"];
            println!("{}", table(&headers, rows(&list.firing)));
            if !list.recent.is_empty() {
                println!("\nrecent:\n{}", table(&headers, rows(&list.recent)));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
