//! HTTP/1.1 wire pieces for the data plane, free of I/O: parsing heads into spans of the read
//! buffer, deciding how a body is framed, decoding chunked bodies, and writing the heads the
//! router sends on. The proxy owns its sockets and moves bytes itself (as nginx does); these
//! are the rules it moves them by.

use std::io::Write;
use std::net::IpAddr;

/// Largest request or response head accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields in one head.
pub const MAX_HEADERS: usize = 128;

/// Headers that describe one connection, never forwarded.
const HOP_BY_HOP: [&[u8]; 8] = [
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"proxy-authorization",
];

/// A byte range of the buffer a head was parsed from.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Span {
    pub start: u32,
    pub end: u32,
}

impl Span {
    /// `part` must lie inside `base` (httparse hands out subslices of the buffer); an empty
    /// part may point anywhere and becomes an empty span.
    fn of(base: &[u8], part: &[u8]) -> Span {
        if part.is_empty() {
            return Span::default();
        }
        let start = part.as_ptr() as usize - base.as_ptr() as usize;
        Span { start: start as u32, end: (start + part.len()) as u32 }
    }

    pub fn get(self, buf: &[u8]) -> &[u8] {
        &buf[self.start as usize..self.end as usize]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeadError {
    #[error("malformed HTTP head: {0}")]
    Malformed(String),
    #[error("HTTP head larger than {MAX_HEAD} bytes or more than {MAX_HEADERS} header fields")]
    TooLarge,
}

/// A parsed head, as spans into the buffer it came from.
#[derive(Debug, Default, Clone)]
pub struct Head {
    /// Bytes the head takes, final blank line included.
    pub len: usize,
    /// HTTP/1.`minor`.
    pub minor: u8,
    pub method: Span,
    pub target: Span,
    pub status: u16,
    pub reason: Span,
    pub headers: Vec<(Span, Span)>,
}

impl Head {
    pub fn pairs<'b>(&'b self, buf: &'b [u8]) -> impl Iterator<Item = (&'b [u8], &'b [u8])> + Clone + 'b {
        self.headers.iter().map(move |(n, v)| (n.get(buf), v.get(buf)))
    }
}

fn malformed(e: httparse::Error) -> HeadError {
    match e {
        httparse::Error::TooManyHeaders => HeadError::TooLarge,
        other => HeadError::Malformed(other.to_string()),
    }
}

/// What both parsers do with httparse's verdict: wait while the head is partial (refusing one
/// past [`MAX_HEAD`]), else record its length and fields.
fn finish(
    buf: &[u8],
    status: httparse::Status<usize>,
    fields: &[httparse::Header<'_>],
    head: &mut Head,
) -> Result<Option<()>, HeadError> {
    match status {
        httparse::Status::Partial if buf.len() > MAX_HEAD => Err(HeadError::TooLarge),
        httparse::Status::Partial => Ok(None),
        httparse::Status::Complete(len) => {
            head.len = len;
            head.headers.clear();
            head.headers.extend(fields.iter().map(|h| (Span::of(buf, h.name.as_bytes()), Span::of(buf, h.value))));
            Ok(Some(()))
        }
    }
}

/// Parses a request head at the start of `buf`; `Ok(None)` while it is incomplete.
pub fn parse_request(buf: &[u8], head: &mut Head) -> Result<Option<()>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut fields);
    let status = req.parse(buf).map_err(malformed)?;
    let done = finish(buf, status, req.headers, head)?;
    // Spans exist only once the head is whole (a partial one may lack its method).
    if let (Some(()), Some(method), Some(path)) = (done, req.method, req.path) {
        head.minor = req.version.unwrap_or(1);
        head.method = Span::of(buf, method.as_bytes());
        head.target = Span::of(buf, path.as_bytes());
    }
    Ok(done)
}

/// Parses a response head at the start of `buf`; `Ok(None)` while it is incomplete.
pub fn parse_response(buf: &[u8], head: &mut Head) -> Result<Option<()>, HeadError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut fields);
    let status = resp.parse(buf).map_err(malformed)?;
    let done = finish(buf, status, resp.headers, head)?;
    if done.is_some() {
        head.minor = resp.version.unwrap_or(1);
        head.status = resp.code.unwrap_or(0);
        head.reason = Span::of(buf, resp.reason.unwrap_or_default().as_bytes());
    }
    Ok(done)
}

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    /// Until the sender closes (responses only).
    Close,
}

