//! The command line: one file per group of subcommands.

mod alerts;
mod app;
mod audit;
mod bench;
mod context;
mod deploy;
mod events;
mod exec;
mod follow;
mod group;
mod job;
mod node;
mod platform;
mod pool;
mod router;
mod secret;
mod server;
mod spec;
mod status;
mod store;
mod token;
mod top;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::output::Format;

#[derive(Debug, Parser)]
#[command(name = "berth", version, about = "Berth: a private container cloud in one binary")]
pub struct Cli {
    /// The Berth server's API [default: the current context's, else http://127.0.0.1:7070].
    #[arg(long, global = true, env = "BERTH_SERVER")]
    pub server: Option<String>,
    /// The API token to act with [default: the current context's, for its server].
    #[arg(long, global = true, env = "BERTH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Trust an https:// server whose certificate this CA (PEM) signed [default: the current
    /// context's CA, for its server]. The server writes its own CA to <data-dir>/tls/ca.pem.
    #[arg(long = "ca-file", global = true, env = "BERTH_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Output: a table for people (wide: with more columns), json or yaml for scripts.
    #[arg(short = 'o', long = "output", global = true, value_enum, default_value_t = crate::output::Output::Table)]
    pub output: crate::output::Output,
    /// Colour in logs: auto (a terminal, unless NO_COLOR is set), always, or never.
    #[arg(long, global = true, value_enum, default_value_t = Color::Auto)]
    pub color: Color,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the whole platform on this machine: server and a local agent.
    Up(Box<platform::UpArgs>),
    /// Run the control plane (`berth server ls`: the servers sharing its store).
    Server(Box<platform::ServerArgs>),
    /// Run a node agent that joins a server.
    Agent(platform::AgentArgs),
    /// Run a router: the front door that serves apps by Host (`berth router ls`, `rm ID`).
    Router(platform::RouterArgs),
    /// Write a commented starter spec.
    Init(spec::InitArgs),
    /// Check a spec and print every problem with its line and column.
    Validate(spec::ValidateArgs),
    /// Create or update the app in a spec, then follow it until every instance runs.
    Deploy(deploy::DeployArgs),
    /// What `deploy` would do, changing nothing: the spec's changes, the steps, the placement.
    /// Exit code 0: no change; 2: changes; 1: an error.
    Plan(deploy::PlanArgs),
    /// Work with one app: `berth app ls`, `berth app NAME status|scale N|upgrade IMAGE|...`.
    App(app::AppArgs),
    /// Scheduled jobs: `berth job ls`, `berth job NAME status|history|logs|run|suspend|resume|destroy`.
    Job(job::JobArgs),
    /// The machines in the pool.
    Node {
        #[command(subcommand)]
        action: node::NodeAction,
    },
    /// Pools of nodes: which groups place where first, and each pool's cpu over-subscription.
    Pool {
        #[command(subcommand)]
        action: pool::PoolAction,
    },
    /// Shell completion for berth: `berth completion bash > /etc/bash_completion.d/berth`.
    Completion {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// What happened, oldest first.
    Events(events::EventsArgs),
    /// Resource use, live: every app, and allocated beside used per node and for the cluster.
    Top(top::TopArgs),
    /// Alerts firing now, and the ones that fired lately.
    Alerts,
    /// Who changed what, from where and when, refused attempts included.
    Audit(audit::AuditArgs),
    /// Groups: quotas beside usage, and what each allows (privileged, host-network).
    Group {
        #[command(subcommand)]
        action: group::GroupAction,
    },
    /// Move a whole store: export its records as JSON, import them into an empty store.
    Store {
        #[command(subcommand)]
        action: store::StoreAction,
    },
    /// Secrets an app's environment refers to ({secret: NAME}): set, ls, rm; values never shown.
    Secret {
        #[command(subcommand)]
        action: secret::SecretAction,
    },
    /// API tokens (admins): create with a role and groups, list, revoke.
    Token {
        #[command(subcommand)]
        action: token::TokenAction,
    },
    /// The clusters this CLI knows (server and token each) and the one in use.
    Context {
        #[command(subcommand)]
        action: context::ContextAction,
    },
    /// Measure parts of Berth in this process: `bench schedule --nodes N --instances M`.
    Bench {
        #[command(subcommand)]
        action: bench::BenchAction,
    },
}

/// Where the spec is read from when `-f` is not given.
/// `--since`: a time ago (`30s`, `10m`, `1h`, `2d`) or an RFC 3339 time, as milliseconds since
/// the epoch.
pub fn parse_since(text: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(text) {
        return Ok(t.timestamp_millis());
    }
    let ago = match text.strip_suffix('d').and_then(|n| n.parse::<u64>().ok()) {
        Some(days) => berth_core::Dur::from_secs_checked(days.saturating_mul(86_400))
            .ok_or_else(|| format!("`{text}` is longer than a year"))?,
        None => berth_core::Dur::parse(text).map_err(|e| format!("{e}; or give a time, e.g. 2026-11-29T08:00:00Z"))?,
    };
    Ok(berth_server::now_ms() - ago.as_millis() as i64)
}

/// Largest spec file read: a spec is a few KiB; this stops `-f /dev/zero` from eating memory.
pub const MAX_SPEC_BYTES: u64 = 4 << 20;

/// Reads a text file of at most `limit` bytes; a larger one (or an endless one) is an error that
/// says so, without reading past the limit.
pub fn read_capped(path: &std::path::Path, limit: u64, what: &str) -> anyhow::Result<String> {
    use std::io::Read;
    let file = std::fs::File::open(path).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    let mut bytes = Vec::new();
    file.take(limit + 1).read_to_end(&mut bytes).map_err(|e| anyhow::anyhow!("reading {}: {e}", path.display()))?;
    if bytes.len() as u64 > limit {
        anyhow::bail!("{}: {what} may be at most {} KiB; this one is larger", path.display(), limit / 1024);
    }
    String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!("{}: not UTF-8 text (byte {} is not valid)", path.display(), e.utf8_error().valid_up_to())
    })
}

