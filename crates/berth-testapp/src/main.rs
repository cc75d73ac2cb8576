//! A tiny HTTP server for Berth's tests, std only so it links statically into a FROM-scratch image.
//!
//! `/` answers `{"instance": ..., "version": ..., "app": ...}`, `/health` answers 200 (or 503 with
//! `--fail-health`; `/slow?ms=N` answers after N ms). Flags make it slow to start, crash, or eat memory.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

struct Config {
    port: u16,
    version: String,
    start_delay_ms: u64,
    crash_after_ms: Option<u64>,
    exit_code: i32,
    fail_health: bool,
    alloc_mb: usize,
    /// Print a numbered line with its write time every N ms (0: never); `--chatter-lines` per tick.
    chatter_ms: u64,
    chatter_lines: u64,
    /// Keep one core busy.
    burn_cpu: bool,
    /// Serve nothing: say whether stdin is a terminal, echo its lines, and exit with
    /// `--exit-code` at its end (for `berth app NAME exec -it`).
    echo_stdin: bool,
    /// Exit at once with `--exit-code` when this path exists (relative to the working
    /// directory): a broken machine, for tests of bad nodes.
    fail_if_exists: Option<String>,
}

fn usage(problem: &str) -> ! {
    eprintln!(
        "berth-testapp: {problem}\nusage: berth-testapp [--port N] [--version V] [--start-delay-ms N] \
         [--crash-after-ms N] [--exit-code N] [--fail-health] [--alloc-mb N] [--chatter-ms N] [--chatter-lines N] [--burn-cpu] [--echo-stdin] [--fail-if-exists PATH]"
    );
    std::process::exit(2)
}

fn parse() -> Config {
    let env_port = std::env::var("PORT").ok().and_then(|p| p.parse().ok());
    let mut c = Config {
        port: env_port.unwrap_or(8080),
        version: std::env::var("APP_VERSION").unwrap_or_else(|_| "v1".into()),
        start_delay_ms: 0,
        crash_after_ms: None,
        exit_code: 3,
        fail_health: false,
        alloc_mb: 0,
        chatter_ms: 0,
        chatter_lines: 1,
        burn_cpu: false,
        echo_stdin: false,
        fail_if_exists: None,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let mut value = |name: &str| args.next().unwrap_or_else(|| usage(&format!("{name} needs a value")));
        let number = |name: &str, text: String| {
            text.parse::<u64>().unwrap_or_else(|_| usage(&format!("{name}: `{text}` is not a number")))
        };
        match flag.as_str() {
            "--port" => c.port = number("--port", value("--port")) as u16,
            "--version" => c.version = value("--version"),
            "--start-delay-ms" => c.start_delay_ms = number("--start-delay-ms", value("--start-delay-ms")),
            "--crash-after-ms" => c.crash_after_ms = Some(number("--crash-after-ms", value("--crash-after-ms"))),
            "--exit-code" => c.exit_code = number("--exit-code", value("--exit-code")) as i32,
            "--fail-health" => c.fail_health = true,
            "--alloc-mb" => c.alloc_mb = number("--alloc-mb", value("--alloc-mb")) as usize,
            "--chatter-ms" => c.chatter_ms = number("--chatter-ms", value("--chatter-ms")),
            "--chatter-lines" => c.chatter_lines = number("--chatter-lines", value("--chatter-lines")),
            "--burn-cpu" => c.burn_cpu = true,
            "--echo-stdin" => c.echo_stdin = true,
            "--fail-if-exists" => c.fail_if_exists = Some(value("--fail-if-exists")),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    c
}

fn main() {
    let config = Arc::new(parse());
    if let Some(path) = config.fail_if_exists.as_deref().filter(|p| std::path::Path::new(p).exists()) {
        eprintln!("{path} exists: this machine is broken");
        std::process::exit(config.exit_code);
    }
    if config.echo_stdin {
        echo_stdin(config.exit_code);
    }
    if config.alloc_mb > 0 {
        // Touch every page so the memory is really used and the cgroup limit bites.
        let mut hog: Vec<Vec<u8>> = Vec::new();
        for _ in 0..config.alloc_mb {
            hog.push(vec![1u8; 1024 * 1024]);
        }
        eprintln!("allocated {} MiB", hog.len());
        std::mem::forget(hog);
    }
    if config.start_delay_ms > 0 {
        std::thread::sleep(Duration::from_millis(config.start_delay_ms));
    }
    if config.burn_cpu {
        std::thread::spawn(|| {
            let mut x: u64 = 1;
            loop {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
            }
        });
    }
    if config.chatter_ms > 0 {
        let (every, per_tick) = (config.chatter_ms, config.chatter_lines);
        std::thread::spawn(move || {
            let id = std::env::var("BERTH_INSTANCE_ID").unwrap_or_default();
            let mut n: u64 = 0;
            loop {
                // Locked per tick, not for good: the main thread prints too.
                let mut out = std::io::stdout().lock();
                for _ in 0..per_tick {
                    n += 1;
                    let at =
                        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
                    if writeln!(out, "chatter {n} from {id} at {at}").and_then(|_| out.flush()).is_err() {
                        return;
                    }
                }
                drop(out);
                std::thread::sleep(Duration::from_millis(every));
            }
        });
    }
    if let Some(ms) = config.crash_after_ms {
        let code = config.exit_code;
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(ms));
            eprintln!("crashing on purpose with code {code}");
            std::process::exit(code);
        });
    }
    let listener = TcpListener::bind(("0.0.0.0", config.port)).unwrap_or_else(|e| {
        eprintln!("berth-testapp: cannot listen on port {}: {e}", config.port);
        std::process::exit(1)
    });
    println!("berth-testapp {} listening on {}", config.version, config.port);
    for stream in listener.incoming().flatten() {
        let config = config.clone();
        std::thread::spawn(move || serve(stream, &config));
    }
}

