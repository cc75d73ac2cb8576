//! Lua 5.4 patterns, matched with a step budget, for rules natively and in the VM.
//!
//! Lua's own matcher (lstrlib.c) runs in C, where the VM's instruction hook never fires: a rule
//! like `s:find(".-.-.-.-b")` on a long subject would hold a router worker for seconds. So the
//! VM's `find`, `match`, `gmatch` and `gsub` are this module's, and every step the matcher takes
//! is charged to the request's budget (the same counter the instruction hook fills). Matching
//! takes exactly the steps of Lua's matcher, so it finds the same match, raises the same errors,
//! and runs out of depth ("pattern too complex") where Lua would.
//!
//! [`Pattern::parse`] is stricter: it accepts only patterns on which Lua raises no error whatever
//! the subject (every class well formed, captures balanced and at most 32, none of `%b`, `%f`,
//! back-references or position captures). Those are what native rules evaluate themselves.

use std::cell::Cell;
use std::ops::Range;

/// Lua's limit on nested matcher calls (`MAXCCALLS` in lstrlib.c).
const MAX_DEPTH: u32 = 200;
/// Lua's limit on captures in one pattern.
pub const MAX_CAPTURES: usize = 32;
/// Characters that make a pattern more than a plain string to `find`.
const SPECIALS: &[u8] = b"^$*+?.([%-";
const ESC: u8 = b'%';

/// Why a match stopped without an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MatchError {
    /// An error Lua raises with this message (a malformed pattern, a bad capture index).
    Lua(String),
    /// The matcher went deeper than Lua allows ("pattern too complex" in Lua).
    TooComplex,
    /// The request's step budget is spent.
    Budget,
    /// A result would outgrow the VM's memory limit.
    Memory,
}

impl MatchError {
    fn lua(message: impl Into<String>) -> MatchError {
        MatchError::Lua(message.into())
    }

    /// The message Lua gives, or the budget's.
    pub fn message(&self) -> String {
        match self {
            MatchError::Lua(m) => m.clone(),
            MatchError::TooComplex => "pattern too complex".into(),
            MatchError::Budget => super::budget_message(),
            MatchError::Memory => "not enough memory".into(),
        }
    }
}

/// Steps charged to one request: the instruction hook adds to `spent` too, so a rule's loops and
/// its pattern matching share one limit.
#[derive(Clone, Copy)]
pub struct Budget<'a> {
    pub spent: &'a Cell<u64>,
    pub limit: u64,
}

impl Budget<'_> {
    #[inline]
    fn charge(&self, steps: u64) -> Result<(), MatchError> {
        let now = self.spent.get() + steps;
        self.spent.set(now);
        if now > self.limit { Err(MatchError::Budget) } else { Ok(()) }
    }
}

/// One capture of a match.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cap {
    /// A captured part of the subject (or the whole match when the pattern has no captures).
    Text(Range<usize>),
    /// `()`: a 1-based position in the subject.
    Position(usize),
}

/// Whether `find` treats `pattern` as plain text even when not asked to.
pub fn is_plain(pattern: &[u8]) -> bool {
    !pattern.iter().any(|c| SPECIALS.contains(c))
}

/// `string.find(s, text, init, true)`: the first occurrence at or after `start`, 0-based.
pub fn find_plain(s: &[u8], text: &[u8], start: usize) -> Option<Range<usize>> {
    let hay = s.get(start..)?;
    if text.is_empty() {
        return Some(start..start);
    }
    memchr::memmem::find(hay, text).map(|at| start + at..start + at + text.len())
}

/// Lua's `init` argument as a 0-based start, or none when it lies past the end (Lua returns nil).
pub fn start_of(init: i64, len: usize) -> Option<usize> {
    let len = len as i64;
    let one_based = if init > 0 {
        init
    } else if init == 0 || init < -len {
        1
    } else {
        len + init + 1
    };
    (one_based <= len + 1).then(|| (one_based - 1) as usize)
}

/// A pattern Lua would accept for any subject.
#[derive(Debug)]
pub struct Pattern {
    /// Without the leading `^` when anchored.
    body: Vec<u8>,
    anchored: bool,
    captures: usize,
}

