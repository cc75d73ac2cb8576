//! `cargo bench -p berth --bench router`: Berth's router beside nginx, in one run on one machine.
//!
//! 1. Requests/s, p99, and the proxy's CPU per request (user and kernel, from /proc) through
//!    `berth router` and through nginx, both proxying with keep-alive to the same origin (an
//!    nginx `return 200`), 2 worker threads each, loaded by wrk.
//! 2. The same with a rule on Berth's path: a simple rule (which runs natively), and the same rule
//!    written so that it needs the Lua VM.
//! 3. The same healthy upstream while a neighbour's rule is made pathological by the requests
//!    sent to it (a pattern that costs N³ steps for a path of N slashes), beside the undisturbed
//!    figure.
//! 4. Time from an instance's death to the router no longer offering it.
//! 5. The launch rate of an always-failing instance beside healthy siblings, beside the backoff
//!    curve it must follow.
//!
//! Every process under test starts in its own session (`setsid`), as the load generator does not:
//! with autogroup scheduling a process sharing wrk's session would share its CPU share.
//!
//! Needs Debian's nginx and wrk. `BERTH_BENCH_ROUNDS` (default 3), `BERTH_BENCH_SECONDS` (default
//! 10), `BERTH_BENCH_CRASH_SECONDS` (default 60).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use berth_testkit::procfs::{children, cpu_split};
use berth_testkit::{Platform, wait_until};

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

/// `cmd` started in a session of its own.
fn own_session(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe and touches nothing of the parent's.
    #[allow(unsafe_code)]
    unsafe {
        cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
    }
    cmd
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

struct Guard(Vec<Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: an nginx master killed outright leaves its workers behind.
        for c in &mut self.0 {
            let _ = Command::new("kill").args(["-TERM", &c.id().to_string()]).status();
        }
        for c in &mut self.0 {
            let _ = c.wait();
        }
    }
}

fn nginx(dir: &Path, name: &str, body: &str) -> Child {
    let conf = dir.join(format!("{name}.conf"));
    let tmp = dir.join(name);
    std::fs::create_dir_all(&tmp).unwrap();
    let text = format!(
        "daemon off;\nmaster_process on;\nworker_processes 2;\nuser root;\npid {t}/nginx.pid;\nerror_log {t}/error.log warn;\n\
         events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  client_body_temp_path {t}/body;\n  proxy_temp_path {t}/proxy;\n\
         fastcgi_temp_path {t}/fcgi;\n  uwsgi_temp_path {t}/uwsgi;\n  scgi_temp_path {t}/scgi;\n  keepalive_requests 1000000;\n{body}\n}}\n",
        t = tmp.display()
    );
    std::fs::write(&conf, text).unwrap();
    own_session(&mut Command::new("nginx"))
        .args(["-c"])
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("nginx (apt-get install nginx)")
}

