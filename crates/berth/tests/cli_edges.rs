//! The CLI's rough edges, as a new user meets them: `-n 0`, a filter that matches nothing, an app
//! with no rules, errors in people's words (and in JSON under `-o json`), `--since` as people write it.

use berth_testkit::{Platform, wait_until};
use serde_json::Value;
use std::time::Duration;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_says_what_is_wrong_and_does_what_people_expect() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let spec = "group: ops\nname: talk\ndriver: exec\ncommand: [sh, -c, \"echo hello-from-talk; exec sleep 300\"]\n";
    let file = p.write("talk.yaml", spec);
    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    wait_until("the app's line in its logs", Duration::from_secs(10), || async {
        p.cli_ok(&["app", "talk", "logs"]).await.contains("hello-from-talk").then_some(())
    })
    .await;

    // `-n 0`: nothing of the past, as docker and kubectl do.
    assert_eq!(p.cli_ok(&["app", "talk", "logs", "-n", "0"]).await, "");
    // `--since` as people write it: days, and a time.
    assert!(p.cli_ok(&["app", "talk", "logs", "--since", "1d"]).await.contains("hello-from-talk"));
    assert!(p.cli_ok(&["app", "talk", "logs", "--since", "2020-01-01T00:00:00Z"]).await.contains("hello-from-talk"));
    // A filter that matches nothing is an error that says what there is.
    let out = p.cli(&["app", "talk", "logs", "--instance", "zzz"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("has no instance `zzz`; its instances: talk-"), "{err}");
    // No rules: said plainly, with what to do.
    let out = p.cli(&["app", "talk", "rules", "show"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("ops/talk has no rules; set them with `berth app talk rules set FILE`"),
        "{err}"
    );
    // The server's refusals in its own words, without an HTTP code in front.
    let out = p.cli(&["app", "talk", "scale", "99999"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.starts_with("error: instances: 99999 is more than") && !err.contains("422"), "{err}");
    // Under `-o json`, the error is JSON on stdout.
    let out = p.cli(&["app", "talk", "scale", "99999", "-o", "json"]).await;
    assert!(!out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).expect("a JSON error");
    assert_eq!(v["status"], 422, "{v}");
    assert!(v["error"].as_str().unwrap().contains("more than the 10000 allowed"), "{v}");
    // YAML for scripts that prefer it, and a wide table for people with room.
    let yaml = p.cli_ok(&["app", "talk", "status", "-o", "yaml"]).await;
    assert!(yaml.contains("id: ops/talk") && !yaml.trim_start().starts_with('{'), "{yaml}");
    let wide = p.cli_ok(&["app", "talk", "status", "-o", "wide"]).await;
    assert!(wide.contains("HANDLE") && wide.contains("HOST PORTS"), "{wide}");
    assert!(!p.cli_ok(&["app", "talk", "status"]).await.contains("HANDLE"));
}

/// `berth plan` (and `deploy --dry-run`) tells what a deploy would do and changes nothing: exit 0
/// for no change, 2 for changes; a deploy that undoes `scale` is flagged, and placement is checked.
#[tokio::test(flavor = "multi_thread")]
async fn plan_shows_a_deploy_before_it_happens() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let spec = |extra: &str| {
        format!(
            "group: ops\nname: planned\ndriver: exec\ninstances: 1\ncommand: [sleep, \"300\"]\nupgrade:\n  min_healthy_time: 0s\n{extra}"
        )
    };
    let file = p.write("planned.yaml", &spec("memory: 64\n"));
    let out = p.cli(&["plan", "-f", &file]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "a new app is a change: {text}");
    assert!(text.contains("a new app, version 1, 1 instance(s)") && text.contains("all 1 instance(s) fit"), "{text}");
    assert!(p.get("/v1/apps/ops/planned").await.is_err(), "plan changed nothing");

    p.cli_ok(&["deploy", "-f", &file, "--timeout", "30"]).await;
    assert_eq!(p.cli(&["plan", "-f", &file]).await.status.code(), Some(0), "the same spec: no change");

    p.cli_ok(&["app", "planned", "scale", "3", "--timeout", "30"]).await;
    let changed = p.write("planned2.yaml", &spec("memory: 64\nenvironment:\n  MODE: fast\n"));
    let out = p.cli(&["deploy", "-f", &changed, "--dry-run"]).await;
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(out.status.code(), Some(2), "{text}");
    assert!(text.contains("~ environment.MODE: unset -> \"fast\""), "{text}");
    assert!(text.contains("~ instances: 3 -> 1   <- undoes the count set by `scale`"), "{text}");
    let json: Value = serde_json::from_slice(&p.cli(&["plan", "-f", &changed, "-o", "json"]).await.stdout).unwrap();
    assert_eq!(json["resets_scale"], true, "{json}");
    assert_eq!(p.get("/v1/apps/ops/planned").await.unwrap()["desired"], 3, "a dry run changes nothing");

    let huge = p.write("huge.yaml", &spec("memory: 4000000\n"));
    let text = String::from_utf8_lossy(&p.cli(&["plan", "-f", &huge]).await.stdout).to_string();
    assert!(text.contains("only 0 of 1 instance(s) fit now") && text.contains("memory"), "{text}");

    // The deploy itself says what it undoes.
    let out = p.cli(&["deploy", "-f", &changed, "--timeout", "30"]).await;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.contains("it undoes `scale`, which set 3"), "{err}");

    // An instance over half the node: the new version fits once the old one is gone, but a
    // rolling update that keeps it healthy meanwhile has no room for the new one beside it.
    let nodes = p.get("/v1/nodes").await.unwrap();
    let big = nodes[0]["resources"]["memory"].as_u64().unwrap() * 6 / 10;
    let strict = format!("  min_health_capacity: 1.0\n  max_over_capacity: 0\nmemory: {big}\n");
    p.cli_ok(&["deploy", "-f", &p.write("big.yaml", &spec(&strict)), "--timeout", "30"]).await;
    let next = p.write("big2.yaml", &spec(&format!("{strict}environment:\n  MODE: next\n")));
    let text = String::from_utf8_lossy(&p.cli(&["plan", "-f", &next]).await.stdout).to_string();
    assert!(text.contains("all 1 instance(s) fit"), "{text}");
    assert!(
        text.contains("first step: 1 new beside the 1 old: only 0 fit") && text.contains("would wait for room"),
        "{text}"
    );
}