pub fn default_spec_path() -> PathBuf {
    PathBuf::from("berth.yaml")
}

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let filter = match &cli.command {
        Command::Server(args) if args.action.is_some() => "warn",
        Command::Router(args) if args.action.is_some() => "warn",
        Command::Up(_) | Command::Server(_) | Command::Agent(_) | Command::Router(_) => "info",
        _ => "warn",
    };
    let env_filter = tracing_subscriber::EnvFilter::try_from_env("BERTH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter));
    // Colour only for a person at a terminal: never into a log file or a pipe, nor under NO_COLOR.
    use std::io::IsTerminal;
    let ansi = match cli.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty()),
    };
    tracing_subscriber::fmt().with_env_filter(env_filter).with_writer(std::io::stderr).with_ansi(ansi).init();

    let contexts = match crate::context::path() {
        Some(path) => crate::context::Config::load(&path)?,
        None => crate::context::Config::default(),
    };
    let (server, token, context_ca) = crate::context::resolve(cli.server.as_deref(), cli.token.as_deref(), &contexts);
    let trust = match (&cli.ca_file, context_ca) {
        (Some(path), _) => berth_tls::Trust::ca_file(path).context("--ca-file")?,
        (None, Some(pem)) => berth_tls::Trust::Ca(pem),
        (None, None) => berth_tls::Trust::Nothing,
    };
    let ctx = Ctx { server, token, format: cli.output.apply(), ca_file: cli.ca_file.clone(), trust };
    match cli.command {
        Command::Up(args) => platform::up(*args).await,
        Command::Server(mut args) => match args.action.take() {
            Some(action) => server::run(action, &ctx).await,
            None => platform::server(*args).await,
        },
        Command::Agent(args) => platform::agent(args, &ctx).await,
        Command::Router(mut args) => match args.action.take() {
            Some(action) => router::run(action, &ctx).await,
            None => platform::router(args, &ctx).await,
        },
        Command::Init(args) => spec::init(args, &ctx),
        Command::Validate(args) => spec::validate(args, &ctx),
        Command::Deploy(args) => deploy::deploy(args, &ctx).await,
        Command::Plan(args) => deploy::plan(args, &ctx).await,
        Command::App(args) => app::run(args, &ctx).await,
        Command::Job(args) => job::run(args, &ctx).await,
        Command::Node { action } => node::run(action, &ctx).await,
        Command::Pool { action } => pool::run(action, &ctx).await,
        Command::Events(args) => events::run(args, &ctx).await,
        Command::Top(args) => top::run(args, None, &ctx).await,
        Command::Alerts => alerts::run(&ctx).await,
        Command::Audit(args) => audit::run(args, &ctx).await,
        Command::Bench { action } => bench::run(action, &ctx).await,
        Command::Context { action } => context::run(action, &ctx),
        Command::Token { action } => token::run(action, &ctx).await,
        Command::Group { action } => group::run(action, &ctx).await,
        Command::Secret { action } => secret::run(action, &ctx).await,
        Command::Store { action } => store::run(action, &ctx).await,
        Command::Completion { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "berth", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
    }
}

impl Command {
    /// `up`, `server`, `agent` and `router` run until stopped; every other command is a client.
    pub fn is_platform_process(&self) -> bool {
        match self {
            Command::Server(args) => args.action.is_none(),
            Command::Router(args) => args.action.is_none(),
            other => matches!(other, Command::Up(_) | Command::Agent(_)),
        }
    }
}

/// What every client command needs.
pub struct Ctx {
    pub server: String,
    /// The API token to send, if any.
    pub token: Option<String>,
    pub format: Format,
    /// `--ca-file`, for agents and routers, which also keep the CA their join handed them.
    pub ca_file: Option<PathBuf>,
    /// What the CLI trusts of an https:// server.
    pub trust: berth_tls::Trust,
}

impl Ctx {
    pub fn client(&self) -> anyhow::Result<berth_api::Client> {
        let client = berth_api::Client::with_trust(&self.server, &self.trust)?;
        Ok(match &self.token {
            Some(token) => client.with_credential(token.clone()),
            None => client,
        })
    }
}

/// `NAME` where it is unique, else `GROUP/NAME`.
pub async fn resolve(client: &berth_api::Client, name: &str) -> anyhow::Result<String> {
    if name.contains('/') {
        return Ok(name.to_string());
    }
    let apps = client.apps().await?;
    let matches: Vec<String> = apps.iter().filter(|a| a.name == name).map(|a| a.id.clone()).collect();
    match matches.len() {
        0 => {
            let known: Vec<&str> = apps.iter().map(|a| a.name.as_str()).collect();
            let hint =
                berth_core::spec::closest(name, &known).map(|c| format!(" (did you mean `{c}`?)")).unwrap_or_default();
            anyhow::bail!("no app named `{name}`{hint}")
        }
        1 => Ok(matches.into_iter().next().unwrap_or_default()),
        _ => anyhow::bail!("`{name}` is in several groups ({}); say GROUP/NAME", matches.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    /// Every command's flags are well formed: no name used twice where options are flattened
    /// together (`berth up` takes the server's, the node's and the router's).
    #[test]
    fn the_command_line_is_well_formed() {
        <super::Cli as clap::CommandFactory>::command().debug_assert();
    }
}
