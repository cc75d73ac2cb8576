//! Request rules in Lua, as Slardar's dynamic Lua: sandboxed (no io, os, require, load, debug),
//! a memory limit and an instruction budget per request. Each worker thread keeps its own VM per
//! script, so the hot path takes no lock. A rule made only of what [`native`] models (comparing
//! `req` fields with constants and calling the rule functions, as most rules do) runs without
//! entering the VM at all.

pub mod header;
mod native;
mod pattern;
mod strings;

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::rc::Rc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use mlua::{Function, HookTriggers, Lua, LuaOptions, StdLib, Table, Value, VmState};

/// Instructions (and pattern-matching steps) one request may spend in its script.
pub const INSTRUCTION_BUDGET: u64 = 1_000_000;
/// Wall time one request may spend in its script, whatever it spends it on.
pub const TIME_LIMIT: Duration = Duration::from_millis(50);
/// Memory one script's VM may hold.
pub const MEMORY_LIMIT: usize = 16 * 1024 * 1024;
const HOOK_EVERY: u32 = 1000;
/// A script that ran out of its budget is not run for this long (doubling with each further
/// overrun, up to [`SUSPEND_MAX`]): a rule some requests make pathological would otherwise cost
/// a whole budget per request and starve every other app on the router's workers.
pub const SUSPEND_FIRST: Duration = Duration::from_millis(100);
pub const SUSPEND_MAX: Duration = Duration::from_secs(10);
/// Overruns further apart than this start the doubling again.
const STRIKES_FORGOTTEN_AFTER: Duration = Duration::from_secs(60);

/// A syntax, load or run-time error, with the line it points at when Lua names one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", line.map(|l| format!("line {l}: ")).unwrap_or_default())]
pub struct RuleError {
    pub line: Option<u32>,
    pub message: String,
    pub kind: FailureKind,
}

/// Why a rule gave no decision (in the order of `berth_api::RULE_FAILURES`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailureKind {
    /// The script raised an error (or could not be loaded).
    #[default]
    Error,
    /// The script ran out of its instruction budget or its time.
    Overrun,
    /// The script was not run: it overran recently and is suspended.
    Suspended,
}

impl FailureKind {
    /// Its index in `berth_api::RULE_FAILURES`.
    pub fn index(self) -> usize {
        self as usize
    }
}

impl RuleError {
    pub fn new(line: Option<u32>, message: impl Into<String>) -> RuleError {
        RuleError { line, message: message.into(), kind: FailureKind::Error }
    }
}

/// What a request that spent its budget is told, however it spent it (instructions or pattern
/// steps).
fn budget_message() -> String {
    format!("instruction budget of {INSTRUCTION_BUDGET} exceeded")
}

fn budget_spent() -> RuleError {
    RuleError { line: None, message: budget_message(), kind: FailureKind::Overrun }
}

/// What a script decided for one request.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    pub action: RuleAction,
    /// Headers to set on the request before it is forwarded.
    pub set_headers: Vec<(String, String)>,
    /// A new path (and query) for the forwarded request.
    pub rewrite: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum RuleAction {
    #[default]
    Pass,
    Deny {
        status: u16,
        message: String,
    },
    Redirect {
        url: String,
        status: u16,
    },
    /// Send the request to this upstream (a static upstream name or an app id) instead.
    Route(String),
}

impl std::fmt::Display for RuleAction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RuleAction::Pass => f.write_str("pass"),
            RuleAction::Deny { status, message } => write!(f, "deny {status} {message:?}"),
            RuleAction::Redirect { url, status } => write!(f, "redirect {status} {url}"),
            RuleAction::Route(name) => write!(f, "route to {name}"),
        }
    }
}

/// What a script sees of the request. A field of `req` is filled only when the script's source
/// names it (`req.method`, `req.headers["x-user"]`): a rule pays only for what it reads. A script
/// that indexes `req[...]` by a computed key gets every field, and one that walks `req.headers`
/// (`pairs`, `next`) gets every header.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub host: &'a str,
    pub remote: Option<std::net::IpAddr>,
    /// The request's headers as received (name, value).
    pub headers: &'a [(&'a [u8], &'a [u8])],
}

impl<'a> RequestView<'a> {
    /// Every value of the header `name` (any case), joined with ", " as HTTP allows.
    fn header(&self, name: &[u8]) -> Option<Cow<'a, [u8]>> {
        let mut found: Option<Cow<'a, [u8]>> = None;
        for (_, v) in self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)) {
            match &mut found {
                None => found = Some(Cow::Borrowed(v)),
                Some(joined) => {
                    let joined = joined.to_mut();
                    joined.extend_from_slice(b", ");
                    joined.extend_from_slice(v);
                }
            }
        }
        found
    }
}

