//! Three `berth server`s on one etcd cluster: one leads, the others hand it every request, and
//! when it dies (SIGKILL) or stalls (SIGSTOP past its lease) another takes over.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use berth_testkit::etcd::EtcdCluster;
use berth_testkit::free_port;
use serde_json::Value;
use tokio::process::{Child, Command};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

struct Servers {
    dir: tempfile::TempDir,
    store: String,
    ports: Vec<u16>,
    children: Vec<Option<Child>>,
    client: reqwest::Client,
    /// `--tls`: HTTPS with the servers' own (shared) CA.
    tls: bool,
}

impl Servers {
    fn start(etcd: &EtcdCluster, n: usize) -> Servers {
        Self::start_tls(etcd, n, false)
    }

    fn start_tls(etcd: &EtcdCluster, n: usize, tls: bool) -> Servers {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("join.token"), "test-join-token-servers").expect("join token");
        let mut servers = Servers {
            dir,
            store: etcd.url(),
            ports: (0..n).map(|_| free_port()).collect(),
            children: (0..n).map(|_| None).collect(),
            client: berth_tls::http(),
            tls,
        };
        // The first makes the secrets key and the admin token; the others find them.
        servers.spawn(0);
        wait_for_file(&servers.data_dir(0).join("admin.token"));
        if tls {
            // Trusting the first server's CA: the others take it from the store.
            let ca = std::fs::read_to_string(servers.data_dir(0).join("tls/ca.pem")).expect("the CA");
            servers.client =
                berth_tls::http_builder_trusting(&berth_tls::Trust::Ca(ca)).expect("trust").build().expect("client");
        }
        for i in 1..n {
            servers.spawn(i);
        }
        servers
    }

    fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.path().join(format!("s{i}"))
    }

    fn spawn(&mut self, i: usize) {
        let mut server = Command::new(BERTH);
        server
            .arg("server")
            .arg("--data-dir")
            .arg(self.data_dir(i))
            .args(["--api", &format!("127.0.0.1:{}", self.ports[i]), "--server-id", &format!("s{i}")])
            .args(["--store", &self.store, "--store-prefix", "/berth-servers"])
            .arg("--join-token-file")
            .arg(self.dir.path().join("join.token"))
            // One key for every server: secrets sealed by one are opened by the others.
            .arg("--secrets-key-file")
            .arg(self.dir.path().join("secrets.key"));
        if self.tls {
            server.arg("--tls");
        }
        self.children[i] = Some(self.launch(&mut server, &format!("s{i}.log")));
    }

    /// Starts `command` with its output in the log file `name` beside the servers'.
    fn launch(&self, command: &mut Command, name: &str) -> Child {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.dir.path().join(name)).expect("log");
        command
            .env("BERTH_LOG", "info")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("start berth")
    }

    fn url(&self, i: usize) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.ports[i])
    }

    fn logs(&self) -> String {
        let names = (0..self.ports.len()).map(|i| format!("s{i}")).chain(["agent".into(), "router".into()]);
        names
            .filter_map(|name| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("{name}.log"))).ok()?;
                Some(format!("--- {name}\n{}\n", berth_testkit::platform::tail(&text, 30)))
            })
            .collect()
    }

    /// The admin token the first server made (the others found tokens in the store already).
    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data_dir(0).join("admin.token")).expect("admin token").trim().to_string()
    }

    async fn get(&self, i: usize, path: &str) -> Option<Value> {
        let answer =
            self.client.get(format!("{}{path}", self.url(i))).bearer_auth(self.admin_token()).send().await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        answer.json().await.ok()
    }

    /// Every live server's view, once they all name the same leader (other than `not`) and
    /// list `count` servers.
    async fn agreed_leader(&self, live: &[usize], not: Option<&str>) -> String {
        wait_until_or_logs(self, "the servers to agree on a leader", Duration::from_secs(20), || async {
            let mut leaders = Vec::new();
            for &i in live {
                let view = self.get(i, "/v1/cluster").await?;
                assert_eq!(view["self"], format!("s{i}"));
                leaders.push(view["leader"].as_str()?.to_string());
            }
            let first = leaders[0].clone();
            (leaders.iter().all(|l| *l == first) && Some(first.as_str()) != not).then_some(first)
        })
        .await
    }

    fn index_of(id: &str) -> usize {
        id.trim_start_matches('s').parse().expect("server id sN")
    }

    async fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.children[i].take() {
            child.start_kill().expect("kill");
            let _ = child.wait().await;
        }
    }

    fn signal(&self, i: usize, signal: nix::sys::signal::Signal) {
        let pid = self.children[i].as_ref().and_then(Child::id).expect("running");
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).expect("signal");
    }
}