/// The commands people reach for: a version's whole spec, re-attaching to a deployment,
/// completions, and a destroy that asks on a terminal.
#[tokio::test(flavor = "multi_thread")]
async fn history_version_watch_completion_and_a_careful_destroy() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let spec = "group: ops\nname: kept\ndriver: exec\ncommand: [sleep, \"300\"]\nenvironment:\n  MODE: one\n";
    p.cli_ok(&["deploy", "-f", &p.write("kept.yaml", spec), "--timeout", "30"]).await;
    let yaml = p.cli_ok(&["app", "kept", "history", "--version", "1"]).await;
    assert!(yaml.contains("MODE: one") && yaml.contains("name: kept"), "{yaml}");
    let out = p.cli(&["app", "kept", "history", "--version", "9"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no version 9; it has 1"));
    let out = p.cli(&["app", "kept", "watch", "--timeout", "10"]).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    for shell in ["bash", "zsh", "fish"] {
        let script = p.cli_ok(&["completion", shell]).await;
        assert!(script.contains("berth") && script.contains("deploy"), "{shell}");
    }

    // On a terminal (from `script`), destroy asks; "n" keeps the app.
    let mut asked = p.cli_in_terminal("app kept destroy");
    use tokio::io::AsyncWriteExt;
    asked.stdin.as_mut().unwrap().write_all(b"n\n").await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(10), asked.wait_with_output()).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("destroy ops/kept and stop all its instances? [y/N]") && text.contains("not destroyed"),
        "{text}"
    );
    assert!(p.get("/v1/apps/ops/kept").await.is_ok(), "kept");
    p.cli_ok(&["app", "kept", "destroy", "--timeout", "30"]).await;
}