/// A loaded script: its source, the hash that names its version, and its native form when it
/// has one.
#[derive(Debug, Clone)]
pub struct Script {
    pub source: Arc<str>,
    pub hash: u64,
    native: Option<Arc<native::Program>>,
    breaker: Arc<Breaker>,
}

/// Milliseconds on a process-wide monotonic clock, never 0.
fn clock_ms() -> u64 {
    static BASE: OnceLock<Instant> = OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// Suspends a script that keeps overrunning, shared by every worker that runs it.
#[derive(Debug, Default)]
struct Breaker {
    /// Clock ms until which the script is not run; 0 when it runs.
    until: AtomicU64,
    strikes: AtomicU32,
    last_strike: AtomicU64,
    overruns: AtomicU64,
    /// When a failure was last logged: a rule failing on every request logs once a second.
    last_report: AtomicU64,
}

impl Breaker {
    fn suspended(&self) -> bool {
        let until = self.until.load(Ordering::Relaxed);
        until != 0 && clock_ms() < until
    }

    fn strike(&self) {
        let now = clock_ms();
        self.overruns.fetch_add(1, Ordering::Relaxed);
        let last = self.last_strike.swap(now, Ordering::Relaxed);
        let strikes = if now.saturating_sub(last) > STRIKES_FORGOTTEN_AFTER.as_millis() as u64 {
            self.strikes.store(1, Ordering::Relaxed);
            1
        } else {
            self.strikes.fetch_add(1, Ordering::Relaxed) + 1
        };
        let pause = SUSPEND_FIRST.saturating_mul(1 << (strikes - 1).min(16)).min(SUSPEND_MAX);
        self.until.store(now + pause.as_millis() as u64, Ordering::Relaxed);
    }
}

impl Script {
    pub fn new(source: &str) -> Result<Script, RuleError> {
        check(source)?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        source.hash(&mut h);
        Ok(Script {
            source: source.into(),
            hash: h.finish(),
            native: native::compile(source).map(Arc::new),
            breaker: Arc::default(),
        })
    }

    /// How many requests ran out of budget or time in this version of the script.
    pub fn overruns(&self) -> u64 {
        self.breaker.overruns.load(Ordering::Relaxed)
    }

    /// Whether the script is suspended after overrunning (its requests take the error path).
    pub fn suspended(&self) -> bool {
        self.breaker.suspended()
    }

    /// Whether a failure now should be logged: at most once a second per script.
    pub fn report_due(&self) -> bool {
        let now = clock_ms();
        let last = self.breaker.last_report.load(Ordering::Relaxed);
        (last == 0 || now.saturating_sub(last) >= 1000)
            && self.breaker.last_report.compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed).is_ok()
    }

    pub fn version(&self) -> String {
        format!("{:016x}", self.hash)
    }

    /// `native` when requests are decided without the VM (it still takes the rare request whose
    /// case the native form does not model), `lua` otherwise.
    pub fn engine(&self) -> &'static str {
        if self.native.is_some() { "native" } else { "lua" }
    }
}

/// The message of a `deny` that gave none.
const DENIED: &str = "denied";

/// A deny status as a number that fits u16, or none; clamped to the error range.
fn deny_status(given: Option<u16>) -> u16 {
    given.unwrap_or(403).clamp(400, 599)
}

/// A redirect status as a number that fits u16, or none; anything but a redirect is 302.
fn redirect_status(given: Option<u16>) -> u16 {
    given.filter(|s| matches!(s, 301 | 302 | 303 | 307 | 308)).unwrap_or(302)
}

fn redirect_needs_url() -> RuleError {
    RuleError::new(None, "redirect needs a url")
}

fn route_needs_name() -> RuleError {
    RuleError::new(None, "route needs a name")
}

/// Helpers every script can call; they record the decision in `__berth`, whose tables they
/// hold as upvalues (a call does no global lookups).
const PRELUDE: &str = r#"
local tostring = tostring
local ctx = { headers = {} }
local set = ctx.headers
__berth = ctx
function deny(status, message)
  return { action = "deny", status = status or 403, message = message or "denied" }
end
function redirect(url, status)
  return { action = "redirect", url = url, status = status or 302 }
end
function route(name)
  return { action = "route", name = name }
end
function set_header(name, value)
  local n = #set
  set[n + 1] = tostring(name)
  set[n + 2] = tostring(value)
end
function rewrite(path)
  ctx.path = tostring(path)
end
"#;

fn sandboxed_vm() -> Result<Lua, mlua::Error> {
    let lua = Lua::new_with(StdLib::STRING | StdLib::TABLE | StdLib::MATH | StdLib::UTF8, LuaOptions::default())?;
    lua.set_memory_limit(MEMORY_LIMIT)?;
    let globals = lua.globals();
    for name in ["load", "loadstring", "dofile", "loadfile", "require", "collectgarbage", "print"] {
        globals.set(name, Value::Nil)?;
    }
    lua.load(PRELUDE).set_name("berth-prelude").exec()?;
    Ok(lua)
}

