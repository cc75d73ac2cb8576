//! `berth secret`: values an app's environment refers to (`{secret: NAME}`), sealed by the
//! server. The value goes in from stdin or a file, never from the command line (where `ps` and
//! the shell's history would keep it), and no command ever prints one.

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use berth_api::SecretView;

use super::Ctx;
use crate::output::{self, Format, table};

#[derive(Debug, clap::Subcommand)]
pub enum SecretAction {
    /// Seal a value as GROUP/NAME, made or replaced: from stdin (typed unechoed at a terminal; one
    /// trailing newline of piped text is dropped), or from a file taken byte for byte. Instances
    /// read it when they start: `berth app restart` hands a new value to running ones.
    Set {
        /// GROUP/NAME.
        secret: String,
        /// Read the value from this file, exactly.
        #[arg(long = "from-file")]
        from_file: Option<PathBuf>,
    },
    /// The secrets of the token's groups: names, versions and the apps using them, never values.
    Ls {
        /// Only this group's.
        #[arg(long)]
        group: Option<String>,
    },
    /// Remove GROUP/NAME (refused while an app's environment refers to it).
    Rm {
        /// GROUP/NAME.
        secret: String,
    },
}

fn split(secret: &str) -> anyhow::Result<(&str, &str)> {
    secret
        .split_once('/')
        .filter(|(g, n)| !g.is_empty() && !n.is_empty() && !n.contains('/'))
        .ok_or_else(|| anyhow::anyhow!("`{secret}`: a secret is named GROUP/NAME, as in shop/db_password"))
}

/// The value to seal, from the file or stdin.
fn read_value(from_file: Option<&PathBuf>) -> anyhow::Result<String> {
    if let Some(path) = from_file {
        let bytes = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        return String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("{}: a secret must be UTF-8 text", path.display()));
    }
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(crate::terminal::read_hidden("value (not echoed): ")?);
    }
    let mut text = String::new();
    stdin.lock().read_to_string(&mut text).context("cannot read the value from stdin (it must be UTF-8 text)")?;
    // `echo pw | berth secret set` should seal `pw`, not `pw\n`.
    if let Some(stripped) = text.strip_suffix('\n') {
        text = stripped.strip_suffix('\r').unwrap_or(stripped).to_string();
    }
    Ok(text)
}

pub async fn run(action: SecretAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match action {
        SecretAction::Set { secret, from_file } => {
            let (group, name) = split(&secret)?;
            let value = read_value(from_file.as_ref())?;
            if value.is_empty() {
                anyhow::bail!("the value is empty; nothing sealed");
            }
            let view = client.set_secret(group, name, value).await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&view)?),
                Format::Table => {
                    eprintln!("{group}/{name}: version {} sealed", view.version);
                    if !view.used_by.is_empty() {
                        eprintln!(
                            "used by {}: their instances read it when they start (berth app restart APP hands it to running ones)",
                            view.used_by.join(", ")
                        );
                    }
                }
            }
        }
        SecretAction::Ls { group } => {
            let mut secrets = client.secrets().await?;
            if let Some(group) = &group {
                secrets.retain(|s| &s.group == group);
            }
            match ctx.format {
                Format::Json => println!("{}", output::json(&secrets)?),
                Format::Table => println!("{}", secrets_table(&secrets)),
            }
        }
        SecretAction::Rm { secret } => {
            let (group, name) = split(&secret)?;
            let view = client.delete_secret(group, name).await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&view)?),
                Format::Table => eprintln!("{group}/{name}: removed"),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn secrets_table(secrets: &[SecretView]) -> String {
    let when = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d %H:%M").to_string());
    let rows = secrets
        .iter()
        .map(|s| {
            vec![
                format!("{}/{}", s.group, s.name),
                s.version.to_string(),
                when(s.updated_at).unwrap_or_default(),
                if s.used_by.is_empty() { "-".into() } else { s.used_by.join(",") },
            ]
        })
        .collect();
    table(&["SECRET", "VERSION", "UPDATED", "USED BY"], rows)
}
