//! Fuzzing the parsers of outside input without a nightly toolchain: a seeded, mutation-based
//! loop (seeds per target, byte-level mutations, splices and a dictionary of each format's
//! tokens) that runs every input under `catch_unwind` and stops at the first panic or wrong
//! answer, keeping the input. Targets: the spec parser, the API's request bodies, the router's
//! HTTP/1 head parser, and the rules' native Lua subset (checked against the VM).

use std::panic::AssertUnwindSafe;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

/// What is fuzzed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// `AppSpec::from_yaml`, and JSON round trips of what it accepts.
    Spec,
    /// Every request body the API parses (`berth_server::fuzzing`).
    Api,
    /// The router's HTTP/1 head parser and framing decisions.
    Http1,
    /// The rules' native Lua subset, against the VM where it compiles.
    Lua,
}

impl Target {
    pub const ALL: [Target; 4] = [Target::Spec, Target::Api, Target::Http1, Target::Lua];

    pub fn name(self) -> &'static str {
        match self {
            Target::Spec => "spec",
            Target::Api => "api",
            Target::Http1 => "http1",
            Target::Lua => "lua",
        }
    }

    pub fn parse(name: &str) -> Option<Target> {
        Target::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Runs one input: whether it was accepted (went past parsing into what follows), or `Err`
    /// for a wrong answer (a panic is caught by the caller).
    pub fn run(self, data: &[u8]) -> Result<bool, String> {
        match self {
            Target::Spec => spec(data),
            Target::Api => Ok(berth_server::fuzzing::parse_every_body(data) > 0),
            Target::Http1 => http1(data),
            // Every input through the native compiler; one in four, chosen by its bytes, also
            // through the VM to compare (the VM is most of the cost).
            Target::Lua => match std::str::from_utf8(data) {
                Ok(source) if data.iter().fold(0u8, |h, b| h.wrapping_mul(31).wrapping_add(*b)) % 4 == 0 => {
                    berth_rules::fuzzing::native_agrees(source)
                }
                Ok(source) => Ok(berth_rules::fuzzing::native_compiles(source)),
                Err(_) => Ok(false),
            },
        }
    }

    fn seeds(self) -> &'static [&'static str] {
        match self {
            Target::Spec => SPEC_SEEDS,
            Target::Api => API_SEEDS,
            Target::Http1 => HTTP1_SEEDS,
            Target::Lua => LUA_SEEDS,
        }
    }

    fn tokens(self) -> &'static [&'static str] {
        match self {
            Target::Spec => SPEC_TOKENS,
            Target::Api => API_TOKENS,
            Target::Http1 => HTTP1_TOKENS,
            Target::Lua => LUA_TOKENS,
        }
    }
}

fn spec(data: &[u8]) -> Result<bool, String> {
    let Ok(text) = std::str::from_utf8(data) else { return Ok(false) };
    let Ok(spec) = berth_core::AppSpec::from_yaml(text, Some("fuzz.yaml")) else { return Ok(false) };
    // What was accepted is valid, and survives the store's JSON as it is.
    spec.validate().map_err(|e| format!("accepted, then invalid: {e}"))?;
    let json = serde_json_round_trip(&spec)?;
    if json != spec {
        return Err(format!("the JSON round trip changed the spec: {spec:?} became {json:?}"));
    }
    Ok(true)
}

fn serde_json_round_trip(spec: &berth_core::AppSpec) -> Result<berth_core::AppSpec, String> {
    let text = serde_json::to_string(spec).map_err(|e| format!("cannot write as JSON: {e}"))?;
    serde_json::from_str(&text).map_err(|e| format!("cannot read back its JSON: {e}"))
}