fn rule_error(e: &mlua::Error) -> RuleError {
    let text = match e {
        mlua::Error::SyntaxError { message, .. } => message.clone(),
        mlua::Error::RuntimeError(m) => m.clone(),
        mlua::Error::CallbackError { cause, .. } => return rule_error(cause),
        other => other.to_string(),
    };
    // Lua says `[string "rules"]:3: message`.
    let after = text.split_once("]:").map(|(_, rest)| rest).unwrap_or(&text);
    let (line, message) = match after.split_once(':') {
        Some((n, rest)) if n.trim().parse::<u32>().is_ok() => (n.trim().parse().ok(), rest.trim().to_string()),
        _ => (None, text.lines().next().unwrap_or_default().to_string()),
    };
    RuleError::new(line, message)
}

/// Compiles `source` in a fresh sandbox: a syntax error comes back with its line.
pub fn check(source: &str) -> Result<(), RuleError> {
    let lua = sandboxed_vm().map_err(|e| rule_error(&e))?;
    lua.load(source).set_name("rules").into_function().map(|_| ()).map_err(|e| rule_error(&e))
}

/// Runs a script for one request inside the VM, so that a request crosses between Rust and Lua
/// once: it takes the `req` fields as arguments, resets what the last request left, runs the
/// rule, and returns the decision, the rewritten path, and the headers set as one string
/// (`name NUL value NUL ...`, one conversion instead of one per field) with its field count.
/// Its locals are bound before any script runs, so a script cannot unhook them.
const DRIVER: &str = r#"
local rule, req, ctx = ...
local set = ctx.headers
local concat, lower, rawget, setmetatable, type = table.concat, string.lower, rawget, setmetatable, type
-- A whole-headers table is keyed by lowercase names; any case finds them.
local any_case = { __index = function(t, k) if type(k) == "string" then return rawget(t, lower(k)) end end }
return function(method, path, query, host, remote_addr, all_headers)
  req.method, req.path, req.query, req.host, req.remote_addr = method, path, query, host, remote_addr
  if all_headers then
    req.headers = setmetatable(all_headers, any_case)
  end
  if set[1] ~= nil then
    for i = #set, 1, -1 do set[i] = nil end
  end
  ctx.path = nil
  local decision = rule()
  local n = #set
  if n == 0 then
    return decision, ctx.path
  end
  return decision, ctx.path, concat(set, "\0"), n
end
"#;

struct Loaded {
    lua: Lua,
    /// The script wrapped by [`DRIVER`].
    driver: Function,
    /// Instructions and pattern steps spent by the running request.
    spent: Rc<Cell<u64>>,
    /// When the running request entered the script.
    started: Rc<Cell<Instant>>,
    /// The metatable of `req.headers`, whose `__index` looks headers up during one request.
    header_lookup: Table,
    /// Which `req` fields the script names; the others are never filled.
    reads: Reads,
}

#[derive(Debug, Clone, Copy)]
struct Reads {
    method: bool,
    path: bool,
    query: bool,
    host: bool,
    remote_addr: bool,
    /// Header lookups cost a callback per request.
    headers: bool,
    /// The script may walk the headers: it gets all of them in a table (a table per request).
    all_headers: bool,
}

impl Reads {
    /// Conservative: a word in the source, in code or not, is enough to fill a field.
    fn of(source: &str) -> Reads {
        // `req[k]` or walking `req` itself can reach any field.
        let dynamic = source.contains("req[") || source.contains("pairs") || source.contains("next");
        let names = |word: &str| dynamic || source.contains(word);
        let headers = names("headers");
        Reads {
            method: names("method"),
            path: names("path"),
            query: names("query"),
            host: names("host"),
            remote_addr: names("remote_addr"),
            headers,
            all_headers: headers && (source.contains("pairs") || source.contains("next")),
        }
    }
}

thread_local! {
    static VMS: RefCell<HashMap<u64, Rc<Loaded>>> = RefCell::new(HashMap::new());
}

