//! `berth app ...`: one app's status and changes.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::deploy::{ChangeArgs, ForceArg, WaitArgs, apply_file, finish};
use super::{Ctx, default_spec_path, resolve};
use crate::output::{self, Format, ago, table};

#[derive(Debug, clap::Args)]
#[command(args_conflicts_with_subcommands = false, subcommand_negates_reqs = false)]
pub struct AppArgs {
    /// The app (NAME, or GROUP/NAME), or `ls` to list every app.
    name: String,
    #[command(subcommand)]
    action: Option<AppAction>,
}

#[derive(Debug, clap::Subcommand)]
pub enum AppAction {
    /// Instances, their state and address (the default).
    Status,
    /// Re-apply the spec file.
    Sync {
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Run N instances.
    Scale {
        instances: u32,
        #[command(flatten)]
        force: ForceArg,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Roll the app onto a new image.
    Upgrade {
        image: String,
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Finish a canary: roll the new version out to every instance.
    Promote {
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Go back to an earlier version's spec (by default the latest earlier one that ran healthy),
    /// as a new version. Abandons a deployment or canary in progress.
    Rollback {
        version: Option<u64>,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Replace every instance with a fresh one, a few at a time, under the health gates.
    Restart {
        #[command(flatten)]
        force: ForceArg,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stop every instance and forget the app.
    Destroy {
        /// Do not ask first (a terminal is asked; a script is not).
        #[arg(long, short = 'y')]
        yes: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Every version of the spec: when, what changed, and how its deployment ended.
    History {
        /// The whole spec of this version, as YAML (`-o json`: JSON).
        #[arg(long)]
        version: Option<u64>,
    },
    /// Set or remove environment variables: a new version, deployed like any change.
    Env {
        #[command(subcommand)]
        action: EnvAction,
    },
    /// One instance: `instance ID restart` replaces it with a fresh one (drained first).
    Instance {
        /// The instance's id, or a prefix of it.
        id: String,
        #[command(subcommand)]
        action: InstanceAction,
    },
    /// Run a command inside an instance (`docker exec` for a container; beside the process, with
    /// its environment, for the exec driver) and exit with its code: `exec -- ls -l /`, or a
    /// shell with `exec -it -- sh`. Output streams as it comes; with `-o json` it is collected
    /// (up to 1 MiB a stream, 60 s) and printed as one result.
    Exec {
        /// The instance (an id or its prefix); by default the first running one.
        #[arg(long)]
        instance: Option<String>,
        /// Keep stdin open and send it to the command.
        #[arg(short, long)]
        interactive: bool,
        /// Run the command on a terminal (needs a terminal here): full-screen programs work,
        /// keys such as Ctrl-C go to the command.
        #[arg(short, long)]
        tty: bool,
        /// The program and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
    /// Why instances the app wants are not placed: nodes counted per reason, or the launch
    /// backoff, as the scheduler said on its last pass.
    Why,
    /// Follow the deployment in progress (again, after a Ctrl-C) until it ends.
    Watch {
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Output of every instance, merged in time order, each line prefixed with its instance.
    Logs(LogsArgs),
    /// The app's resource use per instance, live.
    Top(super::top::TopArgs),
    /// The app's Lua request rules, applied by every router: `rules set FILE`, `rules show`, `rules rm`.
    Rules {
        #[command(subcommand)]
        action: RulesAction,
    },
}

#[derive(Debug, clap::Args)]
pub struct LogsArgs {
    /// Keep printing new lines as instances write them (across restarts and new instances).
    #[arg(short = 'f', long)]
    follow: bool,
    /// Only lines from this long ago on (`30s`, `10m`, `1h`, `2d`) or from this time on
    /// (`2026-11-29T08:00:00Z`, RFC 3339).
    #[arg(long, value_parser = super::parse_since)]
    since: Option<i64>,
    /// The last N lines (default 200, or every line since `--since`).
    #[arg(long, short = 'n')]
    tail: Option<usize>,
    /// Only this instance (an id or its prefix).
    #[arg(long)]
    instance: Option<String>,
    /// Only lines matching this regular expression.
    #[arg(long)]
    grep: Option<String>,
    /// Print each line's time.
    #[arg(short = 't', long)]
    timestamps: bool,
    /// The output of the instance that ended last (the one a crash replaced), as kubectl's.
    #[arg(long, conflicts_with = "instance")]
    previous: bool,
}

async fn logs(client: &berth_api::Client, id: &str, args: LogsArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let since = args.since;
    let mut args = args;
    if args.previous {
        let status = client.app(id).await?.value;
        let last = status
            .instances
            .iter()
            .filter(|v| v.instance.state.is_terminal())
            .max_by_key(|v| v.instance.observed.finished_at.unwrap_or(v.instance.created_at));
        match last {
            Some(v) => args.instance = Some(v.instance.id.clone()),
            None => anyhow::bail!("{id} has no ended instance: none has been replaced yet"),
        }
    }
    // An instance filter that matches nothing would print nothing, silently.
    if let Some(wanted) = &args.instance {
        let status = client.app(id).await?.value;
        let ids: Vec<&str> = status.instances.iter().map(|v| v.instance.id.as_str()).collect();
        if !ids.iter().any(|i| i.starts_with(wanted.as_str())) {
            anyhow::bail!("{id} has no instance `{wanted}`; its instances: {}", ids.join(", "));
        }
    }
    let query = berth_api::LogQuery {
        since,
        tail: args.tail.or(if since.is_some() { None } else { Some(200) }),
        instance: args.instance,
        grep: args.grep,
        follow: args.follow,
        run: None,
    };
    print_logs(client, id, false, query, args.timestamps, ctx).await
}

/// Prints an app's (or with `job`, a job's) lines, each prefixed with its instance; following,
/// it resumes where it was after losing the server.
pub(super) async fn print_logs(
    client: &berth_api::Client,
    id: &str,
    job: bool,
    mut query: berth_api::LogQuery,
    timestamps: bool,
    ctx: &Ctx,
) -> anyhow::Result<ExitCode> {
    let json = ctx.format == Format::Json;
    use std::io::{IsTerminal, Write};
    // An app's escape sequences reach a person's terminal only as text; into a pipe or a file
    // its lines go as written.
    let escape = std::io::stdout().is_terminal();
    let mut out = std::io::stdout().lock();
    // Where a follower is, so that it resumes there after the server comes back: the last time
    // printed, and the lines printed at that very millisecond (which the resumed stream repeats).
    let mut last_t: Option<i64> = None;
    let mut at_last: std::collections::HashSet<(String, String)> = std::collections::HashSet::new();
    let mut stopped = false;
    const FIRST_RETRY: Duration = Duration::from_millis(200);
    let mut delay = FIRST_RETRY;
    loop {
        let mut got = false;
        let on_line = |line: berth_api::LogLine| {
            got = true;
            if last_t == Some(line.t) && at_last.contains(&(line.instance.clone(), line.line.clone())) {
                return true;
            }
            if last_t != Some(line.t) {
                last_t = Some(line.t);
                at_last.clear();
            }
            at_last.insert((line.instance.clone(), line.line.clone()));
            let text = if json {
                serde_json::to_string(&line).unwrap_or_default()
            } else {
                let mark = if line.stream == berth_api::LogStream::Stderr { "!" } else { "|" };
                let time = if timestamps { format!("{} ", output::clock_ms(line.t)) } else { String::new() };
                let text = if escape { output::visible(&line.line) } else { line.line.as_str().into() };
                format!("{time}{} {mark} {text}", line.instance)
            };
            // A closed pipe (`| head`) ends the stream quietly.
            let written = writeln!(out, "{text}").and_then(|_| out.flush()).is_ok();
            stopped |= !written;
            written
        };
        let result =
            if job { client.job_logs(id, &query, on_line).await } else { client.logs(id, &query, on_line).await };
        if stopped || !query.follow {
            result?;
            break;
        }
        // Following, the stream ended (the server stopped or restarted): resume where it was.
        if got {
            delay = FIRST_RETRY;
        }
        match result {
            Err(e) if e.status().is_some() => return Err(e.into()),
            // Said once per outage, not at every try.
            Err(e) if delay == FIRST_RETRY => eprintln!("note: lost the server ({e}); reconnecting"),
            _ => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
        if let Some(t) = last_t {
            query.since = Some(t);
            query.tail = None;
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, clap::Subcommand)]
pub enum InstanceAction {
    /// Stop it (drained first) and let a fresh one take its place.
    Restart,
    /// Stop it for good (drained first): the app runs one instance fewer.
    Stop {
        #[command(flatten)]
        force: ForceArg,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum EnvAction {
    /// `KEY=VALUE`... (repeatable).
    Set {
        #[arg(required = true, value_parser = parse_env_pair)]
        pairs: Vec<(String, String)>,
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// `KEY`... (repeatable).
    Unset {
        #[arg(required = true)]
        keys: Vec<String>,
        #[command(flatten)]
        change: ChangeArgs,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Print the app's environment.
    Ls,
}

fn parse_env_pair(text: &str) -> Result<(String, String), String> {
    match text.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("`{text}`: expected KEY=VALUE")),
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum RulesAction {
    /// Check the script and put it in force (a script that does not compile is refused).
    Set {
        file: PathBuf,
        /// What a request gets when the rule fails on it (a run-time error, a spent budget):
        /// `open` serves it as if there were no rule, `closed` refuses it with 500. Unchanged
        /// when not given (open at first).
        #[arg(long, value_parser = clap::value_parser!(berth_api::RuleOnError))]
        on_error: Option<berth_api::RuleOnError>,
        /// Try the script on this request first (repeatable): `METHOD TARGET [Name: value]...`,
        /// e.g. `GET /admin Host: shop.test`. A script that raises on one is refused. Without it,
        /// the script is tried on `GET /`.
        #[arg(long = "test", value_parser = berth_rules::TrialRequest::parse)]
        tests: Vec<berth_rules::TrialRequest>,
    },
    /// Print the script in force.
    Show,
    /// Remove the app's rules.
    Rm,
}

pub async fn run(args: AppArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let client = ctx.client()?;
    if args.name == "ls" && args.action.is_none() {
        return list(ctx).await;
    }
    let id = resolve(&client, &args.name).await?;
    match args.action.unwrap_or(AppAction::Status) {
        AppAction::Status => {
            let status = client.app(&id).await?.value;
            match ctx.format {
                Format::Json => println!("{}", output::json(&status)?),
                Format::Table => println!("{}", super::status::status_table(&status)),
            }
            Ok(ExitCode::SUCCESS)
        }
        AppAction::Sync { file, change, wait } => {
            apply_file(&file.unwrap_or_else(default_spec_path), Some(&id), change, &wait, ctx).await
        }
        AppAction::Scale { instances, force, wait } => {
            let resp = client.scale(&id, instances, force.options()).await?;
            eprintln!("{id}: scaling to {instances}");
            finish(&client, resp, &wait, ctx).await
        }
        AppAction::Upgrade { image, change, wait } => {
            let resp = client.upgrade(&id, &image, change.options()).await?;
            match change.canary {
                Some(n) => eprintln!("{id}: canary of {n} on {image} as version {}", resp.version),
                None => eprintln!("{id}: upgrading to {image} as version {}", resp.version),
            }
            finish(&client, resp, &wait, ctx).await
        }
        AppAction::Promote { wait } => {
            let resp = client.promote(&id).await?;
            eprintln!("{id}: promoting the canary of version {} to every instance", resp.version);
            finish(&client, resp, &wait, ctx).await
        }
        AppAction::Rollback { version, wait } => {
            let resp = client.rollback(&id, version).await?;
            let change = client.versions(&id).await?.into_iter().find(|v| v.version == resp.version).map(|v| v.change);
            eprintln!("{id}: {} as version {}", change.unwrap_or_else(|| "rolling back".into()), resp.version);
            finish(&client, resp, &wait, ctx).await
        }
        AppAction::Restart { force, wait } => {
            let resp = client.restart(&id, force.options()).await?;
            eprintln!("{id}: restarting every instance as version {}", resp.version);
            finish(&client, resp, &wait, ctx).await
        }
        AppAction::Destroy { yes, wait } => {
            if !yes && !confirm(&format!("destroy {id} and stop all its instances?"))? {
                anyhow::bail!("not destroyed");
            }
            destroy(&client, &id, &wait, ctx).await
        }
        AppAction::Env { action } => {
            let app = client.app(&id).await?.value;
            let mut spec = app.spec.clone();
            spec.instances = app.desired;
            let (what, change, wait) = match action {
                EnvAction::Ls => {
                    match ctx.format {
                        Format::Json => println!("{}", output::json(&spec.environment)?),
                        Format::Table => {
                            spec.environment
                                .iter()
                                .for_each(|(k, v)| println!("{k}={}", output::visible(&v.to_string())));
                        }
                    }
                    return Ok(ExitCode::SUCCESS);
                }
                EnvAction::Set { pairs, change, wait } => {
                    let keys: Vec<String> = pairs.iter().map(|(k, _)| k.clone()).collect();
                    spec.environment.extend(pairs.into_iter().map(|(k, v)| (k, v.into())));
                    (format!("set {}", keys.join(", ")), change, wait)
                }
                EnvAction::Unset { keys, change, wait } => {
                    let missing: Vec<&String> = keys.iter().filter(|k| !spec.environment.contains_key(*k)).collect();
                    if !missing.is_empty() {
                        let names: Vec<&str> = missing.iter().map(|k| k.as_str()).collect();
                        anyhow::bail!("{id} has no variable {}", names.join(", "));
                    }
                    for k in &keys {
                        spec.environment.remove(k);
                    }
                    (format!("unset {}", keys.join(", ")), change, wait)
                }
            };
            if let Err(errors) = spec.validate() {
                errors.0.iter().for_each(|e| eprintln!("error: {e}"));
                anyhow::bail!("the environment would make an invalid spec; nothing changed");
            }
            let resp = client.deploy(&spec, change.options()).await?;
            eprintln!("{id}: {what} as version {}", resp.version);
            finish(&client, resp, &wait, ctx).await
        }
        AppAction::Instance { id: wanted, action } => {
            let app = client.app(&id).await?.value;
            let live: Vec<&str> =
                app.instances.iter().filter(|v| v.instance.state.is_live()).map(|v| v.instance.id.as_str()).collect();
            let matching: Vec<&&str> = live.iter().filter(|i| i.starts_with(wanted.as_str())).collect();
            let target = match matching.as_slice() {
                [one] => one.to_string(),
                [] => anyhow::bail!("{id} has no live instance `{wanted}`; its live instances: {}", live.join(", ")),
                many => anyhow::bail!("`{wanted}` matches {} instances; give more of the id", many.len()),
            };
            let (view, said) = match action {
                InstanceAction::Restart => (
                    client.restart_instance(&target).await?,
                    "restarting; a fresh instance takes its place".to_string(),
                ),
                InstanceAction::Stop { force } => (
                    client.stop_instance(&target, force.options()).await?,
                    format!("stopping; {id} now runs {}", app.desired.saturating_sub(1)),
                ),
            };
            match ctx.format {
                Format::Json => println!("{}", output::json(&view)?),
                Format::Table => println!("{target}: {said}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        AppAction::Exec { instance, interactive, tty, command } => {
            let app = client.app(&id).await?.value;
            let running: Vec<&str> = app
                .instances
                .iter()
                .filter(|v| v.instance.state == berth_core::InstanceState::Running)
                .map(|v| v.instance.id.as_str())
                .collect();
            let target = match &instance {
                Some(wanted) => running.iter().find(|i| i.starts_with(wanted.as_str())),
                None => running.first(),
            };
            let Some(target) = target else {
                anyhow::bail!(
                    "{id} has no running instance{}",
                    instance.map(|i| format!(" `{i}`")).unwrap_or_default()
                );
            };
            if ctx.format == Format::Table {
                return super::exec::stream(&client, target, command, interactive, tty).await;
            }
            if interactive || tty {
                anyhow::bail!("-i and -t need a live session; -o json collects the output of a command without input");
            }
            // For scripts: the output collected (up to 1 MiB a stream) and the exit, as one result.
            let result = client.exec(target, command).await?;
            println!("{}", output::json(&result)?);
            Ok(super::exec::exit_status(&result))
        }
        AppAction::Why => {
            let app = client.app(&id).await?.value;
            let live = app.instances.iter().filter(|v| v.instance.state.is_live()).count();
            match ctx.format {
                Format::Json => println!(
                    "{}",
                    output::json(
                        &serde_json::json!({"app": id, "wanted": app.desired, "live": live, "waiting": app.waiting})
                    )?
                ),
                Format::Table => match (&app.waiting, &app.pending) {
                    (Some(berth_core::reason::Waiting::Unplaceable { why }), _) => {
                        println!(
                            "{id}: {live} of {} wanted instance(s) placed; no node can take the rest:",
                            app.desired
                        );
                        for line in why.lines() {
                            println!("  - {line}");
                        }
                    }
                    (Some(_), Some(pending)) => println!("{id}: {pending}"),
                    _ => println!("{id}: nothing waits: {live} of {} wanted instance(s) are placed", app.desired),
                },
            }
            Ok(ExitCode::SUCCESS)
        }
        AppAction::Watch { wait } => {
            let app = client.app(&id).await?.value;
            if app.deployment.as_ref().is_none_or(|d| d.state != berth_core::DeploymentState::Running) {
                eprintln!("{id}: no deployment in progress");
            }
            let resp = berth_api::DeployResponse { created: false, changed: true, version: app.version, app };
            super::deploy::finish(&client, resp, &wait, ctx).await
        }
        AppAction::History { version: Some(v) } => {
            let versions = client.versions(&id).await?;
            let Some(found) = versions.iter().find(|x| x.version == v) else {
                let known: Vec<String> = versions.iter().map(|x| x.version.to_string()).collect();
                anyhow::bail!("{id} has no version {v}; it has {}", known.join(", "));
            };
            match ctx.format {
                Format::Json => println!("{}", output::json(&found.spec)?),
                Format::Table => print!("{}", serde_saphyr::to_string(&found.spec)?),
            }
            Ok(ExitCode::SUCCESS)
        }
        AppAction::Rules { action } => rules(&client, &id, action, ctx).await,
        AppAction::Logs(args) => logs(&client, &id, args, ctx).await,
        AppAction::Top(args) => super::top::run(args, Some(&id), ctx).await,
        AppAction::History { version: None } => {
            let versions = client.versions(&id).await?;
            let app = client.app(&id).await?.value;
            match ctx.format {
                Format::Json => println!("{}", output::json(&versions)?),
                Format::Table => {
                    let rows = versions
                        .iter()
                        .map(|v| {
                            let outcome = match (&v.outcome, &app.deployment) {
                                (Some(o), _) => match &o.message {
                                    Some(m) => format!("{}: {m}", o.state),
                                    None => o.state.to_string(),
                                },
                                (None, Some(d)) if d.version == v.version => d.state.to_string(),
                                (None, _) => "-".into(),
                            };
                            let mark = if v.version == app.version { "*" } else { "" };
                            vec![format!("{}{mark}", v.version), output::clock(v.created_at), v.change.clone(), outcome]
                        })
                        .collect();
                    println!("{}", table(&["VERSION", "WHEN", "CHANGE", "OUTCOME"], rows));
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Asks on a terminal; a script (stdin not a terminal) is taken at its word.
fn confirm(question: &str) -> anyhow::Result<bool> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        return Ok(true);
    }
    eprint!("{question} [y/N] ");
    std::io::stderr().flush()?;
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

async fn destroy(client: &berth_api::Client, id: &str, wait: &WaitArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let status = client.destroy(id).await?;
    eprintln!(
        "{id}: destroying {} live instance(s)",
        status.instances.iter().filter(|i| i.instance.state.is_live()).count()
    );
    if !wait.no_wait {
        let started = Instant::now();
        let mut index = 0;
        loop {
            match client.app_after(id, index, Duration::from_secs(1)).await {
                Ok(answer) => index = answer.index,
                Err(e) if e.status() == Some(404) => break,
                Err(e) => return Err(e.into()),
            }
            if started.elapsed() > Duration::from_secs(wait.timeout) {
                eprintln!("{id}: still stopping after {}s", wait.timeout);
                return Ok(ExitCode::FAILURE);
            }
        }
        eprintln!("{id}: destroyed in {:.1}s", started.elapsed().as_secs_f64());
    }
    if ctx.format == Format::Json {
        println!("{}", output::json(&serde_json::json!({"id": id, "destroyed": !wait.no_wait}))?);
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let apps = ctx.client()?.apps().await?;
    match ctx.format {
        Format::Json => println!("{}", output::json(&apps)?),
        Format::Table => {
            let rows = apps
                .iter()
                .map(|a| {
                    vec![
                        a.id.clone(),
                        a.version.to_string(),
                        a.image.clone().unwrap_or_else(|| "-".into()),
                        format!("{}/{}", a.counts.running, a.desired),
                        if a.destroying {
                            "destroying".into()
                        } else if a.crash_loop.is_some() {
                            "crash-loop".into()
                        } else if a.deployed {
                            "deployed".into()
                        } else {
                            "deploying".into()
                        },
                        ago(a.updated_at),
                    ]
                })
                .collect();
            println!("{}", table(&["APP", "VERSION", "IMAGE", "RUNNING", "STATE", "UPDATED"], rows));
        }
    }
    Ok(ExitCode::SUCCESS)
}

async fn rules(client: &berth_api::Client, id: &str, action: RulesAction, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let target = berth_api::RuleTarget::App(id.to_string());
    match action {
        RulesAction::Set { file, on_error, tests } => {
            let source = super::read_capped(&file, berth_api::MAX_RULE_SCRIPT as u64, "a rule script")?;
            let script = match berth_rules::Script::new(&source) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!(
                        "error: {}:{}: {}",
                        file.display(),
                        e.line.map(|l| l.to_string()).unwrap_or_default(),
                        e.message
                    );
                    anyhow::bail!("{} does not compile; the rules in force are unchanged", file.display());
                }
            };
            // A script that raises on a request would fail every such request: try it first.
            let (group, name) = id.split_once('/').unwrap_or(("", id));
            let trials = if tests.is_empty() {
                vec![berth_rules::TrialRequest::sample(&format!("{name}.{group}"))]
            } else {
                tests
            };
            let mut decisions = Vec::new();
            for trial in &trials {
                let asked = format!("{} {}", trial.method, trial.target);
                match berth_rules::try_on(&script, trial) {
                    Ok(outcome) => decisions.push((asked, outcome.action.to_string())),
                    Err(e) => {
                        eprintln!(
                            "error: {}:{}: {} (on {asked})",
                            file.display(),
                            e.line.map(|l| l.to_string()).unwrap_or_default(),
                            e.message
                        );
                        anyhow::bail!("{} fails on a test request; the rules in force are unchanged", file.display());
                    }
                }
            }
            let stored = client.set_rules(&target, &source, on_error).await?;
            match ctx.format {
                Format::Json => println!(
                    "{}",
                    output::json(&serde_json::json!({"target": stored.target, "version": script.version(),
                                                      "engine": script.engine(), "on_error": stored.on_error,
                                                      "tests": decisions.iter().map(|(r, d)| serde_json::json!({"request": r, "decision": d})).collect::<Vec<_>>()}))?
                ),
                Format::Table => {
                    let engine = match script.engine() {
                        "native" => "runs natively",
                        _ => "runs in the Lua VM",
                    };
                    let on_error = match stored.on_error {
                        berth_api::RuleOnError::Open => "a request it fails on is served as if it had no rule",
                        berth_api::RuleOnError::Closed => "a request it fails on is refused with 500",
                    };
                    for (request, decision) in &decisions {
                        println!("{request}: {decision}");
                    }
                    println!(
                        "rules for {id} set (version {}, {engine}; {on_error}); routers apply them within a second",
                        script.version()
                    );
                }
            }
        }
        RulesAction::Show => {
            let script = match client.rules(&target).await {
                Err(e) if e.status() == Some(404) && e.to_string().starts_with("rules for") => {
                    anyhow::bail!(
                        "{id} has no rules; set them with `berth app {} rules set FILE`",
                        id.rsplit('/').next().unwrap_or(id)
                    )
                }
                other => other?,
            };
            match ctx.format {
                Format::Json => println!("{}", output::json(&script)?),
                Format::Table => print!("{}", script.source),
            }
        }
        RulesAction::Rm => {
            client.delete_rules(&target).await?;
            if ctx.format == Format::Json {
                println!("{}", output::json(&serde_json::json!({"deleted": target}))?);
            } else {
                println!("rules for {id} removed");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
