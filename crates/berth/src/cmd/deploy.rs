//! `berth deploy` and the live progress every changing command shows.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use berth_api::{AppStatus, Client, DeployResponse};
use berth_core::InstanceState;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Ctx, default_spec_path, spec};
use crate::output::{self, Format};

/// How a changing command waits.
#[derive(Debug, Clone, clap::Args)]
pub struct WaitArgs {
    /// Return once the server has accepted the change.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (exit code 1).
    #[arg(long, default_value_t = 300)]
    pub timeout: u64,
}

#[derive(Debug, clap::Args)]
pub struct DeployArgs {
    /// The spec to deploy.
    #[arg(short = 'f', long = "file")]
    file: Option<PathBuf>,
    #[command(flatten)]
    wait: WaitArgs,
}

pub async fn deploy(args: DeployArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let path = args.file.unwrap_or_else(default_spec_path);
    apply_file(&path, None, &args.wait, ctx).await
}

/// Deploys the spec in `path`; `expect_id` guards `app NAME sync` against the wrong file.
pub async fn apply_file(
    path: &std::path::Path,
    expect_id: Option<&str>,
    wait: &WaitArgs,
    ctx: &Ctx,
) -> anyhow::Result<ExitCode> {
    let spec = match spec::load(path)? {
        Ok(spec) => spec,
        Err(errors) => {
            for e in &errors.0 {
                eprintln!("error: {e}");
            }
            anyhow::bail!("{} is not a valid spec; nothing was deployed", path.display());
        }
    };
    if let Some(id) = expect_id {
        anyhow::ensure!(spec.id() == id, "{} describes {}, not {id}", path.display(), spec.id());
    }
    for w in spec.warnings() {
        eprintln!("warning: {w}");
    }
    let client = ctx.client()?;
    let resp = client.deploy(&spec).await?;
    let verb = if resp.created {
        "created"
    } else if resp.changed {
        "updated"
    } else {
        "unchanged"
    };
    eprintln!("{} {verb}: version {}, {} instance(s) wanted", spec.id(), resp.version, resp.app.desired);
    finish(&client, resp, wait, ctx).await
}

/// After a change was accepted: follow it (unless --no-wait) and print the outcome.
pub async fn finish(client: &Client, resp: DeployResponse, wait: &WaitArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let (ok, status) = if wait.no_wait {
        (true, resp.app)
    } else {
        follow(client, &resp.app.id, resp.version, Duration::from_secs(wait.timeout)).await?
    };
    match ctx.format {
        Format::Json => println!("{}", output::json(&status)?),
        Format::Table => println!("{}", super::app::status_table(&status)),
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn progress_bar() -> ProgressBar {
    let pb = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
    pb.set_style(
        ProgressStyle::with_template("{spinner} {elapsed:>4} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    pb.enable_steady_tick(Duration::from_millis(120));
    pb
}

/// Shows progress until every instance of `version` runs; false on failure or timeout.
pub async fn follow(client: &Client, id: &str, version: u64, timeout: Duration) -> anyhow::Result<(bool, AppStatus)> {
    let started = Instant::now();
    let since = berth_server::now_ms() - 1000;
    let pb = progress_bar();
    let mut seen: HashMap<String, InstanceState> = HashMap::new();
    let mut index = 0;
    loop {
        let answer = if index == 0 {
            client.app(id).await?
        } else {
            client.app_after(id, index, Duration::from_secs(1)).await?
        };
        index = answer.index;
        let status = answer.value;
        for view in &status.instances {
            let inst = &view.instance;
            if seen.get(&inst.id) != Some(&inst.state)
                && (inst.state.is_live() || seen.contains_key(&inst.id) || inst.created_at >= since)
            {
                let detail = match inst.state {
                    InstanceState::Failed => inst.reason.clone().unwrap_or_default(),
                    InstanceState::Stopped => inst.reason.clone().unwrap_or_default(),
                    _ => view.address.clone().unwrap_or_default(),
                };
                pb.println(format!("  {:<24} v{:<3} {:<8} {detail}", inst.id, inst.version, inst.state));
                seen.insert(inst.id.clone(), inst.state);
            }
        }
        if status.version != version {
            pb.finish_and_clear();
            eprintln!(
                "{id} moved on to version {} while waiting; follow it with `berth app {} status`",
                status.version, status.name
            );
            return Ok((false, status));
        }
        let current = status.instances.iter().filter(|v| v.instance.version == version);
        let (mut ready, mut starting, mut failed) = (0, 0, Vec::new());
        for v in current {
            let i = &v.instance;
            match i.state {
                _ if i.is_ready() && i.desired == berth_core::Desired::Run => ready += 1,
                InstanceState::Staging | InstanceState::Starting | InstanceState::Running
                    if i.desired == berth_core::Desired::Run =>
                {
                    starting += 1
                }
                InstanceState::Failed if i.created_at >= since => {
                    failed.push(i.reason.clone().unwrap_or_else(|| "failed".into()))
                }
                _ => {}
            }
        }
        let old =
            status.instances.iter().filter(|v| v.instance.version != version && v.instance.state.is_live()).count();
        let mut msg = format!("{id} v{version}: {ready}/{} running, {starting} starting", status.desired);
        if old > 0 {
            msg.push_str(&format!(", {old} old"));
        }
        if !failed.is_empty() {
            msg.push_str(&format!(", {} failed", failed.len()));
        }
        if let Some(p) = &status.pending {
            msg.push_str(&format!(" | {p}"));
        }
        pb.set_message(msg);
        if status.deployed {
            pb.finish_and_clear();
            eprintln!("{id} v{version}: {ready}/{} running in {:.1}s", status.desired, started.elapsed().as_secs_f64());
            return Ok((true, status));
        }
        let give_up = (status.desired as usize).max(3);
        if failed.len() >= give_up {
            pb.finish_and_clear();
            eprintln!(
                "{id} v{version}: {} instance(s) failed; last: {}",
                failed.len(),
                failed.last().cloned().unwrap_or_default()
            );
            return Ok((false, status));
        }
        if started.elapsed() >= timeout {
            pb.finish_and_clear();
            eprintln!(
                "{id} v{version}: timed out after {}s with {ready}/{} running",
                timeout.as_secs(),
                status.desired
            );
            return Ok((false, status));
        }
    }
}