/// What a head's `Connection` and framing headers say.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    pub close: bool,
    pub keep_alive: bool,
    pub upgrade: bool,
    pub expect_continue: bool,
    /// `Some(true)` when the last transfer coding is chunked, `Some(false)` for any other.
    pub chunked: Option<bool>,
    pub length: Option<u64>,
    pub bad_length: bool,
}

fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value.split(|b| *b == b',').map(|t| t.trim_ascii()).filter(|t| !t.is_empty())
}

pub fn meta<'b>(pairs: impl Iterator<Item = (&'b [u8], &'b [u8])>) -> Meta {
    let mut m = Meta::default();
    for (name, value) in pairs {
        if name.eq_ignore_ascii_case(b"connection") {
            for t in tokens(value) {
                m.close |= t.eq_ignore_ascii_case(b"close");
                m.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
                m.upgrade |= t.eq_ignore_ascii_case(b"upgrade");
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            if let Some(last) = tokens(value).last() {
                m.chunked = Some(last.eq_ignore_ascii_case(b"chunked"));
            }
        } else if name.eq_ignore_ascii_case(b"content-length") {
            // Repeated lengths must agree; anything else is a smuggling attempt or a broken peer.
            for t in tokens(value) {
                let parsed = std::str::from_utf8(t).ok().filter(|s| s.bytes().all(|b| b.is_ascii_digit()));
                match parsed.and_then(|s| s.parse::<u64>().ok()) {
                    Some(n) if m.length.is_none_or(|prev| prev == n) => m.length = Some(n),
                    _ => m.bad_length = true,
                }
            }
        } else if name.eq_ignore_ascii_case(b"expect") {
            m.expect_continue |= value.trim_ascii().eq_ignore_ascii_case(b"100-continue");
        }
    }
    m
}

/// A request body's framing (RFC 9112 section 6.3), or why the request must be refused.
pub fn request_framing(m: &Meta) -> Result<Framing, &'static str> {
    match (m.chunked, m.length) {
        (Some(_), Some(_)) => Err("both Transfer-Encoding and Content-Length"),
        (Some(true), None) => Ok(Framing::Chunked),
        (Some(false), None) => Err("a request Transfer-Encoding that does not end in chunked"),
        _ if m.bad_length => Err("an invalid Content-Length"),
        (None, Some(0)) | (None, None) => Ok(Framing::None),
        (None, Some(n)) => Ok(Framing::Length(n)),
    }
}

/// A response body's framing, given the request method and the status.
pub fn response_framing(m: &Meta, head_request: bool, status: u16) -> Result<Framing, &'static str> {
    if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        return Ok(Framing::None);
    }
    match (m.chunked, m.length) {
        (Some(true), _) => Ok(Framing::Chunked),
        (Some(false), _) => Ok(Framing::Close),
        _ if m.bad_length => Err("an invalid Content-Length"),
        (None, Some(n)) => Ok(Framing::Length(n)),
        (None, None) => Ok(Framing::Close),
    }
}

fn is_hop_by_hop(name: &[u8]) -> bool {
    HOP_BY_HOP.iter().any(|h| h.len() == name.len() && h.eq_ignore_ascii_case(name))
}

