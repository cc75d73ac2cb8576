//! The HTTP/1 client session: one task owns the client connection and the upstream exchange,
//! and moves bytes between them as nginx does, with no per-request task hop or header map.

use super::*;

impl Proxy {
    /// Serves an HTTP/1 client connection until it ends. `buf` holds what was already read.
    pub async fn serve_h1<S>(self: Arc<Self>, pool: Arc<Pool>, mut io: S, mut buf: Buf, remote: SocketAddr, https: bool)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let mut head = Head::default();
        let mut wire = Vec::with_capacity(1024);
        let mut out = Vec::with_capacity(8 * 1024);
        let mut scratch = Vec::new();
        let mut log_line = Vec::new();
        loop {
            wire.clear();
            out.clear();
            let bufs = Buffers { wire: &mut wire, out: &mut out, scratch: &mut scratch, log_line: &mut log_line };
            let step = self.h1_exchange(&pool, &mut io, &mut buf, &mut head, bufs, remote, https).await;
            // Closed, timed out or broken: nothing more can be said on this connection.
            if !matches!(step, Ok(true)) {
                return;
            }
            // One large upload or answer must not stay allocated for the life of a keep-alive
            // connection.
            for v in [&mut wire, &mut out, &mut scratch, &mut log_line] {
                release_if_large(v);
            }
        }
    }

    /// One request and its response on an HTTP/1 connection; `Ok(true)` when the connection
    /// may carry another, `Err` when the client or the upstream broke off mid-way.
    #[allow(clippy::too_many_arguments)]
    async fn h1_exchange<S>(
        &self,
        pool: &Arc<Pool>,
        io: &mut S,
        buf: &mut Buf,
        head: &mut Head,
        bufs: Buffers<'_>,
        remote: SocketAddr,
        https: bool,
    ) -> io::Result<bool>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let Buffers { wire, out, scratch, log_line } = bufs;
        // The head, within the idle allowance.
        let read_head = async {
            loop {
                if !buf.is_empty() {
                    match h1::parse_request(buf.filled(), head) {
                        Ok(Some(())) => return Ok(true),
                        Ok(None) => {}
                        Err(e) => return Err(e),
                    }
                }
                if buf.fill(io).await.unwrap_or(0) == 0 {
                    return Ok(false);
                }
            }
        };
        match tokio::time::timeout(CLIENT_IDLE, read_head).await {
            Err(_) | Ok(Ok(false)) => return Ok(false),
            Ok(Ok(true)) => {}
            Ok(Err(e)) => {
                let status = if matches!(e, h1::HeadError::TooLarge) { 431 } else { 400 };
                h1::write_local(out, status, &serde_json::json!({"error": e.to_string()}).to_string(), None, false);
                send(io, out, self.send_timeout).await?;
                return Ok(false);
            }
        }
        let started = Instant::now();
        let table = self.table.load_full();
        let bytes = buf.filled();
        let method = head.method.get(bytes);
        let raw_target = head.target.get(bytes);
        let minor = head.minor;
        let pairs: Vec<(&[u8], &[u8])> = head.pairs(bytes).collect();
        let meta = h1::meta(pairs.iter().copied());
        let mut keep_alive = if minor >= 1 { !meta.close } else { meta.keep_alive };
        // Writes a refusal; its body's length, for the access log.
        let refuse = |out: &mut Vec<u8>, status: u16, why: &str| -> u64 {
            let body = serde_json::json!({"error": why}).to_string();
            h1::write_local(out, status, &body, None, false);
            body.len() as u64
        };
        let framing = match h1::request_framing(&meta) {
            Ok(f) => f,
            Err(why) => {
                refuse(out, 400, &format!("bad request: {why}"));
                send(io, out, self.send_timeout).await?;
                return Ok(false);
            }
        };
        // RFC 9112 3.2: more than one Host is refused; routers behind us could pick either.
        if pairs.iter().filter(|(n, _)| n.eq_ignore_ascii_case(b"host")).count() > 1 {
            refuse(out, 400, "bad request: more than one Host header");
            send(io, out, self.send_timeout).await?;
            return Ok(false);
        }
        // An absolute-form target (`GET http://host/path`) names the host itself.
        let (host_value, target) = match absolute_form(raw_target) {
            Some((authority, path)) => (Some(authority), path),
            None => (header_value(&pairs, "host"), raw_target),
        };
        let (Some(host_value), Ok(method_text), Ok(target_text)) =
            (host_value, std::str::from_utf8(method), std::str::from_utf8(target))
        else {
            refuse(out, 400, "no Host header, or a request line that is not text");
            send(io, out, self.send_timeout).await?;
            return Ok(false);
        };
        let Some(host) = normalize_host(host_value) else {
            refuse(out, 400, "an empty Host header");
            send(io, out, self.send_timeout).await?;
            return Ok(false);
        };
        let info = RequestInfo { method: method_text, target: target_text, host: &host, headers: &pairs, remote };
        let mut log = self.log_for(&info, std::mem::take(log_line), started);
        let plan = match self.decide(&table, &info, started, &mut log) {
            Decision::Forward(plan) => plan,
            Decision::Local(local) => {
                // The body was not read: the connection can only go on if there is none.
                let body_unread = framing != Framing::None;
                keep_alive &= !body_unread;
                local.write_h1(out, keep_alive);
                *log_line = self.log_end(log, local.status, local.body.len() as u64);
                buf.consume(head.len);
                send(io, out, self.send_timeout).await?;
                if body_unread {
                    linger(io).await;
                }
                return Ok(keep_alive);
            }
        };
        let upgrade = if meta.upgrade { header_value(&pairs, "upgrade") } else { None };
        let forward = Forward {
            method,
            target: plan.rewrite.as_deref().map_or(target, str::as_bytes),
            host: host_value,
            client_ip: remote.ip(),
            https,
            set: &plan.set_headers,
            upgrade,
        };
        h1::write_upstream_head(wire, &forward, pairs.iter().copied());
        let idempotent = is_idempotent(method);
        let head_request = method == b"HEAD";
        let wants_length = h1::wants_length(method);
        let upgrading = upgrade.is_some();
        drop(pairs);
        buf.consume(head.len);

        // A body up to HOLD_BODY_UP_TO is held whole, so that a failed try can be sent again
        // elsewhere; a larger one streams to the upstream as it arrives.
        scratch.clear();
        if framing != Framing::None && meta.expect_continue && minor >= 1 {
            send(io, b"HTTP/1.1 100 Continue\r\n\r\n", self.send_timeout).await?;
        }
        let rest = match read_request_body(io, buf, framing, scratch, self.max_body, HOLD_BODY_UP_TO).await? {
            BodyRead::Refused(status) => {
                let why = if status == 413 { "request body too large" } else { "malformed request body" };
                let bytes = refuse(out, status, why);
                *log_line = self.log_end(log, status, bytes);
                send(io, out, self.send_timeout).await?;
                linger(io).await;
                return Ok(false);
            }
            BodyRead::Whole => {
                h1::end_upstream_head(wire, wants_length, scratch.len());
                wire.extend_from_slice(scratch);
                None
            }
            BodyRead::Stream(rest) => {
                match rest {
                    StreamRest::Length(n) => h1::end_upstream_head_streamed(wire, Some(n)),
                    StreamRest::Chunked(_) => {
                        h1::end_upstream_head_streamed(wire, None);
                        h1::write_chunk(wire, scratch);
                    }
                }
                Some(rest)
            }
        };

        let streaming = rest.is_some();
        let request =
            upstream::Request { bytes: wire, head: head_request, upgrade: upgrading, resend: idempotent && !streaming };
        let (forwarded, body_read) = match rest {
            None => (self.forward(pool, &plan, request, None, started, log.as_mut()).await, true),
            Some(rest) => {
                let held = scratch.len() as u64;
                let mut pump = ClientPump {
                    io: &mut *io,
                    buf: &mut *buf,
                    rest,
                    sent: held,
                    max_body: self.max_body as u64,
                    decoded: Vec::new(),
                    framed: Vec::new(),
                    done: false,
                };
                let forwarded = self.forward(pool, &plan, request, Some(&mut pump), started, log.as_mut()).await;
                (forwarded, pump.done)
            }
        };
        // The rest of a body that was not read stands between this request and the next.
        keep_alive &= body_read;
        let forwarded = match forwarded {
            Ok(f) => f,
            Err(local) => {
                local.write_h1(out, keep_alive);
                *log_line = self.log_end(log, local.status, local.body.len() as u64);
                send(io, out, self.send_timeout).await?;
                if !body_read {
                    linger(io).await;
                }
                return Ok(keep_alive);
            }
        };
        let Forwarded { response, guard } = forwarded;
        let status = response.head.status;
        if status == 101 && upgrading {
            h1::write_client_head(
                out,
                status,
                response.head.reason.get(response.head_bytes()),
                response.pairs(),
                ClientBody::None,
                true,
                minor,
            );
            let (early, mut upstream) = response.into_upgraded();
            out.extend_from_slice(&early);
            let tunnel = async {
                send(io, out, self.send_timeout).await?;
                if !buf.is_empty() {
                    upstream.write_all(buf.filled()).await?;
                }
                // What went down to the client, for the log.
                Ok::<u64, io::Error>(tokio::io::copy_bidirectional(io, &mut upstream).await.map_or(0, |(_, down)| down))
            };
            let tunneled = tunnel.await;
            drop(guard);
            *log_line = self.log_end(log, 101, *tunneled.as_ref().unwrap_or(&0) + early.len() as u64);
            tunneled?;
            return Ok(false);
        }
        let body = ClientBody::for_client(response.framing, minor);
        if body == ClientBody::UntilClose {
            keep_alive = false;
        }
        h1::write_client_head(
            out,
            status,
            response.head.reason.get(response.head_bytes()),
            response.pairs(),
            body,
            keep_alive,
            minor,
        );
        let mut reader = response.into_body(pool);
        // Body bytes go out with the head when they are already here: one write for most answers.
        let chunked = body == ClientBody::Chunked;
        let mut body_bytes = 0u64;
        let relayed = async {
            loop {
                if chunked {
                    scratch.clear();
                    reader.take_buffered(scratch)?;
                    body_bytes += scratch.len() as u64;
                    h1::write_chunk(out, scratch);
                } else {
                    let before = out.len();
                    reader.take_buffered(out)?;
                    body_bytes += (out.len() - before) as u64;
                }
                if reader.done() {
                    if chunked {
                        out.extend_from_slice(h1::LAST_CHUNK);
                    }
                    send(io, out, self.send_timeout).await?;
                    return Ok::<(), io::Error>(());
                }
                if !out.is_empty() {
                    send(io, out, self.send_timeout).await?;
                    out.clear();
                }
                reader.fill().await?;
            }
        }
        .await;
        drop(guard);
        // Logged however it ended, with what was relayed.
        *log_line = self.log_end(log, status, body_bytes);
        relayed?;
        Ok(keep_alive)
    }
}

