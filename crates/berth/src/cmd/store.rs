//! `berth store export|import`: a whole store out as JSON, and into an empty store of another
//! kind (a single box's redb onto etcd).

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use berth_store::transfer::{Export, import};

use super::Ctx;

#[derive(Debug, clap::Subcommand)]
pub enum StoreAction {
    /// Every record of the server's store, as JSON on stdout (admin token).
    Export,
    /// Every record of an export (stdin, or --file) into an empty store, with no server running
    /// on it yet: then start the servers with --store, and point agents and routers at them.
    Import {
        /// The store to fill: etcd://HOST:PORT[,HOST:PORT...] or redb://PATH.
        #[arg(long, env = "BERTH_STORE")]
        store: String,
        /// In an etcd store, the prefix the servers will be started with.
        #[arg(long, default_value = "/berth")]
        store_prefix: String,
        /// The etcd members' --max-txn-ops.
        #[arg(long, default_value_t = 128, value_parser = clap::value_parser!(u32).range(16..))]
        store_max_txn_ops: u32,
        #[command(flatten)]
        tls: super::platform::StoreTlsOptions,
        /// Read the export from this file instead of stdin.
        #[arg(long, short = 'f')]
        file: Option<PathBuf>,
    },
}

pub async fn run(action: StoreAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    match action {
        StoreAction::Export => {
            let export = ctx.client()?.export_store().await?;
            let mut out = std::io::stdout().lock();
            serde_json::to_writer(&mut out, &export)?;
            writeln!(out)?;
            Ok(ExitCode::SUCCESS)
        }
        StoreAction::Import { store, store_prefix, store_max_txn_ops, tls, file } => {
            let text = match &file {
                Some(path) => std::fs::read_to_string(path).with_context(|| format!("{}", path.display()))?,
                None => {
                    let mut text = String::new();
                    std::io::stdin().read_to_string(&mut text).context("reading the export from stdin")?;
                    text
                }
            };
            let from = file.as_ref().map_or("stdin".to_string(), |p| p.display().to_string());
            let export: Export = serde_json::from_str(&text).with_context(|| format!("{from}: not a store export"))?;
            let max = store_max_txn_ops as usize;
            let location =
                berth_server::StoreLocation::parse(&store, &store_prefix, max, tls.tls()).context("--store")?;
            // Each record is a compare and a put; etcd counts each side against its limit, and
            // the store adds one of each.
            let per_txn = if matches!(location, berth_server::StoreLocation::Etcd(_)) { max - 1 } else { 1000 };
            let total = export.records.len();
            let written = tokio::task::spawn_blocking(move || {
                let target = location.open()?;
                let mut last_said = 0;
                let said = import(&*target, &export, per_txn, |n| {
                    if n == total || n - last_said >= 1000 {
                        eprintln!("imported {n} of {total} records");
                        last_said = n;
                    }
                })?;
                Ok::<_, anyhow::Error>((said, location.url()))
            })
            .await??;
            eprintln!("{} records imported into {}", written.0, written.1);
            Ok(ExitCode::SUCCESS)
        }
    }
}
