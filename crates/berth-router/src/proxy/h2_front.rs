//! The HTTP/2 front: hyper parses HTTP/2; the upstream exchange is the one HTTP/1 uses.

use super::*;

impl Proxy {
    /// Serves one HTTP/2 request (hyper parses HTTP/2; the upstream exchange is shared).
    pub async fn handle_h2(
        self: Arc<Self>,
        pool: Arc<Pool>,
        req: Request<Incoming>,
        remote: SocketAddr,
        https: bool,
    ) -> Result<Response<H2Body>, Infallible> {
        let started = Instant::now();
        let table = self.table.load_full();
        let (parts, body) = req.into_parts();
        let host_value: Option<&[u8]> = match parts.uri.authority() {
            Some(a) => Some(a.as_str().as_bytes()),
            None => parts.headers.get(header::HOST).map(HeaderValue::as_bytes),
        };
        let Some((host_value, host)) = host_value.and_then(|v| Some((v, normalize_host(v)?))) else {
            return Ok(Local::json(400, serde_json::json!({"error": "no Host header"})).into_hyper());
        };
        let target = parts.uri.path_and_query().map_or("/", |p| p.as_str());
        let method = parts.method.as_str();
        let pairs: Vec<(&[u8], &[u8])> =
            parts.headers.iter().map(|(n, v)| (n.as_str().as_bytes(), v.as_bytes())).collect();
        let info = RequestInfo { method, target, host: &host, headers: &pairs, remote };
        let mut log = self.log_for(&info, Vec::new(), started);
        let plan = match self.decide(&table, &info, started, &mut log) {
            Decision::Forward(plan) => plan,
            Decision::Local(local) => {
                self.log_end(log, local.status, local.body.len() as u64);
                return Ok(local.into_hyper());
            }
        };
        let mut wire = Vec::with_capacity(1024);
        let forward = Forward {
            method: method.as_bytes(),
            target: plan.rewrite.as_deref().unwrap_or(target).as_bytes(),
            host: host_value,
            client_ip: remote.ip(),
            https,
            set: &plan.set_headers,
            upgrade: None,
        };
        h1::write_upstream_head(&mut wire, &forward, pairs.iter().copied());
        drop(pairs);
        // As on HTTP/1: held up to HOLD_BODY_UP_TO, streamed on (chunked) beyond it.
        let mut body = body;
        let mut held = Vec::new();
        let mut more = false;
        loop {
            let data = match next_frame(&mut body).await {
                Ok(Some(data)) => data,
                Ok(None) => break,
                Err((status, why)) => {
                    let local = Local::json(status, serde_json::json!({"error": why}));
                    self.log_end(log, status, local.body.len() as u64);
                    return Ok(local.into_hyper());
                }
            };
            held.extend_from_slice(&data);
            if held.len() > self.max_body {
                let local = Local::json(413, serde_json::json!({"error": "request body too large"}));
                self.log_end(log, 413, local.body.len() as u64);
                return Ok(local.into_hyper());
            }
            if held.len() > HOLD_BODY_UP_TO {
                more = true;
                break;
            }
        }
        let request = |wire| upstream::Request {
            bytes: wire,
            head: parts.method == hyper::Method::HEAD,
            upgrade: false,
            resend: is_idempotent(method.as_bytes()) && !more,
        };
        let forwarded = if more {
            h1::end_upstream_head_streamed(&mut wire, None);
            h1::write_chunk(&mut wire, &held);
            let mut pump = H2Pump { body, sent: held.len() as u64, max_body: self.max_body as u64, framed: Vec::new() };
            self.forward(&pool, &plan, request(&wire), Some(&mut pump), started, log.as_mut()).await
        } else {
            h1::end_upstream_head(&mut wire, h1::wants_length(method.as_bytes()), held.len());
            wire.extend_from_slice(&held);
            self.forward(&pool, &plan, request(&wire), None, started, log.as_mut()).await
        };
        let Forwarded { response, guard } = match forwarded {
            Ok(f) => f,
            Err(local) => {
                self.log_end(log, local.status, local.body.len() as u64);
                return Ok(local.into_hyper());
            }
        };
        // The line is written when the body ends, or when the client goes away first.
        let logged = LogOnDrop { proxy: self.clone(), log, status: response.head.status, bytes: 0 };
        let mut out = Response::builder().status(response.head.status);
        let framing = response.framing;
        let connection = h1::ConnectionHeaders::of(response.pairs());
        for (name, value) in response.pairs() {
            let is_length = name.eq_ignore_ascii_case(b"content-length");
            // HTTP/2 has no connection-specific headers; a length passes only when it frames the body.
            let keep =
                !connection.contains(name) && (!is_length || matches!(framing, Framing::Length(_) | Framing::None));
            if keep && let (Ok(n), Ok(v)) = (HeaderName::from_bytes(name), HeaderValue::from_bytes(value)) {
                out = out.header(n, v);
            }
        }
        drop(connection);
        let reader = response.into_body(&pool);
        let state = (reader, guard, logged, false);
        let frames = futures_util::stream::unfold(state, |(mut reader, guard, mut logged, ended)| async move {
            if ended {
                return None;
            }
            let mut chunk = Vec::new();
            loop {
                if let Err(e) = reader.take_buffered(&mut chunk) {
                    return Some((Err(e), (reader, guard, logged, true)));
                }
                if !chunk.is_empty() || reader.done() {
                    break;
                }
                if let Err(e) = reader.fill().await {
                    return Some((Err(e), (reader, guard, logged, true)));
                }
            }
            if chunk.is_empty() {
                return None;
            }
            logged.bytes += chunk.len() as u64;
            let ended = reader.done();
            Some((Ok(Frame::data(Bytes::from(chunk))), (reader, guard, logged, ended)))
        });
        let body = StreamBody::new(frames).boxed_unsync();
        Ok(out.body(body).unwrap_or_else(|_| {
            Local::json(502, serde_json::json!({"error": "the upstream's response head could not be passed on"}))
                .into_hyper()
        }))
    }
}

/// An HTTP/2 response's access-log line, written when its body stream is dropped: at its end,
/// or when the client resets the stream.
pub(super) struct LogOnDrop {
    pub(super) proxy: Arc<Proxy>,
    pub(super) log: Option<Log>,
    pub(super) status: u16,
    pub(super) bytes: u64,
}

impl Drop for LogOnDrop {
    fn drop(&mut self) {
        if let Some(log) = self.log.take() {
            self.proxy.log_end(Some(log), self.status, self.bytes);
        }
    }
}