/// Where a pattern matched, 0-based, and its first capture if it has any.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub whole: Range<usize>,
    pub first_capture: Option<Range<usize>>,
}

impl Pattern {
    pub fn parse(pattern: &[u8]) -> Option<Pattern> {
        let anchored = pattern.first() == Some(&b'^');
        let body = if anchored { &pattern[1..] } else { pattern };
        // Walk the positions the matcher can reach, in order: each is a capture mark, the final
        // `$`, or a class with an optional quantifier.
        let (mut at, mut open, mut captures) = (0, 0usize, 0usize);
        while at < body.len() {
            match body[at] {
                b'(' => {
                    if body.get(at + 1) == Some(&b')') {
                        return None;
                    }
                    open += 1;
                    captures += 1;
                    at += 1;
                }
                b')' => {
                    open = open.checked_sub(1)?;
                    at += 1;
                }
                b'$' if at + 1 == body.len() => at += 1,
                c => {
                    if c == ESC && matches!(body.get(at + 1), None | Some(b'b' | b'f' | b'0'..=b'9')) {
                        return None;
                    }
                    at = class_end(body, at).ok()?;
                    if matches!(body.get(at), Some(b'*' | b'+' | b'-' | b'?')) {
                        at += 1;
                    }
                }
            }
        }
        (open == 0 && captures <= MAX_CAPTURES).then(|| Pattern { body: body.to_vec(), anchored, captures })
    }

    pub fn captures(&self) -> usize {
        self.captures
    }

    /// `string.find` / `string.match` from 0-based `start` (at most `s.len()`).
    pub fn search(&self, s: &[u8], start: usize, budget: Budget<'_>) -> Result<Option<Found>, MatchError> {
        let mut m = Matcher::new(s, &self.body, budget);
        let Some((from, end)) = m.search(start, self.anchored)? else { return Ok(None) };
        let first_capture = (m.level > 0).then(|| {
            let c = &m.capture[0];
            c.init..c.init + usize::try_from(c.len).unwrap_or(0)
        });
        Ok(Some(Found { whole: from..end, first_capture }))
    }
}

/// Where `find` matched and what it captured.
pub type Located = (Range<usize>, Vec<Cap>);

/// `string.find(s, p, init, plain)`: the match and its captures, as lstrlib's `str_find_aux`.
pub fn find(s: &[u8], p: &[u8], init: i64, plain: bool, budget: Budget<'_>) -> Result<Option<Located>, MatchError> {
    let Some(start) = start_of(init, s.len()) else { return Ok(None) };
    if plain || is_plain(p) {
        // A plain search is linear; charge it by what it scans.
        budget.charge((s.len() - start) as u64 / 16)?;
        return Ok(find_plain(s, p, start).map(|r| (r, Vec::new())));
    }
    let (anchored, body) = anchor(p);
    let mut m = Matcher::new(s, body, budget);
    let Some((from, end)) = m.search(start, anchored)? else { return Ok(None) };
    Ok(Some((from..end, m.captures(None)?)))
}

/// `string.match(s, p, init)`: the captures (or the whole match) of the first match.
pub fn lua_match(s: &[u8], p: &[u8], init: i64, budget: Budget<'_>) -> Result<Option<Vec<Cap>>, MatchError> {
    let Some(start) = start_of(init, s.len()) else { return Ok(None) };
    let (anchored, body) = anchor(p);
    let mut m = Matcher::new(s, body, budget);
    let Some((from, end)) = m.search(start, anchored)? else { return Ok(None) };
    Ok(Some(m.captures(Some(from..end))?))
}

/// The state of a `string.gmatch` iterator between calls.
#[derive(Debug, Clone)]
pub struct GMatch {
    src: usize,
    last_match: Option<usize>,
}

impl GMatch {
    /// `init` as gmatch takes it (past the end means no match at all).
    pub fn new(len: usize, init: i64) -> GMatch {
        GMatch { src: start_of(init, len).unwrap_or(len + 1), last_match: None }
    }