fn loaded(script: &Script) -> Result<Rc<Loaded>, RuleError> {
    if let Some(l) = VMS.with(|v| v.borrow().get(&script.hash).cloned()) {
        return Ok(l);
    }
    let lua = sandboxed_vm().map_err(|e| rule_error(&e))?;
    let func = lua.load(&*script.source).set_name("rules").into_function().map_err(|e| rule_error(&e))?;
    let spent = Rc::new(Cell::new(0u64));
    let started = Rc::new(Cell::new(Instant::now()));
    let (counter, since) = (spent.clone(), started.clone());
    lua.set_hook(HookTriggers::new().every_nth_instruction(HOOK_EVERY), move |_, _| {
        counter.set(counter.get() + u64::from(HOOK_EVERY));
        if counter.get() > INSTRUCTION_BUDGET {
            Err(mlua::Error::RuntimeError(budget_message()))
        } else if since.get().elapsed() > TIME_LIMIT {
            Err(mlua::Error::RuntimeError(format!("time limit of {} ms exceeded", TIME_LIMIT.as_millis())))
        } else {
            Ok(VmState::Continue)
        }
    })
    .map_err(|e| rule_error(&e))?;
    // Pattern matching runs outside the hook's reach: it charges the same counter itself.
    strings::install(&lua, spent.clone(), INSTRUCTION_BUDGET).map_err(|e| rule_error(&e))?;
    let setup = || -> Result<(Function, Table), mlua::Error> {
        let req = lua.create_table()?;
        let headers = lua.create_table()?;
        let header_lookup = lua.create_table()?;
        headers.set_metatable(Some(header_lookup.clone()))?;
        req.raw_set("headers", headers)?;
        lua.globals().raw_set("req", req.clone())?;
        // The prelude made `__berth`; the driver holds it from here on.
        let ctx: Table = lua.globals().raw_get("__berth")?;
        let driver: Function = lua.load(DRIVER).set_name("berth-driver").call((func, req, ctx))?;
        // Requests make short-lived garbage: the generational collector handles it best.
        lua.gc_set_mode(mlua::state::GcMode::Generational(Default::default()));
        Ok((driver, header_lookup))
    };
    let (driver, header_lookup) = setup().map_err(|e| rule_error(&e))?;
    let reads = Reads::of(&script.source);
    let l = Rc::new(Loaded { lua, driver, spent, started, header_lookup, reads });
    VMS.with(|v| {
        let mut map = v.borrow_mut();
        // Old versions of scripts are never used again once replaced: keep the cache small.
        if map.len() >= 64 {
            map.clear();
        }
        map.insert(script.hash, l.clone());
    });
    Ok(l)
}

/// Headers that frame the request or belong to one connection: the router sets them, a rule may
/// not (a rule's `Content-Length` would hang the request, its `Transfer-Encoding` corrupt it).
const ROUTER_HEADERS: [&str; 9] = [
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "host",
    "keep-alive",
    "te",
    "trailer",
    "proxy-connection",
];

/// Refuses what a rule may not send on: a header the router owns or that is not a valid field,
/// and a rewrite that is not an origin-form path and query (no spaces, controls or fragment).
fn checked(outcome: Outcome) -> Result<Outcome, RuleError> {
    for (name, value) in &outcome.set_headers {
        if !header::is_name(name.as_bytes()) {
            return Err(RuleError::new(None, format!("set_header: `{}` is not a header name", name.escape_debug())));
        }
        if ROUTER_HEADERS.iter().any(|h| h.eq_ignore_ascii_case(name)) {
            return Err(RuleError::new(None, format!("set_header: `{name}` is the router's to set, not a rule's")));
        }
        if !header::is_value(value.as_bytes()) {
            return Err(RuleError::new(
                None,
                format!("set_header: the value of `{name}` holds a control character or non-ASCII byte"),
            ));
        }
    }
    if let Some(path) = &outcome.rewrite
        && !(path.starts_with('/') && path.bytes().all(|c| (0x21..0x7f).contains(&c) && c != b'#'))
    {
        return Err(RuleError::new(
            None,
            format!(
                "rewrite: `{}` is not a path and query (it starts with /, with no spaces, controls or #)",
                path.escape_debug()
            ),
        ));
    }
    Ok(outcome)
}

/// Runs `script` for one request. A runtime error, a spent budget, or a suspension is an `Err`
/// with its [`FailureKind`]; the caller applies the rule's `on_error` policy. A run that overruns
/// suspends the script for a while, on every worker.
/// A request to try a rule on, as `rules set --test` takes it: `METHOD TARGET [Name: value]...`
/// (`GET /admin?x=1 Host: shop.test X-User: 7`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrialRequest {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
}

impl TrialRequest {
    /// The request a script is tried on when none is given: `GET /` to `host`.
    pub fn sample(host: &str) -> TrialRequest {
        TrialRequest { method: "GET".into(), target: "/".into(), headers: vec![("Host".into(), host.into())] }
    }