async fn wait_until_or_logs<T, F, Fut>(servers: &Servers, what: &str, timeout: Duration, check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    berth_testkit::platform::wait_until_or(what, timeout, check, || servers.logs()).await
}

fn spec() -> &'static str {
    "group: shop\nname: web\ndriver: exec\ninstances: 1\ncommand: [/bin/true]\n"
}

async fn deploy_through(servers: &Servers, i: usize, name: &str) -> (u16, Value) {
    // As berth's own clients do: a 503 with Retry-After (between leaders) is sent again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let answer = servers
            .client
            .put(format!("{}/v1/apps/shop/{name}", servers.url(i)))
            .bearer_auth(servers.admin_token())
            .header("content-type", "application/yaml")
            .body(spec().replace("name: web", &format!("name: {name}")))
            .send()
            .await
            .expect("deploy answered");
        let status = answer.status().as_u16();
        let again = status == 503 && answer.headers().contains_key("retry-after") && Instant::now() < deadline;
        let body = answer.json().await.unwrap_or(Value::Null);
        if !again {
            return (status, body);
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

fn wait_for_file(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(Instant::now() < deadline, "{} was not written", path.display());
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_servers_elect_a_leader_relay_to_it_and_elect_another_when_it_dies() {
    let Some(mut etcd) = EtcdCluster::start("three_servers_elect_a_leader", 3) else { return };
    let mut servers = tokio::task::block_in_place(|| Servers::start(&etcd, 3));
    let leader = servers.agreed_leader(&[0, 1, 2], None).await;
    let view = servers.get(0, "/v1/cluster").await.expect("cluster view");
    let listed: Vec<&str> = view["servers"].as_array().unwrap().iter().filter_map(|s| s["id"].as_str()).collect();
    assert_eq!(listed, ["s0", "s1", "s2"], "{view}");
    assert_eq!(view["servers"].as_array().unwrap().iter().filter(|s| s["leader"] == true).count(), 1, "{view}");

    // A change through a follower is made by the leader and read through the third server.
    let l = Servers::index_of(&leader);
    let (follower, third) = ((l + 1) % 3, (l + 2) % 3);
    let (status, body) = deploy_through(&servers, follower, "web").await;
    assert!((200..300).contains(&status), "deploy through a follower: {status} {body}\n{}", servers.logs());
    let app = servers.get(third, "/v1/apps/shop/web").await.expect("the app, read through the third server");
    assert_eq!(app["id"], "shop/web", "{app}");
    // The leader's audit log names the client, and the server that relayed its request.
    let audit = servers.get(third, "/v1/audit").await.expect("the audit log");
    let deploy = audit.as_array().unwrap().iter().find(|e| e["action"] == "app.deploy").expect("the deploy");
    let address = deploy["address"].as_str().unwrap_or_default();
    assert!(address.starts_with("127.0.0.1:") && address.ends_with(&format!("(via s{follower})")), "{deploy}");

    // The leader dies without a word: another leads within 10 s, and changes go on.
    let killed_at = Instant::now();
    servers.kill(l).await;
    let next = servers.agreed_leader(&[follower, third], Some(&leader)).await;
    let took = killed_at.elapsed();
    assert!(took < Duration::from_secs(10), "a new leader after {took:?}");
    eprintln!("new leader {next} {took:?} after the leader's SIGKILL");
    let (status, body) = deploy_through(&servers, follower, "api").await;
    assert!((200..300).contains(&status), "deploy after the failover: {status} {body}\n{}", servers.logs());

    // One etcd member of three lost, each in turn (whichever one the leader's lease is kept
    // alive through): the servers go on as if nothing happened, past the lease's TTL.
    for member in 0..3 {
        etcd.kill(member);
        let (status, body) = deploy_through(&servers, third, &format!("after-member-{member}-lost")).await;
        assert!((200..300).contains(&status), "deploy with member {member} down: {status} {body}\n{}", servers.logs());
        let steady_until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < steady_until {
            assert_eq!(servers.agreed_leader(&[follower, third], None).await, next, "the same leader throughout");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        tokio::task::block_in_place(|| etcd.restart(member));
    }

    // `berth server ls` through any server shows who leads; given several servers, the CLI
    // moves past the dead one.
    let list = format!("{},{}", servers.url(l), servers.url(third));
    let out = std::process::Command::new(BERTH)
        .args(["server", "ls", "-o", "json", "--server", &list, "--token", &servers.admin_token()])
        .output()
        .expect("berth server ls");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ls: Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(ls["leader"], next.as_str());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_leader_that_stalls_past_its_lease_stops_leading_and_hands_requests_on() {
    let Some(etcd) = EtcdCluster::start("a_leader_that_stalls", 3) else { return };
    let servers = tokio::task::block_in_place(|| Servers::start(&etcd, 3));
    let leader = servers.agreed_leader(&[0, 1, 2], None).await;
    let l = Servers::index_of(&leader);
    let others = [(l + 1) % 3, (l + 2) % 3];

    // Frozen past its lease: the others elect one of theirs.
    servers.signal(l, nix::sys::signal::Signal::SIGSTOP);
    let next = servers.agreed_leader(&others, Some(&leader)).await;
    servers.signal(l, nix::sys::signal::Signal::SIGCONT);

    // Woken, the old leader sees its lease gone: it names the new leader and relays to it.
    let all = [0, 1, 2];
    assert_eq!(servers.agreed_leader(&all, Some(&leader)).await, next);
    let (status, body) = deploy_through(&servers, l, "after-stall").await;
    assert!((200..300).contains(&status), "a deploy through the old leader: {status} {body}\n{}", servers.logs());
    let app = servers.get(others[0], "/v1/apps/shop/after-stall").await;
    assert!(app.is_some(), "the deploy landed\n{}", servers.logs());
}

#[tokio::test(flavor = "multi_thread")]
async fn servers_sharing_a_store_share_one_ca_and_relay_over_https() {
    let Some(etcd) = EtcdCluster::start("servers_share_one_ca", 1) else { return };
    let servers = tokio::task::block_in_place(|| Servers::start_tls(&etcd, 3, true));
    // Every server answers over HTTPS with a certificate of the first one's CA.
    let leader = servers.agreed_leader(&[0, 1, 2], None).await;
    let cas: Vec<String> =
        (0..3).map(|i| std::fs::read_to_string(servers.data_dir(i).join("tls/ca.pem")).expect("a CA file")).collect();
    assert!(cas.iter().all(|ca| *ca == cas[0]), "one CA for all");
    // A change through a follower is relayed to the leader over HTTPS.
    let follower = (Servers::index_of(&leader) + 1) % 3;
    let (status, body) = deploy_through(&servers, follower, "web").await;
    assert!((200..300).contains(&status), "deploy through a follower over HTTPS: {status} {body}\n{}", servers.logs());
}

/// A `berth agent` or `berth router` given every server's address.
fn member(servers: &Servers, args: &[&str], log: &str) -> Child {
    let list: Vec<String> = (0..servers.ports.len()).map(|i| servers.url(i)).collect();
    let mut command = Command::new(BERTH);
    command
        .args(args)
        .arg("--server")
        .arg(list.join(","))
        .arg("--join-token-file")
        .arg(servers.dir.path().join("join.token"));
    servers.launch(&mut command, log)
}

fn cart(image: &str) -> String {
    format!(
        "group: shop\nname: cart\nimage: {image}\ninstances: 4\nports: [8080]\nservices: [cart.test]\n\
         health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\n  grace: 5s\n\
         upgrade:\n  min_healthy_time: 1s\n  progress_deadline: 30s\n"
    )
}

/// The cart's status once `version` has rolled out with four instances in service.
async fn running(servers: &Servers, via: usize, version: u64) -> Option<Value> {
    let status = servers.get(via, "/v1/apps/shop/cart").await?;
    let done = status["version"] == version && status["deployment"]["state"] == "succeeded";
    let live = status["instances"]
        .as_array()?
        .iter()
        .filter(|i| i["in_service"] == true && i["state"] == "running" && i["desired"] == "run")
        .count();
    (done && live == 4).then_some(status)
}

/// Deploys a spec (YAML) at `path` through server `i`.
async fn put_spec(servers: &Servers, i: usize, path: &str, spec: String) {
    let answer = servers
        .client
        .put(format!("{}{path}", servers.url(i)))
        .bearer_auth(servers.admin_token())
        .header("content-type", "application/yaml")
        .body(spec)
        .send()
        .await
        .expect("deploy answered");
    let status = answer.status();
    assert!(status.is_success(), "deploy through s{i}: {status} {}", answer.text().await.unwrap_or_default());
}

#[tokio::test(flavor = "multi_thread")]
async fn the_leader_killed_mid_deploy_loses_nothing_and_the_router_drops_nothing() {
    let Some(docker) = berth_testkit::docker_or_skip("the_leader_killed_mid_deploy").await else { return };
    let Some(etcd) = EtcdCluster::start("the_leader_killed_mid_deploy", 3) else { return };
    let images = berth_testkit::test_images(&docker).await;
    let mut servers = tokio::task::block_in_place(|| Servers::start(&etcd, 3));
    let leader = servers.agreed_leader(&[0, 1, 2], None).await;
    let l = Servers::index_of(&leader);
    let (follower, third) = ((l + 1) % 3, (l + 2) % 3);

    // One machine and one router, each told every server.
    let ports = berth_testkit::port_block();
    let (http, admin) = (format!("127.0.0.1:{}", free_port()), format!("127.0.0.1:{}", free_port()));
    let agent_dir = servers.dir.path().join("agent").display().to_string();
    let router_dir = servers.dir.path().join("router").display().to_string();
    let port_range = format!("{}-{}", ports.0, ports.1);
    let _agent = member(
        &servers,
        &["agent", "--data-dir", &agent_dir, "--driver", "docker", "--pull", "never", "--ports", &port_range],
        "agent.log",
    );
    let _router = member(
        &servers,
        &["router", "--data-dir", &router_dir, "--http", &http, "--router-admin", &admin, "--domain", "berth.test"],
        "router.log",
    );
    let node = wait_until_or_logs(&servers, "the node to be ready", Duration::from_secs(30), || async {
        let nodes = servers.get(third, "/v1/nodes").await?;
        let ready = nodes.as_array()?.iter().find(|n| n["status"] == "ready")?;
        ready["id"].as_str().map(str::to_string)
    })
    .await;
    let _leave_none = berth_testkit::NodeContainers(node.clone());
    wait_until_or_logs(&servers, "the router to report", Duration::from_secs(30), || async {
        let routers = servers.get(third, "/v1/routers").await?;
        routers.as_array()?.iter().any(|r| r["live"] == true).then_some(())
    })
    .await;

    // v1 through a follower; traffic through the router from then on.
    put_spec(&servers, follower, "/v1/apps/shop/cart", cart(&images.v1)).await;
    wait_until_or_logs(&servers, "v1 to run", Duration::from_secs(60), || running(&servers, third, 1)).await;
    let load = berth_testkit::Load::start(&http, "cart.test", 4, Some(Duration::from_millis(5)));
    wait_until_or_logs(&servers, "traffic to flow", Duration::from_secs(10), || async {
        (load.versions_since_mark().values().sum::<u64>() > 50).then_some(())
    })
    .await;

    // v2 rolls out; once its first instance is placed, the leader dies without a word.
    put_spec(&servers, follower, "/v1/apps/shop/cart", cart(&images.v2)).await;
    wait_until_or_logs(&servers, "the rollout to begin", Duration::from_secs(30), || async {
        let status = servers.get(third, "/v1/apps/shop/cart").await?;
        status["instances"].as_array()?.iter().any(|i| i["version"] == 2).then_some(())
    })
    .await;
    let killed_at = Instant::now();
    servers.kill(l).await;
    let next = servers.agreed_leader(&[follower, third], Some(&leader)).await;
    let took = killed_at.elapsed();
    eprintln!("new leader {next} {took:?} after the leader's SIGKILL mid-deploy");
    assert!(took < Duration::from_secs(10), "a new leader after {took:?}");

    // The new leader carries the deployment to success; nothing acknowledged was lost.
    let deadline = Instant::now() + Duration::from_secs(90);
    let status = loop {
        if let Some(status) = running(&servers, third, 2).await {
            break status;
        }
        if Instant::now() > deadline {
            let status = servers.get(third, "/v1/apps/shop/cart").await;
            let events = servers.get(third, "/v1/events").await;
            panic!("v2 did not finish: {status:#?}\nevents: {events:#?}\n{}", servers.logs());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    load.mark();
    wait_until_or_logs(&servers, "v2 answers", Duration::from_secs(10), || async {
        (load.versions_since_mark().values().sum::<u64>() > 100).then_some(())
    })
    .await;
    let report = load.finish().await;
    assert_eq!(report.versions_since_mark.keys().collect::<Vec<_>>(), ["v2"], "{:?}", report.versions_since_mark);
    report.assert_clean(1000);

    // No instance started twice: one container per live instance, each named once.
    let live: Vec<String> = status["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "running")
        .filter_map(|i| i["id"].as_str().map(str::to_string))
        .collect();
    assert_eq!(live.len(), 4, "{status}");
    wait_until_or_logs(&servers, "the v1 containers to go", Duration::from_secs(30), || async {
        (berth_testkit::node_containers(&docker, &node).await.len() == 4).then_some(())
    })
    .await;
}

/// Every run of `ops/tick` kept, through server `i`, oldest first.
async fn tick_runs(servers: &Servers, i: usize) -> Option<Vec<Value>> {
    let job = servers.get(i, "/v1/jobs/ops/tick").await?;
    let mut runs = job["runs"].as_array()?.clone();
    runs.sort_by_key(|r| r["number"].as_u64());
    Some(runs)
}

#[tokio::test(flavor = "multi_thread")]
async fn a_jobs_scheduled_times_run_once_across_a_leader_change() {
    let Some(etcd) = EtcdCluster::start("a_jobs_scheduled_times_run_once", 3) else { return };
    let mut servers = tokio::task::block_in_place(|| Servers::start(&etcd, 2));
    let leader = servers.agreed_leader(&[0, 1], None).await;
    let l = Servers::index_of(&leader);
    let other = 1 - l;
    let ports = berth_testkit::port_block();
    let agent_dir = servers.dir.path().join("agent").display().to_string();
    let port_range = format!("{}-{}", ports.0, ports.1);
    let _agent =
        member(&servers, &["agent", "--data-dir", &agent_dir, "--driver", "exec", "--ports", &port_range], "agent.log");
    wait_until_or_logs(&servers, "the node to be ready", Duration::from_secs(30), || async {
        let nodes = servers.get(other, "/v1/nodes").await?;
        nodes.as_array()?.iter().any(|n| n["status"] == "ready").then_some(())
    })
    .await;
    let spec =
        "kind: job\ngroup: ops\nname: tick\ndriver: exec\ncommand: [/bin/sh, -c, 'sleep 0.2']\nschedule: R//PT1S\n";
    put_spec(&servers, other, "/v1/jobs/ops/tick", spec.to_string()).await;
    let ran = |runs: &[Value], after: i64| {
        runs.iter().filter(|r| r["state"] == "succeeded" && r["scheduled_at"].as_i64() > Some(after)).count()
    };
    wait_until_or_logs(&servers, "three runs under the first leader", Duration::from_secs(30), || async {
        (ran(&tick_runs(&servers, other).await?, 0) >= 3).then_some(())
    })
    .await;

    let killed_at = berth_core::now_ms();
    servers.kill(l).await;
    servers.agreed_leader(&[other], Some(&leader)).await;
    let runs = wait_until_or_logs(&servers, "three runs under the next leader", Duration::from_secs(30), || async {
        let runs = tick_runs(&servers, other).await?;
        (ran(&runs, killed_at) >= 3).then_some(runs)
    })
    .await;
    // No scheduled time ran twice, and every time is on the schedule (1 s from the deploy).
    let mut times: Vec<i64> = runs.iter().map(|r| r["scheduled_at"].as_i64().expect("a time")).collect();
    let first = times[0];
    assert!(times.iter().all(|t| (t - first) % 1000 == 0), "times off the schedule: {times:?}");
    let n = times.len();
    times.sort_unstable();
    times.dedup();
    assert_eq!(times.len(), n, "a scheduled time ran twice across the leader change: {runs:#?}");
    // The times no leader could start in time are said, in one record, not run late in a burst.
    for r in runs.iter().filter(|r| r["state"] == "missed") {
        assert_eq!(r["reason"]["kind"], "missed", "{r}");
    }
    let numbers: Vec<u64> = runs.iter().filter_map(|r| r["number"].as_u64()).collect();
    assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1), "run numbers in order, none lost: {numbers:?}");
}