    /// The next match's captures. A `^` is an ordinary character here, as in Lua's gmatch.
    pub fn next(&mut self, s: &[u8], p: &[u8], budget: Budget<'_>) -> Result<Option<Vec<Cap>>, MatchError> {
        let mut src = self.src;
        while src <= s.len() {
            let mut m = Matcher::new(s, p, budget);
            if let Some(e) = m.run(src, 0)?
                && Some(e) != self.last_match
            {
                self.src = e;
                self.last_match = Some(e);
                return Ok(Some(m.captures(Some(src..e))?));
            }
            src += 1;
        }
        self.src = src;
        Ok(None)
    }
}

/// What one match of `gsub` is replaced by.
pub enum Replacement {
    /// Keep the matched text (a table or function gave nil or false).
    Keep,
    /// These bytes.
    Text(Vec<u8>),
}

/// The captures of one match, as `gsub`'s replacement sees them.
pub struct Captures<'m, 's> {
    matcher: &'m Matcher<'s>,
    whole: Range<usize>,
}

impl Captures<'_, '_> {
    /// Every capture, or the whole match when there are none: a function's arguments.
    pub fn all(&self) -> Result<Vec<Cap>, MatchError> {
        self.matcher.captures(Some(self.whole.clone()))
    }

    /// The first capture (or the whole match): a table's key.
    pub fn first(&self) -> Result<Cap, MatchError> {
        self.matcher.capture(0, Some(self.whole.clone()))
    }

    /// A replacement string with `%0`-`%9` and `%%` expanded, appended to `out`, which may not
    /// grow past `room` bytes.
    pub fn expand(&self, repl: &[u8], out: &mut Vec<u8>, room: usize) -> Result<(), MatchError> {
        let s = self.matcher.s;
        let mut i = 0;
        while i < repl.len() {
            if out.len() > room {
                return Err(MatchError::Memory);
            }
            let c = repl[i];
            i += 1;
            if c != ESC {
                out.push(c);
                continue;
            }
            // A `%` ending the string is followed by C's terminating NUL in Lua.
            let d = repl.get(i).copied().unwrap_or(0);
            i += 1;
            match d {
                ESC => out.push(ESC),
                b'0' => out.extend_from_slice(&s[self.whole.clone()]),
                b'1'..=b'9' => match self.matcher.capture(usize::from(d - b'1'), Some(self.whole.clone()))? {
                    Cap::Text(r) => out.extend_from_slice(&s[r]),
                    Cap::Position(n) => out.extend_from_slice(n.to_string().as_bytes()),
                },
                _ => return Err(MatchError::lua("invalid use of '%' in replacement string")),
            }
        }
        if out.len() > room {
            return Err(MatchError::Memory);
        }
        Ok(())
    }

    pub fn subject(&self) -> &[u8] {
        self.matcher.s
    }
}

/// `string.gsub(s, p, repl, max)`: the new text (none when nothing changed) and the number of
/// matches. `replace` decides each match's replacement, and may fail with the caller's error.
pub fn gsub<E: From<MatchError>>(
    s: &[u8],
    p: &[u8],
    max: Option<i64>,
    budget: Budget<'_>,
    mut replace: impl FnMut(&Captures<'_, '_>) -> Result<Replacement, E>,
) -> Result<(Option<Vec<u8>>, i64), E> {
    let (anchored, body) = anchor(p);
    let max = max.unwrap_or(s.len() as i64 + 1);
    let mut out = Vec::new();
    let (mut src, mut last_match, mut n, mut changed) = (0usize, None, 0i64, false);
    while n < max {
        let mut m = Matcher::new(s, body, budget);
        match m.run(src, 0)? {
            Some(e) if Some(e) != last_match => {
                n += 1;
                let caps = Captures { matcher: &m, whole: src..e };
                match replace(&caps)? {
                    Replacement::Keep => out.extend_from_slice(&s[src..e]),
                    Replacement::Text(t) => {
                        budget.charge(t.len() as u64 / 16)?;
                        out.extend_from_slice(&t);
                        changed = true;
                    }
                }
                src = e;
                last_match = Some(e);
            }
            _ if src < s.len() => {
                out.push(s[src]);
                src += 1;
            }
            _ => break,
        }
        if anchored {
            break;
        }
    }
    if !changed {
        return Ok((None, n));
    }
    out.extend_from_slice(&s[src..]);
    Ok((Some(out), n))
}