    pub fn parse(text: &str) -> Result<TrialRequest, String> {
        let mut words = text.split_whitespace();
        let (Some(method), Some(target)) = (words.next(), words.next()) else {
            return Err(format!("`{text}`: expected METHOD TARGET [Name: value]..., e.g. `GET /path Host: x`"));
        };
        if !target.starts_with('/') {
            return Err(format!("`{target}`: the target must start with /"));
        }
        let mut headers: Vec<(String, String)> = Vec::new();
        for word in words {
            match word.strip_suffix(':') {
                Some(name) if header::is_name(name.as_bytes()) => headers.push((name.to_string(), String::new())),
                _ => match headers.last_mut() {
                    Some((_, value)) => {
                        if !value.is_empty() {
                            value.push(' ');
                        }
                        value.push_str(word);
                    }
                    None => return Err(format!("`{word}`: expected a header `Name:` before a value")),
                },
            }
        }
        Ok(TrialRequest { method: method.to_ascii_uppercase(), target: target.to_string(), headers })
    }
}

/// Runs `script` once on `trial`: `Err` when the script raises on it (a call of something that
/// does not exist, a type error), so that such a script is refused before it is in force. A run
/// that only spends its budget is not refused: that is the budget's to handle, per request.
pub fn try_on(script: &Script, trial: &TrialRequest) -> Result<Outcome, RuleError> {
    let host = trial.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case("host")).map_or("", |(_, v)| v.as_str());
    let pairs: Vec<(&[u8], &[u8])> = trial.headers.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())).collect();
    let (path, query) = trial.target.split_once('?').unwrap_or((&trial.target, ""));
    let view = RequestView { method: &trial.method, path, query, host, remote: None, headers: &pairs };
    match run(script, &view) {
        Err(e) if e.kind != FailureKind::Error => Ok(Outcome::default()),
        other => other,
    }
}

pub fn run(script: &Script, req: &RequestView<'_>) -> Result<Outcome, RuleError> {
    if script.breaker.suspended() {
        return Err(RuleError {
            line: None,
            message: "suspended after running out of its budget".into(),
            kind: FailureKind::Suspended,
        });
    }
    let result = match &script.native {
        Some(program) => match program.run(req) {
            Ok(decided) => decided,
            Err(native::Defer) => run_in_vm(script, req),
        },
        None => run_in_vm(script, req),
    };
    if let Err(e) = &result
        && e.kind == FailureKind::Overrun
    {
        script.breaker.strike();
    }
    result
}

