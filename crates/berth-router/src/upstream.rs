//! Connections to upstream servers: a keep-alive pool per worker thread (a socket belongs to
//! the runtime that opened it), one request/response exchange on a connection, and a body
//! reader that hands the connection back to the pool once the response has ended.

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::h1::{self, Chunked, Framing, Head};

/// Longest wait for a TCP connection to an upstream.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Longest wait for an upstream's response head, and between two reads of its body.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(60);
/// Idle connections older than this are closed rather than reused.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Most idle connections kept per server, per worker.
pub const MAX_IDLE_PER_SERVER: usize = 256;

/// A read buffer: bytes read but not yet used stay at `pos..`.
#[derive(Debug, Default)]
pub struct Buf {
    data: Vec<u8>,
    pos: usize,
}

impl Buf {
    pub fn with_capacity(n: usize) -> Buf {
        Buf { data: Vec::with_capacity(n), pos: 0 }
    }

    pub fn filled(&self) -> &[u8] {
        &self.data[self.pos..]
    }

    pub fn is_empty(&self) -> bool {
        self.pos == self.data.len()
    }

    pub fn consume(&mut self, n: usize) {
        self.pos = (self.pos + n).min(self.data.len());
        if self.pos == self.data.len() {
            self.data.clear();
            self.pos = 0;
        }
    }

    /// Takes everything buffered.
    pub fn take(&mut self) -> Vec<u8> {
        let rest = self.data.split_off(self.pos);
        self.data.clear();
        self.pos = 0;
        rest
    }

    /// Reads once from `io`, appending; 0 means the peer closed.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, io: &mut R) -> io::Result<usize> {
        if self.pos > 0 && self.pos * 2 >= self.data.len() {
            self.data.drain(..self.pos);
            self.pos = 0;
        }
        if self.data.capacity() - self.data.len() < 2048 {
            self.data.reserve(16 * 1024);
        }
        io.read_buf(&mut self.data).await
    }
}

/// One keep-alive connection to an upstream.
pub struct Conn {
    stream: TcpStream,
    buf: Buf,
    /// Served a request before: a failure with no answer may just mean it went stale.
    reused: bool,
}

impl Conn {
    /// False when the peer has closed or sent something unasked for; checked without a syscall
    /// unless the reactor has seen the socket become readable.
    fn usable(&self) -> bool {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        match self.stream.poll_read_ready(&mut cx) {
            Poll::Pending => true,
            Poll::Ready(Err(_)) => false,
            Poll::Ready(Ok(())) => {
                let mut probe = [0u8; 1];
                matches!(self.stream.try_read(&mut probe), Err(e) if e.kind() == io::ErrorKind::WouldBlock)
            }
        }
    }

    pub fn stream(&mut self) -> &mut TcpStream {
        &mut self.stream
    }
}

/// Idle connections to one server, each with when it went idle.
type IdleList = Vec<(Conn, Instant)>;

/// A worker's idle upstream connections, by server address.
#[derive(Default)]
pub struct Pool {
    idle: Mutex<HashMap<Arc<str>, IdleList>>,
}

/// A whole HTTP/1.1 request, prepared once and sent as it is on every try.
#[derive(Clone, Copy)]
pub struct Request<'a> {
    pub bytes: &'a [u8],
    /// A HEAD request: the answer has no body whatever its headers say.
    pub head: bool,
    /// An upgrade was asked for: only then is `101 Switching Protocols` an answer.
    pub upgrade: bool,
    /// Idempotent: may be sent again if a reused connection turns out dead before answering.
    pub resend: bool,
}

/// The rest of a request body too large to hold, read from the client while it is sent
/// upstream. Once it has started, the request can never be sent again.
pub trait BodyPump: Send {
    fn pump<'a>(
        &'a mut self,
        upstream: &'a mut TcpStream,
    ) -> Pin<Box<dyn Future<Output = Result<(), PumpError>> + Send + 'a>>;
}

#[derive(Debug)]
pub enum PumpError {
    /// The client stalled, went away, or sent a malformed or too large body: the status that says so.
    Client(u16, String),
    /// Writing to the upstream failed.
    Upstream(String),
}

/// Why an exchange failed, and what that allows.
#[derive(Debug)]
pub struct ExchangeError {
    /// No connection could be made: nothing was sent.
    pub connect: bool,
    pub timeout: bool,
    /// The client's side of a streamed body failed: the status to answer (or log) with.
    pub client: Option<u16>,
    pub message: String,
}

