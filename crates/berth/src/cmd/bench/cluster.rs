//! `berth bench cluster`: the whole control-plane path with many nodes on one machine. A real
//! `berth server` process (in its own session) and N agents in this process, each the real agent
//! code with the simulated driver (instances kept in memory), its own data dir and port range. It
//! deploys one app of M instances through the API and reports how long until all M run, and the
//! server's memory.

use anyhow::Context;
use std::collections::BTreeMap;
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use berth_agent::{Agent, AgentConfig, DriverChoice, PullPolicy};
use berth_api::{ChangeOptions, Client};
use berth_core::{AppSpec, NodeStatus, SHARED_POOL};
use serde::Serialize;

use super::{cpu_seconds_of, peak_rss_of};
use crate::cmd::Ctx;
use crate::output::Format;

#[derive(Debug, clap::Args)]
pub struct ClusterArgs {
    /// Simulated agents, each a node.
    #[arg(long, default_value_t = 100)]
    agents: usize,
    /// Instances of the one app deployed.
    #[arg(long, default_value_t = 10_000)]
    instances: u32,
    /// Give up after this many seconds (exit code 1).
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Once all run, keep going this long (agents heartbeat, report and send metrics) and measure
    /// the server's memory again.
    #[arg(long, default_value_t = 30)]
    settle: u64,
    /// Then stop this many agents at once, as machines that die (no more heartbeats or reports),
    /// and measure until the server has noticed and every instance runs again elsewhere.
    #[arg(long, default_value_t = 0)]
    kill: usize,
    /// After the settle, kill the server (SIGKILL), keep it down this long, start it again on the
    /// same data dir and port, and follow the agents' return: requests per second at the server,
    /// nodes wrongly marked disconnected, instances replaced.
    #[arg(long, value_parser = crate::cmd::platform::parse_dur)]
    restart_server: Option<berth_core::Dur>,
    /// The server's `--node-timeout` (how long a silent node stays ready).
    #[arg(long, value_parser = crate::cmd::platform::parse_dur, default_value = "5s")]
    node_timeout: berth_core::Dur,
}

#[derive(Debug, Serialize)]
struct ClusterReport {
    agents: usize,
    instances: u32,
    running: usize,
    /// From the deploy request to every instance running and in service.
    seconds_to_running: f64,
    /// The server's resident memory when all run, and its peak until then.
    server_rss_mib: f64,
    server_peak_rss_mib: f64,
    /// The server's CPU time from the deploy request to all running.
    server_cpu_seconds: f64,
    /// `settle` seconds later: its resident memory and its peak, the share of one core it used
    /// meanwhile (100 = one core), and how many store writes it made meanwhile.
    settle_seconds: u64,
    server_settled_cpu_percent: f64,
    store_writes_settled: u64,
    server_settled_rss_mib: f64,
    server_settled_peak_rss_mib: f64,
    /// Instances whose resource samples reached the server, at the end.
    instances_sampled: usize,
    /// Agents stopped at once after settling (`--kill`), and from then: when the server first
    /// counted fewer instances ready, and when all were ready again.
    #[serde(skip_serializing_if = "Option::is_none")]
    loss: Option<LossReport>,
    /// The server killed and started again after settling (`--restart-server`).
    #[serde(skip_serializing_if = "Option::is_none")]
    restart: Option<RestartReport>,
    /// What the server's data dir holds on disk.
    store_mib: f64,
}

#[derive(Debug, Serialize)]
struct RestartReport {
    down_seconds: f64,
    /// Requests per second the server answered while settled, before it was killed (its own
    /// `berth_server_requests_total`, less the bench's scrapes).
    requests_per_second_before: f64,
    /// Its busiest quarter second, as a rate per second, from its restart until a node timeout
    /// (as stretched for this many nodes) and 5 s more had passed.
    requests_per_second_peak: f64,
    /// From the restart until every node had heartbeat to the new server.
    seconds_to_all_beating: Option<f64>,
    /// Nodes the restarted server marked disconnected meanwhile: it owes each a full timeout.
    nodes_marked_disconnected: usize,
    /// Instances ready before the kill and not after: the restart should replace none.
    instances_replaced: usize,
}