fn anchor(p: &[u8]) -> (bool, &[u8]) {
    match p.first() {
        Some(b'^') => (true, &p[1..]),
        _ => (false, p),
    }
}

/// The index just past the single-character class that starts at `at`, or Lua's error when it is
/// malformed (a trailing `%`, a set with no closing `]`).
fn class_end(p: &[u8], at: usize) -> Result<usize, MatchError> {
    let mut i = at + 1;
    match p[at] {
        ESC => {
            if i >= p.len() {
                return Err(MatchError::lua("malformed pattern (ends with '%')"));
            }
            Ok(i + 1)
        }
        b'[' => {
            if p.get(i) == Some(&b'^') {
                i += 1;
            }
            // The first character is part of the set even when it is `]`.
            loop {
                if i >= p.len() {
                    return Err(MatchError::lua("malformed pattern (missing ']')"));
                }
                let c = p[i];
                i += 1;
                if c == ESC && i < p.len() {
                    i += 1;
                }
                if p.get(i) == Some(&b']') {
                    return Ok(i + 1);
                }
            }
        }
        _ => Ok(i),
    }
}

/// `%a`, `%d`, ... as C's character tests in the C locale; an upper-case letter is the complement,
/// and anything else stands for itself.
fn class_matches(c: u8, class: u8) -> bool {
    let yes = match class.to_ascii_lowercase() {
        b'a' => c.is_ascii_alphabetic(),
        b'c' => c < 32 || c == 127,
        b'd' => c.is_ascii_digit(),
        b'g' => (33..=126).contains(&c),
        b'l' => c.is_ascii_lowercase(),
        b'p' => c.is_ascii_punctuation(),
        b's' => c == b' ' || (9..=13).contains(&c),
        b'u' => c.is_ascii_uppercase(),
        b'w' => c.is_ascii_alphanumeric(),
        b'x' => c.is_ascii_hexdigit(),
        // Deprecated in Lua, still there: the NUL byte.
        b'z' => c == 0,
        _ => return class == c,
    };
    if class.is_ascii_uppercase() { !yes } else { yes }
}

/// A set `[...]` from `open` (its `[`) to `close` (its `]`).
fn set_matches(c: u8, p: &[u8], open: usize, close: usize) -> bool {
    let mut i = open + 1;
    let negated = p[i] == b'^';
    if negated {
        i += 1;
    }
    while i < close {
        if p[i] == ESC {
            i += 1;
            if class_matches(c, p[i]) {
                return !negated;
            }
        } else if p.get(i + 1) == Some(&b'-') && i + 2 < close {
            if p[i] <= c && c <= p[i + 2] {
                return !negated;
            }
            i += 2;
        } else if p[i] == c {
            return !negated;
        }
        i += 1;
    }
    negated
}

/// Lua's `CAP_UNFINISHED` and `CAP_POSITION` lengths.
const UNFINISHED: isize = -1;
const POSITION: isize = -2;

#[derive(Clone, Copy, Default)]
struct Capture {
    init: usize,
    len: isize,
}

/// lstrlib's `MatchState`: a subject, a pattern (without its anchor), and the captures so far.
pub struct Matcher<'a> {
    s: &'a [u8],
    p: &'a [u8],
    depth: u32,
    level: usize,
    capture: [Capture; MAX_CAPTURES],
    budget: Budget<'a>,
}