/// A response head read from an upstream; the body follows on `conn`.
pub struct Response {
    pub head: Head,
    pub framing: Framing,
    /// The upstream will keep the connection open after this response.
    pub keep_alive: bool,
    conn: Conn,
    server: Arc<str>,
}

impl Response {
    /// The head's bytes, which `head`'s spans point into.
    pub fn head_bytes(&self) -> &[u8] {
        self.conn.buf.filled()
    }

    pub fn pairs(&self) -> impl Iterator<Item = (&[u8], &[u8])> + Clone {
        self.head.pairs(self.conn.buf.filled())
    }

    pub fn into_body(mut self, pool: &Arc<Pool>) -> BodyReader {
        self.conn.buf.consume(self.head.len);
        let state = match self.framing {
            Framing::None => BodyState::Done,
            Framing::Length(0) => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(Chunked::default()),
            Framing::Close => BodyState::Close,
        };
        let mut reader = BodyReader {
            conn: Some(self.conn),
            state,
            keep_alive: self.keep_alive,
            pool: pool.clone(),
            server: self.server,
        };
        if matches!(reader.state, BodyState::Done) {
            reader.finish();
        }
        reader
    }

    /// The connection itself, for an upgrade: the bytes already read after the head, and the stream.
    pub fn into_upgraded(mut self) -> (Vec<u8>, TcpStream) {
        self.conn.buf.consume(self.head.len);
        (self.conn.buf.take(), self.conn.stream)
    }
}

#[derive(Debug)]
enum BodyState {
    Length(u64),
    Chunked(Chunked),
    Close,
    Done,
}

/// Reads a response body off its upstream connection, decoded.
pub struct BodyReader {
    conn: Option<Conn>,
    state: BodyState,
    keep_alive: bool,
    pool: Arc<Pool>,
    server: Arc<str>,
}

impl BodyReader {
    pub fn done(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    /// Appends the body bytes already buffered to `out`, without waiting.
    pub fn take_buffered(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let Some(conn) = self.conn.as_mut() else { return Ok(()) };
        let input = conn.buf.filled();
        let used = match &mut self.state {
            BodyState::Done => return Ok(()),
            BodyState::Length(left) => {
                let n = (*left).min(input.len() as u64) as usize;
                out.extend_from_slice(&input[..n]);
                *left -= n as u64;
                if *left == 0 {
                    self.state = BodyState::Done;
                }
                n
            }
            BodyState::Chunked(decoder) => {
                let n = decoder.decode(input, out).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
                if decoder.done() {
                    self.state = BodyState::Done;
                }
                n
            }
            BodyState::Close => {
                out.extend_from_slice(input);
                input.len()
            }
        };
        conn.buf.consume(used);
        if self.done() {
            self.finish();
        }
        Ok(())
    }

    /// Waits for more of the body to arrive; [`BodyReader::take_buffered`] then hands it out.
    pub async fn fill(&mut self) -> io::Result<()> {
        if self.done() {
            return Ok(());
        }
        let Some(conn) = self.conn.as_mut() else { return Ok(()) };
        let n = match tokio::time::timeout(RESPONSE_TIMEOUT, conn.buf.fill(&mut conn.stream)).await {
            Ok(read) => read?,
            Err(_) => return Err(io::Error::new(io::ErrorKind::TimedOut, "upstream body stalled")),
        };
        if n == 0 {
            if matches!(self.state, BodyState::Close) {
                self.state = BodyState::Done;
                self.conn = None;
                return Ok(());
            }
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "upstream closed in the middle of a body"));
        }
        Ok(())
    }

    /// The body ended: the connection goes back to the pool if it can carry another request.
    fn finish(&mut self) {
        if let Some(conn) = self.conn.take()
            && self.keep_alive
            && conn.buf.is_empty()
        {
            self.pool.put(self.server.clone(), conn);
        }
    }
}