/// Which headers of one message belong to its connection only: the hop-by-hop ones, and those
/// its `Connection` fields name. Most messages carry no `Connection` naming anything, so the
/// names are looked up only when one is there (no allocation either way).
pub struct ConnectionHeaders<I> {
    pairs: I,
    has_connection: bool,
}

impl<'b, I: Iterator<Item = (&'b [u8], &'b [u8])> + Clone> ConnectionHeaders<I> {
    pub fn of(pairs: I) -> Self {
        let has_connection = pairs.clone().any(|(n, _)| n.eq_ignore_ascii_case(b"connection"));
        ConnectionHeaders { pairs, has_connection }
    }

    pub fn contains(&self, name: &[u8]) -> bool {
        is_hop_by_hop(name)
            || (self.has_connection
                && self
                    .pairs
                    .clone()
                    .filter(|(n, _)| n.eq_ignore_ascii_case(b"connection"))
                    .any(|(_, v)| tokens(v).any(|t| t.eq_ignore_ascii_case(name))))
    }
}

/// What the router adds to a request it forwards.
pub struct Forward<'a> {
    pub method: &'a [u8],
    /// Path and query sent upstream.
    pub target: &'a [u8],
    /// The Host value to send on: the client's.
    pub host: &'a [u8],
    pub client_ip: IpAddr,
    pub https: bool,
    /// Set by a rule: replaces any header of the same name.
    pub set: &'a [(String, String)],
    /// The `Upgrade` value of an upgrade being passed through.
    pub upgrade: Option<&'a [u8]>,
}

/// Writes the head of a request to an upstream, without its final blank line, so the caller
/// can add `Content-Length` once it has the body.
pub fn write_upstream_head<'b>(
    out: &mut Vec<u8>,
    f: &Forward<'_>,
    pairs: impl Iterator<Item = (&'b [u8], &'b [u8])> + Clone,
) {
    out.extend_from_slice(f.method);
    out.push(b' ');
    if f.target.first() == Some(&b'?') {
        // An absolute-form request with a query but no path.
        out.push(b'/');
    }
    out.extend_from_slice(f.target);
    out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
    out.extend_from_slice(f.host);
    out.extend_from_slice(b"\r\n");
    let connection = ConnectionHeaders::of(pairs.clone());
    let mut forwarded_for: Option<&[u8]> = None;
    for (name, value) in pairs {
        let skip = connection.contains(name)
            || [&b"host"[..], b"content-length", b"expect", b"x-forwarded-host", b"x-forwarded-proto"]
                .iter()
                .any(|s| s.eq_ignore_ascii_case(name))
            || f.set.iter().any(|(k, _)| k.as_bytes().eq_ignore_ascii_case(name));
        if name.eq_ignore_ascii_case(b"x-forwarded-for") {
            forwarded_for = Some(value);
            continue;
        }
        if !skip {
            header(out, name, value);
        }
    }
    out.extend_from_slice(b"X-Forwarded-For: ");
    if let Some(prev) = forwarded_for {
        out.extend_from_slice(prev);
        out.extend_from_slice(b", ");
    }
    let _ = write!(out, "{}", f.client_ip);
    out.extend_from_slice(b"\r\nX-Forwarded-Host: ");
    out.extend_from_slice(f.host);
    out.extend_from_slice(if f.https {
        b"\r\nX-Forwarded-Proto: https\r\n"
    } else {
        b"\r\nX-Forwarded-Proto: http\r\n"
    });
    for (k, v) in f.set {
        header(out, k.as_bytes(), v.as_bytes());
    }
    if let Some(up) = f.upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\nUpgrade: ");
        out.extend_from_slice(up);
        out.extend_from_slice(b"\r\n");
    }
}

/// Methods whose requests carry a length even when the body is empty.
pub fn wants_length(method: &[u8]) -> bool {
    matches!(method, b"POST" | b"PUT" | b"PATCH")
}

