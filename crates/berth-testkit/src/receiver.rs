//! A tiny HTTP server on loopback that keeps every request body it is sent, with the time it
//! arrived: the far end of a webhook or a log sink in tests.

use std::sync::{Arc, Mutex};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

/// Request bodies with their arrival times (ms since the epoch).
type Kept = Arc<Mutex<Vec<(Vec<u8>, i64)>>>;

pub struct Receiver {
    pub port: u16,
    bodies: Kept,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Receiver {
    /// Listens on a free port and answers every request 200 with an empty body.
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind the receiver");
        let port = listener.local_addr().expect("receiver address").port();
        let bodies: Kept = Arc::default();
        let kept = bodies.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(stream, kept.clone()));
            }
        });
        Receiver { port, bodies }
    }

    /// Every body received so far, with its arrival time (ms since the epoch).
    pub fn bodies(&self) -> Vec<(Vec<u8>, i64)> {
        self.bodies.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn clear(&self) {
        self.bodies.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

/// Keep-alive HTTP/1.1 with Content-Length bodies: what reqwest sends.
async fn serve(stream: tokio::net::TcpStream, bodies: Kept) {
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    loop {
        let mut length = 0usize;
        let mut line = String::new();
        loop {
            line.clear();
            if reader.read_line(&mut line).await.unwrap_or(0) == 0 {
                return;
            }
            if line == "\r\n" {
                break;
            }
            if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).await.is_err() {
            return;
        }
        bodies.lock().unwrap_or_else(|p| p.into_inner()).push((body, now_ms()));
        if write.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n").await.is_err() {
            return;
        }
    }
}