/// `env set|unset` makes a new version like any change; `instance ID restart` replaces one
/// instance with a fresh one.
#[tokio::test(flavor = "multi_thread")]
async fn env_changes_are_versions_and_one_instance_restarts() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let bin = berth_testkit::image::testapp_binary();
    let spec = format!(
        "group: ops\nname: envy\ndriver: exec\ninstances: 2\ncommand: [{}]\nhealth:\n  http: /health\n  interval: 200ms\n\
         upgrade:\n  min_healthy_time: 0s\n",
        bin.display()
    );
    p.cli_ok(&["deploy", "-f", &p.write("envy.yaml", &spec), "--timeout", "30"]).await;
    p.cli_ok(&["app", "envy", "env", "set", "MODE=fast", "LEVEL=3", "--timeout", "30"]).await;
    let listed = p.cli_ok(&["app", "envy", "env", "ls"]).await;
    assert!(listed.contains("MODE=fast") && listed.contains("LEVEL=3"), "{listed}");
    let status = p.status("envy").await;
    assert_eq!((status["version"].as_u64(), status["desired"].as_u64()), (Some(2), Some(2)), "{status}");
    p.cli_ok(&["app", "envy", "env", "unset", "LEVEL", "--timeout", "30"]).await;
    assert!(!p.cli_ok(&["app", "envy", "env", "ls"]).await.contains("LEVEL"));
    let out = p.cli(&["app", "envy", "env", "unset", "NOPE"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no variable NOPE"));

    let before: Vec<String> = p.live("envy").await.iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    let victim = before[0].clone();
    p.cli_ok(&["app", "envy", "instance", &victim[..victim.len() - 2], "restart"]).await;
    wait_until("a fresh instance in its place", Duration::from_secs(20), || async {
        let live = p.live("envy").await;
        let running: Vec<&Value> = live.iter().filter(|i| i["state"] == "running").collect();
        (running.len() == 2 && running.iter().all(|i| i["id"] != victim.as_str())).then_some(())
    })
    .await;
    let events = p.cli_ok(&["events", "--app", "envy"]).await;
    assert!(events.contains("instance.restart"), "{events}");
    // The output of the instance that ended last: the one restarted.
    wait_until("the restarted instance to have stopped", Duration::from_secs(20), || async {
        let s = p.status("envy").await;
        s["instances"].as_array()?.iter().any(|i| i["id"] == victim.as_str() && i["state"] == "stopped").then_some(())
    })
    .await;
    let previous = wait_until("the restarted instance's output", Duration::from_secs(15), || async {
        let out = p.cli_ok(&["app", "envy", "logs", "--previous"]).await;
        out.contains("listening").then_some(out)
    })
    .await;
    assert!(previous.lines().all(|l| l.starts_with(&victim)), "{previous}");

    // `instance ID stop`: that one goes for good, and the app runs one fewer.
    let gone =
        p.live("envy").await.iter().find(|i| i["state"] == "running").unwrap()["id"].as_str().unwrap().to_string();
    let said = p.cli_ok(&["app", "envy", "instance", &gone, "stop"]).await;
    assert!(said.contains("now runs 1"), "{said}");
    wait_until("one instance left, not the stopped one", Duration::from_secs(20), || async {
        let live = p.live("envy").await;
        (live.len() == 1 && live[0]["id"] != gone.as_str() && live[0]["state"] == "running").then_some(())
    })
    .await;
    assert_eq!(p.status("envy").await["desired"], 1);
}

/// A deploy's progress follows the deployment across a restart of the server.
#[tokio::test(flavor = "multi_thread")]
async fn a_deploy_follows_its_deployment_across_a_server_restart() {
    let mut p = Platform::start(BERTH.as_ref(), "exec").await;
    let bin = berth_testkit::image::testapp_binary();
    // Healthy for 3 s before it counts: time enough to restart the server mid-deployment.
    let spec = format!(
        "group: ops\nname: steady\ndriver: exec\ninstances: 1\ncommand: [{}]\nhealth:\n  http: /health\n  interval: 200ms\n\
         upgrade:\n  min_healthy_time: 3s\n",
        bin.display()
    );
    let file = p.write("steady.yaml", &spec);
    let deploy = tokio::process::Command::new(BERTH)
        .args(["deploy", "-f", &file, "--timeout", "60"])
        .env("BERTH_SERVER", &p.api)
        .env("BERTH_TOKEN", p.admin_token())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    wait_until("the deployment to be under way", Duration::from_secs(15), || async {
        p.get("/v1/apps/ops/steady").await.ok().filter(|s| s["deployment"]["state"] == "running").map(|_| ())
    })
    .await;
    p.restart().await;
    let out = tokio::time::timeout(Duration::from_secs(60), deploy.wait_with_output()).await.unwrap().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("reconnecting"), "it did lose the server: {err}");
}

/// `app NAME exec -- CMD` runs a command in an instance, with its environment, and exits with
/// the command's code; stdout and stderr come back apart.
#[tokio::test(flavor = "multi_thread")]
async fn exec_runs_a_command_in_an_instance() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let spec = "group: ops\nname: box\ndriver: exec\ncommand: [sleep, \"300\"]\nenvironment:\n  MODE: fast\n";
    p.cli_ok(&["deploy", "-f", &p.write("box.yaml", spec), "--timeout", "30"]).await;
    let out = p
        .cli(&["app", "box", "exec", "--", "sh", "-c", "echo mode=$MODE id=$BERTH_INSTANCE_ID; echo oops >&2; exit 3"])
        .await;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(3), "{stderr}");
    let id = p.live("box").await[0]["id"].as_str().unwrap().to_string();
    assert_eq!(stdout.trim(), format!("mode=fast id={id}"));
    assert_eq!(stderr.trim(), "oops");
    let out = p.cli(&["app", "box", "exec", "--instance", "zzz", "--", "true"]).await;
    assert!(String::from_utf8_lossy(&out.stderr).contains("has no running instance `zzz`"));
    let out = p.cli(&["app", "box", "exec", "--", "/no/such/program"]).await;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("/no/such/program"));
}

