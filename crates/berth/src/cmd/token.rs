//! `berth token`: API tokens, for admins. A token acts with a role (admin, deployer, viewer) in
//! some groups or all of them; its secret is shown once, when it is made.

use std::process::ExitCode;

use berth_api::{TokenRequest, TokenView};
use berth_core::access::Role;

use super::Ctx;
use crate::output::{self, Format, table};

#[derive(Debug, clap::Subcommand)]
pub enum TokenAction {
    /// Make a token; its secret is printed this once.
    Create {
        #[arg(long, value_enum)]
        role: RoleArg,
        /// A group it acts in (again for more); none: every group. Not for admin tokens.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// It stops working after this long: 30d, 12h, 90m.
        #[arg(long, value_parser = parse_ttl)]
        ttl: Option<u64>,
        /// Who or what holds it, as the audit log names it [default: the role].
        #[arg(long)]
        name: Option<String>,
    },
    /// Every token: id, name, role, groups, expiry (never a secret).
    Ls,
    /// Revoke a token: it is refused from then on.
    Revoke { id: String },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum RoleArg {
    Admin,
    Deployer,
    Viewer,
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Deployer => Role::Deployer,
            RoleArg::Viewer => Role::Viewer,
        }
    }
}

/// `30d`, `12h`, `90m`, `45s`, as seconds.
fn parse_ttl(text: &str) -> Result<u64, String> {
    if let Some(days) = text.strip_suffix('d') {
        let days: u64 = days.parse().map_err(|_| format!("`{text}`: expected a number of days, like 30d"))?;
        return days.checked_mul(86_400).ok_or_else(|| format!("`{text}` is too long"));
    }
    let d = berth_core::Dur::parse(text).map_err(|e| format!("{e}; or days, like 30d"))?;
    Ok(d.as_duration().as_secs().max(1))
}

pub async fn run(action: TokenAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    match action {
        TokenAction::Create { role, groups, ttl, name } => {
            let role = Role::from(role);
            let name = name.unwrap_or_else(|| role.to_string());
            let made = client.create_token(&TokenRequest { name, role, groups, ttl_seconds: ttl }).await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&made)?),
                Format::Table => {
                    println!("{}", made.token);
                    eprintln!(
                        "token {} ({}, {}) made; it is shown this once: keep it (BERTH_TOKEN, or berth context add)",
                        made.view.id,
                        made.view.name,
                        scope(&made.view)
                    );
                }
            }
        }
        TokenAction::Ls => {
            let tokens = client.tokens().await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&tokens)?),
                Format::Table => println!("{}", tokens_table(&tokens)),
            }
        }
        TokenAction::Revoke { id } => {
            let gone = client.revoke_token(&id).await?;
            match ctx.format {
                Format::Json => println!("{}", output::json(&gone)?),
                Format::Table => println!("token {} ({}) revoked", gone.id, gone.name),
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn scope(t: &TokenView) -> String {
    if t.groups.is_empty() {
        format!("{} of every group", t.role)
    } else {
        format!("{} of {}", t.role, t.groups.join(", "))
    }
}

fn tokens_table(tokens: &[TokenView]) -> String {
    let when = |ms: i64| chrono::DateTime::from_timestamp_millis(ms).map(|t| t.format("%Y-%m-%d %H:%M").to_string());
    let rows = tokens
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.name.clone(),
                t.role.to_string(),
                if t.groups.is_empty() { "*".into() } else { t.groups.join(",") },
                when(t.created_at).unwrap_or_default(),
                t.expires_at.and_then(when).unwrap_or_else(|| "never".into()),
            ]
        })
        .collect();
    table(&["ID", "NAME", "ROLE", "GROUPS", "CREATED", "EXPIRES"], rows)
}
