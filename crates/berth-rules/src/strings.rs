//! The VM's `string.find`, `string.match`, `string.gmatch` and `string.gsub`, on
//! [`pattern`](super::pattern)'s matcher, which charges every step to the request's budget.
//! Lua's own versions run in C, out of the instruction hook's reach. These take the same
//! arguments, return the same values and raise the same errors as Lua 5.4's; a differential test
//! holds them to that. The `string` table is also strings' metatable index, so `s:find(...)`
//! reaches them as well.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use mlua::{Lua, LuaString, MultiValue, Table, Value};

use super::pattern::{self, Budget, Cap, GMatch, MatchError, Replacement};

/// The functions Lua code calls. An error from a Rust function reaches Lua as a userdata, where
/// Lua's library raises a string; so the Rust side returns `FAIL` and the message, and these
/// raise it, with the position of the calling code as `luaL_error` gives it (or as it came, for
/// an error raised by a replacement function).
const WRAPPERS: &str = r#"
local FAIL, raw_find, raw_match, raw_gmatch, raw_gsub, string = ...
local error = error
local function pass(first, ...)
  if first == FAIL then
    local message, own = ...
    error(message, own and 2 or 0)
  end
  return first, ...
end
local function made(first, ...)
  if first == FAIL then error((...), 3) end
  return first
end
string.find = function(...) return pass(raw_find(...)) end
string.match = function(...) return pass(raw_match(...)) end
string.gsub = function(...) return pass(raw_gsub(...)) end
string.gmatch = function(...)
  local step = made(raw_gmatch(...))
  return function() return pass(step()) end
end
"#;

/// How a call ended without its values.
enum Raised {
    /// An error Lua code can catch as a string: the message, and whether it is the library's own
    /// (it then gets the caller's position) or came through from a replacement function.
    Fail(String, bool),
    /// The budget or memory ran out: raised as it is, ending the rule.
    Abort(mlua::Error),
}

impl From<MatchError> for Raised {
    fn from(e: MatchError) -> Raised {
        match e {
            MatchError::Budget | MatchError::Memory => Raised::Abort(abort(&e)),
            MatchError::Lua(_) | MatchError::TooComplex => Raised::Fail(e.message(), true),
        }
    }
}

impl From<mlua::Error> for Raised {
    fn from(e: mlua::Error) -> Raised {
        Raised::Abort(e)
    }
}

fn abort(e: &MatchError) -> mlua::Error {
    match e {
        MatchError::Memory => mlua::Error::MemoryError(e.message()),
        _ => mlua::Error::RuntimeError(e.message()),
    }
}

type Raw = Rc<dyn Fn(&Lua, MultiValue) -> Result<MultiValue, Raised>>;

/// A Lua function for `raw`, returning `FAIL` and the message where `raw` fails.
fn function(lua: &Lua, fail: &Table, raw: Raw) -> mlua::Result<mlua::Function> {
    let fail = fail.clone();
    lua.create_function(move |lua, args: MultiValue| match raw(lua, args) {
        Ok(values) => Ok(values),
        Err(Raised::Fail(message, own)) => Ok(MultiValue::from_vec(vec![
            Value::Table(fail.clone()),
            Value::String(lua.create_string(message)?),
            Value::Boolean(own),
        ])),
        Err(Raised::Abort(e)) => Err(e),
    })
}