/// Ends an upstream head: its body length (when it has a body, or `wants_length`), then the
/// blank line.
pub fn end_upstream_head(out: &mut Vec<u8>, wants_length: bool, body_len: usize) {
    if body_len > 0 || wants_length {
        let _ = write!(out, "Content-Length: {body_len}\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Ends an upstream head whose body follows as it arrives: with its length when the client gave
/// one, chunked otherwise.
pub fn end_upstream_head_streamed(out: &mut Vec<u8>, length: Option<u64>) {
    match length {
        Some(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n\r\n");
        }
        None => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n\r\n"),
    }
}

fn header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How the router frames a response body towards an HTTP/1 client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientBody {
    /// No body (HEAD, 1xx, 204, 304): the upstream's length headers pass as they are.
    None,
    Length(u64),
    /// Length unknown upstream: chunked to an HTTP/1.1 client.
    Chunked,
    /// Length unknown and the client speaks HTTP/1.0: the body ends when the connection does.
    UntilClose,
}

impl ClientBody {
    pub fn for_client(upstream: Framing, client_minor: u8) -> ClientBody {
        match upstream {
            Framing::None => ClientBody::None,
            Framing::Length(n) => ClientBody::Length(n),
            Framing::Chunked | Framing::Close if client_minor >= 1 => ClientBody::Chunked,
            Framing::Chunked | Framing::Close => ClientBody::UntilClose,
        }
    }
}

/// Writes the head of an upstream's response towards an HTTP/1 client.
pub fn write_client_head<'b>(
    out: &mut Vec<u8>,
    status: u16,
    reason: &[u8],
    pairs: impl Iterator<Item = (&'b [u8], &'b [u8])> + Clone,
    body: ClientBody,
    keep_alive: bool,
    client_minor: u8,
) {
    let _ = write!(out, "HTTP/1.1 {status} ");
    out.extend_from_slice(reason);
    out.extend_from_slice(b"\r\n");
    let upgrade = status == 101;
    let connection = ConnectionHeaders::of(pairs.clone());
    for (name, value) in pairs {
        let is_length = name.eq_ignore_ascii_case(b"content-length");
        let keep = if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade
        } else if is_length || name.eq_ignore_ascii_case(b"transfer-encoding") {
            // With no body the upstream's length headers describe the resource: pass them.
            body == ClientBody::None && !upgrade
        } else {
            !connection.contains(name)
        };
        if keep {
            header(out, name, value);
        }
    }
    match body {
        ClientBody::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        ClientBody::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        ClientBody::None | ClientBody::UntilClose => {}
    }
    if upgrade {
        out.extend_from_slice(b"Connection: upgrade\r\n");
    } else if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if client_minor == 0 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A complete response made by the router itself (errors, denials, redirects).
pub fn write_local(out: &mut Vec<u8>, status: u16, body: &str, location: Option<&str>, keep_alive: bool) {
    let reason = hyper::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or("");
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(url) = location {
        header(out, b"Location", url.as_bytes());
    }
    out.extend_from_slice(if keep_alive { b"\r\n" } else { b"Connection: close\r\n\r\n" });
    out.extend_from_slice(body.as_bytes());
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed chunked body: {0}")]
pub struct ChunkError(&'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum ChunkState {
    #[default]
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerEndLf,
    Done,
}

/// An incremental chunked-body decoder: feed it bytes as they come, in any split.
#[derive(Debug, Clone, Default)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Refuse a line ended by a bare LF (what a client sends must be exact; an upstream's answer
    /// is taken as it comes).
    strict: bool,
    /// In a trailer line: the byte before was a CR.
    last_cr: bool,
}

impl Chunked {
    pub fn strict() -> Chunked {
        Chunked { strict: true, ..Chunked::default() }
    }

    pub fn done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Decodes from `input`, appending body bytes to `out`; returns how many input bytes were
    /// consumed. Stops right after the end of the body (the rest belongs to the next message).
    pub fn decode(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<usize, ChunkError> {
        use ChunkState::*;
        let mut i = 0;
        while i < input.len() && self.state != Done {
            let b = input[i];
            if b == b'\n' && self.strict {
                // In these states a line ends, and its LF must follow a CR.
                let bare = match self.state {
                    Size | Extension | DataCr | TrailerStart => true,
                    TrailerLine => !self.last_cr,
                    _ => false,
                };
                if bare {
                    return Err(ChunkError("a line ended by a bare LF"));
                }
            }
            match self.state {
                Size => match b {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits >= 15 {
                            return Err(ChunkError("chunk size too large"));
                        }
                        let d = (b as char).to_digit(16).unwrap_or(0);
                        self.size = self.size * 16 + u64::from(d);
                        self.digits += 1;
                    }
                    _ if self.digits == 0 => return Err(ChunkError("chunk size missing")),
                    b';' | b' ' | b'\t' => self.state = Extension,
                    b'\r' => self.state = SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => return Err(ChunkError("invalid chunk size")),
                },
                Extension => match b {
                    b'\r' => self.state = SizeLf,
                    b'\n' => self.end_size_line(),
                    _ => {}
                },
                SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk size line not ended by CRLF"));
                    }
                    self.end_size_line();
                }
                Data => {
                    let take = (input.len() - i).min(self.size as usize);
                    out.extend_from_slice(&input[i..i + take]);
                    self.size -= take as u64;
                    i += take;
                    if self.size == 0 {
                        self.state = DataCr;
                    }
                    continue;
                }
                DataCr => match b {
                    b'\r' => self.state = DataLf,
                    b'\n' => self.state = Size,
                    _ => return Err(ChunkError("chunk data not followed by CRLF")),
                },
                DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError("chunk data not followed by CRLF"));
                    }
                    self.state = Size;
                }
                TrailerStart => match b {
                    b'\r' => self.state = TrailerEndLf,
                    b'\n' => self.state = Done,
                    _ => self.state = TrailerLine,
                },
                TrailerLine => {
                    if b == b'\n' {
                        self.state = TrailerStart;
                    }
                    self.last_cr = b == b'\r';
                }
                TrailerEndLf => {
                    if b != b'\n' {
                        return Err(ChunkError("trailer section not ended by CRLF"));
                    }
                    self.state = Done;
                }
                Done => break,
            }
            i += 1;
        }
        Ok(i)
    }

    fn end_size_line(&mut self) {
        self.digits = 0;
        self.state = if self.size == 0 { ChunkState::TrailerStart } else { ChunkState::Data };
    }
}