fn http1(data: &[u8]) -> Result<bool, String> {
    use berth_router::h1;
    let mut head = h1::Head::default();
    let mut accepted = false;
    if let Ok(Some(())) = h1::parse_request(data, &mut head) {
        accepted = true;
        if head.len > data.len() {
            return Err(format!("the head is {} bytes of {}", head.len, data.len()));
        }
        let meta = h1::meta(head.pairs(data));
        let _ = h1::request_framing(&meta);
    }
    let mut head = h1::Head::default();
    if let Ok(Some(())) = h1::parse_response(data, &mut head) {
        accepted = true;
        let meta = h1::meta(head.pairs(data));
        let _ = h1::response_framing(&meta, false, head.status);
    }
    Ok(accepted)
}

/// How a run ended.
#[derive(Debug)]
pub struct Report {
    pub runs: u64,
    /// Inputs the target accepted: parsed into what follows, where the deeper checks run.
    pub accepted: u64,
    pub elapsed: Duration,
    /// The input that failed, and why.
    pub failure: Option<(Vec<u8>, String)>,
}

impl Report {
    pub fn per_second(&self) -> f64 {
        self.runs as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Mutates seeds (and inputs it made, those accepted first) `runs` times from `seed`, running
/// each; stops at the first failure. `progress` hears every 2^20 runs.
pub fn fuzz(target: Target, runs: u64, seed: u64, progress: impl FnMut(u64)) -> Report {
    engine((target.seeds(), target.tokens()), runs, seed, |data| target.run(data), progress)
}

/// As `fuzz`, for a target of the caller's, from the spec seeds: the engine's own test.
pub fn fuzz_with(runs: u64, seed: u64, run: impl Fn(&[u8]) -> Result<bool, String>) -> Report {
    engine((SPEC_SEEDS, SPEC_TOKENS), runs, seed, run, |_| {})
}

fn engine(
    (seeds, tokens): (&[&str], &[&str]),
    runs: u64,
    seed: u64,
    run: impl Fn(&[u8]) -> Result<bool, String>,
    mut progress: impl FnMut(u64),
) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let seeds: Vec<Vec<u8>> = seeds.iter().map(|s| s.as_bytes().to_vec()).collect();
    // Inputs mutated again: the seeds, then those accepted (a cheap stand-in for coverage).
    let mut pool: Vec<Vec<u8>> = seeds.clone();
    let started = Instant::now();
    // Quiet while inputs run: a caught panic is reported with its input, not printed per run.
    let hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut failure = None;
    let (mut done, mut accepted) = (0, 0);
    for i in 0..runs {
        let base = if rng.random_range(0..4) == 0 {
            &seeds[rng.random_range(0..seeds.len())]
        } else {
            &pool[rng.random_range(0..pool.len())]
        };
        let input = mutate(&mut rng, base, &seeds, tokens);
        let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| run(&input)));
        done = i + 1;
        let took = match outcome {
            Ok(Ok(took)) => took,
            Ok(Err(wrong)) => {
                failure = Some((input, wrong));
                break;
            }
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".into());
                failure = Some((input, format!("panicked: {why}")));
                break;
            }
        };
        accepted += u64::from(took);
        // Accepted inputs are kept to mutate again (what passed the parser reaches the checks
        // after it), and now and then another.
        if input.len() < 4096 && (took || rng.random_range(0..64) == 0) {
            if pool.len() < 256 {
                pool.push(input);
            } else {
                let at = rng.random_range(0..pool.len());
                pool[at] = input;
            }
        }
        if done % (1 << 20) == 0 {
            progress(done);
        }
    }
    std::panic::set_hook(hook);
    Report { runs: done, accepted, elapsed: started.elapsed(), failure }
}

