//! The HTTP/1 data path on real sockets: the router's proxy and upstream pool in front of a
//! scripted origin that answers in every framing HTTP/1.1 allows, with clients that are
//! either a standard one (reqwest) or raw bytes where the wire itself is under test.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use berth_api::{RouteSnapshot, StaticUpstream, UpstreamServer};
use berth_router::proxy::Proxy;
use berth_router::table::{self, Registry, Scope};
use berth_router::upstream::{Buf, Pool};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the origin saw: every request's raw head and body, and how many connections it accepted.
#[derive(Default)]
struct Seen {
    requests: Mutex<Vec<(String, Vec<u8>)>>,
    connections: AtomicUsize,
    closed: AtomicUsize,
}

/// Counts a connection closed by the origin when its task ends.
struct Closing(Arc<Seen>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.closed.fetch_add(1, Ordering::SeqCst);
    }
}

/// Reads one request (head, then a Content-Length body: the router always sends one).
async fn read_request(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, Vec<u8>)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end + 4]).to_string();
            let length = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                .map_or(0, |v| v.parse::<usize>().unwrap());
            assert!(!head.to_ascii_lowercase().contains("transfer-encoding"), "the router sends lengths: {head}");
            while buf.len() < end + 4 + length {
                let mut more = [0u8; 65536];
                let n = s.read(&mut more).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&more[..n]);
            }
            let body = buf[end + 4..end + 4 + length].to_vec();
            buf.drain(..end + 4 + length);
            return Some((head, body));
        }
        let mut more = [0u8; 65536];
        let n = s.read(&mut more).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&more[..n]);
    }
}

fn big_body() -> Vec<u8> {
    (0..3 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect()
}

/// An origin answering by path, in the framing each path names. Idle connections are closed
/// after `idle_close`, as real servers do.
async fn origin(seen: Arc<Seen>, idle_close: Duration) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            seen.connections.fetch_add(1, Ordering::SeqCst);
            let seen = seen.clone();
            tokio::spawn(async move {
                let _closing = Closing(seen.clone());
                let mut buf = Vec::new();
                while let Ok(Some((head, body))) =
                    tokio::time::timeout(idle_close, read_request(&mut s, &mut buf)).await
                {
                    seen.requests.lock().unwrap().push((head.clone(), body.clone()));
                    let path = head.split_whitespace().nth(1).unwrap_or("/").to_string();
                    let mut answer: Vec<u8> = match path.as_str() {
                        "/cl" => b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-Origin: yes\r\n\r\nhello".to_vec(),
                        "/chunked" => {
                            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nhel\r\n2;x=y\r\nlo\r\n0\r\nT: 1\r\n\r\n"
                                .to_vec()
                        }
                        "/early" => b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"
                            .to_vec(),
                        "/head" => b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n".to_vec(),
                        "/echo" => {
                            let mut a = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
                            a.extend_from_slice(&body);
                            a
                        }
                        "/huge" => {
                            // More than loopback socket buffers hold: a client that stops reading blocks the sender.
                            let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 16777216\r\n\r\n".to_vec();
                            a.resize(a.len() + (16 << 20), b'h');
                            a
                        }
                        "/big" => {
                            let mut a = b"HTTP/1.1 200 OK\r\nContent-Length: 3145728\r\n\r\n".to_vec();
                            a.extend_from_slice(&big_body());
                            a
                        }
                        "/close" => {
                            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\nuntil-").await;
                            let _ = s.write_all(b"close").await;
                            return;
                        }
                        _ => b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                    };
                    if s.write_all(&answer).await.is_err() {
                        return;
                    }
                    answer.clear();
                }
            });
        }
    });
    port
}

/// A router serving `wire.test` from the origin on `port`.
async fn router(port: u16) -> SocketAddr {
    router_with(port, Proxy::new(None)).await.0
}