/// Writes `data` as one chunk of a chunked body.
pub fn write_chunk(out: &mut Vec<u8>, data: &[u8]) {
    if !data.is_empty() {
        let _ = write!(out, "{:x}\r\n", data.len());
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
}

pub const LAST_CHUNK: &[u8] = b"0\r\n\r\n";

/// The prefix every HTTP/2 cleartext connection with prior knowledge starts with.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;
    use berth_rules::header::{is_name as is_header_name, is_value as is_header_value};

    #[test]
    fn header_names_and_values_are_checked_as_the_http_crate_checks_them() {
        for c in 0..=255u8 {
            let name = [b'x', c];
            assert_eq!(is_header_name(&name), hyper::header::HeaderName::from_bytes(&name).is_ok(), "name byte {c}");
            let value = [b'v', c, b'v'];
            let ascii =
                std::str::from_utf8(&value).ok().is_some_and(|v| hyper::header::HeaderValue::from_str(v).is_ok());
            assert_eq!(is_header_value(&value), ascii, "value byte {c}");
        }
        assert!(!is_header_name(b""));
    }

    fn req(text: &str) -> (Vec<u8>, Head) {
        let buf = text.as_bytes().to_vec();
        let mut head = Head::default();
        parse_request(&buf, &mut head).unwrap().unwrap();
        (buf, head)
    }

    #[test]
    fn parses_a_request_head_into_spans() {
        let (buf, head) = req("GET /a?b=1 HTTP/1.1\r\nHost: x.test\r\nX-One: 1\r\n\r\nrest");
        assert_eq!(head.method.get(&buf), b"GET");
        assert_eq!(head.target.get(&buf), b"/a?b=1");
        assert_eq!(head.minor, 1);
        assert_eq!(&buf[head.len..], b"rest");
        let pairs: Vec<_> = head.pairs(&buf).collect();
        assert_eq!(pairs, vec![(&b"Host"[..], &b"x.test"[..]), (&b"X-One"[..], &b"1"[..])]);
    }

    #[test]
    fn incomplete_heads_wait_and_oversized_ones_are_refused() {
        let mut head = Head::default();
        assert_eq!(parse_request(b"GET / HTTP/1.1\r\nHost: a", &mut head), Ok(None));
        let mut big = b"GET / HTTP/1.1\r\nX: ".to_vec();
        big.resize(MAX_HEAD + 10, b'a');
        assert_eq!(parse_request(&big, &mut head), Err(HeadError::TooLarge));
        assert!(matches!(
            parse_request(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n", &mut head),
            Err(HeadError::Malformed(_))
        ));
    }

    #[test]
    fn request_framing_refuses_smuggling_shapes() {
        let framing = |text: &str| {
            let (buf, head) = req(text);
            request_framing(&meta(head.pairs(&buf)))
        };
        assert_eq!(framing("POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\n"), Ok(Framing::Length(5)));
        assert_eq!(
            framing("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n"),
            Ok(Framing::Length(5))
        );
        assert_eq!(framing("GET / HTTP/1.1\r\n\r\n"), Ok(Framing::None));
        assert_eq!(framing("POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"), Ok(Framing::Chunked));
        assert!(framing("POST / HTTP/1.1\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n").is_err());
        assert!(framing("POST / HTTP/1.1\r\nContent-Length: 5, 6\r\n\r\n").is_err());
        assert!(framing("POST / HTTP/1.1\r\nContent-Length: +5\r\n\r\n").is_err());
        assert!(framing("POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n").is_err());
        assert!(framing("POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n").is_err());
    }

    #[test]
    fn response_framing_follows_method_and_status() {
        let m = |text: &str| {
            let buf = text.as_bytes().to_vec();
            let mut head = Head::default();
            parse_response(&buf, &mut head).unwrap().unwrap();
            meta(head.pairs(&buf))
        };
        let cl = m("HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\n");
        assert_eq!(response_framing(&cl, false, 200), Ok(Framing::Length(6)));
        assert_eq!(response_framing(&cl, true, 200), Ok(Framing::None));
        assert_eq!(response_framing(&cl, false, 304), Ok(Framing::None));
        assert_eq!(response_framing(&cl, false, 204), Ok(Framing::None));
        let chunked = m("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n");
        assert_eq!(response_framing(&chunked, false, 200), Ok(Framing::Chunked));
        let none = m("HTTP/1.1 200 OK\r\n\r\n");
        assert_eq!(response_framing(&none, false, 200), Ok(Framing::Close));
    }

    #[test]
    fn chunked_decoding_survives_every_split() {
        let wire = b"5;ext=1\r\nhello\r\n1\r\n \r\nB\r\nworld\r\n1234\r\n0\r\nTrailer: x\r\n\r\nNEXT";
        let end = wire.len() - b"NEXT".len();
        for cut in 0..wire.len() {
            let mut d = Chunked::default();
            let mut out = Vec::new();
            let a = d.decode(&wire[..cut], &mut out).unwrap();
            assert_eq!(a, cut.min(end), "the first part is consumed up to the end of the body");
            let b = d.decode(&wire[a..], &mut out).unwrap();
            assert!(d.done());
            assert_eq!(out, b"hello world\r\n1234");
            assert_eq!(a + b, end, "stops at the end of the body (cut {cut})");
        }
    }

    #[test]
    fn a_clients_chunk_lines_must_end_in_crlf() {
        let good = b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n";
        for cut in 0..good.len() {
            let mut d = Chunked::strict();
            let mut out = Vec::new();
            let a = d.decode(&good[..cut], &mut out).unwrap();
            d.decode(&good[a..], &mut out).unwrap();
            assert!(d.done() && out == b"hello", "cut {cut}");
        }
        for bad in
            [&b"5\nhello\r\n0\r\n\r\n"[..], b"5\r\nhello\n0\r\n\r\n", b"5;x\nhello", b"0\r\n\n", b"0\r\nX: 1\n\r\n"]
        {
            assert!(
                Chunked::strict().decode(bad, &mut Vec::new()).is_err(),
                "{}",
                String::from_utf8_lossy(bad).escape_debug()
            );
            // An upstream's answer is taken as it comes.
            assert!(
                Chunked::default().decode(bad, &mut Vec::new()).is_ok(),
                "{}",
                String::from_utf8_lossy(bad).escape_debug()
            );
        }
    }

    #[test]
    fn chunked_decoding_refuses_garbage() {
        for bad in [&b"zz\r\n"[..], b"\r\n", b"5\r\nhelloXX", b"5\rX", b"ffffffffffffffffff\r\n"] {
            assert!(Chunked::default().decode(bad, &mut Vec::new()).is_err(), "{}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn upstream_head_drops_hop_by_hop_and_adds_forwarded_headers() {
        let (buf, head) = req(
            "POST /x HTTP/1.1\r\nHost: Shop.Test\r\nConnection: keep-alive, X-Secret\r\nX-Secret: s\r\nKeep-Alive: 5\r\n\
             Content-Length: 3\r\nExpect: 100-continue\r\nX-Forwarded-For: 10.0.0.1\r\nX-Keep: yes\r\nX-Rule: old\r\n\r\n",
        );
        let set = vec![("X-Rule".to_string(), "new".to_string())];
        let f = Forward {
            method: b"POST",
            target: b"/y",
            host: b"Shop.Test",
            client_ip: "127.0.0.9".parse().unwrap(),
            https: true,
            set: &set,
            upgrade: None,
        };
        let mut out = Vec::new();
        write_upstream_head(&mut out, &f, head.pairs(&buf));
        end_upstream_head(&mut out, true, 3);
        let text = String::from_utf8(out).unwrap();
        assert_eq!(
            text,
            "POST /y HTTP/1.1\r\nHost: Shop.Test\r\nX-Keep: yes\r\nX-Forwarded-For: 10.0.0.1, 127.0.0.9\r\n\
             X-Forwarded-Host: Shop.Test\r\nX-Forwarded-Proto: https\r\nX-Rule: new\r\nContent-Length: 3\r\n\r\n"
        );
    }

    #[test]
    fn client_head_frames_by_what_the_client_speaks() {
        let buf =
            b"HTTP/1.1 200 OK\r\nServer: o\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\n\r\n".to_vec();
        let mut head = Head::default();
        parse_response(&buf, &mut head).unwrap().unwrap();
        let mut out = Vec::new();
        let body = ClientBody::for_client(Framing::Chunked, 1);
        write_client_head(&mut out, 200, b"OK", head.pairs(&buf), body, true, 1);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nServer: o\r\nTransfer-Encoding: chunked\r\n\r\n");
        out.clear();
        let body = ClientBody::for_client(Framing::Chunked, 0);
        assert_eq!(body, ClientBody::UntilClose);
        write_client_head(&mut out, 200, b"OK", head.pairs(&buf), body, false, 0);
        assert_eq!(out, b"HTTP/1.1 200 OK\r\nServer: o\r\nConnection: close\r\n\r\n");
    }
}