/// `exec -i` feeds the command the client's stdin and streams its output apart; without `-i` its
/// stdin is closed at once; `-o json` collects one result; `-t` gives it a terminal of the
/// client's size whose keys reach it; a client that goes takes its command with it.
#[tokio::test(flavor = "multi_thread")]
async fn exec_streams_input_and_a_terminal_and_ends_with_its_client() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let spec = "group: ops\nname: box\ndriver: exec\ncommand: [sleep, \"300\"]\n";
    p.cli_ok(&["deploy", "-f", &p.write("box.yaml", spec), "--timeout", "30"]).await;

    let echo = "while read l; do echo \"got $l\"; done; echo closed >&2; exit 4";
    let out = p.cli_with_input(&["app", "box", "exec", "-i", "--", "sh", "-c", echo], b"hello\nworld\n").await;
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(4), "{stderr}");
    assert_eq!(stdout, "got hello\ngot world\n");
    assert_eq!(stderr.trim(), "closed");

    let out = p.cli_with_input(&["app", "box", "exec", "--", "sh", "-c", "cat; echo after"], b"not sent\n").await;
    assert_eq!(String::from_utf8_lossy(&out.stdout), "after\n", "{}", String::from_utf8_lossy(&out.stderr));

    let out = p.cli(&["app", "box", "exec", "-o", "json", "--", "sh", "-c", "echo hi; exit 2"]).await;
    assert_eq!(out.status.code(), Some(2));
    let result: Value = serde_json::from_slice(&out.stdout).expect("one JSON result");
    assert_eq!((result["stdout"].as_str(), result["exit_code"].as_i64()), (Some("hi\n"), Some(2)), "{result}");

    let shell = "'test -t 0 && echo tty=yes; stty size; read x; echo x=$x; exit 5'";
    let mut term = p.cli_in_sized_terminal(&format!("app box exec -it -- sh -c {shell}"), 100, 30);
    use tokio::io::AsyncWriteExt;
    term.stdin.as_mut().unwrap().write_all(b"answer\n").await.unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), term.wait_with_output()).await.unwrap().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("tty=yes") && text.contains("30 100") && text.contains("x=answer"), "{text}");
    assert_eq!(out.status.code(), Some(5), "{text}");

    // The client is killed mid-command: the command goes too.
    let pid_file = p.data_dir().join("exec-pid");
    let line = format!("echo $$ > {}; exec sleep 300", pid_file.display());
    let mut client = tokio::process::Command::new(BERTH)
        .args(["app", "box", "exec", "-i", "--", "sh", "-c", &line])
        .env("BERTH_SERVER", &p.api)
        .env("BERTH_TOKEN", p.admin_token())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = wait_until("the command to start", Duration::from_secs(15), || async {
        std::fs::read_to_string(&pid_file).ok().and_then(|s| s.trim().parse::<u32>().ok())
    })
    .await;
    assert!(std::path::Path::new(&format!("/proc/{pid}")).exists());
    client.kill().await.unwrap();
    wait_until("the command of a client that went to end", Duration::from_secs(15), || async {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        // Gone, or a zombie waiting for its reaper.
        (stat.is_empty() || stat.contains(") Z ")).then_some(())
    })
    .await;
}

/// An app may be called `ls`: `app ls` alone lists the apps, `app ls status` reaches the app.
#[tokio::test(flavor = "multi_thread")]
async fn an_app_named_ls_can_be_reached() {
    let p = Platform::start(BERTH.as_ref(), "exec").await;
    let spec = "group: ops\nname: ls\ndriver: exec\ncommand: [sleep, \"300\"]\nupgrade:\n  min_healthy_time: 0s\n";
    p.cli_ok(&["deploy", "-f", &p.write("ls.yaml", spec), "--timeout", "30"]).await;
    let listed = p.cli_ok(&["app", "ls"]).await;
    assert!(listed.contains("ops/ls") && listed.contains("APP"), "{listed}");
    let status = p.cli_ok(&["app", "ls", "status"]).await;
    assert!(status.contains("INSTANCE") && status.contains("ls-"), "{status}");
    let by_id = p.cli_ok(&["app", "ops/ls", "status"]).await;
    assert!(by_id.contains("INSTANCE"), "{by_id}");
}
