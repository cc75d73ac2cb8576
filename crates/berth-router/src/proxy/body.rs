//! Request bodies: held whole up to a size (so a failed try can go elsewhere), streamed to the
//! upstream beyond it, from an HTTP/1 connection or HTTP/2 frames.

use super::*;

/// Request bodies up to this size are held whole (and may be sent again on another server);
/// larger ones stream from the client to the upstream, so memory does not grow with them.
pub(super) const HOLD_BODY_UP_TO: usize = 1 << 20;

/// What reading a request body came to.
pub(super) enum BodyRead {
    /// All of it is in `body`.
    Whole,
    /// Refused before anything was sent: 413 for too large, 400 for malformed.
    Refused(u16),
    /// Too large to hold: `body` has what was decoded so far, the rest is still to come.
    Stream(StreamRest),
}

/// The part of a streamed body still to read from the client.
pub(super) enum StreamRest {
    Length(u64),
    Chunked(h1::Chunked),
}

/// Reads a request body into `body`, up to `hold` bytes; `Err` when the client went away.
pub(super) async fn read_request_body<S: AsyncRead + Unpin>(
    io: &mut S,
    buf: &mut Buf,
    framing: Framing,
    body: &mut Vec<u8>,
    max_body: usize,
    hold: usize,
) -> io::Result<BodyRead> {
    match framing {
        Framing::None | Framing::Close => Ok(BodyRead::Whole),
        Framing::Length(n) => {
            if n > max_body as u64 {
                return Ok(BodyRead::Refused(413));
            }
            if n > hold as u64 {
                return Ok(BodyRead::Stream(StreamRest::Length(n)));
            }
            let n = n as usize;
            loop {
                let take = (n - body.len()).min(buf.filled().len());
                body.extend_from_slice(&buf.filled()[..take]);
                buf.consume(take);
                if body.len() == n {
                    return Ok(BodyRead::Whole);
                }
                fill_within(io, buf).await?;
            }
        }
        Framing::Chunked => {
            // A client's chunk lines must end in CRLF: a bare LF is how smuggling starts.
            let mut decoder = h1::Chunked::strict();
            loop {
                let Ok(used) = decoder.decode(buf.filled(), body) else {
                    return Ok(BodyRead::Refused(400));
                };
                buf.consume(used);
                if body.len() > max_body {
                    return Ok(BodyRead::Refused(413));
                }
                if decoder.done() {
                    return Ok(BodyRead::Whole);
                }
                if body.len() > hold {
                    return Ok(BodyRead::Stream(StreamRest::Chunked(decoder)));
                }
                fill_within(io, buf).await?;
            }
        }
    }
}

/// Moves the rest of a client's request body to the upstream as it arrives: as it came when it
/// has a length, re-chunked after decoding when it is chunked (so a malformed or too large body
/// is still caught).
pub(super) struct ClientPump<'c, S> {
    pub(super) io: &'c mut S,
    pub(super) buf: &'c mut Buf,
    pub(super) rest: StreamRest,
    /// Body bytes sent or held so far, against `max_body`.
    pub(super) sent: u64,
    pub(super) max_body: u64,
    pub(super) decoded: Vec<u8>,
    pub(super) framed: Vec<u8>,
    /// The whole body went upstream: the client connection is where the next request starts.
    pub(super) done: bool,
}

impl<S: AsyncRead + Unpin + Send> BodyPump for ClientPump<'_, S> {
    fn pump<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
    ) -> Pin<Box<dyn Future<Output = Result<(), PumpError>> + Send + 'a>> {
        Box::pin(async move {
            match &mut self.rest {
                StreamRest::Length(left) => {
                    while *left > 0 {
                        if self.buf.is_empty() {
                            fill_within(self.io, self.buf).await.map_err(client_failed)?;
                        }
                        let take = (*left).min(self.buf.filled().len() as u64) as usize;
                        write_upstream(upstream, &self.buf.filled()[..take]).await?;
                        self.buf.consume(take);
                        *left -= take as u64;
                    }
                }
                StreamRest::Chunked(decoder) => loop {
                    self.decoded.clear();
                    let used = decoder
                        .decode(self.buf.filled(), &mut self.decoded)
                        .map_err(|_| PumpError::Client(400, "malformed request body".into()))?;
                    self.buf.consume(used);
                    send_chunk(upstream, &mut self.framed, &self.decoded, &mut self.sent, self.max_body).await?;
                    if decoder.done() {
                        write_upstream(upstream, h1::LAST_CHUNK).await?;
                        break;
                    }
                    fill_within(self.io, self.buf).await.map_err(client_failed)?;
                },
            }
            self.done = true;
            Ok(())
        })
    }
}