/// What an HTTP/1 connection reuses from one request to the next.
pub(super) struct Buffers<'a> {
    /// The request as it goes upstream.
    pub(super) wire: &'a mut Vec<u8>,
    /// The response as it goes to the client.
    pub(super) out: &'a mut Vec<u8>,
    /// A request body held for a retry; a chunk being framed.
    pub(super) scratch: &'a mut Vec<u8>,
    /// The access-log line.
    pub(super) log_line: &'a mut Vec<u8>,
}

/// Buffers a connection keeps between requests; a larger one is given back after use.
pub(super) const KEEP_BUFFER: usize = 64 * 1024;

pub(super) fn release_if_large(v: &mut Vec<u8>) {
    if v.capacity() > KEEP_BUFFER {
        *v = Vec::new();
    }
}

/// `http://host[:port]/path?query` split into the authority and the rest (`/` when empty; a
/// bare `?query` is kept, and the upstream head gets the `/` in front of it).
pub(super) fn absolute_form(target: &[u8]) -> Option<(&[u8], &[u8])> {
    let rest = target.strip_prefix(b"http://").or_else(|| target.strip_prefix(b"https://"))?;
    match rest.iter().position(|b| *b == b'/' || *b == b'?') {
        Some(i) => Some((&rest[..i], &rest[i..])),
        None => Some((rest, b"/")),
    }
}