#[derive(Debug, Serialize)]
struct LossReport {
    killed: usize,
    instances_lost: usize,
    seconds_to_notice: Option<f64>,
    seconds_to_heal: Option<f64>,
}

/// Ports per simulated node: room for its share of instances, twice over.
fn port_range(k: usize, per_node: usize) -> (u16, u16) {
    let width = (per_node * 2).max(16);
    let low = FIRST_PORT + k * width;
    (low as u16, (low + width - 1).min(u16::MAX as usize) as u16)
}

/// Below Linux's ephemeral range (32768 and up): the agents' own connections to the server take
/// ephemeral ports, and an instance's port one of them holds is skipped as taken, which writes
/// the node again. Real nodes have their own addresses; here they share one.
const FIRST_PORT: usize = 2_000;
const LAST_PORT: usize = 32_767;

pub async fn cluster(args: &ClusterArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(
        args.kill < args.agents,
        "--kill {}: at most {} of --agents {} can die, or nothing is left to run their instances",
        args.kill,
        args.agents.saturating_sub(1),
        args.agents
    );
    let per_node = (args.instances as usize).div_ceil(args.agents.max(1));
    anyhow::ensure!(
        FIRST_PORT + args.agents * (per_node * 2).max(16) <= LAST_PORT + 1,
        "{} agents with {per_node} instances each need more host ports than exist",
        args.agents
    );
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let mut server =
        ServerProcess { dir: dir.path().to_path_buf(), api: format!("127.0.0.1:{port}"), args, child: None };
    server.start()?;
    let result = run(args, dir.path(), &format!("http://{}", server.api), per_node, &mut server, ctx).await;
    server.kill().await;
    if result.is_err() {
        let log = std::fs::read_to_string(dir.path().join("server.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        eprintln!("server log, last lines:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"));
    }
    result
}

/// The `berth server` under test, started the same way each time, on the same port and data dir.
struct ServerProcess<'a> {
    dir: std::path::PathBuf,
    api: String,
    args: &'a ClusterArgs,
    child: Option<(tokio::process::Child, u32)>,
}

impl ServerProcess<'_> {
    fn start(&mut self) -> anyhow::Result<u32> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.join("server.log"))?;
        // In its own session, as every process under test is started.
        let child = tokio::process::Command::new("setsid")
            .arg(std::env::current_exe()?)
            .args(["server", "--data-dir"])
            .arg(self.dir.join("server"))
            .args(["--api", &self.api, "--domain", "bench.test", "--node-timeout", &self.args.node_timeout.to_string()])
            .env("BERTH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("the server exited at once"))?;
        self.child = Some((child, pid));
        Ok(pid)
    }

    fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |(_, pid)| *pid)
    }

    /// SIGKILL, as a machine that loses power: nothing is flushed on the way out.
    async fn kill(&mut self) {
        if let Some((mut child, _)) = self.child.take() {
            let _ = child.start_kill();
            let _ = child.wait().await;
        }
    }
}

