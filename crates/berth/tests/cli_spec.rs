//! The spec commands, through the real binary: no server or engine needed.

use std::process::Command;

const BERTH: &str = env!("CARGO_BIN_EXE_berth");

const SEED_SAMPLE: &str = "# required\ngroup: guest\nname: name\nimage: nginx\n# optional\ninstances: 1\ncpu: 0.1\nmemory: 64\nnetwork: bridge\nprivileged: false\ncommand: /bin/bash\nports:\n    - 8080\nenvironment:\n   APP_NAME: nginx\n   APP_CONFIG: default\n   CONSUL_HTTP_ADDR: 127.0.0.1:8500\n   MY_ENV1: VAL1\nzones:\n    - slardar\n    - slardar_test\nservices:\n    - s1.upyun.com:8080\n    - s2.upyun.com:8081\nconstraints:\n    - hostname:UNIQUE\n";

fn berth(dir: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(BERTH).args(args).current_dir(dir).output().expect("run berth")
}

#[test]
fn seed_sample_validates_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("berth.yaml"), SEED_SAMPLE).unwrap();
    let out = berth(dir.path(), &["validate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("guest/name"));
}

#[test]
fn misspelt_key_fails_with_place_and_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("app.yaml"), "group: g\nname: web\nimage: i\nmemroy: 64\n").unwrap();
    let out = berth(dir.path(), &["validate", "-f", "app.yaml"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("app.yaml:4:1"), "{err}");
    assert!(err.contains("did you mean `memory`"), "{err}");
}

#[test]
fn validate_json_lists_every_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("berth.yaml"), "group: G\nname: web\nimage: i\ncpu: 0\n").unwrap();
    let out = berth(dir.path(), &["validate", "-o", "json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(v["valid"], false);
    let fields: Vec<&str> = v["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["group", "cpu"]);
    assert_eq!(v["errors"][1]["line"], 4);
}

#[test]
fn init_writes_a_valid_spec_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth(dir.path(), &["init", "--group", "shop", "--name", "cart"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = berth(dir.path(), &["validate"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("shop/cart"));
    let again = berth(dir.path(), &["init"]);
    assert!(!again.status.success(), "init must not overwrite");
}

#[test]
fn unreachable_server_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth(dir.path(), &["--server", "http://127.0.0.1:9", "app", "ls"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot reach the Berth server at http://127.0.0.1:9"), "{err}");
}

#[test]
fn a_spec_file_that_never_ends_is_refused_without_reading_it_all() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth(dir.path(), &["validate", "-f", "/dev/zero"]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("/dev/zero: a spec may be at most 4096 KiB"), "{err}");
}

/// `berth ... | head`: when the reader goes away the command ends quietly, as `cat` does.
#[test]
fn a_closed_pipe_ends_a_command_quietly() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("berth.yaml"), SEED_SAMPLE).unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let out = Command::new(BERTH)
        .args(["validate", "-o", "json"])
        .current_dir(dir.path())
        .stdout(writer)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.is_empty(), "nothing on stderr, no panic: {err}");
    assert_eq!(out.status.signal(), Some(13), "ended by SIGPIPE: {:?}", out.status);
}

#[test]
fn a_missing_spec_and_an_absent_server_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let out = berth(dir.path(), &["validate"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("berth.yaml does not exist") && err.contains("berth init"), "{err}");
    let out = Command::new(BERTH)
        .args(["--server", "http://127.0.0.1:9", "app", "ls"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("berth up") && err.contains("BERTH_SERVER"), "{err}");
}

#[test]
fn validate_reports_three_typos_at_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("berth.yaml"),
        "group: g\nname: web\nimage: i\nmemroy: 64\nhealth:\n  htp: /\ndriver: dockr\n",
    )
    .unwrap();
    let out = berth(dir.path(), &["validate", "-o", "json"]);
    assert!(!out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let fields: Vec<&str> = v["errors"].as_array().unwrap().iter().filter_map(|e| e["field"].as_str()).collect();
    assert_eq!(fields, ["memroy", "health.htp", "driver"], "{v}");
    let suggestions: Vec<&str> =
        v["errors"].as_array().unwrap().iter().filter_map(|e| e["suggestion"].as_str()).collect();
    assert_eq!(suggestions, ["memory", "http", "docker"], "{v}");
}

/// Logs carry colour only when asked (`--color always`) or for a terminal; never into a pipe by
/// default, and never with `--color never`.
#[test]
fn colour_in_logs_follows_color_and_the_terminal() {
    let dir = tempfile::tempdir().unwrap();
    let stderr_of = |color: Option<&str>| {
        let mut cmd = Command::new(BERTH);
        cmd.args(["agent", "--server", "http://127.0.0.1:9", "--join-token", "t", "--driver", "exec", "--data-dir"])
            .arg(dir.path())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        if let Some(c) = color {
            cmd.args(["--color", c]);
        }
        let mut child = cmd.spawn().unwrap();
        // It logs its failed join at once, then retries: a few lines are enough.
        let mut stderr = child.stderr.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut buf = vec![0u8; 4096];
            let n = std::io::Read::read(&mut stderr, &mut buf).unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).to_string()
        });
        let text = reader.join().unwrap();
        let _ = child.kill();
        let _ = child.wait();
        text
    };
    assert!(stderr_of(Some("always")).contains('\x1b'));
    let plain = stderr_of(None);
    assert!(!plain.is_empty() && !plain.contains('\x1b'), "{plain:?}");
    assert!(!stderr_of(Some("never")).contains('\x1b'));
}