/// Runs `script` in its VM even when it has a native form: what the native form must agree with,
/// and what benchmarks compare it to.
pub fn run_in_vm(script: &Script, req: &RequestView<'_>) -> Result<Outcome, RuleError> {
    let l = loaded(script)?;
    l.spent.set(0);
    l.started.set(Instant::now());
    type Returned = (Value, Option<String>, Option<String>, Option<usize>);
    let call = || -> Result<Returned, mlua::Error> {
        let reads = l.reads;
        // Fields the script never names go as nil: nothing to convert.
        let all_headers = if reads.all_headers {
            let table = l.lua.create_table_with_capacity(0, req.headers.len())?;
            for (name, _) in req.headers {
                let key = l.lua.create_string(name.to_ascii_lowercase())?;
                if table.raw_get::<Value>(&key)?.is_nil() {
                    let value = req.header(name).unwrap_or_default();
                    table.raw_set(key, l.lua.create_string(&value)?)?;
                }
            }
            Some(table)
        } else {
            None
        };
        let args = (
            reads.method.then_some(req.method),
            reads.path.then_some(req.path),
            reads.query.then_some(req.query),
            reads.host.then_some(req.host),
            reads.remote_addr.then(|| req.remote.map(|ip| ip.to_string()).unwrap_or_default()),
            all_headers,
        );
        if !reads.headers || reads.all_headers {
            return l.driver.call::<Returned>(args);
        }
        // The header lookup borrows this request: it lives only inside this scope.
        l.lua.scope(|scope| {
            let lookup = scope.create_function(|lua, (_, name): (Value, mlua::LuaString)| {
                req.header(&name.as_bytes()).map(|v| lua.create_string(&v)).transpose()
            })?;
            l.header_lookup.raw_set("__index", lookup)?;
            let result = l.driver.call::<Returned>(args);
            l.header_lookup.raw_set("__index", Value::Nil)?;
            result
        })
    };
    let returned = call();
    // A script may catch the budget's error with pcall and go on: overrunning is failing anyway.
    if l.spent.get() > INSTRUCTION_BUDGET || l.started.get().elapsed() > TIME_LIMIT {
        let message = match &returned {
            Err(e) => rule_error(e).message,
            Ok(_) => budget_message(),
        };
        return Err(RuleError { message, ..budget_spent() });
    }
    let (result, rewrite, joined, fields) = returned.map_err(|e| rule_error(&e))?;
    let mut outcome = Outcome { rewrite, ..Outcome::default() };
    if let Some(joined) = joined {
        let parts: Vec<&str> = joined.split('\0').collect();
        // A NUL inside a name or value would shift every pair after it: refuse, never guess.
        if Some(parts.len()) != fields {
            return Err(RuleError::new(None, "set_header: a name or value holds a NUL byte"));
        }
        outcome.set_headers = parts.chunks_exact(2).map(|p| (p[0].to_string(), p[1].to_string())).collect();
    }
    if let Value::Table(t) = result {
        let action: String = t.get("action").unwrap_or_default();
        outcome.action = match action.as_str() {
            "deny" => RuleAction::Deny {
                status: deny_status(t.get::<u16>("status").ok()),
                message: t.get("message").unwrap_or_else(|_| DENIED.into()),
            },
            "redirect" => RuleAction::Redirect {
                url: t.get("url").map_err(|_| redirect_needs_url())?,
                status: redirect_status(t.get::<u16>("status").ok()),
            },
            "route" => RuleAction::Route(t.get("name").map_err(|_| route_needs_name())?),
            _ => RuleAction::Pass,
        };
    }
    checked(outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_script_is_tried_on_a_request_before_it_is_in_force() {
        let trial = TrialRequest::parse("get /admin?x=1 Host: shop.test X-Note: two words").unwrap();
        assert_eq!(trial.method, "GET");
        assert_eq!(trial.headers, vec![("Host".into(), "shop.test".into()), ("X-Note".into(), "two words".into())]);
        assert!(TrialRequest::parse("GET").is_err());
        assert!(TrialRequest::parse("GET nopath").is_err());
        assert!(TrialRequest::parse("GET / value-without-name").is_err());

        let typo = Script::new("return denny(403)").unwrap();
        let err = try_on(&typo, &TrialRequest::sample("shop.test")).unwrap_err();
        assert_eq!(err.line, Some(1), "{err:?}");
        let guarded = Script::new("if req.path == '/admin' then return denny(403) end").unwrap();
        assert!(try_on(&guarded, &TrialRequest::sample("shop.test")).is_ok(), "the sample does not reach it");
        assert!(try_on(&guarded, &trial).is_err(), "the given request does");
        let good = Script::new("if req.host == 'shop.test' then return deny(403, 'no') end").unwrap();
        assert!(matches!(try_on(&good, &trial).unwrap().action, RuleAction::Deny { status: 403, .. }));
    }

    const HEADERS: &[(&[u8], &[u8])] = &[(b"X-Token", b"abc"), (b"Accept", b"text/html"), (b"accept", b"*/*")];

    fn req<'a>(method: &'a str, path: &'a str) -> RequestView<'a> {
        RequestView { method, path, query: "", host: "a.example", remote: Some([10, 0, 0, 1].into()), headers: HEADERS }
    }

    #[test]
    fn scripts_can_walk_the_headers_and_index_req_by_computed_keys() {
        let s = Script::new(
            "local n = 0\nfor name, value in pairs(req.headers) do n = n + 1 end\n\
             set_header('X-Count', n)\nset_header('X-Accept', req.headers['Accept'])",
        )
        .unwrap();
        let o = run(&s, &req("GET", "/")).unwrap();
        assert_eq!(
            o.set_headers,
            vec![("X-Count".into(), "2".into()), ("X-Accept".into(), "text/html, */*".into())],
            "two distinct names; repeated headers joined; any case finds them"
        );
        let s = Script::new("local field = 'meth' .. 'od'\nset_header('X-Method', req[field])").unwrap();
        assert_eq!(run(&s, &req("PATCH", "/")).unwrap().set_headers, vec![("X-Method".into(), "PATCH".into())]);
    }

    #[test]
    fn a_header_looked_up_by_name_joins_its_repeats() {
        let s = Script::new("set_header('X-Accept', req.headers['accept'])").unwrap();
        assert_eq!(run(&s, &req("GET", "/")).unwrap().set_headers, vec![("X-Accept".into(), "text/html, */*".into())]);
    }

    #[test]
    fn a_nul_in_a_set_header_is_refused_not_split() {
        // The value arrives from the request: a NUL must not turn into a header of its own.
        let s = Script::new("set_header('X-User', req.path)").unwrap();
        let e = run(&s, &req("GET", "a\0Injected\0yes")).unwrap_err();
        assert!(e.message.contains("NUL"), "{e}");
        let ok = run(&s, &req("GET", "/me")).unwrap();
        assert_eq!(ok.set_headers, vec![("X-User".to_string(), "/me".to_string())]);
    }

    #[test]
    fn headers_set_for_one_request_do_not_leak_into_the_next() {
        let s = Script::new("if req.path == '/a' then set_header('X-A', '1') set_header('X-B', '2') end").unwrap();
        assert_eq!(run(&s, &req("GET", "/a")).unwrap().set_headers.len(), 2);
        assert!(run(&s, &req("GET", "/b")).unwrap().set_headers.is_empty());
    }

    #[test]
    fn deny_deletes() {
        let s = Script::new("if req.method == \"DELETE\" then return deny(403, \"no deletes here\") end").unwrap();
        assert_eq!(run(&s, &req("GET", "/")).unwrap().action, RuleAction::Pass);
        assert_eq!(
            run(&s, &req("DELETE", "/x")).unwrap().action,
            RuleAction::Deny { status: 403, message: "no deletes here".into() }
        );
    }

    #[test]
    fn rewrite_headers_redirect_route() {
        let s = Script::new(
            "set_header('X-Seen', req.headers['X-Token'])\n\
             if req.path:sub(1, 5) == '/old/' then rewrite('/new/' .. req.path:sub(6)) end\n\
             if req.path == '/moved' then return redirect('https://example.com/', 301) end\n\
             if req.path == '/legacy' then return route('legacy.internal') end",
        )
        .unwrap();
        let o = run(&s, &req("GET", "/old/a")).unwrap();
        assert_eq!(o.rewrite.as_deref(), Some("/new/a"));
        assert_eq!(o.set_headers, vec![("X-Seen".to_string(), "abc".to_string())]);
        let o = run(&s, &req("GET", "/moved")).unwrap();
        assert_eq!(o.action, RuleAction::Redirect { url: "https://example.com/".into(), status: 301 });
        assert_eq!(o.rewrite, None, "each request starts clean");
        assert_eq!(run(&s, &req("GET", "/legacy")).unwrap().action, RuleAction::Route("legacy.internal".into()));
    }

    #[test]
    fn syntax_error_names_its_line() {
        let e = check("local a = 1\nif a then\n  return deny(403\nend").unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.to_string().starts_with("line 4: "), "{e}");
    }

    #[test]
    fn sandbox_has_no_io_os_require_load_debug() {
        for probe in [
            "io.open('/etc/passwd')",
            "os.exit(1)",
            "require('x')",
            "load('return 1')",
            "debug.getinfo(1)",
            "dofile('/x')",
        ] {
            let s = Script::new(&format!("return {probe}")).unwrap();
            let e = run(&s, &req("GET", "/")).unwrap_err();
            assert!(e.message.contains("nil"), "{probe}: {e}");
        }
    }

    #[test]
    fn endless_loop_is_cut_off_by_the_budget() {
        let s = Script::new("while true do end").unwrap();
        let e = run(&s, &req("GET", "/")).unwrap_err();
        assert!(e.message.contains("instruction budget"), "{e}");
        // The VM is still usable for the next request.
        let ok = Script::new("return nil").unwrap();
        assert_eq!(run(&ok, &req("GET", "/")).unwrap().action, RuleAction::Pass);
        assert!(run(&s, &req("GET", "/")).is_err());
    }

    /// The issue's two freezes: a pattern in the VM and one in a native rule, each now stopped by
    /// the budget in milliseconds; the script is then suspended, and runs again once that ends.
    #[test]
    fn pathological_patterns_overrun_and_suspend_the_script() {
        let vm =
            Script::new("local i = string.find((\"a\"):rep(50000), \".-.-.-.-.-b\") return deny(200, tostring(i))")
                .unwrap();
        assert_eq!(vm.engine(), "lua");
        let native =
            Script::new("if req.path:find(\"^/api/.-/.-/.-/admin\") then return deny(403, \"no admin\") end").unwrap();
        assert_eq!(native.engine(), "native");
        let long = format!("/api/{}", "/".repeat(1600));
        for (script, path) in [(&vm, "/"), (&native, long.as_str())] {
            let started = Instant::now();
            let e = run(script, &req("GET", path)).unwrap_err();
            assert_eq!(e.kind, FailureKind::Overrun, "{e}");
            assert!(e.message.contains("instruction budget"), "{e}");
            assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
            assert_eq!(script.overruns(), 1);
            // Suspended: the next request does not run it at all.
            let started = Instant::now();
            assert_eq!(run(script, &req("GET", path)).unwrap_err().kind, FailureKind::Suspended);
            assert!(started.elapsed() < Duration::from_millis(5));
            assert_eq!(script.overruns(), 1);
        }
        // A suspension ends: an ordinary request is decided again.
        let deadline = Instant::now() + SUSPEND_FIRST * 20;
        while native.suspended() {
            assert!(Instant::now() < deadline, "still suspended");
            std::thread::sleep(Duration::from_millis(10));
        }
        let ok = run(&native, &req("GET", "/api/a/b/c/admin")).unwrap();
        assert_eq!(ok.action, RuleAction::Deny { status: 403, message: "no admin".into() });
        // A second overrun soon after suspends for twice as long.
        assert_eq!(run(&native, &req("GET", &long)).unwrap_err().kind, FailureKind::Overrun);
        let until = native.breaker.until.load(Ordering::Relaxed) - clock_ms();
        assert!(until > SUSPEND_FIRST.as_millis() as u64 + 50, "{until} ms");
    }

    #[test]
    fn a_script_that_catches_its_budget_error_still_overruns() {
        let s = Script::new("for i = 1, 100 do pcall(function() while true do end end) end return nil").unwrap();
        let started = Instant::now();
        let e = run(&s, &req("GET", "/")).unwrap_err();
        assert_eq!(e.kind, FailureKind::Overrun, "{e}");
        assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    }

    /// What a rule sends on cannot corrupt the request: no injected line, no framing header.
    #[test]
    fn rules_cannot_corrupt_the_request_sent_on() {
        for (source, says) in [
            ("rewrite('/a HTTP/1.1\\r\\nX-Injected: yes\\r\\nX-Pad: x')", "rewrite"),
            ("rewrite('no-slash')", "rewrite"),
            ("rewrite('/a#frag')", "rewrite"),
            ("set_header('Content-Length', '100')", "router's to set"),
            ("set_header('Transfer-Encoding', 'chunked')", "router's to set"),
            ("set_header('connection', 'close')", "router's to set"),
            ("set_header('Host', 'evil.test')", "router's to set"),
            ("set_header('Upgrade', 'websocket')", "router's to set"),
            ("set_header('X-A', 'a\\r\\nX-B: b')", "control character"),
            ("set_header('X A', 'b')", "not a header name"),
            // The same refusals when the VM decides.
            ("local t = {'Content-Length'} set_header(t[1], '100')", "router's to set"),
            ("local t = {'nope'} rewrite(t[1])", "rewrite"),
        ] {
            let s = Script::new(source).unwrap();
            let e = run(&s, &req("GET", "/")).unwrap_err();
            assert!(e.message.contains(says), "{source}: {e}");
            assert_eq!(e.kind, FailureKind::Error);
        }
        let s = Script::new("rewrite('/b?x=1&y=%20') set_header('X-Ok', 'fine value')").unwrap();
        let o = run(&s, &req("GET", "/")).unwrap();
        assert_eq!(o.rewrite.as_deref(), Some("/b?x=1&y=%20"));
    }

    #[test]
    fn memory_is_limited() {
        let s = Script::new("local t = {} for i = 1, 1e9 do t[i] = string.rep('x', 1024 * 1024) end").unwrap();
        let e = run(&s, &req("GET", "/")).unwrap_err();
        assert!(e.message.contains("memory"), "{e}");
    }
}