async fn router_with(port: u16, proxy: Proxy) -> (SocketAddr, Arc<Proxy>) {
    let proxy = Arc::new(proxy);
    let snapshot = RouteSnapshot {
        index: 1,
        apps: vec![],
        upstreams: vec![StaticUpstream {
            name: "wire.test".into(),
            servers: vec![UpstreamServer { host: "127.0.0.1".into(), port, weight: 1 }],
            balance: Default::default(),
            updated_at: Default::default(),
        }],
        rules: vec![],
        domain: "berth.local".into(),
    };
    let scope = Scope { zone: "default".into(), domain: None };
    proxy.table.store(Arc::new(table::build(&snapshot, &scope, &Registry::default(), 1)));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = Arc::new(Pool::default());
    let serving = proxy.clone();
    tokio::spawn(async move {
        while let Ok((stream, remote)) = listener.accept().await {
            tokio::spawn(serving.clone().serve_h1(pool.clone(), stream, Buf::default(), remote, false));
        }
    });
    (addr, proxy)
}

/// Sends raw bytes and reads until the router closes the connection.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await.expect("the router closes").unwrap();
    String::from_utf8_lossy(&out).to_string()
}

#[tokio::test]
async fn every_framing_passes_through_and_connections_are_reused() {
    let seen = Arc::new(Seen::default());
    let addr = router(origin(seen.clone(), Duration::from_secs(30)).await).await;
    let client = berth_tls::http_builder().resolve("wire.test", addr).build().unwrap();
    let url = |path: &str| format!("http://wire.test:{}{path}", addr.port());

    let r = client
        .get(url("/cl"))
        .header("Connection", "keep-alive, X-Private")
        .header("X-Private", "p")
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["x-origin"], "yes");
    assert_eq!(r.text().await.unwrap(), "hello");
    let r = client.get(url("/chunked")).send().await.unwrap();
    assert_eq!(r.text().await.unwrap(), "hello", "chunks and extensions decoded, trailers dropped");
    let r = client.get(url("/close")).send().await.unwrap();
    assert_eq!(r.headers()["transfer-encoding"], "chunked", "a close-delimited body is chunked to an HTTP/1.1 client");
    assert_eq!(r.text().await.unwrap(), "until-close");
    let r = client.get(url("/early")).send().await.unwrap();
    assert_eq!(r.status(), 200, "informational answers are not passed as the response");
    assert_eq!(r.text().await.unwrap(), "ok");
    let r = client.head(url("/head")).send().await.unwrap();
    assert_eq!(r.headers()["content-length"], "1000", "HEAD keeps the length of the resource");
    assert_eq!(r.bytes().await.unwrap().len(), 0);
    let big = client.get(url("/big")).send().await.unwrap().bytes().await.unwrap();
    assert!(big == big_body(), "a 3 MiB body arrives intact");

    // A chunked upload, sent in pieces, reaches the origin whole, with a length.
    let upload: Vec<u8> = (0..200_000u32).map(|i| (i % 7) as u8 + b'a').collect();
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"POST /echo HTTP/1.1\r\nHost: wire.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    for piece in upload.chunks(30_000) {
        s.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.unwrap();
        s.write_all(piece).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).await.unwrap();
    assert!(answer.ends_with(&upload), "the upload comes back intact");

    for _ in 0..50 {
        assert_eq!(client.get(url("/cl")).send().await.unwrap().text().await.unwrap(), "hello");
    }
    // The router reuses its upstream connections: one, plus the one the close-delimited answer
    // used up, plus one more if the upload ran beside an idle one.
    assert!(
        seen.connections.load(Ordering::SeqCst) <= 3,
        "{} upstream connections",
        seen.connections.load(Ordering::SeqCst)
    );

    let requests = seen.requests.lock().unwrap();
    let (head, _) = &requests[0];
    let lower = head.to_ascii_lowercase();
    assert!(head.starts_with("GET /cl HTTP/1.1\r\n"), "{head}");
    assert!(lower.contains(&format!("host: wire.test:{}\r\n", addr.port())), "{head}");
    assert!(lower.contains("x-forwarded-for: 127.0.0.1\r\n"), "{head}");
    assert!(lower.contains("x-forwarded-proto: http\r\n"), "{head}");
    assert!(!lower.contains("connection:") && !lower.contains("x-private"), "hop-by-hop headers stay: {head}");
    let upload_head = &requests.iter().find(|(h, _)| h.starts_with("POST")).unwrap().0;
    assert!(upload_head.to_ascii_lowercase().contains("content-length: 200000"), "{upload_head}");
}