/// Replaces the pattern functions of `lua`'s `string` table; steps go to `spent`, up to `limit`.
pub fn install(lua: &Lua, spent: Rc<Cell<u64>>, limit: u64) -> mlua::Result<()> {
    let string: Table = lua.globals().get("string")?;
    let fail = lua.create_table()?;
    let counter = spent.clone();
    let find = function(
        lua,
        &fail,
        Rc::new(move |lua, args| {
            let (s, p, init) = subject_pattern_init(lua, &args, "find")?;
            let plain = args.get(3).is_some_and(truthy);
            let (s, p) = (s.as_bytes(), p.as_bytes());
            let budget = Budget { spent: &counter, limit };
            let Some((whole, caps)) = pattern::find(&s, &p, init, plain, budget)? else {
                return Ok(MultiValue::from_vec(vec![Value::Nil]));
            };
            let mut out = vec![Value::Integer(whole.start as i64 + 1), Value::Integer(whole.end as i64)];
            for c in caps {
                out.push(capture_value(lua, &s, c)?);
            }
            Ok(MultiValue::from_vec(out))
        }),
    )?;
    let counter = spent.clone();
    let lua_match = function(
        lua,
        &fail,
        Rc::new(move |lua, args| {
            let (s, p, init) = subject_pattern_init(lua, &args, "match")?;
            let (s, p) = (s.as_bytes(), p.as_bytes());
            let budget = Budget { spent: &counter, limit };
            let Some(caps) = pattern::lua_match(&s, &p, init, budget)? else {
                return Ok(MultiValue::from_vec(vec![Value::Nil]));
            };
            Ok(capture_values(lua, &s, caps)?)
        }),
    )?;
    let counter = spent.clone();
    let inner_fail = fail.clone();
    let gmatch = function(
        lua,
        &fail,
        Rc::new(move |lua, args| {
            let (s, p, init) = subject_pattern_init(lua, &args, "gmatch")?;
            let state = RefCell::new(GMatch::new(s.as_bytes().len(), init));
            let counter = counter.clone();
            let step = function(
                lua,
                &inner_fail,
                Rc::new(move |lua, _| {
                    let budget = Budget { spent: &counter, limit };
                    let (s, p) = (s.as_bytes(), p.as_bytes());
                    match state.borrow_mut().next(&s, &p, budget)? {
                        Some(caps) => Ok(capture_values(lua, &s, caps)?),
                        None => Ok(MultiValue::new()),
                    }
                }),
            )?;
            Ok(MultiValue::from_vec(vec![Value::Function(step)]))
        }),
    )?;
    let gsub = function(lua, &fail, Rc::new(move |lua, args| gsub(lua, &args, &spent, limit)))?;
    lua.load(WRAPPERS).set_name("berth-strings").call::<()>((fail, find, lua_match, gmatch, gsub, string))
}

/// `string.gsub(s, pattern, repl [, n])`.
fn gsub(lua: &Lua, args: &MultiValue, spent: &Cell<u64>, limit: u64) -> Result<MultiValue, Raised> {
    let subject = args.front().cloned().unwrap_or(Value::Nil);
    let (s, p) = (string_arg(lua, args, 1, "gsub")?, string_arg(lua, args, 2, "gsub")?);
    let (s, p) = (s.as_bytes(), p.as_bytes());
    let repl = args.get(2).cloned().unwrap_or(Value::Nil);
    // Lua reads the count before it checks the replacement's type.
    let max = match args.get(3) {
        None | Some(Value::Nil) => None,
        Some(_) => Some(integer_arg(lua, args, 4, 0, "gsub")?),
    };
    let repl_text = match &repl {
        Value::String(t) => Some(t.as_bytes().to_vec()),
        Value::Integer(_) | Value::Number(_) => lua.coerce_string(repl.clone())?.map(|t| t.as_bytes().to_vec()),
        Value::Function(_) | Value::Table(_) => None,
        other => {
            let got = type_name(other, args.len() < 3);
            return Err(arg_error(lua, 3, &format!("string/function/table expected, got {got}"), "gsub"));
        }
    };
    let budget = Budget { spent, limit };
    let mut out_len = 0usize;
    let (text, n) = pattern::gsub::<Raised>(&s, &p, max, budget, |caps| {
        let replacement = match (&repl_text, &repl) {
            (Some(text), _) => {
                let mut out = Vec::new();
                caps.expand(text, &mut out, super::MEMORY_LIMIT.saturating_sub(out_len))?;
                Replacement::Text(out)
            }
            (None, Value::Table(t)) => {
                let key = capture_value(lua, caps.subject(), caps.first()?)?;
                replacement_value(lua, t.get::<Value>(key)?)?
            }
            (None, Value::Function(f)) => {
                let args = capture_values(lua, caps.subject(), caps.all()?)?;
                match f.call::<Value>(args) {
                    Ok(v) => replacement_value(lua, v)?,
                    // The function's own error goes on as it was raised.
                    Err(mlua::Error::RuntimeError(m)) => return Err(Raised::Fail(m, false)),
                    Err(mlua::Error::CallbackError { cause, .. }) if matches!(*cause, mlua::Error::RuntimeError(_)) => {
                        let mlua::Error::RuntimeError(m) = (*cause).clone() else { unreachable!() };
                        return Err(Raised::Fail(m, false));
                    }
                    Err(e) => return Err(Raised::Abort(e)),
                }
            }
            _ => Replacement::Keep,
        };
        // Lua builds the result in its own memory, under the VM's limit; so must this.
        if let Replacement::Text(t) = &replacement {
            out_len += t.len();
            if out_len > super::MEMORY_LIMIT {
                return Err(MatchError::Memory.into());
            }
        }
        Ok(replacement)
    })?;
    let first = match text {
        Some(t) => Value::String(lua.create_string(t)?),
        None => match subject {
            Value::String(_) => subject,
            other => lua.coerce_string(other)?.map_or(Value::Nil, Value::String),
        },
    };
    Ok(MultiValue::from_vec(vec![first, Value::Integer(n)]))
}