async fn run(
    args: &ClusterArgs,
    dir: &std::path::Path,
    server: &str,
    per_node: usize,
    server_process: &mut ServerProcess<'_>,
    ctx: &Ctx,
) -> anyhow::Result<ExitCode> {
    let pid = server_process.pid();
    // The server writes its admin token before its port opens; the bench acts as admin.
    let admin_token_file = dir.join("server").join(berth_server::ADMIN_TOKEN_FILE);
    let began = Instant::now();
    let deadline = began + Duration::from_secs(args.timeout);
    let progress = |line: String| {
        if ctx.format == Format::Table {
            eprintln!("{:>6.1}s {line}", began.elapsed().as_secs_f64());
        }
    };
    // The server first, so that no agent starts by failing to register.
    let client = loop {
        if let Ok(token) = std::fs::read_to_string(&admin_token_file) {
            let client = Client::new(server)?.with_credential(token.trim().to_string());
            if client.nodes().await.is_ok() {
                break client;
            }
        }
        anyhow::ensure!(Instant::now() < deadline, "the server did not answer in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The server made its join token at start, as a user's does; the agents join with it.
    let token_file = dir.join("server").join(berth_server::JOIN_TOKEN_FILE);
    let token = std::fs::read_to_string(&token_file).with_context(|| format!("{}", token_file.display()))?;
    let mut agents = Vec::with_capacity(args.agents);
    for k in 0..args.agents {
        let config = AgentConfig {
            ca_file: None,
            ca_fingerprint: None,
            server: server.to_string(),
            data_dir: dir.join("agents").join(k.to_string()),
            hostname: format!("sim-{k:04}"),
            address: "127.0.0.1".into(),
            cpu: Some(16.0),
            memory: Some(65_536),
            ports: port_range(k, per_node),
            labels: BTreeMap::new(),
            pool: SHARED_POOL.into(),
            driver: DriverChoice::Simulated,
            pull: PullPolicy::Never,
            heartbeat: Duration::from_secs(2),
            metrics_interval: Duration::from_secs(5),
            join_token: Some(token.trim().to_string()),
        };
        agents.push(Agent::start(config).await?);
    }
    loop {
        let ready = client.nodes().await.map(|n| n.iter().filter(|n| n.state == berth_core::NodeState::Ready).count());
        if ready.as_ref().is_ok_and(|r| *r == args.agents) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "{} of {} agents ready in time", ready.unwrap_or(0), args.agents);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    progress(format!("{} agents ready", args.agents));

    let spec = AppSpec::from_yaml(
        &format!(
            "group: bench\nname: sim\ndriver: exec\ncommand: [sleep, \"3600\"]\ninstances: {}\ncpu: 0.01\nmemory: 8\n\
             upgrade:\n  min_healthy_time: 0s\n",
            args.instances
        ),
        None,
    )
    .map_err(|e| anyhow::anyhow!("the benchmark's own spec: {e}"))?;
    let started = Instant::now();
    let cpu_before = cpu_seconds_of(pid);
    client.deploy(&spec, ChangeOptions::default()).await?;
    let mut said = 0;
    let running = loop {
        let status = client.app(&spec.id()).await?.value;
        let running = status.instances.iter().filter(|i| i.instance.is_ready()).count();
        if status.deployed {
            break running;
        }
        if running >= said + (args.instances as usize / 10).max(1) {
            progress(format!("{running} of {} running", args.instances));
            said = running;
        }
        if Instant::now() >= deadline {
            break running;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let seconds = started.elapsed().as_secs_f64();
    let (rss, peak) = peak_rss_of(pid);
    let cpu_running = cpu_seconds_of(pid);
    let settle_started = Instant::now();
    let revision_running = client.app(&spec.id()).await?.index;
    if args.settle > 0 && running == args.instances as usize {
        progress(format!("all running; server RSS {rss:.0} MiB; settling for {} s", args.settle));
        tokio::time::sleep(Duration::from_secs(args.settle)).await;
    }
    let (settled_rss, settled_peak) = peak_rss_of(pid);
    let settled_cpu = (cpu_seconds_of(pid) - cpu_running) / settle_started.elapsed().as_secs_f64().max(0.001) * 100.0;
    let sampled = client.usage(Some(&spec.id())).await.map_or(0, |u| u.instances.len());
    let writes_settled = client.app(&spec.id()).await?.index.saturating_sub(revision_running);
    let restart = match args.restart_server {
        Some(down) if running == args.instances as usize => {
            let steps = (spec.id(), args.agents, args.node_timeout);
            Some(
                restart_server(
                    &client,
                    (&steps.0, steps.1, steps.2),
                    server_process,
                    down.as_duration(),
                    deadline,
                    &progress,
                )
                .await?,
            )
        }
        _ => None,
    };
    let loss = if args.kill > 0 && running == args.instances as usize {
        Some(lose_agents(&client, &spec.id(), &mut agents, args.kill, deadline, &progress).await?)
    } else {
        None
    };
    let store_mib = dir_bytes(&dir.join("server")) as f64 / (1 << 20) as f64;
    for agent in agents {
        agent.stop().await;
    }
    let report = ClusterReport {
        agents: args.agents,
        instances: args.instances,
        running,
        seconds_to_running: seconds,
        server_rss_mib: rss,
        server_peak_rss_mib: peak,
        server_cpu_seconds: cpu_running - cpu_before,
        settle_seconds: args.settle,
        server_settled_cpu_percent: settled_cpu,
        store_writes_settled: writes_settled,
        server_settled_rss_mib: settled_rss,
        server_settled_peak_rss_mib: settled_peak,
        instances_sampled: sampled,
        loss,
        restart,
        store_mib,
    };
    match ctx.format {
        Format::Json => println!("{}", serde_json::to_string(&report)?),
        Format::Table => {
            println!(
                "{} of {} instances running on {} simulated agents {:.1} s after the deploy (server CPU {:.1} s); server RSS {:.0} MiB (peak {:.0} MiB); {} s later {:.0} MiB (peak {:.0} MiB) at {:.1} % of a core; store {:.0} MiB on disk",
                report.running,
                report.instances,
                report.agents,
                report.seconds_to_running,
                report.server_cpu_seconds,
                rss,
                peak,
                args.settle,
                settled_rss,
                settled_peak,
                settled_cpu,
                store_mib
            );
            if let Some(r) = &report.restart {
                println!(
                    "server down {:.1} s and back: {:.0} requests/s before, at most {:.0}/s after; every node beating again {}; {} node(s) marked disconnected, {} instance(s) replaced",
                    r.down_seconds,
                    r.requests_per_second_before,
                    r.requests_per_second_peak,
                    r.seconds_to_all_beating.map_or("never".to_string(), |s| format!("after {s:.1} s")),
                    r.nodes_marked_disconnected,
                    r.instances_replaced
                );
            }
            if let Some(loss) = &report.loss {
                let secs = |s: Option<f64>| s.map_or("never".to_string(), |s| format!("after {s:.1} s"));
                println!(
                    "{} agents stopped with {} instances: noticed {}, all running again {}",
                    loss.killed,
                    loss.instances_lost,
                    secs(loss.seconds_to_notice),
                    secs(loss.seconds_to_heal)
                );
            }
        }
    }
    let healed = report.loss.as_ref().is_none_or(|l| l.seconds_to_heal.is_some())
        && report.restart.as_ref().is_none_or(|r| r.seconds_to_all_beating.is_some());
    Ok(if running == args.instances as usize && healed { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

/// Requests the server has answered since it started, less its scrapes of `/metrics`.
async fn requests_answered(client: &Client) -> anyhow::Result<f64> {
    let text = client.metrics_text().await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("berth_server_requests_total{") && !l.contains("route=\"/metrics\""))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum())
}

/// Kills the server, keeps it down for `down`, starts it again and follows the agents' return.
async fn restart_server(
    client: &Client,
    (app, agents, node_timeout): (&str, usize, berth_core::Dur),
    process: &mut ServerProcess<'_>,
    down: Duration,
    deadline: Instant,
    progress: &impl Fn(String),
) -> anyhow::Result<RestartReport> {
    let ready = |status: &berth_api::AppStatus| -> std::collections::HashSet<String> {
        status.instances.iter().filter(|v| v.instance.is_ready()).map(|v| v.instance.id.clone()).collect()
    };
    let before = ready(&client.app(app).await?.value);
    let (first, counted) = (Instant::now(), requests_answered(client).await?);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let rate_before = (requests_answered(client).await? - counted) / first.elapsed().as_secs_f64();
    process.kill().await;
    progress(format!("server killed at {rate_before:.0} requests/s; down for {down:?}"));
    tokio::time::sleep(down).await;
    let restarted_ms = berth_core::now_ms();
    process.start()?;
    let restarted = Instant::now();
    let timeout = berth_plan::heartbeat::schedule(agents, node_timeout.as_millis() as i64).timeout_ms;
    let follow_until = (restarted + Duration::from_millis(timeout as u64 + 5_000)).min(deadline);
    let (mut peak, mut last) = (0.0f64, (restarted, 0.0));
    let mut all_beating = None;
    let mut disconnected = std::collections::HashSet::new();
    // Counted in quarter seconds: agents that all retried on the same beat would land in one.
    let mut looks = 0u64;
    while Instant::now() < follow_until {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let Ok(answered) = requests_answered(client).await else { continue };
        let now = Instant::now();
        peak = peak.max((answered - last.1) / now.duration_since(last.0).as_secs_f64().max(0.001));
        last = (now, answered);
        looks += 1;
        if !looks.is_multiple_of(4) {
            continue;
        }
        let Ok(nodes) = client.nodes().await else { continue };
        disconnected
            .extend(nodes.iter().filter(|n| n.node.status == NodeStatus::Disconnected).map(|n| n.node.id.clone()));
        if all_beating.is_none() && nodes.iter().all(|n| n.node.last_heartbeat >= restarted_ms) {
            all_beating = Some(restarted.elapsed().as_secs_f64());
            progress(format!("every node beating to the restarted server; peak so far {peak:.0} requests/s"));
        }
    }
    let after = ready(&client.app(app).await?.value);
    Ok(RestartReport {
        down_seconds: down.as_secs_f64(),
        requests_per_second_before: rate_before,
        requests_per_second_peak: peak,
        seconds_to_all_beating: all_beating,
        nodes_marked_disconnected: disconnected.len(),
        instances_replaced: before.difference(&after).count(),
    })
}

/// Stops `kill` agents at once and follows the app until every instance is ready again.
async fn lose_agents(
    client: &Client,
    app: &str,
    agents: &mut Vec<Agent>,
    kill: usize,
    deadline: Instant,
    progress: &impl Fn(String),
) -> anyhow::Result<LossReport> {
    let victims: Vec<Agent> = agents.drain(..kill).collect();
    let killed = victims.len();
    let nodes: std::collections::HashSet<String> = victims.iter().map(|a| a.node_id.clone()).collect();
    let before = client.app(app).await?.value;
    let instances_lost =
        before.instances.iter().filter(|v| v.instance.is_ready() && nodes.contains(&v.instance.node)).count();
    let wanted = before.desired as usize;
    let killed_at = Instant::now();
    let stopping: Vec<_> = victims.into_iter().map(|a| tokio::spawn(a.stop())).collect();
    for stop in stopping {
        let _ = stop.await;
    }
    progress(format!("{killed} agents stopped, holding {instances_lost} instances"));
    // Noticed: the server marked every stopped node lost. Healed: then, the app is deployed
    // again (all its instances ready, none of them left on a lost node). A replacement can be
    // ready before the next look, so the count of ready instances cannot tell.
    let mut noticed = None;
    let mut healed = None;
    while Instant::now() < deadline {
        if noticed.is_none() {
            let down = client
                .nodes()
                .await?
                .iter()
                .filter(|n| nodes.contains(&n.node.id) && n.node.status == NodeStatus::Disconnected)
                .count();
            if down == killed {
                noticed = Some(killed_at.elapsed().as_secs_f64());
                progress(format!("the server marked the {killed} nodes disconnected"));
            }
        }
        if noticed.is_some() && client.app(app).await?.value.deployed {
            healed = Some(killed_at.elapsed().as_secs_f64());
            progress(format!("healed: {wanted} of {wanted} running again"));
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(LossReport { killed, instances_lost, seconds_to_notice: noticed, seconds_to_heal: healed })
}

/// Bytes of the files under `dir`, recursively.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
