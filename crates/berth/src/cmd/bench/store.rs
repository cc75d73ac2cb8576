//! `berth bench api`: API writes per second and their latency on the embedded store (redb) and
//! on a three-member etcd cluster, measured in the same run, the same way.
//! `berth bench failover`: three servers on etcd; the leader is killed (SIGKILL) again and again,
//! and the time until the others name a new leader is measured.
//!
//! Every process under test (servers, etcd members) runs in its own session (`setsid`), started
//! with the shipped defaults; etcd is Debian's, from PATH.

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use berth_api::{ChangeOptions, Client};
use berth_core::AppSpec;
use serde::Serialize;

use crate::cmd::Ctx;
use crate::output::Format;

#[derive(Debug, clap::Args)]
pub struct ApiArgs {
    /// Clients writing at once.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// How long each store is written to.
    #[arg(long, default_value_t = 20)]
    seconds: u64,
    /// Apps each client deploys and scales in turn.
    #[arg(long, default_value_t = 4)]
    apps_per_client: usize,
}

#[derive(Debug, clap::Args)]
pub struct FailoverArgs {
    /// Leaders killed, one after another.
    #[arg(long, default_value_t = 10)]
    kills: usize,
}

#[derive(Debug, Serialize)]
struct ApiReport {
    clients: usize,
    seconds: u64,
    redb: WriteFigures,
    etcd: WriteFigures,
    /// etcd's writes per second over redb's.
    etcd_over_redb_throughput: f64,
    /// etcd's p99 over redb's.
    etcd_over_redb_p99: f64,
}

#[derive(Debug, Serialize)]
struct WriteFigures {
    store: String,
    writes: usize,
    failed: usize,
    writes_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
}

#[derive(Debug, Serialize)]
struct FailoverReport {
    kills: usize,
    /// From the SIGKILL until every surviving server names the same new leader.
    seconds: Vec<f64>,
    median_seconds: f64,
    max_seconds: f64,
}

/// A process under test, in a session of its own, killed with the bench.
struct Process {
    child: tokio::process::Child,
}

impl Process {
    fn start(program: &Path, args: &[String], log: &Path) -> anyhow::Result<Process> {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log)?;
        let child = tokio::process::Command::new("setsid")
            .arg(program)
            .args(args)
            .env("BERTH_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Process { child })
    }

    async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = self.child.wait().await;
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn etcd_binary() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|d| d.join("etcd"))
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("etcd is not installed (Debian: apt-get install etcd-server)"))
}