/// Longest a closing connection keeps reading what its client still sends.
pub(super) const LINGER_TOTAL: Duration = Duration::from_secs(10);
/// A closing connection whose client has been quiet this long is closed at once.
pub(super) const LINGER_QUIET: Duration = Duration::from_secs(2);

/// Closes a connection whose request body was not all read, as nginx's lingering close does:
/// the answer has gone, the write side is shut, and what the client still sends is read and
/// dropped for a while. Closing with unread data makes the kernel send a reset, which can
/// destroy the answer before the client reads it.
pub(super) async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S) {
    let _ = io.shutdown().await;
    let deadline = Instant::now() + LINGER_TOTAL;
    let mut sink = vec![0u8; 16 * 1024];
    while Instant::now() < deadline {
        match tokio::time::timeout(LINGER_QUIET, io.read(&mut sink)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return,
        }
    }
}

/// Writes to a client within `timeout`. Most writes complete at once: only one that has to wait
/// gets a timer (making one reads the clock and the runtime handle).
pub(super) async fn send<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8], timeout: Duration) -> io::Result<()> {
    let mut write = std::pin::pin!(io.write_all(bytes));
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    if let Poll::Ready(done) = first {
        return done;
    }
    match tokio::time::timeout(timeout, write).await {
        Ok(written) => written,
        Err(_) => Err(io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_buffers_are_given_back_small_ones_kept() {
        let mut small = Vec::with_capacity(1024);
        small.extend_from_slice(b"x");
        release_if_large(&mut small);
        assert!(small.capacity() >= 1024, "a small buffer is kept for the next request");
        let mut large = vec![0u8; 16 << 20];
        release_if_large(&mut large);
        assert_eq!(large.capacity(), 0);
    }

    #[test]
    fn absolute_form_targets_carry_their_host() {
        assert_eq!(absolute_form(b"http://a.test:81/x?y"), Some((&b"a.test:81"[..], &b"/x?y"[..])));
        assert_eq!(absolute_form(b"http://a.test"), Some((&b"a.test"[..], &b"/"[..])));
        assert_eq!(absolute_form(b"http://a.test?q=1"), Some((&b"a.test"[..], &b"?q=1"[..])));
        assert_eq!(absolute_form(b"/x"), None);
    }
}