/// A few edits of `base`: one most often, up to eight.
fn mutate(rng: &mut StdRng, base: &[u8], seeds: &[Vec<u8>], tokens: &[&str]) -> Vec<u8> {
    const INTERESTING: &[u8] = b"\0\r\n\t :-[]{}&*!|>'\"%\\#,?@`~\x7f\xff\xc3";
    let mut out = base.to_vec();
    let edits = match rng.random_range(0..8) {
        0..=3 => 1,
        4 | 5 => 2,
        _ => rng.random_range(3..=8),
    };
    for _ in 0..edits {
        let at = if out.is_empty() { 0 } else { rng.random_range(0..=out.len()) };
        match rng.random_range(0..9) {
            0 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] ^= 1 << rng.random_range(0..8);
            }
            1 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] = INTERESTING[rng.random_range(0..INTERESTING.len())];
            }
            2 if !out.is_empty() => {
                let end = (at + rng.random_range(1..=16)).min(out.len());
                out.drain(at.min(end)..end);
            }
            3 => {
                let token = tokens[rng.random_range(0..tokens.len())];
                out.splice(at..at, token.bytes());
            }
            4 if !out.is_empty() => {
                // A run of the input repeated in place: long lines, deep nesting.
                let start = rng.random_range(0..out.len());
                let end = (start + rng.random_range(1..=32)).min(out.len());
                let chunk = out[start..end].to_vec();
                for _ in 0..rng.random_range(1..=64) {
                    out.splice(at..at, chunk.iter().copied());
                }
            }
            5 => {
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let start = rng.random_range(0..other.len());
                    let end = (start + rng.random_range(1..=64)).min(other.len());
                    out.splice(at..at, other[start..end].iter().copied());
                }
            }
            6 => out.insert(at, rng.random()),
            7 if !out.is_empty() => {
                let i = rng.random_range(0..out.len());
                out[i] = out[i].wrapping_add(rng.random_range(1..=3));
            }
            _ => {
                // Digits: lengths, ports, counts at their edges.
                let number = ["0", "-1", "65535", "65536", "4294967296", "18446744073709551616", "1e309", "0.0"];
                out.splice(at..at, number[rng.random_range(0..number.len())].bytes());
            }
        }
        if out.len() > 64 << 10 {
            out.truncate(64 << 10);
        }
    }
    out
}

const SPEC_SEEDS: &[&str] = &[
    "group: shop\nname: web\nimage: web:1\ninstances: 3\ncpu: 0.5\nmemory: 128\nports: [8080]\n",
    "group: shop\nname: web\nimage: web:1\nenvironment:\n  A: '1'\n  DB_PASSWORD: {secret: db_password}\n  N: 8080\n\
     health:\n  http: /health\n  interval: 2s\n  timeout: 1s\n  grace: 5s\nupgrade:\n  strategy: rolling\n  \
     max_over_capacity: 0.5\n  min_healthy_time: 10s\n",
    "group: g\nname: n\ndriver: exec\ncommand: [/bin/app, --port, '8080']\nservices: [web.example.com, api.example.com:8081]\n\
     constraints:\n  - [hostname, UNIQUE]\n  - [rack, GROUP_BY, '2']\nzones: [a, b]\nnetwork: host\nprivileged: true\n",
    "group: g\nname: n\nimage: i\ncommand: sh -c 'echo hi'\nstop_timeout: 30s\ndrain_timeout: 1m\npids: 64\n\
     placement: binpack\nlog_sinks: [syslog+udp://127.0.0.1:514]\n",
    "group: g\nname: n\nimage: i\nx: &a [1, 2]\ny: *a\n",
];

const SPEC_TOKENS: &[&str] = &[
    "group: ",
    "name: ",
    "image: ",
    "instances: ",
    "environment:\n  ",
    "{secret: ",
    "health:\n  http: ",
    "upgrade:\n  ",
    "constraints:\n  - [",
    "ports: [",
    "command: [",
    "- ",
    ": ",
    "\n",
    "  ",
    "&a ",
    "*a",
    "<<: *a\n",
    "!!binary ",
    "!!str ",
    "---\n",
    "...\n",
    "|\n  ",
    ">-\n  ",
    "'",
    "\"",
    "\\u0000",
    "[",
    "]",
    "{",
    "}",
    "# ",
    "? ",
    "%YAML 1.2\n",
];