/// Three etcd members with Debian's defaults, on loopback.
async fn start_etcd(dir: &Path) -> anyhow::Result<(Vec<Process>, String)> {
    let etcd = etcd_binary()?;
    let ports: Vec<(u16, u16)> = (0..3).map(|_| Ok((free_port()?, free_port()?))).collect::<anyhow::Result<_>>()?;
    let cluster: Vec<String> =
        ports.iter().enumerate().map(|(i, (_, p))| format!("m{i}=http://127.0.0.1:{p}")).collect();
    let mut members = Vec::new();
    for (i, (client, peer)) in ports.iter().enumerate() {
        let (client, peer) = (format!("http://127.0.0.1:{client}"), format!("http://127.0.0.1:{peer}"));
        let args: Vec<String> = [
            "--name",
            &format!("m{i}"),
            "--data-dir",
            &dir.join(format!("m{i}")).display().to_string(),
            "--listen-client-urls",
            &client,
            "--advertise-client-urls",
            &client,
            "--listen-peer-urls",
            &peer,
            "--initial-advertise-peer-urls",
            &peer,
            "--initial-cluster",
            &cluster.join(","),
            "--initial-cluster-state",
            "new",
            "--log-level",
            "warn",
            "--logger",
            "zap",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        members.push(Process::start(&etcd, &args, &dir.join(format!("m{i}.log")))?);
    }
    let url = format!("etcd://{}", ports.iter().map(|(c, _)| format!("127.0.0.1:{c}")).collect::<Vec<_>>().join(","));
    Ok((members, url))
}

/// `berth server` named `name` on `port`, with the shipped defaults but for its store; its
/// data dir and log under `dir`.
fn spawn_server(dir: &Path, name: &str, port: u16, store: Option<&str>) -> anyhow::Result<Process> {
    let mut args: Vec<String> = vec!["server".into(), "--data-dir".into(), dir.join(name).display().to_string()];
    args.extend(["--api".into(), format!("127.0.0.1:{port}"), "--server-id".into(), name.into()]);
    args.extend(["--join-token-file".into(), dir.join("join.token").display().to_string()]);
    args.extend(["--secrets-key-file".into(), dir.join("secrets.key").display().to_string()]);
    if let Some(store) = store {
        args.extend(["--store".into(), store.into()]);
    }
    Process::start(&std::env::current_exe()?, &args, &dir.join(format!("{name}.log")))
}

/// A server on a free port, and a client of it.
async fn start_server(dir: &Path, name: &str, store: Option<&str>) -> anyhow::Result<(Process, Client, u16)> {
    let port = free_port()?;
    let process = spawn_server(dir, name, port, store)?;
    Ok((process, Client::new(&format!("http://127.0.0.1:{port}"))?, port))
}

/// Waits for the admin token any server of `dir` wrote (the first one up makes it).
async fn admin_token(dir: &Path, names: &[&str]) -> anyhow::Result<String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        for name in names {
            if let Ok(token) = std::fs::read_to_string(dir.join(name).join(berth_server::ADMIN_TOKEN_FILE)) {
                return Ok(token.trim().to_string());
            }
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "no server wrote an admin token within 60 s (logs in {})",
            dir.display()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// `clients` loops for `seconds`, each deploying a new version of one of its apps and then
/// scaling it, over and over; every write is timed.
async fn write_load(client: &Client, args: &ApiArgs, store: &str) -> anyhow::Result<WriteFigures> {
    let deadline = Instant::now() + Duration::from_secs(args.seconds);
    let began = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..args.clients {
        let (client, apps) = (client.clone(), args.apps_per_client);
        tasks.push(tokio::spawn(async move {
            let (mut times, mut failed, mut n) = (Vec::new(), 0usize, 0u64);
            let force = ChangeOptions { force: true, canary: None };
            while Instant::now() < deadline {
                let name = format!("c{c}-{}", n % apps as u64);
                let yaml = format!(
                    "group: bench\nname: {name}\ndriver: exec\ninstances: 1\ncommand: [/bin/true]\nenvironment: {{N: \"{n}\"}}\n"
                );
                let Ok(spec) = AppSpec::from_yaml(&yaml, None) else { return (times, failed + 1) };
                let started = Instant::now();
                match client.deploy(&spec, force).await {
                    Ok(_) => times.push(started.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => failed += 1,
                }
                let started = Instant::now();
                match client.scale(&spec.id(), 1 + (n % 3) as u32, force).await {
                    Ok(_) => times.push(started.elapsed().as_secs_f64() * 1000.0),
                    Err(_) => failed += 1,
                }
                n += 1;
            }
            (times, failed)
        }));
    }
    let mut all = Vec::new();
    let mut failed = 0;
    for task in tasks {
        let (times, f) = task.await?;
        all.extend(times);
        failed += f;
    }
    let elapsed = began.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok(WriteFigures {
        store: store.into(),
        writes: all.len(),
        failed,
        writes_per_second: all.len() as f64 / elapsed,
        p50_ms: percentile(&all, 50.0),
        p99_ms: percentile(&all, 99.0),
        max_ms: all.last().copied().unwrap_or(0.0),
    })
}

pub async fn api(args: &ApiArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("join.token"), "bench-join-token")?;
    let say = |line: String| {
        if ctx.format == Format::Table {
            eprintln!("{line}");
        }
    };
    // redb first, then etcd, each alone on the machine.
    let (mut server, client, _) = start_server(dir.path(), "redb", None).await?;
    let client = client.with_credential(admin_token(dir.path(), &["redb"]).await?);
    say(format!("redb: {} clients writing for {} s", args.clients, args.seconds));
    let redb = write_load(&client, args, "redb").await;
    server.kill().await;
    let redb = redb?;

    let (mut members, url) = start_etcd(dir.path()).await?;
    let (mut server, client, _) = start_server(dir.path(), "etcd", Some(&url)).await?;
    let client = client.with_credential(admin_token(dir.path(), &["etcd"]).await?);
    say(format!("etcd (3 members): {} clients writing for {} s", args.clients, args.seconds));
    let etcd = write_load(&client, args, "etcd, 3 members").await;
    server.kill().await;
    for m in &mut members {
        m.kill().await;
    }
    let etcd = etcd?;
    let report = ApiReport {
        clients: args.clients,
        seconds: args.seconds,
        etcd_over_redb_throughput: etcd.writes_per_second / redb.writes_per_second.max(f64::MIN_POSITIVE),
        etcd_over_redb_p99: etcd.p99_ms / redb.p99_ms.max(f64::MIN_POSITIVE),
        redb,
        etcd,
    };
    match ctx.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => {
            let rows = [&report.redb, &report.etcd]
                .iter()
                .map(|f| {
                    vec![
                        f.store.clone(),
                        f.writes.to_string(),
                        f.failed.to_string(),
                        format!("{:.0}", f.writes_per_second),
                        format!("{:.1}", f.p50_ms),
                        format!("{:.1}", f.p99_ms),
                    ]
                })
                .collect();
            println!("{}", crate::output::table(&["STORE", "WRITES", "FAILED", "WRITES/S", "P50 MS", "P99 MS"], rows));
            println!(
                "etcd/redb: {:.2}x the throughput, {:.2}x the p99",
                report.etcd_over_redb_throughput, report.etcd_over_redb_p99
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The leader every server in `live` names, once they agree.
async fn agreed_leader(clients: &[(usize, Client)], not: Option<&str>, deadline: Instant) -> anyhow::Result<String> {
    loop {
        let mut named = Vec::new();
        for (_, client) in clients {
            match client.cluster().await {
                Ok(view) => named.push(view.leader),
                Err(_) => named.push(None),
            }
        }
        if let Some(Some(first)) = named.first()
            && named.iter().all(|n| n.as_deref() == Some(first.as_str()))
            && Some(first.as_str()) != not
        {
            return Ok(first.clone());
        }
        anyhow::ensure!(Instant::now() < deadline, "the servers did not agree on a leader in time: {named:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn failover(args: &FailoverArgs, ctx: &Ctx) -> anyhow::Result<ExitCode> {
    let dir = tempfile::tempdir()?;
    std::fs::write(dir.path().join("join.token"), "bench-join-token")?;
    let (mut members, url) = start_etcd(dir.path()).await?;
    let names = ["s0", "s1", "s2"];
    let mut servers = Vec::new();
    // The first makes the admin token and the secrets key; the others find them.
    for (i, name) in names.iter().enumerate() {
        servers.push(start_server(dir.path(), name, Some(&url)).await?);
        if i == 0 {
            admin_token(dir.path(), &names).await?;
        }
    }
    let token = admin_token(dir.path(), &names).await?;
    let clients: Vec<(usize, Client)> =
        servers.iter().enumerate().map(|(i, (_, c, _))| (i, c.clone().with_credential(token.clone()))).collect();
    let mut leader = agreed_leader(&clients, None, Instant::now() + Duration::from_secs(60)).await?;
    let mut seconds = Vec::new();
    for kill in 0..args.kills {
        let l = names.iter().position(|n| *n == leader).context("the leader is none of the servers")?;
        servers[l].0.kill().await;
        let killed = Instant::now();
        let live: Vec<(usize, Client)> = clients.iter().filter(|(i, _)| *i != l).cloned().collect();
        let next = agreed_leader(&live, Some(&leader), killed + Duration::from_secs(60)).await?;
        let took = killed.elapsed().as_secs_f64();
        if ctx.format == Format::Table {
            eprintln!("kill {}: {leader} killed, {next} leads {took:.2} s later", kill + 1);
        }
        seconds.push(took);
        // The killed one comes back, as a follower, before the next kill.
        servers[l].0 = spawn_server(dir.path(), names[l], servers[l].2, Some(&url))?;
        agreed_leader(&clients, None, Instant::now() + Duration::from_secs(60)).await?;
        leader = next;
    }
    for (process, _, _) in &mut servers {
        process.kill().await;
    }
    for m in &mut members {
        m.kill().await;
    }
    let mut sorted = seconds.clone();
    sorted.sort_by(f64::total_cmp);
    let report = FailoverReport {
        kills: args.kills,
        median_seconds: percentile(&sorted, 50.0),
        max_seconds: sorted.last().copied().unwrap_or(0.0),
        seconds,
    };
    match ctx.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        Format::Table => println!(
            "{} leader kills: a new leader after {:.2} s (median), {:.2} s (max)",
            report.kills, report.median_seconds, report.max_seconds
        ),
    }
    Ok(ExitCode::SUCCESS)
}
