//! Lua 5.4 patterns, for `find` and `match` in native rules.
//!
//! [`Pattern::parse`] accepts only patterns on which Lua raises no error whatever the subject:
//! every class well formed, captures balanced and at most 32, and none of `%b`, `%f`,
//! back-references or position captures. Anything else leaves the rule to the VM. Matching takes
//! the same backtracking steps as Lua's matcher, so it finds the same match and runs out of depth
//! ("pattern too complex") exactly where Lua would; the caller then hands the request to the VM.

use std::ops::Range;

/// Lua's limit on nested matcher calls (`MAXCCALLS` in lstrlib.c).
const MAX_DEPTH: u32 = 200;
/// Lua's limit on captures in one pattern.
const MAX_CAPTURES: usize = 32;
/// Characters that make a pattern more than a plain string to `find`.
const SPECIALS: &[u8] = b"^$*+?.([%-";

/// A pattern Lua would accept for any subject.
#[derive(Debug)]
pub struct Pattern {
    /// Without the leading `^` when anchored.
    body: Vec<u8>,
    anchored: bool,
    captures: usize,
}

/// The matcher went deeper than Lua allows; Lua raises an error here.
#[derive(Debug, PartialEq, Eq)]
pub struct TooComplex;

/// Where a pattern matched, 0-based, and its first capture if it has any.
#[derive(Debug, PartialEq, Eq)]
pub struct Found {
    pub whole: Range<usize>,
    pub first_capture: Option<Range<usize>>,
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
    hay.windows(text.len()).position(|w| w == text).map(|at| start + at..start + at + text.len())
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
                    if c == b'%' && matches!(body.get(at + 1), None | Some(b'b' | b'f' | b'0'..=b'9')) {
                        return None;
                    }
                    at = class_end(body, at)?;
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
    pub fn search(&self, s: &[u8], start: usize) -> Result<Option<Found>, TooComplex> {
        let mut from = start;
        loop {
            let mut m = Matcher { s, p: &self.body, depth: MAX_DEPTH, captures: Vec::new() };
            if let Some(end) = m.run(from, 0)? {
                let first_capture = m.captures.first().map(|c| c.start..c.start + c.len.unwrap_or(0));
                return Ok(Some(Found { whole: from..end, first_capture }));
            }
            if from < s.len() && !self.anchored {
                from += 1;
            } else {
                return Ok(None);
            }
        }
    }
}

/// The index just past the single-character class that starts at `at`, or none when it is
/// malformed (a trailing `%`, a set with no closing `]`).
fn class_end(p: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    match p[at] {
        b'%' => (i < p.len()).then_some(i + 1),
        b'[' => {
            if p.get(i) == Some(&b'^') {
                i += 1;
            }
            // The first character is part of the set even when it is `]`.
            loop {
                let c = *p.get(i)?;
                i += 1;
                if c == b'%' && i < p.len() {
                    i += 1;
                }
                if p.get(i) == Some(&b']') {
                    return Some(i + 1);
                }
            }
        }
        _ => Some(i),
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
        if p[i] == b'%' {
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

struct Capture {
    start: usize,
    /// None while the capture is open.
    len: Option<usize>,
}

struct Matcher<'a> {
    s: &'a [u8],
    p: &'a [u8],
    depth: u32,
    captures: Vec<Capture>,
}

impl Matcher<'_> {
    /// Whether the class at `p` (ending before `ep`) matches the character at `s`.
    fn single(&self, s: usize, p: usize, ep: usize) -> bool {
        let Some(&c) = self.s.get(s) else { return false };
        match self.p[p] {
            b'.' => true,
            b'%' => class_matches(c, self.p[p + 1]),
            b'[' => set_matches(c, self.p, p, ep - 1),
            literal => literal == c,
        }
    }

    /// The end of a match of the pattern from `p` against the subject from `s`.
    fn run(&mut self, s: usize, p: usize) -> Result<Option<usize>, TooComplex> {
        if self.depth == 0 {
            return Err(TooComplex);
        }
        self.depth -= 1;
        let result = self.step(s, p);
        self.depth += 1;
        result
    }

    fn step(&mut self, mut s: usize, mut p: usize) -> Result<Option<usize>, TooComplex> {
        loop {
            let Some(&c) = self.p.get(p) else { return Ok(Some(s)) };
            match c {
                b'(' => {
                    self.captures.push(Capture { start: s, len: None });
                    let r = self.run(s, p + 1)?;
                    if r.is_none() {
                        self.captures.pop();
                    }
                    return Ok(r);
                }
                b')' => {
                    // Balanced by `parse`: there is an open capture to close.
                    let Some(open) = self.captures.iter().rposition(|c| c.len.is_none()) else {
                        return Err(TooComplex);
                    };
                    self.captures[open].len = Some(s - self.captures[open].start);
                    let r = self.run(s, p + 1)?;
                    if r.is_none() {
                        self.captures[open].len = None;
                    }
                    return Ok(r);
                }
                b'$' if p + 1 == self.p.len() => return Ok((s == self.s.len()).then_some(s)),
                _ => {
                    let Some(ep) = class_end(self.p, p) else { return Err(TooComplex) };
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

    /// `*` and `+`: as many repetitions as match, then fewer until the rest matches.
    fn longest(&mut self, s: usize, p: usize, ep: usize) -> Result<Option<usize>, TooComplex> {
        let mut n = 0;
        while self.single(s + n, p, ep) {
            n += 1;
        }
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
    fn shortest(&mut self, mut s: usize, p: usize, ep: usize) -> Result<Option<usize>, TooComplex> {
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

    fn search(p: &str, s: &str) -> Option<(Range<usize>, Option<String>)> {
        let found = Pattern::parse(p.as_bytes()).expect("a valid pattern").search(s.as_bytes(), 0).unwrap()?;
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
        // Each `?` that matches nests one call deeper, as in Lua.
        let p = Pattern::parse("a?".repeat(250).as_bytes()).unwrap();
        assert_eq!(p.search("a".repeat(250).as_bytes(), 0), Err(TooComplex));
        assert!(p.search(b"b", 0).unwrap().is_some());
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