const API_SEEDS: &[&str] = &[
    r#"{"instances": 3}"#,
    r#"{"image": "web:2", "options": {"wait": true}}"#,
    r#"{"spec": {"group": "shop", "name": "web", "image": "web:1", "instances": 2, "environment": {"A": "1"}}}"#,
    r#"{"name": "ci", "role": "deployer", "groups": ["shop"], "ttl_seconds": 3600}"#,
    r#"{"name": "shop", "cpu": 8.5, "memory": 16384, "instances": 40, "allow": ["privileged", "host-network"]}"#,
    r#"{"value": "hunter2"}"#,
    r#"{"id": "n1", "kind": "agent"}"#,
    r#"{"lines": [{"app": "shop/web", "instance": "i1", "node": "n1", "stream": "stdout", "line": "hi", "time": 1}], "dropped": {"i1": 2}}"#,
    "group: shop\nname: web\nimage: web:1\n",
];

const API_TOKENS: &[&str] = &[
    "{",
    "}",
    "[",
    "]",
    ",",
    ":",
    "\"",
    "null",
    "true",
    "false",
    "-0",
    "1e999",
    "\\u0000",
    "\\ud800",
    "\"spec\"",
    "\"instances\"",
    "\"environment\"",
    "\"secret\"",
    "{\"secret\": \"a\"}",
    "\"role\"",
    "\"admin\"",
    "\"groups\"",
];

const HTTP1_SEEDS: &[&str] = &[
    "GET / HTTP/1.1\r\nHost: web.shop.berth.local\r\nAccept: */*\r\n\r\n",
    "POST /api?x=1 HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello",
    "PUT /u HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    "GET /ws HTTP/1.1\r\nHost: a\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n",
    "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok",
    "HTTP/1.1 204 No Content\r\nTransfer-Encoding: chunked\r\n\r\n",
    "GET / HTTP/1.0\r\nHost: a\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
];

const HTTP1_TOKENS: &[&str] = &[
    "\r\n",
    "\n",
    ": ",
    " ",
    "HTTP/1.1",
    "HTTP/1.0",
    "Content-Length: ",
    "Transfer-Encoding: chunked",
    "Connection: close",
    "Connection: keep-alive",
    "Expect: 100-continue",
    "Host: ",
    "Upgrade: h2c",
    "\t",
    ",",
    "chunked, gzip",
    "%00",
];

const LUA_SEEDS: &[&str] = &[
    "if req.method == \"DELETE\" then return deny(403, \"no deletes here\") end",
    "if req.method == \"DELETE\" then return deny(403, \"no\") end\nset_header(\"X-Checked\", \"1\")\n",
    "if req.path:sub(1, 5) == '/old/' then rewrite('/new/' .. req.path:sub(6)) end\n\
     if req.headers['x-token'] ~= 'secret' and req.path == '/admin' then return deny(401) end\n\
     if req.host == 'old.example.com' then return redirect('https://new.example.com' .. req.path, 301) end\n\
     if req.headers.x_canary then return route('canary.internal') end",
    "local token = req.headers['x-token']\nif token == nil or token ~= 'secret' then return deny(401) end",
    "if req.path:find('^/admin') then return deny(403) end\nlocal id = req.path:match('^/users/(%d+)')\n\
     if id then set_header('X-User', id) end\nif req.path:find('.', 1, true) then return deny(400, 'no dots') end",
    "if req.query:find('debug=1', 1, true) then set_header('X-Debug', req.remote_addr or '-') end",
];

const LUA_TOKENS: &[&str] = &[
    "if ",
    " then ",
    " end",
    " else ",
    " elseif ",
    " and ",
    " or ",
    " not ",
    "==",
    "~=",
    "..",
    "return ",
    "local ",
    "deny(",
    "redirect(",
    "route(",
    "rewrite(",
    "set_header(",
    "req.path",
    "req.method",
    "req.host",
    "req.query",
    "req.headers['x-token']",
    ":sub(",
    ":find(",
    ":match(",
    ":lower()",
    "%d+",
    "^/",
    "(",
    ")",
    "'",
    "\"",
    ", ",
    "nil",
    "true",
    "1, true",
    "#",
    "--",
    "\n",
    "[[",
    "]]",
    "%",
];