impl Pool {
    fn take(&self, server: &str) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.get_mut(server)?;
        while let Some((conn, since)) = list.pop() {
            if since.elapsed() < IDLE_TIMEOUT && conn.usable() {
                return Some(conn);
            }
        }
        None
    }

    fn put(&self, server: Arc<str>, mut conn: Conn) {
        conn.reused = true;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        let list = idle.entry(server).or_default();
        if list.len() < MAX_IDLE_PER_SERVER {
            list.push((conn, Instant::now()));
        }
    }

    /// Closes connections that have idled too long or were closed by their server.
    pub fn sweep(&self) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        for list in idle.values_mut() {
            list.retain(|(conn, since)| since.elapsed() < IDLE_TIMEOUT && conn.usable());
        }
        idle.retain(|_, list| !list.is_empty());
    }

    async fn connect(server: &str) -> Result<Conn, ExchangeError> {
        let fail = |message: String, timeout| ExchangeError { connect: true, timeout, client: None, message };
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(server)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(fail(format!("connect: {e}"), false)),
            Err(_) => return Err(fail(format!("connect: no answer within {}s", CONNECT_TIMEOUT.as_secs()), true)),
        };
        let _ = stream.set_nodelay(true);
        Ok(Conn { stream, buf: Buf::with_capacity(8 * 1024), reused: false })
    }

    /// Sends `request` to `server` and reads the response head. An idle connection that turns
    /// out to be dead before answering is replaced by a new one when the request may be resent.
    /// A body too large to hold is pumped from the client after `request`'s bytes.
    pub async fn exchange<'p>(
        &self,
        server: &Arc<str>,
        request: Request<'_>,
        mut pump: Option<&mut (dyn BodyPump + 'p)>,
    ) -> Result<Response, ExchangeError> {
        let mut conn = match self.take(server) {
            Some(c) => c,
            None => Self::connect(server).await?,
        };
        loop {
            match Self::send_on(&mut conn, request, pump.as_deref_mut()).await {
                Ok((head, framing, keep_alive)) => {
                    return Ok(Response { head, framing, keep_alive, conn, server: server.clone() });
                }
                Err(Failure::Stale(why)) if conn.reused => {
                    if !request.resend {
                        return Err(ExchangeError { connect: false, timeout: false, client: None, message: why });
                    }
                    conn = Self::connect(server).await?;
                }
                Err(Failure::Stale(message)) | Err(Failure::Broken(message)) => {
                    return Err(ExchangeError { connect: false, timeout: false, client: None, message });
                }
                Err(Failure::Client(status, message)) => {
                    return Err(ExchangeError { connect: false, timeout: false, client: Some(status), message });
                }
                Err(Failure::Timeout) => {
                    return Err(ExchangeError {
                        connect: false,
                        timeout: true,
                        client: None,
                        message: format!("no response within {}s", RESPONSE_TIMEOUT.as_secs()),
                    });
                }
            }
        }
    }

    async fn send_on<'p>(
        conn: &mut Conn,
        request: Request<'_>,
        pump: Option<&mut (dyn BodyPump + 'p)>,
    ) -> Result<(Head, Framing, bool), Failure> {
        let mut head = Head::default();
        // Sending and the answer's head share one deadline: an upstream that stops reading
        // is as stuck as one that never answers. A pumped body takes as long as the client
        // does (each of its reads and writes has a bound of its own); the deadline starts after.
        let mut deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
        let write = conn.stream.write_all(request.bytes);
        match tokio::time::timeout_at(deadline, write).await {
            Ok(written) => written.map_err(|e| Failure::Stale(format!("sending the request: {e}")))?,
            Err(_) => return Err(Failure::Timeout),
        }
        if let Some(pump) = pump {
            pump.pump(&mut conn.stream).await.map_err(|e| match e {
                PumpError::Client(status, why) => Failure::Client(status, why),
                PumpError::Upstream(why) => Failure::Broken(format!("sending the request body: {why}")),
            })?;
            deadline = tokio::time::Instant::now() + RESPONSE_TIMEOUT;
        }
        let exchange = async {
            loop {
                if !conn.buf.is_empty() {
                    match h1::parse_response(conn.buf.filled(), &mut head) {
                        Ok(Some(())) if head.status >= 100 && head.status < 200 && head.status != 101 => {
                            // Informational (100 Continue, 103 Early Hints): the real answer follows.
                            conn.buf.consume(head.len);
                            continue;
                        }
                        Ok(Some(())) => return Ok(()),
                        Ok(None) => {}
                        Err(e) => return Err(Failure::Broken(format!("bad response: {e}"))),
                    }
                }
                let got_any = !conn.buf.is_empty();
                match conn.buf.fill(&mut conn.stream).await {
                    Ok(0) if got_any => {
                        return Err(Failure::Broken("closed in the middle of the response head".into()));
                    }
                    Ok(0) => return Err(Failure::Stale("closed the connection without answering".into())),
                    Ok(_) => {}
                    Err(e) if got_any => return Err(Failure::Broken(format!("reading the response: {e}"))),
                    Err(e) => return Err(Failure::Stale(format!("reading the response: {e}"))),
                }
            }
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(r) => r?,
            Err(_) => return Err(Failure::Timeout),
        }
        if head.status == 101 && !request.upgrade {
            return Err(Failure::Broken("switched protocols without being asked to".into()));
        }
        let buf = conn.buf.filled();
        let meta = h1::meta(head.pairs(buf));
        let framing = h1::response_framing(&meta, request.head, head.status)
            .map_err(|why| Failure::Broken(format!("bad response: {why}")))?;
        let keep_alive = framing != Framing::Close
            && head.status != 101
            && if head.minor >= 1 { !meta.close } else { meta.keep_alive };
        Ok((head, framing, keep_alive))
    }
}