fn echo_stdin(code: i32) -> ! {
    use std::io::IsTerminal;
    let stdin = std::io::stdin();
    println!("tty={}", stdin.is_terminal());
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        println!("got: {line}");
    }
    eprintln!("stdin closed");
    std::process::exit(code)
}

/// Serves requests on one connection until the client closes it (HTTP/1.1 keep-alive).
fn serve(stream: TcpStream, config: &Config) {
    let _ = stream.set_read_timeout(Some(Duration::from_secs(60)));
    let Ok(mut writer) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(stream);
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut content_length = 0usize;
        let mut close = false;
        let mut upgrade_echo = false;
        let mut forwarded_proto = String::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((name, value)) = line.split_once(':') {
                let value = value.trim();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => content_length = value.parse().unwrap_or(0),
                    "connection" => close = value.eq_ignore_ascii_case("close"),
                    "upgrade" => upgrade_echo = value.eq_ignore_ascii_case("echo"),
                    "x-forwarded-proto" => forwarded_proto = value.to_string(),
                    _ => {}
                }
            }
        }
        if content_length > 0 {
            let mut body = vec![0u8; content_length.min(1 << 20)];
            if reader.read_exact(&mut body).is_err() {
                return;
            }
        }
        let path = request_line.split_whitespace().nth(1).unwrap_or("/");
        if upgrade_echo && path == "/echo" {
            // A protocol switch the way WebSocket does it: 101, then raw bytes echoed back.
            let hello = "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: echo\r\n\r\n";
            if writer.write_all(hello.as_bytes()).is_err() {
                return;
            }
            let mut buf = [0u8; 4096];
            loop {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => {
                        if writer.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
        }
        let (status, body) = respond(path, config, &forwarded_proto);
        let response = format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n{}\r\n{body}",
            body.len(),
            if close { "Connection: close\r\n" } else { "" }
        );
        if writer.write_all(response.as_bytes()).is_err() || close {
            return;
        }
    }
}

fn respond(target: &str, config: &Config, forwarded_proto: &str) -> (&'static str, String) {
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    // `/slow?ms=N`: a request that takes N ms, then answers as `/` does.
    let path = if path == "/slow" {
        let ms = query.strip_prefix("ms=").and_then(|v| v.parse().ok()).unwrap_or(1000);
        std::thread::sleep(Duration::from_millis(ms));
        "/"
    } else {
        path
    };
    match path {
        "/health" if config.fail_health => ("503 Service Unavailable", "{\"healthy\":false}".into()),
        "/health" => ("200 OK", "{\"healthy\":true}".into()),
        "/" => {
            let var = |k: &str| std::env::var(k).unwrap_or_default();
            let body = format!(
                "{{\"instance\":\"{}\",\"version\":\"{}\",\"app\":\"{}\",\"tz\":\"{}\",\"proto\":\"{}\"}}",
                var("BERTH_INSTANCE_ID"),
                config.version,
                var("BERTH_APP"),
                var("TZ"),
                forwarded_proto
            );
            ("200 OK", body)
        }
        _ => ("404 Not Found", "{\"error\":\"not found\"}".into()),
    }
}