impl<'a> Matcher<'a> {
    fn new(s: &'a [u8], p: &'a [u8], budget: Budget<'a>) -> Matcher<'a> {
        Matcher { s, p, depth: MAX_DEPTH, level: 0, capture: [Capture::default(); MAX_CAPTURES], budget }
    }

    /// The first match at or after `start` (only at `start` when anchored): (start, end).
    fn search(&mut self, start: usize, anchored: bool) -> Result<Option<(usize, usize)>, MatchError> {
        let mut from = start;
        loop {
            self.level = 0;
            self.depth = MAX_DEPTH;
            if let Some(end) = self.run(from, 0)? {
                return Ok(Some((from, end)));
            }
            if from < self.s.len() && !anchored {
                from += 1;
            } else {
                return Ok(None);
            }
        }
    }

    /// Capture `i`, or the whole match for capture 0 of a pattern without captures.
    fn capture(&self, i: usize, whole: Option<Range<usize>>) -> Result<Cap, MatchError> {
        if i >= self.level {
            return match whole {
                Some(w) if i == 0 => Ok(Cap::Text(w)),
                _ => Err(MatchError::Lua(format!("invalid capture index %{}", i + 1))),
            };
        }
        let c = self.capture[i];
        match c.len {
            UNFINISHED => Err(MatchError::lua("unfinished capture")),
            POSITION => Ok(Cap::Position(c.init + 1)),
            len => Ok(Cap::Text(c.init..c.init + len as usize)),
        }
    }

    /// Every capture; with `whole` and no captures, the whole match.
    fn captures(&self, whole: Option<Range<usize>>) -> Result<Vec<Cap>, MatchError> {
        let n = if self.level == 0 && whole.is_some() { 1 } else { self.level };
        (0..n).map(|i| self.capture(i, whole.clone())).collect()
    }

    /// Whether the class at `p` (ending before `ep`) matches the character at `s`.
    fn single(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.s.get(s) else { return false };
        match self.p[p] {
            b'.' => true,
            ESC => class_matches(c, self.p[p + 1]),
            b'[' => set_matches(c, self.p, p, ep - 1),
            literal => literal == c,
        }
    }

    /// The end of a match of the pattern from `p` against the subject from `s` (lstrlib's `match`).
    fn run(&mut self, s: usize, p: usize) -> Result<Option<usize>, MatchError> {
        if self.depth == 0 {
            return Err(MatchError::TooComplex);
        }
        self.budget.charge(1)?;
        self.depth -= 1;
        let result = self.step(s, p);
        self.depth += 1;
        result
    }

    fn step(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, MatchError> {
        loop {
            let Some(&c) = self.p.get(p) else { return Ok(Some(s)) };
            match c {
                b'(' => {
                    return if self.p.get(p + 1) == Some(&b')') {
                        self.start_capture(s, p + 2, POSITION)
                    } else {
                        self.start_capture(s, p + 1, UNFINISHED)
                    };
                }
                b')' => return self.end_capture(s, p + 1),
                b'$' if p + 1 == self.p.len() => return Ok((s == self.s.len()).then_some(s)),
                ESC if self.p.get(p + 1) == Some(&b'b') => match self.balance(s, p + 2)? {
                    Some(e) => {
                        s = e;
                        p += 4;
                    }
                    None => return Ok(None),
                },
                ESC if self.p.get(p + 1) == Some(&b'f') => {
                    p += 2;
                    if self.p.get(p) != Some(&b'[') {
                        return Err(MatchError::lua("missing '[' after '%f' in pattern"));
                    }
                    let ep = class_end(self.p, p)?;
                    // Before the subject and past its end, Lua sees C's NUL.
                    let previous = if s == 0 { 0 } else { self.s[s - 1] };
                    let current = self.s.get(s).copied().unwrap_or(0);
                    if set_matches(previous, self.p, p, ep - 1) || !set_matches(current, self.p, p, ep - 1) {
                        return Ok(None);
                    }
                    p = ep;
                }
                ESC if matches!(self.p.get(p + 1), Some(b'0'..=b'9')) => match self.match_capture(s, self.p[p + 1])? {
                    Some(e) => {
                        s = e;
                        p += 2;
                    }
                    None => return Ok(None),
                },
                _ => {
                    let ep = class_end(self.p, p)?;
                    let quantifier = self.p.get(ep).copied();
                    if !self.single(s, p, ep) {
                        if matches!(quantifier, Some(b'*' | b'?' | b'-')) {
                            p = ep + 1;
                            continue;
                        }
                        return Ok(None);
                    }
                    match quantifier {
                        Some(b'?') => {
                            if let Some(end) = self.run(s + 1, ep + 1)? {
                                return Ok(Some(end));
                            }
                            p = ep + 1;
                        }
                        Some(b'+') => return self.longest(s + 1, p, ep),
                        Some(b'*') => return self.longest(s, p, ep),
                        Some(b'-') => return self.shortest(s, p, ep),
                        _ => {
                            s += 1;
                            p = ep;
                        }
                    }
                }
            }
        }
    }

    fn start_capture(&mut self, s: usize, p: usize, what: isize) -> Result<Option<usize>, MatchError> {
        if self.level >= MAX_CAPTURES {
            return Err(MatchError::lua("too many captures"));
        }
        self.capture[self.level] = Capture { init: s, len: what };
        self.level += 1;
        let r = self.run(s, p)?;
        if r.is_none() {
            self.level -= 1;
        }
        Ok(r)
    }

    fn end_capture(&mut self, s: usize, p: usize) -> Result<Option<usize>, MatchError> {
        let Some(open) = (0..self.level).rev().find(|&l| self.capture[l].len == UNFINISHED) else {
            return Err(MatchError::lua("invalid pattern capture"));
        };
        self.capture[open].len = (s - self.capture[open].init) as isize;
        let r = self.run(s, p)?;
        if r.is_none() {
            self.capture[open].len = UNFINISHED;
        }
        Ok(r)
    }

    /// `%1`-`%9` in a pattern: the text of an earlier, closed capture again.
    fn match_capture(&mut self, s: usize, digit: u8) -> Result<Option<usize>, MatchError> {
        let l = usize::from(digit).wrapping_sub(usize::from(b'1'));
        if l >= self.level || self.capture[l].len == UNFINISHED {
            return Err(MatchError::Lua(format!("invalid capture index %{}", l.wrapping_add(1) as isize)));
        }
        // A position capture has no text: Lua's length is then huge and never fits.
        let Ok(len) = usize::try_from(self.capture[l].len) else { return Ok(None) };
        let init = self.capture[l].init;
        self.budget.charge(len as u64 / 16)?;
        Ok((self.s.len() - s >= len && self.s[init..init + len] == self.s[s..s + len]).then_some(s + len))
    }

    /// `%bxy`: a balanced run from `x` to its matching `y`.
    fn balance(&mut self, s: usize, p: usize) -> Result<Option<usize>, MatchError> {
        if p + 1 >= self.p.len() {
            return Err(MatchError::lua("malformed pattern (missing arguments to '%b')"));
        }
        let (open, close) = (self.p[p], self.p[p + 1]);
        if self.s.get(s) != Some(&open) {
            return Ok(None);
        }
        let mut depth = 1;
        for (i, &c) in self.s.iter().enumerate().skip(s + 1) {
            if c == close {
                depth -= 1;
                if depth == 0 {
                    self.budget.charge((i - s) as u64 / 16)?;
                    return Ok(Some(i + 1));
                }
            } else if c == open {
                depth += 1;
            }
        }
        self.budget.charge((self.s.len() - s) as u64 / 16)?;
        Ok(None)
    }

    /// `*` and `+`: as many repetitions as match, then fewer until the rest matches.
    fn longest(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, MatchError> {
        let mut n = 0;
        while self.single(s + n, p, ep) {
            n += 1;
        }
        self.budget.charge(n as u64 / 16)?;
        loop {
            if let Some(end) = self.run(s + n, ep + 1)? {
                return Ok(Some(end));
            }
            if n == 0 {
                return Ok(None);
            }
            n -= 1;
        }
    }

    /// `-`: as few repetitions as let the rest match.
    fn shortest(&mut self, mut s: usize, p: usize, ep: usize) -> Result<Option<usize>, MatchError> {
        loop {
            if let Some(end) = self.run(s, ep + 1)? {
                return Ok(Some(end));
            }
            if !self.single(s, p, ep) {
                return Ok(None);
            }
            s += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const PLENTY: u64 = u64::MAX / 2;

    fn search(p: &str, s: &str) -> Option<(Range<usize>, Option<String>)> {
        let spent = Cell::new(0);
        let budget = Budget { spent: &spent, limit: PLENTY };
        let found = Pattern::parse(p.as_bytes()).expect("a valid pattern").search(s.as_bytes(), 0, budget).unwrap()?;
        Some((found.whole, found.first_capture.map(|r| s[r].to_string())))
    }

    #[test]
    fn matches_as_lua_does() {
        assert_eq!(search("^/admin", "/admin/x"), Some((0..6, None)));
        assert_eq!(search("^/admin", "/x/admin"), None, "anchored");
        assert_eq!(search("%d+", "ab123c"), Some((2..5, None)));
        assert_eq!(search("^/users/(%d+)", "/users/42/x"), Some((0..9, Some("42".into()))));
        assert_eq!(search("a-b", "xaaab"), Some((1..5, None)));
        assert_eq!(search("[^/]*$", "/a/bc"), Some((3..5, None)));
        assert_eq!(search("[]]", "a]"), Some((1..2, None)), "] first in a set is itself");
        assert_eq!(search("%.", "a.b"), Some((1..2, None)));
        assert_eq!(search("(a*(.)%w(%s*))", "aaab  "), Some((0..6, Some("aaab  ".into()))));
        assert_eq!(search("x?y", "zy"), Some((1..2, None)));
        assert_eq!(search("$", "ab"), Some((2..2, None)), "an empty match at the end");
        assert_eq!(search("^$", ""), Some((0..0, None)));
        assert_eq!(search("[a-c]+", "xxbca"), Some((2..5, None)));
        assert_eq!(search("%S+", "  ab "), Some((2..4, None)), "upper case is the complement");
        assert_eq!(search("a$b", "xa$b"), Some((1..4, None)), "$ not at the end is itself");
    }

    #[test]
    fn patterns_lua_could_reject_are_left_to_the_vm() {
        for p in ["%", "[a", "[^", "(a", "a)", "()", "%b()", "%f[%w]", "(a)%1", &"(a)".repeat(33)] {
            assert!(Pattern::parse(p.as_bytes()).is_none(), "{p}");
        }
        assert!(Pattern::parse("[%]]".as_bytes()).is_some());
    }

    #[test]
    fn too_deep_a_match_is_reported_not_overflowed() {
        let spent = Cell::new(0);
        let budget = Budget { spent: &spent, limit: PLENTY };
        // Each `?` that matches nests one call deeper, as in Lua.
        let p = Pattern::parse("a?".repeat(250).as_bytes()).unwrap();
        assert_eq!(p.search("a".repeat(250).as_bytes(), 0, budget), Err(MatchError::TooComplex));
        assert!(p.search(b"b", 0, budget).unwrap().is_some());
    }

    #[test]
    fn backtracking_is_charged_and_stops_at_the_budget() {
        // About n³ steps in Lua's matcher: unbounded, this takes seconds.
        let subject = format!("/api/{}", "/".repeat(1600));
        let p = Pattern::parse(b"^/api/.-/.-/.-/admin").unwrap();
        let spent = Cell::new(0);
        let started = std::time::Instant::now();
        let r = p.search(subject.as_bytes(), 0, Budget { spent: &spent, limit: 1_000_000 });
        assert_eq!(r, Err(MatchError::Budget));
        assert!(spent.get() > 1_000_000 && spent.get() < 1_100_000, "{}", spent.get());
        assert!(started.elapsed() < std::time::Duration::from_secs(1), "{:?}", started.elapsed());
        // The same search on a short subject fits and answers.
        let spent = Cell::new(0);
        let r = p.search(b"/api/a/b/c/admin", 0, Budget { spent: &spent, limit: 1_000_000 }).unwrap();
        assert_eq!(r.map(|f| f.whole), Some(0..16));
    }

    #[test]
    fn init_and_plain_find() {
        assert_eq!(start_of(1, 3), Some(0));
        assert_eq!(start_of(-1, 3), Some(2));
        assert_eq!(start_of(-10, 3), Some(0));
        assert_eq!(start_of(4, 3), Some(3));
        assert_eq!(start_of(5, 3), None);
        assert_eq!(find_plain(b"a.b.c", b".", 2), Some(3..4));
        assert_eq!(find_plain(b"abc", b"", 3), Some(3..3));
        assert!(is_plain(b"/api/v1") && !is_plain(b"a.b"));
    }
}