enum Failure {
    /// Nothing came back: on a reused connection the server may simply have closed it.
    Stale(String),
    Broken(String),
    /// The client's side of a pumped body failed.
    Client(u16, String),
    Timeout,
}

/// Keeps a worker's pool clean while the worker runs.
pub async fn sweep_forever(pool: Arc<Pool>) {
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    loop {
        tick.tick().await;
        pool.sweep();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// An origin that answers each request on a connection with `answers` in turn, then closes.
    async fn origin(answers: Vec<&'static [u8]>) -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let answers = answers.clone();
                tokio::spawn(async move {
                    let mut buf = Buf::default();
                    for answer in answers {
                        loop {
                            let mut head = Head::default();
                            if let Ok(Some(())) = h1::parse_request(buf.filled(), &mut head) {
                                buf.consume(head.len);
                                break;
                            }
                            if buf.fill(&mut s).await.unwrap_or(0) == 0 {
                                return;
                            }
                        }
                        if s.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn body(pool: &Arc<Pool>, server: &Arc<str>, resend: bool) -> Result<(u16, Vec<u8>), ExchangeError> {
        let request = Request { bytes: b"GET / HTTP/1.1\r\nHost: t\r\n\r\n", head: false, upgrade: false, resend };
        let resp = pool.exchange(server, request, None).await?;
        let status = resp.head.status;
        let mut reader = resp.into_body(pool);
        let mut out = Vec::new();
        loop {
            reader.take_buffered(&mut out).unwrap();
            if reader.done() {
                return Ok((status, out));
            }
            reader.fill().await.unwrap();
        }
    }

    #[tokio::test]
    async fn connections_are_reused_and_chunked_bodies_decoded() {
        let server: Arc<str> = origin(vec![
            b"HTTP/1.1 103 Early Hints\r\nLink: x\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        ])
        .await
        .into();
        let pool = Arc::new(Pool::default());
        assert_eq!(body(&pool, &server, true).await.unwrap(), (200, b"hi".to_vec()));
        assert_eq!(pool.idle.lock().unwrap()[&server].len(), 1, "back in the pool after its body");
        assert_eq!(body(&pool, &server, true).await.unwrap(), (200, b"abc".to_vec()));
    }

    #[tokio::test]
    async fn a_stale_connection_is_replaced_only_when_resending_is_allowed() {
        // Each connection answers once and closes: the pooled one is dead when reused.
        let server: Arc<str> = origin(vec![b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nA"]).await.into();
        let pool = Arc::new(Pool::default());
        assert_eq!(body(&pool, &server, true).await.unwrap().1, b"A");
        // Let the close arrive, then force the pool to hand out the dead connection.
        tokio::time::sleep(Duration::from_millis(50)).await;
        let dead = pool.idle.lock().unwrap().get_mut(&server).and_then(Vec::pop);
        if let Some((conn, _)) = dead {
            assert!(!conn.usable(), "a closed connection is seen as such");
            let mut idle = pool.idle.lock().unwrap();
            idle.entry(server.clone()).or_default().push((conn, Instant::now()));
        }
        // `take` skips the dead one, so the request succeeds on a fresh connection.
        assert_eq!(body(&pool, &server, false).await.unwrap().1, b"A");
    }

    #[tokio::test]
    async fn switching_protocols_unasked_is_a_broken_answer() {
        let server: Arc<str> = origin(vec![b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n"]).await.into();
        let pool = Arc::new(Pool::default());
        let err = body(&pool, &server, true).await.expect_err("refused");
        assert!(!err.connect && err.message.contains("switched protocols"), "{err:?}");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let addr = TcpListener::bind("127.0.0.1:0").await.unwrap().local_addr().unwrap().to_string();
        let pool = Arc::new(Pool::default());
        let request = Request { bytes: b"GET / HTTP/1.1\r\n\r\n", head: false, upgrade: false, resend: true };
        let err = pool.exchange(&Arc::from(addr.as_str()), request, None).await.err().unwrap();
        assert!(err.connect, "{err:?}");
    }
}
