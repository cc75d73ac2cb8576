//! `berth context`: the clusters this CLI knows, each a server and a token, and the one in use.

use std::process::ExitCode;

use serde::Serialize;

use super::Ctx;
use crate::context::{self, Config, Context};
use crate::output::{self, Format, table};

#[derive(Debug, clap::Subcommand)]
pub enum ContextAction {
    /// Every context; `*` marks the current one.
    Ls,
    /// Make NAME the current context.
    Use { name: String },
    /// Add or replace NAME: the server of `--server URL`, the token of `--token` or `--token-file`,
    /// and for an https:// server the CA of `--ca-file` (kept in the context); it becomes current.
    Add {
        name: String,
        /// A file holding its token (the server's `<data-dir>/admin.token`, say) [default: --token or BERTH_TOKEN].
        #[arg(long)]
        token_file: Option<std::path::PathBuf>,
    },
    /// Forget NAME.
    Rm { name: String },
}

#[derive(Debug, Serialize)]
struct ContextView<'a> {
    name: &'a str,
    server: &'a str,
    current: bool,
    /// Whether a token is kept for it (never the token itself).
    token: bool,
}

pub fn run(action: ContextAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let path = context::path()
        .ok_or_else(|| anyhow::anyhow!("no HOME, XDG_CONFIG_HOME or BERTH_CONFIG to keep contexts in"))?;
    let mut config = Config::load(&path)?;
    match action {
        ContextAction::Ls => {}
        ContextAction::Use { name } => {
            if !config.contexts.contains_key(&name) {
                let known: Vec<&str> = config.contexts.keys().map(String::as_str).collect();
                anyhow::bail!(
                    "no context {name}; known: {}",
                    if known.is_empty() { "none".into() } else { known.join(", ") }
                );
            }
            config.current = Some(name);
            config.save(&path)?;
        }
        ContextAction::Add { name, token_file } => {
            let token = match token_file {
                Some(file) => Some(super::read_capped(&file, 64 << 10, "a token file")?.trim().to_string()),
                None => ctx.token.clone(),
            };
            let server = ctx.server.clone();
            let ca = match &ctx.ca_file {
                Some(file) => Some(super::read_capped(file, 64 << 10, "a CA file")?),
                None => None,
            };
            config.contexts.insert(name.clone(), Context { server, token, ca });
            config.current = Some(name);
            config.save(&path)?;
        }
        ContextAction::Rm { name } => {
            if config.contexts.remove(&name).is_none() {
                anyhow::bail!("no context {name}");
            }
            if config.current.as_deref() == Some(name.as_str()) {
                config.current = None;
            }
            config.save(&path)?;
        }
    }
    let views: Vec<ContextView> = config
        .contexts
        .iter()
        .map(|(name, c)| ContextView {
            name,
            server: &c.server,
            current: config.current.as_deref() == Some(name.as_str()),
            token: c.token.is_some(),
        })
        .collect();
    match ctx.format {
        Format::Json => println!("{}", output::json(&views)?),
        Format::Table => {
            let rows = views
                .iter()
                .map(|v| {
                    vec![
                        if v.current { "*".into() } else { String::new() },
                        v.name.to_string(),
                        v.server.to_string(),
                        if v.token { "yes".into() } else { "no".into() },
                    ]
                })
                .collect();
            println!("{}", table(&["CURRENT", "NAME", "SERVER", "TOKEN"], rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}