/// What a table or function gave for one match: nil and false keep the text, strings and numbers
/// replace it, anything else is an error.
fn replacement_value(lua: &Lua, v: Value) -> Result<Replacement, Raised> {
    match v {
        Value::Nil | Value::Boolean(false) => Ok(Replacement::Keep),
        Value::String(s) => Ok(Replacement::Text(s.as_bytes().to_vec())),
        Value::Integer(_) | Value::Number(_) => {
            let text = lua.coerce_string(v)?.map(|t| t.as_bytes().to_vec()).unwrap_or_default();
            Ok(Replacement::Text(text))
        }
        other => Err(Raised::Fail(format!("invalid replacement value (a {})", type_name(&other, false)), true)),
    }
}

fn capture_value(lua: &Lua, s: &[u8], c: Cap) -> mlua::Result<Value> {
    Ok(match c {
        Cap::Text(r) => Value::String(lua.create_string(&s[r])?),
        Cap::Position(n) => Value::Integer(n as i64),
    })
}

fn capture_values(lua: &Lua, s: &[u8], caps: Vec<Cap>) -> mlua::Result<MultiValue> {
    caps.into_iter().map(|c| capture_value(lua, s, c)).collect::<mlua::Result<Vec<_>>>().map(MultiValue::from_vec)
}

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Nil | Value::Boolean(false))
}

/// Lua's type names as error messages give them (`no value` for a missing argument).
fn type_name(v: &Value, absent: bool) -> &'static str {
    match v {
        _ if absent => "no value",
        Value::Nil => "nil",
        Value::Boolean(_) => "boolean",
        Value::LightUserData(_) => "light userdata",
        Value::Integer(_) | Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Table(_) => "table",
        Value::Function(_) => "function",
        Value::Thread(_) => "thread",
        _ => "userdata",
    }
}

/// `luaL_checklstring`: a string, or a number as its text. Borrowed, never copied: a rule may
/// search a long string many times.
fn string_arg(lua: &Lua, args: &MultiValue, n: usize, f: &str) -> Result<LuaString, Raised> {
    let v = args.get(n - 1);
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(num @ (Value::Integer(_) | Value::Number(_))) => {
            Ok(lua.coerce_string(num.clone())?.ok_or_else(|| arg_error(lua, n, "string expected, got number", f))?)
        }
        other => Err(arg_error(
            lua,
            n,
            &format!("string expected, got {}", type_name(other.unwrap_or(&Value::Nil), other.is_none())),
            f,
        )),
    }
}

/// The arguments `find`, `match` and `gmatch` start with: a subject, a pattern, and `init`.
fn subject_pattern_init(lua: &Lua, args: &MultiValue, f: &str) -> Result<(LuaString, LuaString, i64), Raised> {
    Ok((string_arg(lua, args, 1, f)?, string_arg(lua, args, 2, f)?, integer_arg(lua, args, 3, 1, f)?))
}

/// `luaL_optinteger`: nil or absent is `default`; a float or numeric string must be integral.
fn integer_arg(lua: &Lua, args: &MultiValue, n: usize, default: i64, f: &str) -> Result<i64, Raised> {
    let v = match args.get(n - 1) {
        None | Some(Value::Nil) => return Ok(default),
        Some(v) => v.clone(),
    };
    if let Some(i) = lua.coerce_integer(v.clone())? {
        return Ok(i);
    }
    if matches!(v, Value::Integer(_) | Value::Number(_)) || lua.coerce_number(v.clone())?.is_some() {
        return Err(arg_error(lua, n, "number has no integer representation", f));
    }
    Err(arg_error(lua, n, &format!("number expected, got {}", type_name(&v, false)), f))
}