/// For fuzzing (`berth-fuzz lua`): the native subset against the VM on one source.
#[doc(hidden)]
pub mod fuzzing {
    use super::{RequestView, Script, native, run_in_vm};

    /// Whether the native compiler takes `source`: the cheap half of `native_agrees`.
    pub fn native_compiles(source: &str) -> bool {
        native::compile(source).is_some()
    }

    /// Whether `source` runs natively (`Ok(true)`), or not (`Ok(false)`: no native form, or not
    /// Lua at all, which `Script::new` refuses before any native form is made), or has a
    /// native form that decides a request otherwise than the VM does (`Err`, saying how).
    pub fn native_agrees(source: &str) -> Result<bool, String> {
        let Some(program) = native::compile(source) else { return Ok(false) };
        let Ok(script) = Script::new(source) else { return Ok(false) };
        let headers: [(&[u8], &[u8]); 3] = [(b"X-Token", b"abc"), (b"accept", b"*/*"), (b"x-a", b"\xff")];
        let views = [
            RequestView { method: "GET", path: "/", query: "", host: "h.example", remote: None, headers: &[] },
            RequestView {
                method: "DELETE",
                path: "/old/users/42/x.y",
                query: "a=1&b",
                host: "old.example.com",
                remote: Some([10, 0, 0, 1].into()),
                headers: &headers,
            },
        ];
        for view in &views {
            if let Ok(decided) = program.run(view) {
                let vm = native::without_addresses(run_in_vm(&script, view));
                // The VM counts instructions, the native form its own steps: where the VM runs out
                // of its budget first, the native form's decision stands (it is the same rule,
                // run more cheaply). Semantics are compared, not budgets.
                if vm.as_ref().is_err_and(|e| e.kind == super::FailureKind::Overrun) {
                    continue;
                }
                let native = native::without_addresses(decided);
                if native != vm {
                    return Err(format!("{} {}: native {native:?}, VM {vm:?}", view.method, view.path));
                }
            }
        }
        Ok(true)
    }
}