fn wait_port(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "port {port} never opened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// One wrk run against a proxy.
#[derive(Clone, Copy)]
struct Run {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
    /// The proxy's CPU per request, in microseconds.
    user_us: f64,
    system_us: f64,
}

/// wrk prints the 50th, 99th and 99.9th latency percentiles (µs) with this script.
const PERCENTILES: &str = "done = function(summary, latency, requests)\n  \
    io.write(string.format(\"P50 %d\\nP99 %d\\nP999 %d\\n\", latency:percentile(50), latency:percentile(99), latency:percentile(99.9)))\nend\n";

/// Runs wrk against the proxy on `port` whose processes are `pids`.
fn wrk(port: u16, seconds: u64, pids: &[u32]) -> Run {
    let cpu = || pids.iter().map(|p| cpu_split(*p)).fold((0.0, 0.0), |a, c| (a.0 + c.0, a.1 + c.1));
    let script = std::env::temp_dir().join(format!("berth-bench-percentiles-{}.lua", std::process::id()));
    std::fs::write(&script, PERCENTILES).unwrap();
    let before = cpu();
    let out = Command::new("wrk")
        .args(["-t2", "-c64", &format!("-d{seconds}s"), "--latency", "-H", "Host: bench.test", "-s"])
        .arg(&script)
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .expect("wrk (apt-get install wrk)");
    let text = String::from_utf8_lossy(&out.stdout);
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("wrk output: {text}"));
    let percentile = |key: &str| -> f64 {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .map_or(f64::NAN, |us| us / 1000.0)
    };
    assert!(!text.contains("Non-2xx"), "non-2xx answers under load:\n{text}");
    let after = cpu();
    let requests: f64 = text
        .lines()
        .find_map(|l| l.trim().split_once(" requests in").and_then(|(n, _)| n.trim().parse().ok()))
        .unwrap_or(f64::NAN);
    let per_request = |seconds: f64| seconds * 1e6 / requests;
    Run {
        rps,
        p50_ms: percentile("P50 "),
        p99_ms: percentile("P99 "),
        p999_ms: percentile("P999 "),
        user_us: per_request(after.0 - before.0),
        system_us: per_request(after.1 - before.1),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

async fn throughput(rounds: usize, seconds: u64) {
    let dir = tempfile::tempdir().unwrap();
    let (origin, proxy, api, http, admin) = (free_port(), free_port(), free_port(), free_port(), free_port());
    let mut guard = Guard(Vec::new());
    guard.0.push(nginx(
        dir.path(),
        "origin",
        &format!("  server {{ listen 127.0.0.1:{origin}; location / {{ return 200 \"hello\\n\"; }} }}"),
    ));
    guard.0.push(nginx(
        dir.path(),
        "proxy",
        &format!(
            "  upstream origin {{ server 127.0.0.1:{origin}; keepalive 128; }}\n  server {{ listen 127.0.0.1:{proxy};\n    \
             location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }} }}"
        ),
    ));
    guard.0.push(
        own_session(&mut Command::new(BERTH))
            .args(["server", "--api", &format!("127.0.0.1:{api}"), "--data-dir"])
            .arg(dir.path().join("berth"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    wait_port(api);
    guard.0.push(
        own_session(&mut Command::new(BERTH))
            .args(["router", "--server", &format!("http://127.0.0.1:{api}"), "--join-token-file"])
            .arg(dir.path().join("berth/join.token"))
            .arg("--data-dir")
            .arg(dir.path().join("router"))
            .args(["--http", &format!("127.0.0.1:{http}"), "--router-admin", &format!("127.0.0.1:{admin}")])
            .env("TOKIO_WORKER_THREADS", "2")
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    // The same three with their access logs on: nginx with a JSON line of the same fields,
    // `berth router --access-log`, and `berth up` as it ships (its log is on by default).
    let (proxy_log, http_log, admin_log) = (free_port(), free_port(), free_port());
    guard.0.push(nginx(
        dir.path(),
        "proxy-log",
        &format!(
            "  log_format berth escape=json '{{\"ts\":\"$msec\",\"remote\":\"$remote_addr:$remote_port\",\"method\":\"$request_method\",\"host\":\"$host\",\"path\":\"$request_uri\",\"status\":$status,\"bytes\":$body_bytes_sent,\"ms\":$request_time,\"upstream\":\"$upstream_addr\"}}';\n  \
             upstream origin {{ server 127.0.0.1:{origin}; keepalive 128; }}\n  server {{ listen 127.0.0.1:{proxy_log};\n    access_log {log} berth;\n    \
             location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }} }}",
            log = dir.path().join("nginx-access.log").display()
        ),
    ));
    guard.0.push(
        own_session(&mut Command::new(BERTH))
            .args(["router", "--server", &format!("http://127.0.0.1:{api}"), "--join-token-file"])
            .arg(dir.path().join("berth/join.token"))
            .arg("--data-dir")
            .arg(dir.path().join("router-log"))
            .args(["--http", &format!("127.0.0.1:{http_log}"), "--router-admin", &format!("127.0.0.1:{admin_log}")])
            .arg("--access-log")
            .arg(dir.path().join("router-access.log"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (up_api, up_http, up_admin) = (free_port(), free_port(), free_port());
    guard.0.push(
        own_session(&mut Command::new(BERTH))
            .args(["up", "--api", &format!("127.0.0.1:{up_api}"), "--http", &format!("127.0.0.1:{up_http}")])
            .args(["--router-admin", &format!("127.0.0.1:{up_admin}"), "--data-dir"])
            .arg(dir.path().join("berth-up"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    for p in [origin, proxy, http, admin, proxy_log, http_log, admin_log, up_http, up_admin] {
        wait_port(p);
    }
    let nginx_workers = children(guard.0[1].id());
    assert_eq!(nginx_workers.len(), 2, "the nginx proxy runs 2 workers");
    let nginx_log_workers = children(guard.0[4].id());
    assert_eq!(nginx_log_workers.len(), 2, "the logging nginx proxy runs 2 workers");
    let router_pid = [guard.0[3].id()];
    let router_log_pid = [guard.0[5].id()];
    let up_pid = [guard.0[6].id()];
    // Changes through a router's admin API go to its server with the caller's API token: the
    // admin tokens the two servers wrote at first start.
    let token_of = |data: &str| {
        let path = dir.path().join(data).join("admin.token");
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())).trim().to_string()
    };
    let (token, up_token) = (token_of("berth"), token_of("berth-up"));
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("x-berth-token", token.parse().unwrap());
    let client = berth_tls::http_builder().default_headers(headers).build().unwrap();
    let put = |path: String, body: String, ct: &'static str, token: String| {
        let client = client.clone();
        async move {
            let r = client
                .put(path)
                .header("content-type", ct)
                .header("x-berth-token", token)
                .body(body)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
        }
    };
    for (admin, token) in [(admin, token.clone()), (up_admin, up_token)] {
        put(
            format!("http://127.0.0.1:{admin}/upstream/bench.test"),
            format!("{{\"servers\": [{{\"host\": \"127.0.0.1\", \"port\": {origin}}}]}}"),
            "application/json",
            token,
        )
        .await;
    }
    // The logging router follows the same server: it serves bench.test once it has the snapshot.
    wait_until("the logging router to route bench.test", Duration::from_secs(10), || {
        let client = client.clone();
        async move {
            let r = client.get(format!("http://127.0.0.1:{http_log}/")).header("host", "bench.test").send().await;
            r.ok().filter(|r| r.status() == 200).map(|_| ())
        }
    })
    .await;

    // The neighbour: its own upstream, with a rule that an ordinary-looking request makes
    // pathological.
    put(
        format!("http://127.0.0.1:{admin}/upstream/evil.test"),
        format!("{{\"servers\": [{{\"host\": \"127.0.0.1\", \"port\": {origin}}}]}}"),
        "application/json",
        token.clone(),
    )
    .await;
    let evil_rule = "if req.path:find(\"^/api/.-/.-/.-/admin\") then return deny(403, \"no admin\") end\n";
    let r = client
        .put(format!("http://127.0.0.1:{admin}/lua/upstream/evil.test"))
        .header("content-type", "text/x-lua")
        .body(evil_rule)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());

    let rule_url = format!("http://127.0.0.1:{admin}/lua/upstream/bench.test");
    // The same rule twice: as written it runs natively; with a call of Lua's own `tostring`,
    // which only the VM has, it needs the VM.
    let native_rule = "if req.method == \"DELETE\" then return deny(403, \"no deletes here\") end\nset_header(\"X-Checked\", \"1\")\n";
    let vm_rule = "if req.method == \"DELETE\" then return deny(403, \"no deletes here\") end\nset_header(\"X-Checked\", tostring(1))\n";
    let set_rule = |source: &'static str, engine: &'static str| {
        let client = client.clone();
        let url = rule_url.clone();
        let listing = format!("http://127.0.0.1:{admin}/lua");
        let probe = format!("http://127.0.0.1:{http}/");
        async move {
            let r = client.put(url).header("content-type", "text/x-lua").body(source).send().await.unwrap();
            assert!(r.status().is_success(), "{}", r.text().await.unwrap_or_default());
            // In force, and on the engine this row is about, before anything is measured.
            wait_until("the rule in force on its engine", Duration::from_secs(5), || {
                let client = client.clone();
                let (listing, probe) = (listing.clone(), probe.clone());
                async move {
                    let scripts: serde_json::Value = client.get(listing).send().await.ok()?.json().await.ok()?;
                    let on_engine = scripts.as_array()?.iter().any(|s| s["engine"] == engine);
                    let denied = client.delete(probe).header("host", "bench.test").send().await.ok()?.status() == 403;
                    (on_engine && denied).then_some(())
                }
            })
            .await;
        }
    };
    let drop_rule = || {
        let client = client.clone();
        let url = rule_url.clone();
        async move {
            let r = client.delete(url).send().await.unwrap();
            assert!(r.status().is_success());
            // Routers apply changes within milliseconds; this leaves no doubt.
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    };
    // Warm up, then run nginx, Berth, and Berth with each rule in every round (rotating who goes
    // first) so that drift on a shared machine hits all four alike.
    wrk(proxy, 2, &nginx_workers);
    wrk(http, 2, &router_pid);
    wrk(proxy_log, 2, &nginx_log_workers);
    wrk(http_log, 2, &router_log_pid);
    wrk(up_http, 2, &up_pid);
    let (mut n, mut b, mut native, mut vm) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let (mut attacked, mut attacks) = (Vec::new(), Vec::new());
    let (mut n_log, mut b_log, mut up) = (Vec::new(), Vec::new(), Vec::new());
    const STEPS: usize = 8;
    for round in 0..rounds {
        for step in 0..STEPS {
            match (round + step) % STEPS {
                5 => n_log.push(wrk(proxy_log, seconds, &nginx_log_workers)),
                6 => b_log.push(wrk(http_log, seconds, &router_log_pid)),
                7 => up.push(wrk(up_http, seconds, &up_pid)),
                0 => n.push(wrk(proxy, seconds, &nginx_workers)),
                1 => b.push(wrk(http, seconds, &router_pid)),
                2 => {
                    set_rule(native_rule, "native").await;
                    native.push(wrk(http, seconds, &router_pid));
                    drop_rule().await;
                }
                3 => {
                    set_rule(vm_rule, "lua").await;
                    vm.push(wrk(http, seconds, &router_pid));
                    drop_rule().await;
                }
                4 => {
                    let attack = Attacker::start(http);
                    let run = tokio::task::spawn_blocking(move || wrk(http, seconds, &router_pid)).await.unwrap();
                    attacked.push(run);
                    attacks.push(attack.stop().await);
                }
                _ => unreachable!(),
            }
        }
        let last = |v: &Vec<Run>| v.last().map_or(f64::NAN, |r| r.rps);
        println!(
            "round {round}: nginx {:.0}, berth {:.0}, berth+rule {:.0}, berth+rule in VM {:.0}, berth beside a pathological rule {:.0}, \
             nginx+log {:.0}, berth+log {:.0}, berth up {:.0} req/s",
            last(&n),
            last(&b),
            last(&native),
            last(&vm),
            last(&attacked),
            last(&n_log),
            last(&b_log),
            last(&up),
        );
    }
    let med = |runs: &[Run], f: fn(&Run) -> f64| median(runs.iter().map(f).collect());
    let n_rps = med(&n, |r| r.rps);
    let b_rps = med(&b, |r| r.rps);
    let n_log_rps = med(&n_log, |r| r.rps);
    println!("\n## router throughput ({rounds} interleaved rounds of {seconds}s, wrk -t2 -c64, median)\n");
    println!(
        "| proxy | requests/s | p50 ms | p99 ms | p99.9 ms | user CPU µs/req | kernel CPU µs/req | vs nginx, same logging (req/s) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (name, runs, peer) in [
        ("nginx 1.22 (2 workers, upstream keepalive), no access log", &n, n_rps),
        ("berth router (2 workers), no access log", &b, n_rps),
        ("berth router + rule (native)", &native, n_rps),
        ("berth router + same rule in the Lua VM", &vm, n_rps),
        ("nginx 1.22, access_log (JSON line, same fields)", &n_log, n_log_rps),
        ("berth router --access-log", &b_log, n_log_rps),
        ("berth up, as shipped (access log on)", &up, n_log_rps),
    ] {
        let rps = med(runs, |r| r.rps);
        println!(
            "| {name} | {rps:.0} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            med(runs, |r| r.p50_ms),
            med(runs, |r| r.p99_ms),
            med(runs, |r| r.p999_ms),
            med(runs, |r| r.user_us),
            med(runs, |r| r.system_us),
            rps / peer
        );
    }
    let per_round = |a: &[Run], b: &[Run]| {
        a.iter().zip(b).map(|(x, y)| format!("{:.2}", x.rps / y.rps)).collect::<Vec<_>>().join(", ")
    };
    println!("\nberth up / nginx with its log, per round: {}", per_round(&up, &n_log));
    println!("berth router --access-log / nginx with its log, per round: {}", per_round(&b_log, &n_log));
    println!("berth up / standalone berth router with its log, per round: {}", per_round(&up, &b_log));
    // The tail moves with the scheduler on shared cores: each round's p99 beside its peer's.
    let p99_rounds = |a: &[Run], b: &[Run]| {
        a.iter().zip(b).map(|(x, y)| format!("{:.2}/{:.2}", x.p99_ms, y.p99_ms)).collect::<Vec<_>>().join(", ")
    };
    println!("p99 ms, berth up / nginx with its log, per round: {}", p99_rounds(&up, &n_log));
    println!("p99 ms, berth router --access-log / nginx with its log, per round: {}", p99_rounds(&b_log, &n_log));
    // Each round's own ratio as well: drift between rounds moves both sides of it alike.
    let cost = |with: &[Run]| {
        let per_round: Vec<f64> = with.iter().zip(&b).map(|(w, b)| (1.0 - w.rps / b.rps) * 100.0).collect();
        format!(
            "{:.1} % (rounds: {})",
            (1.0 - med(with, |r| r.rps) / b_rps) * 100.0,
            per_round.iter().map(|c| format!("{c:.1}")).collect::<Vec<_>>().join(", ")
        )
    };
    println!("\nrule cost, native: {}", cost(&native));
    println!("rule cost, in the Lua VM: {}", cost(&vm));

    let attacked_rps = med(&attacked, |r| r.rps);
    let sent: usize = attacks.iter().map(|a| a.sent).sum();
    let mut waits: Vec<f64> = attacks.iter().flat_map(|a| a.latencies_ms.iter().copied()).collect();
    waits.sort_by(|a, b| a.total_cmp(b));
    let pct = |q: f64| waits.get(((waits.len() as f64 - 1.0) * q).round() as usize).copied().unwrap_or(f64::NAN);
    println!("\n## a healthy upstream while a neighbour's rule is pathological ({rounds} rounds, median)\n");
    println!("| | requests/s | p99 ms | vs undisturbed |");
    println!("|---|---|---|---|");
    println!("| bench.test, undisturbed | {b_rps:.0} | {:.2} | 1.00 |", med(&b, |r| r.p99_ms));
    println!(
        "| bench.test, evil.test attacked at {ATTACK_RATE} req/s | {attacked_rps:.0} | {:.2} | {:.2} |",
        med(&attacked, |r| r.p99_ms),
        attacked_rps / b_rps
    );
    println!(
        "\npathological requests: {sent} sent, {} answered; their latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        waits.len(),
        pct(0.5),
        pct(0.99),
        waits.last().copied().unwrap_or(f64::NAN)
    );
    // What the rule did with them: overran its budget, or was skipped while suspended.
    let metrics: serde_json::Value =
        client.get(format!("http://127.0.0.1:{admin}/metrics")).send().await.unwrap().json().await.unwrap();
    let evil = &metrics["clusters"]["cls:evil.test"];
    println!(
        "the neighbour's rule: {} overran its budget, {} skipped while suspended, {} errors",
        evil["rule_overruns"], evil["rule_suspended"], evil["rule_errors"]
    );
}

/// Pathological requests to the neighbour at a steady rate, whatever their answers take: the
/// attack is the same in every run, so the healthy figure is what moves.
const ATTACK_RATE: u64 = 100;
/// `/api/` and this many slashes: the rule's pattern takes about N³ steps (0.6 s at N=800 before
/// pattern work was budgeted).
const ATTACK_SLASHES: usize = 1600;

struct Attacker {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<Attack>,
}

struct Attack {
    sent: usize,
    latencies_ms: Vec<f64>,
}

impl Attacker {
    fn start(http: u16) -> Attacker {
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        // No `admin` at the end: the pattern has to try every way to place its three `.-`
        // before it can fail.
        let url = format!("http://127.0.0.1:{http}/api/{}", "/".repeat(ATTACK_SLASHES));
        let task = tokio::spawn(async move {
            let client = berth_tls::http_builder().timeout(Duration::from_secs(30)).build().unwrap();
            let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / ATTACK_RATE));
            let mut inflight = tokio::task::JoinSet::new();
            let mut sent = 0;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stopped.changed() => break,
                }
                let (client, url) = (client.clone(), url.clone());
                sent += 1;
                inflight.spawn(async move {
                    let began = Instant::now();
                    let answered = client.get(url).header("host", "evil.test").send().await.is_ok();
                    answered.then(|| began.elapsed().as_secs_f64() * 1000.0)
                });
            }
            let latencies_ms = inflight.join_all().await.into_iter().flatten().collect();
            Attack { sent, latencies_ms }
        });
        Attacker { stop, task }
    }

    async fn stop(self) -> Attack {
        let _ = self.stop.send(true);
        self.task.await.unwrap()
    }
}

async fn death_to_unrouted(trials: usize) {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let bin = berth_testkit::image::testapp_binary();
    let spec = format!(
        "group: bench\nname: dies\ndriver: exec\ninstances: 2\ncommand: [{}]\nservices: [dies.test]\n\
         health:\n  http: /health\n  interval: 200ms\n  timeout: 1s\n",
        bin.display()
    );
    let file = p.write("dies.yaml", &spec);
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    let client = berth_tls::http();
    let status_url = format!("http://{}/status", p.admin);
    let mut times = Vec::new();
    for _ in 0..trials {
        wait_until("two routed instances", Duration::from_secs(20), || async {
            let s: serde_json::Value = client.get(&status_url).send().await.ok()?.json().await.ok()?;
            let ok = s["cls:bench/dies"].as_array()?.iter().filter(|x| x["status"] == "ok").count();
            (ok == 2).then_some(())
        })
        .await;
        let victim = p.live("dies").await.into_iter().find(|i| i["state"] == "running").unwrap();
        let addr = victim["address"].as_str().unwrap().to_string();
        let pid = victim["handle"].as_str().unwrap().to_string();
        let killed = Instant::now();
        Command::new("kill").args(["-9", &pid]).status().unwrap();
        loop {
            let s: serde_json::Value = client.get(&status_url).send().await.unwrap().json().await.unwrap();
            let offered = s["cls:bench/dies"]
                .as_array()
                .map(|a| a.iter().any(|x| x["server"] == addr.as_str() && x["status"] == "ok"))
                .unwrap_or(false);
            if !offered {
                times.push(killed.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            assert!(killed.elapsed() < Duration::from_secs(10), "never left the table");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
    times.sort_by(|a, b| a.total_cmp(b));
    println!("\n## instance death to no longer routed ({trials} kills of an exec instance)\n");
    println!("| median ms | min ms | max ms |");
    println!("|---|---|---|");
    println!("| {:.1} | {:.1} | {:.1} |", median(times.clone()), times[0], times[times.len() - 1]);
}

/// Launch times (ms since the epoch) a crash-loop script wrote.
fn launches(path: &Path) -> Vec<i64> {
    std::fs::read_to_string(path).unwrap_or_default().lines().filter_map(|l| l.trim().parse().ok()).collect()
}

/// How many launches the backoff curve allows in `window_ms` after a first failed launch, and
/// how the actual gaps compare with the delay each step asks for (gap / delay, smallest).
fn against_curve(failing: &[i64], window_ms: i64) -> (usize, usize, f64) {
    let Some(&first) = failing.first() else { return (0, 0, f64::NAN) };
    let in_window: Vec<i64> = failing.iter().copied().filter(|t| t - first <= window_ms).collect();
    let (mut t, mut n, mut curve) = (0i64, 1u32, 1usize);
    while t + berth_core::Backoff::delay_ms(n) <= window_ms {
        t += berth_core::Backoff::delay_ms(n);
        n += 1;
        curve += 1;
    }
    let tightest = in_window
        .windows(2)
        .enumerate()
        .map(|(i, w)| (w[1] - w[0]) as f64 / berth_core::Backoff::delay_ms(i as u32 + 1) as f64)
        .fold(f64::INFINITY, f64::min);
    (in_window.len(), curve, tightest)
}

/// An always-failing instance alone, and one beside two healthy siblings of its own app, in the
/// same platform at the same time: their launches against the backoff curve.
async fn crash_loop_rate(window: Duration) {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let work = p.dir.path().join("loops");
    std::fs::create_dir_all(&work).unwrap();
    let bin = berth_testkit::image::testapp_binary();
    // `beside`: the first two launches take a slot each and run; every later one exits 1.
    let beside = format!(
        "date +%s%3N >> {w}/beside; (mkdir {w}/slot1 || mkdir {w}/slot2) 2>/dev/null && exec {b} || exit 1",
        w = work.display(),
        b = bin.display()
    );
    let alone = format!("date +%s%3N >> {w}/alone; exit 1", w = work.display());
    for (name, instances, script) in [("beside", 3, beside), ("alone", 1, alone)] {
        let spec = format!(
            "group: bench\nname: {name}\ndriver: exec\ninstances: {instances}\ncommand: [sh, -c, \"{script}\"]\n"
        );
        let file = p.write(&format!("{name}.yaml"), &spec);
        let _ = p.cli(&["deploy", "-f", &file, "--no-wait"]).await;
    }
    tokio::time::sleep(window + Duration::from_secs(2)).await;
    let window_ms = window.as_millis() as i64;
    println!(
        "\n## crash-loop launches against the backoff curve ({}s window from the first failure)\n",
        window.as_secs()
    );
    println!(
        "| always-failing instance | launches | the curve allows | launches / curve | smallest gap / its step's delay |"
    );
    println!("|---|---|---|---|---|");
    for name in ["alone", "beside"] {
        let all = launches(&work.join(name));
        // Beside: the first two launches are the healthy siblings.
        let failing: Vec<i64> = if name == "beside" { all.into_iter().skip(2).collect() } else { all };
        let (got, curve, tightest) = against_curve(&failing, window_ms);
        let label = if name == "alone" { "alone (instances: 1)" } else { "beside 2 healthy siblings (instances: 3)" };
        println!("| {label} | {got} | {curve} | {:.2} | {tightest:.2} |", got as f64 / curve as f64);
    }
}

fn main() {
    let rounds = std::env::var("BERTH_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    let seconds = std::env::var("BERTH_BENCH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let crash_window = std::env::var("BERTH_BENCH_CRASH_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    rt.block_on(async {
        throughput(rounds, seconds).await;
        death_to_unrouted(9).await;
        crash_loop_rate(Duration::from_secs(crash_window)).await;
    });
}