/// `luaL_argerror`: names the function as its caller called it (level 1 is the wrapper in
/// [`WRAPPERS`]), and leaves out `self` for methods. A wrapper the caller tail-called has no
/// name left (nor a position): it is called `f`, with every argument counted.
fn arg_error(lua: &Lua, n: usize, extra: &str, f: &str) -> Raised {
    let names = lua.inspect_stack(1, |d| {
        let names = d.names();
        (names.name.map(|n| n.into_owned()), names.name_what)
    });
    let (name, what) = names.unwrap_or((None, None));
    let mut n = n;
    if what == Some("method") {
        n -= 1;
        if n == 0 {
            let name = name.as_deref().unwrap_or(f);
            return Raised::Fail(format!("calling '{name}' on bad self ({extra})"), true);
        }
    }
    let name = name.unwrap_or_else(|| f.into());
    Raised::Fail(format!("bad argument #{n} to '{name}' ({extra})"), true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use mlua::{LuaOptions, StdLib};

    /// Calls each pattern function in several shapes (method, field, iterator, every kind of
    /// replacement) and prints what came back, or the error, as one line.
    const HARNESS: &str = r#"
local kind, s, p, a, b = ...
local function show(ok, ...)
  local out = { tostring(ok) }
  for i = 1, select('#', ...) do
    local v = select(i, ...)
    out[#out + 1] = type(v) .. ':' .. tostring(v)
  end
  return table.concat(out, '|')
end
local repls = {
  ['%0'] = '<%0>', ['%1'] = '[%1]', ['%2'] = '%2%1', ['%%'] = '%%', ['bad'] = 'x%y', ['end'] = 'x%',
  ['num'] = 7, ['float'] = 1.5,
  ['table'] = { a = 'A', ['/'] = 9, x = false, b = {} },
  ['fn'] = function(c, d) if c == 'b' then return {} end if d then return d .. c end return c == 'a' and 'Z' or nil end,
  ['none'] = nil, ['bool'] = true,
}
-- Not tail calls: a wrapper tail-called loses its caller's position (see arg_error).
local unpack = table.unpack
local function keep(...) return table.pack(...) end
local function call(f) return function() local r = f() return unpack(r, 1, r.n) end end
if kind == 'find' then return show(pcall(call(function() local r = keep(string.find(s, p, a, b)) return r end))) end
if kind == 'mfind' then return show(pcall(call(function() local r = keep(s:find(p, a, b)) return r end))) end
if kind == 'match' then return show(pcall(call(function() local r = keep(string.match(s, p, a)) return r end))) end
if kind == 'mmatch' then return show(pcall(call(function() local r = keep(s:match(p, a)) return r end))) end
if kind == 'gmatch' then
  return show(pcall(function()
    local got, n = {}, 0
    for x, y in string.gmatch(s, p, a) do
      n = n + 1
      got[#got + 1] = tostring(x) .. ',' .. tostring(y)
      if n > 40 then break end
    end
    return table.concat(got, ';')
  end))
end
if kind == 'gsub' then return show(pcall(call(function() local r = keep(string.gsub(s, p, repls[a], b)) return r end))) end
if kind == 'mgsub' then return show(pcall(call(function() local r = keep(s:gsub(p, repls[a], b)) return r end))) end
error('unknown kind ' .. kind)
"#;

    struct Gen(u64);

    impl Gen {
        fn below(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }

        fn pick<'a>(&mut self, from: &[&'a str]) -> &'a str {
            from[self.below(from.len())]
        }

        fn pattern(&mut self) -> String {
            const PIECES: &[&str] = &[
                "a", "b", "/", "x", ".", "%a", "%d", "%w", "%s", "%z", "[ab]", "[^a]", "[a-c]", "[%a/]", "[]]", "(",
                "%f[%z]", "%f[^a]", ")", "()", "%1", "%2", "%0", "%b()", "%bab", "%f[%w]", "%f[a]", "%f", "*", "+",
                "-", "?", "^", "$", "%", "[", "]", "[^", "%b", "%.", "%(",
            ];
            let n = self.below(7);
            let mut p: String = (0..n).map(|_| self.pick(PIECES)).collect();
            if self.below(4) == 0 {
                p.insert(0, '^');
            }
            p
        }

        fn subject(&mut self) -> String {
            const CHARS: &[&str] = &["a", "b", "/", "x", "(", ")", "1", " ", "ab", "\0"];
            let n = self.below(12);
            (0..n).map(|_| self.pick(CHARS)).collect()
        }
    }

    fn vm(guarded: bool) -> Lua {
        let lua = Lua::new_with(StdLib::STRING | StdLib::TABLE | StdLib::MATH, LuaOptions::default()).unwrap();
        if guarded {
            install(&lua, Rc::new(Cell::new(0)), u64::MAX / 2).unwrap();
        }
        lua
    }

    /// Thousands of generated calls, each in Lua's own library and in this one: the same values
    /// and the same error messages, positions included.
    #[test]
    fn pattern_functions_behave_as_lua_does() {
        let (lua, ours) = (vm(false), vm(true));
        let (theirs_fn, ours_fn) = (
            lua.load(HARNESS).set_name("harness").into_function().unwrap(),
            ours.load(HARNESS).set_name("harness").into_function().unwrap(),
        );
        let seed =
            std::env::var("BERTH_PATTERN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x9e37_79b9_7f4a_7c15);
        let cases: usize = std::env::var("BERTH_PATTERN_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(6000);
        let mut g = Gen(seed);
        let (mut errors, mut matches) = (0, 0);
        for case in 0..cases {
            let kind = g.pick(&["find", "mfind", "match", "mmatch", "gmatch", "gsub", "mgsub"]);
            let (s, p) = (g.subject(), g.pattern());
            let call = |lua: &Lua, f: &mlua::Function, g: &mut Gen| -> String {
                let mut args: Vec<Value> = vec![
                    Value::String(lua.create_string(kind).unwrap()),
                    Value::String(lua.create_string(&s).unwrap()),
                    Value::String(lua.create_string(&p).unwrap()),
                ];
                let (a, b): (Value, Value) = if kind.ends_with("gsub") {
                    let repl =
                        g.pick(&["%0", "%1", "%2", "%%", "bad", "end", "num", "float", "table", "fn", "none", "bool"]);
                    let max = match g.below(5) {
                        0 => Value::Integer(1),
                        1 => Value::Integer(0),
                        2 => Value::Number(2.5),
                        _ => Value::Nil,
                    };
                    (Value::String(lua.create_string(repl).unwrap()), max)
                } else {
                    let init = match g.below(9) {
                        0 => Value::Integer(0),
                        1 => Value::Integer(-1),
                        2 => Value::Integer(-30),
                        3 => Value::Integer(3),
                        4 => Value::Integer(40),
                        5 => Value::Number(1.5),
                        6 => Value::String(lua.create_string("2").unwrap()),
                        7 => Value::String(lua.create_string("x").unwrap()),
                        _ => Value::Nil,
                    };
                    (init, Value::Boolean(g.below(4) == 0))
                };
                args.extend([a, b]);
                f.call::<String>(MultiValue::from_vec(args)).unwrap()
            };
            // Both sides draw the same arguments.
            let mut g2 = Gen(g.0);
            let expected = call(&lua, &theirs_fn, &mut g);
            let got = call(&ours, &ours_fn, &mut g2);
            assert_eq!(got, expected, "case {case}: {kind}({s:?}, {p:?})");
            if expected.starts_with("false") {
                errors += 1;
            } else if !expected.contains("nil:nil") {
                matches += 1;
            }
        }
        // The generator must reach both errors and matches, or the comparison says little.
        assert!(errors > cases / 20 && matches > cases / 5, "{errors} errors, {matches} matches of {cases}");
    }

    #[test]
    fn a_pathological_pattern_is_charged_and_stopped() {
        let lua = vm(false);
        let spent = Rc::new(Cell::new(0));
        install(&lua, spent.clone(), 1_000_000).unwrap();
        let started = std::time::Instant::now();
        let e = lua.load(r#"return string.find(("a"):rep(50000), ".-.-.-.-.-b")"#).exec().unwrap_err();
        assert!(e.to_string().contains("instruction budget of 1000000 exceeded"), "{e}");
        assert!(spent.get() > 1_000_000, "{}", spent.get());
        assert!(started.elapsed() < std::time::Duration::from_secs(2), "{:?}", started.elapsed());
        // gsub building a huge result is refused before it holds more than the VM's memory limit.
        let lua = vm(false);
        install(&lua, spent.clone(), u64::MAX / 2).unwrap();
        let e = lua.load(r#"return (("x"):rep(4096)):gsub(".", ("y"):rep(8192))"#).exec().unwrap_err();
        assert!(e.to_string().contains("not enough memory"), "{e}");
    }
}