#[tokio::test]
async fn the_wire_edge_cases_are_handled() {
    let seen = Arc::new(Seen::default());
    let addr = router(origin(seen.clone(), Duration::from_secs(30)).await).await;

    // Both a length and chunking: refused, never forwarded (request smuggling).
    let answer = raw(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(seen.requests.lock().unwrap().is_empty(), "nothing reached the origin");

    // Two Host headers (RFC 9112 3.2), and a chunk line ended by a bare LF: refused, never
    // forwarded.
    let answer = raw(addr, b"GET /cl HTTP/1.1\r\nHost: wire.test\r\nHost: other.test\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 ") && answer.contains("more than one Host"), "{answer}");
    let answer = raw(
        addr,
        b"POST /echo HTTP/1.1\r\nHost: wire.test\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n3\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    assert!(seen.requests.lock().unwrap().is_empty(), "nothing reached the origin");

    // Two pipelined requests get two answers, in order.
    let answer = raw(
        addr,
        b"GET /cl HTTP/1.1\r\nHost: wire.test\r\n\r\nPOST /echo HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc",
    )
    .await;
    let first = answer.find("hello").expect("first answer");
    let second = answer.rfind("abc").expect("second answer");
    assert!(first < second && answer.matches("HTTP/1.1 200").count() == 2, "{answer}");

    // An HTTP/1.0 client gets a body ended by the close, never chunks.
    let answer = raw(addr, b"GET /chunked HTTP/1.0\r\nHost: wire.test\r\n\r\n").await;
    assert!(!answer.to_ascii_lowercase().contains("transfer-encoding"), "{answer}");
    assert!(answer.ends_with("\r\n\r\nhello"), "{answer}");

    // Expect: 100-continue is answered by the router before the body is sent.
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(b"PUT /echo HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 4\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let mut interim = [0u8; 25];
    s.read_exact(&mut interim).await.unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    s.write_all(b"data").await.unwrap();
    let mut rest = String::new();
    s.read_to_string(&mut rest).await.unwrap();
    assert!(rest.starts_with("HTTP/1.1 200") && rest.ends_with("data"), "{rest}");
    let put_head = seen.requests.lock().unwrap().iter().find(|(h, _)| h.starts_with("PUT")).unwrap().0.clone();
    assert!(!put_head.to_ascii_lowercase().contains("expect"), "the expectation was met here: {put_head}");

    // An absolute-form target names the host, and keeps a query that has no path before it.
    let answer = raw(addr, b"GET http://wire.test?x=1 HTTP/1.1\r\nHost: other.test\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 404 "), "the origin answered: {answer}");
    let last = seen.requests.lock().unwrap().last().unwrap().0.clone();
    assert!(last.starts_with("GET /?x=1 HTTP/1.1\r\nHost: wire.test\r\n"), "{last}");

    // An unknown host, a head without Host, and an oversized head.
    let answer = raw(addr, b"GET / HTTP/1.1\r\nHost: nobody.test\r\nConnection: close\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 404 ") && answer.contains("no route for this host"), "{answer}");
    let answer = raw(addr, b"GET / HTTP/1.1\r\n\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
    let mut huge = b"GET / HTTP/1.1\r\nHost: wire.test\r\nX-Big: ".to_vec();
    huge.resize(70 * 1024, b'a');
    let answer = raw(addr, &huge).await;
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
}

#[tokio::test]
async fn idle_connections_the_origin_closed_are_not_used() {
    let seen = Arc::new(Seen::default());
    // The origin closes a connection idle for 100 ms: the router's pooled one goes stale.
    let addr = router(origin(seen.clone(), Duration::from_millis(100)).await).await;
    let client = berth_tls::http_builder().resolve("wire.test", addr).build().unwrap();
    let url = format!("http://wire.test:{}/echo", addr.port());
    for round in 0..3 {
        // A POST is not retried: it succeeds only if the stale connection is never written to.
        let r = client.post(&url).body("once").send().await.unwrap();
        assert_eq!(r.status(), 200, "round {round}");
        assert_eq!(r.text().await.unwrap(), "once");
        // Wait (bounded) until the origin has closed its side of the idle upstream connection.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while seen.closed.load(Ordering::SeqCst) <= round {
            assert!(tokio::time::Instant::now() < deadline, "the origin never closed the idle connection");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(seen.connections.load(Ordering::SeqCst), 3, "a new upstream connection after each idle close");
    assert_eq!(seen.requests.lock().unwrap().len(), 3, "each POST reached the origin exactly once");
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_and_releases_its_instance() {
    let seen = Arc::new(Seen::default());
    let port = origin(seen.clone(), Duration::from_secs(30)).await;
    let (addr, proxy) = router_with(port, Proxy::new(None).with_send_timeout(Duration::from_millis(300))).await;
    let in_flight = || {
        let table = proxy.table.load();
        table.lookup("wire.test").unwrap().servers[0].state.in_flight.load(Ordering::SeqCst)
    };
    // A small receive window, and no reads: the router's writes block once the buffers are full.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut client = socket.connect(addr).await.unwrap();
    client.write_all(b"GET /huge HTTP/1.1\r\nHost: wire.test\r\n\r\n").await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while in_flight() == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the request never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The send timeout ends the stuck response: the instance is no longer held in flight
    // (a drain waiting on it can finish).
    while in_flight() != 0 {
        assert!(tokio::time::Instant::now() < deadline, "a client that stopped reading still holds the instance");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // And the router closed the connection: what the client reads ends well short of the body.
    let mut got = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut got)).await;
    assert!(read.is_ok(), "the router closed the connection");
    assert!(got.len() < 16 << 20, "the body was cut off ({} bytes)", got.len());
}

#[tokio::test]
async fn a_body_over_the_limit_is_refused_and_never_forwarded() {
    let seen = Arc::new(Seen::default());
    let port = origin(seen.clone(), Duration::from_secs(30)).await;
    let (addr, _) = router_with(port, Proxy::new(None).with_max_body(1000)).await;
    let client = berth_tls::http_builder().resolve("wire.test", addr).build().unwrap();
    let url = format!("http://wire.test:{}/echo", addr.port());
    let r = client.post(&url).body(vec![b'a'; 1000]).send().await.unwrap();
    assert_eq!(r.status(), 200, "a body at the limit passes");
    assert_eq!(r.bytes().await.unwrap().len(), 1000);
    let r = client.post(&url).body(vec![b'a'; 1001]).send().await.unwrap();
    assert_eq!(r.status(), 413, "one byte over is refused");
    // Chunked, where the size is only known while reading.
    let mut chunked = b"POST /echo HTTP/1.1\r\nHost: wire.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..3 {
        chunked.extend_from_slice(b"190\r\n");
        chunked.extend_from_slice(&[b'b'; 0x190]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(addr, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    assert_eq!(seen.requests.lock().unwrap().len(), 1, "only the body within the limit reached the origin");
}

/// What the streaming origin has received of the request it is reading, and the heads it saw.
#[derive(Default)]
struct Received {
    bytes: AtomicUsize,
    completed: AtomicUsize,
    heads: Mutex<Vec<String>>,
}

/// An origin that reads a request body of either framing as it arrives, counting the bytes,
/// and answers with the body's length and byte sum.
async fn streaming_origin(received: Arc<Received>) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let received = received.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut more = vec![0u8; 65536];
                loop {
                    let end = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            break end + 4;
                        }
                        match s.read(&mut more).await {
                            Ok(n) if n > 0 => buf.extend_from_slice(&more[..n]),
                            _ => return,
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    buf.drain(..end);
                    received.heads.lock().unwrap().push(head.clone());
                    received.bytes.store(0, Ordering::SeqCst);
                    let (mut len, mut sum) = (0usize, 0u64);
                    let mut take = |bytes: &[u8]| {
                        len += bytes.len();
                        sum += bytes.iter().map(|b| u64::from(*b)).sum::<u64>();
                        received.bytes.fetch_add(bytes.len(), Ordering::SeqCst);
                    };
                    if head.contains("transfer-encoding: chunked") {
                        // Chunk sizes, then data; extensions and trailers are not sent by the router.
                        loop {
                            let line_end = loop {
                                if let Some(i) = buf.windows(2).position(|w| w == b"\r\n") {
                                    break i;
                                }
                                match s.read(&mut more).await {
                                    Ok(n) if n > 0 => buf.extend_from_slice(&more[..n]),
                                    _ => return,
                                }
                            };
                            let size =
                                usize::from_str_radix(std::str::from_utf8(&buf[..line_end]).unwrap(), 16).unwrap();
                            buf.drain(..line_end + 2);
                            while buf.len() < size + 2 {
                                match s.read(&mut more).await {
                                    Ok(n) if n > 0 => buf.extend_from_slice(&more[..n]),
                                    _ => return,
                                }
                            }
                            take(&buf[..size]);
                            buf.drain(..size + 2);
                            if size == 0 {
                                break;
                            }
                        }
                    } else {
                        let length: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        let mut left = length;
                        loop {
                            let here = left.min(buf.len());
                            take(&buf[..here]);
                            buf.drain(..here);
                            left -= here;
                            if left == 0 {
                                break;
                            }
                            match s.read(&mut more).await {
                                Ok(n) if n > 0 => buf.extend_from_slice(&more[..n]),
                                _ => return,
                            }
                        }
                    }
                    received.completed.fetch_add(1, Ordering::SeqCst);
                    let answer = format!("len={len} sum={sum}");
                    let reply = format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{answer}", answer.len());
                    if s.write_all(reply.as_bytes()).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

/// Reads one response with a Content-Length body from `s`.
async fn read_response(s: &mut TcpStream) -> String {
    let mut out = Vec::new();
    let mut more = [0u8; 4096];
    loop {
        if let Some(end) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&out[..end]).to_ascii_lowercase();
            let length: usize =
                head.lines().find_map(|l| l.strip_prefix("content-length:")).map_or(0, |v| v.trim().parse().unwrap());
            if out.len() >= end + 4 + length {
                return String::from_utf8_lossy(&out[..end + 4 + length]).to_string();
            }
        }
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut more)).await.expect("an answer").unwrap();
        assert!(n > 0, "closed before answering: {}", String::from_utf8_lossy(&out));
        out.extend_from_slice(&more[..n]);
    }
}

/// Waits, bounded, until the origin holds at least `n` bytes of the request it is reading.
async fn origin_has(received: &Received, n: usize) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while received.bytes.load(Ordering::SeqCst) < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the origin has {} bytes, not {n}: the body was not streamed",
            received.bytes.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn large_uploads_stream_through_as_they_arrive() {
    let received = Arc::new(Received::default());
    let port = streaming_origin(received.clone()).await;
    let addr = router(port).await;
    let body: Vec<u8> = (0..5 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
    let mut s = TcpStream::connect(addr).await.unwrap();

    // With a length: the origin has most of the first 3 MiB before the client sends the rest.
    let head = format!("PUT /upload HTTP/1.1\r\nHost: wire.test\r\nContent-Length: {}\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    s.write_all(&body[..3 << 20]).await.unwrap();
    origin_has(&received, 2 << 20).await;
    s.write_all(&body[3 << 20..]).await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    assert!(answer.ends_with(&format!("len={} sum={sum}", body.len())), "{answer}");

    // Chunked, on the same connection: streamed on as chunks once past what is held.
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: wire.test\r\nTransfer-Encoding: chunked\r\n\r\n").await.unwrap();
    for part in body[..3 << 20].chunks(64 << 10) {
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes()).await.unwrap();
        s.write_all(part).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    origin_has(&received, 2 << 20).await;
    for part in body[3 << 20..].chunks(64 << 10) {
        s.write_all(format!("{:x}\r\n", part.len()).as_bytes()).await.unwrap();
        s.write_all(part).await.unwrap();
        s.write_all(b"\r\n").await.unwrap();
    }
    s.write_all(b"0\r\n\r\n").await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.ends_with(&format!("len={} sum={sum}", body.len())), "{answer}");
    let heads = received.heads.lock().unwrap().clone();
    assert!(heads[1].contains("transfer-encoding: chunked"), "streamed chunked: {}", heads[1]);

    // And the connection is in step for the next request.
    s.write_all(b"POST /small HTTP/1.1\r\nHost: wire.test\r\nContent-Length: 3\r\n\r\nabc").await.unwrap();
    let answer = read_response(&mut s).await;
    assert!(answer.ends_with("len=3 sum=294"), "{answer}");
    assert_eq!(received.completed.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn a_streamed_body_over_the_limit_is_cut_off() {
    let received = Arc::new(Received::default());
    let port = streaming_origin(received.clone()).await;
    let (addr, _) = router_with(port, Proxy::new(None).with_max_body(2 << 20)).await;
    let mut chunked = b"POST /upload HTTP/1.1\r\nHost: wire.test\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..48 {
        chunked.extend_from_slice(format!("{:x}\r\n", 64 << 10).as_bytes());
        chunked.extend_from_slice(&[b'c'; 64 << 10]);
        chunked.extend_from_slice(b"\r\n");
    }
    chunked.extend_from_slice(b"0\r\n\r\n");
    let answer = raw(addr, &chunked).await;
    assert!(answer.starts_with("HTTP/1.1 413 "), "{answer}");
    // It was streaming when the limit was passed (the origin reads what was sent in its own time).
    origin_has(&received, (1 << 20) + 1).await;
    assert_eq!(received.completed.load(Ordering::SeqCst), 0, "the origin never got a whole request");
}

/// The proxy's HTTP/2 front (prior knowledge) in front of the origin on `port`.
async fn h2_router(port: u16, proxy: Proxy) -> SocketAddr {
    let (_, proxy) = router_with(port, proxy).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let pool = Arc::new(Pool::default());
    tokio::spawn(async move {
        while let Ok((stream, remote)) = listener.accept().await {
            let (proxy, pool) = (proxy.clone(), pool.clone());
            tokio::spawn(async move {
                let svc =
                    hyper::service::service_fn(move |req| proxy.clone().handle_h2(pool.clone(), req, remote, false));
                let _ = hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn http2_uploads_are_held_when_small_and_streamed_when_large() {
    let received = Arc::new(Received::default());
    let port = streaming_origin(received.clone()).await;
    let addr = h2_router(port, Proxy::new(None).with_max_body(8 << 20)).await;
    let client = berth_tls::http_builder().http2_prior_knowledge().resolve("wire.test", addr).build().unwrap();
    let url = format!("http://wire.test:{}/upload", addr.port());
    for size in [1000usize, 5 << 20] {
        let body: Vec<u8> = (0..size as u32).map(|i| (i % 251) as u8).collect();
        let sum: u64 = body.iter().map(|b| u64::from(*b)).sum();
        let r = client.post(&url).body(body).send().await.unwrap();
        assert_eq!(r.status(), 200);
        assert_eq!(r.text().await.unwrap(), format!("len={size} sum={sum}"));
    }
    let heads = received.heads.lock().unwrap().clone();
    assert!(heads[0].contains("content-length: 1000"), "a small body is held and sent with its length: {}", heads[0]);
    assert!(heads[1].contains("transfer-encoding: chunked"), "a large one streams: {}", heads[1]);
    let r = client.post(&url).body(vec![b'x'; 9 << 20]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    assert_eq!(received.completed.load(Ordering::SeqCst), 2, "the one over the limit never arrived whole");
}
