//! Log forwarding end to end: a real rsyslog receives RFC 5424 lines over TCP (an app's own sink)
//! and UDP (the server-wide sink); an HTTP sink gets JSON lines within a second even while another
//! app floods a sink that never answers.

use std::time::Duration;

use berth_testkit::{Platform, Receiver, free_port, wait_until};
use serde_json::Value;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

fn chat_spec(name: &str, args: &str, extra: &str) -> String {
    let bin = berth_testkit::image::testapp_binary();
    format!(
        "group: ops\nname: {name}\ndriver: exec\ncommand: [{}, {args}]\nupgrade:\n  min_healthy_time: 0s\n{extra}",
        bin.display()
    )
}

struct Rsyslog {
    child: std::process::Child,
    out: std::path::PathBuf,
}

impl Drop for Rsyslog {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn rsyslog(dir: &std::path::Path, tcp: u16, udp: u16) -> Option<Rsyslog> {
    let Ok(bin) = which("rsyslogd") else {
        assert!(std::env::var("BERTH_REQUIRE_DOCKER").is_err(), "rsyslogd is required (apt-get install rsyslog)");
        eprintln!("SKIPPED: rsyslogd is not installed");
        return None;
    };
    let out = dir.join("received.log");
    let conf = dir.join("rsyslog.conf");
    std::fs::write(
        &conf,
        format!(
            "global(workDirectory=\"{d}\")\nmodule(load=\"imtcp\")\nmodule(load=\"imudp\")\n\
             input(type=\"imtcp\" port=\"{tcp}\" address=\"127.0.0.1\")\ninput(type=\"imudp\" port=\"{udp}\" address=\"127.0.0.1\")\n\
             template(name=\"raw\" type=\"string\" string=\"%app-name% %procid% %msgid% %structured-data% %msg%\\n\")\n\
             *.* action(type=\"omfile\" file=\"{o}\" template=\"raw\")\n",
            d = dir.display(),
            o = out.display()
        ),
    )
    .unwrap();
    let child = std::process::Command::new(bin)
        .args(["-n", "-f"])
        .arg(&conf)
        .arg("-i")
        .arg(dir.join("rsyslogd.pid"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start rsyslogd");
    Some(Rsyslog { child, out })
}

fn which(name: &str) -> Result<std::path::PathBuf, ()> {
    ["/usr/sbin", "/usr/bin", "/sbin", "/bin"]
        .iter()
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
        .ok_or(())
}

#[tokio::test(flavor = "multi_thread")]
async fn rsyslog_receives_app_and_server_wide_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (tcp, udp) = (free_port(), free_port());
    let Some(syslog) = rsyslog(dir.path(), tcp, udp) else { return };
    wait_until("rsyslog to listen", Duration::from_secs(10), || async {
        tokio::net::TcpStream::connect(("127.0.0.1", tcp)).await.ok().map(|_| ())
    })
    .await;
    let global = vec!["--log-sink".to_string(), format!("syslog+udp://127.0.0.1:{udp}")];
    let p = Platform::start_args(BERTH.as_ref(), "exec", &global).await;
    let own = format!("log_sinks: [\"syslog+tcp://127.0.0.1:{tcp}\"]\n");
    p.cli_ok(&[
        "deploy",
        "-f",
        &p.write("a.yaml", &chat_spec("talky", "--chatter-ms, \"100\"", &own)),
        "--timeout",
        "30",
    ])
    .await;
    p.cli_ok(&[
        "deploy",
        "-f",
        &p.write("b.yaml", &chat_spec("quiet", "--chatter-ms, \"300\"", "")),
        "--timeout",
        "30",
    ])
    .await;
    let talky = p.live("talky").await[0]["id"].as_str().unwrap().to_string();
    let received = wait_until("rsyslog to write lines of both apps", Duration::from_secs(15), || async {
        let text = std::fs::read_to_string(&syslog.out).unwrap_or_default();
        let talky_chatter = text.lines().any(|l| l.starts_with("ops/talky") && l.contains(" chatter "));
        (talky_chatter && text.contains("ops/quiet")).then_some(text)
    })
    .await;
    let line = received.lines().find(|l| l.starts_with("ops/talky") && l.contains(" chatter ")).unwrap();
    assert!(line.starts_with(&format!("ops/talky {talky} stdout [berth@32473 app=\"ops/talky\"")), "{line}");
    // Both sinks carried lines: the app's own over TCP, everything over UDP.
    let sinks: Value = p.get("/v1/logs/sinks").await.unwrap();
    for sink in sinks.as_array().unwrap() {
        assert!(sink["sent"].as_u64().unwrap() > 0, "{sinks}");
        assert_eq!(sink["dropped"], 0, "{sinks}");
    }
    assert_eq!(sinks.as_array().unwrap().len(), 2, "{sinks}");
}

/// Accepts connections and never answers.
async fn black_hole() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stuck_sink_and_a_flooding_app_do_not_delay_another_app() {
    let received = Receiver::start().await;
    let fast = received.port;
    let stuck = black_hole().await;
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let flood = format!("log_sinks: [\"http://127.0.0.1:{stuck}/ingest\"]\n");
    p.cli_ok(&[
        "deploy",
        "-f",
        &p.write("loud.yaml", &chat_spec("loud", "--chatter-ms, \"10\", --chatter-lines, \"100\"", &flood)),
        "--timeout",
        "30",
    ])
    .await;
    let own = format!("log_sinks: [\"http://127.0.0.1:{fast}/ingest\"]\n");
    p.cli_ok(&[
        "deploy",
        "-f",
        &p.write("chat.yaml", &chat_spec("chat", "--chatter-ms, \"50\"", &own)),
        "--timeout",
        "30",
    ])
    .await;
    // Let the stuck sink's queue fill up.
    wait_until("the stuck sink to drop lines", Duration::from_secs(30), || async {
        let sinks: Value = p.get("/v1/logs/sinks").await.ok()?;
        sinks.as_array()?.iter().any(|s| s["dropped"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    received.clear();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Each body is a batch of JSON lines.
    let got: Vec<(Value, i64)> = received
        .bodies()
        .into_iter()
        .flat_map(|(body, arrived)| {
            let lines: Vec<Value> =
                String::from_utf8_lossy(&body).lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
            lines.into_iter().map(move |l| (l, arrived))
        })
        .collect();
    assert!(got.len() > 20, "the chat app's lines keep arriving: {}", got.len());
    for (line, arrived) in &got {
        assert_eq!(line["app"], "ops/chat", "only the app's own lines go to its sink");
        let written: i64 =
            line["line"].as_str().unwrap().rsplit(' ').next().unwrap().parse().expect("write time in the line");
        assert!(arrived - written < 1000, "a line reached the HTTP sink {} ms after it was written", arrived - written);
    }
    let sinks: Value = p.get("/v1/logs/sinks").await.unwrap();
    let stuck_status =
        sinks.as_array().unwrap().iter().find(|s| s["sink"].as_str().unwrap().contains(&stuck.to_string())).unwrap();
    assert_eq!(stuck_status["sent"], 0, "{sinks}");
    assert!(stuck_status["dropped"].as_u64().unwrap() > 0, "the flood past the stuck sink's bound is counted: {sinks}");
}

/// Every output is checked where it sends: an unreachable log sink is known (unhealthy, with why,
/// an event and `berth_output_up 0`) before a line is lost to it; a reachable Alertmanager is up.
#[tokio::test(flavor = "multi_thread")]
async fn outputs_that_cannot_be_reached_are_told() {
    let closed = free_port();
    let alertmanager = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let am_port = alertmanager.local_addr().unwrap().port();
    let sink = format!("syslog+tcp://127.0.0.1:{closed}");
    let am = format!("alertmanager+http://127.0.0.1:{am_port}");
    let args = ["--log-sink".to_string(), sink.clone(), "--alert-webhook".to_string(), am.clone()];
    let p = Platform::start_args(BERTH.as_ref(), "exec", &args).await;
    let outputs: Vec<Value> = wait_until("both outputs checked", Duration::from_secs(10), || async {
        let all: Vec<Value> = serde_json::from_value(p.get("/v1/outputs").await.ok()?).ok()?;
        (all.len() == 2).then_some(all)
    })
    .await;
    let find = |name: &str| outputs.iter().find(|o| o["output"] == name).cloned().unwrap_or_default();
    let (down, up) = (find(&sink), find(&am));
    assert_eq!((down["healthy"].as_bool(), down["carries"].as_str()), (Some(false), Some("logs")), "{down}");
    assert!(down["error"].as_str().unwrap_or_default().contains(&format!("connect 127.0.0.1:{closed}")), "{down}");
    assert_eq!((up["healthy"].as_bool(), up["carries"].as_str()), (Some(true), Some("alerts")), "{up}");
    let events = p.cli_ok(&["events", "-o", "json", "-n", "100"]).await;
    assert!(events.contains("output.unreachable") && events.contains(&sink), "{events}");
    let metrics = p.get_text("/metrics").await;
    assert!(metrics.contains(&format!("berth_output_up{{output=\"{sink}\",carries=\"logs\"}} 0")), "{metrics}");
    // A spec names its own outputs the same way, and one that cannot carry what it is given for
    // is refused where it is written.
    let bad = chat_spec("bad", "--chatter-ms, \"1000\"", "log_sinks: [\"alertmanager+http://127.0.0.1:9093\"]\n");
    let out = p.cli(&["deploy", "-f", &p.write("bad.yaml", &bad)]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("log_sinks[0]") && err.contains("takes alert notices, not log lines"),
        "{err}"
    );
}