/// The rest of an HTTP/2 request body, re-chunked for the upstream as its frames arrive.
pub(super) struct H2Pump {
    pub(super) body: Incoming,
    pub(super) sent: u64,
    pub(super) max_body: u64,
    pub(super) framed: Vec<u8>,
}

impl BodyPump for H2Pump {
    fn pump<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
    ) -> Pin<Box<dyn Future<Output = Result<(), PumpError>> + Send + 'a>> {
        Box::pin(async move {
            while let Some(data) = next_frame(&mut self.body).await.map_err(|(s, why)| PumpError::Client(s, why))? {
                send_chunk(upstream, &mut self.framed, &data, &mut self.sent, self.max_body).await?;
            }
            write_upstream(upstream, h1::LAST_CHUNK).await
        })
    }
}

/// The next data of an HTTP/2 request body, none at its end (trailers are dropped). A client
/// that sends nothing for `CLIENT_BODY_STALL` gets 408, a broken body 400.
pub(super) async fn next_frame(body: &mut Incoming) -> Result<Option<Bytes>, (u16, String)> {
    loop {
        match tokio::time::timeout(CLIENT_BODY_STALL, body.frame()).await {
            Err(_) => return Err(stalled()),
            Ok(None) => return Ok(None),
            Ok(Some(Err(e))) => return Err((400, format!("reading the request body: {e}"))),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    return Ok(Some(data));
                }
            }
        }
    }
}

/// A client that sent none of its body for `CLIENT_BODY_STALL`.
pub(super) fn stalled() -> (u16, String) {
    (408, format!("the client sent nothing for {}s", CLIENT_BODY_STALL.as_secs()))
}

pub(super) fn client_failed(e: io::Error) -> PumpError {
    if e.kind() == io::ErrorKind::TimedOut {
        let (status, why) = stalled();
        PumpError::Client(status, why)
    } else {
        PumpError::Client(400, format!("the request body ended early: {e}"))
    }
}

/// Counts decoded body bytes against the limit and sends them upstream as one chunk.
pub(super) async fn send_chunk(
    upstream: &mut TcpStream,
    framed: &mut Vec<u8>,
    data: &[u8],
    sent: &mut u64,
    max_body: u64,
) -> Result<(), PumpError> {
    *sent += data.len() as u64;
    if *sent > max_body {
        return Err(PumpError::Client(413, "request body too large".into()));
    }
    if data.is_empty() {
        return Ok(());
    }
    framed.clear();
    h1::write_chunk(framed, data);
    write_upstream(upstream, framed).await
}

/// One write of a streamed body, bounded like an exchange: an upstream that stops reading is stuck.
pub(super) async fn write_upstream(upstream: &mut TcpStream, bytes: &[u8]) -> Result<(), PumpError> {
    match tokio::time::timeout(upstream::RESPONSE_TIMEOUT, upstream.write_all(bytes)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => Err(PumpError::Upstream(e.to_string())),
        Err(_) => Err(PumpError::Upstream(format!("stopped reading for {}s", upstream::RESPONSE_TIMEOUT.as_secs()))),
    }
}

pub(super) async fn fill_within<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Buf) -> io::Result<()> {
    match tokio::time::timeout(CLIENT_BODY_STALL, buf.fill(io)).await {
        Ok(Ok(n)) if n > 0 => Ok(()),
        Ok(Ok(_)) => Err(io::ErrorKind::UnexpectedEof.into()),
        Ok(Err(e)) => Err(e),
        Err(_) => Err(io::ErrorKind::TimedOut.into()),
    }
}
